//! Intellicheck IDN Direct, `document_liveness_idrnd` (`/api/v1/...`):
//! signed base64 envelopes both ways, a per-transaction flow, results that
//! are "not ready" for a while after `/end`.
//!
//! The vendor documents no "not ready" answer for `/get-results`; this one
//! answers HTTP 200 with a signed envelope whose `private_data` is
//! `{"transaction_id", "status": "processing", "message"}` and carries no
//! signal object, until `processing` has passed since `/end`.
//! Undocumented error bodies are FastAPI-style `{"detail": "..."}` (the
//! vendor's reference pages carry FastAPI operation ids), unsigned.

use super::scenario::{self, Scenario, hash_score};
use super::{Gate, Shared};
use crate::domain::ProviderName;
use crate::providers::intellicheck::wire::{
    self, HEADER_CUSTOMER_ID, HEADER_SIGNATURE, LIVENESS_KEYS, PATH_END, PATH_GET_RESULTS,
    PATH_START, PATH_SUBMIT_BACK, PATH_SUBMIT_FRONT, SIGNAL_DOCUMENT_LIVENESS,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VENDOR: ProviderName = ProviderName::Intellicheck;
const THRESHOLD: f64 = 0.5;
const SIGNALS: [&str; 5] = [
    "document_liveness_idrnd",
    "idcheck",
    "ocr_match",
    "ocr_scan",
    "selfie",
];
/// The vendor keeps a transaction for its `ttl` (at most 30 minutes).
const TRANSACTION_TTL: Duration = Duration::from_secs(30 * 60);

/// How a number the vendor documents ambiguously is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repr {
    Integer,
    String,
}

/// Where a scenario's `"error": 0` shows as `success: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailAt {
    /// In the liveness object of `/get-results`, where the vendor documents it.
    #[default]
    GetResults,
    /// In the answer to `/submit-front` itself.
    SubmitFront,
}

/// How the emulator signs its answers (to exercise the adapter's check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signing {
    /// HMAC-SHA256 of the body with the signing key, as requests are signed.
    #[default]
    Valid,
    /// A signature that does not match the body.
    Wrong,
    /// No signature header.
    Absent,
}

/// Which documented variant the emulator answers with
/// (`PUT /_admin/intellicheck/options`). A field left unset rotates with
/// the transaction's sequence number n: key spelling `LIVENESS_KEYS[n % 3]`,
/// `live` as a string when `(n / 3)` is odd, finding codes as strings when
/// `(n / 6)` is odd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Variants {
    pub key: Option<String>,
    pub live: Option<Repr>,
    pub code: Option<Repr>,
    #[serde(default)]
    pub success_false_at: FailAt,
    #[serde(default)]
    pub signing: Signing,
    /// `/get-results` answers "not ready" at least this many times per
    /// transaction, besides the processing time: lets a test prove the
    /// polling without depending on timing.
    #[serde(default)]
    pub not_ready_polls: u32,
}

/// An absent field leaves the option alone; `null` sets it back to rotating.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsUpdate {
    #[serde(default, deserialize_with = "present")]
    key: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    live: Option<Option<Repr>>,
    #[serde(default, deserialize_with = "present")]
    code: Option<Option<Repr>>,
    success_false_at: Option<FailAt>,
    signing: Option<Signing>,
    not_ready_polls: Option<u32>,
    processing_ms: Option<u64>,
}

/// A field that is present, possibly `null`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Scores of one submitted side: a probability per check (screen replay,
/// printed copy, portrait substitution), None when not performed.
#[derive(Debug, Clone)]
struct SideScores([Option<f64>; 3]);

#[derive(Debug)]
struct Txn {
    seq: u64,
    created: Instant,
    wants_liveness: bool,
    front: Option<SideScores>,
    back: Option<SideScores>,
    findings: Vec<i64>,
    /// The front's scenario asked for `success: false`.
    failed: bool,
    latency_ms: Option<u64>,
    ended_at: Option<Instant>,
    /// `/get-results` calls answered so far.
    polls: u32,
}

/// The emulated vendor's own state, beside the shared key and faults.
pub(crate) struct Emu {
    customer_id: String,
    processing_ms: AtomicU64,
    seq: AtomicU64,
    not_ready: AtomicU64,
    results: AtomicU64,
    txns: Mutex<HashMap<String, Txn>>,
    variants: Mutex<Variants>,
}

