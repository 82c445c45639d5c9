//! `liveness-worker demo`: the whole system on local services. Starts the
//! emulator and a worker in this process, uploads generated sample images
//! carrying scenarios, enqueues a few hundred jobs (some deliberately bad),
//! waits until every job is accounted for and prints a summary.

use crate::broker::{self, Names};
use crate::config::{Config, Sources};
use crate::emulator::{Emulator, EmulatorConfig, Faults};
use crate::samples;
use crate::store::S3Store;
use anyhow::Context as _;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 300)]
    pub jobs: usize,
    /// Worker concurrency (jobs in flight).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Emulated vendor latency per call, in milliseconds.
    #[arg(long, default_value_t = 40)]
    pub latency_ms: u64,
    /// Bucket to upload sample images to (must exist; default: the first allowed bucket).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Keep the demo's queues afterwards (they are deleted by default).
    #[arg(long)]
    pub keep: bool,
}

/// One kind of sample job and what the demo expects of it.
struct Sample {
    name: &'static str,
    check: &'static str,
    /// None: the configured default (Argos).
    provider: Option<&'static str>,
    scenario: Option<&'static str>,
    jpeg: bool,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "doc-live",
        check: "document",
        provider: None,
        scenario: Some(r#"{"screen_replay":96,"printed_copy":88,"portrait_substitution":92}"#),
        jpeg: false,
    },
    Sample {
        name: "doc-live-jpeg",
        check: "document",
        provider: None,
        scenario: Some(r#"{"screen_replay":85,"printed_copy":79,"portrait_substitution":99}"#),
        jpeg: true,
    },
    Sample {
        name: "doc-review",
        check: "document",
        provider: None,
        scenario: Some(r#"{"screen_replay":52,"printed_copy":80,"portrait_substitution":90}"#),
        jpeg: false,
    },
    Sample {
        name: "doc-screen-replay",
        check: "document",
        provider: None,
        scenario: Some(r#"{"screen_replay":12}"#),
        jpeg: false,
    },
    Sample {
        name: "doc-printed-copy",
        check: "document",
        provider: None,
        scenario: Some(r#"{"printed_copy":22,"screen_replay":90}"#),
        jpeg: true,
    },
    Sample {
        name: "doc-unreadable",
        check: "document",
        provider: None,
        scenario: Some(r#"{"error":1009}"#),
        jpeg: false,
    },
    Sample {
        name: "doc-flaky-vendor",
        check: "document",
        provider: None,
        scenario: Some(
            r#"{"error":1003,"error_times":1,"screen_replay":91,"printed_copy":91,"portrait_substitution":91}"#,
        ),
        jpeg: false,
    },
    Sample {
        name: "doc-hash-scored",
        check: "document",
        provider: None,
        scenario: None,
        jpeg: false,
    },
    Sample {
        name: "face-live",
        check: "face",
        provider: None,
        scenario: Some(r#"{"face":93}"#),
        jpeg: true,
    },
    Sample {
        name: "face-spoof",
        check: "face",
        provider: None,
        scenario: Some(r#"{"face":8}"#),
        jpeg: false,
    },
    Sample {
        name: "face-no-face",
        check: "face",
        provider: None,
        scenario: Some(r#"{"no_face":true}"#),
        jpeg: false,
    },
    Sample {
        name: "ic-doc-live-two-sides",
        check: "document",
        provider: Some("intellicheck"),
        scenario: Some(r#"{"screen_replay":93,"printed_copy":88,"portrait_substitution":97}"#),
        jpeg: false,
    },
    Sample {
        name: "ic-doc-printed-copy",
        check: "document",
        provider: Some("intellicheck"),
        scenario: Some(r#"{"screen_replay":90,"printed_copy":12,"portrait_substitution":95}"#),
        jpeg: true,
    },
    Sample {
        name: "didit-face-live",
        check: "face",
        provider: Some("didit"),
        scenario: Some(r#"{"face":91}"#),
        jpeg: true,
    },
    Sample {
        name: "didit-face-low-quality",
        check: "face",
        provider: Some("didit"),
        scenario: Some(r#"{"face":84,"warnings":["LOW_FACE_QUALITY"]}"#),
        jpeg: false,
    },
    Sample {
        name: "didit-face-attack",
        check: "face",
        provider: Some("didit"),
        scenario: Some(r#"{"face":12}"#),
        jpeg: false,
    },
];

pub async fn run(sources: &Sources, args: DemoArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(sources)?;
    let mut log_cfg = cfg.telemetry.clone();
    log_cfg.log_format = crate::config::LogFormat::Text;
    log_cfg.log_level = "error".into();
    crate::telemetry::init(&log_cfg);
    let run_id = format!("{:08x}", fastrand::u32(..));
    let api_key = format!("demo-{}", fastrand::u64(..));
    let emulator = Emulator::start(EmulatorConfig {
        faults: Faults {
            latency_ms: args.latency_ms,
            ..Faults::default()
        },
        ..EmulatorConfig::local(&api_key)
    })
    .await?;
    let bucket = args
        .bucket
        .clone()
        .unwrap_or_else(|| cfg.worker.allowed_buckets[0].clone());
    cfg.broker.prefix = format!("demo-{run_id}");
    cfg.broker.retry_delays = vec![Duration::from_secs(1), Duration::from_secs(2)];
    cfg.worker.concurrency = args.concurrency;
    cfg.retry.credentials_park_step = 0;
    // Outcomes of this run only: a second demo pays (the emulator) again.
    cfg.results.prefix = format!("demo/{run_id}/");
    let url = |s: String| s.parse::<url::Url>().context("the emulator's URL");
    cfg.providers.argos.base_url = url(format!("{}/modules", emulator.base_url()))?;
    cfg.providers.argos.api_key = crate::config::Secret::new(api_key.clone());
    // The emulator's Intellicheck and Didit take the same key.
    let ic = &mut cfg.providers.intellicheck;
    ic.base_url = Some(url(emulator.base_url())?);
    ic.customer_id = "local-customer".into();
    ic.signing_key = crate::config::Secret::new(api_key.clone());
    ic.poll_initial_interval = Duration::from_millis(50);
    cfg.providers.didit.base_url = url(emulator.base_url())?;
    cfg.providers.didit.api_key = crate::config::Secret::new(api_key);
    cfg.validate()?;
    let names = Names::new(&cfg.broker);

    println!(
        "liveness-worker demo {run_id}: emulator at {}, broker prefix {}",
        emulator.base_url(),
        cfg.broker.prefix
    );
    let store = S3Store::new(&cfg.s3).await;
    let prefix = format!("demo/{run_id}");
    let mut uris = Vec::new();
    for (i, s) in SAMPLES.iter().enumerate() {
        let bytes = if s.jpeg {
            samples::jpeg(i as u64, 150_000, s.scenario)
        } else {
            samples::png(i as u64, 150_000, s.scenario)
        };
        let key = format!("{prefix}/{}.{}", s.name, if s.jpeg { "jpg" } else { "png" });
        store.put(&bucket, &key, bytes.into(), if s.jpeg { "image/jpeg" } else { "image/png" }).await.with_context(|| {
            format!("cannot upload samples to bucket {bucket}: is Garage up (scripts/services.sh) and the bucket created?")
        })?;
        uris.push(format!("s3://{bucket}/{key}"));
    }
    store
        .put(
            &bucket,
            &format!("{prefix}/notes.txt"),
            "not an image".into(),
            "text/plain",
        )
        .await?;
    println!(
        "uploaded {} sample images to s3://{bucket}/{prefix}/",
        SAMPLES.len()
    );

    // Topology first, so jobs published before the worker starts are routed.
    let conn = broker::connect(&cfg.broker).await?;
    broker::declare_topology(&conn, &cfg.broker).await?;
    let ch = broker::confirm_channel(&conn).await?;

    let telemetry = crate::telemetry::Telemetry::default();
    let pipeline = crate::worker::build_pipeline(&cfg, telemetry.metrics.clone()).await?;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(crate::worker::run(
        cfg.clone(),
        pipeline,
        telemetry,
        shutdown.clone(),
    ));

    // Jobs: mostly good samples, one in twenty deliberately bad.
    let mut published: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    let mut unnamed = 0usize;
    let mut pending = Vec::new();
    for n in 0..args.jobs {
        let id = format!("demo-{run_id}-{n:05}");
        let body: Vec<u8> = match n % 20 {
            7 => json!({"schema":"liveness.job.v1","job_id":id,"check":"document","image":format!("s3://{bucket}/{prefix}/missing.png")}).to_string().into(),
            11 => json!({"schema":"liveness.job.v1","job_id":id,"check":"document","image":format!("s3://{bucket}/{prefix}/notes.txt")}).to_string().into(),
            13 => json!({"schema":"liveness.job.v1","job_id":id,"check":"document","image":"s3://not-allowed-bucket/x.png"}).to_string().into(),
            17 => json!({"schema":"liveness.job.v1","job_id":id,"check":"selfie","image":uris[0]}).to_string().into(),
            19 if n % 40 == 19 => {
                unnamed += 1;
                b"{\"schema\":\"liveness.job.v1\",\"job_id\":".to_vec()
            }
            _ => {
                let i = n % SAMPLES.len();
                let s = &SAMPLES[i];
                let mut job = json!({"schema":"liveness.job.v1","job_id":id,"check":s.check,"image":uris[i],
                       "metadata":{"sample":s.name}});
                if let Some(p) = s.provider {
                    job["provider"] = json!(p);
                }
                // Intellicheck scores both sides of a document.
                if s.provider == Some("intellicheck") {
                    job["back_image"] = json!(uris[0]);
                }
                job.to_string().into()
            }
        };
        published.insert(id.clone(), Instant::now());
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        // Pipelined: confirms are awaited in windows, not one by one.
        let confirm = ch
            .basic_publish(
                names.jobs_exchange.as_str().into(),
                names.jobs_routing_key.as_str().into(),
                Default::default(),
                &body,
                props,
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 256 || n + 1 == args.jobs {
            for c in pending.drain(..) {
                anyhow::ensure!(c.await?.is_ack(), "the broker refused a demo job");
            }
        }
    }
    println!(
        "enqueued {} jobs in {:.2}s; waiting for results...",
        args.jobs,
        started.elapsed().as_secs_f64()
    );

    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    let mut classes: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut vendor_ms = Vec::new();
    let mut attempts = 0u64;
    let mut done = 0usize;
    let results_queue = names
        .results_queue
        .clone()
        .context("broker.results_queue must be set for the demo")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < args.jobs {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {done} of {} jobs accounted for",
            args.jobs
        );
        let mut got_any = false;
        for queue in [&results_queue, &names.dead_queue] {
            while let Some(m) = ch
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                got_any = true;
                let v: Value = serde_json::from_slice(&m.delivery.data)?;
                m.delivery.acker.ack(BasicAckOptions::default()).await?;
                done += 1;
                if let Some(t) = v["job_id"].as_str().and_then(|id| published.get(id)) {
                    latencies.push(t.elapsed());
                }
                if queue == &results_queue {
                    *verdicts
                        .entry(format!(
                            "{:<13} {}.{}",
                            v["provider"].as_str().unwrap_or("?"),
                            v["check"].as_str().unwrap_or("?"),
                            v["verdict"].as_str().unwrap_or("?")
                        ))
                        .or_default() += 1;
                    vendor_ms.push(Duration::from_millis(
                        v["timings_ms"]["vendor"].as_u64().unwrap_or(0),
                    ));
                    attempts += v["attempts"].as_u64().unwrap_or(0);
                } else {
                    let class = v["failure"]["class"].as_str().unwrap_or("?").to_owned();
                    let e = classes.entry(class).or_insert_with(|| {
                        (0, v["failure"]["message"].as_str().unwrap_or("").to_owned())
                    });
                    e.0 += 1;
                }
            }
        }
        if !got_any {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let wall = started.elapsed();
    shutdown.cancel();
    worker.await??;

    let calls: Value = reqwest::get(format!("{}/_admin/calls", emulator.base_url()))
        .await?
        .json()
        .await?;
    let results: usize = verdicts.values().sum();
    println!();
    println!("== Summary ==================================================================");
    println!(
        "jobs               {} ({} results, {} dead letters, {} of them bodies without a job_id)",
        args.jobs,
        results,
        done - results,
        unnamed
    );
    println!(
        "wall time          {:.2}s  ->  {:.1} jobs/s with concurrency {} and {} ms vendor latency",
        wall.as_secs_f64(),
        args.jobs as f64 / wall.as_secs_f64(),
        args.concurrency,
        args.latency_ms
    );
    println!("end-to-end latency {}", percentiles(&mut latencies));
    println!("vendor call time   {}", percentiles(&mut vendor_ms));
    let submissions: u64 = ["argos", "intellicheck", "didit"]
        .iter()
        .map(|v| calls[v]["submissions"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "vendor attempts    {attempts} for {results} results; the emulator counted {submissions} image submissions \
         (an Intellicheck attempt submits front and back)"
    );
    println!();
    println!("results by vendor and routing key:");
    for (k, n) in &verdicts {
        println!("  {k:<38} {n:>5}");
    }
    println!("dead letters by failure class (with the first message seen):");
    for (k, (n, msg)) in &classes {
        println!("  {k:<24} {n:>5}  {}", truncate(msg, 110));
    }

    if !args.keep {
        let mut queues = vec![
            names.jobs_queue.clone(),
            names.dead_queue.clone(),
            names.poison_queue.clone(),
            results_queue,
        ];
        queues.extend(names.retry_queues.iter().map(|(q, _)| q.clone()));
        for q in queues {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [
            &names.jobs_exchange,
            &names.results_exchange,
            &names.dead_exchange,
        ] {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "demo done".into()).await;
    Ok(())
}

fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
