//! The job message (`liveness.job.v1`): its wire shape, for the JSON Schema
//! and for producers written in Rust, and the validating parser the worker
//! runs on every delivery.
//!
//! Parsing is deliberately hand-written rather than a strict serde derive:
//! an operator reading a dead letter wants every problem of a job named in
//! plain words (`check must be "document" or "face", got "selfie"`), not the
//! first serde error with a column number.

use super::text::log_text;
use super::{Check, ProviderName, SignalName};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

pub const JOB_SCHEMA: &str = "liveness.job.v1";
/// Largest `metadata` object, measured as compact JSON.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// How much of an unparseable body a dead letter carries.
pub const RAW_BODY_ECHO_BYTES: usize = 64 * 1024;

/// The job message as producers send it (docs/messages.md#job). Null is accepted for
/// every optional field and means "absent".
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "liveness.job.v1",
    description = "A liveness verification job, published to exchange liveness.jobs with routing key job."
)]
pub struct JobMessage {
    /// Version tag.
    #[schemars(schema_with = "job_schema_tag")]
    pub schema: String,
    /// The producer's id and the idempotency key: one job_id is verified (and billed) once. Not "." or "..": it is a path segment in callback URLs and results store keys.
    #[schemars(schema_with = "job_id_schema")]
    pub job_id: String,
    pub check: Check,
    /// `s3://bucket/key` of the document front or the selfie; the bucket must be on the allowlist. The key has no empty, "." or ".." segment and no control character.
    #[schemars(pattern(r"^s3://[^/]+/.+$"))]
    pub image: String,
    /// `s3://bucket/key` of the document back (document checks only; the same key rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^s3://[^/]+/.+$"))]
    pub back_image: Option<String>,
    /// The vendor to use; default: configured per check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// Document checks only; non-empty; default all three document signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "document_signals_schema")]
    pub signals: Option<Vec<SignalName>>,
    /// Opaque to the worker, echoed verbatim in the result and dead letter; at most 8 KiB as compact JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Only the document signals may be requested (`face_liveness` is implied by
/// a face check), as the validator enforces.
fn document_signals_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": {
            "type": "string",
            "enum": [
                SignalName::ScreenReplay.as_str(),
                SignalName::PrintedCopy.as_str(),
                SignalName::PortraitSubstitution.as_str()
            ]
        }
    })
}

fn job_id_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    JobId::json_schema(generator)
}

fn job_schema_tag(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "const": JOB_SCHEMA })
}

/// `s3://bucket/key`, taken literally (the key is not percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("must be an s3://bucket/key URI, got {}", quote(s)))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| format!("has no object key after the bucket: {}", quote(s)))?;
        if !valid_bucket_name(bucket) {
            return Err(format!(
                "names an invalid bucket {} (3-63 characters of a-z, 0-9, '.', '-')",
                quote(bucket)
            ));
        }
        if key.is_empty() || key.len() > 1024 {
            return Err(format!(
                "must have an object key of 1-1024 bytes: {}",
                quote(s)
            ));
        }
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(format!(
                "has a control character {c:?} in its object key: {}",
                quote(s)
            ));
        }
        // S3 itself takes keys literally, but proxies, SDKs and S3-compatible
        // servers normalize paths: `allowed/../other/x` may read another
        // bucket's object, `a//b` another object than the one named.
        if let Some(seg) = key.split('/').find(|seg| matches!(*seg, "" | "." | "..")) {
            let what = if seg.is_empty() {
                "an empty path segment (a leading, trailing or doubled '/')".to_owned()
            } else {
                format!("a {seg:?} path segment")
            };
            return Err(format!("has {what} in its object key: {}", quote(s)));
        }
        Ok(S3Uri {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

fn valid_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// A job's id: 1–128 of `A-Z a-z 0-9 . _ : -`. The producer's idempotency
/// key: one job_id is verified (and billed) once. It names objects in the
/// results store and appears in callback URLs, so it is only ever built
/// through [`JobId::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const MAX_LEN: usize = 128;

    /// The id, or why it is not one (in the words of a dead letter).
    pub fn parse(s: &str) -> Result<JobId, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "job_id must be 1-{} characters, got {}",
                Self::MAX_LEN,
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ".-_:".contains(*c)))
        {
            return Err(format!(
                "job_id may only contain A-Z a-z 0-9 . _ : -, found {c:?}"
            ));
        }
        // It becomes a path segment (callback URLs, results store keys),
        // where these two mean "here" and "the parent".
        if s == "." || s == ".." {
            return Err(format!(
                "job_id must not be {s:?}: it is a path segment in callback URLs and results store keys"
            ));
        }
        Ok(JobId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for JobId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JobId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for JobId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": JobId::MAX_LEN,
            "pattern": r"^[A-Za-z0-9._:-]+$",
            "not": { "enum": [".", ".."] }
        })
    }
}

