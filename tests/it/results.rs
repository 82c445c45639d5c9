//! Scenario images come back as results with the exact expected verdict,
//! score and reasons.

use crate::harness::{TestEnv, corr};
use lapin::BasicProperties;
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::samples;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_with_exact_scores_and_reasons() {
    let t = TestEnv::start("verdicts", "").await;
    let live = samples::png(
        1,
        4000,
        Some(r#"{"screen_replay":99,"printed_copy":82,"portrait_substitution":100}"#),
    );
    let review = samples::jpeg(
        2,
        4000,
        Some(r#"{"screen_replay":45,"printed_copy":70,"portrait_substitution":90}"#),
    );
    let spoof = samples::png(
        3,
        4000,
        Some(r#"{"screen_replay":97,"printed_copy":22,"portrait_substitution":55.5}"#),
    );
    let inconclusive = samples::png(4, 4000, Some(r#"{"error":1009}"#));
    let face = samples::jpeg(5, 4000, Some(r#"{"face":95}"#));
    let no_face = samples::png(6, 4000, Some(r#"{"no_face":true}"#));
    let partial = samples::png(
        7,
        4000,
        Some(r#"{"screen_replay":88,"not_performed":["portrait_substitution"]}"#),
    );
    let mut uris = Vec::new();
    for (name, bytes) in [
        ("live.png", &live),
        ("review.jpg", &review),
        ("spoof.png", &spoof),
        ("inc.png", &inconclusive),
        ("face.jpg", &face),
        ("noface.png", &no_face),
        ("partial.png", &partial),
    ] {
        uris.push(t.upload(name, bytes.clone()).await);
    }

    let mut live_job = t.job("live-1", "document", &uris[0]);
    live_job["metadata"] =
        serde_json::from_str(r#"{"tenant":"acme","n":1.50,"nested":{"a":[1,2]}}"#).unwrap();
    let props = BasicProperties::default()
        .with_message_id("live-1".into())
        .with_correlation_id("corr-live".into());
    t.publish_raw(&serde_json::to_vec(&live_job).unwrap(), props)
        .await;
    t.publish(&t.job("review-1", "document", &uris[1])).await;
    t.publish(&t.job("spoof-1", "document", &uris[2])).await;
    t.publish(&t.job("inconclusive-1", "document", &uris[3]))
        .await;
    t.publish(&t.job("face-1", "face", &uris[4])).await;
    t.publish(&t.job("noface-1", "face", &uris[5])).await;
    let mut partial_job = t.job("partial-1", "document", &uris[6]);
    partial_job["signals"] = json!(["portrait_substitution", "screen_replay"]);
    t.publish(&partial_job).await;

    let r = t.results(7).await;

    let (rk, p, v) = &r["live-1"];
    assert_eq!(rk, "document.live");
    assert_eq!(corr(p).as_deref(), Some("corr-live"));
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("live-1"));
    assert_eq!(v["schema"], "liveness.result.v1");
    assert_eq!(v["provider"], "argos");
    assert_eq!(v["verdict"], "live");
    assert_eq!(v["score"], 0.82);
    assert_eq!(v["attempts"], 1);
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","verdict":"live","score":0.99,"vendor_score":99},
            {"name":"printed_copy","verdict":"live","score":0.82,"vendor_score":82},
            {"name":"portrait_substitution","verdict":"live","score":1.0,"vendor_score":100}
        ])
    );
    assert_eq!(
        v["reasons"],
        json!([
            "screen_replay scored 99/100 (very low forgery risk band 81-100)",
            "printed_copy scored 82/100 (very low forgery risk band 81-100)",
            "portrait_substitution scored 100/100 (very low forgery risk band 81-100)"
        ])
    );
    // Metadata echoed with its values exactly as sent (1.50 stays 1.50).
    let raw: Value = v.clone();
    assert_eq!(
        raw["metadata"],
        json!({"tenant":"acme","n":1.50,"nested":{"a":[1,2]}})
    );
    assert_eq!(
        v["image"],
        json!({"uri": uris[0], "bytes": live.len(), "sha256": sha256_hex(&live), "content_type": "image/png"})
    );
    assert!(
        v["vendor"]["transaction_id"]
            .as_str()
            .unwrap()
            .starts_with("txn_")
    );
    assert_eq!(v["vendor"]["engine_version"], "id_liveness@3.4.2");
    assert!(v["completed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["warnings"], json!([]));

    let (rk, _, v) = &r["review-1"];
    assert_eq!(rk, "document.review");
    assert_eq!(v["verdict"], "review");
    assert_eq!(v["score"], 0.45);
    assert_eq!(
        v["reasons"],
        json!(["screen_replay scored 45/100 (medium forgery risk band 31-60)"])
    );
    assert_eq!(v["image"]["content_type"], "image/jpeg");
    assert!(
        v.get("metadata").is_none(),
        "metadata omitted when the job had none"
    );

    let (rk, _, v) = &r["spoof-1"];
    assert_eq!(rk, "document.spoof");
    assert_eq!(v["score"], 0.22);
    assert_eq!(
        v["reasons"],
        json!(["printed_copy scored 22/100 (high forgery risk band 0-30)"])
    );
    assert_eq!(
        v["signals"][2],
        json!({"name":"portrait_substitution","verdict":"review","score":0.555,"vendor_score":55.5})
    );

    let (rk, _, v) = &r["inconclusive-1"];
    assert_eq!(rk, "document.inconclusive");
    assert_eq!(v["score"], Value::Null);
    assert_eq!(
        v["reasons"],
        json!(["argos could not analyse the document (error 1009: Fail to analyze document)"])
    );
    assert!(
        v["signals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["verdict"] == "not_performed" && s["score"].is_null())
    );
    assert_eq!(v["attempts"], 1);

    let (rk, _, v) = &r["face-1"];
    assert_eq!(rk, "face.live");
    assert_eq!(v["score"], 0.95);
    assert_eq!(
        v["signals"],
        json!([{"name":"face_liveness","verdict":"live","score":0.95,"vendor_score":95}])
    );
    assert_eq!(
        v["reasons"],
        json!(["face_liveness scored 95/100 (live above 60)"])
    );

    let (rk, _, v) = &r["noface-1"];
    assert_eq!(rk, "face.inconclusive");
    assert_eq!(
        v["reasons"],
        json!(["argos could not analyse the face (error 1017: Fail to analyze face)"])
    );

    let (rk, _, v) = &r["partial-1"];
    assert_eq!(rk, "document.live");
    assert_eq!(
        v["signals"],
        json!([
            {"name":"screen_replay","verdict":"live","score":0.88,"vendor_score":88},
            {"name":"portrait_substitution","verdict":"not_performed","score":null,"vendor_score":null}
        ])
    );
    assert_eq!(
        v["reasons"],
        json!([
            "screen_replay scored 88/100 (very low forgery risk band 81-100)",
            "portrait_substitution was not performed by argos (missing from its result)"
        ])
    );

    // One vendor call per job, no more.
    assert_eq!(t.calls().await["argos"]["submissions"], 7);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_derived_scores_when_the_image_has_no_scenario() {
    let t = TestEnv::start("hash", "").await;
    let img = samples::png(42, 3000, None);
    let uri = t.upload("plain.png", img.clone()).await;
    t.publish(&t.job("plain-1", "document", &uri)).await;
    let r = t.results(1).await;
    let v = &r["plain-1"].2;
    // The emulator's scores derive from the image hash: recompute them.
    let sha: [u8; 32] = hex::decode(sha256_hex(&img)).unwrap().try_into().unwrap();
    for (i, s) in v["signals"].as_array().unwrap().iter().enumerate() {
        let want = liveness_worker::emulator::scenario::hash_score(&sha, i);
        assert_eq!(s["vendor_score"].as_f64().unwrap(), want);
        assert_eq!(s["score"].as_f64().unwrap(), want / 100.0);
    }
    t.finish().await;
}
