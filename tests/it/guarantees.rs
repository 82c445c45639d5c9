//! The guarantees under concurrency (docs/reliability.md): one vendor call
//! for live duplicates of a job, state headers a producer cannot forge,
//! results that are never acked unless routed.

use crate::harness::{TestEnv, int_header, wait_for};
use lapin::BasicProperties;
use lapin::options::QueueBindOptions;
use lapin::types::{AMQPValue, FieldTable};
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_three_times_at_once_is_paid_once() {
    let t = TestEnv::start("dup", "").await;
    // Slow answers, so the copies overlap.
    reqwest::Client::new()
        .put(format!("{}/_admin/faults", t.emulator.base_url()))
        .json(&serde_json::json!({"vendor": "argos", "latency_ms": 1500}))
        .send()
        .await
        .unwrap();
    let img = samples::png(71, 2000, Some(r#"{"face":88}"#));
    let sha = sha256_hex(&img);
    let uri = t.upload("dup.png", img).await;
    let job = t.job("dup-1", "face", &uri);
    for _ in 0..3 {
        t.publish(&job).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = t.results(1).await;
        seen.push(r["dup-1"].2.clone());
    }
    assert_eq!(
        t.vendor_submissions_for("argos", &sha).await,
        1,
        "paid once"
    );
    for r in &seen {
        assert_eq!(r["verdict"], "live");
        assert_eq!(r["attempts"], 1);
    }
    let metrics = t.probe("/metrics").await.1;
    assert!(
        crate::telemetry::series(&metrics, "liveness_claim_waits_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_headers_from_a_producer_are_ignored() {
    let t = TestEnv::start("forged", "").await;
    let img = samples::png(72, 2000, Some(r#"{"face":77}"#));
    let uri = t.upload("forged.png", img).await;
    let body = serde_json::to_vec(&t.job("forged-1", "face", &uri)).unwrap();
    let mut h = FieldTable::default();
    // A job that claims to be back from the callback wait, with its budget
    // spent and an absurd attempt count: it would settle with nothing
    // published, or be dead-lettered at once, if the worker obeyed.
    h.insert(
        "x-liveness-awaiting-callback".into(),
        AMQPValue::Boolean(true),
    );
    h.insert(
        "x-liveness-attempts".into(),
        int_header(i64::from(u32::MAX)),
    );
    h.insert("x-liveness-ladder-step".into(), int_header(99));
    h.insert(
        "x-liveness-state-mac".into(),
        AMQPValue::LongString("00ff".into()),
    );
    t.publish_raw(
        &body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(h),
    )
    .await;
    let r = t.results(1).await;
    let v = &r["forged-1"].2;
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["attempts"], 1, "a fresh job's count");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_nobody_receives_is_not_acked_until_a_queue_is_bound() {
    // No queue bound to the results exchange at all.
    let mut t = TestEnv::new("unroutable", "[broker]\nresults_queue = \"\"").await;
    t.start_worker().await;
    let img = samples::png(73, 2000, Some(r#"{"face":91}"#));
    let sha = sha256_hex(&img);
    let uri = t.upload("u.png", img).await;
    t.publish(&t.job("unroutable-1", "face", &uri)).await;
    wait_for("the result to come back unroutable", 20, async || {
        let m = t.probe("/metrics").await.1;
        m.contains(r#"liveness_publish_unroutable{target="results"} 1"#)
    })
    .await;
    assert_eq!(
        t.probe("/readyz").await.0,
        503,
        "not ready while results have nowhere to go"
    );
    // Bind a queue: the job is finished then, with the one vendor call.
    let q = format!("{}.late-results", t.prefix);
    t.ch.queue_declare(
        q.as_str().into(),
        lapin::options::QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    t.ch.queue_bind(
        q.as_str().into(),
        t.names.results_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    wait_for("the result in the late queue", 30, async || {
        t.depth(&q).await == 1
    })
    .await;
    assert_eq!(t.vendor_submissions_for("argos", &sha).await, 1);
    wait_for("readiness back", 10, async || {
        t.probe("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(t.depth(&t.names.jobs_queue.clone()).await, 0);
    let _ =
        t.ch.queue_delete(
            q.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_replicas_from_their_heartbeats() {
    let t = TestEnv::start("fleet", "[coordination]\nheartbeat_interval = \"200ms\"\n").await;
    let mut seen = None;
    wait_for("the replica's heartbeat in status", 20, async || {
        let s = liveness_worker::ops::status::status(&t.cfg, 0)
            .await
            .unwrap();
        let fleet = s.fleet.expect("a coordination store is configured");
        assert_eq!(fleet.error, None);
        seen = fleet.replicas.into_iter().find(|r| r.consuming);
        seen.is_some()
    })
    .await;
    let replica = seen.unwrap();
    assert_eq!(replica.concurrency, t.cfg.worker.concurrency as u32);
    assert!(!replica.draining);
    assert!(
        replica
            .vendors
            .iter()
            .any(|v| v.vendor == "argos" && !v.paused),
        "{replica:?}"
    );

    // Without a coordination store there is no fleet section, and an
    // unreachable one is reported without failing the rest.
    let mut cfg = t.cfg.clone();
    cfg.coordination.redis_url = liveness_worker::config::Secret::new("redis://127.0.0.1:1/0");
    let s = liveness_worker::ops::status::status(&cfg, 0).await.unwrap();
    assert!(s.fleet.unwrap().error.is_some());
    assert!(!s.queues.is_empty());
    t.finish().await;
}
