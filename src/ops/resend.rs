//! `resend`: stored results published again to the results exchange, for
//! consumers that lost them. The result is the one the results store holds
//! (`outcomes/<job_id>.json`, field `result`), serialized as the worker
//! serializes it, with the routing key `<check>.<verdict>` and the
//! properties the worker sets (JSON, persistent, `message_id` = job_id),
//! plus `x-liveness-resent: true` and `x-liveness-resent-at`. Publishes are
//! mandatory and confirmed; nothing is changed in the store.
//!
//! Jobs are named by `--job-id` (or a file of ids), or selected by the
//! completion time of their result: then every outcome under
//! `<results.prefix>outcomes/` is listed page by page and read once (one GET
//! per stored outcome; memory stays flat).

use super::publish::ensure_exchange;
use super::{EXIT_INVALID, EXIT_UNCONFIRMED, Exit, Progress, now_rfc3339, results_store};
use crate::broker::headers::{H_RESENT, H_RESENT_AT};
use crate::broker::publish::{ConfirmWindow, Settled};
use crate::broker::{self, Names};
use crate::config::Config;
use crate::domain::job::JobId;
use crate::store::outcomes::{outcome_key, outcomes_prefix};
use crate::store::{OutcomeStore as _, S3Outcomes, S3Store, StoredOutcome};
use anyhow::Context as _;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, Clone, clap::Args)]
pub struct ResendArgs {
    /// Jobs whose stored result to publish again (repeat or separate with commas).
    #[arg(long = "job-id", value_delimiter = ',')]
    pub job_ids: Vec<String>,
    /// A file of job_ids, one per line (`-` for stdin); blank lines skipped.
    #[arg(long)]
    pub ids_file: Option<PathBuf>,
    /// Every stored result completed at or after this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub completed_after: Option<SystemTime>,
    /// Every stored result completed at or before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub completed_before: Option<SystemTime>,
    /// List what would be published (JSON lines on stdout); publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a resend did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResendReport {
    /// Outcomes read (by id, or listed in the time range).
    pub read: u64,
    /// Selected: named, or completed in the range.
    pub selected: u64,
    pub published: u64,
    pub unconfirmed: u64,
    /// Named job_ids without a stored outcome.
    pub missing: u64,
    /// Named job_ids that are not job_ids, and records that cannot be read.
    pub invalid: u64,
}

/// The properties of a resent result: the worker's, plus the resend headers.
pub fn resend_props(job_id: &str, at: &str) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(H_RESENT.into(), AMQPValue::Boolean(true));
    h.insert(H_RESENT_AT.into(), AMQPValue::LongString(at.into()));
    broker::json_props(Some(job_id), None).with_headers(h)
}

fn completed_in(o: &StoredOutcome, after: Option<SystemTime>, before: Option<SystemTime>) -> bool {
    match humantime::parse_rfc3339_weak(&o.result.completed_at) {
        Ok(t) => after.is_none_or(|a| t >= a) && before.is_none_or(|b| t <= b),
        Err(_) => false,
    }
}

fn read_ids(a: &ResendArgs) -> anyhow::Result<Vec<String>> {
    let mut ids = a.job_ids.clone();
    if let Some(path) = &a.ids_file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        ids.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(ids)
}

struct Resender {
    window: ConfirmWindow<String>,
    exchange: String,
    dry_run: bool,
    r: ResendReport,
    progress: Progress,
}

impl Resender {
    async fn send(&mut self, o: &StoredOutcome) {
        self.r.selected += 1;
        let routing_key = o.result.routing_key();
        if self.dry_run {
            let line = serde_json::json!({
                "job_id": o.job_id,
                "routing_key": routing_key,
                "completed_at": o.result.completed_at,
            });
            self.progress.println_stdout(&line.to_string());
            return;
        }
        let body = serde_json::to_vec(&o.result).expect("result serializes");
        let props = resend_props(o.job_id.as_str(), &now_rfc3339());
        let settled = self
            .window
            .publish(
                format!("job {}", o.job_id),
                &self.exchange,
                &routing_key,
                &body,
                props,
            )
            .await;
        self.count(settled);
    }

    fn count(&mut self, settled: Vec<Settled<String>>) {
        for (what, outcome) in settled {
            match outcome {
                Ok(()) => {
                    self.r.published += 1;
                    self.progress.inc(1);
                }
                Err(e) => {
                    self.r.unconfirmed += 1;
                    self.progress
                        .println(&format!("{what}: not published: {e}"));
                }
            }
        }
    }
}

