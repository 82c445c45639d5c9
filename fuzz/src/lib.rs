//! Invariants shared by the fuzz targets (docs/fuzzing.md).

use liveness_worker::domain::assessment::{Assessment, SignalOutcome};
use liveness_worker::domain::{SignalName, SignalVerdict, Verdict};

/// The signals a request byte asks for: bits 0-2 pick the document
/// signals; none picked means all three.
pub fn requested_signals(bits: u8) -> Vec<SignalName> {
    let picked: Vec<SignalName> = SignalName::DOCUMENT
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| s)
        .collect();
    if picked.is_empty() {
        SignalName::DOCUMENT.to_vec()
    } else {
        picked
    }
}

/// What every normalized assessment must satisfy, whatever the vendor said:
/// scores finite and within 0..=1 (null exactly for a skipped signal, or a
/// performed one the vendor gave no number for), the job verdict and score
/// as docs/messages.md defines them, and the signals surviving a JSON round
/// trip unchanged (as they are published in a result).
pub fn check_assessment(a: &Assessment) {
    for s in &a.signals {
        if let Some(score) = s.score {
            assert!(
                score.is_finite() && (0.0..=1.0).contains(&score),
                "score {score} of {} outside 0..=1",
                s.name
            );
        }
        if s.verdict == SignalVerdict::NotPerformed {
            assert_eq!(s.score, None, "a skipped signal has no score");
        }
    }
    let has = |v: SignalVerdict| a.signals.iter().any(|s| s.verdict == v);
    let expected = if has(SignalVerdict::Spoof) {
        Verdict::Spoof
    } else if has(SignalVerdict::Review) {
        Verdict::Review
    } else if a.signals.iter().any(SignalOutcome::performed) {
        Verdict::Live
    } else {
        Verdict::Inconclusive
    };
    assert_eq!(a.verdict(), expected);
    if let Some(score) = a.score() {
        assert!(score.is_finite() && (0.0..=1.0).contains(&score));
        let min = a
            .signals
            .iter()
            .filter(|s| s.performed())
            .filter_map(|s| s.score)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(score, min, "the job score is the lowest performed score");
    }
    let json = serde_json::to_string(&a.signals).expect("signals serialize");
    let back: Vec<SignalOutcome> = serde_json::from_str(&json).expect("signals parse back");
    assert_eq!(back, a.signals, "signals survive a JSON round trip: {json}");
    let warnings = serde_json::to_string(&a.warnings).expect("warnings serialize");
    let back: Vec<liveness_worker::domain::assessment::Warning> =
        serde_json::from_str(&warnings).expect("warnings parse back");
    assert_eq!(back, a.warnings);
}

/// Whether `text` contains a control character or a run of 40 or more
/// base64/hex characters (image bytes a vendor echoed).
pub fn leaks_blob_or_control(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_control() {
            return true;
        }
        if c.is_ascii_alphanumeric() || "+/=_-".contains(c) {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}
