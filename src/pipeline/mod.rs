//! One job from delivery to disposition: the stages of the pipeline, each
//! in its own file, and [`Pipeline::step`] that runs them in order.
//!
//! ```text
//! Incoming ─► step ─► route ─┬─ fetch (image, back image) ─┬─► gate ─► call ─► outcome ─► Disposition
//!                            └─ outcome lookup ────────────┘    (pause,   (retries)  (store, audit)
//!                                                                breaker)
//! ```
//!
//! - [`step`]: the step function: an [`Incoming`] delivery in, a
//!   [`Finished`] disposition out. Never fails and never panics on input.
//! - [`fetch`]: the image download, retried while S3 fails, then checked.
//! - [`gate`]: everything that decides whether a vendor may be called now
//!   (credential pause, circuit breaker).
//! - [`call`]: one vendor call with in-process retries, every attempt
//!   recorded for the audit trail.
//! - [`outcome`]: the results store: lookup before a call, the outcome
//!   stored before it is published, pending callback records, the audit
//!   trail.
//! - [`shadow`]: shadow mode: a share of the jobs also sent to a second
//!   vendor after their result, the answers compared.
//! - [`callback`]: Argos callback mode: signed callback URLs, the job back
//!   from the callback wait, and what a callback settles.
//! - [`ladder`]: the one rule for the next step of the delay ladder.
//! - [`disposition`] and [`failure`]: what the step returns, and the typed
//!   failures it is built from.
//!
//! The consume loop, the concurrency limit, publishing, acking and shutdown
//! live outside (`worker`). This module names no broker, SDK or HTTP type:
//! the image store, the results store and the vendors are traits, and the
//! tests in `tests.rs` drive [`Pipeline::step`] through in-memory fakes on a
//! paused clock.

mod aimd;
mod backoff;
mod breaker;
pub mod call;
pub mod callback;
pub mod claim;
mod context;
pub mod disposition;
mod failure;
#[cfg(test)]
mod fakes;
pub mod fetch;
pub mod gate;
pub mod ladder;
pub mod outcome;
pub mod shadow;
mod step;
#[cfg(test)]
mod tests;
pub mod token;
pub mod traffic;
mod verify;

pub use callback::CallbackSettings;
pub use context::{Origin, Signals};
pub use disposition::{Disposition, Finished};
pub use failure::now_rfc3339;
pub use shadow::ShadowRun;
pub use step::Incoming;

use crate::config::{Config, ShadowConfig, TrafficConfig};
use crate::coordination::{Claims, TrafficStore};
use crate::domain::ProviderName;
use crate::domain::routing::Routing;
use crate::providers::Provider;
use crate::store::{ImageStore, OutcomeStore};
use crate::telemetry::Metrics;
use backoff::Backoff;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the pipeline needs from configuration.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub routing: Routing,
    pub max_job_bytes: usize,
    pub max_image_bytes: u64,
    /// The byte budget of images held at once (`Fetcher::reserve`).
    pub max_image_bytes_in_flight: u64,
    pub job_deadline: Duration,
    pub attempts_per_delivery: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
    /// Steps on the delay ladder.
    pub ladder_len: usize,
    pub credentials_park_step: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub pause_probe_interval: Duration,
    pub poison_threshold: u32,
    pub worker_id: String,
    /// How long a paid-for outcome is retried into the results store.
    pub store_timeout: Duration,
    /// Write an audit record of vendor attempts that produced no outcome.
    pub audit: bool,
    /// How long a claim on a job lasts unless renewed.
    pub claim_lease: Duration,
    /// Vendor traffic control (rates, adaptive concurrency, budgets).
    pub traffic: TrafficConfig,
    /// Vendors tried in order while a check's default one cannot be called.
    pub failover_document: Vec<ProviderName>,
    pub failover_face: Vec<ProviderName>,
    /// Shadow mode: a share of the jobs also sent to a second vendor.
    pub shadow: ShadowConfig,
}

impl PipelineConfig {
    pub fn from_config(c: &Config) -> Self {
        PipelineConfig {
            routing: c.routing(),
            max_job_bytes: c.worker.max_job_bytes,
            max_image_bytes: c.worker.max_image_bytes.get(),
            max_image_bytes_in_flight: c.worker.max_image_bytes_in_flight.get(),
            job_deadline: c.worker.job_deadline,
            attempts_per_delivery: c.retry.attempts_per_delivery.get(),
            initial_backoff: c.retry.initial_backoff,
            max_backoff: c.retry.max_backoff,
            max_retry_after: c.retry.max_retry_after,
            ladder_len: c.broker.retry_delays.len(),
            credentials_park_step: c.retry.credentials_park_step,
            breaker_failures: c.retry.breaker_failures.get(),
            breaker_cooldown: c.retry.breaker_cooldown,
            pause_probe_interval: c.retry.pause_probe_interval,
            poison_threshold: c.broker.poison_threshold.get(),
            worker_id: c.worker_identity(),
            store_timeout: c.results.store_timeout,
            audit: c.results.audit,
            claim_lease: c.coordination.claim_lease,
            traffic: c.traffic.clone(),
            failover_document: c.providers.failover_document.clone(),
            failover_face: c.providers.failover_face.clone(),
            shadow: c.shadow.clone(),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial_backoff,
            max: self.max_backoff,
            attempts: self.attempts_per_delivery,
        }
    }
}