impl Emu {
    pub(crate) fn new(customer_id: &str, processing: Duration) -> Self {
        Emu {
            customer_id: customer_id.to_owned(),
            processing_ms: AtomicU64::new(processing.as_millis() as u64),
            seq: AtomicU64::new(0),
            not_ready: AtomicU64::new(0),
            results: AtomicU64::new(0),
            txns: Mutex::new(HashMap::new()),
            variants: Mutex::new(Variants::default()),
        }
    }

    fn txns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Txn>> {
        self.txns.lock().expect("emulator state lock")
    }
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(PATH_START, post(start))
        .route(PATH_SUBMIT_FRONT, post(submit_front))
        .route(PATH_SUBMIT_BACK, post(submit_back))
        .route(PATH_END, post(end))
        .route(PATH_GET_RESULTS, post(get_results))
        .route("/_admin/intellicheck/options", put(admin_options))
        .route("/_admin/intellicheck/stats", get(admin_stats))
}

/// The answer to an injected fault, in the form this emulator uses for
/// errors; None when the request goes on.
fn fault_answer(gate: Gate) -> Option<Response> {
    match gate {
        Gate::Proceed => None,
        Gate::ServerError => Some(detail(StatusCode::INTERNAL_SERVER_ERROR, "injected fault")),
        Gate::RateLimited(r) => Some(r.response(json!({
            "detail": format!("Rate limit exceeded; retry in {} seconds", r.retry_after_s)
        }))),
    }
}

fn detail(status: StatusCode, message: impl Into<String>) -> Response {
    Refusal::new(status, message).into_response()
}

/// An error answer, kept small until it becomes a response.
struct Refusal {
    status: StatusCode,
    detail: String,
}

impl Refusal {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Refusal {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

/// A signed envelope answer.
fn signed(shared: &Shared, public_data: Value, private_data: Value) -> Response {
    let body = wire::encode(&public_data, &private_data);
    let key = shared.vendors.lock().expect("emulator state lock")[&VENDOR]
        .api_key
        .clone();
    let mode = shared
        .intellicheck
        .variants
        .lock()
        .expect("emulator state lock")
        .signing;
    let sig = match mode {
        Signing::Valid => Some(wire::signature(key.as_bytes(), &body)),
        Signing::Wrong => Some(wire::signature(b"not-the-signing-key", &body)),
        Signing::Absent => None,
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(sig) = sig {
        h.insert(
            HEADER_SIGNATURE,
            HeaderValue::from_str(&sig).expect("hex header"),
        );
    }
    resp
}

/// `customer-id` first (401), then the HMAC over the raw body with the
/// current key (403; a revoked key verifies nothing).
fn authenticate(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let customer = headers
        .get(HEADER_CUSTOMER_ID)
        .and_then(|v| v.to_str().ok());
    let known = customer.is_some_and(|c| {
        super::constant_time_eq(c.as_bytes(), shared.intellicheck.customer_id.as_bytes())
    });
    if !known {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Unknown or missing customer-id",
        ));
    }
    let (key, valid) = {
        let vendors = shared.vendors.lock().expect("emulator state lock");
        let v = &vendors[&VENDOR];
        (v.api_key.clone(), v.key_valid)
    };
    let sig = headers.get(HEADER_SIGNATURE).and_then(|v| v.to_str().ok());
    match sig {
        None => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Missing signature header",
        )),
        Some(s) if valid && wire::signature_matches(key.as_bytes(), body, s) => Ok(()),
        Some(_) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Signature verification failed",
        )),
    }
}

/// The vendor's strict reading of a request: base64 text of a JSON object
/// with both `public_data` and `private_data` objects. Returns `private_data`.
fn strict_decode(body: &[u8]) -> Result<Map<String, Value>, String> {
    let json = base64::engine::general_purpose::STANDARD
        .decode(body.trim_ascii())
        .map_err(|_| "Request body must be base64-encoded JSON".to_string())?;
    let v: Value = serde_json::from_slice(&json)
        .map_err(|e| format!("Decoded request body is not valid JSON: {e}"))?;
    let half = |k: &str| match v.get(k) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(format!("{k} must be an object")),
        None => Err(format!("{k} is required (it may be empty)")),
    };
    half("public_data")?;
    half("private_data")
}

fn txn_id_of(private: &Map<String, Value>) -> Result<String, String> {
    match private.get("transaction_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err("private_data.transaction_id is required".into()),
    }
}

fn next_transaction_id(seq: u64) -> String {
    format!("{:08x}-ic{:06x}", fastrand::u32(..), seq)
}

