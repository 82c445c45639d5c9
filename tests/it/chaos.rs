//! The chaos suite (docs/reliability.md#the-chaos-suite): real worker processes (two, or three for
//! the duplicate storm) work through a batch while something breaks, and
//! every job must come out exactly once (duplicate deliveries of the same
//! outcome are allowed and counted), with no vendor call beyond the attempts
//! the results record, no dead letter for a transient fault, no replica with
//! more jobs in flight than its concurrency, and no worker that needs a
//! restart. The replicas share the coordination store (Redis), as in
//! production.
//!
//! It force-closes broker connections and stops S3, so it must not share
//! them with other tests: `scripts/chaos.sh` gives it its own Garage and its
//! own RabbitMQ vhost and runs it alone. `CHAOS_JOBS` (default 2000) and
//! `CHAOS_SCENARIOS` (comma-separated names; default all) scale it.

use crate::harness::{env, unique};
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use liveness_worker::broker::Names;
use liveness_worker::config::Config;
use liveness_worker::domain::image::sha256_hex;
use liveness_worker::emulator::{Emulator, EmulatorConfig, Faults};
use liveness_worker::samples;
use liveness_worker::store::S3Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL a replica this many times during the run (it is restarted,
    /// as an orchestrator would).
    KillReplica(u32),
    /// `rabbitmqctl close_all_connections` on the suite's vhost, twice.
    CloseConnections,
    /// Stop the S3 server for this long.
    StopS3(Duration),
    /// 10% 5xx, 10% timeouts, 10% dropped connections for the whole run.
    VendorFaults,
    /// Revoke the vendor key for this long, then restore it.
    RevokeKey(Duration),
    /// Every job published three times back to back, three replicas.
    DuplicateStorm,
    /// Vendor answers slower (3 s) than the broker connections live: they
    /// are force-closed every 1.5 s for a while.
    SlowConnectionLoss,
    /// No queue bound to the results exchange for this long, then one.
    UnboundResults(Duration),
    /// The broker refuses publishes (a memory alarm) for this long.
    MemoryAlarm(Duration),
    /// S3 stops while vendor calls are under way, and a replica is sent
    /// SIGTERM with answers in hand.
    SigtermDuringS3Outage,
    /// Every job arrives with forged x-liveness-* progress headers.
    ForgedHeaders,
}

const SCENARIOS: [(&str, Fault); 11] = [
    ("sigkill", Fault::KillReplica(5)),
    ("close-connections", Fault::CloseConnections),
    ("s3-outage", Fault::StopS3(Duration::from_secs(20))),
    ("vendor-faults-30pct", Fault::VendorFaults),
    ("revoke-key", Fault::RevokeKey(Duration::from_secs(5))),
    ("duplicate-storm", Fault::DuplicateStorm),
    ("slow-connection-loss", Fault::SlowConnectionLoss),
    (
        "unbound-results-20s",
        Fault::UnboundResults(Duration::from_secs(20)),
    ),
    (
        "memory-alarm-30s",
        Fault::MemoryAlarm(Duration::from_secs(30)),
    ),
    ("sigterm-s3-outage", Fault::SigtermDuringS3Outage),
    ("forged-headers", Fault::ForgedHeaders),
];

impl Fault {
    /// Replicas the scenario runs.
    fn replicas(self) -> usize {
        match self {
            Fault::DuplicateStorm => 3,
            _ => 2,
        }
    }

    /// Jobs the scenario runs, of the suite's `total`.
    fn jobs(self, total: usize) -> usize {
        match self {
            Fault::DuplicateStorm | Fault::SlowConnectionLoss | Fault::SigtermDuringS3Outage => {
                total.min(500)
            }
            _ => total,
        }
    }

    /// The emulator's latency for every call, in milliseconds.
    fn latency_ms(self) -> u64 {
        match self {
            Fault::SlowConnectionLoss => 3000,
            Fault::SigtermDuringS3Outage => 2000,
            Fault::DuplicateStorm => 200,
            _ => 20,
        }
    }
}

