//! `status`: depth and consumers of every queue (passive declares, which
//! change nothing), the replicas' heartbeats from the coordination store
//! (when one is configured), and the dead letters counted by failure class
//! and vendor. The dead letters are read with [`peek`] and all released
//! at the end: none is consumed, lost or reordered.

use super::replay::read_dead_letter;
use super::{peek, queue_info};
use crate::broker::{self, Names};
use crate::config::Config;
use crate::coordination::{Coordination, Heartbeat, Spent, TrafficStore as _, Windows};
use crate::domain::ProviderName;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (shape in docs/operations.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Read at most this many dead letters to count them (0: all). Counts
    /// from a partial scan are marked as a sample, and the dead letters read
    /// go back behind the unread ones (RabbitMQ requeues at the tail).
    #[arg(long, default_value_t = 0)]
    pub scan_limit: u32,
}

/// One queue's figures.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    /// jobs, retry, results, dead, poison, wait (a vendor's wait queue), or
    /// waiting (Argos callback mode).
    pub role: &'static str,
    pub name: String,
    /// For retry queues the ladder delay, e.g. "30s"; for waiting the callback wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    pub exists: bool,
    /// Messages ready for delivery (unacked ones are not counted).
    pub ready: u32,
    pub consumers: u32,
}

/// Dead letters by class and vendor.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct DeadLetterCounts {
    pub queue: String,
    /// Ready messages in the queue when the scan started.
    pub depth: u32,
    pub scanned: u32,
    /// False when the scan stopped at --scan-limit: the counts are a sample
    /// of the oldest dead letters.
    pub complete: bool,
    /// The dead letters are back in their original order (false after a
    /// partial scan, or when another client used the queue meanwhile).
    pub order_kept: bool,
    pub by_class: BTreeMap<String, u64>,
    /// failure.provider, else the job's provider, else "none".
    pub by_vendor: BTreeMap<String, u64>,
    pub by_class_and_vendor: Vec<ClassVendorCount>,
    /// Dead letters whose body was not a JSON object: `replay` cannot move them.
    pub without_job: u64,
    /// Messages that are not `liveness.dead_letter.v1`.
    pub unreadable: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClassVendorCount {
    pub class: String,
    pub vendor: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub queues: Vec<QueueStatus>,
    /// The replicas seen in the last few heartbeat intervals; None without a
    /// coordination store.
    pub fleet: Option<Fleet>,
    /// None when the dead-letter queue does not exist.
    pub dead_letters: Option<DeadLetterCounts>,
    /// Vendor spend budgets (docs/traffic.md), read from the coordination
    /// store; empty when no vendor has one.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub budgets: Vec<BudgetStatus>,
}

/// One vendor's spend budget in the current UTC day and month.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BudgetStatus {
    pub vendor: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub day_used: u64,
    /// The daily cap that applies (a run-time override, else the
    /// configured one); 0: no daily budget.
    pub daily_budget: u64,
    /// `traffic.<vendor>.daily_budget`.
    pub daily_budget_config: u64,
    /// Whether `daily_budget` is a run-time override (`budget set`).
    pub daily_override: bool,
    /// What is left today; None without a daily budget.
    pub day_left: Option<u64>,
    /// `YYYY-MM`, UTC.
    pub month: String,
    pub month_used: u64,
    /// 0: no monthly budget.
    pub monthly_budget: u64,
    pub monthly_budget_config: u64,
    pub monthly_override: bool,
    pub month_left: Option<u64>,
    /// Set when the coordination store could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BudgetStatus {
    /// Whether a window's cap is reached: the vendor's jobs park.
    pub fn spent(&self) -> bool {
        self.day_left == Some(0) || self.month_left == Some(0)
    }
}

