//! Argos ID Liveness (`POST {base}/document`) and Face Liveness
//! (`POST {base}/liveness`): one host, one key, two error shapes.

mod body;
pub mod normalize;
pub mod wire;

use crate::config::ArgosConfig;
use crate::domain::assessment::{Assessment, VendorRefs};
use crate::domain::bands::Bands;
use crate::domain::{Check, ProviderName, SignalName};
use crate::providers::{Provider, Submission, VendorError, VendorHttp, VendorRequest, retry_after};
use async_trait::async_trait;
use body::Base64JsonBody;
use bytes::Bytes;
use std::time::Duration;
use wire::{Accepted, DocumentRequestTail, DocumentResponse, FaceResponse, Pipelines};

pub struct Argos {
    http: VendorHttp,
    document_url: String,
    face_url: String,
    api_key: reqwest::header::HeaderValue,
    timeout: Duration,
    use_upcoming_version: bool,
    document_bands: Bands,
    face_bands: Bands,
}

impl Argos {
    pub fn new(http: VendorHttp, cfg: &ArgosConfig) -> anyhow::Result<Self> {
        let mut api_key =
            reqwest::header::HeaderValue::from_str(cfg.api_key.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "providers.argos.api_key contains characters not allowed in an HTTP header"
                )
            })?;
        api_key.set_sensitive(true);
        let base = cfg.base_url.as_str().trim_end_matches('/');
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
        image: &Bytes,
        signals: &[SignalName],
        callback_url: Option<&str>,
    ) -> Base64JsonBody {
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
        Base64JsonBody::new("idImage", image.clone(), &tail[1..])
    }

    /// One POST; the status, `Retry-After` and body of whatever came back.
    async fn post(
        &self,
        url: &str,
        body: Base64JsonBody,
    ) -> Result<(u16, Option<Duration>, Bytes), VendorError> {
        let req = self
            .http
            .client()
            .post(url)
            .timeout(self.timeout)
            .header("x-api-key", self.api_key.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap(body));
        let a = self.http.send(ProviderName::Argos, req).await?;
        Ok((a.status, retry_after(&a.headers), a.body))
    }
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
                                VendorError::outage(format!(
                                    "argos answered 200 with a body we cannot read: {e}"
                                ))
                            })?;
                        normalize::document(&parsed, req.signals, &self.document_bands)
                    }
                    201 => Err(VendorError::outage(
                        "argos answered 201 (asynchronous) to a synchronous request",
                    )),
                    _ => normalize::error_response(status, &bytes, retry_after, req.signals),
                }
            }
            Check::Face => {
                let body = Base64JsonBody::new("faceImage", req.image.bytes.clone(), b"}");
                let (status, retry_after, bytes) = self.post(&self.face_url, body).await?;
                match status {
                    200 => {
                        let parsed: FaceResponse = serde_json::from_slice(&bytes).map_err(|e| {
                            VendorError::outage(format!(
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
                    VendorError::outage(format!(
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
                    VendorError::outage(format!(
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
            VendorError::outage(format!("argos posted a callback that is not JSON: {e}"))
        })?;
        if v.get("result").is_some() {
            let parsed: DocumentResponse = serde_json::from_value(v).map_err(|e| {
                VendorError::outage(format!(
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
    use crate::providers::Image;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Vendors are not known to accept chunked uploads: the streamed body
    /// must still go out with its exact Content-Length.
    #[tokio::test]
    async fn the_streamed_body_goes_out_with_its_content_length() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let head_end = loop {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside the body");
                body.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            (head, body)
        });
        let mut cfg = crate::config::Config::from_toml("")
            .unwrap()
            .providers
            .argos;
        cfg.base_url = format!("http://{addr}/modules").parse().unwrap();
        cfg.api_key = crate::config::Secret::new("k");
        let argos = Argos::new(crate::providers::VendorHttp::for_tests(), &cfg).unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let image = Image {
            uri: "s3://b/k.png".into(),
            bytes: Bytes::from(bytes.clone()),
            content_type: "image/png",
            sha256: String::new(),
        };
        let job_id = crate::domain::job::JobId::parse("j").unwrap();
        let req = VendorRequest {
            job_id: &job_id,
            check: Check::Face,
            signals: &[],
            image: &image,
            back_image: None,
            metadata: None,
        };
        let _ = argos.verify(&req).await;
        let (head, body) = server.await.unwrap();
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        use base64::Engine as _;
        assert_eq!(
            v["faceImage"],
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
    }

    /// The client follows no redirect: the key stays with the configured
    /// host, and the 3xx is an outage naming where it pointed.
    #[tokio::test]
    async fn a_redirect_is_an_outage_and_the_key_stays_home() {
        crate::install_crypto_provider();
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 302 Found\r\nlocation: https://{target}/x\r\ncontent-length: 0\r\n\r\n"
            );
            let _ = s.write_all(answer.as_bytes()).await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let mut cfg = crate::config::Config::from_toml("")
            .unwrap()
            .providers
            .argos;
        cfg.base_url = format!("http://{addr}/modules").parse().unwrap();
        cfg.api_key = crate::config::Secret::new("sk-must-not-travel");
        let argos = Argos::new(VendorHttp::for_tests(), &cfg).unwrap();
        let image = Image {
            uri: "s3://b/k.png".into(),
            bytes: Bytes::from_static(b"\x89PNG\r\n\x1a\n"),
            content_type: "image/png",
            sha256: String::new(),
        };
        let job_id = crate::domain::job::JobId::parse("j").unwrap();
        let req = VendorRequest {
            job_id: &job_id,
            check: Check::Face,
            signals: &[],
            image: &image,
            back_image: None,
            metadata: None,
        };
        let e = argos.verify(&req).await.unwrap_err();
        assert!(e.is_outage(), "{e}");
        assert!(
            e.message.contains(&format!(
                "argos answered HTTP 302, a redirect to https://{target}"
            )),
            "{}",
            e.message
        );
        let hit =
            tokio::time::timeout(std::time::Duration::from_millis(500), elsewhere.accept()).await;
        assert!(hit.is_err(), "the redirect target was contacted");
    }
}
