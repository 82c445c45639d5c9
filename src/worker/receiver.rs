//! The Argos callback receiver: `POST /callbacks/<vendor>/<job_id>/<n>`
//! on every replica (docs/reliability.md#argos-callback-mode). It verifies the
//! URL's token, reads the job's pending record, hands the body to
//! [`Pipeline::settle_callback`], and finishes the job through the same
//! [`Finisher`] as the consume loop.
//!
//! The endpoint is public, so every caller is bounded (`[callbacks]`): the
//! request head must arrive within `header_timeout` (idle keep-alive
//! connections included), the body within `body_timeout` and
//! `max_body_bytes`, and at most `max_connections` connections are served
//! at once. The body is read only once the URL's token verifies.

use super::finish::{Finisher, JobMessage};
use crate::broker::json_props;
use crate::config::CallbacksConfig;
use crate::domain::ProviderName;
use crate::domain::job::JobId;
use crate::pipeline::Pipeline;
use crate::pipeline::token::{Refused, unix_now, verify};
use crate::telemetry::CallbackOutcome;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How long a callback waits for another copy of itself to be settled
/// before asking the vendor to post again.
const CLAIM_PATIENCE: Duration = Duration::from_secs(5);

/// Seconds the vendor is asked to wait before posting a callback again.
const RETRY_AFTER_SECS: &str = "30";

fn retry_later() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS)],
        "try again later",
    )
        .into_response()
}

pub struct Receiver {
    pipeline: Arc<Pipeline>,
    finisher: Arc<Finisher>,
    limits: CallbacksConfig,
}

impl Receiver {
    pub fn new(pipeline: Arc<Pipeline>, finisher: Arc<Finisher>, limits: CallbacksConfig) -> Self {
        Receiver {
            pipeline,
            finisher,
            limits,
        }
    }
}

/// `expires` and `token` from the URL's query (hex and digits only, so no
/// percent-decoding is needed; anything else does not verify).
fn token_query(uri: &Uri) -> Option<(u64, &str)> {
    let (mut expires, mut token) = (None, None);
    for pair in uri.query()?.split('&') {
        match pair.split_once('=')? {
            ("expires", v) => expires = v.parse().ok(),
            ("token", v) => token = Some(v),
            _ => {}
        }
    }
    Some((expires?, token?))
}

/// Serves the receiver until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    receiver: Arc<Receiver>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let limits = receiver.limits.clone();
    let app = axum::Router::new()
        .route("/callbacks/{vendor}/{job_id}/{submission}", post(callback))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for callbacks on {listen} (providers.argos.callback_listen): {e}"
        )
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept(listener, app, limits, shutdown));
    tracing::info!(addr = %bound, "Receiving vendor callbacks");
    Ok(bound)
}

