//! The outcome stage: the results store that makes "pay once" true
//! (docs/reliability.md#pay-once-the-results-store). A job's stored outcome is looked up
//! before any vendor call and a new one is stored before its result is
//! published; pending callback records and the audit trail live here too.
//! Without a store every operation is a no-op and every lookup finds
//! nothing.

use super::backoff::Backoff;
use super::disposition::Disposition;
use super::failure::{Failed, now_rfc3339};
use crate::domain::dead_letter::FailureClass;
use crate::domain::job::JobId;
use crate::domain::result::LivenessResult;
use crate::store::outcomes::{ATTEMPTS_SCHEMA, OUTCOME_SCHEMA};
use crate::store::{
    AttemptLog, AttemptRecord, OutcomeError, OutcomeStore, PendingSubmission, StoredOutcome,
};
use crate::telemetry::{Metrics, StoreOp};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a write to the store ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persisted {
    Written,
    /// A conditional write found a record there already.
    Exists,
    /// The store stayed down (or the drain ran out of time).
    GaveUp,
}

pub struct Outcomes {
    store: Option<Arc<dyn OutcomeStore>>,
    backoff: Backoff,
    /// How long a paid-for answer is retried into the store.
    store_timeout: Duration,
    audit: bool,
    metrics: Arc<Metrics>,
}

impl Outcomes {
    pub fn new(
        store: Option<Arc<dyn OutcomeStore>>,
        backoff: Backoff,
        store_timeout: Duration,
        audit: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Outcomes {
            store,
            backoff,
            store_timeout,
            audit,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// Where a job's outcome lives, for messages (`s3://...`).
    pub fn location(&self, job_id: &JobId) -> String {
        self.store
            .as_ref()
            .map(|s| s.location(job_id))
            .unwrap_or_default()
    }

    /// The job's stored outcome, retrying a store that is down within
    /// `deadline`. Not knowing is a transient failure: calling the vendor
    /// blind could pay for the same job twice.
    pub async fn lookup(
        &self,
        job_id: &JobId,
        deadline: Instant,
    ) -> Result<Option<StoredOutcome>, Failed> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let mut delays = self.backoff.delays(deadline);
        loop {
            match store.load(job_id).await {
                Ok(found) => return Ok(found),
                Err(OutcomeError::Corrupt(m)) => {
                    self.metrics.store_error(StoreOp::Load);
                    return Err(Failed::permanent(
                        FailureClass::Internal,
                        format!(
                            "{m}; inspect that object (delete it if it is garbage) and replay the job"
                        ),
                    ));
                }
                Err(OutcomeError::Unavailable(m) | OutcomeError::AlreadyStored(m)) => {
                    self.metrics.store_error(StoreOp::Load);
                    match delays.next() {
                        Some(d) if Instant::now() + d < deadline => {
                            tracing::warn!(error = %m, delay_ms = d.as_millis() as u64, "Results store lookup failed, retrying");
                            tokio::time::sleep(d).await;
                        }
                        _ => {
                            return Err(Failed::transient(format!(
                                "{m}; the job waits rather than risk paying the vendor twice"
                            )));
                        }
                    }
                }
            }
        }
    }

    /// The job's pending callback record, read once.
    pub async fn load_pending(
        &self,
        job_id: &JobId,
    ) -> Result<Option<PendingSubmission>, OutcomeError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let pending = store.load_pending(job_id).await;
        if pending.is_err() {
            self.metrics.store_error(StoreOp::Load);
        }
        pending
    }

    /// The job's stored outcome and pending record, each read once (the
    /// callback receiver: the vendor posts again when this fails).
    pub async fn load_both(
        &self,
        job_id: &JobId,
    ) -> Result<(Option<StoredOutcome>, Option<PendingSubmission>), OutcomeError> {
        let Some(store) = &self.store else {
            return Ok((None, None));
        };
        let (stored, pending) = tokio::join!(store.load(job_id), store.load_pending(job_id));
        let both = stored.and_then(|s| pending.map(|p| (s, p)));
        if both.is_err() {
            self.metrics.store_error(StoreOp::Load);
        }
        both
    }

