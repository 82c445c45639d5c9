//! The vendor emulator (DESIGN §6): a test double held to each vendor's
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
mod intellicheck;
pub mod scenario;

use crate::domain::ProviderName;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

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
    pub faults: Faults,
}

impl EmulatorConfig {
    /// Loopback, an ephemeral port, no faults.
    pub fn local(argos_api_key: &str) -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            argos_api_key: argos_api_key.to_owned(),
            intellicheck_customer_id: "local-customer".into(),
            intellicheck_signing_key: argos_api_key.to_owned(),
            intellicheck_processing: Duration::from_millis(200),
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

/// Injected faults for one vendor (`PUT /_admin/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Added to every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests answered with a 500, 0–1.
    #[serde(default)]
    pub error_rate: f64,
}

#[derive(Debug, Deserialize)]
struct FaultsUpdate {
    vendor: Option<ProviderName>,
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct VendorCalls {
    submissions: u64,
    by_image: BTreeMap<String, u64>,
}

struct VendorState {
    api_key: String,
    key_valid: bool,
    faults: Faults,
    calls: VendorCalls,
}

pub(crate) struct Shared {
    vendors: Mutex<HashMap<ProviderName, VendorState>>,
    intellicheck: intellicheck::Emu,
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

    fn faults(&self, vendor: ProviderName) -> Faults {
        self.vendors.lock().expect("emulator state lock")[&vendor]
            .faults
            .clone()
    }

    /// Applies the latency fault plus the scenario's own latency, then says
    /// whether the random error fault fires for this request.
    async fn delay_and_roll(&self, vendor: ProviderName, scenario_latency_ms: Option<u64>) -> bool {
        let f = self.faults(vendor);
        let wait = f.latency_ms + scenario_latency_ms.unwrap_or(0);
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        f.error_rate > 0.0 && fastrand::f64() < f.error_rate
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
        let shared = Arc::new(Shared {
            vendors: Mutex::new(
                [(ProviderName::Argos, cfg.argos_api_key.clone())]
                    .into_iter()
                    .map(|(p, key)| {
                        (
                            p,
                            VendorState {
                                api_key: key,
                                key_valid: true,
                                faults: cfg.faults.clone(),
                                calls: VendorCalls::default(),
                            },
                        )
                    })
                    .collect(),
            ),
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
            },
        );
        let app = Router::new()
            .merge(argos::routes())
            .merge(intellicheck::routes())
            .route("/_admin/calls", get(admin_calls))
            .route("/_admin/credentials/{vendor}", post(admin_credentials))
            .route("/_admin/faults", put(admin_faults))
            .route("/_admin/health", get(|| async { "ok" }))
            // Vendors take images of several megabytes, base64-inflated.
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Emulator server failed");
            }
        });
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
    if u.error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return (StatusCode::BAD_REQUEST, "error_rate must be within 0-1").into_response();
    }
    let mut vendors = s.vendors.lock().expect("emulator state lock");
    for (p, v) in vendors.iter_mut() {
        if u.vendor.is_some_and(|want| want != *p) {
            continue;
        }
        if let Some(l) = u.latency_ms {
            v.faults.latency_ms = l;
        }
        if let Some(r) = u.error_rate {
            v.faults.error_rate = r;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
