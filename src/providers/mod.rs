//! Vendor adapters. Each vendor folder holds its client, its private wire
//! types (shared with the emulator so the two cannot drift) and a pure
//! normalization; only its [`Provider`] implementation leaves the folder.

pub mod argos;
pub mod didit;
pub mod http;
pub mod intellicheck;

pub use http::VendorHttp;

use crate::domain::assessment::{Assessment, VendorRefs};
use crate::domain::dead_letter::FailureClass;
use crate::domain::{AttemptOutcome, Check, ProviderName, SignalName};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::fmt;
use std::time::Duration;

/// An image fetched and checked by the worker, ready for a vendor.
#[derive(Debug, Clone)]
pub struct Image {
    pub uri: String,
    pub bytes: Bytes,
    pub content_type: &'static str,
    pub sha256: String,
}

/// Everything a vendor call needs; borrowed from the pipeline.
#[derive(Debug)]
pub struct VendorRequest<'a> {
    pub job_id: &'a crate::domain::job::JobId,
    pub check: Check,
    pub signals: &'a [SignalName],
    pub image: &'a Image,
    pub back_image: Option<&'a Image>,
    pub metadata: Option<&'a RawValue>,
}

/// What a failed vendor call means for the job. The pipeline decides from
/// this alone whether to retry, park, pause the vendor or dead-letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth another attempt: throttling (408/429) or the vendor's own
    /// "failed to process" answers. `retry_after` is the vendor's wait.
    Transient { retry_after: Option<Duration> },
    /// The vendor looks down rather than this request failing: no answer
    /// (connection error, timeout), a 5xx, or an answer we cannot read.
    /// Retried like [`ErrorKind::Transient`], and counted by the circuit
    /// breaker.
    Outage { retry_after: Option<Duration> },
    /// Replaying the request unchanged cannot succeed: a dead letter of this
    /// class.
    Permanent(FailureClass),
    /// The vendor refused our credentials: not a property of the job; the
    /// vendor is paused.
    Credentials,
}

impl ErrorKind {
    /// Worth retrying (in process, then on the ladder).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient { .. } | ErrorKind::Outage { .. })
    }

    pub fn retry_after(self) -> Option<Duration> {
        match self {
            ErrorKind::Transient { retry_after } | ErrorKind::Outage { retry_after } => retry_after,
            _ => None,
        }
    }

    /// The attempt's outcome for the audit trail and the metrics.
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            ErrorKind::Transient { .. } | ErrorKind::Outage { .. } => AttemptOutcome::Transient,
            ErrorKind::Permanent(_) => AttemptOutcome::Rejected,
            ErrorKind::Credentials => AttemptOutcome::Credentials,
        }
    }
}

/// A vendor call that produced no assessment.
#[derive(Debug, Clone, thiserror::Error)]
pub struct VendorError {
    pub kind: ErrorKind,
    pub message: String,
    pub vendor_code: Option<String>,
    pub http_status: Option<u16>,
}

impl fmt::Display for VendorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.vendor_code {
            write!(f, " (vendor code {code})")?;
        }
        if let Some(status) = self.http_status {
            write!(f, " (HTTP {status})")?;
        }
        Ok(())
    }
}

