//! A verdict policy on a vendor's 0–100 score: where live ends and spoof
//! begins. Argos's document and face bands are configured with it.

use super::SignalVerdict;
use serde::Deserialize;

/// A verdict policy on a 0–100 score (Argos's `liveness_score`). The defaults follow
/// the vendor's published risk bands (docs/vendors.md): above 60 is low or very low
/// risk (live), 31–60 medium (review), 0–30 high (spoof).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    /// Scores strictly above this are live.
    pub live_above: f64,
    /// Scores at or below this are spoof; between the two, review.
    pub spoof_at_or_below: f64,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            live_above: 60.0,
            spoof_at_or_below: 30.0,
        }
    }
}

impl Bands {
    pub fn verdict(&self, score: f64) -> SignalVerdict {
        if score <= self.spoof_at_or_below {
            SignalVerdict::Spoof
        } else if score <= self.live_above {
            SignalVerdict::Review
        } else {
            SignalVerdict::Live
        }
    }
}
