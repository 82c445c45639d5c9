//! Vendor traffic control in the step: a spent budget parks without an
//! attempt (and, once known, without fetching); a rate limit spaces the
//! calls; adaptive concurrency bounds the calls in flight; a job from the
//! jobs queue that its vendor cannot take now moves to the vendor's wait
//! queue before its image is fetched.

use super::*;
use crate::pipeline::traffic::LocalTraffic;
use tokio::time::Instant;

fn with_traffic(toml: &str) -> T {
    let cfg = PipelineConfig {
        traffic: crate::config::Config::from_toml(toml).unwrap().traffic,
        ..config()
    };
    let mut t = T::with(cfg, Vendor::new(ProviderName::Argos), None);
    // A shared store, as the coordination store would be.
    t.pipeline = t.pipeline.with_traffic(Arc::new(LocalTraffic::default()));
    t
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_parks_jobs_without_an_attempt() {
    let t = with_traffic(
        "[coordination]\nredis_url = \"redis://x\"\n[traffic.argos]\ndaily_budget = 2",
    );
    for id in ["b1", "b2"] {
        result(&t.step(&job(id)).await);
    }
    let carried = Carried {
        attempts: 1,
        ladder_step: 1,
        ..Default::default()
    };
    let f = t.step_with(&job("b3"), carried.clone(), 0).await;
    let (step, kept, reason) = retry(&f);
    assert_eq!(step, 0, "the park step");
    assert_eq!(
        (kept.attempts, kept.ladder_step),
        (1, 1),
        "no attempt, no ladder step spent"
    );
    assert!(reason.contains("daily spend budget is spent"), "{reason}");
    assert_eq!(t.vendor.calls.load(Ordering::SeqCst), 2);
    // Known spent: the next one parks before its image is fetched.
    let fetched = t.images.fetches.load(Ordering::SeqCst);
    retry(&t.step(&job("b4")).await);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), fetched);
    assert!(t.metric(r#"liveness_vendor_throttled_total{vendor="argos",reason="budget"} 2"#));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_spaces_the_calls_and_adaptive_concurrency_bounds_them() {
    let t = with_traffic(
        "[traffic.argos]\nrate = \"2/s\"\nconcurrency_max = 2\nconcurrency_initial = 2",
    );
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(3);
    let started = Instant::now();
    let jobs: Vec<String> = (0..6).map(|i| job(&format!("r{i}"))).collect();
    // Delivered from Argos's wait queue: they wait there for their turn.
    let finished = futures_util::future::join_all(
        jobs.iter()
            .map(|j| t.step_from(j, Carried::default(), Origin::Waiting)),
    )
    .await;
    for f in &finished {
        assert_eq!(result(f).attempts, 1);
    }
    // Two at a time (3 s each), and no more than 2 per second.
    assert_eq!(t.vendor.max_in_call.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_default_vendor_fails_over_unless_the_job_named_it() {
    let cfg = PipelineConfig {
        failover_document: vec![ProviderName::Intellicheck],
        ..config()
    };
    let images = Arc::new(Images::default());
    images.put(IMAGE, samples::png(1, 2000, None));
    let argos = Arc::new(Vendor::new(ProviderName::Argos));
    let intellicheck = Arc::new(Vendor::new(ProviderName::Intellicheck));
    argos.then(Answer::Error(VendorError::credentials("key refused")));
    let pipeline = Pipeline::new(
        cfg,
        images,
        vec![argos.clone(), intellicheck.clone()],
        Arc::new(Metrics::new()),
    )
    .with_outcomes(Arc::new(Outcomes::default()));
    let step = async |body: String| {
        let incoming = pipeline.parse(body.as_bytes(), 0, Carried::default(), None);
        pipeline.step(&incoming).await
    };
    // Argos refuses the key: paused, the job parked.
    retry(&step(job("f1")).await);
    // The next job that names no vendor goes to Intellicheck, and says why.
    let f = step(job("f2")).await;
    let r = result(&f);
    assert_eq!(r.provider, ProviderName::Intellicheck);
    let why = r.failover.as_ref().expect("the failover is recorded");
    assert_eq!(why.primary, ProviderName::Argos);
    assert!(why.reason.contains("argos is paused"), "{}", why.reason);
    // A job that named Argos is never failed over: it parks.
    let f = step(job_with("f3", r#","provider":"argos""#)).await;
    retry(&f);
    assert_eq!(argos.calls(), 1);
    assert_eq!(intellicheck.calls(), 1);
    // Once the probe is due, the default vendor gets the job again.
    tokio::time::advance(Duration::from_secs(31)).await;
    let f = step(job("f4")).await;
    let r = result(&f);
    assert_eq!(
        (r.provider, r.failover.is_none()),
        (ProviderName::Argos, true)
    );
    assert!(
        pipeline
            .metrics()
            .encode()
            .contains(r#"liveness_failovers_total{primary="argos",vendor="intellicheck"} 1"#)
    );
}

fn moved(f: &Finished) -> (ProviderName, &Carried) {
    match &f.disposition {
        Disposition::Wait { vendor, carried } => (*vendor, carried),
        other => panic!("expected a move to the wait queue, got {}", other.label()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_its_vendor_cannot_take_now_moves_to_its_wait_queue_unfetched() {
    let t = with_traffic("[traffic.argos]\nrate = \"1/s\"");
    // A token due now: the job goes on to its call, which uses that token.
    let before = Instant::now();
    result(&t.step(&job("w1")).await);
    assert!(before.elapsed() < Duration::from_millis(500), "no wait");
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 1);
    // The next token is most of a second away: the next job moves, at
    // once, keeping its progress, with no fetch, no attempt, no token.
    let carried = Carried {
        attempts: 2,
        ladder_step: 1,
        first_received_at: Some("2026-12-08T00:00:00Z".into()),
        ..Default::default()
    };
    let before = Instant::now();
    let f = t.step_from(&job("w2"), carried.clone(), Origin::Jobs).await;
    let (vendor, kept) = moved(&f);
    assert_eq!(vendor, ProviderName::Argos);
    assert_eq!(f.provider, Some(ProviderName::Argos));
    assert_eq!(
        (
            kept.attempts,
            kept.ladder_step,
            kept.first_received_at.as_deref()
        ),
        (2, 1, Some("2026-12-08T00:00:00Z")),
        "nothing spent"
    );
    assert_eq!(before.elapsed(), Duration::ZERO, "moved without waiting");
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 1, "not fetched");
    assert_eq!(t.vendor.calls.load(Ordering::SeqCst), 1);
    // A fresh job gets its first-received time set before it moves.
    let f = t.step(&job("w3")).await;
    assert!(moved(&f).1.first_received_at.is_some());
    // From the wait queue it waits for its token (taken a second after the
    // first one: the moved jobs took none) and is answered.
    let f = t.step_from(&job("w2"), kept.clone(), Origin::Waiting).await;
    assert_eq!(result(&f).attempts, 3);
    assert!(
        before.elapsed() >= Duration::from_millis(900)
            && before.elapsed() <= Duration::from_millis(1100),
        "{:?}",
        before.elapsed()
    );
    // A job from the wait queue never moves again: it waits (within
    // traffic.max_wait) or parks.
    let before = Instant::now();
    result(
        &t.step_from(&job("w3"), Carried::default(), Origin::Waiting)
            .await,
    );
    assert!(before.elapsed() >= Duration::from_millis(900));
    assert_eq!(t.vendor.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_vendor_with_its_concurrency_slots_full_takes_no_more_from_the_jobs_queue() {
    let t = Arc::new(with_traffic(
        "[traffic.argos]\nconcurrency_max = 1\nconcurrency_initial = 1\nconcurrency_min = 1",
    ));
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(2);
    let first = {
        let t = t.clone();
        tokio::spawn(async move { t.step(&job("c1")).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The one slot is busy: the next job moves, unfetched.
    let f = t.step(&job("c2")).await;
    assert_eq!(moved(&f).0, ProviderName::Argos);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 1);
    result(&first.await.unwrap());
    // Free again: the next one is taken at once.
    result(&t.step(&job("c3")).await);
    // Budget-only vendors park as before: no wait queue for them.
    assert!(!t.pipeline.traffic().has_wait_queue(ProviderName::Didit));
}
