//! The operator commands for one job or a selection, through the real
//! binary on the real RabbitMQ, Garage and Redis: `show`, `resend`,
//! `reverify` (against a running worker and the emulator) and `purge`
//! (including SIGINT in the middle of it).

use crate::harness::{TestEnv, wait_for};
use crate::ops::{bin, class_of, dead_letter, drain, env, header, interrupt, odd_job, text};
use lapin::types::AMQPValue;
use liveness_worker::broker::headers::{H_RESENT, H_REVERIFY_REASON};
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Output, Stdio};
use std::time::Duration;

const LIVE: &str = r#"{"screen_replay":90,"printed_copy":85,"portrait_substitution":95}"#;

/// The real binary, configured like `t`'s worker, results store and
/// coordination store included.
pub(crate) fn cbin(t: &TestEnv) -> tokio::process::Command {
    let mut c = bin(t);
    c.env("LIVENESS_RESULTS__BUCKET", &t.cfg.results.bucket)
        .env("LIVENESS_RESULTS__PREFIX", &t.cfg.results.prefix)
        .env(
            "LIVENESS_COORDINATION__REDIS_URL",
            crate::harness::env("LIVENESS_TEST_REDIS_URL"),
        )
        .stdin(Stdio::null());
    c
}

async fn run(t: &TestEnv, args: &[&str]) -> Output {
    let child = cbin(t).args(args).spawn().expect("binary starts");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("command finishes")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_resend_and_reverify_a_verified_job() {
    let t = TestEnv::start("console", "").await;
    let img = samples::png(21, 3000, Some(LIVE));
    let sha = sha256_hex(&img);
    let uri = t.upload("c.png", img).await;
    let mut job = t.job("c-1", "document", &uri);
    job["metadata"] = serde_json::json!({"n": 1.50});
    t.publish(&job).await;
    let (key, _, first) = t.results(1).await.remove("c-1").unwrap();
    assert_eq!(first["verdict"], "live");
    assert_eq!(t.submissions_for(&sha).await, 1);

    // show: text, JSON, unknown and invalid job_ids.
    let out = run(&t, &["show", "c-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("verdict    live (document check, argos)"),
        "{shown}"
    );
    assert!(shown.contains("pending: none"), "{shown}");
    let out = run(&t, &["show", "--json", "c-1"]).await;
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"]["record"]["result"], first);
    assert_eq!(v["attempt_logs"], serde_json::json!([]));
    assert!(v["pending"].is_null());
    let out = run(&t, &["show", "--json", "c-nobody"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = run(&t, &["show", "a/b"]).await;
    assert_eq!(out.status.code(), Some(2));

    // resend by id: the stored result, as published, marked as resent; a
    // job_id without an outcome makes it exit 1.
    let out = run(&t, &["resend", "--job-id", "c-1,c-nobody"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let again = t.results(1).await.remove("c-1").unwrap();
    assert_eq!(again.0, key, "same routing key");
    assert_eq!(again.2, first, "same result");
    assert_eq!(
        again.1.message_id().as_ref().unwrap().as_str(),
        "c-1",
        "message_id is the job_id"
    );
    assert_eq!(header(&again.1, H_RESENT), Some(&AMQPValue::Boolean(true)));
    // resend by completion time: the dry run lists it, an empty range nothing.
    let out = run(
        &t,
        &[
            "resend",
            "--completed-after",
            "2000-01-01T00:00:00Z",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["job_id"], "c-1");
    assert_eq!(listed["routing_key"], key.as_str());
    let out = run(
        &t,
        &["resend", "--completed-before", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("0 selected"),
        "{}",
        text(&out.stderr)
    );
    // Neither ids nor a range: cannot run.
    assert_eq!(run(&t, &["resend"]).await.status.code(), Some(2));

    // reverify: the reason is required; then a second, deliberate call.
    assert_eq!(run(&t, &["reverify", "c-1"]).await.status.code(), Some(2));
    let out = run(
        &t,
        &[
            "reverify",
            "c-1",
            "c-nobody",
            "--reason",
            "vendor incident 42",
            "--operator",
            "alice",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let second = t.results(1).await.remove("c-1").unwrap().2;
    assert_eq!(second["verdict"], "live");
    assert_ne!(second["completed_at"], first["completed_at"]);
    assert_eq!(second["metadata"], first["metadata"]);
    assert_eq!(
        t.submissions_for(&sha).await,
        2,
        "the vendor was paid again"
    );
    wait_for("the new outcome", 20, async || {
        t.stored_outcome("c-1")
            .await
            .is_some_and(|o| o["result"]["completed_at"] == second["completed_at"])
    })
    .await;
    let out = run(&t, &["show", "--json", "c-1"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sup = &v["superseded"].as_array().unwrap()[0]["record"];
    assert_eq!(sup["schema"], "liveness.superseded.v1");
    assert_eq!(sup["reason"], "vendor incident 42");
    assert_eq!(sup["operator"], "alice");
    assert_eq!(sup["outcome"]["result"], first, "the old outcome is kept");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverify_enqueues_with_its_reason_and_leaves_a_job_without_outcome() {
    // No worker: the enqueued job stays in the jobs queue to be looked at.
    let t = env("reverify").await;
    let outcome = serde_json::json!({
        "schema": "liveness.outcome.v1", "job_id": "rv-1", "image_sha256": "ab",
        "stored_at": "2026-11-23T10:00:00.000Z", "attempts": [],
        "result": {"schema": "liveness.result.v1", "job_id": "rv-1", "check": "face",
            "provider": "argos", "metadata": {"k": "v"}, "verdict": "live", "score": 0.9,
            "signals": [], "reasons": [], "warnings": [], "vendor": {},
            "image": {"uri": format!("s3://{}/x/rv-1.png", crate::harness::images_bucket()),
                "bytes": 1, "sha256": "ab", "content_type": "image/png"},
            "attempts": 1, "timings_ms": {"fetch": 1, "vendor": 1, "total": 2},
            "completed_at": "2026-11-23T10:00:00.000Z"}
    });
    let key = format!("{}outcomes/rv-1.json", t.cfg.results.prefix);
    t.store
        .put(
            &t.cfg.results.bucket,
            &key,
            serde_json::to_vec(&outcome).unwrap().into(),
            "application/json",
        )
        .await
        .unwrap();
    let out = run(&t, &["reverify", "rv-1", "--reason", "r", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        t.stored_outcome("rv-1").await.is_some(),
        "dry run changes nothing"
    );
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);

    let out = run(&t, &["reverify", "rv-1", "--reason", "customer dispute"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        t.stored_outcome("rv-1").await.is_none(),
        "outcome set aside"
    );
    let jobs = drain(&t.ch, &t.names.jobs_queue).await;
    assert_eq!(jobs.len(), 1);
    let (p, body) = &jobs[0];
    let job: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(job["job_id"], "rv-1");
    assert_eq!(job["check"], "face");
    assert_eq!(job["provider"], "argos");
    assert_eq!(job["metadata"], serde_json::json!({"k": "v"}));
    assert_eq!(
        header(p, H_REVERIFY_REASON),
        Some(&AMQPValue::LongString("customer dispute".into()))
    );
    // Again: no outcome any more, nothing done, exit 1.
    let out = run(&t, &["reverify", "rv-1", "--reason", "again"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);
    t.finish().await;
}

/// The dead letters archived under the test's archive prefix: (job_id, line).
pub(crate) async fn archived(t: &TestEnv) -> Vec<(String, Value)> {
    let prefix = format!("{}dead-letter-archive/", t.cfg.results.prefix);
    let (page, _) = t
        .store
        .list_page(&t.cfg.results.bucket, &prefix, None)
        .await
        .unwrap();
    let mut out = Vec::new();
    for o in page {
        let body = t
            .store
            .client()
            .get_object()
            .bucket(&t.cfg.results.bucket)
            .key(&o.key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            out.push((v["dead_letter"]["job_id"].as_str().unwrap().to_owned(), v));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_archives_then_removes_exactly_the_matching() {
    let t = env("purge").await;
    let n = 12;
    for i in 0..n {
        let id = format!("pg-{i}");
        dead_letter(&t, &id, class_of(i), Some("argos"), Some(&odd_job(&id))).await;
    }
    dead_letter(&t, "pg-raw", "retries_exhausted", None, None).await;
    // --class is required.
    assert_eq!(run(&t, &["purge"]).await.status.code(), Some(2));
    let out = run(&t, &["purge", "--class", "retries_exhausted", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 5, "4 with a job, 1 raw");
    wait_for("dead letters back after the dry run", 10, async || {
        t.depth(&t.names.dead_queue).await == 13
    })
    .await;
    assert!(archived(&t).await.is_empty());

    let out = run(
        &t,
        &["purge", "--class", "retries_exhausted", "--batch", "2"],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("5 archived and removed in 3 archive objects"),
        "{err}"
    );
    let arch = archived(&t).await;
    let ids: HashSet<String> = arch.iter().map(|(id, _)| id.clone()).collect();
    let expected: HashSet<String> = (0..n)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("pg-{i}"))
        .chain(["pg-raw".to_owned()])
        .collect();
    assert_eq!(ids, expected);
    let (_, line) = arch.iter().find(|(id, _)| id == "pg-0").unwrap();
    assert_eq!(line["routing_key"], "retries_exhausted");
    assert_eq!(line["dead_letter"]["failure"]["class"], "retries_exhausted");
    assert!(
        line["properties"].to_string().contains("corr-pg-0"),
        "properties kept: {line}"
    );
    wait_for("the others back", 10, async || {
        t.depth(&t.names.dead_queue).await == 8
    })
    .await;
    let left: Vec<String> = drain(&t.ch, &t.names.dead_queue)
        .await
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    let expected_left: Vec<String> = (0..n)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("pg-{i}"))
        .collect();
    assert_eq!(left, expected_left, "the rest stays, in order");
    crate::ops::delete_prefix(
        &t,
        &t.cfg.results.bucket.clone(),
        &t.cfg.results.prefix.clone(),
    )
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_stopped_by_sigint_removes_only_what_is_archived() {
    let t = env("purge-int").await;
    let n = 30;
    for i in 0..n {
        let id = format!("pi-{i}");
        dead_letter(&t, &id, "internal", None, Some(&odd_job(&id))).await;
    }
    let child = cbin(&t)
        .args(["purge", "--class", "all", "--rate", "10", "--batch", "3"])
        .spawn()
        .unwrap();
    wait_for("the purge to archive a batch", 60, async || {
        !archived(&t).await.is_empty()
    })
    .await;
    let (code, err) = interrupt(child, "purge").await;
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");

    // Every dead letter is archived or in the queue, never both, never neither.
    let arch: Vec<String> = archived(&t).await.into_iter().map(|(id, _)| id).collect();
    let left: Vec<String> = drain(&t.ch, &t.names.dead_queue)
        .await
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert!(!arch.is_empty() && !left.is_empty(), "{err}");
    let a: HashSet<&String> = arch.iter().collect();
    let l: HashSet<&String> = left.iter().collect();
    assert_eq!(a.len(), arch.len(), "archived once each");
    assert!(a.is_disjoint(&l), "an archived dead letter stayed: {err}");
    let all: HashSet<String> = (0..n).map(|i| format!("pi-{i}")).collect();
    let found: HashSet<String> = arch.iter().chain(left.iter()).cloned().collect();
    assert_eq!(found, all, "nothing lost");
    crate::ops::delete_prefix(
        &t,
        &t.cfg.results.bucket.clone(),
        &t.cfg.results.prefix.clone(),
    )
    .await;
    t.finish().await;
}
