//! Argos ID Liveness (`POST {base}/document`) and Face Liveness
//! (`POST {base}/liveness`): one host, one key, two error shapes.

pub mod normalize;
pub mod wire;

use crate::config::ArgosConfig;
use crate::domain::assessment::{Assessment, VendorRefs};
use crate::domain::{Check, ProviderName, SignalName};
use crate::providers::{Provider, Submission, VendorError, VendorRequest, retry_after};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use normalize::Bands;
use std::time::Duration;
use wire::{Accepted, DocumentRequestTail, DocumentResponse, FaceResponse, Pipelines};

pub struct Argos {
    http: reqwest::Client,
    document_url: String,
    face_url: String,
    api_key: reqwest::header::HeaderValue,
    timeout: Duration,
    use_upcoming_version: bool,
    document_bands: Bands,
    face_bands: Bands,
}

impl Argos {
    pub fn new(http: reqwest::Client, cfg: &ArgosConfig) -> anyhow::Result<Self> {
        let mut api_key =
            reqwest::header::HeaderValue::from_str(cfg.api_key.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "providers.argos.api_key contains characters not allowed in an HTTP header"
                )
            })?;
        api_key.set_sensitive(true);
        let base = cfg.base_url.trim_end_matches('/');
        Ok(Argos {
            http,
            document_url: format!("{base}/document"),
            face_url: format!("{base}/liveness"),
            api_key,
            timeout: cfg.timeout,
            use_upcoming_version: cfg.use_upcoming_version,
            document_bands: cfg.document_bands,
            face_bands: cfg.face_bands,
        })
    }

    fn document_body(
        &self,
        image: &[u8],
        signals: &[SignalName],
        callback_url: Option<&str>,
    ) -> Vec<u8> {
        let tail = serde_json::to_vec(&DocumentRequestTail {
            pipelines: Pipelines {
                sr: signals.contains(&SignalName::ScreenReplay),
                pc: signals.contains(&SignalName::PrintedCopy),
                ps: signals.contains(&SignalName::PortraitSubstitution),
            },
            use_upcoming_version: self.use_upcoming_version,
            callback_url,
        })
        .expect("plain struct serializes");
        json_with_base64_field("idImage", image, &tail[1..])
    }

    /// One POST; the status, `Retry-After` and body of whatever came back.
    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Option<Duration>, Bytes), VendorError> {
        let resp = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header("x-api-key", self.api_key.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| VendorError::from_transport(ProviderName::Argos, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| VendorError::from_transport(ProviderName::Argos, &e))?;
        Ok((status, retry_after, bytes))
    }
}

/// `{"<field>":"<base64 of image>",<rest>`, where `rest` is what follows the
/// opening brace of another JSON object (`}` alone for nothing). The base64
/// is written straight into the body buffer: the only copy of the image on
/// its way to the vendor.
fn json_with_base64_field(field: &str, image: &[u8], rest: &[u8]) -> Vec<u8> {
    let b64_len = base64::encoded_len(image.len(), true).expect("image size fits in memory");
    let mut body = Vec::with_capacity(field.len() + b64_len + rest.len() + 8);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(field.as_bytes());
    body.extend_from_slice(b"\":\"");
    let start = body.len();
    body.resize(start + b64_len, 0);
    base64::engine::general_purpose::STANDARD
        .encode_slice(image, &mut body[start..])
        .expect("buffer sized by encoded_len");
    body.push(b'"');
    if rest != b"}" {
        body.push(b',');
    }
    body.extend_from_slice(rest);
    body
}

#[async_trait]
impl Provider for Argos {
    fn name(&self) -> ProviderName {
        ProviderName::Argos
    }

    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError> {
        match req.check {
            Check::Document => {
                let body = self.document_body(&req.image.bytes, req.signals, None);
                let (status, retry_after, bytes) = self.post(&self.document_url, body).await?;
                match status {
                    200 => {
                        let parsed: DocumentResponse =
                            serde_json::from_slice(&bytes).map_err(|e| {
                                VendorError::transient(format!(
                                    "argos answered 200 with a body we cannot read: {e}"
                                ))
                            })?;
                        normalize::document(&parsed, req.signals, &self.document_bands)
                    }
                    201 => Err(VendorError::transient(
                        "argos answered 201 (asynchronous) to a synchronous request",
                    )),
                    _ => normalize::error_response(status, &bytes, retry_after, req.signals),
                }
            }
            Check::Face => {
                let body = json_with_base64_field("faceImage", &req.image.bytes, b"}");
                let (status, retry_after, bytes) = self.post(&self.face_url, body).await?;
                match status {
                    200 => {
                        let parsed: FaceResponse = serde_json::from_slice(&bytes).map_err(|e| {
                            VendorError::transient(format!(
                                "argos answered 200 with a body we cannot read: {e}"
                            ))
                        })?;
                        normalize::face(&parsed, &self.face_bands)
                    }
                    _ => normalize::error_response(status, &bytes, retry_after, req.signals),
                }
            }
        }
    }

    fn has_callback_mode(&self, check: Check) -> bool {
        check == Check::Document
    }

    async fn submit_for_callback(
        &self,
        req: &VendorRequest<'_>,
        callback_url: &str,
    ) -> Result<Submission, VendorError> {
        let body = self.document_body(&req.image.bytes, req.signals, Some(callback_url));
        let (status, retry_after, bytes) = self.post(&self.document_url, body).await?;
        match status {
            201 => {
                let accepted: Accepted = serde_json::from_slice(&bytes).map_err(|e| {
                    VendorError::transient(format!(
                        "argos answered 201 with a body we cannot read: {e}"
                    ))
                })?;
                Ok(Submission::Accepted(VendorRefs {
                    transaction_id: Some(accepted.transaction_id),
                    request_id: None,
                    engine_version: accepted.engine_version,
                }))
            }
            200 => {
                let parsed: DocumentResponse = serde_json::from_slice(&bytes).map_err(|e| {
                    VendorError::transient(format!(
                        "argos answered 200 with a body we cannot read: {e}"
                    ))
                })?;
                normalize::document(&parsed, req.signals, &self.document_bands)
                    .map(Submission::Answered)
            }
            _ => normalize::error_response(status, &bytes, retry_after, req.signals)
                .map(Submission::Answered),
        }
    }

    fn read_callback(
        &self,
        body: &[u8],
        requested: &[SignalName],
    ) -> Result<Assessment, VendorError> {
        // Success and error callbacks are both flat; only a success has `result`.
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            VendorError::transient(format!("argos posted a callback that is not JSON: {e}"))
        })?;
        if v.get("result").is_some() {
            let parsed: DocumentResponse = serde_json::from_value(v).map_err(|e| {
                VendorError::transient(format!(
                    "argos posted a success callback we cannot read: {e}"
                ))
            })?;
            return normalize::document(&parsed, requested, &self.document_bands);
        }
        let status = v
            .get("statusCode")
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(400);
        normalize::error_response(status, body, None, requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_body_is_valid_json() {
        let body = json_with_base64_field(
            "idImage",
            b"\x00\x01hello",
            br#""pipelines":{"sr":true},"x":1}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["idImage"], "AAFoZWxsbw==");
        assert_eq!(v["pipelines"]["sr"], true);
        let face = json_with_base64_field("faceImage", b"abc", b"}");
        assert_eq!(face, br#"{"faceImage":"YWJj"}"#);
    }
}
