//! `replay`: dead letters (or poison messages) back to the jobs exchange.
//!
//! The queue is read from its head with a [`HeldScan`]. A matching message
//! is republished (the job's bytes exactly as the dead letter holds them)
//! and acked only once the broker confirmed the republish; everything else
//! stays unacked until the scan ends and then goes back in its original
//! order. A replay killed at any point therefore loses nothing: unacked
//! messages return to the queue, and at worst a job republished but not yet
//! acked is in both queues (the worker verifies a job_id once).
//!
//! The replayed job records its replay in headers: `x-liveness-replays`
//! (one more than the message carried) and `x-liveness-replayed-at`
//! (RFC 3339). The delay-ladder headers are left out, so the job starts
//! with a fresh retry budget.

use super::{
    EXIT_INTERRUPTED, EXIT_UNCONFIRMED, Exit, HeldScan, Progress, now_rfc3339,
    publish::ensure_exchange,
};
use crate::broker::publish::{ConfirmWindow, Settled};
use crate::broker::{self, Names, headers};
use crate::config::Config;
use crate::domain::dead_letter::{DEAD_LETTER_SCHEMA, FailureClass};
use lapin::Acker;
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

pub use crate::broker::headers::{H_REPLAYED_AT, H_REPLAYS};

/// Which queue to replay from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The dead-letter queue (`liveness.dead_letter.v1` messages).
    Dead,
    /// The poison queue (raw jobs the broker gave up on at its delivery limit).
    Poison,
}

fn class_arg(s: &str) -> Result<String, String> {
    if s == "all" || FailureClass::parse(s).is_some() {
        Ok(s.to_owned())
    } else {
        let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
        Err(format!("expected all or one of {}", names.join(", ")))
    }
}

/// The dead-letter filters, shared by `replay` and `purge`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Failure classes (repeat or separate with commas; `all` for every
    /// class). Default for replay: the retryable ones (image_not_found,
    /// retries_exhausted, internal).
    #[arg(long, value_delimiter = ',', value_parser = class_arg)]
    pub class: Vec<String>,
    /// Only jobs of these vendors (repeat or separate with commas): the
    /// dead letter's failure.provider, else the job's own provider; `none`
    /// for dead letters that name no vendor.
    #[arg(long, alias = "vendor", value_delimiter = ',', value_parser = ["argos", "intellicheck", "didit", "none"])]
    pub provider: Vec<String>,
    /// Only dead letters that failed at least this long ago (e.g. 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only dead letters that failed at most this long ago.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Only the dead letters of these job_ids (repeat or separate with
    /// commas): a selection by hand.
    #[arg(long, value_delimiter = ',')]
    pub job_id: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The queue to replay from.
    #[arg(long, value_enum, default_value = "dead")]
    pub from: Source,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// List what would move (JSON lines on stdout); move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Move at most this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Republishes per second at most (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// Which messages move, as a pure value.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// None: the retryable classes.
    pub classes: Option<Vec<FailureClass>>,
    /// Empty: any vendor; "none" selects dead letters that name none.
    pub providers: Vec<String>,
    /// Failed at or before this time.
    pub failed_before: Option<SystemTime>,
    /// Failed at or after this time.
    pub failed_after: Option<SystemTime>,
    /// Empty: any job.
    pub job_ids: Vec<String>,
}

impl Filter {
    pub fn from_args(a: &ReplayArgs, now: SystemTime) -> anyhow::Result<Filter> {
        if a.from == Source::Poison {
            anyhow::ensure!(
                a.filter.class.is_empty()
                    && a.filter.older_than.is_none()
                    && a.filter.newer_than.is_none()
                    && a.filter.job_id.is_empty(),
                "--class, --older-than, --newer-than and --job-id apply to dead letters only: poison messages are raw jobs without a failure record"
            );
        }
        anyhow::ensure!(
            a.rate.is_finite() && a.rate >= 0.0,
            "--rate must be a number of messages per second, 0 for no limit"
        );
        Ok(Filter::new(&a.filter, now))
    }

    /// The filter the flags describe, ages counted back from `now`.
    pub fn new(a: &FilterArgs, now: SystemTime) -> Filter {
        let classes = if a.class.is_empty() {
            None
        } else if a.class.iter().any(|c| c == "all") {
            Some(FailureClass::ALL.to_vec())
        } else {
            Some(
                a.class
                    .iter()
                    .filter_map(|c| FailureClass::parse(c))
                    .collect(),
            )
        };
        Filter {
            classes,
            providers: a.provider.clone(),
            failed_before: a.older_than.and_then(|d| now.checked_sub(d)),
            failed_after: a.newer_than.and_then(|d| now.checked_sub(d)),
            job_ids: a.job_id.clone(),
        }
    }
}