#[derive(Default)]
struct Report {
    name: String,
    jobs: usize,
    results: usize,
    dead_letters: BTreeMap<String, usize>,
    lost: usize,
    duplicate_deliveries: usize,
    conflicting_duplicates: usize,
    submissions: u64,
    recorded_attempts: u64,
    extra_calls: u64,
    extra_call_jobs: usize,
    kills: u32,
    /// The most jobs in flight one replica reported (sampled), and the limit.
    peak_in_flight: i64,
    concurrency: i64,
    unexpected_exits: usize,
    unclean_exits: usize,
    seconds: f64,
    /// The revoked key or the vendor faults cost no extra call: the fault
    /// hit nothing.
    fault_missed: bool,
}

impl Report {
    /// What the bars allow: after a SIGKILL, a job whose vendor call was in
    /// flight (answered, not yet stored) is legitimately paid again.
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} jobs lost", self.lost));
        }
        if self.conflicting_duplicates > 0 {
            f.push(format!(
                "{} jobs got two different outcomes",
                self.conflicting_duplicates
            ));
        }
        if !self.dead_letters.is_empty() {
            f.push(format!(
                "dead letters for transient faults: {:?}",
                self.dead_letters
            ));
        }
        if self.peak_in_flight > self.concurrency {
            f.push(format!(
                "a replica had {} jobs in flight, over its concurrency {}",
                self.peak_in_flight, self.concurrency
            ));
        }
        if self.kills == 0 && self.extra_calls > 0 {
            f.push(format!(
                "{} vendor calls beyond the recorded attempts",
                self.extra_calls
            ));
        }
        // Each killed replica held at most `concurrency` (32) jobs.
        if self.extra_call_jobs > self.kills as usize * 32 {
            f.push(format!(
                "{} jobs paid again: more than the {} kills could have had in flight",
                self.extra_call_jobs, self.kills
            ));
        }
        if self.fault_missed {
            f.push("the fault came after the batch was done: nothing was exercised".into());
        }
        if self.unexpected_exits > 0 {
            f.push(format!(
                "{} worker processes exited by themselves",
                self.unexpected_exits
            ));
        }
        if self.unclean_exits > 0 {
            f.push(format!(
                "{} workers did not exit 0 on SIGTERM",
                self.unclean_exits
            ));
        }
        f
    }
}

struct Suite {
    images: Vec<(String, String)>,
    vhost: String,
    log_dir: std::path::PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/chaos.sh, which gives it its own S3 server and broker vhost"]
async fn chaos_suite() {
    liveness_worker::install_crypto_provider();
    let jobs: usize = std::env::var("CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let wanted = std::env::var("CHAOS_SCENARIOS").unwrap_or_default();
    let vhost = env("LIVENESS_CHAOS_VHOST");
    let cfg = Config::from_toml(&s3_toml()).expect("config");
    let store = S3Store::new(&cfg.s3).await;
    let log_dir = std::env::temp_dir().join(unique("liveness-chaos-logs"));
    std::fs::create_dir_all(&log_dir).unwrap();

    // One distinct image per job, so the emulator's per-image count is a
    // per-job count. Scores derive from the image hash: a mix of verdicts.
    let key_prefix = unique("chaos");
    let bucket = env("LIVENESS_TEST_IMAGES_BUCKET");
    let started = Instant::now();
    let images: Vec<(String, String)> = futures_util::stream::iter(0..jobs)
        .map(|i| {
            let (store, bucket, key_prefix) = (store.clone(), bucket.clone(), key_prefix.clone());
            async move {
                let bytes = samples::png(1_000_000 + i as u64, 1500, None);
                let sha = sha256_hex(&bytes);
                let key = format!("{key_prefix}/{i}.png");
                store
                    .put(&bucket, &key, bytes.into(), "image/png")
                    .await
                    .expect("upload");
                (format!("s3://{bucket}/{key}"), sha)
            }
        })
        .buffered(32)
        .collect()
        .await;
    println!(
        "chaos: uploaded {jobs} images in {:.1}s; logs in {}",
        started.elapsed().as_secs_f64(),
        log_dir.display()
    );
    let suite = Suite {
        images,
        vhost,
        log_dir,
    };

    let mut reports = Vec::new();
    for (name, fault) in SCENARIOS {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == name) {
            continue;
        }
        println!("chaos: scenario {name} ...");
        let r = run_scenario(&suite, name, fault).await;
        println!(
            "chaos: {name}: {} results, {} lost, {} duplicates, {:.1}s",
            r.results, r.lost, r.duplicate_deliveries, r.seconds
        );
        reports.push(r);
    }
    let table = render(&reports);
    println!("\n{table}");
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(&path, &table).expect("write the chaos report");
    }
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|r| r.failures().into_iter().map(|f| format!("{}: {f}", r.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "chaos bars not met:\n{}",
        failures.join("\n")
    );
}

fn render(reports: &[Report]) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "| scenario | jobs | results | dead letters | lost | duplicate deliveries | vendor calls | recorded attempts | calls beyond recorded attempts (jobs) | peak in flight per replica (limit) | replica kills | self-exits | clean SIGTERM exit | time |"
    )
    .unwrap();
    writeln!(
        s,
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    )
    .unwrap();
    for r in reports {
        let dead = if r.dead_letters.is_empty() {
            "0".to_owned()
        } else {
            format!("{:?}", r.dead_letters)
        };
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {:.0} s |",
            r.name,
            r.jobs,
            r.results,
            dead,
            r.lost,
            r.duplicate_deliveries,
            r.submissions,
            r.recorded_attempts,
            r.extra_calls,
            r.extra_call_jobs,
            r.peak_in_flight,
            r.concurrency,
            r.kills,
            r.unexpected_exits,
            if r.unclean_exits == 0 { "yes" } else { "no" },
            r.seconds
        )
        .unwrap();
    }
    s
}

