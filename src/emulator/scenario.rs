//! Scenario control (docs/emulator.md#scenarios): a JSON object stored in the image itself,
//! in a PNG `tEXt` chunk with keyword `liveness-scenario` or a JPEG COM
//! segment `liveness-scenario=<json>`.

use crate::samples::SCENARIO_KEYWORD;
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Common-scale scores 0–100 (fractions allowed).
    pub screen_replay: Option<f64>,
    pub printed_copy: Option<f64>,
    pub portrait_substitution: Option<f64>,
    pub face: Option<f64>,
    #[serde(default)]
    pub no_face: bool,
    /// A vendor error: Argos error code, Didit/Intellicheck HTTP status.
    pub error: Option<i64>,
    /// Answer `error` only for the first N calls with this image.
    pub error_times: Option<u32>,
    #[serde(default)]
    pub not_performed: Vec<String>,
    /// Didit risk codes, each `CODE` (its documented severity) or
    /// `CODE:log_type` (information, warning or error).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub latency_ms: Option<u64>,
    /// Didit's workflow report shape: a status (`Approved`, `Declined`,
    /// `In Review`, `Not Finished`) and a method (`ACTIVE_3D`, `FLASHING`,
    /// `PASSIVE`) instead of the standalone ones; either key also adds the
    /// workflow-only fields (`reference_image`, `video_url`,
    /// `age_estimation`, `matches`).
    pub didit_status: Option<String>,
    pub didit_method: Option<String>,
}

/// The image's scenario: None when it carries none, Some(Err) when it
/// carries one that does not parse (the emulator answers that loudly).
pub fn extract(bytes: &[u8]) -> Option<Result<Scenario, String>> {
    let text = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_text(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_comment(bytes)
    } else {
        None
    }?;
    Some(serde_json::from_slice(text).map_err(|e| format!("invalid liveness-scenario: {e}")))
}

fn png_text(bytes: &[u8]) -> Option<&[u8]> {
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().ok()?) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = bytes.get(pos + 8..pos + 8 + len)?;
        if kind == b"tEXt"
            && let Some(text) = data
                .strip_prefix(SCENARIO_KEYWORD.as_bytes())
                .and_then(|r| r.strip_prefix(b"\0"))
        {
            return Some(text);
        }
        if kind == b"IDAT" || kind == b"IEND" {
            return None;
        }
        pos += 12 + len;
    }
    None
}

fn jpeg_comment(bytes: &[u8]) -> Option<&[u8]> {
    let mut pos = 2;
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return None;
        }
        let marker = bytes[pos + 1];
        // Start of scan: entropy-coded data follows, no more headers.
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        let data = bytes.get(pos + 4..pos + 2 + len)?;
        if marker == 0xFE
            && let Some(text) = data
                .strip_prefix(SCENARIO_KEYWORD.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
        {
            return Some(text);
        }
        pos += 2 + len;
    }
    None
}

/// A score as the vendors write it: `95`, not `95.0`, when it is whole.
pub fn vendor_number(v: f64) -> serde_json::Number {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        serde_json::Number::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).expect("finite score")
    }
}

/// A deterministic common-scale score (0–100, two decimals) derived from
/// the image's SHA-256, one per signal index.
pub fn hash_score(sha256: &[u8; 32], index: usize) -> f64 {
    let i = (index * 2) % 32;
    let v = u16::from_be_bytes([sha256[i], sha256[i + 1]]) as u32;
    (v % 10_001) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_scenario_is_reported() {
        let p = crate::samples::png(1, 100, Some("{not json"));
        assert!(extract(&p).unwrap().is_err());
        let p = crate::samples::png(1, 100, Some(r#"{"unknown_key":1}"#));
        assert!(extract(&p).unwrap().is_err());
    }

    #[test]
    fn hash_scores_are_in_range_and_stable() {
        let h = [0xFFu8; 32];
        assert_eq!(hash_score(&h, 0), (65535 % 10001) as f64 / 100.0);
        for i in 0..40 {
            let s = hash_score(&[i as u8; 32], i);
            assert!((0.0..=100.0).contains(&s));
        }
    }
}