/// One vendor's budget as the store has it now: its counts, its overrides
/// and the caps that apply.
pub async fn budget_of(
    cfg: &Config,
    store: &Coordination,
    v: ProviderName,
    w: &Windows,
) -> BudgetStatus {
    let spent = store.spent(v.as_str(), w).await;
    budget_status(cfg, v, w, spent.map_err(|e| e.to_string()))
}

/// A vendor's budget from what the store said (an error: the configured
/// caps, no counts, and the error).
fn budget_status(
    cfg: &Config,
    v: ProviderName,
    w: &Windows,
    spent: Result<Spent, String>,
) -> BudgetStatus {
    let c = cfg.traffic.vendor(v);
    let (spent, error) = match spent {
        Ok(s) => (s, None),
        Err(e) => (Spent::default(), Some(e)),
    };
    let o = spent.overrides;
    let (daily, monthly) = (o.day_cap(c.daily_budget), o.month_cap(c.monthly_budget));
    let left = |cap: u64, used: u64| (cap > 0).then(|| cap.saturating_sub(used));
    BudgetStatus {
        vendor: v.as_str().into(),
        day: w.day.clone(),
        day_used: spent.day,
        daily_budget: daily,
        daily_budget_config: c.daily_budget,
        daily_override: o.day.is_some(),
        day_left: left(daily, spent.day),
        month: w.month.clone(),
        month_used: spent.month,
        monthly_budget: monthly,
        monthly_budget_config: c.monthly_budget,
        monthly_override: o.month.is_some(),
        month_left: left(monthly, spent.month),
        error,
    }
}

/// The spend budgets of the vendors that have one, read from the store.
async fn budgets(cfg: &Config) -> Vec<BudgetStatus> {
    let vendors: Vec<ProviderName> = ProviderName::ALL
        .into_iter()
        .filter(|v| cfg.traffic.vendor(*v).has_budget())
        .collect();
    if vendors.is_empty() || !cfg.coordination.enabled() {
        return Vec::new();
    }
    let w = Windows::now();
    let mut out = Vec::new();
    match Coordination::connect(&cfg.coordination, &cfg.broker.prefix) {
        Ok(store) => {
            for v in vendors {
                out.push(budget_of(cfg, &store, v, &w).await);
            }
        }
        Err(e) => {
            for v in vendors {
                out.push(budget_status(cfg, v, &w, Err(format!("{e:#}"))));
            }
        }
    }
    out
}

/// The replicas, as their heartbeats in the coordination store say.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fleet {
    pub replicas: Vec<Heartbeat>,
    /// Set when the coordination store could not be read (the rest of the
    /// status is still shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The replicas' heartbeats; None without a coordination store.
pub async fn fleet(cfg: &Config) -> Option<Fleet> {
    if !cfg.coordination.enabled() {
        return None;
    }
    Some(
        match Coordination::connect(&cfg.coordination, &cfg.broker.prefix) {
            Ok(c) => fleet_of(&c).await,
            Err(e) => Fleet {
                replicas: Vec::new(),
                error: Some(format!("{e:#}")),
            },
        },
    )
}

