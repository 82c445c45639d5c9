//! The shadow comparison (`liveness.shadow.v1`): a job's published answer
//! beside a second vendor's answer for the same image (shadow mode).

use super::assessment::{SignalOutcome, VendorRefs, Warning};
use super::job::JobId;
use super::result::{ImageInfo, LivenessResult};
use super::{Check, ProviderName, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const SHADOW_SCHEMA: &str = "liveness.shadow.v1";

/// Published to exchange liveness.shadow with routing key
/// `<check>.<agree|disagree>`. Never a result: the job's result is the
/// primary answer alone.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "liveness.shadow.v1")]
pub struct ShadowComparison {
    #[schemars(schema_with = "shadow_schema_tag")]
    pub schema: String,
    pub job_id: JobId,
    pub check: Check,
    /// The job's metadata, values exactly as the producer sent them; omitted when the job had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub metadata: Option<Box<RawValue>>,
    /// What the job's result said.
    pub primary: PrimaryAnswer,
    /// What the shadow vendor said.
    pub shadow: ShadowAnswer,
    pub agreement: Agreement,
    /// The image both vendors were sent.
    pub image: ImageInfo,
    /// RFC 3339, when the shadow answer came.
    pub completed_at: String,
}

/// The job's published answer, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrimaryAnswer {
    pub provider: ProviderName,
    pub verdict: Verdict,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub score: Option<f64>,
}

/// The shadow vendor's answer, normalized as a result's would be.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ShadowAnswer {
    pub provider: ProviderName,
    pub verdict: Verdict,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub score: Option<f64>,
    pub signals: Vec<SignalOutcome>,
    pub reasons: Vec<String>,
    pub warnings: Vec<Warning>,
    /// The vendor's references, for its bill and support tickets.
    pub vendor: VendorRefs,
    /// Submissions to the shadow vendor for this comparison (429s and 5xx included).
    pub attempts: u32,
    /// Milliseconds from the first shadow attempt to its answer.
    pub vendor_ms: u64,
}

/// How the two answers compare.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Agreement {
    /// Both verdicts are the same.
    pub same_verdict: bool,
    /// Shadow score minus primary score; null when either has none.
    pub score_difference: Option<f64>,
}

impl Agreement {
    pub fn of(primary: &PrimaryAnswer, verdict: Verdict, score: Option<f64>) -> Agreement {
        Agreement {
            same_verdict: primary.verdict == verdict,
            score_difference: match (primary.score, score) {
                // Rounded so that 0.93 - 0.9 reads 0.03, not 0.030000000000000027.
                (Some(p), Some(s)) => Some(((s - p) * 1e6).round() / 1e6),
                _ => None,
            },
        }
    }

    /// `agree` or `disagree` (the verdicts).
    pub fn label(&self) -> &'static str {
        if self.same_verdict {
            "agree"
        } else {
            "disagree"
        }
    }
}

impl PrimaryAnswer {
    pub fn of(r: &LivenessResult) -> PrimaryAnswer {
        PrimaryAnswer {
            provider: r.provider,
            verdict: r.verdict,
            score: r.score,
        }
    }
}

impl ShadowComparison {
    /// `<check>.<agree|disagree>`, e.g. `document.disagree`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.check, self.agreement.label())
    }
}

fn shadow_schema_tag(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "const": SHADOW_SCHEMA })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_compares_verdicts_and_scores() {
        let p = PrimaryAnswer {
            provider: ProviderName::Argos,
            verdict: Verdict::Live,
            score: Some(0.9),
        };
        let a = Agreement::of(&p, Verdict::Live, Some(0.93));
        assert!(a.same_verdict);
        assert_eq!(a.score_difference, Some(0.03));
        assert_eq!(a.label(), "agree");
        let d = Agreement::of(&p, Verdict::Spoof, Some(0.2));
        assert!(!d.same_verdict);
        assert_eq!(d.score_difference, Some(-0.7));
        assert_eq!(
            Agreement::of(&p, Verdict::Inconclusive, None).score_difference,
            None
        );
    }
}
