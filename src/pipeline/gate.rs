//! The vendor gate: everything that decides whether a vendor may be called
//! now. Today a credential pause and a circuit breaker per vendor, both
//! local to this replica; fleet-wide limits plug in here.
//!
//! - Pause: a credentials refusal pauses the vendor; its jobs park on the
//!   ladder without a call. One job per `retry.pause_probe_interval` goes
//!   through as the probe; an answer that shows the key works resumes it.
//! - Breaker: after `retry.breaker_failures` outages in a row the vendor
//!   counts as down for `retry.breaker_cooldown`; then one call probes it.

use super::breaker::Breaker;
use super::failure::Failed;
use crate::domain::{AttemptOutcome, ProviderName};
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct VendorGate {
    vendors: HashMap<ProviderName, Lanes>,
    metrics: Arc<Metrics>,
}

/// One vendor's state.
struct Lanes {
    breaker: Breaker,
    /// Open while the vendor refuses our credentials, letting one job
    /// through per probe interval.
    pause: Breaker,
}

impl VendorGate {
    pub fn new(
        vendors: impl IntoIterator<Item = ProviderName>,
        breaker_failures: u32,
        breaker_cooldown: Duration,
        pause_probe_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let vendors = vendors
            .into_iter()
            .map(|v| {
                let lanes = Lanes {
                    breaker: Breaker::new(breaker_failures, breaker_cooldown),
                    pause: Breaker::new(1, pause_probe_interval),
                };
                (v, lanes)
            })
            .collect();
        VendorGate { vendors, metrics }
    }

    /// Whether `vendor` may be called now; if not, the job parks. A `true`
    /// from a paused or open lane is its one probe.
    pub fn admit(&self, vendor: ProviderName) -> Result<(), Failed> {
        let lanes = &self.vendors[&vendor];
        if !lanes.pause.allows() {
            return Err(Failed::Park {
                vendor,
                reason: format!(
                    "{vendor} is paused because it refused our credentials; its jobs are parked until a probe \
                     (one job every retry.pause_probe_interval) is accepted. Fix the key in the configuration"
                ),
            });
        }
        if !lanes.breaker.allows() {
            return Err(Failed::Park {
                vendor,
                reason: format!(
                    "{vendor} is failing every call (circuit breaker open); the job waits on the delay ladder"
                ),
            });
        }
        Ok(())
    }

    /// Records how an attempt ended. `outage`: the vendor looked down (what
    /// the breaker counts).
    pub fn record(&self, vendor: ProviderName, outcome: AttemptOutcome, outage: bool) {
        let lanes = &self.vendors[&vendor];
        self.metrics
            .set_breaker_open(vendor, lanes.breaker.record(outage));
        // A refusal pauses the vendor; an answer that shows the key works
        // (a verdict, or a complaint about the request) resumes it.
        let was_paused = lanes.pause.is_open();
        let paused = match outcome {
            AttemptOutcome::Credentials => lanes.pause.record(true),
            AttemptOutcome::Ok | AttemptOutcome::Rejected => lanes.pause.record(false),
            AttemptOutcome::Transient => was_paused,
        };
        if paused != was_paused {
            if paused {
                tracing::error!(vendor = %vendor, "Vendor refused our credentials: pausing it; its jobs are parked until a probe succeeds");
            } else {
                tracing::info!(vendor = %vendor, "Vendor accepted our credentials again: resuming it");
            }
        }
        self.metrics.set_paused(vendor, paused);
    }
}
