//! Property tests of every vendor's normalization (docs/fuzzing.md): the
//! normalized score stays within 0..=1 whatever number the vendor sends, a
//! verdict never improves when a signal's score falls, and the verdict at
//! a band edge is taken on the vendor's own number, not on the rounded
//! 0-1 score.

use crate::domain::assessment::Assessment;
use crate::domain::bands::Bands;
use crate::domain::{SignalName, SignalVerdict, Verdict};
use crate::providers::{argos, didit, intellicheck};
use proptest::prelude::*;
use serde_json::{Value, json};

fn job_rank(v: Verdict) -> u8 {
    match v {
        Verdict::Spoof => 0,
        Verdict::Review => 1,
        Verdict::Live => 2,
        Verdict::Inconclusive => 3,
    }
}

fn scores_in_unit_range(a: &Assessment) -> Result<(), TestCaseError> {
    for s in &a.signals {
        if let Some(x) = s.score {
            prop_assert!(x.is_finite() && (0.0..=1.0).contains(&x), "{x}");
        }
    }
    if let Some(x) = a.score() {
        prop_assert!((0.0..=1.0).contains(&x));
    }
    Ok(())
}

/// Any JSON number a vendor might send: in range or not, whole or not.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..=100).prop_map(Value::from),
        (0.0f64..=100.0).prop_map(Value::from),
        (0.0f64..=1.0).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
    ]
}

fn argos_document(scores: &[Value; 3]) -> argos::wire::DocumentResponse {
    serde_json::from_value(json!({"result": {
        "screenReplay": {"liveness_score": scores[0]},
        "paperPrinted": {"liveness_score": scores[1]},
        "replacePortraits": {"liveness_score": scores[2]},
    }}))
    .unwrap()
}

fn intellicheck_obj(probs: &[f64; 3], threshold: f64) -> intellicheck::wire::LivenessObject {
    // No `live`: the adapter derives it from the probability and threshold.
    let check = |p: f64| json!({"threshold": threshold, "probability": p});
    serde_json::from_value(json!({"success": true, "result": true, "data": {"front": {
        "screenReplay": check(probs[0]),
        "printedCopy": check(probs[1]),
        "portraitSubstitution": check(probs[2]),
    }}}))
    .unwrap()
}

fn didit_report(status: &str, score: Value, warnings: Value) -> didit::wire::Report {
    serde_json::from_value(
        json!({"liveness": {"status": status, "score": score, "warnings": warnings}}),
    )
    .unwrap()
}