/// Accepts while a connection slot is free; each connection is served
/// with the header timeout, and closed gracefully at shutdown.
async fn accept(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: CallbacksConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut full_logged = false;
    loop {
        if slots.available_permits() == 0 && !full_logged {
            full_logged = true;
            tracing::warn!(
                max_connections = limits.max_connections,
                "The callback receiver serves callbacks.max_connections connections; more wait to be accepted"
            );
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "The callback receiver cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        if slots.available_permits() > 0 {
            full_logged = false;
        }
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "Callback connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Why a callback body was not read.
enum BodyRefused {
    TooLarge,
    TooSlow,
    Broken,
}

/// The body, at most `limits.max_body_bytes`, within `limits.body_timeout`.
async fn read_body(body: Body, limits: &CallbacksConfig) -> Result<Bytes, BodyRefused> {
    let max = limits.max_body_bytes;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyRefused::Broken)?;
            if buf.len() + chunk.len() > max {
                return Err(BodyRefused::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .unwrap_or(Err(BodyRefused::TooSlow))
}

async fn callback(
    State(r): State<Arc<Receiver>>,
    Path((vendor, job_id, submission)): Path<(String, String, u32)>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let metrics = r.pipeline.metrics().clone();
    let (Some(vendor), Some(cb)) = (ProviderName::parse(&vendor), r.pipeline.callbacks()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let verdict = match token_query(&uri) {
        Some((expires, token)) => verify(
            cb.secret.expose().as_bytes(),
            vendor,
            &job_id,
            submission,
            expires,
            token,
            unix_now(),
        ),
        None => Err(Refused::Malformed),
    };
    // A token can only verify for a valid job_id (we signed it), so a
    // job_id that does not parse is refused like a forged token.
    let job_id = match (verdict, JobId::parse(&job_id)) {
        (Ok(()), Ok(id)) => id,
        (verdict, _) => {
            let why = verdict.err().unwrap_or(Refused::Forged);
            metrics.callback(CallbackOutcome::Refused);
            // Hostile or stale: say why, never what it carried.
            // Percent-decoded from the path: anything at all.
            let shown = crate::domain::text::log_text(&job_id, JobId::MAX_LEN);
            tracing::warn!(%vendor, job_id = %shown, reason = why.as_str(), "Refused a callback that does not verify; its body is not read");
            return (StatusCode::UNAUTHORIZED, "callback token refused").into_response();
        }
    };
    let span = tracing::info_span!("job", job_id = %job_id);
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let refused = |status: StatusCode, why: &str| {
        metrics.callback(CallbackOutcome::Refused);
        tracing::warn!(parent: &span, "Refused a callback: {why}");
        // The rest of the body is not read: the connection is closed.
        (
            status,
            [(axum::http::header::CONNECTION, "close")],
            why.to_owned(),
        )
            .into_response()
    };
    let max = r.limits.max_body_bytes;
    if declared.is_some_and(|n| n > max as u64) {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over callbacks.max_body_bytes ({max})"),
        );
    }
    let body = match read_body(body, &r.limits).await {
        Ok(b) => b,
        Err(BodyRefused::TooLarge) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over callbacks.max_body_bytes ({max})"),
            );
        }
        Err(BodyRefused::TooSlow) => {
            return refused(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within callbacks.body_timeout ({:?})",
                    r.limits.body_timeout
                ),
            );
        }
        Err(BodyRefused::Broken) => {
            return refused(StatusCode::BAD_REQUEST, "the body could not be read");
        }
    };
    // Settled in its own task: a caller that hangs up, or the request
    // timeout, cannot cut a publish (or a store) in half.
    let patience = r.limits.request_timeout;
    let settling =
        tokio::spawn(async move { settle(&r, vendor, &job_id, &body).instrument(span).await });
    match tokio::time::timeout(patience, settling).await {
        Ok(answer) => answer.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Err(_) => {
            metrics.callback(CallbackOutcome::Failed);
            tracing::warn!(
                timeout_ms = patience.as_millis() as u64,
                "Settling the callback outlasted callbacks.request_timeout; asking the vendor to post again while it goes on"
            );
            retry_later()
        }
    }
}

async fn settle(r: &Receiver, vendor: ProviderName, job_id: &JobId, body: &[u8]) -> Response {
    let metrics = r.pipeline.metrics();
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        metrics.callback(CallbackOutcome::Failed);
        tracing::warn!(error = %e, "{what}; the vendor should post the callback again");
        retry_later()
    };
    if !r.pipeline.outcomes().enabled() {
        return retry_later();
    }
    // Two copies of one callback (on two replicas) settle the job once.
    let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
    let _claim = match r.pipeline.claims().claim(job_id, vendor, deadline).await {
        Ok(claim) => claim,
        // Another copy is settling it, or the store cannot say: post again.
        Err(_) => {
            metrics.callback(CallbackOutcome::Failed);
            tracing::info!(
                "Another copy of this callback is being settled; asking the vendor to post again"
            );
            return retry_later();
        }
    };
    let (stored, pending) = match r.pipeline.outcomes().load_both(job_id).await {
        Ok(both) => both,
        Err(e) => return unavailable("Cannot read the results store", &e),
    };
    if stored.is_some() {
        metrics.callback(CallbackOutcome::Duplicate);
        tracing::info!(
            "Duplicate callback: the job's outcome is already stored; nothing published"
        );
        return (StatusCode::OK, "already settled").into_response();
    }
    let Some(pending) = pending else {
        // The token is ours and fresh, yet nothing waits for it: the job was
        // given up (dead-lettered) or its record is not visible yet. A 503
        // asks the vendor to post again later, which costs nothing and
        // loses nothing; a 2xx would throw a paid answer away.
        metrics.callback(CallbackOutcome::Unknown);
        tracing::warn!(
            "Callback for a job with no pending submission and no outcome; asking the vendor to post it again"
        );
        return retry_later();
    };
    let finished = r.pipeline.settle_callback(&pending, body).await;
    let mut props = json_props(Some(job_id.as_str()), None);
    if let Some(c) = &pending.correlation_id {
        props = props.with_correlation_id(c.as_str().into());
    }
    let job = JobMessage {
        body: pending.job.get().as_bytes(),
        props: &props,
    };
    if let Err(e) = r.finisher.finish(&finished, job, None).await {
        return unavailable("Could not publish the callback's outcome", &e);
    }
    metrics.callback(CallbackOutcome::Accepted);
    (StatusCode::OK, "settled").into_response()
}
