//! Job lookup: what `show` prints (stored outcome, audit records, pending
//! record, superseded outcomes), plus where the job is now: its claim in
//! the coordination store, its dead letters and poison copies (a scan of
//! those queues), and from all of it one line: in progress, dead, waiting
//! for a callback, done, parked on the ladder, or not seen by any replica.
//!
//! The jobs queue and the ladder queues are not scanned: reading a busy
//! queue would hold jobs back from the replicas. A job no replica has
//! touched yet is reported as such ("queued or unknown").

use super::App;
use super::dead::job_for_display;
use super::view::Chrome;
use super::web::{Params, page, refuse};
use crate::broker::{self, Names};
use crate::coordination::Coordination;
use crate::domain::job::JobId;
use crate::ops::peek;
use crate::ops::replay::read_dead_letter;
use crate::ops::show::{JobRecords, job_records};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Serialize, Default)]
struct JobState {
    summary: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct DeadCopy {
    class: String,
    message: String,
    failed_at: Option<String>,
    attempts: Option<u64>,
}

#[derive(Debug, Serialize, Default)]
struct Lookup {
    job_id: String,
    searched: bool,
    state: JobState,
    /// What the results store knows (None without a store, or on error).
    records: Option<Value>,
    store: Option<String>,
    dead: Vec<DeadCopy>,
    poison: Vec<String>,
    claim: Option<String>,
    error: Option<String>,
    /// Set when a queue scan stopped at console.scan_limit.
    scan_note: Option<String>,
    metadata_shown: bool,
}

/// The one-line answer, from everything found.
fn state(l: &Lookup, r: Option<&JobRecords>) -> JobState {
    let s = |summary: &str, detail: String| JobState {
        summary: summary.into(),
        detail,
    };
    if let Some(owner) = &l.claim {
        return s(
            "in progress",
            format!("a replica holds the job's claim now ({owner}): it is being verified"),
        );
    }
    if let Some(d) = l.dead.last() {
        return s(
            "dead",
            format!(
                "in the dead-letter queue as {} since {}: {}",
                d.class,
                d.failed_at.as_deref().unwrap_or("?"),
                d.message
            ),
        );
    }
    if !l.poison.is_empty() {
        return s(
            "poison",
            "in the poison queue: the broker gave up delivering it (see docs/operations.md)".into(),
        );
    }
    if let Some(p) = r.and_then(|r| r.pending.as_ref()) {
        return s(
            "waiting for the vendor",
            format!(
                "submitted to {} at {}: waiting for its callback",
                p.record["provider"].as_str().unwrap_or("the vendor"),
                p.record["submitted_at"].as_str().unwrap_or("?")
            ),
        );
    }
    if let Some(o) = r.and_then(|r| r.outcome.as_ref()) {
        let res = &o.record["result"];
        return s(
            "done",
            format!(
                "verdict {} from {}, completed {}",
                res["verdict"].as_str().unwrap_or("?"),
                res["provider"].as_str().unwrap_or("?"),
                res["completed_at"].as_str().unwrap_or("?")
            ),
        );
    }
    if let Some(last) = r.and_then(|r| r.attempt_logs.last()) {
        let disposition = last.record["disposition"].as_str().unwrap_or("");
        let at = last.record["attempts"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|a| a["started_at"].as_str())
            .unwrap_or("?");
        if disposition.starts_with("retry") {
            return s(
                "parked",
                format!(
                    "last seen {at}: {disposition} (parked on the delay ladder, it comes back by itself)"
                ),
            );
        }
        return s("seen", format!("last seen {at}: {disposition}"));
    }
    s(
        "queued or unknown",
        "no replica has recorded anything for this job: it is still in the jobs queue, or was never sent (the jobs queue is not searched)".into(),
    )
}

pub async fn lookup(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let params = Params::query(q.as_deref());
    let chrome = Chrome {
        title: "Job lookup",
        nav: "jobs",
        csrf: app.auth.csrf_token(),
        read_only: app.cfg.console.read_only,
        refresh: None,
    };
    let Some(raw) = params.get("job_id") else {
        return page(app.views.render("job.html", &chrome, &Lookup::default()));
    };
    let job_id = match JobId::parse(raw) {
        Ok(j) => j,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, &format!("not a valid job_id: {e}"));
        }
    };
    let show_metadata = params.get("metadata") == Some("1");
    let mut l = Lookup {
        job_id: job_id.to_string(),
        searched: true,
        metadata_shown: show_metadata,
        ..Default::default()
    };
    let mut errors = Vec::new();
    let records = if app.cfg.results.bucket.is_empty() {
        errors.push("the results store is disabled (results.bucket is empty)".to_owned());
        None
    } else {
        let (_, store) = match crate::ops::results_store(&app.cfg).await {
            Ok(s) => s,
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("{e:#}")),
        };
        match job_records(&store, &job_id).await {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(format!("the results store: {e:#}"));
                None
            }
        }
    };
    if app.cfg.coordination.enabled() {
        let holder = async {
            Coordination::connect(&app.cfg.coordination, &app.cfg.broker.prefix)?
                .claim_holder(&job_id)
                .await
                .map_err(anyhow::Error::from)
        };
        match holder.await {
            Ok(h) => l.claim = h,
            Err(e) => errors.push(format!("the coordination store: {e:#}")),
        }
    }
    // The dead-letter and poison queues, unless a replay or purge has them.
    match app.dead_queue.try_lock() {
        Err(_) => errors.push(
            "the dead-letter queue was not searched: a replay or purge from this console is running"
                .into(),
        ),
        Ok(_queue) => match broker::connect(&app.cfg.broker).await {
            Err(e) => errors.push(format!("the broker: {e:#}")),
            Ok(conn) => {
                let names = Names::new(&app.cfg.broker);
                let limit = app.cfg.console.scan_limit;
                let id = job_id.as_str();
                let mut dead = Vec::new();
                let scanned = peek(&conn, &names.dead_queue, limit, |d| {
                    if let Some(dl) = read_dead_letter(&d.data)
                        && dl.job_id.as_deref() == Some(id)
                    {
                        let v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                        dead.push(DeadCopy {
                            class: dl.failure.class.clone(),
                            message: v["failure"]["message"].as_str().unwrap_or("").to_owned(),
                            failed_at: dl.failed_at.clone(),
                            attempts: v["attempts"].as_u64(),
                        });
                    }
                })
                .await;
                let mut poison = Vec::new();
                let poisoned = peek(&conn, &names.poison_queue, limit, |d| {
                    let v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                    if v["job_id"].as_str() == Some(id) {
                        poison.push(d.properties.timestamp().map_or("?".into(), |t| t.to_string()));
                    }
                })
                .await;
                let _ = conn.close(200, "console".into()).await;
                let mut partial = Vec::new();
                for (queue, r) in [(&names.dead_queue, scanned), (&names.poison_queue, poisoned)] {
                    match r {
                        Ok(p) if !p.complete => partial.push(format!(
                            "{queue}: the first {} of {} messages",
                            p.scanned, p.depth
                        )),
                        Ok(_) => {}
                        // A queue not declared yet holds nothing.
                        Err(e) if format!("{e:#}").contains("does not exist") => {}
                        Err(e) => errors.push(format!("{queue}: {e:#}")),
                    }
                }
                if !partial.is_empty() {
                    l.scan_note = Some(format!(
                        "searched only {} (console.scan_limit)",
                        partial.join(", ")
                    ));
                }
                l.dead = dead;
                l.poison = poison;
            }
        },
    }
    l.state = state(&l, records.as_ref());
    if let Some(r) = &records {
        l.store = Some(r.store.clone());
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        // The stored job's metadata, like a dead letter's, only on request.
        hide_metadata(&mut v, show_metadata);
        l.records = Some(v);
    }
    if !errors.is_empty() {
        l.error = Some(errors.join("; "));
    }
    page(app.views.render("job.html", &chrome, &l))
}

