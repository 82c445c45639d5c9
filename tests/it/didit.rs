//! Didit passive liveness through RabbitMQ, Garage and the emulator: every
//! verdict with exact scores and reasons, every documented error in its
//! class, the 5 000 000-byte pre-flight, rate limits honoured, and no
//! biometric attribute or media URL anywhere downstream.

use crate::harness::{TestEnv, wait_for};
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use serde_json::{Value, json};
use std::time::Duration;

/// Face jobs go to Didit unless they name another vendor.
const DIDIT_DEFAULT: &str = "[providers]\ndefault_face = \"didit\"";

fn signal(verdict: &str, score: Value, vendor_score: Value) -> Value {
    json!([{"name": "face_liveness", "verdict": verdict, "score": score, "vendor_score": vendor_score}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_with_exact_scores_and_reasons() {
    let t = TestEnv::start("didit-verdicts", DIDIT_DEFAULT).await;
    let cases = [
        ("live", samples::png(1, 3000, Some(r#"{"face":95}"#))),
        (
            "review-warning",
            samples::jpeg(
                2,
                3000,
                Some(r#"{"face":88,"warnings":["MULTIPLE_FACES_DETECTED","DUPLICATED_FACE"]}"#),
            ),
        ),
        (
            "review-in-review",
            samples::png(
                3,
                3000,
                Some(r#"{"face":47,"didit_status":"In Review","didit_method":"ACTIVE_3D"}"#),
            ),
        ),
        (
            "review-blocklist",
            samples::png(
                4,
                3000,
                Some(r#"{"face":93,"warnings":["FACE_IN_BLOCKLIST"]}"#),
            ),
        ),
        (
            "spoof-score",
            samples::png(5, 3000, Some(r#"{"face":12.5}"#)),
        ),
        (
            "spoof-attack",
            samples::png(
                6,
                3000,
                Some(r#"{"face":81,"warnings":["LIVENESS_FACE_ATTACK"]}"#),
            ),
        ),
        (
            "no-face",
            samples::png(7, 3000, Some(r#"{"no_face":true}"#)),
        ),
        (
            "not-finished",
            samples::png(
                8,
                3000,
                Some(r#"{"didit_status":"Not Finished","didit_method":"FLASHING"}"#),
            ),
        ),
    ];
    for (id, bytes) in &cases {
        let uri = t.upload(&format!("{id}.img"), bytes.clone()).await;
        let mut job = t.job(id, "face", &uri);
        if *id == "live" {
            job["metadata"] = json!({"vendor_data": "applicant-9", "n": 1.50});
        }
        t.publish(&job).await;
    }
    // Naming a vendor still wins over the default.
    let argos_uri = t
        .upload("argos.png", samples::png(9, 3000, Some(r#"{"face":95}"#)))
        .await;
    let mut argos_job = t.job("argos-named", "face", &argos_uri);
    argos_job["provider"] = json!("argos");
    t.publish(&argos_job).await;

    let r = t.results(cases.len() + 1).await;
    let get = |id: &str| {
        let (rk, _, v) = &r[id];
        assert_eq!(v["schema"], "liveness.result.v1");
        assert_eq!(v["attempts"], 1, "{id}");
        (rk.as_str(), v)
    };

    let (rk, v) = get("live");
    assert_eq!(rk, "face.live");
    assert_eq!(v["provider"], "didit");
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["score"], 0.95);
    assert_eq!(v["signals"], signal("live", json!(0.95), json!(95)));
    assert_eq!(
        v["reasons"],
        json!(["face_liveness scored 95/100 (didit PASSIVE liveness, status Approved)"])
    );
    assert_eq!(v["warnings"], json!([]));
    assert_eq!(
        v["metadata"],
        json!({"vendor_data": "applicant-9", "n": 1.50})
    );
    assert_eq!(v["vendor"]["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(v["image"]["content_type"], "image/png");

    let (rk, v) = get("review-warning");
    assert_eq!(rk, "face.review");
    assert_eq!(v["score"], 0.88);
    assert_eq!(v["signals"], signal("review", json!(0.88), json!(88)));
    assert_eq!(
        v["reasons"],
        json!([
            "face_liveness scored 88/100 (didit PASSIVE liveness, status Approved)",
            "didit reported MULTIPLE_FACES_DETECTED (warning): Multiple faces detected"
        ])
    );
    assert_eq!(
        v["warnings"],
        json!([
            {"code": "MULTIPLE_FACES_DETECTED", "severity": "warning", "message": "Multiple faces detected"},
            {"code": "DUPLICATED_FACE", "severity": "info", "message": "Duplicated face"}
        ])
    );
    assert_eq!(v["image"]["content_type"], "image/jpeg");

    let (rk, v) = get("review-in-review");
    assert_eq!(rk, "face.review");
    assert_eq!(v["score"], 0.47);
    assert_eq!(
        v["reasons"],
        json!([
            "face_liveness scored 47/100 (didit ACTIVE_3D liveness, status In Review)",
            "didit put the check In Review"
        ])
    );

    let (rk, v) = get("review-blocklist");
    assert_eq!(rk, "face.review");
    assert_eq!(
        v["reasons"],
        json!([
            "face_liveness scored 93/100 (didit PASSIVE liveness, status Declined)",
            "didit reported FACE_IN_BLOCKLIST (error): Face in blocklist"
        ])
    );
    assert_eq!(v["warnings"][0]["severity"], "error");

    let (rk, v) = get("spoof-score");
    assert_eq!(rk, "face.spoof");
    assert_eq!(v["score"], 0.125);
    assert_eq!(v["signals"], signal("spoof", json!(0.125), json!(12.5)));
    assert_eq!(
        v["reasons"],
        json!([
            "face_liveness scored 12.5/100, at or below didit's default decline threshold 30 (didit PASSIVE liveness, status Declined)",
            "didit reported LOW_LIVENESS_SCORE (error): Low liveness score"
        ])
    );
    assert_eq!(
        v["warnings"],
        json!([{"code": "LOW_LIVENESS_SCORE", "severity": "error", "message": "Low liveness score"}])
    );

    let (rk, v) = get("spoof-attack");
    assert_eq!(rk, "face.spoof");
    assert_eq!(v["score"], 0.81);
    assert_eq!(
        v["reasons"],
        json!([
            "face_liveness scored 81/100 (didit PASSIVE liveness, status Declined)",
            "didit reported LIVENESS_FACE_ATTACK (error): Possible face presentation attack"
        ])
    );

    let (rk, v) = get("no-face");
    assert_eq!(rk, "face.inconclusive");
    assert_eq!(v["score"], Value::Null);
    assert_eq!(
        v["signals"],
        signal("not_performed", Value::Null, Value::Null)
    );
    assert_eq!(
        v["reasons"],
        json!(["didit found no face in the image (NO_FACE_DETECTED)"])
    );
    assert_eq!(
        v["warnings"],
        json!([{"code": "NO_FACE_DETECTED", "severity": "error", "message": "No face detected"}])
    );

    let (rk, v) = get("not-finished");
    assert_eq!(rk, "face.inconclusive");
    assert_eq!(v["score"], Value::Null);
    assert_eq!(
        v["reasons"],
        json!(["didit reports the liveness check Not Finished: the user never completed it"])
    );

    let (rk, v) = get("argos-named");
    assert_eq!((rk, &v["provider"]), ("face.live", &json!("argos")));

    let calls = t.calls().await;
    assert_eq!(calls["didit"]["submissions"], cases.len());
    assert_eq!(calls["argos"]["submissions"], 1);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_limits_land_in_their_class() {
    let t = TestEnv::start("didit-errors", DIDIT_DEFAULT).await;
    let rejected = samples::png(1, 2000, Some(r#"{"error":400}"#));
    // Retry-After: 1 (within retry.max_retry_after), then a normal answer.
    let throttled = samples::png(2, 2000, Some(r#"{"error":429,"error_times":1,"face":77}"#));
    let broken = samples::png(3, 2000, Some(r#"{"error":500}"#));
    let mut at_limit = samples::jpeg(4, 4_990_000, Some(r#"{"face":66}"#));
    at_limit.resize(5_000_000, 0);
    let mut over = samples::jpeg(5, 4_990_000, Some(r#"{"face":66}"#));
    over.resize(5_000_001, 0);
    let doc = samples::png(6, 2000, Some(r#"{"face":90}"#));

    let uris = [
        t.upload("rejected.png", rejected.clone()).await,
        t.upload("throttled.png", throttled.clone()).await,
        t.upload("broken.png", broken.clone()).await,
        t.upload("at-limit.jpg", at_limit.clone()).await,
        t.upload("over.jpg", over.clone()).await,
        t.upload("doc.png", doc.clone()).await,
    ];
    t.publish(&t.job("rejected", "face", &uris[0])).await;
    t.publish(&t.job("throttled", "face", &uris[1])).await;
    t.publish(&t.job("broken", "face", &uris[2])).await;
    t.publish(&t.job("at-limit", "face", &uris[3])).await;
    t.publish(&t.job("over", "face", &uris[4])).await;
    let mut document = t.job("document", "document", &uris[5]);
    document["provider"] = json!("didit");
    t.publish(&document).await;

    let r = t.results(2).await;
    let v = &r["throttled"].2;
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["score"], 0.77);
    assert_eq!(v["attempts"], 2, "the 429 counts as an attempt");
    let v = &r["at-limit"].2;
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["image"]["bytes"], 5_000_000);

    let d = t.dead_letters(4).await;
    let failure = |id: &str| d[id].2["failure"].clone();
    let f = failure("rejected");
    assert_eq!(f["class"], "vendor_rejected_request");
    assert_eq!(f["retryable"], false);
    assert_eq!(f["provider"], "didit");
    assert_eq!(f["http_status"], 400);
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("didit rejected the request as malformed (HTTP 400): \"user_image: Upload a valid image."),
        "{f}"
    );
    assert_eq!(d["rejected"].2["attempts"], 1);

    let f = failure("broken");
    assert_eq!(f["class"], "retries_exhausted");
    assert_eq!(f["retryable"], true);
    assert_eq!(f["http_status"], 500);
    // Two ladder steps, two attempts per delivery: three deliveries.
    assert_eq!(d["broken"].2["attempts"], 6);

    let f = failure("over");
    assert_eq!(f["class"], "image_rejected");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("is 5000001 bytes, over the 5000000-byte limit for this vendor"),
        "{f}"
    );
    assert_eq!(d["over"].2["attempts"], 0);

    let f = failure("document");
    assert_eq!(f["class"], "invalid_job");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("provider didit cannot do document checks"),
        "{f}"
    );

    // Paid for what was sent, and nothing for what the pre-flight refused.
    for (img, want) in [
        (&over, 0),
        (&doc, 0),
        (&rejected, 1),
        (&throttled, 2),
        (&broken, 6),
        (&at_limit, 1),
    ] {
        assert_eq!(
            t.vendor_submissions_for("didit", &sha256_hex(img)).await,
            want
        );
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_parks_jobs_instead_of_dead_lettering_them() {
    let t = TestEnv::start("didit-revoked", DIDIT_DEFAULT).await;
    let admin = reqwest::Client::new();
    let creds = format!("{}/_admin/credentials/didit", t.emulator.base_url());
    admin
        .post(&creds)
        .json(&json!({"valid": false}))
        .send()
        .await
        .unwrap();
    let img = samples::png(1, 2000, Some(r#"{"face":83}"#));
    let uri = t.upload("parked.png", img.clone()).await;
    t.publish(&t.job("parked", "face", &uri)).await;
    wait_for("didit to pause", 20, async || {
        t.vendor_flag("vendor_paused", "didit").await
    })
    .await;
    // Parked at least twice on the ladder, still nothing dead-lettered.
    wait_for("a second refused attempt", 20, async || {
        t.vendor_submissions_for("didit", &sha256_hex(&img)).await >= 2
    })
    .await;
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    admin
        .post(&creds)
        .json(&json!({"valid": true}))
        .send()
        .await
        .unwrap();
    let r = t.results(1).await;
    let v = &r["parked"].2;
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["score"], 0.83);
    // Every refused attempt was a submission and is counted.
    assert_eq!(
        v["attempts"].as_u64().unwrap(),
        t.vendor_submissions_for("didit", &sha256_hex(&img)).await
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    wait_for("the vendor to be resumed", 10, async || {
        !t.vendor_flag("vendor_paused", "didit").await
    })
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_waits_out_a_rate_limit_as_the_vendor_asks() {
    // Enough in-process attempts and patience for Retry-After to decide.
    let t = TestEnv::start(
        "didit-ratelimit",
        "[providers]\ndefault_face = \"didit\"\n[retry]\nattempts_per_delivery = 5\nmax_retry_after = \"5s\"",
    )
    .await;
    // One request per 2-second window: three jobs at once cannot all pass.
    let status = reqwest::Client::new()
        .put(format!("{}/_admin/faults", t.emulator.base_url()))
        .json(&json!({"vendor": "didit", "rate_limit_per_minute": 1, "rate_limit_window_ms": 2000}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let ids = ["rl-1", "rl-2", "rl-3"];
    for (n, id) in ids.iter().enumerate() {
        let img = samples::png(n as u64, 2000, Some(r#"{"face":91}"#));
        let uri = t.upload(&format!("{id}.png"), img).await;
        t.publish(&t.job(id, "face", &uri)).await;
    }
    let r = t.results(ids.len()).await;
    let mut attempts = 0;
    for id in ids {
        assert_eq!(r[id].2["verdict"], "live", "{id}");
        attempts += r[id].2["attempts"].as_u64().unwrap();
    }
    let calls = t.calls().await;
    let submissions = calls["didit"]["submissions"].as_u64().unwrap();
    let limited = calls["didit"]["rate_limited"].as_u64().unwrap();
    assert_eq!(attempts, submissions, "every 429 is a counted attempt");
    assert_eq!(submissions, ids.len() as u64 + limited);
    assert!(limited >= 1, "the limit was reached");
    // Waiting the whole Retry-After each time, the second job is refused
    // once and the third twice; a worker retrying on its own short backoff
    // (50-200 ms here) would be refused many more times.
    assert!(
        limited <= 3,
        "{limited} requests refused: Retry-After was not honoured"
    );
    let metrics = t.probe("/metrics").await.1;
    assert!(
        metrics.contains(&format!(
            "liveness_vendor_retries_total{{vendor=\"didit\"}} {limited}"
        )),
        "{metrics}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_biometric_data_or_media_url_leaves_a_didit_job() {
    let t = TestEnv::new("didit-leak", "").await;
    let key = "dk-LEAKCHECK-7a1c";
    let emu = liveness_worker::emulator::Emulator::start(
        liveness_worker::emulator::EmulatorConfig::local(key),
    )
    .await
    .unwrap();
    // The workflow shape carries every field the adapter must drop.
    let full = samples::png(
        31,
        20_000,
        Some(
            r#"{"face":90,"didit_method":"ACTIVE_3D","warnings":["DUPLICATED_FACE","AGE_BELOW_MINIMUM"]}"#,
        ),
    );
    let attack = samples::png(
        32,
        20_000,
        Some(r#"{"face":70,"didit_status":"Declined","warnings":["LIVENESS_FACE_ATTACK"]}"#),
    );
    let no_face = samples::png(
        33,
        20_000,
        Some(r#"{"no_face":true,"didit_method":"FLASHING"}"#),
    );
    let throttled = samples::png(
        34,
        20_000,
        Some(r#"{"error":429,"error_times":1,"face":50}"#),
    );
    let rejected = samples::png(35, 20_000, Some(r#"{"error":400}"#));

    // What Didit really answers for the first image: the needles.
    let raw: Value = reqwest::Client::new()
        .post(format!("{}/v3/passive-liveness/", emu.base_url()))
        .header("x-api-key", key)
        .multipart(
            reqwest::multipart::Form::new().part(
                "user_image",
                reqwest::multipart::Part::bytes(full.clone())
                    .file_name("f.png")
                    .mime_str("image/png")
                    .unwrap(),
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let l = &raw["liveness"];
    let entity = &l["user_image"]["entities"][0];
    let mut needles: Vec<String> = [
        "\"reference_image\"",
        "\"video_url\"",
        "\"age_estimation\"",
        "\"age\"",
        "\"gender\"",
        "\"race\"",
        "\"bbox\"",
        "\"entities\"",
        "\"matches\"",
        "\"additional_data\"",
        liveness_worker::emulator::DIDIT_MEDIA_BASE,
    ]
    .map(str::to_owned)
    .to_vec();
    for v in [
        &l["reference_image"],
        &l["video_url"],
        &l["warnings"][0]["additional_data"],
        &l["warnings"][1]["additional_data"],
    ] {
        needles.push(v.as_str().expect("the emulator sends it").to_owned());
    }
    needles.push(format!("\"{}\"", entity["gender"].as_str().unwrap()));
    needles.push(format!("\"{}\"", entity["race"].as_str().unwrap()));
    assert!(entity["age"].is_number() && l["age_estimation"].is_number());

    let mut uris = Vec::new();
    for (name, img) in [
        ("full", &full),
        ("attack", &attack),
        ("noface", &no_face),
        ("throttled", &throttled),
        ("rejected", &rejected),
    ] {
        uris.push((name, t.upload(&format!("{name}.png"), img.clone()).await));
    }

    let worker = t
        .spawn_worker_process(&[
            ("LIVENESS_PROVIDERS__DEFAULT_FACE", "didit".into()),
            ("LIVENESS_PROVIDERS__DIDIT__BASE_URL", emu.base_url()),
            ("LIVENESS_PROVIDERS__DIDIT__API_KEY", key.to_string()),
            ("LIVENESS_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ])
        .await;

    for (name, uri) in &uris {
        let mut job = t.job(&format!("leak-{name}"), "face", uri);
        job["metadata"] = json!({"vendor_data": "applicant-leak"});
        t.publish(&job).await;
    }
    let results = t
        .take(
            &t.names.results_queue.clone().unwrap(),
            4,
            Duration::from_secs(60),
        )
        .await;
    let dead = t
        .take(&t.names.dead_queue.clone(), 1, Duration::from_secs(60))
        .await;
    let verdicts: std::collections::BTreeMap<String, String> = results
        .iter()
        .map(|(_, _, v)| {
            (
                v["job_id"].as_str().unwrap().to_owned(),
                v["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(verdicts["leak-full"], "review");
    assert_eq!(verdicts["leak-attack"], "spoof");
    assert_eq!(verdicts["leak-noface"], "inconclusive");
    assert_eq!(verdicts["leak-throttled"], "live");
    assert_eq!(dead[0].2["failure"]["class"], "vendor_rejected_request");
    let metrics = worker.metrics().await;

    let logs = worker.stop().await;
    let job_lines = logs
        .lines()
        .filter(|l| l.contains("\"job_id\":\"leak-"))
        .count();
    assert!(job_lines >= 6, "expected the jobs' log lines:\n{logs}");
    assert!(
        logs.contains("Vendor call failed, retrying"),
        "the 429 retry is logged:\n{logs}"
    );

    // JSON-escaped text (a body logged as a string) reads the same once unescaped.
    let outputs = [("logs".to_owned(), logs), ("metrics".to_owned(), metrics)]
        .into_iter()
        .chain(
            results
                .iter()
                .chain(&dead)
                .map(|(rk, _, v)| (format!("message {rk}"), v.to_string())),
        );
    for (what, text) in outputs {
        let text = text.replace("\\\"", "\"");
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{needle} leaked into {what}"
            );
        }
    }
    t.finish().await;
}