async fn start(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authenticate(&shared, &headers, &body) {
        return r.into_response();
    }
    let private = match strict_decode(&body) {
        Ok(v) => v,
        Err(e) => return detail(StatusCode::BAD_REQUEST, e),
    };
    let document_type = match private.get("document_type") {
        Some(Value::String(s)) if ["na_dl", "passport", "other"].contains(&s.as_str()) => s.clone(),
        Some(other) => {
            return detail(
                StatusCode::BAD_REQUEST,
                format!("document_type must be one of na_dl, passport, other; got {other}"),
            );
        }
        None => return detail(StatusCode::BAD_REQUEST, "document_type is required"),
    };
    let mut signals: Vec<String> = match private.get("signals") {
        None => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for s in a {
                match s.as_str() {
                    Some(s) if SIGNALS.contains(&s) => out.push(s.to_owned()),
                    _ => {
                        return detail(
                            StatusCode::BAD_REQUEST,
                            format!("Unknown signal {s}; known: {}", SIGNALS.join(", ")),
                        );
                    }
                }
            }
            out
        }
        Some(_) => return detail(StatusCode::BAD_REQUEST, "signals must be an array"),
    };
    let ttl = match private.get("ttl") {
        None => 10,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=30) => n,
            _ => return detail(StatusCode::BAD_REQUEST, "ttl must be 1-30 minutes"),
        },
    };
    if let Some(refused) = fault_answer(shared.gate(VENDOR, None).await) {
        return refused;
    }
    // An empty list means every subscribed signal; passport and other add ocr_scan.
    let wants_liveness =
        signals.is_empty() || signals.iter().any(|s| s == SIGNAL_DOCUMENT_LIVENESS);
    if signals.is_empty() {
        signals = SIGNALS.iter().map(|s| s.to_string()).collect();
    } else if document_type != "na_dl" && !signals.iter().any(|s| s == "ocr_scan") {
        signals.push("ocr_scan".into());
    }
    let emu = &shared.intellicheck;
    let seq = emu.seq.fetch_add(1, Ordering::Relaxed);
    let id = next_transaction_id(seq);
    {
        let mut txns = emu.txns();
        if seq % 1024 == 0 {
            txns.retain(|_, t| t.created.elapsed() < TRANSACTION_TTL);
        }
        txns.insert(
            id.clone(),
            Txn {
                seq,
                created: Instant::now(),
                wants_liveness,
                front: None,
                back: None,
                findings: Vec::new(),
                failed: false,
                latency_ms: None,
                ended_at: None,
                polls: 0,
            },
        );
    }
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(ttl * 60),
    )
    .to_string();
    // mm-dd-yyyy hh:mm:ss, as the vendor writes it.
    let expires = format!(
        "{}-{}-{} {}",
        &expires[5..7],
        &expires[8..10],
        &expires[0..4],
        &expires[11..19]
    );
    signed(
        &shared,
        json!({"endpoint": PATH_START, "version": "1.0"}),
        json!({
            "transaction_id": id,
            "signals": signals,
            "ttl": ttl,
            "capture_expiration_utc": expires,
        }),
    )
}

async fn submit_front(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    submit(&s, &headers, &body, "front").await
}

async fn submit_back(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    submit(&s, &headers, &body, "back").await
}

/// The image of a submission, counted before anything else is checked:
/// every request that carries an image is a submission, whatever the answer.
fn counted_image(shared: &Shared, body: &[u8], field: &str) -> Option<(Vec<u8>, [u8; 32], u64)> {
    let private = strict_decode(body).ok()?;
    let b64 = private.get(field)?.as_str().filter(|s| !s.is_empty())?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    let earlier = shared.record_submission(VENDOR, &hex::encode(sha));
    Some((bytes, sha, earlier))
}

fn side_scores(s: &Scenario, sha: &[u8; 32]) -> SideScores {
    let given = [s.screen_replay, s.printed_copy, s.portrait_substitution];
    let names = ["screen_replay", "printed_copy", "portrait_substitution"];
    let mut out = [None; 3];
    for i in 0..3 {
        if s.not_performed.iter().any(|n| n == names[i]) {
            continue;
        }
        let score = given[i].unwrap_or_else(|| hash_score(sha, i));
        // docs/emulator.md#scenarios: probability = score / 100, rounded to 3 decimals.
        out[i] = Some((score * 10.0).round() / 1000.0);
    }
    SideScores(out)
}

