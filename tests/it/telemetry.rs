//! Metrics, probes and the promise that no secret or image byte leaks into
//! logs, results, dead letters or metrics.

use crate::harness::{TestEnv, env, wait_for};
use base64::Engine as _;
use liveness_worker::samples;
use serde_json::Value;
use std::time::Duration;

/// The value of one series in a Prometheus text exposition.
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .trim()
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_follow_the_worker() {
    let mut t = TestEnv::new("telemetry", "").await;
    // Before the worker runs: alive, not ready.
    assert_eq!(t.probe("/livez").await.0, 200);
    assert_eq!(
        t.probe("/readyz").await,
        (503, "not consuming (connecting to the broker)".into())
    );
    t.start_worker().await;
    assert_eq!(t.probe("/readyz").await.0, 200);

    let live = t
        .upload(
            "live.png",
            samples::png(
                1,
                20_000,
                Some(r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90}"#),
            ),
        )
        .await;
    let flaky = t
        .upload(
            "flaky.png",
            samples::png(
                2,
                20_000,
                Some(r#"{"error":1003,"error_times":1,"printed_copy":10}"#),
            ),
        )
        .await;
    t.publish(&t.job("m-live", "document", &live)).await;
    t.publish(&t.job("m-flaky", "document", &flaky)).await;
    t.publish(&t.job(
        "m-missing",
        "document",
        &format!(
            "s3://{}/{}/nope.png",
            crate::harness::images_bucket(),
            t.prefix
        ),
    ))
    .await;
    t.results(2).await;
    t.dead_letters(1).await;

    let (status, text) = t.probe("/metrics").await;
    assert_eq!(status, 200);
    for (s, want) in [
        (
            r#"liveness_jobs_total{outcome="result",verdict="live",check="document",vendor="argos"}"#,
            1.0,
        ),
        (
            r#"liveness_jobs_total{outcome="result",verdict="spoof",check="document",vendor="argos"}"#,
            1.0,
        ),
        (
            r#"liveness_jobs_total{outcome="dead_letter",verdict="none",check="document",vendor="none"}"#,
            1.0,
        ),
        (
            r#"liveness_dead_letters_total{class="image_not_found",vendor="none"}"#,
            1.0,
        ),
        (r#"liveness_vendor_retries_total{vendor="argos"}"#, 1.0),
        (
            r#"liveness_vendor_request_duration_seconds_count{vendor="argos",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"liveness_vendor_request_duration_seconds_count{vendor="argos",outcome="transient"}"#,
            1.0,
        ),
        (
            r#"liveness_s3_fetch_duration_seconds_count{outcome="ok"}"#,
            2.0,
        ),
        (
            r#"liveness_s3_fetch_duration_seconds_count{outcome="not_found"}"#,
            1.0,
        ),
        (r#"liveness_image_bytes_count"#, 2.0),
        (r#"liveness_jobs_in_flight"#, 0.0),
        (r#"liveness_vendor_paused{vendor="argos"}"#, 0.0),
    ] {
        assert_eq!(series(&text, s), Some(want), "{s} in\n{text}");
    }
    assert!(
        !text.contains("m-live") && !text.contains(&t.prefix),
        "no job ids or keys in labels"
    );

    // Revoked credentials: the vendor pauses (readiness false), the job is
    // parked, nothing is dead-lettered; restored, the job completes.
    let admin = reqwest::Client::new();
    let creds = format!("{}/_admin/credentials/argos", t.emulator.base_url());
    admin
        .post(&creds)
        .json(&serde_json::json!({"valid": false}))
        .send()
        .await
        .unwrap();
    let parked = t
        .upload(
            "parked.png",
            samples::png(
                3,
                2000,
                Some(r#"{"screen_replay":80,"printed_copy":80,"portrait_substitution":80}"#),
            ),
        )
        .await;
    t.publish(&t.job("m-parked", "document", &parked)).await;
    wait_for("the vendor to pause", 20, async || {
        t.vendor_flag("vendor_paused", "argos").await
    })
    .await;
    let text = t.probe("/metrics").await.1;
    assert_eq!(
        series(&text, r#"liveness_vendor_paused{vendor="argos"}"#),
        Some(1.0)
    );
    assert_eq!(series(&text, r#"liveness_vendor_request_duration_seconds_count{vendor="argos",outcome="credentials"}"#).map(|n| n >= 1.0), Some(true));
    admin
        .post(&creds)
        .json(&serde_json::json!({"valid": true}))
        .send()
        .await
        .unwrap();
    let r = t.results(1).await;
    assert_eq!(r["m-parked"].2["verdict"], "live");
    assert_eq!(
        t.depth(&t.names.dead_queue.clone()).await,
        0,
        "nothing dead-lettered for rejected credentials"
    );
    wait_for("the vendor to be resumed", 10, async || {
        !t.vendor_flag("vendor_paused", "argos").await
    })
    .await;

    // Draining: readiness turns false at once while an in-flight job finishes.
    let slow = t
        .upload(
            "slow.png",
            samples::png(4, 2000, Some(r#"{"latency_ms":1500,"screen_replay":99}"#)),
        )
        .await;
    let emu_calls = async || t.calls().await["argos"]["submissions"].as_u64().unwrap();
    let before = emu_calls().await;
    t.publish(&t.job("m-slow", "document", &slow)).await;
    wait_for("the slow job to reach the vendor", 10, async || {
        emu_calls().await > before
    })
    .await;
    t.shutdown.cancel();
    wait_for("readiness to drop on drain", 5, async || {
        t.probe("/readyz").await == (503, "draining".into())
    })
    .await;
    let r = t.results(1).await;
    assert_eq!(
        r["m-slow"].2["verdict"], "live",
        "the in-flight job finished within the drain timeout"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_image_byte_leaks_from_a_real_worker_process() {
    // The real binary, configured by environment like a deployment, with
    // debug logs in JSON.
    let t = TestEnv::new("leak", "").await;
    // The process declares its own topology; make sure ours is gone after.
    let argos_key = "sk-LEAKCHECK-0f3a9c1b7e";
    // A second emulator that knows this key.
    let emu = liveness_worker::emulator::Emulator::start(
        liveness_worker::emulator::EmulatorConfig::local(argos_key),
    )
    .await
    .unwrap();
    let image = samples::png(
        77,
        50_000,
        Some(r#"{"screen_replay":95,"printed_copy":12}"#),
    );
    let flaky = samples::png(78, 50_000, Some(r#"{"error":1003,"error_times":1}"#));
    let uri = t.upload("leak.png", image.clone()).await;
    let flaky_uri = t.upload("flaky.png", flaky.clone()).await;
    let worker = t
        .spawn_worker_process(&[
            (
                "LIVENESS_PROVIDERS__ARGOS__BASE_URL",
                format!("{}/modules", emu.base_url()),
            ),
            ("LIVENESS_PROVIDERS__ARGOS__API_KEY", argos_key.to_owned()),
        ])
        .await;

    t.publish(&t.job("leak-1", "document", &uri)).await;
    t.publish(&t.job("leak-flaky", "document", &flaky_uri))
        .await;
    t.publish(&t.job("leak-bad", "document", "s3://elsewhere/x.png"))
        .await;
    t.publish_raw(b"garbage body", Default::default()).await;
    let results = t
        .take(
            &t.names.results_queue.clone().unwrap(),
            2,
            Duration::from_secs(60),
        )
        .await;
    let dead = t
        .take(&t.names.dead_queue.clone(), 2, Duration::from_secs(60))
        .await;
    let metrics = worker.metrics().await;

    // SIGTERM: drain and exit 0.
    let logs = worker.stop().await;

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<(String, String)> = vec![
        ("argos api key".into(), argos_key.into()),
        (
            "S3 secret key".into(),
            env("LIVENESS_S3__SECRET_ACCESS_KEY"),
        ),
        ("broker credentials".into(), "guest:guest@".into()),
    ];
    for (name, img) in [("image", &image), ("flaky image", &flaky)] {
        // Bytes from the middle of the pixel data, in the encodings they could leak as.
        let chunk = &img[img.len() / 2..img.len() / 2 + 30];
        needles.push((
            format!("{name} bytes (base64)"),
            b64.encode(chunk)[4..36].to_owned(),
        ));
        needles.push((format!("{name} bytes (hex)"), hex::encode(chunk)));
    }
    let outputs: Vec<(String, String)> = [
        ("logs".to_owned(), logs.clone()),
        ("metrics".to_owned(), metrics),
    ]
    .into_iter()
    .chain(
        results
            .iter()
            .chain(&dead)
            .map(|(rk, _, v)| (format!("message {rk}"), v.to_string())),
    )
    .collect();
    for (what, text) in &outputs {
        for (name, needle) in &needles {
            assert!(!text.contains(needle.as_str()), "{name} leaked into {what}");
        }
    }

    // Every log line of a job names it.
    let mut job_lines = 0;
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).expect("JSON log line");
        let msg = v["message"].as_str().unwrap_or("");
        if msg == "Job done" || msg.starts_with("Vendor call failed") {
            job_lines += 1;
            let id = v["span"]["job_id"]
                .as_str()
                .expect("job lines carry job_id");
            // Only the garbage body has no job_id to give.
            assert!(
                id.starts_with("leak")
                    || (id.is_empty() && v["outcome"] == "dead letter invalid_job"),
                "{line}"
            );
        }
    }
    assert!(
        job_lines >= 5,
        "expected job log lines, got {job_lines}:\n{logs}"
    );
    t.finish().await;
}
