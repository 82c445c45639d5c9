//! Callback URL tokens (Argos callback mode): an HMAC-SHA256 over the
//! vendor, the job, the submission and the expiry, so a URL cannot be
//! forged, moved to another job or kept alive past its expiry.

use crate::domain::ProviderName;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::SystemTime;

type HmacSha256 = Hmac<Sha256>;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Newline-separated: no field can contain one (job ids are [A-Za-z0-9._:-]).
    m.update(format!("liveness-callback\n{vendor}\n{job_id}\n{submission}\n{expires}").as_bytes());
    m
}

/// The token of one callback URL: lowercase hex HMAC-SHA256.
pub fn sign(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
) -> String {
    hex::encode(
        mac(secret, vendor, job_id, submission, expires)
            .finalize()
            .into_bytes(),
    )
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Expired,
    Malformed,
    Forged,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Expired => "expired token",
            Refused::Malformed => "malformed token",
            Refused::Forged => "token does not match",
        }
    }
}

/// Checks a callback URL's token (constant time) and expiry.
pub fn verify(
    secret: &[u8],
    vendor: ProviderName,
    job_id: &str,
    submission: u32,
    expires: u64,
    token: &str,
    now: u64,
) -> Result<(), Refused> {
    let given = hex::decode(token).map_err(|_| Refused::Malformed)?;
    mac(secret, vendor, job_id, submission, expires)
        .verify_slice(&given)
        .map_err(|_| Refused::Forged)?;
    // Checked after the MAC, so an expiry cannot be probed without a token.
    if expires < now {
        return Err(Refused::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_every_part_of_the_url_and_expire() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = sign(key, ProviderName::Argos, "job-1", 2, 2_000);
        assert_eq!(t.len(), 64);
        let ok = |job: &str, n: u32, exp: u64, tok: &str, now: u64| {
            verify(key, ProviderName::Argos, job, n, exp, tok, now)
        };
        assert_eq!(ok("job-1", 2, 2_000, &t, 1_000), Ok(()));
        assert_eq!(ok("job-2", 2, 2_000, &t, 1_000), Err(Refused::Forged));
        assert_eq!(ok("job-1", 3, 2_000, &t, 1_000), Err(Refused::Forged));
        assert_eq!(
            ok("job-1", 2, 9_999, &t, 1_000),
            Err(Refused::Forged),
            "expiry is signed"
        );
        assert_eq!(ok("job-1", 2, 2_000, &t, 2_001), Err(Refused::Expired));
        assert_eq!(ok("job-1", 2, 2_000, "zz", 1_000), Err(Refused::Malformed));
        assert_eq!(
            verify(
                b"another key of thirty-two bytes!",
                ProviderName::Argos,
                "job-1",
                2,
                2_000,
                &t,
                1_000
            ),
            Err(Refused::Forged)
        );
        assert_ne!(
            sign(key, ProviderName::Didit, "job-1", 2, 2_000),
            t,
            "vendor is signed"
        );
    }
}
