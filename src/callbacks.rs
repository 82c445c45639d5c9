//! Argos ID Liveness asynchronous mode: unforgeable callback URLs and the
//! receiver that settles a job when the vendor posts its answer.
//!
//! Argos signs nothing it posts, so the URL is the credential: it names the
//! vendor, the job and the submission, carries an expiry, and a token that
//! is an HMAC-SHA256 over all four with `providers.argos.callback_secret`.
//! Any replica can receive any callback: what it needs to publish the result
//! is in the job's pending record in the results store, written before the
//! job's delivery was acked.
//!
//! When no callback comes, the job itself comes back: it waited in the
//! broker's callback wait queue (TTL `callback_wait`), and the worker that
//! receives it submits it again or dead-letters it (see
//! `Pipeline::callback_wait_over`). The broker hands each waiting job to
//! exactly one replica, so this "sweeper" is safe with any number of them.

use crate::broker::{self, Names, Outgoing, PublishError};
use crate::config::BrokerConfig;
use crate::domain::ProviderName;
use crate::pipeline::{CallbackSettings, Pipeline};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use lapin::{Channel, Connection};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

type HmacSha256 = Hmac<Sha256>;

/// Largest callback body accepted (a success callback is a few hundred bytes).
const MAX_CALLBACK_BYTES: usize = 64 * 1024;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Newline-separated: no field can contain one (job ids are [A-Za-z0-9._:-]).
    m.update(format!("liveness-callback\n{vendor}\n{job_id}\n{submission}\n{expires}").as_bytes());
    m
}

/// The token of one callback URL: lowercase hex HMAC-SHA256.
pub fn sign(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
) -> String {
    hex::encode(
        mac(secret, vendor, job_id, submission, expires)
            .finalize()
            .into_bytes(),
    )
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Expired,
    Malformed,
    Forged,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::Expired => "expired token",
            Refused::Malformed => "malformed token",
            Refused::Forged => "token does not match",
        }
    }
}

/// Checks a callback URL's token (constant time) and expiry.
pub fn verify(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
    token: &str,
    now: u64,
) -> Result<(), Refused> {
    let given = hex::decode(token).map_err(|_| Refused::Malformed)?;
    mac(secret, vendor, job_id, submission, expires)
        .verify_slice(&given)
        .map_err(|_| Refused::Forged)?;
    // Checked after the MAC, so an expiry cannot be probed without a token.
    if expires < now {
        return Err(Refused::Expired);
    }
    Ok(())
}

/// The URL the vendor posts submission `submission` of `job_id` to.
pub fn callback_url(
    cb: &CallbackSettings,
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
) -> String {
    let expires = unix_now() + cb.token_ttl.as_secs();
    let token = sign(
        cb.secret.expose().as_bytes(),
        vendor,
        job_id,
        submission,
        expires,
    );
    format!(
        "{}/callbacks/{vendor}/{job_id}/{submission}?expires={expires}&token={token}",
        cb.public_url.trim_end_matches('/')
    )
}

