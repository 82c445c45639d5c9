//! Didit passive liveness answers (`providers::didit`): a 200 report with
//! or without a decline threshold, and an error body with any status.
//! Never a panic; an assessment keeps the invariants of `check_assessment`,
//! has the one face_liveness outcome and follows the documented rules
//! (Not Finished or no face: not performed; spoof exactly when an attack or
//! an error-level low score is reported; live only when Approved); the
//! report survives a serialize-parse round trip unchanged.
//!
//! Input: byte 0 = mode, byte 1 = threshold (255: none; else /2.5),
//! bytes 2-3 = HTTP status, rest = body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::{SignalName, SignalVerdict};
use liveness_worker::providers::ErrorKind;
use liveness_worker::providers::didit::normalize;
use liveness_worker::providers::didit::wire::{
    LIVENESS_FACE_ATTACK, LOW_LIVENESS_SCORE, LogType, NO_FACE_DETECTED, Report, Status,
};
use liveness_worker_fuzz::check_assessment;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let threshold = (data[1] != 255).then(|| f64::from(data[1]) / 2.5);
    let status = u16::from_be_bytes([data[2], data[3]]);
    let body = &data[4..];
    if data[0] & 1 == 0 {
        let Ok(report) = serde_json::from_slice::<Report>(body) else {
            return;
        };
        let text = serde_json::to_vec(&report).expect("serializes");
        let again: Report = serde_json::from_slice(&text).expect("parses back");
        assert_eq!(again, report, "round trip");
        let Ok(a) = normalize::report(&report, threshold) else {
            return;
        };
        check_assessment(&a);
        assert_eq!(a.signals.len(), 1);
        let s = &a.signals[0];
        assert_eq!(s.name, SignalName::FaceLiveness);
        assert_eq!(a.warnings.len(), report.liveness.warnings.len());
        let l = &report.liveness;
        let no_face = l.warnings.iter().any(|w| w.risk == NO_FACE_DETECTED);
        if l.status == Status::NotFinished || no_face {
            assert_eq!(s.verdict, SignalVerdict::NotPerformed);
            return;
        }
        let attack = l.warnings.iter().any(|w| {
            (w.risk == LIVENESS_FACE_ATTACK && w.log_type != LogType::Information)
                || (w.risk == LOW_LIVENESS_SCORE && w.log_type == LogType::Error)
        });
        assert_eq!(s.verdict == SignalVerdict::Spoof, attack);
        if s.verdict == SignalVerdict::Live {
            assert_eq!(l.status, Status::Approved);
            assert!(s.score.is_some());
        }
        assert_ne!(s.verdict, SignalVerdict::NotPerformed);
        assert_eq!(
            s.score,
            l.score.as_ref().and_then(|n| n.as_f64()).map(|v| v / 100.0)
        );
    } else {
        let e = normalize::error_response(status, body, None);
        assert!(!e.message.is_empty());
        assert_eq!(e.http_status, Some(status));
        match status {
            401 | 403 => assert_eq!(e.kind, ErrorKind::Credentials),
            400 => assert!(matches!(e.kind, ErrorKind::Permanent(_))),
            429 => assert!(matches!(e.kind, ErrorKind::Transient { .. })),
            _ => {}
        }
    }
});
