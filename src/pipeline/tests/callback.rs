//! Argos callback mode through the step: waiting, settling, resubmitting.

use super::*;

fn callback_settings() -> CallbackSettings {
    CallbackSettings {
        public_url: "https://cb.example.com".parse().unwrap(),
        secret: crate::config::Secret::new("0123456789abcdef0123456789abcdef"),
        token_ttl: Duration::from_secs(3600),
        submissions: 2,
        wait: Duration::from_secs(60),
    }
}

#[tokio::test(start_paused = true)]
async fn callback_mode_waits_for_the_callback_and_settles_once() {
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.callback_mode = true;
    let t = T::with(config(), vendor, Some(callback_settings()));
    t.vendor.then(Answer::Accepted);
    let f = t.step(&job("j1")).await;
    let carried = match &f.disposition {
        Disposition::AwaitCallback { carried } => carried.clone(),
        other => panic!("{}", other.label()),
    };
    assert!(carried.awaiting_callback);
    assert_eq!((carried.callback_submissions, carried.attempts), (1, 1));
    let pending = t.outcomes.pending.lock().unwrap()[&id("j1")].clone();

    // The callback settles it: stored, published, the record cleared after.
    let f = t.pipeline.settle_callback(&pending, b"0.2").await;
    assert_eq!(result(&f).verdict, Verdict::Spoof);
    assert_eq!(f.clear_pending, Some(id("j1")));
    assert!(t.outcomes.outcomes.lock().unwrap().contains_key(&id("j1")));
    t.outcomes.pending.lock().unwrap().clear();

    // The job back from the wait finds it settled: nothing to publish.
    let f = t.step_with(&job("j1"), carried, 0).await;
    assert!(
        matches!(f.disposition, Disposition::Settled { .. }),
        "{}",
        f.disposition.label()
    );
    assert_eq!(t.vendor.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_callback_that_never_comes_is_submitted_again_then_dead_lettered() {
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.callback_mode = true;
    let t = T::with(config(), vendor, Some(callback_settings()));
    t.vendor.then(Answer::Accepted).then(Answer::Accepted);
    let f = t.step(&job("j1")).await;
    let Disposition::AwaitCallback { carried } = f.disposition else {
        panic!()
    };
    let f = t.step_with(&job("j1"), carried, 0).await;
    let Disposition::AwaitCallback { carried } = f.disposition else {
        panic!("{}", f.disposition.label())
    };
    assert_eq!((carried.callback_submissions, t.vendor.calls()), (2, 2));
    let f = t.step_with(&job("j1"), carried, 0).await;
    let d = dead(&f);
    assert_eq!(d.failure.class, FailureClass::RetriesExhausted);
    assert!(
        d.failure.message.contains("never called back"),
        "{}",
        d.failure.message
    );
    assert_eq!(f.clear_pending, Some(id("j1")));
    assert_eq!(t.vendor.calls(), 2);
}
