//! Sample images for the demo, the tests and the benchmark: real PNG and
//! JPEG files that can carry an emulator scenario (docs/emulator.md#scenarios) in a PNG
//! `tEXt` chunk or a JPEG COM segment, padded to any size.

use std::io::Write as _;

pub const SCENARIO_KEYWORD: &str = "liveness-scenario";

/// A 16×16 baseline JPEG made for this project; samples add a COM segment.
const BASE_JPEG: &[u8] = include_bytes!("base.jpg");

/// A valid RGB PNG of about `min_bytes` (at least a 16×16 image), whose
/// pixels derive from `seed` so different seeds give different bytes and
/// hashes; the scenario, when given, goes into a `tEXt` chunk.
pub fn png(seed: u64, min_bytes: usize, scenario: Option<&str>) -> Vec<u8> {
    let width: u32 = 256;
    let row = 1 + width as usize * 3;
    let height = (min_bytes / row).max(16) as u32;
    let mut raw = Vec::with_capacity(row * height as usize);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    #[allow(clippy::same_item_push)] // one filter byte per row, then the row
    for _ in 0..height {
        raw.push(0); // filter type: none
        for _ in 0..width * 3 {
            // xorshift: cheap noise, so the bytes do not compress away.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            raw.push(x as u8);
        }
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 65535 * 5 + 256);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(s) = scenario {
        let mut text = Vec::with_capacity(SCENARIO_KEYWORD.len() + 1 + s.len());
        text.extend_from_slice(SCENARIO_KEYWORD.as_bytes());
        text.push(0);
        text.extend_from_slice(s.as_bytes());
        chunk(&mut out, b"tEXt", &text);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A valid JPEG carrying `liveness-scenario=<json>` in a COM segment, padded
/// with a second COM segment of filler to about `min_bytes`.
pub fn jpeg(seed: u64, min_bytes: usize, scenario: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(BASE_JPEG.len() + min_bytes + 64);
    out.extend_from_slice(&BASE_JPEG[..2]); // SOI
    if let Some(s) = scenario {
        com(&mut out, format!("{SCENARIO_KEYWORD}={s}").as_bytes());
    }
    // The seed makes each file's bytes (and so its hash-derived scores) differ.
    com(&mut out, format!("sample {seed}").as_bytes());
    let mut pad = min_bytes.saturating_sub(BASE_JPEG.len() + out.len());
    while pad > 0 {
        let n = pad.min(65_000);
        com(&mut out, &vec![b'.'; n]);
        pad -= n;
    }
    out.extend_from_slice(&BASE_JPEG[2..]);
    out
}

fn com(out: &mut Vec<u8>, data: &[u8]) {
    assert!(data.len() + 2 <= u16::MAX as usize, "COM segment too long");
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 16);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        out.push(last as u8);
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.write_all(block).expect("vec write");
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + byte as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image::sniff_content_type;
    use crate::emulator::scenario;

    #[test]
    fn png_carries_scenario_and_is_sized() {
        let p = png(7, 200_000, Some(r#"{"printed_copy":22}"#));
        assert_eq!(sniff_content_type(&p), Some("image/png"));
        assert!(
            p.len() >= 200_000 - 1000 && p.len() < 202_000,
            "{}",
            p.len()
        );
        let s = scenario::extract(&p).unwrap().unwrap();
        assert_eq!(s.printed_copy, Some(22.0));
        assert_ne!(png(1, 1000, None), png(2, 1000, None));
    }

    #[test]
    fn jpeg_carries_scenario() {
        let j = jpeg(3, 5000, Some(r#"{"error":1009}"#));
        assert_eq!(sniff_content_type(&j), Some("image/jpeg"));
        assert!(j.len() >= 5000);
        assert_eq!(scenario::extract(&j).unwrap().unwrap().error, Some(1009));
        assert!(scenario::extract(&jpeg(3, 0, None)).is_none());
    }
}
