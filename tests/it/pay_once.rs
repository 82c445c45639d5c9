//! Pay once (docs/reliability.md#pay-once-the-results-store): outcomes are stored before they are published and
//! looked up before any vendor call; a reused job_id with another image is a
//! conflict; every vendor attempt is audited; a vendor that refuses our
//! credentials is paused instead of being called for every parked job.

use crate::harness::{TestEnv, wait_for};
use crate::telemetry::series;
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use serde_json::json;
use std::time::{Duration, Instant};

const LIVE: &str = r#"{"screen_replay":90,"printed_copy":85,"portrait_substitution":95"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_outcome_is_republished_without_a_second_vendor_call() {
    let t = TestEnv::start("payonce", "").await;
    // A transient vendor error first, so the stored record holds two attempts.
    let img = samples::png(
        11,
        3000,
        Some(&format!(r#"{LIVE},"error":1003,"error_times":1}}"#)),
    );
    let sha = sha256_hex(&img);
    let uri = t.upload("once.png", img).await;
    let mut job = t.job("once-1", "document", &uri);
    job["metadata"] = json!({"run": 1});
    t.publish(&job).await;
    let first = t.results(1).await.remove("once-1").unwrap().2;
    assert_eq!(first["verdict"], "live");
    assert_eq!(first["attempts"], 2);
    assert_eq!(t.submissions_for(&sha).await, 2);

    let stored = t.stored_outcome("once-1").await.expect("outcome stored");
    assert_eq!(stored["schema"], "liveness.outcome.v1");
    assert_eq!(stored["image_sha256"], sha.as_str());
    assert_eq!(
        stored["result"], first,
        "the record holds the published result"
    );
    let attempts = stored["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["outcome"], "transient");
    assert_eq!(attempts[0]["http_status"], 400);
    assert_eq!(attempts[0]["vendor_code"], "1003");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["outcome"], "ok");
    assert_eq!(
        attempts[1]["vendor"]["transaction_id"],
        first["vendor"]["transaction_id"]
    );

    // Delivered again (a replay, a repeated backfill, a redelivery): the
    // stored verdict comes back with this job's metadata, and nobody pays.
    job["metadata"] = json!({"run": 2});
    t.publish(&job).await;
    let again = t.results(1).await.remove("once-1").unwrap().2;
    assert_eq!(again["metadata"], json!({"run": 2}));
    for field in [
        "verdict",
        "score",
        "signals",
        "reasons",
        "vendor",
        "image",
        "attempts",
        "completed_at",
    ] {
        assert_eq!(again[field], first[field], "{field} comes from the store");
    }
    assert_eq!(t.submissions_for(&sha).await, 2, "no second vendor call");
    let text = t.probe("/metrics").await.1;
    assert_eq!(
        series(&text, "liveness_stored_outcomes_reused_total"),
        Some(1.0)
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_job_id_with_another_image_is_a_conflict_not_a_wrong_answer() {
    let t = TestEnv::start("conflict", "").await;
    let a = samples::png(21, 3000, Some(&format!("{LIVE}}}")));
    let b = samples::png(22, 3000, Some(&format!("{LIVE}}}")));
    let (sha_a, sha_b) = (sha256_hex(&a), sha256_hex(&b));
    let uri_a = t.upload("a.png", a).await;
    let uri_b = t.upload("b.png", b).await;
    t.publish(&t.job("same-id", "document", &uri_a)).await;
    assert_eq!(t.results(1).await["same-id"].2["verdict"], "live");

    t.publish(&t.job("same-id", "document", &uri_b)).await;
    let d = t.dead_letters(1).await.remove("same-id").unwrap();
    assert_eq!(d.0, "job_id_conflict");
    let dl = d.2;
    assert_eq!(dl["failure"]["class"], "job_id_conflict");
    assert_eq!(dl["failure"]["retryable"], false);
    assert_eq!(dl["failure"]["provider"], "argos");
    assert_eq!(dl["attempts"], 1, "the stored attempt count");
    assert_eq!(dl["job"]["image"], uri_b.as_str());
    let msg = dl["failure"]["message"].as_str().unwrap();
    assert!(msg.contains(&sha_a) && msg.contains(&sha_b), "{msg}");
    assert!(msg.contains("new job_id"), "{msg}");
    assert_eq!(
        t.submissions_for(&sha_b).await,
        0,
        "the vendor was not called"
    );
    let stored = t.stored_outcome("same-id").await.unwrap();
    assert_eq!(
        stored["image_sha256"],
        sha_a.as_str(),
        "the first outcome stays"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendor_attempt_is_audited_across_deliveries() {
    let t = TestEnv::start("audit", "").await;
    let img = samples::png(31, 3000, Some(r#"{"error":1003}"#));
    let uri = t.upload("always-1003.png", img).await;
    t.publish(&t.job("audit-1", "document", &uri)).await;
    let d = t.dead_letters(1).await.remove("audit-1").unwrap().2;
    assert_eq!(d["failure"]["class"], "retries_exhausted");
    // Two ladder steps plus the first delivery, two attempts each.
    assert_eq!(d["attempts"], 6);
    assert!(
        t.stored_outcome("audit-1").await.is_none(),
        "no verdict, no outcome"
    );

    let logs = t.attempt_logs("audit-1").await;
    let dispositions: Vec<_> = logs.iter().map(|l| l["disposition"].clone()).collect();
    assert_eq!(
        dispositions,
        vec![
            json!("retry step 0"),
            json!("retry step 1"),
            json!("dead letter retries_exhausted")
        ]
    );
    let numbers: Vec<_> = logs
        .iter()
        .flat_map(|l| l["attempts"].as_array().unwrap().clone())
        .map(|a| {
            assert_eq!(a["outcome"], "transient");
            assert_eq!(a["vendor_code"], "1003");
            assert_eq!(a["provider"], "argos");
            assert!(a["worker"].as_str().is_some_and(|w| !w.is_empty()));
            a["attempt"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_vendor_is_probed_not_called_for_every_parked_job() {
    let interval = Duration::from_secs(4);
    let t = TestEnv::start(
        "pause",
        &format!(
            "[retry]\npause_probe_interval = \"{}s\"",
            interval.as_secs()
        ),
    )
    .await;
    let admin = reqwest::Client::new();
    let creds = format!("{}/_admin/credentials/argos", t.emulator.base_url());
    let set_valid = async |valid: bool| {
        let r = admin
            .post(&creds)
            .json(&json!({ "valid": valid }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    };
    let submissions = async || {
        t.calls().await["argos"]["submissions"]
            .as_u64()
            .unwrap_or(0)
    };
    let parked = async || {
        let text = t.probe("/metrics").await.1;
        series(
            &text,
            r#"liveness_jobs_total{outcome="retry_later",verdict="none",check="document",vendor="argos"}"#,
        )
        .unwrap_or(0.0)
    };

    set_valid(false).await;
    let first = t
        .upload(
            "first.png",
            samples::png(41, 3000, Some(&format!("{LIVE}}}"))),
        )
        .await;
    t.publish(&t.job("pause-0", "document", &first)).await;
    wait_for("the vendor to pause", 20, async || {
        t.vendor_flag("vendor_paused", "argos").await
    })
    .await;
    let paused_at = Instant::now();
    let before = submissions().await;
    assert_eq!(before, 1);

    let n = 10;
    for i in 1..=n {
        let uri = t
            .upload(
                &format!("p{i}.png"),
                samples::png(41 + i, 3000, Some(&format!("{LIVE}}}"))),
            )
            .await;
        t.publish(&t.job(&format!("pause-{i}"), "document", &uri))
            .await;
    }
    // Every job parked at least once more: with the vendor paused they cost
    // nothing but the probes, at most one per interval.
    let target = parked().await + n as f64 + 1.0;
    wait_for("the jobs to be parked", 30, async || {
        parked().await >= target
    })
    .await;
    let probes_allowed = 1 + (paused_at.elapsed().as_millis() / interval.as_millis()) as u64;
    let during = submissions().await - before;
    assert!(
        during <= probes_allowed,
        "{during} vendor calls while paused, at most {probes_allowed} probes expected"
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);

    // Restored: the next probe resumes the vendor and every job completes.
    set_valid(true).await;
    let results = t.results(n as usize + 1).await;
    assert!(results.values().all(|(_, _, r)| r["verdict"] == "live"));
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    wait_for("the vendor to be resumed", 10, async || {
        !t.vendor_flag("vendor_paused", "argos").await
    })
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_results_bucket_stops_the_worker_at_start() {
    let t = TestEnv::new("nobucket", "[results]\nbucket = \"no-such-results-bucket\"").await;
    let e = liveness_worker::worker::build_pipeline(&t.cfg, t.telemetry.metrics.clone())
        .await
        .err()
        .expect("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("results.bucket") && msg.contains("no-such-results-bucket"),
        "{msg}"
    );
    t.finish().await;
}

/// The S3 requests a job makes (docs/benchmark.md#s3-requests-per-job),
/// counted by reason: a new job three (its image, the lookup, the outcome
/// with its attempts), a job whose outcome is stored two (its image, the
/// lookup), and no audit record of its own for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_s3_request_of_a_job_is_counted_by_reason() {
    let t = TestEnv::start("s3count", "").await;
    let uri = t
        .upload(
            "count.png",
            samples::png(12, 3000, Some(&format!("{LIVE}}}"))),
        )
        .await;
    let requests = |text: &str, op: &str| {
        series(text, &format!("liveness_s3_requests_total{{op=\"{op}\"}}")).unwrap_or(0.0)
    };
    let job = t.job("count-1", "document", &uri);
    t.publish(&job).await;
    assert_eq!(t.results(1).await["count-1"].2["verdict"], "live");
    let text = t.probe("/metrics").await.1;
    for (op, n) in [
        ("image_get", 1.0),
        ("outcome_get", 1.0),
        ("outcome_put", 1.0),
        ("attempts_put", 0.0),
        ("pending_get", 0.0),
        ("pending_put", 0.0),
    ] {
        assert_eq!(requests(&text, op), n, "{op} after one new job");
    }
    let written = series(&text, "liveness_s3_written_bytes_total{op=\"outcome_put\"}")
        .expect("outcome bytes counted");
    let stored = t.stored_outcome("count-1").await.expect("outcome stored");
    assert!(
        written >= 500.0 && written < 2.0 * serde_json::to_vec(&stored).unwrap().len() as f64,
        "{written} bytes written for one outcome"
    );

    // The same job again: its image and the lookup, nothing written.
    t.publish(&job).await;
    assert_eq!(t.results(1).await["count-1"].2["verdict"], "live");
    let text = t.probe("/metrics").await.1;
    for (op, n) in [
        ("image_get", 2.0),
        ("outcome_get", 2.0),
        ("outcome_put", 1.0),
        ("attempts_put", 0.0),
    ] {
        assert_eq!(requests(&text, op), n, "{op} after the job came again");
    }
    t.finish().await;
}
