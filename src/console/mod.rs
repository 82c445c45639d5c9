//! The operator console: `liveness-worker console` serves a web page
//! (docs/console.md) with
//! - the overview: every queue's depth, consumers and rates, results and
//!   dead letters per minute, each vendor's state, the replicas;
//! - the dead letters grouped by class, vendor and age, a group's
//!   messages, and on a selection: preview, replay, export, purge;
//! - a job lookup: stored outcome, attempts, pending record, claim, and
//!   whether the job is dead, parked or in progress now.
//!
//! It is a view over what the operator commands use (`status`, `show`,
//! `replay`, `purge`), with the same configuration: the broker, the results
//! store and the coordination store. State-changing requests are POSTs that
//! must carry the page's CSRF token and come from the page's own origin;
//! credentials (HTTP basic) are required unless the console listens on
//! loopback only (see [`web`]).
//!
//! Replays and purges run in tasks of their own, one at a time, so a closed
//! browser tab does not cut one short; SIGINT or SIGTERM stops a running
//! one at its next step (as the commands do: nothing is lost, the rest stays
//! in the queue), then the console exits.

mod dead;
mod job;
mod overview;
mod view;
pub mod web;

use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Listen address (default: console.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// What every request handler shares.
pub struct App {
    pub cfg: Config,
    pub auth: web::Auth,
    pub views: view::Views,
    pub samples: overview::Samples,
    /// Set by SIGINT/SIGTERM: a running replay or purge stops at its next step.
    pub stop: Arc<AtomicBool>,
    /// Held by whatever reads or changes the dead-letter queue, so that a
    /// view's scan never holds messages a replay or purge wants.
    pub dead_queue: Arc<tokio::sync::Mutex<()>>,
}

/// The pages and their guard (authentication, cross-site checks, headers).
fn router(app: Arc<App>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(overview::page))
        .route("/api/overview", get(overview::json))
        .route("/dead-letters", get(dead::groups))
        .route("/dead-letters/messages", get(dead::messages))
        .route("/dead-letters/preview", post(dead::preview))
        .route("/dead-letters/replay", post(dead::replay))
        .route("/dead-letters/export", post(dead::export))
        .route("/dead-letters/purge", post(dead::purge))
        .route("/jobs", get(job::lookup))
        .route("/style.css", get(web::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            web::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(web::MAX_FORM_BYTES))
        .with_state(app)
}

/// Serves the console until SIGINT or SIGTERM.
pub async fn run(mut cfg: Config, args: ConsoleArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        cfg.console.listen = listen;
        cfg.validate()?;
    }
    let listen = cfg.console.listen;
    let app = Arc::new(App {
        auth: web::Auth::new(&cfg.console)?,
        views: view::Views::new()?,
        samples: overview::Samples::default(),
        stop: Arc::new(AtomicBool::new(false)),
        dead_queue: Arc::new(tokio::sync::Mutex::new(())),
        cfg,
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(overview::sample(app.clone(), shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (console.listen): {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        addr = %bound,
        read_only = app.cfg.console.read_only,
        auth = app.auth.describe(),
        "Operator console listening"
    );
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "The console listens beyond this host: serve it behind TLS (an ingress or a proxy), its basic credentials travel with every request"
        );
    }
    let stop = app.stop.clone();
    let on_signal = {
        let shutdown = shutdown.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("Shutdown requested: a running replay or purge stops at its next step");
            stop.store(true, Ordering::Relaxed);
            shutdown.cancel();
        }
    };
    let router = router(app.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(on_signal)
        .await?;
    // A replay or purge whose page was closed still runs in its own task:
    // it holds the dead-letter queue's lock until it has stopped cleanly.
    let _done = app.dead_queue.lock().await;
    Ok(())
}