/// Publishes with confirms on its own connection, opened when first needed
/// and again after a failure (the receiver lives beside the consume loop's
/// sessions, not inside one).
struct Publisher {
    cfg: BrokerConfig,
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    async fn publish(&self, out: &Outgoing) -> anyhow::Result<()> {
        let mut link = self.link.lock().await;
        for _ in 0..2 {
            if link.is_none() {
                let conn = broker::connect(&self.cfg).await?;
                let ch = broker::confirm_channel(&conn).await?;
                *link = Some((conn, ch));
            }
            let (_, ch) = link.as_ref().expect("just connected");
            match broker::publish_confirmed(
                ch,
                &out.exchange,
                &out.routing_key,
                &out.payload,
                out.props.clone(),
                self.cfg.confirm_timeout,
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(PublishError::Channel(e)) => {
                    tracing::warn!(error = %e, "Callback receiver's broker channel failed; reconnecting");
                    *link = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the broker channel failed twice")
    }
}

pub struct Receiver {
    pipeline: Arc<Pipeline>,
    names: Names,
    publisher: Publisher,
}

impl Receiver {
    pub fn new(pipeline: Arc<Pipeline>, broker: &BrokerConfig) -> Self {
        Receiver {
            pipeline,
            names: Names::new(broker),
            publisher: Publisher {
                cfg: broker.clone(),
                link: tokio::sync::Mutex::new(None),
            },
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

/// Serves `POST /callbacks/<vendor>/<job_id>/<submission>` until
/// `shutdown`; returns the bound address.
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
    if let Err(why) = verdict {
        metrics.callback("refused");
        // Hostile or stale: say why, never what it carried.
        let shown: String = job_id.chars().take(128).collect();
        tracing::warn!(%vendor, job_id = %shown, reason = why.as_str(), body_bytes = body.len(), "Refused a callback that does not verify; its body is not logged");
        return (StatusCode::UNAUTHORIZED, "callback token refused").into_response();
    }
    let span = tracing::info_span!("job", job_id = %job_id);
    settle(&r, &job_id, &body).instrument(span).await
}

async fn settle(r: &Receiver, job_id: &str, body: &[u8]) -> Response {
    let metrics = r.pipeline.metrics();
    let Some(store) = r.pipeline.outcomes() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        metrics.callback("failed");
        tracing::warn!(error = %e, "{what}; the vendor should post the callback again");
        (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response()
    };
    let (pending, stored) = tokio::join!(store.load_pending(job_id), store.load(job_id));
    let (pending, stored) = match (pending, stored) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return unavailable("Cannot read the results store", &e),
    };
    if stored.is_some() {
        metrics.callback("duplicate");
        tracing::info!(
            "Duplicate callback: the job's outcome is already stored; nothing published"
        );
        return (StatusCode::OK, "already settled").into_response();
    }
    let Some(pending) = pending else {
        metrics.callback("unknown");
        tracing::info!(
            "Callback for a job with no pending submission (settled or dead-lettered already); nothing published"
        );
        return (StatusCode::OK, "nothing pending").into_response();
    };
    let disposition = r.pipeline.settle_callback(&pending, body).await;
    let mut props = broker::json_props(Some(job_id), None);
    if let Some(c) = &pending.correlation_id {
        props = props.with_correlation_id(c.as_str().into());
    }
    let Some(out) = Outgoing::of(&disposition, &r.names, pending.job.get().as_bytes(), &props)
    else {
        return (StatusCode::OK, "settled").into_response();
    };
    if let Err(e) = r.publisher.publish(&out).await {
        return unavailable("Could not publish the callback's outcome", &e);
    }
    disposition.record(metrics);
    r.pipeline.clear_pending(job_id).await;
    metrics.callback("accepted");
    tracing::info!(outcome = %disposition.label(), "Callback settled the job");
    (StatusCode::OK, "settled").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_bind_every_part_of_the_url_and_expire() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = sign(key, ProviderName::Argos, "job-1", 2, 2_000);
        assert_eq!(t.len(), 64);
        let ok = |job: &str, n: u32, exp: u64, tok: &str, now: u64| {
            verify(key, ProviderName::Argos, job, n, exp, tok, now)
        };
        assert_eq!(ok("job-1", 2, 2_000, &t, 1_000), Ok(()));
        assert_eq!(ok("job-2", 2, 2_000, &t, 1_000), Err(Refused::Forged));
        assert_eq!(ok("job-1", 3, 2_000, &t, 1_000), Err(Refused::Forged));
        assert_eq!(
            ok("job-1", 2, 9_999, &t, 1_000),
            Err(Refused::Forged),
            "expiry is signed"
        );
        assert_eq!(ok("job-1", 2, 2_000, &t, 2_001), Err(Refused::Expired));
        assert_eq!(ok("job-1", 2, 2_000, "zz", 1_000), Err(Refused::Malformed));
        assert_eq!(
            verify(
                b"another key of thirty-two bytes!",
                ProviderName::Argos,
                "job-1",
                2,
                2_000,
                &t,
                1_000
            ),
            Err(Refused::Forged)
        );
        assert_ne!(
            sign(key, ProviderName::Didit, "job-1", 2, 2_000),
            t,
            "vendor is signed"
        );
    }

    #[test]
    fn the_url_carries_what_the_receiver_verifies() {
        let cb = CallbackSettings {
            public_url: "https://cb.example.com/".into(),
            secret: crate::config::Secret::new("0123456789abcdef0123456789abcdef"),
            token_ttl: Duration::from_secs(60),
            submissions: 3,
            wait: Duration::from_secs(10),
        };
        let url = callback_url(&cb, ProviderName::Argos, "a:b.c", 1);
        let rest = url
            .strip_prefix("https://cb.example.com/callbacks/argos/a:b.c/1?expires=")
            .expect(&url);
        let (expires, token) = rest.split_once("&token=").unwrap();
        let expires: u64 = expires.parse().unwrap();
        assert!(expires >= unix_now() + 59);
        assert_eq!(
            verify(
                cb.secret.expose().as_bytes(),
                ProviderName::Argos,
                "a:b.c",
                1,
                expires,
                token,
                unix_now()
            ),
            Ok(())
        );
    }
}
