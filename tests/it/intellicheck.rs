//! Intellicheck through RabbitMQ, S3 and the emulator: the whole signed
//! flow per attempt, sides in the result, every error in its class, and
//! one submission per side per attempt.

use crate::harness::{TestEnv, wait_for};
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use serde_json::{Value, json};

fn intellicheck_job(t: &TestEnv, id: &str, image: &str) -> Value {
    let mut j = t.job(id, "document", image);
    j["provider"] = json!("intellicheck");
    j
}

/// `PUT /_admin/intellicheck/options` on this test's emulator.
async fn options(t: &TestEnv, body: Value) {
    let r = reqwest::Client::new()
        .put(format!(
            "{}/_admin/intellicheck/options",
            t.emulator.base_url()
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
}

async fn stats(t: &TestEnv) -> Value {
    reqwest::get(format!(
        "{}/_admin/intellicheck/stats",
        t.emulator.base_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

async fn submissions(t: &TestEnv, image: &[u8]) -> u64 {
    t.calls().await["intellicheck"]["by_image"][sha256_hex(image)]
        .as_u64()
        .unwrap_or(0)
}

fn failure(v: &Value) -> (&str, bool) {
    (
        v["failure"]["class"].as_str().unwrap(),
        v["failure"]["retryable"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_every_verdict_by_side_with_exact_scores_and_reasons() {
    let t = TestEnv::start("ic-verdicts", "").await;
    // Exactly two "not ready" answers per transaction, counted rather than
    // timed: the adapter's polling is always exercised.
    options(&t, json!({"not_ready_polls": 2, "processing_ms": 0})).await;
    let live = samples::png(
        1,
        4000,
        Some(r#"{"screen_replay":93,"printed_copy":87.1,"portrait_substitution":50}"#),
    );
    let spoof = samples::jpeg(
        2,
        4000,
        Some(r#"{"screen_replay":97,"printed_copy":12,"portrait_substitution":80}"#),
    );
    let none = samples::png(
        3,
        4000,
        Some(r#"{"not_performed":["screen_replay","printed_copy","portrait_substitution"]}"#),
    );
    let partial = samples::png(
        4,
        4000,
        Some(r#"{"screen_replay":88,"not_performed":["portrait_substitution"]}"#),
    );
    let front = samples::png(
        5,
        4000,
        Some(
            r#"{"screen_replay":90,"printed_copy":90,"portrait_substitution":90,"warnings":["301"]}"#,
        ),
    );
    let back = samples::jpeg(
        6,
        4000,
        Some(
            r#"{"screen_replay":40,"printed_copy":95,"portrait_substitution":70,"not_performed":["portrait_substitution"]}"#,
        ),
    );
    let mut uris = Vec::new();
    for (name, bytes) in [
        ("live.png", &live),
        ("spoof.jpg", &spoof),
        ("none.png", &none),
        ("partial.png", &partial),
        ("front.png", &front),
        ("back.jpg", &back),
    ] {
        uris.push(t.upload(name, bytes.clone()).await);
    }
    t.publish(&intellicheck_job(&t, "ic-live", &uris[0])).await;
    t.publish(&intellicheck_job(&t, "ic-spoof", &uris[1])).await;
    t.publish(&intellicheck_job(&t, "ic-none", &uris[2])).await;
    let mut p = intellicheck_job(&t, "ic-partial", &uris[3]);
    p["signals"] = json!(["screen_replay", "portrait_substitution"]);
    t.publish(&p).await;
    let mut two_sided = intellicheck_job(&t, "ic-back", &uris[4]);
    two_sided["back_image"] = json!(uris[5]);
    t.publish(&two_sided).await;

    let r = t.results(5).await;

    let (rk, _, v) = &r["ic-live"];
    assert_eq!(rk, "document.live");
    assert_eq!(v["provider"], "intellicheck");
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["score"], 0.5);
    assert_eq!(v["attempts"], 1);
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","side":"front","verdict":"live","score":0.93,"vendor_score":0.93,"threshold":0.5},
            {"name":"printed_copy","side":"front","verdict":"live","score":0.871,"vendor_score":0.871,"threshold":0.5},
            {"name":"portrait_substitution","side":"front","verdict":"live","score":0.5,"vendor_score":0.5,"threshold":0.5}
        ])
    );
    assert_eq!(
        v["reasons"],
        json!([
            "screen_replay (front) probability 0.93 at or above threshold 0.5",
            "printed_copy (front) probability 0.871 at or above threshold 0.5",
            "portrait_substitution (front) probability 0.5 at or above threshold 0.5"
        ])
    );
    assert_eq!(v["warnings"], json!([]));
    assert!(
        v["vendor"]["transaction_id"]
            .as_str()
            .unwrap()
            .contains("-ic")
    );

    let (rk, _, v) = &r["ic-spoof"];
    assert_eq!(rk, "document.spoof");
    assert_eq!(v["score"], 0.12);
    assert_eq!(
        v["reasons"],
        json!(["printed_copy (front) probability 0.12 below threshold 0.5"])
    );
    assert_eq!(
        v["signals"][1],
        json!({"name":"printed_copy","side":"front","verdict":"spoof","score":0.12,"vendor_score":0.12,"threshold":0.5})
    );

    let (rk, _, v) = &r["ic-none"];
    assert_eq!(rk, "document.inconclusive");
    assert_eq!(v["score"], Value::Null);
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","side":"front","verdict":"not_performed","score":null,"vendor_score":null},
            {"name":"printed_copy","side":"front","verdict":"not_performed","score":null,"vendor_score":null},
            {"name":"portrait_substitution","side":"front","verdict":"not_performed","score":null,"vendor_score":null}
        ])
    );
    assert_eq!(
        v["reasons"],
        json!([
            "screen_replay (front) was not performed by intellicheck (live 2, probability null)",
            "printed_copy (front) was not performed by intellicheck (live 2, probability null)",
            "portrait_substitution (front) was not performed by intellicheck (live 2, probability null)"
        ])
    );

    let (rk, _, v) = &r["ic-partial"];
    assert_eq!(rk, "document.live");
    assert_eq!(v["score"], 0.88);
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","side":"front","verdict":"live","score":0.88,"vendor_score":0.88,"threshold":0.5},
            {"name":"portrait_substitution","side":"front","verdict":"not_performed","score":null,"vendor_score":null}
        ])
    );

    let (rk, _, v) = &r["ic-back"];
    assert_eq!(rk, "document.spoof");
    assert_eq!(v["score"], 0.4);
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","side":"front","verdict":"live","score":0.9,"vendor_score":0.9,"threshold":0.5},
            {"name":"printed_copy","side":"front","verdict":"live","score":0.9,"vendor_score":0.9,"threshold":0.5},
            {"name":"portrait_substitution","side":"front","verdict":"live","score":0.9,"vendor_score":0.9,"threshold":0.5},
            {"name":"screen_replay","side":"back","verdict":"spoof","score":0.4,"vendor_score":0.4,"threshold":0.5},
            {"name":"printed_copy","side":"back","verdict":"live","score":0.95,"vendor_score":0.95,"threshold":0.5},
            {"name":"portrait_substitution","side":"back","verdict":"not_performed","score":null,"vendor_score":null}
        ])
    );
    assert_eq!(
        v["reasons"],
        json!([
            "screen_replay (back) probability 0.4 below threshold 0.5",
            "portrait_substitution (back) was not performed by intellicheck (live 2, probability null)"
        ])
    );
    assert_eq!(
        v["warnings"],
        json!([{"code":"image_quality_301","severity":"warning","message":"the back of the document was sent as the front (Back image sent to submit-front)"}])
    );
    // The result describes the front image; the back was verified too.
    assert_eq!(v["image"]["sha256"], sha256_hex(&front));

    // One submission per side per attempt: five fronts and one back.
    let calls = t.calls().await;
    assert_eq!(calls["intellicheck"]["submissions"], 6);
    for img in [&live, &spoof, &none, &partial, &front, &back] {
        assert_eq!(submissions(&t, img).await, 1);
    }
    assert_eq!(
        calls["argos"]["submissions"], 0,
        "the job's provider was used"
    );
    let s = stats(&t).await;
    assert_eq!(s["transactions"], 5);
    assert_eq!(
        s["not_ready_answers"], 10,
        "two polls per transaction before results"
    );
    assert_eq!(s["results_answers"], 5);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_every_documented_variant_reads_the_same() {
    // Intellicheck as the default document vendor: jobs name no provider.
    let t = TestEnv::start(
        "ic-variants",
        "[providers]\ndefault_document = \"intellicheck\"",
    )
    .await;
    let mut n = 0;
    for key in [
        "documentLivenessIdRnD",
        "document_livenessIdRnD",
        "document_liveness",
    ] {
        for (live, code) in [("integer", "string"), ("string", "integer")] {
            options(&t, json!({"key": key, "live": live, "code": code})).await;
            n += 1;
            let img = samples::png(
                100 + n,
                3000,
                Some(
                    r#"{"screen_replay":61.25,"printed_copy":49.9,"not_performed":["portrait_substitution"],"warnings":["400"]}"#,
                ),
            );
            let uri = t.upload(&format!("v{n}.png"), img).await;
            let id = format!("ic-variant-{n}");
            t.publish(&t.job(&id, "document", &uri)).await;
            let r = t.results(1).await;
            let v = &r[&id].2;
            assert_eq!(v["provider"], "intellicheck", "{key} {live} {code}");
            assert_eq!(v["verdict"], "spoof", "{key} {live} {code}");
            assert_eq!(
                v["signals"],
                json!([
                    {"name":"screen_replay","side":"front","verdict":"live","score":0.613,"vendor_score":0.613,"threshold":0.5},
                    {"name":"printed_copy","side":"front","verdict":"spoof","score":0.499,"vendor_score":0.499,"threshold":0.5},
                    {"name":"portrait_substitution","side":"front","verdict":"not_performed","score":null,"vendor_score":null}
                ]),
                "{key} {live} {code}"
            );
            assert_eq!(
                v["warnings"],
                json!([{"code":"image_quality_400","severity":"error","message":"the front of the document was sent via submit-back (Front of document sent via submit-back)"}]),
                "{key} {live} {code}"
            );
        }
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_vendor_errors_land_in_their_class() {
    let t = TestEnv::start("ic-errors", "").await;
    let scores = r#""screen_replay":95,"printed_copy":95,"portrait_substitution":95"#;
    // success:false once (in the liveness object of /get-results), with a
    // back image: the failed attempt submitted both sides, so did the retry.
    let flaky_front = samples::png(
        1,
        2000,
        Some(&format!(r#"{{"error":0,"error_times":1,{scores}}}"#)),
    );
    let flaky_back = samples::png(2, 2000, Some(&format!("{{{scores}}}")));
    // success:false every time: the budget runs out.
    let broken = samples::png(3, 2000, Some(r#"{"error":0}"#));
    // HTTP 400 at /submit-front: our request was wrong.
    let rejected = samples::png(4, 2000, Some(r#"{"error":400}"#));
    // 503 then 429 (with Retry-After): transient, recovered.
    let unavailable = samples::png(
        5,
        2000,
        Some(&format!(r#"{{"error":503,"error_times":1,{scores}}}"#)),
    );
    let limited = samples::png(
        6,
        2000,
        Some(&format!(r#"{{"error":429,"error_times":1,{scores}}}"#)),
    );
    let uris = [
        t.upload("flaky-front.png", flaky_front.clone()).await,
        t.upload("flaky-back.png", flaky_back.clone()).await,
        t.upload("broken.png", broken.clone()).await,
        t.upload("rejected.png", rejected.clone()).await,
        t.upload("unavailable.png", unavailable.clone()).await,
        t.upload("limited.png", limited.clone()).await,
    ];
    let mut flaky = intellicheck_job(&t, "ic-flaky", &uris[0]);
    flaky["back_image"] = json!(uris[1]);
    t.publish(&flaky).await;
    t.publish(&intellicheck_job(&t, "ic-broken", &uris[2]))
        .await;
    t.publish(&intellicheck_job(&t, "ic-rejected", &uris[3]))
        .await;
    t.publish(&intellicheck_job(&t, "ic-unavailable", &uris[4]))
        .await;
    t.publish(&intellicheck_job(&t, "ic-limited", &uris[5]))
        .await;
    // A face check is not Intellicheck's to do.
    let mut face = intellicheck_job(&t, "ic-face", &uris[5]);
    face["check"] = json!("face");
    t.publish(&face).await;

    let r = t.results(3).await;
    for id in ["ic-flaky", "ic-unavailable", "ic-limited"] {
        let v = &r[id].2;
        assert_eq!(v["verdict"], "live", "{id}");
        assert_eq!(v["attempts"], 2, "{id}: the failed attempt counts");
    }
    assert_eq!(r["ic-flaky"].2["signals"].as_array().unwrap().len(), 6);
    // One submission per side per attempt.
    assert_eq!(submissions(&t, &flaky_front).await, 2);
    assert_eq!(submissions(&t, &flaky_back).await, 2);
    assert_eq!(submissions(&t, &unavailable).await, 2);
    assert_eq!(submissions(&t, &limited).await, 2);

    let d = t.dead_letters(3).await;
    let v = &d["ic-face"].2;
    assert_eq!(failure(v), ("invalid_job", false));
    assert!(
        v["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("provider intellicheck cannot do face checks")
    );
    assert_eq!(v["attempts"], 0);
    let v = &d["ic-rejected"].2;
    assert_eq!(failure(v), ("vendor_rejected_request", false));
    assert_eq!(v["failure"]["provider"], "intellicheck");
    assert_eq!(v["failure"]["http_status"], 400);
    assert_eq!(v["attempts"], 1);
    let msg = v["failure"]["message"].as_str().unwrap();
    assert!(
        msg.contains("intellicheck answered HTTP 400 at /api/v1/submit-front: \"Bad Request\""),
        "{msg}"
    );
    assert_eq!(submissions(&t, &rejected).await, 1);

    let v = &d["ic-broken"].2;
    assert_eq!(failure(v), ("retries_exhausted", true));
    assert_eq!(v["failure"]["vendor_code"], "success=false");
    // Two ladder steps, two attempts per delivery: three deliveries.
    assert_eq!(v["attempts"], 6);
    assert_eq!(submissions(&t, &broken).await, 6);
    let msg = v["failure"]["message"].as_str().unwrap();
    assert!(
        msg.contains("intellicheck could not process transaction")
            && msg.contains("success false: Document liveness processing failed"),
        "{msg}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_success_false_at_submit_front_and_response_signatures() {
    let t = TestEnv::start("ic-submit-false", "").await;
    options(&t, json!({"success_false_at": "submit_front"})).await;
    let front = samples::png(
        1,
        2000,
        Some(
            r#"{"error":0,"error_times":1,"screen_replay":70,"printed_copy":70,"portrait_substitution":70}"#,
        ),
    );
    let back = samples::png(2, 2000, Some(r#"{"screen_replay":70}"#));
    let mut job = intellicheck_job(&t, "ic-early", &t.upload("f.png", front.clone()).await);
    job["back_image"] = json!(t.upload("b.png", back.clone()).await);
    t.publish(&job).await;
    let r = t.results(1).await;
    assert_eq!(r["ic-early"].2["verdict"], "live");
    assert_eq!(r["ic-early"].2["attempts"], 2);
    // The failed attempt stopped at /submit-front: the back went once.
    assert_eq!(submissions(&t, &front).await, 2);
    assert_eq!(submissions(&t, &back).await, 1);

    // Unsigned answers are accepted (the default "verify" checks only
    // signatures that are present) ...
    options(&t, json!({"signing": "absent"})).await;
    let plain = samples::png(3, 2000, Some(r#"{"printed_copy":20}"#));
    let uri = t.upload("plain.png", plain).await;
    t.publish(&intellicheck_job(&t, "ic-unsigned", &uri)).await;
    let r = t.results(1).await;
    assert_eq!(r["ic-unsigned"].2["verdict"], "spoof");

    // ... while a signature that does not verify discards the answer: a
    // transient failure, until the budget runs out.
    options(&t, json!({"signing": "wrong"})).await;
    let img = samples::png(4, 2000, Some(r#"{"printed_copy":90}"#));
    let uri = t.upload("forged.png", img.clone()).await;
    t.publish(&intellicheck_job(&t, "ic-forged", &uri)).await;
    let d = t.dead_letters(1).await;
    let v = &d["ic-forged"].2;
    assert_eq!(failure(v), ("retries_exhausted", true));
    let msg = v["failure"]["message"].as_str().unwrap();
    assert!(
        msg.contains("intellicheck's answer to /api/v1/start failed signature verification"),
        "{msg}"
    );
    // Nothing was submitted: every attempt stopped at the first answer.
    assert_eq!(submissions(&t, &img).await, 0);
    assert_eq!(v["attempts"], 6);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_refused_credentials_park_jobs_and_dead_letter_nothing() {
    let t = TestEnv::start("ic-creds", "").await;
    let creds = format!("{}/_admin/credentials/intellicheck", t.emulator.base_url());
    let admin = reqwest::Client::new();
    admin
        .post(&creds)
        .json(&json!({"valid": false}))
        .send()
        .await
        .unwrap();
    let img = samples::png(
        1,
        2000,
        Some(r#"{"screen_replay":80,"printed_copy":80,"portrait_substitution":80}"#),
    );
    let uri = t.upload("parked.png", img.clone()).await;
    t.publish(&intellicheck_job(&t, "ic-parked", &uri)).await;
    wait_for("intellicheck to pause", 20, async || {
        t.vendor_flag("vendor_paused", "intellicheck").await
    })
    .await;
    // Refused at /start (403: our signature no longer verifies): no image went out.
    assert_eq!(submissions(&t, &img).await, 0);
    admin
        .post(&creds)
        .json(&json!({"valid": true}))
        .send()
        .await
        .unwrap();
    let r = t.results(1).await;
    assert_eq!(r["ic-parked"].2["verdict"], "live");
    assert_eq!(submissions(&t, &img).await, 1);
    assert_eq!(
        t.depth(&t.names.dead_queue.clone()).await,
        0,
        "nothing dead-lettered for refused credentials"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_wrong_signing_key_or_customer_pauses_the_vendor() {
    for (tag, section) in [
        ("ic-wrong-key", "signing_key = \"not-the-key\""),
        ("ic-wrong-customer", "customer_id = \"someone-else\""),
    ] {
        let t = TestEnv::start(tag, &format!("[providers.intellicheck]\n{section}")).await;
        let uri = t
            .upload(
                "x.png",
                samples::png(1, 2000, Some(r#"{"printed_copy":80}"#)),
            )
            .await;
        t.publish(&intellicheck_job(&t, "ic-refused", &uri)).await;
        wait_for("intellicheck to pause", 20, async || {
            t.vendor_flag("vendor_paused", "intellicheck").await
        })
        .await;
        // Parked on the ladder again and again, never dead-lettered.
        wait_for("the job to be parked twice", 20, async || {
            let m = t.probe("/metrics").await.1;
            m.lines().any(|l| {
                l.starts_with(r#"liveness_vendor_request_duration_seconds_count{vendor="intellicheck",outcome="credentials"}"#)
                    && l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) >= Some(2.0)
            })
        })
        .await;
        assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0, "{tag}");
        assert_eq!(t.calls().await["intellicheck"]["submissions"], 0, "{tag}");
        t.finish().await;
    }
}

/// The emulator holds requests to the vendor's rules: customer id, HMAC
/// signature, envelope shape, transaction order; every image-carrying
/// request counts as a submission, even a refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_emulator_checks_requests_like_the_vendor() {
    use base64::Engine as _;
    use liveness_worker::emulator::{Emulator, EmulatorConfig};
    use liveness_worker::providers::intellicheck::wire;
    liveness_worker::install_crypto_provider();
    let key = "emu-signing-key";
    let emu = Emulator::start(EmulatorConfig::local("argos").with_intellicheck("cust-1", key))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", emu.base_url());
    // (status, detail or decoded private_data, signature header)
    let send = async |path: &str, body: Vec<u8>, customer: Option<&str>, sig_key: Option<&str>| {
        let mut req = http.post(url(path)).body(body.clone());
        if let Some(c) = customer {
            req = req.header("customer-id", c);
        }
        if let Some(k) = sig_key {
            req = req.header("signature", wire::signature(k.as_bytes(), &body));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let sig = r
            .headers()
            .get("signature")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = r.bytes().await.unwrap();
        let v = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v["detail"].clone(),
            Err(_) => {
                assert!(
                    wire::signature_matches(key.as_bytes(), &bytes, sig.as_deref().unwrap()),
                    "answers are signed with the signing key"
                );
                wire::decode(&bytes).unwrap().private_data
            }
        };
        (status, v)
    };
    let ok = |b: Vec<u8>| (b, Some("cust-1"), Some(key));
    let env = |private: Value| wire::encode(&json!({}), &private);
    let start = env(json!({"document_type": "other", "signals": ["document_liveness_idrnd"]}));

    // Authentication: customer id (401), then the signature (403).
    let (s, d) = send(wire::PATH_START, start.clone(), None, Some(key)).await;
    assert_eq!((s, d), (401, json!("Unknown or missing customer-id")));
    let (s, d) = send(wire::PATH_START, start.clone(), Some("cust-2"), Some(key)).await;
    assert_eq!((s, d), (401, json!("Unknown or missing customer-id")));
    let (s, d) = send(wire::PATH_START, start.clone(), Some("cust-1"), None).await;
    assert_eq!((s, d), (403, json!("Missing signature header")));
    let (s, d) = send(
        wire::PATH_START,
        start.clone(),
        Some("cust-1"),
        Some("other"),
    )
    .await;
    assert_eq!((s, d), (403, json!("Signature verification failed")));

    // Envelope validation.
    for (body, want) in [
        (
            b"{not base64}".to_vec(),
            "Request body must be base64-encoded JSON",
        ),
        (
            base64::engine::general_purpose::STANDARD
                .encode("{oops")
                .into_bytes(),
            "Decoded request body is not valid JSON",
        ),
        (
            base64::engine::general_purpose::STANDARD
                .encode(r#"{"private_data":{}}"#)
                .into_bytes(),
            "public_data is required (it may be empty)",
        ),
        (
            base64::engine::general_purpose::STANDARD
                .encode(r#"{"public_data":{},"private_data":[]}"#)
                .into_bytes(),
            "private_data must be an object",
        ),
        (env(json!({})), "document_type is required"),
        (
            env(json!({"document_type": "other", "signals": "document_liveness_idrnd"})),
            "signals must be an array",
        ),
        (
            env(json!({"document_type": "other", "signals": ["liveness"]})),
            "Unknown signal",
        ),
    ] {
        let (b, c, k) = ok(body);
        let (s, d) = send(wire::PATH_START, b, c, k).await;
        assert_eq!(s, 400, "{d}");
        assert!(d.as_str().unwrap().starts_with(want), "{d} vs {want}");
    }

    // The flow, in order.
    let (b, c, k) = ok(start.clone());
    let (s, started) = send(wire::PATH_START, b, c, k).await;
    assert_eq!(s, 200);
    assert_eq!(
        started["signals"],
        json!(["document_liveness_idrnd", "ocr_scan"]),
        "document type other adds ocr_scan"
    );
    assert!(started["capture_expiration_utc"].as_str().unwrap().len() == 19);
    let txn = started["transaction_id"].as_str().unwrap().to_owned();
    let tx = env(json!({"transaction_id": txn}));
    let (b, c, k) = ok(tx.clone());
    let (s, d) = send(wire::PATH_END, b, c, k).await;
    assert_eq!(
        (s, d),
        (
            400,
            json!("No front image was submitted for this transaction")
        )
    );
    let (b, c, k) = ok(tx.clone());
    let (s, d) = send(wire::PATH_GET_RESULTS, b, c, k).await;
    assert_eq!(
        (s, d),
        (400, json!("Transaction has not ended; call /end first"))
    );
    let (b, c, k) = ok(env(json!({"transaction_id": "nope", "front": "AAAA"})));
    let (s, d) = send(wire::PATH_SUBMIT_FRONT, b, c, k).await;
    assert_eq!((s, d), (400, json!("Unknown transaction_id")));
    let (b, c, k) = ok(env(json!({"transaction_id": txn})));
    let (s, d) = send(wire::PATH_SUBMIT_FRONT, b, c, k).await;
    assert_eq!((s, d), (400, json!("private_data.front is required")));
    let (b, c, k) = ok(env(json!({"transaction_id": txn, "front": "%%%"})));
    let (s, d) = send(wire::PATH_SUBMIT_FRONT, b, c, k).await;
    assert_eq!(
        (s, d),
        (400, json!("private_data.front is not valid base64"))
    );
    let bad_scenario = samples::png(1, 1000, Some("{nope"));
    let (b, c, k) = ok(wire::encode_image_submission(&txn, "front", &bad_scenario));
    let (s, d) = send(wire::PATH_SUBMIT_FRONT, b, c, k).await;
    assert_eq!(s, 400);
    assert!(
        d.as_str().unwrap().starts_with("invalid liveness-scenario"),
        "{d}"
    );

    let image = samples::png(2, 1000, Some(r#"{"screen_replay":70,"printed_copy":30}"#));
    // Refused for its signature, yet counted: the image was sent.
    let body = wire::encode_image_submission(&txn, "front", &image);
    let (s, _) = send(
        wire::PATH_SUBMIT_FRONT,
        body.clone(),
        Some("cust-1"),
        Some("x"),
    )
    .await;
    assert_eq!(s, 403);
    let (s, d) = send(wire::PATH_SUBMIT_FRONT, body, Some("cust-1"), Some(key)).await;
    assert_eq!((s, &d["success"]), (200, &json!(true)));
    let (b, c, k) = ok(tx.clone());
    assert_eq!(send(wire::PATH_END, b, c, k).await.0, 200);
    let (b, c, k) = ok(wire::encode_image_submission(&txn, "back", &image));
    let (s, d) = send(wire::PATH_SUBMIT_BACK, b, c, k).await;
    assert_eq!(
        (s, d),
        (400, json!("Transaction has ended; start a new one"))
    );
    // Not ready right after /end (processing time 200 ms by default, and
    // one counted "not ready" answer on top), then the results.
    let admin = http
        .put(url("/_admin/intellicheck/options"))
        .json(&json!({"not_ready_polls": 1, "key": "document_liveness", "live": "string"}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 204);
    let (b, c, k) = ok(tx.clone());
    let (s, d) = send(wire::PATH_GET_RESULTS, b, c, k).await;
    assert_eq!(
        (s, d),
        (
            200,
            json!({"transaction_id": txn, "status": "processing", "message": "Results are not ready yet"})
        )
    );
    let results = loop {
        let (b, c, k) = ok(tx.clone());
        let (s, d) = send(wire::PATH_GET_RESULTS, b, c, k).await;
        assert_eq!(s, 200);
        if d.get("document_liveness").is_some() {
            break d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        results["document_liveness"]["data"],
        json!({"front": {
            "screenReplay": {"threshold": 0.5, "live": "1", "probability": 0.7},
            "printedCopy": {"threshold": 0.5, "live": "0", "probability": 0.3},
            "portraitSubstitution": results["document_liveness"]["data"]["front"]["portraitSubstitution"],
            "live": "0"
        }, "back": null})
    );
    let calls: Value = reqwest::get(url("/_admin/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // "AAAA" for an unknown transaction, the bad-scenario image, the refused
    // and the accepted submission, the late back: all carried an image.
    assert_eq!(calls["intellicheck"]["submissions"], 5);
    assert_eq!(calls["intellicheck"]["by_image"][sha256_hex(&image)], 3);
}

/// The real binary, configured by environment with Intellicheck as the
/// document vendor and debug JSON logs: neither the signing key nor image
/// bytes (raw, base64 or hex) reach logs, results, dead letters or metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_signing_key_and_images_never_leak_from_the_binary() {
    use base64::Engine as _;
    use std::time::Duration;
    let t = TestEnv::new("ic-leak", "").await;
    let signing_key = "ic-LEAKCHECK-5b1e77d02c";
    let emu = liveness_worker::emulator::Emulator::start(
        liveness_worker::emulator::EmulatorConfig::local("unused-argos-key")
            .with_intellicheck("leak-customer", signing_key),
    )
    .await
    .unwrap();
    let scores = r#""screen_replay":95,"printed_copy":95,"portrait_substitution":95"#;
    let front = samples::png(
        81,
        50_000,
        Some(&format!(r#"{{"error":0,"error_times":1,{scores}}}"#)),
    );
    let back = samples::jpeg(82, 50_000, Some(&format!("{{{scores}}}")));
    let rejected = samples::png(83, 50_000, Some(r#"{"error":400}"#));
    let mut job = t.job(
        "ic-leak-1",
        "document",
        &t.upload("f.png", front.clone()).await,
    );
    job["back_image"] = json!(t.upload("b.jpg", back.clone()).await);
    let bad = t.job(
        "ic-leak-bad",
        "document",
        &t.upload("r.png", rejected.clone()).await,
    );
    let worker = t
        .spawn_worker_process(&[
            (
                "LIVENESS_PROVIDERS__DEFAULT_DOCUMENT",
                "intellicheck".into(),
            ),
            ("LIVENESS_PROVIDERS__INTELLICHECK__BASE_URL", emu.base_url()),
            (
                "LIVENESS_PROVIDERS__INTELLICHECK__CUSTOMER_ID",
                "leak-customer".into(),
            ),
            (
                "LIVENESS_PROVIDERS__INTELLICHECK__SIGNING_KEY",
                signing_key.into(),
            ),
            (
                "LIVENESS_PROVIDERS__INTELLICHECK__POLL_INITIAL_INTERVAL",
                "50ms".into(),
            ),
        ])
        .await;
    t.publish(&job).await;
    t.publish(&bad).await;
    let results = t
        .take(
            &t.names.results_queue.clone().unwrap(),
            1,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        results[0].2["attempts"], 2,
        "the success:false attempt counted"
    );
    assert_eq!(results[0].2["provider"], "intellicheck");
    let dead = t
        .take(&t.names.dead_queue.clone(), 1, Duration::from_secs(60))
        .await;
    assert_eq!(dead[0].2["failure"]["class"], "vendor_rejected_request");
    let metrics = worker.metrics().await;
    let logs = worker.stop().await;
    assert!(
        logs.contains("Vendor call failed"),
        "the retry was logged:\n{logs}"
    );

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<(String, String)> = vec![("signing key".into(), signing_key.into())];
    for (name, img) in [("front", &front), ("back", &back), ("rejected", &rejected)] {
        let chunk = &img[img.len() / 2..img.len() / 2 + 30];
        needles.push((
            format!("{name} bytes (base64)"),
            b64.encode(chunk)[4..36].to_owned(),
        ));
        needles.push((format!("{name} bytes (hex)"), hex::encode(chunk)));
        // The image as it travels: base64 inside the base64 envelope, at
        // each of the three alignments it can have there.
        let inner = b64.encode(&img[..3000]);
        let travelling: Vec<String> = (0..3)
            .map(|shift| b64.encode(&inner.as_bytes()[1200 + shift..1500])[8..60].to_owned())
            .collect();
        let body = liveness_worker::providers::intellicheck::wire::encode_image_submission(
            "some-transaction",
            "front",
            img,
        );
        let body = String::from_utf8(body).unwrap();
        assert!(
            travelling.iter().any(|n| body.contains(n.as_str())),
            "the envelope needles match a real request body"
        );
        for n in travelling {
            needles.push((format!("{name} envelope"), n));
        }
    }
    let outputs = [("logs".to_owned(), logs), ("metrics".to_owned(), metrics)]
        .into_iter()
        .chain(
            results
                .iter()
                .chain(&dead)
                .map(|(rk, _, v)| (format!("message {rk}"), v.to_string())),
        );
    for (what, text) in outputs {
        for (name, needle) in &needles {
            assert!(!text.contains(needle.as_str()), "{name} leaked into {what}");
        }
    }
    t.finish().await;
}

/// The adapter alone against the emulator: each `response_signatures`
/// policy against signed, unsigned and wrongly signed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_adapter_response_signature_policies() {
    use liveness_worker::config::Config;
    use liveness_worker::domain::{Check, SignalName};
    use liveness_worker::emulator::{Emulator, EmulatorConfig};
    use liveness_worker::providers::intellicheck::Intellicheck;
    use liveness_worker::providers::{Image, Provider, VendorRequest};
    liveness_worker::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::local("a").with_intellicheck("c", "signing"))
        .await
        .unwrap();
    let bytes = samples::png(
        9,
        2000,
        Some(r#"{"screen_replay":75,"printed_copy":75,"portrait_substitution":75}"#),
    );
    let image = Image {
        uri: "s3://b/k".into(),
        sha256: sha256_hex(&bytes),
        bytes: bytes.into(),
        content_type: "image/png",
    };
    let job_id = liveness_worker::domain::job::JobId::parse("j").unwrap();
    let req = VendorRequest {
        job_id: &job_id,
        check: Check::Document,
        signals: &SignalName::DOCUMENT,
        image: &image,
        back_image: None,
        metadata: None,
    };
    let adapter = |policy: &str| {
        let cfg = Config::from_toml(&format!(
            "[providers.intellicheck]\nbase_url = \"{}\"\ncustomer_id = \"c\"\nsigning_key = \"signing\"\npoll_initial_interval = \"20ms\"\nresponse_signatures = \"{policy}\"",
            emu.base_url()
        ))
        .unwrap();
        Intellicheck::new(
            liveness_worker::providers::VendorHttp::new(&cfg.providers).unwrap(),
            &cfg.providers.intellicheck,
        )
        .unwrap()
    };
    let admin = async |signing: &str| {
        let r = reqwest::Client::new()
            .put(format!("{}/_admin/intellicheck/options", emu.base_url()))
            .json(&json!({ "signing": signing }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    };
    for (signing, policy, ok) in [
        ("valid", "verify", true),
        ("valid", "require", true),
        ("absent", "verify", true),
        ("absent", "require", false),
        ("absent", "ignore", true),
        ("wrong", "verify", false),
        ("wrong", "require", false),
        ("wrong", "ignore", true),
    ] {
        admin(signing).await;
        let out = adapter(policy).verify(&req).await;
        match out {
            Ok(a) => {
                assert!(ok, "{signing}/{policy} should fail");
                assert_eq!(a.signals.len(), 3);
                assert_eq!(a.score(), Some(0.75));
            }
            Err(e) => {
                assert!(!ok, "{signing}/{policy}: {e}");
                assert!(e.is_outage(), "{e}");
                let want = if signing == "wrong" {
                    "failed signature verification"
                } else {
                    "without a signature header"
                };
                assert!(e.message.contains(want), "{}", e.message);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellicheck_rate_limit_is_waited_out_within_the_transaction() {
    let t = TestEnv::start("ic-ratelimit", "").await;
    // Each flow is six or more requests; two flows at once against six
    // requests per second meet 429s (with Retry-After) on their way.
    let r = reqwest::Client::new()
        .put(format!("{}/_admin/faults", t.emulator.base_url()))
        .json(&json!({"vendor": "intellicheck", "rate_limit_per_minute": 6, "rate_limit_window_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let scores = r#"{"screen_replay":95,"printed_copy":95,"portrait_substitution":95}"#;
    for i in 0..2 {
        let uri = t
            .upload(
                &format!("rl{i}.png"),
                samples::png(90 + i, 2000, Some(scores)),
            )
            .await;
        t.publish(&intellicheck_job(&t, &format!("ic-rl-{i}"), &uri))
            .await;
    }
    let results = t.results(2).await;
    assert!(results.values().all(|(_, _, r)| r["verdict"] == "live"));
    let calls = t.calls().await;
    assert!(
        calls["intellicheck"]["rate_limited"].as_u64().unwrap() >= 1,
        "the limit was hit: {calls}"
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}
