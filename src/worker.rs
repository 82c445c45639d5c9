//! The consume loop: deliveries in, one task per job (bounded by the
//! prefetch, which equals the concurrency), dispositions published with
//! confirms, acks only after the confirm. Reconnects by itself; drains on
//! shutdown.

use crate::broker::{self, Names, PublishError};
use crate::config::{ArgosMode, Config};
use crate::pipeline::{self, CallbackSettings, Carried, Disposition, Pipeline, PipelineConfig};
use crate::providers::Provider;
use crate::providers::argos::Argos;
use crate::providers::didit::Didit;
use crate::providers::intellicheck::Intellicheck;
use crate::store::S3Store;
use crate::telemetry::{Metrics, Telemetry};
use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The one HTTP client every vendor adapter shares: HTTP/1.1 with a
/// keep-alive pool, one connection per request in flight. HTTP/2 would put
/// every in-flight upload of several megabytes on one TCP connection and
/// its flow-control window; vendors are HTTP/1.1-first anyway.
pub fn vendor_http_client(cfg: &Config) -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(cfg.providers.connect_timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(cfg.providers.pool_max_idle_per_host)
        .user_agent(concat!("liveness-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the vendor HTTP client")
}

/// The pipeline with its real S3 store and vendor adapters.
pub async fn build_pipeline(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Pipeline>> {
    let http = vendor_http_client(cfg)?;
    let store = S3Store::new(&cfg.s3).await;
    let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
    if !cfg.providers.argos.api_key.is_empty() {
        providers.push(Arc::new(Argos::new(http.clone(), &cfg.providers.argos)?));
    }
    if !cfg.providers.intellicheck.signing_key.is_empty() {
        providers.push(Arc::new(Intellicheck::new(
            http.clone(),
            &cfg.providers.intellicheck,
        )?));
    }
    if !cfg.providers.didit.api_key.is_empty() {
        providers.push(Arc::new(Didit::new(http, &cfg.providers.didit)?));
    }
    if providers.is_empty() {
        anyhow::bail!(
            "no vendor is configured: set providers.argos.api_key (LIVENESS_PROVIDERS__ARGOS__API_KEY), providers.intellicheck.signing_key or providers.didit.api_key"
        );
    }
    let outcomes = (!cfg.results.bucket.is_empty())
        .then(|| store.outcomes(&cfg.results.bucket, &cfg.results.prefix));
    let mut pipeline = Pipeline::new(
        PipelineConfig::from_config(cfg),
        Arc::new(store),
        providers,
        metrics,
    );
    let argos = &cfg.providers.argos;
    if argos.mode == ArgosMode::Callback && !argos.api_key.is_empty() {
        pipeline = pipeline.with_callbacks(CallbackSettings {
            public_url: argos.callback_public_url.clone(),
            secret: argos.callback_secret.clone(),
            token_ttl: argos.callback_token_ttl,
            submissions: argos.callback_submissions,
            wait: argos.callback_wait,
        });
    }
    match outcomes {
        Some(o) => {
            o.check().await?;
            pipeline = pipeline.with_outcomes(Arc::new(o));
        }
        None => tracing::warn!(
            "results.bucket is empty: no results store, so a redelivered or replayed job is paid for again"
        ),
    }
    Ok(Arc::new(pipeline))
}

/// Runs until `shutdown` is cancelled, then drains and returns Ok.
/// Returns an error only for what a restart cannot fix by waiting
/// (a topology conflict).
pub async fn run(
    cfg: Config,
    pipeline: Arc<Pipeline>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = Arc::new(Names::new(&cfg.broker));
    // Argos callback mode: this replica receives callbacks for any job,
    // until run returns.
    let receiver_stop = CancellationToken::new();
    let _stop_receiver = receiver_stop.clone().drop_guard();
    if pipeline.callbacks().is_some() {
        let listen: std::net::SocketAddr = cfg
            .providers
            .argos
            .callback_listen
            .parse()
            .context("providers.argos.callback_listen")?;
        let receiver = Arc::new(crate::callbacks::Receiver::new(
            pipeline.clone(),
            &cfg.broker,
        ));
        crate::callbacks::serve(listen, receiver, receiver_stop).await?;
    }
    let mut reconnect_delay = Duration::from_millis(200);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let result = session(&cfg, &pipeline, &names, &telemetry, &shutdown).await;
        telemetry.health.set_consuming(false);
        match result {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            Ok(SessionEnd::Lost(why)) => {
                tracing::warn!(reason = %why, "Broker connection lost, reconnecting");
                reconnect_delay = Duration::from_millis(200);
            }
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Retry(e)) => {
                tracing::warn!(error = %format!("{e:#}"), delay_ms = reconnect_delay.as_millis() as u64, "Cannot reach the broker, retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(reconnect_delay.mul_f64(0.5 + fastrand::f64() / 2.0)) => {}
        }
        reconnect_delay = (reconnect_delay * 2).min(Duration::from_secs(30));
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

enum SessionError {
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

/// One connection's life: declare, consume, and end on shutdown or loss.
async fn session(
    cfg: &Config,
    pipeline: &Arc<Pipeline>,
    names: &Arc<Names>,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, SessionError> {
    let conn = broker::connect(&cfg.broker)
        .await
        .map_err(SessionError::Retry)?;
    let declared = async {
        broker::declare_topology(&conn, &cfg.broker).await?;
        if pipeline.callbacks().is_some() {
            broker::declare_callback_wait(&conn, &cfg.broker, cfg.providers.argos.callback_wait)
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    declared.await.map_err(|e| {
        if e.is::<broker::TopologyConflict>() {
            SessionError::Fatal(e)
        } else {
            SessionError::Retry(e)
        }
    })?;
    let publish_ch = broker::confirm_channel(&conn)
        .await
        .map_err(SessionError::Retry)?;
    let consume_ch = conn
        .create_channel()
        .await
        .map_err(|e| SessionError::Retry(e.into()))?;
    consume_ch
        .basic_qos(cfg.worker.concurrency, BasicQosOptions::default())
        .await
        .map_err(|e| SessionError::Retry(e.into()))?;
    let tag = format!(
        "liveness-worker-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    );
    let mut consumer = consume_ch
        .basic_consume(
            names.jobs_queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| SessionError::Retry(e.into()))?;
    tracing::info!(queue = %names.jobs_queue, concurrency = cfg.worker.concurrency, "Consuming jobs");
    telemetry.health.set_consuming(true);

    let broken = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        pipeline: pipeline.clone(),
        names: names.clone(),
        publish_ch,
        confirm_timeout: cfg.broker.confirm_timeout,
        broken: broken.clone(),
        metrics: telemetry.metrics.clone(),
    });
    let mut in_flight = JoinSet::new();
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = broken.cancelled() => break SessionEnd::Lost("the publishing channel failed".into()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    in_flight.spawn(async move { ctx.handle(delivery).await });
                }
                Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                None => break SessionEnd::Lost("the consumer was cancelled by the broker".into()),
            },
        }
    };

    if matches!(end, SessionEnd::Shutdown) {
        // Not ready from here on, so orchestrators stop routing to us first.
        telemetry.health.set_draining(true);
        // Stop new deliveries, let in-flight jobs finish within the drain
        // timeout; whatever is still unacked goes back to the queue when
        // the channel closes.
        let _ = consume_ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let n = in_flight.len();
        tracing::info!(
            in_flight = n,
            timeout_ms = cfg.worker.drain_timeout.as_millis() as u64,
            "Draining"
        );
        let drained = tokio::time::timeout(cfg.worker.drain_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "Drain timeout reached; unfinished jobs return to the queue"
            );
            in_flight.abort_all();
        }
    } else {
        in_flight.abort_all();
    }
    let _ = consume_ch.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(end)
}

struct JobContext {
    pipeline: Arc<Pipeline>,
    names: Arc<Names>,
    publish_ch: Channel,
    confirm_timeout: Duration,
    /// Cancelled when the publishing channel is unusable: reconnect.
    broken: CancellationToken,
    metrics: Arc<Metrics>,
}

#[derive(serde::Deserialize)]
struct JobIdPeek {
    job_id: Option<serde_json::Value>,
}

impl JobContext {
    async fn handle(self: Arc<Self>, delivery: lapin::message::Delivery) {
        let _in_flight = self.metrics.in_flight();
        let lapin::message::Delivery {
            data,
            properties,
            acker,
            redelivered,
            ..
        } = delivery;
        let body = Bytes::from(data);
        let job_id = serde_json::from_slice::<JobIdPeek>(&body)
            .ok()
            .and_then(|p| p.job_id)
            .and_then(|v| v.as_str().map(|s| s.chars().take(128).collect::<String>()))
            .unwrap_or_default();
        let span = tracing::info_span!("job", job_id = %job_id);
        async move {
            // A first delivery has no history, whatever x-delivery-count a
            // producer may have put in its headers.
            let delivery_count = if redelivered {
                broker::delivery_count(&properties)
            } else {
                0
            };
            let carried = broker::carried(&properties);
            let corr = properties.correlation_id().as_ref().map(|c| c.to_string());
            let disposition = self
                .process_catching_panics(body.clone(), delivery_count, carried.clone(), corr)
                .await;
            let label = disposition.label();
            match self.publish(&disposition, &body, &properties).await {
                Ok(()) => {
                    disposition.record(&self.metrics);
                    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                        // The channel died after the confirm: the broker will
                        // redeliver, and the duplicate is allowed (at least once).
                        tracing::warn!(error = %e, "Ack failed after a confirmed publish; the job will be redelivered");
                    } else {
                        tracing::info!(outcome = %label, "Job done");
                    }
                    // Back from the callback wait and now published: its
                    // pending record has served its purpose.
                    if carried.awaiting_callback
                        && matches!(disposition, Disposition::Publish(_) | Disposition::DeadLetter(_))
                    {
                        self.pipeline.clear_pending(&job_id).await;
                    }
                }
                Err(e) => {
                    self.metrics.publish_failed();
                    tracing::warn!(error = %e, outcome = %label, "Could not publish the outcome; returning the job to the queue");
                    let _ = acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the pipeline in its own task so a panic becomes an `internal`
    /// dead letter instead of taking the worker down.
    async fn process_catching_panics(
        &self,
        body: Bytes,
        delivery_count: u32,
        carried: Carried,
        corr: Option<String>,
    ) -> Disposition {
        let pipeline = self.pipeline.clone();
        let b = body.clone();
        let c = carried.clone();
        // The job's span (with its job_id) follows it into the task.
        let task = tokio::spawn(
            async move {
                let d = pipeline::Delivery {
                    body: &b,
                    delivery_count,
                    carried: c,
                    correlation_id: corr.as_deref(),
                };
                pipeline.process(&d).await
            }
            .instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(d) => d,
            Err(e) => {
                let what = if e.is_panic() {
                    let p = e.into_panic();
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into())
                } else {
                    "the job's task was cancelled".into()
                };
                tracing::error!(panic = %what, "Worker bug while processing a job");
                self.pipeline.internal_dead_letter(&body, format!(
                    "the worker hit a bug processing this job ({what}); report it with this dead letter, and replay once fixed"
                ), carried)
            }
        }
    }

    /// Publishes the disposition; a nack or missing confirm is retried a few
    /// times before the job goes back to the queue.
    async fn publish(
        &self,
        d: &Disposition,
        body: &Bytes,
        props: &BasicProperties,
    ) -> Result<(), PublishError> {
        let Some(out) = broker::Outgoing::of(d, &self.names, body, props) else {
            return Ok(());
        };
        let (exchange, routing_key, payload, out_props) =
            (out.exchange, out.routing_key, out.payload, out.props);
        let mut tries = 0;
        loop {
            tries += 1;
            match broker::publish_confirmed(
                &self.publish_ch,
                &exchange,
                &routing_key,
                &payload,
                out_props.clone(),
                self.confirm_timeout,
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(PublishError::Channel(e)) => {
                    self.broken.cancel();
                    return Err(PublishError::Channel(e));
                }
                Err(e) if tries >= 3 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, tries, "Publish not confirmed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
            }
        }
    }
}
