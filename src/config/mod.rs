//! Configuration: one typed tree loaded in layers (see `config/default.toml`,
//! compiled in, for every key), validated once at start.
//!
//! Addresses and URLs are parsed while the tree is read, so a bad one is
//! refused with its key's name and nothing downstream parses text again.
//! Each section checks its own rules ([`Problems`] collects them all, so one
//! start-up error lists every problem); [`Config::validate`] adds the rules
//! that span sections. This module knows the domain's vocabulary (vendor
//! names, checks, verdict bands) and nothing of the adapters that read it.

mod de;
mod load;
mod secret;
mod shadow;
mod tls;
mod traffic;

pub use load::{DEFAULT_TOML, Sources};
pub use secret::Secret;
pub use shadow::ShadowConfig;
pub use tls::BrokerTlsConfig;
pub use traffic::{Rate, TrafficConfig, VendorTraffic};

use crate::domain::bands::Bands;
use crate::domain::routing::Routing;
use crate::domain::{Check, ProviderName};
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;
use url::Url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub s3: S3Config,
    pub results: ResultsConfig,
    pub providers: ProvidersConfig,
    pub coordination: CoordinationConfig,
    pub traffic: TrafficConfig,
    pub shadow: ShadowConfig,
    pub callbacks: CallbacksConfig,
    pub telemetry: TelemetryConfig,
    pub console: ConsoleConfig,
}

/// Every rule a configuration breaks, each naming its key.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records `msg` unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    fn into_result(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration: {}", self.0.join("; "))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `amqp://` or `amqps://`, with credentials and vhost.
    pub url: Secret,
    #[serde(deserialize_with = "de::lenient_string")]
    pub prefix: String,
    pub jobs_exchange: String,
    pub jobs_routing_key: String,
    pub jobs_queue: String,
    pub results_exchange: String,
    pub results_queue: String,
    /// Topic exchange shadow comparisons are published to (shadow mode).
    pub shadow_exchange: String,
    /// Queue bound "#" to it; empty: not declared.
    pub shadow_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub poison_queue: String,
    pub retry_queue_prefix: String,
    pub callback_wait_queue: String,
    /// Prefix of the per-vendor wait queues, `<prefix>.<vendor>`.
    pub wait_queue_prefix: String,
    #[serde(deserialize_with = "de::durations")]
    pub retry_delays: Vec<Duration>,
    pub poison_threshold: NonZeroU32,
    pub delivery_limit: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long the publishing connection may take to open (TCP, TLS,
    /// AMQP handshake and the confirm channel).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a worker keeps retrying an outcome the broker does not
    /// confirm (or returns unroutable) before it gives the job back.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Key of the HMAC that authenticates the worker-owned headers; empty:
    /// derived from `url`.
    pub state_secret: Secret,
    #[serde(deserialize_with = "de::lenient_string")]
    pub connection_name: String,
    /// Used only with an `amqps://` URL (see `broker::tls`).
    #[serde(default)]
    pub tls: BrokerTlsConfig,
}

impl BrokerConfig {
    /// A configured name with the prefix applied.
    pub fn name(&self, base: &str) -> String {
        if self.prefix.is_empty() {
            base.to_owned()
        } else {
            format!("{}.{base}", self.prefix)
        }
    }

    /// The delay queue for ladder step `i`, e.g. `liveness.retry.30s`.
    pub fn retry_queue(&self, step: usize) -> String {
        let d = humantime::format_duration(self.retry_delays[step])
            .to_string()
            .replace(' ', "");
        self.name(&format!("{}.{d}", self.retry_queue_prefix))
    }

    /// The wait queue of a vendor at its limit, e.g. `liveness.wait.argos`.
    pub fn wait_queue(&self, vendor: ProviderName) -> String {
        self.name(&format!("{}.{vendor}", self.wait_queue_prefix))
    }

