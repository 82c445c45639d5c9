//! Image checks that need only the bytes: the content type by magic number.

/// The image formats every vendor accepts.
pub fn sniff_content_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A short, printable description of what the bytes start with, for the
/// dead letter of a non-image (never the bytes themselves beyond a few).
pub fn describe_prefix(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(" ")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_three_formats_and_nothing_else() {
        assert_eq!(
            sniff_content_type(&[0xFF, 0xD8, 0xFF, 0xE0, 0]),
            Some("image/jpeg")
        );
        assert_eq!(
            sniff_content_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(
            sniff_content_type(b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(sniff_content_type(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff_content_type(b"%PDF-1.7"), None);
        assert_eq!(sniff_content_type(b""), None);
        assert_eq!(sniff_content_type(&[0xFF, 0xD8]), None);
    }
}
