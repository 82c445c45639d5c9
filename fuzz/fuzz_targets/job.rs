//! Job bodies: `parse_job` never panics; a parsed job re-validates
//! (serialized again, as a Rust producer's `JobMessage` too, it parses to the
//! same job); a refused body carries what a dead letter needs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::job::{
    JOB_SCHEMA, Job, JobId, JobMessage, RAW_BODY_ECHO_BYTES, S3Uri, minify_json, parse_job,
};
use liveness_worker::domain::{Check, ProviderName, SignalName};
use serde::Serialize;
use serde_json::value::RawValue;

const MAX_BODY: usize = 2048;

#[derive(Serialize)]
struct Body<'a> {
    schema: &'a str,
    job_id: &'a str,
    check: Check,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    back_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<ProviderName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signals: Option<&'a [SignalName]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
}

fn same(a: &Job, b: &Job) {
    assert_eq!(a.job_id, b.job_id);
    assert_eq!(a.check, b.check);
    assert_eq!(a.image, b.image);
    assert_eq!(a.back_image, b.back_image);
    assert_eq!(a.provider, b.provider);
    assert_eq!(a.signals, b.signals);
    assert_eq!(
        a.metadata.as_ref().map(|m| m.get()),
        b.metadata.as_ref().map(|m| m.get())
    );
}

fn reparse(body: &[u8]) -> Job {
    match parse_job(body, usize::MAX) {
        Ok(p) => p.job,
        Err(e) => panic!(
            "re-serialized job refused: {}\n{}",
            e.message,
            String::from_utf8_lossy(body)
        ),
    }
}

/// What `RawValue` keeps of a body: the text without surrounding JSON whitespace.
fn trimmed(data: &[u8]) -> &[u8] {
    data.trim_ascii_start().trim_ascii_end()
}

fuzz_target!(|data: &[u8]| {
    match parse_job(data, MAX_BODY) {
        Ok(parsed) => {
            let job = &parsed.job;
            assert_eq!(
                parsed.raw.get().as_bytes(),
                trimmed(data),
                "the body is kept verbatim"
            );
            assert_eq!(JobId::parse(job.job_id.as_str()).as_ref(), Ok(&job.job_id));
            for uri in std::iter::once(&job.image).chain(&job.back_image) {
                assert_eq!(S3Uri::parse(&uri.to_string()).as_ref(), Ok(uri));
            }
            assert!(!job.signals.is_empty() && job.signals.is_sorted());
            match job.check {
                Check::Face => assert_eq!(job.signals, [SignalName::FaceLiveness]),
                Check::Document => assert!(job.signals.iter().all(|s| s.is_document())),
            }
            if let Some(m) = &job.metadata {
                assert_eq!(minify_json(m.get()), m.get(), "metadata is compact");
                assert!(m.get().len() <= liveness_worker::domain::job::MAX_METADATA_BYTES);
            }
            let signals = (job.check == Check::Document).then_some(job.signals.as_slice());
            let body = serde_json::to_vec(&Body {
                schema: JOB_SCHEMA,
                job_id: job.job_id.as_str(),
                check: job.check,
                image: job.image.to_string(),
                back_image: job.back_image.as_ref().map(S3Uri::to_string),
                provider: job.provider,
                signals,
                metadata: job.metadata.as_deref(),
            })
            .expect("a job serializes");
            let again = reparse(&body);
            same(job, &again);
            // The producer type agrees with the validator.
            let message: JobMessage =
                serde_json::from_slice(&body).expect("a valid job is a JobMessage");
            let third = reparse(&serde_json::to_vec(&message).expect("JobMessage serializes"));
            assert_eq!(third.job_id, job.job_id);
            assert_eq!(third.image, job.image);
            assert_eq!(third.signals, job.signals);
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(e.job.is_none() || e.raw_body.is_none(), "one echo, not two");
            if let Some(raw) = &e.raw_body {
                assert!(raw.len() <= RAW_BODY_ECHO_BYTES && data.starts_with(raw));
            }
            if let Some(j) = &e.job {
                assert_eq!(j.get().as_bytes(), trimmed(data));
            }
            // The hint is the job_id escaped for a log line and cut: no
            // control character, at most MAX_LEN characters and an ellipsis,
            // a prefix of the escaped job_id.
            if let Some(hint) = e.job_id_hint() {
                assert!(hint.chars().count() <= JobId::MAX_LEN + 1);
                assert!(!hint.chars().any(char::is_control), "{hint:?}");
                let escaped: String = e
                    .job_id
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .flat_map(char::escape_debug)
                    .collect();
                assert!(escaped.starts_with(hint.strip_suffix('…').unwrap_or(&hint)));
            }
        }
    }
    // Minifying is idempotent and, on JSON, keeps the value.
    if let Ok(text) = std::str::from_utf8(data) {
        let once = minify_json(text);
        assert_eq!(minify_json(&once), once);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            let w: serde_json::Value = serde_json::from_str(&once).expect("minified JSON is JSON");
            assert_eq!(v, w);
        }
    }
});
