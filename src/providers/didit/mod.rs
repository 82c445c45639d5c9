//! Didit passive liveness (`POST {base}/v3/passive-liveness/`): one
//! multipart upload, one synchronous report, face checks only.

pub mod normalize;
pub mod wire;

use crate::config::DiditConfig;
use crate::domain::ProviderName;
use crate::domain::assessment::Assessment;
use crate::providers::{Image, Provider, VendorError, VendorHttp, VendorRequest, retry_after};
use async_trait::async_trait;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;
use wire::Report;

pub struct Didit {
    http: VendorHttp,
    url: String,
    api_key: reqwest::header::HeaderValue,
    timeout: Duration,
    save_api_request: bool,
    decline_threshold: Option<f64>,
    rotate_image: bool,
    vendor_data_key: String,
}

impl Didit {
    pub fn new(http: VendorHttp, cfg: &DiditConfig) -> anyhow::Result<Self> {
        let mut api_key =
            reqwest::header::HeaderValue::from_str(cfg.api_key.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "providers.didit.api_key contains characters not allowed in an HTTP header"
                )
            })?;
        api_key.set_sensitive(true);
        Ok(Didit {
            http,
            url: format!(
                "{}{}",
                cfg.base_url.as_str().trim_end_matches('/'),
                wire::PATH
            ),
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

    fn max_image_bytes(&self) -> Option<u64> {
        Some(wire::MAX_IMAGE_BYTES)
    }

    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError> {
        let request = self
            .http
            .client()
            .post(&self.url)
            .timeout(self.timeout)
            .header("x-api-key", self.api_key.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .multipart(self.form(req.image, req.metadata));
        let a = self.http.send(ProviderName::Didit, request).await?;
        let (status, retry_after, body) = (a.status, retry_after(&a.headers), a.body);
        if status != 200 {
            return Err(normalize::error_response(status, &body, retry_after));
        }
        let report: Report = serde_json::from_slice(&body).map_err(|e| {
            // Position and category only: serde's own text can quote values
            // from a body that carries biometric data.
            VendorError::outage(format!(
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

    use crate::config::{Config, Secret};
    use crate::domain::Verdict;
    use crate::domain::dead_letter::FailureClass;
    use crate::emulator::{Emulator, EmulatorConfig};
    use crate::providers::ErrorKind;
    use futures_util::StreamExt as _;

    fn image(bytes: Vec<u8>) -> Image {
        Image {
            uri: "s3://b/applicants/42/selfie.png".into(),
            content_type: crate::domain::image::sniff_content_type(&bytes).unwrap(),
            sha256: crate::domain::image::sha256_hex(&bytes),
            bytes: bytes.into(),
        }
    }

    fn adapter(base_url: &str, key: &str, extra: &str) -> Didit {
        crate::install_crypto_provider();
        let mut cfg = Config::from_toml(extra).unwrap().providers.didit;
        cfg.base_url = base_url.parse().unwrap();
        cfg.api_key = Secret::new(key);
        Didit::new(crate::providers::VendorHttp::for_tests(), &cfg).unwrap()
    }

    async fn verify(
        d: &Didit,
        img: &Image,
        metadata: Option<&RawValue>,
    ) -> Result<Assessment, VendorError> {
        d.verify(&VendorRequest {
            job_id: &crate::domain::job::JobId::parse("j").unwrap(),
            check: crate::domain::Check::Face,
            signals: &[crate::domain::SignalName::FaceLiveness],
            image: img,
            back_image: None,
            metadata,
        })
        .await
    }

    #[tokio::test]
    async fn the_form_carries_the_image_with_its_type_and_the_options() {
        let d = adapter(
            "http://127.0.0.1:9",
            "k",
            "[providers.didit]\nface_liveness_score_decline_threshold = 42.5\nrotate_image = true",
        );
        let img = image(crate::samples::png(1, 1000, None));
        let meta = raw(r#"{"vendor_data":"applicant-7"}"#);
        let mut stream = Box::pin(d.form(&img, Some(&meta)).into_stream());
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8_lossy(&body);
        let head = "Content-Disposition: form-data; name=\"user_image\"; filename=\"user_image.png\"\r\nContent-Type: image/png\r\n\r\n";
        let at = text.find(head).expect("image part header");
        let start = at + head.len();
        assert_eq!(
            &body[start..start + img.bytes.len()],
            &img.bytes[..],
            "the image, unchanged"
        );
        for field in [
            "name=\"save_api_request\"\r\n\r\nfalse\r\n",
            "name=\"face_liveness_score_decline_threshold\"\r\n\r\n42.5\r\n",
            "name=\"rotate_image\"\r\n\r\ntrue\r\n",
            "name=\"vendor_data\"\r\n\r\napplicant-7\r\n",
        ] {
            assert!(text.contains(field), "{field:?} missing");
        }
        assert!(!text.contains("applicants/42"), "the S3 key is not sent");
        // Defaults: no threshold, no rotation, no vendor_data without metadata.
        let d = adapter("http://127.0.0.1:9", "k", "");
        let mut stream = Box::pin(d.form(&img, None).into_stream());
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("name=\"save_api_request\"\r\n\r\nfalse"));
        for absent in [
            "face_liveness_score_decline_threshold",
            "rotate_image",
            "vendor_data",
        ] {
            assert!(!text.contains(absent), "{absent} sent");
        }
    }

    #[tokio::test]
    async fn against_the_emulator() {
        let emu = Emulator::start(EmulatorConfig::local("dk-1"))
            .await
            .unwrap();
        let d = adapter(&emu.base_url(), "dk-1", "");
        let png = |seed, s: &str| image(crate::samples::png(seed, 2000, Some(s)));

        let a = verify(&d, &png(1, r#"{"face":95}"#), None).await.unwrap();
        assert_eq!(a.verdict(), Verdict::Live);
        assert_eq!(a.score(), Some(0.95));
        assert!(a.vendor.request_id.is_some());

        // The configured threshold is sent and applied by the vendor.
        let strict = adapter(
            &emu.base_url(),
            "dk-1",
            "[providers.didit]\nface_liveness_score_decline_threshold = 50",
        );
        let a = verify(&strict, &png(2, r#"{"face":45}"#), None)
            .await
            .unwrap();
        assert_eq!(a.verdict(), Verdict::Spoof);
        assert_eq!(
            a.reasons[0],
            "face_liveness scored 45/100, at or below the decline threshold 50 (didit PASSIVE liveness, status Declined)"
        );
        assert_eq!(a.signals[0].threshold, Some(50.into()));
        let a = verify(&d, &png(2, r#"{"face":45}"#), None).await.unwrap();
        assert_eq!(a.verdict(), Verdict::Live, "45 is above didit's default 30");

        let e = verify(&d, &png(3, r#"{"error":400}"#), None)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest)
        );
        assert!(e.message.contains("Upload a valid image"), "{}", e.message);
        let e = verify(&d, &png(4, r#"{"error":429}"#), None)
            .await
            .unwrap_err();
        let wait = Some(Duration::from_secs(1));
        assert_eq!(
            (e.kind, e.http_status),
            (ErrorKind::Transient { retry_after: wait }, Some(429))
        );
        let e = verify(&d, &png(5, r#"{"error":503}"#), None)
            .await
            .unwrap_err();
        assert!(e.is_outage(), "{e}");
        let e = verify(&d, &png(6, r#"{"error":403}"#), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(e.message.contains("out of credit"), "{}", e.message);

        let wrong = adapter(&emu.base_url(), "not-the-key", "");
        let e = verify(&wrong, &png(7, r#"{"face":90}"#), None)
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.http_status), (ErrorKind::Credentials, Some(401)));

        // A JPEG travels with its own type too (the emulator checks it).
        let jpeg = image(crate::samples::jpeg(8, 3000, Some(r#"{"face":77}"#)));
        assert_eq!(verify(&d, &jpeg, None).await.unwrap().score(), Some(0.77));

        // Injected faults: a dropped connection and a held request are
        // transient outages.
        let faults = |body: serde_json::Value| {
            let url = format!("{}/_admin/faults", emu.base_url());
            async move {
                let r = reqwest::Client::new().put(url).json(&body).send().await;
                assert_eq!(r.unwrap().status(), 204);
            }
        };
        faults(serde_json::json!({"vendor": "didit", "drop_rate": 1.0})).await;
        let e = verify(&d, &png(9, r#"{"face":90}"#), None)
            .await
            .unwrap_err();
        assert!(e.is_outage(), "{e}");
        faults(serde_json::json!({"vendor": "didit", "drop_rate": 0.0, "timeout_rate": 1.0})).await;
        let impatient = adapter(
            &emu.base_url(),
            "dk-1",
            "[providers.didit]\ntimeout = \"300ms\"",
        );
        let e = verify(&impatient, &png(10, r#"{"face":90}"#), None)
            .await
            .unwrap_err();
        assert!(e.is_outage(), "{e}");
        assert!(e.message.contains("timed out"), "{}", e.message);
    }
}
