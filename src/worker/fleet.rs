//! This replica's heartbeat in the coordination store, read by `status`
//! (and the operator console's fleet view): consuming or draining, jobs in flight, each
//! vendor's state, totals of results and dead letters.

use crate::coordination::{Coordination, Heartbeat, fleet::Counters};
use crate::pipeline::{Pipeline, now_rfc3339};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Writes the heartbeat every `interval` until `stop`.
pub async fn beat(
    store: Coordination,
    pipeline: Arc<Pipeline>,
    telemetry: Telemetry,
    worker: String,
    concurrency: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let totals = telemetry.metrics.fleet_counters();
        let hb = Heartbeat {
            worker: worker.clone(),
            at: now_rfc3339(),
            consuming: telemetry.health.is_consuming(),
            draining: telemetry.health.is_draining(),
            concurrency,
            in_flight: telemetry.metrics.jobs_in_flight().max(0) as u32,
            vendors: pipeline.vendor_states(),
            counters: Counters {
                results: totals.results,
                dead_letters: totals.dead_letters,
                received: totals.received,
                parked: totals.parked,
                awaiting_callback: totals.awaiting_callback,
            },
        };
        match store.heartbeat(&hb, interval * 3).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "Could not write this replica's heartbeat");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
