//! `show JOB_ID`: everything the results store knows about one job, read
//! only: its stored outcome, the audit records of its deliveries without an
//! outcome, its pending callback-mode record, and the outcomes `reverify`
//! set aside. Records are shown as stored (`--json`) or summed up in text.

use super::{EXIT_UNKNOWN, Exit, results_store};
use crate::config::Config;
use crate::domain::job::JobId;
use crate::store::S3Outcomes;
use crate::store::outcomes::{attempts_prefix, outcome_key, pending_key, superseded_prefix};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The job to show.
    pub job_id: String,
    /// Print JSON (shape in docs/operations.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One record of the results store, with where it lives.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub key: String,
    pub record: Value,
}

/// What the results store knows about a job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobRecords {
    pub job_id: String,
    /// `s3://<results.bucket>/<results.prefix>`.
    pub store: String,
    /// `liveness.outcome.v1`, as stored.
    pub outcome: Option<Record>,
    /// `liveness.attempts.v1` records, in attempt order.
    pub attempt_logs: Vec<Record>,
    /// `liveness.pending.v1`, while the job waits for a vendor callback.
    pub pending: Option<Record>,
    /// `liveness.superseded.v1` records written by `reverify`, oldest first.
    pub superseded: Vec<Record>,
}

impl JobRecords {
    /// Nothing at all is known about the job.
    pub fn is_empty(&self) -> bool {
        self.outcome.is_none()
            && self.attempt_logs.is_empty()
            && self.pending.is_none()
            && self.superseded.is_empty()
    }
}

async fn record(store: &S3Outcomes, key: String) -> anyhow::Result<Option<Record>> {
    let Some(body) = store.get_raw(&key).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&body).map_err(|e| {
        anyhow::anyhow!(
            "s3://{}/{key} is not a JSON record ({e}); it needs a look by hand",
            store.bucket()
        )
    })?;
    Ok(Some(Record { key, record }))
}

async fn records(store: &S3Outcomes, prefix: &str) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for key in store.list_keys(prefix).await? {
        out.extend(record(store, key).await?);
    }
    Ok(out)
}

/// Reads every record of `job_id`.
pub async fn job_records(store: &S3Outcomes, job_id: &JobId) -> anyhow::Result<JobRecords> {
    let prefix = store.prefix();
    Ok(JobRecords {
        job_id: job_id.to_string(),
        store: format!("s3://{}/{prefix}", store.bucket()),
        outcome: record(store, outcome_key(prefix, job_id)).await?,
        attempt_logs: records(store, &attempts_prefix(prefix, job_id)).await?,
        pending: record(store, pending_key(prefix, job_id)).await?,
        superseded: records(store, &superseded_prefix(prefix, job_id)).await?,
    })
}

