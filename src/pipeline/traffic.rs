//! Vendor traffic control (docs/traffic.md): what a job waits for, or parks
//! for, between the gate and the vendor call.
//!
//! In this order, per attempt:
//! 1. a concurrency slot of the vendor's adaptive limit ([`super::aimd`]);
//! 2. a rate token: a reservation in the fleet-wide GCRA (the coordination
//!    store's, or this replica's share of it), which also honours the
//!    "blocked until" a vendor's 429 set for the whole fleet;
//! 3. one unit of the vendor's spend budget (fleet-wide counters).
//!
//! Waiting for 1 and 2 is bounded by `traffic.max_wait` (and half the
//! time left before the job's deadline); a job that would wait longer, or
//! whose budget is spent, parks on the ladder: no vendor call, no attempt,
//! no retry budget spent.
//!
//! A job taken from the jobs queue does not wait at all for a vendor with a
//! rate limit or adaptive concurrency: [`Traffic::try_admit`] either takes
//! its slot and token at once (a [`Ticket`] its first attempt uses) or says
//! it would wait, and the job moves to the vendor's wait queue, where it
//! waits without holding a `worker.concurrency` slot.

use super::aimd::{Aimd, NoSlot, Signal, Slot};
use super::failure::Failed;
use crate::config::{TrafficConfig, VendorTraffic};
use crate::coordination::traffic::gcra;
use crate::coordination::{
    CapChange, Overrides, RateSpec, Reservation, Spend, Spent, TrafficStore, Unavailable,
    VendorState, Windows,
};
use crate::domain::ProviderName;
use crate::providers::VendorError;
use crate::telemetry::Metrics;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A 429 without `Retry-After` or `X-RateLimit-Reset` holds the vendor
/// back this long.
const DEFAULT_BLOCK: Duration = Duration::from_secs(1);

/// A replica that knows a vendor's budget is spent parks its jobs before
/// fetching their images, but lets one through to ask the store this often:
/// a budget raised at run time (`liveness-worker budget set`) is noticed
/// within this long, at one store round trip (and one image fetch) per
/// interval.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(5);

pub struct Traffic {
    store: Arc<dyn TrafficStore>,
    /// Whether `store` is shared by the fleet (else each replica takes its
    /// share of the rates).
    shared: bool,
    max_wait: Duration,
    lanes: HashMap<ProviderName, Lane>,
    /// Replicas the rates are shared among without a shared store.
    replicas: AtomicU32,
    metrics: Arc<Metrics>,
}

struct Lane {
    cfg: VendorTraffic,
    aimd: Option<Aimd>,
    /// Jobs in [`Traffic::admit`] for this vendor now.
    waiting: AtomicUsize,
    seen: Mutex<Seen>,
}

/// What this replica last learnt of a vendor's shared state.
#[derive(Default)]
struct Seen {
    /// The budget windows and counts (and overrides) of the last spend.
    windows: Option<Windows>,
    spent: Spent,
    exhausted: bool,
    /// When the store last said the budget is spent, or a job was last let
    /// through [`Traffic::early_park`] to ask it again.
    asked: Option<Instant>,
    warned: Option<String>,
    blocked_until: Option<SystemTime>,
}

/// A vendor call admitted; tell it how the call went with
/// [`Traffic::finish`].
pub struct Admitted<'a> {
    slot: Option<Slot<'a>>,
}

/// A concurrency slot and a rate token taken without waiting by
/// [`Traffic::try_admit`]: the token is spent, so the job goes on to its
/// call and its first attempt uses them ([`Traffic::admit`]).
pub struct Ticket<'a> {
    slot: Option<Slot<'a>>,
}

/// What [`Traffic::try_admit`] found.
pub enum Now<'a> {
    /// Admitted without waiting (or the vendor has no rate or concurrency
    /// limit).
    Admitted(Ticket<'a>),
    /// The vendor cannot take the job now: nothing was taken.
    WouldWait,
}

impl Traffic {
    pub fn new(
        cfg: &TrafficConfig,
        vendors: impl IntoIterator<Item = ProviderName>,
        store: Option<Arc<dyn TrafficStore>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes: HashMap<ProviderName, Lane> = vendors
            .into_iter()
            .map(|v| {
                let c = cfg.vendor(v).clone();
                let aimd = (c.concurrency_max > 0).then(|| {
                    Aimd::new(
                        c.concurrency_min,
                        c.concurrency_initial,
                        c.concurrency_max,
                        c.latency_tolerance,
                    )
                });
                if let Some(a) = &aimd {
                    metrics.set_concurrency(v, a.limit(), None, None);
                }
                let lane = Lane {
                    cfg: c,
                    aimd,
                    waiting: AtomicUsize::new(0),
                    seen: Mutex::default(),
                };
                (v, lane)
            })
            .collect();
        let shared = store.is_some();
        let t = Traffic {
            store: store.unwrap_or_else(|| Arc::new(LocalTraffic::default())),
            shared,
            max_wait: cfg.max_wait,
            lanes,
            replicas: AtomicU32::new(1),
            metrics,
        };
        for (v, lane) in &t.lanes {
            t.metrics.set_vendor_rate(*v, t.rate_per_second(lane));
        }
        t
    }

