//! A circuit breaker per vendor: after `threshold` outage-like failures in a
//! row (connection errors, timeouts, 5xx) the vendor is considered down for
//! `cooldown`; its jobs are parked on the delay ladder without calling it
//! and without using their retry budget. After the cooldown one call goes
//! through (half-open): success closes the breaker, failure reopens it.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a call may go out now. After the cooldown exactly one call
    /// is let through as a probe; the others wait for its outcome.
    pub fn allows(&self) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        match s.open_until {
            None => true,
            Some(t) if Instant::now() >= t => {
                s.open_until = Some(Instant::now() + self.cooldown);
                true
            }
            Some(_) => false,
        }
    }

    /// Whether a call could go out now (closed, or its probe is due),
    /// without taking the probe.
    pub fn probe_due(&self) -> bool {
        self.state
            .lock()
            .expect("breaker lock")
            .open_until
            .is_none_or(|t| Instant::now() >= t)
    }

    /// Whether the breaker is open (or half-open, waiting for its probe).
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .expect("breaker lock")
            .open_until
            .is_some()
    }

    /// Records a call's outcome; returns whether the breaker is open after it.
    pub fn record(&self, outage: bool) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        if outage {
            s.failures = s.failures.saturating_add(1);
            if s.failures >= self.threshold {
                s.open_until = Some(Instant::now() + self.cooldown);
            }
        } else {
            *s = State::default();
        }
        s.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_half_opens_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert!(!b.record(true) && !b.record(true));
        assert!(b.allows());
        assert!(b.record(true), "third failure in a row opens it");
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows(), "half-open after the cooldown");
        assert!(!b.allows(), "one probe at a time");
        assert!(b.record(true), "a failed probe reopens it");
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows());
        assert!(!b.record(false), "a successful probe closes it");
        assert!(b.allows());
        // A success in between resets the count.
        b.record(true);
        b.record(true);
        b.record(false);
        assert!(!b.record(true));
    }
}
