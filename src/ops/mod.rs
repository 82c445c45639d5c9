//! Operator commands: `enqueue` (JSON lines, or one job per object under an
//! S3 prefix), `replay` (dead letters or poison messages back to the jobs
//! queue) and `status` (queue depths, dead letters by class and vendor).
//!
//! They take the same configuration as `run`, so they find the broker, the
//! prefixed names and S3 the way the worker does. Pieces shared here:
//! - [`ConfirmWindow`]: many publishes in flight, confirms settled in order;
//! - [`HeldScan`]: reads a queue from its head without consuming it. Every
//!   message fetched stays unacked until the scan ends; closing the channel
//!   then hands all of them back to RabbitMQ, which (for quorum queues)
//!   returns them in their original order, ahead of anything newer. A
//!   nack/requeue per message would instead put each one behind the ones
//!   still held, and a consumer would see them again and again.
//! - [`Progress`]: a progress bar on a terminal, plain lines otherwise.
//!
//! Exit codes (see README): 0 everything done, 1 some input lines were
//! invalid, 2 the command could not run, 3 some publishes were not confirmed.

pub mod backfill;
pub mod enqueue;
pub mod replay;
pub mod status;
pub mod validate;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;
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

/// Why one publish did not become the broker's responsibility.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("the broker refused the message (publisher nack)")]
    Nacked,
    #[error("no queue is bound to the exchange for this routing key (message returned)")]
    Unroutable,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("channel failed: {0}")]
    Channel(String),
}

/// Publishes with many messages in flight: each publish is sent at once,
/// its confirm is awaited only when `size` others are waiting behind it.
/// Publishes are `mandatory`, so a message no queue receives counts as
/// failed instead of vanishing with a positive confirm.
pub struct ConfirmWindow<T> {
    ch: Channel,
    pending: VecDeque<(T, PublisherConfirm)>,
    size: usize,
    timeout: Duration,
    broken: bool,
}

/// The outcome of one publish, with the caller's tag.
pub type Settled<T> = (T, Result<(), SettleError>);

impl<T> ConfirmWindow<T> {
    pub fn new(ch: Channel, size: usize, timeout: Duration) -> Self {
        ConfirmWindow {
            ch,
            pending: VecDeque::new(),
            size: size.max(1),
            timeout,
            broken: false,
        }
    }

    /// The channel failed: nothing more can be published on it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one message; returns the publishes that settled meanwhile.
    pub async fn publish(
        &mut self,
        tag: T,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        while self.pending.len() >= self.size {
            settled.push(self.settle_oldest().await);
        }
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        match self
            .ch
            .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await
        {
            Ok(confirm) => self.pending.push_back((tag, confirm)),
            Err(e) => {
                self.broken = true;
                settled.push((tag, Err(SettleError::Channel(e.to_string()))));
            }
        }
        settled
    }

    /// Waits for every outstanding confirm.
    pub async fn drain(&mut self) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        while !self.pending.is_empty() {
            settled.push(self.settle_oldest().await);
        }
        settled
    }

    async fn settle_oldest(&mut self) -> Settled<T> {
        let (tag, confirm) = self.pending.pop_front().expect("a pending publish");
        let outcome = match tokio::time::timeout(self.timeout, confirm).await {
            Err(_) => Err(SettleError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                self.broken = true;
                Err(SettleError::Channel(e.to_string()))
            }
            Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                Err(SettleError::Unroutable)
            }
            Ok(Ok(Confirmation::Nack(None))) => Err(SettleError::Nacked),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
        };
        (tag, outcome)
    }
}

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

/// Reads a queue from its head with `basic.get`, leaving every message it
/// does not ack in place: see the module doc. Only the messages present when
/// the scan opened are read, so a queue that keeps filling does not keep
/// the scan going.
pub struct HeldScan {
    ch: Channel,
    queue: String,
    depth: u32,
    read: u32,
}

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

    /// The next message, unacked; None once the opening depth is read or the
    /// queue runs dry.
    pub async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.read >= self.depth {
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
        Ok(got.map(|m| {
            self.read += 1;
            m.delivery
        }))
    }

    /// Ends the scan: every message read and not acked goes back to the
    /// queue, in its original order.
    pub async fn release(self) {
        let _ = self.ch.close(200, "scan done".into()).await;
    }
}

/// Progress on stderr: a bar with rate and ETA on a terminal, a plain line
/// every few seconds otherwise (logs, CI).
pub struct Progress {
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
        let bar = std::io::stderr().is_terminal().then(|| {
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
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Prints a line on stdout (data, not progress) without tearing the bar.
    pub fn println_stdout(&self, line: &str) {
        match &self.bar {
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
