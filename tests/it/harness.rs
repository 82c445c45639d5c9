//! An isolated worker per test: its own broker prefix (so its own queues),
//! its own S3 key prefix, its own emulator on an ephemeral port; the real
//! RabbitMQ and Garage underneath. Settings come from the environment that
//! `scripts/services.sh` writes (scripts/test.sh sources it).

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use liveness_worker::broker::Names;
use liveness_worker::config::Config;
use liveness_worker::domain::job::JobId;
use liveness_worker::emulator::{Emulator, EmulatorConfig};
use liveness_worker::store::S3Store;
use liveness_worker::telemetry::Telemetry;
use liveness_worker::worker;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test.sh, which starts RabbitMQ and Garage and exports their settings")
    })
}

pub fn images_bucket() -> String {
    env("LIVENESS_TEST_IMAGES_BUCKET")
}

/// A TOML snippet with the real services' settings and a unique prefix;
/// every emulated vendor at `argos_url` (the emulator) with one key.
pub fn base_toml(prefix: &str, argos_url: &str, argos_key: &str) -> String {
    format!(
        r#"
[broker]
url = "{url}"
prefix = "{prefix}"
retry_delays = ["300ms", "300ms"]
confirm_timeout = "5s"
publish_timeout = "6s"
[worker]
concurrency = 16
allowed_buckets = ["{bucket}"]
job_deadline = "20s"
drain_timeout = "5s"
[retry]
attempts_per_delivery = 2
initial_backoff = "50ms"
max_backoff = "200ms"
max_retry_after = "2s"
credentials_park_step = 0
pause_probe_interval = "300ms"
[results]
bucket = "{results_bucket}"
prefix = "{prefix}/"
store_timeout = "20s"
[s3]
endpoint = "{endpoint}"
region = "{region}"
access_key_id = "{ak}"
secret_access_key = "{sk}"
force_path_style = true
[providers.argos]
base_url = "{argos_url}/modules"
api_key = "{argos_key}"
timeout = "10s"
[providers.intellicheck]
base_url = "{argos_url}"
customer_id = "{INTELLICHECK_CUSTOMER}"
signing_key = "{argos_key}-intellicheck"
timeout = "10s"
poll_initial_interval = "50ms"
poll_max_interval = "200ms"
results_timeout = "10s"
[providers.didit]
base_url = "{argos_url}"
api_key = "{argos_key}"
timeout = "10s"
[coordination]
redis_url = "{redis}"
[telemetry]
log_format = "text"
log_level = "warn"
"#,
        url = env("LIVENESS_BROKER__URL"),
        bucket = images_bucket(),
        results_bucket = env("LIVENESS_TEST_RESULTS_BUCKET"),
        endpoint = env("LIVENESS_S3__ENDPOINT"),
        region = env("LIVENESS_S3__REGION"),
        ak = env("LIVENESS_S3__ACCESS_KEY_ID"),
        sk = env("LIVENESS_S3__SECRET_ACCESS_KEY"),
        redis = env("LIVENESS_TEST_REDIS_URL"),
    )
}

/// The emulator's Intellicheck customer id in tests; its signing key is
/// the Argos key with `-intellicheck` appended.
pub const INTELLICHECK_CUSTOMER: &str = "it-customer";

pub fn unique(tag: &str) -> String {
    format!("it-{tag}-{:08x}", fastrand::u32(..))
}

