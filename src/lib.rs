//! # liveness-worker
//!
//! A batch worker between a company's systems and presentation-attack
//! detection vendors: jobs arrive on RabbitMQ, images come from S3, vendor
//! answers are normalized into one result contract.
//!
//! Components, lowest layer first (docs/ARCHITECTURE.md has the map, the
//! life of one job and where each guarantee is enforced; a test keeps the
//! layering: `cargo test --test it architecture`):
//! - [`domain`]: the message contracts (job, result, dead letter), verdict
//!   rules, the vendor-neutral [`domain::assessment::Assessment`] and a
//!   job's progress across deliveries. Pure: no I/O.
//! - [`config`]: one typed configuration tree, loaded in layers.
//! - [`telemetry`]: logs, metrics (typed labels), probes.
//! - [`store`], [`providers`], [`broker`], [`coordination`]: S3 (images,
//!   the results store), one folder per vendor behind
//!   [`providers::Provider`], RabbitMQ (topology, confirms, the
//!   worker-owned headers), Redis (claims, fleet heartbeats).
//! - [`pipeline`]: one delivery from body to [`pipeline::Finished`], in
//!   stages. Knows no broker, SDK or HTTP type.
//! - [`worker`]: the consume loop, the one finish path (publish with
//!   confirms, count, ack), the Argos callback receiver.
//! - [`ops`]: the operator commands (enqueue, backfill, replay, status).
//! - [`emulator`], [`demo`], [`samples`], [`schema`]: the vendor double,
//!   the demo, sample images, the JSON Schemas.

pub mod broker;
pub mod config;
pub mod console;
pub mod coordination;
pub mod demo;
pub mod domain;
pub mod emulator;
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
