//! The typed failures a stage hands back, and the dead letter built from
//! one.

use crate::domain::ProviderName;
use crate::domain::dead_letter::{DEAD_LETTER_SCHEMA, DeadLetter, Failure, FailureClass};
use crate::domain::job::{InvalidJob, ParsedJob};
use base64::Engine as _;
use serde_json::value::RawValue;
use std::time::SystemTime;

/// Why a delivery produced no verdict. The variants are what the step may
/// do about it, so a failure cannot be both "retry" and "park".
#[derive(Debug)]
pub enum Failed {
    /// Replaying the job unchanged cannot succeed, or an operator must
    /// look: dead-letter it now. `attempts` replaces this delivery's count
    /// (a job_id conflict reports the stored outcome's).
    Permanent {
        failure: Failure,
        attempts: Option<u32>,
    },
    /// Worth another try later: the next ladder step, or
    /// `retries_exhausted` past the last one. The failure's class is
    /// `retries_exhausted` already.
    Transient(Failure),
    /// The vendor may not be called now (its credentials were refused, or
    /// its breaker is open): park the job without spending its budget.
    Park {
        vendor: ProviderName,
        reason: String,
    },
    /// The delivery is lost (its connection went) or the drain ran out of
    /// time before the vendor was called: stop without paying; the broker
    /// delivers the job again.
    Abandoned,
}

impl Failed {
    pub fn permanent(class: FailureClass, message: impl Into<String>) -> Self {
        Failed::Permanent {
            failure: Failure::new(class, message),
            attempts: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Failed::Transient(Failure::new(FailureClass::RetriesExhausted, message))
    }

    /// The vendor this failure involves, when one was called or chosen.
    pub fn vendor(&self) -> Option<ProviderName> {
        match self {
            Failed::Permanent { failure, .. } | Failed::Transient(failure) => failure.provider,
            Failed::Park { vendor, .. } => Some(*vendor),
            Failed::Abandoned => None,
        }
    }
}

/// What a dead letter echoes of the delivery body (docs/messages.md): the
/// job when the body is a JSON object within the size limit, else the
/// start of the raw body.
pub struct Echo {
    pub job_id: Option<String>,
    pub job: Option<Box<RawValue>>,
    pub raw_body: Option<Vec<u8>>,
}

impl Echo {
    pub fn of(parsed: &Result<ParsedJob, InvalidJob>) -> Self {
        match parsed {
            Ok(p) => Echo {
                job_id: Some(p.job.job_id.to_string()),
                job: Some(p.raw.clone()),
                raw_body: None,
            },
            Err(e) => Echo {
                job_id: e.job_id.clone(),
                job: e.job.clone(),
                raw_body: e.raw_body.clone(),
            },
        }
    }

    pub fn dead_letter(
        self,
        failure: Failure,
        attempts: u32,
        first_attempt_at: String,
        worker: &str,
    ) -> DeadLetter {
        DeadLetter {
            schema: DEAD_LETTER_SCHEMA.into(),
            job_id: self.job_id,
            job: self.job,
            raw_body_base64: self
                .raw_body
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            failure,
            attempts,
            first_attempt_at,
            failed_at: now_rfc3339(),
            worker: worker.to_owned(),
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