pub struct TestEnv {
    pub prefix: String,
    pub cfg: Config,
    pub names: Names,
    pub emulator: Emulator,
    pub store: S3Store,
    pub conn: Connection,
    pub ch: Channel,
    pub telemetry: Telemetry,
    /// Where this test's /metrics, /livez and /readyz are served.
    pub telemetry_addr: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    worker: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestEnv {
    /// Emulator, config and a connection; the worker is not started yet.
    pub async fn new(tag: &str, extra_toml: &str) -> TestEnv {
        let prefix = unique(tag);
        let key = format!("key-{}", fastrand::u64(..));
        liveness_worker::install_crypto_provider();
        let emulator = Emulator::start(
            EmulatorConfig::local(&key)
                .with_intellicheck(INTELLICHECK_CUSTOMER, &format!("{key}-intellicheck")),
        )
        .await
        .expect("emulator starts");
        let base = base_toml(&prefix, &emulator.base_url(), &key);
        let cfg = Config::from_toml_layers(&[&base, extra_toml]).expect("test config is valid");
        liveness_worker::telemetry::init(&cfg.telemetry);
        let names = Names::new(&cfg.broker);
        let store = S3Store::new(&cfg.s3).await;
        let conn = Connection::connect(cfg.broker.url.expose(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ is reachable");
        let ch = liveness_worker::broker::confirm_channel(&conn)
            .await
            .expect("channel");
        let telemetry = Telemetry::default();
        let telemetry_addr =
            liveness_worker::telemetry::serve(([127, 0, 0, 1], 0).into(), telemetry.clone())
                .await
                .expect("telemetry endpoint");
        TestEnv {
            prefix,
            cfg,
            names,
            emulator,
            store,
            conn,
            ch,
            telemetry,
            telemetry_addr,
            shutdown: CancellationToken::new(),
            worker: None,
        }
    }

    /// Starts the worker and waits until it consumes.
    pub async fn start(tag: &str, extra_toml: &str) -> TestEnv {
        let mut t = TestEnv::new(tag, extra_toml).await;
        t.start_worker().await;
        t
    }

    pub async fn start_worker(&mut self) {
        let pipeline = worker::build_pipeline(&self.cfg, self.telemetry.metrics.clone())
            .await
            .expect("pipeline builds");
        let (cfg, shutdown) = (self.cfg.clone(), self.shutdown.clone());
        let telemetry = self.telemetry.clone();
        self.worker = Some(tokio::spawn(worker::run(
            cfg, pipeline, telemetry, shutdown,
        )));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .consumers(&self.names.jobs_queue.clone())
                .await
                .unwrap_or(0)
                > 0
            {
                return;
            }
            assert!(Instant::now() < deadline, "worker did not start consuming");
            assert!(
                !self.worker.as_ref().unwrap().is_finished(),
                "worker exited early"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the worker (it drains and exits cleanly), so it can be
    /// started again, e.g. with a changed configuration.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(w) = self.worker.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("worker drains in time");
            r.expect("worker task").expect("worker exits cleanly");
        }
        self.shutdown = CancellationToken::new();
    }

    /// (ready messages, consumers) of a queue; None if it does not exist.
    async fn queue_info(&self, queue: &str) -> Option<(u32, u32)> {
        // A passive declare of a missing queue closes its channel: use a fresh one.
        let ch = self.conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "".into()).await;
        Some((q.message_count(), q.consumer_count()))
    }

    /// Consumer count of a queue (None if it does not exist yet).
    pub async fn consumers(&self, queue: &str) -> Option<u32> {
        self.queue_info(queue).await.map(|(_, c)| c)
    }

    /// Ready messages in a queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.queue_info(queue).await.expect("queue exists").0
    }

    /// Uploads an object under this test's key prefix; returns its s3:// URI.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> String {
        let bucket = images_bucket();
        let key = format!("{}/{name}", self.prefix);
        self.store
            .put(&bucket, &key, bytes.into(), "application/octet-stream")
            .await
            .expect("upload");
        format!("s3://{bucket}/{key}")
    }

    pub fn job(&self, id: &str, check: &str, image: &str) -> Value {
        serde_json::json!({"schema": "liveness.job.v1", "job_id": id, "check": check, "image": image})
    }

    pub async fn publish_raw(&self, body: &[u8], props: BasicProperties) {
        let c = self
            .ch
            .basic_publish(
                self.names.jobs_exchange.as_str().into(),
                self.names.jobs_routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack(), "job publish not confirmed");
    }

    pub async fn publish(&self, job: &Value) {
        let id = job["job_id"].as_str().unwrap_or("x").to_owned();
        self.publish_raw(
            &serde_json::to_vec(job).unwrap(),
            BasicProperties::default().with_message_id(id.as_str().into()),
        )
        .await;
    }

