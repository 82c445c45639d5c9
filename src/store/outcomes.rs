//! The results store ("pay once", docs/reliability.md): one record per job_id holding
//! the published result and the digest of the image it is about, written
//! before the result is published and read before any vendor call; plus an
//! audit trail of every vendor attempt.
//!
//! Layout under `s3://<results.bucket>/<results.prefix>`:
//! - `outcomes/<job_id>.json`: a [`StoredOutcome`];
//! - `attempts/<job_id>/<first>-<last>.json`: an [`AttemptLog`] for each
//!   delivery that called the vendor without producing an outcome (the
//!   outcome record itself carries the attempts of the delivery that did);
//! - `pending/<job_id>.json`: a [`PendingSubmission`] while a vendor works
//!   on the job asynchronously (Argos callback mode).

use crate::domain::assessment::VendorRefs;
use crate::domain::job::{Job, JobId};
use crate::domain::result::LivenessResult;
use crate::domain::{AttemptOutcome, ProviderName};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub const OUTCOME_SCHEMA: &str = "liveness.outcome.v1";
pub const ATTEMPTS_SCHEMA: &str = "liveness.attempts.v1";
pub const PENDING_SCHEMA: &str = "liveness.pending.v1";

/// What the store keeps about a job that got a verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredOutcome {
    pub schema: String,
    pub job_id: JobId,
    /// Lowercase hex SHA-256 of the image the verdict is about.
    pub image_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_image_sha256: Option<String>,
    /// RFC 3339.
    pub stored_at: String,
    /// The result as first published.
    pub result: LivenessResult,
    /// The vendor attempts of the delivery that produced the result.
    pub attempts: Vec<AttemptRecord>,
}

impl StoredOutcome {
    /// Whether this outcome answers `job` with these images: the same
    /// check, the vendor the job named (if it named one), and the same image
    /// digests (the back image's only when `compare_back`: a vendor that
    /// does not use it has it neither fetched nor hashed). Otherwise why
    /// not, in words for the dead letter.
    pub fn answers(
        &self,
        job: &Job,
        image_sha256: &str,
        back_image_sha256: Option<&str>,
        compare_back: bool,
    ) -> Result<(), String> {
        let back = |b: Option<&str>| b.map_or(String::new(), |b| format!(" (back {b})"));
        if self.result.check != job.check {
            return Err(format!(
                "the stored outcome is a {} check, this job asks for a {} check",
                self.result.check, job.check
            ));
        }
        if let Some(p) = job.provider
            && p != self.result.provider
        {
            return Err(format!(
                "the stored outcome is from {}, this job asks for {p}",
                self.result.provider
            ));
        }
        if self.image_sha256 != image_sha256
            || (compare_back && self.back_image_sha256.as_deref() != back_image_sha256)
        {
            return Err(format!(
                "the stored outcome is for image sha256 {}{}, this job's image has sha256 {image_sha256}{}",
                self.image_sha256,
                back(self.back_image_sha256.as_deref()),
                back(back_image_sha256),
            ));
        }
        Ok(())
    }
}

/// One vendor attempt, for audit. Holds no image byte, key or biometric
/// attribute: only what a support ticket or a billing dispute needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The job-wide attempt number (1 = the first submission ever).
    pub attempt: u32,
    pub provider: ProviderName,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_code: Option<String>,
    /// The vendor's references, when it answered with a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<VendorRefs>,
    /// Our description of a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub worker: String,
}

/// The attempts of one delivery that ended without an outcome (the job went
/// to the delay ladder or became a dead letter).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptLog {
    pub schema: String,
    pub job_id: JobId,
    /// What happened to the delivery, e.g. `retry step 0` or
    /// `dead letter retries_exhausted`.
    pub disposition: String,
    pub attempts: Vec<AttemptRecord>,
}

