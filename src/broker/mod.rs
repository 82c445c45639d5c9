//! RabbitMQ: the names of everything the worker uses
//! (docs/topology.md), connections, topology declaration, publishing with
//! confirms, and the worker-owned message headers. Nothing here knows the
//! pipeline: callers hand it exchanges, routing keys, bodies and properties.

pub mod headers;
pub mod publish;
pub mod tls;
mod topology;

pub use publish::{PublishError, json_props, publish_confirmed};
pub use topology::{
    TopologyConflict, declare_callback_wait, declare_shadow, declare_topology, declare_wait_queues,
    jobs_queue_args,
};

use crate::config::BrokerConfig;
use crate::domain::ProviderName;
use anyhow::Context as _;
use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// Every broker name, with the prefix applied.
#[derive(Debug, Clone)]
pub struct Names {
    pub jobs_exchange: String,
    pub jobs_routing_key: String,
    pub jobs_queue: String,
    pub results_exchange: String,
    /// None: not declared.
    pub results_queue: Option<String>,
    /// Shadow mode's comparisons.
    pub shadow_exchange: String,
    /// None: not declared.
    pub shadow_queue: Option<String>,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub poison_queue: String,
    /// (queue name, delay) per ladder step.
    pub retry_queues: Vec<(String, Duration)>,
    /// Where Argos callback-mode jobs wait for their callback.
    pub callback_wait_queue: String,
    /// Where the jobs of a vendor at its limit wait, per vendor.
    pub wait_queues: Vec<(ProviderName, String)>,
}

impl Names {
    pub fn new(c: &BrokerConfig) -> Self {
        Names {
            jobs_exchange: c.name(&c.jobs_exchange),
            jobs_routing_key: c.jobs_routing_key.clone(),
            jobs_queue: c.name(&c.jobs_queue),
            results_exchange: c.name(&c.results_exchange),
            results_queue: (!c.results_queue.is_empty()).then(|| c.name(&c.results_queue)),
            shadow_exchange: c.name(&c.shadow_exchange),
            shadow_queue: (!c.shadow_queue.is_empty()).then(|| c.name(&c.shadow_queue)),
            dead_exchange: c.name(&c.dead_exchange),
            dead_queue: c.name(&c.dead_queue),
            poison_queue: c.name(&c.poison_queue),
            retry_queues: (0..c.retry_delays.len())
                .map(|i| (c.retry_queue(i), c.retry_delays[i]))
                .collect(),
            callback_wait_queue: c.name(&c.callback_wait_queue),
            wait_queues: ProviderName::ALL
                .into_iter()
                .map(|v| (v, c.wait_queue(v)))
                .collect(),
        }
    }

    /// The wait queue of `vendor`.
    pub fn wait_queue(&self, vendor: ProviderName) -> &str {
        self.wait_queues
            .iter()
            .find(|(v, _)| *v == vendor)
            .map(|(_, q)| q.as_str())
            .expect("every vendor has a wait queue name")
    }
}

/// Every connection (worker, publisher, operator commands, demo) comes
/// through here, so all use the same TLS settings.
pub async fn connect(c: &BrokerConfig) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(c.connection_name.clone()));
    tls::connect(&c.url, &c.tls, props).await
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
