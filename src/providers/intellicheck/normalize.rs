//! Intellicheck answers → our assessment. Pure: fixtures in, assessments out.
//!
//! Per check and side (docs/vendors.md): `live` 1 → live, 0 → spoof, 2 or a null
//! probability → not performed; the normalized score is the probability.
//! Intellicheck has no review band.

use super::wire::{CheckResult, Finding, LivenessObject, SideResult};
use crate::domain::assessment::{Assessment, Severity, SignalOutcome, VendorRefs, Warning};
use crate::domain::{ProviderName, Side, SignalName, SignalVerdict};
use crate::providers::{ErrorKind, VendorError};
use serde_json::{Number, Value};
use std::time::Duration;

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Front => "front",
        Side::Back => "back",
    }
}

fn check_of(side: &SideResult, signal: SignalName) -> Option<&CheckResult> {
    match signal {
        SignalName::ScreenReplay => side.screen_replay.as_ref(),
        SignalName::PrintedCopy => side.printed_copy.as_ref(),
        SignalName::PortraitSubstitution => side.portrait_substitution.as_ref(),
        SignalName::FaceLiveness => None,
    }
}

fn fault(message: String) -> VendorError {
    VendorError::outage(format!("intellicheck returned {message}"))
}

/// One check on one side, with its explanation.
fn explain(
    signal: SignalName,
    side: Side,
    check: Option<&CheckResult>,
) -> Result<(SignalOutcome, String), VendorError> {
    let s = side_name(side);
    let not_performed = |why: String| {
        Ok((
            SignalOutcome::not_performed(signal, Some(side)),
            format!("{signal} ({s}) was not performed by intellicheck ({why})"),
        ))
    };
    let Some(check) = check else {
        return not_performed("missing from its result".into());
    };
    let live = match &check.live {
        None => None,
        Some(l) => Some(
            l.as_int()
                .ok_or_else(|| fault(format!("live {l:?} for {signal} ({s})")))?,
        ),
    };
    let Some(p) = &check.probability else {
        let live = live.map_or("absent".into(), |l| l.to_string());
        return not_performed(format!("live {live}, probability null"));
    };
    if live == Some(2) {
        return not_performed(format!("live 2, probability {p}"));
    }
    let prob = p
        .as_f64()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| fault(format!("probability {p} for {signal} ({s}), outside 0-1")))?;
    let threshold = check.threshold.as_ref().and_then(Number::as_f64);
    let is_live = match (live, threshold) {
        (Some(1), _) => true,
        (Some(0), _) => false,
        // `live` is derived from the two numbers: derive it ourselves when it is missing.
        (None, Some(t)) => prob >= t,
        (other, _) => {
            return Err(fault(format!(
                "live {} for {signal} ({s}) with no threshold to judge the probability by",
                other.map_or("absent".into(), |l| l.to_string())
            )));
        }
    };
    let judged = if is_live { "live" } else { "not live" };
    // `live` is the vendor's verdict; the words follow the numbers only
    // where the two agree.
    let cutoff = match (&check.threshold, threshold) {
        (Some(t), Some(tf)) if is_live && prob >= tf => format!("at or above threshold {t}"),
        (Some(t), Some(tf)) if !is_live && prob < tf => format!("below threshold {t}"),
        (Some(t), _) => format!("with threshold {t}, judged {judged} by the vendor"),
        (None, _) => format!("judged {judged} by the vendor"),
    };
    let outcome = SignalOutcome {
        name: signal,
        side: Some(side),
        verdict: if is_live {
            SignalVerdict::Live
        } else {
            SignalVerdict::Spoof
        },
        score: Some(prob),
        vendor_score: Some(p.clone()),
        threshold: check.threshold.clone(),
    };
    Ok((outcome, format!("{signal} ({s}) probability {p} {cutoff}")))
}

