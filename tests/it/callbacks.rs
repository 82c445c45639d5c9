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

/// Reads until the peer closes the connection or answers; returns what it
/// said (empty when it closed without a word), or None if it is still open
/// after `within`.
async fn answer_or_close(s: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// The real binary in callback mode with tight receiver limits: a client
/// that sends its head byte by byte, one that never finishes its body and
/// idle connections are each cut off within the configured bound, and
/// other clients are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_callback_clients_are_cut_off_and_others_still_served() {
    use tokio::io::AsyncWriteExt as _;
    let t = TestEnv::new("cb-slow", "").await;
    let port = free_port();
    let worker = t
        .spawn_worker_process(&[
            (
                "LIVENESS_PROVIDERS__ARGOS__BASE_URL",
                format!("{}/modules", t.emulator.base_url()),
            ),
            (
                "LIVENESS_PROVIDERS__ARGOS__API_KEY",
                t.cfg.providers.argos.api_key.expose().to_owned(),
            ),
            ("LIVENESS_PROVIDERS__ARGOS__MODE", "callback".into()),
            (
                "LIVENESS_PROVIDERS__ARGOS__CALLBACK_PUBLIC_URL",
                format!("http://127.0.0.1:{port}"),
            ),
            (
                "LIVENESS_PROVIDERS__ARGOS__CALLBACK_LISTEN",
                format!("127.0.0.1:{port}"),
            ),
            ("LIVENESS_PROVIDERS__ARGOS__CALLBACK_SECRET", SECRET.into()),
            ("LIVENESS_CALLBACKS__HEADER_TIMEOUT", "1s".into()),
            ("LIVENESS_CALLBACKS__BODY_TIMEOUT", "1s".into()),
            ("LIVENESS_CALLBACKS__MAX_CONNECTIONS", "3".into()),
            ("LIVENESS_CALLBACKS__MAX_BODY_BYTES", "4096".into()),
            ("LIVENESS_CALLBACKS__REQUEST_TIMEOUT", "1s".into()),
        ])
        .await;
    let addr = format!("127.0.0.1:{port}");
    let connect = async || tokio::net::TcpStream::connect(&addr).await.unwrap();
    let now = callbacks::unix_now();
    let token = callbacks::sign(
        SECRET.as_bytes(),
        ProviderName::Argos,
        "slow-1",
        1,
        now + 600,
    );
    let path = format!(
        "/callbacks/argos/slow-1/1?expires={}&token={token}",
        now + 600
    );
    // A forged callback: answered 401 at once, whatever else is going on.
    let quick = async || {
        tokio::time::timeout(
            Duration::from_secs(10),
            reqwest::Client::new()
                .post(format!(
                    "http://{addr}/callbacks/argos/x/1?expires=1&token=00"
                ))
                .body("{}")
                .send(),
        )
        .await
        .expect("served while slow clients hold connections")
        .unwrap()
        .status()
        .as_u16()
    };

    // 1. A head sent one byte every 300 ms: the connection is closed
    //    (header_timeout 1 s), well before the head could have finished.
    let mut slow_head = connect().await;
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}");
    let started = std::time::Instant::now();
    let trickle = async {
        for b in head.as_bytes() {
            if slow_head.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if started.elapsed() > Duration::from_secs(15) {
                return false;
            }
        }
        false
    };
    // Meanwhile another client is served.
    let (cut_off, status) = tokio::join!(trickle, quick());
    assert!(
        cut_off,
        "the slow head was still accepted after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 401);

    // 2. A head at once, then a body that never completes: 408 within
    //    the bound (body_timeout 1 s).
    let mut slow_body = connect().await;
    slow_body
        .write_all(
            format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"a\":")
                .as_bytes(),
        )
        .await
        .unwrap();
    let answer = answer_or_close(&mut slow_body, Duration::from_secs(10))
        .await
        .expect("answered within 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(quick().await, 401);

    // 3. A body over max_body_bytes: 413 without it being read.
    let mut big = connect().await;
    big.write_all(
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = answer_or_close(&mut big, Duration::from_secs(10))
        .await
        .expect("answered within 10 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");

    // 4. max_connections (3) idle connections: a fourth client waits for a
    //    slot, which the header timeout frees; it is then served.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    assert_eq!(quick().await, 401);
    for mut c in idle {
        let closed = answer_or_close(&mut c, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "an idle connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // 5. A valid callback whose settling outlasts request_timeout (1 s):
    //    its job's claim is held elsewhere, which the receiver would wait
    //    5 s for. It is answered 503 with Retry-After at the timeout.
    use liveness_worker::coordination::{Claims as _, Coordination};
    let redis = Coordination::connect(&t.cfg.coordination, &t.cfg.broker.prefix).unwrap();
    let job = liveness_worker::domain::job::JobId::parse("slow-1").unwrap();
    redis
        .try_claim(&job, "another-replica", Duration::from_secs(60))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status().as_u16(), 503);
    assert_eq!(answer.headers()["retry-after"], "30");
    assert!(
        took < Duration::from_millis(4500),
        "answered after {took:?}"
    );
    redis.release(&job, "another-replica").await.unwrap();

    let text = worker.metrics().await;
    assert!(
        series(&text, r#"liveness_callbacks_total{outcome="refused"}"#).unwrap_or(0.0) >= 5.0,
        "{text}"
    );
    let logs = worker.stop().await;
    assert!(
        logs.contains("outlasted callbacks.request_timeout"),
        "{logs}"
    );
    t.finish().await;
}
