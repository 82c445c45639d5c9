//! RabbitMQ: topology (DESIGN §4), message properties, and publishing with
//! publisher confirms. The consume loop lives in `worker`.

use crate::config::BrokerConfig;
use crate::pipeline::{Carried, Disposition};
use anyhow::Context as _;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

pub const H_ATTEMPTS: &str = "x-liveness-attempts";
pub const H_LADDER_STEP: &str = "x-liveness-ladder-step";
pub const H_FIRST_RECEIVED: &str = "x-liveness-first-received-at";
/// Argos callback mode: submissions made so far, and whether this message is
/// the job coming back from the callback wait.
pub const H_CALLBACK_SUBMISSIONS: &str = "x-liveness-callback-submissions";
pub const H_AWAITING_CALLBACK: &str = "x-liveness-awaiting-callback";
/// Set by `replay`: how many times the job was replayed, and when last.
/// They follow the job onto the delay ladder and onto its dead letter, so a
/// second replay counts on.
pub const H_REPLAYS: &str = "x-liveness-replays";
pub const H_REPLAYED_AT: &str = "x-liveness-replayed-at";

/// The replay headers of a job's properties, for the messages it becomes.
pub fn replay_headers(props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if k.as_str() == H_REPLAYS || k.as_str() == H_REPLAYED_AT {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Every broker name, with the prefix applied.
#[derive(Debug, Clone)]
pub struct Names {
    pub jobs_exchange: String,
    pub jobs_routing_key: String,
    pub jobs_queue: String,
    pub results_exchange: String,
    /// None: not declared.
    pub results_queue: Option<String>,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub poison_queue: String,
    /// (queue name, delay) per ladder step.
    pub retry_queues: Vec<(String, Duration)>,
    /// Where Argos callback-mode jobs wait for their callback.
    pub callback_wait_queue: String,
}

impl Names {
    pub fn new(c: &BrokerConfig) -> Self {
        Names {
            jobs_exchange: c.name(&c.jobs_exchange),
            jobs_routing_key: c.jobs_routing_key.clone(),
            jobs_queue: c.name(&c.jobs_queue),
            results_exchange: c.name(&c.results_exchange),
            results_queue: (!c.results_queue.is_empty()).then(|| c.name(&c.results_queue)),
            dead_exchange: c.name(&c.dead_exchange),
            dead_queue: c.name(&c.dead_queue),
            poison_queue: c.name(&c.poison_queue),
            retry_queues: (0..c.retry_delays.len())
                .map(|i| (c.retry_queue(i), c.retry_delays[i]))
                .collect(),
            callback_wait_queue: c.name(&c.callback_wait_queue),
        }
    }
}

pub async fn connect(c: &BrokerConfig) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(c.connection_name.clone()));
    // Every connection (worker, callback publisher, operator commands, demo)
    // comes through here, so all use the same TLS settings.
    crate::broker_tls::connect(&c.url, &c.tls, props).await
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn
        .create_channel()
        .await
        .context("cannot open a RabbitMQ channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    Ok(ch)
}

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
        AMQPValue::LongInt(c.delivery_limit as i32),
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

/// Why a publish did not become safe.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (publisher nack)")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("publish failed: {0}")]
    Channel(#[from] lapin::Error),
}

/// Publishes and waits for the broker's confirm: only then is the message
/// the broker's responsibility.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let confirm = async {
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await
    };
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(PublishError::Timeout(timeout)),
        Ok(Err(e)) => Err(PublishError::Channel(e)),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => Ok(()),
    }
}

/// A disposition as the message to publish: where, with what body and
/// properties. None for a disposition that publishes nothing.
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub props: BasicProperties,
}

