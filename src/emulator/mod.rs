//! The vendor emulator (docs/emulator.md): a test double held to each vendor's
//! contract, with scenario control through the image, call accounting and
//! fault injection through an admin API.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use liveness_worker::emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::local("test-key")).await?;
//! println!("argos base URL: {}/modules", emu.base_url());
//! # Ok(()) }
//! ```

mod argos;
mod didit;
mod intellicheck;
pub mod scenario;

/// Where the emulated Didit's temporary media URLs point (a reserved,
/// unresolvable name), so tests can search for them.
pub use didit::MEDIA_BASE as DIDIT_MEDIA_BASE;

use crate::domain::ProviderName;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What the emulator starts with; faults can change at run time.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    pub argos_api_key: String,
    /// Intellicheck's `customer-id` and HMAC signing key.
    pub intellicheck_customer_id: String,
    pub intellicheck_signing_key: String,
    /// How long Intellicheck's `/get-results` answers "not ready" after `/end`.
    pub intellicheck_processing: Duration,
    /// The `x-api-key` the emulated Didit accepts.
    pub didit_api_key: String,
    pub faults: Faults,
}

impl EmulatorConfig {
    /// Loopback, an ephemeral port, no faults, one key for every vendor.
    pub fn local(api_key: &str) -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            argos_api_key: api_key.to_owned(),
            intellicheck_customer_id: "local-customer".into(),
            intellicheck_signing_key: api_key.to_owned(),
            intellicheck_processing: Duration::from_millis(200),
            didit_api_key: api_key.to_owned(),
            faults: Faults::default(),
        }
    }

    /// Sets Intellicheck's customer id and signing key.
    pub fn with_intellicheck(mut self, customer_id: &str, signing_key: &str) -> Self {
        self.intellicheck_customer_id = customer_id.to_owned();
        self.intellicheck_signing_key = signing_key.to_owned();
        self
    }
}

/// Injected faults for one vendor (`PUT /_admin/faults`, or flags at start).
/// They apply to every vendor request, before the key check, in this
/// order: rate limit, dropped connection, timeout, latency, server error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests answered with a 500, 0–1.
    pub error_rate: f64,
    /// Share of requests held far longer than any client waits
    /// ([`TIMEOUT_HOLD`]) and then closed unanswered, 0–1.
    pub timeout_rate: f64,
    /// Share of requests whose connection is closed without an answer, 0–1.
    pub drop_rate: f64,
    /// Requests admitted per sliding window; over it the vendor answers 429
    /// with `Retry-After` and `X-RateLimit-*`. 0: no limit.
    pub rate_limit_per_minute: u32,
    /// The window's length: a minute like the vendors', shorter in tests.
    pub rate_limit_window_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            error_rate: 0.0,
            timeout_rate: 0.0,
            drop_rate: 0.0,
            rate_limit_per_minute: 0,
            rate_limit_window_ms: 60_000,
        }
    }
}

impl Faults {
    /// The first setting out of range, named.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0-1, got {rate}"));
            }
        }
        if self.rate_limit_window_ms == 0 {
            return Err("rate_limit_window_ms must be positive".into());
        }
        Ok(())
    }
}

/// How long a "timeout" fault holds a request: far beyond any client
/// timeout worth having.
pub const TIMEOUT_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsUpdate {
    vendor: Option<ProviderName>,
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    timeout_rate: Option<f64>,
    drop_rate: Option<f64>,
    rate_limit_per_minute: Option<u32>,
    rate_limit_window_ms: Option<u64>,
}

