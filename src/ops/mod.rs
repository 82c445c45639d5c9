//! Operator commands: `enqueue` (JSON lines, or one job per object under an
//! S3 prefix), `replay` (dead letters or poison messages back to the jobs
//! queue), `status` (queue depths, dead letters by class and vendor), and
//! for one job or a selection: `show` (what the results store knows),
//! `resend` (stored results published again), `reverify` (a deliberate
//! second vendor call) and `purge` (dead letters archived to S3, then
//! removed); `budget` (vendor spend budgets, and run-time overrides of
//! their caps in the coordination store).
//!
//! They take the same configuration as `run`, so they find the broker, the
//! prefixed names and S3 the way the worker does. Pieces shared here:
//! - [`ConfirmWindow`](crate::broker::publish::ConfirmWindow) (in `broker`):
//!   many publishes in flight, confirms settled in order;
//! - [`HeldScan`]: reads a whole queue without consuming it. Every message
//!   fetched stays unacked until the scan ends, so nothing is seen twice;
//!   then the ones not taken are requeued one by one, in their original
//!   order. On RabbitMQ 3.10 (checked) a quorum queue appends a requeued
//!   message at its tail, so the original order comes back only when the
//!   scan read the queue to its end: scans do, unless told to stop early.
//!   Unacked messages of a connection that dies go back too (in arbitrary
//!   order): nothing is ever lost.
//! - [`Progress`]: a progress bar on a terminal, plain lines otherwise.
//!
//! Exit codes (docs/operations.md): 0 everything done, 1 some input lines
//! (or job_ids) were invalid or skipped, 2 the command could not run, 3 some
//! publishes were not confirmed, 4 `show` knows nothing of the job, 130 a
//! replay or purge was interrupted.

pub mod backfill;
pub mod budget;
pub mod enqueue;
mod publish;
pub mod purge;
pub mod replay;
pub mod resend;
pub mod reverify;
pub mod show;
pub mod status;
pub mod validate;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// An ops command finished with this exit code after printing its own
/// report; `main` exits with it without adding an error line.
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
pub struct Exit(pub u8);

/// Some lines were invalid (their reasons were printed).
pub const EXIT_INVALID: u8 = 1;
/// Some publishes were not confirmed by the broker.
pub const EXIT_UNCONFIRMED: u8 = 3;
/// `show`: nothing at all is known about the job_id.
pub const EXIT_UNKNOWN: u8 = 4;
/// Stopped by SIGINT or SIGTERM before the end (the shell's 128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// (ready messages, consumers) of a queue, by a passive declare on a
/// channel of its own (a missing queue closes the channel); None when the
/// queue does not exist.
pub async fn queue_info(conn: &Connection, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("cannot inspect queue {queue}: {e}")),
    }
}

/// Reads a queue from its head with `basic.get` until it is empty, leaving
/// in place every message the caller [`hold`](Self::hold)s: see the module
/// doc. Messages that arrive during the scan are read (and should be held)
/// too, so that they stay ahead of the requeued ones, up to a cap that
/// keeps a fast-filling queue from holding the scan forever.
pub struct HeldScan {
    ch: Channel,
    queue: String,
    depth: u32,
    read: u32,
    /// The queue was read to its end.
    drained: bool,
    /// Delivery tags to hand back at the end (8 bytes per held message).
    held: Vec<u64>,
}

/// Requeues handed back per step of [`HeldScan::release`].
const RELEASE_BATCH: usize = 16;
/// How long one release step waits to see its messages back in the queue.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// Messages read beyond the opening depth, at most.
const ARRIVALS_CAP: u32 = 10_000;

impl HeldScan {
    /// Fails when the queue does not exist.
    pub async fn open(conn: &Connection, queue: &str) -> anyhow::Result<HeldScan> {
        let (depth, _) = queue_info(conn, queue).await?.with_context(|| {
            format!(
                "queue {queue} does not exist (start the worker once: it declares the topology)"
            )
        })?;
        let ch = conn
            .create_channel()
            .await
            .context("cannot open a RabbitMQ channel")?;
        Ok(HeldScan {
            ch,
            queue: queue.to_owned(),
            depth,
            read: 0,
            drained: false,
            held: Vec::new(),
        })
    }

    /// Messages ready in the queue when the scan opened.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Messages read so far.
    pub fn read(&self) -> u32 {
        self.read
    }

    /// The scan read the queue to its end.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The last message read arrived after the scan opened.
    pub fn is_arrival(&self) -> bool {
        self.read > self.depth
    }

