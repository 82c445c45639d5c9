//! Argos ID Liveness callback mode: the worker submits with a signed
//! callback URL, records the job as pending, acks; a receiver (on any
//! replica) verifies the token and publishes the result; a job whose
//! callback never comes is submitted again, then dead-lettered.

use crate::harness::{TestEnv, wait_for};
use crate::telemetry::series;
use liveness_worker::domain::ProviderName;
use liveness_worker::pipeline::token as callbacks;
use liveness_worker::samples;
use liveness_worker::telemetry::Telemetry;
use liveness_worker::worker;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-callback-secret-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Callback mode, the receiver on `listen`, callbacks sent to `public`.
fn callback_toml(listen: u16, public: u16, wait: &str, submissions: u32) -> String {
    format!(
        r#"
[providers.argos]
mode = "callback"
callback_public_url = "http://127.0.0.1:{public}"
callback_listen = "127.0.0.1:{listen}"
callback_secret = "{SECRET}"
callback_wait = "{wait}"
callback_submissions = {submissions}
"#
    )
}

async fn start_callback_env(tag: &str, wait: &str, submissions: u32) -> (TestEnv, u16) {
    let port = free_port();
    let t = TestEnv::start(tag, &callback_toml(port, port, wait, submissions)).await;
    (t, port)
}

