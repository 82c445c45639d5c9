//! Adaptive concurrency per vendor: AIMD (additive increase, multiplicative
//! decrease), per replica, without a coordinator.
//!
//! - Increase: each call that ends well while the limit was in use
//!   (at least half of it in flight) adds `1 / limit`: one more slot per
//!   round of calls.
//! - Decrease: a 429 or a timeout/outage halves the limit; rising latency
//!   (the smoothed latency above `tolerance` times its slow baseline)
//!   takes 10 % off. At most one decrease per round trip (the smoothed
//!   latency, at least 50 ms), so a burst of failures from one round counts
//!   once.
//!
//! Why AIMD rather than a gradient limiter: the signals vendors give are
//! explicit (429s, timeouts), and AIMD reacts to exactly those; replicas
//! that each run AIMD against the same bottleneck converge to fair shares
//! without talking to each other. A gradient limiter steers on the latency
//! ratio alone, which with vendor latencies that vary by image and flow
//! (Intellicheck's polling, image sizes) is noisy and oscillates; here
//! latency is one more decrease signal, compared against a slow average so
//! noise does not trigger it.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a call ended, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer (a verdict or a refusal of the request) after this long.
    Answered(Duration),
    /// HTTP 429.
    RateLimited,
    /// No answer in time, a connection error, a 5xx.
    Timeout,
    /// Anything else: no feedback.
    Neutral,
}

/// Why the limit went down (`liveness_vendor_limit_decreases_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decrease {
    RateLimited,
    Timeout,
    Latency,
}

impl Decrease {
    pub fn as_str(self) -> &'static str {
        match self {
            Decrease::RateLimited => "rate_limited",
            Decrease::Timeout => "timeout",
            Decrease::Latency => "latency",
        }
    }
}

/// Why no slot was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// None freed up in time.
    TimedOut,
    /// The job was told to stop.
    Stopped,
}

pub struct Aimd {
    min: f64,
    max: f64,
    tolerance: f64,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: u32,
    /// Fast EWMA of answered calls' latency, ms.
    smoothed_ms: Option<f64>,
    /// Slow EWMA, ms: what "normal" latency is lately.
    baseline_ms: Option<f64>,
    last_decrease: Option<Instant>,
}

/// A slot taken; give it back with [`Aimd::release`] (or drop it).
pub struct Slot<'a> {
    aimd: &'a Aimd,
    released: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.aimd.give_back(Signal::Neutral);
        }
    }
}

impl Slot<'_> {
    /// Gives the slot back with what the call taught us; the decrease it
    /// caused, if any.
    pub fn release(mut self, signal: Signal) -> Option<Decrease> {
        self.released = true;
        self.aimd.give_back(signal)
    }
}

const FAST: f64 = 0.2;
const SLOW: f64 = 0.02;

impl Aimd {
    pub fn new(min: u32, initial: u32, max: u32, tolerance: f64) -> Self {
        Aimd {
            min: f64::from(min.max(1)),
            max: f64::from(max.max(1)),
            tolerance,
            state: Mutex::new(State {
                limit: f64::from(initial.clamp(min.max(1), max.max(1))),
                in_flight: 0,
                smoothed_ms: None,
                baseline_ms: None,
                last_decrease: None,
            }),
            freed: Notify::new(),
        }
    }

    /// The current limit (fractional: slots are its whole part).
    pub fn limit(&self) -> f64 {
        self.state.lock().expect("aimd").limit
    }

    /// The smoothed latency of answered calls, and its baseline (seconds).
    pub fn latency(&self) -> (Option<f64>, Option<f64>) {
        let s = self.state.lock().expect("aimd");
        (
            s.smoothed_ms.map(|m| m / 1000.0),
            s.baseline_ms.map(|m| m / 1000.0),
        )
    }

