//! The vendor call: the adapters by name, and one verification with
//! in-process retries within the job deadline. Every attempt passes the
//! gate first and is recorded for the audit trail.

use super::backoff::Backoff;
use super::failure::{Failed, now_rfc3339};
use super::gate::VendorGate;
use super::traffic::{Ticket, Traffic};
use crate::domain::dead_letter::{Failure, FailureClass};
use crate::domain::{AttemptOutcome, ProviderName};
use crate::providers::{ErrorKind, Provider, Submission, VendorError, VendorRequest};
use crate::store::AttemptRecord;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What limits a verification's attempts.
#[derive(Clone, Copy)]
pub struct Bounds<'a> {
    /// The job's deadline for this delivery.
    pub deadline: Instant,
    /// Attempts made in earlier deliveries (attempts are numbered after them).
    pub earlier_attempts: u32,
    /// No attempt starts once this is cancelled.
    pub stop: &'a CancellationToken,
}

/// How one vendor attempt is made.
#[derive(Clone, Copy)]
pub enum Call<'a> {
    /// Synchronously: the answer is the verdict.
    Verify,
    /// In callback mode: the verdict comes later to `callback_url`.
    Submit { callback_url: &'a str },
}

pub struct Vendors {
    providers: HashMap<ProviderName, Arc<dyn Provider>>,
    gate: VendorGate,
    backoff: Backoff,
    max_retry_after: Duration,
    job_deadline: Duration,
    worker_id: String,
    metrics: Arc<Metrics>,
}

impl Vendors {
    pub fn new(
        providers: HashMap<ProviderName, Arc<dyn Provider>>,
        gate: VendorGate,
        backoff: Backoff,
        max_retry_after: Duration,
        job_deadline: Duration,
        worker_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Vendors {
            providers,
            gate,
            backoff,
            max_retry_after,
            job_deadline,
            worker_id,
            metrics,
        }
    }

    /// What this replica sees of each vendor now.
    pub fn states(&self) -> Vec<crate::coordination::VendorState> {
        let mut states = self.gate.states();
        self.gate.traffic().describe(&mut states);
        states
    }

    /// The traffic limits (rate, adaptive concurrency, budget).
    pub fn traffic(&self) -> &Traffic {
        self.gate.traffic()
    }

    pub fn set_traffic(&mut self, traffic: Traffic) {
        self.gate.set_traffic(traffic);
    }

    /// Why `name` cannot be called now (paused, breaker open, its probe
    /// not due), or None.
    pub fn unavailable(&self, name: ProviderName) -> Option<String> {
        self.gate.unavailable(name)
    }

    /// The vendors this worker has adapters for.
    pub fn names(&self) -> Vec<ProviderName> {
        self.providers.keys().copied().collect()
    }

    /// The adapter for `name`, if this worker has one configured.
    pub fn get(&self, name: ProviderName) -> Option<&Arc<dyn Provider>> {
        self.providers.get(&name)
    }

