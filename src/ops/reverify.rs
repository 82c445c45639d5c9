//! `reverify JOB_ID... --reason TEXT`: a deliberate second vendor call.
//!
//! For each job, under the job's claim in the coordination store (so no
//! worker works the job meanwhile; a job whose claim is held is skipped):
//! 1. its stored outcome is read, and the job to enqueue is rebuilt from it
//!    (or taken from `--job-file`) and validated with the worker's rules;
//! 2. the outcome is copied, as stored, into a `liveness.superseded.v1`
//!    record at `<results.prefix>outcomes-superseded/<job_id>/<time>.json`
//!    with the reason, the operator and the time, and the copy is verified
//!    (HEAD, its size);
//! 3. only then is the outcome deleted;
//! 4. the job is published to the jobs exchange (mandatory, confirmed),
//!    with `x-liveness-reverify-reason` and `x-liveness-reverified-at`;
//! 5. the claim is released: the worker takes the job and, finding no
//!    stored outcome, calls the vendor again.
//!
//! A step that fails stops that job there: before step 3 nothing changed
//! but perhaps an extra superseded record; after it, the superseded record
//! holds the job that was to be enqueued (it is also printed on stdout when
//! its publish was not confirmed), ready for `enqueue`.
//!
//! The outcome record does not hold the job as the producer sent it. The
//! rebuilt job has the job_id, the check, the image, the vendor that
//! answered and the metadata as stored; it has no `back_image` (its URI is
//! not stored: a job whose outcome has a back image needs `--job-file`) and
//! no `signals` (the default: all document signals).

use super::publish::ensure_exchange;
use super::validate::{Rules, validate_job};
use super::{EXIT_INVALID, EXIT_UNCONFIRMED, Exit, now_rfc3339, results_store};
use crate::broker::headers::{H_REVERIFIED_AT, H_REVERIFY_REASON};
use crate::broker::{self, Names, PublishError};
use crate::config::Config;
use crate::coordination::{Claim, Claims as _, Coordination};
use crate::domain::job::JobId;
use crate::store::outcomes::{outcome_key, superseded_prefix};
use crate::store::{S3Outcomes, S3Store, StoredOutcome};
use anyhow::Context as _;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub const SUPERSEDED_SCHEMA: &str = "liveness.superseded.v1";

#[derive(Debug, Clone, clap::Args)]
pub struct ReverifyArgs {
    /// The jobs to verify again.
    #[arg(required = true)]
    pub job_ids: Vec<String>,
    /// Why (recorded with the superseded outcome and on the job).
    #[arg(long, required = true)]
    pub reason: String,
    /// Who asks (recorded); default $USER.
    #[arg(long)]
    pub operator: Option<String>,
    /// The original jobs, as JSON lines: a job found here (by job_id) is
    /// enqueued as written instead of being rebuilt from its outcome.
    #[arg(long)]
    pub job_file: Option<PathBuf>,
    /// Show what would be done (JSON lines on stdout); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The record an outcome is set aside into.
#[derive(Debug, Serialize)]
pub struct Superseded<'a> {
    pub schema: &'static str,
    pub job_id: &'a JobId,
    /// RFC 3339.
    pub superseded_at: &'a str,
    pub reason: &'a str,
    pub operator: &'a str,
    /// Where the outcome was.
    pub outcome_key: &'a str,
    /// The outcome, exactly as it was stored.
    pub outcome: &'a RawValue,
    /// The job enqueued for the second call.
    pub job: &'a RawValue,
}

/// The job to enqueue again, rebuilt from its stored outcome.
pub fn rebuild_job(o: &StoredOutcome) -> anyhow::Result<String> {
    anyhow::ensure!(
        o.back_image_sha256.is_none(),
        "its outcome covers a back image, whose URI the results store does not keep: give the original job with --job-file"
    );
    let r = &o.result;
    let mut job = serde_json::json!({
        "schema": crate::domain::job::JOB_SCHEMA,
        "job_id": o.job_id,
        "check": r.check,
        "image": r.image.uri,
        "provider": r.provider,
    });
    if let Some(m) = &r.metadata {
        let m: serde_json::Value =
            serde_json::from_str(m.get()).context("the stored metadata is not JSON")?;
        job["metadata"] = m;
    }
    Ok(job.to_string())
}