/// The S3 part of the configuration, from the suite's own Garage.
fn s3_toml() -> String {
    format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nforce_path_style = true\n",
        env("LIVENESS_S3__ENDPOINT"),
        env("LIVENESS_S3__REGION"),
        env("LIVENESS_S3__ACCESS_KEY_ID"),
        env("LIVENESS_S3__SECRET_ACCESS_KEY"),
    )
}

struct Replica {
    child: Child,
    /// Where its /metrics are served.
    metrics: String,
}

fn spawn_replica(suite: &Suite, envs: &[(String, String)], tag: &str) -> Replica {
    let log = std::fs::File::create(suite.log_dir.join(format!("{tag}.log"))).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_liveness-worker"));
    cmd.arg("run")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.env("LIVENESS_TELEMETRY__LISTEN", format!("127.0.0.1:{port}"));
    Replica {
        child: cmd.spawn().expect("worker binary starts"),
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    }
}

/// Samples every replica's `liveness_jobs_in_flight` until `stop`; the
/// highest value seen.
async fn sample_in_flight(urls: Arc<std::sync::Mutex<Vec<String>>>, stop: Arc<AtomicBool>) -> i64 {
    let client = reqwest::Client::new();
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        let current: Vec<String> = urls.lock().unwrap().clone();
        for url in current {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                && let Ok(text) = r.text().await
                && let Some(n) = crate::telemetry::series(&text, "liveness_jobs_in_flight")
            {
                peak = peak.max(n as i64);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

async fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn services(cmd: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(cmd)
        .output()
        .await
        .expect("services.sh runs");
    assert!(
        out.status.success(),
        "services.sh {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn connect(url: &str) -> (Connection, Channel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(conn) => match liveness_worker::broker::confirm_channel(&conn).await {
                Ok(ch) => return (conn, ch),
                Err(e) => assert!(Instant::now() < deadline, "channel: {e}"),
            },
            Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_scenario(suite: &Suite, name: &str, fault: Fault) -> Report {
    let prefix = unique(&format!("chaos-{name}"));
    let api_key = format!("chaos-key-{}", fastrand::u64(..));
    let emulator = Emulator::start(EmulatorConfig {
        faults: Faults {
            latency_ms: fault.latency_ms(),
            ..Default::default()
        },
        ..EmulatorConfig::local(&api_key)
    })
    .await
    .expect("emulator");
    let admin = reqwest::Client::new();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:5672/{}",
        suite.vhost.replace('/', "%2f")
    );
    let envs: Vec<(String, String)> = [
        ("LIVENESS_BROKER__URL", url.clone()),
        ("LIVENESS_BROKER__PREFIX", prefix.clone()),
        // The ladder outlasts a 20 s S3 outage: 1+3+10+20 s.
        (
            "LIVENESS_BROKER__RETRY_DELAYS",
            r#"["1s","3s","10s","20s"]"#.into(),
        ),
        ("LIVENESS_WORKER__CONCURRENCY", "32".into()),
        ("LIVENESS_WORKER__JOB_DEADLINE", "20s".into()),
        ("LIVENESS_WORKER__DRAIN_TIMEOUT", "10s".into()),
        ("LIVENESS_WORKER__DRAIN_GRACE", "10s".into()),
        (
            "LIVENESS_COORDINATION__REDIS_URL",
            env("LIVENESS_TEST_REDIS_URL"),
        ),
        // A killed replica's claims run out quickly.
        ("LIVENESS_COORDINATION__CLAIM_LEASE", "10s".into()),
        (
            "LIVENESS_BROKER__RESULTS_QUEUE",
            if matches!(fault, Fault::UnboundResults(_)) {
                String::new()
            } else {
                "liveness.results".into()
            },
        ),
        (
            "LIVENESS_WORKER__ALLOWED_BUCKETS",
            format!(r#"["{}"]"#, env("LIVENESS_TEST_IMAGES_BUCKET")),
        ),
        ("LIVENESS_RETRY__INITIAL_BACKOFF", "100ms".into()),
        ("LIVENESS_RETRY__MAX_BACKOFF", "1s".into()),
        ("LIVENESS_RETRY__CREDENTIALS_PARK_STEP", "0".into()),
        ("LIVENESS_RETRY__PAUSE_PROBE_INTERVAL", "1s".into()),
        ("LIVENESS_S3__ENDPOINT", env("LIVENESS_S3__ENDPOINT")),
        ("LIVENESS_S3__REGION", env("LIVENESS_S3__REGION")),
        (
            "LIVENESS_S3__ACCESS_KEY_ID",
            env("LIVENESS_S3__ACCESS_KEY_ID"),
        ),
        (
            "LIVENESS_S3__SECRET_ACCESS_KEY",
            env("LIVENESS_S3__SECRET_ACCESS_KEY"),
        ),
        ("LIVENESS_S3__FORCE_PATH_STYLE", "true".into()),
        ("LIVENESS_S3__CONNECT_TIMEOUT", "1s".into()),
        ("LIVENESS_S3__OPERATION_TIMEOUT", "5s".into()),
        (
            "LIVENESS_RESULTS__BUCKET",
            env("LIVENESS_TEST_RESULTS_BUCKET"),
        ),
        ("LIVENESS_RESULTS__PREFIX", format!("{prefix}/")),
        ("LIVENESS_RESULTS__STORE_TIMEOUT", "2m".into()),
        (
            "LIVENESS_PROVIDERS__ARGOS__BASE_URL",
            format!("{}/modules", emulator.base_url()),
        ),
        ("LIVENESS_PROVIDERS__ARGOS__API_KEY", api_key.clone()),
        // Short, so held requests fail fast, but well above the latency.
        (
            "LIVENESS_PROVIDERS__ARGOS__TIMEOUT",
            format!("{}ms", 2000 + 2 * fault.latency_ms()),
        ),
        ("LIVENESS_TELEMETRY__LOG_FORMAT", "json".into()),
        ("LIVENESS_TELEMETRY__LOG_LEVEL", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::from_toml(&format!(
        "{}\n[broker]\nurl = \"{url}\"\nprefix = \"{prefix}\"\nretry_delays = [\"1s\",\"3s\",\"10s\",\"20s\"]\n",
        s3_toml()
    ))
    .expect("config");
    let names = Names::new(&cfg.broker);
    let results_queue = names.results_queue.clone().expect("a results queue name");
    {
        let (conn, _) = connect(&url).await;
        let mut declared = cfg.broker.clone();
        if matches!(fault, Fault::UnboundResults(_)) {
            // Nothing bound to the results exchange until the fault ends.
            declared.results_queue = String::new();
        }
        liveness_worker::broker::declare_topology(&conn, &declared)
            .await
            .expect("topology");
        let _ = conn.close(200, "".into()).await;
    }

    if fault == Fault::VendorFaults {
        let r = admin
            .put(format!("{}/_admin/faults", emulator.base_url()))
            .json(&json!({"error_rate": 0.1, "timeout_rate": 0.1, "drop_rate": 0.1}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "faults accepted");
    }
    let mut replicas: Vec<Replica> = (0..fault.replicas())
        .map(|i| spawn_replica(suite, &envs, &format!("{prefix}-r{i}")))
        .collect();
    let metric_urls = Arc::new(std::sync::Mutex::new(
        replicas
            .iter()
            .map(|r| r.metrics.clone())
            .collect::<Vec<_>>(),
    ));
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_in_flight(metric_urls.clone(), sampling.clone()));

    // Publish the batch with confirms, many in flight.
    let started = Instant::now();
    let n = fault.jobs(suite.images.len());
    let images = &suite.images[..n];
    let job_ids: Vec<String> = (0..n).map(|i| format!("{prefix}-job-{i}")).collect();
    let copies = if fault == Fault::DuplicateStorm { 3 } else { 1 };
    {
        let (conn, ch) = connect(&url).await;
        for (chunk_ids, chunk_imgs) in job_ids.chunks(256).zip(images.chunks(256)) {
            let mut confirms = Vec::new();
            for (id, (uri, _)) in chunk_ids.iter().zip(chunk_imgs) {
                let body = serde_json::to_vec(&json!({
                    "schema": "liveness.job.v1", "job_id": id, "check": "document", "image": uri
                }))
                .unwrap();
                let mut props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into());
                if fault == Fault::ForgedHeaders {
                    props = props.with_headers(forged_progress());
                }
                for _ in 0..copies {
                    confirms.push(
                        ch.basic_publish(
                            names.jobs_exchange.as_str().into(),
                            names.jobs_routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            props.clone(),
                        )
                        .await
                        .expect("publish"),
                    );
                }
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack(), "job publish confirmed");
            }
        }
        let _ = conn.close(200, "".into()).await;
    }

    // Collect outcomes while the fault happens.
    let done = Arc::new(AtomicUsize::new(0));
    let total = job_ids.len();
    let collector = tokio::spawn(collect(
        url.clone(),
        [results_queue.clone(), names.dead_queue.clone()],
        job_ids.clone(),
        done.clone(),
    ));
    // Faults start at a share of the vendor calls made, the workers' own
    // progress (the collector trails it).
    let calls_url = format!("{}/_admin/calls", emulator.base_url());
    let at = async |share: f64| {
        let want = (total as f64 * share) as u64;
        loop {
            let calls: Value = admin
                .get(&calls_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let made = calls["argos"]["submissions"].as_u64().unwrap_or(0);
            if made >= want || done.load(Ordering::Relaxed) >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut kills = 0;
    match fault {
        Fault::KillReplica(times) => {
            for k in 0..times {
                at(0.1 + 0.12 * k as f64).await;
                let r = &mut replicas[(k % 2) as usize];
                r.child.start_kill().expect("SIGKILL");
                let _ = r.child.wait().await;
                kills += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                replicas[(k % 2) as usize] =
                    spawn_replica(suite, &envs, &format!("{prefix}-r{}-restart{k}", k % 2));
                metric_urls.lock().unwrap()[(k % 2) as usize] =
                    replicas[(k % 2) as usize].metrics.clone();
            }
        }
        Fault::CloseConnections => {
            for share in [0.25, 0.6] {
                at(share).await;
                close_connections(&suite.vhost).await;
            }
        }
        Fault::StopS3(down) => {
            at(0.2).await;
            services("stop-s3").await;
            tokio::time::sleep(down).await;
            services("start-s3").await;
        }
        Fault::RevokeKey(down) => {
            let creds = format!("{}/_admin/credentials/argos", emulator.base_url());
            at(0.2).await;
            admin
                .post(&creds)
                .json(&json!({"valid": false}))
                .send()
                .await
                .unwrap();
            tokio::time::sleep(down).await;
            admin
                .post(&creds)
                .json(&json!({"valid": true}))
                .send()
                .await
                .unwrap();
        }
        Fault::VendorFaults | Fault::DuplicateStorm | Fault::ForgedHeaders => {}
        Fault::SlowConnectionLoss => {
            at(0.05).await;
            for _ in 0..6 {
                close_connections(&suite.vhost).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        Fault::UnboundResults(down) => {
            tokio::time::sleep(down).await;
            let (conn, ch) = connect(&url).await;
            ch.queue_declare(
                results_queue.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("results queue");
            ch.queue_bind(
                results_queue.as_str().into(),
                names.results_exchange.as_str().into(),
                "#".into(),
                lapin::options::QueueBindOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("bind");
            let _ = conn.close(200, "".into()).await;
        }
        Fault::MemoryAlarm(down) => {
            at(0.2).await;
            let alarm = MemoryAlarm::raise().await;
            tokio::time::sleep(down).await;
            alarm.clear().await;
        }
        Fault::SigtermDuringS3Outage => {
            at(0.2).await;
            services("stop-s3").await;
            // Calls under way get their answers while the store is down.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let r = &mut replicas[0];
            crate::harness::signal(r.child.id().expect("running") as i32, 15);
            let exit = tokio::time::timeout(Duration::from_secs(40), r.child.wait()).await;
            assert!(
                matches!(exit, Ok(Ok(s)) if s.success()),
                "the replica drained and exited 0: {exit:?}"
            );
            replicas[0] = spawn_replica(suite, &envs, &format!("{prefix}-r0-restart"));
            metric_urls.lock().unwrap()[0] = replicas[0].metrics.clone();
            tokio::time::sleep(Duration::from_secs(15)).await;
            services("start-s3").await;
        }
    }
    let outcomes = collector.await.expect("collector");
    sampling.store(true, Ordering::Relaxed);
    let peak_in_flight = sampler.await.expect("sampler");
    let seconds = started.elapsed().as_secs_f64();

    // Did any worker exit by itself? Then stop them the normal way.
    let mut unexpected_exits = 0;
    let mut unclean_exits = 0;
    for r in &mut replicas {
        if r.child.try_wait().expect("status").is_some() {
            unexpected_exits += 1;
            continue;
        }
        let pid = r.child.id().expect("running") as i32;
        crate::harness::signal(pid, 15);
        match tokio::time::timeout(Duration::from_secs(30), r.child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            _ => unclean_exits += 1,
        }
    }

    let calls: Value = admin
        .get(format!("{}/_admin/calls", emulator.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut report = Report {
        name: name.to_owned(),
        jobs: total,
        kills,
        peak_in_flight,
        concurrency: 32,
        unexpected_exits,
        unclean_exits,
        seconds,
        submissions: calls["argos"]["submissions"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    report.fault_missed = matches!(fault, Fault::RevokeKey(_) | Fault::VendorFaults)
        && report.submissions <= total as u64;
    for (id, (_, sha)) in job_ids.iter().zip(images) {
        let Some(seen) = outcomes.get(id) else {
            report.lost += 1;
            continue;
        };
        report.duplicate_deliveries += seen.len() - 1;
        if seen.iter().any(|o| o.key() != seen[0].key()) {
            report.conflicting_duplicates += 1;
        }
        let calls = calls["argos"]["by_image"][sha].as_u64().unwrap_or(0);
        match &seen[0] {
            Outcome::Result { attempts, .. } => {
                report.results += 1;
                report.recorded_attempts += attempts;
                if calls > *attempts {
                    report.extra_calls += calls - attempts;
                    report.extra_call_jobs += 1;
                }
            }
            Outcome::Dead { class } => *report.dead_letters.entry(class.clone()).or_default() += 1,
        }
    }

    // Clean up this scenario's queues.
    let (conn, ch) = connect(&url).await;
    let mut queues = vec![
        names.jobs_queue.clone(),
        names.dead_queue.clone(),
        names.poison_queue.clone(),
    ];
    queues.extend(names.results_queue.clone());
    queues.extend(names.retry_queues.iter().map(|(q, _)| q.clone()));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "".into()).await;
    report
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Result { verdict: String, attempts: u64 },
    Dead { class: String },
}

impl Outcome {
    fn key(&self) -> String {
        match self {
            Outcome::Result { verdict, .. } => format!("result {verdict}"),
            Outcome::Dead { class } => format!("dead {class}"),
        }
    }
}

/// Takes results and dead letters until every job is accounted for (or
/// 6 minutes pass), then a little longer to catch late duplicates.
/// Reconnects when the chaos closes its connection too.
async fn collect(
    url: String,
    queues: [String; 2],
    job_ids: Vec<String>,
    done: Arc<AtomicUsize>,
) -> HashMap<String, Vec<Outcome>> {
    let mut seen: HashMap<String, Vec<Outcome>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(360);
    let mut settle_until: Option<Instant> = None;
    let (mut conn, mut ch) = connect(&url).await;
    loop {
        if settle_until.is_some_and(|t| Instant::now() >= t) || Instant::now() >= deadline {
            break;
        }
        let mut got_any = false;
        for q in &queues {
            match ch
                .basic_get(q.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(Some(m)) => {
                    got_any = true;
                    let d = m.delivery;
                    let v: Value = serde_json::from_slice(&d.data).expect("JSON outcome");
                    let id = v["job_id"].as_str().unwrap_or_default().to_owned();
                    let o = if v["schema"] == "liveness.result.v1" {
                        Outcome::Result {
                            verdict: v["verdict"].as_str().unwrap_or_default().to_owned(),
                            attempts: v["attempts"].as_u64().unwrap_or(0),
                        }
                    } else {
                        Outcome::Dead {
                            class: v["failure"]["class"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        }
                    };
                    seen.entry(id).or_default().push(o);
                    // A lost ack only means we see it again: counted as a duplicate.
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                }
                Ok(None) => {}
                // A closed connection (the chaos), or a results queue that
                // does not exist yet (unbound-results): the failed get
                // closed the channel; reconnect and go on.
                Err(_) => {
                    let _ = conn.close(200, "".into()).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    (conn, ch) = connect(&url).await;
                }
            }
        }
        let accounted = job_ids.iter().filter(|id| seen.contains_key(*id)).count();
        done.store(accounted, Ordering::Relaxed);
        if accounted == job_ids.len() && settle_until.is_none() {
            settle_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if !got_any {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = conn.close(200, "".into()).await;
    seen
}

/// Progress headers a producer might set: a job back from the callback
/// wait, its budget spent, an absurd attempt count, a made-up MAC.
fn forged_progress() -> lapin::types::FieldTable {
    use lapin::types::AMQPValue;
    let mut h = lapin::types::FieldTable::default();
    h.insert(
        "x-liveness-awaiting-callback".into(),
        AMQPValue::Boolean(true),
    );
    h.insert(
        "x-liveness-attempts".into(),
        AMQPValue::LongLongInt(4_000_000_000),
    );
    h.insert("x-liveness-ladder-step".into(), AMQPValue::LongLongInt(99));
    h.insert(
        "x-liveness-callback-submissions".into(),
        AMQPValue::LongLongInt(7),
    );
    h.insert(
        "x-liveness-state-mac".into(),
        AMQPValue::LongString("deadbeef".into()),
    );
    h
}

/// Force-closes every connection on the suite's vhost.
async fn close_connections(vhost: &str) {
    rabbitmqctl(&["-q", "close_all_connections", "-p", vhost, "chaos test"]).await;
}

/// RabbitMQ's memory alarm, raised by lowering the high watermark: every
/// publisher on the node is blocked. Cleared on drop too, so a failing
/// scenario cannot leave the broker refusing publishes.
struct MemoryAlarm {
    cleared: bool,
}

/// RabbitMQ's default high watermark.
const WATERMARK: &str = "0.4";

impl MemoryAlarm {
    async fn raise() -> MemoryAlarm {
        rabbitmqctl(&["-q", "set_vm_memory_high_watermark", "0.0000001"]).await;
        MemoryAlarm { cleared: false }
    }

    async fn clear(mut self) {
        rabbitmqctl(&["-q", "set_vm_memory_high_watermark", WATERMARK]).await;
        self.cleared = true;
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if !self.cleared {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "set_vm_memory_high_watermark", WATERMARK])
                .status();
        }
    }
}
