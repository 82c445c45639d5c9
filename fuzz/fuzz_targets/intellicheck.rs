//! Intellicheck IDN Direct answers (`providers::intellicheck`): the signed
//! base64 envelope, the `/get-results` liveness object under any of its
//! spellings, and error bodies at any step and status. Never a panic; an
//! assessment keeps the invariants of `check_assessment`, has one outcome
//! per requested signal and submitted side, and no review verdict (the
//! vendor has no review band); an error message carries no control
//! character and no run of base64 (the vendor echoing our image must not
//! reach a dead letter); envelopes and signatures round trip.
//!
//! Input: byte 0 = mode (bits 0-1), back submitted (bit 2), requested
//! signals (bits 3-5); bytes 1-2 = HTTP status; rest = body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::SignalVerdict;
use liveness_worker::providers::intellicheck::normalize;
use liveness_worker::providers::intellicheck::wire::{self, LivenessObject};
use liveness_worker_fuzz::{check_assessment, leaks_blob_or_control, requested_signals};

fn assess(obj: &LivenessObject, data0: u8) {
    let back = data0 & 4 != 0;
    let requested = requested_signals(data0 >> 3);
    let Ok(a) = normalize::liveness(obj, &requested, back, "txn-1") else {
        return;
    };
    check_assessment(&a);
    let sides = if back { 2 } else { 1 };
    assert_eq!(a.signals.len(), requested.len() * sides);
    assert!(a.signals.iter().all(|s| s.verdict != SignalVerdict::Review));
    for s in a.signals.iter().filter(|s| s.performed()) {
        assert_eq!(
            s.score,
            s.vendor_score.as_ref().and_then(serde_json::Number::as_f64),
            "the score is the probability"
        );
    }
    assert_eq!(
        a.warnings.len(),
        obj.image_quality_findings.as_ref().map_or(0, Vec::len)
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_be_bytes([data[1], data[2]]);
    let body = &data[3..];
    match data[0] & 3 {
        // The liveness object itself.
        0 => {
            if let Ok(obj) = serde_json::from_slice::<LivenessObject>(body) {
                let text = serde_json::to_vec(&obj).expect("serializes");
                let again: LivenessObject = serde_json::from_slice(&text).expect("parses back");
                assert_eq!(again, obj);
                assess(&obj, data[0]);
            }
        }
        // A /get-results answer as it arrives: signed base64 envelope.
        1 => {
            let key = b"fuzz-signing-key";
            let sig = wire::signature(key, body);
            assert!(wire::signature_matches(key, body, &sig));
            assert!(wire::signature_matches(
                key,
                body,
                &sig.to_uppercase().replace("SHA256=", "sha256=")
            ));
            assert!(!wire::signature_matches(b"another-key", body, &sig));
            let mut longer = body.to_vec();
            longer.push(b'x');
            assert!(!wire::signature_matches(key, &longer, &sig));
            let Ok(env) = wire::decode(body) else { return };
            assert!(env.public_data.is_object() && env.private_data.is_object());
            let round = wire::decode(&wire::encode(&env.public_data, &env.private_data))
                .expect("an encoded envelope decodes");
            assert_eq!(round, env);
            let _ = env.failed();
            let _ = normalize::check_confirmed_signals(env.field("signals"));
            if let Some((_, v)) = env.liveness()
                && let Ok(obj) = serde_json::from_value::<LivenessObject>(v.clone())
            {
                assess(&obj, data[0]);
            }
        }
        // An error answer at some step.
        _ => {
            let step = [
                wire::PATH_START,
                wire::PATH_SUBMIT_FRONT,
                wire::PATH_GET_RESULTS,
            ][usize::from(data[0] >> 2) % 3];
            let e = normalize::error_response(step, status, body, None);
            assert!(
                !leaks_blob_or_control(&e.message),
                "error message leaks: {:?}",
                e.message
            );
            assert!(e.message.chars().count() < 600, "error text is cut short");
        }
    }
});
