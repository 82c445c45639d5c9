//! S3 (or any S3-compatible server) through the AWS SDK.

use super::outcomes::{
    OUTCOME_SCHEMA, PENDING_SCHEMA, PendingSubmission, attempts_key, outcome_key, pending_key,
};
use super::{AttemptLog, FetchError, ImageStore, OutcomeError, OutcomeStore, StoredOutcome};
use crate::config::{ResultsConfig, S3Config};
use crate::domain::job::{JobId, S3Uri};
use crate::telemetry::{Metrics, S3Request};
use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// Counts the requests by reason (`liveness_s3_requests_total`), when set.
    metrics: Option<Arc<Metrics>>,
}

/// Counts one request in `metrics`, if any.
fn count(metrics: &Option<Arc<Metrics>>, op: S3Request, body_bytes: usize) {
    if let Some(m) = metrics {
        m.s3_request(op, body_bytes);
    }
}

impl S3Store {
    /// One client for the process: it pools connections (TCP_NODELAY on, so
    /// small GETs are not held back by delayed acknowledgements).
    pub async fn new(cfg: &S3Config) -> S3Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .operation_timeout(cfg.operation_timeout)
            .build();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(Region::new(cfg.region.clone()))
            .timeout_config(timeouts)
            // Only the checksums S3 requires: S3-compatible servers differ in
            // their support for the SDK's default CRC trailers.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .force_path_style(cfg.force_path_style);
        if let Some(endpoint) = &cfg.endpoint {
            // Url keeps a trailing slash the SDK would double in paths.
            b = b.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        if cfg.access_key_id.is_empty() {
            // The standard chain: environment, web identity (IRSA), ECS, IMDS.
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .region(Region::new(cfg.region.clone()))
                .load()
                .await;
            if let Some(p) = shared.credentials_provider() {
                b = b.credentials_provider(p);
            }
        } else {
            b = b.credentials_provider(Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.expose().to_owned(),
                None,
                None,
                "liveness-worker-config",
            ));
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            metrics: None,
        }
    }

    /// Counts every request this store (and its results store) sends in
    /// `metrics`, by reason.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> S3Store {
        self.metrics = Some(metrics);
        self
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The results store `cfg` names, on this connection.
    pub fn outcomes(&self, cfg: &ResultsConfig) -> S3Outcomes {
        S3Outcomes {
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            max_record_bytes: cfg.max_record_bytes,
        }
    }

    /// Uploads an object (demo, tests, benchmark).
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("put s3://{bucket}/{key}: {}", describe(&e)))?;
        Ok(())
    }
}

impl S3Store {
    /// The size of an object (HEAD), None when it does not exist: how an
    /// archive written by an operator command is verified before anything
    /// it holds is deleted.
    pub async fn size_of(&self, bucket: &str, key: &str) -> anyhow::Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => anyhow::bail!("HEAD s3://{bucket}/{key}: {}", describe(&e)),
        }
    }

    /// Deletes an object (deleting a missing one succeeds).
    pub async fn delete(&self, bucket: &str, key: &str) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("delete s3://{bucket}/{key}: {}", describe(&e)))?;
        Ok(())
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    /// The ETag as S3 sends it (quoted); None if the server sent none.
    pub etag: Option<String>,
    pub size: u64,
}

impl S3Store {
    /// One page of ListObjectsV2 under `prefix` (up to 1 000 keys) and the
    /// token of the next page, None after the last. Callers page through
    /// without ever holding the whole listing.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<String>,
    ) -> anyhow::Result<(Vec<ListedObject>, Option<String>)> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("listing s3://{bucket}/{prefix} failed: {}", describe(&e))
            })?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ListedObject {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().map(str::to_owned),
                    size: o.size().unwrap_or(0).max(0) as u64,
                })
            })
            .collect();
        let next = match out.is_truncated() {
            Some(true) => out.next_continuation_token().map(str::to_owned),
            _ => None,
        };
        Ok((objects, next))
    }
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{} ({})",
                err.message().unwrap_or("no message"),
                err.code().unwrap_or("no code")
            )
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        other => {
            let mut s = other.to_string();
            let mut cur = std::error::Error::source(other);
            while let Some(c) = cur {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cur = c.source();
            }
            s
        }
    }
}

