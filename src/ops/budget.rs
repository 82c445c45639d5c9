//! `budget`: the vendors' spend budgets (docs/traffic.md, "Spend budgets")
//! and run-time overrides of their caps. `budget set` raises (or lowers) a
//! vendor's daily or monthly cap for the whole fleet without a restart;
//! `budget clear` returns it to the configured one. An override lives in
//! the coordination store (`budget:<vendor>:caps`, no expiry) until
//! cleared: every replica's spend script reads it with the counts, and a
//! replica that parked the vendor's jobs on a spent budget asks again
//! within [`BUDGET_RECHECK`], so the parked jobs are served when they come
//! back from the ladder.

use super::status::{BudgetStatus, budget_cell, budget_of};
use crate::config::Config;
use crate::coordination::{CapChange, Coordination, TrafficStore as _, Windows};
use crate::domain::ProviderName;
use crate::pipeline::traffic::BUDGET_RECHECK;
use anyhow::{bail, ensure};

/// The largest cap `budget set` takes (0 is "no cap").
pub const MAX_CAP: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub action: BudgetAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BudgetAction {
    /// Each vendor's budget: the caps that apply (overrides marked), used and left today and this month.
    Show {
        /// Print JSON (the `budgets` of `status --json`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Override a vendor's daily and/or monthly cap, fleet-wide, from now until cleared (0: no cap).
    Set {
        /// The vendor: argos, intellicheck or didit.
        vendor: String,
        /// Submissions per UTC day (0: no daily cap).
        #[arg(long, value_name = "N")]
        daily: Option<u64>,
        /// Submissions per UTC month (0: no monthly cap).
        #[arg(long, value_name = "N")]
        monthly: Option<u64>,
    },
    /// Remove a vendor's override: the configured cap applies again.
    Clear {
        /// The vendor: argos, intellicheck or didit.
        vendor: String,
        /// The daily cap's override.
        #[arg(long)]
        daily: bool,
        /// The monthly cap's override.
        #[arg(long)]
        monthly: bool,
    },
}

fn vendor_arg(name: &str) -> anyhow::Result<ProviderName> {
    ProviderName::parse(name).ok_or_else(|| {
        let known: Vec<&str> = ProviderName::ALL.iter().map(|v| v.as_str()).collect();
        anyhow::anyhow!("unknown vendor {name:?}: give one of {}", known.join(", "))
    })
}

/// The coordination store the replicas count budgets in.
fn store(cfg: &Config) -> anyhow::Result<Coordination> {
    ensure!(
        cfg.coordination.enabled(),
        "coordination.redis_url is empty in this configuration: spend budgets and their overrides live in the coordination store; \
         run the command with the replicas' configuration (--config, --env-file or LIVENESS_COORDINATION__REDIS_URL)"
    );
    Coordination::connect(&cfg.coordination, &cfg.broker.prefix)
}

/// Changes `vendor`'s overrides and reads its budget back: the caps that
/// apply now and what was used so far.
pub async fn change(
    cfg: &Config,
    store: &Coordination,
    vendor: ProviderName,
    day: CapChange,
    month: CapChange,
) -> anyhow::Result<BudgetStatus> {
    store.change_caps(vendor.as_str(), day, month).await?;
    let b = budget_of(cfg, store, vendor, &Windows::now()).await;
    if let Some(e) = &b.error {
        bail!("the override is changed, but the budget could not be read back: {e}");
    }
    Ok(b)
}

/// Every vendor with a budget in the configuration or an override in the
/// store.
pub async fn show(cfg: &Config, store: &Coordination) -> anyhow::Result<Vec<BudgetStatus>> {
    let w = Windows::now();
    let mut out = Vec::new();
    for v in ProviderName::ALL {
        let b = budget_of(cfg, store, v, &w).await;
        if let Some(e) = &b.error {
            bail!("cannot read the coordination store: {e}");
        }
        if cfg.traffic.vendor(v).has_budget() || b.daily_override || b.monthly_override {
            out.push(b);
        }
    }
    Ok(out)
}

/// A vendor's budget in words, e.g.
/// ```text
/// argos, used / budget (left):
///   day 2026-12-07 (UTC):  5 / 20 (override; config 3), 15 left
///   month 2026-12 (UTC):   5 / -
/// ```
pub fn render(b: &BudgetStatus, cfg: &Config) -> String {
    let day = budget_cell(
        b.day_used,
        b.daily_budget,
        b.day_left,
        b.daily_override,
        b.daily_budget_config,
    );
    let month = budget_cell(
        b.month_used,
        b.monthly_budget,
        b.month_left,
        b.monthly_override,
        b.monthly_budget_config,
    );
    let spent = |left: Option<u64>| {
        if left == Some(0) {
            "  SPENT: its jobs are parked"
        } else {
            ""
        }
    };
    let mut s = format!(
        "{}, used / budget (left):\n  day {} (UTC):  {day}{}\n  month {} (UTC):   {month}{}\n",
        b.vendor,
        b.day,
        spent(b.day_left),
        b.month,
        spent(b.month_left)
    );
    let configured =
        ProviderName::parse(&b.vendor).is_some_and(|v| cfg.traffic.vendor(v).has_budget());
    if !configured && (b.daily_override || b.monthly_override) {
        s.push_str(&format!(
            "  {v} has no budget in this configuration: the replicas do not count its submissions and the override does not apply \
             (`liveness-worker budget clear {v} --daily --monthly` removes it)\n",
            v = b.vendor
        ));
    }
    if b.daily_budget > 0 && b.monthly_budget > 0 && b.daily_budget > b.monthly_budget {
        s.push_str(&format!(
            "  the daily cap ({}) is above the monthly one ({}): the month's binds first\n",
            b.daily_budget, b.monthly_budget
        ));
    }
    s
}

/// The `budget` command.
pub async fn run(cfg: &Config, a: BudgetArgs) -> anyhow::Result<()> {
    match a.action {
        BudgetAction::Show { json } => {
            let budgets = show(cfg, &store(cfg)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&budgets)?);
            } else if budgets.is_empty() {
                println!(
                    "No vendor has a spend budget (traffic.<vendor>.daily_budget, monthly_budget) or an override."
                );
            } else {
                for b in &budgets {
                    print!("{}", render(b, cfg));
                }
            }
        }
        BudgetAction::Set {
            vendor,
            daily,
            monthly,
        } => {
            let v = vendor_arg(&vendor)?;
            ensure!(
                daily.is_some() || monthly.is_some(),
                "nothing to set: give --daily N and/or --monthly N (submissions per UTC day or month; 0: no cap)"
            );
            for (flag, n) in [("--daily", daily), ("--monthly", monthly)] {
                if let Some(n) = n {
                    ensure!(
                        n <= MAX_CAP,
                        "{flag} {n} is more than {MAX_CAP}: for no cap, give 0"
                    );
                }
            }
            let store = store(cfg)?;
            ensure!(
                cfg.traffic.vendor(v).has_budget(),
                "{v} has no spend budget in this configuration (traffic.{v}.daily_budget and monthly_budget are 0): \
                 the replicas do not count its submissions, so an override would not apply. Give it a budget in the \
                 configuration and restart the replicas once; from then on `budget set` changes it at run time"
            );
            let change_of = |n: Option<u64>| n.map_or(CapChange::Keep, CapChange::Set);
            let b = change(cfg, &store, v, change_of(daily), change_of(monthly)).await?;
            print!("{}", render(&b, cfg));
            println!(
                "The override stays in the coordination store until `liveness-worker budget clear {v}`; \
                 while it is set, a change of that cap in the configuration has no effect."
            );
            if b.spent() {
                println!("{v}'s budget is still spent: its jobs stay parked.");
            } else {
                println!(
                    "Replicas that parked {v}'s jobs ask the store again within {}; the parked jobs are served as they come back from the retry ladder.",
                    humantime::format_duration(BUDGET_RECHECK)
                );
            }
        }
        BudgetAction::Clear {
            vendor,
            daily,
            monthly,
        } => {
            let v = vendor_arg(&vendor)?;
            ensure!(
                daily || monthly,
                "nothing to clear: give --daily and/or --monthly (that window's override goes; the configured cap applies again)"
            );
            let store = store(cfg)?;
            let change_of = |clear: bool| {
                if clear {
                    CapChange::Clear
                } else {
                    CapChange::Keep
                }
            };
            let b = change(cfg, &store, v, change_of(daily), change_of(monthly)).await?;
            print!("{}", render(&b, cfg));
            if b.spent() {
                println!(
                    "{v}'s budget is spent under the configured cap: replicas park its jobs from their next spend."
                );
            }
        }
    }
    Ok(())
}
