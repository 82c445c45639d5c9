//! The image download: retried in process while S3 fails, then checked
//! (not empty, a JPEG, PNG or WebP) and hashed.

use super::backoff::Backoff;
use super::failure::Failed;
use crate::domain::dead_letter::FailureClass;
use crate::domain::image::{describe_prefix, sha256_hex, sniff_content_type};
use crate::domain::job::S3Uri;
use crate::providers::Image;
use crate::store::{FetchError, ImageStore};
use crate::telemetry::{FetchOutcome, Metrics};
use std::sync::Arc;
use tokio::time::Instant;

pub struct Fetcher {
    store: Arc<dyn ImageStore>,
    backoff: Backoff,
    metrics: Arc<Metrics>,
}

impl Fetcher {
    pub fn new(store: Arc<dyn ImageStore>, backoff: Backoff, metrics: Arc<Metrics>) -> Self {
        Fetcher {
            store,
            backoff,
            metrics,
        }
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
            let fetched = self.store.fetch(uri, limit).await;
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