/// A job that passed validation.
#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: JobId,
    pub check: Check,
    pub image: S3Uri,
    pub back_image: Option<S3Uri>,
    pub provider: Option<ProviderName>,
    /// The signals to score, in canonical order (explicit or the check's default).
    pub signals: Vec<SignalName>,
    /// The producer's metadata, compact, values exactly as sent.
    pub metadata: Option<Box<RawValue>>,
}

/// A delivery body that is not a valid job, with what a dead letter echoes.
#[derive(Debug)]
pub struct InvalidJob {
    /// The body's `job_id` when it is a string, even an invalid one.
    pub job_id: Option<String>,
    /// The body when it is a JSON object within the size limit.
    pub job: Option<Box<RawValue>>,
    /// The start of the body when it could not be parsed at all.
    pub raw_body: Option<Vec<u8>>,
    /// The body's `check` when it names a valid one (for metrics).
    pub check: Option<Check>,
    pub message: String,
}

/// A valid job and its body, kept verbatim so a later failure can echo it
/// in a dead letter.
#[derive(Debug)]
pub struct ParsedJob {
    pub job: Job,
    pub raw: Box<RawValue>,
}

impl InvalidJob {
    /// The job_id to show in logs, when the body had a string one:
    /// escaped and cut (see [`log_text`]): it is whatever a producer sent.
    pub fn job_id_hint(&self) -> Option<String> {
        self.job_id
            .as_deref()
            .map(|id| log_text(id, JobId::MAX_LEN))
    }
}

/// Parses and validates a delivery body, once: everything later reads the
/// [`ParsedJob`] or the [`InvalidJob`].
pub fn parse_job(body: &[u8], max_body_bytes: usize) -> Result<ParsedJob, InvalidJob> {
    let raw_echo = || Some(body[..body.len().min(RAW_BODY_ECHO_BYTES)].to_vec());
    if body.len() > max_body_bytes {
        return Err(InvalidJob {
            job_id: None,
            job: None,
            raw_body: raw_echo(),
            check: None,
            message: format!(
                "job body is {} bytes, over the {max_body_bytes}-byte limit; it was not parsed",
                body.len()
            ),
        });
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return Err(InvalidJob {
                job_id: None,
                job: None,
                raw_body: raw_echo(),
                check: None,
                message: format!(
                    "job body is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            });
        }
    };
    let object: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return Err(InvalidJob {
                job_id: None,
                job: None,
                raw_body: raw_echo(),
                check: None,
                message: format!(
                    "job body is JSON {} where an object is required",
                    json_kind(&other)
                ),
            });
        }
        Err(e) => {
            return Err(InvalidJob {
                job_id: None,
                job: None,
                raw_body: raw_echo(),
                check: None,
                message: format!("job body is not valid JSON: {e}"),
            });
        }
    };
    // Verbatim copy for echoing; cannot fail since the text parsed above.
    let raw = RawValue::from_string(text.to_owned()).expect("text parsed as JSON");
    let job_id = object
        .get("job_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match validate(&object, text) {
        Ok(job) => Ok(ParsedJob { job, raw }),
        Err(problems) => Err(InvalidJob {
            job_id,
            job: Some(raw),
            raw_body: None,
            check: object
                .get("check")
                .and_then(Value::as_str)
                .and_then(Check::parse),
            message: format!("job violates liveness.job.v1: {}", problems.join("; ")),
        }),
    }
}

