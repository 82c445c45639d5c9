//! Telemetry: logs (JSON in production, readable on a terminal), Prometheus
//! metrics and the liveness/readiness probes, served on one HTTP port.
//!
//! Metric labels are low-cardinality by construction: every label value
//! comes from a closed set (check, verdict, vendor, failure class, outcome),
//! never from a job.

use crate::config::{LogFormat, TelemetryConfig};
use crate::domain::dead_letter::FailureClass;
use crate::domain::{AttemptOutcome, Check, ProviderName, Verdict};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber once; later calls are no-ops (tests).
pub fn init(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// How a job's delivery ended (`liveness_jobs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Result,
    DeadLetter,
    RetryLater,
    AwaitingCallback,
    Settled,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Result => "result",
            JobOutcome::DeadLetter => "dead_letter",
            JobOutcome::RetryLater => "retry_later",
            JobOutcome::AwaitingCallback => "awaiting_callback",
            JobOutcome::Settled => "settled",
        }
    }
}

/// How an image fetch ended (`liveness_s3_fetch_duration_seconds{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Ok,
    NotFound,
    TooLarge,
    Error,
}

impl FetchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::NotFound => "not_found",
            FetchOutcome::TooLarge => "too_large",
            FetchOutcome::Error => "error",
        }
    }
}

/// A results-store operation (`liveness_results_store_errors_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Load,
    Save,
    Delete,
    Audit,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Save => "save",
            StoreOp::Delete => "delete",
            StoreOp::Audit => "audit",
        }
    }
}

/// One S3 request and what it is for (`liveness_s3_requests_total{op}`):
/// how many requests a job costs, by reason (docs/benchmark.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Request {
    /// GetObject of a job's image (or back image).
    ImageGet,
    /// GetObject of `outcomes/<job_id>.json`: the pay-once lookup.
    OutcomeGet,
    /// PutObject of `outcomes/<job_id>.json`: stored before published.
    OutcomePut,
    /// PutObject of `attempts/<job_id>/...`: the audit record of a delivery
    /// without an outcome.
    AttemptsPut,
    /// GetObject of `pending/<job_id>.json` (Argos callback mode).
    PendingGet,
    /// PutObject of `pending/<job_id>.json` (Argos callback mode).
    PendingPut,
    /// DeleteObject of `pending/<job_id>.json` (Argos callback mode).
    PendingDelete,
    /// Anything else (start-up checks, operator commands).
    Other,
}

impl S3Request {
    pub fn as_str(self) -> &'static str {
        match self {
            S3Request::ImageGet => "image_get",
            S3Request::OutcomeGet => "outcome_get",
            S3Request::OutcomePut => "outcome_put",
            S3Request::AttemptsPut => "attempts_put",
            S3Request::PendingGet => "pending_get",
            S3Request::PendingPut => "pending_put",
            S3Request::PendingDelete => "pending_delete",
            S3Request::Other => "other",
        }
    }
}

/// Where a worker publish goes (`liveness_unroutable_publishes_total{target}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishTarget {
    Results,
    Dead,
    Retry,
    CallbackWait,
    Shadow,
    /// A vendor's wait queue.
    Wait,
}

impl PublishTarget {
    pub const ALL: [PublishTarget; 6] = [
        PublishTarget::Results,
        PublishTarget::Dead,
        PublishTarget::Retry,
        PublishTarget::CallbackWait,
        PublishTarget::Shadow,
        PublishTarget::Wait,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PublishTarget::Results => "results",
            PublishTarget::Dead => "dead",
            PublishTarget::Retry => "retry",
            PublishTarget::CallbackWait => "callback_wait",
            PublishTarget::Shadow => "shadow",
            PublishTarget::Wait => "wait",
        }
    }
}

/// What became of a vendor callback (`liveness_callbacks_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// It settled the job.
    Accepted,
    /// The job's outcome was already stored.
    Duplicate,
    /// No pending submission for the job.
    Unknown,
    /// Its URL did not verify.
    Refused,
    /// It could not be processed now; the vendor should send it again.
    Failed,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Accepted => "accepted",
            CallbackOutcome::Duplicate => "duplicate",
            CallbackOutcome::Unknown => "unknown",
            CallbackOutcome::Refused => "refused",
            CallbackOutcome::Failed => "failed",
        }
    }
}

