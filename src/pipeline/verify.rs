//! Route, fetch and look up, then gate and call: what a job's delivery
//! finds out before its disposition is decided (see [`super::step`]).

use super::Pipeline;
use super::call::{Bounds, Call};
use super::claim::{Held, NotClaimed};
use super::context::{Origin, StepContext};
use super::failure::{Failed, now_rfc3339};
use super::fetch::image_info;
use super::shadow::ShadowRun;
use super::traffic::Now;
use crate::domain::assessment::{Assessment, VendorRefs};
use crate::domain::carried::Carried;
use crate::domain::dead_letter::{Failure, FailureClass};
use crate::domain::job::Job;
use crate::domain::result::{Failover, ImageInfo, LivenessResult, RESULT_SCHEMA, Timings};
use crate::domain::{Check, ProviderName};
use crate::providers::{Submission, VendorRequest};
use crate::store::outcomes::PENDING_SCHEMA;
use crate::store::{AttemptRecord, PendingSubmission, StoredOutcome};
use tokio::time::Instant;

/// The claim and the lookup, together.
enum Claimed {
    /// No stored outcome: the job is ours to verify (the claim, when there
    /// is a coordination store).
    Free(Option<Held>),
    Stored(Box<StoredOutcome>),
}

/// What a successful [`Pipeline::verify`] found.
// Built once per job and consumed at once: boxing `Fresh` would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Verified {
    /// The vendor answered now.
    Fresh {
        assessment: Assessment,
        provider: ProviderName,
        /// What the result says of the image (its bytes are gone, and
        /// their room in the image budget given back).
        image: ImageInfo,
        back_sha256: Option<String>,
        fetch_ms: u64,
        vendor_ms: u64,
        /// Held until the outcome is stored.
        claim: Option<Held>,
        /// Why `provider` is not the check's default vendor, when it is not.
        failover: Option<Failover>,
        /// Shadow mode: the images kept for the shadow call.
        shadow: Option<ShadowRun>,
    },
    /// The results store already had this job's outcome for these images.
    Stored(Box<StoredOutcome>),
    /// The vendor (rate limit or adaptive concurrency) cannot take this job
    /// from the jobs queue now: it moves to the vendor's wait queue, nothing
    /// fetched, nothing taken.
    MustWait { provider: ProviderName },
    /// Accepted for an asynchronous answer (Argos callback mode); its
    /// pending record is stored.
    Submitted {
        provider: ProviderName,
        submission: u32,
        /// Released once the disposition is decided (dropped).
        _claim: Option<Held>,
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
        ctx: &StepContext<'_>,
        log: &mut Vec<AttemptRecord>,
    ) -> Result<Verified, Failed> {
        let primary = self
            .cfg
            .routing
            .route(job)
            .map_err(|r| Failed::permanent(r.class, r.message))?;
        let (provider_name, failover) = self.failover(job, primary);
        let provider = self.vendors.get(provider_name).ok_or_else(|| {
            Failed::permanent(
                FailureClass::InvalidJob,
                format!(
                    "the job asks for provider {provider_name}, which this worker has no adapter configured for; \
                     configure it or send the job to a deployment that has it"
                ),
            )
        })?;

        // A vendor whose spend budget is known to be spent: park before
        // fetching anything.
        if let Some(parked) = self.vendors.traffic().early_park(provider_name) {
            return Err(parked);
        }
        // A job from the jobs queue whose vendor cannot take it now moves to
        // the vendor's wait queue, before anything is fetched; one it can
        // take keeps the slot and the token it was given for its call.
        let mut ticket = None;
        if ctx.origin == Origin::Jobs && self.vendors.traffic().has_wait_queue(provider_name) {
            match self.vendors.traffic().try_admit(provider_name).await? {
                Now::Admitted(t) => ticket = Some(t),
                Now::WouldWait => {
                    return Ok(Verified::MustWait {
                        provider: provider_name,
                    });
                }
            }
        }
        let deadline = started + self.cfg.job_deadline;
        let limit = provider
            .max_image_bytes()
            .map_or(self.cfg.max_image_bytes, |l| {
                l.min(self.cfg.max_image_bytes)
            });
        // A back image the vendor does not use is neither fetched nor held.
        let uses_back = provider.uses_back_image();
        let back_uri = job.back_image.as_ref().filter(|_| uses_back);
        let held = |image_bytes: u64| image_bytes + provider.encoded_copy_bytes(image_bytes);
        let fetch_started = Instant::now();
        let fetch = async {
            // Room for the images at the largest size they may have, then
            // only for what they turned out to be.
            let images = 1 + u64::from(back_uri.is_some());
            let mut reserved = self
                .fetch
                .reserve(held(limit) * images, deadline, &ctx.signals.stop)
                .await?;
            let image = self
                .fetch
                .fetch("image", &job.image, limit, deadline)
                .await?;
            let back = match back_uri {
                Some(uri) => Some(self.fetch.fetch("back_image", uri, limit, deadline).await?),
                None => None,
            };
            reserved.shrink_to(
                held(image.bytes.len() as u64)
                    + back.as_ref().map_or(0, |b| held(b.bytes.len() as u64)),
            );
            Ok::<_, Failed>((image, back, reserved))
        };
        // The claim and the lookup run while the image downloads: they need
        // only the job_id.
        let claimed = self.claim_and_look_up(job, provider_name, deadline);
        let (fetched, claimed) = tokio::join!(fetch, claimed);
        // Held until this function returns, with the images (or, for a
        // shadowed job, until its shadow call).
        let (image, back, reserved) = fetched?;
        let fetch_ms = fetch_started.elapsed().as_millis() as u64;
        let back_sha256 = back.as_ref().map(|b| b.sha256.clone());
        let claim = match claimed? {
            Claimed::Free(claim) => claim,
            Claimed::Stored(stored) => {
                return match stored.answers(job, &image.sha256, back_sha256.as_deref(), uses_back) {
                    Ok(()) => Ok(Verified::Stored(stored)),
                    Err(why) => Err(self.conflict(job, &stored, &why)),
                };
            }
        };
        if ctx.signals.stop.is_cancelled() {
            return Err(Failed::Abandoned);
        }

        let req = VendorRequest {
            job_id: &job.job_id,
            check: job.check,
            signals: &job.signals,
            image: &image,
            back_image: back.as_ref(),
            metadata: job.metadata.as_deref(),
        };
        // Argos callback mode: this submission's number, its callback URL,
        // and its pending record, written before the submission so that a
        // callback can never arrive before it.
        let submission = match self.callbacks.as_ref() {
            Some(cb) if provider.has_callback_mode(job.check) => {
                let n = carried.callback_submissions.saturating_add(1);
                let pending = PendingSubmission {
                    schema: PENDING_SCHEMA.into(),
                    job_id: job.job_id.clone(),
                    job: ctx.raw.to_owned(),
                    correlation_id: ctx.correlation_id.clone(),
                    provider: provider_name,
                    submission: n,
                    attempts: carried.attempts.saturating_add(1),
                    ladder_step: carried.ladder_step,
                    first_received_at: ctx.first_received_at.to_owned(),
                    submitted_at: now_rfc3339(),
                    image: image_info(&image),
                    back_image_sha256: back_sha256.clone(),
                    fetch_ms,
                    vendor: VendorRefs::default(),
                    attempt_log: Vec::new(),
                };
                if !self
                    .outcomes
                    .save_pending(&pending, &ctx.signals.hurry)
                    .await
                {
                    return Err(Failed::Transient(Failure {
                        provider: Some(provider_name),
                        ..Failure::new(
                            FailureClass::RetriesExhausted,
                            "the pending submission could not be recorded in the results store within results.store_timeout, \
                             so the job was not submitted (its callback could not be accepted)",
                        )
                    }));
                }
                Some((cb.url(provider_name, &job.job_id, n), pending))
            }
            _ => None,
        };
        let call = match &submission {
            Some((url, _)) => Call::Submit { callback_url: url },
            None => Call::Verify,
        };
        let vendor_started = Instant::now();
        let answer = self
            .vendors
            .call(
                provider.as_ref(),
                &req,
                Bounds {
                    deadline,
                    earlier_attempts: carried.attempts,
                    stop: &ctx.signals.stop,
                },
                log,
                call,
                ticket,
            )
            .await;
        let vendor_ms = vendor_started.elapsed().as_millis() as u64;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if submission.is_some() {
                    // Nothing was accepted: no callback will come for it.
                    self.outcomes.clear_pending(&job.job_id).await;
                }
                return Err(e);
            }
        };
        match (answer, submission) {
            (Submission::Answered(assessment), pending) => {
                if pending.is_some() {
                    self.outcomes.clear_pending(&job.job_id).await;
                }
                let info = image_info(&image);
                let shadow = self
                    .shadow_vendor(job, provider_name)
                    .map(|v| self.keep_for_shadow(v, job, image, back, reserved));
                Ok(Verified::Fresh {
                    assessment,
                    provider: provider_name,
                    image: info,
                    back_sha256,
                    fetch_ms,
                    vendor_ms,
                    claim,
                    failover,
                    shadow,
                })
            }
            (Submission::Accepted(vendor), Some((_, mut pending))) => {
                // The record now carries the vendor's references and the
                // attempts as made (best effort: the first write already
                // lets the callback settle the job).
                pending.vendor = vendor;
                pending.attempts = carried.attempts.saturating_add(log.len() as u32);
                pending.attempt_log = log.clone();
                pending.submitted_at = now_rfc3339();
                self.outcomes
                    .save_pending(&pending, &ctx.signals.hurry)
                    .await;
                Ok(Verified::Submitted {
                    provider: provider_name,
                    submission: pending.submission,
                    _claim: claim,
                })
            }
            (Submission::Accepted(_), None) => Err(Failed::transient(format!(
                "{provider_name} accepted the job for a callback it was not asked for"
            ))),
        }
    }

    /// Failover: a job that names no provider goes to the next vendor of its
    /// check's failover list while its default one cannot be called (paused,
    /// breaker open, its probe not due). A job that named its vendor never
    /// fails over; with every vendor down, the default one's gate parks it.
    fn failover(&self, job: &Job, primary: ProviderName) -> (ProviderName, Option<Failover>) {
        let list = match job.check {
            Check::Document => &self.cfg.failover_document,
            Check::Face => &self.cfg.failover_face,
        };
        if job.provider.is_some() || list.is_empty() || self.vendors.get(primary).is_none() {
            return (primary, None);
        }
        let Some(why) = self.vendors.unavailable(primary) else {
            return (primary, None);
        };
        for &v in list {
            if self.vendors.get(v).is_some() && self.vendors.unavailable(v).is_none() {
                tracing::info!(primary = %primary, vendor = %v, reason = %why, "Failing over: the job goes to the next vendor of its check");
                self.metrics.failover(primary, v);
                return (
                    v,
                    Some(Failover {
                        primary,
                        reason: why,
                    }),
                );
            }
        }
        (primary, None)
    }

    /// The job's claim, then its stored outcome: taken in this order, a
    /// copy that finishes between our lookup and our claim cannot be missed.
    async fn claim_and_look_up(
        &self,
        job: &Job,
        vendor: ProviderName,
        deadline: Instant,
    ) -> Result<Claimed, Failed> {
        let claim = match self.claims.claim(&job.job_id, vendor, deadline).await {
            Ok(claim) => claim,
            Err(NotClaimed::Busy(f) | NotClaimed::Unavailable(f)) => return Err(f),
        };
        match self.outcomes.lookup(&job.job_id, deadline).await? {
            // Released at once (dropped): nothing will be paid.
            Some(stored) => Ok(Claimed::Stored(Box::new(stored))),
            None => Ok(Claimed::Free(claim)),
        }
    }

    /// The job_id already has an outcome for another verification.
    fn conflict(&self, job: &Job, stored: &StoredOutcome, why: &str) -> Failed {
        let failure = Failure {
            provider: Some(stored.result.provider),
            ..Failure::new(
                FailureClass::JobIdConflict,
                format!(
                    "job_id {} already has a stored outcome ({}, verdict {}) for another verification: {why}; \
                     a job_id names one verification: publish this job under a new job_id",
                    job.job_id,
                    self.outcomes.location(&job.job_id),
                    stored.result.verdict,
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
            failover: None,
        }
    }
}
