//! `purge`: dead letters removed for good, archived to S3 first.
//!
//! The dead-letter queue is read with a [`HeldScan`] and the dead letters
//! are selected by replay's filters (dead letters without a job included:
//! purging needs none). Selected ones are collected, unacked, in batches;
//! each batch is written to one S3 object (JSON lines: every dead letter
//! with its routing key and AMQP properties and headers), the object's size
//! is read back (HEAD), and only then are the batch's dead letters acked.
//! Everything else, and a batch whose archive failed or that was not yet
//! archived when SIGINT/SIGTERM came, goes back to the queue at the end. A
//! purge killed at any point acks nothing that is not archived; at worst a
//! dead letter is both archived and still in the queue.

use super::{EXIT_INTERRUPTED, Exit, HeldScan, Progress, now_rfc3339};
use crate::broker::{self, Names};
use crate::config::Config;
use crate::store::S3Store;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::replay::{Filter, FilterArgs, Verdict, judge_dead_letter, listing, read_dead_letter};

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// The filters of `replay`; --class is required (`all` for every class).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Where the archives go: s3://bucket/prefix/ (default: the results
    /// bucket, under <results.prefix>dead-letter-archive/).
    #[arg(long)]
    pub archive: Option<String>,
    /// Dead letters per archive object.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Purge at most this many dead letters.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Dead letters taken per second at most (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// List what would be purged (JSON lines on stdout); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of one purge run.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    pub filter: Filter,
    /// (bucket, key prefix) of the archive objects.
    pub archive: (String, String),
    pub batch: usize,
    pub limit: Option<u64>,
    pub rate: f64,
    pub dry_run: bool,
    /// No progress output; a dry run's listing goes to the report's
    /// `preview` (the console).
    pub quiet: bool,
}

/// What a purge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    pub depth: u64,
    pub scanned: u64,
    pub matched: u64,
    /// Archived and acked: gone from the queue.
    pub purged: u64,
    /// Archived, but the ack failed: archived and still in the queue.
    pub archived_not_removed: u64,
    /// Selected, but not archived (archive failed, or interrupted): in place.
    pub not_archived: u64,
    pub no_match: u64,
    pub unreadable: u64,
    pub not_considered: u64,
    /// `s3://bucket/key` of every archive written.
    pub archives: Vec<String>,
    pub interrupted: bool,
    pub order_kept: bool,
    /// A quiet dry run's listing (at most [`PREVIEW_CAP`](super::PREVIEW_CAP)).
    pub preview: Vec<serde_json::Value>,
}

/// Where the archives go, from `--archive` or the results store.
pub fn archive_location(cfg: &Config, arg: Option<&str>) -> anyhow::Result<(String, String)> {
    match arg {
        Some(uri) => {
            let rest = uri
                .strip_prefix("s3://")
                .ok_or_else(|| anyhow::anyhow!("--archive must be s3://bucket/prefix/"))?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), "--archive names no bucket");
            let prefix = if prefix.is_empty() || prefix.ends_with('/') {
                prefix.to_owned()
            } else {
                format!("{prefix}/")
            };
            Ok((bucket.to_owned(), prefix))
        }
        None => {
            anyhow::ensure!(
                !cfg.results.bucket.is_empty(),
                "the results store is disabled (results.bucket is empty): name an archive with --archive s3://bucket/prefix/"
            );
            Ok((
                cfg.results.bucket.clone(),
                format!("{}dead-letter-archive/", cfg.results.prefix),
            ))
        }
    }
}

/// One line of an archive: the dead letter as it was in the queue.
pub fn archive_line(d: &Delivery, archived_at: &str) -> String {
    let body: Option<&RawValue> = serde_json::from_slice(&d.data).ok();
    let line = serde_json::json!({
        "archived_at": archived_at,
        "exchange": d.exchange.as_str(),
        "routing_key": d.routing_key.as_str(),
        "properties": d.properties,
        "dead_letter": body,
    });
    line.to_string()
}

struct Batch {
    lines: Vec<u8>,
    held: Vec<(Acker, u64)>,
}