fn vendor_label(v: Option<ProviderName>) -> &'static str {
    v.map_or("none", ProviderName::as_str)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    outcome: &'static str,
    verdict: &'static str,
    check: &'static str,
    vendor: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLabels {
    class: &'static str,
    vendor: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorLabels {
    vendor: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorOutcome {
    vendor: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorReason {
    vendor: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorWindow {
    vendor: &'static str,
    window: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Vendor traffic control (docs/traffic.md).
struct TrafficMetrics {
    concurrency_limit: Family<VendorLabels, FloatGauge>,
    latency: Family<VendorLabels, FloatGauge>,
    latency_baseline: Family<VendorLabels, FloatGauge>,
    decreases: Family<VendorReason, Counter>,
    waits: Family<VendorLabels, Histogram>,
    throttled: Family<VendorReason, Counter>,
    waitlisted: Family<VendorLabels, Counter>,
    blocks: Family<VendorLabels, Counter>,
    rate: Family<VendorLabels, FloatGauge>,
    budget_used: Family<VendorWindow, Gauge>,
    budget_remaining: Family<VendorWindow, Gauge>,
    budget_warning: Family<VendorLabels, Gauge>,
    budget_exhausted: Family<VendorLabels, Gauge>,
    failovers: Family<FailoverLabels, Counter>,
    shadow_comparisons: Family<ShadowLabels, Counter>,
    shadow_score_difference: Family<ShadowPair, Histogram>,
    shadow_skipped: Family<ShadowSkip, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverLabels {
    primary: &'static str,
    vendor: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    check: &'static str,
    primary: &'static str,
    shadow: &'static str,
    agreement: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowPair {
    primary: &'static str,
    shadow: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowSkip {
    shadow: &'static str,
    reason: &'static str,
}

/// Buckets of the absolute score difference (scores are 0-1).
fn score_difference_histogram() -> Histogram {
    Histogram::new([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
}

impl TrafficMetrics {
    fn register(registry: &mut Registry) -> Self {
        let t = TrafficMetrics {
            concurrency_limit: Family::default(),
            latency: Family::default(),
            latency_baseline: Family::default(),
            decreases: Family::default(),
            waits: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            throttled: Family::default(),
            waitlisted: Family::default(),
            blocks: Family::default(),
            rate: Family::default(),
            budget_used: Family::default(),
            budget_remaining: Family::default(),
            budget_warning: Family::default(),
            budget_exhausted: Family::default(),
            failovers: Family::default(),
            shadow_comparisons: Family::default(),
            shadow_score_difference: Family::new_with_constructor(
                score_difference_histogram as fn() -> Histogram,
            ),
            shadow_skipped: Family::default(),
        };
        registry.register(
            "shadow_comparisons",
            "Shadow mode: jobs whose answer was compared with a second vendor's, by check, primary and shadow vendor, and whether the verdicts agree",
            t.shadow_comparisons.clone(),
        );
        registry.register(
            "shadow_score_difference",
            "Shadow mode: the absolute difference between the shadow vendor's score and the primary's (0-1), when both have one",
            t.shadow_score_difference.clone(),
        );
        registry.register(
            "shadow_skipped",
            "Shadow mode: shadowed jobs with no comparison, by shadow vendor and reason (busy, budget, unavailable, limit, image, memory, failed, shutdown, publish)",
            t.shadow_skipped.clone(),
        );
        registry.register(
            "failovers",
            "Jobs sent to another vendor because their check's default one could not be called, by default (primary) and vendor used",
            t.failovers.clone(),
        );
        registry.register(
            "vendor_concurrency_limit",
            "Adaptive concurrency: calls in flight this replica allows a vendor now (its whole part)",
            t.concurrency_limit.clone(),
        );
        registry.register(
            "vendor_latency_seconds",
            "Adaptive concurrency: smoothed latency of a vendor's answered calls",
            t.latency.clone(),
        );
        registry.register(
            "vendor_latency_baseline_seconds",
            "Adaptive concurrency: the slow average latency that rising latency is measured against",
            t.latency_baseline.clone(),
        );
        registry.register(
            "vendor_limit_decreases",
            "Adaptive concurrency: decreases of a vendor's limit, by reason (rate_limited, timeout, latency)",
            t.decreases.clone(),
        );
        registry.register(
            "vendor_wait_seconds",
            "Time jobs waited in process for a vendor's rate token or concurrency slot before calling it",
            t.waits.clone(),
        );
        registry.register(
            "vendor_throttled",
            "Jobs parked on the ladder instead of calling a vendor, by reason (rate, concurrency, budget)",
            t.throttled.clone(),
        );
        registry.register(
            "vendor_waitlisted",
            "Jobs moved from the jobs queue to their vendor's wait queue because the vendor could not take them at once (no vendor call, no attempt)",
            t.waitlisted.clone(),
        );
        registry.register(
            "vendor_rate_limited_blocks",
            "429 answers that held a vendor back for every replica (its Retry-After)",
            t.blocks.clone(),
        );
        registry.register(
            "vendor_rate_limit",
            "Requests per second this replica may send a vendor: the fleet's rate with a coordination store, its share without one; 0: no limit",
            t.rate.clone(),
        );
        registry.register(
            "vendor_budget_used",
            "Vendor submissions counted against the spend budget in the current window (day, month), fleet-wide, as last seen",
            t.budget_used.clone(),
        );
        registry.register(
            "vendor_budget_remaining",
            "What is left of a vendor's spend budget in the current window (day, month), as last seen",
            t.budget_remaining.clone(),
        );
        registry.register(
            "vendor_budget_warning",
            "1 once a vendor's budget use passed traffic.<vendor>.budget_warning in a current window",
            t.budget_warning.clone(),
        );
        registry.register(
            "vendor_budget_exhausted",
            "1 while a vendor's budget is spent (its jobs park until the window turns or the budget is raised)",
            t.budget_exhausted.clone(),
        );
        t
    }
}

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    dead_letters: Family<DeadLabels, Counter>,
    vendor_duration: Family<VendorOutcome, Histogram>,
    vendor_retries: Family<VendorLabels, Counter>,
    s3_duration: Family<Outcome, Histogram>,
    in_flight: Gauge,
    image_bytes_in_flight: Gauge,
    image_bytes: Histogram,
    vendor_paused: Family<VendorLabels, Gauge>,
    breaker_open: Family<VendorLabels, Gauge>,
    publish_failures: Counter,
    outcomes_reused: Counter,
    claim_waits: Counter,
    store_errors: Family<Op, Counter>,
    s3_requests: Family<Op, Counter>,
    s3_bytes_written: Family<Op, Counter>,
    callbacks: Family<Outcome, Counter>,
    unroutable: Family<TargetLabels, Counter>,
    publish_unroutable: Family<TargetLabels, Gauge>,
    consuming: Gauge,
    queue_wait: Histogram,
    traffic: TrafficMetrics,
    /// Totals the fleet heartbeat reports (results by routing key, dead
    /// letters by class).
    fleet: std::sync::Mutex<FleetCounters>,
}

/// Totals since start, by routing key and by failure class, and the jobs
/// taken from the jobs queue and parked per ladder step (for the console's
/// rates in and out of each queue).
#[derive(Debug, Clone, Default)]
pub struct FleetCounters {
    pub results: std::collections::BTreeMap<String, u64>,
    pub dead_letters: std::collections::BTreeMap<String, u64>,
    pub received: u64,
    pub parked: std::collections::BTreeMap<u32, u64>,
    pub awaiting_callback: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("liveness");
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("jobs", "Jobs finished, by outcome (result, dead_letter, retry_later), verdict, check and vendor", jobs.clone());
        let dead_letters = Family::<DeadLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Dead letters published, by failure class and vendor",
            dead_letters.clone(),
        );
        let vendor_duration = Family::<VendorOutcome, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "vendor_request_duration_seconds",
            "Vendor verification attempts, by vendor and outcome",
            vendor_duration.clone(),
        );
        let vendor_retries = Family::<VendorLabels, Counter>::default();
        registry.register(
            "vendor_retries",
            "Vendor attempts repeated in process after a transient failure",
            vendor_retries.clone(),
        );
        let s3_duration = Family::<Outcome, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "s3_fetch_duration_seconds",
            "Image fetches from S3, by outcome",
            s3_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Jobs being processed by this replica",
            in_flight.clone(),
        );
        let image_bytes_in_flight = Gauge::default();
        registry.register(
            "image_bytes_in_flight",
            "Bytes of the image budget (worker.max_image_bytes_in_flight) reserved by jobs now",
            image_bytes_in_flight.clone(),
        );
        // 4 KiB to 16 MiB.
        let image_bytes = Histogram::new(exponential_buckets(4096.0, 2.0, 13));
        registry.register(
            "image_bytes",
            "Sizes of the images fetched",
            image_bytes.clone(),
        );
        let vendor_paused = Family::<VendorLabels, Gauge>::default();
        registry.register(
            "vendor_paused",
            "1 while a vendor rejects our credentials (its jobs are parked), else 0",
            vendor_paused.clone(),
        );
        let breaker_open = Family::<VendorLabels, Gauge>::default();
        registry.register(
            "vendor_breaker_open",
            "1 while a vendor's circuit breaker is open (its jobs are parked), else 0",
            breaker_open.clone(),
        );
        let publish_failures = Counter::default();
        registry.register(
            "publish_failures",
            "Outcomes the broker did not confirm (the job went back to the queue)",
            publish_failures.clone(),
        );
        let outcomes_reused = Counter::default();
        registry.register(
            "stored_outcomes_reused",
            "Jobs answered from the results store without calling a vendor (redeliveries, replays, repeated backfills)",
            outcomes_reused.clone(),
        );
        let claim_waits = Counter::default();
        registry.register(
            "claim_waits",
            "Jobs that found their claim held by another live copy and waited for it instead of calling the vendor",
            claim_waits.clone(),
        );
        let store_errors = Family::<Op, Counter>::default();
        registry.register(
            "results_store_errors",
            "Failed results-store operations (load, save, audit), each retried or reported",
            store_errors.clone(),
        );
        let s3_requests = Family::<Op, Counter>::default();
        registry.register(
            "s3_requests",
            "S3 requests sent, by what they are for (image_get, outcome_get, outcome_put, attempts_put, pending_get, pending_put, pending_delete, other); the SDK's own retries of one request are not counted again",
            s3_requests.clone(),
        );
        let s3_bytes_written = Family::<Op, Counter>::default();
        registry.register(
            "s3_written_bytes",
            "Bytes of the bodies written to S3, by what they are for (outcome_put, attempts_put, pending_put)",
            s3_bytes_written.clone(),
        );
        let callbacks = Family::<Outcome, Counter>::default();
        registry.register(
            "callbacks",
            "Vendor callbacks received (Argos callback mode), by outcome: accepted, duplicate, unknown, refused, failed",
            callbacks.clone(),
        );
        let unroutable = Family::<TargetLabels, Counter>::default();
        registry.register(
            "unroutable_publishes",
            "Worker publishes the broker returned because no queue was bound for them (the job was not acked), by target",
            unroutable.clone(),
        );
        let publish_unroutable = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "publish_unroutable",
            "1 while the last publish to this target came back unroutable, else 0",
            publish_unroutable.clone(),
        );
        let consuming = Gauge::default();
        registry.register(
            "consuming",
            "1 while this replica consumes the jobs queue",
            consuming.clone(),
        );
        // 1 s to about 4.5 h: how long jobs waited for a worker.
        let queue_wait = Histogram::new([
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 16200.0,
        ]);
        registry.register(
            "job_queue_wait_seconds",
            "Time from a job's publish (its AMQP timestamp, when set) to its delivery to this replica",
            queue_wait.clone(),
        );
        let traffic = TrafficMetrics::register(&mut registry);
        let m = Metrics {
            traffic,
            registry,
            jobs,
            dead_letters,
            vendor_duration,
            vendor_retries,
            s3_duration,
            in_flight,
            image_bytes_in_flight,
            image_bytes,
            vendor_paused,
            breaker_open,
            publish_failures,
            outcomes_reused,
            claim_waits,
            store_errors,
            s3_requests,
            s3_bytes_written,
            callbacks,
            unroutable,
            publish_unroutable,
            consuming,
            queue_wait,
            fleet: Default::default(),
        };
        for p in ProviderName::ALL {
            m.set_paused(p, false);
            m.set_breaker_open(p, false);
        }
        for t in PublishTarget::ALL {
            m.set_unroutable(t, false);
        }
        m
    }

    /// A job's delivery ended; `None` labels read `none` (`unknown` for a
    /// check that could not be read).
    pub fn job_finished(
        &self,
        outcome: JobOutcome,
        verdict: Option<Verdict>,
        check: Option<Check>,
        vendor: Option<ProviderName>,
    ) {
        self.jobs
            .get_or_create(&JobLabels {
                outcome: outcome.as_str(),
                verdict: verdict.map_or("none", Verdict::as_str),
                check: check.map_or("unknown", Check::as_str),
                vendor: vendor_label(vendor),
            })
            .inc();
    }

    /// A result published, for the fleet heartbeat's totals.
    pub fn result_published(&self, routing_key: String) {
        *self
            .fleet
            .lock()
            .expect("fleet counters")
            .results
            .entry(routing_key)
            .or_default() += 1;
    }

    /// A delivery taken from the jobs queue.
    pub fn received(&self) {
        self.fleet.lock().expect("fleet counters").received += 1;
    }

    /// A job sent to wait for its vendor's callback (its publish confirmed).
    pub fn awaiting_callback(&self) {
        self.fleet.lock().expect("fleet counters").awaiting_callback += 1;
    }

    /// A job parked on ladder step `step` (its publish confirmed).
    pub fn parked(&self, step: usize) {
        *self
            .fleet
            .lock()
            .expect("fleet counters")
            .parked
            .entry(step as u32)
            .or_default() += 1;
    }

    pub fn fleet_counters(&self) -> FleetCounters {
        self.fleet.lock().expect("fleet counters").clone()
    }

    /// A publish came back unroutable (or, `false`, went through).
    pub fn set_unroutable(&self, target: PublishTarget, unroutable: bool) {
        let labels = TargetLabels {
            target: target.as_str(),
        };
        if unroutable {
            self.unroutable.get_or_create(&labels).inc();
        }
        self.publish_unroutable
            .get_or_create(&labels)
            .set(unroutable as i64);
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.set(consuming as i64);
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// Bytes reserved in the image budget changed by `delta`.
    pub fn image_budget(&self, delta: i64) {
        self.image_bytes_in_flight.inc_by(delta);
    }

    /// Jobs being processed by this replica now.
    pub fn jobs_in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    pub fn dead_letter(&self, class: FailureClass, vendor: Option<ProviderName>) {
        *self
            .fleet
            .lock()
            .expect("fleet counters")
            .dead_letters
            .entry(class.as_str().to_owned())
            .or_default() += 1;
        self.dead_letters
            .get_or_create(&DeadLabels {
                class: class.as_str(),
                vendor: vendor_label(vendor),
            })
            .inc();
    }

    pub fn vendor_call(&self, vendor: ProviderName, outcome: AttemptOutcome, took: Duration) {
        self.vendor_duration
            .get_or_create(&VendorOutcome {
                vendor: vendor.as_str(),
                outcome: outcome.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn vendor_retry(&self, vendor: ProviderName) {
        self.vendor_retries
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .inc();
    }

    pub fn s3_fetch(&self, outcome: FetchOutcome, took: Duration) {
        self.s3_duration
            .get_or_create(&Outcome {
                outcome: outcome.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn image(&self, bytes: usize) {
        self.image_bytes.observe(bytes as f64);
    }

    pub fn set_paused(&self, vendor: ProviderName, paused: bool) {
        self.vendor_paused
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .set(paused as i64);
    }

    pub fn set_breaker_open(&self, vendor: ProviderName, open: bool) {
        self.breaker_open
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .set(open as i64);
    }

    pub fn claim_wait(&self) {
        self.claim_waits.inc();
    }

    pub fn outcome_reused(&self) {
        self.outcomes_reused.inc();
    }

    pub fn callback(&self, outcome: CallbackOutcome) {
        self.callbacks
            .get_or_create(&Outcome {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors
            .get_or_create(&Op { op: op.as_str() })
            .inc();
    }

    /// One S3 request sent, and the bytes of its body when it writes.
    pub fn s3_request(&self, op: S3Request, body_bytes: usize) {
        let labels = Op { op: op.as_str() };
        self.s3_requests.get_or_create(&labels).inc();
        if body_bytes > 0 {
            self.s3_bytes_written
                .get_or_create(&labels)
                .inc_by(body_bytes as u64);
        }
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    /// A vendor's adaptive concurrency now: its limit, smoothed latency and
    /// baseline (seconds).
    pub fn set_concurrency(
        &self,
        vendor: ProviderName,
        limit: f64,
        latency: Option<f64>,
        baseline: Option<f64>,
    ) {
        let l = VendorLabels {
            vendor: vendor.as_str(),
        };
        self.traffic
            .concurrency_limit
            .get_or_create(&l)
            .set(limit.floor());
        if let Some(v) = latency {
            self.traffic.latency.get_or_create(&l).set(v);
        }
        if let Some(v) = baseline {
            self.traffic.latency_baseline.get_or_create(&l).set(v);
        }
    }

    pub fn limit_decreased(&self, vendor: ProviderName, reason: &'static str) {
        self.traffic
            .decreases
            .get_or_create(&VendorReason {
                vendor: vendor.as_str(),
                reason,
            })
            .inc();
    }

    pub fn vendor_wait(&self, vendor: ProviderName, waited: Duration) {
        self.traffic
            .waits
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn vendor_throttled(&self, vendor: ProviderName, reason: &'static str) {
        self.traffic
            .throttled
            .get_or_create(&VendorReason {
                vendor: vendor.as_str(),
                reason,
            })
            .inc();
    }

    /// A job moved to its vendor's wait queue (its publish confirmed).
    pub fn vendor_waitlisted(&self, vendor: ProviderName) {
        self.traffic
            .waitlisted
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .inc();
    }

    pub fn vendor_blocked(&self, vendor: ProviderName) {
        self.traffic
            .blocks
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .inc();
    }

    pub fn set_vendor_rate(&self, vendor: ProviderName, per_second: f64) {
        self.traffic
            .rate
            .get_or_create(&VendorLabels {
                vendor: vendor.as_str(),
            })
            .set(per_second);
    }

    /// A budget window's use (`window`: day or month) and what is left.
    pub fn set_budget(&self, vendor: ProviderName, window: &'static str, used: u64, cap: u64) {
        let l = VendorWindow {
            vendor: vendor.as_str(),
            window,
        };
        self.traffic.budget_used.get_or_create(&l).set(used as i64);
        self.traffic
            .budget_remaining
            .get_or_create(&l)
            .set(cap.saturating_sub(used) as i64);
    }

    pub fn set_budget_flags(&self, vendor: ProviderName, warning: bool, exhausted: bool) {
        let l = VendorLabels {
            vendor: vendor.as_str(),
        };
        self.traffic
            .budget_warning
            .get_or_create(&l)
            .set(warning as i64);
        self.traffic
            .budget_exhausted
            .get_or_create(&l)
            .set(exhausted as i64);
    }

    pub fn failover(&self, primary: ProviderName, vendor: ProviderName) {
        self.traffic
            .failovers
            .get_or_create(&FailoverLabels {
                primary: primary.as_str(),
                vendor: vendor.as_str(),
            })
            .inc();
    }

    pub fn shadow_compared(
        &self,
        check: Check,
        primary: ProviderName,
        shadow: ProviderName,
        agreement: crate::domain::shadow::Agreement,
    ) {
        self.traffic
            .shadow_comparisons
            .get_or_create(&ShadowLabels {
                check: check.as_str(),
                primary: primary.as_str(),
                shadow: shadow.as_str(),
                agreement: agreement.label(),
            })
            .inc();
        if let Some(d) = agreement.score_difference {
            self.traffic
                .shadow_score_difference
                .get_or_create(&ShadowPair {
                    primary: primary.as_str(),
                    shadow: shadow.as_str(),
                })
                .observe(d.abs());
        }
    }

    pub fn shadow_skipped(&self, shadow: ProviderName, reason: &'static str) {
        self.traffic
            .shadow_skipped
            .get_or_create(&ShadowSkip {
                shadow: shadow.as_str(),
                reason,
            })
            .inc();
    }

    /// Counts a job in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// What the probes report.
#[derive(Default)]
pub struct Health {
    consuming: AtomicBool,
    draining: AtomicBool,
    results_unroutable: AtomicBool,
}

impl Health {
    pub fn set_consuming(&self, v: bool) {
        self.consuming.store(v, Ordering::SeqCst);
    }
    pub fn set_draining(&self, v: bool) {
        self.draining.store(v, Ordering::SeqCst);
    }
    /// Results have nowhere to go (a publish to the results exchange came
    /// back unroutable): no job can be finished.
    pub fn set_results_unroutable(&self, v: bool) {
        self.results_unroutable.store(v, Ordering::SeqCst);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }
    /// Whether this replica can take work: connected and consuming, not
    /// draining. A paused vendor or an open breaker does not count: the
    /// other vendors' jobs go on, the callback receiver keeps serving, and a
    /// fleet-wide pause must not take every pod out of its Services or
    /// block node drains. They show in metrics and `status` instead.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        if !self.consuming.load(Ordering::SeqCst) {
            return Err("not consuming (connecting to the broker)".into());
        }
        if self.results_unroutable.load(Ordering::SeqCst) {
            return Err(
                "results have nowhere to go: the broker returns them as unroutable (bind a queue to the results exchange)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Metrics and health, shared by the worker and the HTTP endpoint.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Serves `/metrics`, `/livez` and `/readyz`; returns the bound address.
pub async fn serve(addr: SocketAddr, t: Telemetry) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(t);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "Telemetry server failed");
        }
    });
    Ok(bound)
}

async fn metrics(State(t): State<Telemetry>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(t): State<Telemetry>) -> Response {
    match t.health.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}
