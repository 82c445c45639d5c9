//! Publishing jobs to the jobs exchange with a window of confirms in
//! flight, for `enqueue` and its S3 backfill.

use super::Progress;
use crate::broker::publish::{ConfirmWindow, Settled};
use crate::broker::{self, Names};
use crate::config::Config;
use anyhow::Context as _;
use lapin::Connection;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

/// Publishes validated jobs, keeping a window of confirms in flight, and
/// reports every publish that did not become the broker's.
pub(crate) struct JobPublisher {
    window: ConfirmWindow<String>,
    exchange: String,
    routing_key: String,
    pub published: u64,
    pub unconfirmed: u64,
    pub progress: Progress,
}

impl JobPublisher {
    pub async fn open(
        conn: &Connection,
        cfg: &Config,
        window: usize,
        progress: Progress,
    ) -> anyhow::Result<JobPublisher> {
        let names = Names::new(&cfg.broker);
        ensure_exchange(conn, &names.jobs_exchange).await?;
        let ch = broker::confirm_channel(conn).await?;
        Ok(JobPublisher {
            window: ConfirmWindow::new(ch, window, cfg.broker.confirm_timeout),
            exchange: names.jobs_exchange,
            routing_key: names.jobs_routing_key,
            published: 0,
            unconfirmed: 0,
            progress,
        })
    }

    /// False once the channel failed: stop sending.
    pub fn usable(&self) -> bool {
        !self.window.is_broken()
    }

    /// Sends one job; `what` names it in failure reports.
    pub async fn send(&mut self, what: String, job_id: &str, body: &[u8]) {
        let props = broker::json_props(Some(job_id), None);
        let settled = self
            .window
            .publish(what, &self.exchange, &self.routing_key, body, props)
            .await;
        self.count(settled);
    }

    pub async fn finish(mut self) -> (u64, u64) {
        let settled = self.window.drain().await;
        self.count(settled);
        self.progress.finish();
        (self.published, self.unconfirmed)
    }

    fn count(&mut self, settled: Vec<Settled<String>>) {
        for (what, outcome) in settled {
            match outcome {
                Ok(()) => {
                    self.published += 1;
                    self.progress.inc(1);
                }
                Err(e) => {
                    self.unconfirmed += 1;
                    self.progress
                        .println(&format!("{what}: not published: {e}"));
                }
            }
        }
    }
}

/// The jobs exchange must exist: publishing to a missing one would close
/// the channel with a less helpful message.
pub(crate) async fn ensure_exchange(conn: &Connection, exchange: &str) -> anyhow::Result<()> {
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let opts = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "exchange {exchange} is not usable ({e}); start the worker once with this configuration: it declares the topology"
        )
    })?;
    let _ = ch.close(200, "checked".into()).await;
    Ok(())
}
