//! The result message (`liveness.result.v1`).

use super::assessment::{SignalOutcome, VendorRefs, Warning};
use super::job::JobId;
use super::{Check, ProviderName, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const RESULT_SCHEMA: &str = "liveness.result.v1";

/// A normalized verdict for one job, published to exchange liveness.results
/// with routing key `<check>.<verdict>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "liveness.result.v1")]
pub struct LivenessResult {
    #[schemars(schema_with = "result_schema_tag")]
    pub schema: String,
    pub job_id: JobId,
    pub check: Check,
    /// The vendor actually used.
    pub provider: ProviderName,
    /// The job's metadata, values exactly as the producer sent them; omitted when the job had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub metadata: Option<Box<RawValue>>,
    pub verdict: Verdict,
    /// The lowest normalized score among performed signals (0–1, 1 = certainly live).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub score: Option<f64>,
    pub signals: Vec<SignalOutcome>,
    /// Why the verdict, in words an analyst understands.
    pub reasons: Vec<String>,
    pub warnings: Vec<Warning>,
    pub vendor: VendorRefs,
    pub image: ImageInfo,
    /// Verification attempts made with the vendor for this job across all deliveries.
    pub attempts: u32,
    pub timings_ms: Timings,
    /// RFC 3339.
    pub completed_at: String,
    /// Set when the job named no provider and its check's default vendor
    /// could not be called (paused, breaker open), so another one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// Why the vendor that answered is not the check's default one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Failover {
    /// The check's default vendor, which was not called.
    pub primary: ProviderName,
    /// Why it was not called, in words an operator understands.
    pub reason: String,
}

fn result_schema_tag(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "const": RESULT_SCHEMA })
}

/// What was verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageInfo {
    pub uri: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the image bytes.
    pub sha256: String,
    /// Sniffed from the bytes: image/jpeg, image/png or image/webp.
    pub content_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    pub fetch: u64,
    pub vendor: u64,
    pub total: u64,
}

impl LivenessResult {
    /// `<check>.<verdict>`, e.g. `document.spoof`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.check, self.verdict)
    }
}
