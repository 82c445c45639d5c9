//! The operator commands against the real RabbitMQ and Garage: enqueue from
//! lines and from an S3 prefix, replay, status. Dead letters are published
//! here the way the worker publishes them, so each test controls exactly
//! what sits in the dead-letter queue and in which order.

use crate::harness::{TestEnv, images_bucket, wait_for};
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use liveness_worker::broker;
use liveness_worker::domain::dead_letter::FailureClass;
use liveness_worker::ops::backfill::{self, Template};
use liveness_worker::ops::replay::{self, Filter, ReplayOptions, Source};
use liveness_worker::ops::status;
use std::collections::{HashMap, HashSet};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A test environment whose topology is declared (no worker runs: the
/// queues keep what the commands put there).
pub(crate) async fn env(tag: &str) -> TestEnv {
    let t = TestEnv::new(tag, "").await;
    broker::declare_topology(&t.conn, &t.cfg.broker)
        .await
        .expect("topology");
    t
}

/// The real binary, configured like `t`'s worker.
pub(crate) fn bin(t: &TestEnv) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_liveness-worker"));
    c.env("LIVENESS_BROKER__PREFIX", &t.prefix)
        .env(
            "LIVENESS_WORKER__ALLOWED_BUCKETS",
            format!(r#"["{}"]"#, images_bucket()),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

pub(crate) async fn run_bin(t: &TestEnv, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = bin(t);
    c.args(args).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().expect("binary starts");
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt as _;
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).await.unwrap();
        drop(w);
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("command finishes")
        .unwrap()
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Takes every ready message of a queue (acking it): (properties, body), in order.
pub(crate) async fn drain(ch: &Channel, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic_get")
    {
        let d = m.delivery;
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        out.push((d.properties, d.data));
    }
    out
}

pub(crate) fn header<'a>(p: &'a BasicProperties, k: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref()?.inner().get(k)
}

fn job_line(id: &str, image: &str) -> String {
    format!(
        r#"{{"schema":"liveness.job.v1","job_id":"{id}","check":"document","image":"{image}"}}"#
    )
}

/// Publishes a dead letter as the worker does: to the dead exchange, keyed by class.
pub(crate) async fn dead_letter(
    t: &TestEnv,
    id: &str,
    class: &str,
    provider: Option<&str>,
    job: Option<&str>,
) {
    let provider = provider.map_or(String::new(), |p| format!(r#","provider":"{p}""#));
    let retryable = FailureClass::parse(class).unwrap().retryable();
    let body = format!(
        r#"{{"schema":"liveness.dead_letter.v1","job_id":"{id}","job":{},"raw_body_base64":{},"failure":{{"class":"{class}","message":"m","retryable":{retryable}{provider}}},"attempts":1,"first_attempt_at":"2026-11-23T10:00:00.000Z","failed_at":"2026-11-23T10:00:01.000Z","worker":"test:1"}}"#,
        job.unwrap_or("null"),
        if job.is_some() {
            "null"
        } else {
            r#""bm90IGpzb24=""#
        },
    );
    broker::publish_confirmed(
        &t.ch,
        &t.names.dead_exchange,
        class,
        body.as_bytes(),
        broker::json_props(Some(id), Some(&format!("corr-{id}").as_str().into())),
        false,
        Duration::from_secs(5),
    )
    .await
    .expect("dead letter published");
}

/// A job body with odd but valid spacing and number spellings, which a
/// replay must keep byte for byte.
pub(crate) fn odd_job(id: &str) -> String {
    format!(
        r#"{{ "schema":"liveness.job.v1","job_id":"{id}", "check":"face","image":"s3://{}/x/{id}.png","metadata":{{"n": 1.50, "big":123456789012345678901234567890}} }}"#,
        images_bucket()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_publishes_exactly_the_valid_lines() {
    let t = env("enq").await;
    let bucket = images_bucket();
    let good1 = job_line("enq-good-1", &format!("s3://{bucket}/a.png"));
    let good2 = format!(
        r#"{{"schema":"liveness.job.v1","job_id":"enq-good-2","check":"face","image":"s3://{bucket}/b.png","metadata":{{"k": 1.0}}}}"#
    );
    let oversize = format!(
        r#"{{"schema":"liveness.job.v1","job_id":"big","check":"face","image":"s3://{bucket}/b.png","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let lines = [
        good1.clone(),          // 1
        "{not json".to_owned(), // 2
        r#"{"schema":"liveness.job.v1","job_id":"s","check":"selfie","image":"s3://x"}"#.to_owned(), // 3
        job_line("enq-forbidden", "s3://someone-elses-bucket/a.png"), // 4
        oversize,                                                     // 5
        "   ".to_owned(),                                             // 6: blank
        format!("{good2}\r"),                                         // 7: CRLF ending
    ];
    let file = std::env::temp_dir().join(format!("{}-jobs.jsonl", t.prefix));
    let mut content = (lines.join("\n") + "\n").into_bytes();
    content.extend_from_slice(b"\xff\xfe not text\n"); // 8
    std::fs::write(&file, content).unwrap();

    let out = run_bin(&t, &["enqueue", file.to_str().unwrap()], None).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (n, reason) in [
        (2, "not valid JSON"),
        (3, "check must be"),
        (4, "not on the allowlist"),
        (5, "over the 65536-byte limit"),
        (8, "not UTF-8"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("line {n}: ")) && l.contains(reason)),
            "line {n} ({reason}) not reported: {err}"
        );
    }
    assert!(!err.contains("line 1:") && !err.contains("line 6:") && !err.contains("line 7:"));
    assert!(
        err.contains("8 lines read: 2 valid, 5 invalid, 1 blank"),
        "{err}"
    );
    assert!(err.contains("2 published and confirmed"), "{err}");

    let got = drain(&t.ch, &t.names.jobs_queue).await;
    assert_eq!(got.len(), 2, "exactly the valid lines are published");
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, [good1.as_bytes(), good2.as_bytes()]);
    for ((p, _), id) in got.iter().zip(["enq-good-1", "enq-good-2"]) {
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), id);
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.delivery_mode(), &Some(2));
    }

    // --strict: one bad line and nothing goes out.
    let strict = run_bin(&t, &["enqueue", "--strict", file.to_str().unwrap()], None).await;
    assert_eq!(strict.status.code(), Some(1));
    assert!(text(&strict.stderr).contains("nothing published"));
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);

    // Standard input, all valid: exit 0, in order.
    let stdin: String = (0..50)
        .map(|i| job_line(&format!("stdin-{i}"), &format!("s3://{bucket}/s/{i}.png")) + "\n")
        .collect();
    let out = run_bin(&t, &["enqueue", "-"], Some(stdin.as_bytes())).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got = drain(&t.ch, &t.names.jobs_queue).await;
    let ids: Vec<String> = got
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        (0..50).map(|i| format!("stdin-{i}")).collect::<Vec<_>>()
    );

    // No queue bound to the jobs exchange: the broker returns the messages,
    // which count as not published (exit 3) instead of vanishing.
    t.ch.queue_delete(t.names.jobs_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let out = run_bin(&t, &["enqueue", "-"], Some(stdin.as_bytes())).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("0 published and confirmed, 50 not published"),
        "{err}"
    );
    assert!(
        err.contains("line 1 (job stdin-0): not published: no queue is bound"),
        "{err}"
    );

    std::fs::remove_file(&file).ok();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_twice_enqueues_the_same_job_ids() {
    const N: usize = 10_000;
    let t = env("backfill").await;
    let bucket = images_bucket();
    let root = format!("{}/bf/", t.prefix);
    // Tiny objects, uploaded with bounded parallelism; plus a "directory" placeholder.
    futures_util::stream::iter(0..N)
        .map(|i| {
            let (store, bucket, key) = (
                t.store.clone(),
                bucket.clone(),
                format!("{root}{}/{i}.png", i % 7),
            );
            async move {
                store
                    .put(&bucket, &key, vec![b'x'; 8].into(), "image/png")
                    .await
                    .expect("upload")
            }
        })
        .buffer_unordered(48)
        .collect::<Vec<()>>()
        .await;
    t.store
        .put(
            &bucket,
            &format!("{root}placeholder/"),
            Vec::new().into(),
            "application/x-directory",
        )
        .await
        .unwrap();

    let uri = format!("s3://{bucket}/{root}");
    let template = Template::new("document".into(), None, Some(r#"{"batch": "bf-1"}"#)).unwrap();
    let first = backfill::backfill(&t.cfg, &uri, &template, false, 256)
        .await
        .unwrap();
    assert_eq!(first.listed as usize, N + 1);
    assert_eq!(first.placeholders, 1);
    assert_eq!((first.jobs as usize, first.published as usize), (N, N));
    assert_eq!(first.unconfirmed, 0);

    // The second run through the binary, with the same options.
    let out = run_bin(
        &t,
        &[
            "enqueue",
            "--s3-prefix",
            &uri,
            "--check",
            "document",
            "--metadata",
            r#"{"batch": "bf-1"}"#,
        ],
        None,
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 directory placeholders"), "{err}");
    assert!(
        err.contains(&format!("{N} published and confirmed")),
        "{err}"
    );

    // Every job id appears exactly twice, with identical bodies.
    let ch = t.conn.create_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            t.names.jobs_queue.as_str().into(),
            "backfill-check".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for _ in 0..2 * N {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("all jobs arrive")
            .unwrap()
            .unwrap();
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        seen.entry(id).or_default().push(d.data);
    }
    assert_eq!(seen.len(), N, "one job id per object");
    for (id, bodies) in &seen {
        assert!(id.starts_with("s3-") && id.len() == 67, "{id}");
        assert_eq!(bodies.len(), 2, "{id} not enqueued by both runs");
        assert_eq!(bodies[0], bodies[1]);
        let v: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
        assert_eq!(v["job_id"], id.as_str());
        assert_eq!(v["metadata"]["batch"], "bf-1");
    }
    let _ = ch.close(200, "".into()).await;

    // Dry run: the same jobs on stdout, nothing published.
    let out = run_bin(
        &t,
        &[
            "enqueue",
            "--s3-prefix",
            &uri,
            "--check",
            "document",
            "--dry-run",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: HashSet<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listed, seen.keys().cloned().collect::<HashSet<_>>());
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);

    // A bucket off the allowlist is refused before anything is listed.
    let out = run_bin(
        &t,
        &[
            "enqueue",
            "--s3-prefix",
            "s3://not-allowed/x",
            "--check",
            "face",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not on the allowlist"));

    delete_prefix(&t, &bucket, &root).await;
    t.finish().await;
}

/// Removes this test's objects, a page at a time.
pub(crate) async fn delete_prefix(t: &TestEnv, bucket: &str, prefix: &str) {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let mut token = None;
    loop {
        let (page, next) = t
            .store
            .list_page(bucket, prefix, token.take())
            .await
            .unwrap();
        let ids: Vec<ObjectIdentifier> = page
            .iter()
            .map(|o| ObjectIdentifier::builder().key(&o.key).build().unwrap())
            .collect();
        if !ids.is_empty() {
            let _ = t
                .store
                .client()
                .delete_objects()
                .bucket(bucket)
                .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
                .send()
                .await;
        }
        match next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
}

pub(crate) fn class_of(i: usize) -> &'static str {
    ["retries_exhausted", "invalid_job", "image_not_found"][i % 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_class_moves_exactly_the_matching_and_keeps_order() {
    let t = env("replay").await;
    let n = 30;
    for i in 0..n {
        let id = format!("r-{i}");
        dead_letter(&t, &id, class_of(i), Some("argos"), Some(&odd_job(&id))).await;
    }
    // A matching class, but a raw body: it cannot be replayed and stays.
    dead_letter(&t, "r-raw", "retries_exhausted", None, None).await;
    let before: Vec<String> = (0..n)
        .map(|i| format!("r-{i}"))
        .chain(["r-raw".into()])
        .collect();

    let opts = |dry_run| ReplayOptions {
        source: Source::Dead,
        filter: Filter {
            classes: Some(vec![FailureClass::RetriesExhausted]),
            ..Default::default()
        },
        dry_run,
        limit: None,
        rate: 0.0,
        quiet: false,
    };
    // Dry run first: lists, moves nothing.
    let dry = replay::replay(&t.cfg, &opts(true), Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    assert_eq!(
        (dry.matched, dry.moved, dry.no_job, dry.no_match),
        (10, 0, 1, 20)
    );
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);
    wait_for("dead letters back after the dry run", 10, async || {
        t.depth(&t.names.dead_queue).await == 31
    })
    .await;

    // Age filters through the binary (these dead letters failed on 2026-11-23).
    let older = run_bin(
        &t,
        &[
            "replay",
            "--class",
            "all",
            "--older-than",
            "1m",
            "--dry-run",
        ],
        None,
    )
    .await;
    assert_eq!(older.status.code(), Some(0), "{}", text(&older.stderr));
    assert_eq!(
        text(&older.stdout).lines().count(),
        30,
        "{}",
        text(&older.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_str(text(&older.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["job_id"], "r-0");
    assert_eq!(first["vendor"], "argos");
    let newer = run_bin(
        &t,
        &[
            "replay",
            "--class",
            "all",
            "--newer-than",
            "1m",
            "--dry-run",
        ],
        None,
    )
    .await;
    assert_eq!(text(&newer.stdout).lines().count(), 0);
    assert!(
        text(&newer.stderr).contains("0 matched"),
        "{}",
        text(&newer.stderr)
    );

    let r = replay::replay(&t.cfg, &opts(false), Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    assert_eq!((r.scanned, r.matched, r.moved, r.failed), (31, 10, 10, 0));
    assert_eq!((r.no_job, r.no_match, r.unreadable), (1, 20, 0));

    let moved = drain(&t.ch, &t.names.jobs_queue).await;
    let expected: Vec<String> = (0..n)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("r-{i}"))
        .collect();
    let ids: Vec<String> = moved
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, expected, "exactly the matching jobs, in order");
    for (p, body) in &moved {
        let id = p.message_id().as_ref().unwrap().to_string();
        assert_eq!(body, odd_job(&id).as_bytes(), "job bytes kept exactly");
        assert_eq!(
            header(p, replay::H_REPLAYS),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert!(matches!(
            header(p, replay::H_REPLAYED_AT),
            Some(AMQPValue::LongString(_))
        ));
        assert!(
            header(p, broker::headers::H_ATTEMPTS).is_none()
                && header(p, broker::headers::H_LADDER_STEP).is_none()
        );
        assert_eq!(
            p.correlation_id().as_ref().unwrap().to_string(),
            format!("corr-{id}")
        );
        assert_eq!(p.delivery_mode(), &Some(2));
    }

    // The others stay, in their original order.
    wait_for("dead letters back after the replay", 10, async || {
        t.depth(&t.names.dead_queue).await == 21
    })
    .await;
    let left: Vec<String> = drain(&t.ch, &t.names.dead_queue)
        .await
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    let expected_left: Vec<String> = before
        .iter()
        .filter(|id| !expected.contains(id))
        .cloned()
        .collect();
    assert_eq!(left, expected_left);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_poison_resets_the_ladder_headers() {
    let t = env("poison").await;
    for i in 0..3 {
        let mut h = FieldTable::default();
        h.insert(
            broker::headers::H_ATTEMPTS.into(),
            AMQPValue::LongLongInt(4),
        );
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(21));
        h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        let id = format!("p-{i}");
        broker::publish_confirmed(
            &t.ch,
            "",
            &t.names.poison_queue,
            odd_job(&id).as_bytes(),
            BasicProperties::default()
                .with_headers(h)
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2),
            false,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    let out = run_bin(&t, &["replay", "--from", "poison", "--limit", "2"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let moved = drain(&t.ch, &t.names.jobs_queue).await;
    assert_eq!(moved.len(), 2);
    for ((p, body), id) in moved.iter().zip(["p-0", "p-1"]) {
        assert_eq!(body, odd_job(id).as_bytes());
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), id);
        assert_eq!(
            header(p, "tenant"),
            Some(&AMQPValue::LongString("acme".into()))
        );
        assert!(header(p, broker::headers::H_ATTEMPTS).is_none(), "{p:?}");
        // The broker's count for the jobs queue starts afresh (it sets 0 itself).
        assert!(
            matches!(
                header(p, "x-delivery-count"),
                None | Some(AMQPValue::LongLongInt(0))
            ),
            "{p:?}"
        );
        assert_eq!(
            header(p, replay::H_REPLAYS),
            Some(&AMQPValue::LongLongInt(1))
        );
    }
    wait_for("the third poison message stays", 10, async || {
        t.depth(&t.names.poison_queue).await == 1
    })
    .await;
    // Filters that need a failure record are refused for poison messages.
    let out = run_bin(
        &t,
        &["replay", "--from", "poison", "--class", "internal"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_replay_loses_nothing() {
    let t = env("replay-kill").await;
    let n = 40;
    for i in 0..n {
        let id = format!("k-{i}");
        dead_letter(
            &t,
            &id,
            "retries_exhausted",
            Some("argos"),
            Some(&odd_job(&id)),
        )
        .await;
    }
    let mut child = bin(&t)
        .args(["replay", "--class", "retries_exhausted", "--rate", "10"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the replay to move a few jobs", 60, async || {
        t.depth(&t.names.jobs_queue).await >= 5
    })
    .await;
    child.kill().await.expect("SIGKILL");

    // Once the broker has taken back the killed replay's unacked messages,
    // every job is in the dead queue, the jobs queue, or both.
    wait_for(
        "the broker to requeue the held dead letters",
        30,
        async || {
            t.depth(&t.names.dead_queue).await + t.depth(&t.names.jobs_queue).await >= n
                && t.consumers(&t.names.dead_queue).await == Some(0)
        },
    )
    .await;
    let dead = drain(&t.ch, &t.names.dead_queue).await;
    let jobs = drain(&t.ch, &t.names.jobs_queue).await;
    assert!(
        dead.len() < n as usize,
        "the replay moved something before it was killed"
    );
    let mut found = HashSet::new();
    for (p, _) in dead.iter().chain(jobs.iter()) {
        found.insert(p.message_id().as_ref().unwrap().to_string());
    }
    let all: HashSet<String> = (0..n).map(|i| format!("k-{i}")).collect();
    assert_eq!(found, all, "no job lost");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stopped_by_sigint_moves_each_job_once() {
    let t = env("replay-int").await;
    let n = 30;
    for i in 0..n {
        let id = format!("i-{i}");
        dead_letter(&t, &id, "image_not_found", None, Some(&odd_job(&id))).await;
    }
    let child = bin(&t)
        .args(["replay", "--rate", "10"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the replay to move a few jobs", 60, async || {
        t.depth(&t.names.jobs_queue).await >= 3
    })
    .await;
    let (code, err) = interrupt(child, "replay").await;
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");

    // A clean stop: every job is in exactly one of the two queues.
    let jobs = drain(&t.ch, &t.names.jobs_queue).await;
    let dead = drain(&t.ch, &t.names.dead_queue).await;
    assert!(!jobs.is_empty() && !dead.is_empty(), "{err}");
    let mut ids: Vec<String> = jobs
        .iter()
        .chain(dead.iter())
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    ids.sort();
    let mut all: Vec<String> = (0..n).map(|i| format!("i-{i}")).collect();
    all.sort();
    assert_eq!(ids, all);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_without_disturbing_the_dead_letters() {
    let t = env("status").await;
    // Enough dead letters for requeueing to need pacing (see HeldScan::release).
    let n = 200;
    let vendors = [Some("argos"), None, Some("didit")];
    let mut order = Vec::new();
    for i in 0..n {
        let id = format!("s-{i}");
        let job = (i != n - 1).then(|| odd_job(&id));
        dead_letter(&t, &id, class_of(i), vendors[i % 3], job.as_deref()).await;
        order.push(id);
    }
    let third = |k: usize| (0..n).filter(|i| i % 3 == k).count() as u64;
    let s = status::status(&t.cfg, 0).await.unwrap();
    let jobs = s.queues.iter().find(|q| q.role == "jobs").unwrap();
    assert!(jobs.exists && jobs.ready == 0 && jobs.consumers == 0);
    assert_eq!(s.queues.iter().filter(|q| q.role == "retry").count(), 2);
    let dead = s.queues.iter().find(|q| q.role == "dead").unwrap();
    assert_eq!(dead.ready as usize, n);
    let c = s.dead_letters.unwrap();
    assert!(c.complete && c.order_kept && c.scanned as usize == n);
    assert_eq!(c.by_class["retries_exhausted"], third(0));
    assert_eq!(c.by_class["invalid_job"], third(1));
    assert_eq!(c.by_class["image_not_found"], third(2));
    assert_eq!(c.by_vendor["argos"], third(0));
    assert_eq!(c.by_vendor["none"], third(1));
    assert_eq!(c.by_vendor["didit"], third(2));
    assert_eq!(c.without_job, 1);

    // The table from the binary.
    let table = run_bin(&t, &["status"], None).await;
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(
        table.contains("retries_exhausted") && table.contains(&t.names.dead_queue),
        "{table}"
    );

    // The same dead letters, in the same order, after two full scans.
    let after: Vec<String> = drain(&t.ch, &t.names.dead_queue)
        .await
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(after, order);

    // A capped scan, as JSON: marked as a sample.
    for (i, id) in order.iter().take(12).enumerate() {
        dead_letter(&t, id, class_of(i), vendors[i % 3], Some(&odd_job(id))).await;
    }
    let out = run_bin(&t, &["status", "--json", "--scan-limit", "5"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dead_letters"]["complete"], false);
    assert_eq!(v["dead_letters"]["scanned"], 5);
    assert_eq!(v["dead_letters"]["depth"], 12);
    assert_eq!(v["dead_letters"]["by_class"]["retries_exhausted"], 2);
    assert!(
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["role"] == "poison" && q["exists"] == true)
    );
    wait_for("all 12 dead letters back", 10, async || {
        t.depth(&t.names.dead_queue).await == 12
    })
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_job_that_fails_again_counts_its_replays_and_then_completes() {
    let t = TestEnv::start("replays", "").await;
    let dead = t.names.dead_queue.clone();
    let key = format!("{}/late.png", t.prefix);
    let uri = format!("s3://{}/{key}", images_bucket());
    t.publish(&t.job("late-1", "document", &uri)).await;
    let opts = ReplayOptions {
        source: Source::Dead,
        filter: Filter::default(),
        dry_run: false,
        limit: None,
        rate: 0.0,
        quiet: false,
    };
    // Not uploaded yet: image_not_found, replayed twice, failing each time.
    for _ in 0..2 {
        wait_for("the dead letter", 30, async || t.depth(&dead).await == 1).await;
        let r = replay::replay(&t.cfg, &opts, Arc::new(AtomicBool::new(false)))
            .await
            .unwrap();
        assert_eq!(r.moved, 1);
    }
    let d = t.take(&dead, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(d.2["failure"]["class"], "image_not_found");
    assert_eq!(
        header(&d.1, replay::H_REPLAYS).and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(*n),
            AMQPValue::LongInt(n) => Some(*n as i64),
            _ => None,
        }),
        Some(2),
        "the second failure's dead letter carries the replay count"
    );
    assert!(header(&d.1, replay::H_REPLAYED_AT).is_some());

    // Uploaded: a third replay completes it.
    t.upload(
        "late.png",
        liveness_worker::samples::png(
            5,
            2000,
            Some(r#"{"screen_replay":80,"printed_copy":80,"portrait_substitution":80}"#),
        ),
    )
    .await;
    broker::publish_confirmed(
        &t.ch,
        &t.names.dead_exchange,
        "image_not_found",
        &serde_json::to_vec(&d.2).unwrap(),
        d.1.clone(),
        false,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let r = replay::replay(&t.cfg, &opts, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    assert_eq!(r.moved, 1);
    assert_eq!(t.results(1).await["late-1"].2["verdict"], "live");
    t.finish().await;
}

/// Sends SIGINT to an operator command and waits for it to stop (60 s at
/// most); returns its exit code and standard error.
pub async fn interrupt(child: tokio::process::Child, what: &str) -> (Option<i32>, String) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {what} stops"))
        .unwrap();
    (out.status.code(), text(&out.stderr))
}
