//! In-memory stand-ins for the pipeline's three dependencies, for the
//! pipeline test tier: an image store, a results store and a vendor, each
//! scriptable and each counting what it was asked.

use crate::domain::assessment::{Assessment, SignalOutcome, VendorRefs};
use crate::domain::job::{JobId, S3Uri};
use crate::domain::{Check, ProviderName, SignalName, SignalVerdict};
use crate::providers::{Provider, Submission, VendorError, VendorRequest};
use crate::store::{
    AttemptLog, FetchError, ImageStore, OutcomeError, OutcomeStore, PendingSubmission,
    StoredOutcome,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Images by `s3://bucket/key`; a missing one is not found. Transient
/// failures can be queued per URI.
#[derive(Default)]
pub struct Images {
    objects: Mutex<HashMap<String, Bytes>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Objects whose body never finishes arriving.
    trickling: Mutex<std::collections::HashSet<String>>,
    pub fetches: AtomicU32,
}

impl Images {
    pub fn put(&self, uri: &str, bytes: Vec<u8>) {
        self.objects
            .lock()
            .unwrap()
            .insert(uri.to_owned(), bytes.into());
    }

    /// Every fetch of `uri` answers, then its body never completes (a
    /// trickling object).
    pub fn trickle(&self, uri: &str) {
        self.trickling.lock().unwrap().insert(uri.to_owned());
    }

    /// The next `n` fetches of `uri` fail as if S3 were down.
    pub fn fail(&self, uri: &str, n: u32) {
        self.failures.lock().unwrap().insert(uri.to_owned(), n);
    }
}

#[async_trait]
impl ImageStore for Images {
    async fn fetch(&self, uri: &S3Uri, limit: u64) -> Result<Bytes, FetchError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let key = uri.to_string();
        if self.trickling.lock().unwrap().contains(&key) {
            return std::future::pending().await;
        }
        if let Some(n) = self.failures.lock().unwrap().get_mut(&key)
            && *n > 0
        {
            *n -= 1;
            return Err(FetchError::Transient(format!("could not read {uri}: 503")));
        }
        let bytes = self
            .objects
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or_else(|| FetchError::NotFound(format!("{uri} does not exist (no such key)")))?;
        if bytes.len() as u64 > limit {
            return Err(FetchError::TooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(bytes)
    }
}

/// A results store in memory. `down` makes every operation fail as if S3
/// were unreachable.
#[derive(Default)]
pub struct Outcomes {
    pub outcomes: Mutex<HashMap<JobId, StoredOutcome>>,
    pub pending: Mutex<HashMap<JobId, PendingSubmission>>,
    pub audit: Mutex<Vec<AttemptLog>>,
    pub corrupt: Mutex<Option<JobId>>,
    pub down: std::sync::atomic::AtomicBool,
    /// Outcome writes are conditional (only if absent), as on AWS S3.
    pub conditional: std::sync::atomic::AtomicBool,
    /// Reads of outcome records and of pending records (the requests a
    /// job costs).
    pub outcome_reads: std::sync::atomic::AtomicUsize,
    pub pending_reads: std::sync::atomic::AtomicUsize,
}

impl Outcomes {
    fn up(&self) -> Result<(), OutcomeError> {
        if self.down.load(Ordering::SeqCst) {
            Err(OutcomeError::Unavailable(
                "could not read the results store: connection refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl OutcomeStore for Outcomes {
    async fn load(&self, job_id: &JobId) -> Result<Option<StoredOutcome>, OutcomeError> {
        self.outcome_reads.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        if self.corrupt.lock().unwrap().as_ref() == Some(job_id) {
            return Err(OutcomeError::Corrupt(format!(
                "outcomes/{job_id}.json is not a readable record"
            )));
        }
        Ok(self.outcomes.lock().unwrap().get(job_id).cloned())
    }

    async fn save(&self, outcome: &StoredOutcome) -> Result<(), OutcomeError> {
        self.up()?;
        let mut outcomes = self.outcomes.lock().unwrap();
        if self.conditional.load(Ordering::SeqCst) && outcomes.contains_key(&outcome.job_id) {
            return Err(OutcomeError::AlreadyStored("exists".into()));
        }
        outcomes.insert(outcome.job_id.clone(), outcome.clone());
        Ok(())
    }

    async fn save_attempts(&self, log: &AttemptLog) -> Result<(), OutcomeError> {
        self.up()?;
        self.audit.lock().unwrap().push(log.clone());
        Ok(())
    }

    async fn load_pending(
        &self,
        job_id: &JobId,
    ) -> Result<Option<PendingSubmission>, OutcomeError> {
        self.pending_reads.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        Ok(self.pending.lock().unwrap().get(job_id).cloned())
    }

    async fn save_pending(&self, pending: &PendingSubmission) -> Result<(), OutcomeError> {
        self.up()?;
        self.pending
            .lock()
            .unwrap()
            .insert(pending.job_id.clone(), pending.clone());
        Ok(())
    }

    async fn delete_pending(&self, job_id: &JobId) -> Result<(), OutcomeError> {
        self.up()?;
        self.pending.lock().unwrap().remove(job_id);
        Ok(())
    }

    fn location(&self, job_id: &JobId) -> String {
        format!("memory://outcomes/{job_id}.json")
    }
}

/// What the fake vendor does with one call.
pub enum Answer {
    /// Every requested signal scored `score` (0-1).
    Score(f64),
    /// Accepted for a callback (Argos callback mode).
    Accepted,
    Error(VendorError),
}

/// A vendor whose answers are queued; when the queue is empty it answers
/// `fallback`. `latency` is added to every call (on the test's clock).
pub struct Vendor {
    pub name: ProviderName,
    answers: Mutex<VecDeque<Answer>>,
    fallback: f64,
    pub latency: Mutex<Duration>,
    pub calls: AtomicU32,
    pub callback_mode: bool,
    /// Whether it takes a job's back image (like Intellicheck).
    pub uses_back: bool,
    /// Calls with a back image.
    pub backs: AtomicU32,
    /// Calls under way now, and the most at once.
    in_call: AtomicU32,
    pub max_in_call: AtomicU32,
}

impl Vendor {
    pub fn new(name: ProviderName) -> Self {
        Vendor {
            name,
            answers: Mutex::new(VecDeque::new()),
            fallback: 0.9,
            latency: Mutex::new(Duration::from_millis(100)),
            calls: AtomicU32::new(0),
            callback_mode: false,
            uses_back: false,
            backs: AtomicU32::new(0),
            in_call: AtomicU32::new(0),
            max_in_call: AtomicU32::new(0),
        }
    }

    pub fn then(&self, a: Answer) -> &Self {
        self.answers.lock().unwrap().push_back(a);
        self
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn answer(&self, req: &VendorRequest<'_>) -> Result<Submission, VendorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if req.back_image.is_some() {
            self.backs.fetch_add(1, Ordering::SeqCst);
        }
        let now = self.in_call.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_call.fetch_max(now, Ordering::SeqCst);
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        self.in_call.fetch_sub(1, Ordering::SeqCst);
        let next = self.answers.lock().unwrap().pop_front();
        match next.unwrap_or(Answer::Score(self.fallback)) {
            Answer::Score(s) => Ok(Submission::Answered(assessment(req.signals, s))),
            Answer::Accepted => Ok(Submission::Accepted(VendorRefs {
                transaction_id: Some("txn-1".into()),
                ..Default::default()
            })),
            Answer::Error(e) => Err(e),
        }
    }
}

/// Every requested signal scored `score`, live above 0.6, spoof at or below
/// 0.3, review between.
pub fn assessment(signals: &[SignalName], score: f64) -> Assessment {
    let verdict = if score > 0.6 {
        SignalVerdict::Live
    } else if score > 0.3 {
        SignalVerdict::Review
    } else {
        SignalVerdict::Spoof
    };
    Assessment::from_explained(
        signals
            .iter()
            .map(|&name| {
                (
                    SignalOutcome {
                        name,
                        side: None,
                        verdict,
                        score: Some(score),
                        vendor_score: serde_json::Number::from_f64(score * 100.0),
                        threshold: None,
                    },
                    format!("{name} scored {score}"),
                )
            })
            .collect(),
        VendorRefs {
            transaction_id: Some("txn-1".into()),
            ..Default::default()
        },
    )
}

#[async_trait]
impl Provider for Vendor {
    fn name(&self) -> ProviderName {
        self.name
    }

    async fn verify(&self, req: &VendorRequest<'_>) -> Result<Assessment, VendorError> {
        match self.answer(req).await? {
            Submission::Answered(a) => Ok(a),
            Submission::Accepted(_) => Err(VendorError::outage("accepted a synchronous call")),
        }
    }

    fn has_callback_mode(&self, check: Check) -> bool {
        self.callback_mode && check == Check::Document
    }

    fn uses_back_image(&self) -> bool {
        self.uses_back
    }

    async fn submit_for_callback(
        &self,
        req: &VendorRequest<'_>,
        _callback_url: &str,
    ) -> Result<Submission, VendorError> {
        self.answer(req).await
    }

    fn read_callback(
        &self,
        body: &[u8],
        requested: &[SignalName],
    ) -> Result<Assessment, VendorError> {
        let score: f64 = std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| VendorError::rejected("callback body is not a score"))?;
        Ok(assessment(requested, score))
    }
}

/// Claims in memory, with leases on the test's clock. `down` makes every
/// operation fail as if Redis were unreachable.
#[derive(Default)]
pub struct Claims {
    held: Mutex<HashMap<JobId, (String, tokio::time::Instant)>>,
    pub down: std::sync::atomic::AtomicBool,
}

impl Claims {
    /// Another owner holds `job_id` for `lease`.
    pub fn hold(&self, job_id: &JobId, lease: Duration) {
        self.held.lock().unwrap().insert(
            job_id.clone(),
            ("elsewhere".into(), tokio::time::Instant::now() + lease),
        );
    }

    pub fn is_held(&self, job_id: &JobId) -> bool {
        self.held
            .lock()
            .unwrap()
            .get(job_id)
            .is_some_and(|(_, until)| *until > tokio::time::Instant::now())
    }

    fn up(&self) -> Result<(), crate::coordination::Unavailable> {
        if self.down.load(Ordering::SeqCst) {
            Err(crate::coordination::Unavailable(
                "connection refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl crate::coordination::Claims for Claims {
    async fn try_claim(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<crate::coordination::Claim, crate::coordination::Unavailable> {
        self.up()?;
        let now = tokio::time::Instant::now();
        let mut held = self.held.lock().unwrap();
        match held.get(job_id) {
            Some((holder, until)) if *until > now => {
                Ok(crate::coordination::Claim::HeldBy(holder.clone()))
            }
            _ => {
                held.insert(job_id.clone(), (owner.to_owned(), now + lease));
                Ok(crate::coordination::Claim::Acquired)
            }
        }
    }

    async fn renew(
        &self,
        job_id: &JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, crate::coordination::Unavailable> {
        self.up()?;
        let mut held = self.held.lock().unwrap();
        match held.get_mut(job_id) {
            Some((holder, until)) if holder == owner => {
                *until = tokio::time::Instant::now() + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        job_id: &JobId,
        owner: &str,
    ) -> Result<(), crate::coordination::Unavailable> {
        self.up()?;
        let mut held = self.held.lock().unwrap();
        if held.get(job_id).is_some_and(|(holder, _)| holder == owner) {
            held.remove(job_id);
        }
        Ok(())
    }
}