    /// Whether any vendor has a rate limit (the worker then tells a store-less
    /// replica how many replicas share it).
    pub fn has_rates(&self) -> bool {
        self.lanes.values().any(|l| l.cfg.rate.is_limited())
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Without a shared store: the replicas the rates are split among (the
    /// consumers on the jobs queue). Returns whether it changed.
    pub fn set_replicas(&self, n: u32) -> bool {
        let n = n.max(1);
        let changed = self.replicas.swap(n, Ordering::Relaxed) != n;
        if changed {
            for (v, lane) in &self.lanes {
                self.metrics.set_vendor_rate(*v, self.rate_per_second(lane));
            }
        }
        changed
    }

    fn rate_per_second(&self, lane: &Lane) -> f64 {
        let r = lane.cfg.rate.per_second();
        if self.shared {
            r
        } else {
            r / f64::from(self.replicas.load(Ordering::Relaxed))
        }
    }

    /// This replica's rate spec for a lane: the fleet's with a shared store,
    /// its share without; a lane with no rate still honours a 429's block.
    fn spec(&self, lane: &Lane) -> RateSpec {
        match lane.cfg.rate.interval() {
            Some(interval) => RateSpec {
                interval: if self.shared {
                    interval
                } else {
                    interval * self.replicas.load(Ordering::Relaxed)
                },
                burst: lane.cfg.burst,
            },
            None => RateSpec {
                interval: Duration::ZERO,
                burst: 1,
            },
        }
    }

    /// The vendors whose jobs wait in a wait queue (a rate limit or
    /// adaptive concurrency), in a stable order.
    pub fn wait_vendors(&self) -> Vec<ProviderName> {
        let mut v: Vec<ProviderName> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.cfg.waits())
            .map(|(v, _)| *v)
            .collect();
        v.sort_by_key(|v| v.as_str());
        v
    }

    /// Whether `vendor`'s jobs that cannot be admitted at once wait in its
    /// wait queue.
    pub fn has_wait_queue(&self, vendor: ProviderName) -> bool {
        self.lanes.get(&vendor).is_some_and(|l| l.cfg.waits())
    }

    /// Admission without waiting, for a job taken from the jobs queue: a
    /// concurrency slot free now and a rate token due now (one round trip to
    /// the store), or [`Now::WouldWait`] and nothing is taken. A granted
    /// token is spent: the job must go on to its call with the ticket.
    pub async fn try_admit(&self, vendor: ProviderName) -> Result<Now<'_>, Failed> {
        let Some(lane) = self.lanes.get(&vendor).filter(|l| l.cfg.waits()) else {
            return Ok(Now::Admitted(Ticket { slot: None }));
        };
        let slot = match &lane.aimd {
            None => None,
            Some(a) => match a.try_acquire() {
                Some(s) => Some(s),
                None => return Ok(Now::WouldWait),
            },
        };
        let reservation = self
            .store
            .reserve(vendor, self.spec(lane), Duration::ZERO)
            .await
            .map_err(|e| unavailable(vendor, &e))?;
        match reservation {
            Reservation::Granted { wait } => {
                // Due now, up to the store's rounding.
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(Now::Admitted(Ticket { slot }))
            }
            // The slot (if any) goes back as it is dropped.
            Reservation::Refused { .. } => Ok(Now::WouldWait),
        }
    }

    /// Parks a job before its image is fetched when its vendor's budget is
    /// known to be spent in the current windows (from this replica's last
    /// spend), asking nothing. Counts only grow, but a cap may be raised at
    /// run time: one job every [`BUDGET_RECHECK`] goes on to spend, which
    /// asks the store (and, when the budget was raised, lets the others
    /// through again).
    pub fn early_park(&self, vendor: ProviderName) -> Option<Failed> {
        let lane = self.lanes.get(&vendor)?;
        if !lane.cfg.has_budget() {
            return None;
        }
        let mut seen = lane.seen.lock().expect("traffic state");
        let now = Windows::now();
        let same = seen
            .windows
            .as_ref()
            .is_some_and(|w| w.day == now.day && w.month == now.month);
        if !(same && seen.exhausted) {
            return None;
        }
        let at = Instant::now();
        if seen
            .asked
            .is_none_or(|t| at.saturating_duration_since(t) >= BUDGET_RECHECK)
        {
            seen.asked = Some(at);
            return None;
        }
        self.metrics.vendor_throttled(vendor, "budget");
        Some(Failed::Park {
            vendor,
            reason: budget_reason(vendor, &lane.cfg, seen.spent, &now),
        })
    }