    /// One verification of `req` with `provider`, retried in process for
    /// transient failures until the attempts or `deadline` run out. Each
    /// attempt is appended to `log`, numbered after `earlier_attempts`. A
    /// `ticket` (the vendor's slot and token taken without waiting) serves
    /// the first attempt.
    pub async fn call<'a>(
        &'a self,
        provider: &dyn Provider,
        req: &VendorRequest<'_>,
        bounds: Bounds<'_>,
        log: &mut Vec<AttemptRecord>,
        call: Call<'_>,
        mut ticket: Option<Ticket<'a>>,
    ) -> Result<Submission, Failed> {
        let Bounds {
            deadline,
            earlier_attempts,
            stop,
        } = bounds;
        let name = provider.name();
        let mut delays = self.backoff.delays(deadline);
        loop {
            if stop.is_cancelled() {
                return Err(Failed::Abandoned);
            }
            self.gate.admit(name)?;
            // A rate token, a concurrency slot, a unit of budget: waiting for
            // them is no attempt; a job that cannot get them parks.
            let admitted = self
                .gate
                .traffic()
                .admit(name, deadline, stop, ticket.take())
                .await?;
            let attempt = earlier_attempts
                .saturating_add(log.len() as u32)
                .saturating_add(1);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started_at = now_rfc3339();
            let started = Instant::now();
            let in_call = self.gate.begin(name);
            let attempt_call = async {
                match call {
                    Call::Verify => provider.verify(req).await.map(Submission::Answered),
                    Call::Submit { callback_url } => {
                        provider.submit_for_callback(req, callback_url).await
                    }
                }
            };
            let answer = match tokio::time::timeout(remaining, attempt_call).await {
                // Vendor text goes no further unclean.
                Ok(r) => r.map_err(VendorError::sanitized),
                Err(_) => Err(VendorError::outage(format!(
                    "{name} did not answer within the job deadline ({:?})",
                    self.job_deadline
                ))),
            };
            let took = started.elapsed();
            let outcome = match &answer {
                Ok(_) => AttemptOutcome::Ok,
                Err(e) => e.kind.outcome(),
            };
            log.push(AttemptRecord {
                attempt,
                provider: name,
                started_at,
                duration_ms: took.as_millis() as u64,
                outcome,
                http_status: answer.as_ref().err().and_then(|e| e.http_status),
                vendor_code: answer.as_ref().err().and_then(|e| e.vendor_code.clone()),
                vendor: answer.as_ref().ok().map(|s| match s {
                    Submission::Answered(a) => a.vendor.clone(),
                    Submission::Accepted(refs) => refs.clone(),
                }),
                error: answer.as_ref().err().map(|e| e.message.clone()),
                worker: self.worker_id.clone(),
            });
            let outage = answer.as_ref().err().is_some_and(VendorError::is_outage);
            let refusal = answer
                .as_ref()
                .err()
                .filter(|e| e.kind == ErrorKind::Credentials)
                .map(|e| e.message.as_str());
            self.gate.record(name, outcome, outage, took, refusal);
            self.gate
                .traffic()
                .finish(name, admitted, answer.as_ref().map(|_| ()), took)
                .await;
            drop(in_call);
            self.metrics.vendor_call(name, outcome, took);
            let e = match answer {
                Ok(a) => return Ok(a),
                Err(e) if !e.kind.is_retryable() => return Err(failed(name, e)),
                Err(e) => e,
            };
            let Some(step) = delays.next() else {
                return Err(failed(name, e));
            };
            let wait = match e.retry_after() {
                // A vendor asking for a longer pause than we hold a delivery for: the ladder waits instead.
                Some(ra) if ra > self.max_retry_after => return Err(failed(name, e)),
                Some(ra) => ra,
                None => step,
            };
            if Instant::now() + wait >= deadline {
                return Err(failed(name, e));
            }
            tracing::warn!(error = %e, attempt, delay_ms = wait.as_millis() as u64, "Vendor call failed, retrying");
            self.metrics.vendor_retry(name);
            tokio::time::sleep(wait).await;
        }
    }
}

/// What a vendor error means for the job.
fn failed(vendor: ProviderName, e: VendorError) -> Failed {
    let failure = |class: FailureClass, message: String| Failure {
        provider: Some(vendor),
        vendor_code: e.vendor_code.clone(),
        http_status: e.http_status,
        ..Failure::new(class, message)
    };
    match e.kind {
        ErrorKind::Credentials => Failed::Park {
            vendor,
            reason: e.message,
        },
        ErrorKind::Transient { .. } | ErrorKind::Outage { .. } => {
            Failed::Transient(failure(FailureClass::RetriesExhausted, e.message.clone()))
        }
        ErrorKind::Permanent(class) => {
            let mut message = e.message.clone();
            if class == FailureClass::VendorRejectedRequest {
                message.push_str(". The request will not succeed unchanged: check the image and the adapter, then replay");
            }
            Failed::Permanent {
                failure: failure(class, message),
                attempts: None,
            }
        }
    }
}
