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

    // The job back from the wait finds it settled: nothing to publish, and
    // one read (the pending record's absence settles it; the outcome is
    // not read again).
    let reads = |o: &crate::pipeline::fakes::Outcomes| {
        (
            o.outcome_reads.load(std::sync::atomic::Ordering::SeqCst),
            o.pending_reads.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let before = reads(&t.outcomes);
    let f = t.step_with(&job("j1"), carried, 0).await;
    assert!(
        matches!(f.disposition, Disposition::Settled { .. }),
        "{}",
        f.disposition.label()
    );
    assert_eq!(t.vendor.calls(), 1);
    let after = reads(&t.outcomes);
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_callback_stored_but_not_published_is_published_by_the_wait_sweep() {
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.callback_mode = true;
    let t = T::with(config(), vendor, Some(callback_settings()));
    t.vendor.then(Answer::Accepted);
    let f = t.step(&job("j1")).await;
    let Disposition::AwaitCallback { carried } = f.disposition else {
        panic!("{}", f.disposition.label())
    };
    let pending = t.outcomes.pending.lock().unwrap()[&id("j1")].clone();
    // The callback stored the outcome, then its replica died before
    // publishing it and clearing the record.
    let settled = t.pipeline.settle_callback(&pending, b"0.2").await;
    assert!(t.outcomes.pending.lock().unwrap().contains_key(&id("j1")));
    let f = t.step_with(&job("j1"), carried, 0).await;
    assert_eq!(result(&f).verdict, result(&settled).verdict);
    assert_eq!(result(&f).job_id, id("j1"));
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

#[tokio::test(start_paused = true)]
async fn the_pending_record_is_written_before_the_submission() {
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.callback_mode = true;
    let t = T::with(config(), vendor, Some(callback_settings()));
    t.vendor.then(Answer::Accepted);
    let watch = async {
        while t.vendor.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The vendor is working on it (100 ms latency): the record is there.
        t.outcomes.pending.lock().unwrap().get(&id("j1")).cloned()
    };
    let body = job("j1");
    let (f, pending) = tokio::join!(t.step(&body), watch);
    assert!(matches!(f.disposition, Disposition::AwaitCallback { .. }));
    let pending = pending.expect("written before the call");
    assert_eq!(pending.submission, 1);
    let after = t.outcomes.pending.lock().unwrap()[&id("j1")].clone();
    assert_eq!(
        after.vendor.transaction_id.as_deref(),
        Some("txn-1"),
        "completed after"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_submission_leaves_no_pending_record() {
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.callback_mode = true;
    let t = T::with(config(), vendor, Some(callback_settings()));
    t.vendor.then(Answer::Error(VendorError::rejected(
        "argos answered error 1008",
    )));
    dead(&t.step(&job("j1")).await);
    assert!(t.outcomes.pending.lock().unwrap().is_empty());
}
