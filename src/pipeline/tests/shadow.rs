//! Shadow mode in the step: the result is the primary answer alone; the
//! shadow call comes after it, compares the answers, and is skipped (never
//! retried) when it cannot be made.

use super::*;
use crate::pipeline::shadow::selected;
use crate::pipeline::traffic::LocalTraffic;

struct Pair {
    argos: Arc<Vendor>,
    intellicheck: Arc<Vendor>,
    pipeline: Pipeline,
}

fn pair(shadow: &str) -> Pair {
    let cfg = crate::config::Config::from_toml(shadow).unwrap();
    let cfg = PipelineConfig {
        shadow: cfg.shadow,
        traffic: cfg.traffic,
        ..config()
    };
    let images = Arc::new(Images::default());
    images.put(IMAGE, samples::png(1, 2000, None));
    images.put(BACK, samples::png(2, 2000, None));
    let argos = Arc::new(Vendor::new(ProviderName::Argos));
    let mut intellicheck = Vendor::new(ProviderName::Intellicheck);
    intellicheck.uses_back = true;
    let intellicheck = Arc::new(intellicheck);
    let pipeline = Pipeline::new(
        cfg,
        images,
        vec![argos.clone(), intellicheck.clone()],
        Arc::new(Metrics::new()),
    )
    .with_outcomes(Arc::new(Outcomes::default()))
    .with_traffic(Arc::new(LocalTraffic::default()));
    Pair {
        argos,
        intellicheck,
        pipeline,
    }
}

const BACK: &str = "s3://imgs/a/back.png";

impl Pair {
    async fn step(&self, body: &str) -> Finished {
        let incoming = self
            .pipeline
            .parse(body.as_bytes(), 0, Carried::default(), None);
        self.pipeline.step(&incoming).await
    }

    fn metrics(&self) -> String {
        self.pipeline.metrics().encode()
    }
}

