//! The Argos request body, `{"<field>":"<base64 of the image>",<rest>`,
//! base64-encoded while it is sent.
//!
//! Why not a buffer: a whole body is a second copy of the image, a third
//! larger than it, held for the whole vendor call. With 3 MB images and
//! 64 jobs in flight that is 256 MB of base64 on top of the images, which
//! breaks the memory bar (40 MB + 1.5 × in flight × image size,
//! docs/benchmark.md#the-bars) and
//! costs page faults for every fresh multi-megabyte buffer. Encoded per
//! frame, a job holds the image (a reference-counted `Bytes` the retry loop
//! reuses) and one 64 KiB frame at a time. The length is known up front, so
//! the request still carries a Content-Length, not chunked encoding.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Image bytes encoded per frame: a multiple of 3, so only the last frame
/// carries padding; 48 KiB in, 64 KiB of base64 out.
const CHUNK: usize = 48 * 1024;

pub struct Base64JsonBody {
    head: Option<Bytes>,
    image: Bytes,
    /// The next image byte to encode.
    pos: usize,
    tail: Option<Bytes>,
    /// Body bytes not yet produced.
    remaining: u64,
}

impl Base64JsonBody {
    /// `rest` is what follows the opening brace of another JSON object
    /// (`}` alone for nothing).
    pub fn new(field: &str, image: Bytes, rest: &[u8]) -> Self {
        let head = Bytes::from(format!("{{\"{field}\":\""));
        let mut tail = Vec::with_capacity(rest.len() + 2);
        tail.push(b'"');
        if rest != b"}" {
            tail.push(b',');
        }
        tail.extend_from_slice(rest);
        let b64_len = base64_simd::STANDARD.encoded_length(image.len());
        Base64JsonBody {
            remaining: (head.len() + b64_len + tail.len()) as u64,
            head: Some(head),
            image,
            pos: 0,
            tail: Some(Bytes::from(tail)),
        }
    }

    fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if self.pos < self.image.len() {
            let end = (self.pos + CHUNK).min(self.image.len());
            let src = &self.image[self.pos..end];
            let mut out = Vec::with_capacity(base64_simd::STANDARD.encoded_length(src.len()));
            base64_simd::STANDARD.encode_append(src, &mut out);
            self.pos = end;
            return Some(Bytes::from(out));
        }
        self.tail.take()
    }
}

impl Body for Base64JsonBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.next_frame();
        if let Some(f) = &frame {
            self.remaining -= f.len() as u64;
        }
        Poll::Ready(frame.map(|f| Ok(Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// Every frame, in order, checking the size hint as it goes.
    fn collect(mut body: Base64JsonBody) -> Vec<u8> {
        let declared = body.size_hint().exact().expect("exact length");
        let mut out = Vec::new();
        while let Some(f) = body.next_frame() {
            assert!(f.len() <= CHUNK / 3 * 4, "frames stay small");
            body.remaining -= f.len() as u64;
            out.extend_from_slice(&f);
            assert_eq!(body.size_hint().exact(), Some(declared - out.len() as u64));
        }
        assert!(body.is_end_stream());
        assert_eq!(out.len() as u64, declared);
        out
    }

    #[test]
    fn body_is_the_json_with_standard_base64_at_every_length() {
        // Lengths around the frame size, the SIMD block sizes and every
        // padding case.
        for len in [
            0,
            1,
            2,
            3,
            31,
            32,
            33,
            95,
            96,
            97,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 2,
        ] {
            let image: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let body = collect(Base64JsonBody::new(
                "idImage",
                Bytes::from(image.clone()),
                br#""pipelines":{"sr":true},"x":1}"#,
            ));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v["idImage"],
                base64::engine::general_purpose::STANDARD.encode(&image),
                "length {len}"
            );
            assert_eq!(v["pipelines"]["sr"], true);
        }
        let face = collect(Base64JsonBody::new(
            "faceImage",
            Bytes::from_static(b"abc"),
            b"}",
        ));
        assert_eq!(face, br#"{"faceImage":"YWJj"}"#);
    }
}
