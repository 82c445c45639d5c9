use anyhow::Context as _;
use clap::{Parser, Subcommand};
use liveness_worker::config::{Config, Sources};
use liveness_worker::emulator::{Emulator, EmulatorConfig, Faults};
use liveness_worker::telemetry::Telemetry;
use liveness_worker::{console, demo, ops, schema, telemetry, worker};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Liveness checks on ID documents and selfies in S3, through vendor APIs, fed by RabbitMQ.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML; same keys as config/default.toml). Also LIVENESS_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Environment file of KEY=VALUE lines, applied under the real environment. Also LIVENESS_ENV_FILE.
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT, then drain and exit 0.
    Run,
    /// Serve the vendor emulator (Argos ID and Face Liveness, Intellicheck, Didit) with its admin API.
    Emulator {
        #[arg(
            long,
            default_value = "127.0.0.1:8090",
            env = "LIVENESS_EMULATOR_LISTEN"
        )]
        listen: SocketAddr,
        /// The x-api-key the emulated Argos accepts.
        #[arg(long, env = "LIVENESS_EMULATOR_ARGOS_API_KEY", hide_env_values = true)]
        argos_api_key: String,
        /// The customer-id the emulated Intellicheck accepts.
        #[arg(
            long,
            env = "LIVENESS_EMULATOR_INTELLICHECK_CUSTOMER_ID",
            default_value = "local-customer"
        )]
        intellicheck_customer_id: String,
        /// The HMAC signing key the emulated Intellicheck verifies requests with and signs
        /// answers with; defaults to the Argos key.
        #[arg(
            long,
            env = "LIVENESS_EMULATOR_INTELLICHECK_SIGNING_KEY",
            hide_env_values = true
        )]
        intellicheck_signing_key: Option<String>,
        /// How long Intellicheck's /get-results answers "not ready" after /end, in milliseconds.
        #[arg(long, default_value_t = 200)]
        intellicheck_processing_ms: u64,
        /// The x-api-key the emulated Didit accepts (default: the Argos key).
        #[arg(long, env = "LIVENESS_EMULATOR_DIDIT_API_KEY", hide_env_values = true)]
        didit_api_key: Option<String>,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Publish jobs from a JSON-lines file or stdin, or one job per object under an S3 prefix.
    Enqueue(ops::enqueue::EnqueueArgs),
    /// Move dead letters (or poison messages) back to the jobs queue.
    Replay(ops::replay::ReplayArgs),
    /// Queue depths and consumers, dead letters by failure class and vendor.
    Status(ops::status::StatusArgs),
    /// What the results store knows about one job: outcome, audit records, pending record.
    Show(ops::show::ShowArgs),
    /// Publish stored results again (by job_id or completion time), for consumers that lost them.
    Resend(ops::resend::ResendArgs),
    /// A deliberate second vendor call: the outcome set aside with a reason, the job enqueued again.
    Reverify(ops::reverify::ReverifyArgs),
    /// Remove dead letters selected like replay's, archived to S3 first.
    Purge(ops::purge::PurgeArgs),
    /// Vendor spend budgets: show them, or raise or lower a cap for the whole fleet without a restart.
    Budget(ops::budget::BudgetArgs),
    /// Serve the operator console: queues, fleet and vendors; dead letters to browse, replay, export and purge; job lookup.
    Console(console::ConsoleArgs),
    /// Everything at once on local services: emulator, worker, a few hundred sample jobs, a summary.
    Demo(demo::DemoArgs),
    /// Print or write the JSON Schemas of the job, result and dead-letter messages.
    Schemas {
        /// Write the files into this directory instead of printing them.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Load and validate the configuration, then print where it stands (secrets redacted).
    CheckConfig,
    /// GET a URL and exit 0 on a 2xx answer: a health check for images without curl.
    Probe {
        /// e.g. http://127.0.0.1:9090/readyz
        url: String,
    },
}

/// Faults injected into every vendor from the start; `PUT /_admin/faults`
/// changes them at run time.
#[derive(clap::Args)]
struct FaultArgs {
    /// Latency added to every vendor answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of vendor requests answered with HTTP 500 (0-1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of vendor requests held far longer than any client timeout, then closed unanswered (0-1).
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// Share of vendor requests whose connection is closed without an answer (0-1).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Requests each vendor admits per window before answering 429 (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate_limit_per_minute: u32,
    /// Length of the rate-limit sliding window, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    rate_limit_window_ms: u64,
}

