//! Didit passive liveness (`POST {base}/v3/passive-liveness/`): one
//! multipart upload, one synchronous report, face checks only.

pub mod normalize;
pub mod wire;

use crate::config::DiditConfig;
use crate::domain::assessment::Assessment;
use crate::domain::{Check, ProviderName};
use crate::providers::{Image, Provider, VendorError, VendorRequest, retry_after};
use async_trait::async_trait;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;
use wire::Report;

pub struct Didit {
    http: reqwest::Client,
    url: String,
    api_key: reqwest::header::HeaderValue,
    timeout: Duration,
    save_api_request: bool,
    decline_threshold: Option<f64>,
    rotate_image: bool,
    vendor_data_key: String,
}

impl Didit {
    pub fn new(http: reqwest::Client, cfg: &DiditConfig) -> anyhow::Result<Self> {
        let mut api_key =
            reqwest::header::HeaderValue::from_str(cfg.api_key.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "providers.didit.api_key contains characters not allowed in an HTTP header"
                )
            })?;
        api_key.set_sensitive(true);
        Ok(Didit {
            http,
            url: format!("{}{}", cfg.base_url.trim_end_matches('/'), wire::PATH),
            api_key,
            timeout: cfg.timeout,
            save_api_request: cfg.save_api_request,
            decline_threshold: cfg.face_liveness_score_decline_threshold,
            rotate_image: cfg.rotate_image,
            vendor_data_key: cfg.vendor_data_metadata_key.clone(),
        })
    }

    /// The multipart body. The image part streams the fetched `Bytes`
    /// (a reference count, not a copy) with its length known, so the form
    /// still goes out with a Content-Length rather than chunked.
    fn form(&self, image: &Image, metadata: Option<&RawValue>) -> Form {
        let part = Part::stream_with_length(
            reqwest::Body::from(image.bytes.clone()),
            image.bytes.len() as u64,
        )
        .file_name(file_name(image.content_type))
        .mime_str(image.content_type)
        .expect("sniffed content types are valid MIME types");
        let mut form = Form::new().part(wire::FIELD_IMAGE, part).text(
            wire::FIELD_SAVE,
            if self.save_api_request {
                "true"
            } else {
                "false"
            },
        );
        if let Some(t) = self.decline_threshold {
            form = form.text(wire::FIELD_THRESHOLD, t.to_string());
        }
        if self.rotate_image {
            form = form.text(wire::FIELD_ROTATE, "true");
        }
        if let Some(v) = vendor_data(metadata, &self.vendor_data_key) {
            form = form.text(wire::FIELD_VENDOR_DATA, v);
        }
        form
    }
}

/// A neutral file name: the S3 key may name the applicant, and Didit needs
/// only the extension.
fn file_name(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "user_image.png",
        "image/webp" => "user_image.webp",
        _ => "user_image.jpg",
    }
}

/// `vendor_data` for Didit: the producer's `metadata.<key>` when it is a
/// non-empty string (or a number, sent as its text). Anything else is not
/// sent: Didit documents it as a user id string.
pub fn vendor_data(metadata: Option<&RawValue>, key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, Value> = serde_json::from_str(metadata?.get()).ok()?;
    match map.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Provider for Didit {
    fn name(&self) -> ProviderName {
        ProviderName::Didit
    }

    fn supports(&self, check: Check) -> bool {
        check == Check::Face
    }

    fn max_image_bytes(&self) -> Option<u64> {
        Some(wire::MAX_IMAGE_BYTES)
    }

    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError> {
        let resp = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("x-api-key", self.api_key.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .multipart(self.form(req.image, req.metadata))
            .send()
            .await
            .map_err(|e| VendorError::from_transport(ProviderName::Didit, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp
            .bytes()
            .await
            .map_err(|e| VendorError::from_transport(ProviderName::Didit, &e))?;
        if status != 200 {
            return Err(normalize::error_response(status, &body, retry_after));
        }
        let report: Report = serde_json::from_slice(&body).map_err(|e| {
            // Position and category only: serde's own text can quote values
            // from a body that carries biometric data.
            VendorError::transient(format!(
                "didit answered 200 with a report we cannot read ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        normalize::report(&report, self.decline_threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn vendor_data_comes_from_the_configured_metadata_key() {
        let m = raw(r#"{"vendor_data":"applicant-7","other":1}"#);
        assert_eq!(
            vendor_data(Some(&m), "vendor_data").as_deref(),
            Some("applicant-7")
        );
        assert_eq!(vendor_data(Some(&m), "other").as_deref(), Some("1"));
        assert_eq!(vendor_data(Some(&m), ""), None);
        assert_eq!(vendor_data(Some(&m), "missing"), None);
        assert_eq!(vendor_data(None, "vendor_data"), None);
        for bad in [
            r#"{"vendor_data":""}"#,
            r#"{"vendor_data":null}"#,
            r#"{"vendor_data":{"id":1}}"#,
            r#"{"vendor_data":["a"]}"#,
            r#"{"vendor_data":true}"#,
        ] {
            assert_eq!(vendor_data(Some(&raw(bad)), "vendor_data"), None, "{bad}");
        }
    }

    #[test]
    fn file_names_follow_the_content_type() {
        assert_eq!(file_name("image/png"), "user_image.png");
        assert_eq!(file_name("image/webp"), "user_image.webp");
        assert_eq!(file_name("image/jpeg"), "user_image.jpg");
    }
}
