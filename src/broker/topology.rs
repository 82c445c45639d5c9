//! Declaring the worker's exchanges and queues (docs/topology.md),
//! idempotently, and reading a conflict with what the broker already holds.

use super::Names;
use crate::config::BrokerConfig;
use crate::domain::ProviderName;
use anyhow::Context as _;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use std::time::Duration;

fn quorum_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    a
}

/// Dead-letter to `exchange`/`routing_key` without losing messages on the
/// way: at-least-once dead-lettering needs reject-publish overflow.
fn dead_letter_to(a: &mut FieldTable, exchange: &str, routing_key: &str) {
    a.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    a.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(routing_key.into()),
    );
    a.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    a.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
}

/// The jobs queue's arguments: quorum, the delivery-limit backstop, and
/// dead-lettering of raw jobs over it into the poison queue (through the
/// default exchange, which routes by queue name).
pub fn jobs_queue_args(c: &BrokerConfig) -> FieldTable {
    let mut a = quorum_args();
    a.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(c.delivery_limit.get()).unwrap_or(i32::MAX)),
    );
    dead_letter_to(&mut a, "", &c.name(&c.poison_queue));
    a
}

/// Declares everything the worker needs, idempotently. A queue that exists
/// with other arguments makes RabbitMQ refuse (406): the error names the
/// queue, the argument and both values.
pub async fn declare_topology(conn: &Connection, c: &BrokerConfig) -> anyhow::Result<()> {
    let n = Names::new(c);
    // A refused declaration closes its channel: use one of its own.
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (&n.jobs_exchange, ExchangeKind::Direct),
        (&n.results_exchange, ExchangeKind::Topic),
        (&n.dead_exchange, ExchangeKind::Topic),
    ] {
        ch.exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await
            .map_err(|e| declare_error("exchange", name, e))?;
    }

    let queue = |name: String, args: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
                .await
                .map_err(|e| declare_error("queue", &name, e))
        }
    };
    let bind = |q: String, ex: String, key: String| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                q.as_str().into(),
                ex.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot bind queue {q} to exchange {ex}"))
        }
    };

    queue(n.poison_queue.clone(), quorum_args()).await?;
    queue(n.jobs_queue.clone(), jobs_queue_args(c)).await?;
    bind(
        n.jobs_queue.clone(),
        n.jobs_exchange.clone(),
        n.jobs_routing_key.clone(),
    )
    .await?;

    for (name, delay) in &n.retry_queues {
        queue(name.clone(), delay_queue_args(&n, *delay)).await?;
    }

    if let Some(results) = &n.results_queue {
        queue(results.clone(), quorum_args()).await?;
        bind(results.clone(), n.results_exchange.clone(), "#".into()).await?;
    }
    queue(n.dead_queue.clone(), quorum_args()).await?;
    bind(n.dead_queue.clone(), n.dead_exchange.clone(), "#".into()).await?;
    let _ = ch.close(200, "topology declared".into()).await;
    Ok(())
}

/// Shadow mode's exchange and its queue (declared only in that mode; call
/// after [`declare_topology`]).
pub async fn declare_shadow(conn: &Connection, c: &BrokerConfig) -> anyhow::Result<()> {
    let n = Names::new(c);
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        n.shadow_exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(|e| declare_error("exchange", &n.shadow_exchange, e))?;
    if let Some(q) = &n.shadow_queue {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum_args(),
        )
        .await
        .map_err(|e| declare_error("queue", q, e))?;
        ch.queue_bind(
            q.as_str().into(),
            n.shadow_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot bind queue {q} to exchange {}", n.shadow_exchange))?;
    }
    let _ = ch.close(200, "shadow exchange declared".into()).await;
    Ok(())
}

/// A quorum queue whose messages expire after `delay` back into the jobs
/// exchange: a delay-ladder step, or the callback wait.
fn delay_queue_args(n: &Names, delay: Duration) -> FieldTable {
    let mut a = quorum_args();
    a.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay.as_millis() as i64),
    );
    dead_letter_to(&mut a, &n.jobs_exchange, &n.jobs_routing_key);
    a
}

/// The queue where Argos callback-mode jobs wait `wait` for their callback
/// (declared only in that mode; call after [`declare_topology`]).
pub async fn declare_callback_wait(
    conn: &Connection,
    c: &BrokerConfig,
    wait: Duration,
) -> anyhow::Result<()> {
    let n = Names::new(c);
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    ch.queue_declare(
        n.callback_wait_queue.as_str().into(),
        QueueDeclareOptions::durable(),
        delay_queue_args(&n, wait),
    )
    .await
    .map_err(|e| declare_error("queue", &n.callback_wait_queue, e))?;
    let _ = ch.close(200, "callback wait queue declared".into()).await;
    Ok(())
}

/// The wait queues of `vendors` (those with a rate limit or adaptive
/// concurrency): quorum, with the jobs queue's delivery limit and
/// dead-lettering into the poison queue, no TTL (call after
/// [`declare_topology`]).
pub async fn declare_wait_queues(
    conn: &Connection,
    c: &BrokerConfig,
    vendors: &[ProviderName],
) -> anyhow::Result<()> {
    if vendors.is_empty() {
        return Ok(());
    }
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    for v in vendors {
        let name = c.wait_queue(*v);
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            jobs_queue_args(c),
        )
        .await
        .map_err(|e| declare_error("queue", &name, e))?;
    }
    let _ = ch.close(200, "wait queues declared".into()).await;
    Ok(())
}

/// The broker holds a queue or exchange with other arguments than ours
/// (406 PRECONDITION_FAILED): waiting cannot fix it, an operator must.
#[derive(Debug, thiserror::Error)]
#[error(
    "RabbitMQ already holds {what} {name} with other arguments than this worker's: {detail}. \
     Align the configuration with the existing {what}, or move its messages and delete it"
)]
pub struct TopologyConflict {
    what: &'static str,
    name: String,
    detail: String,
}

fn declare_error(what: &'static str, name: &str, e: lapin::Error) -> anyhow::Error {
    let conflict =
        matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406);
    if conflict {
        TopologyConflict {
            what,
            name: name.to_owned(),
            detail: e.to_string(),
        }
        .into()
    } else {
        anyhow::anyhow!("cannot declare {what} {name}: {e}")
    }
}
