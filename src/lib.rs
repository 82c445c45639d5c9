//! # liveness-worker
//!
//! A batch worker between a company's systems and presentation-attack
//! detection vendors: jobs arrive on RabbitMQ, images come from S3, vendor
//! answers are normalized into one result contract.
//!
//! Components (folders are roles):
//! - [`domain`]: the message contracts (job, result, dead letter), verdict
//!   rules and the vendor-neutral [`domain::assessment::Assessment`]. Pure.
//! - [`pipeline`]: one delivery from body to [`pipeline::Disposition`]
//!   (publish a result, retry later, dead-letter). Knows no broker or SDK type.
//! - [`broker`]: RabbitMQ topology, the consume loop with bounded
//!   concurrency, publisher confirms, ack after confirm; [`broker_tls`]
//!   opens the connection (TLS for `amqps://`).
//! - [`store`]: the S3 image store.
//! - [`providers`]: one folder per vendor (client, wire types, pure
//!   normalization) behind the [`providers::Provider`] trait.
//! - [`emulator`]: a contract-faithful double of the vendors for tests and demos.
//! - [`ops`]: the operator commands (enqueue, backfill, replay, status).
//! - [`config`], [`telemetry`], [`schema`]: configuration, logging, JSON Schemas.

pub mod breaker;
pub mod broker;
pub mod broker_tls;
pub mod callbacks;
pub mod config;
pub mod demo;
pub mod domain;
pub mod emulator;
pub mod image;
pub mod ops;
pub mod pipeline;
pub mod providers;
pub mod samples;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod worker;

/// Selects ring as the process's TLS crypto provider (reqwest is built
/// without one, and the S3 client uses ring too). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