    /// Waits for `n` messages on a queue; returns (routing key, properties, JSON body).
    pub async fn take(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(String, BasicProperties, Value)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match self
                .ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic_get")
            {
                Some(m) => {
                    let d = m.delivery;
                    let v: Value = serde_json::from_slice(&d.data).expect("worker output is JSON");
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    out.push((d.routing_key.to_string(), d.properties, v));
                }
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "timed out on {queue}: got {} of {n} messages: {:#?}",
                        out.len(),
                        out.iter().map(|(_, _, v)| v).collect::<Vec<_>>()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        out
    }

    pub async fn results(&self, n: usize) -> HashMap<String, (String, BasicProperties, Value)> {
        let q = self.names.results_queue.clone().expect("results queue");
        by_job_id(self.take(&q, n, Duration::from_secs(60)).await)
    }

    pub async fn dead_letters(
        &self,
        n: usize,
    ) -> HashMap<String, (String, BasicProperties, Value)> {
        by_job_id(
            self.take(&self.names.dead_queue.clone(), n, Duration::from_secs(60))
                .await,
        )
    }

    /// GET on this test's telemetry endpoint: (status, body).
    pub async fn probe(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.telemetry_addr))
            .await
            .expect("telemetry endpoint answers");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Whether the vendor is paused (its `liveness_vendor_paused` gauge),
    /// checking on the way that readiness does not depend on it: a paused
    /// vendor leaves the replica ready for the other vendors' work.
    pub async fn vendor_flag(&self, gauge: &str, vendor: &str) -> bool {
        let metrics = self.probe("/metrics").await.1;
        let set = metrics.contains(&format!("liveness_{gauge}{{vendor=\"{vendor}\"}} 1"));
        if set {
            assert_eq!(
                self.probe("/readyz").await,
                (200, "ready".into()),
                "readiness must not follow a {gauge} vendor"
            );
        }
        set
    }

