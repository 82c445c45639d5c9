//! Vendor traffic control (`[traffic]`): fleet-wide rate limits, adaptive
//! concurrency and spend budgets per vendor (docs/traffic.md). Every
//! limit is off by default: without one the worker behaves as before.

use super::{Problems, de};
use crate::domain::ProviderName;
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// The longest a job waits in process for its vendor (a rate token or
    /// a concurrency slot) before it parks on the ladder instead.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Deliveries each replica holds from each vendor's wait queue
    /// (`liveness.wait.<vendor>`) while they wait for the vendor's
    /// admission; 0: `worker.concurrency`.
    pub waiting_room: u16,
    /// Retired: refused at start with what replaced it (the wait queues).
    #[serde(default)]
    pub waiting_share: Option<f64>,
    pub argos: VendorTraffic,
    pub intellicheck: VendorTraffic,
    pub didit: VendorTraffic,
}

/// One vendor's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorTraffic {
    /// Requests per second or per minute, fleet-wide; empty: no limit.
    #[serde(deserialize_with = "de::parsed")]
    pub rate: Rate,
    /// Requests that may go back to back before the spacing applies.
    pub burst: u32,
    /// Adaptive concurrency: the most calls in flight per replica; 0 turns
    /// it off (no per-vendor limit beyond `worker.concurrency`).
    pub concurrency_max: u32,
    pub concurrency_min: u32,
    pub concurrency_initial: u32,
    /// Smoothed latency above this many times the baseline counts as rising.
    pub latency_tolerance: f64,
    /// Vendor submissions per UTC day, fleet-wide; 0: no budget.
    pub daily_budget: u64,
    /// Vendor submissions per UTC month, fleet-wide; 0: no budget.
    pub monthly_budget: u64,
    /// Share of a budget after which the worker warns.
    pub budget_warning: f64,
}

impl VendorTraffic {
    pub fn has_budget(&self) -> bool {
        self.daily_budget > 0 || self.monthly_budget > 0
    }

    /// Whether a job of this vendor may have to wait for it (a rate limit
    /// or adaptive concurrency): such jobs wait in the vendor's wait queue.
    pub fn waits(&self) -> bool {
        self.rate.is_limited() || self.concurrency_max > 0
    }

    /// Whether any limit applies to this vendor.
    pub fn limited(&self) -> bool {
        self.rate.is_limited() || self.concurrency_max > 0 || self.has_budget()
    }

    fn validate(&self, vendor: ProviderName, p: &mut Problems) {
        let key = |k: &str| format!("traffic.{vendor}.{k}");
        p.check(self.burst >= 1, || {
            format!("{} must be at least 1", key("burst"))
        });
        if self.concurrency_max > 0 {
            p.check(
                self.concurrency_min >= 1
                    && self.concurrency_min <= self.concurrency_initial
                    && self.concurrency_initial <= self.concurrency_max,
                || {
                    format!(
                        "{} need 1 <= concurrency_min ({}) <= concurrency_initial ({}) <= concurrency_max ({})",
                        key("concurrency_*"),
                        self.concurrency_min,
                        self.concurrency_initial,
                        self.concurrency_max
                    )
                },
            );
            p.check(self.concurrency_max <= 4096, || {
                format!("{} must be at most 4096", key("concurrency_max"))
            });
        }
        p.check(
            self.latency_tolerance.is_finite() && self.latency_tolerance >= 1.1,
            || format!("{} must be at least 1.1", key("latency_tolerance")),
        );
        p.check(
            self.budget_warning > 0.0 && self.budget_warning <= 1.0,
            || format!("{} must be within (0, 1]", key("budget_warning")),
        );
        budget_windows(p, &key(""), self.daily_budget, self.monthly_budget);
    }
}

impl TrafficConfig {
    pub fn vendor(&self, v: ProviderName) -> &VendorTraffic {
        match v {
            ProviderName::Argos => &self.argos,
            ProviderName::Intellicheck => &self.intellicheck,
            ProviderName::Didit => &self.didit,
        }
    }

    /// Vendors whose jobs wait in a wait queue: a rate limit or adaptive
    /// concurrency (a budget alone parks on the ladder).
    pub fn waiting_vendors(&self) -> Vec<ProviderName> {
        ProviderName::ALL
            .into_iter()
            .filter(|v| self.vendor(*v).waits())
            .collect()
    }

    /// Whether any vendor has a spend budget.
    pub fn any_budget(&self) -> bool {
        ProviderName::ALL
            .iter()
            .any(|v| self.vendor(*v).has_budget())
    }

    pub(super) fn validate(&self, p: &mut Problems) {
        p.check(
            self.max_wait >= Duration::from_millis(10) && self.max_wait <= Duration::from_secs(600),
            || "traffic.max_wait must be 10ms-10m".into(),
        );
        p.check(self.waiting_share.is_none(), || {
            "traffic.waiting_share is retired: a job whose vendor is at its rate or concurrency limit now moves to \
             the vendor's wait queue (broker.wait_queue_prefix, e.g. liveness.wait.argos) and waits there, holding \
             none of worker.concurrency; traffic.waiting_room bounds the deliveries waiting per vendor. \
             Remove the setting (docs/traffic.md)"
                .into()
        });
        for v in ProviderName::ALL {
            self.vendor(v).validate(v, p);
        }
    }
}

/// A request rate: `50/s`, `300/m`, `0.5/s`; empty: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    /// Requests per second; 0: unlimited.
    per_second: f64,
}

impl Rate {
    pub fn per_second(self) -> f64 {
        self.per_second
    }

    pub fn is_limited(self) -> bool {
        self.per_second > 0.0
    }

    /// Time between two requests at this rate (None when unlimited).
    pub fn interval(self) -> Option<Duration> {
        self.is_limited()
            .then(|| Duration::from_secs_f64(1.0 / self.per_second))
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Rate::default());
        }
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("a rate is written like 50/s or 300/m, got {s:?}"))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("a rate is written like 50/s or 300/m, got {s:?}"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(format!("a rate's unit is s, m or h, got {s:?}")),
        };
        if !(n.is_finite() && n > 0.0 && n / per <= 100_000.0 && n / per >= 0.001) {
            return Err(format!(
                "a rate must be between 0.001/s and 100000/s, got {s:?}"
            ));
        }
        Ok(Rate {
            per_second: n / per,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_limited() {
            write!(f, "{}/s", self.per_second)
        } else {
            f.write_str("unlimited")
        }
    }
}

/// A daily budget within the monthly one (0 is no budget); `prefix` is the
/// settings' table with its dot, e.g. `traffic.argos.`.
pub(super) fn budget_windows(p: &mut Problems, prefix: &str, daily: u64, monthly: u64) {
    p.check(daily == 0 || monthly == 0 || daily <= monthly, || {
        format!("{prefix}daily_budget ({daily}) must not exceed {prefix}monthly_budget ({monthly})")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("".parse::<Rate>().unwrap(), Rate::default());
        assert_eq!("50/s".parse::<Rate>().unwrap().per_second(), 50.0);
        assert_eq!("300/m".parse::<Rate>().unwrap().per_second(), 5.0);
        assert_eq!(
            "50/s".parse::<Rate>().unwrap().interval(),
            Some(Duration::from_millis(20))
        );
        for bad in ["50", "x/s", "5/d", "0/s", "-1/s", "1e9/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