fn validate(o: &Map<String, Value>, text: &str) -> Result<Job, Vec<String>> {
    let mut problems = Vec::new();
    // Null means absent for optional fields: many producers serialize that way.
    let opt = |k: &str| o.get(k).filter(|v| !v.is_null());

    match o.get("schema") {
        Some(Value::String(s)) if s == JOB_SCHEMA => {}
        Some(v) => problems.push(format!("schema must be \"{JOB_SCHEMA}\", got {}", short(v))),
        None => problems.push(format!("schema is required (\"{JOB_SCHEMA}\")")),
    }

    let job_id = match o.get("job_id") {
        Some(Value::String(s)) => JobId::parse(s).map_err(|e| problems.push(e)).ok(),
        Some(v) => {
            problems.push(format!("job_id must be a string, got {}", json_kind(v)));
            None
        }
        None => {
            problems.push("job_id is required".into());
            None
        }
    };

    let check = match o.get("check") {
        Some(Value::String(s)) => Check::parse(s).or_else(|| {
            problems.push(format!(
                "check must be \"document\" or \"face\", got {}",
                quote(s)
            ));
            None
        }),
        Some(v) => {
            problems.push(format!(
                "check must be \"document\" or \"face\", got {}",
                short(v)
            ));
            None
        }
        None => {
            problems.push("check is required (\"document\" or \"face\")".into());
            None
        }
    };

    let mut uri = |field: &str, required: bool| -> Option<S3Uri> {
        match if required { o.get(field) } else { opt(field) } {
            Some(Value::String(s)) => S3Uri::parse(s)
                .map_err(|e| problems.push(format!("{field} {e}")))
                .ok(),
            Some(v) => {
                problems.push(format!(
                    "{field} must be an s3://bucket/key string, got {}",
                    json_kind(v)
                ));
                None
            }
            None if required => {
                problems.push(format!("{field} is required (s3://bucket/key)"));
                None
            }
            None => None,
        }
    };
    let image = uri("image", true);
    let back_image = uri("back_image", false);
    if back_image.is_some() && check == Some(Check::Face) {
        problems.push("back_image is only allowed for check \"document\"".into());
    }

    let provider = match opt("provider") {
        Some(Value::String(s)) => ProviderName::parse(s).or_else(|| {
            problems.push(format!(
                "provider must be one of \"argos\", \"intellicheck\", \"didit\", got {}",
                quote(s)
            ));
            None
        }),
        Some(v) => {
            problems.push(format!("provider must be a string, got {}", json_kind(v)));
            None
        }
        None => None,
    };

    let mut signals = match opt("signals") {
        None => None,
        Some(Value::Array(items)) if items.is_empty() => {
            problems.push("signals, when present, must not be empty".into());
            None
        }
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item.as_str().and_then(SignalName::parse).filter(|n| n.is_document()) {
                    Some(n) if names.contains(&n) => {
                        problems.push(format!("signals lists {n} twice"));
                    }
                    Some(n) => names.push(n),
                    None => problems.push(format!(
                        "signals may only contain \"screen_replay\", \"printed_copy\", \"portrait_substitution\", got {}",
                        short(item)
                    )),
                }
            }
            Some(names)
        }
        Some(v) => {
            problems.push(format!("signals must be an array, got {}", json_kind(v)));
            None
        }
    };
    if signals.is_some() && check == Some(Check::Face) {
        problems.push("signals is only allowed for check \"document\"".into());
    }
    if let Some(s) = signals.as_mut() {
        s.sort();
    }

    let metadata = match opt("metadata") {
        None => None,
        Some(Value::Object(_)) => {
            // Echo the producer's own text for the values (number spelling
            // and key order survive), minus insignificant whitespace.
            let raw = raw_field(text, "metadata").map(|r| minify_json(r.get()));
            match raw {
                Some(compact) if compact.len() > MAX_METADATA_BYTES => {
                    problems.push(format!(
                        "metadata is {} bytes as compact JSON, over the {MAX_METADATA_BYTES}-byte limit",
                        compact.len()
                    ));
                    None
                }
                Some(compact) => {
                    Some(RawValue::from_string(compact).expect("minified JSON stays valid"))
                }
                None => None,
            }
        }
        Some(v) => {
            problems.push(format!("metadata must be an object, got {}", json_kind(v)));
            None
        }
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let check = check.expect("validated");
    let signals = match check {
        Check::Document => signals.unwrap_or_else(|| SignalName::DOCUMENT.to_vec()),
        Check::Face => vec![SignalName::FaceLiveness],
    };
    Ok(Job {
        job_id: job_id.expect("validated"),
        check,
        image: image.expect("validated"),
        back_image,
        provider,
        signals,
        metadata,
    })
}

