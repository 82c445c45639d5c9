//! What an adapter hands back after a vendor answered: per-signal outcomes in
//! the common 0–1 scale plus reasons, warnings and the vendor's references.
//! The job verdict and score are derived here, once, for every vendor.

use super::{Side, SignalName, SignalVerdict, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One scored (or skipped) signal, as published in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignalOutcome {
    pub name: SignalName,
    /// Only for vendors that score document sides separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    pub verdict: SignalVerdict,
    /// 0–1, 1 = certainly live; null when not performed.
    pub score: Option<f64>,
    /// The vendor's own number, in the vendor's own scale, exactly as sent.
    pub vendor_score: Option<serde_json::Number>,
    /// The vendor's own cutoff, when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<serde_json::Number>,
}

impl SignalOutcome {
    pub fn not_performed(name: SignalName, side: Option<Side>) -> Self {
        SignalOutcome {
            name,
            side,
            verdict: SignalVerdict::NotPerformed,
            score: None,
            vendor_score: None,
            threshold: None,
        }
    }

    pub fn performed(&self) -> bool {
        self.verdict != SignalVerdict::NotPerformed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// A vendor warning in our words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Warning {
    pub code: String,
    pub severity: Severity,
    pub message: String,
}

/// The vendor's references for a support ticket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VendorRefs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
}

/// A vendor's answer about one job, already normalized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assessment {
    pub signals: Vec<SignalOutcome>,
    pub reasons: Vec<String>,
    pub warnings: Vec<Warning>,
    pub vendor: VendorRefs,
}

impl Assessment {
    /// Builds an assessment from per-signal outcomes, each with a sentence
    /// explaining it, and keeps the sentences that explain the verdict: the
    /// spoof signals for a spoof, the review signals for a review, every
    /// signal for a live verdict, and every skipped signal in any case.
    pub fn from_explained(explained: Vec<(SignalOutcome, String)>, vendor: VendorRefs) -> Self {
        let mut a = Assessment {
            signals: explained.iter().map(|(s, _)| s.clone()).collect(),
            vendor,
            ..Default::default()
        };
        let decisive = match a.verdict() {
            Verdict::Spoof => Some(SignalVerdict::Spoof),
            Verdict::Review => Some(SignalVerdict::Review),
            Verdict::Live | Verdict::Inconclusive => None,
        };
        a.reasons = explained
            .into_iter()
            .filter(|(s, _)| {
                s.verdict == SignalVerdict::NotPerformed || decisive.is_none_or(|d| s.verdict == d)
            })
            .map(|(_, r)| r)
            .collect();
        a
    }

    /// The vendor could not analyse the image: every requested signal is
    /// reported as not performed and the reason says why.
    pub fn inconclusive(signals: Vec<SignalOutcome>, reason: String, vendor: VendorRefs) -> Self {
        Assessment {
            signals,
            reasons: vec![reason],
            warnings: Vec::new(),
            vendor,
        }
    }

    /// docs/messages.md#verdict-and-score-rules: spoof if any performed signal is spoof; else review if any
    /// is review; else live if at least one was performed; else inconclusive.
    pub fn verdict(&self) -> Verdict {
        let has = |v: SignalVerdict| self.signals.iter().any(|s| s.verdict == v);
        if has(SignalVerdict::Spoof) {
            Verdict::Spoof
        } else if has(SignalVerdict::Review) {
            Verdict::Review
        } else if self.signals.iter().any(SignalOutcome::performed) {
            Verdict::Live
        } else {
            Verdict::Inconclusive
        }
    }

    /// The lowest normalized score among performed signals.
    pub fn score(&self) -> Option<f64> {
        self.signals
            .iter()
            .filter(|s| s.performed())
            .filter_map(|s| s.score)
            .reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: SignalName, verdict: SignalVerdict, score: Option<f64>) -> SignalOutcome {
        SignalOutcome {
            name,
            side: None,
            verdict,
            score,
            vendor_score: None,
            threshold: None,
        }
    }

    #[test]
    fn verdict_precedence_spoof_then_review_then_live() {
        use SignalName::*;
        use SignalVerdict as V;
        let a = |v: Vec<SignalOutcome>| Assessment {
            signals: v,
            ..Default::default()
        };
        let spoof = a(vec![
            sig(ScreenReplay, V::Review, Some(0.5)),
            sig(PrintedCopy, V::Spoof, Some(0.2)),
            sig(PortraitSubstitution, V::Live, Some(0.9)),
        ]);
        assert_eq!(spoof.verdict(), Verdict::Spoof);
        assert_eq!(spoof.score(), Some(0.2));
        let review = a(vec![
            sig(ScreenReplay, V::Review, Some(0.5)),
            sig(PrintedCopy, V::Live, Some(0.45)),
        ]);
        assert_eq!(review.verdict(), Verdict::Review);
        // The score is the lowest, whichever signal decided the verdict.
        assert_eq!(review.score(), Some(0.45));
        let live = a(vec![
            sig(ScreenReplay, V::Live, Some(0.7)),
            SignalOutcome::not_performed(PrintedCopy, None),
        ]);
        assert_eq!(live.verdict(), Verdict::Live);
        assert_eq!(live.score(), Some(0.7));
        let none = a(vec![SignalOutcome::not_performed(PrintedCopy, None)]);
        assert_eq!(none.verdict(), Verdict::Inconclusive);
        assert_eq!(none.score(), None);
        assert_eq!(a(vec![]).verdict(), Verdict::Inconclusive);
    }
}
