//! Dead letters on the console: groups by class, vendor and age; a group's
//! messages; and on a selection (a group's filter, narrowed to job_ids
//! checked by hand) a preview, a replay, an export and a purge.
//!
//! Views read the queue with [`peek`] (everything read is put back in
//! order); replay and purge are the commands' own functions
//! ([`replay::replay`], [`purge::purge`]) with the same guarantees, run in a
//! task of their own so that a closed tab does not cut one short.

use super::App;
use super::view::Chrome;
use super::web::{Params, Refused, form, page, refuse, writable};
use crate::broker::{self, Names};
use crate::domain::dead_letter::FailureClass;
use crate::ops::purge::{self, PurgeOptions, archive_line, archive_location};
use crate::ops::replay::{
    self, Filter, FilterArgs, ReplayOptions, Source, Verdict, judge_dead_letter, read_dead_letter,
};
use crate::ops::{Peeked, peek};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The age groups: (label, older_than, newer_than).
const AGES: [(&str, Option<&str>, Option<&str>); 3] = [
    ("under 1 hour", None, Some("1h")),
    ("1 hour to 1 day", Some("1h"), Some("1d")),
    ("over 1 day", Some("1d"), None),
];

fn age_of(failed_at: Option<&str>, now: SystemTime) -> usize {
    let age = failed_at
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO);
    if age < Duration::from_secs(3600) {
        0
    } else if age < Duration::from_secs(86_400) {
        1
    } else {
        2
    }
}

/// A selection: a group's filter, and job_ids checked by hand.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Selection {
    pub class: Option<String>,
    pub vendor: Option<String>,
    pub older_than: Option<String>,
    pub newer_than: Option<String>,
    pub job_ids: Vec<String>,
}

impl Selection {
    fn from_params(p: &Params) -> Result<Selection, String> {
        let s = Selection {
            class: p.get("class").map(str::to_owned),
            vendor: p.get("vendor").map(str::to_owned),
            older_than: p.get("older_than").map(str::to_owned),
            newer_than: p.get("newer_than").map(str::to_owned),
            job_ids: p.all("job_id"),
        };
        s.filter(SystemTime::now())?;
        Ok(s)
    }

    /// The commands' filter for this selection; refuses what they would.
    pub fn filter(&self, now: SystemTime) -> Result<Filter, String> {
        let class = match self.class.as_deref() {
            None | Some("all") => vec!["all".to_owned()],
            Some(c) if FailureClass::parse(c).is_some() => vec![c.to_owned()],
            Some(c) => return Err(format!("{c} is not a failure class")),
        };
        let provider = match self.vendor.as_deref() {
            None => vec![],
            Some(v @ ("argos" | "intellicheck" | "didit" | "none")) => vec![v.to_owned()],
            Some(v) => return Err(format!("{v} is not a vendor")),
        };
        let age = |v: &Option<String>, name: &str| {
            v.as_deref()
                .map(|t| {
                    humantime::parse_duration(t)
                        .map_err(|e| format!("{name}: {t} is not a duration ({e})"))
                })
                .transpose()
        };
        let args = FilterArgs {
            class,
            provider,
            older_than: age(&self.older_than, "older_than")?,
            newer_than: age(&self.newer_than, "newer_than")?,
            job_id: self.job_ids.clone(),
        };
        Ok(Filter::new(&args, now))
    }

    /// The selection as a query string (links back to the group).
    fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("class", &self.class),
            ("vendor", &self.vendor),
            ("older_than", &self.older_than),
            ("newer_than", &self.newer_than),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

/// Takes the dead-letter queue for a view or an operation (until the guard
/// drops), or says that a replay or purge has it.
async fn take_queue(app: &App) -> Result<tokio::sync::OwnedMutexGuard<()>, Response> {
    app.dead_queue.clone().try_lock_owned().map_err(|_| {
        refuse(
            StatusCode::CONFLICT,
            "a replay, purge or view from this console is using the dead-letter queue; try again when it ends",
        )
    })
}

fn chrome<'a>(app: &App, title: &'a str) -> Chrome<'a> {
    Chrome {
        title,
        nav: "dead",
        csrf: app.auth.csrf_token(),
        read_only: app.cfg.console.read_only,
        refresh: None,
    }
}

#[derive(Debug, Serialize)]
struct Group {
    class: String,
    vendor: String,
    age: &'static str,
    count: u64,
    retryable: bool,
    /// The operator message of the group's oldest dead letter.
    message: String,
    oldest: Option<String>,
    newest: Option<String>,
    /// Link to the group's messages.
    query: String,
}

