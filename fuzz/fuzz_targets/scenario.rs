//! The emulator's scenario parsing (`emulator::scenario`): `extract` never
//! panics (nor loops) on any bytes; a scenario written into a PNG tEXt
//! chunk or a JPEG COM segment, as `samples` writes them, is read back as
//! exactly what `serde_json` makes of the text; scores of a valid scenario
//! print as vendor numbers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::emulator::scenario::{Scenario, extract, vendor_number};
use liveness_worker::samples::{SCENARIO_KEYWORD, jpeg};

/// The smallest PNG `extract` reads: signature, tEXt, IEND.
fn png_with(text: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut data = SCENARIO_KEYWORD.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(text);
    for (kind, data) in [(&b"tEXt"[..], &data[..]), (b"IEND", &[])] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32fast::hash(&[kind, data].concat()).to_be_bytes());
    }
    out
}

fn same(a: Option<Result<Scenario, String>>, b: &Result<Scenario, serde_json::Error>) {
    match (a, b) {
        (Some(Ok(x)), Ok(y)) => assert_eq!(&x, y),
        (Some(Err(_)), Err(_)) => {}
        (a, b) => panic!("extract {a:?} but serde_json {b:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // Whatever an uploaded image holds.
    if let Some(Ok(s)) = extract(data) {
        for v in [
            s.screen_replay,
            s.printed_copy,
            s.portrait_substitution,
            s.face,
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(
                vendor_number(v).as_f64(),
                Some(v),
                "a score prints as itself"
            );
        }
    }
    // The bytes as a scenario text, written the way the samples write it.
    let direct = serde_json::from_slice::<Scenario>(data);
    same(extract(&png_with(data)), &direct);
    if let Ok(text) = std::str::from_utf8(data)
        && text.len() < 60_000
    {
        same(extract(&jpeg(7, 0, Some(text))), &direct);
    }
});