    /// Waits for a concurrency slot and a rate token, then takes one unit of
    /// the budget: the vendor may be called. A job that would wait too long,
    /// or finds the budget spent, gets [`Failed::Park`].
    ///
    /// With a `ticket` from [`Traffic::try_admit`] the slot and the token
    /// are already taken: only the budget is left.
    pub async fn admit<'a>(
        &'a self,
        vendor: ProviderName,
        deadline: Instant,
        stop: &CancellationToken,
        ticket: Option<Ticket<'a>>,
    ) -> Result<Admitted<'a>, Failed> {
        let Some(lane) = self.lanes.get(&vendor).filter(|l| l.cfg.limited()) else {
            return Ok(Admitted { slot: None });
        };
        if let Some(Ticket { slot }) = ticket {
            if lane.cfg.has_budget() {
                self.spend(vendor, lane).await?;
            }
            self.metrics.vendor_wait(vendor, Duration::ZERO);
            return Ok(Admitted { slot });
        }
        let started = Instant::now();
        lane.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Leave(&lane.waiting);
        let allowance = self
            .max_wait
            .min(deadline.saturating_duration_since(started) / 2);
        let until = started + allowance;
        let park = |reason: &'static str, why: String| {
            self.metrics.vendor_throttled(vendor, reason);
            Failed::Park {
                vendor,
                reason: why,
            }
        };

        let slot = match &lane.aimd {
            None => None,
            Some(a) => match a.acquire(until, stop).await {
                Ok(s) => Some(s),
                Err(NoSlot::Stopped) => return Err(Failed::Abandoned),
                Err(NoSlot::TimedOut) => {
                    let what = format!(
                        "all {} of its adaptive concurrency slots stayed busy for {allowance:?}",
                        a.limit().floor()
                    );
                    return Err(park("concurrency", throttled_reason(vendor, &what)));
                }
            },
        };

        let left = until.saturating_duration_since(Instant::now());
        let reservation = self
            .store
            .reserve(vendor, self.spec(lane), left)
            .await
            .map_err(|e| unavailable(vendor, &e))?;
        match reservation {
            Reservation::Granted { wait } if wait.is_zero() => {}
            Reservation::Granted { wait } => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // The token is lost: nothing was paid.
                    _ = stop.cancelled() => return Err(Failed::Abandoned),
                }
            }
            Reservation::Refused { wait } => {
                let what = format!(
                    "its next request slot (rate {}/s for this replica, or the Retry-After of a 429) is {wait:.1?} away",
                    self.rate_per_second(lane)
                );
                return Err(park("rate", throttled_reason(vendor, &what)));
            }
        }
        if stop.is_cancelled() {
            return Err(Failed::Abandoned);
        }

        if lane.cfg.has_budget() {
            self.spend(vendor, lane).await?;
        }
        let waited = started.elapsed();
        self.metrics.vendor_wait(vendor, waited);
        Ok(Admitted { slot })
    }

    async fn spend(&self, vendor: ProviderName, lane: &Lane) -> Result<(), Failed> {
        let windows = Windows::now();
        let spend = self
            .store
            .spend(
                vendor.as_str(),
                &windows,
                lane.cfg.daily_budget,
                lane.cfg.monthly_budget,
            )
            .await
            .map_err(|e| unavailable(vendor, &e))?;
        let (spent, exhausted) = match spend {
            Spend::Taken(s) => (s, false),
            Spend::Exhausted(s) => (s, true),
        };
        let c = &lane.cfg;
        let reason = budget_reason(vendor, c, spent, &windows);
        let mut seen = lane.seen.lock().expect("traffic state");
        let same = seen
            .windows
            .as_ref()
            .is_some_and(|w| w.day == windows.day && w.month == windows.month);
        // Concurrent spends come back in any order: one that counted less
        // than this replica already saw in these windows is older news, for
        // the metrics and for what early_park knows.
        let stale = same && (spent.day < seen.spent.day || spent.month < seen.spent.month);
        if !stale {
            // The caps that applied: a run-time override, else the configured.
            let day_cap = spent.overrides.day_cap(c.daily_budget);
            let month_cap = spent.overrides.month_cap(c.monthly_budget);
            self.metrics.set_budget(vendor, "day", spent.day, day_cap);
            self.metrics
                .set_budget(vendor, "month", spent.month, month_cap);
            let over =
                |used: u64, cap: u64| cap > 0 && used as f64 >= c.budget_warning * cap as f64;
            let warning = over(spent.day, day_cap) || over(spent.month, month_cap);
            self.metrics.set_budget_flags(vendor, warning, exhausted);
            let was_exhausted = same && seen.exhausted;
            if seen.spent.overrides != spent.overrides {
                tracing::info!(vendor = %vendor, daily_budget = day_cap, monthly_budget = month_cap,
                    daily_override = spent.overrides.day.is_some(), monthly_override = spent.overrides.month.is_some(),
                    "Vendor spend budget caps changed at run time (liveness-worker budget set or clear)");
            }
            if warning && seen.warned.as_deref() != Some(windows.day.as_str()) {
                seen.warned = Some(windows.day.clone());
                tracing::warn!(vendor = %vendor, day = spent.day, daily_budget = day_cap, month = spent.month, monthly_budget = month_cap,
                    "Vendor spend budget passed its warning threshold (traffic.{vendor}.budget_warning)");
            }
            if exhausted && !was_exhausted {
                tracing::error!(vendor = %vendor, "{reason}");
            }
            if was_exhausted && !exhausted {
                tracing::info!(vendor = %vendor, daily_budget = day_cap, monthly_budget = month_cap,
                    "Vendor spend budget raised: its parked jobs go on");
            }
            if exhausted {
                seen.asked = Some(Instant::now());
            }
            seen.windows = Some(windows);
            seen.spent = spent;
            seen.exhausted = exhausted;
        }
        drop(seen);
        if exhausted {
            self.metrics.vendor_throttled(vendor, "budget");
            return Err(Failed::Park { vendor, reason });
        }
        Ok(())
    }

    /// Takes one unit of a budget that is not a vendor's own (shadow mode's)
    /// from the same store the vendor budgets are counted in.
    pub async fn spend_named(
        &self,
        name: &str,
        windows: &Windows,
        day_cap: u64,
        month_cap: u64,
    ) -> Result<Spend, Unavailable> {
        self.store.spend(name, windows, day_cap, month_cap).await
    }

    /// What the call taught the limiters: adaptive concurrency learns from
    /// it, and a 429 holds the vendor back for the whole fleet.
    pub async fn finish(
        &self,
        vendor: ProviderName,
        admitted: Admitted<'_>,
        answer: Result<(), &VendorError>,
        took: Duration,
    ) {
        let Some(lane) = self.lanes.get(&vendor).filter(|l| l.cfg.limited()) else {
            return;
        };
        let rate_limited = answer.is_err_and(|e| e.http_status == Some(429));
        let signal = match answer {
            Ok(()) => Signal::Answered(took),
            Err(_) if rate_limited => Signal::RateLimited,
            Err(e) if e.is_outage() => Signal::Timeout,
            // A complaint about the request, a credentials refusal, the
            // vendor's own "failed to process": an answer all the same.
            Err(e) if !e.kind.is_retryable() => Signal::Answered(took),
            Err(_) => Signal::Neutral,
        };
        if let (Some(slot), Some(aimd)) = (admitted.slot, &lane.aimd) {
            if let Some(d) = slot.release(signal) {
                self.metrics.limit_decreased(vendor, d.as_str());
                tracing::info!(vendor = %vendor, reason = d.as_str(), limit = aimd.limit().floor(), "Vendor concurrency limit lowered");
            }
            let (latency, baseline) = aimd.latency();
            self.metrics
                .set_concurrency(vendor, aimd.limit(), latency, baseline);
        }
        if rate_limited {
            let wait = answer
                .err()
                .and_then(VendorError::retry_after)
                .unwrap_or(DEFAULT_BLOCK)
                .max(Duration::from_millis(1));
            match self.store.block(vendor, wait).await {
                Ok(held) => {
                    self.metrics.vendor_blocked(vendor);
                    lane.seen.lock().expect("traffic state").blocked_until =
                        Some(SystemTime::now() + held);
                    tracing::info!(vendor = %vendor, held_ms = held.as_millis() as u64, fleet = self.shared,
                        "Vendor answered 429: holding its requests back until its Retry-After");
                }
                Err(e) => {
                    tracing::warn!(vendor = %vendor, error = %e, "Could not record the vendor's 429 in the coordination store");
                }
            }
        }
    }

    /// Fills each vendor's `limit` and `budget` for the fleet heartbeat.
    pub fn describe(&self, states: &mut [VendorState]) {
        for st in states {
            let Some((vendor, lane)) = self.lanes.iter().find(|(v, _)| v.as_str() == st.vendor)
            else {
                continue;
            };
            if !lane.cfg.limited() {
                continue;
            }
            let seen = lane.seen.lock().expect("traffic state");
            let blocked_ms = seen
                .blocked_until
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .map(|d| d.as_millis() as u64);
            st.limit = Some(serde_json::json!({
                "rate_per_s": lane.cfg.rate.is_limited().then(|| lane.cfg.rate.per_second()),
                "replica_rate_per_s": lane.cfg.rate.is_limited().then(|| self.rate_per_second(lane)),
                "shared": self.shared,
                "concurrency_limit": lane.aimd.as_ref().map(|a| a.limit().floor() as u64),
                "latency_ms": lane.aimd.as_ref().and_then(|a| a.latency().0).map(|s| (s * 1000.0).round()),
                "waiting": lane.waiting.load(Ordering::Relaxed),
                "blocked_for_ms": blocked_ms,
                "vendor": vendor.as_str(),
            }));
            if lane.cfg.has_budget() {
                let w = seen.windows.clone().unwrap_or_else(Windows::now);
                let o = seen.spent.overrides;
                st.budget = Some(serde_json::json!({
                    "day": w.day,
                    "day_used": seen.spent.day,
                    "daily_budget": o.day_cap(lane.cfg.daily_budget),
                    "daily_override": o.day.is_some(),
                    "month": w.month,
                    "month_used": seen.spent.month,
                    "monthly_budget": o.month_cap(lane.cfg.monthly_budget),
                    "monthly_override": o.month.is_some(),
                    "exhausted": seen.exhausted,
                }));
            }
        }
    }
}