/// A job submitted in callback mode, waiting for the vendor's callback:
/// everything the callback receiver (on any replica) needs to publish the
/// result without the original delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingSubmission {
    pub schema: String,
    pub job_id: JobId,
    /// The job as the producer sent it.
    pub job: Box<serde_json::value::RawValue>,
    /// The AMQP correlation_id of the job, copied onto the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub provider: ProviderName,
    /// This submission's number (1 = the first).
    pub submission: u32,
    /// Vendor attempts made for the job, this submission included.
    pub attempts: u32,
    /// Delay-ladder steps already used (for a transient error by callback).
    pub ladder_step: u32,
    /// RFC 3339.
    pub first_received_at: String,
    /// RFC 3339.
    pub submitted_at: String,
    pub image: crate::domain::result::ImageInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_image_sha256: Option<String>,
    pub fetch_ms: u64,
    /// The vendor's references from its acceptance.
    pub vendor: VendorRefs,
    /// The attempts of the delivery that made this submission.
    pub attempt_log: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OutcomeError {
    /// Worth retrying: the store could not be reached or answered an error.
    #[error("{0}")]
    Unavailable(String),
    /// A record exists but cannot be read: needs a human.
    #[error("{0}")]
    Corrupt(String),
    /// A conditional write found the record already there (another copy
    /// stored first).
    #[error("{0}")]
    AlreadyStored(String),
}

#[async_trait]
pub trait OutcomeStore: Send + Sync + 'static {
    /// The job's stored outcome, if it has one.
    async fn load(&self, job_id: &JobId) -> Result<Option<StoredOutcome>, OutcomeError>;
    async fn save(&self, outcome: &StoredOutcome) -> Result<(), OutcomeError>;
    async fn save_attempts(&self, log: &AttemptLog) -> Result<(), OutcomeError>;
    async fn load_pending(&self, job_id: &JobId)
    -> Result<Option<PendingSubmission>, OutcomeError>;
    async fn save_pending(&self, pending: &PendingSubmission) -> Result<(), OutcomeError>;
    async fn delete_pending(&self, job_id: &JobId) -> Result<(), OutcomeError>;
    /// Where a job's outcome lives, for messages (`s3://...`).
    fn location(&self, job_id: &JobId) -> String;
}

/// Object keys, shared by the S3 implementation and anything that reads the
/// store (operators, tests).
pub fn outcome_key(prefix: &str, job_id: &JobId) -> String {
    format!("{prefix}outcomes/{job_id}.json")
}

pub fn pending_key(prefix: &str, job_id: &JobId) -> String {
    format!("{prefix}pending/{job_id}.json")
}

pub fn attempts_key(prefix: &str, job_id: &JobId, first: u32, last: u32) -> String {
    format!("{prefix}attempts/{job_id}/{first:06}-{last:06}.json")
}

/// Where every `outcomes/<job_id>.json` lives (for listings).
pub fn outcomes_prefix(prefix: &str) -> String {
    format!("{prefix}outcomes/")
}

/// Where a job's audit records live (for listings).
pub fn attempts_prefix(prefix: &str, job_id: &JobId) -> String {
    format!("{prefix}attempts/{job_id}/")
}

/// Where `reverify` keeps the outcomes it set aside for a job.
pub fn superseded_prefix(prefix: &str, job_id: &JobId) -> String {
    format!("{prefix}outcomes-superseded/{job_id}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_job_ids_readable_and_sort_attempts() {
        let id = |s: &str| JobId::parse(s).unwrap();
        assert_eq!(outcome_key("", &id("a:b.c-1")), "outcomes/a:b.c-1.json");
        assert_eq!(outcome_key("t/", &id("x")), "t/outcomes/x.json");
        assert_eq!(
            attempts_key("", &id("x"), 1, 12),
            "attempts/x/000001-000012.json"
        );
        assert!(attempts_key("", &id("x"), 2, 3) < attempts_key("", &id("x"), 10, 10));
    }
}
