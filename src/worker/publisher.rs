//! The worker's publishing connection: its own connection and confirm
//! channel, opened when first needed and again after a failure. Jobs
//! publish concurrently on the one channel; the lock is held only to
//! (re)connect, bounded by `broker.connect_timeout`, never across a confirm
//! or a close.
//!
//! Every publish is mandatory: a message no queue would receive comes back
//! and is a failure, never a silent loss. A failed publish is retried with
//! backoff for `broker.publish_timeout`, reconnecting when the channel is
//! gone; the caller keeps the job's delivery meanwhile.

use crate::broker::{self, PublishError};
use crate::config::BrokerConfig;
use crate::telemetry::{PublishTarget, Telemetry};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// One message to publish.
pub struct Outgoing {
    pub target: PublishTarget,
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub props: BasicProperties,
}

pub struct Publisher {
    cfg: BrokerConfig,
    link: tokio::sync::Mutex<Link>,
    telemetry: Telemetry,
    /// Per target: whether its last publish came back unroutable (so the
    /// condition is logged once, when it starts and when it ends).
    unroutable: [AtomicBool; PublishTarget::ALL.len()],
}

#[derive(Default)]
struct Link {
    /// The connection and its confirm channel, while usable.
    open: Option<(Connection, Channel)>,
    /// Bumped at each reconnect, so a failure seen on an old channel does
    /// not tear down a newer one.
    generation: u64,
}

/// How long closing a broken connection may take (outside the lock).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two tries of one publish.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Publisher {
    pub fn new(cfg: &BrokerConfig, telemetry: Telemetry) -> Self {
        Publisher {
            cfg: cfg.clone(),
            link: tokio::sync::Mutex::new(Link::default()),
            telemetry,
            unroutable: Default::default(),
        }
    }

    /// Records whether a publish to `out`'s target was routable; logs and
    /// flags a change.
    fn routable(&self, out: &Outgoing, routable: bool) {
        let target = out.target;
        let was = self.unroutable[target as usize].swap(!routable, Ordering::SeqCst);
        self.telemetry.metrics.set_unroutable(target, !routable);
        if target == PublishTarget::Results {
            self.telemetry.health.set_results_unroutable(!routable);
        }
        match (was, routable) {
            (false, false) => tracing::error!(
                exchange = %out.exchange,
                routing_key = %out.routing_key,
                target = target.as_str(),
                "The broker returned a publish as unroutable: no queue is bound for it. Jobs are held and retried, not acked, until one is"
            ),
            (true, true) => {
                tracing::info!(target = target.as_str(), "Publishes are routable again")
            }
            _ => {}
        }
    }

    /// The current channel, connecting first if there is none.
    async fn channel(&self) -> Result<(Channel, u64), PublishError> {
        let mut link = self.link.lock().await;
        if let Some((_, ch)) = &link.open
            && ch.status().connected()
        {
            return Ok((ch.clone(), link.generation));
        }
        let connect_timeout = self.cfg.connect_timeout;
        let opened = tokio::time::timeout(connect_timeout, async {
            let conn = broker::connect(&self.cfg).await?;
            let ch = broker::confirm_channel(&conn).await?;
            Ok::<_, anyhow::Error>((conn, ch))
        })
        .await;
        let (conn, ch) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(PublishError::Channel(format!("{e:#}"))),
            Err(_) => {
                return Err(PublishError::Channel(format!(
                    "could not connect to RabbitMQ within broker.connect_timeout ({connect_timeout:?})"
                )));
            }
        };
        link.generation += 1;
        link.open = Some((conn, ch.clone()));
        Ok((ch, link.generation))
    }

    /// Forgets the channel of `generation` after it failed.
    async fn broken(&self, generation: u64) {
        let stale = {
            let mut link = self.link.lock().await;
            if link.generation == generation {
                link.open.take()
            } else {
                None
            }
        };
        // Closed outside the lock and within a bound: a broker that does
        // not answer must not hold up the publishes that reconnect.
        if let Some((conn, _)) = stale {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "reconnecting".into())).await;
        }
    }

    /// Publishes `out` and waits for the broker's confirm, retrying a
    /// failure with backoff for `broker.publish_timeout`.
    pub async fn publish(&self, out: &Outgoing) -> Result<(), PublishError> {
        let give_up = Instant::now() + self.cfg.publish_timeout;
        let mut wait = Duration::from_millis(200);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = match self.channel().await {
                Ok((ch, generation)) => {
                    let r = broker::publish_confirmed(
                        &ch,
                        &out.exchange,
                        &out.routing_key,
                        &out.payload,
                        out.props.clone(),
                        true,
                        self.cfg.confirm_timeout,
                    )
                    .await;
                    if matches!(r, Err(PublishError::Channel(_))) {
                        self.broken(generation).await;
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => self.routable(out, true),
                Err(PublishError::Unroutable) => self.routable(out, false),
                Err(_) => {}
            }
            let Err(e) = result else {
                return Ok(());
            };
            if Instant::now() + wait >= give_up {
                return Err(e);
            }
            tracing::warn!(error = %e, tries, delay_ms = wait.as_millis() as u64, "Publish not confirmed, retrying");
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        if let Some((conn, _)) = self.link.lock().await.open.take() {
            let _ = conn.close(200, "bye".into()).await;
        }
    }
}
