//! The worker's publishing connection: its own connection and confirm
//! channel, opened when first needed and again after a failure. Jobs
//! publish concurrently on the one channel; the lock is held only to
//! (re)connect, never across a confirm.

use crate::broker::{self, PublishError};
use crate::config::BrokerConfig;
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;

/// One message to publish.
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub props: BasicProperties,
}

pub struct Publisher {
    cfg: BrokerConfig,
    link: tokio::sync::Mutex<Link>,
}

#[derive(Default)]
struct Link {
    /// The connection and its confirm channel, while usable.
    open: Option<(Connection, Channel)>,
    /// Bumped at each reconnect, so a failure seen on an old channel does
    /// not tear down a newer one.
    generation: u64,
}

/// How long connecting may take before the publish counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes per message before giving up: a nack or a missing confirm is
/// retried after a short pause, a broken channel after reconnecting.
const TRIES: u32 = 3;

impl Publisher {
    pub fn new(cfg: &BrokerConfig) -> Self {
        Publisher {
            cfg: cfg.clone(),
            link: tokio::sync::Mutex::new(Link::default()),
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
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
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
                    "could not connect to RabbitMQ within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        link.generation += 1;
        link.open = Some((conn, ch.clone()));
        Ok((ch, link.generation))
    }

    /// Forgets the channel of `generation` after it failed.
    async fn broken(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.generation == generation
            && let Some((conn, _)) = link.open.take()
        {
            let _ = conn.close(200, "reconnecting".into()).await;
        }
    }

    /// Publishes `out` and waits for the broker's confirm.
    pub async fn publish(&self, out: &Outgoing) -> Result<(), PublishError> {
        let mut tries = 0;
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
                        false,
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
            match result {
                Ok(()) => return Ok(()),
                Err(e) if tries >= TRIES => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, tries, "Publish not confirmed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                }
            }
        }
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        if let Some((conn, _)) = self.link.lock().await.open.take() {
            let _ = conn.close(200, "bye".into()).await;
        }
    }
}