fn main() -> std::process::ExitCode {
    pin_mmap_threshold();
    let cli = Cli::parse();
    liveness_worker::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ops::Exit>() {
            // An operator command that already printed its report.
            Some(ops::Exit(code)) => std::process::ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

/// Images (and Intellicheck's envelopes) of 1 MiB and more get their own
/// mapping, returned to the system when the job ends. By default glibc raises
/// this threshold to the largest block freed so far, after which multi-megabyte
/// image buffers come from its arenas, which keep them: the benchmark measured
/// peak RSS 15% lower and steadier at 64 jobs of 3 MB in flight with the
/// threshold pinned, for about 10% more CPU per 3 MB job (docs/benchmark.md#the-bars
/// both). An explicit `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_mmap_threshold() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
    if !tuned {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any other thread exists.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let sources = Sources {
        file: cli.config.clone(),
        env_file: cli.env_file.clone(),
    };
    match cli.command {
        Command::Run => {
            let cfg = Config::load(&sources)?;
            telemetry::init(&cfg.telemetry);
            let telemetry = Telemetry::default();
            if let Some(addr) = cfg.telemetry.listen {
                let bound = telemetry::serve(addr, telemetry.clone())
                    .await
                    .with_context(|| format!("cannot listen on {addr} (telemetry.listen)"))?;
                tracing::info!(addr = %bound, "Serving /metrics, /livez and /readyz");
            }
            let pipeline = worker::build_pipeline(&cfg, telemetry.metrics.clone()).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(on_signal(shutdown.clone()));
            worker::run(cfg, pipeline, telemetry, shutdown).await
        }
        Command::Emulator {
            listen,
            argos_api_key,
            intellicheck_customer_id,
            intellicheck_signing_key,
            intellicheck_processing_ms,
            didit_api_key,
            faults: f,
        } => {
            let cfg =
                Config::load(&sources).unwrap_or_else(|_| Config::from_toml("").expect("defaults"));
            telemetry::init(&cfg.telemetry);
            let faults = Faults {
                latency_ms: f.latency_ms,
                error_rate: f.error_rate,
                timeout_rate: f.timeout_rate,
                drop_rate: f.drop_rate,
                rate_limit_per_minute: f.rate_limit_per_minute,
                rate_limit_window_ms: f.rate_limit_window_ms,
            };
            faults.validate().map_err(anyhow::Error::msg)?;
            let signing_key = intellicheck_signing_key.unwrap_or_else(|| argos_api_key.clone());
            let emu = Emulator::start(EmulatorConfig {
                listen,
                faults,
                intellicheck_processing: std::time::Duration::from_millis(
                    intellicheck_processing_ms,
                ),
                didit_api_key: didit_api_key.unwrap_or_else(|| argos_api_key.clone()),
                ..EmulatorConfig::local(&argos_api_key)
                    .with_intellicheck(&intellicheck_customer_id, &signing_key)
            })
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(url = %emu.base_url(), "Emulator listening; Argos base URL is <url>/modules, Intellicheck's and Didit's are <url>");
            tokio::select! {
                r = emu.wait() => r,
                _ = wait_for_signal() => Ok(()),
            }
        }
        Command::Demo(args) => demo::run(&sources, args).await,
        Command::Enqueue(args) => ops::enqueue::run(&ops_config(&sources)?, args).await,
        Command::Replay(args) => ops::replay::run(&ops_config(&sources)?, args).await,
        Command::Status(args) => ops::status::run(&ops_config(&sources)?, args).await,
        Command::Show(args) => ops::show::run(&ops_config(&sources)?, args).await,
        Command::Resend(args) => ops::resend::run(&ops_config(&sources)?, args).await,
        Command::Reverify(args) => ops::reverify::run(&ops_config(&sources)?, args).await,
        Command::Purge(args) => ops::purge::run(&ops_config(&sources)?, args).await,
        Command::Budget(args) => ops::budget::run(&ops_config(&sources)?, args).await,
        Command::Console(args) => {
            let cfg = Config::load(&sources)?;
            // A passive declare of a queue not declared yet closes its
            // channel, which lapin logs as an error: the page says it instead.
            let mut t = cfg.telemetry.clone();
            t.log_level += ",lapin=off";
            telemetry::init(&t);
            console::run(cfg, args).await
        }
        Command::Schemas { write } => {
            for (name, text) in schema::all() {
                match &write {
                    Some(dir) => {
                        std::fs::create_dir_all(dir)?;
                        std::fs::write(dir.join(name), text)?;
                    }
                    None => println!("// {name}\n{text}"),
                }
            }
            Ok(())
        }
        Command::Probe { url } => {
            let resp = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("{url} did not answer"))?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            anyhow::ensure!(status.is_success(), "{url} answered {status}: {body}");
            println!("{status} {body}");
            Ok(())
        }
        Command::CheckConfig => {
            let cfg = Config::load(&sources)?;
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

/// The configuration `run` would use; logs only warnings and errors, so
/// the command's own report stays readable (RUST_LOG still wins). lapin's
/// own "channel closed" errors are expected (a passive declare of a missing
/// queue closes its channel) and the commands report failures themselves.
fn ops_config(sources: &Sources) -> anyhow::Result<Config> {
    let cfg = Config::load(sources)?;
    let mut t = cfg.telemetry.clone();
    t.log_level = "warn,lapin=off".into();
    telemetry::init(&t);
    Ok(cfg)
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("Shutdown requested");
    shutdown.cancel();
}