    fn try_take(&self) -> bool {
        let mut s = self.state.lock().expect("aimd");
        if f64::from(s.in_flight) < s.limit.floor().max(1.0) {
            s.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// A slot now, if one is free.
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        // Built only once taken: a dropped slot gives one back.
        self.try_take().then(|| Slot {
            aimd: self,
            released: false,
        })
    }

    /// Waits for a slot until `until`.
    pub async fn acquire(
        &self,
        until: Instant,
        stop: &CancellationToken,
    ) -> Result<Slot<'_>, NoSlot> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return Ok(slot);
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(until) => return Err(NoSlot::TimedOut),
                _ = stop.cancelled() => return Err(NoSlot::Stopped),
            }
        }
    }

    fn give_back(&self, signal: Signal) -> Option<Decrease> {
        let decrease = {
            let mut s = self.state.lock().expect("aimd");
            let was_in_flight = s.in_flight;
            s.in_flight = s.in_flight.saturating_sub(1);
            self.learn(&mut s, signal, was_in_flight, Instant::now())
        };
        self.freed.notify_waiters();
        decrease
    }

    fn learn(
        &self,
        s: &mut State,
        signal: Signal,
        in_flight: u32,
        now: Instant,
    ) -> Option<Decrease> {
        let reason = match signal {
            Signal::Neutral => return None,
            Signal::RateLimited => Decrease::RateLimited,
            Signal::Timeout => Decrease::Timeout,
            Signal::Answered(took) => {
                let ms = took.as_secs_f64() * 1000.0;
                let smoothed = s.smoothed_ms.map_or(ms, |v| v + FAST * (ms - v));
                let baseline = s.baseline_ms.map_or(ms, |v| v + SLOW * (ms - v));
                s.smoothed_ms = Some(smoothed);
                s.baseline_ms = Some(baseline);
                if smoothed > self.tolerance * baseline.max(1.0) {
                    Decrease::Latency
                } else {
                    // Grow only while the limit is what holds calls back.
                    if f64::from(in_flight) * 2.0 >= s.limit.floor() {
                        s.limit = (s.limit + 1.0 / s.limit).min(self.max);
                    }
                    return None;
                }
            }
        };
        let spacing = Duration::from_secs_f64(s.smoothed_ms.unwrap_or(0.0).max(50.0) / 1000.0);
        if s.last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < spacing)
        {
            return None;
        }
        let factor = match reason {
            Decrease::Latency => 0.9,
            Decrease::RateLimited | Decrease::Timeout => 0.5,
        };
        s.limit = (s.limit * factor).max(self.min);
        s.last_decrease = Some(now);
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grows_while_in_use_and_halves_on_429() {
        let a = Aimd::new(1, 4, 10, 2.0);
        // Four calls in flight at the limit, answered in 100 ms: +1/limit each.
        for _ in 0..20 {
            let slots: Vec<_> = (0..a.limit().floor() as usize)
                .map(|_| a.try_acquire().expect("a slot under the limit"))
                .collect();
            assert!(a.try_acquire().is_none(), "no slot beyond the limit");
            tokio::time::advance(Duration::from_millis(100)).await;
            for s in slots {
                assert_eq!(
                    s.release(Signal::Answered(Duration::from_millis(100))),
                    None
                );
            }
        }
        let grown = a.limit();
        assert!(grown > 8.0 && grown <= 10.0, "{grown}");
        // A 429: halved once, the other 429s of the same round ignored.
        let s1 = a.try_acquire().unwrap();
        let s2 = a.try_acquire().unwrap();
        assert_eq!(s1.release(Signal::RateLimited), Some(Decrease::RateLimited));
        assert_eq!(s2.release(Signal::RateLimited), None);
        assert!((a.limit() - grown / 2.0).abs() < 1e-9);
        // Down to the floor at most.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            a.try_acquire().unwrap().release(Signal::Timeout);
        }
        assert_eq!(a.limit(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_capacity_does_not_grow_and_rising_latency_shrinks() {
        let a = Aimd::new(1, 8, 64, 2.0);
        // One call at a time under a limit of 8: no growth.
        for _ in 0..50 {
            a.try_acquire()
                .unwrap()
                .release(Signal::Answered(Duration::from_millis(50)));
        }
        assert_eq!(a.limit(), 8.0);
        // Latency jumps tenfold: the fast average leaves the slow one behind.
        let mut decreases = 0;
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if a.try_acquire()
                .unwrap()
                .release(Signal::Answered(Duration::from_millis(500)))
                == Some(Decrease::Latency)
            {
                decreases += 1;
            }
        }
        assert!(decreases >= 3, "{decreases}");
        assert!(a.limit() < 8.0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_freed_slots_or_time_out() {
        let a = std::sync::Arc::new(Aimd::new(1, 1, 1, 2.0));
        let stop = CancellationToken::new();
        let held = a.try_acquire().unwrap();
        let until = Instant::now() + Duration::from_secs(1);
        assert_eq!(a.acquire(until, &stop).await.err(), Some(NoSlot::TimedOut));
        let a2 = a.clone();
        let stop2 = stop.clone();
        let waiter = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(10);
            a2.acquire(until, &stop2)
                .await
                .map(|s| s.release(Signal::Neutral))
                .is_ok()
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(held);
        assert!(waiter.await.unwrap());
        stop.cancel();
        let _held = a.try_acquire().unwrap();
        assert_eq!(
            a.acquire(Instant::now() + Duration::from_secs(5), &stop)
                .await
                .err(),
            Some(NoSlot::Stopped)
        );
    }
}
