//! Intellicheck IDN Direct wire format: every body, both ways, is the base64
//! text of `{"public_data":{...},"private_data":{...}}`, signed with
//! HMAC-SHA256 over that text. The emulator serves these same types.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use sha2::Sha256;
use std::io::Write as _;

pub const PATH_START: &str = "/api/v1/start";
pub const PATH_SUBMIT_FRONT: &str = "/api/v1/submit-front";
pub const PATH_SUBMIT_BACK: &str = "/api/v1/submit-back";
pub const PATH_END: &str = "/api/v1/end";
pub const PATH_GET_RESULTS: &str = "/api/v1/get-results";

/// The signal we subscribe to in `/start`.
pub const SIGNAL_DOCUMENT_LIVENESS: &str = "document_liveness_idrnd";
/// `document_type` for a document that is neither a North American
/// licence nor a passport: it asks for no barcode and no specific side.
pub const DOCUMENT_TYPE_OTHER: &str = "other";

/// The three spellings the vendor uses for the document liveness object in
/// `/get-results` (schema, page title, connector schema; docs/vendors.md).
pub const LIVENESS_KEYS: [&str; 3] = [
    "documentLivenessIdRnD",
    "document_livenessIdRnD",
    "document_liveness",
];

/// Request header names.
pub const HEADER_CUSTOMER_ID: &str = "customer-id";
pub const HEADER_SIGNATURE: &str = "signature";

type HmacSha256 = Hmac<Sha256>;

/// The `signature` header for a payload: `sha256=<lowercase hex HMAC>`.
pub fn signature(key: &[u8], payload: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether a `signature` header value signs `payload` with `key`. The
/// comparison of the MAC is constant-time; hex case is not significant.
pub fn signature_matches(key: &[u8], payload: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac.verify_slice(&given).is_ok()
}

/// `{}`: the vendor requires both halves of the envelope, even empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// An envelope before encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P, Q> {
    pub public_data: P,
    pub private_data: Q,
}

/// `private_data` of `/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartPrivate {
    pub document_type: String,
    pub signals: Vec<String>,
}

/// `private_data` of `/end` and `/get-results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionPrivate {
    pub transaction_id: String,
}

/// The base64 text of a small envelope.
pub fn encode<P: Serialize, Q: Serialize>(public_data: &P, private_data: &Q) -> Vec<u8> {
    let json = serde_json::to_vec(&Envelope {
        public_data,
        private_data,
    })
    .expect("plain structs serialize");
    STANDARD.encode(json).into_bytes()
}

/// The base64 text of `{"public_data":{},"private_data":{"transaction_id":
/// <txn>,"<field>":"<base64 image>"}}`. Both base64 layers are streamed into
/// the one output buffer: the image is never held as an intermediate JSON
/// string on its way to the vendor.
pub fn encode_image_submission(transaction_id: &str, field: &str, image: &[u8]) -> Vec<u8> {
    let inner_len = base64::encoded_len(image.len(), true).expect("image size fits in memory");
    let json_len = inner_len + transaction_id.len() * 2 + field.len() + 96;
    let mut out =
        Vec::with_capacity(base64::encoded_len(json_len, true).expect("size fits in memory"));
    {
        let mut outer = base64::write::EncoderWriter::new(&mut out, &STANDARD);
        outer
            .write_all(br#"{"public_data":{},"private_data":{"transaction_id":"#)
            .expect("writing to memory");
        serde_json::to_writer(&mut outer, transaction_id).expect("writing to memory");
        outer.write_all(b",").expect("writing to memory");
        serde_json::to_writer(&mut outer, field).expect("writing to memory");
        outer.write_all(b":\"").expect("writing to memory");
        // The inner layer in chunks of whole 3-byte groups, so only the last
        // one pads. (A nested EncoderWriter may report a zero-length write,
        // which write_all takes for an error.)
        let mut chunk = [0u8; 4096];
        for part in image.chunks(3072) {
            let n = STANDARD
                .encode_slice(part, &mut chunk)
                .expect("4096 bytes hold 3072 encoded");
            outer.write_all(&chunk[..n]).expect("writing to memory");
        }
        outer.write_all(b"\"}}").expect("writing to memory");
        outer.finish().expect("writing to memory");
    }
    out
}

/// A decoded envelope whose halves are kept loose: responses differ per
/// endpoint and the vendor documents few of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LooseEnvelope {
    #[serde(default)]
    pub public_data: Value,
    #[serde(default)]
    pub private_data: Value,
}