impl FaultsUpdate {
    fn apply(&self, f: &mut Faults) {
        let set = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut f.error_rate, self.error_rate);
        set(&mut f.timeout_rate, self.timeout_rate);
        set(&mut f.drop_rate, self.drop_rate);
        if let Some(v) = self.latency_ms {
            f.latency_ms = v;
        }
        if let Some(v) = self.rate_limit_per_minute {
            f.rate_limit_per_minute = v;
        }
        if let Some(v) = self.rate_limit_window_ms {
            f.rate_limit_window_ms = v;
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct VendorCalls {
    submissions: u64,
    by_image: BTreeMap<String, u64>,
    /// Requests answered 429 by the rate-limit fault.
    rate_limited: u64,
    /// Requests whose connection the drop fault closed.
    dropped: u64,
    /// Requests the timeout fault held.
    timed_out: u64,
    /// Requests the error fault answered with a 500.
    server_errors: u64,
}

struct VendorState {
    api_key: String,
    key_valid: bool,
    faults: Faults,
    calls: VendorCalls,
    /// When the requests in the current rate-limit window were admitted.
    admitted: VecDeque<Instant>,
}

/// A 429's numbers, for each vendor to answer in its own form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimited {
    pub limit: u32,
    /// Whole seconds until a request would be admitted again (at least 1).
    pub retry_after_s: u64,
    /// The epoch second it will be.
    pub reset_epoch_s: u64,
}

impl RateLimited {
    /// `Retry-After` and the `X-RateLimit-*` headers Didit documents.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("retry-after", self.retry_after_s.to_string()),
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", self.reset_epoch_s.to_string()),
        ]
    }

    /// A vendor-side 429 not driven by the window (scenario `error: 429`).
    pub fn for_seconds(limit: u32, secs: u64) -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        RateLimited {
            limit,
            retry_after_s: secs.max(1),
            reset_epoch_s: now + secs.max(1),
        }
    }

    /// 429 with these headers and a JSON body.
    pub fn response(&self, body: serde_json::Value) -> Response {
        let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        for (k, v) in self.headers() {
            r.headers_mut()
                .insert(k, v.parse().expect("digits are a valid header value"));
        }
        r
    }
}

/// The sliding window: admits `now` when fewer than `limit` requests were
/// admitted within the last `window`; otherwise says how long until the
/// oldest of them leaves it.
fn admit(
    admitted: &mut VecDeque<Instant>,
    now: Instant,
    limit: u32,
    window: Duration,
) -> Result<(), Duration> {
    while admitted
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        admitted.pop_front();
    }
    if admitted.len() < limit as usize {
        admitted.push_back(now);
        return Ok(());
    }
    let oldest = *admitted.front().expect("limit is at least 1 here");
    Err(window.saturating_sub(now.saturating_duration_since(oldest)))
}

/// What the injected faults decided for one request.
pub(crate) enum Gate {
    /// Answer normally (latency already applied).
    Proceed,
    /// Answer HTTP 500.
    ServerError,
    /// Answer 429 in the vendor's own form.
    RateLimited(RateLimited),
}

enum Roll {
    Limited(RateLimited),
    Drop,
    Hold,
    Go { latency_ms: u64, error: bool },
}

tokio::task_local! {
    /// Cancelled to close the current request's connection unanswered.
    static CONNECTION: CancellationToken;
}

/// Closes the connection of the request being handled without writing a
/// byte, and never returns. (Outside the emulator's own server it just
/// never answers.)
async fn close_unanswered<T>() -> T {
    let _ = CONNECTION.try_with(|c| c.cancel());
    std::future::pending().await
}

pub(crate) struct Shared {
    vendors: Mutex<HashMap<ProviderName, VendorState>>,
    intellicheck: intellicheck::Emu,
    argos_callbacks: argos::Callbacks,
}

impl Shared {
    /// Counts a request that carries an image and says how many times this
    /// image was submitted before (for `error_times`).
    fn record_submission(&self, vendor: ProviderName, sha256: &str) -> u64 {
        let mut vendors = self.vendors.lock().expect("emulator state lock");
        let v = vendors.get_mut(&vendor).expect("vendor state");
        v.calls.submissions += 1;
        let n = v.calls.by_image.entry(sha256.to_owned()).or_default();
        *n += 1;
        *n - 1
    }

