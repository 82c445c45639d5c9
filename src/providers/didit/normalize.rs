//! Didit answers → our assessment. Pure: fixtures in, assessments out.
//!
//! Verdict rules (docs/vendors.md#didit), first match wins:
//! 1. status `Not Finished` → inconclusive (the user never completed it);
//! 2. a `NO_FACE_DETECTED` warning → inconclusive, score null;
//! 3. `LIVENESS_FACE_ATTACK` (unless merely information) or
//!    `LOW_LIVENESS_SCORE` at log_type error → spoof;
//! 4. `Approved` with no warning of log_type warning or error → live;
//! 5. anything else (In Review, blocklist hits, warnings, a Declined
//!    without an attack) → review.
//!
//! Rule 3 reads the log_type because the seed report shows
//! `LOW_LIVENESS_SCORE` as information on an Approved check: only the
//! error level (what the standalone API sends at or below the decline
//! threshold) means the vendor declined for the score; a warning-level one
//! (a workflow's review band) is a review.

use super::wire::{
    DEFAULT_DECLINE_THRESHOLD, LIVENESS_FACE_ATTACK, LOW_LIVENESS_SCORE, LogType, NO_FACE_DETECTED,
    Report, RiskWarning, Status, error_text, risk,
};
use crate::domain::ProviderName;
use crate::domain::SignalName;
use crate::domain::SignalVerdict;
use crate::domain::assessment::{Assessment, Severity, SignalOutcome, VendorRefs, Warning};
use crate::domain::dead_letter::FailureClass;
use crate::providers::{ErrorKind, VendorError};
use serde_json::Number;
use std::time::Duration;

const SIGNAL: SignalName = SignalName::FaceLiveness;

/// A 200 report. `threshold` is the decline threshold we sent, if any.
pub fn report(r: &Report, threshold: Option<f64>) -> Result<Assessment, VendorError> {
    let l = &r.liveness;
    let vendor = VendorRefs {
        transaction_id: None,
        request_id: r.request_id.clone(),
        engine_version: None,
    };
    let warnings: Vec<Warning> = l.warnings.iter().map(warning).collect();
    let not_performed = |reason: &str| Assessment {
        signals: vec![SignalOutcome::not_performed(SIGNAL, None)],
        reasons: vec![reason.to_owned()],
        warnings: warnings.clone(),
        vendor: vendor.clone(),
    };
    if l.status == Status::NotFinished {
        return Ok(not_performed(
            "didit reports the liveness check Not Finished: the user never completed it",
        ));
    }
    if l.warnings.iter().any(|w| w.risk == NO_FACE_DETECTED) {
        return Ok(not_performed(
            "didit found no face in the image (NO_FACE_DETECTED)",
        ));
    }
    let score = match &l.score {
        Some(n) => Some(
            n.as_f64()
                .filter(|v| (0.0..=100.0).contains(v))
                .ok_or_else(|| {
                    VendorError::outage(format!("didit returned score {n}, outside 0-100"))
                })?,
        ),
        None => None,
    };

    let spoof_by: Vec<&RiskWarning> = l.warnings.iter().filter(|w| decides_spoof(w)).collect();
    let flagged: Vec<&RiskWarning> = l
        .warnings
        .iter()
        .filter(|w| w.log_type != LogType::Information)
        .collect();
    let by_score = spoof_by.iter().any(|w| w.risk == LOW_LIVENESS_SCORE);
    // `l.score` is present exactly when `score` is (checked above).
    let score_reason = l.score.as_ref().map(|n| {
        let below = match (by_score, threshold) {
            (false, _) => String::new(),
            (true, Some(t)) => format!(", at or below the decline threshold {}", format_number(t)),
            (true, None) => format!(
                ", at or below didit's default decline threshold {}",
                format_number(DEFAULT_DECLINE_THRESHOLD)
            ),
        };
        let method = l.method.as_ref().map_or("didit liveness".to_owned(), |m| {
            format!("didit {m} liveness")
        });
        format!(
            "{SIGNAL} scored {n}/100{below} ({method}, status {})",
            l.status
        )
    });

    let (verdict, mut reasons) = if !spoof_by.is_empty() {
        (
            SignalVerdict::Spoof,
            spoof_by.iter().map(|w| flag_reason(w)).collect::<Vec<_>>(),
        )
    } else if l.status == Status::Approved && flagged.is_empty() && score.is_some() {
        (SignalVerdict::Live, Vec::new())
    } else {
        let mut rs: Vec<String> = flagged.iter().map(|w| flag_reason(w)).collect();
        if rs.is_empty() {
            rs.push(match &l.status {
                Status::Approved => "didit approved the check without a liveness score".into(),
                Status::InReview => "didit put the check In Review".into(),
                Status::Declined => "didit declined the check without naming a risk".into(),
                other => {
                    format!("didit answered status \"{other}\", which this worker does not know")
                }
            });
        }
        (SignalVerdict::Review, rs)
    };
    if let Some(s) = score_reason {
        reasons.insert(0, s);
    }
    Ok(Assessment {
        signals: vec![SignalOutcome {
            name: SIGNAL,
            side: None,
            verdict,
            score: score.map(|s| s / 100.0),
            vendor_score: l.score.clone(),
            threshold: threshold.and_then(number),
        }],
        reasons,
        warnings,
        vendor,
    })
}

