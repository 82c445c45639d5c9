//! Didit passive liveness wire types (`POST {base}/v3/passive-liveness/`),
//! as the standalone API page and the liveness report page describe them.
//! The emulator serves these same types.
//!
//! The report types keep only what normalization needs. Didit also sends
//! face entities (bbox, age, gender, race), `reference_image` and
//! `video_url` (temporary media URLs), `age_estimation`, `matches`,
//! `vendor_data`, `metadata` and each warning's `additional_data`: none of
//! them is a field here, so serde drops them while parsing and no later
//! code can publish, log or store them by accident.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// The endpoint, after the configured base URL.
pub const PATH: &str = "/v3/passive-liveness/";
/// Didit answers 400 to images over "5 MB"; we read it as 5 000 000 bytes,
/// the stricter of its two readings (docs/messages.md#failure-classes).
pub const MAX_IMAGE_BYTES: u64 = 5_000_000;
/// The vendor's decline threshold when the request sets none.
pub const DEFAULT_DECLINE_THRESHOLD: f64 = 30.0;

/// Multipart field names of the request.
pub const FIELD_IMAGE: &str = "user_image";
pub const FIELD_THRESHOLD: &str = "face_liveness_score_decline_threshold";
pub const FIELD_ROTATE: &str = "rotate_image";
pub const FIELD_SAVE: &str = "save_api_request";
pub const FIELD_VENDOR_DATA: &str = "vendor_data";

/// Risk codes the normalization gives a meaning to.
pub const NO_FACE_DETECTED: &str = "NO_FACE_DETECTED";
pub const LIVENESS_FACE_ATTACK: &str = "LIVENESS_FACE_ATTACK";
pub const LOW_LIVENESS_SCORE: &str = "LOW_LIVENESS_SCORE";

/// Defines a string enum that keeps values it does not know, so a status
/// or method Didit adds later is reported rather than failing the parse.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($variant,)+
            /// A value the vendor's documents do not list.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => $name::$variant,)+
                    _ => $name::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

open_enum!(
    /// `liveness.status`. The standalone API answers only Approved or
    /// Declined; workflow reports add In Review and Not Finished.
    Status {
        Approved => "Approved",
        Declined => "Declined",
        InReview => "In Review",
        NotFinished => "Not Finished",
    }
);

open_enum!(
    /// `liveness.method`: PASSIVE for the standalone API, the others from
    /// workflow sessions.
    Method {
        Active3d => "ACTIVE_3D",
        Flashing => "FLASHING",
        Passive => "PASSIVE",
    }
);

open_enum!(
    /// A warning's `log_type`: error declines, warning sends to review,
    /// information has no effect.
    LogType {
        Information => "information",
        Warning => "warning",
        Error => "error",
    }
);

/// A 200 from `POST /v3/passive-liveness/`, as far as we keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub liveness: Liveness,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The `liveness` object without biometric attributes or media URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// 0–100, an integer or a fraction; null when no face was found.
    #[serde(default)]
    pub score: Option<Number>,
    #[serde(default)]
    pub warnings: Vec<RiskWarning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_quality: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_luminance: Option<Number>,
}

/// One entry of `liveness.warnings` (its `additional_data` is not kept: for
/// age and duplicate checks it can carry an estimated age or another
/// person's session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskWarning {
    pub risk: String,
    pub log_type: LogType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_description: Option<String>,
    /// Current docs add the feature (e.g. `LIVENESS`) and workflow node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<Value>,
}

/// The documented risk codes with their standalone-API severity and short
/// description. Codes the vendor gives no standalone severity for are
/// reported as warnings (docs/vendors.md#didit).
pub fn risk(code: &str) -> Option<(LogType, &'static str)> {
    Some(match code {
        NO_FACE_DETECTED => (LogType::Error, "No face detected"),
        LIVENESS_FACE_ATTACK => (LogType::Error, "Possible face presentation attack"),
        "FACE_IN_BLOCKLIST" => (LogType::Error, "Face in blocklist"),
        "POSSIBLE_FACE_IN_BLOCKLIST" => (LogType::Error, "Possible face in blocklist"),
        LOW_LIVENESS_SCORE => (LogType::Error, "Low liveness score"),
        "MULTIPLE_FACES_DETECTED" => (LogType::Warning, "Multiple faces detected"),
        "DUPLICATED_FACE" => (LogType::Information, "Duplicated face"),
        "POSSIBLE_DUPLICATED_FACE" => (LogType::Information, "Possible duplicated face"),
        "LOW_FACE_QUALITY" => (LogType::Warning, "Low face quality"),
        "LOW_FACE_LUMINANCE" => (LogType::Warning, "Low face luminance"),
        "HIGH_FACE_LUMINANCE" => (LogType::Warning, "High face luminance"),
        "AGE_BELOW_MINIMUM" => (LogType::Warning, "Age below minimum"),
        "AGE_NOT_DETECTED" => (LogType::Warning, "Age not detected"),
        _ => return None,
    })
}