/// What happened to each job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReverifyReport {
    /// Archived, deleted, enqueued and confirmed.
    pub enqueued: u64,
    /// Left as they were (no outcome, claim held, job not valid...).
    pub skipped: u64,
    /// Outcome set aside but the enqueue not confirmed.
    pub unconfirmed: u64,
    /// Dry run: would be done.
    pub planned: u64,
}

fn job_file(path: &PathBuf) -> anyhow::Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut jobs = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
        let id = v["job_id"]
            .as_str()
            .with_context(|| format!("{} line {}: no string job_id", path.display(), n + 1))?;
        jobs.insert(id.to_owned(), line.to_owned());
    }
    Ok(jobs)
}

struct Ctx<'a> {
    cfg: &'a Config,
    s3: S3Store,
    store: S3Outcomes,
    claims: Option<Coordination>,
    rules: Rules,
    jobs: HashMap<String, String>,
    reason: String,
    operator: String,
    owner: String,
    dry_run: bool,
    ch: Option<lapin::Channel>,
    names: Names,
}

enum Done {
    Enqueued,
    Planned,
    Skipped(String),
    Unconfirmed(String, PublishError),
}

/// Runs `reverify`.
pub async fn reverify(cfg: &Config, a: &ReverifyArgs) -> anyhow::Result<ReverifyReport> {
    anyhow::ensure!(
        !a.reason.trim().is_empty(),
        "--reason must say why the vendor is asked again"
    );
    let ids = a
        .job_ids
        .iter()
        .map(|id| {
            JobId::parse(id).map_err(|e| anyhow::anyhow!("{id:?} is not a valid job_id: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (s3, store) = results_store(cfg).await?;
    let operator = a
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let names = Names::new(&cfg.broker);
    let conn = broker::connect(&cfg.broker).await?;
    let ch = if a.dry_run {
        None
    } else {
        ensure_exchange(&conn, &names.jobs_exchange).await?;
        Some(broker::confirm_channel(&conn).await?)
    };
    let claims = if cfg.coordination.enabled() {
        Some(Coordination::connect(
            &cfg.coordination,
            &cfg.broker.prefix,
        )?)
    } else {
        None
    };
    let cx = Ctx {
        cfg,
        s3,
        store,
        claims,
        rules: Rules::from_config(cfg),
        jobs: match &a.job_file {
            Some(p) => job_file(p)?,
            None => HashMap::new(),
        },
        reason: a.reason.clone(),
        owner: format!("reverify:{operator}:{}", std::process::id()),
        operator,
        dry_run: a.dry_run,
        ch,
        names,
    };
    let mut r = ReverifyReport::default();
    for id in &ids {
        match one(&cx, id).await? {
            Done::Enqueued => {
                r.enqueued += 1;
                eprintln!("job {id}: outcome set aside, job enqueued");
            }
            Done::Planned => r.planned += 1,
            Done::Skipped(why) => {
                r.skipped += 1;
                eprintln!("job {id}: skipped, nothing changed: {why}");
            }
            Done::Unconfirmed(job, e) => {
                r.unconfirmed += 1;
                eprintln!(
                    "job {id}: outcome set aside, but the job was not enqueued ({e}); enqueue the line printed on stdout"
                );
                println!("{job}");
            }
        }
    }
    let _ = conn.close(200, "reverify done".into()).await;
    Ok(r)
}

/// One job, under its claim.
async fn one(cx: &Ctx<'_>, id: &JobId) -> anyhow::Result<Done> {
    let lease = cx.cfg.coordination.claim_lease.max(Duration::from_secs(60));
    if let Some(c) = &cx.claims {
        match c.try_claim(id, &cx.owner, lease).await {
            Ok(Claim::Acquired) => {}
            Ok(Claim::HeldBy(h)) => {
                return Ok(Done::Skipped(format!(
                    "a worker holds its claim ({h}); try again when it is done"
                )));
            }
            Err(e) => return Ok(Done::Skipped(e.to_string())),
        }
    }
    let done = claimed(cx, id).await;
    if let Some(c) = &cx.claims
        && let Err(e) = c.release(id, &cx.owner).await
    {
        eprintln!("job {id}: the claim could not be released ({e}); it expires by itself");
    }
    done
}

async fn claimed(cx: &Ctx<'_>, id: &JobId) -> anyhow::Result<Done> {
    let key = outcome_key(cx.store.prefix(), id);
    let Some(raw) = cx.store.get_raw(&key).await? else {
        return Ok(Done::Skipped("no stored outcome".into()));
    };
    let outcome: StoredOutcome = match serde_json::from_slice(&raw) {
        Ok(o) => o,
        Err(e) => return Ok(Done::Skipped(format!("its outcome cannot be read ({e})"))),
    };
    let job = match cx.jobs.get(id.as_str()) {
        Some(j) => j.clone(),
        None => match rebuild_job(&outcome) {
            Ok(j) => j,
            Err(e) => return Ok(Done::Skipped(format!("{e:#}"))),
        },
    };
    if let Err(e) = validate_job(job.as_bytes(), &cx.rules) {
        return Ok(Done::Skipped(format!(
            "the job to enqueue is not valid: {e}"
        )));
    }
    let at = now_rfc3339();
    let archive = format!("{}{at}.json", superseded_prefix(cx.store.prefix(), id));
    let raw_outcome: Box<RawValue> = serde_json::from_slice(&raw).context("the outcome is JSON")?;
    let raw_job = RawValue::from_string(job.clone()).context("the job is JSON")?;
    let record = Superseded {
        schema: SUPERSEDED_SCHEMA,
        job_id: id,
        superseded_at: &at,
        reason: &cx.reason,
        operator: &cx.operator,
        outcome_key: &key,
        outcome: &raw_outcome,
        job: &raw_job,
    };
    let body = serde_json::to_vec(&record).expect("record serializes");
    if cx.dry_run {
        let line = serde_json::json!({
            "job_id": id,
            "superseded_key": archive,
            "verdict": outcome.result.verdict,
            "job": raw_job,
        });
        println!("{line}");
        return Ok(Done::Planned);
    }
    let bucket = cx.store.bucket();
    cx.s3
        .put(bucket, &archive, body.clone().into(), "application/json")
        .await?;
    let size = cx.s3.size_of(bucket, &archive).await?;
    anyhow::ensure!(
        size == Some(body.len() as u64),
        "job {id}: the superseded copy s3://{bucket}/{archive} reads back as {size:?} bytes, not {}: the outcome was left in place",
        body.len()
    );
    cx.s3
        .delete(bucket, &key)
        .await
        .with_context(|| format!("job {id}: the outcome was copied but not deleted"))?;
    let mut h = FieldTable::default();
    h.insert(
        H_REVERIFY_REASON.into(),
        AMQPValue::LongString(cx.reason.as_str().into()),
    );
    h.insert(H_REVERIFIED_AT.into(), AMQPValue::LongString(at.into()));
    let props = broker::json_props(Some(id.as_str()), None).with_headers(h);
    let ch = cx.ch.as_ref().expect("a channel unless dry run");
    match broker::publish_confirmed(
        ch,
        &cx.names.jobs_exchange,
        &cx.names.jobs_routing_key,
        job.as_bytes(),
        props,
        true,
        cx.cfg.broker.confirm_timeout,
    )
    .await
    {
        Ok(()) => Ok(Done::Enqueued),
        Err(e) => Ok(Done::Unconfirmed(job, e)),
    }
}

/// The `reverify` command.
pub async fn run(cfg: &Config, a: ReverifyArgs) -> anyhow::Result<()> {
    let r = reverify(cfg, &a).await?;
    if a.dry_run {
        eprintln!(
            "reverify: dry run, nothing changed: {} would be enqueued again, {} skipped",
            r.planned, r.skipped
        );
    } else {
        eprintln!(
            "reverify: {} enqueued again, {} skipped, {} set aside but not enqueued",
            r.enqueued, r.skipped, r.unconfirmed
        );
    }
    if r.unconfirmed > 0 {
        return Err(Exit(EXIT_UNCONFIRMED).into());
    }
    if r.skipped > 0 {
        return Err(Exit(EXIT_INVALID).into());
    }
    Ok(())
}