#[derive(Debug, Serialize)]
struct Groups {
    queue: String,
    peeked: PeekView,
    groups: Vec<Group>,
    /// Dead letters that are not `liveness.dead_letter.v1`.
    unreadable: u64,
    poison: Option<u32>,
    poison_queue: String,
}

#[derive(Debug, Serialize)]
struct PeekView {
    depth: u32,
    scanned: u32,
    complete: bool,
    order_kept: bool,
}

impl From<Peeked> for PeekView {
    fn from(p: Peeked) -> Self {
        PeekView {
            depth: p.depth,
            scanned: p.scanned,
            complete: p.complete,
            order_kept: p.order_kept,
        }
    }
}

async fn connect(app: &App) -> Result<lapin::Connection, Response> {
    broker::connect(&app.cfg.broker).await.map_err(|e| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot reach the broker: {e:#}"),
        )
    })
}

fn failed(e: anyhow::Error) -> Response {
    refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("{e:#}"))
}

pub async fn groups(State(app): State<Arc<App>>) -> Response {
    let names = Names::new(&app.cfg.broker);
    let _queue = match take_queue(&app).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let conn = match connect(&app).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = SystemTime::now();
    let mut by: BTreeMap<(String, String, usize), Group> = BTreeMap::new();
    let mut unreadable = 0;
    let peeked = peek(&conn, &names.dead_queue, app.cfg.console.scan_limit, |d| {
        let Some(dl) = read_dead_letter(&d.data) else {
            unreadable += 1;
            return;
        };
        let vendor = dl.vendor().unwrap_or_else(|| "none".into());
        let age = age_of(dl.failed_at.as_deref(), now);
        let failed_at = dl.failed_at.clone();
        let g = by
            .entry((dl.failure.class.clone(), vendor.clone(), age))
            .or_insert_with(|| {
                let sel = Selection {
                    class: Some(dl.failure.class.clone()),
                    vendor: Some(vendor.clone()),
                    older_than: AGES[age].1.map(str::to_owned),
                    newer_than: AGES[age].2.map(str::to_owned),
                    job_ids: vec![],
                };
                Group {
                    class: dl.failure.class.clone(),
                    vendor,
                    age: AGES[age].0,
                    count: 0,
                    retryable: dl.failure.retryable.unwrap_or_else(|| {
                        FailureClass::parse(&dl.failure.class).is_some_and(FailureClass::retryable)
                    }),
                    message: operator_message(&d.data),
                    oldest: failed_at.clone(),
                    newest: failed_at.clone(),
                    query: sel.query(),
                }
            });
        g.count += 1;
        g.newest = failed_at;
    })
    .await;
    let poison = crate::ops::queue_info(&conn, &names.poison_queue)
        .await
        .ok()
        .flatten()
        .map(|(ready, _)| ready);
    let _ = conn.close(200, "console".into()).await;
    let peeked = match peeked {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let data = Groups {
        queue: names.dead_queue,
        peeked: peeked.into(),
        groups: by.into_values().collect(),
        unreadable,
        poison,
        poison_queue: names.poison_queue,
    };
    page(
        app.views
            .render("groups.html", &chrome(&app, "Dead letters"), &data),
    )
}

/// `failure.message` of a dead letter body.
fn operator_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["failure"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One dead letter as the page shows it: no raw bytes, metadata only on request.
#[derive(Debug, Serialize)]
struct Message {
    job_id: Option<String>,
    class: String,
    vendor: String,
    message: String,
    vendor_code: Option<String>,
    http_status: Option<u64>,
    attempts: Option<u64>,
    first_attempt_at: Option<String>,
    failed_at: Option<String>,
    worker: Option<String>,
    replays: Option<i64>,
    /// The job as sent, pretty-printed, metadata folded unless asked for.
    job: Option<String>,
    metadata_keys: usize,
    /// Bytes of a raw (non-JSON) body, which the page does not show.
    raw_body_bytes: Option<usize>,
}

/// The job object for display: `metadata` replaced by a count unless shown.
pub fn job_for_display(job: &Value, show_metadata: bool) -> (String, usize) {
    let mut job = job.clone();
    let mut keys = 0;
    if let Some(m) = job.get_mut("metadata") {
        keys = m.as_object().map_or(1, |o| o.len());
        if !show_metadata {
            *m = Value::String(format!("({keys} keys hidden: show metadata to see them)"));
        }
    }
    (serde_json::to_string_pretty(&job).unwrap_or_default(), keys)
}

fn message(d: &lapin::message::Delivery, show_metadata: bool) -> Message {
    let v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
    let dl = read_dead_letter(&d.data);
    let (job, metadata_keys) = match v.get("job").filter(|j| j.is_object()) {
        Some(j) => {
            let (folded, n) = job_for_display(j, show_metadata);
            // Shown in full: the bytes as sent (numbers keep their spelling).
            let raw = dl.as_ref().and_then(|d| d.job_body()).map(str::to_owned);
            let text = if show_metadata {
                raw.unwrap_or(folded)
            } else {
                folded
            };
            (Some(text), n)
        }
        None => (None, 0),
    };
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let replays = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(replay::H_REPLAYS))
        .and_then(|v| match v {
            lapin::types::AMQPValue::LongLongInt(n) => Some(*n),
            lapin::types::AMQPValue::LongInt(n) => Some((*n).into()),
            lapin::types::AMQPValue::ShortInt(n) => Some((*n).into()),
            _ => None,
        });
    Message {
        job_id: s(&v["job_id"]),
        class: s(&v["failure"]["class"]).unwrap_or_default(),
        vendor: dl
            .as_ref()
            .and_then(|d| d.vendor())
            .unwrap_or_else(|| "none".into()),
        message: s(&v["failure"]["message"]).unwrap_or_default(),
        vendor_code: s(&v["failure"]["vendor_code"]),
        http_status: v["failure"]["http_status"].as_u64(),
        attempts: v["attempts"].as_u64(),
        first_attempt_at: s(&v["first_attempt_at"]),
        failed_at: s(&v["failed_at"]),
        worker: s(&v["worker"]),
        replays,
        job,
        metadata_keys,
        raw_body_bytes: v["raw_body_base64"].as_str().map(|b| b.len() / 4 * 3),
    }
}

fn selects(d: &lapin::message::Delivery, f: &Filter) -> bool {
    read_dead_letter(&d.data)
        .is_some_and(|dl| matches!(judge_dead_letter(&dl, f), Verdict::Move | Verdict::NoJob))
}

#[derive(Debug, Serialize)]
struct Messages {
    selection: Selection,
    query: String,
    peeked: PeekView,
    matched: u64,
    messages: Vec<Message>,
    page_size: usize,
    metadata_shown: bool,
}

pub async fn messages(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let params = Params::query(q.as_deref());
    let sel = match Selection::from_params(&params) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let show_metadata = params.get("metadata") == Some("1");
    let filter = sel.filter(SystemTime::now()).expect("checked");
    let names = Names::new(&app.cfg.broker);
    let _queue = match take_queue(&app).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let conn = match connect(&app).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let page_size = app.cfg.console.page_size;
    let mut listed = Vec::new();
    let mut matched = 0;
    let peeked = peek(&conn, &names.dead_queue, app.cfg.console.scan_limit, |d| {
        if selects(d, &filter) {
            matched += 1;
            if listed.len() < page_size {
                listed.push(message(d, show_metadata));
            }
        }
    })
    .await;
    let _ = conn.close(200, "console".into()).await;
    let peeked = match peeked {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let data = Messages {
        query: sel.query(),
        selection: sel,
        peeked: peeked.into(),
        matched,
        messages: listed,
        page_size,
        metadata_shown: show_metadata,
    };
    page(
        app.views
            .render("messages.html", &chrome(&app, "Dead letters"), &data),
    )
}

#[derive(Debug, Serialize)]
struct Preview {
    /// "replay" or "purge".
    action: &'static str,
    selection: Selection,
    query: String,
    depth: u64,
    scanned: u64,
    matched: u64,
    /// What would move (the first PREVIEW_CAP).
    listing: Vec<Value>,
    /// Dead letters of the selection that hold no job (raw bodies): a
    /// replay leaves them, a purge takes them.
    no_job: u64,
    archive: Option<String>,
}

/// The dry run of a replay or a purge of the selection.
pub async fn preview(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let p = match form(&app, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let sel = match Selection::from_params(&p) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let action = if p.get("action") == Some("purge") {
        "purge"
    } else {
        "replay"
    };
    let filter = sel.filter(SystemTime::now()).expect("checked");
    let _queue = match take_queue(&app).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let data = if action == "replay" {
        let o = ReplayOptions {
            source: Source::Dead,
            filter,
            dry_run: true,
            limit: None,
            rate: 0.0,
            quiet: true,
        };
        match replay::replay(&app.cfg, &o, stop).await {
            Ok(r) => Preview {
                action,
                query: sel.query(),
                selection: sel,
                depth: r.depth,
                scanned: r.scanned,
                matched: r.matched,
                listing: r.preview,
                no_job: r.no_job,
                archive: None,
            },
            Err(e) => return failed(e),
        }
    } else {
        let archive = match archive_location(&app.cfg, None) {
            Ok(a) => a,
            Err(e) => return refuse(StatusCode::CONFLICT, &format!("{e:#}")),
        };
        let o = PurgeOptions {
            filter,
            archive: archive.clone(),
            batch: 500,
            limit: None,
            rate: 0.0,
            dry_run: true,
            quiet: true,
        };
        match purge::purge(&app.cfg, &o, stop).await {
            Ok(r) => Preview {
                action,
                query: sel.query(),
                selection: sel,
                depth: r.depth,
                scanned: r.scanned,
                matched: r.matched,
                listing: r.preview,
                no_job: 0,
                archive: Some(format!("s3://{}/{}", archive.0, archive.1)),
            },
            Err(e) => return failed(e),
        }
    };
    page(
        app.views
            .render("preview.html", &chrome(&app, "Preview"), &data),
    )
}

#[derive(Debug, Serialize)]
struct Done {
    action: &'static str,
    query: String,
    /// name, value pairs of the report.
    figures: Vec<(&'static str, String)>,
    archives: Vec<String>,
    interrupted: bool,
    order_kept: bool,
    failed: bool,
}

/// Runs a replay or purge in a task of its own with the dead-letter queue:
/// taken here, so a second operation is refused at once; held by the task,
/// so it is kept until the operation ends even if the tab closes.
async fn own_task<R, F, Fut>(app: &Arc<App>, what: &'static str, op: F) -> Result<R, Response>
where
    R: std::fmt::Debug + Send + 'static,
    F: FnOnce(Arc<App>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<R>> + Send + 'static,
{
    let queue = take_queue(app).await?;
    let app = app.clone();
    let task = tokio::spawn(async move {
        let _queue = queue;
        let r = op(app).await;
        tracing::info!(report = ?r, "The {what} from the console ended");
        r
    });
    match task.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(failed(e)),
        Err(e) => Err(failed(anyhow::anyhow!("the {what} task failed: {e}"))),
    }
}

/// A form's rate field: republishes (or removals) per second, 0 for none.
fn rate(p: &Params) -> Result<f64, Refused> {
    match p.get("rate").map(str::parse::<f64>) {
        None => Ok(0.0),
        Some(Ok(r)) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(Refused(
            StatusCode::BAD_REQUEST,
            "rate must be a number of messages per second, 0 for no limit".into(),
        )),
    }
}

pub async fn replay(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (p, sel) = match change(&app, &body) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let rate = match rate(&p) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let o = ReplayOptions {
        source: Source::Dead,
        filter: sel.filter(SystemTime::now()).expect("checked"),
        dry_run: false,
        limit: None,
        rate,
        quiet: true,
    };
    let r = match own_task(&app, "replay", move |app| async move {
        tracing::info!(selection = ?o.filter, "Replay started from the console");
        replay::replay(&app.cfg, &o, app.stop.clone()).await
    })
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let data = Done {
        action: "replay",
        query: sel.query(),
        figures: vec![
            ("dead letters in the queue", r.depth.to_string()),
            ("read", r.scanned.to_string()),
            ("selected", r.matched.to_string()),
            ("moved to the jobs queue", r.moved.to_string()),
            (
                "not moved (publish not confirmed; still dead)",
                r.failed.to_string(),
            ),
            ("moved but also left in place", r.duplicated.to_string()),
            ("without a job (cannot be replayed)", r.no_job.to_string()),
            ("not matching", r.no_match.to_string()),
            (
                "arrived during the replay (left)",
                r.not_considered.to_string(),
            ),
        ],
        archives: vec![],
        interrupted: r.interrupted,
        order_kept: r.order_kept,
        failed: r.failed > 0,
    };
    page(
        app.views
            .render("done.html", &chrome(&app, "Replay"), &data),
    )
}

pub async fn purge(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (p, sel) = match change(&app, &body) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if sel.class.as_deref().is_none_or(|c| c == "all") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a purge needs a failure class (it removes dead letters for good): open a group and purge from there",
        );
    }
    let rate = match rate(&p) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    // Dead letters per archive object, as `purge --batch`.
    let batch = match p.get("batch").map(str::parse::<usize>) {
        None => 500,
        Some(Ok(b)) if (1..=10_000).contains(&b) => b,
        _ => return refuse(StatusCode::BAD_REQUEST, "batch must be 1-10000"),
    };
    let archive = match archive_location(&app.cfg, None) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::CONFLICT, &format!("{e:#}")),
    };
    let o = PurgeOptions {
        filter: sel.filter(SystemTime::now()).expect("checked"),
        archive,
        batch,
        limit: None,
        rate,
        dry_run: false,
        quiet: true,
    };
    let r = match own_task(&app, "purge", move |app| async move {
        tracing::info!(selection = ?o.filter, "Purge started from the console");
        purge::purge(&app.cfg, &o, app.stop.clone()).await
    })
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let data = Done {
        action: "purge",
        query: sel.query(),
        figures: vec![
            ("dead letters in the queue", r.depth.to_string()),
            ("read", r.scanned.to_string()),
            ("selected", r.matched.to_string()),
            ("archived and removed", r.purged.to_string()),
            (
                "archived but still in the queue",
                r.archived_not_removed.to_string(),
            ),
            ("not archived (left in place)", r.not_archived.to_string()),
            ("not matching", r.no_match.to_string()),
            (
                "arrived during the purge (left)",
                r.not_considered.to_string(),
            ),
        ],
        archives: r.archives,
        interrupted: r.interrupted,
        order_kept: r.order_kept,
        failed: false,
    };
    page(app.views.render("done.html", &chrome(&app, "Purge"), &data))
}

/// The checks every state-changing request passes: CSRF token, writable
/// console, a valid selection.
fn change(app: &App, body: &Bytes) -> Result<(Params, Selection), Refused> {
    let p = form(app, body)?;
    writable(app)?;
    let sel = Selection::from_params(&p).map_err(|e| Refused(StatusCode::BAD_REQUEST, e))?;
    Ok((p, sel))
}

/// The selection as JSON lines, one dead letter per line as `purge`
/// archives it (body, routing key, properties).
pub async fn export(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let p = match form(&app, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let sel = match Selection::from_params(&p) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let filter = sel.filter(SystemTime::now()).expect("checked");
    let names = Names::new(&app.cfg.broker);
    let _queue = match take_queue(&app).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let conn = match connect(&app).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let at = crate::ops::now_rfc3339();
    let mut out = String::new();
    let peeked = peek(&conn, &names.dead_queue, app.cfg.console.scan_limit, |d| {
        if selects(d, &filter) {
            out += &archive_line(d, &at);
            out.push('\n');
        }
    })
    .await;
    let _ = conn.close(200, "console".into()).await;
    let peeked = match peeked {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let name = format!("dead-letters-{}.jsonl", at.replace([':', '.'], ""));
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (
                header::HeaderName::from_static("x-liveness-export-complete"),
                peeked.complete.to_string(),
            ),
        ],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_check_their_fields() {
        let p = Params::parse(b"class=internal&vendor=none&older_than=1h&job_id=a&job_id=b");
        let s = Selection::from_params(&p).unwrap();
        assert_eq!(s.job_ids, vec!["a", "b"]);
        let f = s.filter(SystemTime::now()).unwrap();
        assert_eq!(f.classes, Some(vec![FailureClass::Internal]));
        assert_eq!(f.providers, vec!["none"]);
        assert!(f.failed_before.is_some() && f.failed_after.is_none());
        assert_eq!(s.query(), "class=internal&vendor=none&older_than=1h");
        for bad in ["class=nope", "vendor=acme", "older_than=soon"] {
            assert!(
                Selection::from_params(&Params::parse(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
        // No class: every class (a view's "all"), never the retryable default.
        let f = Selection::default().filter(SystemTime::now()).unwrap();
        assert_eq!(f.classes.unwrap().len(), FailureClass::ALL.len());
    }

    #[test]
    fn ages_and_metadata() {
        let now = humantime::parse_rfc3339("2026-12-07T12:00:00Z").unwrap();
        assert_eq!(age_of(Some("2026-12-07T11:30:00Z"), now), 0);
        assert_eq!(age_of(Some("2026-12-07T01:00:00Z"), now), 1);
        assert_eq!(age_of(Some("2026-12-01T01:00:00Z"), now), 2);
        let job = serde_json::json!({"job_id": "j", "metadata": {"tenant": "t", "case": 7}});
        let (hidden, n) = job_for_display(&job, false);
        assert_eq!(n, 2);
        assert!(
            !hidden.contains("tenant") && hidden.contains("2 keys hidden"),
            "{hidden}"
        );
        let (shown, _) = job_for_display(&job, true);
        assert!(shown.contains("tenant"), "{shown}");
    }
}
