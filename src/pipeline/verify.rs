//! Route, fetch and look up, then gate and call: what a job's delivery
//! finds out before its disposition is decided (see [`super::step`]).

use super::Pipeline;
use super::call::Call;
use super::failure::{Failed, now_rfc3339};
use crate::domain::ProviderName;
use crate::domain::assessment::{Assessment, VendorRefs};
use crate::domain::carried::Carried;
use crate::domain::dead_letter::{Failure, FailureClass};
use crate::domain::job::Job;
use crate::domain::result::{ImageInfo, LivenessResult, RESULT_SCHEMA, Timings};
use crate::providers::{Image, Submission, VendorRequest};
use crate::store::{AttemptRecord, StoredOutcome};
use tokio::time::Instant;

/// What a successful [`Pipeline::verify`] found.
// Built once per job and consumed at once: boxing `Fresh` would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Verified {
    /// The vendor answered now.
    Fresh {
        assessment: Assessment,
        provider: ProviderName,
        image: Image,
        back_sha256: Option<String>,
        fetch_ms: u64,
        vendor_ms: u64,
    },
    /// The results store already had this job's outcome for these images.
    Stored(Box<StoredOutcome>),
    /// Accepted for an asynchronous answer (Argos callback mode).
    Submitted {
        provider: ProviderName,
        vendor: VendorRefs,
        submission: u32,
        image: Image,
        back_sha256: Option<String>,
        fetch_ms: u64,
    },
}

impl Pipeline {
    /// Routes, fetches, looks up the stored outcome and, if there is none,
    /// calls the vendor. Every vendor attempt is appended to `log`,
    /// numbered after the `carried.attempts` of previous deliveries.
    pub(super) async fn verify(
        &self,
        job: &Job,
        started: Instant,
        carried: &Carried,
        log: &mut Vec<AttemptRecord>,
    ) -> Result<Verified, Failed> {
        let provider_name = self
            .cfg
            .routing
            .route(job)
            .map_err(|r| Failed::permanent(r.class, r.message))?;
        let provider = self.vendors.get(provider_name).ok_or_else(|| {
            Failed::permanent(
                FailureClass::InvalidJob,
                format!(
                    "the job asks for provider {provider_name}, which this worker has no adapter configured for; \
                     configure it or send the job to a deployment that has it"
                ),
            )
        })?;

        let deadline = started + self.cfg.job_deadline;
        let limit = provider
            .max_image_bytes()
            .map_or(self.cfg.max_image_bytes, |l| {
                l.min(self.cfg.max_image_bytes)
            });
        let fetch_started = Instant::now();
        let fetch = async {
            let image = self
                .fetch
                .fetch("image", &job.image, limit, deadline)
                .await?;
            let back = match &job.back_image {
                Some(uri) => Some(self.fetch.fetch("back_image", uri, limit, deadline).await?),
                None => None,
            };
            Ok::<_, Failed>((image, back))
        };
        // The lookup runs while the image downloads: it needs only the job_id.
        let (fetched, stored) = tokio::join!(fetch, self.outcomes.lookup(&job.job_id, deadline));
        let (image, back) = fetched?;
        let fetch_ms = fetch_started.elapsed().as_millis() as u64;
        let back_sha256 = back.as_ref().map(|b| b.sha256.clone());
        if let Some(stored) = stored? {
            if stored.same_images(&image.sha256, back_sha256.as_deref()) {
                return Ok(Verified::Stored(Box::new(stored)));
            }
            return Err(self.conflict(job, &stored, &image, back_sha256.as_deref()));
        }

        let req = VendorRequest {
            job_id: &job.job_id,
            check: job.check,
            signals: &job.signals,
            image: &image,
            back_image: back.as_ref(),
            metadata: job.metadata.as_deref(),
        };
        // Argos callback mode: this submission's number and its callback URL.
        let callback = self
            .callbacks
            .as_ref()
            .filter(|_| provider.has_callback_mode(job.check))
            .map(|cb| {
                let submission = carried.callback_submissions + 1;
                (submission, cb.url(provider_name, &job.job_id, submission))
            });
        let call = match &callback {
            Some((_, url)) => Call::Submit { callback_url: url },
            None => Call::Verify,
        };
        let vendor_started = Instant::now();
        let answer = self
            .vendors
            .call(
                provider.as_ref(),
                &req,
                deadline,
                carried.attempts,
                log,
                call,
            )
            .await?;
        let vendor_ms = vendor_started.elapsed().as_millis() as u64;
        match answer {
            Submission::Answered(assessment) => Ok(Verified::Fresh {
                assessment,
                provider: provider_name,
                image,
                back_sha256,
                fetch_ms,
                vendor_ms,
            }),
            Submission::Accepted(vendor) => Ok(Verified::Submitted {
                provider: provider_name,
                vendor,
                submission: callback.map_or(1, |(n, _)| n),
                image,
                back_sha256,
                fetch_ms,
            }),
        }
    }

    /// The job_id already has an outcome for other images.
    fn conflict(
        &self,
        job: &Job,
        stored: &StoredOutcome,
        image: &Image,
        back_sha256: Option<&str>,
    ) -> Failed {
        let back = |b: Option<&str>| b.map_or(String::new(), |b| format!(" (back {b})"));
        let failure = Failure {
            provider: Some(stored.result.provider),
            ..Failure::new(
                FailureClass::JobIdConflict,
                format!(
                    "job_id {} already has a stored outcome ({}, verdict {}) for image sha256 {}{}, \
                     but this job's image has sha256 {}{}; a job_id names one verification: \
                     publish this image under a new job_id",
                    job.job_id,
                    self.outcomes.location(&job.job_id),
                    stored.result.verdict,
                    stored.image_sha256,
                    back(stored.back_image_sha256.as_deref()),
                    image.sha256,
                    back(back_sha256),
                ),
            )
        };
        Failed::Permanent {
            failure,
            attempts: Some(stored.result.attempts),
        }
    }

    pub(super) fn result(
        &self,
        job: &Job,
        provider: ProviderName,
        a: Assessment,
        image: ImageInfo,
        attempts: u32,
        timings_ms: Timings,
    ) -> LivenessResult {
        LivenessResult {
            schema: RESULT_SCHEMA.into(),
            job_id: job.job_id.clone(),
            check: job.check,
            provider,
            metadata: job.metadata.clone(),
            verdict: a.verdict(),
            score: a.score(),
            signals: a.signals,
            reasons: a.reasons,
            warnings: a.warnings,
            vendor: a.vendor,
            image,
            attempts,
            timings_ms,
            completed_at: now_rfc3339(),
        }
    }
}

pub(super) fn image_info(image: &Image) -> ImageInfo {
    ImageInfo {
        uri: image.uri.clone(),
        bytes: image.bytes.len() as u64,
        sha256: image.sha256.clone(),
        content_type: image.content_type.into(),
    }
}
