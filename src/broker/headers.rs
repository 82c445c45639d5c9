//! The AMQP headers the worker owns, encoded and decoded here and nowhere
//! else (docs/messages.md#worker-owned-headers).
//!
//! A job that leaves a delivery without being finished (onto the delay
//! ladder, into the callback wait) travels as a new message, so its
//! progress ([`Carried`]) rides in `x-liveness-*` headers. The replay
//! headers record `replay`'s work and follow the job onto its next dead
//! letter. The broker's own headers (`x-delivery-count`, `x-death`) are
//! never copied onto a message the worker publishes.
//!
//! The progress headers are authenticated: an HMAC-SHA256 over their values
//! and the body's digest, with a key every replica shares
//! (`broker.state_secret`), in `x-liveness-state-mac`. A producer cannot
//! set them (a fresh job that claims to be awaiting its callback, or to have
//! used its budget), nor move them onto another body: a message whose
//! progress does not verify is a fresh job.

use crate::domain::carried::Carried;
use hmac::{Hmac, Mac};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use sha2::{Digest, Sha256};

pub const H_ATTEMPTS: &str = "x-liveness-attempts";
pub const H_LADDER_STEP: &str = "x-liveness-ladder-step";
pub const H_FIRST_RECEIVED: &str = "x-liveness-first-received-at";
/// Argos callback mode: submissions made so far, and whether this message is
/// the job coming back from the callback wait.
pub const H_CALLBACK_SUBMISSIONS: &str = "x-liveness-callback-submissions";
pub const H_AWAITING_CALLBACK: &str = "x-liveness-awaiting-callback";
/// Set by `replay`: how many times the job was replayed, and when last.
pub const H_REPLAYS: &str = "x-liveness-replays";
pub const H_REPLAYED_AT: &str = "x-liveness-replayed-at";
/// Set by `resend` on a result published again from the results store.
pub const H_RESENT: &str = "x-liveness-resent";
pub const H_RESENT_AT: &str = "x-liveness-resent-at";
/// Set by `reverify` on a job enqueued again for a deliberate second call.
pub const H_REVERIFY_REASON: &str = "x-liveness-reverify-reason";
pub const H_REVERIFIED_AT: &str = "x-liveness-reverified-at";
/// The HMAC that authenticates the progress headers.
pub const H_STATE_MAC: &str = "x-liveness-state-mac";

/// The key of the progress headers' HMAC.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey([redacted])")
    }
}

impl StateKey {
    /// `broker.state_secret`, or a key derived from `broker.url` when it is
    /// empty (every replica has the URL; a producer with other credentials
    /// does not).
    pub fn from_config(c: &crate::config::BrokerConfig) -> StateKey {
        let material = if c.state_secret.is_empty() {
            format!(
                "liveness-worker state key from broker.url\n{}",
                c.url.expose()
            )
        } else {
            format!("liveness-worker state key\n{}", c.state_secret.expose())
        };
        StateKey(Sha256::digest(material.as_bytes()).into())
    }

    /// A key from a seed, for tests and the fuzz targets (fuzz/).
    #[doc(hidden)]
    pub fn for_tests(seed: &str) -> StateKey {
        StateKey(Sha256::digest(seed.as_bytes()).into())
    }

    fn mac(&self, c: &Carried, body: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        m.update(
            format!(
                "liveness-state-v1\n{}\n{}\n{}\n{}\n{}\n",
                c.attempts,
                c.ladder_step,
                c.first_received_at.as_deref().unwrap_or(""),
                c.callback_submissions,
                c.awaiting_callback
            )
            .as_bytes(),
        );
        m.update(&Sha256::digest(body));
        m
    }
}

/// Whether a message's progress headers could be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// None: a job as a producer sent it.
    Fresh,
    /// Written by a worker for this body.
    Verified,
    /// Present but not verifiable (set by a producer, moved to another body,
    /// or written under another key): ignored.
    Refused,
}

/// The broker's delivery counter on quorum queues.
const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers the broker sets on delivery or dead-lettering.
fn broker_owned(key: &str) -> bool {
    key == H_DELIVERY_COUNT
        || key.starts_with("x-death")
        || key.starts_with("x-first-death")
        || key.starts_with("x-last-death")
}

/// Headers the operator commands set on a job (`replay`, `reverify`):
/// carried along with the job, never taken for progress.
fn replay_header(key: &str) -> bool {
    key == H_REPLAYS || key == H_REPLAYED_AT || key == H_REVERIFY_REASON || key == H_REVERIFIED_AT
}

/// Every `x-liveness-*` header is the worker's: the progress headers and the
/// replay headers.
fn worker_owned(key: &str) -> bool {
    key.starts_with("x-liveness-")
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        _ => return None,
    })
}

