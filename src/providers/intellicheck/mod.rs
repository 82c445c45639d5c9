//! Intellicheck IDN Direct, `document_liveness_idrnd` signal: a multi-call
//! flow of signed, base64-encoded envelopes. One verification attempt is
//! the whole flow: `/start` → `/submit-front` (→ `/submit-back`) → `/end` →
//! `/get-results`, polled with backoff until the liveness object is there.

pub mod normalize;
pub mod wire;

use crate::config::{IntellicheckConfig, ResponseSignatures, Secret};
use crate::domain::ProviderName;
use crate::domain::assessment::Assessment;
use crate::providers::{Provider, VendorError, VendorHttp, VendorRequest, retry_after};
use async_trait::async_trait;
use std::time::{Duration, Instant};
use wire::{
    DOCUMENT_TYPE_OTHER, Empty, HEADER_CUSTOMER_ID, HEADER_SIGNATURE, LivenessObject,
    LooseEnvelope, SIGNAL_DOCUMENT_LIVENESS, StartPrivate, TransactionPrivate,
};

pub struct Intellicheck {
    http: VendorHttp,
    base_url: String,
    customer_id: reqwest::header::HeaderValue,
    signing_key: Secret,
    timeout: Duration,
    poll_initial: Duration,
    poll_max: Duration,
    results_timeout: Duration,
    response_signatures: ResponseSignatures,
}

/// A successful (2xx) answer, decoded.
struct Answer {
    status: u16,
    envelope: LooseEnvelope,
}

impl Intellicheck {
    pub fn new(http: VendorHttp, cfg: &IntellicheckConfig) -> anyhow::Result<Self> {
        let customer_id =
            reqwest::header::HeaderValue::from_str(&cfg.customer_id).map_err(|_| {
                anyhow::anyhow!(
                    "providers.intellicheck.customer_id contains characters not allowed in an HTTP header"
                )
            })?;
        Ok(Intellicheck {
            http,
            base_url: cfg
                .base_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .ok_or_else(|| anyhow::anyhow!("providers.intellicheck.base_url is not set"))?,
            customer_id,
            signing_key: cfg.signing_key.clone(),
            timeout: cfg.timeout,
            poll_initial: cfg.poll_initial_interval,
            poll_max: cfg.poll_max_interval,
            results_timeout: cfg.results_timeout,
            response_signatures: cfg.response_signatures,
        })
    }

