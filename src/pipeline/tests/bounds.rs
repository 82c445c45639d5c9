//! What bounds a job's memory and time while it fetches: the image byte
//! budget, the back image only for the vendors that use it, and the job
//! deadline over the whole download, body included.

use super::*;
use tokio::time::Instant;

const BACK: &str = "s3://imgs/a/back.png";

#[tokio::test(start_paused = true)]
async fn a_trickling_image_ends_the_job_at_its_deadline() {
    let t = T::new();
    t.images.trickle(IMAGE);
    let started = Instant::now();
    let f = t.step(&job("slow-1")).await;
    let took = started.elapsed();
    let (step, _, reason) = retry(&f);
    assert_eq!(step, 0, "the first ladder step");
    assert!(
        reason.contains("did not finish downloading within the job's deadline"),
        "{reason}"
    );
    // The deadline is 20 s (config()); the paused clock makes this exact.
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(21),
        "{took:?}"
    );
    assert_eq!(t.vendor.calls(), 0);
    assert!(
        t.metric("liveness_image_bytes_in_flight 0"),
        "the budget is given back"
    );
}

#[tokio::test(start_paused = true)]
async fn the_back_image_is_fetched_only_for_a_vendor_that_sends_it() {
    // Argos (the fake's default) never sends it: not fetched, so not even
    // a missing one stops the job.
    let t = T::new();
    let f = t
        .step(&job_with("b1", &format!(r#","back_image":"{BACK}""#)))
        .await;
    result(&f);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 1, "the front only");
    assert_eq!(t.vendor.backs.load(Ordering::SeqCst), 0);
    let stored = t.outcomes.outcomes.lock().unwrap()[&id("b1")].clone();
    assert_eq!(stored.back_image_sha256, None);
    // The same job again is the same verification.
    result(
        &t.step(&job_with("b1", &format!(r#","back_image":"{BACK}""#)))
            .await,
    );
    assert_eq!(t.vendor.calls(), 1);

    // A vendor that sends it (Intellicheck) gets it, and its digest is kept.
    let mut vendor = Vendor::new(ProviderName::Argos);
    vendor.uses_back = true;
    let t = T::with(config(), vendor, None);
    t.images.put(BACK, samples::png(9, 3000, None));
    let f = t
        .step(&job_with("b2", &format!(r#","back_image":"{BACK}""#)))
        .await;
    result(&f);
    assert_eq!(t.images.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(t.vendor.backs.load(Ordering::SeqCst), 1);
    let stored = t.outcomes.outcomes.lock().unwrap()[&id("b2")].clone();
    assert!(stored.back_image_sha256.is_some());
}

#[tokio::test(start_paused = true)]
async fn jobs_wait_for_room_in_the_image_budget() {
    // Room for one image of the largest size: a second job cannot fetch
    // until the first one's vendor call ends, even though its own image is
    // small, because it reserves the largest size first.
    let cfg = PipelineConfig {
        max_image_bytes: 1 << 20,
        max_image_bytes_in_flight: (1 << 20) + 4096,
        ..config()
    };
    let t = T::with(cfg, Vendor::new(ProviderName::Argos), None);
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(2);
    // Big enough that two do not fit once shrunk to their size.
    let big = samples::png(3, 700_000, None);
    assert!(big.len() > 600_000, "{}", big.len());
    t.images.put(IMAGE, big);
    let (ja, jb) = (job("w1"), job("w2"));
    let (a, b) = tokio::join!(t.step(&ja), t.step(&jb));
    result(&a);
    result(&b);
    assert_eq!(
        t.vendor.max_in_call.load(Ordering::SeqCst),
        1,
        "the second job waited for the first one's image bytes"
    );
    assert!(t.metric("liveness_image_bytes_in_flight 0"));

    // With room for both, they overlap.
    let t = T::new();
    *t.vendor.latency.lock().unwrap() = Duration::from_secs(2);
    let (ja, jb) = (job("w3"), job("w4"));
    let (a, b) = tokio::join!(t.step(&ja), t.step(&jb));
    result(&a);
    result(&b);
    assert_eq!(t.vendor.max_in_call.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_finds_no_room_before_its_deadline_waits_on_the_ladder() {
    let cfg = PipelineConfig {
        max_image_bytes: 1 << 20,
        max_image_bytes_in_flight: 1 << 20,
        job_deadline: Duration::from_secs(5),
        ..config()
    };
    let t = T::with(cfg, Vendor::new(ProviderName::Argos), None);
    // The first job holds its room while its image trickles, until its
    // deadline; the second, started a second later, cannot get room before
    // its own.
    t.images.trickle(IMAGE);
    let (j1, j2) = (job("r1"), job("r2"));
    let first = t.step(&j1);
    let second = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.step(&j2).await
    };
    let (a, b) = tokio::join!(first, second);
    assert!(
        retry(&a).2.contains("did not finish downloading"),
        "{}",
        retry(&a).2
    );
    // The second got room when the first gave up at 5 s, then trickled too.
    let reason = retry(&b).2;
    assert!(reason.contains("did not finish downloading"), "{reason}");
    // Now one that never gets room: the budget is held elsewhere.
    let held = t
        .pipeline
        .fetch
        .reserve(
            1 << 20,
            Instant::now() + Duration::from_secs(60),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(t.metric("liveness_image_bytes_in_flight 1048576"));
    let f = t.step(&job("r3")).await;
    assert!(
        retry(&f).2.contains("no room in the image budget"),
        "{}",
        retry(&f).2
    );
    assert_eq!(
        t.images.fetches.load(Ordering::SeqCst),
        2,
        "r3 fetched nothing"
    );
    drop(held);
    assert!(t.metric("liveness_image_bytes_in_flight 0"));
}

#[tokio::test(start_paused = true)]
async fn a_vendor_error_text_reaches_the_dead_letter_cleaned_and_capped() {
    // 100 KB of vendor text with newlines, tabs, escape sequences and NULs.
    let hostile = format!(
        "Invalid image\r\nX-Injected: yes\t\u{1b}[31m\u{0}{}",
        "blah\n".repeat(20_000)
    );
    let argos_body = serde_json::json!({"errorCode": "1008\n", "message": hostile}).to_string();
    let didit_body = serde_json::json!({"detail": hostile}).to_string();
    let errors = [
        crate::providers::argos::normalize::error_response(
            400,
            argos_body.as_bytes(),
            None,
            &crate::domain::SignalName::DOCUMENT,
        )
        .unwrap_err(),
        crate::providers::didit::normalize::error_response(400, didit_body.as_bytes(), None),
        // An adapter that quotes the vendor raw: the pipeline cleans it too.
        VendorError::rejected(format!("acme said {hostile}")),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let t = T::new();
        t.vendor.then(Answer::Error(e));
        let f = t.step(&job(&format!("text-{i}"))).await;
        let d = dead(&f);
        let m = &d.failure.message;
        assert!(
            m.contains("Invalid image X-Injected: yes [31m blah blah"),
            "{i}: {m}"
        );
        assert!(!m.chars().any(char::is_control), "{i}: {m:?}");
        assert!(!m.contains("  "), "{i}: whitespace collapsed: {m:?}");
        assert!(m.len() < 2000, "{i}: {} bytes", m.len());
        if let Some(code) = &d.failure.vendor_code {
            assert_eq!(code, "1008");
        }
        let audit = &t.outcomes.audit.lock().unwrap()[0].attempts[0];
        let recorded = audit.error.as_deref().unwrap();
        assert!(!recorded.chars().any(char::is_control) && recorded.len() < 2000);
    }
}
