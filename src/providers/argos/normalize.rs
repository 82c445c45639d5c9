//! Argos answers → our assessment. Pure: fixtures in, assessments out.

use super::wire::{DocumentResponse, ErrorFields, FaceResponse, PipelineScore};
use crate::domain::assessment::{Assessment, SignalOutcome, VendorRefs};
use crate::domain::bands::Bands;
use crate::domain::dead_letter::FailureClass;
use crate::domain::{ProviderName, SignalName, SignalVerdict};
use crate::providers::{ErrorKind, VendorError};
use std::time::Duration;

/// The vendor's own risk band for a score (callback page). Fractional
/// scores between the integer bands fall into the higher-risk band, the
/// same way our verdict rule treats them.
fn vendor_band(score: f64) -> &'static str {
    if score <= 30.0 {
        "high forgery risk band 0-30"
    } else if score <= 60.0 {
        "medium forgery risk band 31-60"
    } else if score <= 80.0 {
        "low forgery risk band 61-80"
    } else {
        "very low forgery risk band 81-100"
    }
}

fn score_of(p: &PipelineScore, signal: SignalName) -> Result<f64, VendorError> {
    let v = p
        .liveness_score
        .as_f64()
        .filter(|v| (0.0..=100.0).contains(v));
    v.ok_or_else(|| {
        VendorError::outage(format!(
            "argos returned liveness_score {} for {signal}, outside 0-100",
            p.liveness_score
        ))
    })
}

/// One scored signal with its explanation.
fn explain(
    signal: SignalName,
    p: &PipelineScore,
    bands: &Bands,
    band_text: &str,
) -> Result<(SignalOutcome, String), VendorError> {
    let score = score_of(p, signal)?;
    let outcome = SignalOutcome {
        name: signal,
        side: None,
        verdict: bands.verdict(score),
        score: Some(score / 100.0),
        vendor_score: Some(p.liveness_score.clone()),
        threshold: None,
    };
    let reason = format!("{signal} scored {}/100 ({band_text})", p.liveness_score);
    Ok((outcome, reason))
}

/// A 200 (or success callback) of `POST /document`. A requested pipeline
/// missing from `result` counts as not performed (docs/vendors.md).
pub fn document(
    resp: &DocumentResponse,
    requested: &[SignalName],
    bands: &Bands,
) -> Result<Assessment, VendorError> {
    let mut explained = Vec::with_capacity(requested.len());
    for &signal in requested {
        let pipeline = match signal {
            SignalName::ScreenReplay => resp.result.screen_replay.as_ref(),
            SignalName::PrintedCopy => resp.result.paper_printed.as_ref(),
            SignalName::PortraitSubstitution => resp.result.replace_portraits.as_ref(),
            SignalName::FaceLiveness => None,
        };
        explained.push(match pipeline {
            Some(p) => {
                let score = score_of(p, signal)?;
                explain(signal, p, bands, vendor_band(score))?
            }
            None => (
                SignalOutcome::not_performed(signal, None),
                format!("{signal} was not performed by argos (missing from its result)"),
            ),
        });
    }
    Ok(Assessment::from_explained(
        explained,
        refs(resp.transaction_id.clone(), resp.engine_version.clone()),
    ))
}

/// A 200 of `POST /liveness`. Argos publishes no bands for faces, so the
/// reason states our policy rather than a vendor band.
pub fn face(resp: &FaceResponse, bands: &Bands) -> Result<Assessment, VendorError> {
    let signal = SignalName::FaceLiveness;
    let score = score_of(&resp.result, signal)?;
    let policy = match bands.verdict(score) {
        SignalVerdict::Live => format!("live above {}", bands.live_above),
        SignalVerdict::Review => format!(
            "review band {}-{}",
            bands.spoof_at_or_below, bands.live_above
        ),
        _ => format!("spoof at or below {}", bands.spoof_at_or_below),
    };
    let explained = explain(signal, &resp.result, bands, &policy)?;
    Ok(Assessment::from_explained(
        vec![explained],
        refs(resp.transaction_id.clone(), None),
    ))
}

fn refs(transaction_id: Option<String>, engine_version: Option<String>) -> VendorRefs {
    VendorRefs {
        transaction_id,
        request_id: None,
        engine_version,
    }
}

