//! The job domain: message contracts (docs/messages.md), verdict rules and the
//! vendor-neutral assessment every adapter produces. Pure data and rules:
//! nothing here performs I/O or names a broker, S3 or HTTP type.

pub mod assessment;
pub mod bands;
pub mod carried;
pub mod dead_letter;
pub mod image;
pub mod job;
pub mod result;
pub mod routing;
pub mod shadow;
pub mod text;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of presentation-attack check a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Document,
    Face,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Document => "document",
            Check::Face => "face",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "document" => Some(Check::Document),
            "face" => Some(Check::Face),
            _ => None,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signal: one attack type a vendor scores.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SignalName {
    ScreenReplay,
    PrintedCopy,
    PortraitSubstitution,
    FaceLiveness,
}

impl SignalName {
    /// The document signals, in the order results list them.
    pub const DOCUMENT: [SignalName; 3] = [
        SignalName::ScreenReplay,
        SignalName::PrintedCopy,
        SignalName::PortraitSubstitution,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::ScreenReplay => "screen_replay",
            SignalName::PrintedCopy => "printed_copy",
            SignalName::PortraitSubstitution => "portrait_substitution",
            SignalName::FaceLiveness => "face_liveness",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            SignalName::ScreenReplay,
            SignalName::PrintedCopy,
            SignalName::PortraitSubstitution,
            SignalName::FaceLiveness,
        ]
        .into_iter()
        .find(|n| n.as_str() == s)
    }

    pub fn is_document(self) -> bool {
        self != SignalName::FaceLiveness
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The vendors (adapter names) a job may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    Argos,
    Intellicheck,
    Didit,
}

impl ProviderName {
    pub const ALL: [ProviderName; 3] = [
        ProviderName::Argos,
        ProviderName::Intellicheck,
        ProviderName::Didit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Argos => "argos",
            ProviderName::Intellicheck => "intellicheck",
            ProviderName::Didit => "didit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job-level verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Live,
    Spoof,
    Review,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Live => "live",
            Verdict::Spoof => "spoof",
            Verdict::Review => "review",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalVerdict {
    Live,
    Spoof,
    Review,
    NotPerformed,
}

impl SignalVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalVerdict::Live => "live",
            SignalVerdict::Spoof => "spoof",
            SignalVerdict::Review => "review",
            SignalVerdict::NotPerformed => "not_performed",
        }
    }
}

/// Which side of a document a signal scored (only for vendors that score sides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Front,
    Back,
}

/// How one vendor attempt ended, as the audit trail and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The vendor answered: a verdict, or an acceptance in callback mode.
    Ok,
    /// A failure worth another attempt (throttling, the vendor failing to
    /// process, no answer, a 5xx).
    Transient,
    /// The vendor says our request was wrong.
    Rejected,
    /// The vendor refused our credentials.
    Credentials,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::Credentials => "credentials",
        }
    }
}

#[cfg(test)]
mod properties;
