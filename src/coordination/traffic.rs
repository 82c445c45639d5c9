//! Vendor traffic shared by the fleet (docs/traffic.md): a rate limiter per
//! vendor (GCRA, one Lua script, on Redis's clock so replicas' clocks do
//! not matter), a "blocked until" per vendor that a 429 sets for everyone,
//! and spend counters per budget (a vendor's is named after it) and UTC day
//! and month.
//!
//! Keys, under the coordination prefix:
//! `traffic:<vendor>:tat` (the limiter's theoretical arrival time, ms),
//! `traffic:<vendor>:blocked` (ms since the epoch),
//! `budget:<name>:day:<YYYY-MM-DD>`, `budget:<name>:month:<YYYY-MM>`, and
//! `budget:<name>:caps`, a hash of the run-time overrides of the budget's
//! caps (fields `day`, `month`; no expiry: `liveness-worker budget set`
//! writes them, `budget clear` removes them).

use super::{Coordination, Unavailable};
use crate::domain::ProviderName;
use async_trait::async_trait;
use std::time::{Duration, SystemTime};

/// A rate as the limiter applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    /// Time between two requests.
    pub interval: Duration,
    /// Requests that may go back to back (>= 1).
    pub burst: u32,
}

impl RateSpec {
    /// How far ahead of its spacing a request may go: (burst - 1) intervals.
    pub fn tolerance(&self) -> Duration {
        self.interval * self.burst.saturating_sub(1)
    }
}

/// What the limiter gave a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The request may go after `wait` (its slot is taken).
    Granted { wait: Duration },
    /// The next slot is `wait` away, more than the caller would wait;
    /// nothing was taken.
    Refused { wait: Duration },
}

/// The GCRA with reservations, in milliseconds: the one rule the Redis
/// script and the in-process limiter both follow. `tat` is the theoretical
/// arrival time; a request may go at `max(now, tat - tolerance)`, not
/// before `blocked_until`, and moves `tat` one interval on. Returns the
/// decision and the new `tat` (unchanged when refused).
pub fn gcra(
    now: f64,
    tat: f64,
    blocked_until: f64,
    interval: f64,
    tolerance: f64,
    max_wait: f64,
) -> (bool, f64, f64) {
    // Idle: no credit is banked beyond the burst. After a block, no burst:
    // the first request goes at its end, the next one interval later.
    let tat = tat.max(now).max(blocked_until + tolerance);
    let at = now.max(tat - tolerance);
    let wait = at - now;
    if wait > max_wait {
        return (false, wait, tat);
    }
    (true, wait, tat + interval)
}

/// The GCRA of [`gcra`] in Redis, on the server's clock.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
local blocked = tonumber(redis.call('GET', KEYS[2]) or 0) or 0
tat = math.max(tat, now, blocked + tolerance)
local at = math.max(now, tat - tolerance)
local wait = at - now
if wait > max_wait then
  return {0, string.format('%.3f', wait)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now + tolerance) + 1000)
return {1, string.format('%.3f', wait)}";

/// Moves the vendor's "blocked until" to now + ARGV[1] ms unless it is
/// later already; returns how long it is blocked from now (ms).
const BLOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000)
  cur = untl
end
return cur - now";

/// Takes one unit of the day's and the month's budgets unless either is
/// spent (a cap of 0 is no cap); counts both windows either way. A cap
/// overridden in the hash KEYS[3] replaces the configured one (ARGV[1],
/// ARGV[2]), read in the same script. Returns {taken, day count, month
/// count, day override, month override}, -1 for an override not set.
const SPEND: &str = r"
local day = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
local month = tonumber(redis.call('GET', KEYS[2]) or 0) or 0
local over = redis.call('HMGET', KEYS[3], 'day', 'month')
local od = tonumber(over[1])
local om = tonumber(over[2])
local day_cap = od or tonumber(ARGV[1])
local month_cap = om or tonumber(ARGV[2])
if (day_cap > 0 and day >= day_cap) or (month_cap > 0 and month >= month_cap) then
  return {0, day, month, od or -1, om or -1}
end
day = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
month = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, day, month, od or -1, om or -1}";

/// Changes the overrides in the hash KEYS[1]: ARGV[1] for the day, ARGV[2]
/// for the month, each 'keep', 'clear' or a cap. Returns the overrides
/// after the change, -1 for one not set.
const CHANGE_CAPS: &str = r"
local fields = {'day', 'month'}
for i = 1, 2 do
  local a = ARGV[i]
  if a == 'clear' then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif a ~= 'keep' then
    redis.call('HSET', KEYS[1], fields[i], a)
  end
end
local over = redis.call('HMGET', KEYS[1], 'day', 'month')
return {tonumber(over[1]) or -1, tonumber(over[2]) or -1}";

/// The budget windows a moment falls in (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Until the day turns.
    pub day_left: Duration,
    /// Until the month turns.
    pub month_left: Duration,
}