#[async_trait]
impl ImageStore for S3Store {
    async fn fetch(&self, uri: &S3Uri, limit: u64) -> Result<Bytes, FetchError> {
        count(&self.metrics, S3Request::ImageGet, 0);
        let out = self
            .client
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await
            .map_err(|e| {
                let code = match &e {
                    SdkError::ServiceError(s) => s.err().code().map(str::to_owned),
                    _ => None,
                };
                match code.as_deref() {
                    Some("NoSuchKey") => {
                        FetchError::NotFound(format!("{uri} does not exist (no such key)"))
                    }
                    Some("NoSuchBucket") => {
                        FetchError::NotFound(format!("{uri}: bucket {} does not exist", uri.bucket))
                    }
                    _ => FetchError::Transient(format!("could not read {uri}: {}", describe(&e))),
                }
            })?;
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > limit {
            return Err(FetchError::TooLarge {
                size: declared,
                limit,
            });
        }
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(declared as usize);
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| FetchError::Transient(format!("reading {uri} failed: {e}")))?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::TooLarge {
                    size: (buf.len() + chunk.len()) as u64,
                    limit,
                });
            }
            // First chunk of a single-chunk body: keep it without copying.
            if buf.is_empty() && chunk.len() as u64 == declared {
                return Ok(chunk);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// The results store in an S3 bucket (see [`super::outcomes`]).
#[derive(Clone)]
pub struct S3Outcomes {
    client: aws_sdk_s3::Client,
    metrics: Option<Arc<Metrics>>,
    bucket: String,
    prefix: String,
    /// `results.max_record_bytes`: larger records are not read.
    max_record_bytes: u64,
}

impl S3Outcomes {
    /// The results bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix inside the results bucket (empty or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A JSON record, None when there is none.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        schema: &str,
        op: S3Request,
    ) -> Result<Option<T>, OutcomeError> {
        let Some(body) = self.get(key, op).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            OutcomeError::Corrupt(format!(
                "s3://{}/{key} is not a readable {schema} record ({e})",
                self.bucket
            ))
        })
    }

    /// The bytes of any object of the results bucket (at most
    /// `results.max_record_bytes`), None when there is none: for the
    /// operator commands, which show and move records as they are stored.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, OutcomeError> {
        self.get(key, S3Request::Other).await
    }

    async fn get(&self, key: &str, op: S3Request) -> Result<Option<Vec<u8>>, OutcomeError> {
        count(&self.metrics, op, 0);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(s)) if s.err().code() == Some("NoSuchKey") => {
                return Ok(None);
            }
            Err(e) => {
                return Err(OutcomeError::Unavailable(format!(
                    "could not read the results store at s3://{}/{key}: {}",
                    self.bucket,
                    describe(&e)
                )));
            }
        };
        let max = self.max_record_bytes;
        let too_large = |size: String| {
            OutcomeError::Corrupt(format!(
                "s3://{}/{key} is {size}, over results.max_record_bytes ({max}); it was not read",
                self.bucket
            ))
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > max {
            return Err(too_large(format!("{declared} bytes")));
        }
        let mut stream = out.body;
        let mut body = BytesMut::with_capacity(declared as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                OutcomeError::Unavailable(format!("reading s3://{}/{key} failed: {e}", self.bucket))
            })?;
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large(format!("more than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body.to_vec()))
    }

    /// Every key of the results bucket under `prefix`, in key order (all
    /// pages: for one job's records, not for a whole listing).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, OutcomeError> {
        let store = S3Store {
            client: self.client.clone(),
            metrics: self.metrics.clone(),
        };
        let mut token = None;
        let mut out = Vec::new();
        loop {
            let (page, next) = store
                .list_page(&self.bucket, prefix, token)
                .await
                .map_err(|e| OutcomeError::Unavailable(e.to_string()))?;
            out.extend(page.into_iter().map(|o| o.key));
            match next {
                Some(n) => token = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// Start-up check: a missing bucket is a configuration error (every job
    /// would wait on the ladder for it); an unreachable S3 is only logged,
    /// since the worker rides out S3 outages.
    pub async fn check(&self) -> anyhow::Result<()> {
        count(&self.metrics, S3Request::Other, 0);
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => {
                anyhow::bail!(
                    "the results bucket {:?} (results.bucket) does not exist: create it, or set results.bucket",
                    self.bucket
                )
            }
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, error = %describe(&e), "Cannot check the results bucket now; going on");
                Ok(())
            }
        }
    }

    /// Writes a record; `if_absent` asks the server to refuse it when the
    /// key exists (`If-None-Match: *`: AWS S3 honours it, some compatible
    /// servers such as Garage 2.5 ignore it and overwrite).
    async fn put_json(
        &self,
        key: &str,
        body: Vec<u8>,
        if_absent: bool,
        op: S3Request,
    ) -> Result<(), OutcomeError> {
        count(&self.metrics, op, body.len());
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        if if_absent {
            put = put.if_none_match("*");
        }
        put.send().await.map_err(|e| match &e {
            SdkError::ServiceError(s) if s.raw().status().as_u16() == 412 => {
                OutcomeError::AlreadyStored(format!("s3://{}/{key} exists already", self.bucket))
            }
            _ => OutcomeError::Unavailable(format!(
                "could not write s3://{}/{key}: {}",
                self.bucket,
                describe(&e)
            )),
        })?;
        Ok(())
    }
}

