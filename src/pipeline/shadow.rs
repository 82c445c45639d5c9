//! Shadow mode (docs/traffic.md#shadow-mode): a share of the jobs, chosen
//! by job_id, is also sent to a second vendor once its result is decided,
//! and the two answers are compared.
//!
//! The step keeps a shadowed job's images ([`ShadowRun`]) past its result;
//! the worker publishes and acks the result first, gives back the job's
//! worker slot, and only then runs [`Pipeline::shadow`]. So a shadow call
//! never changes, delays or blocks the result, and it is never retried on
//! the ladder: one that cannot be made now (its slots busy, its budget
//! spent, its vendor paused or at a traffic limit, a failure) is skipped
//! and counted. Its vendor's gate and traffic limits apply as to any call
//! to that vendor, and it has a budget of its own.

use super::Pipeline;
use super::call::{Bounds, Call};
use super::failure::{Failed, now_rfc3339};
use super::fetch::Reserved;
use crate::config::ShadowConfig;
use crate::coordination::{Spend, Windows};
use crate::domain::ProviderName;
use crate::domain::job::Job;
use crate::domain::shadow::{
    Agreement, PrimaryAnswer, SHADOW_SCHEMA, ShadowAnswer, ShadowComparison,
};
use crate::providers::{Image, Submission, VendorRequest};
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A budget found spent is asked again after this long (it may have been
/// raised), not at every shadowed job.
const SPENT_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) struct Shadow {
    cfg: ShadowConfig,
    /// `shadow.concurrency` permits.
    slots: Arc<Semaphore>,
    /// When this replica last found the shadow budget of a vendor spent.
    spent_at: Mutex<Vec<(ProviderName, Instant)>>,
}

impl Shadow {
    pub(super) fn new(cfg: ShadowConfig) -> Self {
        Shadow {
            slots: Arc::new(Semaphore::new(cfg.concurrency.max(1) as usize)),
            cfg,
            spent_at: Mutex::default(),
        }
    }
}