/// Leaves the waiting count when dropped.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn throttled_reason(vendor: ProviderName, what: &str) -> String {
    format!(
        "{vendor} is at its traffic limit: {what}; the job waits on the ladder without a vendor call and without spending its retry budget"
    )
}

/// Why a job of `vendor` parks on its spent budget, and how to raise it.
fn budget_reason(vendor: ProviderName, c: &VendorTraffic, spent: Spent, w: &Windows) -> String {
    let o = spent.overrides;
    let day_cap = o.day_cap(c.daily_budget);
    let daily = day_cap > 0 && spent.day >= day_cap;
    let (window, unit, used, cap, over, configured, left) = if daily {
        let d = c.daily_budget;
        ("daily", "day", spent.day, day_cap, o.day, d, w.day_left)
    } else {
        let m = c.monthly_budget;
        let cap = o.month_cap(m);
        (
            "monthly",
            "month",
            spent.month,
            cap,
            o.month,
            m,
            w.month_left,
        )
    };
    let name = if daily {
        format!("on {} UTC", w.day)
    } else {
        format!("in {} UTC", w.month)
    };
    let key = format!("traffic.{vendor}.{window}_budget");
    let (source, otherwise) = if over.is_some() {
        (
            format!("a run-time override; {key} is {configured}"),
            format!(
                "; a change of {key} applies only once `liveness-worker budget clear {vendor} --{window}` removes the override)"
            ),
        )
    } else {
        (
            key.clone(),
            format!("), or a change of {key} and a restart of the replicas"),
        )
    };
    format!(
        "{vendor}'s {window} spend budget is spent ({used} of {cap} submissions {name}, {source}); \
         its jobs wait on the ladder, without a dead letter or spending their retry budget, until the {unit} turns (in {}) \
         or the budget is raised: `liveness-worker budget set {vendor} --{window} N` (the replicas notice within {}{otherwise}",
        humantime::format_duration(Duration::from_secs(left.as_secs())),
        humantime::format_duration(BUDGET_RECHECK),
    )
}