/// The replicas' heartbeats through a client the caller keeps (the
/// console's sampler reads them every few seconds).
pub async fn fleet_of(c: &Coordination) -> Fleet {
    match c.heartbeats().await {
        Ok(replicas) => Fleet {
            replicas,
            error: None,
        },
        Err(e) => Fleet {
            replicas: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// Counts one dead letter (or an unreadable message) into `c`.
pub fn count_dead_letter(
    c: &mut DeadLetterCounts,
    pairs: &mut BTreeMap<(String, String), u64>,
    body: &[u8],
) {
    let Some(d) = read_dead_letter(body) else {
        c.unreadable += 1;
        return;
    };
    let vendor = d.vendor().unwrap_or_else(|| "none".into());
    if d.job_body().is_none() {
        c.without_job += 1;
    }
    *c.by_class.entry(d.failure.class.clone()).or_default() += 1;
    *c.by_vendor.entry(vendor.clone()).or_default() += 1;
    *pairs.entry((d.failure.class, vendor)).or_default() += 1;
}

/// Depth and consumers of every queue of the topology (passive declares).
pub async fn queues(cfg: &Config, conn: &lapin::Connection) -> anyhow::Result<Vec<QueueStatus>> {
    let n = Names::new(&cfg.broker);
    let mut wanted: Vec<(&'static str, String, Option<String>)> =
        vec![("jobs", n.jobs_queue.clone(), None)];
    for (q, d) in &n.retry_queues {
        let delay = humantime::format_duration(*d).to_string().replace(' ', "");
        wanted.push(("retry", q.clone(), Some(delay)));
    }
    if let Some(q) = &n.results_queue {
        wanted.push(("results", q.clone(), None));
    }
    wanted.push(("dead", n.dead_queue.clone(), None));
    wanted.push(("poison", n.poison_queue.clone(), None));
    // The jobs of a vendor at its rate or concurrency limit, waiting for it.
    for v in cfg.traffic.waiting_vendors() {
        wanted.push(("wait", n.wait_queue(v).to_owned(), None));
    }
    if cfg.providers.argos.mode == crate::config::ArgosMode::Callback {
        // Jobs the vendor works on asynchronously, each until its callback
        // or the wait runs out.
        let wait = humantime::format_duration(cfg.providers.argos.callback_wait)
            .to_string()
            .replace(' ', "");
        wanted.push(("waiting", n.callback_wait_queue.clone(), Some(wait)));
    }
    if cfg.shadow.enabled()
        && let Some(q) = &n.shadow_queue
    {
        wanted.push(("shadow", q.clone(), None));
    }
    let mut queues = Vec::new();
    for (role, name, delay) in wanted {
        let info = queue_info(conn, &name).await?;
        queues.push(QueueStatus {
            role,
            name,
            delay,
            exists: info.is_some(),
            ready: info.map_or(0, |i| i.0),
            consumers: info.map_or(0, |i| i.1),
        });
    }
    Ok(queues)
}

/// Reads the figures; changes nothing on the broker.
pub async fn status(cfg: &Config, scan_limit: u32) -> anyhow::Result<Status> {
    let n = Names::new(&cfg.broker);
    let conn = broker::connect(&cfg.broker).await?;
    let queues = queues(cfg, &conn).await?;
    let dead_exists = queues.iter().any(|q| q.role == "dead" && q.exists);
    let dead_letters = if dead_exists {
        let mut c = DeadLetterCounts {
            queue: n.dead_queue.clone(),
            ..Default::default()
        };
        let mut pairs = BTreeMap::new();
        let peeked = peek(&conn, &n.dead_queue, scan_limit, |d| {
            count_dead_letter(&mut c, &mut pairs, &d.data)
        })
        .await?;
        c.depth = peeked.depth;
        c.scanned = peeked.scanned;
        c.complete = peeked.complete;
        c.order_kept = peeked.order_kept;
        c.by_class_and_vendor = pairs
            .into_iter()
            .map(|((class, vendor), count)| ClassVendorCount {
                class,
                vendor,
                count,
            })
            .collect();
        Some(c)
    } else {
        None
    };
    let _ = conn.close(200, "status done".into()).await;
    Ok(Status {
        queues,
        fleet: fleet(cfg).await,
        dead_letters,
        budgets: budgets(cfg).await,
    })
}

/// The human report.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let width = s
        .queues
        .iter()
        .map(|q| q.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    out.push_str(&format!(
        "{:<width$}  {:<7}  {:>9}  {:>9}\n",
        "QUEUE", "ROLE", "READY", "CONSUMERS"
    ));
    for q in &s.queues {
        if q.exists {
            out.push_str(&format!(
                "{:<width$}  {:<7}  {:>9}  {:>9}\n",
                q.name, q.role, q.ready, q.consumers
            ));
        } else {
            out.push_str(&format!(
                "{:<width$}  {:<7}  {:>9}  {:>9}\n",
                q.name, q.role, "missing", "-"
            ));
        }
    }
    if let Some(f) = &s.fleet {
        render_fleet(&mut out, f);
    }
    render_budgets(&mut out, &s.budgets);
    match &s.dead_letters {
        None => out.push_str("\nNo dead-letter queue yet (the worker declares it at start).\n"),
        Some(c) if c.scanned == 0 => {
            out.push_str(&format!("\nNo dead letters in {}.\n", c.queue));
        }
        Some(c) => {
            let scope = if c.complete {
                format!("all {}", c.scanned)
            } else {
                format!(
                    "SAMPLE: the oldest {} of {}; --scan-limit 0 counts them all",
                    c.scanned, c.depth
                )
            };
            out.push_str(&format!("\nDead letters in {} ({scope}):\n", c.queue));
            let cw = c
                .by_class_and_vendor
                .iter()
                .map(|r| r.class.len())
                .max()
                .unwrap_or(5)
                .max(5);
            out.push_str(&format!(
                "{:<cw$}  {:<12}  {:>9}\n",
                "CLASS", "VENDOR", "COUNT"
            ));
            for r in &c.by_class_and_vendor {
                out.push_str(&format!(
                    "{:<cw$}  {:<12}  {:>9}\n",
                    r.class, r.vendor, r.count
                ));
            }
            if c.without_job > 0 {
                out.push_str(&format!(
                    "{} of them hold no job (a raw body): replay cannot move them.\n",
                    c.without_job
                ));
            }
            if !c.order_kept {
                out.push_str("The dead letters read may no longer be in their original order (a partial scan requeues them behind the rest).\n");
            }
            if c.unreadable > 0 {
                out.push_str(&format!(
                    "{} messages are not liveness.dead_letter.v1.\n",
                    c.unreadable
                ));
            }
        }
    }
    out
}

/// A budget window's cell: `812 / 20000 (19188)`, `84210 / -`, and for a
/// run-time override `812 / 30000 (override; config 20000), 29188 left`.
pub fn budget_cell(used: u64, cap: u64, left: Option<u64>, over: bool, config: u64) -> String {
    let cap_text = |c: u64| {
        if c > 0 { c.to_string() } else { "-".to_owned() }
    };
    let mut s = format!("{used} / {}", cap_text(cap));
    if over {
        s.push_str(&format!(" (override; config {})", cap_text(config)));
        if let Some(l) = left {
            s.push_str(&format!(", {l} left"));
        }
    } else if let Some(l) = left {
        s.push_str(&format!(" ({l})"));
    }
    s
}

fn render_budgets(out: &mut String, budgets: &[BudgetStatus]) {
    if budgets.is_empty() {
        return;
    }
    let cells: Vec<(String, String)> = budgets
        .iter()
        .map(|b| {
            (
                budget_cell(
                    b.day_used,
                    b.daily_budget,
                    b.day_left,
                    b.daily_override,
                    b.daily_budget_config,
                ),
                budget_cell(
                    b.month_used,
                    b.monthly_budget,
                    b.month_left,
                    b.monthly_override,
                    b.monthly_budget_config,
                ),
            )
        })
        .collect();
    let head = "USED / BUDGET (LEFT)";
    let dw = cells.iter().map(|c| c.0.len()).fold(head.len(), usize::max);
    let mw = cells.iter().map(|c| c.1.len()).fold(head.len(), usize::max);
    out.push_str(&format!(
        "\n{:<12}  {:<10}  {:>dw$}  {:<7}  {:>mw$}\n",
        "BUDGET", "DAY (UTC)", head, "MONTH", head
    ));
    for (b, (day, month)) in budgets.iter().zip(&cells) {
        if let Some(e) = &b.error {
            out.push_str(&format!(
                "{:<12}  cannot read the coordination store: {e}\n",
                b.vendor
            ));
            continue;
        }
        let mut line = format!(
            "{:<12}  {:<10}  {day:>dw$}  {:<7}  {month:>mw$}",
            b.vendor, b.day, b.month,
        );
        if b.spent() {
            line.push_str("  SPENT: its jobs are parked");
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// A vendor's traffic limits as a replica reported them, e.g.
/// ` limit 12 rate 50/s blocked 800ms`.
fn render_limit(limit: &serde_json::Value) -> String {
    let mut s = String::new();
    if let Some(c) = limit["concurrency_limit"].as_u64() {
        s.push_str(&format!(" limit {c}"));
    }
    if let Some(r) = limit["replica_rate_per_s"].as_f64() {
        let shared = limit["shared"].as_bool().unwrap_or(false);
        s.push_str(&format!(
            " rate {}/s{}",
            (r * 100.0).round() / 100.0,
            if shared { " (fleet)" } else { " (share)" }
        ));
    }
    if let Some(b) = limit["blocked_for_ms"].as_u64() {
        s.push_str(&format!(" blocked {b}ms"));
    }
    s
}

fn render_fleet(out: &mut String, f: &Fleet) {
    if let Some(e) = &f.error {
        out.push_str(&format!(
            "\nReplicas: cannot read the coordination store: {e}\n"
        ));
        return;
    }
    if f.replicas.is_empty() {
        out.push_str("\nReplicas: none has reported to the coordination store recently.\n");
        return;
    }
    let ww = f
        .replicas
        .iter()
        .map(|r| r.worker.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "\n{:<ww$}  {:<9}  {:>9}  {:<20}  VENDORS\n",
        "REPLICA", "STATE", "IN FLIGHT", "LAST SEEN"
    ));
    for r in &f.replicas {
        let state = if r.draining {
            "draining"
        } else if r.consuming {
            "consuming"
        } else {
            "connecting"
        };
        let vendors: Vec<String> = r
            .vendors
            .iter()
            .map(|v| {
                let mut s = format!("{} {}", v.vendor, v.in_flight);
                if v.paused {
                    s.push_str(" PAUSED");
                    if let Some(why) = &v.paused_reason {
                        s.push_str(&format!(" ({why})"));
                    }
                }
                if v.breaker_open {
                    s.push_str(" BREAKER OPEN");
                }
                if let Some(limit) = &v.limit {
                    s.push_str(&render_limit(limit));
                }
                if v.budget
                    .as_ref()
                    .is_some_and(|b| b["exhausted"].as_bool() == Some(true))
                {
                    s.push_str(" BUDGET SPENT");
                }
                s
            })
            .collect();
        let seen = r.at.get(..19).unwrap_or(&r.at);
        out.push_str(&format!(
            "{:<ww$}  {:<9}  {:>9}  {:<20}  {}\n",
            r.worker,
            state,
            format!("{}/{}", r.in_flight, r.concurrency),
            seen,
            vendors.join(", ")
        ));
    }
}

/// The `status` command.
pub async fn run(cfg: &Config, a: StatusArgs) -> anyhow::Result<()> {
    let s = status(cfg, a.scan_limit).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_vendor() {
        let mut c = DeadLetterCounts::default();
        let mut pairs = BTreeMap::new();
        let dl = |class: &str, provider: &str, job: &str| {
            format!(
                r#"{{"schema":"liveness.dead_letter.v1","job_id":null,"job":{job},"failure":{{"class":"{class}","message":"m","retryable":true{provider}}},"failed_at":"2026-11-23T00:00:00Z"}}"#
            )
        };
        for body in [
            dl("retries_exhausted", r#","provider":"argos""#, "{}"),
            dl("retries_exhausted", r#","provider":"argos""#, "{}"),
            dl("image_not_found", "", r#"{"provider":"didit"}"#),
            dl("invalid_job", "", "null"),
            "garbage".to_owned(),
        ] {
            count_dead_letter(&mut c, &mut pairs, body.as_bytes());
        }
        assert_eq!(c.by_class["retries_exhausted"], 2);
        assert_eq!(c.by_vendor["argos"], 2);
        assert_eq!(c.by_vendor["didit"], 1);
        assert_eq!(c.by_vendor["none"], 1);
        assert_eq!(c.without_job, 1);
        assert_eq!(c.unreadable, 1);
        assert_eq!(pairs[&("invalid_job".to_owned(), "none".to_owned())], 1);
    }

    #[test]
    fn sample_is_marked() {
        let s = Status {
            queues: vec![QueueStatus {
                role: "jobs",
                name: "liveness.jobs".into(),
                delay: None,
                exists: true,
                ready: 3,
                consumers: 1,
            }],
            fleet: Some(Fleet {
                replicas: vec![Heartbeat {
                    worker: "pod-a:7".into(),
                    at: "2026-12-07T10:00:00.123Z".into(),
                    consuming: true,
                    draining: false,
                    concurrency: 32,
                    in_flight: 5,
                    vendors: vec![crate::coordination::VendorState {
                        vendor: "argos".into(),
                        in_flight: 0,
                        paused: true,
                        paused_reason: Some("credentials refused".into()),
                        breaker_open: false,
                        latency_ms_p50: None,
                        latency_ms_p95: None,
                        limit: Some(
                            serde_json::json!({"concurrency_limit": 12, "replica_rate_per_s": 50.0, "shared": true}),
                        ),
                        budget: None,
                    }],
                    counters: Default::default(),
                }],
                error: None,
            }),
            dead_letters: Some(DeadLetterCounts {
                queue: "liveness.dead".into(),
                depth: 50,
                scanned: 10,
                complete: false,
                by_class_and_vendor: vec![ClassVendorCount {
                    class: "internal".into(),
                    vendor: "none".into(),
                    count: 10,
                }],
                ..Default::default()
            }),
            budgets: vec![
                BudgetStatus {
                    vendor: "didit".into(),
                    day: "2026-12-07".into(),
                    day_used: 1000,
                    daily_budget: 1000,
                    daily_budget_config: 1000,
                    daily_override: false,
                    day_left: Some(0),
                    month: "2026-12".into(),
                    month_used: 5000,
                    monthly_budget: 0,
                    monthly_budget_config: 0,
                    monthly_override: false,
                    month_left: None,
                    error: None,
                },
                BudgetStatus {
                    vendor: "argos".into(),
                    day: "2026-12-07".into(),
                    day_used: 812,
                    daily_budget: 20000,
                    daily_budget_config: 10000,
                    daily_override: true,
                    day_left: Some(19188),
                    month: "2026-12".into(),
                    month_used: 5000,
                    monthly_budget: 0,
                    monthly_budget_config: 90000,
                    monthly_override: true,
                    month_left: None,
                    error: None,
                },
            ],
        };
        let text = render(&s);
        assert!(
            text.contains("1000 / 1000 (0)") && text.contains("SPENT: its jobs are parked"),
            "{text}"
        );
        assert!(
            text.contains("812 / 20000 (override; config 10000), 19188 left")
                && text.contains("5000 / - (override; config 90000)"),
            "{text}"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("SPENT: its jobs are parked"))
                .count(),
            1,
            "{text}"
        );
        assert!(text.contains("SAMPLE: the oldest 10 of 50"), "{text}");
        assert!(text.contains("liveness.jobs"));
        assert!(text.contains("pod-a:7"), "{text}");
        assert!(text.contains("5/32"), "{text}");
        assert!(
            text.contains("argos 0 PAUSED (credentials refused)"),
            "{text}"
        );
        assert!(text.contains("2026-12-07T10:00:00 "), "{text}");
        assert!(text.contains("limit 12 rate 50/s (fleet)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["dead_letters"]["complete"], false);
        assert_eq!(json["queues"][0]["ready"], 3);
        assert_eq!(json["fleet"]["replicas"][0]["in_flight"], 5);
    }
}
