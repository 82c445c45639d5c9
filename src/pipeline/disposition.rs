//! What the step decides for a delivery, and the facts about the job that
//! travel with it (so nothing downstream parses the body again).

use super::shadow::ShadowRun;
use crate::domain::carried::Carried;
use crate::domain::dead_letter::DeadLetter;
use crate::domain::job::JobId;
use crate::domain::result::LivenessResult;
use crate::domain::{Check, ProviderName};
use crate::telemetry::{JobOutcome, Metrics};

/// What to do with a delivery. Every variant is one complete instruction:
/// none can contradict another.
#[derive(Debug)]
pub enum Disposition {
    /// Publish this result, then ack.
    Publish(Box<LivenessResult>),
    /// Publish this dead letter, then ack.
    DeadLetter(Box<DeadLetter>),
    /// Republish the job body to delay-ladder step `step` carrying
    /// `carried`, then ack. `reason` says why, for the log.
    RetryLater {
        step: usize,
        carried: Carried,
        reason: String,
    },
    /// The job's vendor cannot take it now (rate limit or adaptive
    /// concurrency): republish the job body to the vendor's wait queue
    /// carrying `carried` (no attempt made), then ack.
    Wait {
        vendor: ProviderName,
        carried: Carried,
    },
    /// Argos callback mode: the vendor accepted the job and its pending
    /// record is stored; republish the job body to the callback wait queue
    /// carrying `carried`, then ack.
    AwaitCallback { carried: Carried },
    /// The job back from the callback wait was already settled by its
    /// callback: ack, publish nothing.
    Settled { reason: &'static str },
    /// Stopped before any vendor call (the delivery's connection is gone, or
    /// the drain ran out of time): publish nothing, do not ack; the broker
    /// delivers the job again.
    Abandoned,
}

impl Disposition {
    /// For logs and the audit trail, e.g. `retry step 0`.
    pub fn label(&self) -> String {
        match self {
            Disposition::Publish(r) => format!("result {}", r.routing_key()),
            Disposition::DeadLetter(d) => format!("dead letter {}", d.failure.class),
            Disposition::RetryLater { step, .. } => format!("retry step {step}"),
            Disposition::Wait { vendor, .. } => format!("wait queue of {vendor}"),
            Disposition::AwaitCallback { carried } => format!(
                "awaiting callback (submission {})",
                carried.callback_submissions
            ),
            Disposition::Settled { reason } => format!("settled: {reason}"),
            Disposition::Abandoned => "abandoned before any vendor call".into(),
        }
    }
}

/// A disposition with what the finishing side needs to know of its job.
#[derive(Debug)]
pub struct Finished {
    pub disposition: Disposition,
    /// The job's check, when the body said one.
    pub check: Option<Check>,
    /// The vendor involved, once one was chosen (for a result, the vendor
    /// that answered).
    pub provider: Option<ProviderName>,
    /// Clear this job's pending callback record once the disposition is
    /// published: it has served its purpose.
    pub clear_pending: Option<JobId>,
    /// Shadow mode: the shadow call to make once this is published and
    /// acked ([`crate::pipeline::Pipeline::shadow`]).
    pub shadow: Option<ShadowRun>,
}

impl Finished {
    pub fn new(disposition: Disposition, check: Option<Check>) -> Self {
        Finished {
            disposition,
            check,
            provider: None,
            clear_pending: None,
            shadow: None,
        }
    }

    pub fn by(mut self, provider: Option<ProviderName>) -> Self {
        self.provider = provider;
        self
    }

    /// Counts the disposition once its publish was confirmed.
    pub fn record(&self, m: &Metrics) {
        match &self.disposition {
            Disposition::Publish(r) => {
                m.job_finished(
                    JobOutcome::Result,
                    Some(r.verdict),
                    Some(r.check),
                    Some(r.provider),
                );
                m.result_published(r.routing_key());
            }
            Disposition::DeadLetter(d) => {
                m.job_finished(JobOutcome::DeadLetter, None, self.check, d.failure.provider);
                m.dead_letter(d.failure.class, d.failure.provider);
            }
            Disposition::RetryLater { step, .. } => {
                m.job_finished(JobOutcome::RetryLater, None, self.check, self.provider);
                m.parked(*step);
            }
            // Not finished: it waits in the broker for its vendor.
            Disposition::Wait { vendor, .. } => m.vendor_waitlisted(*vendor),
            Disposition::AwaitCallback { .. } => {
                m.job_finished(
                    JobOutcome::AwaitingCallback,
                    None,
                    self.check,
                    self.provider,
                );
                m.awaiting_callback();
            }
            Disposition::Settled { .. } => {
                m.job_finished(JobOutcome::Settled, None, self.check, None)
            }
            Disposition::Abandoned => {}
        }
    }
}
