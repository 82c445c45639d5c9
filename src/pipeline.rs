//! One job from delivery body to disposition. The consume loop, the
//! concurrency limit, publishing and acking live outside (in `broker` and
//! `worker`); this step knows no broker, SDK or HTTP type, and tests call it
//! directly.

use crate::breaker::Breaker;
use crate::domain::assessment::Assessment;
use crate::domain::dead_letter::{DEAD_LETTER_SCHEMA, DeadLetter, Failure, FailureClass};
use crate::domain::job::{InvalidJob, Job, JobEnvelope, S3Uri, parse_job};
use crate::domain::result::{ImageInfo, LivenessResult, RESULT_SCHEMA, Timings};
use crate::domain::routing::Routing;
use crate::domain::{Check, ProviderName};
use crate::image::{describe_prefix, sha256_hex, sniff_content_type};
use crate::providers::{ErrorKind, Image, Provider, Submission, VendorError, VendorRequest};
use crate::store::outcomes::OUTCOME_SCHEMA;
use crate::store::{
    AttemptLog, AttemptRecord, FetchError, ImageStore, OutcomeError, OutcomeStore,
    PendingSubmission, StoredOutcome,
};
use crate::telemetry::Metrics;
use backon::BackoffBuilder as _;
use base64::Engine as _;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the pipeline needs from configuration.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub routing: Routing,
    pub max_job_bytes: usize,
    pub max_image_bytes: u64,
    pub job_deadline: Duration,
    pub attempts_per_delivery: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
    /// Steps on the delay ladder.
    pub ladder_len: usize,
    pub credentials_park_step: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub pause_probe_interval: Duration,
    pub poison_threshold: u32,
    pub worker_id: String,
    /// How long a paid-for outcome is retried into the results store.
    pub store_timeout: Duration,
    /// Write an audit record of vendor attempts that produced no outcome.
    pub audit: bool,
}

impl PipelineConfig {
    pub fn from_config(c: &crate::config::Config) -> Self {
        PipelineConfig {
            routing: Routing::from_config(c),
            max_job_bytes: c.worker.max_job_bytes,
            max_image_bytes: c.worker.max_image_bytes,
            job_deadline: c.worker.job_deadline,
            attempts_per_delivery: c.retry.attempts_per_delivery,
            initial_backoff: c.retry.initial_backoff,
            max_backoff: c.retry.max_backoff,
            max_retry_after: c.retry.max_retry_after,
            ladder_len: c.broker.retry_delays.len(),
            credentials_park_step: c.retry.credentials_park_step,
            breaker_failures: c.retry.breaker_failures,
            breaker_cooldown: c.retry.breaker_cooldown,
            pause_probe_interval: c.retry.pause_probe_interval,
            poison_threshold: c.broker.poison_threshold,
            worker_id: c.worker_identity(),
            store_timeout: c.results.store_timeout,
            audit: c.results.audit,
        }
    }
}

/// One delivery as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub body: &'a [u8],
    /// How many times the broker delivered it before (`x-delivery-count`).
    pub delivery_count: u32,
    /// State carried across the delay ladder in message headers.
    pub carried: Carried,
    /// The job's AMQP correlation_id (kept for a callback-mode result).
    pub correlation_id: Option<&'a str>,
}

/// What a job carries from one delivery to the next on the delay ladder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// Vendor attempts made in earlier deliveries.
    pub attempts: u32,
    /// Ladder steps already used.
    pub ladder_step: u32,
    /// RFC 3339 time the worker first received the job.
    pub first_received_at: Option<String>,
    /// Argos callback mode: submissions made so far.
    pub callback_submissions: u32,
    /// This delivery is the job back from the callback wait.
    pub awaiting_callback: bool,
}

/// What to do with a delivery.
#[derive(Debug)]
pub enum Disposition {
    /// Publish this result, then ack.
    Publish(Box<LivenessResult>),
    /// Publish this dead letter, then ack.
    DeadLetter(Box<DeadLetter>),
    /// Republish the job body to delay-ladder step `step` carrying `carried`,
    /// then ack.
    RetryLater {
        step: usize,
        carried: Carried,
        reason: String,
        check: Check,
        provider: Option<ProviderName>,
    },
    /// Argos callback mode: the vendor accepted the job and its pending
    /// record is stored; republish the job body to the callback wait queue
    /// carrying `carried`, then ack.
    AwaitCallback {
        carried: Carried,
        check: Check,
        provider: ProviderName,
    },
    /// The job back from the callback wait was already settled by its
    /// callback: ack, publish nothing.
    Settled { reason: String, check: Check },
}

impl Disposition {
    pub fn label(&self) -> String {
        match self {
            Disposition::Publish(r) => format!("result {}", r.routing_key()),
            Disposition::DeadLetter(d) => format!("dead letter {}", d.failure.class),
            Disposition::RetryLater { step, .. } => format!("retry step {step}"),
            Disposition::AwaitCallback { carried, .. } => format!(
                "awaiting callback (submission {})",
                carried.callback_submissions
            ),
            Disposition::Settled { reason, .. } => format!("settled: {reason}"),
        }
    }

