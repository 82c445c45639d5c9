//! The pipeline tier: [`Pipeline::step`] driven through in-memory fakes on
//! a paused tokio clock, one test per disposition. Backoffs, vendor latency
//! and the job deadline pass in virtual time, so nothing here sleeps.

mod bounds;
mod callback;
mod claims;
mod shadow;
mod traffic;

use super::fakes::{Answer, Claims, Images, Outcomes, Vendor};
use super::*;
use crate::domain::carried::Carried;
use crate::domain::dead_letter::FailureClass;
use crate::domain::job::JobId;
use crate::domain::{AttemptOutcome, ProviderName, Verdict};
use crate::providers::VendorError;
use crate::samples;
use std::sync::atomic::Ordering;
use std::time::Duration;

const IMAGE: &str = "s3://imgs/a/front.png";

fn config() -> PipelineConfig {
    PipelineConfig {
        routing: Routing {
            allowed_buckets: vec!["imgs".into()],
            default_document: ProviderName::Argos,
            default_face: ProviderName::Argos,
        },
        max_job_bytes: 65536,
        max_image_bytes: 1 << 20,
        max_image_bytes_in_flight: 64 << 20,
        job_deadline: Duration::from_secs(20),
        attempts_per_delivery: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(5),
        ladder_len: 2,
        credentials_park_step: 0,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(30),
        pause_probe_interval: Duration::from_secs(30),
        poison_threshold: 10,
        worker_id: "test:1".into(),
        store_timeout: Duration::from_secs(10),
        audit: true,
        claim_lease: Duration::from_secs(30),
        traffic: crate::config::Config::from_toml("").unwrap().traffic,
        failover_document: Vec::new(),
        failover_face: Vec::new(),
        shadow: crate::config::Config::from_toml("").unwrap().shadow,
    }
}

struct T {
    images: Arc<Images>,
    outcomes: Arc<Outcomes>,
    claims: Arc<Claims>,
    vendor: Arc<Vendor>,
    pipeline: Pipeline,
}

impl T {
    fn new() -> T {
        Self::with(config(), Vendor::new(ProviderName::Argos), None)
    }

    fn with(cfg: PipelineConfig, vendor: Vendor, callbacks: Option<CallbackSettings>) -> T {
        let images = Arc::new(Images::default());
        images.put(IMAGE, samples::png(1, 2000, None));
        let outcomes = Arc::new(Outcomes::default());
        let claims = Arc::new(Claims::default());
        let vendor = Arc::new(vendor);
        let mut pipeline = Pipeline::new(
            cfg,
            images.clone(),
            vec![vendor.clone()],
            Arc::new(Metrics::new()),
        )
        .with_outcomes(outcomes.clone())
        .with_claims(claims.clone());
        if let Some(cb) = callbacks {
            pipeline = pipeline.with_callbacks(cb);
        }
        T {
            images,
            outcomes,
            claims,
            vendor,
            pipeline,
        }
    }

    async fn step_with(&self, body: &str, carried: Carried, delivery_count: u32) -> Finished {
        let incoming = self
            .pipeline
            .parse(body.as_bytes(), delivery_count, carried, None);
        self.pipeline.step(&incoming).await
    }

    /// A first delivery from `origin` (the jobs queue or a wait queue).
    async fn step_from(&self, body: &str, carried: Carried, origin: Origin) -> Finished {
        let mut incoming = self.pipeline.parse(body.as_bytes(), 0, carried, None);
        incoming.origin = origin;
        self.pipeline.step(&incoming).await
    }

    async fn step(&self, body: &str) -> Finished {
        self.step_with(body, Carried::default(), 0).await
    }

    fn metric(&self, needle: &str) -> bool {
        self.pipeline.metrics().encode().contains(needle)
    }
}

fn job(id: &str) -> String {
    job_with(id, "")
}

/// A document job; `extra` is spliced in as further fields.
fn job_with(id: &str, extra: &str) -> String {
    format!(
        r#"{{"schema":"liveness.job.v1","job_id":"{id}","check":"document","image":"{IMAGE}","metadata":{{"k":1.50}}{extra}}}"#
    )
}

fn result(f: &Finished) -> &crate::domain::result::LivenessResult {
    match &f.disposition {
        Disposition::Publish(r) => r,
        other => panic!("expected a result, got {}", other.label()),
    }
}

