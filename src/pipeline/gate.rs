//! The vendor gate: everything that decides whether a vendor may be called
//! now: a credential pause and a circuit breaker per vendor, both local to
//! this replica; and the fleet-wide limits it holds (rate, adaptive
//! concurrency, spend budget: [`super::traffic`]), taken right after the
//! gate admits an attempt, in the same loop of [`super::call`].
//!
//! - Pause: a credentials refusal pauses the vendor; its jobs park on the
//!   ladder without a call. One job per `retry.pause_probe_interval` goes
//!   through as the probe; an answer that shows the key works resumes it.
//! - Breaker: after `retry.breaker_failures` outages in a row the vendor
//!   counts as down for `retry.breaker_cooldown`; then one call probes it.

use super::breaker::Breaker;
use super::failure::Failed;
use super::traffic::Traffic;
use crate::coordination::VendorState;
use crate::domain::{AttemptOutcome, ProviderName};
use crate::telemetry::Metrics;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct VendorGate {
    vendors: HashMap<ProviderName, Lanes>,
    /// The fleet-wide limits, taken after [`VendorGate::admit`].
    traffic: Traffic,
    metrics: Arc<Metrics>,
}

/// One vendor's state.
struct Lanes {
    breaker: Breaker,
    /// Open while the vendor refuses our credentials, letting one job
    /// through per probe interval.
    pause: Breaker,
    /// What this replica sees of the vendor now, for the fleet heartbeat.
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    in_flight: u32,
    /// The latest attempt durations, in milliseconds (a bounded window).
    latencies: VecDeque<f64>,
    paused_reason: Option<String>,
}

/// Attempt durations kept per vendor for the latency figures.
const LATENCY_WINDOW: usize = 256;

/// A vendor call in progress (counted while it lives).
pub struct InCall<'a> {
    live: &'a Mutex<Live>,
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        let mut live = self.live.lock().expect("gate state");
        live.in_flight = live.in_flight.saturating_sub(1);
    }
}

impl VendorGate {
    pub fn new(
        vendors: impl IntoIterator<Item = ProviderName>,
        breaker_failures: u32,
        breaker_cooldown: Duration,
        pause_probe_interval: Duration,
        traffic: Traffic,
        metrics: Arc<Metrics>,
    ) -> Self {
        let vendors = vendors
            .into_iter()
            .map(|v| {
                let lanes = Lanes {
                    breaker: Breaker::new(breaker_failures, breaker_cooldown),
                    pause: Breaker::new(1, pause_probe_interval),
                    live: Mutex::default(),
                };
                (v, lanes)
            })
            .collect();
        VendorGate {
            vendors,
            traffic,
            metrics,
        }
    }

    /// The vendors' traffic limits (rate, adaptive concurrency, budget).
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    pub fn set_traffic(&mut self, traffic: Traffic) {
        self.traffic = traffic;
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

    /// Why `vendor` cannot be called now, without taking its probe: paused
    /// or its breaker open, and no probe due. None when it may be called.
    pub fn unavailable(&self, vendor: ProviderName) -> Option<String> {
        let lanes = self.vendors.get(&vendor)?;
        if !lanes.pause.probe_due() {
            let why = lanes
                .live
                .lock()
                .expect("gate state")
                .paused_reason
                .clone()
                .unwrap_or_else(|| "it refused our credentials".into());
            return Some(format!("{vendor} is paused: {why}"));
        }
        if !lanes.breaker.probe_due() {
            return Some(format!(
                "{vendor} is failing every call (circuit breaker open)"
            ));
        }
        None
    }

    /// Counts a call to `vendor` in progress until the guard drops.
    pub fn begin(&self, vendor: ProviderName) -> InCall<'_> {
        let live = &self.vendors[&vendor].live;
        live.lock().expect("gate state").in_flight += 1;
        InCall { live }
    }

    /// What this replica sees of each vendor now.
    pub fn states(&self) -> Vec<VendorState> {
        let mut out: Vec<VendorState> = self
            .vendors
            .iter()
            .map(|(vendor, lanes)| {
                let live = lanes.live.lock().expect("gate state");
                let mut sorted: Vec<f64> = live.latencies.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let quantile = |q: f64| {
                    (!sorted.is_empty())
                        .then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
                };
                VendorState {
                    vendor: vendor.as_str().to_owned(),
                    in_flight: live.in_flight,
                    paused: lanes.pause.is_open(),
                    paused_reason: lanes
                        .pause
                        .is_open()
                        .then(|| live.paused_reason.clone())
                        .flatten(),
                    breaker_open: lanes.breaker.is_open(),
                    latency_ms_p50: quantile(0.5),
                    latency_ms_p95: quantile(0.95),
                    limit: None,
                    budget: None,
                }
            })
            .collect();
        out.sort_by(|a, b| a.vendor.cmp(&b.vendor));
        out
    }

    /// Records how an attempt ended after `took`. `outage`: the vendor
    /// looked down (what the breaker counts); `refusal`: the vendor's words
    /// when it refused our credentials.
    pub fn record(
        &self,
        vendor: ProviderName,
        outcome: AttemptOutcome,
        outage: bool,
        took: Duration,
        refusal: Option<&str>,
    ) {
        let lanes = &self.vendors[&vendor];
        {
            let mut live = lanes.live.lock().expect("gate state");
            if live.latencies.len() == LATENCY_WINDOW {
                live.latencies.pop_front();
            }
            live.latencies.push_back(took.as_secs_f64() * 1000.0);
            if let Some(why) = refusal {
                live.paused_reason = Some(why.to_owned());
            }
        }
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