/// A counter header as u32; negative or unreadable values read as absent.
fn as_u32(v: &AMQPValue) -> Option<u32> {
    u32::try_from(as_i64(v)?).ok()
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `x-delivery-count`: earlier deliveries of this message (0 when absent).
pub fn delivery_count(props: &BasicProperties) -> u32 {
    header(props, H_DELIVERY_COUNT)
        .and_then(as_u32)
        .unwrap_or(0)
}

/// The progress a message carries, if a worker wrote it for this `body`;
/// otherwise a fresh job's (and why).
pub fn carried(props: &BasicProperties, key: &StateKey, body: &[u8]) -> (Carried, Provenance) {
    let present = props
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().keys().any(|k| progress_header(k.as_str())));
    if !present {
        return (Carried::default(), Provenance::Fresh);
    }
    let c = read_progress(props);
    let given = header(props, H_STATE_MAC)
        .and_then(as_text)
        .and_then(|t| hex::decode(t).ok());
    match given {
        Some(tag) if key.mac(&c, body).verify_slice(&tag).is_ok() => (c, Provenance::Verified),
        _ => (Carried::default(), Provenance::Refused),
    }
}

/// The progress headers (the MAC included): every worker-owned header but
/// the replay ones.
fn progress_header(key: &str) -> bool {
    worker_owned(key) && !replay_header(key)
}

fn read_progress(props: &BasicProperties) -> Carried {
    let count = |name| header(props, name).and_then(as_u32).unwrap_or(0);
    Carried {
        attempts: count(H_ATTEMPTS),
        ladder_step: count(H_LADDER_STEP),
        first_received_at: header(props, H_FIRST_RECEIVED).and_then(as_text),
        callback_submissions: count(H_CALLBACK_SUBMISSIONS),
        awaiting_callback: matches!(
            header(props, H_AWAITING_CALLBACK),
            Some(AMQPValue::Boolean(true))
        ),
    }
}

