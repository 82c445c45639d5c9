//! Vendor traffic control in the step: a spent budget parks without an
//! attempt (and, once known, without fetching); a rate limit spaces the
//! calls; adaptive concurrency bounds the calls in flight.

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
    let finished = futures_util::future::join_all(jobs.iter().map(|j| t.step(j))).await;
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
