//! The coordination store: what the replicas of a fleet share beyond the
//! broker and S3, in Redis (`[coordination] redis_url`).
//!
//! - Claims: before a vendor call a job takes a lease on its job_id
//!   ([`Claims`]); a second live copy of the job (a producer's retried
//!   publish, a redelivery while the first copy still runs) finds it held,
//!   waits, and then re-publishes the stored outcome instead of paying
//!   again. A crashed owner's lease expires by itself.
//! - Requeue counts: a job the worker itself had to put back (its outcome
//!   could not be published) is not one step closer to poison.
//! - Fleet heartbeats: each replica's state, shown by `status`.
//! - Vendor traffic ([`traffic`]): fleet-wide rate limits, a vendor's
//!   "blocked until" after a 429, spend budgets.
//!
//! Keys live under `<key_prefix>:<broker.prefix or "default">:`, so
//! deployments sharing a Redis (and test runs) do not meet. Nothing here
//! needs persistence: a Redis restart loses leases, which only reopens the
//! window they close, and heartbeats, which come back within seconds.

pub mod fleet;
pub mod traffic;

pub use fleet::{Heartbeat, VendorState};
pub use traffic::{
    CapChange, Overrides, RateSpec, Reservation, Spend, Spent, TrafficStore, Windows,
};

use crate::config::CoordinationConfig;
use crate::domain::job::JobId;
use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// The coordination store is unreachable or answered an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the coordination store (coordination.redis_url) failed: {0}")]
pub struct Unavailable(pub String);

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        // Redis errors name the command and the server's answer, never the
        // URL (which may hold a password).
        Unavailable(e.to_string())
    }
}

/// What an attempt to claim a job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours until it expires or is released.
    Acquired,
    /// Another owner holds it (its token).
    HeldBy(String),
}

/// Leases on job_ids, shared by every replica.
#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Takes the lease on `job_id` for `lease` if nobody holds it.
    async fn try_claim(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, Unavailable>;
    /// Extends our lease; false if it is no longer ours (it expired and
    /// someone else took it).
    async fn renew(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Unavailable>;
    /// Gives our lease up (nothing happens if it is no longer ours).
    async fn release(&self, job_id: &JobId, owner: &str) -> Result<(), Unavailable>;
}

#[derive(Clone)]
pub struct Coordination {
    conn: ConnectionManager,
    prefix: String,
}

/// Deletes the key only when it still holds our token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Extends the key's expiry only when it still holds our token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

impl Coordination {
    /// A client for `cfg.redis_url`, namespaced by `namespace` (the broker
    /// prefix). It connects lazily and reconnects by itself, so a Redis that
    /// is down at start delays work instead of stopping the worker.
    pub fn connect(cfg: &CoordinationConfig, namespace: &str) -> anyhow::Result<Coordination> {
        let client = redis::Client::open(cfg.redis_url.expose()).map_err(|e| {
            anyhow::anyhow!("coordination.redis_url is not a usable Redis URL: {e}")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.operation_timeout))
            .set_response_timeout(Some(cfg.operation_timeout))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot set up the coordination store: {e}"))?;
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        Ok(Coordination {
            conn,
            prefix: format!("{}:{namespace}:", cfg.key_prefix),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Round trip to Redis: start-up logs whether it answers.
    pub async fn ping(&self) -> Result<(), Unavailable> {
        let mut c = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }

    /// Counts one more requeue the worker itself caused for `job_id` (its
    /// outcome could not be published), remembered for `ttl`.
    pub async fn count_requeue(&self, job_id: &JobId, ttl: Duration) -> Result<u32, Unavailable> {
        let key = self.key("requeues", job_id.as_str());
        let mut c = self.conn.clone();
        let (n, _): (u32, bool) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .pexpire(&key, ttl.as_millis() as i64)
            .query_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Who holds the claim on `job_id` now, if anyone (the console's job lookup).
    pub async fn claim_holder(&self, job_id: &JobId) -> Result<Option<String>, Unavailable> {
        let mut c = self.conn.clone();
        Ok(c.get(self.key("claim", job_id.as_str())).await?)
    }

    /// Requeues the worker caused for `job_id` (0 when none is remembered).
    pub async fn requeues(&self, job_id: &JobId) -> Result<u32, Unavailable> {
        let mut c = self.conn.clone();
        let n: Option<u32> = c.get(self.key("requeues", job_id.as_str())).await?;
        Ok(n.unwrap_or(0))
    }
}

#[async_trait]
impl Claims for Coordination {
    async fn try_claim(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, Unavailable> {
        let key = self.key("claim", job_id.as_str());
        let mut c = self.conn.clone();
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(lease.as_millis() as u64));
        let set: Option<String> = c.set_options(&key, owner, opts).await?;
        if set.is_some() {
            return Ok(Claim::Acquired);
        }
        let holder: Option<String> = c.get(&key).await?;
        // Released between the two commands: try once more next round.
        Ok(Claim::HeldBy(holder.unwrap_or_default()))
    }

    async fn renew(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Unavailable> {
        let mut c = self.conn.clone();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(self.key("claim", job_id.as_str()))
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
    }

    async fn release(&self, job_id: &JobId, owner: &str) -> Result<(), Unavailable> {
        let mut c = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.key("claim", job_id.as_str()))
            .arg(owner)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}
