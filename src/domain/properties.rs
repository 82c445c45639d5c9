//! Property tests of the domain's general rules (docs/fuzzing.md): the
//! band edges, a verdict that never improves when a signal gets worse, and
//! parse-then-serialize round trips of the message types.

use super::assessment::{Assessment, Severity, SignalOutcome, VendorRefs, Warning};
use super::bands::Bands;
use super::dead_letter::{DEAD_LETTER_SCHEMA, DeadLetter, Failure, FailureClass};
use super::job::{JOB_SCHEMA, JobId, JobMessage, parse_job};
use super::result::{ImageInfo, LivenessResult, RESULT_SCHEMA, Timings};
use super::{Check, ProviderName, Side, SignalName, SignalVerdict, Verdict};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Worse verdicts rank lower.
fn rank(v: SignalVerdict) -> u8 {
    match v {
        SignalVerdict::Spoof => 0,
        SignalVerdict::Review => 1,
        SignalVerdict::Live => 2,
        SignalVerdict::NotPerformed => unreachable!("only performed signals are ranked"),
    }
}

fn job_rank(v: Verdict) -> u8 {
    match v {
        Verdict::Spoof => 0,
        Verdict::Review => 1,
        Verdict::Live => 2,
        Verdict::Inconclusive => 3,
    }
}

fn chars(alphabet: &'static str, len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    let set: Vec<char> = alphabet.chars().collect();
    proptest::collection::vec(select(set), len)
        .prop_map(String::from_iter)
        .boxed()
}

fn text() -> BoxedStrategy<String> {
    proptest::collection::vec(any::<char>(), 0..24)
        .prop_map(String::from_iter)
        .boxed()
}

fn job_id() -> BoxedStrategy<String> {
    chars(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-",
        1..=JobId::MAX_LEN,
    )
    // Dot segments are refused (they would become path segments).
    .prop_filter("not . or ..", |id| id != "." && id != "..")
    .boxed()
}

/// One key segment: no `/`, no control character, not `.` or `..`.
fn key_segment() -> BoxedStrategy<String> {
    proptest::collection::vec(
        any::<char>().prop_filter("a key character", |c| *c != '/' && !c.is_control()),
        1..12,
    )
    .prop_map(String::from_iter)
    .prop_filter("not a dot segment", |s| s != "." && s != "..")
    .boxed()
}

fn s3_uri() -> BoxedStrategy<String> {
    let alnum = "abcdefghijklmnopqrstuvwxyz0123456789";
    (
        chars(alnum, 1..=1),
        chars("abcdefghijklmnopqrstuvwxyz0123456789.-", 1..=61),
        chars(alnum, 1..=1),
        proptest::collection::vec(key_segment(), 1..4).prop_map(|segments| segments.join("/")),
    )
        .prop_map(|(a, mid, z, key)| format!("s3://{a}{mid}{z}/{key}"))
        .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        text().prop_map(Value::from),
    ]
    .boxed()
}

fn metadata() -> BoxedStrategy<Map<String, Value>> {
    let value = json_leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map(text(), value, 0..5)
        .prop_map(|m| m.into_iter().collect())
        .boxed()
}

fn job_message() -> BoxedStrategy<JobMessage> {
    (
        job_id(),
        any::<bool>(),
        s3_uri(),
        proptest::option::of(s3_uri()),
        proptest::option::of(select(ProviderName::ALL.to_vec())),
        proptest::option::of(proptest::sample::subsequence(
            SignalName::DOCUMENT.to_vec(),
            1..=3,
        )),
        proptest::option::of(metadata()),
    )
        .prop_map(
            |(job_id, face, image, back_image, provider, signals, metadata)| JobMessage {
                schema: JOB_SCHEMA.into(),
                job_id,
                check: if face { Check::Face } else { Check::Document },
                image,
                back_image: if face { None } else { back_image },
                provider,
                signals: if face { None } else { signals },
                metadata,
            },
        )
        .boxed()
}

fn performed_verdict() -> impl Strategy<Value = SignalVerdict> {
    select(vec![
        SignalVerdict::Spoof,
        SignalVerdict::Review,
        SignalVerdict::Live,
    ])
}

