//! The running worker: the pipeline built from configuration, the consume
//! loop (deliveries in, one task per job, bounded by the prefetch, which
//! equals the concurrency), the finish path shared with the Argos callback
//! receiver, reconnection and drain.
//!
//! - [`finish`]: publish with confirms, count, ack (docs/ARCHITECTURE.md).
//! - [`publisher`]: the publishing connection.
//! - [`receiver`]: the callback receiver (Argos callback mode).

pub mod finish;
pub mod publisher;
pub mod receiver;

use crate::broker::{self, Names, headers};
use crate::config::Config;
use crate::pipeline::{CallbackSettings, Finished, Incoming, Pipeline, PipelineConfig};
use crate::providers::Provider;
use crate::providers::argos::Argos;
use crate::providers::didit::Didit;
use crate::providers::intellicheck::Intellicheck;
use crate::store::S3Store;
use crate::telemetry::{Metrics, Telemetry};
use anyhow::Context as _;
use bytes::Bytes;
use finish::{Finisher, JobMessage};
use futures_util::StreamExt as _;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use publisher::Publisher;
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
    if argos.callbacks_enabled()
        && let Some(public_url) = &argos.callback_public_url
    {
        pipeline = pipeline.with_callbacks(CallbackSettings {
            public_url: public_url.clone(),
            secret: argos.callback_secret.clone(),
            token_ttl: argos.callback_token_ttl,
            submissions: argos.callback_submissions.get(),
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
    let publisher = Arc::new(Publisher::new(&cfg.broker));
    let finisher = Arc::new(Finisher::new(
        names.clone(),
        publisher.clone(),
        pipeline.clone(),
    ));
    // Argos callback mode: this replica receives callbacks for any job,
    // until run returns.
    let receiver_stop = CancellationToken::new();
    let _stop_receiver = receiver_stop.clone().drop_guard();
    if pipeline.callbacks().is_some() {
        let receiver = Arc::new(receiver::Receiver::new(pipeline.clone(), finisher.clone()));
        receiver::serve(cfg.providers.argos.callback_listen, receiver, receiver_stop).await?;
    }
    let consumer = Consumer {
        cfg: &cfg,
        pipeline: &pipeline,
        names: &names,
        finisher: &finisher,
        telemetry: &telemetry,
    };
    let mut reconnect_delay = Duration::from_millis(200);
    let mut connected_once = false;
    let ended = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let result = consumer.session(&shutdown).await;
        telemetry.health.set_consuming(false);
        match result {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(SessionEnd::Lost(why)) => {
                connected_once = true;
                tracing::warn!(reason = %why, "Broker connection lost, reconnecting");
                reconnect_delay = Duration::from_millis(200);
            }
            Err(SessionError::Fatal(e)) => break Err(e),
            // A certificate the very first connection refuses is a
            // deployment mistake: stop with it rather than retry forever.
            Err(SessionError::Retry(e))
                if !connected_once && e.is::<broker::tls::TlsRejected>() =>
            {
                break Err(e);
            }
            Err(SessionError::Retry(e)) => {
                tracing::warn!(error = %format!("{e:#}"), delay_ms = reconnect_delay.as_millis() as u64, "Cannot reach the broker, retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(reconnect_delay.mul_f64(0.5 + fastrand::f64() / 2.0)) => {}
        }
        reconnect_delay = (reconnect_delay * 2).min(Duration::from_secs(30));
    };
    publisher.close().await;
    ended
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

enum SessionError {
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

/// What every session shares.
struct Consumer<'a> {
    cfg: &'a Config,
    pipeline: &'a Arc<Pipeline>,
    names: &'a Arc<Names>,
    finisher: &'a Arc<Finisher>,
    telemetry: &'a Telemetry,
}

impl Consumer<'_> {
    /// One connection's life: declare, consume, and end on shutdown or loss.
    async fn session(&self, shutdown: &CancellationToken) -> Result<SessionEnd, SessionError> {
        let cfg = self.cfg;
        let retry = |e: lapin::Error| SessionError::Retry(e.into());
        let conn = broker::connect(&cfg.broker)
            .await
            .map_err(SessionError::Retry)?;
        let declared = async {
            broker::declare_topology(&conn, &cfg.broker).await?;
            if let Some(cb) = self.pipeline.callbacks() {
                broker::declare_callback_wait(&conn, &cfg.broker, cb.wait).await?;
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
        let consume_ch = conn.create_channel().await.map_err(retry)?;
        consume_ch
            .basic_qos(cfg.worker.concurrency, BasicQosOptions::default())
            .await
            .map_err(retry)?;
        let tag = format!(
            "liveness-worker-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let mut consumer = consume_ch
            .basic_consume(
                self.names.jobs_queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(retry)?;
        tracing::info!(queue = %self.names.jobs_queue, concurrency = cfg.worker.concurrency, "Consuming jobs");
        self.telemetry.health.set_consuming(true);

        let mut in_flight = JoinSet::new();
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let job = Job {
                            pipeline: self.pipeline.clone(),
                            finisher: self.finisher.clone(),
                        };
                        in_flight.spawn(job.handle(delivery));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    None => break SessionEnd::Lost("the consumer was cancelled by the broker".into()),
                },
            }
        };

        if matches!(end, SessionEnd::Shutdown) {
            // Not ready from here on, so orchestrators stop routing to us first.
            self.telemetry.health.set_draining(true);
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
}

/// One delivery's handler.
struct Job {
    pipeline: Arc<Pipeline>,
    finisher: Arc<Finisher>,
}

impl Job {
    async fn handle(self, delivery: lapin::message::Delivery) {
        let _in_flight = self.pipeline.metrics().in_flight();
        let lapin::message::Delivery {
            data,
            properties,
            acker,
            redelivered,
            ..
        } = delivery;
        // A first delivery has no history, whatever x-delivery-count a
        // producer may have put in its headers.
        let delivery_count = if redelivered {
            headers::delivery_count(&properties)
        } else {
            0
        };
        let body = Bytes::from(data);
        let incoming = Arc::new(self.pipeline.parse(
            &body,
            delivery_count,
            headers::carried(&properties),
            properties.correlation_id().as_ref().map(|c| c.to_string()),
        ));
        let span = tracing::info_span!("job", job_id = %incoming.job_id_hint().unwrap_or(""));
        async move {
            let finished = self.step_catching_panics(incoming.clone()).await;
            let job = JobMessage {
                body: &body,
                props: &properties,
            };
            if let Err(e) = self.finisher.finish(&finished, job, Some(&acker)).await {
                self.pipeline.metrics().publish_failed();
                tracing::warn!(error = %e, outcome = %finished.disposition.label(), "Could not publish the outcome; returning the job to the queue");
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the step in its own task so a panic becomes an `internal` dead
    /// letter instead of taking the worker down.
    async fn step_catching_panics(&self, incoming: Arc<Incoming>) -> Finished {
        let pipeline = self.pipeline.clone();
        let job = incoming.clone();
        // The job's span (with its job_id) follows it into the task.
        let task = tokio::spawn(
            async move { pipeline.step(&job).await }.instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(f) => f,
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
                self.pipeline.internal_dead_letter(&incoming, format!(
                    "the worker hit a bug processing this job ({what}); report it with this dead letter, and replay once fixed"
                ))
            }
        }
    }
}