async fn submit(shared: &Shared, headers: &HeaderMap, body: &[u8], field: &str) -> Response {
    let image = counted_image(shared, body, field);
    if let Err(r) = authenticate(shared, headers, body) {
        return r.into_response();
    }
    let private = match strict_decode(body) {
        Ok(v) => v,
        Err(e) => return detail(StatusCode::BAD_REQUEST, e),
    };
    let txn = match txn_id_of(&private) {
        Ok(t) => t,
        Err(e) => return detail(StatusCode::BAD_REQUEST, e),
    };
    let Some((bytes, sha, earlier)) = image else {
        return match private.get(field) {
            Some(Value::String(s)) if !s.is_empty() => detail(
                StatusCode::BAD_REQUEST,
                format!("private_data.{field} is not valid base64"),
            ),
            _ => detail(
                StatusCode::BAD_REQUEST,
                format!("private_data.{field} is required"),
            ),
        };
    };
    let scenario = match scenario::extract(&bytes) {
        Some(Err(e)) => return detail(StatusCode::BAD_REQUEST, e),
        Some(Ok(s)) => s,
        None => Scenario::default(),
    };
    if let Some(e) = scenario.error
        && !(e == 0 || (100..=599).contains(&e))
    {
        return detail(
            StatusCode::BAD_REQUEST,
            format!("invalid liveness-scenario: error {e} is neither 0 nor an HTTP status"),
        );
    }
    let emu = &shared.intellicheck;
    let latency = {
        let mut txns = emu.txns();
        let Some(t) = txns.get_mut(&txn) else {
            return detail(StatusCode::BAD_REQUEST, "Unknown transaction_id");
        };
        if t.ended_at.is_some() {
            return detail(
                StatusCode::BAD_REQUEST,
                "Transaction has ended; start a new one",
            );
        }
        // The scenario's latency applies from here to the transaction's last call.
        t.latency_ms = t.latency_ms.max(scenario.latency_ms);
        t.latency_ms
    };
    if let Some(refused) = fault_answer(shared.gate(VENDOR, latency).await) {
        return refused;
    }
    let error = scenario
        .error
        .filter(|_| scenario.error_times.is_none_or(|n| earlier < n as u64));
    if let Some(status) = error.filter(|e| *e != 0) {
        let status = StatusCode::from_u16(status as u16).expect("checked range");
        let mut r = detail(
            status,
            status.canonical_reason().unwrap_or("Scenario error"),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        return r;
    }
    let fail = error == Some(0);
    let fail_now = fail
        && field == "front"
        && emu
            .variants
            .lock()
            .expect("emulator state lock")
            .success_false_at
            == FailAt::SubmitFront;
    {
        let mut txns = emu.txns();
        let Some(t) = txns.get_mut(&txn) else {
            return detail(StatusCode::BAD_REQUEST, "Unknown transaction_id");
        };
        let scores = side_scores(&scenario, &sha);
        if field == "front" {
            t.front = Some(scores);
            t.failed = fail;
        } else {
            t.back = Some(scores);
            t.failed |= fail;
        }
        // Numeric scenario warnings are image quality codes (e.g. "301").
        t.findings.extend(
            scenario
                .warnings
                .iter()
                .filter_map(|w| w.trim().parse::<i64>().ok()),
        );
    }
    if fail_now {
        return signed(
            shared,
            json!({}),
            json!({"transaction_id": txn, "success": false, "result": false,
                   "message": "Document liveness processing failed"}),
        );
    }
    signed(
        shared,
        json!({}),
        json!({"transaction_id": txn, "success": true, "result": true, "message": "success"}),
    )
}

/// The transaction named by a request, for `/end` and `/get-results`.
fn transaction_request(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    authenticate(shared, headers, body)?;
    let private = strict_decode(body).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
    txn_id_of(&private).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))
}