    /// Writes a paid-for outcome, retrying while the store is down for up
    /// to `results.store_timeout`. Past that the result is published
    /// unstored (logged as an error): losing an answer the vendor already
    /// billed for is worse than the small risk of a second payment should
    /// this very job be delivered again.
    ///
    /// Outcomes are written conditionally (only if absent). Where the store
    /// honours that and another copy of the job stored first, that copy's
    /// result is returned: the one to publish, so every copy publishes the
    /// same verdict.
    pub async fn store(
        &self,
        result: &LivenessResult,
        back_sha256: Option<String>,
        attempts: Vec<AttemptRecord>,
        hurry: &CancellationToken,
    ) -> Option<LivenessResult> {
        let Some(store) = &self.store else {
            return None;
        };
        let outcome = StoredOutcome {
            schema: OUTCOME_SCHEMA.into(),
            job_id: result.job_id.clone(),
            image_sha256: result.image.sha256.clone(),
            back_image_sha256: back_sha256,
            stored_at: now_rfc3339(),
            result: result.clone(),
            attempts,
        };
        match self
            .persist("outcome", hurry, || store.save(&outcome))
            .await
        {
            Persisted::Written => None,
            Persisted::Exists => match store.load(&result.job_id).await {
                Ok(Some(first)) => {
                    tracing::warn!(
                        "Another copy of this job stored its outcome first; publishing that one"
                    );
                    Some(first.result)
                }
                _ => None,
            },
            Persisted::GaveUp => {
                tracing::error!(location = %store.location(&result.job_id), "Could not store the outcome (within results.store_timeout, or before the drain ended); publishing it unstored, so a redelivery of this job would call the vendor again");
                None
            }
        }
    }

    /// Records a callback-mode submission; false if the store stayed down
    /// for `results.store_timeout` (or there is no store).
    pub async fn save_pending(
        &self,
        pending: &PendingSubmission,
        hurry: &CancellationToken,
    ) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        self.persist("pending submission", hurry, || store.save_pending(pending))
            .await
            != Persisted::GaveUp
    }

    /// Removes a job's pending record once its outcome is published (best
    /// effort: a leftover record only makes a later wait round re-publish
    /// the stored result).
    pub async fn clear_pending(&self, job_id: &JobId) {
        if let Some(store) = &self.store
            && let Err(e) = store.delete_pending(job_id).await
        {
            self.metrics.store_error(StoreOp::Delete);
            tracing::warn!(error = %e, "Could not clear the pending callback record");
        }
    }

    /// Retries a write while the store is down, for up to
    /// `results.store_timeout` or until `hurry`; false if it never
    /// succeeded.
    async fn persist<F, Fut>(
        &self,
        what: &str,
        hurry: &CancellationToken,
        mut write: F,
    ) -> Persisted
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), OutcomeError>>,
    {
        let give_up = Instant::now() + self.store_timeout;
        let mut wait = self.backoff.initial;
        loop {
            let e = match write().await {
                Ok(()) => return Persisted::Written,
                Err(OutcomeError::AlreadyStored(_)) => return Persisted::Exists,
                Err(e) => e,
            };
            self.metrics.store_error(StoreOp::Save);
            if Instant::now() + wait >= give_up || hurry.is_cancelled() {
                tracing::error!(error = %e, what, "Giving up writing to the results store");
                return Persisted::GaveUp;
            }
            tracing::warn!(error = %e, what, delay_ms = wait.as_millis() as u64, "Could not write to the results store, retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64() / 2.0)) => {}
                _ = hurry.cancelled() => {}
            }
            wait = (wait * 2).min(self.backoff.max);
        }
    }

    /// The audit record of a delivery's vendor attempts that produced no
    /// outcome. Best effort and bounded: the audit trail must not hold a
    /// job hostage.
    pub async fn audit(
        &self,
        job_id: &JobId,
        disposition: &Disposition,
        attempts: Vec<AttemptRecord>,
    ) {
        let Some(store) = self.store.as_ref().filter(|_| self.audit) else {
            return;
        };
        let log = AttemptLog {
            schema: ATTEMPTS_SCHEMA.into(),
            job_id: job_id.clone(),
            disposition: disposition.label(),
            attempts,
        };
        match tokio::time::timeout(Duration::from_secs(5), store.save_attempts(&log)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.metrics.store_error(StoreOp::Audit);
                tracing::warn!(error = %e, "Could not write the vendor attempts to the audit trail");
            }
            Err(_) => {
                self.metrics.store_error(StoreOp::Audit);
                tracing::warn!("Writing the vendor attempts to the audit trail timed out");
            }
        }
    }
}
