//! The step function: one delivery in, one [`Finished`] disposition out.
//!
//! Poison check, then the body (parsed once by [`Pipeline::parse`]), then
//! the job back from the callback wait, then [`Pipeline::verify`] (route,
//! fetch and lookup, gate and call), then the disposition that follows from
//! what happened. The attempts of a delivery that produced no outcome go to
//! the audit trail.

use super::context::{Origin, Signals, StepContext};
use super::disposition::{Disposition, Finished};
use super::failure::{Echo, Failed, now_rfc3339};
use super::verify::Verified;
use super::{Pipeline, ladder};
use crate::domain::Check;
use crate::domain::carried::Carried;
use crate::domain::dead_letter::{Failure, FailureClass};
use crate::domain::job::{InvalidJob, Job, ParsedJob, parse_job};
use crate::domain::result::Timings;
use crate::domain::shadow::PrimaryAnswer;
use tokio::time::Instant;

/// One delivery as the pipeline sees it, its body parsed once.
pub struct Incoming {
    pub parsed: Result<ParsedJob, InvalidJob>,
    /// How many times the broker delivered it before (`x-delivery-count`).
    pub delivery_count: u32,
    /// Progress carried across the delay ladder in message headers.
    pub carried: Carried,
    /// The job's AMQP correlation_id (kept for a callback-mode result).
    pub correlation_id: Option<String>,
    pub signals: Signals,
    pub origin: Origin,
}

impl Incoming {
    /// The job's id, when the body is a valid job.
    pub fn job_id(&self) -> Option<&crate::domain::job::JobId> {
        self.parsed.as_ref().ok().map(|p| &p.job.job_id)
    }

    /// The job_id to log: the valid one, or an escaped, shortened hint of
    /// an invalid one.
    pub fn job_id_hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.parsed {
            Ok(p) => Some(p.job.job_id.as_str().into()),
            Err(e) => e.job_id_hint().map(Into::into),
        }
    }

    fn check(&self) -> Option<Check> {
        match &self.parsed {
            Ok(p) => Some(p.job.check),
            Err(e) => e.check,
        }
    }
}

impl Pipeline {
    /// Parses a delivery body, once.
    pub fn parse(
        &self,
        body: &[u8],
        delivery_count: u32,
        carried: Carried,
        correlation_id: Option<String>,
    ) -> Incoming {
        Incoming {
            parsed: parse_job(body, self.cfg.max_job_bytes),
            delivery_count,
            carried,
            correlation_id,
            signals: Signals::default(),
            origin: Origin::Jobs,
        }
    }

    /// Processes one delivery. Never panics on bad input; never fails: every
    /// outcome is a disposition.
    pub async fn step(&self, d: &Incoming) -> Finished {
        let mut finished = self.step_inner(d).await;
        // Back from the callback wait and now finished for good: its pending
        // record has served its purpose once this is published.
        if d.carried.awaiting_callback
            && let Ok(p) = &d.parsed
            && matches!(
                finished.disposition,
                Disposition::Publish(_) | Disposition::DeadLetter(_)
            )
        {
            finished.clear_pending = Some(p.job.job_id.clone());
        }
        finished
    }