/// Why a body is not an envelope, in words for an error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not base64 text")]
    NotBase64,
    #[error("the decoded body is not JSON: {0}")]
    NotJson(String),
    #[error("the decoded body has no public_data and private_data objects")]
    NotEnvelope,
}

/// Decodes a body: base64 text of the envelope (standard or URL-safe
/// alphabet, surrounding whitespace or quotes ignored).
pub fn decode(body: &[u8]) -> Result<LooseEnvelope, DecodeError> {
    let text = body.trim_ascii();
    let text = text
        .strip_prefix(b"\"")
        .and_then(|t| t.strip_suffix(b"\""))
        .unwrap_or(text);
    let json = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| DecodeError::NotBase64)?;
    let v: Value =
        serde_json::from_slice(&json).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(DecodeError::NotEnvelope);
    };
    let half = |k: &str| map.get(k).filter(|v| v.is_object()).cloned();
    match (half("public_data"), half("private_data")) {
        (None, None) => Err(DecodeError::NotEnvelope),
        (p, q) => Ok(LooseEnvelope {
            public_data: p.unwrap_or(Value::Object(Default::default())),
            private_data: q.unwrap_or(Value::Object(Default::default())),
        }),
    }
}

impl LooseEnvelope {
    /// A field of `private_data`, else of `public_data`.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.private_data
            .get(key)
            .or_else(|| self.public_data.get(key))
    }

    /// The document liveness object under any of its spellings, with the
    /// spelling found.
    pub fn liveness(&self) -> Option<(&'static str, &Value)> {
        LIVENESS_KEYS
            .iter()
            .find_map(|k| self.field(k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }

    /// `success: false` at the top of a step's answer.
    pub fn failed(&self) -> Option<String> {
        (self.field("success").and_then(Value::as_bool) == Some(false)).then(|| {
            self.field("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_owned()
        })
    }
}

/// A value the vendor sends as an integer or as a string (`live`, and
/// `imageQualityFindings[].code`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrText {
    Int(i64),
    Text(String),
}

impl IntOrText {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            IntOrText::Int(n) => Some(*n),
            IntOrText::Text(s) => s.trim().parse().ok(),
        }
    }

    pub fn text(&self) -> String {
        match self {
            IntOrText::Int(n) => n.to_string(),
            IntOrText::Text(s) => s.trim().to_owned(),
        }
    }
}

/// One check (`screenReplay`, `printedCopy`, `portraitSubstitution`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    #[serde(default)]
    pub threshold: Option<Number>,
    /// 0 not live, 1 live, 2 not performed.
    #[serde(default)]
    pub live: Option<IntOrText>,
    /// 0–1, three decimals; null when the check was not performed.
    #[serde(default)]
    pub probability: Option<Number>,
}

/// One side of the document; null in `data` when it was not submitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideResult {
    #[serde(rename = "screenReplay", default)]
    pub screen_replay: Option<CheckResult>,
    #[serde(rename = "printedCopy", default)]
    pub printed_copy: Option<CheckResult>,
    #[serde(rename = "portraitSubstitution", default)]
    pub portrait_substitution: Option<CheckResult>,
    /// 0 if any check is 0, else 1.
    #[serde(default)]
    pub live: Option<IntOrText>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LivenessData {
    #[serde(default)]
    pub front: Option<SideResult>,
    #[serde(default)]
    pub back: Option<SideResult>,
}

