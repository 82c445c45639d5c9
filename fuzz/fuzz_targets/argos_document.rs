//! Argos ID Liveness answers (`providers::argos`): a 200 body, a callback
//! body (through `Provider::read_callback`, as the callback receiver calls
//! it) and an error body with any status. Never a panic; an assessment
//! keeps the invariants of `check_assessment`, has one outcome per
//! requested signal in order, and each performed verdict is the band's
//! verdict on the vendor's 0-100 number (score = number / 100); the 200
//! body survives a serialize-parse round trip with the same assessment.
//!
//! Input: byte 0 = mode (bits 0-1) and requested signals (bits 2-4),
//! bytes 1-2 = HTTP status (big endian), bytes 3-4 = band edges, rest = body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::config::Config;
use liveness_worker::domain::SignalVerdict;
use liveness_worker::domain::assessment::Assessment;
use liveness_worker::domain::bands::Bands;
use liveness_worker::providers::argos::wire::DocumentResponse;
use liveness_worker::providers::argos::{Argos, normalize};
use liveness_worker::providers::{ErrorKind, Provider, VendorHttp};
use liveness_worker_fuzz::{check_assessment, requested_signals};
use std::sync::OnceLock;

fn base() -> &'static (VendorHttp, Config) {
    static BASE: OnceLock<(VendorHttp, Config)> = OnceLock::new();
    BASE.get_or_init(|| {
        let config = Config::from_toml("").expect("default configuration");
        let http = VendorHttp::new(&config.providers).expect("the vendor HTTP client");
        (http, config)
    })
}

fn check_bands(a: &Assessment, bands: &Bands) {
    for s in a.signals.iter().filter(|s| s.performed()) {
        let n = s
            .vendor_score
            .as_ref()
            .and_then(serde_json::Number::as_f64)
            .expect("a performed signal has the vendor's number");
        assert!((0.0..=100.0).contains(&n));
        assert_eq!(s.verdict, bands.verdict(n));
        assert_eq!(s.score, Some(n / 100.0));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let mode = data[0] & 3;
    let requested = requested_signals(data[0] >> 2);
    let status = u16::from_be_bytes([data[1], data[2]]);
    let bands = if data[3] == 0 && data[4] == 0 {
        Bands::default()
    } else {
        Bands {
            spoof_at_or_below: f64::from(data[3].min(data[4])) / 2.0,
            live_above: f64::from(data[3].max(data[4])) / 2.0,
        }
    };
    let body = &data[5..];
    let in_order = |a: &Assessment| {
        assert_eq!(
            a.signals.iter().map(|s| s.name).collect::<Vec<_>>(),
            requested
        );
    };
    match mode {
        // A 200 of POST /document.
        0 | 1 => {
            let Ok(parsed) = serde_json::from_slice::<DocumentResponse>(body) else {
                return;
            };
            let result = normalize::document(&parsed, &requested, &bands);
            if let Ok(a) = &result {
                check_assessment(a);
                check_bands(a, &bands);
                in_order(a);
            }
            let text = serde_json::to_vec(&parsed).expect("serializes");
            let again: DocumentResponse = serde_json::from_slice(&text).expect("parses back");
            let result2 = normalize::document(&again, &requested, &bands);
            match (&result, &result2) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.message, b.message),
                _ => panic!("round trip changed the outcome"),
            }
        }
        // A callback, success or error.
        2 => {
            let (client, config) = base();
            let mut cfg = config.providers.argos.clone();
            cfg.document_bands = bands;
            let argos = Argos::new(client.clone(), &cfg).expect("argos adapter");
            if let Ok(a) = argos.read_callback(body, &requested) {
                check_assessment(&a);
                in_order(&a);
                check_bands(&a, &bands);
            }
        }
        // An error answer.
        _ => match normalize::error_response(status, body, None, &requested) {
            Ok(a) => {
                check_assessment(&a);
                in_order(&a);
                assert!(
                    a.signals
                        .iter()
                        .all(|s| s.verdict == SignalVerdict::NotPerformed)
                );
                assert!(!a.reasons.is_empty());
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                // Only the documented codes 1001 and 1003 may override the HTTP status.
                if e.kind == ErrorKind::Credentials {
                    assert!(
                        matches!(status, 401 | 403) || e.vendor_code.as_deref() == Some("1001")
                    );
                }
            }
        },
    }
});
