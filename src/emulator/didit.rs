//! Didit passive liveness (`POST /v3/passive-liveness/`): a multipart
//! upload, the key check (403 without a key, 401 for a wrong or revoked
//! one), Django-REST-style validation errors, the 5 000 000-byte limit, and
//! the report with everything the real vendor sends, face entities (age,
//! gender, race, bbox) included, so tests can prove the adapter drops them.

use super::scenario::{self, Scenario, hash_score, vendor_number};
use super::{Gate, RateLimited, Shared};
use crate::domain::ProviderName;
use crate::domain::image::sniff_content_type;
use crate::providers::didit::wire::{
    self, LIVENESS_FACE_ATTACK, LOW_LIVENESS_SCORE, Liveness, LogType, Method, NO_FACE_DETECTED,
    Report, RiskWarning, Status,
};
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::SystemTime;

/// Didit's documented budget of write calls per key and minute, reported
/// in the headers of a scenario-driven 429.
const DOCUMENTED_LIMIT: u32 = 300;
/// Where the emulated temporary media URLs point: a reserved name, so
/// nothing can ever resolve them.
pub const MEDIA_BASE: &str = "https://media.didit-emulator.invalid";

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new().route(wire::PATH, post(passive_liveness))
}

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": text.into() }))).into_response()
}

/// A field validation error, as Django REST framework words it.
fn field_error(field: &str, text: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ field: [text] }))).into_response()
}

fn throttled(r: RateLimited) -> Response {
    r.response(json!({
        "detail": format!("Request was throttled. Expected available in {} seconds.", r.retry_after_s)
    }))
}

/// A scenario's `error` status, answered in Didit's own form.
fn vendor_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).expect("validated 400-599");
    match status {
        400 => field_error(
            wire::FIELD_IMAGE,
            "Upload a valid image. The file you uploaded was either not an image or a corrupted image.",
        ),
        401 => detail(code, "Invalid API key."),
        403 => detail(
            code,
            "You do not have enough credits to perform this request.",
        ),
        429 => throttled(RateLimited::for_seconds(DOCUMENTED_LIMIT, 1)),
        500.. => detail(code, "A server error occurred."),
        _ => detail(code, code.canonical_reason().unwrap_or("Error")),
    }
}

struct ImagePart {
    bytes: Bytes,
    content_type: Option<String>,
    file_name: Option<String>,
}

#[derive(Default)]
struct Upload {
    image: Option<ImagePart>,
    threshold: Option<String>,
    rotate: Option<String>,
    save: Option<String>,
    vendor_data: Option<String>,
}

enum FormProblem {
    NotMultipart,
    Malformed(String),
}

/// Reads every field of the form. Fields the API does not know are
/// ignored, as Django REST framework does.
async fn read_form(form: Result<Multipart, MultipartRejection>) -> Result<Upload, FormProblem> {
    let mut form = form.map_err(|_| FormProblem::NotMultipart)?;
    let malformed =
        |e: axum::extract::multipart::MultipartError| FormProblem::Malformed(e.body_text());
    let mut up = Upload::default();
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            wire::FIELD_IMAGE if up.image.is_none() => {
                let file_name = field.file_name().map(str::to_owned);
                let content_type = field.content_type().map(str::to_owned);
                let bytes = field.bytes().await.map_err(malformed)?;
                up.image = Some(ImagePart {
                    bytes,
                    content_type,
                    file_name,
                });
                continue;
            }
            wire::FIELD_THRESHOLD => &mut up.threshold,
            wire::FIELD_ROTATE => &mut up.rotate,
            wire::FIELD_SAVE => &mut up.save,
            wire::FIELD_VENDOR_DATA => &mut up.vendor_data,
            _ => continue,
        };
        *slot = Some(field.text().await.map_err(malformed)?);
    }
    Ok(up)
}

/// The image of a request, counted as a submission.
struct Submitted {
    scenario: Option<Result<Scenario, String>>,
    sha: [u8; 32],
    /// Submissions of this image before this one.
    earlier: u64,
}