async fn set_callbacks(t: &TestEnv, settings: Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/_admin/argos/callbacks", t.emulator.base_url()))
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn callback_counts(t: &TestEnv) -> Value {
    reqwest::get(format!("{}/_admin/argos/callbacks", t.emulator.base_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["counts"]
        .clone()
}

const IMAGES: [(&str, &str); 5] = [
    (
        "live",
        r#"{"screen_replay":99,"printed_copy":82,"portrait_substitution":100}"#,
    ),
    (
        "review",
        r#"{"screen_replay":45,"printed_copy":70,"portrait_substitution":90}"#,
    ),
    (
        "spoof",
        r#"{"screen_replay":97,"printed_copy":22,"portrait_substitution":55.5}"#,
    ),
    ("inconclusive", r#"{"error":1009}"#),
    (
        "partial",
        r#"{"screen_replay":88,"not_performed":["portrait_substitution"]}"#,
    ),
];

async fn run_batch(t: &TestEnv) -> HashMap<String, Value> {
    for (i, (name, scenario)) in IMAGES.iter().enumerate() {
        let uri = t
            .upload(
                &format!("{name}.png"),
                samples::png(300 + i as u64, 3000, Some(scenario)),
            )
            .await;
        t.publish(&t.job(name, "document", &uri)).await;
    }
    t.results(IMAGES.len())
        .await
        .into_iter()
        .map(|(k, (_, _, v))| (k, v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_mode_gives_the_results_of_sync_mode() {
    let sync = TestEnv::start("cb-sync", "").await;
    let sync_results = run_batch(&sync).await;
    sync.finish().await;

    let (t, _) = start_callback_env("cb-async", "30s", 2).await;
    let results = run_batch(&t).await;
    for (name, _) in IMAGES {
        let (a, s) = (&results[name], &sync_results[name]);
        for field in [
            "verdict", "score", "signals", "reasons", "warnings", "check", "provider",
        ] {
            assert_eq!(a[field], s[field], "{name}: {field}");
        }
        for field in ["sha256", "bytes", "content_type"] {
            assert_eq!(
                a["image"][field], s["image"][field],
                "{name}: image.{field}"
            );
        }
        assert_eq!(a["attempts"], 1, "{name}");
        assert!(a["vendor"]["transaction_id"].is_string(), "{name}");
        assert!(
            t.stored_outcome(name).await.is_some(),
            "{name}: outcome stored"
        );
        assert!(
            t.pending_record(name).await.is_none(),
            "{name}: pending cleared"
        );
    }
    assert_eq!(t.calls().await["argos"]["submissions"], IMAGES.len() as u64);
    let counts = callback_counts(&t).await;
    // 1009 ("could not analyse") comes by callback too.
    assert_eq!(counts["delivered"], IMAGES.len() as u64, "{counts}");
    let text = t.probe("/metrics").await.1;
    assert_eq!(
        series(&text, r#"liveness_callbacks_total{outcome="accepted"}"#),
        Some(IMAGES.len() as f64)
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_error_by_callback_is_submitted_again() {
    let (t, _) = start_callback_env("cb-1003", "30s", 3).await;
    let img = samples::png(
        320,
        3000,
        Some(
            r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90,"error":1003,"error_times":1}"#,
        ),
    );
    let uri = t.upload("flaky.png", img).await;
    t.publish(&t.job("flaky", "document", &uri)).await;
    let r = t.results(1).await.remove("flaky").unwrap().2;
    assert_eq!(r["verdict"], "live");
    assert_eq!(r["attempts"], 2, "the failed submission counts");
    assert_eq!(t.calls().await["argos"]["submissions"], 2);
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_expired_callbacks_are_refused_and_publish_nothing() {
    let (t, port) = start_callback_env("cb-forged", "30s", 2).await;
    // The vendor never calls back: only our hand-made callbacks arrive.
    set_callbacks(&t, json!({"drop_all": true})).await;
    let uri = t
        .upload(
            "waiting.png",
            samples::png(
                330,
                3000,
                Some(r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90}"#),
            ),
        )
        .await;
    t.publish(&t.job("waiting", "document", &uri)).await;
    wait_for("the pending record", 20, async || {
        t.pending_record("waiting").await.is_some()
    })
    .await;
    let pending = t.pending_record("waiting").await.unwrap();
    let txn = pending["vendor"]["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({
        "statusCode": 200, "apiType": "id_live_doc", "transactionId": txn,
        "engineVersion": "id_liveness@3.4.2",
        "result": {"screenReplay": {"liveness_score": 91}, "paperPrinted": {"liveness_score": 92},
                   "replacePortraits": {"liveness_score": 93}}
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = format!("http://127.0.0.1:{port}/callbacks/argos/waiting/1");
    let key = SECRET.as_bytes();
    let post = async |url: String| {
        reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let forged = callbacks::sign(
        b"not the secret, but just as long!!!",
        ProviderName::Argos,
        "waiting",
        1,
        now + 600,
    );
    let other_job = callbacks::sign(key, ProviderName::Argos, "other", 1, now + 600);
    let expired = callbacks::sign(key, ProviderName::Argos, "waiting", 1, now - 1);
    for url in [
        format!("{base}?expires={}&token={forged}", now + 600),
        format!("{base}?expires={}&token={other_job}", now + 600),
        format!("{base}?expires={}&token={expired}", now - 1),
        format!("{base}?expires={}&token={expired}", now + 600),
        base.clone(),
    ] {
        assert_eq!(post(url).await, 401);
    }
    let text = t.probe("/metrics").await.1;
    assert_eq!(
        series(&text, r#"liveness_callbacks_total{outcome="refused"}"#),
        Some(5.0)
    );
    assert!(
        t.stored_outcome("waiting").await.is_none(),
        "nothing stored"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.depth(&t.names.results_queue.clone().unwrap()).await,
        0,
        "nothing published"
    );

    // A genuine token for a job nothing waits for (never submitted, or
    // given up): the vendor is asked to post again, nothing is dropped.
    let unknown = callbacks::sign(key, ProviderName::Argos, "unknown-job", 1, now + 600);
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/callbacks/argos/unknown-job/1?expires={}&token={unknown}",
            now + 600
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "30");

    // The genuine token is accepted and settles the job.
    let good = callbacks::sign(key, ProviderName::Argos, "waiting", 1, now + 600);
    assert_eq!(
        post(format!("{base}?expires={}&token={good}", now + 600)).await,
        200
    );
    let r = t.results(1).await.remove("waiting").unwrap().2;
    assert_eq!(r["verdict"], "live");
    assert_eq!(r["score"], 0.91);
    assert_eq!(r["vendor"]["transaction_id"], txn.as_str());
    assert!(t.pending_record("waiting").await.is_none());
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_callback_yields_one_result() {
    let (t, _) = start_callback_env("cb-dup", "30s", 2).await;
    set_callbacks(&t, json!({"duplicate": true})).await;
    let uri = t
        .upload(
            "dup.png",
            samples::png(
                340,
                3000,
                Some(r#"{"screen_replay":20,"printed_copy":90,"portrait_substitution":90}"#),
            ),
        )
        .await;
    t.publish(&t.job("dup", "document", &uri)).await;
    assert_eq!(t.results(1).await["dup"].2["verdict"], "spoof");
    wait_for("both callbacks delivered", 20, async || {
        callback_counts(&t).await["delivered"] == 2
    })
    .await;
    let text = t.probe("/metrics").await.1;
    assert_eq!(
        series(&text, r#"liveness_callbacks_total{outcome="duplicate"}"#),
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.depth(&t.names.results_queue.clone().unwrap()).await,
        0,
        "one result only"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_callback_is_submitted_again_then_given_up() {
    let (t, _) = start_callback_env("cb-drop", "1500ms", 2).await;
    let scores = r#""screen_replay":90,"printed_copy":90,"portrait_substitution":90"#;
    // First callback lost: after the wait, a second submission gets through.
    set_callbacks(&t, json!({"drop_next": 1})).await;
    let once = t
        .upload(
            "once.png",
            samples::png(350, 3000, Some(&format!("{{{scores}}}"))),
        )
        .await;
    t.publish(&t.job("dropped-once", "document", &once)).await;
    let r = t.results(1).await.remove("dropped-once").unwrap().2;
    assert_eq!(r["verdict"], "live");
    assert_eq!(r["attempts"], 2);

    // Its second submission waits out the callback wait too (then finds it
    // settled): let it go, so the queue holds only the next job.
    wait_for(
        "the settled job to leave the callback wait",
        10,
        async || t.depth(&t.names.callback_wait_queue.clone()).await == 0,
    )
    .await;

    // The vendor never answers: two submissions, then retries_exhausted.
    set_callbacks(&t, json!({"drop_all": true})).await;
    let never = t
        .upload(
            "never.png",
            samples::png(351, 3000, Some(&format!("{{{scores}}}"))),
        )
        .await;
    t.publish(&t.job("never", "document", &never)).await;
    // `status` shows the jobs waiting for their callback.
    wait_for("the job waiting for its callback", 10, async || {
        t.depth(&t.names.callback_wait_queue.clone()).await == 1
    })
    .await;
    let s = liveness_worker::ops::status::status(&t.cfg, 100)
        .await
        .unwrap();
    let waiting = s
        .queues
        .iter()
        .find(|q| q.role == "waiting")
        .unwrap_or_else(|| {
            panic!(
                "no waiting row: {:?}",
                s.queues.iter().map(|q| q.role).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        (
            waiting.name.as_str(),
            waiting.ready,
            waiting.delay.as_deref()
        ),
        (t.names.callback_wait_queue.as_str(), 1, Some("1s500ms"))
    );
    let d = t.dead_letters(1).await.remove("never").unwrap().2;
    assert_eq!(d["failure"]["class"], "retries_exhausted");
    assert_eq!(d["failure"]["provider"], "argos");
    assert_eq!(d["attempts"], 2);
    let msg = d["failure"]["message"].as_str().unwrap();
    assert!(
        msg.contains("never called back") && msg.contains("2 submissions"),
        "{msg}"
    );
    wait_for("the pending record to be cleared", 10, async || {
        t.pending_record("never").await.is_none()
    })
    .await;
    assert_eq!(t.calls().await["argos"]["submissions"], 4);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_completes_a_job_whose_submitter_died() {
    // Replica B's receiver is the public URL (a load balancer would pick
    // any replica); replica A submits, then is gone before the callback.
    let (port_a, port_b) = (free_port(), free_port());
    let mut t = TestEnv::new("cb-handover", &callback_toml(port_b, port_b, "30s", 2)).await;
    set_callbacks(&t, json!({"delay_ms": 3000})).await;
    let mut cfg_a = t.cfg.clone();
    cfg_a.providers.argos.callback_listen = ([127, 0, 0, 1], port_a).into();
    let stop_a = CancellationToken::new();
    let pipeline_a = worker::build_pipeline(&cfg_a, Telemetry::default().metrics.clone())
        .await
        .unwrap();
    let a = tokio::spawn(worker::run(
        cfg_a,
        pipeline_a,
        Telemetry::default(),
        stop_a.clone(),
    ));
    let jobs = t.names.jobs_queue.clone();
    wait_for("replica A to consume", 20, async || {
        t.consumers(&jobs).await.unwrap_or(0) > 0
    })
    .await;

    let uri = t
        .upload(
            "handover.png",
            samples::png(
                360,
                3000,
                Some(r#"{"screen_replay":75,"printed_copy":90,"portrait_substitution":90}"#),
            ),
        )
        .await;
    t.publish(&t.job("handover", "document", &uri)).await;
    wait_for("replica A to submit", 20, async || {
        t.pending_record("handover").await.is_some()
    })
    .await;
    stop_a.cancel();
    a.await.unwrap().unwrap();

    t.start_worker().await;
    let r = t.results(1).await.remove("handover").unwrap().2;
    assert_eq!(r["verdict"], "live");
    assert_eq!(r["attempts"], 1);
    assert_eq!(t.calls().await["argos"]["submissions"], 1, "paid once");
    t.finish().await;
}
