//! The image store: where job images come from.

pub mod outcomes;
mod s3;

pub use outcomes::{
    AttemptLog, AttemptRecord, OutcomeError, OutcomeStore, PendingSubmission, StoredOutcome,
};
pub use s3::{ListedObject, S3Outcomes, S3Store};

use crate::domain::job::S3Uri;
use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// No such bucket or key.
    #[error("{0}")]
    NotFound(String),
    /// The object is over the size limit; its body was not read.
    #[error("object is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    /// Worth retrying: timeouts, 5xx, connection errors, throttling, and
    /// access denied (a permissions fix makes the same job succeed).
    #[error("{0}")]
    Transient(String),
}

#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// The object's bytes, at most `limit` of them.
    async fn fetch(&self, uri: &S3Uri, limit: u64) -> Result<Bytes, FetchError>;
}