impl Windows {
    pub fn at(t: SystemTime) -> Windows {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let days = (secs / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let next_month = days_from_civil(ny, nm, 1) as u64 * 86_400;
        Windows {
            day: format!("{y:04}-{m:02}-{d:02}"),
            month: format!("{y:04}-{m:02}"),
            day_left: Duration::from_secs(86_400 - secs % 86_400),
            month_left: Duration::from_secs(next_month.saturating_sub(secs)),
        }
    }

    pub fn now() -> Windows {
        Windows::at(SystemTime::now())
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (y, m, d).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Its inverse.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A budget's counts in the current windows, and the run-time overrides
/// of its caps the store held at that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub day: u64,
    pub month: u64,
    pub overrides: Overrides,
}

/// Run-time overrides of a budget's caps (`liveness-worker budget set`),
/// kept in the store until cleared. None: the configured cap applies;
/// Some(0): no cap, as 0 in the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub day: Option<u64>,
    pub month: Option<u64>,
}

impl Overrides {
    /// The daily cap that applies: the override, else `configured`.
    pub fn day_cap(self, configured: u64) -> u64 {
        self.day.unwrap_or(configured)
    }

    /// The monthly cap that applies: the override, else `configured`.
    pub fn month_cap(self, configured: u64) -> u64 {
        self.month.unwrap_or(configured)
    }

    pub fn is_empty(self) -> bool {
        self.day.is_none() && self.month.is_none()
    }

    fn from_raw(day: i64, month: i64) -> Overrides {
        Overrides {
            day: u64::try_from(day).ok(),
            month: u64::try_from(month).ok(),
        }
    }
}

/// What to do with one of a budget's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapChange {
    /// Leave it as it is.
    Keep,
    /// Override the configured cap with this one (0: no cap).
    Set(u64),
    /// Remove the override: the configured cap applies again.
    Clear,
}

impl CapChange {
    /// `self` applied to an override.
    pub fn apply(self, current: Option<u64>) -> Option<u64> {
        match self {
            CapChange::Keep => current,
            CapChange::Set(cap) => Some(cap),
            CapChange::Clear => None,
        }
    }

    fn arg(self) -> String {
        match self {
            CapChange::Keep => "keep".into(),
            CapChange::Set(cap) => cap.to_string(),
            CapChange::Clear => "clear".into(),
        }
    }
}

/// What spending one unit of a budget found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Taken; the counts after it.
    Taken(Spent),
    /// A cap is reached; nothing was taken.
    Exhausted(Spent),
}

/// Vendor traffic shared by every replica.
#[async_trait]
pub trait TrafficStore: Send + Sync + 'static {
    /// A slot for one request to `vendor` at `rate`, at most `max_wait` away.
    async fn reserve(
        &self,
        vendor: ProviderName,
        rate: RateSpec,
        max_wait: Duration,
    ) -> Result<Reservation, Unavailable>;
    /// Holds every request to `vendor` back for `wait` (unless already held
    /// longer); returns how long it is held from now.
    async fn block(&self, vendor: ProviderName, wait: Duration) -> Result<Duration, Unavailable>;
    /// Takes one unit of the budget named `budget` (a vendor's budget is
    /// named after the vendor) in `windows`, unless a cap (0: none) is
    /// reached. An override of a cap in the store (see
    /// [`change_caps`](Self::change_caps)) replaces `day_cap` or
    /// `month_cap`; the [`Spent`] returned says which overrides applied.
    async fn spend(
        &self,
        budget: &str,
        windows: &Windows,
        day_cap: u64,
        month_cap: u64,
    ) -> Result<Spend, Unavailable>;
    /// The budget's counts in `windows`, and its overrides.
    async fn spent(&self, budget: &str, windows: &Windows) -> Result<Spent, Unavailable>;
    /// Changes the run-time overrides of the budget's caps (kept until
    /// cleared, for every window); returns the overrides after the change.
    async fn change_caps(
        &self,
        budget: &str,
        day: CapChange,
        month: CapChange,
    ) -> Result<Overrides, Unavailable>;
}

impl Coordination {
    fn budget_keys(&self, budget: &str, w: &Windows) -> (String, String) {
        (
            self.key("budget", &format!("{budget}:day:{}", w.day)),
            self.key("budget", &format!("{budget}:month:{}", w.month)),
        )
    }

