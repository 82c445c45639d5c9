//! The claim stage: a lease on the job_id in the coordination store, taken
//! before the stored-outcome lookup and held until the vendor's answer is
//! stored (docs/reliability.md#pay-once-the-results-store). Two live copies
//! of one job anywhere in the fleet cannot both reach the vendor: the second
//! waits for the first to finish, then finds its stored outcome. A crashed
//! owner's lease runs out by itself. Without a coordination store there is
//! no claim and pay-once is "look up, then call" (a concurrent duplicate may
//! be paid twice).

use super::failure::Failed;
use crate::coordination::{Claim, Claims, Unavailable};
use crate::domain::ProviderName;
use crate::domain::job::JobId;
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct ClaimStage {
    claims: Option<Arc<dyn Claims>>,
    lease: Duration,
    worker: String,
    metrics: Arc<Metrics>,
}

/// A claim we hold. Renewed in the background while it lives; released
/// when dropped (or left to expire if Redis cannot be reached then).
pub struct Held {
    claims: Arc<dyn Claims>,
    job_id: JobId,
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        let (claims, job_id, owner) =
            (self.claims.clone(), self.job_id.clone(), self.owner.clone());
        tokio::spawn(async move {
            if let Err(e) = claims.release(&job_id, &owner).await {
                tracing::warn!(error = %e, "Could not release the job's claim; it expires by itself");
            }
        });
    }
}

/// Why no claim was taken.
pub enum NotClaimed {
    /// Another copy held it until this delivery's deadline: the job waits on
    /// the ladder without spending its budget.
    Busy(Failed),
    /// The store is unreachable: waiting is safer than paying twice.
    Unavailable(Failed),
}

impl ClaimStage {
    pub fn new(
        claims: Option<Arc<dyn Claims>>,
        lease: Duration,
        worker: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClaimStage {
            claims,
            lease,
            worker,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.claims.is_some()
    }

    /// Takes the job's claim, waiting while another copy holds it (`Ok(None)`
    /// without a coordination store). The caller looks the stored outcome up
    /// after claiming: a copy it waited for has stored its answer by then.
    pub async fn claim(
        &self,
        job_id: &JobId,
        vendor: ProviderName,
        deadline: Instant,
    ) -> Result<Option<Held>, NotClaimed> {
        let Some(claims) = &self.claims else {
            return Ok(None);
        };
        let owner = format!("{}/{:016x}", self.worker, fastrand::u64(..));
        let mut wait = Duration::from_millis(50);
        let mut waited = false;
        let mut failures = 0u32;
        loop {
            match claims.try_claim(job_id, &owner, self.lease).await {
                Ok(Claim::Acquired) => return Ok(Some(self.hold(claims.clone(), job_id, owner))),
                Ok(Claim::HeldBy(holder)) => {
                    if !waited {
                        waited = true;
                        self.metrics.claim_wait();
                        tracing::info!(holder = %holder, "Another copy of this job holds its claim; waiting for it");
                    }
                    if Instant::now() + wait >= deadline {
                        return Err(NotClaimed::Busy(Failed::Park {
                            vendor,
                            reason: format!(
                                "another copy of this job (claim held by {holder}) was still working on it at this delivery's deadline; \
                                 it waits on the ladder and will find that copy's outcome"
                            ),
                        }));
                    }
                }
                Err(Unavailable(e)) => {
                    failures += 1;
                    if failures >= 3 || Instant::now() + wait >= deadline {
                        return Err(NotClaimed::Unavailable(Failed::transient(format!(
                            "the coordination store (coordination.redis_url) could not be reached to claim the job ({e}); \
                             the job waits rather than risk paying the vendor twice"
                        ))));
                    }
                    tracing::warn!(error = %e, "Could not claim the job, retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    fn hold(&self, claims: Arc<dyn Claims>, job_id: &JobId, owner: String) -> Held {
        let lease = self.lease;
        let renewer = {
            let (claims, job_id, owner) = (claims.clone(), job_id.clone(), owner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match claims.renew(&job_id, &owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                "The job's claim expired while it was being worked on; another copy may call the vendor too"
                            );
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "Could not renew the job's claim"),
                    }
                }
            })
        };
        Held {
            claims,
            job_id: job_id.clone(),
            owner,
            renewer,
        }
    }
}
