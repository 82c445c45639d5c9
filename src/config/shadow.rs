//! Shadow mode (`[shadow]`, docs/traffic.md#shadow-mode): a share of the
//! jobs is also sent to a second vendor, and the two answers are compared.
//! Off by default.

use super::{Problems, de};
use crate::domain::{Check, ProviderName};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Share of the jobs shadowed, chosen by job_id (the same jobs on every
    /// replica and every delivery); 0: off.
    pub share: f64,
    /// The shadow vendor of document checks; None: none.
    #[serde(deserialize_with = "optional_vendor")]
    pub document: Option<ProviderName>,
    /// The shadow vendor of face checks; None: none.
    #[serde(deserialize_with = "optional_vendor")]
    pub face: Option<ProviderName>,
    /// Shadow calls in flight per replica; a shadowed job that finds them
    /// all busy is not shadowed.
    pub concurrency: u32,
    /// The longest a shadow call (its waits and in-process retries) takes.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Shadow calls per UTC day, fleet-wide; 0: no budget.
    pub daily_budget: u64,
    /// Shadow calls per UTC month, fleet-wide; 0: no budget.
    pub monthly_budget: u64,
}

fn optional_vendor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderName>, D::Error> {
    let s: Option<String> = de::optional(d)?;
    s.map(|s| {
        ProviderName::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown vendor {s:?}: expected argos, intellicheck or didit (or \"\" for none)"
            ))
        })
    })
    .transpose()
}

impl ShadowConfig {
    /// Whether any job is shadowed.
    pub fn enabled(&self) -> bool {
        self.share > 0.0 && (self.document.is_some() || self.face.is_some())
    }

    /// The shadow vendor of a check.
    pub fn vendor(&self, check: Check) -> Option<ProviderName> {
        match check {
            Check::Document => self.document,
            Check::Face => self.face,
        }
    }

    pub fn has_budget(&self) -> bool {
        self.daily_budget > 0 || self.monthly_budget > 0
    }

    pub(super) fn validate(&self, p: &mut Problems) {
        p.check(
            self.share.is_finite() && (0.0..=1.0).contains(&self.share),
            || format!("shadow.share must be within [0, 1], got {}", self.share),
        );
        p.check(
            self.share == 0.0 || self.document.is_some() || self.face.is_some(),
            || {
                "shadow.share is above 0 but neither shadow.document nor shadow.face names a vendor"
                    .into()
            },
        );
        for (check, v) in [(Check::Document, self.document), (Check::Face, self.face)] {
            if let Some(v) = v {
                p.check(v.can_do(check), || {
                    format!("shadow.{check} cannot be {v}: it does not do {check} checks")
                });
            }
        }
        p.check((1..=1024).contains(&self.concurrency), || {
            format!(
                "shadow.concurrency must be 1-1024, got {}",
                self.concurrency
            )
        });
        p.check(
            self.timeout >= Duration::from_secs(1) && self.timeout <= Duration::from_secs(600),
            || "shadow.timeout must be 1s-10m".into(),
        );
        super::traffic::budget_windows(p, "shadow.", self.daily_budget, self.monthly_budget);
    }
}
