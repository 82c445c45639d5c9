//! The rules applied to a parsed job before anything is fetched (docs/vendors.md,
//! docs/messages.md): which vendor it goes to, whether that vendor can do its check, and
//! whether its images may be read. The worker and `enqueue` share them, so a
//! line `enqueue` accepts is never dead-lettered for them by a worker with
//! the same configuration.

use super::dead_letter::FailureClass;
use super::job::Job;
use super::{Check, ProviderName};

/// A job these rules refuse, with the dead letter's class and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub class: FailureClass,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Routing {
    pub allowed_buckets: Vec<String>,
    pub default_document: ProviderName,
    pub default_face: ProviderName,
}

impl Routing {
    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        self.allowed_buckets.iter().any(|b| b == bucket)
    }

    /// The vendor for this job, or why it cannot have one.
    pub fn route(&self, job: &Job) -> Result<ProviderName, Refusal> {
        let provider = job.provider.unwrap_or(match job.check {
            Check::Document => self.default_document,
            Check::Face => self.default_face,
        });
        if !provider.can_do(job.check) {
            return Err(Refusal {
                class: FailureClass::InvalidJob,
                message: format!(
                    "provider {provider} cannot do {} checks; send the job without a provider or with one that can",
                    job.check
                ),
            });
        }
        for (field, uri) in [
            ("image", Some(&job.image)),
            ("back_image", job.back_image.as_ref()),
        ] {
            if let Some(uri) = uri
                && !self.bucket_allowed(&uri.bucket)
            {
                return Err(Refusal {
                    class: FailureClass::ForbiddenImageLocation,
                    message: format!(
                        "{field} {uri} is in bucket {}, which is not on the allowlist (worker.allowed_buckets); \
                         move the image or add the bucket to the allowlist, then replay",
                        uri.bucket
                    ),
                });
            }
        }
        Ok(provider)
    }
}

impl ProviderName {
    /// Which checks a vendor offers at all (docs/vendors.md#checks-and-vendors).
    pub fn can_do(self, check: Check) -> bool {
        match self {
            ProviderName::Argos => true,
            ProviderName::Intellicheck => check == Check::Document,
            ProviderName::Didit => check == Check::Face,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors_do_the_checks_of_the_design_table() {
        use Check::{Document, Face};
        assert!(ProviderName::Argos.can_do(Document) && ProviderName::Argos.can_do(Face));
        assert!(ProviderName::Intellicheck.can_do(Document));
        assert!(!ProviderName::Intellicheck.can_do(Face));
        assert!(!ProviderName::Didit.can_do(Document) && ProviderName::Didit.can_do(Face));
    }
}