    fn validate(&self, p: &mut Problems) {
        let scheme = Url::parse(self.url.expose()).map(|u| u.scheme().to_owned());
        // The URL holds the password: never echo it.
        p.check(matches!(scheme.as_deref(), Ok("amqp" | "amqps")), || {
            "broker.url must be an amqp:// or amqps:// URL".into()
        });
        let tls = &self.tls;
        let amqps = scheme.as_deref() == Ok("amqps");
        for (key, v) in [
            ("broker.tls.ca_file", &tls.ca_file),
            ("broker.tls.cert_file", &tls.cert_file),
            ("broker.tls.key_file", &tls.key_file),
        ] {
            p.check(amqps || v.is_empty(), || {
                format!(
                    "{key} is set but broker.url is not amqps://: TLS settings need an amqps:// URL (or leave {key} empty)"
                )
            });
        }
        let pair = tls.cert_file.is_empty() == tls.key_file.is_empty();
        p.check(pair, || {
            "broker.tls.cert_file and broker.tls.key_file must be set together (mutual TLS) or both left empty".into()
        });
        if amqps && pair {
            // Unreadable or mismatched files fail here, at start, not at the first connect.
            if let Err(e) = tls.check_files() {
                p.check(false, || format!("{e:#}"));
            }
        }
        for (key, v) in [
            ("broker.jobs_exchange", &self.jobs_exchange),
            ("broker.jobs_queue", &self.jobs_queue),
            ("broker.jobs_routing_key", &self.jobs_routing_key),
            ("broker.results_exchange", &self.results_exchange),
            ("broker.shadow_exchange", &self.shadow_exchange),
            ("broker.dead_exchange", &self.dead_exchange),
            ("broker.dead_queue", &self.dead_queue),
            ("broker.poison_queue", &self.poison_queue),
            ("broker.retry_queue_prefix", &self.retry_queue_prefix),
            ("broker.callback_wait_queue", &self.callback_wait_queue),
            ("broker.wait_queue_prefix", &self.wait_queue_prefix),
        ] {
            p.check(!v.is_empty(), || format!("{key} must not be empty"));
        }
        p.check(!self.retry_delays.is_empty(), || {
            "broker.retry_delays must list at least one delay".into()
        });
        p.check(
            self.retry_delays
                .iter()
                .all(|d| *d >= Duration::from_millis(1)),
            || "broker.retry_delays must be at least 1ms each".into(),
        );
        p.check(self.delivery_limit > self.poison_threshold, || {
            format!(
                "broker.delivery_limit ({}) must be above broker.poison_threshold ({})",
                self.delivery_limit, self.poison_threshold
            )
        });
        p.check(!self.confirm_timeout.is_zero(), || {
            "broker.confirm_timeout must be positive".into()
        });
        p.check(
            (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.connect_timeout),
            || "broker.connect_timeout must be 100ms-5m".into(),
        );
        // RabbitMQ closes a channel whose delivery stays unacked longer than
        // its consumer_timeout (30 minutes by default).
        p.check(
            self.publish_timeout >= self.confirm_timeout
                && self.publish_timeout <= Duration::from_secs(25 * 60),
            || "broker.publish_timeout must be at least broker.confirm_timeout and at most 25m (below RabbitMQ's 30-minute consumer_timeout)".into(),
        );
        p.check(
            self.state_secret.is_empty() || self.state_secret.expose().len() >= 32,
            || "broker.state_secret must be at least 32 characters (or empty)".into(),
        );
    }
}

/// The largest image byte budget accepted (counted in KiB internally).
pub const MAX_IMAGE_BUDGET: u64 = 1 << 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub concurrency: u16,
    pub allowed_buckets: Vec<String>,
    pub max_job_bytes: usize,
    pub max_image_bytes: NonZeroU64,
    /// The byte budget of images held at once by one replica (fetched
    /// images and the encoded copies vendor requests make of them).
    pub max_image_bytes_in_flight: NonZeroU64,
    #[serde(with = "humantime_serde")]
    pub job_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// After `drain_timeout`: how much longer jobs with a vendor call under
    /// way or an answer in hand get to store or publish it.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    #[serde(deserialize_with = "de::lenient_string")]
    pub worker_id: String,
}

