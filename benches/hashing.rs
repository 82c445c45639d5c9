//! Micro-benchmark of the image hashing and encoding paths (issue 20, item
//! 2; figures in docs/benchmark.md#hashing-and-encoding):
//!
//! ```sh
//! cargo bench --bench hashing            # or: cargo bench --bench hashing -- 3000000
//! ```
//!
//! For 200 KB and 3 MB images (or the sizes given), the time per byte of:
//! SHA-256 with the `sha2` crate (what the worker uses: the CPU's SHA
//! extensions when it has them, detected at run time), with `ring` (already
//! in the tree through rustls: OpenSSL's assembly), hashing the body chunk by
//! chunk as it streams in (copy then hash each 16 KiB while it is in cache)
//! against copying it whole then hashing it, and hashing plus base64 in one
//! pass (48 KiB at a time, as the Argos body is encoded) against two passes.
//! No criterion. On a shared machine other processes take the core at
//! random moments, so the cases are interleaved (one slice of about 20 ms of
//! each in turn, 40 turns) and the fastest slice of each case is reported
//! beside the median: the fastest is what the code costs when nothing
//! interferes, and is what two cases are compared by.

use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The frame the Argos body encodes at a time (src/providers/argos/body.rs).
const B64_CHUNK: usize = 48 * 1024;
/// About what a body chunk from the S3 client holds.
const NET_CHUNK: usize = 16 * 1024;

fn image(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One case: what it is, and one run of it.
type Case<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// ns per byte of one slice of about 20 ms of `f`.
fn slice(len: usize, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(20) {
        f();
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / (n as f64 * len as f64)
}

/// (fastest, median) ns per byte of each case, the cases interleaved.
fn measure(len: usize, cases: &mut [Case<'_>]) -> Vec<(f64, f64)> {
    let mut samples = vec![Vec::new(); cases.len()];
    for (_, f) in cases.iter_mut() {
        f();
    }
    for _ in 0..40 {
        for (i, (_, f)) in cases.iter_mut().enumerate() {
            samples[i].push(slice(len, f.as_mut()));
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            (s[0], s[s.len() / 2])
        })
        .collect()
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn ring_digest(b: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![200_000, 3_000_000]
    } else {
        sizes
    };
    let shani = std::arch::is_x86_feature_detected!("sha");
    println!("CPU SHA extensions: {}", if shani { "yes" } else { "no" });
    for len in sizes {
        let img = image(len);
        assert_eq!(sha2_digest(&img), ring_digest(&img));
        let img = &img;
        let mut buf = Vec::with_capacity(len);
        let mut out = Vec::with_capacity(base64_simd::STANDARD.encoded_length(B64_CHUNK));
        let buf = std::cell::RefCell::new(&mut buf);
        let out = std::cell::RefCell::new(&mut out);
        let mut cases: Vec<Case<'_>> = vec![
            (
                "sha2 (the worker's SHA-256), whole buffer",
                Box::new(|| {
                    black_box(sha2_digest(black_box(img)));
                }),
            ),
            (
                "ring SHA-256, whole buffer",
                Box::new(|| {
                    black_box(ring_digest(black_box(img)));
                }),
            ),
            (
                "receive: copy 16 KiB chunks into one buffer, then sha2 it",
                Box::new(|| {
                    let mut buf = buf.borrow_mut();
                    buf.clear();
                    for c in img.chunks(NET_CHUNK) {
                        buf.extend_from_slice(black_box(c));
                    }
                    black_box(sha2_digest(&buf));
                }),
            ),
            (
                "receive: copy each 16 KiB chunk and sha2 it while in cache",
                Box::new(|| {
                    let mut buf = buf.borrow_mut();
                    buf.clear();
                    let mut h = Sha256::new();
                    for c in img.chunks(NET_CHUNK) {
                        buf.extend_from_slice(black_box(c));
                        h.update(&buf[buf.len() - c.len()..]);
                    }
                    black_box(h.finalize());
                }),
            ),
            (
                "base64 alone (48 KiB frames, base64-simd)",
                Box::new(|| {
                    let mut out = out.borrow_mut();
                    for c in img.chunks(B64_CHUNK) {
                        out.clear();
                        base64_simd::STANDARD.encode_append(black_box(c), &mut **out);
                        black_box(&out);
                    }
                }),
            ),
            (
                "two passes: sha2 the image, then base64 it by frames",
                Box::new(|| {
                    let mut out = out.borrow_mut();
                    black_box(sha2_digest(black_box(img)));
                    for c in img.chunks(B64_CHUNK) {
                        out.clear();
                        base64_simd::STANDARD.encode_append(c, &mut **out);
                        black_box(&out);
                    }
                }),
            ),
            (
                "one pass: sha2 and base64 each frame while in cache",
                Box::new(|| {
                    let mut out = out.borrow_mut();
                    let mut h = Sha256::new();
                    for c in img.chunks(B64_CHUNK) {
                        h.update(black_box(c));
                        out.clear();
                        base64_simd::STANDARD.encode_append(c, &mut **out);
                        black_box(&out);
                    }
                    black_box(h.finalize());
                }),
            ),
        ];
        let figures = measure(len, &mut cases);
        println!("\n{len} bytes (fastest of 40 interleaved slices; median in brackets):");
        for ((what, _), (best, med)) in cases.iter().zip(figures) {
            println!(
                "  {what:<60} {best:6.3} ns/byte ({med:6.3})  {:6.2} GB/s  {:8.1} µs per image",
                1.0 / best,
                best * len as f64 / 1e3
            );
        }
        let hex = Instant::now();
        for _ in 0..10_000 {
            black_box(hex::encode(black_box([7u8; 32])));
        }
        println!(
            "  hex of the digest: {:.2} µs per image",
            hex.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
    }
}
