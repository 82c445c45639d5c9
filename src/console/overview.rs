//! The overview: the console reads the queues (passive declares) and the
//! replicas' heartbeats every `console.refresh`, keeps about a minute of
//! readings, and derives the rates from the oldest and the newest:
//! - a queue's net change per minute from its depths;
//! - results and dead letters per minute, jobs taken from the jobs queue and
//!   parked per ladder step, from the replicas' counters (replica by
//!   replica; a replica that restarted counts from zero);
//! - rates in and out of a queue from the two: into the jobs queue is what
//!   the replicas took plus the net change, into a ladder step what they
//!   parked there, into the results and dead-letter queues what they
//!   published there, into the callback-wait queue what they sent to wait;
//!   out is in minus the net change. The poison queue (filled by the broker
//!   itself) shows its net change only.

use super::App;
use super::view::Chrome;
use super::web::page as render_page;
use crate::broker::{self, Names};
use crate::coordination::Coordination;
use crate::coordination::Heartbeat;
use crate::ops::status::{Fleet, QueueStatus, fleet, fleet_of, queues};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One reading of the queues and the fleet.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    /// RFC 3339, for the page.
    pub when: String,
    pub queues: Result<Vec<QueueStatus>, String>,
    pub fleet: Option<Fleet>,
}

/// The last minute or so of readings.
#[derive(Default)]
pub struct Samples(Mutex<VecDeque<Reading>>);

/// How far back rates look.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Samples {
    pub fn push(&self, r: Reading) {
        let mut q = self.0.lock().expect("samples");
        q.push_back(r);
        // Keep the newest reading at least a window old, for the rates.
        while q.len() > 2 && q[1].at + RATE_WINDOW <= q.back().expect("non-empty").at {
            q.pop_front();
        }
    }

    /// (oldest within the window, newest).
    fn ends(&self) -> Option<(Reading, Reading)> {
        let q = self.0.lock().expect("samples");
        Some((q.front()?.clone(), q.back()?.clone()))
    }
}

