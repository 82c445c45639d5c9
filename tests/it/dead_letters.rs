//! Bad input of every kind becomes the right dead letter, with the job
//! echoed, and the worker keeps consuming after each.

use crate::harness::TestEnv;
use base64::Engine as _;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use liveness_worker::samples;
use serde_json::{Value, json};

fn failure(v: &Value) -> (&str, bool) {
    (
        v["failure"]["class"].as_str().unwrap(),
        v["failure"]["retryable"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_become_the_right_dead_letters() {
    // Didit left unconfigured: a job naming it is invalid_job.
    let t = TestEnv::start("bad", "[providers.didit]\napi_key = \"\"").await;
    let image = t
        .upload(
            "ok.png",
            samples::png(
                1,
                2000,
                Some(r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90}"#),
            ),
        )
        .await;
    let text = t
        .upload("notes.txt", b"just some text, not an image".to_vec())
        .await;
    let empty = t.upload("empty.png", Vec::new()).await;
    let bucket = crate::harness::images_bucket();
    let missing = format!("s3://{bucket}/{}/nope.png", t.prefix);

    // Each bad job is followed by a good one: the worker keeps consuming.
    let good = |n: u32| t.job(&format!("good-{n}"), "document", &image);
    t.publish_raw(b"{not json", BasicProperties::default())
        .await;
    t.publish(&good(1)).await;
    t.publish(
        &json!({"schema":"liveness.job.v1","job_id":"schema-1","check":"selfie","image":"s3://x"}),
    )
    .await;
    t.publish(&good(2)).await;
    t.publish(&t.job("forbidden-1", "document", "s3://someone-elses-bucket/a.png"))
        .await;
    let mut back = t.job("forbidden-back-1", "document", &image);
    back["back_image"] = json!("s3://other-bucket/back.png");
    t.publish(&back).await;
    t.publish(&t.job("missing-1", "document", &missing)).await;
    t.publish(&good(3)).await;
    t.publish(&t.job("text-1", "document", &text)).await;
    t.publish(&t.job("empty-1", "face", &empty)).await;
    let mut didit = t.job("no-adapter-1", "face", &image);
    didit["provider"] = json!("didit");
    t.publish(&didit).await;
    let huge = format!(
        r#"{{"schema":"liveness.job.v1","job_id":"huge-1","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    t.publish_raw(huge.as_bytes(), BasicProperties::default())
        .await;
    t.publish_raw(b"[1,2,3]", BasicProperties::default()).await;
    t.publish(&good(4)).await;

    let r = t.results(4).await;
    for n in 1..=4 {
        assert_eq!(r[&format!("good-{n}")].2["verdict"], "live");
    }

    // 10 dead letters; the three unparseable bodies have no job_id.
    let msgs = t
        .take(
            &t.names.dead_queue.clone(),
            10,
            std::time::Duration::from_secs(60),
        )
        .await;
    let mut by_id = std::collections::HashMap::new();
    let mut raw = Vec::new();
    for (rk, _, v) in msgs {
        assert_eq!(v["schema"], "liveness.dead_letter.v1");
        assert_eq!(
            rk,
            v["failure"]["class"].as_str().unwrap(),
            "routing key is the failure class"
        );
        assert!(v["worker"].as_str().unwrap().contains(':'));
        assert!(v["failed_at"].as_str().is_some() && v["first_attempt_at"].as_str().is_some());
        match v["job_id"].as_str() {
            Some(id) => {
                by_id.insert(id.to_owned(), v);
            }
            None => raw.push(v),
        }
    }
    assert_eq!(raw.len(), 3);
    let decoded: Vec<Vec<u8>> = raw
        .iter()
        .map(|v| {
            assert_eq!(failure(v), ("invalid_job", false));
            assert!(v["job"].is_null());
            base64::engine::general_purpose::STANDARD
                .decode(v["raw_body_base64"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert!(decoded.contains(&b"{not json".to_vec()));
    assert!(decoded.contains(&b"[1,2,3]".to_vec()));
    let huge_echo = decoded
        .iter()
        .find(|d| d.len() > 1000)
        .expect("oversized body echoed");
    assert_eq!(
        huge_echo.len(),
        64 * 1024,
        "oversized body echo is cut at 64 KiB"
    );
    assert!(raw.iter().any(|v| {
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    }));
    assert!(raw.iter().any(|v| {
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("over the 65536-byte limit")
    }));

    let v = &by_id["schema-1"];
    assert_eq!(failure(v), ("invalid_job", false));
    assert_eq!(
        v["job"],
        json!({"schema":"liveness.job.v1","job_id":"schema-1","check":"selfie","image":"s3://x"})
    );
    assert!(v["raw_body_base64"].is_null());
    let msg = v["failure"]["message"].as_str().unwrap();
    assert!(
        msg.contains("check must be \"document\" or \"face\", got \"selfie\""),
        "{msg}"
    );
    assert!(msg.contains("image has no object key"), "{msg}");
    assert_eq!(v["attempts"], 0);

    for id in ["forbidden-1", "forbidden-back-1"] {
        let v = &by_id[id];
        assert_eq!(failure(v), ("forbidden_image_location", false));
        assert_eq!(v["job"]["job_id"], id);
        assert!(
            v["failure"]["message"]
                .as_str()
                .unwrap()
                .contains("not on the allowlist (worker.allowed_buckets)")
        );
    }
    assert!(
        by_id["forbidden-back-1"]["failure"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back_image")
    );

    let v = &by_id["missing-1"];
    assert_eq!(failure(v), ("image_not_found", true));
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    assert_eq!(v["attempts"], 0);

    let v = &by_id["text-1"];
    assert_eq!(failure(v), ("image_rejected", false));
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("not a JPEG, PNG or WebP")
    );
    let v = &by_id["empty-1"];
    assert_eq!(failure(v), ("image_rejected", false));
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("empty object")
    );
    let v = &by_id["no-adapter-1"];
    assert_eq!(failure(v), ("invalid_job", false));
    assert!(v["failure"]["message"].as_str().unwrap().contains("didit"));

    // No vendor was paid for any bad job: only the four good ones.
    assert_eq!(t.calls().await["argos"]["submissions"], 4);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_errors_land_in_their_class() {
    let t = TestEnv::start("vendor-errors", "").await;
    // 1005: our request was wrong (dead letter, no retry).
    let rejected = samples::png(1, 2000, Some(r#"{"error":1005}"#));
    // 1003 once: transient, recovered within the in-process retries.
    let flaky = samples::png(
        2,
        2000,
        Some(r#"{"error":1003,"error_times":1,"printed_copy":25}"#),
    );
    // 1003 every time: the ladder runs out.
    let broken = samples::png(3, 2000, Some(r#"{"error":1003}"#));
    // 1003 three times: in-process retries fail (2 per delivery), the ladder's first step recovers.
    let slow = samples::png(
        4,
        2000,
        Some(
            r#"{"error":1003,"error_times":3,"screen_replay":95,"printed_copy":95,"portrait_substitution":95}"#,
        ),
    );
    let uris = [
        t.upload("rejected.png", rejected.clone()).await,
        t.upload("flaky.png", flaky).await,
        t.upload("broken.png", broken).await,
        t.upload("slow.png", slow).await,
    ];
    t.publish(&t.job("rejected-1", "document", &uris[0])).await;
    t.publish(&t.job("flaky-1", "document", &uris[1])).await;
    t.publish(&t.job("broken-1", "document", &uris[2])).await;
    t.publish(&t.job("slow-1", "document", &uris[3])).await;

    let r = t.results(2).await;
    let v = &r["flaky-1"].2;
    assert_eq!(v["verdict"], "spoof");
    assert_eq!(v["attempts"], 2, "the failed attempt counts");
    let v = &r["slow-1"].2;
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["attempts"], 4, "attempts carried across the delay ladder");

    let d = t.dead_letters(2).await;
    let v = &d["rejected-1"].2;
    assert_eq!(failure(v), ("vendor_rejected_request", false));
    assert_eq!(v["failure"]["vendor_code"], "1005");
    assert_eq!(v["failure"]["http_status"], 400);
    assert_eq!(v["failure"]["provider"], "argos");
    assert_eq!(v["attempts"], 1);
    let v = &d["broken-1"].2;
    assert_eq!(failure(v), ("retries_exhausted", true));
    assert_eq!(v["failure"]["vendor_code"], "1003");
    // Two ladder steps, two attempts per delivery: three deliveries.
    assert_eq!(v["attempts"], 6);
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("last error: argos answered error 1003")
    );
    // The first receipt time survives the ladder.
    assert!(v["first_attempt_at"].as_str().unwrap() < v["failed_at"].as_str().unwrap());
    assert_eq!(
        t.submissions_for(&liveness_worker::domain::image::sha256_hex(&rejected))
            .await,
        1
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_too_often_is_dead_lettered_unprocessed() {
    let mut t = TestEnv::new(
        "poison",
        "[broker]\npoison_threshold = 3\ndelivery_limit = 5",
    )
    .await;
    liveness_worker::broker::declare_topology(&t.conn, &t.cfg.broker)
        .await
        .unwrap();
    let uri = t.upload("p.png", samples::png(9, 2000, None)).await;
    let job = t.job("poison-1", "document", &uri);
    t.publish(&job).await;
    // Really delivered (and returned) three times before the worker sees it.
    let queue = t.names.jobs_queue.clone();
    for _ in 0..3 {
        let m =
            t.ch.basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
                .expect("the job is in the queue");
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // A producer's own x-delivery-count on a first delivery means nothing.
    let forged_uri = t
        .upload(
            "forged.png",
            samples::png(
                10,
                2000,
                Some(r#"{"screen_replay":80,"printed_copy":80,"portrait_substitution":80}"#),
            ),
        )
        .await;
    let mut h = FieldTable::default();
    h.insert("x-delivery-count".into(), crate::harness::int_header(99));
    t.publish_raw(
        &serde_json::to_vec(&t.job("forged-1", "document", &forged_uri)).unwrap(),
        BasicProperties::default().with_headers(h),
    )
    .await;
    t.start_worker().await;

    let d = t.dead_letters(1).await;
    let v = &d["poison-1"].2;
    assert_eq!(failure(v), ("internal", true));
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("delivered 4 times")
    );
    assert_eq!(v["job"], job);
    assert_eq!(t.results(1).await["forged-1"].2["verdict"], "live");
    assert_eq!(
        t.calls().await["argos"]["submissions"],
        1,
        "only the forged-header job"
    );
    t.finish().await;
}