/// Every `metadata` object in the records, replaced by a count unless shown.
fn hide_metadata(v: &mut Value, show: bool) {
    if show {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "metadata" && !x.is_null() {
                    let (text, _) =
                        job_for_display(&serde_json::json!({"metadata": x.clone()}), false);
                    let folded: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    *x = folded["metadata"].clone();
                } else {
                    hide_metadata(x, show);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| hide_metadata(x, show)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_folded_everywhere() {
        let mut v = serde_json::json!({"outcome": {"record": {"result": {"metadata": {"a": 1, "b": 2}}}},
            "attempt_logs": [{"record": {"job": {"metadata": {"c": 3}}}}]});
        hide_metadata(&mut v, false);
        let text = v.to_string();
        assert!(
            !text.contains("\"a\":1") && !text.contains("\"c\":3"),
            "{text}"
        );
        assert!(
            text.contains("2 keys hidden") && text.contains("1 keys hidden"),
            "{text}"
        );
    }

    #[test]
    fn the_state_line_prefers_what_is_happening_now() {
        let mut l = Lookup::default();
        assert_eq!(state(&l, None).summary, "queued or unknown");
        l.dead.push(DeadCopy {
            class: "internal".into(),
            message: "m".into(),
            failed_at: None,
            attempts: None,
        });
        assert_eq!(state(&l, None).summary, "dead");
        l.claim = Some("w1".into());
        assert_eq!(state(&l, None).summary, "in progress");
    }
}
