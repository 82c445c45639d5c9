//! The one finish path: a [`Finished`] disposition becomes a message (a
//! result, a dead letter, the job back on the ladder, into its vendor's
//! wait queue or into the callback wait), is published with confirms,
//! counted, and only then is the delivery acked and a served pending record
//! cleared. The consume loop and the callback receiver both end here.

use super::publisher::{Outgoing, Publisher};
use crate::broker::headers::StateKey;
use crate::broker::{Names, PublishError, headers, json_props};
use crate::pipeline::{Disposition, Finished, Pipeline, ShadowRun};
use crate::telemetry::PublishTarget;
use lapin::Acker;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Finisher {
    names: Arc<Names>,
    publisher: Arc<Publisher>,
    pipeline: Arc<Pipeline>,
    state_key: StateKey,
}

/// The job as it arrived: the body and properties its republished forms
/// keep.
pub struct JobMessage<'a> {
    pub body: &'a [u8],
    pub props: &'a BasicProperties,
}

impl Finisher {
    pub fn new(
        names: Arc<Names>,
        publisher: Arc<Publisher>,
        pipeline: Arc<Pipeline>,
        state_key: StateKey,
    ) -> Self {
        Finisher {
            names,
            publisher,
            pipeline,
            state_key,
        }
    }

    /// The key that authenticates the worker-owned headers.
    pub fn state_key(&self) -> &StateKey {
        &self.state_key
    }

    /// Publishes what `f` says (nothing for a settled job), counts it, acks
    /// `acker` when there is a delivery, and clears the job's pending record
    /// when `f` asks. On a publish failure nothing is acked or counted: the
    /// caller returns the job (nack) or asks the vendor to post again.
    pub async fn finish(
        &self,
        f: &Finished,
        job: JobMessage<'_>,
        acker: Option<&Acker>,
    ) -> Result<(), PublishError> {
        if let Disposition::Abandoned = f.disposition {
            // Nothing was paid: the job goes back as it came.
            if let Some(a) = acker {
                let _ = a
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
            tracing::info!("Job given back before any vendor call");
            return Ok(());
        }
        if let Some(out) = outgoing(&f.disposition, &self.names, job, &self.state_key) {
            self.publisher.publish(&out).await?;
        }
        f.record(self.pipeline.metrics());
        let label = f.disposition.label();
        match acker.map(|a| a.ack(BasicAckOptions::default())) {
            Some(ack) => match ack.await {
                // The channel died after the confirm: the broker will
                // redeliver, and the duplicate is allowed (at least once).
                Err(e) => {
                    tracing::warn!(error = %e, "Ack failed after a confirmed publish; the job will be redelivered")
                }
                Ok(_) => tracing::info!(outcome = %label, "Job done"),
            },
            None => tracing::info!(outcome = %label, "Callback settled the job"),
        }
        if let Some(job_id) = &f.clear_pending {
            self.pipeline.outcomes().clear_pending(job_id).await;
        }
        Ok(())
    }
}

impl Finisher {
    /// Shadow mode: makes a published job's shadow call and publishes the
    /// comparison (once, within `broker.publish_timeout`; a comparison that
    /// cannot be published is dropped and counted: the job is done).
    pub async fn shadow(&self, run: ShadowRun, stop: &CancellationToken) {
        let Some(c) = self.pipeline.shadow(run, stop).await else {
            return;
        };
        let out = Outgoing {
            target: PublishTarget::Shadow,
            exchange: self.names.shadow_exchange.clone(),
            routing_key: c.routing_key(),
            payload: serde_json::to_vec(&c).expect("shadow comparison serializes"),
            props: json_props(Some(c.job_id.as_str()), None),
        };
        match self.publisher.publish(&out).await {
            Ok(()) => {
                tracing::info!(shadow = %c.shadow.provider, agreement = c.agreement.label(), "Shadow comparison published")
            }
            Err(e) => {
                self.pipeline
                    .metrics()
                    .shadow_skipped(c.shadow.provider, "publish");
                tracing::warn!(error = %e, "Could not publish the shadow comparison; it is dropped (the job's result was published)");
            }
        }
    }
}

/// A disposition as the message to publish; None for one that publishes
/// nothing.
fn outgoing(
    d: &Disposition,
    names: &Names,
    job: JobMessage<'_>,
    key: &StateKey,
) -> Option<Outgoing> {
    let corr = job.props.correlation_id().as_ref();
    let out = match d {
        Disposition::Publish(r) => Outgoing {
            target: PublishTarget::Results,
            exchange: names.results_exchange.clone(),
            routing_key: r.routing_key(),
            payload: serde_json::to_vec(r).expect("result serializes"),
            props: json_props(Some(r.job_id.as_str()), corr),
        },
        Disposition::DeadLetter(dl) => {
            let mut p = json_props(dl.job_id.as_deref(), corr);
            let replays = headers::replay_headers(job.props);
            if !replays.inner().is_empty() {
                p = p.with_headers(replays);
            }
            Outgoing {
                target: PublishTarget::Dead,
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
        } => {
            tracing::info!(step, reason = %reason, "Parking the job on the delay ladder");
            Outgoing {
                target: PublishTarget::Retry,
                exchange: String::new(),
                routing_key: names.retry_queues[*step].0.clone(),
                payload: job.body.to_vec(),
                props: headers::with_progress(job.props, carried, key, job.body),
            }
        }
        Disposition::Wait { vendor, carried } => Outgoing {
            target: PublishTarget::Wait,
            exchange: String::new(),
            routing_key: names.wait_queue(*vendor).to_owned(),
            payload: job.body.to_vec(),
            props: headers::with_progress(job.props, carried, key, job.body),
        },
        Disposition::AwaitCallback { carried } => Outgoing {
            target: PublishTarget::CallbackWait,
            exchange: String::new(),
            routing_key: names.callback_wait_queue.clone(),
            payload: job.body.to_vec(),
            props: headers::with_progress(job.props, carried, key, job.body),
        },
        Disposition::Settled { .. } | Disposition::Abandoned => return None,
    };
    Some(out)
}
