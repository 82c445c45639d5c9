//! Argos ID Liveness (`POST /modules/document`) and Face Liveness
//! (`POST /modules/liveness`), as their OpenAPI documents describe them.

use super::scenario::{self, Scenario, hash_score};
use super::{Gate, Shared};
use crate::domain::ProviderName;
use crate::providers::argos::wire::{
    API_TYPE_DOCUMENT, Accepted, DocumentResponse, DocumentScores, ErrorFields, PipelineScore,
    error_message,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value, json};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const ENGINE_VERSION: &str = "id_liveness@3.4.2";
const FACE_API_TYPE: &str = "id_live_face";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/modules/document", post(document))
        .route("/modules/liveness", post(face))
        .route(
            "/_admin/argos/callbacks",
            put(admin_callbacks_put).get(admin_callbacks_get),
        )
}

/// How the emulated ID Liveness delivers callbacks (`PUT
/// /_admin/argos/callbacks`), for tests of the worker's async mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackSettings {
    /// Wait before posting a callback.
    pub delay_ms: u64,
    /// Post every callback twice.
    pub duplicate: bool,
    /// Drop this many of the next callbacks (never post them).
    pub drop_next: u32,
    /// Drop every callback: the vendor never answers.
    pub drop_all: bool,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            delay_ms: 200,
            duplicate: false,
            drop_next: 0,
            drop_all: false,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct CallbackCounts {
    /// Callbacks the receiver answered with 2xx.
    delivered: u64,
    /// Posted but answered otherwise, or not reachable.
    failed: u64,
    dropped: u64,
}

#[derive(Default)]
pub(super) struct Callbacks {
    settings: Mutex<CallbackSettings>,
    counts: Mutex<CallbackCounts>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct CallbackSettingsUpdate {
    delay_ms: Option<u64>,
    duplicate: Option<bool>,
    drop_next: Option<u32>,
    drop_all: Option<bool>,
}

async fn admin_callbacks_put(
    State(shared): State<Arc<Shared>>,
    Json(u): Json<CallbackSettingsUpdate>,
) -> Response {
    let mut s = shared
        .argos_callbacks
        .settings
        .lock()
        .expect("emulator state lock");
    if let Some(v) = u.delay_ms {
        s.delay_ms = v;
    }
    if let Some(v) = u.duplicate {
        s.duplicate = v;
    }
    if let Some(v) = u.drop_next {
        s.drop_next = v;
    }
    if let Some(v) = u.drop_all {
        s.drop_all = v;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_callbacks_get(State(shared): State<Arc<Shared>>) -> Response {
    let cb = &shared.argos_callbacks;
    let settings = cb.settings.lock().expect("emulator state lock").clone();
    let counts = cb.counts.lock().expect("emulator state lock").clone();
    Json(json!({ "settings": settings, "counts": counts })).into_response()
}

/// Answers an asynchronous request: 201 now, the flat callback body posted
/// to `url` later (or never, as the settings say).
fn accept_async(shared: &Arc<Shared>, url: String, txn: &str, callback_body: Value) -> Response {
    let shared = shared.clone();
    tokio::spawn(async move {
        let cb = &shared.argos_callbacks;
        let (settings, dropped) = {
            let mut s = cb.settings.lock().expect("emulator state lock");
            let dropped = s.drop_all || s.drop_next > 0;
            s.drop_next = s.drop_next.saturating_sub(1);
            (s.clone(), dropped)
        };
        tokio::time::sleep(std::time::Duration::from_millis(settings.delay_ms)).await;
        if dropped {
            cb.counts.lock().expect("emulator state lock").dropped += 1;
            return;
        }
        let times = if settings.duplicate { 2 } else { 1 };
        for _ in 0..times {
            let sent = cb
                .http
                .post(&url)
                .timeout(std::time::Duration::from_secs(10))
                .json(&callback_body)
                .send()
                .await;
            let mut counts = cb.counts.lock().expect("emulator state lock");
            match sent {
                Ok(r) if r.status().is_success() => counts.delivered += 1,
                _ => counts.failed += 1,
            }
        }
    });
    (
        StatusCode::CREATED,
        Json(Accepted {
            transaction_id: txn.to_owned(),
            engine_version: Some(ENGINE_VERSION.into()),
            message: "request has been successfully received. The response will be sent to your callback URL".into(),
        }),
    )
        .into_response()
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

/// The injected faults (docs/emulator.md#faults), applied before the key check like a
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
    // Asynchronous mode: answer 201, post the result to this URL later.
    // The vendor types it as a string: null is as wrong as a number.
    let callback = match req.get("callbackUrl") {
        None => None,
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.clone())
        }
        Some(_) => {
            return document_error(
                StatusCode::BAD_REQUEST,
                1010,
                Some("callbackUrl must be an http(s) URL".into()),
                &txn,
            );
        }
    };
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
        // The processing failures the callback page lists come by callback,
        // flat with a numeric code; the others are answered at once.
        if let (Some(url), 1003 | 1009) = (&callback, code) {
            let body = json!({
                "statusCode": 400, "apiType": API_TYPE_DOCUMENT, "transactionId": txn,
                "errorCode": code, "message": error_message(code),
            });
            return accept_async(&shared, url.clone(), &txn, body);
        }
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
        transaction_id: Some(txn.clone()),
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
    match callback {
        Some(url) => {
            let body = serde_json::to_value(DocumentResponse {
                status_code: Some(200),
                ..resp
            })
            .expect("response serializes");
            accept_async(&shared, url, &txn, body)
        }
        None => (StatusCode::OK, Json(resp)).into_response(),
    }
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
