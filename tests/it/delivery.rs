//! Delivery guarantees: nothing is acked before its confirm; a conflicting
//! topology stops the worker with a message that names it.

use crate::harness::{TestEnv, wait_for};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_not_acked_until_its_result_is_confirmed() {
    // No demo results queue: the only queue bound to the results exchange
    // is one that refuses every message, so RabbitMQ nacks each result
    // publish (publisher confirms report it).
    let mut t = TestEnv::new("confirm", "[broker]\nresults_queue = \"\"").await;
    t.start_worker().await;
    let results_exchange = t.names.results_exchange.clone();
    let bind = |q: String| {
        let ch = t.ch.clone();
        let ex = results_exchange.clone();
        async move {
            ch.queue_bind(
                q.as_str().into(),
                ex.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap()
        }
    };
    let blocker = format!("{}.blocker", t.prefix);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    t.ch.queue_declare(
        blocker.as_str().into(),
        QueueDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    bind(blocker.clone()).await;

    let img = samples::png(
        5,
        2000,
        Some(r#"{"screen_replay":91,"printed_copy":92,"portrait_substitution":93}"#),
    );
    let sha = sha256_hex(&img);
    let uri = t.upload("c.png", img).await;
    t.publish(&t.job("confirm-1", "document", &uri)).await;

    // The vendor answers, the outcome is stored, the result is refused and
    // the job goes back to the queue: it was never acked. Its redelivery is
    // answered from the results store, so the vendor is paid once.
    wait_for(
        "the job's redelivery after its result was refused",
        30,
        async || {
            let text = t.probe("/metrics").await.1;
            crate::telemetry::series(&text, "liveness_stored_outcomes_reused_total")
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;

    // Let results through again: the job completes.
    let collector = format!("{}.collector", t.prefix);
    t.ch.queue_declare(
        collector.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(collector.clone()).await;
    t.ch.queue_delete(blocker.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let got = t.take(&collector, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].2["job_id"], "confirm-1");
    assert_eq!(got[0].2["verdict"], "live");
    assert_eq!(got[0].2["attempts"], 1);
    assert_eq!(
        t.submissions_for(&sha).await,
        1,
        "paid once despite the redeliveries"
    );
    wait_for("the jobs queue to empty", 10, async || {
        t.depth(&t.names.jobs_queue.clone()).await == 0
    })
    .await;
    t.ch.queue_delete(collector.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_queue_stops_the_worker_naming_it() {
    let t = TestEnv::new("conflict", "").await;
    // The jobs queue already exists with another delivery limit.
    let mut args = liveness_worker::broker::jobs_queue_args(&t.cfg.broker);
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(7));
    let q = t.names.jobs_queue.clone();
    t.ch.queue_declare(q.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();

    let pipeline = liveness_worker::worker::build_pipeline(&t.cfg, t.telemetry.metrics.clone())
        .await
        .unwrap();
    let run = liveness_worker::worker::run(
        t.cfg.clone(),
        pipeline,
        t.telemetry.clone(),
        Default::default(),
    );
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("fails fast")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&q), "{err}");
    assert!(err.contains("x-delivery-limit"), "{err}");
    assert!(
        err.contains("'7'") && err.contains("'20'"),
        "both values named: {err}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_failing_everything_opens_its_breaker_and_jobs_wait() {
    let t = TestEnv::start(
        "breaker",
        "[retry]\nbreaker_failures = 3\nbreaker_cooldown = \"400ms\"",
    )
    .await;
    let faults = format!("{}/_admin/faults", t.emulator.base_url());
    let admin = reqwest::Client::new();
    admin
        .put(&faults)
        .json(&serde_json::json!({"vendor": "argos", "error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    let mut uris = Vec::new();
    for i in 0..3 {
        let img = samples::png(
            100 + i,
            2000,
            Some(r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90}"#),
        );
        uris.push(t.upload(&format!("b{i}.png"), img).await);
    }
    for (i, uri) in uris.iter().enumerate() {
        t.publish(&t.job(&format!("breaker-{i}"), "document", uri))
            .await;
    }
    // Every call fails with a 500: the breaker opens; the replica stays
    // ready (other vendors' jobs go on).
    wait_for("the breaker to open", 20, async || {
        t.vendor_flag("vendor_breaker_open", "argos").await
    })
    .await;
    let metrics = t.probe("/metrics").await.1;
    assert!(
        metrics.contains("liveness_vendor_breaker_open{vendor=\"argos\"} 1"),
        "{metrics}"
    );
    // Several ladder rounds pass while it stays down: the jobs wait, none is
    // dead-lettered, though the ladder has only two steps.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        t.depth(&t.names.dead_queue.clone()).await,
        0,
        "nothing dead-lettered while the vendor is down"
    );
    // The vendor recovers: a half-open probe succeeds and every job completes.
    admin
        .put(&faults)
        .json(&serde_json::json!({"vendor": "argos", "error_rate": 0.0}))
        .send()
        .await
        .unwrap();
    let r = t.results(3).await;
    for i in 0..3 {
        assert_eq!(r[&format!("breaker-{i}")].2["verdict"], "live");
    }
    wait_for("the vendor to be resumed", 10, async || {
        !t.vendor_flag("vendor_breaker_open", "argos").await
    })
    .await;
    assert!(
        t.probe("/metrics")
            .await
            .1
            .contains("liveness_vendor_breaker_open{vendor=\"argos\"} 0")
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}
