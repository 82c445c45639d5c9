//! Argos Face Liveness answers (`POST /liveness`): a 200 body or an error
//! body with any status. Never a panic; an assessment has the one
//! face_liveness outcome, keeps the invariants of `check_assessment`, and
//! its verdict is the face bands' verdict on the vendor's 0-100 number;
//! the body survives a serialize-parse round trip with the same outcome.
//!
//! Input: byte 0 = mode, bytes 1-2 = HTTP status, bytes 3-4 = band edges,
//! rest = body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::bands::Bands;
use liveness_worker::domain::{SignalName, SignalVerdict};
use liveness_worker::providers::argos::normalize;
use liveness_worker::providers::argos::wire::FaceResponse;
use liveness_worker_fuzz::check_assessment;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let status = u16::from_be_bytes([data[1], data[2]]);
    let bands = if data[3] == 0 && data[4] == 0 {
        Bands::default()
    } else {
        Bands {
            spoof_at_or_below: f64::from(data[3].min(data[4])) / 2.0,
            live_above: f64::from(data[3].max(data[4])) / 2.0,
        }
    };
    let body = &data[5..];
    let face = [SignalName::FaceLiveness];
    if data[0] & 1 == 0 {
        let Ok(parsed) = serde_json::from_slice::<FaceResponse>(body) else {
            return;
        };
        let result = normalize::face(&parsed, &bands);
        if let Ok(a) = &result {
            check_assessment(a);
            assert_eq!(a.signals.len(), 1);
            let s = &a.signals[0];
            assert_eq!(s.name, SignalName::FaceLiveness);
            let n = parsed.result.liveness_score.as_f64().expect("in range");
            assert_eq!(s.verdict, bands.verdict(n));
            assert_eq!(s.score, Some(n / 100.0));
            assert!(!a.reasons.is_empty());
        }
        let text = serde_json::to_vec(&parsed).expect("serializes");
        let again: FaceResponse = serde_json::from_slice(&text).expect("parses back");
        match (&result, &normalize::face(&again, &bands)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.message, b.message),
            _ => panic!("round trip changed the outcome"),
        }
    } else {
        match normalize::error_response(status, body, None, &face) {
            Ok(a) => {
                check_assessment(&a);
                assert_eq!(a.signals.len(), 1);
                assert_eq!(a.signals[0].verdict, SignalVerdict::NotPerformed);
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
});