fn unavailable(vendor: ProviderName, e: &Unavailable) -> Failed {
    Failed::Transient(crate::domain::dead_letter::Failure {
        provider: Some(vendor),
        ..crate::domain::dead_letter::Failure::new(
            crate::domain::dead_letter::FailureClass::RetriesExhausted,
            format!(
                "the coordination store could not be asked for {vendor}'s rate limit or budget ({e}); \
                 the job waits rather than exceed them"
            ),
        )
    })
}

/// The traffic store of a replica without a coordination store: the same
/// GCRA in process (on tokio's clock), blocks, budget counts and
/// overrides of this replica only.
#[derive(Default)]
pub struct LocalTraffic {
    state: Mutex<HashMap<ProviderName, LocalLane>>,
    /// By budget name.
    budgets: Mutex<HashMap<String, LocalBudget>>,
}

#[derive(Default)]
struct LocalBudget {
    /// By window (`YYYY-MM-DD`, `YYYY-MM`).
    counts: HashMap<String, u64>,
    overrides: Overrides,
}

#[derive(Default)]
struct LocalLane {
    /// Milliseconds since `base`.
    tat: f64,
    blocked_until: f64,
    base: Option<Instant>,
}

impl LocalLane {
    fn now_ms(&mut self) -> f64 {
        let base = *self.base.get_or_insert_with(Instant::now);
        base.elapsed().as_secs_f64() * 1000.0
    }
}

#[async_trait]
impl TrafficStore for LocalTraffic {
    async fn reserve(
        &self,
        vendor: ProviderName,
        rate: RateSpec,
        max_wait: Duration,
    ) -> Result<Reservation, Unavailable> {
        let mut s = self.state.lock().expect("local traffic");
        let l = s.entry(vendor).or_default();
        let now = l.now_ms();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (granted, wait, tat) = gcra(
            now,
            l.tat,
            l.blocked_until,
            ms(rate.interval),
            ms(rate.tolerance()),
            ms(max_wait),
        );
        let wait = Duration::from_secs_f64(wait.max(0.0) / 1000.0);
        Ok(if granted {
            l.tat = tat;
            Reservation::Granted { wait }
        } else {
            Reservation::Refused { wait }
        })
    }

    async fn block(&self, vendor: ProviderName, wait: Duration) -> Result<Duration, Unavailable> {
        let mut s = self.state.lock().expect("local traffic");
        let l = s.entry(vendor).or_default();
        let now = l.now_ms();
        l.blocked_until = l.blocked_until.max(now + wait.as_secs_f64() * 1000.0);
        Ok(Duration::from_secs_f64((l.blocked_until - now) / 1000.0))
    }