/// Runs a purge; `stop` ends it early, cleanly.
pub async fn purge(
    cfg: &Config,
    o: &PurgeOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<PurgeReport> {
    let names = Names::new(&cfg.broker);
    let s3 = S3Store::new(&cfg.s3).await;
    let conn = broker::connect(&cfg.broker).await?;
    let mut scan = HeldScan::open(&conn, &names.dead_queue).await?;
    let mut r = PurgeReport {
        depth: scan.depth().into(),
        ..Default::default()
    };
    let run_id = format!(
        "{}-{}",
        now_rfc3339().replace([':', '.'], ""),
        std::process::id()
    );
    let mut pace = (o.rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut progress = Progress::maybe_quiet(
        if o.dry_run { "scanning" } else { "purging" },
        Some(r.depth),
        o.quiet,
    );
    let mut batch = Batch {
        lines: Vec::new(),
        held: Vec::new(),
    };
    let result: anyhow::Result<()> = async {
        while !stop.load(Ordering::Relaxed) {
            let Some(d) = scan.next().await? else { break };
            r.scanned += 1;
            progress.inc(1);
            if o.limit.is_some_and(|l| r.matched >= l) || scan.is_arrival() {
                r.not_considered += 1;
                scan.hold(d.delivery_tag);
                continue;
            }
            let listing = match read_dead_letter(&d.data) {
                None => {
                    r.unreadable += 1;
                    None
                }
                Some(dl) => match judge_dead_letter(&dl, &o.filter) {
                    Verdict::Move | Verdict::NoJob => Some(listing(&dl)),
                    _ => {
                        r.no_match += 1;
                        None
                    }
                },
            };
            let Some(listing) = listing else {
                scan.hold(d.delivery_tag);
                continue;
            };
            r.matched += 1;
            if o.dry_run {
                if !o.quiet {
                    progress.println_stdout(&listing.to_string());
                } else if r.preview.len() < super::PREVIEW_CAP {
                    r.preview.push(listing);
                }
                scan.hold(d.delivery_tag);
                continue;
            }
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            batch
                .lines
                .extend_from_slice(archive_line(&d, &now_rfc3339()).as_bytes());
            batch.lines.push(b'\n');
            batch.held.push((d.acker, d.delivery_tag));
            if batch.held.len() >= o.batch.max(1) {
                flush(&s3, o, &run_id, &mut batch, &mut r, &progress, &mut scan).await?;
            }
        }
        // Interrupted: what is not archived yet stays in the queue.
        if !stop.load(Ordering::Relaxed) {
            flush(&s3, o, &run_id, &mut batch, &mut r, &progress, &mut scan).await?;
        }
        Ok(())
    }
    .await;
    for (_, tag) in batch.held.drain(..) {
        r.not_archived += 1;
        scan.hold(tag);
    }
    progress.finish();
    r.interrupted = stop.load(Ordering::Relaxed);
    r.order_kept = scan.release().await;
    let _ = conn.close(200, "purge done".into()).await;
    result?;
    Ok(r)
}

/// Writes the batch's archive, verifies it, then acks its dead letters. A
/// failed archive stops the purge (the batch stays in the queue).
async fn flush(
    s3: &S3Store,
    o: &PurgeOptions,
    run_id: &str,
    batch: &mut Batch,
    r: &mut PurgeReport,
    p: &Progress,
    scan: &mut HeldScan,
) -> anyhow::Result<()> {
    if batch.held.is_empty() {
        return Ok(());
    }
    let (bucket, prefix) = &o.archive;
    let key = format!("{prefix}{run_id}-{:05}.jsonl", r.archives.len() + 1);
    let body = std::mem::take(&mut batch.lines);
    let len = body.len() as u64;
    let written = async {
        s3.put(bucket, &key, body.into(), "application/x-ndjson")
            .await?;
        let size = s3.size_of(bucket, &key).await?;
        anyhow::ensure!(
            size == Some(len),
            "the archive reads back as {size:?} bytes, not {len}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = written {
        for (_, tag) in batch.held.drain(..) {
            r.not_archived += 1;
            scan.hold(tag);
        }
        anyhow::bail!("archiving to s3://{bucket}/{key} failed, nothing of it was removed: {e:#}");
    }
    r.archives.push(format!("s3://{bucket}/{key}"));
    p.println(&format!(
        "purge: {} dead letters archived to s3://{bucket}/{key}",
        batch.held.len()
    ));
    for (acker, _) in batch.held.drain(..) {
        match acker.ack(BasicAckOptions::default()).await {
            Ok(true) => r.purged += 1,
            // The channel is gone: the broker takes it back (archived twice
            // at worst, never lost).
            Ok(false) | Err(_) => r.archived_not_removed += 1,
        }
    }
    Ok(())
}

/// The `purge` command.
pub async fn run(cfg: &Config, a: PurgeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.filter.class.is_empty(),
        "purge needs --class (a class, a list, or `all`): it removes dead letters for good"
    );
    anyhow::ensure!(
        a.rate.is_finite() && a.rate >= 0.0,
        "--rate must be a number of dead letters per second, 0 for no limit"
    );
    let opts = PurgeOptions {
        filter: Filter::new(&a.filter, SystemTime::now()),
        archive: archive_location(cfg, a.archive.as_deref())?,
        batch: a.batch,
        limit: a.limit,
        rate: a.rate,
        dry_run: a.dry_run,
        quiet: false,
    };
    let r = purge(cfg, &opts, super::stop_on_signal()).await?;
    eprintln!(
        "purge: scanned {} of {} dead letters: {} matched",
        r.scanned, r.depth, r.matched
    );
    if a.dry_run {
        eprintln!("purge: dry run, nothing archived or removed");
    } else {
        eprintln!(
            "purge: {} archived and removed in {} archive objects, {} archived but still in the queue, {} not archived (left in place)",
            r.purged,
            r.archives.len(),
            r.archived_not_removed,
            r.not_archived
        );
    }
    eprintln!(
        "purge: left in place: {} not matching, {} unreadable, {} past --limit or newer than the purge",
        r.no_match, r.unreadable, r.not_considered
    );
    if r.interrupted {
        eprintln!("purge: interrupted; run it again to continue");
        return Err(Exit(EXIT_INTERRUPTED).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_locations() {
        let cfg = Config::from_toml("[results]\nbucket = \"res\"\nprefix = \"p/\"").unwrap();
        assert_eq!(
            archive_location(&cfg, None).unwrap(),
            ("res".into(), "p/dead-letter-archive/".into())
        );
        assert_eq!(
            archive_location(&cfg, Some("s3://arch/dl")).unwrap(),
            ("arch".into(), "dl/".into())
        );
        assert_eq!(
            archive_location(&cfg, Some("s3://arch")).unwrap(),
            ("arch".into(), String::new())
        );
        assert!(archive_location(&cfg, Some("arch/dl")).is_err());
    }
}