    /// `GET /_admin/calls` of the emulator.
    pub async fn calls(&self) -> Value {
        reqwest::get(format!("{}/_admin/calls", self.emulator.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The job's record in the results store, if any.
    pub async fn stored_outcome(&self, job_id: &str) -> Option<Value> {
        self.results_record(&liveness_worker::store::outcomes::outcome_key(
            &self.cfg.results.prefix,
            &JobId::parse(job_id).expect("a valid job_id"),
        ))
        .await
    }

    /// The job's pending callback-mode record, if any.
    pub async fn pending_record(&self, job_id: &str) -> Option<Value> {
        self.results_record(&liveness_worker::store::outcomes::pending_key(
            &self.cfg.results.prefix,
            &JobId::parse(job_id).expect("a valid job_id"),
        ))
        .await
    }

    async fn results_record(&self, key: &str) -> Option<Value> {
        let out = self
            .store
            .client()
            .get_object()
            .bucket(&self.cfg.results.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let body = out
            .body
            .collect()
            .await
            .expect("read a results-store record");
        Some(serde_json::from_slice(&body.into_bytes()).expect("results-store records are JSON"))
    }

    /// The job's audit records of deliveries without an outcome, in order.
    pub async fn attempt_logs(&self, job_id: &str) -> Vec<Value> {
        let prefix = format!("{}attempts/{job_id}/", self.cfg.results.prefix);
        let client = self.store.client();
        let list = client
            .list_objects_v2()
            .bucket(&self.cfg.results.bucket)
            .prefix(&prefix)
            .send()
            .await
            .expect("list attempt logs");
        let mut out = Vec::new();
        for o in list.contents() {
            let body = client
                .get_object()
                .bucket(&self.cfg.results.bucket)
                .key(o.key().unwrap())
                .send()
                .await
                .expect("get attempt log")
                .body
                .collect()
                .await
                .unwrap();
            out.push(serde_json::from_slice(&body.into_bytes()).unwrap());
        }
        out
    }

    pub async fn submissions_for(&self, sha256: &str) -> u64 {
        self.calls().await["argos"]["by_image"][sha256]
            .as_u64()
            .unwrap_or(0)
    }

    /// Submissions of one image to one vendor.
    pub async fn vendor_submissions_for(&self, vendor: &str, sha256: &str) -> u64 {
        self.calls().await[vendor]["by_image"][sha256]
            .as_u64()
            .unwrap_or(0)
    }

    /// Stops the worker (drain) and deletes this test's queues and exchanges.
    pub async fn finish(mut self) {
        self.shutdown.cancel();
        if let Some(w) = self.worker.take() {
            let r = tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("worker drains in time");
            r.expect("worker task").expect("worker exits cleanly");
        }
        let mut queues = vec![
            self.names.jobs_queue.clone(),
            self.names.dead_queue.clone(),
            self.names.poison_queue.clone(),
        ];
        queues.extend(self.names.results_queue.clone());
        queues.extend(self.names.retry_queues.iter().map(|(q, _)| q.clone()));
        queues.push(self.names.callback_wait_queue.clone());
        queues.extend(self.names.shadow_queue.clone());
        queues.extend(self.names.wait_queues.iter().map(|(_, q)| q.clone()));
        for q in queues {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [
            &self.names.jobs_exchange,
            &self.names.results_exchange,
            &self.names.dead_exchange,
            &self.names.shadow_exchange,
        ] {
            let _ = self
                .ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "".into()).await;
    }
}

/// Polls `cond` every 50 ms until it holds; fails the test after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_job_id(
    msgs: Vec<(String, BasicProperties, Value)>,
) -> HashMap<String, (String, BasicProperties, Value)> {
    let mut m = HashMap::new();
    for (rk, p, v) in msgs {
        let id = v["job_id"].as_str().unwrap_or("<null>").to_owned();
        assert!(
            m.insert(id.clone(), (rk, p, v)).is_none(),
            "two messages for job {id}"
        );
    }
    m
}

pub fn int_header(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

pub fn corr(p: &BasicProperties) -> Option<String> {
    p.correlation_id().as_ref().map(ShortString::to_string)
}

/// The real `liveness-worker run` binary on this test's queues, results
/// prefix and coordination store, logging JSON at debug level, with its metrics on a random port.
/// Its output is read as it runs (a verbose worker would otherwise block on
/// a full pipe).
pub struct WorkerProcess {
    child: tokio::process::Child,
    output: tokio::task::JoinHandle<String>,
    metrics_port: u16,
}

impl TestEnv {
    /// Starts the binary with the common settings plus `vendor_env` (the
    /// vendors' LIVENESS_PROVIDERS__* and anything else a test needs), and
    /// waits until it consumes.
    pub async fn spawn_worker_process(&self, vendor_env: &[(&str, String)]) -> WorkerProcess {
        use tokio::io::AsyncReadExt as _;
        let metrics_port = 20_000 + fastrand::u16(..20_000);
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_liveness-worker"));
        cmd.arg("run")
            .env_remove("RUST_LOG")
            .env("LIVENESS_BROKER__PREFIX", &self.prefix)
            .env("LIVENESS_BROKER__RETRY_DELAYS", r#"["300ms"]"#)
            .env("LIVENESS_RETRY__CREDENTIALS_PARK_STEP", "0")
            .env(
                "LIVENESS_RESULTS__BUCKET",
                env("LIVENESS_TEST_RESULTS_BUCKET"),
            )
            .env("LIVENESS_RESULTS__PREFIX", format!("{}/", self.prefix))
            .env(
                "LIVENESS_COORDINATION__REDIS_URL",
                env("LIVENESS_TEST_REDIS_URL"),
            )
            .env(
                "LIVENESS_WORKER__ALLOWED_BUCKETS",
                format!(r#"["{}"]"#, images_bucket()),
            )
            .env("LIVENESS_TELEMETRY__LOG_FORMAT", "json")
            .env("LIVENESS_TELEMETRY__LOG_LEVEL", "debug")
            .env(
                "LIVENESS_TELEMETRY__LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .envs(vendor_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("worker binary starts");
        let mut err = child.stderr.take().expect("stderr is piped");
        let mut out = child.stdout.take().expect("stdout is piped");
        let output = tokio::spawn(async move {
            let (mut e, mut o) = (Vec::new(), Vec::new());
            let _ = tokio::join!(err.read_to_end(&mut e), out.read_to_end(&mut o));
            String::from_utf8_lossy(&e).into_owned() + &String::from_utf8_lossy(&o)
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .consumers(&self.names.jobs_queue.clone())
            .await
            .unwrap_or(0)
            == 0
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("worker exited with {status}: {}", output.await.unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "the worker process did not start consuming"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        WorkerProcess {
            child,
            output,
            metrics_port,
        }
    }
}

impl WorkerProcess {
    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("metrics endpoint answers")
            .text()
            .await
            .unwrap()
    }

    /// SIGTERM; asserts it drains and exits 0; returns everything it logged.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running") as i32;
        assert_eq!(signal(pid, 15), 0, "SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        self.output.await.unwrap()
    }
}

/// kill(2): sends `sig` to process `pid`; 0 on success.
pub fn signal(pid: i32, sig: i32) -> i32 {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { kill(pid, sig) }
}