/// The raw text of a top-level field. With duplicate keys the last wins, as
/// in serde_json's own map parsing.
fn raw_field<'a>(text: &'a str, field: &str) -> Option<&'a RawValue> {
    let fields: std::collections::HashMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    fields.get(field).copied()
}

/// Removes whitespace outside strings, leaving every token as written.
pub fn minify_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message, cut short so a hostile body cannot bloat it.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

fn quote(s: &str) -> String {
    short(&Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Job {
        parse_job(body.as_bytes(), 65536)
            .map(|p| p.job)
            .unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn err(body: &[u8]) -> InvalidJob {
        parse_job(body, 65536).expect_err("should be invalid")
    }

    #[test]
    fn minimal_document_job_defaults_to_all_signals() {
        let j = ok(
            r#"{"schema":"liveness.job.v1","job_id":"a-1","check":"document","image":"s3://imgs/a/b.png"}"#,
        );
        assert_eq!(j.signals, SignalName::DOCUMENT.to_vec());
        assert_eq!(
            j.image,
            S3Uri {
                bucket: "imgs".into(),
                key: "a/b.png".into()
            }
        );
        assert!(j.metadata.is_none());
    }

    #[test]
    fn metadata_is_compacted_but_values_kept_exactly() {
        let j = ok(
            r#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x",
            "metadata": { "n": 1.50, "big": 123456789012345678901234567890, "s": "a b\"c" },"unknown":1}"#,
        );
        assert_eq!(
            j.metadata.unwrap().get(),
            r#"{"n":1.50,"big":123456789012345678901234567890,"s":"a b\"c"}"#
        );
    }

    #[test]
    fn nulls_mean_absent() {
        let j = ok(
            r#"{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/x","back_image":null,"provider":null,"signals":null,"metadata":null}"#,
        );
        assert!(j.back_image.is_none() && j.provider.is_none() && j.metadata.is_none());
    }

    #[test]
    fn every_problem_is_named() {
        let e = err(br#"{"schema":"v2","job_id":"bad id!","check":"selfie","image":"http://x/y","signals":[],"provider":"acme"}"#);
        assert_eq!(e.job_id.as_deref(), Some("bad id!"));
        assert!(e.job.is_some() && e.raw_body.is_none());
        for needle in [
            "schema must be",
            "job_id may only contain",
            "check must be",
            "image must be an s3://",
            "signals, when present, must not be empty",
            "provider must be one of",
        ] {
            assert!(
                e.message.contains(needle),
                "{needle} missing from {}",
                e.message
            );
        }
    }

    #[test]
    fn face_rejects_signals_and_back_image() {
        let e = err(br#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x","back_image":"s3://imgs/y","signals":["screen_replay"]}"#);
        assert!(e.message.contains("back_image is only allowed"));
        assert!(e.message.contains("signals is only allowed"));
    }

    #[test]
    fn unknown_and_duplicate_signals_rejected() {
        let e = err(br#"{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/x","signals":["printed_copy","printed_copy","face_liveness"]}"#);
        assert!(e.message.contains("twice"));
        assert!(e.message.contains("face_liveness"));
    }

    #[test]
    fn non_objects_and_garbage_are_echoed_raw() {
        for body in [&b"not json"[..], b"[1,2]", b"\xff\xfe", b"\"str\""] {
            let e = err(body);
            assert!(e.job.is_none() && e.job_id.is_none());
            assert_eq!(e.raw_body.as_deref(), Some(body));
        }
    }

    #[test]
    fn oversized_body_not_parsed_and_echo_truncated() {
        let big = vec![b'{'; 200_000];
        let e = parse_job(&big, 65536).unwrap_err();
        assert_eq!(e.raw_body.unwrap().len(), RAW_BODY_ECHO_BYTES);
        assert!(e.message.contains("over the 65536-byte limit"));
    }

    #[test]
    fn metadata_limit_counts_compact_bytes() {
        let pad = "x".repeat(MAX_METADATA_BYTES);
        let body = format!(
            r#"{{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x","metadata":{{"p":"{pad}"}}}}"#
        );
        assert!(err(body.as_bytes()).message.contains("metadata is"));
    }

    #[test]
    fn s3_keys_with_dot_or_empty_segments_or_control_characters_are_refused() {
        for (uri, why) in [
            ("s3://allowed/../other/x", "\"..\" path segment"),
            ("s3://allowed/a/../../x", "\"..\" path segment"),
            ("s3://allowed/./x", "\".\" path segment"),
            ("s3://allowed/a/.", "\".\" path segment"),
            ("s3://allowed/..", "\"..\" path segment"),
            ("s3://allowed//x", "empty path segment"),
            ("s3://allowed/a//x", "empty path segment"),
            ("s3://allowed/a/", "empty path segment"),
            ("s3://allowed/a\nb", "control character '\\n'"),
            ("s3://allowed/a\u{0}b", "control character"),
            ("s3://allowed/a\u{7f}b", "control character"),
        ] {
            let e = S3Uri::parse(uri).expect_err(uri);
            assert!(e.contains(why), "{uri}: {e}");
        }
        // Dots inside a segment are ordinary characters.
        for ok in [
            "s3://allowed/a..b/x",
            "s3://allowed/.hidden",
            "s3://allowed/x/...",
            "s3://allowed/a.b",
        ] {
            assert!(S3Uri::parse(ok).is_ok(), "{ok}");
        }
        // The whole job is refused, naming the field.
        let e = err(br#"{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/../other/x","back_image":"s3://imgs/a//b"}"#);
        assert!(
            e.message.contains("image has a \"..\" path segment"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("back_image has an empty path segment"),
            "{}",
            e.message
        );
    }

    #[test]
    fn dot_job_ids_are_refused() {
        for id in [".", ".."] {
            let e = JobId::parse(id).unwrap_err();
            assert!(e.contains("must not be"), "{e}");
            let body = format!(
                r#"{{"schema":"liveness.job.v1","job_id":"{id}","check":"face","image":"s3://imgs/x"}}"#
            );
            assert!(err(body.as_bytes()).message.contains("job_id must not be"));
        }
        for ok in ["...", ".a", "a.", "a..b", "-", ":"] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
        let schema = serde_json::to_value(schemars::schema_for!(JobMessage)).unwrap();
        assert_eq!(
            schema["properties"]["job_id"]["not"]["enum"],
            serde_json::json!([".", ".."])
        );
    }

    #[test]
    fn an_invalid_job_id_is_escaped_and_cut_for_logs() {
        let hostile = format!("x\n{{\"level\":\"ERROR\"}}\u{1b}[31m{}", "y".repeat(10_000));
        let body = serde_json::json!({"schema": "liveness.job.v1", "job_id": hostile, "check": "face", "image": "s3://imgs/x"});
        let e = err(body.to_string().as_bytes());
        let hint = e.job_id_hint().unwrap();
        assert!(
            hint.starts_with(r#"x\n{\"level\":\"ERROR\"}\u{1b}[31myyy"#),
            "{hint}"
        );
        assert!(!hint.chars().any(char::is_control), "{hint}");
        assert!(hint.chars().count() <= JobId::MAX_LEN + 1, "{}", hint.len());
        assert!(hint.ends_with('…'));
    }

    #[test]
    fn an_oversized_body_is_refused_for_its_size_before_any_parsing() {
        // Invalid JSON and invalid UTF-8 past the limit: the size is what
        // the dead letter says, so nothing was parsed.
        let mut body = br#"{"schema":"liveness.job.v1","job_id":"big-1","#.to_vec();
        body.extend(std::iter::repeat_n(b'\xff', 70_000));
        let e = parse_job(&body, 65536).unwrap_err();
        assert!(
            e.message
                .contains("over the 65536-byte limit; it was not parsed"),
            "{}",
            e.message
        );
        assert!(e.job_id.is_none() && e.job.is_none() && e.check.is_none());
        // One byte over a valid job is refused the same way.
        let valid =
            r#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x"}"#;
        let e = parse_job(valid.as_bytes(), valid.len() - 1).unwrap_err();
        assert!(e.message.contains("over the"), "{}", e.message);
        assert!(parse_job(valid.as_bytes(), valid.len()).is_ok());
    }

    #[test]
    fn s3_uris() {
        assert!(S3Uri::parse("s3://Bad_Bucket/k").is_err());
        assert!(S3Uri::parse("s3://ok-bucket/").is_err());
        assert!(S3Uri::parse("s3://ok-bucket").is_err());
        assert_eq!(
            S3Uri::parse("s3://ok.bucket/a b/c%20").unwrap().key,
            "a b/c%20"
        );
    }
}
