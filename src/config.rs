//! Configuration: one typed tree loaded in layers (see `config/default.toml`,
//! compiled in, for every key), validated once at start.

use crate::domain::{Check, ProviderName};
use crate::providers::argos::normalize::Bands;
use crate::providers::intellicheck::ResponseSignatures;
use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const SECTIONS: [&str; 7] = [
    "broker",
    "worker",
    "retry",
    "s3",
    "results",
    "providers",
    "telemetry",
];

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|s| s.into_inner()).collect())
}

/// Environment values are typed by figment: `LIVENESS_S3__REGION=123` or a
/// numeric password arrives as a number. Text settings take any scalar.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(n) => n.to_string(),
        Scalar::U(n) => n.to_string(),
        Scalar::F(n) => n.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// A value that must never be printed: Debug and Display show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `file:/path` → the file's content without its trailing newline.
    fn resolve(&mut self, key: &str) -> anyhow::Result<()> {
        if let Some(path) = self.0.strip_prefix("file:") {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{key}: cannot read secret file {path}"))?;
            self.0 = text.trim_end_matches(['\n', '\r']).to_owned();
        }
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub s3: S3Config,
    pub results: ResultsConfig,
    pub providers: ProvidersConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub url: Secret,
    #[serde(deserialize_with = "lenient_string")]
    pub prefix: String,
    pub jobs_exchange: String,
    pub jobs_routing_key: String,
    pub jobs_queue: String,
    pub results_exchange: String,
    pub results_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub poison_queue: String,
    pub retry_queue_prefix: String,
    pub callback_wait_queue: String,
    #[serde(deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    pub poison_threshold: u32,
    pub delivery_limit: u32,
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    #[serde(deserialize_with = "lenient_string")]
    pub connection_name: String,
    /// Used only with an `amqps://` URL (see `broker_tls`).
    #[serde(default)]
    pub tls: BrokerTlsConfig,
}

/// `[broker.tls]`: PEM files; an empty path means "not set".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// CA certificates that replace the system roots.
    #[serde(default, deserialize_with = "lenient_string")]
    pub ca_file: String,
    /// Client certificate chain and its key, for mutual TLS: both or neither.
    #[serde(default, deserialize_with = "lenient_string")]
    pub cert_file: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub key_file: String,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub concurrency: u16,
    pub allowed_buckets: Vec<String>,
    pub max_job_bytes: usize,
    pub max_image_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub job_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(deserialize_with = "lenient_string")]
    pub worker_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub attempts_per_delivery: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    pub credentials_park_step: usize,
    pub breaker_failures: u32,
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub pause_probe_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    #[serde(deserialize_with = "lenient_string")]
    pub endpoint: String,
    #[serde(deserialize_with = "lenient_string")]
    pub region: String,
    #[serde(deserialize_with = "lenient_string")]
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

/// The results store that makes "pay once" true (DESIGN §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Empty disables the store (and with it pay-once and the audit trail).
    #[serde(deserialize_with = "lenient_string")]
    pub bucket: String,
    #[serde(deserialize_with = "lenient_string")]
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    pub audit: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    pub default_document: ProviderName,
    pub default_face: ProviderName,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub argos: ArgosConfig,
    pub intellicheck: IntellicheckConfig,
    pub didit: DiditConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgosConfig {
    pub base_url: String,
    pub api_key: Secret,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub use_upcoming_version: bool,
    pub document_bands: Bands,
    pub face_bands: Bands,
    pub mode: ArgosMode,
    #[serde(deserialize_with = "lenient_string")]
    pub callback_public_url: String,
    #[serde(deserialize_with = "lenient_string")]
    pub callback_listen: String,
    pub callback_secret: Secret,
    #[serde(with = "humantime_serde")]
    pub callback_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub callback_wait: Duration,
    pub callback_submissions: u32,
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
    pub base_url: String,
    #[serde(deserialize_with = "lenient_string")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiditConfig {
    pub base_url: String,
    pub api_key: Secret,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub save_api_request: bool,
    /// Unset: Didit's own default (30).
    #[serde(default)]
    pub face_liveness_score_decline_threshold: Option<f64>,
    pub rotate_image: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub vendor_data_metadata_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
    /// Address of the metrics and probes endpoint; empty disables it.
    pub listen: String,
}