fn submit(shared: &Shared, bytes: &[u8]) -> Submitted {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let earlier = shared.record_submission(ProviderName::Didit, &hex::encode(sha));
    Submitted {
        scenario: scenario::extract(bytes),
        sha,
        earlier,
    }
}

/// The formats Didit accepts, by magic number (TIFF besides ours).
fn image_type(bytes: &[u8]) -> Option<&'static str> {
    sniff_content_type(bytes).or_else(|| {
        (bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*")).then_some("image/tiff")
    })
}

/// The decline threshold, or Django REST framework's complaint about it.
fn threshold(v: Option<&str>) -> Result<f64, &'static str> {
    let Some(text) = v else {
        return Ok(wire::DEFAULT_DECLINE_THRESHOLD);
    };
    let problem = match text.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && (0.0..=100.0).contains(&t) => return Ok(t),
        Ok(t) if t.is_finite() && t < 0.0 => "Ensure this value is greater than or equal to 0.",
        Ok(t) if t.is_finite() => "Ensure this value is less than or equal to 100.",
        _ => "A valid number is required.",
    };
    Err(problem)
}

/// A form boolean, with the spellings Django REST framework accepts.
fn boolean(v: Option<&str>) -> Result<Option<bool>, &'static str> {
    let Some(text) = v else { return Ok(None) };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok(Some(true)),
        "false" | "f" | "no" | "n" | "off" | "0" => Ok(Some(false)),
        _ => Err("Must be a valid boolean."),
    }
}

/// The scenario's `error` status, if it applies to this call.
fn scenario_error(s: &Scenario, earlier: u64) -> Result<Option<u16>, String> {
    let Some(code) = s.error else { return Ok(None) };
    if !(400..=599).contains(&code) {
        return Err(format!(
            "invalid liveness-scenario: error for didit is an HTTP status 400-599, got {code}"
        ));
    }
    let applies = s.error_times.is_none_or(|n| earlier < n as u64);
    Ok(applies.then_some(code as u16))
}

