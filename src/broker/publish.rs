//! Publishing with publisher confirms: a message is the broker's
//! responsibility only once the broker confirmed it. One reading of a
//! confirmation ([`settle`]) serves the worker, the callback receiver and
//! the operator commands.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::time::Duration;

/// Why a publish did not become the broker's responsibility.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (publisher nack)")]
    Nacked,
    #[error("no queue is bound to the exchange for this routing key (message returned)")]
    Unroutable,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("channel failed: {0}")]
    Channel(String),
}

/// What a confirmation says about one publish. A mandatory message that no
/// queue took comes back (returned) before its confirm: that is a failure,
/// whatever the confirm says.
pub fn settle(r: lapin::Result<Confirmation>) -> Result<(), PublishError> {
    match r {
        Err(e) => Err(PublishError::Channel(e.to_string())),
        Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
            Err(PublishError::Unroutable)
        }
        Ok(Confirmation::Nack(None)) => Err(PublishError::Nacked),
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
    }
}

/// Publishes one message and waits for the broker's confirm.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    mandatory: bool,
    timeout: Duration,
) -> Result<(), PublishError> {
    let opts = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirm = async {
        ch.basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await?
            .await
    };
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(PublishError::Timeout(timeout)),
        Ok(r) => settle(r),
    }
}

/// Properties of a worker-published JSON message.
pub fn json_props(
    message_id: Option<&str>,
    correlation_id: Option<&ShortString>,
) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    if let Some(id) = message_id.filter(|id| id.len() <= 255) {
        p = p.with_message_id(id.into());
    }
    if let Some(c) = correlation_id {
        p = p.with_correlation_id(c.clone());
    }
    p
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
pub type Settled<T> = (T, Result<(), PublishError>);

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
                settled.push((tag, Err(PublishError::Channel(e.to_string()))));
            }
        }
        settled.extend(self.settle_ready());
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
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(r) => self.outcome(r),
        };
        (tag, outcome)
    }

    /// Settles the oldest publishes whose confirm has already arrived, so
    /// callers can act on them (ack a source message) without waiting for
    /// the window to fill.
    pub fn settle_ready(&mut self) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        while let Some((_, confirm)) = self.pending.front_mut() {
            let Some(r) = futures_util::FutureExt::now_or_never(&mut *confirm) else {
                break;
            };
            let (tag, _) = self.pending.pop_front().expect("front exists");
            let outcome = self.outcome(r);
            settled.push((tag, outcome));
        }
        settled
    }

    fn outcome(&mut self, r: lapin::Result<Confirmation>) -> Result<(), PublishError> {
        let settled = settle(r);
        if matches!(settled, Err(PublishError::Channel(_))) {
            self.broken = true;
        }
        settled
    }
}