/// The parts of a dead letter replay looks at; unknown fields ignored.
#[derive(Debug, Deserialize)]
pub struct DeadLetterView<'a> {
    pub schema: String,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(borrow, default)]
    pub job: Option<&'a RawValue>,
    pub failure: FailureView,
    #[serde(default)]
    pub failed_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FailureView {
    pub class: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// Reads a dead letter; None when the body is not a `liveness.dead_letter.v1`.
pub fn read_dead_letter(body: &[u8]) -> Option<DeadLetterView<'_>> {
    serde_json::from_slice::<DeadLetterView>(body)
        .ok()
        .filter(|d| d.schema == DEAD_LETTER_SCHEMA)
}

impl DeadLetterView<'_> {
    /// The job body when the dead letter holds a JSON object (`null` is none).
    pub fn job_body(&self) -> Option<&str> {
        self.job
            .map(RawValue::get)
            .filter(|t| t.trim_start().starts_with('{'))
    }

    /// failure.provider, else the job's own `provider`; None when neither.
    pub fn vendor(&self) -> Option<String> {
        self.failure
            .provider
            .clone()
            .or_else(|| self.job_body().and_then(job_provider))
    }
}

/// The `provider` field of a job body, if it has a string one.
pub fn job_provider(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        provider: Option<serde_json::Value>,
    }
    serde_json::from_str::<P>(body)
        .ok()?
        .provider?
        .as_str()
        .map(str::to_owned)
}

/// How a dry run lists a selected dead letter (one JSON line).
pub fn listing(d: &DeadLetterView<'_>) -> serde_json::Value {
    serde_json::json!({
        "job_id": d.job_id,
        "class": d.failure.class,
        "vendor": d.vendor(),
        "failed_at": d.failed_at,
    })
}

/// What replay makes of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Replay it.
    Move,
    /// Selected by nothing: stays.
    NoMatch,
    /// A dead letter whose body was not a JSON object: nothing to replay.
    NoJob,
    /// Not a readable dead letter: stays.
    Unreadable,
}

/// Decides for one dead letter.
pub fn judge_dead_letter(d: &DeadLetterView<'_>, f: &Filter) -> Verdict {
    let class = FailureClass::parse(&d.failure.class);
    let class_ok = match &f.classes {
        None => d
            .failure
            .retryable
            .unwrap_or_else(|| class.is_some_and(FailureClass::retryable)),
        Some(list) => class.is_some_and(|c| list.contains(&c)),
    };
    let vendor_ok = f.providers.is_empty()
        || f.providers
            .contains(&d.vendor().unwrap_or_else(|| "none".into()));
    let job_ok = f.job_ids.is_empty() || d.job_id.as_ref().is_some_and(|j| f.job_ids.contains(j));
    let age_ok = if f.failed_before.is_none() && f.failed_after.is_none() {
        true
    } else {
        match d
            .failed_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        {
            None => false,
            Some(t) => {
                f.failed_before.is_none_or(|b| t <= b) && f.failed_after.is_none_or(|a| t >= a)
            }
        }
    };
    if !(class_ok && vendor_ok && job_ok && age_ok) {
        Verdict::NoMatch
    } else if d.job_body().is_none() {
        Verdict::NoJob
    } else {
        Verdict::Move
    }
}

/// Decides for one poison message (the raw job): only the vendor filter applies.
pub fn judge_poison(body: &[u8], f: &Filter) -> Verdict {
    if f.providers.is_empty() {
        return Verdict::Move;
    }
    let vendor = std::str::from_utf8(body).ok().and_then(job_provider);
    if f.providers
        .contains(&vendor.unwrap_or_else(|| "none".into()))
    {
        Verdict::Move
    } else {
        Verdict::NoMatch
    }
}