async fn passive_liveness(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let upload = read_form(form).await;
    let submitted = match &upload {
        Ok(Upload {
            image: Some(img), ..
        }) => Some(submit(&shared, &img.bytes)),
        _ => None,
    };
    let latency = submitted
        .as_ref()
        .and_then(|s| s.scenario.as_ref())
        .and_then(|s| s.as_ref().ok())
        .and_then(|s| s.latency_ms);
    match shared.gate(ProviderName::Didit, latency).await {
        Gate::Proceed => {}
        Gate::ServerError => {
            return detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "A server error occurred.",
            );
        }
        Gate::RateLimited(r) => return throttled(r),
    }

    // Authentication comes before the body is looked at.
    match headers.get("x-api-key") {
        None => {
            return detail(
                StatusCode::FORBIDDEN,
                "Authentication credentials were not provided.",
            );
        }
        Some(k) => {
            if !shared.key_ok(ProviderName::Didit, k.to_str().ok()) {
                return detail(StatusCode::UNAUTHORIZED, "Invalid API key.");
            }
        }
    }

    let up = match upload {
        Ok(up) => up,
        // No body at all: Didit's answer is the missing image, a 400.
        Err(FormProblem::NotMultipart) if !headers.contains_key(header::CONTENT_TYPE) => {
            return field_error(wire::FIELD_IMAGE, "No file was submitted.");
        }
        Err(FormProblem::NotMultipart) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return detail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Unsupported media type \"{ct}\" in request."),
            );
        }
        Err(FormProblem::Malformed(e)) => {
            return detail(
                StatusCode::BAD_REQUEST,
                format!("Multipart form parse error - {e}"),
            );
        }
    };
    let Some(image) = &up.image else {
        return field_error(wire::FIELD_IMAGE, "No file was submitted.");
    };
    if image.file_name.is_none() {
        return field_error(
            wire::FIELD_IMAGE,
            "The submitted data was not a file. Check the encoding type on the form.",
        );
    }
    if image.bytes.is_empty() {
        return field_error(wire::FIELD_IMAGE, "The submitted file is empty.");
    }
    if image.bytes.len() as u64 > wire::MAX_IMAGE_BYTES {
        return field_error(wire::FIELD_IMAGE, "The file size exceeds the 5 MB limit.");
    }
    let Some(kind) = image_type(&image.bytes) else {
        return vendor_error(400);
    };
    // Stricter than Didit is known to be: holds the adapter to sending the
    // image's real content type.
    let declared = image.content_type.as_deref().map(|t| match t {
        "image/jpg" => "image/jpeg",
        t => t,
    });
    if declared != Some(kind) {
        return field_error(
            wire::FIELD_IMAGE,
            &format!(
                "The file's content type ({}) does not match its content ({kind}).",
                image.content_type.as_deref().unwrap_or("none")
            ),
        );
    }
    let threshold = match threshold(up.threshold.as_deref()) {
        Ok(t) => t,
        Err(problem) => return field_error(wire::FIELD_THRESHOLD, problem),
    };
    for (field, value) in [
        (wire::FIELD_ROTATE, &up.rotate),
        (wire::FIELD_SAVE, &up.save),
    ] {
        if let Err(problem) = boolean(value.as_deref()) {
            return field_error(field, problem);
        }
    }

    let sub = submitted.expect("the image was submitted");
    let scenario = match sub.scenario {
        Some(Err(e)) => return detail(StatusCode::BAD_REQUEST, e),
        Some(Ok(s)) => s,
        None => Scenario::default(),
    };
    match scenario_error(&scenario, sub.earlier) {
        Err(e) => return detail(StatusCode::BAD_REQUEST, e),
        Ok(Some(status)) => return vendor_error(status),
        Ok(None) => {}
    }
    match report(
        &scenario,
        &sub.sha,
        threshold,
        &request_id(),
        up.vendor_data.as_deref(),
    ) {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => detail(StatusCode::BAD_REQUEST, e),
    }
}

fn request_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// `Status` and `Method` from a scenario, refusing values Didit does not
/// document.
fn known<T: From<String> + PartialEq>(
    key: &str,
    v: Option<&str>,
    other: fn(&T) -> bool,
) -> Result<Option<T>, String> {
    let Some(text) = v else { return Ok(None) };
    let parsed = T::from(text.to_owned());
    if other(&parsed) {
        return Err(format!(
            "invalid liveness-scenario: {key} {text:?} is not one Didit documents"
        ));
    }
    Ok(Some(parsed))
}

/// The scenario's `warnings`: `CODE` with its documented severity, or
/// `CODE:log_type`.
fn scenario_warnings(list: &[String]) -> Result<Vec<RiskWarning>, String> {
    list.iter()
        .map(|entry| {
            let (code, level) = match entry.split_once(':') {
                Some((c, l)) => (c, Some(l)),
                None => (entry.as_str(), None),
            };
            let (documented, short) = wire::risk(code).ok_or_else(|| {
                format!("invalid liveness-scenario: {code:?} is not a Didit risk code")
            })?;
            let log_type = match level.map(|l| LogType::from(l.to_owned())) {
                None => documented,
                Some(LogType::Other(l)) => {
                    return Err(format!(
                        "invalid liveness-scenario: log_type {l:?} of {code} is not information, warning or error"
                    ));
                }
                Some(l) => l,
            };
            Ok(risk_warning(code, log_type, short))
        })
        .collect()
}

fn risk_warning(code: &str, log_type: LogType, short: &str) -> RiskWarning {
    RiskWarning {
        risk: code.to_owned(),
        log_type,
        short_description: Some(short.to_owned()),
        long_description: Some(format!(
            "{short}: raised by the Didit emulator for this image's scenario."
        )),
        feature: Some("LIVENESS".to_owned()),
        node_id: Some(json!("feature_liveness")),
    }
}

