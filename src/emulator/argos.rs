//! Argos ID Liveness (`POST /modules/document`) and Face Liveness
//! (`POST /modules/liveness`), as their OpenAPI documents describe them.

use super::scenario::{self, Scenario, hash_score};
use super::{Gate, Shared};
use crate::domain::ProviderName;
use crate::providers::argos::wire::{
    API_TYPE_DOCUMENT, DocumentResponse, DocumentScores, ErrorFields, PipelineScore, error_message,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Number, Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const ENGINE_VERSION: &str = "id_liveness@3.4.2";
const FACE_API_TYPE: &str = "id_live_face";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/modules/document", post(document))
        .route("/modules/liveness", post(face))
}

fn transaction_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "txn_{:x}{:06x}",
        fastrand::u32(..),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// ID Liveness errors: nested under `error`, `errorCode` a string (OpenAPI).
fn document_error(status: StatusCode, code: u32, message: Option<String>, txn: &str) -> Response {
    let mut fields = ErrorFields {
        transaction_id: Some(txn.to_owned()),
        error_code: Some(Value::String(code.to_string())),
        message: Some(message.unwrap_or_else(|| error_message(code).to_owned())),
        ..Default::default()
    };
    if code != 1001 {
        fields.status_code = Some(json!(status.as_u16()));
        fields.api_type = Some(API_TYPE_DOCUMENT.into());
        fields.engine_version = Some(ENGINE_VERSION.into());
    }
    (status, Json(json!({ "error": fields }))).into_response()
}

/// Face Liveness errors: flat, `errorCode` a number (OpenAPI).
fn face_error(status: StatusCode, code: u32, message: Option<String>, txn: &str) -> Response {
    let body = json!({
        "transactionId": txn,
        "message": message.unwrap_or_else(|| error_message(code).to_owned()),
        "errorCode": code,
    });
    (status, Json(body)).into_response()
}

/// The decoded image of a request, counted as a submission.
struct Submitted {
    scenario: Option<Result<Scenario, String>>,
    sha: [u8; 32],
    /// Submissions of this image before this one.
    earlier: u64,
}

fn submit(shared: &Shared, image_b64: &str) -> Option<Submitted> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image_b64)
        .ok()?;
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    let earlier = shared.record_submission(ProviderName::Argos, &hex::encode(sha));
    Some(Submitted {
        scenario: scenario::extract(&bytes),
        sha,
        earlier,
    })
}

/// The scenario's `error`, if it applies to this call.
fn scenario_error(s: &Scenario, earlier: u64) -> Option<u32> {
    let code = s.error?;
    let applies = s.error_times.is_none_or(|n| earlier < n as u64);
    applies.then_some(code as u32)
}

/// The injected faults (DESIGN §6), applied before the key check like a
/// vendor's edge would: None to go on, or the answer to give. A 429 comes
/// in the endpoint's own error shape (`nested` under `error` for ID
/// Liveness, flat for Face Liveness), without an error code: Argos
/// documents none for it.
async fn faults(
    shared: &Shared,
    submitted: Option<&Submitted>,
    nested: bool,
    txn: &str,
) -> Option<Response> {
    let latency = submitted
        .and_then(|s| s.scenario.as_ref())
        .and_then(|s| s.as_ref().ok())
        .and_then(|s| s.latency_ms);
    match shared.gate(ProviderName::Argos, latency).await {
        Gate::Proceed => None,
        Gate::ServerError => {
            Some((StatusCode::INTERNAL_SERVER_ERROR, "injected fault").into_response())
        }
        Gate::RateLimited(r) => {
            let body = if nested {
                json!({"error": {"statusCode": 429, "apiType": API_TYPE_DOCUMENT,
                    "transactionId": txn, "message": "Too many requests"}})
            } else {
                json!({"transactionId": txn, "message": "Too many requests"})
            };
            Some(r.response(body))
        }
    }
}

fn score_number(v: f64) -> Number {
    if v.fract() == 0.0 {
        Number::from(v as i64)
    } else {
        Number::from_f64(v).expect("finite score")
    }
}