    /// Counts the disposition once its publish was confirmed.
    pub fn record(&self, m: &Metrics) {
        let vendor = |p: Option<ProviderName>| p.map_or("none", ProviderName::as_str);
        match self {
            Disposition::Publish(r) => m.job_finished(
                "result",
                r.verdict.as_str(),
                r.check.as_str(),
                r.provider.as_str(),
            ),
            Disposition::DeadLetter(d) => {
                let check = d
                    .job
                    .as_ref()
                    .and_then(|j| serde_json::from_str::<serde_json::Value>(j.get()).ok())
                    .and_then(|j| {
                        j.get("check")
                            .and_then(|c| c.as_str())
                            .and_then(Check::parse)
                    })
                    .map_or("unknown", Check::as_str);
                m.job_finished("dead_letter", "none", check, vendor(d.failure.provider));
                m.dead_letter(d.failure.class.as_str(), vendor(d.failure.provider));
            }
            Disposition::RetryLater {
                check, provider, ..
            } => m.job_finished("retry_later", "none", check.as_str(), vendor(*provider)),
            Disposition::AwaitCallback {
                check, provider, ..
            } => m.job_finished(
                "awaiting_callback",
                "none",
                check.as_str(),
                provider.as_str(),
            ),
            Disposition::Settled { check, .. } => {
                m.job_finished("settled", "none", check.as_str(), "none")
            }
        }
    }
}

pub struct Pipeline {
    cfg: PipelineConfig,
    store: Arc<dyn ImageStore>,
    providers: HashMap<ProviderName, Arc<dyn Provider>>,
    metrics: Arc<Metrics>,
    breakers: HashMap<ProviderName, Breaker>,
    /// Per vendor: open while it refuses our credentials (paused), letting
    /// one job through per probe interval.
    pauses: HashMap<ProviderName, Breaker>,
    outcomes: Option<Arc<dyn OutcomeStore>>,
    callbacks: Option<CallbackSettings>,
}

/// What a successful `verify` found.
// Built once per job and consumed at once: boxing `Fresh` would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Verified {
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
        vendor: crate::domain::assessment::VendorRefs,
        submission: u32,
        image: Image,
        back_sha256: Option<String>,
        fetch_ms: u64,
    },
}

/// How one vendor attempt is made.
#[derive(Clone, Copy)]
enum Call<'a> {
    /// Synchronously: the answer is the verdict.
    Verify,
    /// In callback mode: the verdict comes later to `callback_url`.
    Submit { callback_url: &'a str },
}

/// Argos callback mode (see [`crate::callbacks`]).
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub public_url: String,
    pub secret: crate::config::Secret,
    pub token_ttl: Duration,
    /// Submissions per job before retries_exhausted.
    pub submissions: u32,
    /// How long one submission waits for its callback.
    pub wait: Duration,
}

/// A failure before a verdict, with everything its dead letter needs.
struct Failed {
    /// The attempt count to report instead of this delivery's (the stored
    /// count, for a job_id conflict).
    attempts: Option<u32>,
    failure: Failure,
    /// Transient failures may go on the ladder instead.
    transient: bool,
    /// Vendor credentials refused or its breaker open: park the job without
    /// using its retry budget.
    park: bool,
    /// The vendor involved, once one was chosen.
    provider: Option<ProviderName>,
}

