//! Pay once across the fleet: the claim on a job_id, the stop and hurry
//! signals, and what a stored outcome must match.

use super::*;
use crate::pipeline::Signals;

/// Lets spawned work (a claim's release) run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn two_live_copies_of_one_job_pay_once() {
    let t = T::new();
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(3);
    let body = job("j1");
    let (a, b) = tokio::join!(t.step(&body), t.step(&body));
    let (a, b) = (result(&a), result(&b));
    assert_eq!(t.vendor.calls(), 1, "the second copy waited for the first");
    assert_eq!(a.verdict, b.verdict);
    assert_eq!((a.attempts, b.attempts), (1, 1));
    assert!(t.metric("liveness_claim_waits_total 1"));
    settle().await;
    assert!(!t.claims.is_held(&id("j1")), "released once stored");
}

#[tokio::test(start_paused = true)]
async fn a_claim_held_past_the_deadline_parks_the_job_without_a_call() {
    let t = T::new();
    t.claims.hold(&id("j1"), Duration::from_secs(600));
    let progress = Carried {
        ladder_step: 1,
        attempts: 2,
        ..Default::default()
    };
    let f = t.step_with(&job("j1"), progress, 0).await;
    let (step, carried, reason) = retry(&f);
    assert_eq!(
        (step, carried.ladder_step, carried.attempts),
        (0, 1, 2),
        "no budget spent"
    );
    assert!(reason.contains("another copy of this job"), "{reason}");
    assert_eq!(t.vendor.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_holder_crashed_expires_and_the_job_proceeds() {
    let t = T::new();
    t.claims.hold(&id("j1"), Duration::from_secs(5));
    let f = t.step(&job("j1")).await;
    assert_eq!(result(&f).attempts, 1);
    assert_eq!(t.vendor.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_coordination_store_makes_the_job_wait() {
    let t = T::new();
    t.claims.down.store(true, Ordering::SeqCst);
    let f = t.step(&job("j1")).await;
    let (_, _, reason) = retry(&f);
    assert!(reason.contains("coordination store"), "{reason}");
    assert_eq!(t.vendor.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_delivery_gives_the_job_back_before_paying() {
    let t = T::new();
    let mut incoming = t
        .pipeline
        .parse(job("j1").as_bytes(), 0, Carried::default(), None);
    incoming.signals = Signals::default();
    incoming.signals.stop.cancel();
    let f = t.pipeline.step(&incoming).await;
    assert!(
        matches!(f.disposition, Disposition::Abandoned),
        "{}",
        f.disposition.label()
    );
    assert_eq!(t.vendor.calls(), 0);
    settle().await;
    assert!(!t.claims.is_held(&id("j1")));
}

#[tokio::test(start_paused = true)]
async fn a_drain_in_a_hurry_publishes_an_answer_it_cannot_store() {
    let t = T::new();
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(2);
    let incoming = t
        .pipeline
        .parse(job("j1").as_bytes(), 0, Carried::default(), None);
    let hurry = incoming.signals.hurry.clone();
    let outcomes = t.outcomes.clone();
    let started = tokio::time::Instant::now();
    let outage = async {
        // The store goes down while the vendor works; the drain's time runs out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        outcomes.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        hurry.cancel();
    };
    let (f, ()) = tokio::join!(t.pipeline.step(&incoming), outage);
    assert_eq!(result(&f).attempts, 1, "the answer is published, not lost");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait results.store_timeout (10s): {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_outcome_answers_only_the_same_check_and_vendor() {
    let t = T::new();
    result(&t.step(&job("j1")).await);
    // The same image as a face check.
    let face =
        format!(r#"{{"schema":"liveness.job.v1","job_id":"j1","check":"face","image":"{IMAGE}"}}"#);
    let f = t.step(&face).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::JobIdConflict);
    assert!(
        d.failure
            .message
            .contains("document check, this job asks for a face check"),
        "{}",
        d.failure.message
    );
    // Naming the vendor that answered is the same verification.
    result(&t.step(&job_with("j1", r#","provider":"argos""#)).await);
    assert_eq!(t.vendor.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stored_outcome_from_another_vendor_does_not_answer_a_job_naming_one() {
    let images = Arc::new(Images::default());
    images.put(IMAGE, samples::png(1, 2000, None));
    let outcomes = Arc::new(Outcomes::default());
    let argos = Arc::new(Vendor::new(ProviderName::Argos));
    let intellicheck = Arc::new(Vendor::new(ProviderName::Intellicheck));
    let pipeline = Pipeline::new(
        config(),
        images,
        vec![argos.clone(), intellicheck.clone()],
        Arc::new(Metrics::new()),
    )
    .with_outcomes(outcomes);
    let step = async |body: String| {
        let incoming = pipeline.parse(body.as_bytes(), 0, Carried::default(), None);
        pipeline.step(&incoming).await
    };
    // Answered by the default vendor (argos) ...
    assert_eq!(result(&step(job("j1")).await).provider, ProviderName::Argos);
    // ... so a copy that names intellicheck is another verification.
    let f = step(job_with("j1", r#","provider":"intellicheck""#)).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::JobIdConflict);
    assert!(
        d.failure
            .message
            .contains("from argos, this job asks for intellicheck"),
        "{}",
        d.failure.message
    );
    assert_eq!((argos.calls(), intellicheck.calls()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn without_claims_a_conditional_store_still_gives_every_copy_one_verdict() {
    let images = Arc::new(Images::default());
    images.put(IMAGE, samples::png(1, 2000, None));
    let outcomes = Arc::new(Outcomes::default());
    outcomes.conditional.store(true, Ordering::SeqCst);
    let vendor = Arc::new(Vendor::new(ProviderName::Argos));
    // The vendor answers the two copies differently; the second is slower.
    vendor.then(Answer::Score(0.9)).then(Answer::Score(0.2));
    let pipeline = Pipeline::new(
        config(),
        images,
        vec![vendor.clone()],
        Arc::new(Metrics::new()),
    )
    .with_outcomes(outcomes);
    let body = job("j1");
    let copy = async |delay: u64| {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let incoming = pipeline.parse(body.as_bytes(), 0, Carried::default(), None);
        pipeline.step(&incoming).await
    };
    let (a, b) = tokio::join!(copy(0), copy(10));
    assert_eq!(vendor.calls(), 2, "no claim: both paid");
    assert_eq!(result(&a).verdict, Verdict::Live);
    assert_eq!(
        result(&b).verdict,
        Verdict::Live,
        "the first stored outcome stands"
    );
}