proptest! {
    #[test]
    fn argos_scores_stay_in_unit_range(a in number(), b in number(), c in number()) {
        let r = argos_document(&[a, b, c]);
        if let Ok(x) = argos::normalize::document(&r, &SignalName::DOCUMENT, &Bands::default()) {
            scores_in_unit_range(&x)?;
        }
        let face: argos::wire::FaceResponse =
            serde_json::from_value(json!({"result": {"liveness_score": r.result.screen_replay.unwrap().liveness_score}}))
                .unwrap();
        if let Ok(x) = argos::normalize::face(&face, &Bands::default()) {
            scores_in_unit_range(&x)?;
        }
    }

    #[test]
    fn argos_verdict_never_improves_when_a_score_falls(
        scores in proptest::array::uniform3(0.0f64..=100.0),
        i in 0usize..3,
        fall in 0.0f64..=100.0,
    ) {
        let before = scores.map(Value::from);
        let mut after = scores;
        after[i] = (after[i] - fall).max(0.0);
        let after = after.map(Value::from);
        let b = Bands::default();
        let x = argos::normalize::document(&argos_document(&before), &SignalName::DOCUMENT, &b).unwrap();
        let y = argos::normalize::document(&argos_document(&after), &SignalName::DOCUMENT, &b).unwrap();
        prop_assert!(job_rank(y.verdict()) <= job_rank(x.verdict()));
        prop_assert!(y.score() <= x.score());
    }

    /// 30 is spoof and 60 review under the default bands, although 0.3 *
    /// 100 is 30.000000000000004: the verdict is never recomputed from the
    /// 0-1 score.
    #[test]
    fn argos_band_edges_use_the_vendor_number(edge in prop_oneof![Just(30i64), Just(60)], face in any::<bool>()) {
        let b = Bands::default();
        let v = Value::from(edge);
        let a = if face {
            let r: argos::wire::FaceResponse =
                serde_json::from_value(json!({"result": {"liveness_score": v}})).unwrap();
            argos::normalize::face(&r, &b).unwrap()
        } else {
            argos::normalize::document(&argos_document(&[v.clone(), v.clone(), v]), &SignalName::DOCUMENT, &b).unwrap()
        };
        let want = if edge == 30 { SignalVerdict::Spoof } else { SignalVerdict::Review };
        for s in &a.signals {
            prop_assert_eq!(s.verdict, want);
            prop_assert_eq!(s.score, Some(edge as f64 / 100.0));
        }
        let up = Value::from((edge as f64).next_up());
        let r: argos::wire::FaceResponse =
            serde_json::from_value(json!({"result": {"liveness_score": up}})).unwrap();
        let next = argos::normalize::face(&r, &b).unwrap();
        let want = if edge == 30 { SignalVerdict::Review } else { SignalVerdict::Live };
        prop_assert_eq!(next.signals[0].verdict, want);
    }

    #[test]
    fn intellicheck_scores_stay_in_unit_range(p in number(), t in number(), live in 0i64..4) {
        let o: intellicheck::wire::LivenessObject = serde_json::from_value(json!({"data": {"front": {
            "screenReplay": {"threshold": t, "probability": p, "live": live}}}})).unwrap();
        if let Ok(x) = intellicheck::normalize::liveness(&o, &SignalName::DOCUMENT, false, "t") {
            scores_in_unit_range(&x)?;
        }
    }

    /// With `live` derived from the numbers: a probability equal to the
    /// threshold is live, the next float down is not; a falling
    /// probability never improves the verdict.
    #[test]
    fn intellicheck_verdict_never_improves_when_a_probability_falls(
        probs in proptest::array::uniform3(0.0f64..=1.0),
        threshold in 0.0f64..=1.0,
        i in 0usize..3,
        fall in 0.0f64..=1.0,
    ) {
        let mut lower = probs;
        lower[i] = (lower[i] - fall).max(0.0);
        let all = SignalName::DOCUMENT;
        let x = intellicheck::normalize::liveness(&intellicheck_obj(&probs, threshold), &all, false, "t").unwrap();
        let y = intellicheck::normalize::liveness(&intellicheck_obj(&lower, threshold), &all, false, "t").unwrap();
        prop_assert!(job_rank(y.verdict()) <= job_rank(x.verdict()));
        prop_assert!(y.score() <= x.score());
        let edge = [threshold; 3];
        let at = intellicheck::normalize::liveness(&intellicheck_obj(&edge, threshold), &all, false, "t").unwrap();
        prop_assert_eq!(at.verdict(), Verdict::Live);
        if threshold > 0.0 {
            let below = [threshold.next_down(); 3];
            let b = intellicheck::normalize::liveness(&intellicheck_obj(&below, threshold), &all, false, "t").unwrap();
            prop_assert_eq!(b.verdict(), Verdict::Spoof);
        }
    }

    #[test]
    fn didit_scores_stay_in_unit_range(
        s in number(),
        status in proptest::sample::select(vec!["Approved", "Declined", "In Review", "Not Finished", "Expired"]),
        threshold in proptest::option::of(0.0f64..=100.0),
    ) {
        if let Ok(x) = didit::normalize::report(&didit_report(status, s, json!([])), threshold) {
            scores_in_unit_range(&x)?;
        }
    }

    /// Didit decides by status and warnings; the score alone never moves the
    /// verdict up when it falls (the emulator and the vendor add
    /// LOW_LIVENESS_SCORE at or below the threshold, which can only worsen it).
    #[test]
    fn didit_verdict_never_improves_when_the_score_falls(
        score in 0.0f64..=100.0,
        fall in 0.0f64..=100.0,
        status in proptest::sample::select(vec!["Approved", "Declined", "In Review"]),
        warning in proptest::sample::select(vec![None, Some(("LOW_FACE_QUALITY", "warning")), Some(("LOW_LIVENESS_SCORE", "error")), Some(("DUPLICATED_FACE", "information"))]),
    ) {
        let warnings = match warning {
            None => json!([]),
            Some((risk, level)) => json!([{"risk": risk, "log_type": level}]),
        };
        let lower = (score - fall).max(0.0);
        let x = didit::normalize::report(&didit_report(status, json!(score), warnings.clone()), Some(30.0)).unwrap();
        let y = didit::normalize::report(&didit_report(status, json!(lower), warnings), Some(30.0)).unwrap();
        prop_assert!(job_rank(y.verdict()) <= job_rank(x.verdict()));
        prop_assert!(y.score() <= x.score());
    }
}