/// Where configuration comes from besides the compiled-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
}

impl Config {
    /// Loads defaults, the optional file, the optional env file and the
    /// environment, then validates. Errors name the offending key.
    pub fn load(sources: &Sources) -> anyhow::Result<Config> {
        let file = sources
            .file
            .clone()
            .or_else(|| std::env::var_os("LIVENESS_CONFIG").map(PathBuf::from));
        let env_file = sources
            .env_file
            .clone()
            .or_else(|| std::env::var_os("LIVENESS_ENV_FILE").map(PathBuf::from));
        let mut fig = Figment::new().merge(Toml::string(DEFAULT_TOML));
        if let Some(path) = &file {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        if let Some(path) = &env_file {
            for (k, v) in read_env_file(path)? {
                // The real environment wins over the file.
                if std::env::var_os(&k).is_none() {
                    // SAFETY: called once at start-up before any thread is spawned.
                    unsafe { std::env::set_var(k, v) };
                }
            }
        }
        fig = fig.merge(Self::env());
        Self::from_figment(fig)
    }

    /// Environment variables `LIVENESS_<SECTION>__<KEY>`; other LIVENESS_*
    /// variables (LIVENESS_CONFIG, test settings) are not configuration keys.
    fn env() -> Env {
        Env::prefixed("LIVENESS_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            // The key is seen after `split`, so "broker__url" reads "broker.url".
            SECTIONS.iter().any(|s| {
                k.strip_prefix(s)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with("__"))
            })
        })
    }

    /// Defaults plus a TOML snippet: for tests and embedding.
    pub fn from_toml(overrides: &str) -> anyhow::Result<Config> {
        Self::from_toml_layers(&[overrides])
    }

    /// Defaults plus TOML snippets, later ones winning key by key.
    pub fn from_toml_layers(layers: &[&str]) -> anyhow::Result<Config> {
        let base = Figment::new().merge(Toml::string(DEFAULT_TOML));
        Self::from_figment(layers.iter().fold(base, |f, l| f.merge(Toml::string(l))))
    }

    fn from_figment(fig: Figment) -> anyhow::Result<Config> {
        let mut cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        cfg.broker.url.resolve("broker.url")?;
        cfg.s3.secret_access_key.resolve("s3.secret_access_key")?;
        cfg.providers
            .argos
            .api_key
            .resolve("providers.argos.api_key")?;
        cfg.providers
            .argos
            .callback_secret
            .resolve("providers.argos.callback_secret")?;
        cfg.providers
            .intellicheck
            .signing_key
            .resolve("providers.intellicheck.signing_key")?;
        cfg.providers
            .didit
            .api_key
            .resolve("providers.didit.api_key")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                problems.push(msg);
            }
        };
        let w = &self.worker;
        check(
            (1..=4096).contains(&w.concurrency),
            format!("worker.concurrency must be 1-4096, got {}", w.concurrency),
        );
        check(
            !w.allowed_buckets.is_empty(),
            "worker.allowed_buckets must name at least one bucket".into(),
        );
        for b in &w.allowed_buckets {
            check(
                !b.is_empty() && !b.contains('/'),
                format!("worker.allowed_buckets has an invalid bucket name {b:?}"),
            );
        }
        check(
            w.max_job_bytes >= 1024,
            format!(
                "worker.max_job_bytes must be at least 1024, got {}",
                w.max_job_bytes
            ),
        );
        check(
            w.max_image_bytes > 0,
            "worker.max_image_bytes must be positive".into(),
        );
        check(
            !w.job_deadline.is_zero(),
            "worker.job_deadline must be positive".into(),
        );
        let b = &self.broker;
        check(
            b.url.expose().starts_with("amqp://") || b.url.expose().starts_with("amqps://"),
            "broker.url must start with amqp:// or amqps://".into(),
        );
        let tls = &b.tls;
        let amqps = b.url.expose().starts_with("amqps://");
        for (key, v) in [
            ("broker.tls.ca_file", &tls.ca_file),
            ("broker.tls.cert_file", &tls.cert_file),
            ("broker.tls.key_file", &tls.key_file),
        ] {
            check(
                amqps || v.is_empty(),
                format!(
                    "{key} is set but broker.url is not amqps://: TLS settings need an amqps:// URL (or leave {key} empty)"
                ),
            );
        }
        let pair = tls.cert_file.is_empty() == tls.key_file.is_empty();
        check(
            pair,
            "broker.tls.cert_file and broker.tls.key_file must be set together (mutual TLS) or both left empty".into(),
        );
        if amqps && pair {
            // Unreadable or mismatched files fail here, at start, not at the first connect.
            if let Err(e) = crate::broker_tls::check_files(tls) {
                check(false, format!("{e:#}"));
            }
        }
        for (key, v) in [
            ("broker.jobs_exchange", &b.jobs_exchange),
            ("broker.jobs_queue", &b.jobs_queue),
            ("broker.jobs_routing_key", &b.jobs_routing_key),
            ("broker.results_exchange", &b.results_exchange),
            ("broker.dead_exchange", &b.dead_exchange),
            ("broker.dead_queue", &b.dead_queue),
            ("broker.poison_queue", &b.poison_queue),
            ("broker.retry_queue_prefix", &b.retry_queue_prefix),
            ("broker.callback_wait_queue", &b.callback_wait_queue),
        ] {
            check(!v.is_empty(), format!("{key} must not be empty"));
        }
        check(
            !b.retry_delays.is_empty(),
            "broker.retry_delays must list at least one delay".into(),
        );
        check(
            b.retry_delays
                .iter()
                .all(|d| *d >= Duration::from_millis(1)),
            "broker.retry_delays must be at least 1ms each".into(),
        );
        check(
            b.poison_threshold >= 1,
            "broker.poison_threshold must be at least 1".into(),
        );
        check(
            b.delivery_limit > b.poison_threshold,
            format!(
                "broker.delivery_limit ({}) must be above broker.poison_threshold ({})",
                b.delivery_limit, b.poison_threshold
            ),
        );
        let r = &self.retry;
        check(
            r.attempts_per_delivery >= 1,
            "retry.attempts_per_delivery must be at least 1".into(),
        );
        check(
            r.breaker_failures >= 1,
            "retry.breaker_failures must be at least 1".into(),
        );
        check(
            r.initial_backoff <= r.max_backoff,
            "retry.initial_backoff must not exceed retry.max_backoff".into(),
        );
        check(
            r.credentials_park_step < b.retry_delays.len().max(1),
            format!(
                "retry.credentials_park_step must index broker.retry_delays (0-{})",
                b.retry_delays.len().saturating_sub(1)
            ),
        );
        check(
            self.s3.access_key_id.is_empty() == self.s3.secret_access_key.is_empty(),
            "s3.access_key_id and s3.secret_access_key must be set together (or both left empty for the AWS chain)".into(),
        );
        check(
            !self.s3.region.is_empty(),
            "s3.region must not be empty".into(),
        );
        check(
            self.telemetry.listen.is_empty()
                || self
                    .telemetry
                    .listen
                    .parse::<std::net::SocketAddr>()
                    .is_ok(),
            format!(
                "telemetry.listen must be host:port (an IP address) or empty, got {:?}",
                self.telemetry.listen
            ),
        );
        let r = &self.results;
        check(
            !r.bucket.contains('/'),
            format!("results.bucket must be a bucket name, got {:?}", r.bucket),
        );
        check(
            r.prefix.is_empty() || (r.prefix.ends_with('/') && !r.prefix.starts_with('/')),
            format!(
                "results.prefix must be empty or end with '/' (and not start with one), got {:?}",
                r.prefix
            ),
        );
        check(
            r.store_timeout >= Duration::from_secs(1),
            "results.store_timeout must be at least 1s".into(),
        );
        check(
            self.retry.pause_probe_interval >= Duration::from_millis(100),
            "retry.pause_probe_interval must be at least 100ms".into(),
        );
        let a = &self.providers.argos;
        check(
            a.base_url.starts_with("http://") || a.base_url.starts_with("https://"),
            "providers.argos.base_url must be an http(s) URL".into(),
        );
        if a.mode == ArgosMode::Callback {
            check(
                a.callback_public_url.starts_with("http://")
                    || a.callback_public_url.starts_with("https://"),
                "providers.argos.callback_public_url must be an http(s) URL in callback mode"
                    .into(),
            );
            check(
                a.callback_listen.parse::<std::net::SocketAddr>().is_ok(),
                format!(
                    "providers.argos.callback_listen must be host:port (an IP address), got {:?}",
                    a.callback_listen
                ),
            );
            check(
                a.callback_secret.expose().len() >= 32,
                "providers.argos.callback_secret must be at least 32 characters in callback mode"
                    .into(),
            );
            check(
                !self.results.bucket.is_empty(),
                "results.bucket must be set in callback mode: pending submissions are recorded there"
                    .into(),
            );
            check(
                a.callback_submissions >= 1,
                "providers.argos.callback_submissions must be at least 1".into(),
            );
            check(
                a.callback_wait >= Duration::from_millis(100)
                    && a.callback_token_ttl > a.callback_wait,
                "providers.argos.callback_wait must be at least 100ms and shorter than callback_token_ttl".into(),
            );
        }
        for (key, bands) in [
            ("providers.argos.document_bands", a.document_bands),
            ("providers.argos.face_bands", a.face_bands),
        ] {
            check(
                (0.0..=100.0).contains(&bands.spoof_at_or_below)
                    && (0.0..=100.0).contains(&bands.live_above)
                    && bands.spoof_at_or_below <= bands.live_above,
                format!("{key}: need 0 <= spoof_at_or_below <= live_above <= 100"),
            );
        }
        let i = &self.providers.intellicheck;
        // Only a configured vendor is checked: the default has no base URL,
        // since Intellicheck publishes no host.
        if !i.signing_key.is_empty() {
            check(
                i.base_url.starts_with("http://") || i.base_url.starts_with("https://"),
                "providers.intellicheck.base_url must be an http(s) URL when signing_key is set"
                    .into(),
            );
            check(
                !i.customer_id.is_empty(),
                "providers.intellicheck.customer_id must be set when signing_key is set".into(),
            );
            check(
                !i.poll_initial_interval.is_zero()
                    && i.poll_initial_interval <= i.poll_max_interval,
                "providers.intellicheck.poll_initial_interval must be positive and not exceed poll_max_interval".into(),
            );
            check(
                !i.timeout.is_zero() && !i.results_timeout.is_zero(),
                "providers.intellicheck.timeout and results_timeout must be positive".into(),
            );
        }
        let d = &self.providers.didit;
        for (key, vendor, check_type) in [
            (
                "default_document",
                self.providers.default_document,
                Check::Document,
            ),
            ("default_face", self.providers.default_face, Check::Face),
        ] {
            check(
                vendor.can_do(check_type),
                format!("providers.{key} cannot be {vendor}: it does not do {check_type} checks"),
            );
        }
        check(
            d.base_url.starts_with("http://") || d.base_url.starts_with("https://"),
            "providers.didit.base_url must be an http(s) URL".into(),
        );
        check(
            !d.timeout.is_zero(),
            "providers.didit.timeout must be positive".into(),
        );
        if let Some(t) = d.face_liveness_score_decline_threshold {
            check(
                (0.0..=100.0).contains(&t),
                format!(
                    "providers.didit.face_liveness_score_decline_threshold must be 0-100, got {t}"
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration: {}", problems.join("; "))
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

/// KEY=VALUE lines; `#` comments, blank lines, an optional `export ` and
/// matching quotes around the value are allowed.
fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read env file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected KEY=VALUE", path.display(), n + 1);
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(out)
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
        assert_eq!(d.base_url, "https://verification.didit.me");
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
    fn env_file_lines() {
        let dir = std::env::temp_dir().join(format!("lw-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(&f, "# c\nexport A=1\nB=\"two words\"\n\nC='x'\n").unwrap();
        assert_eq!(
            read_env_file(&f).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into())
            ]
        );
        std::fs::write(&f, "nonsense\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains(":1:"));
    }
}