    async fn spend(
        &self,
        budget: &str,
        w: &Windows,
        day_cap: u64,
        month_cap: u64,
    ) -> Result<Spend, Unavailable> {
        let mut s = self.budgets.lock().expect("local traffic");
        let b = s.entry(budget.to_owned()).or_default();
        let overrides = b.overrides;
        let (day_cap, month_cap) = (overrides.day_cap(day_cap), overrides.month_cap(month_cap));
        let day = b.counts.get(&w.day).copied().unwrap_or(0);
        let month = b.counts.get(&w.month).copied().unwrap_or(0);
        if (day_cap > 0 && day >= day_cap) || (month_cap > 0 && month >= month_cap) {
            return Ok(Spend::Exhausted(Spent {
                day,
                month,
                overrides,
            }));
        }
        b.counts.insert(w.day.clone(), day + 1);
        b.counts.insert(w.month.clone(), month + 1);
        Ok(Spend::Taken(Spent {
            day: day + 1,
            month: month + 1,
            overrides,
        }))
    }

    async fn spent(&self, budget: &str, w: &Windows) -> Result<Spent, Unavailable> {
        let s = self.budgets.lock().expect("local traffic");
        let b = s.get(budget);
        let get = |k: &str| b.and_then(|b| b.counts.get(k).copied()).unwrap_or(0);
        Ok(Spent {
            day: get(&w.day),
            month: get(&w.month),
            overrides: b.map(|b| b.overrides).unwrap_or_default(),
        })
    }