/// The document liveness object of `/get-results`, for the sides we
/// submitted. `success: false` is the vendor failing to process: transient.
pub fn liveness(
    obj: &LivenessObject,
    requested: &[SignalName],
    back_submitted: bool,
    transaction_id: &str,
) -> Result<Assessment, VendorError> {
    let refs = VendorRefs {
        transaction_id: Some(transaction_id.to_owned()),
        ..Default::default()
    };
    let message = obj.message.as_deref().unwrap_or("no message");
    if obj.success == Some(false) {
        return Err(VendorError::outage(format!(
            "intellicheck could not process transaction {transaction_id} (success false: {message}); it will be retried"
        ))
        .with_code("success=false"));
    }
    let sides: &[Side] = if back_submitted {
        &[Side::Front, Side::Back]
    } else {
        &[Side::Front]
    };
    let data = obj.data.as_ref();
    let mut explained = Vec::with_capacity(requested.len() * sides.len());
    for &side in sides {
        let result = data.and_then(|d| match side {
            Side::Front => d.front.as_ref(),
            Side::Back => d.back.as_ref(),
        });
        for &signal in requested {
            explained.push(match result {
                Some(r) => explain(signal, side, check_of(r, signal))?,
                None => {
                    let s = side_name(side);
                    let why = if obj.result == Some(false) {
                        format!("no {s} result: {message}")
                    } else {
                        format!("no {s} result")
                    };
                    (
                        SignalOutcome::not_performed(signal, Some(side)),
                        format!("{signal} ({s}) was not performed by intellicheck ({why})"),
                    )
                }
            });
        }
    }
    let mut a = Assessment::from_explained(explained, refs);
    a.warnings = obj
        .image_quality_findings
        .iter()
        .flatten()
        .map(warning)
        .collect();
    Ok(a)
}

/// Our words for the documented image quality codes.
fn known_finding(code: i64) -> Option<&'static str> {
    match code {
        300 => Some("the front of the document was sent as the back"),
        301 => Some("the back of the document was sent as the front"),
        400 => Some("the front of the document was sent via submit-back"),
        _ => None,
    }
}

/// An image quality finding as a warning: 3xx warning (processing went
/// on), 4xx error (the vendor says the transaction failed); codes outside
/// the documented families are kept as warnings, since the vendor's own
/// message is all we know of them.
pub fn warning(f: &Finding) -> Warning {
    let code = f.code.as_ref().map(|c| c.text()).unwrap_or_default();
    let n = f.code.as_ref().and_then(|c| c.as_int());
    let severity = match n {
        Some(400..=499) => Severity::Error,
        _ => Severity::Warning,
    };
    let vendor_text = f
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let message = match (n.and_then(known_finding), vendor_text) {
        (Some(ours), Some(theirs)) => format!("{ours} ({theirs})"),
        (Some(ours), None) => ours.to_owned(),
        (None, Some(theirs)) => format!("image quality finding: {theirs}"),
        (None, None) => "image quality finding without a message".to_owned(),
    };
    Warning {
        code: if code.is_empty() {
            "image_quality".into()
        } else {
            format!("image_quality_{code}")
        },
        severity,
        message,
    }
}

/// `/start` confirms the signals the account is subscribed to. Without
/// document liveness no result would ever come: that is the account's
/// setup, not this job, so the vendor is paused like for refused
/// credentials rather than every job polling until it gives up.
pub fn check_confirmed_signals(confirmed: Option<&Value>) -> Result<(), VendorError> {
    let Some(Value::Array(signals)) = confirmed else {
        // Not echoed: nothing to check.
        return Ok(());
    };
    if signals
        .iter()
        .any(|s| s.as_str() == Some(super::wire::SIGNAL_DOCUMENT_LIVENESS))
    {
        return Ok(());
    }
    let listed: Vec<String> = signals
        .iter()
        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
        .collect();
    Err(VendorError::credentials(format!(
        "intellicheck /start did not confirm the document_liveness_idrnd signal (confirmed: [{}]): \
         the account is not subscribed to document liveness; ask Intellicheck to enable it. The vendor is paused meanwhile",
        listed.join(", ")
    ))
    .with_code("signal_not_subscribed"))
}

/// The vendor's text from an error body: plain JSON (`detail`, `message`,
/// `error`), an envelope, or short plain text. Cut short: it is echoed into
/// dead letters.
fn error_text(body: &[u8]) -> Option<String> {
    let pick = |v: &Value| -> Option<String> {
        ["detail", "message", "error"]
            .iter()
            .find_map(|k| match v.get(*k)? {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                Value::Array(items) => Some(validation_items(items)),
                other => Some(other.to_string()),
            })
    };
    let text = if let Ok(v) = serde_json::from_slice::<Value>(body) {
        pick(&v)
    } else if let Ok(env) = super::wire::decode(body) {
        pick(&env.private_data).or_else(|| pick(&env.public_data))
    } else {
        std::str::from_utf8(body)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.starts_with('<'))
            .map(str::to_owned)
    }?;
    crate::providers::http::vendor_text(&scrub(&text))
}

