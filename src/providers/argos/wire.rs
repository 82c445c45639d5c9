//! Argos ID Liveness wire types, as the vendor's OpenAPI and callback page
//! describe them. The emulator serves these same types.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

pub const API_TYPE_DOCUMENT: &str = "id_live_doc";

/// `pipelines` of `POST /document`: all three booleans are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipelines {
    pub sr: bool,
    pub pc: bool,
    pub ps: bool,
}

/// The tail of a `POST /document` body after `idImage`. The image itself is
/// written by hand in front of it so its base64 goes straight into the body
/// buffer without an intermediate string.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentRequestTail<'a> {
    pub pipelines: Pipelines,
    #[serde(rename = "useUpcomingVersion")]
    pub use_upcoming_version: bool,
    #[serde(rename = "callbackUrl", skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<&'a str>,
}

/// One pipeline's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineScore {
    pub liveness_score: Number,
}

/// `result` of a 200 (and of a success callback). A pipeline that was not
/// requested, or that the engine skipped, is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocumentScores {
    #[serde(
        rename = "screenReplay",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub screen_replay: Option<PipelineScore>,
    #[serde(
        rename = "paperPrinted",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub paper_printed: Option<PipelineScore>,
    #[serde(
        rename = "replacePortraits",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replace_portraits: Option<PipelineScore>,
}

/// A 200 from `POST /document`; a success callback adds `statusCode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentResponse {
    #[serde(
        rename = "statusCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub status_code: Option<u16>,
    #[serde(rename = "apiType", default, skip_serializing_if = "Option::is_none")]
    pub api_type: Option<String>,
    #[serde(
        rename = "transactionId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub transaction_id: Option<String>,
    #[serde(
        rename = "engineVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub engine_version: Option<String>,
    pub result: DocumentScores,
}

/// An error body's fields. Argos sends them nested under `error` (OpenAPI
/// 400/401) or flat (callbacks, Face Liveness); `errorCode` as a string or a
/// number.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorFields {
    #[serde(
        rename = "statusCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub status_code: Option<Value>,
    #[serde(rename = "apiType", default, skip_serializing_if = "Option::is_none")]
    pub api_type: Option<String>,
    #[serde(
        rename = "transactionId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub transaction_id: Option<String>,
    #[serde(
        rename = "engineVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub engine_version: Option<String>,
    #[serde(rename = "errorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ErrorFields {
    /// Reads either shape. None when the body is not a JSON object at all.
    pub fn parse(body: &[u8]) -> Option<ErrorFields> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let inner = match v.get("error") {
            Some(e @ Value::Object(_)) => e.clone(),
            _ if v.is_object() => v,
            _ => return None,
        };
        serde_json::from_value(inner).ok()
    }

    /// `errorCode` as text, whichever type it came as.
    pub fn code(&self) -> Option<String> {
        match self.error_code.as_ref()? {
            Value::String(s) => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// The 201 of an asynchronous request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    #[serde(rename = "transactionId")]
    pub transaction_id: String,
    #[serde(
        rename = "engineVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub engine_version: Option<String>,
    pub message: String,
}

/// The documented error codes and messages of ID and Face Liveness.
pub fn error_message(code: u32) -> &'static str {
    match code {
        1001 => "Workspace is unavailable",
        1003 => "Fail to process data",
        1005 => "idImage is required",
        1007 => "pipelines is required",
        1008 => "invalid pipelines format",
        1009 => "Fail to analyze document",
        1010 => "callbackUrl is required",
        1016 => "faceImage is required",
        1017 => "Fail to analyze face",
        _ => "Unknown error",
    }
}

/// A 200 from `POST /liveness`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceResponse {
    #[serde(rename = "apiType", default, skip_serializing_if = "Option::is_none")]
    pub api_type: Option<String>,
    pub result: PipelineScore,
    #[serde(
        rename = "transactionId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub transaction_id: Option<String>,
}