fn signal_outcome() -> BoxedStrategy<SignalOutcome> {
    (
        select(vec![
            SignalName::ScreenReplay,
            SignalName::PrintedCopy,
            SignalName::PortraitSubstitution,
            SignalName::FaceLiveness,
        ]),
        proptest::option::of(select(vec![Side::Front, Side::Back])),
        proptest::option::of(performed_verdict()),
        0.0f64..=1.0,
        prop_oneof![
            (0i64..=100).prop_map(serde_json::Number::from),
            (0.0f64..=100.0).prop_map(|f| serde_json::Number::from_f64(f).unwrap()),
        ],
        proptest::option::of((0i64..=100).prop_map(serde_json::Number::from)),
    )
        .prop_map(
            |(name, side, verdict, score, vendor_score, threshold)| match verdict {
                None => SignalOutcome::not_performed(name, side),
                Some(verdict) => SignalOutcome {
                    name,
                    side,
                    verdict,
                    score: Some(score),
                    vendor_score: Some(vendor_score),
                    threshold,
                },
            },
        )
        .boxed()
}

fn raw(m: &Map<String, Value>) -> Box<RawValue> {
    RawValue::from_string(serde_json::to_string(m).unwrap()).unwrap()
}

/// Serialize, parse, serialize again: the same text.
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> String {
    let once = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&once).unwrap();
    let twice = serde_json::to_string(&back).unwrap();
    assert_eq!(once, twice);
    once
}

