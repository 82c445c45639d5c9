//! The Argos callback receiver: `POST /callbacks/<vendor>/<job_id>/<n>`
//! on every replica (docs/reliability.md#argos-callback-mode). It verifies the
//! URL's token, reads the job's pending record, hands the body to
//! [`Pipeline::settle_callback`], and finishes the job through the same
//! [`Finisher`] as the consume loop.

use super::finish::{Finisher, JobMessage};
use crate::broker::json_props;
use crate::domain::ProviderName;
use crate::domain::job::JobId;
use crate::pipeline::Pipeline;
use crate::pipeline::token::{Refused, unix_now, verify};
use crate::telemetry::CallbackOutcome;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// Largest callback body accepted (a success callback is a few hundred bytes).
const MAX_CALLBACK_BYTES: usize = 64 * 1024;

pub struct Receiver {
    pipeline: Arc<Pipeline>,
    finisher: Arc<Finisher>,
}

impl Receiver {
    pub fn new(pipeline: Arc<Pipeline>, finisher: Arc<Finisher>) -> Self {
        Receiver { pipeline, finisher }
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
    let app = axum::Router::new()
        .route("/callbacks/{vendor}/{job_id}/{submission}", post(callback))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for callbacks on {listen} (providers.argos.callback_listen): {e}"
        )
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Callback receiver failed");
        }
    });
    tracing::info!(addr = %bound, "Receiving vendor callbacks");
    Ok(bound)
}

async fn callback(
    State(r): State<Arc<Receiver>>,
    Path((vendor, job_id, submission)): Path<(String, String, u32)>,
    uri: Uri,
    body: Bytes,
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
            let shown: String = job_id.chars().take(128).collect();
            tracing::warn!(%vendor, job_id = %shown, reason = why.as_str(), body_bytes = body.len(), "Refused a callback that does not verify; its body is not logged");
            return (StatusCode::UNAUTHORIZED, "callback token refused").into_response();
        }
    };
    let span = tracing::info_span!("job", job_id = %job_id);
    settle(&r, vendor, &job_id, &body).instrument(span).await
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