/// A non-2xx answer. Codes 1009 and 1017 ("could not analyse") are a
/// business outcome: an inconclusive assessment, not an error.
pub fn error_response(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    requested: &[SignalName],
) -> Result<Assessment, VendorError> {
    let fields = ErrorFields::parse(body);
    let code = fields.as_ref().and_then(ErrorFields::code);
    let Some(code) = code else {
        return Err(VendorError::from_status(
            ProviderName::Argos,
            status,
            retry_after,
        ));
    };
    let fields = fields.unwrap_or_default();
    // The vendor's words go into reasons, dead letters and logs: cleaned and cut.
    let vendor_message = fields
        .message
        .as_deref()
        .and_then(crate::providers::http::vendor_text)
        .unwrap_or_default();
    let code = crate::domain::text::clean(&code, crate::domain::text::VENDOR_CODE_CHARS);
    let kind = match code.as_str() {
        "1009" | "1017" => {
            let what = if code == "1009" { "document" } else { "face" };
            let signals = requested
                .iter()
                .map(|&s| SignalOutcome::not_performed(s, None))
                .collect();
            let reason =
                format!("argos could not analyse the {what} (error {code}: {vendor_message})");
            return Ok(Assessment::inconclusive(
                signals,
                reason,
                refs(fields.transaction_id, fields.engine_version),
            ));
        }
        "1001" => ErrorKind::Credentials,
        "1003" => ErrorKind::Transient { retry_after },
        "1005" | "1007" | "1008" | "1010" | "1016" => {
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest)
        }
        // An undocumented code: trust the HTTP status.
        _ => VendorError::from_status(ProviderName::Argos, status, retry_after).kind,
    };
    let advice = match kind {
        ErrorKind::Credentials => "check the argos API key and workspace",
        ErrorKind::Transient { .. } | ErrorKind::Outage { .. } => {
            "the vendor failed to process it; it will be retried"
        }
        ErrorKind::Permanent(_) => {
            "the worker sent a request argos considers malformed; report it as a worker bug"
        }
    };
    Err(VendorError {
        kind,
        message: format!("argos answered error {code} \"{vendor_message}\": {advice}"),
        vendor_code: Some(code),
        http_status: Some(status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Verdict;
    use serde_json::json;

    const ALL: [SignalName; 3] = SignalName::DOCUMENT;

    fn resp(v: serde_json::Value) -> DocumentResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_band_boundary() {
        let b = Bands::default();
        for (score, want) in [
            (0.0, SignalVerdict::Spoof),
            (30.0, SignalVerdict::Spoof),
            (30.5, SignalVerdict::Review),
            (31.0, SignalVerdict::Review),
            (60.0, SignalVerdict::Review),
            (60.01, SignalVerdict::Live),
            (61.0, SignalVerdict::Live),
            (80.0, SignalVerdict::Live),
            (100.0, SignalVerdict::Live),
        ] {
            assert_eq!(b.verdict(score), want, "score {score}");
        }
        assert_eq!(vendor_band(30.5), "medium forgery risk band 31-60");
        assert_eq!(vendor_band(80.0), "low forgery risk band 61-80");
        assert_eq!(vendor_band(80.5), "very low forgery risk band 81-100");
    }

    #[test]
    fn openapi_example_is_live_with_all_reasons() {
        let r = resp(
            json!({"apiType":"id_live_doc","transactionId":"txn_123456789","engineVersion":"id_liveness@3.4.2",
            "result":{"screenReplay":{"liveness_score":99},"paperPrinted":{"liveness_score":82},"replacePortraits":{"liveness_score":100}}}),
        );
        let a = document(&r, &ALL, &Bands::default()).unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.82));
        assert_eq!(
            a.reasons,
            vec![
                "screen_replay scored 99/100 (very low forgery risk band 81-100)",
                "printed_copy scored 82/100 (very low forgery risk band 81-100)",
                "portrait_substitution scored 100/100 (very low forgery risk band 81-100)",
            ]
        );
        assert_eq!(a.vendor.transaction_id.as_deref(), Some("txn_123456789"));
        assert_eq!(
            a.vendor.engine_version.as_deref(),
            Some("id_liveness@3.4.2")
        );
        assert_eq!(a.signals[1].vendor_score, Some(82.into()));
    }

    #[test]
    fn spoof_reasons_name_only_the_spoofed_signal() {
        let r = resp(
            json!({"result":{"screenReplay":{"liveness_score":45},"paperPrinted":{"liveness_score":22},"replacePortraits":{"liveness_score":90}}}),
        );
        let a = document(&r, &ALL, &Bands::default()).unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(a.score(), Some(0.22));
        assert_eq!(
            a.reasons,
            vec!["printed_copy scored 22/100 (high forgery risk band 0-30)"]
        );
    }

    #[test]
    fn review_with_fractional_score() {
        let r = resp(
            json!({"result":{"screenReplay":{"liveness_score":30.5},"paperPrinted":{"liveness_score":70}}}),
        );
        let a = document(
            &r,
            &[SignalName::ScreenReplay, SignalName::PrintedCopy],
            &Bands::default(),
        )
        .unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
        assert_eq!(a.score(), Some(0.305));
        assert_eq!(
            a.reasons,
            vec!["screen_replay scored 30.5/100 (medium forgery risk band 31-60)"]
        );
    }

    #[test]
    fn missing_requested_pipeline_is_not_performed() {
        let r = resp(json!({"result":{"screenReplay":{"liveness_score":95}}}));
        let a = document(&r, &ALL, &Bands::default()).unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.signals[1].verdict, SignalVerdict::NotPerformed);
        assert_eq!(a.signals[1].score, None);
        assert!(
            a.reasons.contains(
                &"portrait_substitution was not performed by argos (missing from its result)"
                    .to_string()
            )
        );
        let none = document(&resp(json!({"result":{}})), &ALL, &Bands::default()).unwrap();
        assert_eq!(none.verdict(), Verdict::Inconclusive);
    }

    #[test]
    fn out_of_range_score_is_a_vendor_fault() {
        let r = resp(json!({"result":{"screenReplay":{"liveness_score":140}}}));
        let e = document(&r, &ALL, &Bands::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Outage { retry_after: None });
    }

    #[test]
    fn face_scores_use_face_bands() {
        let r: FaceResponse = serde_json::from_value(json!({"apiType":"id_live_face","result":{"liveness_score":95},"transactionId":"e0nvom3caiis7"})).unwrap();
        let a = face(&r, &Bands::default()).unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.95));
        assert_eq!(
            a.reasons,
            vec!["face_liveness scored 95/100 (live above 60)"]
        );
        let r: FaceResponse =
            serde_json::from_value(json!({"result":{"liveness_score":12.5}})).unwrap();
        let a = face(&r, &Bands::default()).unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(
            a.reasons,
            vec!["face_liveness scored 12.5/100 (spoof at or below 30)"]
        );
    }

    #[test]
    fn configurable_bands() {
        let b = Bands {
            live_above: 80.0,
            spoof_at_or_below: 50.0,
        };
        let r = resp(json!({"result":{"screenReplay":{"liveness_score":75}}}));
        let a = document(&r, &[SignalName::ScreenReplay], &b).unwrap();
        assert_eq!(a.verdict(), Verdict::Review);
    }

    #[test]
    fn error_shapes_and_code_types() {
        // Nested with a string code (OpenAPI), flat with a number code (callback page).
        let nested = br#"{"error":{"statusCode":400,"apiType":"id_live_doc","transactionId":"t1","engineVersion":"id_liveness@3.4.2","errorCode":"1009","message":"Fail to analyze document"}}"#;
        let flat = br#"{"statusCode":400,"apiType":"id_live_doc","transactionId":"t1","errorCode":1009,"message":"Fail to analyze document"}"#;
        for body in [&nested[..], &flat[..]] {
            let a = error_response(400, body, None, &ALL).unwrap();
            assert_eq!(a.verdict(), Verdict::Inconclusive);
            assert_eq!(a.score(), None);
            assert_eq!(
                a.reasons,
                vec!["argos could not analyse the document (error 1009: Fail to analyze document)"]
            );
            assert_eq!(a.vendor.transaction_id.as_deref(), Some("t1"));
            assert!(
                a.signals
                    .iter()
                    .all(|s| s.verdict == SignalVerdict::NotPerformed)
            );
        }
        let rejected = ErrorKind::Permanent(FailureClass::VendorRejectedRequest);
        let wait = Some(Duration::from_secs(2));
        for (code, kind) in [
            ("1003", ErrorKind::Transient { retry_after: wait }),
            ("1005", rejected),
            ("1007", rejected),
            ("1008", rejected),
            ("1010", rejected),
            ("1016", rejected),
            ("1001", ErrorKind::Credentials),
        ] {
            let as_string = format!(r#"{{"error":{{"errorCode":"{code}","message":"m"}}}}"#);
            let as_number = format!(r#"{{"errorCode":{code},"message":"m"}}"#);
            for body in [as_string, as_number] {
                let e = error_response(400, body.as_bytes(), wait, &ALL).unwrap_err();
                assert_eq!(e.kind, kind, "{body}");
                assert_eq!(e.vendor_code.as_deref(), Some(code));
                assert_eq!(e.http_status, Some(400));
            }
        }
        let face = error_response(
            400,
            br#"{"transactionId":"f","message":"Fail to analyze face","errorCode":1017}"#,
            None,
            &[SignalName::FaceLiveness],
        )
        .unwrap();
        assert_eq!(face.verdict(), Verdict::Inconclusive);
    }

    #[test]
    fn bodies_without_a_code_fall_back_to_the_status() {
        for (status, kind) in [
            (500, ErrorKind::Outage { retry_after: None }),
            (502, ErrorKind::Outage { retry_after: None }),
            (429, ErrorKind::Transient { retry_after: None }),
            (408, ErrorKind::Transient { retry_after: None }),
            (401, ErrorKind::Credentials),
            (403, ErrorKind::Credentials),
            (
                413,
                ErrorKind::Permanent(FailureClass::VendorRejectedRequest),
            ),
        ] {
            for body in [
                &b"<html>bad gateway</html>"[..],
                b"",
                b"{}",
                br#"{"error":"x"}"#,
            ] {
                let e = error_response(status, body, None, &ALL).unwrap_err();
                assert_eq!(e.kind, kind, "{status} {:?}", String::from_utf8_lossy(body));
                assert_eq!(e.http_status, Some(status));
            }
        }
    }
}
