//! A setting that must never be printed.

use anyhow::Context as _;
use serde::Deserialize;
use std::fmt;

/// A value that must never be printed: Debug and Display show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::de::lenient_string(d).map(Secret)
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
    pub(super) fn resolve(&mut self, key: &str) -> anyhow::Result<()> {
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