fn dead(f: &Finished) -> &crate::domain::dead_letter::DeadLetter {
    match &f.disposition {
        Disposition::DeadLetter(d) => d,
        other => panic!("expected a dead letter, got {}", other.label()),
    }
}

fn retry(f: &Finished) -> (usize, &Carried, &str) {
    match &f.disposition {
        Disposition::RetryLater {
            step,
            carried,
            reason,
        } => (*step, carried, reason),
        other => panic!("expected a retry, got {}", other.label()),
    }
}

fn id(s: &str) -> JobId {
    JobId::parse(s).unwrap()
}

fn transient_429() -> VendorError {
    VendorError::from_status(ProviderName::Argos, 429, Some(Duration::from_millis(500)))
}

#[tokio::test(start_paused = true)]
async fn a_vendor_answer_is_stored_then_published() {
    let t = T::new();
    let f = t.step(&job("j1")).await;
    let r = result(&f);
    assert_eq!(r.verdict, Verdict::Live);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.metadata.as_ref().unwrap().get(), r#"{"k":1.50}"#);
    assert_eq!(
        (f.check, f.provider),
        (
            Some(crate::domain::Check::Document),
            Some(ProviderName::Argos)
        )
    );
    let stored = t.outcomes.outcomes.lock().unwrap()[&id("j1")].clone();
    assert_eq!(stored.image_sha256, r.image.sha256);
    assert_eq!(stored.attempts.len(), 1);
    assert_eq!(stored.attempts[0].outcome, AttemptOutcome::Ok);
    assert!(
        t.outcomes.audit.lock().unwrap().is_empty(),
        "the outcome carries its attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_outcome_is_republished_without_a_vendor_call() {
    let t = T::new();
    result(&t.step(&job("j1")).await);
    let again = job_with("j1", "").replace(r#"{"k":1.50}"#, r#"{"k":"second"}"#);
    let f = t.step(&again).await;
    let r = result(&f);
    assert_eq!(t.vendor.calls(), 1, "the vendor is paid once");
    assert_eq!(r.attempts, 1, "the stored count is kept");
    assert_eq!(
        r.metadata.as_ref().unwrap().get(),
        r#"{"k":"second"}"#,
        "this job's metadata"
    );
    assert!(t.metric("liveness_stored_outcomes_reused_total 1"));
}

#[tokio::test(start_paused = true)]
async fn the_same_job_id_with_another_image_is_a_conflict() {
    let t = T::new();
    result(&t.step(&job("j1")).await);
    t.images
        .put("s3://imgs/other.png", samples::png(2, 2000, None));
    let f = t.step(&job("j1").replace("a/front.png", "other.png")).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::JobIdConflict);
    assert_eq!(d.attempts, 1, "the stored outcome's attempts");
    assert!(
        d.failure.message.contains("memory://outcomes/j1.json"),
        "{}",
        d.failure.message
    );
    assert_eq!(t.vendor.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_bodies_are_invalid_jobs() {
    let t = T::new();
    for (body, needle) in [
        ("not json", "not valid JSON"),
        (
            r#"{"schema":"liveness.job.v1","job_id":"x","check":"selfie","image":"s3://imgs/a"}"#,
            "check must be",
        ),
        (
            &job_with("j2", r#","provider":"didit""#),
            "cannot do document checks",
        ),
    ] {
        let f = t.step(body).await;
        let d = dead(&f);
        assert_eq!(d.failure.class, FailureClass::InvalidJob, "{body}");
        assert!(d.failure.message.contains(needle), "{}", d.failure.message);
        assert!(!d.failure.retryable);
    }
    let f = t.step("[1]").await;
    assert!(dead(&f).raw_body_base64.is_some() && dead(&f).job.is_none());
    assert_eq!(t.vendor.calls(), 0);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_bucket_off_the_allowlist_is_forbidden() {
    let t = T::new();
    let f = t
        .step(&job("j1").replace("s3://imgs/", "s3://elsewhere/"))
        .await;
    assert_eq!(dead(&f).failure.class, FailureClass::ForbiddenImageLocation);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_is_not_found_and_retryable() {
    let t = T::new();
    let f = t.step(&job("j1").replace("front.png", "gone.png")).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::ImageNotFound);
    assert!(d.failure.retryable);
    assert_eq!(d.attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn bytes_that_are_not_a_usable_image_are_rejected() {
    let t = T::new();
    t.images.put("s3://imgs/pdf", b"%PDF-1.7 ...".to_vec());
    t.images.put("s3://imgs/empty", Vec::new());
    t.images
        .put("s3://imgs/big", samples::png(3, 2 << 20, None));
    for (key, needle) in [
        ("pdf", "not a JPEG, PNG or WebP"),
        ("empty", "empty object"),
        ("big", "over the 1048576-byte limit"),
    ] {
        let f = t.step(&job("j1").replace("a/front.png", key)).await;
        let d = dead(&f);
        assert_eq!(d.failure.class, FailureClass::ImageRejected, "{key}");
        assert!(d.failure.message.contains(needle), "{}", d.failure.message);
    }
    assert_eq!(t.vendor.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_the_vendor_rejects_is_dead_lettered_at_once() {
    let t = T::new();
    t.vendor.then(Answer::Error(
        VendorError::rejected("argos answered error 1008")
            .with_code("1008")
            .with_status(400),
    ));
    let f = t.step(&job("j1")).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::VendorRejectedRequest);
    assert_eq!(d.failure.vendor_code.as_deref(), Some("1008"));
    assert_eq!(d.failure.provider, Some(ProviderName::Argos));
    assert_eq!(d.attempts, 1);
    assert_eq!(t.vendor.calls(), 1, "no retry");
    let audit = t.outcomes.audit.lock().unwrap();
    assert_eq!(audit[0].disposition, "dead letter vendor_rejected_request");
    assert_eq!(audit[0].attempts[0].outcome, AttemptOutcome::Rejected);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_in_process_honouring_retry_after() {
    let t = T::new();
    t.vendor.then(Answer::Error(transient_429()));
    let started = tokio::time::Instant::now();
    let f = t.step(&job("j1")).await;
    let r = result(&f);
    assert_eq!(r.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited the vendor's Retry-After"
    );
    assert!(t.metric(r#"liveness_vendor_retries_total{vendor="argos"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn transient_failures_climb_the_ladder_then_exhaust_it() {
    // The breaker stays out of it here (see the breaker test).
    let mut cfg = config();
    cfg.breaker_failures = 100;
    let t = T::with(cfg, Vendor::new(ProviderName::Argos), None);
    for _ in 0..9 {
        t.vendor.then(Answer::Error(
            VendorError::outage("argos had a server error").with_status(503),
        ));
    }
    let f = t.step(&job("j1")).await;
    let (step, carried, reason) = retry(&f);
    assert_eq!((step, carried.ladder_step, carried.attempts), (0, 1, 3));
    assert!(carried.first_received_at.is_some());
    assert!(reason.contains("server error"), "{reason}");
    assert_eq!(
        t.outcomes.audit.lock().unwrap()[0].disposition,
        "retry step 0"
    );

    let f = t.step_with(&job("j1"), carried.clone(), 0).await;
    let (step, carried, _) = retry(&f);
    assert_eq!((step, carried.ladder_step, carried.attempts), (1, 2, 6));

    let f = t.step_with(&job("j1"), carried.clone(), 0).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::RetriesExhausted);
    assert!(d.failure.retryable);
    assert_eq!(d.attempts, 9, "attempts across all deliveries");
    assert!(
        d.failure
            .message
            .contains("2 delay steps, 9 vendor attempts"),
        "{}",
        d.failure.message
    );
    assert_eq!(d.failure.http_status, Some(503));
}

#[tokio::test(start_paused = true)]
async fn a_vendor_slower_than_the_deadline_is_a_transient_failure() {
    let t = T::new();
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let f = t.step(&job("j1")).await;
    let (_, carried, reason) = retry(&f);
    assert!(
        reason.contains("did not answer within the job deadline"),
        "{reason}"
    );
    assert_eq!(carried.attempts, 1);
    assert!(
        started.elapsed() <= Duration::from_secs(21),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_pause_the_vendor_and_a_probe_resumes_it() {
    let t = T::new();
    t.vendor.then(Answer::Error(
        VendorError::credentials("argos refused our credentials (HTTP 401)").with_status(401),
    ));
    let progress = Carried {
        ladder_step: 1,
        ..Default::default()
    };
    let f = t.step_with(&job("j1"), progress.clone(), 0).await;
    let (step, carried, reason) = retry(&f);
    assert_eq!(
        (step, carried.ladder_step),
        (0, 1),
        "parked at the park step, no step climbed"
    );
    assert!(reason.contains("refused our credentials"), "{reason}");
    assert!(t.metric(r#"liveness_vendor_paused{vendor="argos"} 1"#));

    // While paused, jobs park without a call.
    let f = t.step(&job("j2")).await;
    let (_, _, reason) = retry(&f);
    assert!(reason.contains("is paused"), "{reason}");
    assert_eq!(t.vendor.calls(), 1);

    // One probe per interval; its answer resumes the vendor.
    tokio::time::advance(Duration::from_secs(31)).await;
    let f = t.step(&job("j2")).await;
    result(&f);
    assert_eq!(t.vendor.calls(), 2);
    assert!(t.metric(r#"liveness_vendor_paused{vendor="argos"} 0"#));
    result(&t.step(&job("j3")).await);
}

#[tokio::test(start_paused = true)]
async fn outages_open_the_breaker_and_park_jobs_without_calls() {
    let mut cfg = config();
    cfg.attempts_per_delivery = 1;
    let t = T::with(cfg, Vendor::new(ProviderName::Argos), None);
    for _ in 0..3 {
        t.vendor.then(Answer::Error(VendorError::outage(
            "argos request could not be reached",
        )));
    }
    for n in 0..3 {
        retry(&t.step(&job(&format!("j{n}"))).await);
    }
    assert!(t.metric(r#"liveness_vendor_breaker_open{vendor="argos"} 1"#));
    let f = t.step(&job("j9")).await;
    let (step, carried, reason) = retry(&f);
    assert!(reason.contains("circuit breaker open"), "{reason}");
    assert_eq!((step, carried.ladder_step, carried.attempts), (0, 0, 0));
    assert_eq!(t.vendor.calls(), 3);
    tokio::time::advance(Duration::from_secs(31)).await;
    result(&t.step(&job("j9")).await);
    assert!(t.metric(r#"liveness_vendor_breaker_open{vendor="argos"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn a_job_delivered_too_often_is_poison() {
    let t = T::new();
    let f = t.step_with(&job("j1"), Carried::default(), 10).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::Internal);
    assert!(
        d.failure.message.contains("delivered 11 times"),
        "{}",
        d.failure.message
    );
    assert_eq!(d.job_id.as_deref(), Some("j1"));
    assert_eq!(t.vendor.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_be_read_makes_the_job_wait() {
    let t = T::new();
    t.outcomes.down.store(true, Ordering::SeqCst);
    let f = t.step(&job("j1")).await;
    let (_, _, reason) = retry(&f);
    assert!(
        reason.contains("rather than risk paying the vendor twice"),
        "{reason}"
    );
    assert_eq!(t.vendor.calls(), 0);
    *t.outcomes.corrupt.lock().unwrap() = Some(id("j2"));
    t.outcomes.down.store(false, Ordering::SeqCst);
    let d = t.step(&job("j2")).await;
    assert_eq!(dead(&d).failure.class, FailureClass::Internal);
}

#[tokio::test(start_paused = true)]
async fn s3_failures_are_retried_within_the_delivery() {
    let t = T::new();
    t.images.fail(IMAGE, 2);
    result(&t.step(&job("j1")).await);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 3);
    t.images.fail(IMAGE, 10);
    let f = t.step(&job("j2")).await;
    let (_, carried, _) = retry(&f);
    assert_eq!(carried.attempts, 0, "no vendor call without the image");
}

#[tokio::test(start_paused = true)]
async fn a_panic_becomes_an_internal_dead_letter_with_the_job() {
    let t = T::new();
    let incoming = t
        .pipeline
        .parse(job("j1").as_bytes(), 0, Carried::default(), None);
    let f = t.pipeline.internal_dead_letter(&incoming, "boom".into());
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::Internal);
    assert_eq!(d.job_id.as_deref(), Some("j1"));
    assert!(d.job.is_some());
}