    /// One signed POST. Non-2xx answers, unreadable bodies and responses
    /// whose signature does not verify are errors.
    async fn call(&self, path: &str, payload: bytes::Bytes) -> Result<Answer, VendorError> {
        let key = self.signing_key.expose().as_bytes();
        let mut signature = reqwest::header::HeaderValue::from_str(&wire::signature(key, &payload))
            .expect("hex is a valid header value");
        signature.set_sensitive(true);
        let req = self
            .http
            .client()
            .post(format!("{}{path}", self.base_url))
            .timeout(self.timeout)
            .header(HEADER_CUSTOMER_ID, self.customer_id.clone())
            .header(HEADER_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(payload);
        let a = self.http.send(ProviderName::Intellicheck, req).await?;
        let status = a.status;
        let wait = retry_after(&a.headers);
        let signed = a
            .headers
            .get(HEADER_SIGNATURE)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = a.body;
        if !(200..300).contains(&status) {
            return Err(normalize::error_response(path, status, &body, wait));
        }
        let verify = match (self.response_signatures, &signed) {
            (ResponseSignatures::Ignore, _) => false,
            (ResponseSignatures::Require, None) => {
                return Err(VendorError::outage(format!(
                    "intellicheck answered {path} without a signature header, and providers.intellicheck.response_signatures is \"require\""
                )));
            }
            (_, signed) => signed.is_some(),
        };
        if verify && !wire::signature_matches(key, &body, signed.as_deref().unwrap_or("")) {
            // Transient, not a credentials problem: the vendor accepted our
            // signature, so our key is right; a tampered or garbled answer
            // is worth another attempt, and a vendor that signs every answer
            // differently trips the circuit breaker (no HTTP status: counted
            // as an outage) instead of burning every job's budget.
            return Err(VendorError::outage(format!(
                "intellicheck's answer to {path} failed signature verification (HMAC-SHA256 with our signing key); \
                 it was discarded. If every answer fails, the vendor signs differently: set providers.intellicheck.response_signatures = \"ignore\" after checking with them"
            )));
        }
        let envelope = wire::decode(&body).map_err(|e| {
            VendorError::outage(format!(
                "intellicheck answered {path} with HTTP {status} and a body we cannot read: {e}"
            ))
        })?;
        Ok(Answer { status, envelope })
    }

    /// A step whose answer may only say `success: false`. A 429 on a step
    /// that carries no image (start, end, get-results) is waited out and the
    /// step repeated within the transaction, as the vendor asks: restarting
    /// the whole flow would make it longer than a tight rate limit allows.
    /// A 429 on an image submission fails the attempt (a submission counts).
    async fn step(&self, path: &str, payload: Vec<u8>, txn: &str) -> Result<Answer, VendorError> {
        let payload = bytes::Bytes::from(payload);
        let carries_image = path == wire::PATH_SUBMIT_FRONT || path == wire::PATH_SUBMIT_BACK;
        let mut waited = Duration::ZERO;
        let a = loop {
            match self.call(path, payload.clone()).await {
                Err(e) if e.http_status == Some(429) && !carries_image => {
                    let wait = e.retry_after().unwrap_or(Duration::from_secs(1));
                    if waited + wait > self.results_timeout {
                        return Err(e);
                    }
                    tracing::debug!(
                        path,
                        transaction_id = txn,
                        wait_ms = wait.as_millis() as u64,
                        "Intellicheck rate limit; repeating the step"
                    );
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                other => break other?,
            }
        };
        if let Some(message) = a.envelope.failed() {
            let message =
                crate::domain::text::clean(&message, crate::domain::text::VENDOR_TEXT_CHARS);
            return Err(VendorError::outage(format!(
                "intellicheck answered success false at {path} for transaction {txn}: {message}; it will be retried"
            ))
            .with_code("success=false"));
        }
        Ok(a)
    }

    /// Polls `/get-results` until the liveness object is there, with
    /// exponential backoff from `poll_initial` to `poll_max`, for at most
    /// `results_timeout` (the pipeline's job deadline bounds it too).
    async fn poll_results(&self, txn: &str) -> Result<LivenessObject, VendorError> {
        let started = Instant::now();
        let mut delay = self.poll_initial;
        let mut polls = 0u32;
        loop {
            let body = wire::encode(
                &Empty {},
                &TransactionPrivate {
                    transaction_id: txn.to_owned(),
                },
            );
            let a = self.step(wire::PATH_GET_RESULTS, body, txn).await?;
            polls += 1;
            // 202 is read as "not ready" too, whatever the body says.
            if a.status != 202
                && let Some((key, v)) = a.envelope.liveness()
            {
                return serde_json::from_value(v.clone()).map_err(|e| {
                    VendorError::outage(format!(
                        "intellicheck's {key} object for transaction {txn} is unreadable: {e}"
                    ))
                });
            }
            let waited = started.elapsed();
            if waited + delay > self.results_timeout {
                return Err(VendorError::outage(format!(
                    "intellicheck results for transaction {txn} were not ready after {polls} polls over {:.1}s (providers.intellicheck.results_timeout {:?})",
                    waited.as_secs_f64(),
                    self.results_timeout
                )));
            }
            tracing::debug!(
                transaction_id = txn,
                polls,
                delay_ms = delay.as_millis() as u64,
                "Intellicheck results not ready, polling again"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.poll_max);
        }
    }
}

#[async_trait]
impl Provider for Intellicheck {
    fn name(&self) -> ProviderName {
        ProviderName::Intellicheck
    }

    fn uses_back_image(&self) -> bool {
        true
    }

    /// Each image goes out base64-encoded inside a JSON envelope that is
    /// base64-encoded again: (4/3)^2 = 16/9 of the image, built whole
    /// before it is sent.
    fn encoded_copy_bytes(&self, image_bytes: u64) -> u64 {
        image_bytes.saturating_mul(16).div_ceil(9) + 1024
    }

    /// Document liveness only; the selfie signal is a face match, not liveness.
    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError> {
        let start = wire::encode(
            &Empty {},
            &StartPrivate {
                document_type: DOCUMENT_TYPE_OTHER.into(),
                signals: vec![SIGNAL_DOCUMENT_LIVENESS.into()],
            },
        );
        let a = self.step(wire::PATH_START, start, "(none yet)").await?;
        let txn = match a.envelope.field("transaction_id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(VendorError::outage(
                    "intellicheck answered /start without a transaction_id",
                ));
            }
        };
        normalize::check_confirmed_signals(a.envelope.field("signals"))?;
        let front = wire::encode_image_submission(&txn, "front", &req.image.bytes);
        self.step(wire::PATH_SUBMIT_FRONT, front, &txn).await?;
        if let Some(back) = req.back_image {
            let back = wire::encode_image_submission(&txn, "back", &back.bytes);
            self.step(wire::PATH_SUBMIT_BACK, back, &txn).await?;
        }
        let end = wire::encode(
            &Empty {},
            &TransactionPrivate {
                transaction_id: txn.clone(),
            },
        );
        self.step(wire::PATH_END, end, &txn).await?;
        let obj = self.poll_results(&txn).await?;
        normalize::liveness(&obj, req.signals, req.back_image.is_some(), &txn)
    }
}
