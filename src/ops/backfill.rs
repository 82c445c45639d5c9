//! `enqueue --s3-prefix s3://bucket/prefix`: one job per object.
//!
//! The listing is paged (ListObjectsV2, up to 1 000 keys a page) and each
//! page is published before the next is fetched, so memory stays flat with
//! millions of objects. Job ids are derived from the object itself
//! (bucket, key, ETag): running the same backfill twice publishes the same
//! job ids, and the worker's results store answers the second from the
//! first without calling a vendor. A replaced object has a new ETag, hence
//! a new job.

use super::publish::JobPublisher;
use super::validate::{Rules, validate_job};
use super::{EXIT_INVALID, EXIT_UNCONFIRMED, Exit, Progress};
use crate::broker;
use crate::config::Config;
use crate::domain::job::{JOB_SCHEMA, minify_json};
use crate::store::{ListedObject, S3Store};
use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::io::Write as _;

/// `s3://bucket/prefix` → (bucket, prefix); the prefix may be empty.
pub fn parse_prefix(s: &str) -> Result<(String, String), String> {
    let rest = s
        .strip_prefix("s3://")
        .ok_or_else(|| format!("--s3-prefix must look like s3://bucket/prefix, got {s:?}"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("--s3-prefix names no bucket: {s:?}"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// `s3-` and the hex SHA-256 of bucket, key and ETag (quotes removed), each
/// preceded by its length so no two objects can collide by concatenation.
/// 67 characters, within the job_id rules.
pub fn job_id(bucket: &str, key: &str, etag: &str) -> String {
    let etag = etag.trim_matches('"');
    let mut h = Sha256::new();
    for part in [bucket, key, etag] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("s3-{}", hex::encode(h.finalize()))
}

/// What every backfilled job shares.
#[derive(Debug, Clone)]
pub struct Template {
    pub check: String,
    pub provider: Option<String>,
    /// Compact JSON object, as given (number spellings kept).
    pub metadata: Option<String>,
}

impl Template {
    /// Checks `--metadata` is a JSON object and compacts it.
    pub fn new(
        check: String,
        provider: Option<String>,
        metadata: Option<&str>,
    ) -> Result<Self, String> {
        let metadata = match metadata {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => Some(minify_json(text)),
                Ok(_) => return Err("--metadata must be a JSON object".into()),
                Err(e) => return Err(format!("--metadata is not valid JSON: {e}")),
            },
        };
        Ok(Template {
            check,
            provider,
            metadata,
        })
    }

    /// The job body for one object.
    pub fn body(&self, job_id: &str, bucket: &str, key: &str) -> String {
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let mut out = format!(
            r#"{{"schema":"{JOB_SCHEMA}","job_id":{},"check":{},"image":{}"#,
            s(job_id),
            s(&self.check),
            s(&format!("s3://{bucket}/{key}"))
        );
        if let Some(p) = &self.provider {
            out.push_str(&format!(r#","provider":{}"#, s(p)));
        }
        if let Some(m) = &self.metadata {
            out.push_str(r#","metadata":"#);
            out.push_str(m);
        }
        out.push('}');
        out
    }
}

/// A "directory" placeholder some tools create: a key ending in `/`.
pub fn is_placeholder(o: &ListedObject) -> bool {
    o.key.ends_with('/')
}

/// What a backfill did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    pub listed: u64,
    pub placeholders: u64,
    pub without_etag: u64,
    pub invalid: u64,
    pub jobs: u64,
    pub published: u64,
    pub unconfirmed: u64,
}

/// Lists `s3://bucket/prefix` page by page and publishes one job per object
/// (prints them to stdout instead when `dry_run`).
pub async fn backfill(
    cfg: &Config,
    s3_prefix: &str,
    template: &Template,
    dry_run: bool,
    window: usize,
) -> anyhow::Result<BackfillReport> {
    let rules = Rules::from_config(cfg);
    let (bucket, prefix) = parse_prefix(s3_prefix).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        rules.bucket_allowed(&bucket),
        "bucket {bucket} is not on the allowlist (worker.allowed_buckets): the worker would dead-letter every job as forbidden_image_location"
    );
    // Options wrong for every job are reported once, up front.
    let sample = template.body("s3-sample", &bucket, "sample");
    validate_job(sample.as_bytes(), &rules)
        .map_err(|e| anyhow::anyhow!("these options make invalid jobs: {e}"))?;

    let store = S3Store::new(&cfg.s3).await;
    let mut report = BackfillReport::default();
    let conn = if dry_run {
        None
    } else {
        Some(broker::connect(&cfg.broker).await?)
    };
    let mut publisher = match &conn {
        Some(conn) => {
            Some(JobPublisher::open(conn, cfg, window, Progress::new("backfill", None)).await?)
        }
        None => None,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut token = None;
    let listing: anyhow::Result<()> = async {
        loop {
            let (page, next) = store.list_page(&bucket, &prefix, token.take()).await?;
            for o in page {
                report.listed += 1;
                if is_placeholder(&o) {
                    report.placeholders += 1;
                    continue;
                }
                let Some(etag) = o.etag.as_deref() else {
                    report.without_etag += 1;
                    eprintln!("s3://{bucket}/{}: skipped, the server sent no ETag", o.key);
                    continue;
                };
                let id = job_id(&bucket, &o.key, etag);
                let body = template.body(&id, &bucket, &o.key);
                if let Err(e) = validate_job(body.as_bytes(), &rules) {
                    report.invalid += 1;
                    eprintln!("s3://{bucket}/{}: skipped: {e}", o.key);
                    continue;
                }
                report.jobs += 1;
                match publisher.as_mut() {
                    None => writeln!(out, "{body}").context("cannot write to stdout")?,
                    Some(p) => {
                        anyhow::ensure!(p.usable(), "the broker channel failed");
                        p.send(
                            format!("s3://{bucket}/{} (job {id})", o.key),
                            &id,
                            body.as_bytes(),
                        )
                        .await;
                    }
                }
            }
            match next {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }
    .await;
    out.flush().context("cannot write to stdout")?;
    if let Some(p) = publisher {
        let (published, unconfirmed) = p.finish().await;
        report.published = published;
        report.unconfirmed = unconfirmed;
    }
    if let Some(conn) = conn {
        let _ = conn.close(200, "backfill done".into()).await;
    }
    listing.with_context(|| {
        format!(
            "backfill stopped after {} objects ({} jobs published); running it again is safe: job ids are derived from the objects",
            report.listed, report.published
        )
    })?;
    Ok(report)
}

/// What `enqueue --s3-prefix` asks for.
#[derive(Debug, Clone)]
pub struct BackfillArgs {
    /// The check every job asks for (`document` or `face`).
    pub check: String,
    pub provider: Option<String>,
    /// A JSON object set as every job's metadata.
    pub metadata: Option<String>,
    pub dry_run: bool,
    /// Publishes in flight awaiting their confirm.
    pub window: usize,
}

/// `enqueue --s3-prefix`.
pub async fn run(cfg: &Config, s3_prefix: &str, args: &BackfillArgs) -> anyhow::Result<()> {
    let template = Template::new(
        args.check.clone(),
        args.provider.clone(),
        args.metadata.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let r = backfill(cfg, s3_prefix, &template, args.dry_run, args.window).await?;
    eprintln!(
        "backfill: {} objects listed, {} jobs; skipped: {} directory placeholders, {} without ETag, {} invalid",
        r.listed, r.jobs, r.placeholders, r.without_etag, r.invalid
    );
    if args.dry_run {
        eprintln!("backfill: dry run, nothing published (jobs printed to stdout)");
    } else {
        eprintln!(
            "backfill: {} published and confirmed, {} not published",
            r.published, r.unconfirmed
        );
    }
    let code = if r.unconfirmed > 0 {
        EXIT_UNCONFIRMED
    } else if r.invalid + r.without_etag > 0 {
        EXIT_INVALID
    } else {
        0
    };
    match code {
        0 => Ok(()),
        c => Err(Exit(c).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("s3://b/a/b/").unwrap(),
            ("b".into(), "a/b/".into())
        );
        assert_eq!(parse_prefix("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_prefix("b/x").is_err());
        assert!(parse_prefix("s3:///x").is_err());
    }

    #[test]
    fn job_ids_are_deterministic_and_valid() {
        let a = job_id("b", "k/1.png", "\"abc\"");
        assert_eq!(a, job_id("b", "k/1.png", "abc"), "quotes do not matter");
        assert_ne!(a, job_id("b", "k/1.png", "abd"), "a new ETag is a new job");
        assert_ne!(job_id("ab", "c", "e"), job_id("a", "bc", "e"));
        assert_eq!(a.len(), 67);
        assert!(a.starts_with("s3-") && a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn bodies_validate_and_keep_metadata_text() {
        let t = Template::new(
            "document".into(),
            Some("argos".into()),
            Some(r#"{ "batch": 7.50, "who": "ops" }"#),
        )
        .unwrap();
        let body = t.body("s3-x", "imgs", "a \"quoted\"/key.png");
        let rules = Rules {
            routing: crate::domain::routing::Routing {
                allowed_buckets: vec!["imgs".into()],
                default_document: crate::domain::ProviderName::Argos,
                default_face: crate::domain::ProviderName::Argos,
            },
            max_job_bytes: 65536,
        };
        let job = validate_job(body.as_bytes(), &rules).unwrap();
        assert_eq!(job.image.key, "a \"quoted\"/key.png");
        assert_eq!(job.metadata.unwrap().get(), r#"{"batch":7.50,"who":"ops"}"#);
        assert!(Template::new("face".into(), None, Some("[1]")).is_err());
        assert!(Template::new("face".into(), None, Some("{")).is_err());
    }

    #[test]
    fn placeholders() {
        let o = |k: &str| ListedObject {
            key: k.into(),
            etag: None,
            size: 0,
        };
        assert!(is_placeholder(&o("a/")));
        assert!(!is_placeholder(&o("a/b")));
    }
}