impl WorkerConfig {
    fn validate(&self, p: &mut Problems) {
        p.check((1..=4096).contains(&self.concurrency), || {
            format!(
                "worker.concurrency must be 1-4096, got {}",
                self.concurrency
            )
        });
        p.check(!self.allowed_buckets.is_empty(), || {
            "worker.allowed_buckets must name at least one bucket".into()
        });
        for b in &self.allowed_buckets {
            p.check(!b.is_empty() && !b.contains('/'), || {
                format!("worker.allowed_buckets has an invalid bucket name {b:?}")
            });
        }
        p.check(self.max_job_bytes >= 1024, || {
            format!(
                "worker.max_job_bytes must be at least 1024, got {}",
                self.max_job_bytes
            )
        });
        p.check(!self.job_deadline.is_zero(), || {
            "worker.job_deadline must be positive".into()
        });
        // A job waits for room in the budget before it fetches: one image
        // larger than the whole budget could never be fetched.
        p.check(self.max_image_bytes <= self.max_image_bytes_in_flight, || {
            format!(
                "worker.max_image_bytes ({}) must not exceed worker.max_image_bytes_in_flight ({}): an image that size could never be fetched",
                self.max_image_bytes, self.max_image_bytes_in_flight
            )
        });
        p.check(
            self.max_image_bytes_in_flight.get() <= MAX_IMAGE_BUDGET,
            || {
                format!(
                    "worker.max_image_bytes_in_flight must be at most {MAX_IMAGE_BUDGET} (1 TiB), got {}",
                    self.max_image_bytes_in_flight
                )
            },
        );
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub attempts_per_delivery: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    pub credentials_park_step: usize,
    pub breaker_failures: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub pause_probe_interval: Duration,
}

impl RetryConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(self.initial_backoff <= self.max_backoff, || {
            "retry.initial_backoff must not exceed retry.max_backoff".into()
        });
        p.check(
            self.pause_probe_interval >= Duration::from_millis(100),
            || "retry.pause_probe_interval must be at least 100ms".into(),
        );
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// None: AWS's own regional endpoint.
    #[serde(deserialize_with = "de::optional_http_url")]
    pub endpoint: Option<Url>,
    #[serde(deserialize_with = "de::lenient_string")]
    pub region: String,
    #[serde(deserialize_with = "de::lenient_string")]
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

impl S3Config {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.access_key_id.is_empty() == self.secret_access_key.is_empty(),
            || "s3.access_key_id and s3.secret_access_key must be set together (or both left empty for the AWS chain)".into(),
        );
        p.check(!self.region.is_empty(), || {
            "s3.region must not be empty".into()
        });
    }
}

/// The results store that makes "pay once" true (docs/reliability.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Empty disables the store (and with it pay-once and the audit trail).
    #[serde(deserialize_with = "de::lenient_string")]
    pub bucket: String,
    #[serde(deserialize_with = "de::lenient_string")]
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    pub audit: bool,
    /// The largest record read back from the store.
    pub max_record_bytes: u64,
}

impl ResultsConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(!self.bucket.contains('/'), || {
            format!(
                "results.bucket must be a bucket name, got {:?}",
                self.bucket
            )
        });
        p.check(
            self.prefix.is_empty() || (self.prefix.ends_with('/') && !self.prefix.starts_with('/')),
            || {
                format!(
                    "results.prefix must be empty or end with '/' (and not start with one), got {:?}",
                    self.prefix
                )
            },
        );
        p.check(self.store_timeout >= Duration::from_secs(1), || {
            "results.store_timeout must be at least 1s".into()
        });
        p.check(
            (64 * 1024..=256 << 20).contains(&self.max_record_bytes),
            || {
                format!(
                    "results.max_record_bytes must be 65536-268435456, got {}",
                    self.max_record_bytes
                )
            },
        );
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    pub default_document: ProviderName,
    pub default_face: ProviderName,
    /// Vendors tried in order while the default one is paused or down.
    pub failover_document: Vec<ProviderName>,
    pub failover_face: Vec<ProviderName>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// The largest vendor answer read; larger ones are refused unread.
    pub max_response_bytes: u64,
    pub argos: ArgosConfig,
    pub intellicheck: IntellicheckConfig,
    pub didit: DiditConfig,
}

impl ProvidersConfig {
    fn validate(&self, p: &mut Problems) {
        for (key, vendor, check) in [
            ("default_document", self.default_document, Check::Document),
            ("default_face", self.default_face, Check::Face),
        ] {
            p.check(vendor.can_do(check), || {
                format!("providers.{key} cannot be {vendor}: it does not do {check} checks")
            });
        }
        for (key, default, list, check) in [
            (
                "failover_document",
                self.default_document,
                &self.failover_document,
                Check::Document,
            ),
            (
                "failover_face",
                self.default_face,
                &self.failover_face,
                Check::Face,
            ),
        ] {
            for (i, v) in list.iter().enumerate() {
                p.check(v.can_do(check), || {
                    format!("providers.{key} cannot list {v}: it does not do {check} checks")
                });
                p.check(*v != default && !list[..i].contains(v), || {
                    format!(
                        "providers.{key} lists {v} twice or with the default vendor it backs up"
                    )
                });
            }
        }
        p.check(
            (1024..=256 << 20).contains(&self.max_response_bytes),
            || {
                format!(
                    "providers.max_response_bytes must be 1024-268435456, got {}",
                    self.max_response_bytes
                )
            },
        );
        self.argos.validate(p);
        self.intellicheck.validate(p);
        self.didit.validate(p);
    }
}