/// The human text of an error body. Didit does not document its error
/// shape; clients read `detail`, `message` or `error`, and field
/// validation errors come as `{"field": ["problem", ...]}`.
pub fn error_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    for key in ["detail", "message", "error"] {
        match obj.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                return crate::providers::http::vendor_text(s);
            }
            Some(Value::Object(inner)) => {
                if let Some(text) = field_errors(inner) {
                    return Some(text);
                }
            }
            _ => {}
        }
    }
    field_errors(obj)
}

/// `field: problem; field: problem` from a map of field errors.
fn field_errors(obj: &serde_json::Map<String, Value>) -> Option<String> {
    let parts: Vec<String> = obj
        .iter()
        .filter_map(|(field, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return None,
            };
            (!text.is_empty()).then(|| format!("{field}: {text}"))
        })
        .collect();
    crate::providers::http::vendor_text(&parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn open_enums_keep_unknown_values() {
        let s: Status = serde_json::from_value(json!("In Review")).unwrap();
        assert_eq!(s, Status::InReview);
        let s: Status = serde_json::from_value(json!("Expired")).unwrap();
        assert_eq!(s, Status::Other("Expired".into()));
        assert_eq!(serde_json::to_value(&s).unwrap(), json!("Expired"));
        assert_eq!(
            serde_json::to_value(Status::NotFinished).unwrap(),
            json!("Not Finished")
        );
        let m: Method = serde_json::from_value(json!("ACTIVE_3D")).unwrap();
        assert_eq!(m, Method::Active3d);
        let l: LogType = serde_json::from_value(json!("information")).unwrap();
        assert_eq!(l, LogType::Information);
    }

    #[test]
    fn biometric_and_media_fields_are_dropped_on_parse() {
        let full = json!({
            "request_id": "r-1",
            "liveness": {
                "status": "Approved", "method": "ACTIVE_3D", "score": 89.92,
                "reference_image": "https://example.com/reference.jpg",
                "video_url": "https://example.com/video.mp4",
                "age_estimation": 24.3,
                "matches": [{"session_id": "s", "similarity": 99}],
                "user_image": {"entities": [{"bbox": [1, 2, 3, 4], "confidence": 0.9,
                    "age": 24.3, "gender": "female", "race": "asian"}], "best_angle": 0},
                "warnings": [{"risk": "LOW_LIVENESS_SCORE", "additional_data": "age 24",
                    "log_type": "information", "short_description": "Low liveness score",
                    "long_description": "long", "feature": "LIVENESS", "node_id": "n1"}],
                "face_quality": 80, "face_luminance": 50
            },
            "vendor_data": "user-1", "metadata": {"x": 1},
            "created_at": "2026-11-23T00:00:00Z"
        });
        let r: Report = serde_json::from_value(full).unwrap();
        let back = serde_json::to_string(&r).unwrap();
        for gone in [
            "reference_image",
            "video_url",
            "age",
            "gender",
            "race",
            "bbox",
            "entities",
            "matches",
            "additional_data",
            "vendor_data",
            "metadata",
        ] {
            assert!(!back.contains(gone), "{gone} kept: {back}");
            assert!(!format!("{r:?}").contains(gone), "{gone} in Debug");
        }
        assert_eq!(r.liveness.score, Some(Number::from_f64(89.92).unwrap()));
        assert_eq!(r.liveness.warnings[0].feature.as_deref(), Some("LIVENESS"));
    }

    #[test]
    fn error_text_reads_every_shape() {
        assert_eq!(
            error_text(br#"{"detail":"Invalid API key."}"#).as_deref(),
            Some("Invalid API key.")
        );
        assert_eq!(error_text(br#"{"message":"bad"}"#).as_deref(), Some("bad"));
        assert_eq!(error_text(br#"{"error":"nope"}"#).as_deref(), Some("nope"));
        assert_eq!(
            error_text(br#"{"user_image":["This field is required."]}"#).as_deref(),
            Some("user_image: This field is required.")
        );
        assert_eq!(
            error_text(br#"{"detail":{"face_liveness_score_decline_threshold":["Ensure this value is less than or equal to 100."]}}"#).as_deref(),
            Some("face_liveness_score_decline_threshold: Ensure this value is less than or equal to 100.")
        );
        assert_eq!(error_text(b"<html>oops</html>"), None);
        assert_eq!(error_text(b"{}"), None);
        assert_eq!(error_text(b"[1]"), None);
    }
}