    async fn step_inner(&self, d: &Incoming) -> Finished {
        let started = Instant::now();
        let first_received_at = d
            .carried
            .first_received_at
            .clone()
            .unwrap_or_else(now_rfc3339);

        if d.delivery_count >= self.cfg.poison_threshold {
            let failure = Failure::new(
                FailureClass::Internal,
                format!(
                    "the job was delivered {} times without finishing, so it may be what crashes or stalls the worker; \
                     it was not processed again. Check the worker logs and restarts around its deliveries, then replay it",
                    d.delivery_count + 1
                ),
            );
            let dl = Echo::of(&d.parsed).dead_letter(
                failure,
                d.carried.attempts,
                first_received_at,
                &self.cfg.worker_id,
            );
            return Finished::new(Disposition::DeadLetter(Box::new(dl)), d.check());
        }

        let ParsedJob { job, raw } = match &d.parsed {
            Ok(p) => p,
            Err(e) => {
                let failure = Failure::new(
                    FailureClass::InvalidJob,
                    format!(
                        "{}. Fix the producer and publish a corrected job; replaying this one cannot succeed",
                        e.message
                    ),
                );
                let dl = Echo::of(&d.parsed).dead_letter(
                    failure,
                    d.carried.attempts,
                    first_received_at,
                    &self.cfg.worker_id,
                );
                return Finished::new(Disposition::DeadLetter(Box::new(dl)), e.check);
            }
        };

        if d.carried.awaiting_callback
            && let Some(finished) = self
                .callback_wait_over(job, raw, d, &first_received_at, started)
                .await
        {
            return finished;
        }

        let mut log = Vec::new();
        let ctx = StepContext {
            raw,
            correlation_id: d.correlation_id.clone(),
            first_received_at: &first_received_at,
            signals: &d.signals,
            origin: d.origin,
        };
        let verified = self.verify(job, started, &d.carried, &ctx, &mut log).await;
        let attempts = d.carried.attempts.saturating_add(log.len() as u32);
        let progress = Carried {
            attempts,
            first_received_at: Some(first_received_at.clone()),
            awaiting_callback: false,
            ..d.carried.clone()
        };
        let finished = match verified {
            Ok(Verified::Stored(stored)) => {
                tracing::info!(
                    attempts = stored.result.attempts,
                    "Outcome already stored; re-publishing it without calling the vendor"
                );
                self.metrics.outcome_reused();
                let mut result = stored.result;
                // The verdict is the stored one; the metadata is this job's.
                result.metadata = job.metadata.clone();
                let provider = result.provider;
                Finished::new(Disposition::Publish(Box::new(result)), Some(job.check))
                    .by(Some(provider))
            }
            Ok(Verified::MustWait { provider }) => {
                tracing::info!(vendor = %provider, "The vendor cannot take the job now: moving it to the vendor's wait queue");
                Finished::new(
                    Disposition::Wait {
                        vendor: provider,
                        carried: progress,
                    },
                    Some(job.check),
                )
                .by(Some(provider))
            }
            Ok(Verified::Submitted {
                provider,
                submission,
                ..
            }) => {
                let carried = Carried {
                    callback_submissions: submission,
                    awaiting_callback: true,
                    ..progress
                };
                Finished::new(Disposition::AwaitCallback { carried }, Some(job.check))
                    .by(Some(provider))
            }
            Ok(Verified::Fresh {
                assessment,
                provider,
                image,
                back_sha256,
                fetch_ms,
                vendor_ms,
                claim,
                failover,
                shadow,
            }) => {
                let mut result = self.result(
                    job,
                    provider,
                    assessment,
                    image,
                    attempts,
                    Timings {
                        fetch: fetch_ms,
                        vendor: vendor_ms,
                        total: started.elapsed().as_millis() as u64,
                    },
                );
                result.failover = failover;
                let first = self
                    .outcomes
                    .store(
                        &result,
                        back_sha256,
                        std::mem::take(&mut log),
                        &d.signals.hurry,
                    )
                    .await;
                // Another copy stored first: its verdict is the job's (and
                // that copy makes the shadow call, if any).
                let (result, shadow) = match first {
                    Some(mut first) => {
                        first.metadata = job.metadata.clone();
                        (first, None)
                    }
                    None => (result, shadow),
                };
                // Stored (or given up on): another copy may go on now.
                drop(claim);
                let shadow = shadow.map(|s| s.answering(PrimaryAnswer::of(&result)));
                let mut finished =
                    Finished::new(Disposition::Publish(Box::new(result)), Some(job.check))
                        .by(Some(provider));
                finished.shadow = shadow;
                finished
            }
            Err(failed) => {
                let vendor = failed.vendor();
                let disposition = match failed {
                    Failed::Abandoned => Disposition::Abandoned,
                    Failed::Park { reason, .. } => {
                        let (step, carried) =
                            ladder::park(progress, self.cfg.credentials_park_step);
                        Disposition::RetryLater {
                            step,
                            carried,
                            reason,
                        }
                    }
                    Failed::Transient(failure) => {
                        self.after_transient(job, raw, failure, progress, &first_received_at)
                    }
                    Failed::Permanent {
                        failure,
                        attempts: reported,
                    } => Disposition::DeadLetter(Box::new(Echo::of(&d.parsed).dead_letter(
                        failure,
                        reported.unwrap_or(attempts),
                        first_received_at,
                        &self.cfg.worker_id,
                    ))),
                };
                Finished::new(disposition, Some(job.check)).by(vendor)
            }
        };
        if !log.is_empty() {
            self.outcomes
                .audit(&job.job_id, &finished.disposition, log)
                .await;
        }
        finished
    }

    /// A transient failure: the next ladder step, or `retries_exhausted`
    /// past the last one.
    pub(super) fn after_transient(
        &self,
        job: &Job,
        raw: &serde_json::value::RawValue,
        failure: Failure,
        progress: Carried,
        first_received_at: &str,
    ) -> Disposition {
        let attempts = progress.attempts;
        match ladder::next(progress, self.cfg.ladder_len) {
            Some((step, carried)) => Disposition::RetryLater {
                step,
                carried,
                reason: failure.message,
            },
            None => {
                let echo = Echo {
                    job_id: Some(job.job_id.to_string()),
                    job: Some(raw.to_owned()),
                    raw_body: None,
                };
                Disposition::DeadLetter(Box::new(echo.dead_letter(
                    ladder::exhausted(failure, self.cfg.ladder_len, attempts),
                    attempts,
                    first_received_at.to_owned(),
                    &self.cfg.worker_id,
                )))
            }
        }
    }

    /// The dead letter for a job whose processing crashed.
    pub fn internal_dead_letter(&self, d: &Incoming, message: String) -> Finished {
        let first = d
            .carried
            .first_received_at
            .clone()
            .unwrap_or_else(now_rfc3339);
        let dl = Echo::of(&d.parsed).dead_letter(
            Failure::new(FailureClass::Internal, message),
            d.carried.attempts,
            first,
            &self.cfg.worker_id,
        );
        Finished::new(Disposition::DeadLetter(Box::new(dl)), d.check())
    }
}