/// The `show` command.
pub async fn run(cfg: &Config, a: ShowArgs) -> anyhow::Result<()> {
    let job_id = JobId::parse(&a.job_id).map_err(|e| anyhow::anyhow!("not a valid job_id: {e}"))?;
    let (_, store) = results_store(cfg).await?;
    let r = job_records(&store, &job_id).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serializes"));
    } else {
        print!("{}", text(&r));
    }
    if r.is_empty() {
        eprintln!(
            "show: nothing is known about job {job_id} in {} (no outcome, audit record, pending or superseded record)",
            r.store
        );
        return Err(Exit(EXIT_UNKNOWN).into());
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn attempt_line(a: &Value) -> String {
    let mut line = format!(
        "#{} {} {} {} ms",
        s(&a["attempt"]),
        s(&a["provider"]),
        s(&a["outcome"]),
        s(&a["duration_ms"])
    );
    if !a["http_status"].is_null() {
        line += &format!(" http {}", s(&a["http_status"]));
    }
    if !a["vendor_code"].is_null() {
        line += &format!(" code {}", s(&a["vendor_code"]));
    }
    if !a["error"].is_null() {
        line += &format!(": {}", s(&a["error"]));
    }
    line + &format!(" (at {}, {})", s(&a["started_at"]), s(&a["worker"]))
}

/// The human summary.
pub fn text(r: &JobRecords) -> String {
    let mut out = format!("job {}  (results store {})\n", r.job_id, r.store);
    match &r.outcome {
        None => out += "outcome: none\n",
        Some(Record { key, record: o }) => {
            let res = &o["result"];
            out += &format!("outcome: {key}\n");
            out += &format!(
                "  verdict    {} ({} check, {}), score {}\n",
                s(&res["verdict"]),
                s(&res["check"]),
                s(&res["provider"]),
                s(&res["score"])
            );
            out += &format!(
                "  completed  {}, stored {}\n",
                s(&res["completed_at"]),
                s(&o["stored_at"])
            );
            out += &format!(
                "  image      {} sha256 {}",
                s(&res["image"]["uri"]),
                s(&o["image_sha256"])
            );
            if !o["back_image_sha256"].is_null() {
                out += &format!(", back sha256 {}", s(&o["back_image_sha256"]));
            }
            out += "\n";
            for sig in res["signals"].as_array().into_iter().flatten() {
                out += &format!(
                    "  signal     {} {} score {}\n",
                    s(&sig["name"]),
                    s(&sig["verdict"]),
                    s(&sig["score"])
                );
            }
            for reason in res["reasons"].as_array().into_iter().flatten() {
                out += &format!("  reason     {}\n", s(reason));
            }
            out += &format!("  vendor     {}\n", res["vendor"]);
            out += &format!("  attempts   {} in all\n", s(&res["attempts"]));
            for a in o["attempts"].as_array().into_iter().flatten() {
                out += &format!("    {}\n", attempt_line(a));
            }
        }
    }
    out += &format!("audit records: {}\n", r.attempt_logs.len());
    for Record { key, record } in &r.attempt_logs {
        out += &format!("  {key}: {}\n", s(&record["disposition"]));
        for a in record["attempts"].as_array().into_iter().flatten() {
            out += &format!("    {}\n", attempt_line(a));
        }
    }
    match &r.pending {
        None => out += "pending: none\n",
        Some(Record { key, record: p }) => {
            out += &format!(
                "pending: {key}: submission {} to {} at {}, vendor {}\n",
                s(&p["submission"]),
                s(&p["provider"]),
                s(&p["submitted_at"]),
                p["vendor"]
            );
        }
    }
    out += &format!("superseded outcomes: {}\n", r.superseded.len());
    for Record { key, record } in &r.superseded {
        out += &format!(
            "  {key}: at {} by {}: {} (was {})\n",
            s(&record["superseded_at"]),
            s(&record["operator"]),
            s(&record["reason"]),
            s(&record["outcome"]["result"]["verdict"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_an_unknown_and_a_known_job() {
        let mut r = JobRecords {
            job_id: "j1".into(),
            store: "s3://b/p/".into(),
            outcome: None,
            attempt_logs: vec![],
            pending: None,
            superseded: vec![],
        };
        assert!(r.is_empty());
        assert!(text(&r).contains("outcome: none"));
        r.outcome = Some(Record {
            key: "p/outcomes/j1.json".into(),
            record: serde_json::json!({"image_sha256": "ab", "stored_at": "t1",
                "result": {"verdict": "live", "check": "face", "provider": "argos", "score": 0.9,
                    "completed_at": "t0", "image": {"uri": "s3://i/k"}, "attempts": 1,
                    "signals": [], "reasons": [], "vendor": {}},
                "attempts": [{"attempt": 1, "provider": "argos", "outcome": "verdict",
                    "duration_ms": 12, "started_at": "t", "worker": "w"}]}),
        });
        assert!(!r.is_empty());
        let t = text(&r);
        assert!(
            t.contains("verdict    live (face check, argos), score 0.9"),
            "{t}"
        );
        assert!(t.contains("#1 argos verdict 12 ms (at t, w)"), "{t}");
    }
}