/// The stages, assembled. Built once per process and shared by every job.
pub struct Pipeline {
    cfg: PipelineConfig,
    fetch: fetch::Fetcher,
    vendors: call::Vendors,
    outcomes: outcome::Outcomes,
    claims: claim::ClaimStage,
    callbacks: Option<CallbackSettings>,
    shadow: shadow::Shadow,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        images: Arc<dyn ImageStore>,
        providers: Vec<Arc<dyn Provider>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let providers: HashMap<ProviderName, Arc<dyn Provider>> =
            providers.into_iter().map(|p| (p.name(), p)).collect();
        let traffic = traffic::Traffic::new(
            &cfg.traffic,
            providers.keys().copied(),
            None,
            metrics.clone(),
        );
        let gate = gate::VendorGate::new(
            providers.keys().copied(),
            cfg.breaker_failures,
            cfg.breaker_cooldown,
            cfg.pause_probe_interval,
            traffic,
            metrics.clone(),
        );
        Pipeline {
            fetch: fetch::Fetcher::new(
                images,
                cfg.backoff(),
                metrics.clone(),
                cfg.max_image_bytes_in_flight,
            ),
            vendors: call::Vendors::new(
                providers,
                gate,
                cfg.backoff(),
                cfg.max_retry_after,
                cfg.job_deadline,
                cfg.worker_id.clone(),
                metrics.clone(),
            ),
            outcomes: outcome::Outcomes::new(
                None,
                cfg.backoff(),
                cfg.store_timeout,
                cfg.audit,
                metrics.clone(),
            ),
            claims: claim::ClaimStage::new(
                None,
                cfg.claim_lease,
                cfg.worker_id.clone(),
                metrics.clone(),
            ),
            callbacks: None,
            shadow: shadow::Shadow::new(cfg.shadow.clone()),
            metrics,
            cfg,
        }
    }

    /// Adds the results store: outcomes are looked up before any vendor
    /// call and stored before they are published (pay once).
    pub fn with_outcomes(mut self, store: Arc<dyn OutcomeStore>) -> Self {
        self.outcomes = outcome::Outcomes::new(
            Some(store),
            self.cfg.backoff(),
            self.cfg.store_timeout,
            self.cfg.audit,
            self.metrics.clone(),
        );
        self
    }

    /// Adds the coordination store: a job is claimed fleet-wide before its
    /// lookup and vendor call.
    pub fn with_claims(mut self, claims: Arc<dyn Claims>) -> Self {
        self.claims = claim::ClaimStage::new(
            Some(claims),
            self.cfg.claim_lease,
            self.cfg.worker_id.clone(),
            self.metrics.clone(),
        );
        self
    }

    /// Adds the coordination store's traffic state: rate limits, 429
    /// blocks and budgets are shared by the fleet.
    pub fn with_traffic(mut self, store: Arc<dyn TrafficStore>) -> Self {
        let traffic = traffic::Traffic::new(
            &self.cfg.traffic,
            self.vendors.names(),
            Some(store),
            self.metrics.clone(),
        );
        self.vendors.set_traffic(traffic);
        self
    }

    /// The traffic limits (the worker tells them how many replicas share
    /// the rates when there is no coordination store).
    pub fn traffic(&self) -> &traffic::Traffic {
        self.vendors.traffic()
    }

    /// The claim stage (the callback receiver claims a job it settles).
    pub fn claims(&self) -> &claim::ClaimStage {
        &self.claims
    }

    /// Turns on Argos callback mode (needs the results store).
    pub fn with_callbacks(mut self, callbacks: CallbackSettings) -> Self {
        self.callbacks = Some(callbacks);
        self
    }

    pub fn callbacks(&self) -> Option<&CallbackSettings> {
        self.callbacks.as_ref()
    }

    /// The results store stage (the callback receiver reads pending records
    /// through it).
    pub fn outcomes(&self) -> &outcome::Outcomes {
        &self.outcomes
    }

    /// What this replica sees of each vendor now (for the fleet heartbeat).
    pub fn vendor_states(&self) -> Vec<crate::coordination::VendorState> {
        self.vendors.states()
    }

    /// `worker.max_job_bytes`: larger bodies are refused unparsed.
    pub fn max_job_bytes(&self) -> usize {
        self.cfg.max_job_bytes
    }

    /// Whether any job is shadowed (the worker then declares the shadow
    /// exchange).
    pub fn shadows(&self) -> bool {
        self.cfg.shadow.enabled()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }
}