/// The producer's own headers: everything but the broker's and the worker's.
fn producer_headers(props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if !broker_owned(k.as_str()) && !worker_owned(k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The replay headers of a job's properties, for the messages it becomes.
pub fn replay_headers(props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if replay_header(k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Replays the message carried before (0 when none or unreadable;
/// saturating).
pub fn replays(props: &BasicProperties) -> u32 {
    header(props, H_REPLAYS)
        .and_then(as_i64)
        .map_or(0, |n| n.clamp(0, u32::MAX.into()) as u32)
}

/// The job's own properties for republishing it (persistent, JSON when it
/// said nothing), with `headers`.
fn republished(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = original.clone().with_headers(headers).with_delivery_mode(2);
    if original.content_type().is_none() {
        p = p.with_content_type("application/json".into());
    }
    p
}

/// Properties for putting a job (`body`) back on its way (delay ladder,
/// callback wait): the producer's own properties and headers, its replay
/// headers, and `carried`, authenticated with `key`.
pub fn with_progress(
    original: &BasicProperties,
    carried: &Carried,
    key: &StateKey,
    body: &[u8],
) -> BasicProperties {
    let mut headers = producer_headers(original);
    for (k, v) in replay_headers(original).inner() {
        headers.insert(k.clone(), v.clone());
    }
    headers.insert(
        H_ATTEMPTS.into(),
        AMQPValue::LongLongInt(carried.attempts.into()),
    );
    headers.insert(
        H_LADDER_STEP.into(),
        AMQPValue::LongLongInt(carried.ladder_step.into()),
    );
    if let Some(t) = &carried.first_received_at {
        headers.insert(
            H_FIRST_RECEIVED.into(),
            AMQPValue::LongString(t.as_str().into()),
        );
    }
    if carried.callback_submissions > 0 {
        headers.insert(
            H_CALLBACK_SUBMISSIONS.into(),
            AMQPValue::LongLongInt(carried.callback_submissions.into()),
        );
    }
    if carried.awaiting_callback {
        headers.insert(H_AWAITING_CALLBACK.into(), AMQPValue::Boolean(true));
    }
    let tag = hex::encode(key.mac(carried, body).finalize().into_bytes());
    headers.insert(H_STATE_MAC.into(), AMQPValue::LongString(tag.into()));
    republished(original, headers)
}

/// Headers of a replayed job: `base` (the producer's own, or none) plus the
/// replay count one above `original`'s and the replay time. No progress
/// header: the job starts a fresh retry budget.
pub fn replayed(original: &BasicProperties, keep_producer: bool, at: &str) -> FieldTable {
    let mut headers = if keep_producer {
        producer_headers(original)
    } else {
        FieldTable::default()
    };
    headers.insert(
        H_REPLAYS.into(),
        AMQPValue::LongLongInt(i64::from(replays(original)) + 1),
    );
    headers.insert(H_REPLAYED_AT.into(), AMQPValue::LongString(at.into()));
    headers
}

/// A poison message's own properties for replaying it, with `headers`.
pub fn replay_props(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    republished(original, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverify_headers_are_not_progress() {
        let p = props(&[
            (H_REVERIFY_REASON, AMQPValue::LongString("why".into())),
            (H_REVERIFIED_AT, AMQPValue::LongString("t".into())),
        ]);
        let (_, provenance) = carried(&p, &StateKey::for_tests("k"), b"{}");
        assert!(matches!(provenance, Provenance::Fresh));
        assert_eq!(replay_headers(&p).inner().len(), 2, "carried along");
    }

    fn props(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(h)
    }

    fn keys(p: &BasicProperties) -> Vec<String> {
        let mut k: Vec<String> = p
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default();
        k.sort();
        k
    }

    #[test]
    fn progress_round_trips_through_the_headers() {
        let c = Carried {
            attempts: 3,
            ladder_step: 2,
            first_received_at: Some("2026-12-07T10:00:00.000Z".into()),
            callback_submissions: 1,
            awaiting_callback: true,
        };
        let key = StateKey::for_tests("k");
        let p = with_progress(&BasicProperties::default(), &c, &key, b"body");
        assert_eq!(
            carried(&p, &key, b"body"),
            (c.clone(), Provenance::Verified)
        );
        assert_eq!(
            carried(&p, &key, b"another body").1,
            Provenance::Refused,
            "bound to the body"
        );
        assert_eq!(
            carried(&p, &StateKey::for_tests("other"), b"body").1,
            Provenance::Refused,
            "bound to the key"
        );
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
    }

    #[test]
    fn republishing_keeps_the_producers_and_replays_but_not_the_brokers() {
        let original = props(&[
            ("tenant", AMQPValue::LongString("acme".into())),
            (H_DELIVERY_COUNT, AMQPValue::LongInt(4)),
            ("x-death", AMQPValue::Void),
            (H_ATTEMPTS, AMQPValue::LongLongInt(9)),
            (H_AWAITING_CALLBACK, AMQPValue::Boolean(true)),
            (H_REPLAYS, AMQPValue::LongInt(2)),
        ]);
        let key = StateKey::for_tests("k");
        let p = with_progress(&original, &Carried::default(), &key, b"b");
        assert_eq!(
            keys(&p),
            ["tenant", H_ATTEMPTS, H_LADDER_STEP, H_REPLAYS, H_STATE_MAC],
            "the old progress is replaced, not merged"
        );
        assert_eq!(
            carried(&p, &key, b"b"),
            (Carried::default(), Provenance::Verified)
        );
        assert_eq!(replays(&p), 2);
    }

    #[test]
    fn replay_drops_every_worker_and_broker_header_and_counts_on() {
        let original = props(&[
            ("tenant", AMQPValue::LongString("acme".into())),
            (H_DELIVERY_COUNT, AMQPValue::LongInt(4)),
            (H_ATTEMPTS, AMQPValue::LongLongInt(9)),
            (H_CALLBACK_SUBMISSIONS, AMQPValue::LongLongInt(2)),
            (H_AWAITING_CALLBACK, AMQPValue::Boolean(true)),
            (H_REPLAYS, AMQPValue::LongInt(2)),
        ]);
        let p = replay_props(&original, replayed(&original, true, "now"));
        assert_eq!(keys(&p), ["tenant", H_REPLAYED_AT, H_REPLAYS]);
        assert_eq!(replays(&p), 3);
        let key = StateKey::for_tests("k");
        assert_eq!(
            carried(&p, &key, b""),
            (Carried::default(), Provenance::Fresh)
        );
        let fresh = replayed(&original, false, "now");
        assert_eq!(fresh.inner().len(), 2);
    }

    #[test]
    fn forged_progress_is_a_fresh_job() {
        let key = StateKey::for_tests("k");
        let forged = props(&[
            (H_ATTEMPTS, AMQPValue::LongLongInt(99)),
            (H_AWAITING_CALLBACK, AMQPValue::Boolean(true)),
            (H_STATE_MAC, AMQPValue::LongString("00".into())),
        ]);
        assert_eq!(
            carried(&forged, &key, b"{}"),
            (Carried::default(), Provenance::Refused)
        );
        let unsigned = props(&[(H_LADDER_STEP, AMQPValue::LongLongInt(7))]);
        assert_eq!(carried(&unsigned, &key, b"{}").1, Provenance::Refused);
    }

    #[test]
    fn odd_values_read_as_absent() {
        let p = props(&[
            (H_ATTEMPTS, AMQPValue::LongLongInt(-5)),
            (H_LADDER_STEP, AMQPValue::LongLongInt(i64::MAX)),
            (H_FIRST_RECEIVED, AMQPValue::Boolean(true)),
            (H_AWAITING_CALLBACK, AMQPValue::LongInt(1)),
            (H_DELIVERY_COUNT, AMQPValue::LongString("7".into())),
        ]);
        assert_eq!(read_progress(&p), Carried::default());
        assert_eq!(delivery_count(&p), 0);
    }
}
