//! The worker-owned header codec (`broker::headers`): decoding arbitrary
//! headers never panics and never accepts progress the fuzzer could not
//! sign; `carried(with_progress(c)) == c` for the body and key it was
//! written for, and nothing else; the producer's and replay headers
//! survive, the broker's do not; replay counts on, saturating.
#![no_main]
use arbitrary::Arbitrary;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use libfuzzer_sys::fuzz_target;
use liveness_worker::broker::headers::{
    self as h, Provenance, StateKey, carried, delivery_count, replay_headers, replay_props,
    replayed, replays, with_progress,
};
use liveness_worker::domain::carried::Carried;

#[derive(Arbitrary, Debug)]
enum Key {
    Attempts,
    LadderStep,
    FirstReceived,
    CallbackSubmissions,
    AwaitingCallback,
    Replays,
    ReplayedAt,
    StateMac,
    DeliveryCount,
    Death,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F64(f64),
    Timestamp(u64),
    Long(Vec<u8>),
    Short(String),
    Void,
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Key, Value)>,
    content_type: Option<String>,
    attempts: u32,
    ladder_step: u32,
    first_received_at: Option<String>,
    callback_submissions: u32,
    awaiting_callback: bool,
    seed: String,
    body: Vec<u8>,
    other_body: Vec<u8>,
}

fn key_name(k: &Key) -> String {
    match k {
        Key::Attempts => h::H_ATTEMPTS.into(),
        Key::LadderStep => h::H_LADDER_STEP.into(),
        Key::FirstReceived => h::H_FIRST_RECEIVED.into(),
        Key::CallbackSubmissions => h::H_CALLBACK_SUBMISSIONS.into(),
        Key::AwaitingCallback => h::H_AWAITING_CALLBACK.into(),
        Key::Replays => h::H_REPLAYS.into(),
        Key::ReplayedAt => h::H_REPLAYED_AT.into(),
        Key::StateMac => h::H_STATE_MAC.into(),
        Key::DeliveryCount => "x-delivery-count".into(),
        Key::Death => "x-death".into(),
        // AMQP short strings hold at most 255 bytes.
        Key::Other(s) => s.chars().take(60).collect(),
    }
}

fn value(v: &Value) -> AMQPValue {
    match v {
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::I8(n) => AMQPValue::ShortShortInt(*n),
        Value::U8(n) => AMQPValue::ShortShortUInt(*n),
        Value::I16(n) => AMQPValue::ShortInt(*n),
        Value::U16(n) => AMQPValue::ShortUInt(*n),
        Value::I32(n) => AMQPValue::LongInt(*n),
        Value::U32(n) => AMQPValue::LongUInt(*n),
        Value::I64(n) => AMQPValue::LongLongInt(*n),
        Value::F64(n) => AMQPValue::Double(*n),
        Value::Timestamp(n) => AMQPValue::Timestamp(*n),
        Value::Long(b) => AMQPValue::LongString(b.clone().into()),
        Value::Short(s) => AMQPValue::ShortString(s.chars().take(60).collect::<String>().into()),
        Value::Void => AMQPValue::Void,
    }
}

fn broker_owned(k: &str) -> bool {
    k == "x-delivery-count"
        || k.starts_with("x-death")
        || k.starts_with("x-first-death")
        || k.starts_with("x-last-death")
}

fn header_map(p: &BasicProperties) -> Vec<(String, AMQPValue)> {
    p.headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fuzz_target!(|input: Input| {
    let mut table = FieldTable::default();
    for (k, v) in &input.headers {
        table.insert(ShortString::from(key_name(k)), value(v));
    }
    let mut original = BasicProperties::default().with_headers(table);
    if let Some(ct) = &input.content_type {
        original = original.with_content_type(ct.chars().take(60).collect::<String>().into());
    }
    let key = StateKey::for_tests(&input.seed);
    let body = &input.body;

    // Decoding whatever a producer sent.
    let _ = delivery_count(&original);
    let n = replays(&original);
    let (c, provenance) = carried(&original, &key, body);
    let progress_present = header_map(&original)
        .iter()
        .any(|(k, _)| k.starts_with("x-liveness-") && k != h::H_REPLAYS && k != h::H_REPLAYED_AT);
    match provenance {
        Provenance::Fresh => assert!(!progress_present),
        Provenance::Refused => assert!(progress_present),
        Provenance::Verified => panic!("progress the fuzzer could not sign was accepted: {c:?}"),
    }
    if provenance != Provenance::Verified {
        assert_eq!(c, Carried::default());
    }
    let replay = replay_headers(&original);
    assert!(
        replay
            .inner()
            .keys()
            .all(|k| k.as_str() == h::H_REPLAYS || k.as_str() == h::H_REPLAYED_AT)
    );

    // Encode, then decode.
    let progress = Carried {
        attempts: input.attempts,
        ladder_step: input.ladder_step,
        first_received_at: input.first_received_at.clone(),
        callback_submissions: input.callback_submissions,
        awaiting_callback: input.awaiting_callback,
    };
    let p = with_progress(&original, &progress, &key, body);
    assert_eq!(
        carried(&p, &key, body),
        (progress.clone(), Provenance::Verified)
    );
    if &input.other_body != body {
        assert_eq!(carried(&p, &key, &input.other_body).1, Provenance::Refused);
    }
    let other_key = StateKey::for_tests(&format!("{}'", input.seed));
    assert_eq!(carried(&p, &other_key, body).1, Provenance::Refused);
    assert_eq!(delivery_count(&p), 0, "the broker's counter is not copied");
    assert_eq!(replays(&p), n, "replays are kept");
    assert_eq!(p.delivery_mode(), &Some(2));
    let written = header_map(&p);
    assert!(written.iter().all(|(k, _)| !broker_owned(k)));
    for (k, v) in header_map(&original) {
        let producers = !broker_owned(&k) && !k.starts_with("x-liveness-");
        if producers || k == h::H_REPLAYS || k == h::H_REPLAYED_AT {
            // Compared by Debug text: a NaN double is not equal to itself.
            let kept = written
                .iter()
                .any(|(k2, v2)| *k2 == k && format!("{v2:?}") == format!("{v:?}"));
            assert!(kept, "{k} dropped");
        }
    }
    // Re-encoding decoded progress gives the same headers.
    let again = with_progress(&p, &progress, &key, body);
    assert_eq!(header_map(&again).len(), written.len());
    assert_eq!(
        carried(&again, &key, body),
        (progress, Provenance::Verified)
    );

    // Replay: a fresh budget, one more replay.
    for keep in [true, false] {
        let r = replay_props(&p, replayed(&p, keep, "2026-01-01T00:00:00Z"));
        assert_eq!(
            carried(&r, &key, body),
            (Carried::default(), Provenance::Fresh)
        );
        assert_eq!(replays(&r), n.saturating_add(1));
        assert_eq!(delivery_count(&r), 0);
    }
});