    async fn change_caps(
        &self,
        budget: &str,
        day: CapChange,
        month: CapChange,
    ) -> Result<Overrides, Unavailable> {
        let mut s = self.budgets.lock().expect("local traffic");
        let o = &mut s.entry(budget.to_owned()).or_default().overrides;
        o.day = day.apply(o.day);
        o.month = month.apply(o.month);
        Ok(*o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn traffic(toml: &str) -> Traffic {
        let cfg = Config::from_toml(toml).unwrap();
        Traffic::new(
            &cfg.traffic,
            [ProviderName::Argos, ProviderName::Didit],
            None,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_calls_and_its_share_divides_it() {
        let t = traffic("[traffic.argos]\nrate = \"10/s\"");
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        for _ in 0..5 {
            let a = t
                .admit(ProviderName::Argos, deadline, &stop, None)
                .await
                .unwrap();
            t.finish(ProviderName::Argos, a, Ok(()), Duration::from_millis(1))
                .await;
        }
        // The first at once, then one every 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        // Didit has no limit.
        let before = Instant::now();
        for _ in 0..5 {
            t.admit(ProviderName::Didit, deadline, &stop, None)
                .await
                .unwrap();
        }
        assert_eq!(before.elapsed(), Duration::ZERO);
        // Four replicas share it: 2.5/s each.
        t.set_replicas(4);
        let before = Instant::now();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_too_far_away_parks_without_waiting() {
        let t = traffic("[traffic]\nmax_wait = \"500ms\"\n[traffic.argos]\nrate = \"1/s\"");
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        let before = Instant::now();
        let Err(Failed::Park { reason, .. }) =
            t.admit(ProviderName::Argos, deadline, &stop, None).await
        else {
            panic!("expected to park")
        };
        assert!(reason.contains("traffic limit"), "{reason}");
        assert_eq!(before.elapsed(), Duration::ZERO, "refused at once");
        assert!(
            t.metrics
                .encode()
                .contains(r#"liveness_vendor_throttled_total{vendor="argos",reason="rate"} 1"#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_the_vendor_back() {
        let t = traffic("[traffic.argos]\nrate = \"100/s\"");
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let a = t
            .admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        let e = VendorError::transient("slow down", Some(Duration::from_secs(3))).with_status(429);
        t.finish(ProviderName::Argos, a, Err(&e), Duration::from_millis(5))
            .await;
        let before = Instant::now();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_parks_and_is_remembered() {
        let cfg = Config::from_toml(
            "[coordination]\nredis_url = \"redis://x\"\n[traffic.argos]\ndaily_budget = 2",
        )
        .unwrap();
        let t = Traffic::new(
            &cfg.traffic,
            [ProviderName::Argos],
            Some(Arc::new(LocalTraffic::default())),
            Arc::new(Metrics::new()),
        );
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(t.early_park(ProviderName::Argos).is_none());
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        let Err(Failed::Park { reason, .. }) =
            t.admit(ProviderName::Argos, deadline, &stop, None).await
        else {
            panic!("expected to park")
        };
        assert!(
            reason.contains("daily spend budget is spent (2 of"),
            "{reason}"
        );
        assert!(t.early_park(ProviderName::Argos).is_some());
        let m = t.metrics.encode();
        assert!(
            m.contains(r#"liveness_vendor_budget_remaining{vendor="argos",window="day"} 0"#),
            "{m}"
        );
        assert!(
            m.contains(r#"liveness_vendor_budget_exhausted{vendor="argos"} 1"#),
            "{m}"
        );
    }

    fn taken(s: Spend) -> Option<Spent> {
        match s {
            Spend::Taken(s) => Some(s),
            Spend::Exhausted(_) => None,
        }
    }

    #[tokio::test]
    async fn the_local_store_applies_overrides_until_cleared() {
        let s = LocalTraffic::default();
        let w = Windows::now();
        // Configured: 2 a day, no monthly cap.
        for _ in 0..2 {
            assert!(taken(s.spend("argos", &w, 2, 0).await.unwrap()).is_some());
        }
        let Spend::Exhausted(spent) = s.spend("argos", &w, 2, 0).await.unwrap() else {
            panic!("spent")
        };
        assert_eq!((spent.day, spent.overrides), (2, Overrides::default()));
        // Raised to 3: one more, then spent again; the override is reported.
        let o = s
            .change_caps("argos", CapChange::Set(3), CapChange::Keep)
            .await
            .unwrap();
        assert_eq!((o.day, o.month), (Some(3), None));
        let spent = taken(s.spend("argos", &w, 2, 0).await.unwrap()).expect("raised");
        assert_eq!((spent.day, spent.overrides.day), (3, Some(3)));
        assert!(taken(s.spend("argos", &w, 2, 0).await.unwrap()).is_none());
        // 0: no cap, not "clear".
        s.change_caps("argos", CapChange::Set(0), CapChange::Keep)
            .await
            .unwrap();
        let spent = taken(s.spend("argos", &w, 2, 0).await.unwrap()).expect("no cap");
        assert_eq!((spent.day, spent.overrides.day), (4, Some(0)));
        // A monthly override binds too, and keeps the daily one.
        let o = s
            .change_caps("argos", CapChange::Keep, CapChange::Set(4))
            .await
            .unwrap();
        assert_eq!((o.day, o.month), (Some(0), Some(4)));
        let Spend::Exhausted(spent) = s.spend("argos", &w, 2, 0).await.unwrap() else {
            panic!("the month is spent")
        };
        assert_eq!(spent.month, 4);
        // Cleared: the configured caps apply again.
        s.change_caps("argos", CapChange::Clear, CapChange::Clear)
            .await
            .unwrap();
        let Spend::Exhausted(spent) = s.spend("argos", &w, 2, 0).await.unwrap() else {
            panic!("the configured daily cap")
        };
        assert!(spent.overrides.is_empty());
        let read = s.spent("argos", &w).await.unwrap();
        assert_eq!(
            (read.day, read.month, read.overrides),
            (4, 4, Overrides::default())
        );
        // Another budget name is another budget.
        assert_eq!(s.spent("shadow-argos", &w).await.unwrap(), Spent::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_raised_at_run_time_is_noticed_within_the_recheck() {
        let cfg = Config::from_toml(
            "[coordination]\nredis_url = \"redis://x\"\n[traffic.argos]\ndaily_budget = 2",
        )
        .unwrap();
        let store = Arc::new(LocalTraffic::default());
        let t = Traffic::new(
            &cfg.traffic,
            [ProviderName::Argos],
            Some(store.clone()),
            Arc::new(Metrics::new()),
        );
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        let argos = ProviderName::Argos;
        t.admit(argos, deadline, &stop, None).await.unwrap();
        t.admit(argos, deadline, &stop, None).await.unwrap();
        let Err(Failed::Park { reason, .. }) = t.admit(argos, deadline, &stop, None).await else {
            panic!("expected to park")
        };
        assert!(
            reason.contains("(2 of 2 submissions on ")
                && reason.contains("traffic.argos.daily_budget);")
                && reason.contains("`liveness-worker budget set argos --daily N`")
                && reason.contains("or a change of traffic.argos.daily_budget and a restart"),
            "{reason}"
        );
        assert!(t.early_park(argos).is_some());
        // Raised: not asked before the recheck is due...
        store
            .change_caps("argos", CapChange::Set(4), CapChange::Keep)
            .await
            .unwrap();
        tokio::time::advance(BUDGET_RECHECK - Duration::from_millis(10)).await;
        assert!(t.early_park(argos).is_some());
        // ...then one job goes on to ask, the others still park meanwhile.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(t.early_park(argos).is_none());
        assert!(t.early_park(argos).is_some());
        t.admit(argos, deadline, &stop, None).await.unwrap();
        // Known raised: nobody parks early any more.
        assert!(t.early_park(argos).is_none());
        let m = t.metrics.encode();
        assert!(
            m.contains(r#"liveness_vendor_budget_remaining{vendor="argos",window="day"} 1"#)
                && m.contains(r#"liveness_vendor_budget_exhausted{vendor="argos"} 0"#),
            "{m}"
        );
        let mut states = [VendorState {
            vendor: "argos".into(),
            in_flight: 0,
            paused: false,
            paused_reason: None,
            breaker_open: false,
            latency_ms_p50: None,
            latency_ms_p95: None,
            limit: None,
            budget: None,
        }];
        t.describe(&mut states);
        let b = states[0].budget.clone().unwrap();
        assert_eq!(
            (&b["daily_budget"], &b["daily_override"], &b["day_used"]),
            (
                &serde_json::json!(4),
                &serde_json::json!(true),
                &serde_json::json!(3)
            ),
            "{b}"
        );
        t.admit(argos, deadline, &stop, None).await.unwrap();
        // Spent again under the override: the message says how it came.
        let Err(Failed::Park { reason, .. }) = t.admit(argos, deadline, &stop, None).await else {
            panic!("expected to park")
        };
        assert!(
            reason.contains("(4 of 4 submissions on ")
                && reason.contains("a run-time override; traffic.argos.daily_budget is 2")
                && reason.contains("`liveness-worker budget clear argos --daily`"),
            "{reason}"
        );
        // Lowered below the use: the next job that asks parks.
        store
            .change_caps("argos", CapChange::Clear, CapChange::Keep)
            .await
            .unwrap();
        tokio::time::advance(BUDGET_RECHECK).await;
        assert!(t.early_park(argos).is_none());
        assert!(t.admit(argos, deadline, &stop, None).await.is_err());
        assert!(t.early_park(argos).is_some());
    }

    /// A store whose spends answer from a script, in the order given: as
    /// concurrent spends may come back in any order.
    struct Scripted {
        local: LocalTraffic,
        spends: Mutex<Vec<Spend>>,
    }

    #[async_trait]
    impl TrafficStore for Scripted {
        async fn reserve(
            &self,
            vendor: ProviderName,
            rate: RateSpec,
            max_wait: Duration,
        ) -> Result<Reservation, Unavailable> {
            self.local.reserve(vendor, rate, max_wait).await
        }
        async fn block(
            &self,
            vendor: ProviderName,
            wait: Duration,
        ) -> Result<Duration, Unavailable> {
            self.local.block(vendor, wait).await
        }
        async fn spend(&self, _: &str, _: &Windows, _: u64, _: u64) -> Result<Spend, Unavailable> {
            Ok(self.spends.lock().unwrap().remove(0))
        }
        async fn spent(&self, budget: &str, w: &Windows) -> Result<Spent, Unavailable> {
            self.local.spent(budget, w).await
        }
        async fn change_caps(
            &self,
            budget: &str,
            day: CapChange,
            month: CapChange,
        ) -> Result<Overrides, Unavailable> {
            self.local.change_caps(budget, day, month).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spend_that_comes_back_late_does_not_turn_the_counts_back() {
        let cfg = Config::from_toml(
            "[coordination]\nredis_url = \"redis://x\"\n[traffic.argos]\ndaily_budget = 20",
        )
        .unwrap();
        let at = |day: u64| Spent {
            day,
            month: day,
            overrides: Overrides::default(),
        };
        let store = Scripted {
            local: LocalTraffic::default(),
            // The 8th unit's answer first, then the 7th's; then the cap,
            // reached before a raise, after the raise was seen.
            spends: Mutex::new(vec![
                Spend::Taken(at(8)),
                Spend::Taken(at(7)),
                Spend::Exhausted(at(7)),
            ]),
        };
        let t = Traffic::new(
            &cfg.traffic,
            [ProviderName::Argos],
            Some(Arc::new(store)),
            Arc::new(Metrics::new()),
        );
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        // That job itself parks on its answer, but the replica keeps what it knew.
        assert!(
            t.admit(ProviderName::Argos, deadline, &stop, None)
                .await
                .is_err()
        );
        assert!(t.early_park(ProviderName::Argos).is_none());
        let m = t.metrics.encode();
        assert!(
            m.contains(r#"liveness_vendor_budget_remaining{vendor="argos",window="day"} 12"#)
                && m.contains(r#"liveness_vendor_budget_exhausted{vendor="argos"} 0"#),
            "{m}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_admit_takes_a_token_due_now_or_nothing() {
        let t = traffic(
            "[traffic.argos]\nrate = \"1/s\"\n[traffic.didit]\nconcurrency_max = 1\nconcurrency_initial = 1",
        );
        assert_eq!(t.wait_vendors(), [ProviderName::Argos, ProviderName::Didit]);
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // A token due now: taken, and the first attempt uses it without
        // taking another.
        let Now::Admitted(ticket) = t.try_admit(ProviderName::Argos).await.unwrap() else {
            panic!("a token is due now")
        };
        let a = t
            .admit(ProviderName::Argos, deadline, &stop, Some(ticket))
            .await
            .unwrap();
        t.finish(ProviderName::Argos, a, Ok(()), Duration::from_millis(1))
            .await;
        // The next token is a second away: it would wait, nothing taken...
        assert!(matches!(
            t.try_admit(ProviderName::Argos).await.unwrap(),
            Now::WouldWait
        ));
        // ...so a waiting job still gets the next one, a second after the first.
        let before = Instant::now();
        t.admit(ProviderName::Argos, deadline, &stop, None)
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::from_secs(1));
        // Adaptive concurrency: the one slot busy, it would wait; freed, admitted.
        let Now::Admitted(busy) = t.try_admit(ProviderName::Didit).await.unwrap() else {
            panic!("a free slot")
        };
        assert!(matches!(
            t.try_admit(ProviderName::Didit).await.unwrap(),
            Now::WouldWait
        ));
        drop(busy);
        assert!(matches!(
            t.try_admit(ProviderName::Didit).await.unwrap(),
            Now::Admitted(_)
        ));
        // A vendor without a rate or concurrency limit never waits.
        assert!(!t.has_wait_queue(ProviderName::Intellicheck));
    }
}
