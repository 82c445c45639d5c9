//! The running worker: the pipeline built from configuration, the consume
//! loop (deliveries in, one task per job, bounded by the prefetch, which
//! equals the concurrency), the finish path shared with the Argos callback
//! receiver, reconnection and drain.
//!
//! - [`finish`]: publish with confirms, count, ack (docs/ARCHITECTURE.md).
//! - [`publisher`]: the publishing connection.
//! - [`receiver`]: the callback receiver (Argos callback mode).

pub mod finish;
mod fleet;
pub mod publisher;
pub mod receiver;

use crate::broker::headers::{Provenance, StateKey};
use crate::broker::{self, Names, headers};
use crate::config::Config;
use crate::coordination::Coordination;
use crate::domain::Check;
use crate::domain::ProviderName;
use crate::domain::job::JobId;
use crate::pipeline::{
    CallbackSettings, Finished, Incoming, Origin, Pipeline, PipelineConfig, Signals,
};
use crate::providers::argos::Argos;
use crate::providers::didit::Didit;
use crate::providers::intellicheck::Intellicheck;
use crate::providers::{Provider, VendorHttp};
use crate::store::S3Store;
use crate::telemetry::{Metrics, Telemetry};
use bytes::Bytes;
use finish::{Finisher, JobMessage};
use futures_util::StreamExt as _;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use publisher::Publisher;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The pipeline with its real S3 store and vendor adapters.
pub async fn build_pipeline(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Pipeline>> {
    let http = VendorHttp::new(&cfg.providers)?;
    let store = S3Store::new(&cfg.s3).await.with_metrics(metrics.clone());
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
    for check in [Check::Document, Check::Face] {
        if let Some(v) = cfg.shadow.vendor(check).filter(|_| cfg.shadow.enabled())
            && !providers.iter().any(|p| p.name() == v)
        {
            anyhow::bail!(
                "shadow.{check} is {v}, which has no credentials configured: set them (providers.{v}), or empty shadow.{check}"
            );
        }
    }
    let outcomes = (!cfg.results.bucket.is_empty()).then(|| store.outcomes(&cfg.results));
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
    match coordination(cfg)? {
        Some(c) => {
            if let Err(e) = c.ping().await {
                tracing::warn!(error = %e, "The coordination store does not answer now; jobs wait for it");
            }
            pipeline = pipeline
                .with_claims(Arc::new(c.clone()))
                .with_traffic(Arc::new(c));
        }
        None => {
            tracing::warn!(
                "coordination.redis_url is empty: no coordination store, so two live copies of one job (a producer's duplicate publish, a redelivery while the first copy still runs) may both be paid for"
            );
            if pipeline.traffic().has_rates() {
                tracing::warn!(
                    "coordination.redis_url is empty: each replica takes its share of the vendor rate limits (traffic.<vendor>.rate divided by the consumers on the jobs queue), and a vendor's 429 holds back this replica only"
                );
            }
        }
    }
    Ok(Arc::new(pipeline))
}

/// The coordination store, when one is configured.
fn coordination(cfg: &Config) -> anyhow::Result<Option<Coordination>> {
    cfg.coordination
        .enabled()
        .then(|| Coordination::connect(&cfg.coordination, &cfg.broker.prefix))
        .transpose()
}

/// Runs until `shutdown` is cancelled, then drains and returns Ok.
/// Returns an error only for what a restart cannot fix by waiting
/// (a topology conflict, a certificate the first connection refuses).
pub async fn run(
    cfg: Config,
    pipeline: Arc<Pipeline>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = Arc::new(Names::new(&cfg.broker));
    let publisher = Arc::new(Publisher::new(&cfg.broker, telemetry.clone()));
    let finisher = Arc::new(Finisher::new(
        names.clone(),
        publisher.clone(),
        pipeline.clone(),
        StateKey::from_config(&cfg.broker),
    ));
    if cfg.broker.state_secret.is_empty() {
        tracing::info!(
            "broker.state_secret is empty: the worker-owned headers are authenticated with a key derived from broker.url"
        );
    }
    let coordination = coordination(&cfg)?;
    // Argos callback mode: this replica receives callbacks for any job,
    // until run returns.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    if pipeline.callbacks().is_some() {
        let receiver = Arc::new(receiver::Receiver::new(
            pipeline.clone(),
            finisher.clone(),
            cfg.callbacks.clone(),
        ));
        receiver::serve(
            cfg.providers.argos.callback_listen,
            receiver,
            background.clone(),
        )
        .await?;
    }
    if let Some(c) = &coordination {
        tokio::spawn(fleet::beat(
            c.clone(),
            pipeline.clone(),
            telemetry.clone(),
            cfg.worker_identity(),
            u32::from(cfg.worker.concurrency),
            cfg.coordination.heartbeat_interval,
            background.clone(),
        ));
    }
    // Each wait queue has its own bound, apart from the jobs queue's slots.
    let waiting_room = waiting_room(&cfg);
    let waiting_slots = pipeline
        .traffic()
        .wait_vendors()
        .into_iter()
        .map(|v| (v, Arc::new(Semaphore::new(waiting_room.into()))))
        .collect();
    let mut consumer = Consumer {
        cfg: &cfg,
        pipeline: &pipeline,
        names: &names,
        finisher: &finisher,
        telemetry: &telemetry,
        slots: Arc::new(Semaphore::new(cfg.worker.concurrency.into())),
        waiting_slots,
        requeues: Arc::new(Requeues::new(coordination)),
        jobs: JoinSet::new(),
        drain_stop: CancellationToken::new(),
        hurry: CancellationToken::new(),
    };
    let mut reconnect_delay = Duration::from_millis(200);
    let mut connected_once = false;
    let ended = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let result = consumer.session(&shutdown).await;
        telemetry.health.set_consuming(false);
        telemetry.metrics.set_consuming(false);
        match result {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(SessionEnd::Lost(why)) => {
                connected_once = true;
                tracing::warn!(reason = %why, in_flight = consumer.jobs.len(), "Broker connection lost, reconnecting; jobs in flight keep their vendor answers and go back to the queue");
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
    // Jobs of lost sessions may still be storing their answers.
    consumer.drain(None).await;
    publisher.close().await;
    ended
}

/// `traffic.waiting_room`, 0 meaning `worker.concurrency`: the deliveries
/// each replica holds from each wait queue.
fn waiting_room(cfg: &Config) -> u16 {
    match cfg.traffic.waiting_room {
        0 => cfg.worker.concurrency,
        n => n,
    }
}

/// Keeps a store-less replica's share of the rate limits in step with the
/// consumers on the jobs queue (each replica one).
async fn track_share(
    ch: lapin::Channel,
    queue: String,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
) {
    loop {
        let consumers = ch
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.consumer_count());
        if let Some(n) = consumers
            && pipeline.traffic().set_replicas(n)
        {
            tracing::info!(
                consumers = n,
                "No coordination store: this replica takes 1/{n} of each vendor rate limit"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
    let _ = ch.close(200, "share".into()).await;
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

enum SessionError {
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

/// The consume loop's state across sessions: the jobs in flight belong to
/// the worker, not to the connection that delivered them, so a lost
/// connection neither orphans them nor lets the next session exceed the
/// concurrency.
struct Consumer<'a> {
    cfg: &'a Config,
    pipeline: &'a Arc<Pipeline>,
    names: &'a Arc<Names>,
    finisher: &'a Arc<Finisher>,
    telemetry: &'a Telemetry,
    /// `worker.concurrency` permits, one per job being processed.
    slots: Arc<Semaphore>,
    /// Per vendor with a wait queue: `traffic.waiting_room` permits, one per
    /// job taken from that wait queue (they hold none of `slots`).
    waiting_slots: HashMap<ProviderName, Arc<Semaphore>>,
    requeues: Arc<Requeues>,
    jobs: JoinSet<()>,
    /// Cancelled when the drain has waited `drain_timeout`: jobs that have
    /// not paid yet stop.
    drain_stop: CancellationToken,
    /// Cancelled at the same time: answers in hand stop waiting for the
    /// results store.
    hurry: CancellationToken,
}

impl Consumer<'_> {
    /// One connection's life: declare, consume, and end on shutdown or loss.
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<SessionEnd, SessionError> {
        let cfg = self.cfg;
        let retry = |e: lapin::Error| SessionError::Retry(e.into());
        let wait_vendors: Vec<ProviderName> = self.waiting_slots.keys().copied().collect();
        let conn = broker::connect(&cfg.broker)
            .await
            .map_err(SessionError::Retry)?;
        let declared = async {
            broker::declare_topology(&conn, &cfg.broker).await?;
            if let Some(cb) = self.pipeline.callbacks() {
                broker::declare_callback_wait(&conn, &cfg.broker, cb.wait).await?;
            }
            if self.pipeline.shadows() {
                broker::declare_shadow(&conn, &cfg.broker).await?;
            }
            broker::declare_wait_queues(&conn, &cfg.broker, &wait_vendors).await?;
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
        // The wait queues, on a channel of their own: its prefetch (per
        // consumer, so per wait queue) bounds the jobs waiting for each
        // vendor, apart from the jobs queue's.
        let wait_ch = conn.create_channel().await.map_err(retry)?;
        let mut waits = futures_util::stream::SelectAll::new();
        let mut wait_tags = Vec::new();
        if !wait_vendors.is_empty() {
            let room = waiting_room(cfg);
            wait_ch
                .basic_qos(room, BasicQosOptions::default())
                .await
                .map_err(retry)?;
            for &v in &wait_vendors {
                let queue = self.names.wait_queue(v);
                let wait_tag = format!("{tag}-wait-{v}");
                let c = wait_ch
                    .basic_consume(
                        queue.into(),
                        wait_tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(retry)?;
                // A consumer that ends says so (None), rather than vanish
                // from the set.
                let end = futures_util::stream::once(std::future::ready((v, None)));
                waits.push(c.map(move |d| (v, Some(d))).chain(end).boxed());
                wait_tags.push(wait_tag);
                tracing::info!(queue = %queue, waiting_room = room, "Consuming a vendor's wait queue");
            }
        }
        self.telemetry.health.set_consuming(true);
        self.telemetry.metrics.set_consuming(true);

        // This session's deliveries stop before paying once it is lost (or
        // the drain runs out of time).
        let lost = self.drain_stop.child_token();
        // Without a coordination store, the rate limits are shared by the
        // consumers of the jobs queue: each replica takes its share.
        let session_over = CancellationToken::new();
        let _end_share = session_over.clone().drop_guard();
        if !self.pipeline.traffic().is_shared() && self.pipeline.traffic().has_rates() {
            let share_ch = conn.create_channel().await.map_err(retry)?;
            tokio::spawn(track_share(
                share_ch,
                self.names.jobs_queue.clone(),
                self.pipeline.clone(),
                session_over.clone(),
            ));
        }
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(_) = self.jobs.join_next(), if !self.jobs.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let job = self.job(self.slots.clone(), Origin::Jobs, &lost);
                        self.jobs.spawn(job.handle(delivery));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    None => break SessionEnd::Lost("the consumer was cancelled by the broker".into()),
                },
                next = waits.next(), if !waits.is_empty() => match next {
                    Some((vendor, Some(Ok(delivery)))) => {
                        let slots = self.waiting_slots[&vendor].clone();
                        let job = self.job(slots, Origin::Waiting, &lost);
                        self.jobs.spawn(job.handle(delivery));
                    }
                    Some((_, Some(Err(e)))) => break SessionEnd::Lost(e.to_string()),
                    Some((vendor, None)) => {
                        break SessionEnd::Lost(format!("the consumer of {vendor}'s wait queue was cancelled by the broker"));
                    }
                    None => break SessionEnd::Lost("the wait queue consumers ended".into()),
                },
            }
        };

        match end {
            SessionEnd::Shutdown => {
                // Not ready from here on, so orchestrators stop routing to us first.
                self.telemetry.health.set_draining(true);
                // Stop new deliveries; in-flight jobs finish on this channel,
                // whatever is still unacked goes back when it closes.
                let _ = consume_ch
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                for t in &wait_tags {
                    let _ = wait_ch
                        .basic_cancel(t.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                self.drain(Some(cfg.worker.drain_timeout)).await;
            }
            SessionEnd::Lost(_) => lost.cancel(),
        }
        let _ = wait_ch.close(200, "bye".into()).await;
        let _ = consume_ch.close(200, "bye".into()).await;
        let _ = conn.close(200, "bye".into()).await;
        Ok(end)
    }

    /// A delivery's handler: it starts with one of `slots`, and stops
    /// before paying once `lost` is cancelled.
    fn job(&self, slots: Arc<Semaphore>, origin: Origin, lost: &CancellationToken) -> Job {
        Job {
            pipeline: self.pipeline.clone(),
            finisher: self.finisher.clone(),
            slots,
            origin,
            requeues: self.requeues.clone(),
            signals: Signals {
                stop: lost.clone(),
                hurry: self.hurry.clone(),
            },
        }
    }

    /// Waits for the jobs in flight: all of them for `patience` (when
    /// given); then the ones that have not paid yet go back to the queue,
    /// and the ones with a vendor call under way or an answer in hand get
    /// `worker.drain_grace` to store or publish it. Whatever is left then is
    /// aborted (its delivery goes back to the queue).
    async fn drain(&mut self, patience: Option<Duration>) {
        if self.jobs.is_empty() {
            return;
        }
        if let Some(patience) = patience {
            tracing::info!(
                in_flight = self.jobs.len(),
                timeout_ms = patience.as_millis() as u64,
                "Draining"
            );
            if self.wait_jobs(patience).await {
                return;
            }
        }
        self.drain_stop.cancel();
        self.hurry.cancel();
        let grace = self.cfg.worker.drain_grace;
        tracing::info!(
            in_flight = self.jobs.len(),
            grace_ms = grace.as_millis() as u64,
            "Jobs that have not called their vendor go back to the queue; answers under way get the drain grace"
        );
        if !self.wait_jobs(grace).await {
            tracing::warn!(
                left = self.jobs.len(),
                "Drain grace over; the unfinished jobs return to the queue"
            );
            self.jobs.abort_all();
            while self.jobs.join_next().await.is_some() {}
        }
    }

    /// True if every job finished within `limit`.
    async fn wait_jobs(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            while self.jobs.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

/// One delivery's handler.
struct Job {
    pipeline: Arc<Pipeline>,
    finisher: Arc<Finisher>,
    slots: Arc<Semaphore>,
    /// The jobs queue, or a vendor's wait queue.
    origin: Origin,
    requeues: Arc<Requeues>,
    signals: Signals,
}

impl Job {
    async fn handle(self, delivery: lapin::message::Delivery) {
        let lapin::message::Delivery {
            data,
            properties,
            acker,
            redelivered,
            ..
        } = delivery;
        // A job starts only with a free slot, so the concurrency holds
        // across reconnects: a new session's deliveries wait here for the
        // jobs of a lost one.
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = self.signals.stop.cancelled() => {
                let _ = acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return;
            }
        };
        let metrics = self.pipeline.metrics().clone();
        let in_flight = metrics.in_flight();
        // Received from the jobs queue (a wait queue's deliveries were
        // received and counted there first).
        if self.origin == Origin::Jobs {
            metrics.received();
            if let Some(sent) = properties.timestamp() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                metrics.queue_wait(Duration::from_secs(now.saturating_sub(*sent)));
            }
        }
        let body = Bytes::from(data);
        // A body over the size limit is dead-lettered unparsed; no worker
        // wrote progress for one, so it is not even hashed.
        let (carried, provenance) = if body.len() > self.pipeline.max_job_bytes() {
            (Default::default(), Provenance::Fresh)
        } else {
            headers::carried(&properties, self.finisher.state_key(), &body)
        };
        let mut incoming = self.pipeline.parse(
            &body,
            0,
            carried,
            properties.correlation_id().as_ref().map(|c| c.to_string()),
        );
        incoming.signals = self.signals.clone();
        incoming.origin = self.origin;
        let span = tracing::info_span!("job", job_id = %incoming.job_id_hint().unwrap_or_default());
        async move {
            if provenance == Provenance::Refused {
                tracing::warn!("The job carries x-liveness-* progress headers the worker did not write (or for another body); they are ignored and it runs as a fresh job");
            }
            // A first delivery has no history, whatever x-delivery-count a
            // producer may have put in its headers; requeues the worker
            // caused itself (an outcome it could not publish) do not count.
            incoming.delivery_count = if redelivered {
                let own = match incoming.job_id() {
                    Some(id) => self.requeues.get(id).await,
                    None => 0,
                };
                headers::delivery_count(&properties).saturating_sub(own)
            } else {
                0
            };
            let incoming = Arc::new(incoming);
            let mut finished = self.step_catching_panics(incoming.clone()).await;
            let shadow = finished.shadow.take();
            let job = JobMessage {
                body: &body,
                props: &properties,
            };
            let published = self.finisher.finish(&finished, job, Some(&acker)).await;
            if let Err(e) = published {
                metrics.publish_failed();
                tracing::warn!(error = %e, outcome = %finished.disposition.label(), "Could not publish the outcome within broker.publish_timeout; returning the job to the queue");
                if let Some(id) = incoming.job_id() {
                    self.requeues.count(id).await;
                }
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            } else if let Some(run) = shadow {
                // The result is out and acked: the shadow call takes no
                // worker slot and cannot hold the job back.
                drop(slot);
                drop(in_flight);
                self.finisher.shadow(run, &self.signals.stop).await;
                return;
            }
            drop(slot);
            drop(in_flight);
        }
        .instrument(span)
        .await
    }

    /// Runs the step in its own task so a panic becomes an `internal` dead
    /// letter instead of taking the worker down. The task ends with the
    /// handler (it is aborted with it), so no job outlives its handler.
    async fn step_catching_panics(&self, incoming: Arc<Incoming>) -> Finished {
        let pipeline = self.pipeline.clone();
        let job = incoming.clone();
        // The job's span (with its job_id) follows it into the task.
        let task = tokio::spawn(
            async move { pipeline.step(&job).await }.instrument(tracing::Span::current()),
        );
        let abort = task.abort_handle();
        let _abort_with_handler = AbortOnDrop(abort);
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

/// Aborts the step's task when its handler goes (an aborted drain).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requeues the worker caused itself (an outcome it could not publish), so
/// they do not push a healthy job toward the poison threshold: remembered
/// in the coordination store when there is one (any replica may get the
/// job back), and in this replica in any case.
struct Requeues {
    coordination: Option<Coordination>,
    local: std::sync::Mutex<std::collections::HashMap<JobId, u32>>,
}

/// Jobs remembered locally at most (each a few dozen bytes).
const REQUEUES_REMEMBERED: usize = 10_000;
/// How long the coordination store remembers them.
const REQUEUES_TTL: Duration = Duration::from_secs(24 * 3600);

impl Requeues {
    fn new(coordination: Option<Coordination>) -> Self {
        Requeues {
            coordination,
            local: Default::default(),
        }
    }

    async fn count(&self, job_id: &JobId) {
        {
            let mut local = self.local.lock().expect("requeues");
            if local.len() >= REQUEUES_REMEMBERED {
                local.clear();
            }
            *local.entry(job_id.clone()).or_default() += 1;
        }
        if let Some(c) = &self.coordination
            && let Err(e) = c.count_requeue(job_id, REQUEUES_TTL).await
        {
            tracing::warn!(error = %e, "Could not record the requeue in the coordination store");
        }
    }

    async fn get(&self, job_id: &JobId) -> u32 {
        let local = self
            .local
            .lock()
            .expect("requeues")
            .get(job_id)
            .copied()
            .unwrap_or(0);
        let shared = match &self.coordination {
            Some(c) => c.requeues(job_id).await.unwrap_or(0),
            None => 0,
        };
        local.max(shared)
    }
}