    /// The next message, unacked; None once the queue is empty (or the
    /// arrivals cap is reached). The caller either acks it (it leaves the
    /// queue) or holds it (it goes back at the end).
    pub async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.read >= self.depth.saturating_add(ARRIVALS_CAP) {
            return Ok(None);
        }
        let got = self
            .ch
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .with_context(|| format!("reading queue {} failed", self.queue))?;
        match got {
            Some(m) => {
                self.read += 1;
                Ok(Some(m.delivery))
            }
            None => {
                self.drained = true;
                Ok(None)
            }
        }
    }

    /// Leaves a message read by [`next`](Self::next) in the queue.
    pub fn hold(&mut self, delivery_tag: u64) {
        self.held.push(delivery_tag);
    }

    /// Ends the scan: every held message goes back to the queue, in its
    /// original order. Returns false when the queue's order could not be
    /// ensured (the scan stopped before the end of the queue, the channel
    /// failed, or someone else consumed meanwhile); the messages are back in
    /// the queue either way.
    ///
    /// Why it is paced: on RabbitMQ 3.10 (checked), closing the channel
    /// returns a quorum queue's unacked messages in arbitrary order, and so
    /// does a `multiple` nack; single nacks keep their order only while the
    /// queue's client has few commands outstanding: past that it batches
    /// them and reverses runs of them. So the messages are requeued one by
    /// one, a few at a time, waiting for each batch to be back in the queue.
    pub async fn release(mut self) -> bool {
        self.held.sort_unstable();
        // Waiting per batch stops once a wait times out (someone else is
        // consuming the queue): the order cannot be told apart any more.
        let mut paced = true;
        let held = std::mem::take(&mut self.held);
        for batch in held.chunks(RELEASE_BATCH) {
            let before = self.ready().await;
            for tag in batch {
                let requeue = lapin::options::BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                if self.ch.basic_nack(*tag, requeue).await.is_err() {
                    // The channel is gone: the broker requeues what it held.
                    return false;
                }
            }
            if paced {
                let want = before.map(|b| b + batch.len() as u32);
                let deadline = Instant::now() + RELEASE_WAIT;
                loop {
                    match (self.ready().await, want) {
                        (Some(now), Some(want)) if now >= want => break,
                        _ if Instant::now() >= deadline => {
                            paced = false;
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            }
        }
        let _ = self.ch.close(200, "scan done".into()).await;
        paced && self.drained
    }

    /// Ready messages now, by a passive declare on the scan's channel.
    async fn ready(&self) -> Option<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.ch
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|q| q.message_count())
    }
}

/// What [`peek`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peeked {
    /// Ready messages when the scan opened.
    pub depth: u32,
    pub scanned: u32,
    /// The whole queue was read (not cut short by the limit).
    pub complete: bool,
    /// Every message went back in its original order.
    pub order_kept: bool,
}

/// Reads up to `limit` messages of `queue` (0: all) and hands each to
/// `see`, changing nothing: every message read is held and put back, in
/// order, at the end (see [`HeldScan`]). For views (`status`, the console).
pub async fn peek(
    conn: &Connection,
    queue: &str,
    limit: u32,
    mut see: impl FnMut(&Delivery),
) -> anyhow::Result<Peeked> {
    let mut scan = HeldScan::open(conn, queue).await?;
    let read: anyhow::Result<()> = async {
        while limit == 0 || scan.read() < limit {
            let Some(d) = scan.next().await? else { break };
            see(&d);
            scan.hold(d.delivery_tag);
        }
        Ok(())
    }
    .await;
    let mut p = Peeked {
        depth: scan.depth(),
        scanned: scan.read(),
        complete: scan.drained(),
        order_kept: false,
    };
    p.order_kept = scan.release().await;
    read?;
    Ok(p)
}

/// Listings a quiet (console) dry run keeps for its preview, at most.
pub const PREVIEW_CAP: usize = 1000;

/// Progress on stderr: a bar with rate and ETA on a terminal, a plain line
/// every few seconds otherwise (logs, CI); nothing at all when quiet (an
/// operation started from the console, which reports on its page).
pub struct Progress {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// `total` is None when unknown (a listing still under way).
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        Progress::maybe_quiet(label, total, false)
    }

    /// [`new`](Self::new), or one that shows nothing when `quiet`.
    pub fn maybe_quiet(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    indicatif::ProgressBar::new(n),
                    "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, ETA {eta})",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {msg} [{elapsed_precise}] {human_pos} ({per_sec})",
                ),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template).expect("valid template"),
            );
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            quiet,
            bar,
            label: label.to_owned(),
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            _ if self.quiet => {}
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                eprintln!(
                    "{}",
                    plain_line(&self.label, self.done, self.total, self.started.elapsed())
                );
            }
            None => {}
        }
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            _ if self.quiet => {}
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Prints a line on stdout (data, not progress) without tearing the bar.
    pub fn println_stdout(&self, line: &str) {
        match &self.bar {
            _ if self.quiet => {}
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `enqueue: 1200/5000 (600/s, ETA 6s)`, or without a total
/// `enqueue: 1200 (600/s)`.
pub fn plain_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    match total {
        Some(total) => {
            let eta = if rate > 0.0 {
                let left = total.saturating_sub(done) as f64 / rate;
                humantime::format_duration(Duration::from_secs(left.ceil() as u64)).to_string()
            } else {
                "unknown".into()
            };
            format!("{label}: {done}/{total} ({rate:.0}/s, ETA {eta})")
        }
        None => format!("{label}: {done} ({rate:.0}/s)"),
    }
}

/// The S3 connection and the results store of `cfg`; an error when the
/// store is disabled (`results.bucket` empty).
pub async fn results_store(
    cfg: &crate::config::Config,
) -> anyhow::Result<(crate::store::S3Store, crate::store::S3Outcomes)> {
    anyhow::ensure!(
        !cfg.results.bucket.is_empty(),
        "the results store is disabled (results.bucket is empty): there is nothing to read"
    );
    let s3 = crate::store::S3Store::new(&cfg.s3).await;
    let outcomes = s3.outcomes(&cfg.results);
    Ok((s3, outcomes))
}

/// A flag set by the first SIGINT or SIGTERM: commands that hold messages
/// stop cleanly at their next step instead of dying.
pub fn stop_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    stop
}

/// Now, as the worker writes times.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_progress_lines() {
        assert_eq!(
            plain_line("enqueue", 1200, Some(5000), Duration::from_secs(2)),
            "enqueue: 1200/5000 (600/s, ETA 7s)"
        );
        assert_eq!(
            plain_line("backfill", 300, None, Duration::from_secs(3)),
            "backfill: 300 (100/s)"
        );
        assert_eq!(
            plain_line("x", 0, Some(10), Duration::ZERO),
            "x: 0/10 (0/s, ETA unknown)"
        );
    }
}