/// The scheme rule every vendor base URL follows. (The type already
/// guarantees a URL; `ftp://` and friends parse too.)
fn http_scheme(p: &mut Problems, key: &str, u: &Url) {
    p.check(matches!(u.scheme(), "http" | "https"), || {
        format!("{key} must be an http(s) URL")
    });
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgosConfig {
    #[serde(deserialize_with = "de::parsed")]
    pub base_url: Url,
    pub api_key: Secret,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub use_upcoming_version: bool,
    pub document_bands: Bands,
    pub face_bands: Bands,
    pub mode: ArgosMode,
    /// Required in callback mode.
    #[serde(deserialize_with = "de::optional_http_url")]
    pub callback_public_url: Option<Url>,
    #[serde(deserialize_with = "de::parsed")]
    pub callback_listen: SocketAddr,
    pub callback_secret: Secret,
    #[serde(with = "humantime_serde")]
    pub callback_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub callback_wait: Duration,
    pub callback_submissions: NonZeroU32,
}

impl ArgosConfig {
    /// Callback mode is on (and has a key to submit with).
    pub fn callbacks_enabled(&self) -> bool {
        self.mode == ArgosMode::Callback && !self.api_key.is_empty()
    }

    fn validate(&self, p: &mut Problems) {
        http_scheme(p, "providers.argos.base_url", &self.base_url);
        if self.mode == ArgosMode::Callback {
            p.check(self.callback_public_url.is_some(), || {
                "providers.argos.callback_public_url must be an http(s) URL in callback mode".into()
            });
            p.check(self.callback_secret.expose().len() >= 32, || {
                "providers.argos.callback_secret must be at least 32 characters in callback mode"
                    .into()
            });
            p.check(
                self.callback_wait >= Duration::from_millis(100)
                    && self.callback_token_ttl > self.callback_wait,
                || "providers.argos.callback_wait must be at least 100ms and shorter than callback_token_ttl".into(),
            );
        }
        for (key, bands) in [
            ("providers.argos.document_bands", self.document_bands),
            ("providers.argos.face_bands", self.face_bands),
        ] {
            p.check(
                (0.0..=100.0).contains(&bands.spoof_at_or_below)
                    && (0.0..=100.0).contains(&bands.live_above)
                    && bands.spoof_at_or_below <= bands.live_above,
                || format!("{key}: need 0 <= spoof_at_or_below <= live_above <= 100"),
            );
        }
    }
}

/// How Argos ID Liveness answers: in the response, or by a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgosMode {
    Sync,
    Callback,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntellicheckConfig {
    /// Intellicheck publishes no host: None until configured.
    #[serde(deserialize_with = "de::optional")]
    pub base_url: Option<Url>,
    #[serde(deserialize_with = "de::lenient_string")]
    pub customer_id: String,
    pub signing_key: Secret,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub results_timeout: Duration,
    pub response_signatures: ResponseSignatures,
}

impl IntellicheckConfig {
    fn validate(&self, p: &mut Problems) {
        // Only a configured vendor is checked: the default has no base URL.
        if self.signing_key.is_empty() {
            return;
        }
        match &self.base_url {
            Some(u) => http_scheme(p, "providers.intellicheck.base_url", u),
            None => p.check(false, || {
                "providers.intellicheck.base_url must be an http(s) URL when signing_key is set"
                    .into()
            }),
        }
        p.check(!self.customer_id.is_empty(), || {
            "providers.intellicheck.customer_id must be set when signing_key is set".into()
        });
        p.check(
            !self.poll_initial_interval.is_zero()
                && self.poll_initial_interval <= self.poll_max_interval,
            || "providers.intellicheck.poll_initial_interval must be positive and not exceed poll_max_interval".into(),
        );
        p.check(
            !self.timeout.is_zero() && !self.results_timeout.is_zero(),
            || "providers.intellicheck.timeout and results_timeout must be positive".into(),
        );
    }
}

/// What to do with the `signature` header of an Intellicheck response.
/// The vendor's samples read it, but whether it uses the request scheme is
/// not documented (docs/vendors.md), hence the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseSignatures {
    /// Verify it when present; accept unsigned responses.
    Verify,
    /// Refuse unsigned responses too.
    Require,
    /// Do not look at it.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiditConfig {
    #[serde(deserialize_with = "de::parsed")]
    pub base_url: Url,
    pub api_key: Secret,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub save_api_request: bool,
    /// Unset: Didit's own default (30).
    #[serde(default)]
    pub face_liveness_score_decline_threshold: Option<f64>,
    pub rotate_image: bool,
    #[serde(deserialize_with = "de::lenient_string")]
    pub vendor_data_metadata_key: String,
}

