//! Callback tokens (`pipeline::token`): `verify` never panics, accepts a
//! token `sign` made for exactly these fields and key until it expires, and
//! refuses any change of key, vendor, job, submission or expiry, and any
//! token that is not that MAC.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use liveness_worker::domain::ProviderName;
use liveness_worker::pipeline::token::{Refused, sign, verify};

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    vendor: u8,
    job_id: String,
    submission: u32,
    expires: u64,
    now: u64,
    token: String,
    flip_at: usize,
    flip: u8,
    other_job: String,
}

fn vendor(n: u8) -> ProviderName {
    ProviderName::ALL[n as usize % ProviderName::ALL.len()]
}

fuzz_target!(|i: Input| {
    let v = vendor(i.vendor);
    let check = |secret: &[u8], v, job: &str, n, exp, token: &str| {
        verify(secret, v, job, n, exp, token, i.now)
    };
    // An arbitrary token is accepted only if it is the MAC.
    let signed = sign(&i.secret, v, &i.job_id, i.submission, i.expires);
    let outcome = check(&i.secret, v, &i.job_id, i.submission, i.expires, &i.token);
    match outcome {
        Ok(()) | Err(Refused::Expired) => assert_eq!(
            hex::decode(&i.token).ok(),
            hex::decode(&signed).ok(),
            "a token that is not the MAC passed"
        ),
        Err(Refused::Malformed) => assert!(hex::decode(&i.token).is_err()),
        Err(Refused::Forged) => {}
    }

    // The signed token: accepted until it expires, in either hex case.
    assert_eq!(signed.len(), 64);
    let expected = if i.expires < i.now {
        Err(Refused::Expired)
    } else {
        Ok(())
    };
    assert_eq!(
        check(&i.secret, v, &i.job_id, i.submission, i.expires, &signed),
        expected
    );
    let upper = signed.to_uppercase();
    assert_eq!(
        check(&i.secret, v, &i.job_id, i.submission, i.expires, &upper),
        expected
    );

    // Any other field, the same token: forged.
    let forged = Err(Refused::Forged);
    let other_v = vendor((i.vendor % 3).wrapping_add(1));
    assert_eq!(
        check(
            &i.secret,
            other_v,
            &i.job_id,
            i.submission,
            i.expires,
            &signed
        ),
        forged
    );
    if i.other_job != i.job_id {
        assert_eq!(
            check(&i.secret, v, &i.other_job, i.submission, i.expires, &signed),
            forged
        );
    }
    let n2 = i.submission ^ 1;
    assert_eq!(
        check(&i.secret, v, &i.job_id, n2, i.expires, &signed),
        forged
    );
    let e2 = i.expires ^ 1;
    assert_eq!(
        check(&i.secret, v, &i.job_id, i.submission, e2, &signed),
        forged
    );
    // Another key (one byte changed; HMAC pads short keys with zeros, so
    // appending zero bytes would not be another key).
    if !i.secret.is_empty() {
        let mut k2 = i.secret.clone();
        let at = i.flip_at % k2.len();
        k2[at] ^= i.flip.max(1);
        assert_eq!(
            check(&k2, v, &i.job_id, i.submission, i.expires, &signed),
            forged
        );
    }
    // A truncated or altered token.
    assert_eq!(
        check(
            &i.secret,
            v,
            &i.job_id,
            i.submission,
            i.expires,
            &signed[..62]
        ),
        forged
    );
    assert_eq!(
        check(
            &i.secret,
            v,
            &i.job_id,
            i.submission,
            i.expires,
            &signed[..63]
        ),
        Err(Refused::Malformed)
    );
    let mut altered = hex::decode(&signed).expect("hex");
    altered[i.flip_at % 32] ^= i.flip.max(1);
    assert_eq!(
        check(
            &i.secret,
            v,
            &i.job_id,
            i.submission,
            i.expires,
            &hex::encode(altered)
        ),
        forged
    );
});