/// FastAPI-style validation items (`[{"loc": [...], "msg": "..."}]`) as
/// `loc.path: msg`; their `input` (which may be our image) is left out.
fn validation_items(items: &[Value]) -> String {
    let one = |i: &Value| -> String {
        let msg = i.get("msg").and_then(Value::as_str);
        let loc = i.get("loc").and_then(Value::as_array).map(|l| {
            l.iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(".")
        });
        match (loc, msg) {
            (Some(l), Some(m)) => format!("{l}: {m}"),
            (None, Some(m)) => m.to_owned(),
            _ => "unexplained validation error".to_owned(),
        }
    };
    items.iter().map(one).collect::<Vec<_>>().join("; ")
}

/// Any long run of base64 or hex characters replaced: a vendor echoing
/// our request must not put image bytes into a dead letter. (Control
/// characters and length are [`crate::providers::http::vendor_text`]'s.)
fn scrub(text: &str) -> String {
    let is_blob = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 40 {
            out.push_str("[data removed]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_blob(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A non-2xx answer to one step of the flow.
pub fn error_response(
    step: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> VendorError {
    let mut e = VendorError::from_status(ProviderName::Intellicheck, status, retry_after);
    let advice = match e.kind {
        ErrorKind::Credentials => {
            "check providers.intellicheck.customer_id and signing_key; the vendor is paused until they work"
        }
        ErrorKind::Permanent(_) => {
            "the worker sent a request intellicheck considers malformed; report it as a worker bug"
        }
        ErrorKind::Transient { .. } | ErrorKind::Outage { .. } => "it will be retried",
    };
    let said = error_text(body).map_or(String::new(), |t| format!(": \"{t}\""));
    e.message = format!("intellicheck answered HTTP {status} at {step}{said}; {advice}");
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Verdict;
    use crate::domain::dead_letter::FailureClass;
    use crate::providers::intellicheck::wire::LooseEnvelope;
    use serde_json::json;

    const ALL: [SignalName; 3] = SignalName::DOCUMENT;

    /// The liveness object inside a get-results envelope, found the way the
    /// adapter finds it.
    fn obj(private: Value) -> LivenessObject {
        let env = LooseEnvelope {
            public_data: json!({}),
            private_data: private,
        };
        serde_json::from_value(env.liveness().expect("liveness object").1.clone()).unwrap()
    }

    fn side(sr: Value, pc: Value, ps: Value) -> Value {
        json!({"screenReplay": sr, "printedCopy": pc, "portraitSubstitution": ps, "live": 1})
    }

    fn check(p: Value, live: Value) -> Value {
        json!({"threshold": 0.5, "live": live, "probability": p})
    }

    #[test]
    fn documented_example_shape_is_live() {
        let o = obj(json!({"documentLivenessIdRnD": {
            "success": true, "result": true, "message": "success", "imageQualityFindings": [],
            "data": {"front": side(check(json!(0.93), json!(1)), check(json!(0.871), json!(1)), check(json!(0.5), json!(1))), "back": null}
        }}));
        let a = liveness(&o, &ALL, false, "t-1").unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.5));
        assert_eq!(
            a.reasons,
            vec![
                "screen_replay (front) probability 0.93 at or above threshold 0.5",
                "printed_copy (front) probability 0.871 at or above threshold 0.5",
                "portrait_substitution (front) probability 0.5 at or above threshold 0.5",
            ]
        );
        assert_eq!(a.vendor.transaction_id.as_deref(), Some("t-1"));
        assert!(a.signals.iter().all(|s| s.side == Some(Side::Front)));
        assert_eq!(
            a.signals[1].vendor_score,
            Some(Number::from_f64(0.871).unwrap())
        );
        assert_eq!(a.signals[1].threshold, Some(Number::from_f64(0.5).unwrap()));
        assert!(a.warnings.is_empty());
    }

    #[test]
    fn every_key_spelling_and_live_as_string_or_integer() {
        for key in super::super::wire::LIVENESS_KEYS {
            for (live0, live1) in [(json!(0), json!(1)), (json!("0"), json!("1"))] {
                let o = obj(json!({ key: {
                    "success": true, "result": true, "message": "success",
                    "data": {"front": side(check(json!(0.97), live1.clone()), check(json!(0.12), live0.clone()), check(json!(0.8), live1.clone()))}
                }}));
                let a = liveness(&o, &ALL, false, "t").unwrap();
                assert_eq!(a.verdict(), Verdict::Spoof, "{key} {live0}");
                assert_eq!(a.score(), Some(0.12));
                assert_eq!(
                    a.reasons,
                    vec!["printed_copy (front) probability 0.12 below threshold 0.5"]
                );
            }
        }
    }

    #[test]
    fn threshold_is_the_vendors_own_0_8_or_0_5() {
        // Page versions give 0.8 and 0.5: whichever the answer carries is kept.
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": true, "result": true,
            "data": {"front": side(
                json!({"threshold": 0.8, "live": 0, "probability": 0.79}),
                json!({"threshold": 0.8, "live": 1, "probability": 0.8}),
                check(json!(0.79), json!(1)))}}}),
        );
        let a = liveness(&o, &ALL, false, "t").unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(
            a.reasons,
            vec!["screen_replay (front) probability 0.79 below threshold 0.8"]
        );
        assert_eq!(a.signals[1].threshold, Some(Number::from_f64(0.8).unwrap()));
        assert_eq!(a.signals[2].verdict, SignalVerdict::Live);
    }

    #[test]
    fn live_2_and_null_probability_are_not_performed() {
        let o = obj(json!({"document_liveness": {
            "success": true, "result": true,
            "data": {"front": side(check(Value::Null, json!("2")), check(json!(0.7), json!(1)), check(Value::Null, json!(2)))}
        }}));
        let a = liveness(&o, &ALL, false, "t").unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.7));
        assert_eq!(a.signals[0].verdict, SignalVerdict::NotPerformed);
        assert_eq!(a.signals[0].score, None);
        assert_eq!(a.signals[0].vendor_score, None);
        assert_eq!(
            a.reasons,
            vec![
                "screen_replay (front) was not performed by intellicheck (live 2, probability null)",
                "printed_copy (front) probability 0.7 at or above threshold 0.5",
                "portrait_substitution (front) was not performed by intellicheck (live 2, probability null)",
            ]
        );
        // Live 2 with a probability still given: not performed, as `live` says.
        let o = obj(json!({"document_liveness": {"success": true,
            "data": {"front": side(check(json!(0.3), json!(2)), check(Value::Null, json!(2)), check(Value::Null, json!(2)))}}}));
        let a = liveness(&o, &ALL, false, "t").unwrap();
        assert_eq!(a.verdict(), Verdict::Inconclusive);
        assert_eq!(a.score(), None);
        assert_eq!(
            a.reasons[0],
            "screen_replay (front) was not performed by intellicheck (live 2, probability 0.3)"
        );
    }

    #[test]
    fn back_side_and_null_back() {
        let front = side(
            check(json!(0.9), json!(1)),
            check(json!(0.9), json!(1)),
            check(json!(0.9), json!(1)),
        );
        let back = side(
            check(json!(0.2), json!(0)),
            check(json!(0.95), json!(1)),
            check(json!(0.6), json!(1)),
        );
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": true, "result": true,
            "data": {"front": front, "back": back}}}),
        );
        let a = liveness(
            &o,
            &[SignalName::ScreenReplay, SignalName::PrintedCopy],
            true,
            "t",
        )
        .unwrap();
        assert_eq!(a.signals.len(), 4);
        let sides: Vec<_> = a
            .signals
            .iter()
            .map(|s| (s.name, s.side.unwrap()))
            .collect();
        assert_eq!(
            sides,
            [
                (SignalName::ScreenReplay, Side::Front),
                (SignalName::PrintedCopy, Side::Front),
                (SignalName::ScreenReplay, Side::Back),
                (SignalName::PrintedCopy, Side::Back),
            ]
        );
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(
            a.reasons,
            vec!["screen_replay (back) probability 0.2 below threshold 0.5"]
        );
        // Without a back image the back result is ignored, even if present.
        let a = liveness(&o, &ALL, false, "t").unwrap();
        assert_eq!(a.signals.len(), 3);
        assert_eq!(a.verdict(), Verdict::Live);

        // data.back null although we submitted one: the back is not performed.
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": true, "result": true, "message": "success",
            "data": {"front": side(check(json!(0.9), json!(1)), check(json!(0.9), json!(1)), check(json!(0.9), json!(1))), "back": null}}}),
        );
        let a = liveness(&o, &[SignalName::PrintedCopy], true, "t").unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.signals[1].verdict, SignalVerdict::NotPerformed);
        assert_eq!(a.signals[1].side, Some(Side::Back));
        assert_eq!(
            a.reasons[1],
            "printed_copy (back) was not performed by intellicheck (no back result)"
        );
    }

    #[test]
    fn null_front_or_no_data_is_inconclusive() {
        for data in [json!({"front": null, "back": null}), Value::Null] {
            let o = obj(
                json!({"documentLivenessIdRnD": {"success": true, "result": false, "message": "not an ID card", "data": data}}),
            );
            let a = liveness(&o, &ALL, false, "t").unwrap();
            assert_eq!(a.verdict(), Verdict::Inconclusive);
            assert_eq!(a.reasons.len(), 3);
            assert_eq!(
                a.reasons[0],
                "screen_replay (front) was not performed by intellicheck (no front result: not an ID card)"
            );
        }
    }

    #[test]
    fn success_false_is_transient() {
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": false, "result": false, "message": "processing error", "data": null}}),
        );
        let e = liveness(&o, &ALL, false, "t-9").unwrap_err();
        assert!(e.is_outage(), "{e}");
        assert!(
            e.message.contains("t-9") && e.message.contains("processing error"),
            "{}",
            e.message
        );
        assert_eq!(e.vendor_code.as_deref(), Some("success=false"));
    }

    #[test]
    fn missing_live_is_derived_and_bad_numbers_are_vendor_faults() {
        let o = obj(json!({"documentLivenessIdRnD": {"success": true,
            "data": {"front": {"screenReplay": {"threshold": 0.5, "probability": 0.49}}}}}));
        let a = liveness(
            &o,
            &[SignalName::ScreenReplay, SignalName::PrintedCopy],
            false,
            "t",
        )
        .unwrap();
        assert_eq!(a.signals[0].verdict, SignalVerdict::Spoof);
        assert_eq!(
            a.signals[1].verdict,
            SignalVerdict::NotPerformed,
            "a missing check"
        );
        // The vendor's `live` wins over the numbers, and the reason says so.
        let o = obj(json!({"documentLivenessIdRnD": {"success": true,
            "data": {"front": {"screenReplay": {"threshold": 0.8, "live": 0, "probability": 0.85},
                               "printedCopy": {"live": "1", "probability": 0.2}}}}}));
        let a = liveness(
            &o,
            &[SignalName::ScreenReplay, SignalName::PrintedCopy],
            false,
            "t",
        )
        .unwrap();
        assert_eq!(a.signals[0].verdict, SignalVerdict::Spoof);
        assert_eq!(a.signals[1].verdict, SignalVerdict::Live);
        assert_eq!(
            a.reasons,
            vec![
                "screen_replay (front) probability 0.85 with threshold 0.8, judged not live by the vendor"
            ]
        );
        assert_eq!(
            explain(
                SignalName::PrintedCopy,
                Side::Front,
                o.data
                    .as_ref()
                    .unwrap()
                    .front
                    .as_ref()
                    .unwrap()
                    .printed_copy
                    .as_ref()
            )
            .unwrap()
            .1,
            "printed_copy (front) probability 0.2 judged live by the vendor"
        );
        for bad in [
            json!({"threshold": 0.5, "live": 1, "probability": 1.7}),
            json!({"threshold": 0.5, "live": "yes", "probability": 0.7}),
            json!({"threshold": 0.5, "live": 3, "probability": 0.7}),
            json!({"live": 5, "probability": 0.7}),
        ] {
            let o = obj(
                json!({"documentLivenessIdRnD": {"success": true, "data": {"front": {"screenReplay": bad}}}}),
            );
            let e = liveness(&o, &[SignalName::ScreenReplay], false, "t").unwrap_err();
            assert!(e.is_outage(), "{e}");
        }
    }

    #[test]
    fn image_quality_findings_code_as_string_or_number() {
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": true, "result": true,
            "imageQualityFindings": [
                {"code": 301, "message": "Back image sent to submit-front"},
                {"code": "300", "message": "Front image sent to submit-back"},
                {"code": "400"},
                {"code": 512, "message": "Glare"},
                {"code": "blur", "message": ""},
                {"message": "odd"}
            ],
            "data": {"front": side(check(json!(0.9), json!(1)), check(json!(0.9), json!(1)), check(json!(0.9), json!(1)))}}}),
        );
        let a = liveness(&o, &ALL, false, "t").unwrap();
        let w: Vec<(&str, Severity, &str)> = a
            .warnings
            .iter()
            .map(|w| (w.code.as_str(), w.severity, w.message.as_str()))
            .collect();
        assert_eq!(
            w,
            [
                (
                    "image_quality_301",
                    Severity::Warning,
                    "the back of the document was sent as the front (Back image sent to submit-front)"
                ),
                (
                    "image_quality_300",
                    Severity::Warning,
                    "the front of the document was sent as the back (Front image sent to submit-back)"
                ),
                (
                    "image_quality_400",
                    Severity::Error,
                    "the front of the document was sent via submit-back"
                ),
                (
                    "image_quality_512",
                    Severity::Warning,
                    "image quality finding: Glare"
                ),
                (
                    "image_quality_blur",
                    Severity::Warning,
                    "image quality finding without a message"
                ),
                (
                    "image_quality",
                    Severity::Warning,
                    "image quality finding: odd"
                ),
            ]
        );
        // Findings never change the verdict.
        assert_eq!(a.verdict(), Verdict::Live);
        // A null list is no findings.
        let o = obj(
            json!({"documentLivenessIdRnD": {"success": true, "imageQualityFindings": null,
            "data": {"front": side(check(json!(0.9), json!(1)), check(json!(0.9), json!(1)), check(json!(0.9), json!(1)))}}}),
        );
        assert!(liveness(&o, &ALL, false, "t").unwrap().warnings.is_empty());
    }

    #[test]
    fn start_must_confirm_document_liveness() {
        assert!(check_confirmed_signals(None).is_ok());
        assert!(
            check_confirmed_signals(Some(&json!(["ocr_scan", "document_liveness_idrnd"]))).is_ok()
        );
        let e = check_confirmed_signals(Some(&json!(["ocr_scan", "idcheck"]))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(
            e.message.contains("confirmed: [ocr_scan, idcheck]"),
            "{}",
            e.message
        );
    }

    #[test]
    fn http_errors_land_in_their_class() {
        let rejected = ErrorKind::Permanent(FailureClass::VendorRejectedRequest);
        let wait = Some(Duration::from_secs(3));
        for (status, kind) in [
            (400, rejected),
            (422, rejected),
            (401, ErrorKind::Credentials),
            (403, ErrorKind::Credentials),
            (408, ErrorKind::Transient { retry_after: wait }),
            (429, ErrorKind::Transient { retry_after: wait }),
            (500, ErrorKind::Outage { retry_after: wait }),
            (503, ErrorKind::Outage { retry_after: wait }),
        ] {
            let e = error_response(
                "/submit-front",
                status,
                br#"{"detail":"Invalid signature"}"#,
                Some(Duration::from_secs(3)),
            );
            assert_eq!(e.kind, kind, "{status}");
            assert_eq!(e.http_status, Some(status));
            assert!(
                e.message
                    .contains("at /submit-front: \"Invalid signature\""),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn error_bodies_of_every_shape() {
        let env = super::super::wire::encode(
            &json!({}),
            &json!({"success": false, "message": "front is required"}),
        );
        for (body, want) in [
            (&br#"{"message":"bad"}"#[..], Some("bad")),
            (
                br#"{"detail":[{"loc":["body","private_data","front"],"msg":"field required","input":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"},{"msg":"x"}]}"#,
                Some("body.private_data.front: field required; x"),
            ),
            (
                br#"{"detail":"bad front iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk given for txn-1234"}"#,
                Some("bad front [data removed] given for txn-1234"),
            ),
            (&env[..], Some("front is required")),
            (b"Bad Gateway", Some("Bad Gateway")),
            (b"<html>502</html>", None),
            (b"", None),
        ] {
            assert_eq!(
                error_text(body).as_deref(),
                want,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(r#"{{"detail":"{}"}}"#, "é".repeat(300));
        assert!(error_text(long.as_bytes()).unwrap().chars().count() <= 201);
    }
}
