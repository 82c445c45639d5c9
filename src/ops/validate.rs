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
use crate::domain::routing::Routing;

/// What a job is checked against; taken from the same configuration as `run`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub routing: Routing,
    pub max_job_bytes: usize,
}

impl Rules {
    pub fn from_config(c: &Config) -> Self {
        Rules {
            routing: c.routing(),
            max_job_bytes: c.worker.max_job_bytes,
        }
    }

    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        self.routing.bucket_allowed(bucket)
    }
}

/// Validates one job body; the error is the reason in the worker's words.
pub fn validate_job(body: &[u8], rules: &Rules) -> Result<Job, String> {
    let job = parse_job(body, rules.max_job_bytes)
        .map_err(|e| e.message)?
        .job;
    rules.routing.route(&job).map_err(|r| r.message)?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProviderName;

    fn rules() -> Rules {
        Rules {
            routing: Routing {
                allowed_buckets: vec!["imgs".into()],
                default_document: ProviderName::Argos,
                default_face: ProviderName::Argos,
            },
            max_job_bytes: 2048,
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
        r.routing.default_face = ProviderName::Intellicheck;
        let e = validate_job(
            br#"{"schema":"liveness.job.v1","job_id":"a","check":"face","image":"s3://imgs/x"}"#,
            &r,
        )
        .unwrap_err();
        assert!(e.contains("intellicheck cannot do face"), "{e}");
    }
}