impl VendorError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        VendorError {
            kind,
            message: message.into(),
            vendor_code: None,
            http_status: None,
        }
    }

    /// No usable answer: the vendor, or the path to it, is failing.
    pub fn outage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Outage { retry_after: None }, message)
    }

    /// An answer that asks us to come back later.
    pub fn transient(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self::new(ErrorKind::Transient { retry_after }, message)
    }

    /// Our request was wrong in a way no retry fixes.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Permanent(FailureClass::VendorRejectedRequest),
            message,
        )
    }

    pub fn credentials(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Credentials, message)
    }

    /// The error with its texts fit for a dead letter, an audit record or a
    /// log line: whatever the adapter quoted of the vendor, cleaned of
    /// control characters and cut (see [`crate::domain::text::clean`]).
    pub fn sanitized(mut self) -> Self {
        use crate::domain::text::{VENDOR_CODE_CHARS, VENDOR_MESSAGE_CHARS, clean};
        self.message = clean(&self.message, VENDOR_MESSAGE_CHARS);
        self.vendor_code = self
            .vendor_code
            .map(|c| clean(&c, VENDOR_CODE_CHARS))
            .filter(|c| !c.is_empty());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.vendor_code = Some(code.into());
        self
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.kind.retry_after()
    }

    /// Looks like the vendor is down rather than this request failing:
    /// what the circuit breaker counts.
    pub fn is_outage(&self) -> bool {
        matches!(self.kind, ErrorKind::Outage { .. })
    }

    /// Maps a reqwest failure that happened before any response arrived.
    pub fn from_transport(vendor: ProviderName, e: &reqwest::Error) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not be reached"
        } else {
            "failed"
        };
        // The error's own text names the URL, never a header or the body.
        VendorError::outage(format!("{vendor} request {what}: {}", error_chain(e)))
    }

    /// The generic reading of an HTTP status that the vendor's own error
    /// body did not explain.
    pub fn from_status(vendor: ProviderName, status: u16, retry_after: Option<Duration>) -> Self {
        let (kind, what) = match status {
            401 | 403 => (ErrorKind::Credentials, "refused our credentials"),
            408 | 429 => (
                ErrorKind::Transient { retry_after },
                "asked us to slow down or try again",
            ),
            500..=599 => (ErrorKind::Outage { retry_after }, "had a server error"),
            _ => (
                ErrorKind::Permanent(FailureClass::VendorRejectedRequest),
                "rejected the request",
            ),
        };
        VendorError::new(kind, format!("{vendor} {what} (HTTP {status})")).with_status(status)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A vendor adapter.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> ProviderName;
    /// The vendor's own image size limit, when lower than ours.
    fn max_image_bytes(&self) -> Option<u64> {
        None
    }
    /// Whether a job's `back_image` goes to this vendor. When not, the
    /// worker never fetches it.
    fn uses_back_image(&self) -> bool {
        false
    }
    /// Bytes a request holds on top of an image of `image_bytes` (an
    /// encoded copy built in memory), for the image budget. Adapters that
    /// stream the image from the fetched bytes hold none.
    fn encoded_copy_bytes(&self, _image_bytes: u64) -> u64 {
        0
    }
    /// One verification attempt. A vendor that could not analyse the image
    /// answers `Ok` with an inconclusive assessment: that is a result.
    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError>;

    /// Whether [`Provider::submit_for_callback`] works for this check.
    fn has_callback_mode(&self, _check: Check) -> bool {
        false
    }

    /// One submission in asynchronous mode: the vendor will post its answer
    /// to `callback_url`. It may still answer at once (e.g. "could not
    /// analyse"), hence [`Submission::Answered`].
    async fn submit_for_callback(
        &self,
        _req: &VendorRequest<'_>,
        _callback_url: &str,
    ) -> Result<Submission, VendorError> {
        Err(no_async_mode(self.name()))
    }

    /// Reads a callback the vendor posted for a submission of this check.
    fn read_callback(
        &self,
        _body: &[u8],
        _requested: &[SignalName],
    ) -> Result<Assessment, VendorError> {
        Err(no_async_mode(self.name()))
    }
}

/// Asking a vendor without an asynchronous mode for one is a worker bug.
fn no_async_mode(vendor: ProviderName) -> VendorError {
    VendorError::new(
        ErrorKind::Permanent(FailureClass::Internal),
        format!("{vendor} has no asynchronous mode"),
    )
}

/// What an asynchronous submission got back (see
/// [`Provider::submit_for_callback`]).
#[derive(Debug, Clone)]
pub enum Submission {
    /// Accepted: the answer comes by callback.
    Accepted(VendorRefs),
    /// The vendor answered at once after all.
    Answered(Assessment),
}

/// How long the vendor asked us to wait: `Retry-After` in seconds (the
/// HTTP-date form is rare from APIs and is ignored rather than guessed at),
/// else `X-RateLimit-Reset` (Didit: the epoch second the window frees up).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

fn retry_after_at(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    let secs = number("retry-after").or_else(|| {
        let reset = number("x-ratelimit-reset")?;
        // Some APIs send the seconds left instead of an epoch time; no
        // epoch value is that small (1e9 is September 2001).
        if reset < 1e9 {
            return Some(reset);
        }
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some((reset - now).max(0.0))
    })?;
    Some(Duration::from_secs_f64(secs.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_then_rate_limit_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |p: &[(&'static str, &str)]| retry_after_at(&headers(p), now);
        assert_eq!(at(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            at(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        // Retry-After wins over the reset time.
        assert_eq!(
            at(&[("retry-after", "2"), ("x-ratelimit-reset", "1800000050")]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            at(&[("x-ratelimit-reset", "1800000012")]),
            Some(Duration::from_secs(12))
        );
        // A reset already past means "now".
        assert_eq!(
            at(&[("x-ratelimit-reset", "1799999990")]),
            Some(Duration::ZERO)
        );
        // Seconds-left form.
        assert_eq!(
            at(&[("x-ratelimit-reset", "30")]),
            Some(Duration::from_secs(30))
        );
        // An HTTP date, garbage or nothing: no hint.
        assert_eq!(
            at(&[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")]),
            None
        );
        assert_eq!(at(&[("retry-after", "-3")]), None);
        assert_eq!(at(&[("x-ratelimit-reset", "soon")]), None);
        assert_eq!(at(&[]), None);
        // Capped at a day.
        assert_eq!(
            at(&[("retry-after", "1e12")]),
            Some(Duration::from_secs(86_400))
        );
    }
}

#[cfg(test)]
mod properties;
