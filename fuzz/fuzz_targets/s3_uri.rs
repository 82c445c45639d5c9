//! S3 URIs: `S3Uri::parse` and `enqueue --s3-prefix`'s `parse_prefix` never
//! panic; an accepted URI has a valid bucket and a 1-1024 byte key, prints
//! back as the input and parses again to itself; the prefix parser agrees.
#![no_main]
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::job::S3Uri;
use liveness_worker::ops::backfill::parse_prefix;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    let prefix = parse_prefix(s);
    if let Ok((bucket, p)) = &prefix {
        assert!(!bucket.is_empty() && !bucket.contains('/'));
        let rebuilt = if s.len() == "s3://".len() + bucket.len() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{p}")
        };
        assert_eq!(rebuilt, s);
    }
    match S3Uri::parse(s) {
        Ok(uri) => {
            let b = uri.bucket.as_bytes();
            assert!((3..=63).contains(&b.len()));
            assert!(
                b.iter().all(|c| c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || *c == b'.'
                    || *c == b'-')
            );
            assert!(b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric());
            assert!((1..=1024).contains(&uri.key.len()));
            assert_eq!(uri.to_string(), s, "prints back as written");
            assert_eq!(S3Uri::parse(&uri.to_string()).as_ref(), Ok(&uri));
            assert_eq!(prefix, Ok((uri.bucket.clone(), uri.key.clone())));
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
