//! The retry schedule every stage shares: exponential (backon's schedule)
//! with full jitter, bounded by a deadline.

use backon::BackoffBuilder as _;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Tries in all, so `attempts - 1` waits.
    pub attempts: u32,
}

impl Backoff {
    /// The waits before each retry. Each is uniform in [0, step], which
    /// spreads replicas that failed together; the schedule ends when its
    /// waits would pass `deadline`.
    pub fn delays(&self, deadline: Instant) -> impl Iterator<Item = Duration> + use<> {
        let schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(deadline.saturating_duration_since(Instant::now())))
            .build();
        schedule.map(|d| d.mul_f64(fastrand::f64()))
    }
}
