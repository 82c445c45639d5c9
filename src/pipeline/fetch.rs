//! The image download: retried in process while S3 fails, bounded by the
//! job's deadline (body included), then checked (not empty, a JPEG, PNG or
//! WebP) and hashed; and the byte budget a job reserves before it fetches
//! (`worker.max_image_bytes_in_flight`).

use super::backoff::Backoff;
use super::failure::Failed;
use crate::domain::dead_letter::FailureClass;
use crate::domain::image::{describe_prefix, sha256_hex, sniff_content_type};
use crate::domain::job::S3Uri;
use crate::domain::result::ImageInfo;
use crate::providers::Image;
use crate::store::{FetchError, ImageStore};
use crate::telemetry::{FetchOutcome, Metrics};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Fetcher {
    store: Arc<dyn ImageStore>,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    budget: Arc<Semaphore>,
    /// The whole budget, in KiB (the semaphore's permits).
    budget_kib: u32,
}

/// Room reserved in the image budget; given back when dropped.
pub struct Reserved {
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Reserved {
    /// Gives back all but `bytes` (rounded up to whole KiB).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = kib(bytes).max(1) as usize;
        let held = self.permit.num_permits();
        if held > keep
            && let Some(excess) = self.permit.split(held - keep)
        {
            self.metrics
                .image_budget(-((excess.num_permits() as i64) << 10));
        }
    }

    /// Bytes held (whole KiB).
    pub fn bytes(&self) -> u64 {
        (self.permit.num_permits() as u64) << 10
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.metrics
            .image_budget(-((self.permit.num_permits() as i64) << 10));
    }
}

/// Bytes in whole KiB, rounded up, saturating.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl Fetcher {
    /// `budget_bytes`: `worker.max_image_bytes_in_flight` (at most 1 TiB,
    /// which configuration validation enforces).
    pub fn new(
        store: Arc<dyn ImageStore>,
        backoff: Backoff,
        metrics: Arc<Metrics>,
        budget_bytes: u64,
    ) -> Self {
        let budget_kib = kib(budget_bytes).max(1);
        Fetcher {
            store,
            backoff,
            metrics,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        }
    }

    /// Waits for `bytes` of room in the image budget (the whole budget at
    /// most, so that one job alone can always go on), until `deadline`.
    /// All of a job's images are reserved at once: jobs holding part of
    /// what they need while waiting for the rest could wait on each other
    /// forever.
    pub async fn reserve(
        &self,
        bytes: u64,
        deadline: Instant,
        stop: &CancellationToken,
    ) -> Result<Reserved, Failed> {
        let want = kib(bytes).clamp(1, self.budget_kib);
        let acquire = self.budget.clone().acquire_many_owned(want);
        let permit = tokio::select! {
            p = tokio::time::timeout_at(deadline, acquire) => match p {
                Ok(p) => p.expect("the budget semaphore is never closed"),
                Err(_) => {
                    return Err(Failed::transient(format!(
                        "no room in the image budget (worker.max_image_bytes_in_flight) for {bytes} bytes of images before the job's deadline: this replica holds as many image bytes as it may; the job will be tried again"
                    )));
                }
            },
            _ = stop.cancelled() => return Err(Failed::Abandoned),
        };
        self.metrics.image_budget(i64::from(want) << 10);
        Ok(Reserved {
            permit,
            metrics: self.metrics.clone(),
        })
    }

    /// The image at `uri` (the job's `field`), at most `limit` bytes.
    pub async fn fetch(
        &self,
        field: &str,
        uri: &S3Uri,
        limit: u64,
        deadline: Instant,
    ) -> Result<Image, Failed> {
        let mut delays = self.backoff.delays(deadline);
        let bytes = loop {
            let started = Instant::now();
            // The S3 client's operation timeout ends at the response headers;
            // a body that trickles in would hold the job past its deadline.
            let Ok(fetched) = tokio::time::timeout_at(deadline, self.store.fetch(uri, limit)).await
            else {
                self.metrics
                    .s3_fetch(FetchOutcome::Error, started.elapsed());
                return Err(Failed::transient(format!(
                    "{field} {uri} did not finish downloading within the job's deadline (worker.job_deadline); \
                     S3 is slow or the object trickles in; the job will be tried again"
                )));
            };
            let outcome = match &fetched {
                Ok(_) => FetchOutcome::Ok,
                Err(FetchError::NotFound(_)) => FetchOutcome::NotFound,
                Err(FetchError::TooLarge { .. }) => FetchOutcome::TooLarge,
                Err(FetchError::Transient(_)) => FetchOutcome::Error,
            };
            self.metrics.s3_fetch(outcome, started.elapsed());
            match fetched {
                Ok(b) => break b,
                Err(FetchError::NotFound(m)) => {
                    return Err(Failed::permanent(
                        FailureClass::ImageNotFound,
                        format!("{field}: {m}; upload it and replay the job"),
                    ));
                }
                Err(FetchError::TooLarge { size, limit }) => {
                    return Err(Failed::permanent(
                        FailureClass::ImageRejected,
                        format!(
                            "{field} {uri} is {size} bytes, over the {limit}-byte limit for this vendor; send a smaller image"
                        ),
                    ));
                }
                Err(FetchError::Transient(m)) => match delays.next() {
                    Some(d) if Instant::now() + d < deadline => {
                        tracing::warn!(error = %m, delay_ms = d.as_millis() as u64, "Image fetch failed, retrying");
                        tokio::time::sleep(d).await;
                    }
                    _ => return Err(Failed::transient(m)),
                },
            }
        };
        self.metrics.image(bytes.len());
        if bytes.is_empty() {
            return Err(Failed::permanent(
                FailureClass::ImageRejected,
                format!("{field} {uri} is an empty object; upload the real image and replay"),
            ));
        }
        let Some(content_type) = sniff_content_type(&bytes) else {
            return Err(Failed::permanent(
                FailureClass::ImageRejected,
                format!(
                    "{field} {uri} is not a JPEG, PNG or WebP image (it starts with bytes {}); send one of those formats",
                    describe_prefix(&bytes)
                ),
            ));
        };
        let sha256 = sha256_hex(&bytes);
        Ok(Image {
            uri: uri.to_string(),
            bytes,
            content_type,
            sha256,
        })
    }
}

/// What a result says of a fetched image.
pub(super) fn image_info(image: &Image) -> ImageInfo {
    ImageInfo {
        uri: image.uri.clone(),
        bytes: image.bytes.len() as u64,
        sha256: image.sha256.clone(),
        content_type: image.content_type.into(),
    }
}
