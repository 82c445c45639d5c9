//! Deserializers for settings that arrive as text: environment values are
//! typed by figment (`LIVENESS_S3__REGION=123` arrives as a number), and an
//! empty string means "not set" for optional addresses and URLs.

use serde::Deserialize;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// Any scalar, as text.
pub fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(n) => n.to_string(),
        Scalar::U(n) => n.to_string(),
        Scalar::F(n) => n.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// A value parsed from its text form (a URL, a socket address).
pub fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = lenient_string(d)?;
    s.trim()
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("{e} (got {s:?})")))
}

/// Like [`parsed`], with the empty string meaning "not set".
pub fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = lenient_string(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e} (got {s:?})")))
}

/// An http(s) URL, or the empty string for "not set".
pub fn optional_http_url<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<url::Url>, D::Error> {
    optional::<_, url::Url>(d)?
        .map(require_http)
        .transpose()
        .map_err(serde::de::Error::custom)
}

fn require_http(u: url::Url) -> Result<url::Url, String> {
    match u.scheme() {
        "http" | "https" if u.host().is_some() => Ok(u),
        _ => Err(format!("must be an http(s) URL with a host, got {u}")),
    }
}

pub fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|s| s.into_inner()).collect())
}