fn decides_spoof(w: &RiskWarning) -> bool {
    match w.risk.as_str() {
        LIVENESS_FACE_ATTACK => w.log_type != LogType::Information,
        LOW_LIVENESS_SCORE => w.log_type == LogType::Error,
        _ => false,
    }
}

fn description(w: &RiskWarning) -> String {
    w.short_description
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| w.long_description.clone().filter(|s| !s.trim().is_empty()))
        .or_else(|| risk(&w.risk).map(|(_, d)| d.to_owned()))
        .unwrap_or_else(|| w.risk.clone())
}

fn flag_reason(w: &RiskWarning) -> String {
    format!(
        "didit reported {} ({}): {}",
        w.risk,
        w.log_type,
        description(w)
    )
}

/// A vendor warning in our words; the vendor's `additional_data` never
/// reaches it (it is not even parsed).
fn warning(w: &RiskWarning) -> Warning {
    Warning {
        code: w.risk.clone(),
        severity: match w.log_type {
            LogType::Information => Severity::Info,
            LogType::Error => Severity::Error,
            // An unknown level is treated like the middle one.
            LogType::Warning | LogType::Other(_) => Severity::Warning,
        },
        message: description(w),
    }
}

/// A threshold as a JSON number: `40`, not `40.0`, when it is whole.
fn number(v: f64) -> Option<Number> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        Some(Number::from(v as i64))
    } else {
        Number::from_f64(v)
    }
}