#[async_trait]
impl OutcomeStore for S3Outcomes {
    async fn load(&self, job_id: &JobId) -> Result<Option<StoredOutcome>, OutcomeError> {
        self.get_json(
            &outcome_key(&self.prefix, job_id),
            OUTCOME_SCHEMA,
            S3Request::OutcomeGet,
        )
        .await
    }

    async fn save(&self, outcome: &StoredOutcome) -> Result<(), OutcomeError> {
        let body = serde_json::to_vec(outcome).expect("outcome serializes");
        self.put_json(
            &outcome_key(&self.prefix, &outcome.job_id),
            body,
            true,
            S3Request::OutcomePut,
        )
        .await
    }

    async fn save_attempts(&self, log: &AttemptLog) -> Result<(), OutcomeError> {
        let (Some(first), Some(last)) = (log.attempts.first(), log.attempts.last()) else {
            return Ok(());
        };
        let key = attempts_key(&self.prefix, &log.job_id, first.attempt, last.attempt);
        self.put_json(
            &key,
            serde_json::to_vec(log).expect("attempt log serializes"),
            false,
            S3Request::AttemptsPut,
        )
        .await
    }

    async fn load_pending(
        &self,
        job_id: &JobId,
    ) -> Result<Option<PendingSubmission>, OutcomeError> {
        self.get_json(
            &pending_key(&self.prefix, job_id),
            PENDING_SCHEMA,
            S3Request::PendingGet,
        )
        .await
    }

    async fn save_pending(&self, pending: &PendingSubmission) -> Result<(), OutcomeError> {
        let body = serde_json::to_vec(pending).expect("pending record serializes");
        self.put_json(
            &pending_key(&self.prefix, &pending.job_id),
            body,
            false,
            S3Request::PendingPut,
        )
        .await
    }

    async fn delete_pending(&self, job_id: &JobId) -> Result<(), OutcomeError> {
        let key = pending_key(&self.prefix, job_id);
        count(&self.metrics, S3Request::PendingDelete, 0);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                OutcomeError::Unavailable(format!(
                    "could not delete s3://{}/{key}: {}",
                    self.bucket,
                    describe(&e)
                ))
            })?;
        Ok(())
    }

    fn location(&self, job_id: &JobId) -> String {
        format!("s3://{}/{}", self.bucket, outcome_key(&self.prefix, job_id))
    }
}