impl Outgoing {
    /// `body` and `props` are the job's own (its delivery's).
    pub fn of(
        d: &Disposition,
        names: &Names,
        body: &[u8],
        props: &BasicProperties,
    ) -> Option<Self> {
        let corr = props.correlation_id().as_ref();
        let out = match d {
            Disposition::Publish(r) => Outgoing {
                exchange: names.results_exchange.clone(),
                routing_key: r.routing_key(),
                payload: serde_json::to_vec(r).expect("result serializes"),
                props: json_props(Some(&r.job_id), corr),
            },
            Disposition::DeadLetter(dl) => {
                let mut p = json_props(dl.job_id.as_deref(), corr);
                let replays = replay_headers(props);
                if !replays.inner().is_empty() {
                    p = p.with_headers(replays);
                }
                Outgoing {
                    exchange: names.dead_exchange.clone(),
                    routing_key: dl.failure.class.as_str().to_owned(),
                    payload: serde_json::to_vec(dl).expect("dead letter serializes"),
                    props: p,
                }
            }
            Disposition::RetryLater {
                step,
                carried,
                reason,
                ..
            } => {
                tracing::info!(step, reason = %reason, "Parking the job on the delay ladder");
                Outgoing {
                    exchange: String::new(),
                    routing_key: names.retry_queues[*step].0.clone(),
                    payload: body.to_vec(),
                    props: ladder_props(props, carried),
                }
            }
            Disposition::AwaitCallback { carried, .. } => Outgoing {
                exchange: String::new(),
                routing_key: names.callback_wait_queue.clone(),
                payload: body.to_vec(),
                props: ladder_props(props, carried),
            },
            Disposition::Settled { .. } => return None,
        };
        Some(out)
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

/// Properties for putting a job on the delay ladder: the producer's own
/// properties and headers, minus what the broker owns, plus our carried state.
pub fn ladder_props(original: &BasicProperties, carried: &Carried) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            let key = k.as_str();
            let broker_owned = key == "x-delivery-count"
                || key.starts_with("x-death")
                || key.starts_with("x-first-death")
                || key.starts_with("x-last-death");
            let ladder_owned =
                key.starts_with("x-liveness-") && key != H_REPLAYS && key != H_REPLAYED_AT;
            if !broker_owned && !ladder_owned {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(
        H_ATTEMPTS.into(),
        AMQPValue::LongLongInt(carried.attempts as i64),
    );
    headers.insert(
        H_LADDER_STEP.into(),
        AMQPValue::LongLongInt(carried.ladder_step as i64),
    );
    if let Some(t) = &carried.first_received_at {
        headers.insert(
            H_FIRST_RECEIVED.into(),
            AMQPValue::LongString(t.as_str().into()),
        );
    }
    if carried.callback_submissions > 0 {
        headers.insert(
            H_CALLBACK_SUBMISSIONS.into(),
            AMQPValue::LongLongInt(carried.callback_submissions as i64),
        );
    }
    if carried.awaiting_callback {
        headers.insert(H_AWAITING_CALLBACK.into(), AMQPValue::Boolean(true));
    }
    let mut p = original.clone().with_headers(headers).with_delivery_mode(2);
    if original.content_type().is_none() {
        p = p.with_content_type("application/json".into());
    }
    p
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn as_u32(v: &AMQPValue) -> Option<u32> {
    let n: i64 = match v {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::Timestamp(n) => *n as i64,
        _ => return None,
    };
    u32::try_from(n.max(0)).ok()
}

/// `x-delivery-count`: earlier deliveries of this message (0 when absent).
pub fn delivery_count(props: &BasicProperties) -> u32 {
    header(props, "x-delivery-count")
        .and_then(as_u32)
        .unwrap_or(0)
}

/// State the ladder carried in headers. Producers cannot be trusted to
/// leave these alone, so odd values are ignored rather than obeyed.
pub fn carried(props: &BasicProperties) -> Carried {
    Carried {
        attempts: header(props, H_ATTEMPTS).and_then(as_u32).unwrap_or(0),
        ladder_step: header(props, H_LADDER_STEP).and_then(as_u32).unwrap_or(0),
        first_received_at: header(props, H_FIRST_RECEIVED).and_then(|v| match v {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
            _ => None,
        }),
        callback_submissions: header(props, H_CALLBACK_SUBMISSIONS)
            .and_then(as_u32)
            .unwrap_or(0),
        awaiting_callback: matches!(
            header(props, H_AWAITING_CALLBACK),
            Some(AMQPValue::Boolean(true))
        ),
    }
}