/// `30`, `30.5`: a threshold as people write it.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A non-200 answer.
pub fn error_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> VendorError {
    let text = error_text(body);
    let said = text
        .as_deref()
        .map_or_else(String::new, |t| format!(": \"{t}\""));
    let (kind, message) = match status {
        400 => (
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest),
            format!("didit rejected the request as malformed (HTTP 400){said}"),
        ),
        401 => (
            ErrorKind::Credentials,
            format!(
                "didit refused the API key (HTTP 401){said}: the key is wrong, revoked or expired; \
                 check providers.didit.api_key"
            ),
        ),
        403 => {
            let credit = text.as_deref().is_some_and(|t| {
                let t = t.to_ascii_lowercase();
                t.contains("credit") || t.contains("balance")
            });
            let why = if credit {
                "the account is out of credit; top up the Didit balance"
            } else {
                "no key was sent, the key has no access to passive liveness, or this IP is \
                 outside the key's allowlist (an exhausted credit balance also answers 403); \
                 check providers.didit.api_key and the key's scopes and credit"
            };
            (
                ErrorKind::Credentials,
                format!("didit denied access (HTTP 403){said}: {why}"),
            )
        }
        429 => (
            ErrorKind::Transient { retry_after },
            format!("didit rate limit reached (HTTP 429){said}; waiting before the next call"),
        ),
        _ => {
            let mut e = VendorError::from_status(ProviderName::Didit, status, retry_after);
            e.message.push_str(&said);
            return e;
        }
    };
    VendorError {
        kind,
        message,
        vendor_code: None,
        http_status: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Verdict;
    use serde_json::{Value, json};

    fn parse(v: Value) -> Report {
        serde_json::from_value(v).unwrap()
    }

    /// A standalone answer as the passive-liveness page shows it.
    fn standalone(status: &str, score: Value, warnings: Value) -> Report {
        parse(json!({
            "request_id": "req-1",
            "liveness": {
                "status": status, "method": "PASSIVE", "score": score,
                "user_image": {"entities": [{"bbox": [10, 20, 110, 140], "confidence": 0.98,
                    "age": 31.5, "gender": "male", "race": "white"}], "best_angle": 0},
                "warnings": warnings, "face_quality": 82.1, "face_luminance": 55
            },
            "vendor_data": "applicant-7",
            "created_at": "2026-11-23T10:00:00.000Z"
        }))
    }

    fn w(risk: &str, log_type: &str) -> Value {
        json!({"risk": risk, "additional_data": null, "log_type": log_type,
               "short_description": format!("short {risk}"), "long_description": "long"})
    }

    #[test]
    fn approved_without_warnings_is_live_with_an_integer_score() {
        let a = report(&standalone("Approved", json!(95), json!([])), None).unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.95));
        assert_eq!(
            a.reasons,
            vec!["face_liveness scored 95/100 (didit PASSIVE liveness, status Approved)"]
        );
        assert_eq!(a.signals[0].vendor_score, Some(95.into()));
        assert_eq!(a.signals[0].threshold, None);
        assert_eq!(a.vendor.request_id.as_deref(), Some("req-1"));
        assert!(a.warnings.is_empty());
    }

    #[test]
    fn the_seed_report_is_live_with_a_float_score_and_an_info_warning() {
        // Seed 004: Approved, ACTIVE_3D, 89.92, LOW_LIVENESS_SCORE as information.
        let r = parse(json!({"liveness": {
            "status": "Approved", "method": "ACTIVE_3D", "score": 89.92,
            "reference_image": "https://example.com/reference.jpg",
            "video_url": "https://example.com/video.mp4", "age_estimation": 24.3,
            "warnings": [{"risk": "LOW_LIVENESS_SCORE", "additional_data": null,
                "log_type": "information", "short_description": "Low liveness score",
                "long_description": "The liveness check resulted in a low score."}]}}));
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(89.92 / 100.0));
        assert_eq!(
            a.reasons,
            vec!["face_liveness scored 89.92/100 (didit ACTIVE_3D liveness, status Approved)"]
        );
        assert_eq!(
            a.warnings,
            vec![Warning {
                code: "LOW_LIVENESS_SCORE".into(),
                severity: Severity::Info,
                message: "Low liveness score".into()
            }]
        );
    }

    #[test]
    fn low_score_error_is_spoof_with_the_threshold_in_words() {
        let r = standalone(
            "Declined",
            json!(12.5),
            json!([w("LOW_LIVENESS_SCORE", "error")]),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(a.score(), Some(0.125));
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 12.5/100, at or below didit's default decline threshold 30 (didit PASSIVE liveness, status Declined)",
                "didit reported LOW_LIVENESS_SCORE (error): short LOW_LIVENESS_SCORE",
            ]
        );
        assert_eq!(a.warnings[0].severity, Severity::Error);
        let a = report(&r, Some(40.0)).unwrap();
        assert!(a.reasons[0].contains("at or below the decline threshold 40 ("));
        assert_eq!(a.signals[0].threshold, Some(40.into()));
        let a = report(&r, Some(37.5)).unwrap();
        assert!(a.reasons[0].contains("threshold 37.5 ("));
    }

    #[test]
    fn face_attack_is_spoof_whatever_the_score() {
        let r = standalone(
            "Declined",
            json!(81),
            json!([
                w("LIVENESS_FACE_ATTACK", "error"),
                w("DUPLICATED_FACE", "information")
            ]),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(a.score(), Some(0.81));
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 81/100 (didit PASSIVE liveness, status Declined)",
                "didit reported LIVENESS_FACE_ATTACK (error): short LIVENESS_FACE_ATTACK",
            ]
        );
        assert_eq!(
            a.warnings.iter().map(|w| w.severity).collect::<Vec<_>>(),
            vec![Severity::Error, Severity::Info]
        );
    }

    #[test]
    fn no_face_is_inconclusive_with_a_null_score() {
        let r = parse(json!({"request_id": "req-2", "liveness": {
            "status": "Declined", "method": "PASSIVE", "score": null,
            "user_image": {"entities": [], "best_angle": null},
            "warnings": [w("NO_FACE_DETECTED", "error")],
            "face_quality": null, "face_luminance": null}}));
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Inconclusive);
        assert_eq!(a.score(), None);
        assert_eq!(a.signals[0].verdict, SignalVerdict::NotPerformed);
        assert_eq!(a.signals[0].vendor_score, None);
        assert_eq!(
            a.reasons,
            vec!["didit found no face in the image (NO_FACE_DETECTED)"]
        );
        assert_eq!(a.warnings[0].code, "NO_FACE_DETECTED");
    }

    #[test]
    fn not_finished_is_inconclusive() {
        let r = parse(
            json!({"liveness": {"status": "Not Finished", "method": "FLASHING",
            "score": null, "warnings": []}}),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Inconclusive);
        assert_eq!(a.score(), None);
        assert_eq!(
            a.reasons,
            vec!["didit reports the liveness check Not Finished: the user never completed it"]
        );
    }

    #[test]
    fn in_review_and_warnings_are_review() {
        let r = parse(
            json!({"liveness": {"status": "In Review", "method": "FLASHING",
            "score": 47, "warnings": []}}),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(a.score(), Some(0.47));
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 47/100 (didit FLASHING liveness, status In Review)",
                "didit put the check In Review",
            ]
        );
        // A warning-level low score (a workflow's review band) is a review, not a spoof.
        let r = parse(
            json!({"liveness": {"status": "In Review", "method": "ACTIVE_3D",
            "score": 35, "warnings": [w("LOW_LIVENESS_SCORE", "warning")]}}),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(
            a.reasons[1],
            "didit reported LOW_LIVENESS_SCORE (warning): short LOW_LIVENESS_SCORE"
        );
        // Approved, but with a warning-level flag: review.
        let r = standalone(
            "Approved",
            json!(88),
            json!([
                w("MULTIPLE_FACES_DETECTED", "warning"),
                w("POSSIBLE_DUPLICATED_FACE", "information")
            ]),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 88/100 (didit PASSIVE liveness, status Approved)",
                "didit reported MULTIPLE_FACES_DETECTED (warning): short MULTIPLE_FACES_DETECTED",
            ]
        );
        assert_eq!(
            a.warnings.iter().map(|w| w.severity).collect::<Vec<_>>(),
            vec![Severity::Warning, Severity::Info]
        );
    }

    #[test]
    fn blocklist_decline_is_review_not_spoof() {
        let r = standalone(
            "Declined",
            json!(93),
            json!([w("FACE_IN_BLOCKLIST", "error")]),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 93/100 (didit PASSIVE liveness, status Declined)",
                "didit reported FACE_IN_BLOCKLIST (error): short FACE_IN_BLOCKLIST",
            ]
        );
        let r = standalone("Declined", json!(93), json!([]));
        assert_eq!(
            report(&r, None).unwrap().reasons[1],
            "didit declined the check without naming a risk"
        );
    }

    #[test]
    fn unknown_values_are_review_not_errors() {
        let r = parse(
            json!({"liveness": {"status": "Expired", "method": "NEW_METHOD",
            "score": 70, "warnings": [{"risk": "SOMETHING_NEW", "log_type": "notice"}]}}),
        );
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(
            a.reasons,
            vec![
                "face_liveness scored 70/100 (didit NEW_METHOD liveness, status Expired)",
                "didit reported SOMETHING_NEW (notice): SOMETHING_NEW",
            ]
        );
        assert_eq!(a.warnings[0].severity, Severity::Warning);
        // A known code without descriptions gets ours.
        let r = standalone(
            "Approved",
            json!(90),
            json!([{"risk": "LOW_FACE_QUALITY", "log_type": "warning"}]),
        );
        assert_eq!(
            report(&r, None).unwrap().warnings[0].message,
            "Low face quality"
        );
        // Approved with no score at all is not a live verdict.
        let r = parse(json!({"liveness": {"status": "Approved", "score": null}}));
        let a = report(&r, None).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(
            a.reasons,
            vec!["didit approved the check without a liveness score"]
        );
    }

    #[test]
    fn every_method_and_status_parses() {
        for method in ["ACTIVE_3D", "FLASHING", "PASSIVE"] {
            for (status, verdict) in [
                ("Approved", Verdict::Live),
                ("Declined", Verdict::Review),
                ("In Review", Verdict::Review),
                ("Not Finished", Verdict::Inconclusive),
            ] {
                let r = parse(json!({"liveness": {"status": status, "method": method,
                    "score": 75, "warnings": []}}));
                let a = report(&r, None).unwrap();
                assert_eq!(a.verdict(), verdict, "{method} {status}");
                if verdict != Verdict::Inconclusive {
                    assert!(a.reasons[0].contains(&format!("didit {method} liveness")));
                }
            }
        }
    }

    #[test]
    fn out_of_range_score_is_a_vendor_fault() {
        let e = report(&standalone("Approved", json!(101), json!([])), None).unwrap_err();
        assert!(e.is_outage(), "{e}");
        let e = report(&standalone("Approved", json!(-1), json!([])), None).unwrap_err();
        assert!(e.is_outage(), "{e}");
    }

    #[test]
    fn errors_map_to_their_class() {
        let e = error_response(400, br#"{"user_image":["This field is required."]}"#, None);
        assert_eq!(
            e.kind,
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest)
        );
        assert_eq!(
            e.message,
            "didit rejected the request as malformed (HTTP 400): \"user_image: This field is required.\""
        );
        assert_eq!(e.http_status, Some(400));
        assert_eq!(e.vendor_code, None);
        let e = error_response(401, br#"{"detail":"Invalid API key."}"#, None);
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(
            e.message.contains("wrong, revoked or expired"),
            "{}",
            e.message
        );
        let e = error_response(403, br#"{"detail":"Insufficient credits."}"#, None);
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(e.message.contains("out of credit"), "{}", e.message);
        let e = error_response(403, br#"{"message":"Forbidden"}"#, None);
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(e.message.contains("no key was sent"), "{}", e.message);
        assert!(e.message.contains("credit"), "{}", e.message);
        let e = error_response(429, b"", Some(Duration::from_secs(7)));
        assert_eq!(
            e.kind,
            ErrorKind::Transient {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(e.http_status, Some(429));
        for status in [408, 500, 502, 503, 504] {
            let e = error_response(status, b"<html>bad gateway</html>", None);
            assert!(e.kind.is_retryable(), "{status}");
            assert!(e.is_outage() == (status >= 500), "{status}");
        }
        let e = error_response(404, br#"{"detail":"Not found."}"#, None);
        assert_eq!(
            e.kind,
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest)
        );
        assert!(e.message.ends_with(": \"Not found.\""), "{}", e.message);
    }
}