/// Runs a resend.
pub async fn resend(cfg: &Config, a: &ResendArgs) -> anyhow::Result<ResendReport> {
    let ids = read_ids(a)?;
    let by_time = a.completed_after.is_some() || a.completed_before.is_some();
    anyhow::ensure!(
        ids.is_empty() == by_time,
        "name the jobs (--job-id, --ids-file) or a completion time range (--completed-after, --completed-before), not both"
    );
    let (s3, store) = results_store(cfg).await?;
    let names = Names::new(&cfg.broker);
    let conn = broker::connect(&cfg.broker).await?;
    if !a.dry_run {
        ensure_exchange(&conn, &names.results_exchange).await?;
    }
    let mut rs = Resender {
        window: ConfirmWindow::new(
            broker::confirm_channel(&conn).await?,
            128,
            cfg.broker.confirm_timeout,
        ),
        exchange: names.results_exchange.clone(),
        dry_run: a.dry_run,
        r: ResendReport::default(),
        progress: Progress::new(
            "resend",
            (!by_time)
                .then_some(ids.len() as u64)
                .filter(|_| !a.dry_run),
        ),
    };
    let result = if by_time {
        by_range(&s3, &store, a, &mut rs).await
    } else {
        by_ids(&store, &ids, &mut rs).await
    };
    let settled = rs.window.drain().await;
    rs.count(settled);
    rs.progress.finish();
    let _ = conn.close(200, "resend done".into()).await;
    result?;
    Ok(rs.r)
}

async fn by_ids(store: &S3Outcomes, ids: &[String], rs: &mut Resender) -> anyhow::Result<()> {
    for id in ids {
        let job_id = match JobId::parse(id) {
            Ok(j) => j,
            Err(e) => {
                rs.r.invalid += 1;
                rs.progress.println(&format!("{id:?}: not a job_id: {e}"));
                continue;
            }
        };
        rs.r.read += 1;
        match store.load(&job_id).await {
            Ok(Some(o)) => rs.send(&o).await,
            Ok(None) => {
                rs.r.missing += 1;
                rs.progress.println(&format!(
                    "job {job_id}: no stored outcome, nothing to resend"
                ));
            }
            Err(crate::store::OutcomeError::Corrupt(e)) => {
                rs.r.invalid += 1;
                rs.progress.println(&format!("job {job_id}: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(
            !rs.window.is_broken(),
            "the publishing channel failed; run the command again"
        );
    }
    Ok(())
}

async fn by_range(
    s3: &S3Store,
    store: &S3Outcomes,
    a: &ResendArgs,
    rs: &mut Resender,
) -> anyhow::Result<()> {
    let prefix = outcomes_prefix(store.prefix());
    let mut token = None;
    loop {
        let (page, next) = s3.list_page(store.bucket(), &prefix, token).await?;
        for obj in page {
            let Some(id) = obj
                .key
                .strip_prefix(&prefix)
                .and_then(|k| k.strip_suffix(".json"))
                .and_then(|k| JobId::parse(k).ok())
                .filter(|j| outcome_key(store.prefix(), j) == obj.key)
            else {
                continue;
            };
            rs.r.read += 1;
            match store.load(&id).await {
                Ok(Some(o)) if completed_in(&o, a.completed_after, a.completed_before) => {
                    rs.send(&o).await
                }
                Ok(_) => {}
                Err(crate::store::OutcomeError::Corrupt(e)) => {
                    rs.r.invalid += 1;
                    rs.progress.println(&format!("job {id}: {e}"));
                }
                Err(e) => return Err(e.into()),
            }
            anyhow::ensure!(
                !rs.window.is_broken(),
                "the publishing channel failed; run the command again"
            );
        }
        match next {
            Some(n) => token = Some(n),
            None => return Ok(()),
        }
    }
}

/// The `resend` command.
pub async fn run(cfg: &Config, a: ResendArgs) -> anyhow::Result<()> {
    let r = resend(cfg, &a).await?;
    eprintln!(
        "resend: {} outcomes read, {} selected, {} without a stored outcome, {} invalid",
        r.read, r.selected, r.missing, r.invalid
    );
    if a.dry_run {
        eprintln!("resend: dry run, nothing published");
    } else {
        eprintln!(
            "resend: {} published and confirmed, {} not confirmed",
            r.published, r.unconfirmed
        );
    }
    if r.unconfirmed > 0 {
        return Err(Exit(EXIT_UNCONFIRMED).into());
    }
    if r.missing + r.invalid > 0 {
        return Err(Exit(EXIT_INVALID).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_headers_mark_the_copy() {
        let p = resend_props("j1", "2026-11-24T00:00:00.000Z");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "j1");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.delivery_mode(), &Some(2));
        let h = p.headers().clone().unwrap();
        assert_eq!(h.inner().get(H_RESENT), Some(&AMQPValue::Boolean(true)));
        assert!(h.inner().contains_key(H_RESENT_AT));
    }
}