    fn caps_key(&self, budget: &str) -> String {
        self.key("budget", &format!("{budget}:caps"))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn parse_ms(s: &str) -> Duration {
    Duration::from_secs_f64(s.parse::<f64>().unwrap_or(0.0).max(0.0) / 1000.0)
}

#[async_trait]
impl TrafficStore for Coordination {
    async fn reserve(
        &self,
        vendor: ProviderName,
        rate: RateSpec,
        max_wait: Duration,
    ) -> Result<Reservation, Unavailable> {
        let mut c = self.conn.clone();
        let (granted, wait): (i64, String) = redis::Script::new(RESERVE)
            .key(self.key("traffic", &format!("{vendor}:tat")))
            .key(self.key("traffic", &format!("{vendor}:blocked")))
            .arg(ms(rate.interval))
            .arg(ms(rate.tolerance()))
            .arg(ms(max_wait))
            .invoke_async(&mut c)
            .await?;
        let wait = parse_ms(&wait);
        Ok(if granted == 1 {
            Reservation::Granted { wait }
        } else {
            Reservation::Refused { wait }
        })
    }

    async fn block(&self, vendor: ProviderName, wait: Duration) -> Result<Duration, Unavailable> {
        let mut c = self.conn.clone();
        let left: i64 = redis::Script::new(BLOCK)
            .key(self.key("traffic", &format!("{vendor}:blocked")))
            .arg(wait.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(Duration::from_millis(left.max(0) as u64))
    }

    async fn spend(
        &self,
        budget: &str,
        windows: &Windows,
        day_cap: u64,
        month_cap: u64,
    ) -> Result<Spend, Unavailable> {
        let (day, month) = self.budget_keys(budget, windows);
        let mut c = self.conn.clone();
        let (taken, d, m, od, om): (i64, u64, u64, i64, i64) = redis::Script::new(SPEND)
            .key(day)
            .key(month)
            .key(self.caps_key(budget))
            .arg(day_cap)
            .arg(month_cap)
            // Kept a day past their window, for `status` and late readers.
            .arg(windows.day_left.as_secs() + 86_400)
            .arg(windows.month_left.as_secs() + 86_400)
            .invoke_async(&mut c)
            .await?;
        let spent = Spent {
            day: d,
            month: m,
            overrides: Overrides::from_raw(od, om),
        };
        Ok(if taken == 1 {
            Spend::Taken(spent)
        } else {
            Spend::Exhausted(spent)
        })
    }

    async fn spent(&self, budget: &str, windows: &Windows) -> Result<Spent, Unavailable> {
        let (day, month) = self.budget_keys(budget, windows);
        let mut c = self.conn.clone();
        let (d, m, (od, om)): (Option<u64>, Option<u64>, (Option<u64>, Option<u64>)) =
            redis::pipe()
                .get(day)
                .get(month)
                .cmd("HMGET")
                .arg(self.caps_key(budget))
                .arg("day")
                .arg("month")
                .query_async(&mut c)
                .await?;
        Ok(Spent {
            day: d.unwrap_or(0),
            month: m.unwrap_or(0),
            overrides: Overrides { day: od, month: om },
        })
    }

    async fn change_caps(
        &self,
        budget: &str,
        day: CapChange,
        month: CapChange,
    ) -> Result<Overrides, Unavailable> {
        let mut c = self.conn.clone();
        let (od, om): (i64, i64) = redis::Script::new(CHANGE_CAPS)
            .key(self.caps_key(budget))
            .arg(day.arg())
            .arg(month.arg())
            .invoke_async(&mut c)
            .await?;
        Ok(Overrides::from_raw(od, om))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_spaces_requests_and_allows_the_burst() {
        // 10/s, burst 3: three at once, then one every 100 ms.
        let (interval, tol) = (100.0, 200.0);
        let mut tat = 0.0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (ok, wait, next) = gcra(1000.0, tat, 0.0, interval, tol, 1e9);
            assert!(ok);
            waits.push(wait);
            tat = next;
        }
        assert_eq!(waits, vec![0.0, 0.0, 0.0, 100.0, 200.0, 300.0]);
        // Refused beyond max_wait, and nothing taken.
        let (ok, wait, same) = gcra(1000.0, tat, 0.0, interval, tol, 350.0);
        assert!(!ok);
        assert_eq!((wait, same), (400.0, tat));
        // Idle for a long time: only the burst is banked.
        let (_, wait, _) = gcra(100_000.0, tat, 0.0, interval, tol, 1e9);
        assert_eq!(wait, 0.0);
    }

    #[test]
    fn gcra_honours_a_block_without_a_burst_after_it() {
        let (interval, tol) = (100.0, 200.0);
        let (ok, wait, tat) = gcra(1000.0, 0.0, 3000.0, interval, tol, 1e9);
        assert!(ok);
        assert_eq!(wait, 2000.0);
        let (_, wait2, _) = gcra(1000.0, tat, 3000.0, interval, tol, 1e9);
        assert_eq!(wait2, 2100.0, "one interval after the first, no burst");
    }

    #[test]
    fn windows_are_utc_days_and_months() {
        // 2026-12-31T23:00:00Z
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_758_000);
        let w = Windows::at(t);
        assert_eq!(w.day, "2026-12-31");
        assert_eq!(w.month, "2026-12");
        assert_eq!(w.day_left, Duration::from_secs(3600));
        assert_eq!(w.month_left, Duration::from_secs(3600));
        // 2024-02-29T00:00:00Z (leap day)
        let w = Windows::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800));
        assert_eq!(
            (w.day.as_str(), w.month.as_str()),
            ("2024-02-29", "2024-02")
        );
        assert_eq!(w.month_left, Duration::from_secs(86_400));
    }
}
