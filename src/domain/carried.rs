//! What a job carries from one delivery to the next: on the delay ladder and
//! through the Argos callback wait it travels as a new message, so its
//! progress rides in worker-owned headers (encoded and decoded in one place,
//! `broker::headers`).

/// A job's progress across deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Vendor attempts made in earlier deliveries.
    pub attempts: u32,
    /// Ladder steps already used.
    pub ladder_step: u32,
    /// RFC 3339 time the worker first received the job.
    pub first_received_at: Option<String>,
    /// Argos callback mode: submissions made so far.
    pub callback_submissions: u32,
    /// This delivery is the job back from the callback wait.
    pub awaiting_callback: bool,
}