/// The report for a scenario. The standalone API answers Approved or
/// Declined (any error-level warning declines; a score at or below the
/// threshold adds LOW_LIVENESS_SCORE, unless no face was found); the
/// `didit_status` / `didit_method` keys give the workflow shape instead.
fn report(
    s: &Scenario,
    sha: &[u8; 32],
    threshold: f64,
    request_id: &str,
    vendor_data: Option<&str>,
) -> Result<Value, String> {
    let status = known("didit_status", s.didit_status.as_deref(), |v: &Status| {
        matches!(v, Status::Other(_))
    })?;
    let method = known("didit_method", s.didit_method.as_deref(), |v: &Method| {
        matches!(v, Method::Other(_))
    })?;
    let workflow = status.is_some() || method.is_some();
    let mut warnings = scenario_warnings(&s.warnings)?;
    let no_face = s.no_face || warnings.iter().any(|w| w.risk == NO_FACE_DETECTED);
    let not_finished = status == Some(Status::NotFinished);
    let score = match s.face {
        _ if no_face || not_finished => None,
        Some(f) if !(0.0..=100.0).contains(&f) => {
            return Err(format!(
                "invalid liveness-scenario: face must be within 0-100, got {f}"
            ));
        }
        Some(f) => Some(f),
        None => Some(hash_score(sha, 3)),
    };
    if no_face && !warnings.iter().any(|w| w.risk == NO_FACE_DETECTED) {
        let (level, short) = wire::risk(NO_FACE_DETECTED).expect("documented");
        warnings.insert(0, risk_warning(NO_FACE_DETECTED, level, short));
    }
    if score.is_some_and(|sc| sc <= threshold)
        && !warnings.iter().any(|w| w.risk == LOW_LIVENESS_SCORE)
    {
        let (level, short) = wire::risk(LOW_LIVENESS_SCORE).expect("documented");
        warnings.push(risk_warning(LOW_LIVENESS_SCORE, level, short));
    }
    let status = status.unwrap_or(if warnings.iter().any(|w| w.log_type == LogType::Error) {
        Status::Declined
    } else {
        Status::Approved
    });
    let face = score.is_some();
    let kept = Report {
        request_id: Some(request_id.to_owned()),
        liveness: Liveness {
            status,
            method: Some(method.unwrap_or(Method::Passive)),
            score: score.map(vendor_number),
            warnings,
            face_quality: face.then(|| vendor_number(hash_score(sha, 4))),
            face_luminance: face.then(|| vendor_number(hash_score(sha, 5))),
        },
        created_at: Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
    };
    let mut v = serde_json::to_value(&kept).expect("plain struct serializes");

    // What the real vendor also sends and the adapter must drop.
    let age = 18.0 + f64::from(sha[8] % 60) + f64::from(sha[9] % 10) / 10.0;
    let l = &mut v["liveness"];
    l["user_image"] = if face {
        json!({"entities": [entity(sha, age)], "best_angle": 0})
    } else {
        json!({"entities": [], "best_angle": null})
    };
    for w in l["warnings"].as_array_mut().expect("warnings array") {
        w["additional_data"] = match w["risk"].as_str() {
            Some("DUPLICATED_FACE" | "POSSIBLE_DUPLICATED_FACE") => {
                json!(format!(
                    "duplicate of session {}",
                    hex::encode(&sha[10..16])
                ))
            }
            Some("AGE_BELOW_MINIMUM" | "AGE_NOT_DETECTED") => json!(format!("estimated age {age}")),
            Some(LIVENESS_FACE_ATTACK) => json!("attack type: screen replay"),
            _ => Value::Null,
        };
    }
    if workflow {
        l["reference_image"] = json!(format!("{MEDIA_BASE}/reference/{request_id}.jpg"));
        l["video_url"] = json!(format!("{MEDIA_BASE}/video/{request_id}.mp4"));
        l["age_estimation"] = if face { json!(age) } else { Value::Null };
        l["matches"] = json!([{"session_id": hex::encode(&sha[16..24]), "similarity": 12.5}]);
    }
    v["vendor_data"] = vendor_data.map_or(Value::Null, |d| json!(d));
    v["metadata"] = Value::Null;
    Ok(v)
}