    /// Whether `key` is the vendor's configured key and it is not revoked.
    fn key_ok(&self, vendor: ProviderName, key: Option<&str>) -> bool {
        let vendors = self.vendors.lock().expect("emulator state lock");
        let v = &vendors[&vendor];
        v.key_valid && key.is_some_and(|k| constant_time_eq(k.as_bytes(), v.api_key.as_bytes()))
    }

    /// Applies the vendor's injected faults to one request (call it after
    /// counting the submission, before anything else): a 429 when over the
    /// rate limit, a dropped connection or a held request (these two never
    /// return), the latency fault plus the scenario's own latency, and the
    /// random server error.
    pub(crate) async fn gate(
        &self,
        vendor: ProviderName,
        scenario_latency_ms: Option<u64>,
    ) -> Gate {
        match self.roll(vendor, Instant::now(), true) {
            Roll::Limited(r) => Gate::RateLimited(r),
            Roll::Drop => close_unanswered().await,
            Roll::Hold => {
                tokio::time::sleep(TIMEOUT_HOLD).await;
                close_unanswered().await
            }
            Roll::Go { latency_ms, error } => {
                let wait = latency_ms + scenario_latency_ms.unwrap_or(0);
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                if error {
                    Gate::ServerError
                } else {
                    Gate::Proceed
                }
            }
        }
    }