/// Properties of a replayed job. From a dead letter: a fresh JSON message
/// with `message_id` = job_id and the dead letter's `correlation_id` (which
/// the worker copied from the job). From the poison queue: the producer's
/// own properties, minus the broker's and the worker's headers. Both get
/// the replay headers, and no progress header: a fresh retry budget.
pub fn replay_props(
    source: Source,
    original: &BasicProperties,
    job_id: Option<&str>,
    replayed_at: &str,
) -> BasicProperties {
    match source {
        Source::Dead => broker::json_props(job_id, original.correlation_id().as_ref())
            .with_headers(headers::replayed(original, false, replayed_at)),
        Source::Poison => {
            headers::replay_props(original, headers::replayed(original, true, replayed_at))
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages in the queue when the replay started.
    pub depth: u64,
    pub scanned: u64,
    /// Selected by the filters (and within --limit).
    pub matched: u64,
    /// Republished, confirmed and removed from the source queue.
    pub moved: u64,
    /// Republish not confirmed: still in the source queue.
    pub failed: u64,
    /// Republished and confirmed, but the source ack failed: in both queues.
    pub duplicated: u64,
    pub no_match: u64,
    /// Read past --limit, or arrived during the replay: left in place.
    pub not_considered: u64,
    pub no_job: u64,
    pub unreadable: u64,
    /// Stopped by SIGINT/SIGTERM before the end.
    pub interrupted: bool,
    /// The messages left in place went back in their original order.
    pub order_kept: bool,
    /// A quiet dry run's listing of what would move (at most
    /// [`PREVIEW_CAP`](super::PREVIEW_CAP) lines; `matched` counts them all).
    pub preview: Vec<serde_json::Value>,
}

/// Options of one replay run (the parsed `replay` arguments).
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: Source,
    pub filter: Filter,
    pub dry_run: bool,
    pub limit: Option<u64>,
    /// Republishes per second; 0 for no limit.
    pub rate: f64,
    /// No progress output; a dry run's listing goes to the report's
    /// `preview` instead of stdout (the console).
    pub quiet: bool,
}

/// Runs a replay; `stop` ends it early, cleanly (confirmed moves acked,
/// everything else released).
pub async fn replay(
    cfg: &Config,
    o: &ReplayOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ReplayReport> {
    let names = Names::new(&cfg.broker);
    let queue = match o.source {
        Source::Dead => &names.dead_queue,
        Source::Poison => &names.poison_queue,
    };
    let conn = broker::connect(&cfg.broker).await?;
    if !o.dry_run {
        ensure_exchange(&conn, &names.jobs_exchange).await?;
    }
    let mut scan = HeldScan::open(&conn, queue).await?;
    let mut r = ReplayReport {
        depth: scan.depth().into(),
        ..Default::default()
    };
    let window_size = if o.rate > 0.0 { 16 } else { 128 };
    let mut window: ConfirmWindow<(Acker, u64, String)> = ConfirmWindow::new(
        broker::confirm_channel(&conn).await?,
        window_size,
        cfg.broker.confirm_timeout,
    );
    let mut pace = (o.rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut progress = Progress::maybe_quiet(
        if o.dry_run { "scanning" } else { "replaying" },
        Some(r.depth),
        o.quiet,
    );
    let result: anyhow::Result<()> = async {
        // The whole queue is read even past --limit, so that the messages
        // left in place come back in their order (see `HeldScan`).
        while !stop.load(Ordering::Relaxed) {
            let Some(d) = scan.next().await? else { break };
            r.scanned += 1;
            progress.inc(1);
            // Past the limit, and dead letters that arrived during the
            // replay (perhaps a replayed job failing again), stay.
            if o.limit.is_some_and(|l| r.matched >= l) || scan.is_arrival() {
                r.not_considered += 1;
                scan.hold(d.delivery_tag);
                continue;
            }
            // (job body, job_id, what to list)
            let selected = match o.source {
                Source::Dead => match read_dead_letter(&d.data) {
                    None => {
                        r.unreadable += 1;
                        None
                    }
                    Some(dl) => match judge_dead_letter(&dl, &o.filter) {
                        Verdict::Move => {
                            let listing = listing(&dl);
                            let body = dl.job_body().expect("judged").as_bytes().to_vec();
                            Some((body, dl.job_id.clone(), listing))
                        }
                        Verdict::NoJob => {
                            r.no_job += 1;
                            None
                        }
                        _ => {
                            r.no_match += 1;
                            None
                        }
                    },
                },
                Source::Poison => match judge_poison(&d.data, &o.filter) {
                    Verdict::Move => {
                        // Only a body the worker would parse is parsed here:
                        // the poison queue holds whatever reached the jobs queue.
                        let text = std::str::from_utf8(&d.data)
                            .ok()
                            .filter(|t| t.len() <= cfg.worker.max_job_bytes);
                        let job_id = text
                            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                            .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned));
                        let listing = serde_json::json!({
                            "job_id": job_id,
                            "vendor": text.and_then(job_provider),
                        });
                        Some((d.data.clone(), job_id, listing))
                    }
                    _ => {
                        r.no_match += 1;
                        None
                    }
                },
            };
            let Some((body, job_id, listing)) = selected else {
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
            let props = replay_props(o.source, &d.properties, job_id.as_deref(), &now_rfc3339());
            let what = format!("job {}", job_id.as_deref().unwrap_or("<no job_id>"));
            let settled = window
                .publish(
                    (d.acker, d.delivery_tag, what),
                    &names.jobs_exchange,
                    &names.jobs_routing_key,
                    &body,
                    props,
                )
                .await;
            settle(settled, &mut r, &progress, &mut scan).await;
            anyhow::ensure!(
                !window.is_broken(),
                "the publishing channel failed; unconfirmed messages stay in {queue}"
            );
        }
        Ok(())
    }
    .await;
    let settled = window.drain().await;
    settle(settled, &mut r, &progress, &mut scan).await;
    progress.finish();
    r.interrupted = stop.load(Ordering::Relaxed);
    r.order_kept = scan.release().await;
    let _ = conn.close(200, "replay done".into()).await;
    result?;
    Ok(r)
}

/// Acks the source of every confirmed republish; holds (leaves in place)
/// the source of every other one.
async fn settle(
    settled: Vec<Settled<(Acker, u64, String)>>,
    r: &mut ReplayReport,
    p: &Progress,
    scan: &mut HeldScan,
) {
    for ((acker, tag, what), outcome) in settled {
        match outcome {
            Ok(()) => match acker.ack(BasicAckOptions::default()).await {
                Ok(true) => r.moved += 1,
                Ok(false) | Err(_) => {
                    r.duplicated += 1;
                    p.println(&format!(
                        "{what}: republished, but could not be removed from the source queue (it will be replayed twice; harmless)"
                    ));
                }
            },
            Err(e) => {
                scan.hold(tag);
                r.failed += 1;
                p.println(&format!("{what}: not replayed, it stays: {e}"));
            }
        }
    }
}

/// The `replay` command.
pub async fn run(cfg: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let filter = Filter::from_args(&a, SystemTime::now())?;
    let opts = ReplayOptions {
        source: a.from,
        filter,
        dry_run: a.dry_run,
        limit: a.limit,
        rate: a.rate,
        quiet: false,
    };
    let stop = super::stop_on_signal();
    let r = replay(cfg, &opts, stop).await?;
    let source = match a.from {
        Source::Dead => "dead letters",
        Source::Poison => "poison messages",
    };
    eprintln!(
        "replay: scanned {} of {} {source}: {} matched",
        r.scanned, r.depth, r.matched
    );
    if a.dry_run {
        eprintln!("replay: dry run, nothing moved ({} would move)", r.matched);
    } else {
        eprintln!(
            "replay: {} moved to the jobs queue, {} not moved (publish not confirmed), {} moved but also left in place",
            r.moved, r.failed, r.duplicated
        );
    }
    eprintln!(
        "replay: left in place: {} not matching, {} without a job (raw bodies, cannot be replayed), {} unreadable, {} past --limit or newer than the replay",
        r.no_match, r.no_job, r.unreadable, r.not_considered
    );
    if r.interrupted {
        eprintln!("replay: interrupted; run it again to continue");
    }
    if !r.order_kept {
        eprintln!(
            "replay: the messages left in place may not be in their original order (the scan stopped early, or another client used the queue); none was lost"
        );
    }
    if r.failed > 0 {
        return Err(Exit(EXIT_UNCONFIRMED).into());
    }
    if r.interrupted {
        return Err(Exit(EXIT_INTERRUPTED).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::headers::{H_ATTEMPTS, H_LADDER_STEP, replays};
    use lapin::types::{AMQPValue, FieldTable};

    fn dl(class: &str, provider: Option<&str>, job: &str, failed_at: &str) -> String {
        let provider = provider.map_or(String::new(), |p| format!(r#","provider":"{p}""#));
        format!(
            r#"{{"schema":"liveness.dead_letter.v1","job_id":"j1","job":{job},"raw_body_base64":null,
            "failure":{{"class":"{class}","message":"m","retryable":{}{provider}}},"attempts":0,
            "first_attempt_at":"{failed_at}","failed_at":"{failed_at}","worker":"w"}}"#,
            FailureClass::parse(class).unwrap().retryable()
        )
    }

    const JOB: &str = r#"{"schema":"liveness.job.v1", "job_id":"j1","check":"face","image":"s3://b/k","metadata":{"n":1.50}}"#;

    fn judge(body: &str, f: &Filter) -> Verdict {
        judge_dead_letter(&read_dead_letter(body.as_bytes()).unwrap(), f)
    }

    #[test]
    fn default_is_the_retryable_classes() {
        let f = Filter::default();
        let t = "2026-11-23T23:40:12.102Z";
        assert_eq!(
            judge(&dl("retries_exhausted", None, JOB, t), &f),
            Verdict::Move
        );
        assert_eq!(
            judge(&dl("invalid_job", None, JOB, t), &f),
            Verdict::NoMatch
        );
        assert_eq!(judge(&dl("internal", None, "null", t), &f), Verdict::NoJob);
    }

    #[test]
    fn class_vendor_and_age_filters() {
        let t = "2026-11-23T12:00:00.000Z";
        let at = humantime::parse_rfc3339(t).unwrap();
        let body = dl("forbidden_image_location", Some("argos"), JOB, t);
        let mut f = Filter {
            classes: Some(vec![FailureClass::ForbiddenImageLocation]),
            ..Default::default()
        };
        assert_eq!(judge(&body, &f), Verdict::Move);
        f.providers = vec!["didit".into()];
        assert_eq!(judge(&body, &f), Verdict::NoMatch);
        f.providers = vec!["none".into()];
        assert_eq!(judge(&body, &f), Verdict::NoMatch);
        f.providers = vec!["argos".into()];
        f.failed_before = Some(at + Duration::from_secs(1));
        assert_eq!(judge(&body, &f), Verdict::Move);
        f.failed_before = Some(at - Duration::from_secs(1));
        assert_eq!(judge(&body, &f), Verdict::NoMatch);
        f.failed_before = None;
        f.failed_after = Some(at + Duration::from_secs(1));
        assert_eq!(judge(&body, &f), Verdict::NoMatch);
        // The job's own provider stands in when the failure names none.
        let own = dl(
            "image_not_found",
            None,
            r#"{"job_id":"x","provider":"didit"}"#,
            t,
        );
        let f = Filter {
            providers: vec!["didit".into()],
            ..Default::default()
        };
        assert_eq!(judge(&own, &f), Verdict::Move);
    }

    #[test]
    fn a_selection_by_hand_takes_only_its_job_ids() {
        let body = dl("internal", None, JOB, "2026-11-23T12:00:00.000Z");
        let mut f = Filter {
            job_ids: vec!["j2".into()],
            ..Default::default()
        };
        assert_eq!(judge(&body, &f), Verdict::NoMatch);
        f.job_ids.push("j1".into());
        assert_eq!(judge(&body, &f), Verdict::Move);
    }

    #[test]
    fn the_job_bytes_are_kept_exactly() {
        let body = dl("internal", None, JOB, "2026-11-23T12:00:00.000Z");
        let d = read_dead_letter(body.as_bytes()).unwrap();
        assert_eq!(d.job_body(), Some(JOB));
        assert!(read_dead_letter(b"{\"schema\":\"other\"}").is_none());
        assert!(read_dead_letter(b"garbage").is_none());
    }

    #[test]
    fn poison_messages_filter_by_the_jobs_provider() {
        let f = Filter {
            providers: vec!["argos".into()],
            ..Default::default()
        };
        assert_eq!(judge_poison(br#"{"provider":"argos"}"#, &f), Verdict::Move);
        assert_eq!(
            judge_poison(br#"{"provider":"didit"}"#, &f),
            Verdict::NoMatch
        );
        assert_eq!(judge_poison(b"\xff", &f), Verdict::NoMatch);
        assert_eq!(judge_poison(b"\xff", &Filter::default()), Verdict::Move);
    }

    #[test]
    fn replay_headers() {
        let mut h = FieldTable::default();
        h.insert(H_REPLAYS.into(), AMQPValue::LongInt(2));
        h.insert(H_ATTEMPTS.into(), AMQPValue::LongLongInt(5));
        h.insert(H_LADDER_STEP.into(), AMQPValue::LongLongInt(3));
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(21));
        h.insert("x-death".into(), AMQPValue::Void);
        h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        let original = BasicProperties::default()
            .with_headers(h)
            .with_message_id("j1".into())
            .with_correlation_id("c1".into());
        let p = replay_props(
            Source::Poison,
            &original,
            Some("j1"),
            "2026-11-24T00:00:00.000Z",
        );
        let h = p.headers().clone().unwrap();
        let keys: Vec<&str> = h.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(replays(&p), 3);
        assert!(keys.contains(&"tenant") && keys.contains(&H_REPLAYED_AT));
        for gone in [H_ATTEMPTS, H_LADDER_STEP, "x-delivery-count", "x-death"] {
            assert!(!keys.contains(&gone), "{gone} kept");
        }
        assert_eq!(p.delivery_mode(), &Some(2));

        let p = replay_props(Source::Dead, &original, Some("j1"), "t");
        assert_eq!(replays(&p), 3);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "j1");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c1");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        let keys: Vec<String> = p
            .headers()
            .clone()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
    }
}
