//! Argos ID Liveness asynchronous mode (docs/reliability.md#argos-callback-mode):
//! unforgeable callback URLs, the job back from the callback wait, and what
//! a callback settles.
//!
//! Argos signs nothing it posts, so the URL is the credential: it names the
//! vendor, the job and the submission, carries an expiry, and a token that
//! is an HMAC-SHA256 over all four with `providers.argos.callback_secret`.
//! Any replica can receive any callback: what it needs to publish the result
//! is in the job's pending record in the results store, written before the
//! job's delivery was acked.
//!
//! When no callback comes, the job itself comes back: it waited in the
//! broker's callback wait queue (TTL `callback_wait`), and the worker that
//! receives it submits it again or dead-letters it
//! ([`Pipeline::callback_wait_over`]). The broker hands each waiting job to
//! exactly one replica, so this "sweeper" is safe with any number of them.

use super::disposition::{Disposition, Finished};
use super::failure::Echo;
use super::step::Incoming;
use super::token::{sign, unix_now};
use super::{Pipeline, ladder};
use crate::config::Secret;
use crate::domain::ProviderName;
use crate::domain::carried::Carried;
use crate::domain::dead_letter::{Failure, FailureClass};
use crate::domain::job::{Job, JobId, parse_job};
use crate::domain::result::Timings;
use crate::providers::ErrorKind;
use crate::store::PendingSubmission;
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Argos callback mode settings.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub public_url: url::Url,
    pub secret: Secret,
    pub token_ttl: Duration,
    /// Submissions per job before retries_exhausted.
    pub submissions: u32,
    /// How long one submission waits for its callback.
    pub wait: Duration,
}

impl CallbackSettings {
    /// The URL the vendor posts submission `submission` of `job_id` to.
    pub fn url(&self, vendor: ProviderName, job_id: &JobId, submission: u32) -> String {
        let expires = unix_now() + self.token_ttl.as_secs();
        let token = sign(
            self.secret.expose().as_bytes(),
            vendor,
            job_id.as_str(),
            submission,
            expires,
        );
        format!(
            "{}/callbacks/{vendor}/{job_id}/{submission}?expires={expires}&token={token}",
            self.public_url.as_str().trim_end_matches('/')
        )
    }
}

impl Pipeline {
    /// The job is back from the callback wait. Settled by its callback (or
    /// waiting on a later submission): ack it. Its callback never came:
    /// None to submit again, or a dead letter once the submissions are
    /// spent. A store it cannot read makes it wait another round.
    pub(super) async fn callback_wait_over(
        &self,
        job: &Job,
        raw: &RawValue,
        d: &Incoming,
        first_received_at: &str,
        started: Instant,
    ) -> Option<Finished> {
        let cb = self.callbacks.as_ref()?;
        if !self.outcomes.enabled() {
            return None;
        }
        let provider = self.cfg.routing.route(job).unwrap_or(ProviderName::Argos);
        let finished = |disposition| Some(Finished::new(disposition, Some(job.check)));
        let deadline = started + self.cfg.job_deadline;
        let wait_again = |pending_readable: bool| {
            tracing::warn!(
                pending_readable,
                "Results store unreadable after the callback wait; waiting another round"
            );
            finished(Disposition::AwaitCallback {
                carried: d.carried.clone(),
            })
            .map(|f| f.by(Some(provider)))
        };
        let settled = |reason| finished(Disposition::Settled { reason });
        // The pending record first: without one the job is settled whether
        // or not an outcome is stored (its callback stored and published it,
        // or dead-lettered it, and cleared the record after), so the
        // outcome is read only while a record remains. A callback settles
        // the common case: one request here instead of two.
        let pending = match self.outcomes.load_pending(&job.job_id).await {
            Ok(Some(p)) => p,
            Ok(None) => return settled("its callback settled it"),
            Err(_) => return wait_again(false),
        };
        let Ok(stored) = self.outcomes.lookup(&job.job_id, deadline).await else {
            return wait_again(true);
        };
        match (stored, pending) {
            // The callback stored the outcome; its publish may not have
            // happened: publish it (the record is cleared after).
            (Some(o), _) => {
                let mut result = o.result;
                result.metadata = job.metadata.clone();
                let by = Some(result.provider);
                finished(Disposition::Publish(Box::new(result))).map(|f| f.by(by))
            }
            (None, p) if p.submission > d.carried.callback_submissions => {
                settled("a later submission is waiting for its callback")
            }
            (None, p) if d.carried.callback_submissions >= cb.submissions => {
                let failure = Failure {
                    provider: Some(p.provider),
                    ..Failure::new(
                        FailureClass::RetriesExhausted,
                        format!(
                            "{} accepted {} submissions of this job (last transaction {}) but never called back \
                             within providers.argos.callback_wait ({:?}); check the vendor's status and that it can \
                             reach providers.argos.callback_public_url, then replay the job",
                            p.provider,
                            p.submission,
                            p.vendor.transaction_id.as_deref().unwrap_or("unknown"),
                            cb.wait
                        ),
                    )
                };
                let echo = Echo {
                    job_id: Some(job.job_id.to_string()),
                    job: Some(raw.to_owned()),
                    raw_body: None,
                };
                let dl = echo.dead_letter(
                    failure,
                    p.attempts,
                    first_received_at.to_owned(),
                    &self.cfg.worker_id,
                );
                finished(Disposition::DeadLetter(Box::new(dl))).map(|f| f.by(Some(p.provider)))
            }
            (None, p) => {
                tracing::warn!(
                    submission = p.submission,
                    "No callback within providers.argos.callback_wait; submitting again"
                );
                None
            }
        }
    }