proptest! {
    /// Scores at or below `spoof_at_or_below` are spoof, the next float up
    /// is review; at `live_above` still review, the next float up live.
    #[test]
    fn band_edges_are_exact(spoof in 0.0f64..100.0, width in 0.0f64..100.0) {
        let b = Bands { spoof_at_or_below: spoof, live_above: spoof + width };
        prop_assert_eq!(b.verdict(spoof), SignalVerdict::Spoof);
        if width > 0.0 {
            prop_assert_eq!(b.verdict(spoof.next_up()), SignalVerdict::Review);
            prop_assert_eq!(b.verdict(b.live_above), SignalVerdict::Review);
        }
        prop_assert_eq!(b.verdict(b.live_above.next_up()), SignalVerdict::Live);
    }

    /// A lower score never gets a better verdict.
    #[test]
    fn band_verdicts_are_monotonic(
        spoof in 0.0f64..100.0, width in 0.0f64..100.0, a in 0.0f64..=100.0, b in 0.0f64..=100.0,
    ) {
        let bands = Bands { spoof_at_or_below: spoof, live_above: spoof + width };
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(rank(bands.verdict(lo)) <= rank(bands.verdict(hi)));
    }

    /// The job verdict never improves when one signal's verdict gets worse,
    /// and the job score is the lowest performed score, within 0..=1.
    #[test]
    fn job_verdict_never_improves_when_a_signal_worsens(
        signals in proptest::collection::vec(signal_outcome(), 0..6),
        pick in any::<proptest::sample::Index>(),
        worse in performed_verdict(),
        lower in 0.0f64..=1.0,
    ) {
        let before = Assessment { signals, ..Default::default() };
        if let Some(score) = before.score() {
            prop_assert!((0.0..=1.0).contains(&score));
        }
        let performed: Vec<usize> = (0..before.signals.len())
            .filter(|i| before.signals[*i].performed())
            .collect();
        prop_assume!(!performed.is_empty());
        let i = performed[pick.index(performed.len())];
        let mut after = before.clone();
        let s = &mut after.signals[i];
        prop_assume!(rank(worse) <= rank(s.verdict));
        s.verdict = worse;
        s.score = s.score.map(|x| x.min(lower));
        prop_assert!(job_rank(after.verdict()) <= job_rank(before.verdict()));
        prop_assert!(after.score() <= before.score());
    }

    /// A producer's JobMessage passes the validator as the same job, and
    /// round trips through JSON.
    #[test]
    fn job_message_round_trips_through_the_validator(m in job_message()) {
        let meta = serde_json::to_string(&m.metadata).unwrap();
        prop_assume!(meta.len() <= super::job::MAX_METADATA_BYTES);
        let body = round_trips(&m);
        let parsed = parse_job(body.as_bytes(), usize::MAX)
            .unwrap_or_else(|e| panic!("{}: {body}", e.message));
        let job = parsed.job;
        prop_assert_eq!(parsed.raw.get(), body.as_str());
        prop_assert_eq!(job.job_id.as_str(), m.job_id.as_str());
        prop_assert_eq!(job.check, m.check);
        prop_assert_eq!(job.image.to_string(), m.image.clone());
        prop_assert_eq!(job.back_image.map(|u| u.to_string()), m.back_image.clone());
        prop_assert_eq!(job.provider, m.provider);
        let mut want = match m.check {
            Check::Face => vec![SignalName::FaceLiveness],
            Check::Document => m.signals.clone().unwrap_or(SignalName::DOCUMENT.to_vec()),
        };
        want.sort();
        prop_assert_eq!(job.signals, want);
        let metadata: Option<Map<String, Value>> =
            job.metadata.map(|r| serde_json::from_str(r.get()).unwrap());
        prop_assert_eq!(metadata, m.metadata);
    }

    /// A result round trips through JSON, scores included exactly.
    #[test]
    fn result_round_trips(
        id in job_id(),
        face in any::<bool>(),
        provider in select(ProviderName::ALL.to_vec()),
        meta in proptest::option::of(metadata()),
        signals in proptest::collection::vec(signal_outcome(), 0..4),
        reasons in proptest::collection::vec(text(), 0..3),
        codes in proptest::collection::vec(text(), 0..3),
        tx in proptest::option::of(text()),
        attempts in any::<u32>(),
        sizes in any::<(u64, u64, u64, u64)>(),
    ) {
        let a = Assessment {
            signals,
            reasons,
            warnings: codes
                .into_iter()
                .map(|c| Warning { message: c.clone(), code: c, severity: Severity::Warning })
                .collect(),
            vendor: VendorRefs { transaction_id: tx, ..Default::default() },
        };
        let r = LivenessResult {
            schema: RESULT_SCHEMA.into(),
            job_id: JobId::parse(&id).unwrap(),
            check: if face { Check::Face } else { Check::Document },
            provider,
            metadata: meta.as_ref().map(raw),
            verdict: a.verdict(),
            score: a.score(),
            signals: a.signals.clone(),
            reasons: a.reasons.clone(),
            warnings: a.warnings.clone(),
            vendor: a.vendor.clone(),
            image: ImageInfo {
                uri: "s3://bucket/key".into(),
                bytes: sizes.0,
                sha256: "00".repeat(32),
                content_type: "image/png".into(),
            },
            attempts,
            timings_ms: Timings { fetch: sizes.1, vendor: sizes.2, total: sizes.3 },
            completed_at: "2026-01-01T00:00:00.000Z".into(),
            failover: None,
        };
        let text = round_trips(&r);
        let back: LivenessResult = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back.score, r.score);
        prop_assert_eq!(&back.signals, &r.signals);
        prop_assert_eq!(back.routing_key(), r.routing_key());
    }

    /// A dead letter round trips through JSON.
    #[test]
    fn dead_letter_round_trips(
        id in proptest::option::of(text()),
        job in proptest::option::of(metadata()),
        raw_body in proptest::option::of(text()),
        class in select(FailureClass::ALL.to_vec()),
        message in text(),
        provider in proptest::option::of(select(ProviderName::ALL.to_vec())),
        status in proptest::option::of(any::<u16>()),
        attempts in any::<u32>(),
    ) {
        let mut failure = Failure::new(class, message);
        failure.provider = provider;
        failure.http_status = status;
        let d = DeadLetter {
            schema: DEAD_LETTER_SCHEMA.into(),
            job_id: id,
            job: job.as_ref().map(raw),
            raw_body_base64: raw_body,
            failure,
            attempts,
            first_attempt_at: "2026-01-01T00:00:00.000Z".into(),
            failed_at: "2026-01-01T00:00:01.000Z".into(),
            worker: "host:1".into(),
        };
        let text = round_trips(&d);
        let back: DeadLetter = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back.failure, &d.failure);
        prop_assert_eq!(FailureClass::parse(class.as_str()), Some(class));
    }
}
