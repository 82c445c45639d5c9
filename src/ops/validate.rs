//! The checks `enqueue` runs on a job before publishing it: the worker's own
//! parser ([`parse_job`]) plus the rules the worker applies right after it
//! (bucket allowlist, a vendor able to do the check), so a line enqueue
//! accepts is never dead-lettered as `invalid_job` or
//! `forbidden_image_location` by a worker with the same configuration.
//!
//! Whether a vendor is *configured* on the workers (has an API key) is not
//! checked: enqueue usually runs with producer credentials only.

use crate::config::Config;
use crate::domain::job::{Job, parse_job};
use crate::domain::{Check, ProviderName};

/// What a job is checked against; taken from the same configuration as `run`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub allowed_buckets: Vec<String>,
    pub max_job_bytes: usize,
    pub default_document: ProviderName,
    pub default_face: ProviderName,
}

impl Rules {
    pub fn from_config(c: &Config) -> Self {
        Rules {
            allowed_buckets: c.worker.allowed_buckets.clone(),
            max_job_bytes: c.worker.max_job_bytes,
            default_document: c.providers.default_document,
            default_face: c.providers.default_face,
        }
    }

    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        self.allowed_buckets.iter().any(|b| b == bucket)
    }
}

/// Which checks a vendor offers at all (DESIGN §2).
pub fn vendor_supports(p: ProviderName, check: Check) -> bool {
    match p {
        ProviderName::Argos => true,
        ProviderName::Intellicheck => check == Check::Document,
        ProviderName::Didit => check == Check::Face,
    }
}

/// Validates one job body; the error is the reason in the worker's words.
pub fn validate_job(body: &[u8], rules: &Rules) -> Result<Job, String> {
    let (job, _) = parse_job(body, rules.max_job_bytes).map_err(|e| e.message)?;
    let provider = job.provider.unwrap_or(match job.check {
        Check::Document => rules.default_document,
        Check::Face => rules.default_face,
    });
    if !vendor_supports(provider, job.check) {
        return Err(format!(
            "provider {provider} cannot do {} checks; send the job without a provider or with one that can",
            job.check
        ));
    }
    for (field, uri) in [
        ("image", Some(&job.image)),
        ("back_image", job.back_image.as_ref()),
    ] {
        if let Some(uri) = uri
            && !rules.bucket_allowed(&uri.bucket)
        {
            return Err(format!(
                "{field} {uri} is in bucket {}, which is not on the allowlist (worker.allowed_buckets)",
                uri.bucket
            ));
        }
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            allowed_buckets: vec!["imgs".into()],
            max_job_bytes: 2048,
            default_document: ProviderName::Argos,
            default_face: ProviderName::Argos,
        }
    }

    #[test]
    fn a_valid_job_passes() {
        let j = validate_job(
            br#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x"}"#,
            &rules(),
        )
        .unwrap();
        assert_eq!(j.job_id, "a");
    }

    #[test]
    fn reasons_match_the_worker() {
        let r = rules();
        let cases: [(&[u8], &str); 5] = [
            (b"{nope", "not valid JSON"),
            (
                br#"{"schema":"liveness.job.v1","job_id":"a","check":"selfie","image":"s3://imgs/x"}"#,
                "check must be",
            ),
            (
                br#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://other/x"}"#,
                "not on the allowlist",
            ),
            (
                br#"{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/x","back_image":"s3://other/y"}"#,
                "back_image s3://other/y",
            ),
            (
                br#"{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/x","provider":"didit"}"#,
                "cannot do document",
            ),
        ];
        for (body, needle) in cases {
            let e = validate_job(body, &r).unwrap_err();
            assert!(e.contains(needle), "{needle} not in {e}");
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000));
        assert!(
            validate_job(big.as_bytes(), &r)
                .unwrap_err()
                .contains("over the 2048-byte limit")
        );
    }

    #[test]
    fn the_default_vendor_must_do_the_check() {
        let mut r = rules();
        r.default_face = ProviderName::Intellicheck;
        let e = validate_job(
            br#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x"}"#,
            &r,
        )
        .unwrap_err();
        assert!(e.contains("intellicheck cannot do face"), "{e}");
    }
}