/// Reads the queues and the fleet every `console.refresh` until `stop`.
pub async fn sample(app: Arc<App>, stop: CancellationToken) {
    let mut conn: Option<lapin::Connection> = None;
    // One Redis client for every reading (it reconnects by itself).
    let coordination = app
        .cfg
        .coordination
        .enabled()
        .then(|| Coordination::connect(&app.cfg.coordination, &app.cfg.broker.prefix));
    loop {
        let queues = async {
            if conn.as_ref().is_none_or(|c| !c.status().connected()) {
                conn = Some(broker::connect(&app.cfg.broker).await?);
            }
            queues(&app.cfg, conn.as_ref().expect("connected")).await
        }
        .await
        .map_err(|e| {
            conn = None;
            format!("{e:#}")
        });
        app.samples.push(Reading {
            at: Instant::now(),
            when: crate::ops::now_rfc3339(),
            queues,
            fleet: match &coordination {
                None => None,
                Some(Ok(c)) => Some(fleet_of(c).await),
                // An unusable URL: said on the page as `status` says it.
                Some(Err(_)) => fleet(&app.cfg).await,
            },
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(app.cfg.console.refresh) => {}
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueRow {
    #[serde(flatten)]
    pub queue: QueueStatus,
    /// Per minute; None until two readings a while apart exist.
    pub net_per_min: Option<f64>,
    pub in_per_min: Option<f64>,
    pub out_per_min: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VendorRow {
    pub vendor: String,
    pub in_flight: u32,
    /// The slowest replica's figures.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    /// "ok", "paused" or "breaker open".
    pub state: String,
    /// Why (a pause's reason; the replicas whose breaker is open).
    pub why: Option<String>,
    /// The traffic limits and spend budget replicas report, as they report them.
    pub limit: Option<String>,
    pub budget: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overview {
    /// When the newest reading was taken; None before the first.
    pub at: Option<String>,
    /// Seconds between the two readings the rates come from.
    pub window_s: Option<f64>,
    pub queues: Vec<QueueRow>,
    pub queue_error: Option<String>,
    pub coordination: bool,
    pub fleet_error: Option<String>,
    pub replicas: Vec<Heartbeat>,
    pub vendors: Vec<VendorRow>,
    /// Per minute, by routing key / failure class.
    pub results_per_min: BTreeMap<String, f64>,
    pub dead_letters_per_min: BTreeMap<String, f64>,
}

/// Each replica's counter growth between two readings, summed.
#[derive(Debug, Default, PartialEq)]
struct Growth {
    results: BTreeMap<String, u64>,
    dead_letters: BTreeMap<String, u64>,
    received: u64,
    parked: BTreeMap<u32, u64>,
    awaiting_callback: u64,
}

fn grew(now: u64, then: u64) -> u64 {
    // Fewer than before: the replica restarted and counts from zero.
    if now >= then { now - then } else { now }
}

fn growth(then: &[Heartbeat], now: &[Heartbeat]) -> Growth {
    let mut g = Growth::default();
    for hb in now {
        // A replica seen only now has no base to grow from.
        let Some(old) = then.iter().find(|o| o.worker == hb.worker) else {
            continue;
        };
        let (c, o) = (&hb.counters, &old.counters);
        for (k, v) in &c.results {
            *g.results.entry(k.clone()).or_default() +=
                grew(*v, o.results.get(k).copied().unwrap_or(0));
        }
        for (k, v) in &c.dead_letters {
            *g.dead_letters.entry(k.clone()).or_default() +=
                grew(*v, o.dead_letters.get(k).copied().unwrap_or(0));
        }
        for (k, v) in &c.parked {
            *g.parked.entry(*k).or_default() += grew(*v, o.parked.get(k).copied().unwrap_or(0));
        }
        g.received += grew(c.received, o.received);
        g.awaiting_callback += grew(c.awaiting_callback, o.awaiting_callback);
    }
    g
}

fn vendors(replicas: &[Heartbeat]) -> Vec<VendorRow> {
    let mut rows: BTreeMap<String, VendorRow> = BTreeMap::new();
    let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for hb in replicas {
        for v in &hb.vendors {
            let row = rows.entry(v.vendor.clone()).or_insert_with(|| VendorRow {
                vendor: v.vendor.clone(),
                in_flight: 0,
                latency_ms_p50: None,
                latency_ms_p95: None,
                state: "ok".into(),
                why: None,
                limit: None,
                budget: None,
            });
            row.in_flight += v.in_flight;
            row.latency_ms_p50 = max(row.latency_ms_p50, v.latency_ms_p50);
            row.latency_ms_p95 = max(row.latency_ms_p95, v.latency_ms_p95);
            if v.paused {
                row.state = "paused".into();
                row.why = v.paused_reason.clone().or(row.why.take());
            } else if v.breaker_open && row.state != "paused" {
                row.state = "breaker open".into();
                let w = format!("breaker open on {}", hb.worker);
                row.why = Some(match row.why.take() {
                    Some(before) => format!("{before}; {w}"),
                    None => w,
                });
            }
            if let Some(l) = v.limit.as_ref().filter(|l| !l.is_null()) {
                row.limit = Some(describe_limit(l));
            }
            if let Some(b) = v.budget.as_ref().filter(|b| !b.is_null()) {
                row.budget = Some(describe_budget(b));
            }
        }
    }
    rows.into_values().collect()
}

/// A number as the page shows it: at most one decimal.
fn num(v: &serde_json::Value) -> Option<String> {
    let f = v.as_f64()?;
    Some(if f.fract() == 0.0 {
        format!("{f:.0}")
    } else {
        format!("{f:.1}")
    })
}

/// A replica's traffic limits (the heartbeat's `limit`) in words; fields it
/// does not know are shown as they come.
fn describe_limit(l: &serde_json::Value) -> String {
    let Some(m) = l.as_object() else {
        return l.to_string();
    };
    let mut parts = Vec::new();
    if let Some(r) = m.get("rate_per_s").and_then(num) {
        let shared = if m.get("shared").and_then(|s| s.as_bool()) == Some(true) {
            "fleet-wide"
        } else {
            "shared by consumer count"
        };
        parts.push(format!("{r}/s {shared}"));
    }
    if let Some(c) = m.get("concurrency_limit").and_then(num) {
        parts.push(format!("{c} in flight (adaptive)"));
    }
    if let Some(w) = m.get("waiting").and_then(|w| w.as_u64()).filter(|w| *w > 0) {
        parts.push(format!("{w} waiting"));
    }
    if let Some(b) = m.get("blocked_for_ms").and_then(num) {
        parts.push(format!("blocked {b} ms (vendor asked to wait)"));
    }
    for (k, v) in m {
        let known = [
            "rate_per_s",
            "replica_rate_per_s",
            "shared",
            "concurrency_limit",
            "latency_ms",
            "waiting",
            "blocked_for_ms",
            "vendor",
        ];
        if !known.contains(&k.as_str()) && !v.is_null() {
            parts.push(format!("{k} {v}"));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A replica's spend budget (the heartbeat's `budget`): what is left of
/// the caps that apply (0: no cap), and which are run-time overrides.
fn describe_budget(b: &serde_json::Value) -> String {
    let left = |used: &str, cap: &str, over: &str, window: &str| {
        let cap = b.get(cap)?.as_u64().filter(|c| *c > 0)?;
        let used = b.get(used).and_then(|u| u.as_u64()).unwrap_or(0);
        let over = b.get(over).and_then(|o| o.as_bool()) == Some(true);
        Some(format!(
            "{} of {cap} left this {window}{}",
            cap.saturating_sub(used),
            if over { " (run-time override)" } else { "" }
        ))
    };
    let mut parts: Vec<String> = [
        left("day_used", "daily_budget", "daily_override", "day"),
        left("month_used", "monthly_budget", "monthly_override", "month"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if b.get("exhausted").and_then(|e| e.as_bool()) == Some(true) {
        parts.push(
            "spent: jobs park until the window turns or `liveness-worker budget set` raises it"
                .into(),
        );
    }
    if !parts.is_empty() {
        parts.join("; ")
    } else if b.get("daily_budget").is_some() || b.get("monthly_budget").is_some() {
        // Both caps overridden with 0.
        "no cap in force".into()
    } else {
        b.to_string()
    }
}

/// The overview from the readings so far.
pub fn overview(app: &App) -> Overview {
    let names = Names::new(&app.cfg.broker);
    let mut o = Overview {
        at: None,
        window_s: None,
        queues: Vec::new(),
        queue_error: None,
        coordination: app.cfg.coordination.enabled(),
        fleet_error: None,
        replicas: Vec::new(),
        vendors: Vec::new(),
        results_per_min: BTreeMap::new(),
        dead_letters_per_min: BTreeMap::new(),
    };
    let Some((then, now)) = app.samples.ends() else {
        return o;
    };
    o.at = Some(now.when.clone());
    let secs = now.at.duration_since(then.at).as_secs_f64();
    // Rates need readings at least a few seconds apart.
    let window = (secs >= 1.0).then_some(secs);
    o.window_s = window;
    let per_min = |n: f64| window.map(|w| n * 60.0 / w);
    let (replicas_then, replicas_now) = match (&then.fleet, &now.fleet) {
        (Some(t), Some(n)) => (t.replicas.as_slice(), n.replicas.as_slice()),
        _ => (&[][..], &[][..]),
    };
    let g = growth(replicas_then, replicas_now);
    if let Some(f) = &now.fleet {
        o.fleet_error = f.error.clone();
        o.replicas = f.replicas.clone();
        o.vendors = vendors(&f.replicas);
    }
    if window.is_some() && now.fleet.is_some() {
        o.results_per_min = g
            .results
            .iter()
            .map(|(k, v)| (k.clone(), per_min(*v as f64).unwrap_or(0.0)))
            .collect();
        o.dead_letters_per_min = g
            .dead_letters
            .iter()
            .map(|(k, v)| (k.clone(), per_min(*v as f64).unwrap_or(0.0)))
            .collect();
    }
    match &now.queues {
        Err(e) => o.queue_error = Some(e.clone()),
        Ok(qs) => {
            let before = then.queues.as_ref().ok();
            for q in qs {
                let old = before.and_then(|b| b.iter().find(|x| x.name == q.name));
                let net = old.and_then(|old| per_min(q.ready as f64 - old.ready as f64));
                // What went in, from the replicas' own counters.
                let went_in = match (now.fleet.is_some(), q.role) {
                    (false, _) => None,
                    (true, "jobs") => per_min(g.received as f64).zip(net).map(|(r, n)| r + n),
                    (true, "retry") => names
                        .retry_queues
                        .iter()
                        .position(|(n, _)| *n == q.name)
                        .and_then(|i| {
                            per_min(g.parked.get(&(i as u32)).copied().unwrap_or(0) as f64)
                        }),
                    (true, "results") => per_min(g.results.values().sum::<u64>() as f64),
                    (true, "dead") => per_min(g.dead_letters.values().sum::<u64>() as f64),
                    (true, "waiting") => per_min(g.awaiting_callback as f64),
                    _ => None,
                };
                let (in_per_min, out_per_min) = match (went_in, net) {
                    (Some(i), Some(n)) => (Some(i.max(0.0)), Some((i - n).max(0.0))),
                    _ => (None, None),
                };
                o.queues.push(QueueRow {
                    queue: q.clone(),
                    net_per_min: net,
                    in_per_min,
                    out_per_min,
                });
            }
        }
    }
    o
}

pub async fn page(State(app): State<Arc<App>>) -> Response {
    let o = overview(&app);
    let chrome = Chrome {
        title: "Overview",
        nav: "overview",
        csrf: app.auth.csrf_token(),
        read_only: app.cfg.console.read_only,
        refresh: Some(app.cfg.console.refresh.as_secs().max(1)),
    };
    render_page(app.views.render("overview.html", &chrome, &o))
}

pub async fn json(State(app): State<Arc<App>>) -> Response {
    Json(overview(&app)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::fleet::Counters;

    fn hb(worker: &str, received: u64, results: u64) -> Heartbeat {
        Heartbeat {
            worker: worker.into(),
            at: "t".into(),
            consuming: true,
            draining: false,
            concurrency: 32,
            in_flight: 0,
            vendors: vec![],
            counters: Counters {
                results: [("face.live".to_string(), results)].into(),
                dead_letters: BTreeMap::new(),
                received,
                parked: [(0, received / 10)].into(),
                awaiting_callback: received / 5,
            },
        }
    }

    #[test]
    fn growth_is_per_replica_and_survives_restarts() {
        let then = [hb("a", 100, 90), hb("b", 50, 50)];
        // a grew by 20; b restarted and counts 5 since; c is new.
        let now = [hb("a", 120, 100), hb("b", 5, 4), hb("c", 1000, 1000)];
        let g = growth(&then, &now);
        assert_eq!(g.received, 25);
        assert_eq!(g.results["face.live"], 14);
        assert_eq!(g.parked[&0], 2);
        assert_eq!(g.awaiting_callback, 4 + 1);
    }

    #[test]
    fn limits_and_budgets_in_words() {
        let l = serde_json::json!({"rate_per_s": 50.0, "replica_rate_per_s": 16.67, "shared": true,
            "concurrency_limit": 12.0, "latency_ms": 300.0, "waiting": 3, "blocked_for_ms": null,
            "vendor": "didit", "new_field": 1});
        assert_eq!(
            describe_limit(&l),
            "50/s fleet-wide, 12 in flight (adaptive), 3 waiting, new_field 1"
        );
        let b = serde_json::json!({"day": "2026-12-07", "day_used": 990, "daily_budget": 1000,
            "month_used": 5000, "monthly_budget": null, "exhausted": false});
        assert_eq!(describe_budget(&b), "10 of 1000 left this day");
        let spent = serde_json::json!({"day_used": 1000, "daily_budget": 1000, "exhausted": true});
        assert_eq!(
            describe_budget(&spent),
            "0 of 1000 left this day; spent: jobs park until the window turns or `liveness-worker budget set` raises it"
        );
        // As a replica reports it now: a raised daily cap, no monthly one.
        let raised = serde_json::json!({"day": "2026-12-07", "day_used": 1000, "daily_budget": 1500,
            "daily_override": true, "month": "2026-12", "month_used": 5000, "monthly_budget": 0,
            "monthly_override": false, "exhausted": false});
        assert_eq!(
            describe_budget(&raised),
            "500 of 1500 left this day (run-time override)"
        );
    }

    #[test]
    fn readings_keep_a_window_back() {
        let s = Samples::default();
        let t0 = Instant::now();
        for i in 0..30u64 {
            s.push(Reading {
                at: t0 + Duration::from_secs(5 * i),
                when: String::new(),
                queues: Ok(vec![]),
                fleet: None,
            });
        }
        let (a, b) = s.ends().unwrap();
        let span = b.at.duration_since(a.at);
        assert!(
            span >= RATE_WINDOW && span <= RATE_WINDOW + Duration::from_secs(5),
            "{span:?}"
        );
    }
}