    /// Decides the faults for one request and counts them.
    fn roll(&self, vendor: ProviderName, now: Instant, rate_limit: bool) -> Roll {
        let mut vendors = self.vendors.lock().expect("emulator state lock");
        let v = vendors.get_mut(&vendor).expect("vendor state");
        let f = &v.faults;
        if rate_limit && f.rate_limit_per_minute > 0 {
            let window = Duration::from_millis(f.rate_limit_window_ms);
            if let Err(wait) = admit(&mut v.admitted, now, f.rate_limit_per_minute, window) {
                v.calls.rate_limited += 1;
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Roll::Limited(RateLimited::for_seconds(f.rate_limit_per_minute, secs));
            }
        }
        let fires = |rate: f64| rate > 0.0 && fastrand::f64() < rate;
        if fires(f.drop_rate) {
            v.calls.dropped += 1;
            return Roll::Drop;
        }
        if fires(f.timeout_rate) {
            v.calls.timed_out += 1;
            return Roll::Hold;
        }
        let error = fires(f.error_rate);
        if error {
            v.calls.server_errors += 1;
        }
        Roll::Go {
            latency_ms: f.latency_ms,
            error,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running emulator; dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    pub async fn start(cfg: EmulatorConfig) -> anyhow::Result<Emulator> {
        cfg.faults.validate().map_err(anyhow::Error::msg)?;
        // Argos callbacks are posted with an HTTP client.
        crate::install_crypto_provider();
        let shared = Arc::new(Shared {
            vendors: Mutex::new(
                [
                    (ProviderName::Argos, cfg.argos_api_key.clone()),
                    (ProviderName::Didit, cfg.didit_api_key.clone()),
                ]
                .into_iter()
                .map(|(p, key)| {
                    (
                        p,
                        VendorState {
                            api_key: key,
                            key_valid: true,
                            faults: cfg.faults.clone(),
                            calls: VendorCalls::default(),
                            admitted: VecDeque::new(),
                        },
                    )
                })
                .collect(),
            ),
            argos_callbacks: argos::Callbacks::default(),
            intellicheck: intellicheck::Emu::new(
                &cfg.intellicheck_customer_id,
                cfg.intellicheck_processing,
            ),
        });
        // Intellicheck's key is its HMAC signing key.
        shared.vendors.lock().expect("emulator state lock").insert(
            ProviderName::Intellicheck,
            VendorState {
                api_key: cfg.intellicheck_signing_key.clone(),
                key_valid: true,
                faults: cfg.faults.clone(),
                calls: VendorCalls::default(),
                admitted: VecDeque::new(),
            },
        );
        let app = Router::new()
            .merge(argos::routes())
            .merge(intellicheck::routes())
            .merge(didit::routes())
            .route("/_admin/calls", get(admin_calls))
            .route("/_admin/credentials/{vendor}", post(admin_credentials))
            .route("/_admin/faults", put(admin_faults).get(admin_faults_get))
            .route("/_admin/health", get(|| async { "ok" }))
            // Vendors take images of several megabytes, base64-inflated.
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, stopped));
        Ok(Emulator {
            addr,
            _stop: stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`; Argos lives under `/modules`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until the server stops (for the `emulator` command).
    pub async fn wait(self) -> anyhow::Result<()> {
        let Emulator { task, _stop, .. } = self;
        task.await?;
        Ok(())
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped), then
/// aborts the open ones. The emulator serves each connection itself, rather
/// than through `axum::serve`, so a fault can close one without answering.
async fn serve(listener: tokio::net::TcpListener, app: Router, mut stop: oneshot::Receiver<()>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, app.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "Emulator cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One HTTP/1.1 connection. Handlers run inside [`CONNECTION`]; when one
/// cancels it, the connection is dropped mid-request, which closes the
/// socket without a byte of answer.
async fn serve_connection(stream: tokio::net::TcpStream, app: Router) {
    let _ = stream.set_nodelay(true);
    let close = CancellationToken::new();
    let tower = hyper_util::service::TowerToHyperService::new(app);
    let token = close.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        CONNECTION.scope(token.clone(), hyper::service::Service::call(&tower, req))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Emulator connection ended with an error");
            }
        }
        _ = close.cancelled() => {}
    }
}

async fn admin_calls(State(s): State<Arc<Shared>>) -> Response {
    let vendors = s.vendors.lock().expect("emulator state lock");
    let out: BTreeMap<&str, &VendorCalls> = vendors
        .iter()
        .map(|(p, v)| (p.as_str(), &v.calls))
        .collect();
    Json(out).into_response()
}

#[derive(Deserialize)]
struct CredentialsUpdate {
    valid: bool,
}

async fn admin_credentials(
    State(s): State<Arc<Shared>>,
    Path(vendor): Path<String>,
    Json(update): Json<CredentialsUpdate>,
) -> Response {
    let Some(p) = ProviderName::parse(&vendor) else {
        return (StatusCode::NOT_FOUND, format!("unknown vendor {vendor:?}")).into_response();
    };
    let mut vendors = s.vendors.lock().expect("emulator state lock");
    match vendors.get_mut(&p) {
        Some(v) => {
            v.key_valid = update.valid;
            StatusCode::NO_CONTENT.into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("vendor {vendor} is not emulated"),
        )
            .into_response(),
    }
}

async fn admin_faults(State(s): State<Arc<Shared>>, Json(u): Json<FaultsUpdate>) -> Response {
    let mut vendors = s.vendors.lock().expect("emulator state lock");
    // Validate every change before applying any.
    for (p, v) in vendors.iter() {
        if u.vendor.is_some_and(|want| want != *p) {
            continue;
        }
        let mut f = v.faults.clone();
        u.apply(&mut f);
        if let Err(e) = f.validate() {
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    }
    for (p, v) in vendors.iter_mut() {
        if u.vendor.is_some_and(|want| want != *p) {
            continue;
        }
        u.apply(&mut v.faults);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_admin/faults`: the faults in force, per vendor.
async fn admin_faults_get(State(s): State<Arc<Shared>>) -> Response {
    let vendors = s.vendors.lock().expect("emulator state lock");
    let out: BTreeMap<&str, &Faults> = vendors
        .iter()
        .map(|(p, v)| (p.as_str(), &v.faults))
        .collect();
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;
    use base64::Engine as _;
    use reqwest::multipart::{Form, Part};
    use serde_json::{Value, json};

    pub(crate) async fn start(faults: Faults) -> Emulator {
        crate::install_crypto_provider();
        Emulator::start(EmulatorConfig {
            faults,
            ..EmulatorConfig::local("k-1")
        })
        .await
        .expect("emulator starts")
    }

    pub(crate) fn didit_form(image: Vec<u8>) -> Form {
        let part = Part::bytes(image)
            .file_name("face.png")
            .mime_str("image/png")
            .unwrap();
        Form::new().part("user_image", part)
    }

    async fn didit(emu: &Emulator, image: Vec<u8>) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .post(format!("{}/v3/passive-liveness/", emu.base_url()))
            .header("x-api-key", "k-1")
            .multipart(didit_form(image))
            .send()
            .await
    }

    async fn argos(emu: &Emulator, path: &str, image: &[u8]) -> reqwest::Response {
        let b64 = base64::engine::general_purpose::STANDARD.encode(image);
        let body = if path == "document" {
            json!({"idImage": b64, "pipelines": {"sr": true, "pc": true, "ps": true}})
        } else {
            json!({"faceImage": b64})
        };
        reqwest::Client::new()
            .post(format!("{}/modules/{path}", emu.base_url()))
            .header("x-api-key", "k-1")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn calls(emu: &Emulator) -> Value {
        reqwest::get(format!("{}/_admin/calls", emu.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn put_faults(emu: &Emulator, body: Value) -> u16 {
        reqwest::Client::new()
            .put(format!("{}/_admin/faults", emu.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn header(r: &reqwest::Response, name: &str) -> u64 {
        r.headers()[name].to_str().unwrap().parse().unwrap()
    }

    #[test]
    fn the_sliding_window_admits_up_to_the_limit() {
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut q = VecDeque::new();
        assert_eq!(admit(&mut q, t0, 2, w), Ok(()));
        assert_eq!(admit(&mut q, t0 + Duration::from_secs(10), 2, w), Ok(()));
        // Full: the oldest admission leaves the window 60 s after it came.
        assert_eq!(
            admit(&mut q, t0 + Duration::from_secs(15), 2, w),
            Err(Duration::from_secs(45))
        );
        assert_eq!(admit(&mut q, t0 + Duration::from_secs(60), 2, w), Ok(()));
        assert_eq!(
            admit(&mut q, t0 + Duration::from_secs(61), 2, w),
            Err(Duration::from_secs(9))
        );
        assert_eq!(q.len(), 2, "refused requests do not fill the window");
    }

    #[tokio::test]
    async fn rate_limit_answers_429_in_each_vendors_form() {
        let emu = start(Faults {
            rate_limit_per_minute: 2,
            ..Faults::default()
        })
        .await;
        let img = samples::png(1, 2000, Some(r#"{"face":90,"screen_replay":90}"#));
        assert_eq!(argos(&emu, "document", &img).await.status(), 200);
        assert_eq!(argos(&emu, "liveness", &img).await.status(), 200);
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = argos(&emu, "document", &img).await;
        assert_eq!(r.status(), 429);
        let retry = header(&r, "retry-after");
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(header(&r, "x-ratelimit-limit"), 2);
        assert_eq!(header(&r, "x-ratelimit-remaining"), 0);
        let reset = header(&r, "x-ratelimit-reset");
        assert!(
            reset >= before + retry && reset <= before + retry + 2,
            "{reset}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["statusCode"], 429);
        let r = argos(&emu, "liveness", &img).await;
        assert_eq!(r.status(), 429);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], "Too many requests");
        assert!(body.get("error").is_none(), "face errors are flat");

        // Didit has its own window.
        for _ in 0..2 {
            assert_eq!(didit(&emu, img.clone()).await.unwrap().status(), 200);
        }
        let r = didit(&emu, img.clone()).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-limit"), 2);
        assert!(header(&r, "retry-after") >= 1);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("Request was throttled")
        );

        let c = calls(&emu).await;
        // A 429 for a request carrying the image is still a submission.
        assert_eq!(c["argos"]["submissions"], 4);
        assert_eq!(c["argos"]["rate_limited"], 2);
        assert_eq!(c["didit"]["submissions"], 3);
        assert_eq!(c["didit"]["rate_limited"], 1);

        // Lifting the limit at run time.
        assert_eq!(
            put_faults(&emu, json!({"rate_limit_per_minute": 0})).await,
            204
        );
        assert_eq!(argos(&emu, "document", &img).await.status(), 200);
    }

    #[tokio::test]
    async fn dropped_connections_and_timeouts_answer_nothing() {
        let emu = start(Faults::default()).await;
        let img = samples::png(2, 2000, Some(r#"{"face":90}"#));
        assert_eq!(
            put_faults(&emu, json!({"vendor": "didit", "drop_rate": 1.0})).await,
            204
        );
        let e = didit(&emu, img.clone()).await.unwrap_err();
        assert!(!e.is_timeout(), "{e}");
        assert!(e.status().is_none(), "no status line was written: {e}");
        // The other vendor is untouched.
        assert_eq!(argos(&emu, "liveness", &img).await.status(), 200);

        assert_eq!(
            put_faults(
                &emu,
                json!({"vendor": "didit", "drop_rate": 0.0, "timeout_rate": 1.0})
            )
            .await,
            204
        );
        let e = reqwest::Client::new()
            .post(format!("{}/v3/passive-liveness/", emu.base_url()))
            .header("x-api-key", "k-1")
            .timeout(Duration::from_millis(300))
            .multipart(didit_form(img.clone()))
            .send()
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");

        assert_eq!(
            put_faults(
                &emu,
                json!({"vendor": "didit", "timeout_rate": 0.0, "error_rate": 1.0})
            )
            .await,
            204
        );
        let r = didit(&emu, img.clone()).await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(
            r.json::<Value>().await.unwrap()["detail"],
            "A server error occurred."
        );

        let c = calls(&emu).await;
        assert_eq!(c["didit"]["submissions"], 3, "every attempt counts");
        assert_eq!(c["didit"]["dropped"], 1);
        assert_eq!(c["didit"]["timed_out"], 1);
        assert_eq!(c["didit"]["server_errors"], 1);
        assert_eq!(c["argos"]["dropped"], 0);
    }

    #[tokio::test]
    async fn faults_are_validated_and_readable() {
        let emu = start(Faults::default()).await;
        for bad in [
            json!({"error_rate": 1.5}),
            json!({"drop_rate": -0.1}),
            json!({"timeout_rate": 2}),
            json!({"rate_limit_window_ms": 0}),
        ] {
            assert_eq!(put_faults(&emu, bad.clone()).await, 400, "{bad}");
        }
        assert!(put_faults(&emu, json!({"latency": 5})).await >= 400);
        assert!(put_faults(&emu, json!({"vendor": "nobody"})).await >= 400);
        assert_eq!(
            put_faults(
                &emu,
                json!({"vendor": "argos", "latency_ms": 5, "rate_limit_per_minute": 300})
            )
            .await,
            204
        );
        let f: Value = reqwest::get(format!("{}/_admin/faults", emu.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(f["argos"]["latency_ms"], 5);
        assert_eq!(f["argos"]["rate_limit_per_minute"], 300);
        assert_eq!(f["argos"]["rate_limit_window_ms"], 60_000);
        assert_eq!(f["didit"]["latency_ms"], 0);
        let e = Emulator::start(EmulatorConfig {
            faults: Faults {
                error_rate: 3.0,
                ..Faults::default()
            },
            ..EmulatorConfig::local("k")
        })
        .await
        .err()
        .expect("invalid faults are refused at start");
        assert!(e.to_string().contains("error_rate"), "{e}");
    }
}