/// `imageQualityFindings[]`: 3xx warning, 4xx error (Image Quality
/// Detection page); `code` documented as a string, shown as a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    #[serde(default)]
    pub code: Option<IntOrText>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The document liveness object of `/get-results`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LivenessObject {
    #[serde(default)]
    pub success: Option<bool>,
    /// Whether `data` is populated.
    #[serde(default)]
    pub result: Option<bool>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(rename = "imageQualityFindings", default)]
    pub image_quality_findings: Option<Vec<Finding>>,
    #[serde(default)]
    pub data: Option<LivenessData>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed once, independently, with Python's `hmac` module:
    /// `hmac.new(b"test-signing-key", payload, hashlib.sha256).hexdigest()`.
    const KAT_PAYLOAD: &str =
        "eyJwdWJsaWNfZGF0YSI6e30sInByaXZhdGVfZGF0YSI6eyJ0cmFuc2FjdGlvbl9pZCI6ImFiYyJ9fQ==";
    const KAT_SIGNATURE: &str =
        "sha256=8df35f773a98faf47095e5e7ba19867c2fc1ba496600c845c4bf9d90aa622cf2";

    #[test]
    fn signature_known_answer() {
        let body = encode(
            &Empty {},
            &TransactionPrivate {
                transaction_id: "abc".into(),
            },
        );
        assert_eq!(body, KAT_PAYLOAD.as_bytes());
        assert_eq!(signature(b"test-signing-key", &body), KAT_SIGNATURE);
    }

    #[test]
    fn signature_verification() {
        let key = b"test-signing-key";
        let p = KAT_PAYLOAD.as_bytes();
        assert!(signature_matches(key, p, KAT_SIGNATURE));
        assert!(signature_matches(
            key,
            p,
            &KAT_SIGNATURE.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!signature_matches(b"other-key", p, KAT_SIGNATURE));
        assert!(!signature_matches(key, b"tampered", KAT_SIGNATURE));
        assert!(
            !signature_matches(key, p, &KAT_SIGNATURE[7..]),
            "prefix required"
        );
        assert!(!signature_matches(key, p, "sha256=zz"));
        assert!(
            !signature_matches(key, p, &KAT_SIGNATURE[..40]),
            "truncated MAC"
        );
    }

    #[test]
    fn image_submission_double_encoding() {
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for image in [
            &b""[..],
            b"\x00",
            b"\xff\xd8\xff\xe0abc",
            &[7u8; 3072],
            &big,
        ] {
            let body = encode_image_submission("t\"1", "front", image);
            let env = decode(&body).unwrap();
            assert_eq!(env.public_data, serde_json::json!({}));
            assert_eq!(env.private_data["transaction_id"], "t\"1");
            let b64 = env.private_data["front"].as_str().unwrap();
            assert_eq!(STANDARD.decode(b64).unwrap(), image);
            #[derive(Serialize)]
            struct Front<'a> {
                transaction_id: &'a str,
                front: &'a str,
            }
            let plain = serde_json::to_vec(&Envelope {
                public_data: Empty {},
                private_data: Front {
                    transaction_id: "t\"1",
                    front: b64,
                },
            })
            .unwrap();
            assert_eq!(
                body,
                STANDARD.encode(plain).into_bytes(),
                "same bytes as the plain way"
            );
        }
    }

    #[test]
    fn decode_is_lenient_about_framing_and_strict_about_content() {
        let env = decode(b" \"eyJwdWJsaWNfZGF0YSI6e30sInByaXZhdGVfZGF0YSI6e319\"\n").unwrap();
        assert_eq!(env.private_data, serde_json::json!({}));
        assert_eq!(decode(b"not base64!!"), Err(DecodeError::NotBase64));
        assert!(matches!(
            decode(STANDARD.encode("{oops").as_bytes()),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            decode(STANDARD.encode("[1]").as_bytes()),
            Err(DecodeError::NotEnvelope)
        );
        assert_eq!(
            decode(STANDARD.encode(r#"{"a":1}"#).as_bytes()),
            Err(DecodeError::NotEnvelope)
        );
        // One half alone is read, the other taken as empty.
        let env = decode(STANDARD.encode(r#"{"private_data":{"x":1}}"#).as_bytes()).unwrap();
        assert_eq!(env.field("x"), Some(&serde_json::json!(1)));
    }

    #[test]
    fn liveness_object_under_every_spelling() {
        for key in LIVENESS_KEYS {
            let env = LooseEnvelope {
                public_data: serde_json::json!({}),
                private_data: serde_json::json!({ key: {"success": true} }),
            };
            assert_eq!(env.liveness().unwrap().0, key);
        }
        let none = LooseEnvelope {
            public_data: serde_json::json!({}),
            private_data: serde_json::json!({"documentLivenessIdRnD": null, "status": "processing"}),
        };
        assert!(none.liveness().is_none());
    }

    #[test]
    fn int_or_text() {
        let v: Vec<IntOrText> = serde_json::from_str(r#"[1, "2", " 0 ", "x", 301]"#).unwrap();
        let ints: Vec<Option<i64>> = v.iter().map(IntOrText::as_int).collect();
        assert_eq!(ints, [Some(1), Some(2), Some(0), None, Some(301)]);
        assert_eq!(v[4].text(), "301");
    }
}