    /// What a callback for `pending` settles: the result (stored before it
    /// is returned), a dead letter, or a trip on the delay ladder for a
    /// transient failure. The caller publishes it, then clears the record.
    pub async fn settle_callback(&self, pending: &PendingSubmission, body: &[u8]) -> Finished {
        let mut finished = self.settle_callback_inner(pending, body).await;
        finished.clear_pending = Some(pending.job_id.clone());
        finished
    }

    async fn settle_callback_inner(&self, pending: &PendingSubmission, body: &[u8]) -> Finished {
        let first = pending.first_received_at.clone();
        let parsed = parse_job(pending.job.get().as_bytes(), self.cfg.max_job_bytes);
        let dead = |failure: Failure| {
            Disposition::DeadLetter(Box::new(Echo::of(&parsed).dead_letter(
                failure,
                pending.attempts,
                first.clone(),
                &self.cfg.worker_id,
            )))
        };
        let job = match &parsed {
            Ok(p) => &p.job,
            Err(e) => {
                let failure = Failure::new(
                    FailureClass::Internal,
                    format!("the pending record's job no longer parses ({})", e.message),
                );
                return Finished::new(dead(failure), e.check);
            }
        };
        let done =
            |disposition| Finished::new(disposition, Some(job.check)).by(Some(pending.provider));
        let Some(provider) = self.vendors.get(pending.provider) else {
            return done(dead(Failure::new(
                FailureClass::Internal,
                format!(
                    "a callback came for {}, which this worker has no adapter configured for",
                    pending.provider
                ),
            )));
        };
        let since = |rfc3339: &str| {
            humantime::parse_rfc3339(rfc3339)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0, |d| d.as_millis() as u64)
        };
        let e = match provider.read_callback(body, &job.signals) {
            Ok(assessment) => {
                let result = self.result(
                    job,
                    pending.provider,
                    assessment,
                    pending.image.clone(),
                    pending.attempts,
                    Timings {
                        fetch: pending.fetch_ms,
                        vendor: since(&pending.submitted_at),
                        total: since(&pending.first_received_at),
                    },
                );
                self.outcomes
                    .store(
                        &result,
                        pending.back_image_sha256.clone(),
                        pending.attempt_log.clone(),
                        &tokio_util::sync::CancellationToken::new(),
                    )
                    .await;
                return done(Disposition::Publish(Box::new(result)));
            }
            Err(e) => e.sanitized(),
        };
        let failure = |class| Failure {
            provider: Some(pending.provider),
            vendor_code: e.vendor_code.clone(),
            http_status: e.http_status,
            ..Failure::new(class, format!("{} (by callback)", e.message))
        };
        let disposition = match e.kind {
            ErrorKind::Permanent(class) => {
                let mut f = failure(class);
                if class == FailureClass::VendorRejectedRequest {
                    f.message.push_str(". The request will not succeed unchanged: check the image and the adapter, then replay");
                }
                dead(f)
            }
            // A transient failure (a credentials refusal cannot come by
            // callback, but would wait the same way): the next ladder step
            // submits again.
            ErrorKind::Transient { .. } | ErrorKind::Outage { .. } | ErrorKind::Credentials => {
                let progress = Carried {
                    attempts: pending.attempts,
                    ladder_step: pending.ladder_step,
                    first_received_at: Some(first.clone()),
                    callback_submissions: pending.submission,
                    awaiting_callback: false,
                };
                match ladder::next(progress, self.cfg.ladder_len) {
                    Some((step, carried)) => Disposition::RetryLater {
                        step,
                        carried,
                        reason: format!("{} (by callback)", e.message),
                    },
                    None => dead(ladder::exhausted(
                        failure(FailureClass::RetriesExhausted),
                        self.cfg.ladder_len,
                        pending.attempts,
                    )),
                }
            }
        };
        done(disposition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::token::verify;

    #[test]
    fn the_url_carries_what_the_receiver_verifies() {
        let cb = CallbackSettings {
            public_url: "https://cb.example.com/".parse().unwrap(),
            secret: Secret::new("0123456789abcdef0123456789abcdef"),
            token_ttl: Duration::from_secs(60),
            submissions: 3,
            wait: Duration::from_secs(10),
        };
        let url = cb.url(ProviderName::Argos, &JobId::parse("a:b.c").unwrap(), 1);
        let rest = url
            .strip_prefix("https://cb.example.com/callbacks/argos/a:b.c/1?expires=")
            .expect(&url);
        let (expires, token) = rest.split_once("&token=").unwrap();
        let expires: u64 = expires.parse().unwrap();
        assert!(expires >= unix_now() + 59);
        assert_eq!(
            verify(
                cb.secret.expose().as_bytes(),
                ProviderName::Argos,
                "a:b.c",
                1,
                expires,
                token,
                unix_now()
            ),
            Ok(())
        );
    }
}
