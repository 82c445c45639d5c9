//! The dead-letter message (`liveness.dead_letter.v1`): a job an operator
//! must act on, with what to do in `failure.message`.

use super::ProviderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

pub const DEAD_LETTER_SCHEMA: &str = "liveness.dead_letter.v1";

/// Why a job was given up (docs/messages.md#failure-classes). Also the dead letter's routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    InvalidJob,
    ForbiddenImageLocation,
    ImageNotFound,
    ImageRejected,
    VendorRejectedRequest,
    JobIdConflict,
    RetriesExhausted,
    Internal,
}

impl FailureClass {
    pub const ALL: [FailureClass; 8] = [
        FailureClass::InvalidJob,
        FailureClass::ForbiddenImageLocation,
        FailureClass::ImageNotFound,
        FailureClass::ImageRejected,
        FailureClass::VendorRejectedRequest,
        FailureClass::JobIdConflict,
        FailureClass::RetriesExhausted,
        FailureClass::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::InvalidJob => "invalid_job",
            FailureClass::ForbiddenImageLocation => "forbidden_image_location",
            FailureClass::ImageNotFound => "image_not_found",
            FailureClass::ImageRejected => "image_rejected",
            FailureClass::VendorRejectedRequest => "vendor_rejected_request",
            FailureClass::JobIdConflict => "job_id_conflict",
            FailureClass::RetriesExhausted => "retries_exhausted",
            FailureClass::Internal => "internal",
        }
    }

    /// Whether replaying the job unchanged could succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureClass::ImageNotFound | FailureClass::RetriesExhausted | FailureClass::Internal
        )
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    pub class: FailureClass,
    /// What went wrong and what the operator should do.
    pub message: String,
    /// Whether replaying the job unchanged could succeed.
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// The vendor's error code, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
            retryable: class.retryable(),
            provider: None,
            vendor_code: None,
            http_status: None,
        }
    }
}

/// Published to exchange liveness.dead with the failure class as routing key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "liveness.dead_letter.v1")]
pub struct DeadLetter {
    #[schemars(schema_with = "dead_letter_schema_tag")]
    pub schema: String,
    /// The body's job_id when it is a string (even an invalid one); else null.
    pub job_id: Option<String>,
    /// The body when it is a JSON object within the size limit (even one that violates the schema); else null.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub job: Option<Box<RawValue>>,
    /// The first 64 KiB of the body when it is not a JSON object or exceeds the size limit; else null.
    pub raw_body_base64: Option<String>,
    pub failure: Failure,
    /// Verification attempts made with the vendor.
    pub attempts: u32,
    /// When the worker first received the job (RFC 3339).
    pub first_attempt_at: String,
    /// When the worker gave up (RFC 3339).
    pub failed_at: String,
    /// `<host>:<pid>`.
    pub worker: String,
}

fn dead_letter_schema_tag(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "const": DEAD_LETTER_SCHEMA })
}
