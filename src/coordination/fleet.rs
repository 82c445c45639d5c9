//! Fleet heartbeats: every replica writes its state every few seconds
//! under its own key with an expiry, and indexes it in a sorted set by
//! time; readers (`status`, the operator console) take the ones seen recently.

use super::{Coordination, Unavailable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// One replica's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `<host>:<pid>` (or `worker.worker_id`).
    pub worker: String,
    /// RFC 3339.
    pub at: String,
    pub consuming: bool,
    pub draining: bool,
    pub concurrency: u32,
    pub in_flight: u32,
    pub vendors: Vec<VendorState>,
    /// Totals since the replica started (readers derive rates from
    /// successive reads).
    pub counters: Counters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Results published, by routing key.
    pub results: BTreeMap<String, u64>,
    /// Dead letters published, by failure class.
    pub dead_letters: BTreeMap<String, u64>,
    /// Deliveries taken from the jobs queue (absent from older replicas' heartbeats).
    #[serde(default)]
    pub received: u64,
    /// Jobs parked, by ladder step (0 = the first retry queue).
    #[serde(default)]
    pub parked: BTreeMap<u32, u64>,
    /// Jobs sent to the callback-wait queue (Argos callback mode).
    #[serde(default)]
    pub awaiting_callback: u64,
}

/// One vendor as one replica sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VendorState {
    pub vendor: String,
    pub in_flight: u32,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub breaker_open: bool,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    /// Traffic limits in force, when the vendor has any.
    pub limit: Option<serde_json::Value>,
    /// Spend budget and what is left, when the vendor has one.
    pub budget: Option<serde_json::Value>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Coordination {
    fn fleet_index(&self) -> String {
        format!("{}fleet", self.prefix)
    }

    /// Writes this replica's heartbeat, valid for `ttl`.
    pub async fn heartbeat(&self, hb: &Heartbeat, ttl: Duration) -> Result<(), Unavailable> {
        let key = self.key("fleet", &hb.worker);
        let body = serde_json::to_string(hb).expect("heartbeat serializes");
        let now = unix_ms(SystemTime::now());
        let mut c = self.conn.clone();
        redis::pipe()
            .atomic()
            .pset_ex(&key, body, ttl.as_millis() as u64)
            .ignore()
            .zadd(self.fleet_index(), &hb.worker, now)
            .ignore()
            // Index entries of replicas gone for a while.
            .zrembyscore(
                self.fleet_index(),
                0,
                now.saturating_sub(10 * ttl.as_millis() as u64),
            )
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// The heartbeats of every replica seen recently, by worker name.
    pub async fn heartbeats(&self) -> Result<Vec<Heartbeat>, Unavailable> {
        let mut c = self.conn.clone();
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.fleet_index())
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await?;
        if workers.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = workers.iter().map(|w| self.key("fleet", w)).collect();
        let bodies: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        let mut out: Vec<Heartbeat> = bodies
            .into_iter()
            .flatten()
            .filter_map(|b| serde_json::from_str(&b).ok())
            .collect();
        out.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(out)
    }
}