async fn end(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let txn = match transaction_request(&shared, &headers, &body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let latency = match shared.intellicheck.txns().get(&txn) {
        None => return detail(StatusCode::BAD_REQUEST, "Unknown transaction_id"),
        Some(t) if t.front.is_none() => {
            return detail(
                StatusCode::BAD_REQUEST,
                "No front image was submitted for this transaction",
            );
        }
        Some(t) => t.latency_ms,
    };
    if let Some(refused) = fault_answer(shared.gate(VENDOR, latency).await) {
        return refused;
    }
    if let Some(t) = shared.intellicheck.txns().get_mut(&txn) {
        t.ended_at.get_or_insert_with(Instant::now);
    }
    signed(
        &shared,
        json!({}),
        json!({"transaction_id": txn, "success": true, "message": "success"}),
    )
}

fn number(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn repr(v: i64, r: Repr) -> Value {
    match r {
        Repr::Integer => json!(v),
        Repr::String => json!(v.to_string()),
    }
}

/// One side as the vendor's schema shapes it.
fn side_json(s: &SideScores, live_repr: Repr) -> Value {
    let mut side = Map::new();
    let mut any_spoof = false;
    for (i, name) in ["screenReplay", "printedCopy", "portraitSubstitution"]
        .iter()
        .enumerate()
    {
        let (live, probability) = match s.0[i] {
            None => (2, Value::Null),
            Some(p) => (i64::from(p >= THRESHOLD), number(p)),
        };
        any_spoof |= live == 0;
        side.insert(
            (*name).into(),
            json!({"threshold": THRESHOLD, "live": repr(live, live_repr), "probability": probability}),
        );
    }
    side.insert("live".into(), repr(i64::from(!any_spoof), live_repr));
    Value::Object(side)
}

fn finding_message(code: i64) -> &'static str {
    match code {
        300 => "Front image sent to submit-back",
        301 => "Back image sent to submit-front",
        400 => "Front of document sent via submit-back",
        _ => "Image quality issue",
    }
}

fn liveness_object(t: &Txn, v: &Variants) -> (String, Value) {
    let key = v
        .key
        .clone()
        .unwrap_or_else(|| LIVENESS_KEYS[(t.seq % 3) as usize].to_owned());
    let rot = |n: u64| {
        if n % 2 == 1 {
            Repr::String
        } else {
            Repr::Integer
        }
    };
    let live_repr = v.live.unwrap_or(rot(t.seq / 3));
    let code_repr = v.code.unwrap_or(rot(t.seq / 6));
    if t.failed {
        let obj = json!({"success": false, "result": false,
            "message": "Document liveness processing failed", "imageQualityFindings": [], "data": null});
        return (key, obj);
    }
    let findings: Vec<Value> = t
        .findings
        .iter()
        .map(|c| json!({"code": repr(*c, code_repr), "message": finding_message(*c)}))
        .collect();
    let data = json!({
        "front": t.front.as_ref().map(|s| side_json(s, live_repr)),
        "back": t.back.as_ref().map(|s| side_json(s, live_repr)),
    });
    let obj = json!({"success": true, "result": true, "message": "success",
        "imageQualityFindings": findings, "data": data});
    (key, obj)
}

async fn get_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let txn = match transaction_request(&shared, &headers, &body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let emu = &shared.intellicheck;
    let latency = match emu.txns().get(&txn) {
        None => return detail(StatusCode::BAD_REQUEST, "Unknown transaction_id"),
        Some(t) if t.ended_at.is_none() => {
            return detail(
                StatusCode::BAD_REQUEST,
                "Transaction has not ended; call /end first",
            );
        }
        Some(t) => t.latency_ms,
    };
    if let Some(refused) = fault_answer(shared.gate(VENDOR, latency).await) {
        return refused;
    }
    let processing = Duration::from_millis(emu.processing_ms.load(Ordering::Relaxed));
    let variants = emu.variants.lock().expect("emulator state lock").clone();
    let answer = {
        let mut txns = emu.txns();
        let Some(t) = txns.get_mut(&txn) else {
            return detail(StatusCode::BAD_REQUEST, "Unknown transaction_id");
        };
        t.polls += 1;
        let ended = t.ended_at.expect("checked above");
        if ended.elapsed() < processing || t.polls <= variants.not_ready_polls {
            None
        } else {
            Some((t.wants_liveness).then(|| liveness_object(t, &variants)))
        }
    };
    let mut private = Map::new();
    private.insert("transaction_id".into(), json!(txn));
    match answer {
        None => {
            emu.not_ready.fetch_add(1, Ordering::Relaxed);
            private.insert("status".into(), json!("processing"));
            private.insert("message".into(), json!("Results are not ready yet"));
        }
        Some(obj) => {
            emu.results.fetch_add(1, Ordering::Relaxed);
            if let Some((key, obj)) = obj {
                private.insert(key, obj);
            }
        }
    }
    signed(&shared, json!({}), Value::Object(private))
}

async fn admin_options(
    State(shared): State<Arc<Shared>>,
    Json(u): Json<OptionsUpdate>,
) -> Response {
    if let Some(Some(k)) = &u.key
        && !LIVENESS_KEYS.contains(&k.as_str())
    {
        return (
            StatusCode::BAD_REQUEST,
            format!("key must be one of {}", LIVENESS_KEYS.join(", ")),
        )
            .into_response();
    }
    let emu = &shared.intellicheck;
    if let Some(ms) = u.processing_ms {
        emu.processing_ms.store(ms, Ordering::Relaxed);
    }
    let mut v = emu.variants.lock().expect("emulator state lock");
    if let Some(k) = u.key {
        v.key = k;
    }
    if let Some(l) = u.live {
        v.live = l;
    }
    if let Some(c) = u.code {
        v.code = c;
    }
    if let Some(f) = u.success_false_at {
        v.success_false_at = f;
    }
    if let Some(m) = u.signing {
        v.signing = m;
    }
    if let Some(n) = u.not_ready_polls {
        v.not_ready_polls = n;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> Response {
    let emu = &shared.intellicheck;
    Json(json!({
        "transactions": emu.seq.load(Ordering::Relaxed),
        "not_ready_answers": emu.not_ready.load(Ordering::Relaxed),
        "results_answers": emu.results.load(Ordering::Relaxed),
        "processing_ms": emu.processing_ms.load(Ordering::Relaxed),
        "variants": *emu.variants.lock().expect("emulator state lock"),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_follow_the_common_scale() {
        let s = Scenario {
            screen_replay: Some(12.0),
            printed_copy: Some(50.0),
            portrait_substitution: Some(87.65),
            ..Default::default()
        };
        let out = side_scores(&s, &[0; 32]);
        assert_eq!(out.0, [Some(0.12), Some(0.5), Some(0.877)]);
        let side = side_json(&out, Repr::Integer);
        assert_eq!(
            side["screenReplay"],
            json!({"threshold":0.5,"live":0,"probability":0.12})
        );
        assert_eq!(side["printedCopy"]["live"], 1, "pass at the threshold");
        assert_eq!(side["live"], 0);
        let skipped = Scenario {
            not_performed: vec!["printed_copy".into()],
            screen_replay: Some(90.0),
            portrait_substitution: Some(90.0),
            ..Default::default()
        };
        let side = side_json(&side_scores(&skipped, &[0; 32]), Repr::String);
        assert_eq!(
            side["printedCopy"],
            json!({"threshold":0.5,"live":"2","probability":null})
        );
        assert_eq!(side["live"], "1", "not performed does not fail the side");
    }

    #[test]
    fn options_null_means_rotate_and_absent_means_unchanged() {
        let u: OptionsUpdate = serde_json::from_str(r#"{"key": null, "live": "string"}"#).unwrap();
        assert_eq!(u.key, Some(None));
        assert_eq!(u.live, Some(Some(Repr::String)));
        assert_eq!(u.code, None);
        assert!(serde_json::from_str::<OptionsUpdate>(r#"{"kee": 1}"#).is_err());
    }

    #[test]
    fn variants_rotate_by_transaction() {
        let t = |seq| Txn {
            seq,
            created: Instant::now(),
            wants_liveness: true,
            front: Some(SideScores([Some(0.9), None, Some(0.1)])),
            back: None,
            findings: vec![301],
            failed: false,
            latency_ms: None,
            ended_at: None,
            polls: 0,
        };
        let v = Variants::default();
        let keys: Vec<String> = (0..3).map(|n| liveness_object(&t(n), &v).0).collect();
        assert_eq!(keys, LIVENESS_KEYS);
        assert_eq!(liveness_object(&t(0), &v).1["data"]["front"]["live"], 0);
        assert_eq!(liveness_object(&t(3), &v).1["data"]["front"]["live"], "0");
        assert_eq!(
            liveness_object(&t(0), &v).1["imageQualityFindings"][0]["code"],
            301
        );
        assert_eq!(
            liveness_object(&t(6), &v).1["imageQualityFindings"][0]["code"],
            "301"
        );
        assert_eq!(liveness_object(&t(0), &v).1["data"]["back"], Value::Null);
        let fixed = Variants {
            key: Some("document_liveness".into()),
            live: Some(Repr::String),
            code: Some(Repr::Integer),
            ..Default::default()
        };
        for n in 0..12 {
            let (k, o) = liveness_object(&t(n), &fixed);
            assert_eq!(k, "document_liveness");
            assert_eq!(o["data"]["front"]["screenReplay"]["live"], "1");
            assert_eq!(o["imageQualityFindings"][0]["code"], 301);
        }
    }
}