/// Whether `job_id` is among the `share` of jobs shadowed: the same answer
/// on every replica, every delivery and every version.
pub fn selected(job_id: &str, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    // FNV-1a, then a 64-bit finalizer so that ids differing in their last
    // character spread over the whole range.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// A shadowed job's images, kept past its result for the shadow call.
pub struct ShadowRun {
    vendor: ProviderName,
    job: Job,
    image: Image,
    back: Option<Image>,
    /// Their room in the image budget.
    reserved: Reserved,
    primary: Option<PrimaryAnswer>,
}

impl fmt::Debug for ShadowRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowRun")
            .field("vendor", &self.vendor)
            .field("job_id", &self.job.job_id)
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

impl ShadowRun {
    /// The answer the job's result published, to compare with.
    pub(super) fn answering(mut self, primary: PrimaryAnswer) -> Self {
        self.primary = Some(primary);
        self
    }
}

impl Pipeline {
    /// The vendor to shadow `job` with, when it is among the shadowed share
    /// and `answered_by` is not that vendor.
    pub(super) fn shadow_vendor(
        &self,
        job: &Job,
        answered_by: ProviderName,
    ) -> Option<ProviderName> {
        let cfg = &self.shadow.cfg;
        let vendor = cfg.vendor(job.check)?;
        (vendor != answered_by
            && self.vendors.get(vendor).is_some()
            && selected(job.job_id.as_str(), cfg.share))
        .then_some(vendor)
    }

    /// Keeps a shadowed job's images for its shadow call.
    pub(super) fn keep_for_shadow(
        &self,
        vendor: ProviderName,
        job: &Job,
        image: Image,
        back: Option<Image>,
        reserved: Reserved,
    ) -> ShadowRun {
        ShadowRun {
            vendor,
            job: job.clone(),
            image,
            back,
            reserved,
            primary: None,
        }
    }

    /// Sends a shadowed job to its shadow vendor and compares the answers;
    /// None when the call was skipped (counted, and logged when it failed).
    pub async fn shadow(
        &self,
        run: ShadowRun,
        stop: &CancellationToken,
    ) -> Option<ShadowComparison> {
        let vendor = run.vendor;
        let skip = |reason: &'static str| {
            self.metrics.shadow_skipped(vendor, reason);
            None
        };
        let Some(primary) = run.primary.clone() else {
            return skip("failed");
        };
        let Ok(_slot) = self.shadow.slots.clone().try_acquire_owned() else {
            return skip("busy");
        };
        let provider = self.vendors.get(vendor)?.clone();
        if self.vendors.unavailable(vendor).is_some() {
            return skip("unavailable");
        }
        let limit = provider
            .max_image_bytes()
            .map_or(self.cfg.max_image_bytes, |l| {
                l.min(self.cfg.max_image_bytes)
            });
        if run.image.bytes.len() as u64 > limit {
            return skip("image");
        }
        if self.shadow.cfg.has_budget() && !self.shadow_budget(vendor).await {
            return skip("budget");
        }
        let deadline = Instant::now() + self.shadow.cfg.timeout;
        let ShadowRun {
            job,
            image,
            mut back,
            reserved: _reserved,
            ..
        } = run;
        // The kept images have their room; the shadow vendor's encoded
        // copies, and a back image the job's vendor did not use, need more.
        let fetch_back = provider.uses_back_image() && back.is_none();
        let back_uri = job.back_image.as_ref().filter(|_| fetch_back);
        let copy = |n: u64| provider.encoded_copy_bytes(n);
        let extra = copy(image.bytes.len() as u64)
            + back.as_ref().map_or(0, |b| copy(b.bytes.len() as u64))
            + back_uri.map_or(0, |_| limit + copy(limit));
        let _more = match self.fetch.reserve(extra, deadline, stop).await {
            Ok(r) => r,
            Err(Failed::Abandoned) => return skip("shutdown"),
            Err(_) => return skip("memory"),
        };
        if !provider.uses_back_image() {
            back = None;
        } else if let Some(uri) = back_uri {
            match self.fetch.fetch("back_image", uri, limit, deadline).await {
                Ok(b) => back = Some(b),
                Err(_) => return skip("failed"),
            }
        }
        let req = VendorRequest {
            job_id: &job.job_id,
            check: job.check,
            signals: &job.signals,
            image: &image,
            back_image: back.as_ref(),
            metadata: job.metadata.as_deref(),
        };
        let mut log = Vec::new();
        let started = Instant::now();
        let answer = self
            .vendors
            .call(
                provider.as_ref(),
                &req,
                Bounds {
                    deadline,
                    earlier_attempts: 0,
                    stop,
                },
                &mut log,
                Call::Verify,
                None,
            )
            .await;
        let vendor_ms = started.elapsed().as_millis() as u64;
        let a = match answer {
            Ok(Submission::Answered(a)) => a,
            Ok(Submission::Accepted(_)) => return skip("failed"),
            Err(Failed::Abandoned) => return skip("shutdown"),
            Err(Failed::Park { reason, .. }) => {
                tracing::info!(vendor = %vendor, reason = %reason, "Shadow call skipped: its vendor cannot take it now");
                // Paused by this very call (its credentials refused), or
                // held back by its traffic limits.
                let paused = self.vendors.unavailable(vendor).is_some();
                return skip(if paused { "unavailable" } else { "limit" });
            }
            Err(Failed::Permanent { failure, .. } | Failed::Transient(failure)) => {
                tracing::warn!(vendor = %vendor, class = %failure.class, error = %failure.message, attempts = log.len(), "Shadow call failed; the job's result stands, no comparison is published");
                return skip("failed");
            }
        };
        let (verdict, score) = (a.verdict(), a.score());
        let agreement = Agreement::of(&primary, verdict, score);
        self.metrics
            .shadow_compared(job.check, primary.provider, vendor, agreement);
        Some(ShadowComparison {
            schema: SHADOW_SCHEMA.into(),
            job_id: job.job_id.clone(),
            check: job.check,
            metadata: job.metadata.clone(),
            primary,
            shadow: ShadowAnswer {
                provider: vendor,
                verdict,
                score,
                signals: a.signals,
                reasons: a.reasons,
                warnings: a.warnings,
                vendor: a.vendor,
                attempts: log.len() as u32,
                vendor_ms,
            },
            agreement,
            image: super::fetch::image_info(&image),
            completed_at: now_rfc3339(),
        })
    }

    /// Takes one unit of the shadow budget of `vendor` (fleet-wide, named
    /// `shadow-<vendor>`); false when it is spent or cannot be asked.
    async fn shadow_budget(&self, vendor: ProviderName) -> bool {
        {
            let spent = self.shadow.spent_at.lock().expect("shadow state");
            if spent
                .iter()
                .any(|(v, at)| *v == vendor && at.elapsed() < SPENT_RECHECK)
            {
                return false;
            }
        }
        let cfg = &self.shadow.cfg;
        let name = format!("shadow-{vendor}");
        let spend = self
            .vendors
            .traffic()
            .spend_named(&name, &Windows::now(), cfg.daily_budget, cfg.monthly_budget)
            .await;
        let mut spent = self.shadow.spent_at.lock().expect("shadow state");
        spent.retain(|(v, _)| *v != vendor);
        match spend {
            Ok(Spend::Taken(_)) => true,
            Ok(Spend::Exhausted(s)) => {
                tracing::info!(vendor = %vendor, day = s.day, month = s.month, "The shadow budget is spent: jobs are not shadowed until the window turns (shadow.daily_budget, shadow.monthly_budget)");
                spent.push((vendor, Instant::now()));
                false
            }
            Err(e) => {
                tracing::warn!(vendor = %vendor, error = %e, "The coordination store could not be asked for the shadow budget; the job is not shadowed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_by_job_id_and_close_to_the_share() {
        assert!(!selected("a", 0.0));
        assert!(selected("a", 1.0));
        for share in [0.01, 0.1, 0.5] {
            let n = (0..20_000)
                .filter(|i| selected(&format!("kyc-{i}:front"), share))
                .count();
            let got = n as f64 / 20_000.0;
            assert!(
                (got - share).abs() < share * 0.15 + 0.002,
                "share {share}: {got}"
            );
        }
        // Pinned: the same jobs on every replica and version (the figures
        // are from an independent implementation of the same hash).
        let picked: Vec<_> = (0..40)
            .filter(|i| selected(&format!("job-{i}"), 0.25))
            .collect();
        assert_eq!(picked, [3, 9, 15, 23, 26, 28, 29, 37]);
        // A larger share keeps every job a smaller one picked.
        for i in 0..1000 {
            let id = format!("j{i}");
            if selected(&id, 0.1) {
                assert!(selected(&id, 0.3));
            }
        }
    }
}