impl DiditConfig {
    fn validate(&self, p: &mut Problems) {
        http_scheme(p, "providers.didit.base_url", &self.base_url);
        p.check(!self.timeout.is_zero(), || {
            "providers.didit.timeout must be positive".into()
        });
        if let Some(t) = self.face_liveness_score_decline_threshold {
            p.check((0.0..=100.0).contains(&t), || {
                format!(
                    "providers.didit.face_liveness_score_decline_threshold must be 0-100, got {t}"
                )
            });
        }
    }
}

/// The coordination store shared by the replicas (Redis): claims that make
/// pay-once hold across the fleet, and fleet heartbeats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// `redis://` or `rediss://` (TLS); empty: no coordination store.
    pub redis_url: Secret,
    #[serde(deserialize_with = "de::lenient_string")]
    pub key_prefix: String,
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl CoordinationConfig {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    fn validate(&self, p: &mut Problems) {
        if !self.enabled() {
            return;
        }
        let scheme = Url::parse(self.redis_url.expose()).map(|u| u.scheme().to_owned());
        p.check(matches!(scheme.as_deref(), Ok("redis" | "rediss")), || {
            "coordination.redis_url must be a redis:// or rediss:// URL (or empty)".into()
        });
        p.check(
            !self.key_prefix.is_empty() && !self.key_prefix.contains(' '),
            || "coordination.key_prefix must be a non-empty word".into(),
        );
        p.check(self.claim_lease >= Duration::from_secs(5), || {
            "coordination.claim_lease must be at least 5s".into()
        });
        p.check(
            !self.operation_timeout.is_zero() && self.operation_timeout < self.claim_lease / 3,
            || "coordination.operation_timeout must be positive and under a third of claim_lease (the lease is renewed every third)".into(),
        );
        p.check(!self.heartbeat_interval.is_zero(), || {
            "coordination.heartbeat_interval must be positive".into()
        });
    }
}

