//! What the step hands its stages besides the job: the delivery's facts
//! and the signals from the consume loop.

use tokio_util::sync::CancellationToken;

/// Signals from outside the step.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Do not start paying: the delivery is lost (its connection went) or
    /// the drain ran out of time. Checked before every vendor attempt.
    pub stop: CancellationToken,
    /// The drain ran out of time: do not wait for the results store; an
    /// answer in hand is published unstored rather than lost.
    pub hurry: CancellationToken,
}

/// Which queue a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// The jobs queue (or anything that flows into it: the ladder, the
    /// callback wait): a job whose vendor cannot take it at once moves to
    /// the vendor's wait queue.
    #[default]
    Jobs,
    /// Its vendor's wait queue: the job waits there for the vendor's
    /// admission (within `traffic.max_wait`), holding no worker slot.
    Waiting,
}

/// What the stages after parsing need of the delivery.
pub(super) struct StepContext<'a> {
    pub raw: &'a serde_json::value::RawValue,
    pub correlation_id: Option<String>,
    pub first_received_at: &'a str,
    pub signals: &'a Signals,
    pub origin: Origin,
}