/// One detected face, with the biometric attributes Didit estimates.
fn entity(sha: &[u8; 32], age: f64) -> Value {
    const GENDERS: [&str; 2] = ["female", "male"];
    const RACES: [&str; 6] = [
        "asian",
        "black",
        "indian",
        "latino hispanic",
        "middle eastern",
        "white",
    ];
    let c = |i: usize| u32::from(sha[i]);
    json!({
        "bbox": [20 + c(11) % 40, 30 + c(12) % 40, 200 + c(13) % 80, 240 + c(14) % 80],
        "confidence": vendor_number(0.9 + f64::from(sha[15] % 10) / 100.0),
        "age": age,
        "gender": GENDERS[usize::from(sha[6]) % GENDERS.len()],
        "race": RACES[usize::from(sha[7]) % RACES.len()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(json: &str) -> Scenario {
        serde_json::from_str(json).unwrap()
    }

    fn run(json: &str) -> Value {
        report(&scenario(json), &[7u8; 32], 30.0, "req-1", None).unwrap()
    }

    fn parsed(v: &Value) -> Report {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn scores_map_to_approved_or_declined() {
        let v = run(r#"{"face":95}"#);
        assert_eq!(v["liveness"]["status"], "Approved");
        assert_eq!(v["liveness"]["method"], "PASSIVE");
        assert_eq!(v["liveness"]["score"], 95);
        assert_eq!(v["liveness"]["warnings"], json!([]));
        let v = run(r#"{"face":30}"#);
        assert_eq!(
            v["liveness"]["status"], "Declined",
            "at the threshold declines"
        );
        assert_eq!(v["liveness"]["warnings"][0]["risk"], LOW_LIVENESS_SCORE);
        assert_eq!(v["liveness"]["warnings"][0]["log_type"], "error");
        let v = run(r#"{"face":30.5}"#);
        assert_eq!(v["liveness"]["status"], "Approved");
        assert_eq!(v["liveness"]["score"], 30.5);
    }

    #[test]
    fn biometric_fields_are_served_and_dropped_by_the_wire_types() {
        let v = run(r#"{"face":80,"didit_method":"ACTIVE_3D","warnings":["DUPLICATED_FACE"]}"#);
        let l = &v["liveness"];
        let e = &l["user_image"]["entities"][0];
        for k in ["bbox", "age", "gender", "race", "confidence"] {
            assert!(!e[k].is_null(), "{k} missing");
        }
        assert!(
            l["reference_image"]
                .as_str()
                .unwrap()
                .starts_with(MEDIA_BASE)
        );
        assert!(l["video_url"].as_str().unwrap().ends_with(".mp4"));
        assert!(l["age_estimation"].is_number());
        assert!(l["matches"].is_array());
        assert!(l["warnings"][0]["additional_data"].is_string());
        let r = parsed(&v);
        let kept = serde_json::to_string(&r).unwrap();
        for gone in [
            "entities",
            "reference_image",
            "video_url",
            "age",
            "gender",
            "race",
            "matches",
            "additional_data",
        ] {
            let key = format!("\"{gone}\"");
            assert!(!kept.contains(&key), "{gone} kept: {kept}");
        }
        // The standalone shape has no workflow-only fields.
        let v = run(r#"{"face":80}"#);
        assert!(v["liveness"].get("reference_image").is_none());
        assert!(v["liveness"]["user_image"]["entities"][0]["age"].is_number());
    }

    #[test]
    fn no_face_is_declined_with_a_null_score_and_no_entities() {
        let v = run(r#"{"no_face":true,"face":10}"#);
        let l = &v["liveness"];
        assert_eq!(l["status"], "Declined");
        assert!(l["score"].is_null());
        assert!(l["face_quality"].is_null());
        assert_eq!(l["user_image"]["entities"], json!([]));
        // NO_FACE_DETECTED suppresses LOW_LIVENESS_SCORE.
        let risks: Vec<&str> = l["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["risk"].as_str().unwrap())
            .collect();
        assert_eq!(risks, vec![NO_FACE_DETECTED]);
    }

    #[test]
    fn warnings_carry_their_documented_severity_or_the_given_one() {
        let v = run(
            r#"{"face":90,"warnings":["LOW_FACE_QUALITY","FACE_IN_BLOCKLIST","POSSIBLE_DUPLICATED_FACE","LOW_LIVENESS_SCORE:information"]}"#,
        );
        let l = &v["liveness"];
        let got: Vec<(&str, &str)> = l["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["risk"].as_str().unwrap(), w["log_type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("LOW_FACE_QUALITY", "warning"),
                ("FACE_IN_BLOCKLIST", "error"),
                ("POSSIBLE_DUPLICATED_FACE", "information"),
                ("LOW_LIVENESS_SCORE", "information"),
            ]
        );
        assert_eq!(l["status"], "Declined", "an error-level warning declines");
        let v = run(r#"{"face":90,"warnings":["MULTIPLE_FACES_DETECTED"]}"#);
        assert_eq!(
            v["liveness"]["status"], "Approved",
            "warnings never decline"
        );
    }

    #[test]
    fn every_status_and_method_is_reachable() {
        for status in ["Approved", "Declined", "In Review", "Not Finished"] {
            for method in ["ACTIVE_3D", "FLASHING", "PASSIVE"] {
                let v = run(&format!(
                    r#"{{"face":70,"didit_status":"{status}","didit_method":"{method}"}}"#
                ));
                let r = parsed(&v);
                assert_eq!(r.liveness.status.as_str(), status);
                assert_eq!(r.liveness.method.unwrap().as_str(), method);
                assert_eq!(r.liveness.score.is_none(), status == "Not Finished");
            }
        }
    }

    #[test]
    fn bad_scenarios_are_refused_loudly() {
        let bad = |j: &str| report(&scenario(j), &[1; 32], 30.0, "r", None).unwrap_err();
        assert!(bad(r#"{"warnings":["NOPE"]}"#).contains("NOPE"));
        assert!(bad(r#"{"warnings":["LOW_FACE_QUALITY:fatal"]}"#).contains("fatal"));
        assert!(bad(r#"{"didit_status":"Pending"}"#).contains("Pending"));
        assert!(bad(r#"{"didit_method":"VIDEO"}"#).contains("VIDEO"));
        assert!(bad(r#"{"face":120}"#).contains("0-100"));
        assert!(scenario_error(&scenario(r#"{"error":1003}"#), 0).is_err());
        let s = scenario(r#"{"error":429,"error_times":2}"#);
        assert_eq!(scenario_error(&s, 0), Ok(Some(429)));
        assert_eq!(scenario_error(&s, 1), Ok(Some(429)));
        assert_eq!(scenario_error(&s, 2), Ok(None));
    }

    #[test]
    fn form_values_are_validated_like_the_vendor() {
        assert_eq!(threshold(None).ok(), Some(30.0));
        assert_eq!(threshold(Some("42.5")).ok(), Some(42.5));
        assert_eq!(threshold(Some("0")).ok(), Some(0.0));
        assert_eq!(threshold(Some("100")).ok(), Some(100.0));
        for bad in ["101", "-1", "abc", "", "NaN", "inf"] {
            assert!(threshold(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(boolean(Some("False")), Ok(Some(false)));
        assert_eq!(boolean(Some("1")), Ok(Some(true)));
        assert_eq!(boolean(None), Ok(None));
        assert!(boolean(Some("maybe")).is_err());
        assert_eq!(image_type(b"II*\0rest"), Some("image/tiff"));
        assert_eq!(image_type(b"%PDF"), None);
    }

    mod http {
        use super::*;
        use crate::emulator::tests::{calls, didit_form, start};
        use crate::emulator::{Emulator, Faults};
        use crate::samples;
        use reqwest::multipart::{Form, Part};

        async fn post(emu: &Emulator, key: Option<&str>, form: Form) -> (u16, Value) {
            let mut req = reqwest::Client::new()
                .post(format!("{}{}", emu.base_url(), wire::PATH))
                .multipart(form);
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        }

        fn png(seed: u64, scenario: &str) -> Vec<u8> {
            samples::png(seed, 2000, Some(scenario))
        }

        #[tokio::test]
        async fn keys_are_checked_like_the_vendor() {
            let emu = start(Faults::default()).await;
            let img = png(1, r#"{"face":90}"#);
            let (s, b) = post(&emu, None, didit_form(img.clone())).await;
            assert_eq!(
                (s, b["detail"].as_str().unwrap()),
                (403, "Authentication credentials were not provided.")
            );
            let (s, _) = post(&emu, Some("wrong"), didit_form(img.clone())).await;
            assert_eq!(s, 401);
            let admin = reqwest::Client::new();
            let creds = format!("{}/_admin/credentials/didit", emu.base_url());
            admin
                .post(&creds)
                .json(&json!({"valid": false}))
                .send()
                .await
                .unwrap();
            let (s, b) = post(&emu, Some("k-1"), didit_form(img.clone())).await;
            assert_eq!(
                (s, b["detail"].as_str().unwrap()),
                (401, "Invalid API key.")
            );
            admin
                .post(&creds)
                .json(&json!({"valid": true}))
                .send()
                .await
                .unwrap();
            let (s, b) = post(&emu, Some("k-1"), didit_form(img.clone())).await;
            assert_eq!(s, 200);
            assert_eq!(b["liveness"]["status"], "Approved");
            // Every request that carried the image counts, refused ones too.
            let c = calls(&emu).await;
            assert_eq!(c["didit"]["submissions"], 4);
            assert_eq!(c["argos"]["submissions"], 0);
        }

        #[tokio::test]
        async fn bad_requests_get_field_errors() {
            let emu = start(Faults::default()).await;
            let img = png(2, r#"{"face":90}"#);
            let key = Some("k-1");
            let (s, b) = post(&emu, key, Form::new().text("rotate_image", "true")).await;
            assert_eq!(
                (s, &b),
                (400, &json!({"user_image": ["No file was submitted."]}))
            );
            // A part without a filename is a plain field, not a file.
            let part = Part::bytes(img.clone()).mime_str("image/png").unwrap();
            let (s, b) = post(&emu, key, Form::new().part("user_image", part)).await;
            assert_eq!(s, 400);
            assert!(b["user_image"][0].as_str().unwrap().contains("not a file"));
            // The declared type must be the real one.
            let part = Part::bytes(img.clone())
                .file_name("x.jpg")
                .mime_str("image/jpeg")
                .unwrap();
            let (s, b) = post(&emu, key, Form::new().part("user_image", part)).await;
            assert_eq!(s, 400);
            assert!(
                b["user_image"][0]
                    .as_str()
                    .unwrap()
                    .contains("does not match"),
                "{b}"
            );
            let part = Part::bytes(b"%PDF-1.7 not an image".to_vec())
                .file_name("x.png")
                .mime_str("image/png")
                .unwrap();
            let (s, b) = post(&emu, key, Form::new().part("user_image", part)).await;
            assert_eq!(s, 400);
            assert!(
                b["user_image"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("Upload a valid image")
            );
            for (value, problem) in [
                ("150", "Ensure this value is less than or equal to 100."),
                ("-5", "Ensure this value is greater than or equal to 0."),
                ("high", "A valid number is required."),
            ] {
                let form = didit_form(img.clone()).text(wire::FIELD_THRESHOLD, value);
                let (s, b) = post(&emu, key, form).await;
                assert_eq!(
                    (s, &b),
                    (
                        400,
                        &json!({"face_liveness_score_decline_threshold": [problem]})
                    )
                );
            }
            let form = didit_form(img.clone()).text(wire::FIELD_SAVE, "perhaps");
            let (s, b) = post(&emu, key, form).await;
            assert_eq!(
                (s, &b),
                (
                    400,
                    &json!({"save_api_request": ["Must be a valid boolean."]})
                )
            );
            // JSON instead of multipart.
            let r = reqwest::Client::new()
                .post(format!("{}{}", emu.base_url(), wire::PATH))
                .header("x-api-key", "k-1")
                .json(&json!({"user_image": "aGVsbG8="}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415);
            // An invalid scenario is answered loudly.
            let (s, b) = post(&emu, key, didit_form(png(3, r#"{"warnings":["NOPE"]}"#))).await;
            assert_eq!(s, 400);
            assert!(b["detail"].as_str().unwrap().contains("NOPE"));
        }

        #[tokio::test]
        async fn the_size_limit_is_5_000_000_bytes() {
            let emu = start(Faults::default()).await;
            let mut at_limit = samples::jpeg(4, 4_990_000, Some(r#"{"face":80}"#));
            at_limit.resize(5_000_000, 0);
            let mut over = at_limit.clone();
            over.push(0);
            let jpeg = |b: Vec<u8>| {
                Form::new().part(
                    "user_image",
                    Part::bytes(b)
                        .file_name("f.jpg")
                        .mime_str("image/jpeg")
                        .unwrap(),
                )
            };
            let (s, b) = post(&emu, Some("k-1"), jpeg(at_limit)).await;
            assert_eq!(s, 200, "{b}");
            let (s, b) = post(&emu, Some("k-1"), jpeg(over)).await;
            assert_eq!(
                (s, &b),
                (
                    400,
                    &json!({"user_image": ["The file size exceeds the 5 MB limit."]})
                )
            );
        }

        #[tokio::test]
        async fn the_report_has_what_the_vendor_sends_and_options_apply() {
            let emu = start(Faults::default()).await;
            let img = png(5, r#"{"face":45,"didit_method":"FLASHING"}"#);
            let form = didit_form(img.clone())
                .text(wire::FIELD_THRESHOLD, "50")
                .text(wire::FIELD_VENDOR_DATA, "applicant-9")
                .text(wire::FIELD_SAVE, "false")
                .text("unknown_field", "ignored");
            let (s, b) = post(&emu, Some("k-1"), form).await;
            assert_eq!(s, 200);
            let l = &b["liveness"];
            assert_eq!(
                l["status"], "Declined",
                "45 is at or below the threshold sent"
            );
            assert_eq!(l["method"], "FLASHING");
            assert_eq!(l["score"], 45);
            assert_eq!(l["warnings"][0]["risk"], "LOW_LIVENESS_SCORE");
            assert!(l["user_image"]["entities"][0]["gender"].is_string());
            assert!(
                l["reference_image"]
                    .as_str()
                    .unwrap()
                    .starts_with(MEDIA_BASE)
            );
            assert_eq!(b["vendor_data"], "applicant-9");
            assert!(b["request_id"].as_str().unwrap().len() == 36);
            // A scenario 429 carries the documented headers, then recovers.
            let img = png(6, r#"{"error":429,"error_times":1,"face":70}"#);
            let r = reqwest::Client::new()
                .post(format!("{}{}", emu.base_url(), wire::PATH))
                .header("x-api-key", "k-1")
                .multipart(didit_form(img.clone()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(r.headers()["x-ratelimit-limit"], "300");
            assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
            assert!(r.headers().contains_key("x-ratelimit-reset"));
            let (s, _) = post(&emu, Some("k-1"), didit_form(img)).await;
            assert_eq!(s, 200);
            for (status, text) in [
                (403, "credits"),
                (500, "server error"),
                (400, "valid image"),
            ] {
                let img = png(7 + status as u64, &format!(r#"{{"error":{status}}}"#));
                let (s, b) = post(&emu, Some("k-1"), didit_form(img)).await;
                assert_eq!(s, status);
                assert!(b.to_string().contains(text), "{b}");
            }
        }
    }
}