/// Job ids the share picks, and ones it does not.
fn ids(share: f64, picked: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("s{i}"))
        .filter(|id| selected(id, share) == picked)
        .take(n)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_shadowed_job_is_compared_after_its_result() {
    let p = pair("[shadow]\nshare = 0.5\ndocument = \"intellicheck\"");
    let [picked] = <[String; 1]>::try_from(ids(0.5, true, 1)).unwrap();
    let [skipped] = <[String; 1]>::try_from(ids(0.5, false, 1)).unwrap();
    p.intellicheck.then(Answer::Score(0.2));

    let mut f = p
        .step(&job_with(&picked, &format!(r#","back_image":"{BACK}""#)))
        .await;
    let r = result(&f);
    // The result is Argos's alone; Intellicheck has not been called yet.
    assert_eq!(
        (r.provider, r.verdict),
        (ProviderName::Argos, Verdict::Live)
    );
    let sha = r.image.sha256.clone();
    assert_eq!(p.intellicheck.calls(), 0);
    assert_eq!(
        p.argos.backs.load(Ordering::SeqCst),
        0,
        "argos takes no back image"
    );
    let run = f.shadow.take().expect("the job is shadowed");
    let c = p
        .pipeline
        .shadow(run, &tokio_util::sync::CancellationToken::new())
        .await
        .expect("a comparison");
    assert_eq!(c.job_id.as_str(), picked);
    assert_eq!(c.primary.provider, ProviderName::Argos);
    assert_eq!(c.primary.verdict, Verdict::Live);
    assert_eq!(c.shadow.provider, ProviderName::Intellicheck);
    assert_eq!(c.shadow.verdict, Verdict::Spoof);
    assert_eq!(c.shadow.attempts, 1);
    assert!(!c.agreement.same_verdict);
    assert_eq!(c.agreement.score_difference, Some(-0.7));
    assert_eq!(c.routing_key(), "document.disagree");
    assert_eq!(c.image.sha256, sha);
    assert_eq!(c.metadata.as_ref().unwrap().get(), r#"{"k":1.50}"#);
    assert_eq!(
        p.intellicheck.backs.load(Ordering::SeqCst),
        1,
        "the back image the shadow vendor uses was fetched for it"
    );
    let m = p.metrics();
    assert!(
        m.contains(r#"liveness_shadow_comparisons_total{check="document",primary="argos",shadow="intellicheck",agreement="disagree"} 1"#),
        "{m}"
    );

    // A job outside the share is not shadowed; neither is one that named
    // the shadow vendor.
    let f = p.step(&job(&skipped)).await;
    assert!(f.shadow.is_none());
    let f = p
        .step(&job_with(
            &ids(0.5, true, 2)[1],
            r#","provider":"intellicheck""#,
        ))
        .await;
    assert_eq!(result(&f).provider, ProviderName::Intellicheck);
    assert!(f.shadow.is_none(), "answered by the shadow vendor already");
    // A redelivered job answered from the store is not shadowed again.
    let f = p.step(&job(&picked)).await;
    result(&f);
    assert!(f.shadow.is_none());
    assert_eq!(p.argos.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_shadow_vendor_never_touches_the_result() {
    let p = pair("[shadow]\nshare = 1.0\ndocument = \"intellicheck\"\ntimeout = \"2s\"");
    let stop = tokio_util::sync::CancellationToken::new();
    // Refused request: skipped as failed, after one attempt.
    p.intellicheck.then(Answer::Error(VendorError::from_status(
        ProviderName::Intellicheck,
        400,
        None,
    )));
    let mut f = p.step(&job("x1")).await;
    assert_eq!(result(&f).verdict, Verdict::Live);
    assert!(
        p.pipeline
            .shadow(f.shadow.take().unwrap(), &stop)
            .await
            .is_none()
    );
    // Stopped (the drain ran out): skipped without a call.
    let mut f = p.step(&job("x4")).await;
    let stopped = tokio_util::sync::CancellationToken::new();
    stopped.cancel();
    assert!(
        p.pipeline
            .shadow(f.shadow.take().unwrap(), &stopped)
            .await
            .is_none()
    );
    // Its credentials refused: skipped, and the vendor is paused, so the
    // next shadow is skipped without a call.
    p.intellicheck
        .then(Answer::Error(VendorError::credentials("key refused")));
    let mut f = p.step(&job("x2")).await;
    assert!(
        p.pipeline
            .shadow(f.shadow.take().unwrap(), &stop)
            .await
            .is_none()
    );
    let mut f = p.step(&job("x3")).await;
    assert_eq!(result(&f).provider, ProviderName::Argos);
    assert!(
        p.pipeline
            .shadow(f.shadow.take().unwrap(), &stop)
            .await
            .is_none()
    );
    assert_eq!(p.intellicheck.calls(), 2);
    let m = p.metrics();
    for (reason, n) in [("failed", 1), ("unavailable", 2), ("shutdown", 1)] {
        assert!(
            m.contains(&format!(
                r#"liveness_shadow_skipped_total{{shadow="intellicheck",reason="{reason}"}} {n}"#
            )),
            "{reason}: {m}"
        );
    }
    assert_eq!(p.argos.calls(), 4, "every job has its result");
}

#[tokio::test(start_paused = true)]
async fn the_shadow_budget_and_slots_bound_the_shadow_calls() {
    let p = pair(
        "[coordination]\nredis_url = \"redis://x\"\n\
         [shadow]\nshare = 1.0\ndocument = \"intellicheck\"\ndaily_budget = 2\nconcurrency = 1",
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut runs = Vec::new();
    for i in 0..4 {
        let mut f = p.step(&job(&format!("b{i}"))).await;
        runs.push(f.shadow.take().unwrap());
    }
    // One slot: while one shadow call runs, another is skipped as busy.
    let (a, b) = {
        let mut it = runs.drain(..2);
        (it.next().unwrap(), it.next().unwrap())
    };
    let (first, second) = tokio::join!(p.pipeline.shadow(a, &stop), async {
        tokio::task::yield_now().await;
        p.pipeline.shadow(b, &stop).await
    });
    assert!(first.is_some());
    assert!(second.is_none(), "busy");
    // Budget 2: one more, then spent.
    let mut left = runs.into_iter();
    assert!(
        p.pipeline
            .shadow(left.next().unwrap(), &stop)
            .await
            .is_some()
    );
    assert!(
        p.pipeline
            .shadow(left.next().unwrap(), &stop)
            .await
            .is_none()
    );
    assert_eq!(p.intellicheck.calls(), 2);
    let m = p.metrics();
    for reason in ["busy", "budget"] {
        assert!(
            m.contains(&format!(
                r#"liveness_shadow_skipped_total{{shadow="intellicheck",reason="{reason}"}} 1"#
            )),
            "{reason}: {m}"
        );
    }
}