impl Failed {
    fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Failed {
            attempts: None,
            failure: Failure::new(class, message),
            transient: false,
            park: false,
            provider: None,
        }
    }
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        store: Arc<dyn ImageStore>,
        providers: Vec<Arc<dyn Provider>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let providers: HashMap<_, _> = providers.into_iter().map(|p| (p.name(), p)).collect();
        let breakers = providers
            .keys()
            .map(|p| (*p, Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown)))
            .collect();
        let pauses = providers
            .keys()
            .map(|p| (*p, Breaker::new(1, cfg.pause_probe_interval)))
            .collect();
        Pipeline {
            cfg,
            store,
            providers,
            metrics,
            breakers,
            pauses,
            outcomes: None,
            callbacks: None,
        }
    }

    /// Turns on Argos callback mode (needs the results store).
    pub fn with_callbacks(mut self, callbacks: CallbackSettings) -> Self {
        self.callbacks = Some(callbacks);
        self
    }

    pub fn callbacks(&self) -> Option<&CallbackSettings> {
        self.callbacks.as_ref()
    }

    pub fn outcomes(&self) -> Option<&Arc<dyn OutcomeStore>> {
        self.outcomes.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds the results store: outcomes are looked up before any vendor
    /// call and stored before they are published (pay once).
    pub fn with_outcomes(mut self, outcomes: Arc<dyn OutcomeStore>) -> Self {
        self.outcomes = Some(outcomes);
        self
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Processes one delivery. Never panics on bad input; never fails: every
    /// outcome is a disposition.
    pub async fn process(&self, d: &Delivery<'_>) -> Disposition {
        let started = Instant::now();
        let first_received_at = d
            .carried
            .first_received_at
            .clone()
            .unwrap_or_else(now_rfc3339);

        if d.delivery_count >= self.cfg.poison_threshold {
            let (job_id, job, raw) = echo_loosely(d.body, self.cfg.max_job_bytes);
            let failure = Failure::new(
                FailureClass::Internal,
                format!(
                    "the job was delivered {} times without finishing, so it may be what crashes or stalls the worker; \
                     it was not processed again. Check the worker logs and restarts around its deliveries, then replay it",
                    d.delivery_count + 1
                ),
            );
            return self.dead_letter(
                job_id,
                job,
                raw,
                failure,
                d.carried.attempts,
                first_received_at,
            );
        }

        let (job, envelope) = match parse_job(d.body, self.cfg.max_job_bytes) {
            Ok(ok) => ok,
            Err(InvalidJob {
                job_id,
                job,
                raw_body,
                message,
            }) => {
                let failure = Failure::new(
                    FailureClass::InvalidJob,
                    format!(
                        "{message}. Fix the producer and publish a corrected job; replaying this one cannot succeed"
                    ),
                );
                return self.dead_letter(
                    job_id,
                    job,
                    raw_body,
                    failure,
                    d.carried.attempts,
                    first_received_at,
                );
            }
        };

        if d.carried.awaiting_callback
            && let Some(settled) = self
                .callback_wait_over(&job, &envelope, d, &first_received_at, started)
                .await
        {
            return settled;
        }

        let mut log = Vec::new();
        let verified = self.verify(&job, started, &d.carried, &mut log).await;
        let attempts = d.carried.attempts + log.len() as u32;
        let disposition = match verified {
            Ok(Verified::Stored(stored)) => {
                tracing::info!(
                    attempts = stored.result.attempts,
                    "Outcome already stored; re-publishing it without calling the vendor"
                );
                self.metrics.outcome_reused();
                let mut result = stored.result;
                // The verdict is the stored one; the metadata is this job's.
                result.metadata = job.metadata.clone();
                return Disposition::Publish(Box::new(result));
            }
            Ok(Verified::Submitted {
                provider,
                vendor,
                submission,
                image,
                back_sha256,
                fetch_ms,
            }) => {
                let pending = PendingSubmission {
                    schema: crate::store::outcomes::PENDING_SCHEMA.into(),
                    job_id: job.job_id.clone(),
                    job: envelope.raw.clone(),
                    correlation_id: d.correlation_id.map(str::to_owned),
                    provider,
                    submission,
                    attempts,
                    ladder_step: d.carried.ladder_step,
                    first_received_at: first_received_at.clone(),
                    submitted_at: now_rfc3339(),
                    image: image_info(&image),
                    back_image_sha256: back_sha256,
                    fetch_ms,
                    vendor,
                    attempt_log: std::mem::take(&mut log),
                };
                let carried = Carried {
                    attempts,
                    ladder_step: d.carried.ladder_step,
                    first_received_at: Some(first_received_at.clone()),
                    callback_submissions: submission,
                    awaiting_callback: true,
                };
                if self.save_pending(&pending).await {
                    return Disposition::AwaitCallback {
                        carried,
                        check: job.check,
                        provider,
                    };
                }
                // Without a pending record no replica can accept the
                // callback: climb the ladder and submit again later, within
                // the retry budget like any transient failure.
                let reason = format!(
                    "{provider} accepted the job, but the pending submission could not be recorded in the results store \
                     within results.store_timeout, so its callback cannot be accepted"
                );
                if (d.carried.ladder_step as usize) < self.cfg.ladder_len {
                    Disposition::RetryLater {
                        step: d.carried.ladder_step as usize,
                        carried: Carried {
                            ladder_step: d.carried.ladder_step + 1,
                            awaiting_callback: false,
                            ..carried
                        },
                        reason,
                        check: job.check,
                        provider: Some(provider),
                    }
                } else {
                    let failure = Failure {
                        provider: Some(provider),
                        ..Failure::new(
                            FailureClass::RetriesExhausted,
                            format!("{reason}. Check the results store, then replay the job"),
                        )
                    };
                    self.dead_letter(
                        Some(job.job_id.clone()),
                        Some(envelope.raw.clone()),
                        None,
                        failure,
                        attempts,
                        first_received_at.clone(),
                    )
                }
            }
            Ok(Verified::Fresh {
                assessment,
                provider,
                image,
                back_sha256,
                fetch_ms,
                vendor_ms,
            }) => {
                let result = self.result(
                    &job,
                    provider,
                    assessment,
                    image_info(&image),
                    attempts,
                    fetch_ms,
                    vendor_ms,
                    started.elapsed().as_millis() as u64,
                );
                self.store_outcome(&result, back_sha256, std::mem::take(&mut log))
                    .await;
                Disposition::Publish(Box::new(result))
            }
            Err(f) if f.park => Disposition::RetryLater {
                step: self.cfg.credentials_park_step,
                carried: Carried {
                    attempts,
                    ladder_step: d.carried.ladder_step,
                    first_received_at: Some(first_received_at),
                    callback_submissions: d.carried.callback_submissions,
                    awaiting_callback: false,
                },
                reason: f.failure.message,
                check: job.check,
                provider: f.provider,
            },
            Err(f) if f.transient && (d.carried.ladder_step as usize) < self.cfg.ladder_len => {
                Disposition::RetryLater {
                    step: d.carried.ladder_step as usize,
                    carried: Carried {
                        attempts,
                        ladder_step: d.carried.ladder_step + 1,
                        first_received_at: Some(first_received_at),
                        callback_submissions: d.carried.callback_submissions,
                        awaiting_callback: false,
                    },
                    reason: f.failure.message,
                    check: job.check,
                    provider: f.provider,
                }
            }
            Err(mut f) => {
                if f.transient {
                    let last = std::mem::take(&mut f.failure.message);
                    f.failure = Failure {
                        class: FailureClass::RetriesExhausted,
                        message: format!(
                            "transient failures outlasted the retry budget ({} delay steps, {attempts} vendor attempts); \
                             last error: {last}. Replay the job once the cause is fixed",
                            self.cfg.ladder_len
                        ),
                        retryable: true,
                        ..f.failure
                    };
                }
                let JobEnvelope { raw, job_id } = envelope;
                self.dead_letter(
                    job_id,
                    Some(raw),
                    None,
                    f.failure,
                    f.attempts.unwrap_or(attempts),
                    first_received_at,
                )
            }
        };
        if !log.is_empty() {
            self.save_attempt_log(&job.job_id, &disposition, log).await;
        }
        disposition
    }

    /// Writes a paid-for outcome to the results store, retrying while the
    /// store is down for up to `store_timeout`. Past that the result is
    /// published unstored (logged as an error): losing an answer the vendor
    /// already billed for is worse than the small risk of a second payment
    /// should this very job be delivered again.
    async fn store_outcome(
        &self,
        result: &LivenessResult,
        back_sha256: Option<String>,
        attempts: Vec<AttemptRecord>,
    ) {
        let Some(store) = &self.outcomes else {
            return;
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
        if !self.persist("outcome", || store.save(&outcome)).await {
            tracing::error!(location = %store.location(&result.job_id), "Could not store the outcome within results.store_timeout; publishing it unstored, so a redelivery of this job would call the vendor again");
        }
    }

    /// Records a callback-mode submission; false if the store stayed down
    /// for `results.store_timeout`.
    async fn save_pending(&self, pending: &PendingSubmission) -> bool {
        let Some(store) = &self.outcomes else {
            return false;
        };
        self.persist("pending submission", || store.save_pending(pending))
            .await
    }

    /// Retries a results-store write while the store is down, for up to
    /// `results.store_timeout`; false if it never succeeded.
    async fn persist<F, Fut>(&self, what: &str, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), OutcomeError>>,
    {
        let give_up = Instant::now() + self.cfg.store_timeout;
        let mut wait = self.cfg.initial_backoff;
        loop {
            let Err(e) = write().await else {
                return true;
            };
            self.metrics.store_error("save");
            if Instant::now() + wait >= give_up {
                tracing::error!(error = %e, what, "Giving up writing to the results store");
                return false;
            }
            tracing::warn!(error = %e, what, delay_ms = wait.as_millis() as u64, "Could not write to the results store, retrying");
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            wait = (wait * 2).min(self.cfg.max_backoff);
        }
    }

    /// Best effort, bounded: the audit trail must not hold a job hostage.
    async fn save_attempt_log(
        &self,
        job_id: &str,
        disposition: &Disposition,
        attempts: Vec<AttemptRecord>,
    ) {
        let Some(store) = self.outcomes.as_ref().filter(|_| self.cfg.audit) else {
            return;
        };
        let log = AttemptLog {
            schema: crate::store::outcomes::ATTEMPTS_SCHEMA.into(),
            job_id: job_id.to_owned(),
            disposition: disposition.label(),
            attempts,
        };
        match tokio::time::timeout(Duration::from_secs(5), store.save_attempts(&log)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.metrics.store_error("audit");
                tracing::warn!(error = %e, "Could not write the vendor attempts to the audit trail");
            }
            Err(_) => {
                self.metrics.store_error("audit");
                tracing::warn!("Writing the vendor attempts to the audit trail timed out");
            }
        }
    }

    /// The job's stored outcome, retrying a store that is down within the
    /// job deadline. Not knowing is a transient failure: calling the vendor
    /// blind could pay for the same job twice.
    async fn lookup(
        &self,
        job_id: &str,
        deadline: Instant,
    ) -> Result<Option<StoredOutcome>, Failed> {
        let Some(store) = &self.outcomes else {
            return Ok(None);
        };
        let mut delays = self.backoff(deadline);
        loop {
            match store.load(job_id).await {
                Ok(found) => return Ok(found),
                Err(OutcomeError::Corrupt(m)) => {
                    self.metrics.store_error("load");
                    return Err(Failed::new(
                        FailureClass::Internal,
                        format!(
                            "{m}; inspect that object (delete it if it is garbage) and replay the job"
                        ),
                    ));
                }
                Err(OutcomeError::Unavailable(m)) => {
                    self.metrics.store_error("load");
                    match delays.next() {
                        Some(d) if Instant::now() + d < deadline => {
                            tracing::warn!(error = %m, delay_ms = d.as_millis() as u64, "Results store lookup failed, retrying");
                            tokio::time::sleep(d).await;
                        }
                        _ => {
                            let mut f = Failed::new(
                                FailureClass::RetriesExhausted,
                                format!(
                                    "{m}; the job waits rather than risk paying the vendor twice"
                                ),
                            );
                            f.transient = true;
                            return Err(f);
                        }
                    }
                }
            }
        }
    }

    /// The job is back from the callback wait. Settled by its callback (or
    /// waiting on a later submission): ack it. Its callback never came:
    /// None to submit again, or a dead letter once the submissions are
    /// spent. A store it cannot read makes it wait another round.
    async fn callback_wait_over(
        &self,
        job: &Job,
        envelope: &JobEnvelope,
        d: &Delivery<'_>,
        first_received_at: &str,
        started: Instant,
    ) -> Option<Disposition> {
        let store = self.outcomes.as_ref()?;
        let cb = self.callbacks.as_ref()?;
        let provider = self.cfg.routing.route(job).unwrap_or(ProviderName::Argos);
        let deadline = started + self.cfg.job_deadline;
        let (stored, pending) = tokio::join!(
            self.lookup(&job.job_id, deadline),
            store.load_pending(&job.job_id)
        );
        let (stored, pending) = match (stored, pending) {
            (Ok(s), Ok(p)) => (s, p),
            (s, p) => {
                self.metrics.store_error("load");
                tracing::warn!(
                    outcome_readable = s.is_ok(),
                    pending_readable = p.is_ok(),
                    "Results store unreadable after the callback wait; waiting another round"
                );
                return Some(Disposition::AwaitCallback {
                    carried: d.carried.clone(),
                    check: job.check,
                    provider,
                });
            }
        };
        let settled = |reason: &str| {
            Some(Disposition::Settled {
                reason: reason.into(),
                check: job.check,
            })
        };
        match (stored, pending) {
            // The callback stored the outcome; its publish may not have
            // happened: publish it (the worker then clears the record).
            (Some(o), Some(_)) => {
                let mut result = o.result;
                result.metadata = job.metadata.clone();
                Some(Disposition::Publish(Box::new(result)))
            }
            (Some(_), None) => settled("its callback published the result"),
            (None, None) => settled("its callback settled it"),
            (None, Some(p)) if p.submission > d.carried.callback_submissions => {
                settled("a later submission is waiting for its callback")
            }
            (None, Some(p)) if d.carried.callback_submissions >= cb.submissions => {
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
                Some(self.dead_letter(
                    Some(job.job_id.clone()),
                    Some(envelope.raw.clone()),
                    None,
                    failure,
                    p.attempts,
                    first_received_at.to_owned(),
                ))
            }
            (None, Some(p)) => {
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
    pub async fn settle_callback(&self, pending: &PendingSubmission, body: &[u8]) -> Disposition {
        let first = pending.first_received_at.clone();
        let (job, envelope) = match parse_job(pending.job.get().as_bytes(), self.cfg.max_job_bytes)
        {
            Ok(ok) => ok,
            Err(e) => {
                return self.dead_letter(
                    e.job_id,
                    e.job,
                    e.raw_body,
                    Failure::new(
                        FailureClass::Internal,
                        format!("the pending record's job no longer parses ({})", e.message),
                    ),
                    pending.attempts,
                    first,
                );
            }
        };
        let Some(provider) = self.providers.get(&pending.provider) else {
            return self.dead_letter(
                Some(job.job_id.clone()),
                Some(envelope.raw),
                None,
                Failure::new(
                    FailureClass::Internal,
                    format!(
                        "a callback came for {}, which this worker has no adapter configured for",
                        pending.provider
                    ),
                ),
                pending.attempts,
                first,
            );
        };
        let since = |rfc3339: &str| {
            humantime::parse_rfc3339(rfc3339)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0, |d| d.as_millis() as u64)
        };
        match provider.read_callback(body, &job.signals) {
            Ok(assessment) => {
                let result = self.result(
                    &job,
                    pending.provider,
                    assessment,
                    pending.image.clone(),
                    pending.attempts,
                    pending.fetch_ms,
                    since(&pending.submitted_at),
                    since(&pending.first_received_at),
                );
                self.store_outcome(
                    &result,
                    pending.back_image_sha256.clone(),
                    pending.attempt_log.clone(),
                )
                .await;
                Disposition::Publish(Box::new(result))
            }
            Err(e) if e.kind == ErrorKind::Rejected => {
                let failure = Failure {
                    provider: Some(pending.provider),
                    vendor_code: e.vendor_code.clone(),
                    http_status: e.http_status,
                    ..Failure::new(
                        FailureClass::VendorRejectedRequest,
                        format!(
                            "{} (by callback). The request will not succeed unchanged: check the image and the adapter, then replay",
                            e.message
                        ),
                    )
                };
                self.dead_letter(
                    Some(job.job_id.clone()),
                    Some(envelope.raw),
                    None,
                    failure,
                    pending.attempts,
                    first,
                )
            }
            Err(e) if (pending.ladder_step as usize) < self.cfg.ladder_len => {
                Disposition::RetryLater {
                    step: pending.ladder_step as usize,
                    carried: Carried {
                        attempts: pending.attempts,
                        ladder_step: pending.ladder_step + 1,
                        first_received_at: Some(first),
                        callback_submissions: pending.submission,
                        awaiting_callback: false,
                    },
                    reason: format!("{} (by callback)", e.message),
                    check: job.check,
                    provider: Some(pending.provider),
                }
            }
            Err(e) => {
                let failure = Failure {
                    provider: Some(pending.provider),
                    vendor_code: e.vendor_code.clone(),
                    http_status: e.http_status,
                    ..Failure::new(
                        FailureClass::RetriesExhausted,
                        format!(
                            "transient failures outlasted the retry budget ({} delay steps, {} vendor attempts); \
                             last error: {} (by callback). Replay the job once the cause is fixed",
                            self.cfg.ladder_len, pending.attempts, e.message
                        ),
                    )
                };
                self.dead_letter(
                    Some(job.job_id.clone()),
                    Some(envelope.raw),
                    None,
                    failure,
                    pending.attempts,
                    first,
                )
            }
        }
    }

    /// Removes a job's pending callback-mode record once its outcome is
    /// published (best effort: a leftover record only makes a later wait
    /// round re-publish the stored result).
    pub async fn clear_pending(&self, job_id: &str) {
        if let Some(store) = &self.outcomes
            && let Err(e) = store.delete_pending(job_id).await
        {
            self.metrics.store_error("delete");
            tracing::warn!(error = %e, "Could not clear the pending callback record");
        }
    }

    /// The dead letter for a job whose processing crashed.
    pub fn internal_dead_letter(
        &self,
        body: &[u8],
        message: String,
        carried: Carried,
    ) -> Disposition {
        let (job_id, job, raw) = echo_loosely(body, self.cfg.max_job_bytes);
        let first = carried.first_received_at.unwrap_or_else(now_rfc3339);
        self.dead_letter(
            job_id,
            job,
            raw,
            Failure::new(FailureClass::Internal, message),
            carried.attempts,
            first,
        )
    }

    /// Routes, checks, fetches, looks up the stored outcome and, if there
    /// is none, calls the vendor. Every vendor attempt is appended to `log`,
    /// numbered after the `earlier_attempts` of previous deliveries.
    async fn verify(
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
            .map_err(|r| Failed::new(r.class, r.message))?;
        let provider = self.providers.get(&provider_name).ok_or_else(|| {
            Failed::new(
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
                .fetch_checked("image", &job.image, limit, deadline)
                .await?;
            let back = match &job.back_image {
                Some(uri) => Some(
                    self.fetch_checked("back_image", uri, limit, deadline)
                        .await?,
                ),
                None => None,
            };
            Ok::<_, Failed>((image, back))
        };
        // The lookup runs while the image downloads: it needs only the job_id.
        let (fetched, stored) = tokio::join!(fetch, self.lookup(&job.job_id, deadline));
        let (image, back) = fetched?;
        let fetch_ms = fetch_started.elapsed().as_millis() as u64;
        let back_sha256 = back.as_ref().map(|b| b.sha256.clone());
        if let Some(stored) = stored? {
            if stored.same_images(&image.sha256, back_sha256.as_deref()) {
                return Ok(Verified::Stored(Box::new(stored)));
            }
            let location = self
                .outcomes
                .as_ref()
                .map(|s| s.location(&job.job_id))
                .unwrap_or_default();
            let mut f = Failed::new(
                FailureClass::JobIdConflict,
                format!(
                    "job_id {} already has a stored outcome ({location}, verdict {}) for image sha256 {}{}, \
                     but this job's image has sha256 {}{}; a job_id names one verification: \
                     publish this image under a new job_id",
                    job.job_id,
                    stored.result.verdict,
                    stored.image_sha256,
                    stored
                        .back_image_sha256
                        .as_ref()
                        .map_or(String::new(), |b| format!(" (back {b})")),
                    image.sha256,
                    back_sha256
                        .as_ref()
                        .map_or(String::new(), |b| format!(" (back {b})")),
                ),
            );
            f.attempts = Some(stored.result.attempts);
            f.provider = Some(stored.result.provider);
            f.failure.provider = Some(stored.result.provider);
            return Err(f);
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
                let url =
                    crate::callbacks::callback_url(cb, provider_name, &job.job_id, submission);
                (submission, url)
            });
        let call = match &callback {
            Some((_, url)) => Call::Submit { callback_url: url },
            None => Call::Verify,
        };
        let vendor_started = Instant::now();
        let answer = self
            .call_vendor(provider.as_ref(), &req, deadline, carried.attempts, log, call)
            .await
            .map_err(|e| {
                let mut f = Failed::new(
                    match e.kind {
                        ErrorKind::Rejected => FailureClass::VendorRejectedRequest,
                        // Reclassified by the caller (ladder or retries_exhausted).
                        ErrorKind::Transient | ErrorKind::Credentials | ErrorKind::Unavailable => {
                            FailureClass::RetriesExhausted
                        }
                    },
                    e.message.clone(),
                );
                if e.kind == ErrorKind::Rejected {
                    f.failure.message.push_str(". The request will not succeed unchanged: check the image and the adapter, then replay");
                }
                f.failure.provider = Some(provider_name);
                f.failure.vendor_code = e.vendor_code.clone();
                f.failure.http_status = e.http_status;
                f.transient = e.kind == ErrorKind::Transient;
                f.park = matches!(e.kind, ErrorKind::Credentials | ErrorKind::Unavailable);
                f.provider = Some(provider_name);
                f
            })?;
        let vendor_ms = vendor_started.elapsed().as_millis() as u64;
        let assessment = match answer {
            Submission::Answered(a) => a,
            Submission::Accepted(vendor) => {
                return Ok(Verified::Submitted {
                    provider: provider_name,
                    vendor,
                    submission: callback.map_or(1, |(n, _)| n),
                    image,
                    back_sha256,
                    fetch_ms,
                });
            }
        };
        Ok(Verified::Fresh {
            assessment,
            provider: provider_name,
            image,
            back_sha256,
            fetch_ms,
            vendor_ms,
        })
    }

    /// Fetches with in-process retries for transient store errors, then
    /// checks the bytes are an image.
    async fn fetch_checked(
        &self,
        field: &str,
        uri: &S3Uri,
        limit: u64,
        deadline: Instant,
    ) -> Result<Image, Failed> {
        let mut delays = self.backoff(deadline);
        let bytes = loop {
            let started = Instant::now();
            let fetched = self.store.fetch(uri, limit).await;
            let outcome = match &fetched {
                Ok(_) => "ok",
                Err(FetchError::NotFound(_)) => "not_found",
                Err(FetchError::TooLarge { .. }) => "too_large",
                Err(FetchError::Transient(_)) => "error",
            };
            self.metrics.s3_fetch(outcome, started.elapsed());
            match fetched {
                Ok(b) => break b,
                Err(FetchError::NotFound(m)) => {
                    return Err(Failed::new(
                        FailureClass::ImageNotFound,
                        format!("{field}: {m}; upload it and replay the job"),
                    ));
                }
                Err(FetchError::TooLarge { size, limit }) => {
                    return Err(Failed::new(
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
                    _ => {
                        let mut f = Failed::new(FailureClass::RetriesExhausted, m);
                        f.transient = true;
                        return Err(f);
                    }
                },
            }
        };
        self.metrics.image(bytes.len());
        if bytes.is_empty() {
            return Err(Failed::new(
                FailureClass::ImageRejected,
                format!("{field} {uri} is an empty object; upload the real image and replay"),
            ));
        }
        let Some(content_type) = sniff_content_type(&bytes) else {
            return Err(Failed::new(
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

    /// Exponential backoff (backon's schedule) with full jitter: each wait is
    /// uniform in [0, step], which spreads replicas that failed together.
    fn backoff(&self, deadline: Instant) -> impl Iterator<Item = Duration> {
        let schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.initial_backoff)
            .with_max_delay(self.cfg.max_backoff)
            .with_max_times(self.cfg.attempts_per_delivery.saturating_sub(1) as usize)
            .with_total_delay(Some(deadline.saturating_duration_since(Instant::now())))
            .build();
        schedule.map(|d| d.mul_f64(fastrand::f64()))
    }

    async fn call_vendor(
        &self,
        provider: &dyn Provider,
        req: &VendorRequest<'_>,
        deadline: Instant,
        earlier_attempts: u32,
        log: &mut Vec<AttemptRecord>,
        call: Call<'_>,
    ) -> Result<Submission, VendorError> {
        let name = provider.name();
        let mut delays = self.backoff(deadline);
        let breaker = &self.breakers[&name];
        let pause = &self.pauses[&name];
        loop {
            if !pause.allows() {
                return Err(VendorError {
                    kind: ErrorKind::Credentials,
                    message: format!(
                        "{name} is paused because it refused our credentials; its jobs are parked until a probe \
                         (one job every retry.pause_probe_interval) is accepted. Fix the key in the configuration"
                    ),
                    vendor_code: None,
                    http_status: None,
                    retry_after: None,
                });
            }
            if !breaker.allows() {
                return Err(VendorError {
                    kind: ErrorKind::Unavailable,
                    message: format!(
                        "{name} is failing every call (circuit breaker open); the job waits on the delay ladder"
                    ),
                    vendor_code: None,
                    http_status: None,
                    retry_after: None,
                });
            }
            let attempt = earlier_attempts + log.len() as u32 + 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let started_at = now_rfc3339();
            let started = Instant::now();
            let attempt_call = async {
                match call {
                    Call::Verify => provider.verify(req).await.map(Submission::Answered),
                    Call::Submit { callback_url } => {
                        provider.submit_for_callback(req, callback_url).await
                    }
                }
            };
            let outcome = match tokio::time::timeout(remaining, attempt_call).await {
                Ok(r) => r,
                Err(_) => Err(VendorError::transient(format!(
                    "{name} did not answer within the job deadline ({:?})",
                    self.cfg.job_deadline
                ))),
            };
            let took = started.elapsed();
            let label = match &outcome {
                Ok(_) => "ok",
                Err(e) => match e.kind {
                    ErrorKind::Transient => "transient",
                    ErrorKind::Rejected => "rejected",
                    ErrorKind::Credentials => "credentials",
                    ErrorKind::Unavailable => "unavailable",
                },
            };
            log.push(AttemptRecord {
                attempt,
                provider: name,
                started_at,
                duration_ms: took.as_millis() as u64,
                outcome: label.into(),
                http_status: outcome.as_ref().err().and_then(|e| e.http_status),
                vendor_code: outcome.as_ref().err().and_then(|e| e.vendor_code.clone()),
                vendor: outcome.as_ref().ok().map(|s| match s {
                    Submission::Answered(a) => a.vendor.clone(),
                    Submission::Accepted(refs) => refs.clone(),
                }),
                error: outcome.as_ref().err().map(|e| e.message.clone()),
                worker: self.cfg.worker_id.clone(),
            });
            let outage = outcome.as_ref().err().is_some_and(VendorError::is_outage);
            self.metrics.set_breaker_open(name, breaker.record(outage));
            self.metrics.vendor_call(name, label, took);
            // A refusal pauses the vendor; an answer that shows the key works
            // (a verdict, or a complaint about the request) resumes it.
            let was_paused = pause.is_open();
            let paused = match label {
                "credentials" => pause.record(true),
                "ok" | "rejected" => pause.record(false),
                _ => was_paused,
            };
            if paused != was_paused {
                if paused {
                    tracing::error!(vendor = %name, "Vendor refused our credentials: pausing it; its jobs are parked until a probe succeeds");
                } else {
                    tracing::info!(vendor = %name, "Vendor accepted our credentials again: resuming it");
                }
            }
            self.metrics.set_paused(name, paused);
            let e = match outcome {
                Ok(a) => return Ok(a),
                Err(e) if e.kind != ErrorKind::Transient => return Err(e),
                Err(e) => e,
            };
            let Some(step) = delays.next() else {
                return Err(e);
            };
            let wait = match e.retry_after {
                // A vendor asking for a longer pause than we hold a delivery for: the ladder waits instead.
                Some(ra) if ra > self.cfg.max_retry_after => return Err(e),
                Some(ra) => ra,
                None => step,
            };
            if Instant::now() + wait >= deadline {
                return Err(e);
            }
            tracing::warn!(error = %e, attempt, delay_ms = wait.as_millis() as u64, "Vendor call failed, retrying");
            self.metrics.vendor_retry(name);
            tokio::time::sleep(wait).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        job: &Job,
        provider: ProviderName,
        a: Assessment,
        image: ImageInfo,
        attempts: u32,
        fetch_ms: u64,
        vendor_ms: u64,
        total_ms: u64,
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
            timings_ms: Timings {
                fetch: fetch_ms,
                vendor: vendor_ms,
                total: total_ms,
            },
            completed_at: now_rfc3339(),
        }
    }

    fn dead_letter(
        &self,
        job_id: Option<String>,
        job: Option<Box<RawValue>>,
        raw_body: Option<Vec<u8>>,
        failure: Failure,
        attempts: u32,
        first_attempt_at: String,
    ) -> Disposition {
        Disposition::DeadLetter(Box::new(DeadLetter {
            schema: DEAD_LETTER_SCHEMA.into(),
            job_id,
            job,
            raw_body_base64: raw_body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            failure,
            attempts,
            first_attempt_at,
            failed_at: now_rfc3339(),
            worker: self.cfg.worker_id.clone(),
        }))
    }
}

fn image_info(image: &Image) -> ImageInfo {
    ImageInfo {
        uri: image.uri.clone(),
        bytes: image.bytes.len() as u64,
        sha256: image.sha256.clone(),
        content_type: image.content_type.into(),
    }
}

/// What a dead letter echoes of a body it will not validate.
fn echo_loosely(
    body: &[u8],
    max: usize,
) -> (Option<String>, Option<Box<RawValue>>, Option<Vec<u8>>) {
    match parse_job(body, max) {
        Ok((_, env)) => (env.job_id, Some(env.raw), None),
        Err(e) => (e.job_id, e.job, e.raw_body),
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