/// The callback receiver's own limits (Argos callback mode): what one
/// caller of the public endpoint may hold of a replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    /// From a connection's first byte (or the end of its previous request)
    /// to the end of the request head.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// From the end of the body to the answer: the callback is settled
    /// (stored, published) meanwhile; past it the vendor is asked to post
    /// again while the settling goes on.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest callback body.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl CallbacksConfig {
    fn validate(&self, p: &mut Problems) {
        for (key, d) in [
            ("callbacks.header_timeout", self.header_timeout),
            ("callbacks.body_timeout", self.body_timeout),
            ("callbacks.request_timeout", self.request_timeout),
        ] {
            p.check(
                (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&d),
                || format!("{key} must be 100ms-5m, got {d:?}"),
            );
        }
        p.check((1024..=16 << 20).contains(&self.max_body_bytes), || {
            format!(
                "callbacks.max_body_bytes must be 1024-16777216, got {}",
                self.max_body_bytes
            )
        });
        p.check((1..=65_536).contains(&self.max_connections), || {
            format!(
                "callbacks.max_connections must be 1-65536, got {}",
                self.max_connections
            )
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// The operator console (`liveness-worker console`, docs/console.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console's web page is served.
    pub listen: SocketAddr,
    /// HTTP basic credentials; both required unless `listen` is loopback.
    pub username: String,
    pub password: Secret,
    /// No replay, purge or other change from the page.
    pub read_only: bool,
    /// How often the console samples the queues and the fleet; the page
    /// reloads itself at this pace.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Dead letters read at most per scan (grouping, a group's messages,
    /// a job lookup); beyond it the figures are marked as a sample.
    pub scan_limit: u32,
    /// Messages listed at most on a group's page.
    pub page_size: usize,
}

impl ConsoleConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.listen.ip().is_loopback()
                || (!self.username.is_empty() && !self.password.is_empty()),
            || {
                format!(
                    "console.username and console.password must be set when console.listen ({}) is not a loopback address",
                    self.listen
                )
            },
        );
        p.check(self.username.is_empty() == self.password.is_empty(), || {
            "console.username and console.password are set together or not at all".into()
        });
        p.check(!self.username.contains(':'), || {
            "console.username must not contain ':' (HTTP basic credentials)".into()
        });
        p.check(
            (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.refresh),
            || format!("console.refresh must be 1s-5m, got {:?}", self.refresh),
        );
        p.check((1..=1_000_000).contains(&self.scan_limit), || {
            format!(
                "console.scan_limit must be 1-1000000, got {}",
                self.scan_limit
            )
        });
        p.check((1..=10_000).contains(&self.page_size), || {
            format!("console.page_size must be 1-10000, got {}", self.page_size)
        });
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where /metrics, /livez and /readyz are served; None disables them.
    #[serde(deserialize_with = "de::optional")]
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Every rule, each section's own and those spanning sections.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut p = Problems::default();
        self.broker.validate(&mut p);
        self.worker.validate(&mut p);
        self.retry.validate(&mut p);
        self.s3.validate(&mut p);
        self.results.validate(&mut p);
        self.providers.validate(&mut p);
        self.coordination.validate(&mut p);
        self.traffic.validate(&mut p);
        self.shadow.validate(&mut p);
        self.callbacks.validate(&mut p);
        self.console.validate(&mut p);
        // A budget counted per replica would let N replicas spend N times it.
        p.check(
            !self.traffic.any_budget() || self.coordination.enabled(),
            || "traffic.<vendor>.daily_budget and monthly_budget need coordination.redis_url: a spend budget is counted fleet-wide".into(),
        );
        p.check(
            !self.shadow.has_budget() || self.coordination.enabled(),
            || "shadow.daily_budget and monthly_budget need coordination.redis_url: a spend budget is counted fleet-wide".into(),
        );
        for (check, default) in [
            (Check::Document, self.providers.default_document),
            (Check::Face, self.providers.default_face),
        ] {
            p.check(self.shadow.vendor(check) != Some(default), || {
                format!(
                    "shadow.{check} is {default}, the default vendor of {check} checks: a job would be compared with itself; name another vendor"
                )
            });
        }
        p.check(
            self.results.max_record_bytes >= self.worker.max_job_bytes as u64 + 64 * 1024,
            || {
                format!(
                    "results.max_record_bytes ({}) must be at least worker.max_job_bytes + 65536 ({}): a pending record holds the job",
                    self.results.max_record_bytes,
                    self.worker.max_job_bytes as u64 + 64 * 1024
                )
            },
        );
        let delays = self.broker.retry_delays.len();
        p.check(self.retry.credentials_park_step < delays.max(1), || {
            format!(
                "retry.credentials_park_step must index broker.retry_delays (0-{})",
                delays.saturating_sub(1)
            )
        });
        p.check(
            self.providers.argos.mode != ArgosMode::Callback || !self.results.bucket.is_empty(),
            || "results.bucket must be set in callback mode: pending submissions are recorded there".into(),
        );
        p.into_result()
    }

    /// The routing rules (default vendors, bucket allowlist) this
    /// configuration sets.
    pub fn routing(&self) -> Routing {
        Routing {
            allowed_buckets: self.worker.allowed_buckets.clone(),
            default_document: self.providers.default_document,
            default_face: self.providers.default_face,
        }
    }

    /// `worker_id`, or `<host>:<pid>`.
    pub fn worker_identity(&self) -> String {
        if !self.worker.worker_id.is_empty() {
            return self.worker.worker_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        format!("{host}:{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.worker.concurrency, 32);
        assert_eq!(c.broker.retry_delays.len(), 4);
        assert_eq!(c.broker.retry_queue(2), "liveness.retry.2m");
        assert_eq!(c.providers.argos.document_bands, Bands::default());
    }

    #[test]
    fn prefix_applies_to_names() {
        let c = Config::from_toml("[broker]\nprefix = \"t1\"").unwrap();
        assert_eq!(c.broker.name(&c.broker.jobs_queue), "t1.liveness.jobs");
        assert_eq!(c.broker.retry_queue(0), "t1.liveness.retry.5s");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = Config::from_toml("[worker]\nconcurrency = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
    }

    #[test]
    fn numeric_looking_text_is_text() {
        let c = Config::from_toml("[s3]\nregion = 123\naccess_key_id = 42\nsecret_access_key = 4242\n[broker]\nprefix = 7").unwrap();
        assert_eq!(c.s3.region, "123");
        assert_eq!(c.s3.secret_access_key.expose(), "4242");
        assert_eq!(c.broker.name("q"), "7.q");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = Config::from_toml("[worker]\nconcurency = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    fn semantic_problems_name_the_key() {
        let e = Config::from_toml(
            "[worker]\nconcurrency = 0\nallowed_buckets = []\n[broker]\ndelivery_limit = 5",
        )
        .unwrap_err()
        .to_string();
        for k in [
            "worker.concurrency",
            "worker.allowed_buckets",
            "broker.delivery_limit",
        ] {
            assert!(e.contains(k), "{k} not in {e}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml("[providers.argos]\napi_key = \"sk-very-secret\"").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-very-secret"));
        assert!(!dbg.contains("guest:guest"));
        assert_eq!(c.providers.argos.api_key.expose(), "sk-very-secret");
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("lw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "from-file\n").unwrap();
        let c = Config::from_toml(&format!(
            "[providers.argos]\napi_key = \"file:{}\"",
            f.display()
        ))
        .unwrap();
        assert_eq!(c.providers.argos.api_key.expose(), "from-file");
        let e =
            Config::from_toml("[providers.argos]\napi_key = \"file:/nonexistent/x\"").unwrap_err();
        assert!(e.to_string().contains("providers.argos.api_key"));
    }

    #[test]
    fn intellicheck_section() {
        let c = Config::from_toml("").unwrap();
        let i = &c.providers.intellicheck;
        assert!(i.signing_key.is_empty(), "off by default");
        assert_eq!(i.response_signatures, ResponseSignatures::Verify);
        let dir = std::env::temp_dir().join(format!("lw-ic-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "ic-signing-secret\n").unwrap();
        let c = Config::from_toml(&format!(
            "[providers.intellicheck]\nbase_url = \"http://x\"\ncustomer_id = 1234\nsigning_key = \"file:{}\"\nresponse_signatures = \"require\"",
            f.display()
        ))
        .unwrap();
        let i = &c.providers.intellicheck;
        assert_eq!(i.signing_key.expose(), "ic-signing-secret");
        assert_eq!(i.customer_id, "1234");
        assert_eq!(i.response_signatures, ResponseSignatures::Require);
        assert!(!format!("{c:?}").contains("ic-signing-secret"));
        let e = Config::from_toml(
            "[providers.intellicheck]\nsigning_key = \"k\"\npoll_initial_interval = \"10s\"\npoll_max_interval = \"1s\"",
        )
        .unwrap_err()
        .to_string();
        for k in [
            "providers.intellicheck.base_url",
            "providers.intellicheck.customer_id",
            "providers.intellicheck.poll_initial_interval",
        ] {
            assert!(e.contains(k), "{k} not in {e}");
        }
        let e = Config::from_toml("[providers.intellicheck]\nresponse_signatures = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("response_signatures"), "{e}");
    }

    #[test]
    fn didit_settings_load_and_validate() {
        let c = Config::from_toml("").unwrap();
        let d = &c.providers.didit;
        assert_eq!(d.base_url.as_str(), "https://verification.didit.me/");
        assert!(d.api_key.is_empty());
        assert!(!d.save_api_request);
        assert_eq!(d.face_liveness_score_decline_threshold, None);
        assert_eq!(d.vendor_data_metadata_key, "vendor_data");
        let c = Config::from_toml(
            "[providers.didit]\napi_key = \"dk-secret\"\nface_liveness_score_decline_threshold = 45",
        )
        .unwrap();
        assert_eq!(
            c.providers.didit.face_liveness_score_decline_threshold,
            Some(45.0)
        );
        assert!(!format!("{c:?}").contains("dk-secret"));
        let e = Config::from_toml(
            "[providers.didit]\nface_liveness_score_decline_threshold = 101\nbase_url = \"ftp://x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("providers.didit.face_liveness_score_decline_threshold must be 0-100"),
            "{e}"
        );
        assert!(e.contains("providers.didit.base_url"), "{e}");
        let e = Config::from_toml("[providers]\ndefault_document = \"didit\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("providers.default_document cannot be didit"),
            "{e}"
        );
        let e = Config::from_toml("[providers.didit]\nsave_api_requests = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("save_api_requests"), "{e}");
    }

    #[test]
    fn the_security_limits_load_and_nonsense_is_refused() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.worker.max_image_bytes_in_flight.get(), 256 << 20);
        assert_eq!(c.providers.max_response_bytes, 1 << 20);
        assert_eq!(c.results.max_record_bytes, 1 << 20);
        assert_eq!(c.callbacks.header_timeout, Duration::from_secs(10));
        assert_eq!(c.callbacks.body_timeout, Duration::from_secs(10));
        assert_eq!(c.callbacks.request_timeout, Duration::from_secs(30));
        assert_eq!(c.callbacks.max_body_bytes, 65536);
        assert_eq!(c.callbacks.max_connections, 256);
        assert_eq!(c.broker.connect_timeout, Duration::from_secs(10));
        let e = Config::from_toml(
            "[worker]\nmax_image_bytes = 20000000\nmax_image_bytes_in_flight = 10000000\n\
             [providers]\nmax_response_bytes = 10\n\
             [results]\nmax_record_bytes = 70000\n\
             [callbacks]\nheader_timeout = \"0s\"\nbody_timeout = \"1h\"\nrequest_timeout = \"50ms\"\nmax_body_bytes = 1\nmax_connections = 0\n\
             [broker]\nconnect_timeout = \"10m\"",
        )
        .unwrap_err()
        .to_string();
        for k in [
            "worker.max_image_bytes (20000000) must not exceed worker.max_image_bytes_in_flight (10000000)",
            "providers.max_response_bytes",
            "results.max_record_bytes (70000) must be at least worker.max_job_bytes + 65536",
            "callbacks.header_timeout",
            "callbacks.body_timeout",
            "callbacks.request_timeout",
            "callbacks.max_body_bytes",
            "callbacks.max_connections",
            "broker.connect_timeout",
        ] {
            assert!(e.contains(k), "{k} not in {e}");
        }
    }

    #[test]
    fn traffic_and_failover_settings_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert!(!c.traffic.argos.limited() && !c.traffic.any_budget());
        assert!(c.providers.failover_document.is_empty());
        let c = Config::from_toml(
            "[traffic.didit]\nrate = \"300/m\"\n[providers]\nfailover_document = [\"intellicheck\"]",
        )
        .unwrap();
        assert_eq!(c.traffic.didit.rate.per_second(), 5.0);
        let e = Config::from_toml(
            "[traffic]\nwaiting_share = 0\nmax_wait = \"1h\"\n\
             [traffic.argos]\nburst = 0\nconcurrency_max = 4\nconcurrency_initial = 8\ndaily_budget = 10\nmonthly_budget = 5\nbudget_warning = 2\nlatency_tolerance = 1\n\
             [providers]\nfailover_face = [\"intellicheck\", \"argos\"]",
        )
        .unwrap_err()
        .to_string();
        for k in [
            "traffic.waiting_share is retired",
            "traffic.max_wait",
            "traffic.argos.burst",
            "traffic.argos.concurrency_*",
            "traffic.argos.daily_budget (10) must not exceed traffic.argos.monthly_budget (5)",
            "traffic.argos.budget_warning",
            "traffic.argos.latency_tolerance",
            "need coordination.redis_url",
            "providers.failover_face cannot list intellicheck",
            "providers.failover_face lists argos twice or with the default vendor",
        ] {
            assert!(e.contains(k), "{k} not in {e}");
        }
        let e = Config::from_toml("[traffic.argos]\nrate = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate") && e.contains("50/s"), "{e}");
    }

    #[test]
    fn env_file_lines() {
        let dir = std::env::temp_dir().join(format!("lw-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(&f, "# c\nexport A=1\nB=\"two words\"\n\nC='x'\n").unwrap();
        assert_eq!(
            load::read_env_file(&f).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into())
            ]
        );
        std::fs::write(&f, "nonsense\n").unwrap();
        assert!(
            load::read_env_file(&f)
                .unwrap_err()
                .to_string()
                .contains(":1:")
        );
    }
}