async fn document(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let txn = transaction_id();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let image = parsed
        .as_ref()
        .and_then(|v| v.get("idImage"))
        .and_then(Value::as_str);
    let submitted = image
        .filter(|s| !s.is_empty())
        .and_then(|s| submit(&shared, s));
    if let Some(answer) = faults(&shared, submitted.as_ref(), true, &txn).await {
        return answer;
    }

    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if !shared.key_ok(ProviderName::Argos, key) {
        return document_error(StatusCode::UNAUTHORIZED, 1001, None, &txn);
    }
    let Some(Value::Object(req)) = parsed else {
        return document_error(StatusCode::BAD_REQUEST, 1003, None, &txn);
    };
    match req.get("idImage") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return document_error(StatusCode::BAD_REQUEST, 1005, None, &txn),
    }
    let pipelines = match req.get("pipelines") {
        None | Some(Value::Null) => {
            return document_error(StatusCode::BAD_REQUEST, 1007, None, &txn);
        }
        Some(p) => p,
    };
    let flag = |k: &str| pipelines.get(k).and_then(Value::as_bool);
    let (Some(sr), Some(pc), Some(ps)) = (flag("sr"), flag("pc"), flag("ps")) else {
        return document_error(StatusCode::BAD_REQUEST, 1008, None, &txn);
    };
    // The vendor documents a string default ('False') for this boolean.
    match req.get("useUpcomingVersion") {
        None | Some(Value::Bool(_)) => {}
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {}
        Some(_) => return document_error(StatusCode::BAD_REQUEST, 1008, None, &txn),
    }
    let Some(sub) = submitted else {
        // Not base64, or not an image we could read.
        return document_error(StatusCode::BAD_REQUEST, 1003, None, &txn);
    };
    let scenario = match sub.scenario {
        Some(Err(e)) => return document_error(StatusCode::BAD_REQUEST, 1003, Some(e), &txn),
        Some(Ok(s)) => s,
        None => Scenario::default(),
    };
    if let Some(code) = scenario_error(&scenario, sub.earlier) {
        return document_error(StatusCode::BAD_REQUEST, code, None, &txn);
    }
    let skipped = |name: &str| scenario.not_performed.iter().any(|n| n == name);
    let score = |requested: bool, name: &str, given: Option<f64>, index: usize| {
        (requested && !skipped(name)).then(|| PipelineScore {
            liveness_score: score_number(given.unwrap_or_else(|| hash_score(&sub.sha, index))),
        })
    };
    let resp = DocumentResponse {
        status_code: None,
        api_type: Some(API_TYPE_DOCUMENT.into()),
        transaction_id: Some(txn),
        engine_version: Some(ENGINE_VERSION.into()),
        result: DocumentScores {
            screen_replay: score(sr, "screen_replay", scenario.screen_replay, 0),
            paper_printed: score(pc, "printed_copy", scenario.printed_copy, 1),
            replace_portraits: score(
                ps,
                "portrait_substitution",
                scenario.portrait_substitution,
                2,
            ),
        },
    };
    (StatusCode::OK, Json(resp)).into_response()
}

async fn face(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let txn = transaction_id();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let image = parsed
        .as_ref()
        .and_then(|v| v.get("faceImage"))
        .and_then(Value::as_str);
    let submitted = image
        .filter(|s| !s.is_empty())
        .and_then(|s| submit(&shared, s));
    if let Some(answer) = faults(&shared, submitted.as_ref(), false, &txn).await {
        return answer;
    }

    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if !shared.key_ok(ProviderName::Argos, key) {
        return document_error(StatusCode::UNAUTHORIZED, 1001, None, &txn);
    }
    match image {
        Some(s) if !s.is_empty() => {}
        _ => return face_error(StatusCode::BAD_REQUEST, 1016, None, &txn),
    }
    // A data: prefix is not base64, as the vendor insists.
    let Some(sub) = submitted else {
        return face_error(StatusCode::BAD_REQUEST, 1017, None, &txn);
    };
    let scenario = match sub.scenario {
        Some(Err(e)) => return face_error(StatusCode::BAD_REQUEST, 1017, Some(e), &txn),
        Some(Ok(s)) => s,
        None => Scenario::default(),
    };
    if let Some(code) = scenario_error(&scenario, sub.earlier) {
        return face_error(StatusCode::BAD_REQUEST, code, None, &txn);
    }
    if scenario.no_face {
        return face_error(StatusCode::BAD_REQUEST, 1017, None, &txn);
    }
    let score = score_number(scenario.face.unwrap_or_else(|| hash_score(&sub.sha, 3)));
    let body = json!({
        "apiType": FACE_API_TYPE,
        "result": { "liveness_score": score },
        "transactionId": txn,
    });
    (StatusCode::OK, Json(body)).into_response()
}
