//! Vendor traffic control (docs/traffic.md) on the real services: the
//! GCRA, block and budget scripts on Redis; two replicas sharing one rate
//! limit; a store-less replica taking its share; a spent budget parking
//! jobs, none dead-lettered, until it is raised (by a restart, or at run
//! time by `liveness-worker budget set`, whose overrides the spend script
//! reads); a vendor at its limit waiting in its wait queue, leaving the
//! jobs queue's slots to the others.

use crate::harness::{TestEnv, env, unique, wait_for};
use crate::telemetry::series;
use liveness_worker::config::Config;
use liveness_worker::coordination::{
    CapChange, Coordination, Overrides, RateSpec, Reservation, Spend, TrafficStore as _, Windows,
};
use liveness_worker::domain::ProviderName;
use liveness_worker::samples;
use liveness_worker::telemetry::Telemetry;
use liveness_worker::worker;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn store(tag: &str) -> Coordination {
    let cfg = Config::from_toml(&format!(
        "[coordination]\nredis_url = \"{}\"",
        env("LIVENESS_TEST_REDIS_URL")
    ))
    .unwrap();
    Coordination::connect(&cfg.coordination, &unique(tag)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_limiter_spaces_reservations_blocks_and_counts_budgets() {
    let s = store("gcra");
    let rate = RateSpec {
        interval: Duration::from_millis(100),
        burst: 1,
    };
    let long = Duration::from_secs(30);
    let mut waits = Vec::new();
    for _ in 0..10 {
        match s.reserve(ProviderName::Didit, rate, long).await.unwrap() {
            Reservation::Granted { wait } => waits.push(wait),
            r => panic!("{r:?}"),
        }
    }
    // One slot every 100 ms, handed out back to back: each wait is about
    // 100 ms longer than the one before (less the time the calls took).
    assert_eq!(waits[0], Duration::ZERO);
    for w in waits.windows(2) {
        assert!(w[1] > w[0], "{waits:?}");
    }
    assert!(
        waits[9] > Duration::from_millis(500) && waits[9] <= Duration::from_millis(900),
        "{waits:?}"
    );
    // A slot further away than the caller waits is refused, and not taken.
    let short = Duration::from_millis(50);
    let Reservation::Refused { wait } = s.reserve(ProviderName::Didit, rate, short).await.unwrap()
    else {
        panic!("expected a refusal")
    };
    assert!(wait > Duration::from_millis(500), "{wait:?}");
    // Another vendor is not affected.
    assert_eq!(
        s.reserve(ProviderName::Argos, rate, short).await.unwrap(),
        Reservation::Granted {
            wait: Duration::ZERO
        }
    );
    // A 429's block holds the vendor back for everyone, with or without a rate.
    let held = s
        .block(ProviderName::Argos, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(held > Duration::from_millis(4900), "{held:?}");
    let none = RateSpec {
        interval: Duration::ZERO,
        burst: 1,
    };
    let Reservation::Granted { wait } = s.reserve(ProviderName::Argos, none, long).await.unwrap()
    else {
        panic!("expected a slot")
    };
    assert!(wait > Duration::from_millis(4500), "{wait:?}");
    // A shorter block does not shorten a longer one.
    let still = s
        .block(ProviderName::Argos, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(still > Duration::from_secs(4), "{still:?}");

    // Budgets: three units, then spent; both windows counted.
    let w = Windows::now();
    for n in 1..=3 {
        let Spend::Taken(spent) = s.spend("argos", &w, 3, 100).await.unwrap() else {
            panic!("budget left")
        };
        assert_eq!((spent.day, spent.month), (n, n));
    }
    let Spend::Exhausted(spent) = s.spend("argos", &w, 3, 100).await.unwrap() else {
        panic!("budget spent")
    };
    assert_eq!(spent.day, 3);
    // The month cap binds as well.
    assert!(matches!(
        s.spend("argos", &w, 0, 3).await.unwrap(),
        Spend::Exhausted(_)
    ));
    assert_eq!(s.spent("argos", &w).await.unwrap().month, 3);
    assert_eq!(s.spent("didit", &w).await.unwrap().day, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_overrides_in_redis_replace_the_configured_caps_until_cleared() {
    let s = store("caps");
    let w = Windows::now();
    let spend = async |w: &Windows| s.spend("argos", w, 2, 0).await.unwrap();
    // Configured: 2 a day, no monthly cap.
    for n in 1..=2 {
        let Spend::Taken(spent) = spend(&w).await else {
            panic!("budget left")
        };
        assert_eq!((spent.day, spent.overrides), (n, Overrides::default()));
    }
    assert!(matches!(spend(&w).await, Spend::Exhausted(_)));
    // Raised to 3: one more unit, then spent again; the override is reported.
    let o = s
        .change_caps("argos", CapChange::Set(3), CapChange::Keep)
        .await
        .unwrap();
    assert_eq!(
        o,
        Overrides {
            day: Some(3),
            month: None
        }
    );
    let Spend::Taken(spent) = spend(&w).await else {
        panic!("raised")
    };
    assert_eq!((spent.day, spent.overrides.day), (3, Some(3)));
    let Spend::Exhausted(spent) = spend(&w).await else {
        panic!("spent under the override")
    };
    assert_eq!((spent.day, spent.overrides.day), (3, Some(3)));
    // 0 is "no cap", and is not the same as clearing.
    s.change_caps("argos", CapChange::Set(0), CapChange::Keep)
        .await
        .unwrap();
    for n in 4..=6 {
        let Spend::Taken(spent) = spend(&w).await else {
            panic!("no cap")
        };
        assert_eq!((spent.day, spent.overrides.day), (n, Some(0)));
    }
    assert_eq!(
        s.spent("argos", &w).await.unwrap().overrides.day,
        Some(0),
        "read back by spent"
    );
    // A monthly override binds too and keeps the daily one.
    let o = s
        .change_caps("argos", CapChange::Keep, CapChange::Set(6))
        .await
        .unwrap();
    assert_eq!((o.day, o.month), (Some(0), Some(6)));
    let Spend::Exhausted(spent) = spend(&w).await else {
        panic!("the month is spent")
    };
    assert_eq!((spent.month, spent.overrides.month), (6, Some(6)));
    // Overrides have no window: another day (the month's count is another
    // month's too) finds them.
    let later = Windows::at(std::time::SystemTime::now() + Duration::from_secs(40 * 86_400));
    let Spend::Taken(spent) = spend(&later).await else {
        panic!("a new month")
    };
    assert_eq!((spent.day, spent.overrides), (1, o));
    // Cleared: the configured caps apply again.
    let o = s
        .change_caps("argos", CapChange::Clear, CapChange::Clear)
        .await
        .unwrap();
    assert!(o.is_empty());
    let Spend::Exhausted(spent) = spend(&w).await else {
        panic!("the configured cap")
    };
    assert_eq!((spent.day, spent.overrides), (6, Overrides::default()));
    let read = s.spent("argos", &w).await.unwrap();
    assert_eq!((read.day, read.month, read.overrides), (6, 6, o));
    // Clearing what is not set changes nothing; another name is another budget.
    assert!(
        s.change_caps("argos", CapChange::Clear, CapChange::Keep)
            .await
            .unwrap()
            .is_empty()
    );
    s.change_caps("shadow-argos", CapChange::Set(1), CapChange::Keep)
        .await
        .unwrap();
    assert!(s.spent("argos", &w).await.unwrap().overrides.is_empty());
    assert_eq!(s.spent("shadow-argos", &w).await.unwrap().day, 0);
}

/// A second worker on the same configuration (its own telemetry).
async fn second_worker(
    t: &TestEnv,
) -> (
    Telemetry,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let telemetry = Telemetry::default();
    let pipeline = worker::build_pipeline(&t.cfg, telemetry.metrics.clone())
        .await
        .expect("pipeline builds");
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker::run(
        t.cfg.clone(),
        pipeline,
        telemetry.clone(),
        stop.clone(),
    ));
    wait_for("two consumers", 20, async || {
        t.consumers(&t.names.jobs_queue).await.unwrap_or(0) >= 2
    })
    .await;
    (telemetry, stop, handle)
}

async fn set_faults(t: &TestEnv, faults: serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/_admin/faults", t.emulator.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn publish_face_jobs(t: &TestEnv, tag: &str, n: u64) {
    for i in 0..n {
        let img = samples::png(9000 + i, 1500, Some(r#"{"face":90}"#));
        let uri = t.upload(&format!("{tag}-{i}.png"), img).await;
        t.publish(&t.job(&format!("{tag}-{i}"), "face", &uri)).await;
    }
}

fn results_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("liveness_jobs_total{outcome=\"result\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_vendor_rate_limit() {
    let mut t = TestEnv::new("rate", "[traffic.argos]\nrate = \"10/s\"").await;
    // The vendor admits 14 requests per second: the fleet's 10/s fits, two
    // replicas at 10/s each would not.
    set_faults(
        &t,
        serde_json::json!({"vendor": "argos", "rate_limit_per_minute": 14, "rate_limit_window_ms": 1000}),
    )
    .await;
    t.start_worker().await;
    let (telemetry2, stop2, w2) = second_worker(&t).await;
    let jobs = 40;
    // Uploaded first, published back to back.
    let started = Instant::now();
    publish_face_jobs(&t, "rate", jobs).await;
    let results = t.results(jobs as usize).await;
    let took = started.elapsed();
    assert_eq!(results.len(), jobs as usize);
    assert!(results.values().all(|(rk, _, _)| rk == "face.live"));
    let calls = t.calls().await;
    let submissions = calls["argos"]["submissions"].as_u64().unwrap();
    let limited = calls["argos"]["rate_limited"].as_u64().unwrap();
    // Spaced at 10/s fleet-wide: no 429 (a couple allowed for scheduling
    // jitter on a loaded machine), and never faster than the limit.
    assert!(limited <= 2, "{calls}");
    assert_eq!(submissions, jobs + limited, "{calls}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    // Both replicas took part.
    let (m1, m2) = (t.telemetry.metrics.encode(), telemetry2.metrics.encode());
    assert!(
        results_total(&m1) >= 1.0 && results_total(&m2) >= 1.0,
        "{m1}\n{m2}"
    );
    assert_eq!(
        series(&m1, "liveness_vendor_rate_limit{vendor=\"argos\"}"),
        Some(10.0)
    );
    stop2.cancel();
    w2.await.unwrap().unwrap();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_coordination_store_each_replica_takes_its_share() {
    let mut t = TestEnv::new(
        "share",
        "[coordination]\nredis_url = \"\"\n[traffic.argos]\nrate = \"10/s\"",
    )
    .await;
    t.start_worker().await;
    let (telemetry2, stop2, w2) = second_worker(&t).await;
    // The share follows the consumers on the jobs queue (read every 10 s).
    wait_for("both replicas at 5/s", 40, async || {
        let (a, b) = (t.telemetry.metrics.encode(), telemetry2.metrics.encode());
        let rate = |m: &str| series(m, "liveness_vendor_rate_limit{vendor=\"argos\"}");
        rate(&a) == Some(5.0) && rate(&b) == Some(5.0)
    })
    .await;
    publish_face_jobs(&t, "share", 6).await;
    assert_eq!(t.results(6).await.len(), 6);
    stop2.cancel();
    w2.await.unwrap().unwrap();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_parks_jobs_until_it_is_raised() {
    let mut t = TestEnv::start("budget", "[traffic.argos]\ndaily_budget = 5").await;
    let jobs = 12;
    publish_face_jobs(&t, "budget", jobs).await;
    assert_eq!(t.results(5).await.len(), 5);
    // The other seven park, again and again, without a vendor call.
    wait_for("the other jobs parked a few times", 30, async || {
        let m = t.probe("/metrics").await.1;
        series(
            &m,
            "liveness_vendor_throttled_total{vendor=\"argos\",reason=\"budget\"}",
        )
        .is_some_and(|n| n >= 20.0)
    })
    .await;
    let m = t.probe("/metrics").await.1;
    assert_eq!(
        series(&m, "liveness_vendor_budget_exhausted{vendor=\"argos\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "liveness_vendor_budget_remaining{vendor=\"argos\",window=\"day\"}"
        ),
        Some(0.0)
    );
    assert_eq!(t.calls().await["argos"]["submissions"], 5);
    assert_eq!(
        t.depth(&t.names.dead_queue.clone()).await,
        0,
        "none dead-lettered"
    );
    // `status` reads the budget from the store.
    let s = liveness_worker::ops::status::status(&t.cfg, 0)
        .await
        .unwrap();
    assert_eq!(s.budgets.len(), 1, "{s:?}");
    assert_eq!((s.budgets[0].day_used, s.budgets[0].day_left), (5, Some(0)));
    // Raised (a restart with the new setting): the parked jobs drain.
    t.stop_worker().await;
    t.cfg.traffic.argos.daily_budget = 50;
    t.start_worker().await;
    let rest = t.results(7).await;
    assert_eq!(rest.len(), 7);
    for (_, _, r) in rest.values() {
        assert_eq!(r["attempts"], 1, "parking spent no attempt: {r}");
    }
    assert_eq!(t.calls().await["argos"]["submissions"], jobs);
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}

/// `liveness-worker budget ...`, the real binary on the worker's broker
/// prefix, Redis and budget configuration.
async fn budget_cmd(t: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let mut c = crate::ops::bin(t);
    c.env(
        "LIVENESS_COORDINATION__REDIS_URL",
        env("LIVENESS_TEST_REDIS_URL"),
    )
    .env(
        "LIVENESS_TRAFFIC__ARGOS__DAILY_BUDGET",
        t.cfg.traffic.argos.daily_budget.to_string(),
    )
    .stdin(std::process::Stdio::null())
    .arg("budget")
    .args(args);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("command finishes")
        .unwrap();
    let text = crate::ops::text;
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn parked(metrics: &str) -> f64 {
    series(
        metrics,
        "liveness_vendor_throttled_total{vendor=\"argos\",reason=\"budget\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_raised_by_the_command_drains_the_parked_jobs_without_a_restart() {
    let t = TestEnv::start("budget-cmd", "[traffic.argos]\ndaily_budget = 3").await;
    let jobs = 8;
    publish_face_jobs(&t, "bcmd", jobs).await;
    assert_eq!(t.results(3).await.len(), 3);
    wait_for("the other jobs parked a few times", 30, async || {
        parked(&t.probe("/metrics").await.1) >= 10.0
    })
    .await;
    assert_eq!(t.calls().await["argos"]["submissions"], 3);

    // Refused, saying what to do, and nothing changed.
    let (code, _, err) = budget_cmd(&t, &["set", "argos"]).await;
    assert!(
        code == 2 && err.contains("give --daily N and/or --monthly N"),
        "{err}"
    );
    let (code, _, err) = budget_cmd(&t, &["set", "argoss", "--daily", "9"]).await;
    assert!(
        code == 2 && err.contains("unknown vendor \"argoss\""),
        "{err}"
    );
    let (code, _, err) = budget_cmd(&t, &["set", "didit", "--daily", "9"]).await;
    assert!(
        code == 2 && err.contains("didit has no spend budget"),
        "{err}"
    );
    let (code, _, err) = budget_cmd(&t, &["clear", "argos"]).await;
    assert!(
        code == 2 && err.contains("give --daily and/or --monthly"),
        "{err}"
    );
    let no_store = crate::ops::bin(&t)
        .args(["budget", "show"])
        .output()
        .await
        .unwrap();
    let err = crate::ops::text(&no_store.stderr);
    assert!(
        no_store.status.code() == Some(2) && err.contains("coordination.redis_url is empty"),
        "{err}"
    );
    let s = liveness_worker::ops::status::status(&t.cfg, 0)
        .await
        .unwrap();
    assert!(!s.budgets[0].daily_override, "{s:?}");

    // Raised at run time: the worker, still running, serves the parked jobs.
    let (code, out, err) = budget_cmd(&t, &["set", "argos", "--daily", "20"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 / 20 (override; config 3), 17 left")
            && out.contains("ask the store again within 5s"),
        "{out}"
    );
    let rest = t.results(5).await;
    assert_eq!(rest.len(), 5);
    for (_, _, r) in rest.values() {
        assert_eq!(r["attempts"], 1, "parking spent no attempt: {r}");
    }
    assert_eq!(t.calls().await["argos"]["submissions"], jobs);
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    // `status` and the metrics show the cap that applies.
    let s = liveness_worker::ops::status::status(&t.cfg, 0)
        .await
        .unwrap();
    let b = &s.budgets[0];
    assert_eq!(
        (
            b.daily_budget,
            b.daily_budget_config,
            b.daily_override,
            b.day_used,
            b.day_left
        ),
        (20, 3, true, jobs, Some(12)),
        "{b:?}"
    );
    assert!(
        liveness_worker::ops::status::render(&s).contains("8 / 20 (override; config 3), 12 left"),
        "{s:?}"
    );
    let m = t.probe("/metrics").await.1;
    assert_eq!(
        series(
            &m,
            "liveness_vendor_budget_remaining{vendor=\"argos\",window=\"day\"}"
        ),
        Some(12.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "liveness_vendor_budget_exhausted{vendor=\"argos\"}"),
        Some(0.0)
    );

    // Cleared: the configured 3 applies again, already spent; a new job parks.
    let (code, out, err) = budget_cmd(&t, &["clear", "argos", "--daily"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("8 / 3 (0)") && out.contains("SPENT: its jobs are parked"),
        "{out}"
    );
    let before = parked(&t.probe("/metrics").await.1);
    publish_face_jobs(&t, "bcmd-late", 1).await;
    wait_for("the late job to park", 30, async || {
        parked(&t.probe("/metrics").await.1) >= before + 3.0
    })
    .await;
    assert_eq!(t.calls().await["argos"]["submissions"], jobs);
    let (code, out, err) = budget_cmd(&t, &["show", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown[0]["vendor"], "argos", "{shown}");
    assert_eq!(shown[0]["daily_override"], false, "{shown}");
    assert_eq!(shown[0]["day_used"], jobs, "{shown}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_holds_the_vendor_back_for_the_fleet() {
    // Adaptive concurrency on, no configured rate: the vendor's limit (5
    // per 2 s) is unknown to the worker.
    let t = TestEnv::start(
        "block",
        "[traffic.argos]\nconcurrency_max = 4\nconcurrency_initial = 4\n[retry]\nmax_retry_after = \"5s\"\nattempts_per_delivery = 4",
    )
    .await;
    set_faults(
        &t,
        serde_json::json!({"vendor": "argos", "rate_limit_per_minute": 5, "rate_limit_window_ms": 2000}),
    )
    .await;
    let jobs = 15;
    publish_face_jobs(&t, "block", jobs).await;
    let results = t.results(jobs as usize).await;
    assert_eq!(results.len(), jobs as usize);
    let m = t.probe("/metrics").await.1;
    assert!(
        series(
            &m,
            "liveness_vendor_rate_limited_blocks_total{vendor=\"argos\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    // The concurrency limit came down. Usually for the 429s, but one
    // decrease per smoothed latency at most: on a loaded machine a latency
    // decrease can come just before the 429 burst and stand for it (the
    // unit tests in pipeline/aimd.rs check that a 429 halves the limit).
    let decreases: f64 = ["rate_limited", "latency", "timeout"]
        .iter()
        .filter_map(|r| {
            series(
                &m,
                &format!(
                    "liveness_vendor_limit_decreases_total{{vendor=\"argos\",reason=\"{r}\"}}"
                ),
            )
        })
        .sum();
    assert!(decreases >= 1.0, "{m}");
    let calls = t.calls().await;
    // For the record: how many 429s the vendor answered (not asserted: it
    // depends on timing).
    eprintln!(
        "429s: {} of {} submissions",
        calls["argos"]["rate_limited"], calls["argos"]["submissions"]
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fail_over_while_the_default_vendor_is_paused() {
    let t = TestEnv::start(
        "failover",
        "[providers]\ndefault_face = \"argos\"\nfailover_face = [\"didit\"]\n[retry]\npause_probe_interval = \"5s\"",
    )
    .await;
    let admin = reqwest::Client::new();
    let creds = format!("{}/_admin/credentials/argos", t.emulator.base_url());
    let set_key = async |valid: bool| {
        let r = admin
            .post(&creds)
            .json(&serde_json::json!({ "valid": valid }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    };
    set_key(false).await;
    publish_face_jobs(&t, "fo", 4).await;
    // Argos refuses the key and pauses; the jobs, parked, come back and
    // go to Didit, saying why.
    let results = t.results(4).await;
    for (rk, _, r) in results.values() {
        assert_eq!(rk, "face.live");
        assert_eq!(r["provider"], "didit", "{r}");
        assert_eq!(r["failover"]["primary"], "argos", "{r}");
        let why = r["failover"]["reason"].as_str().unwrap();
        assert!(why.contains("argos is paused"), "{why}");
    }
    // A job that named Argos waits for it.
    let img = samples::png(9100, 1500, Some(r#"{"face":80}"#));
    let uri = t.upload("fo-named.png", img).await;
    let mut job = t.job("fo-named", "face", &uri);
    job["provider"] = "argos".into();
    t.publish(&job).await;
    wait_for("the named job to park", 20, async || {
        let m = t.probe("/metrics").await.1;
        series(
            &m,
            "liveness_jobs_total{outcome=\"retry_later\",verdict=\"none\",check=\"face\",vendor=\"argos\"}",
        )
        .is_some_and(|n| n >= 6.0)
    })
    .await;
    set_key(true).await;
    let r = t.results(1).await;
    let v = &r["fo-named"].2;
    assert_eq!(v["provider"], "argos");
    assert!(v.get("failover").is_none(), "{v}");
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    let m = t.probe("/metrics").await.1;
    assert_eq!(
        series(
            &m,
            "liveness_failovers_total{primary=\"argos\",vendor=\"didit\"}"
        ),
        Some(4.0),
        "{m}"
    );
    t.finish().await;
}

/// Uploads every image first, then publishes the jobs back to back, in
/// order: `(job_id, provider)`; `None` names no vendor (Argos for a face).
async fn publish_queued(t: &TestEnv, jobs: &[(String, Option<&str>)]) {
    let mut bodies = Vec::new();
    for (i, (id, provider)) in jobs.iter().enumerate() {
        let img = samples::png(9300 + i as u64, 1500, Some(r#"{"face":88}"#));
        let uri = t.upload(&format!("{id}.png"), img).await;
        let mut job = t.job(id, "face", &uri);
        if let Some(p) = provider {
            job["provider"] = (*p).into();
        }
        bodies.push(job);
    }
    for job in &bodies {
        t.publish(job).await;
    }
}

fn waitlisted(m: &str, vendor: &str) -> f64 {
    series(
        m,
        &format!("liveness_vendor_waitlisted_total{{vendor=\"{vendor}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_at_its_limit_waits_in_its_wait_queue_and_leaves_the_slots_to_the_others() {
    // 4 slots; Argos at 1 request/s, Didit without a limit.
    let t = TestEnv::start(
        "waitq",
        "[worker]\nconcurrency = 4\n[traffic.argos]\nrate = \"1/s\"",
    )
    .await;
    let wait_q = t.names.wait_queue(ProviderName::Argos).to_owned();
    assert_eq!(
        t.consumers(&wait_q).await,
        Some(1),
        "the worker consumes Argos's wait queue"
    );
    assert_eq!(
        t.consumers(t.names.wait_queue(ProviderName::Didit)).await,
        None,
        "no wait queue for a vendor without a limit"
    );
    // `status` (and the console's overview, which reads it) lists it.
    let s = liveness_worker::ops::status::status(&t.cfg, 0)
        .await
        .unwrap();
    let w: Vec<_> = s.queues.iter().filter(|q| q.role == "wait").collect();
    assert_eq!(w.len(), 1, "{s:?}");
    assert_eq!((w[0].name.as_str(), w[0].consumers), (wait_q.as_str(), 1));
    // 30 Argos jobs queued ahead of 10 Didit jobs.
    let argos_jobs = 30;
    let mut jobs: Vec<(String, Option<&str>)> = (0..argos_jobs)
        .map(|i| (format!("slow-{i}"), None))
        .collect();
    jobs.extend((0..10).map(|i| (format!("quick-{i}"), Some("didit"))));
    publish_queued(&t, &jobs).await;
    let started = Instant::now();
    // All of Didit's results arrive before the 5th Argos one: Argos's
    // backlog moved to its wait queue instead of holding the 4 slots.
    let q = t.names.results_queue.clone().expect("results queue");
    let (mut didit, mut argos) = (0, 0);
    while didit < 10 {
        let (_, _, r) = t.take(&q, 1, Duration::from_secs(60)).await.remove(0);
        match r["provider"].as_str() {
            Some("didit") => didit += 1,
            _ => argos += 1,
        }
    }
    let didit_done = started.elapsed();
    eprintln!("Argos results before Didit's 10 were all in: {argos}, after {didit_done:?}");
    assert!(argos < 5, "{argos} Argos results came first");
    // The jobs queue is empty; Argos's backlog waits in its wait queue.
    wait_for("the jobs queue to empty", 5, async || {
        t.depth(&t.names.jobs_queue.clone()).await == 0
    })
    .await;
    let waiting = t.depth(&wait_q).await;
    eprintln!(
        "jobs queue empty after {:?}, {waiting} Argos jobs ready in {wait_q}",
        started.elapsed()
    );
    assert!(waiting >= 15, "{waiting} Argos jobs in the wait queue");
    // Argos's jobs all finish too, at its pace: each one result, paid once,
    // none dead-lettered, none parked.
    let rest = t
        .take(&q, argos_jobs - argos, Duration::from_secs(90))
        .await;
    eprintln!("all Argos results after {:?}", started.elapsed());
    assert!(rest.iter().all(|(_, _, r)| r["provider"] == "argos"));
    let ids: std::collections::HashSet<String> = rest
        .iter()
        .map(|(_, _, r)| r["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), argos_jobs - argos, "one result per job");
    assert_eq!(
        t.calls().await["argos"]["submissions"],
        argos_jobs as u64,
        "each paid once"
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    assert_eq!(t.depth(&t.names.poison_queue.clone()).await, 0);
    assert_eq!(t.depth(&wait_q).await, 0);
    let m = t.probe("/metrics").await.1;
    // Moved once each at most (a job comes back to the jobs queue only by
    // parking, and none parked): the first was called at once.
    let moved = waitlisted(&m, "argos");
    eprintln!("Argos jobs moved to the wait queue: {moved}");
    assert!(
        (20.0..=argos_jobs as f64).contains(&moved),
        "{moved} moves\n{m}"
    );
    assert_eq!(waitlisted(&m, "didit"), 0.0);
    assert_eq!(
        series(
            &m,
            "liveness_vendor_throttled_total{vendor=\"argos\",reason=\"rate\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "none parked: {m}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_jobs_wait_in_a_wait_queue_loses_none() {
    let mut t = TestEnv::start(
        "waitq-drain",
        "[worker]\nconcurrency = 4\ndrain_timeout = \"1s\"\n[traffic.argos]\nrate = \"1/s\"",
    )
    .await;
    let wait_q = t.names.wait_queue(ProviderName::Argos).to_owned();
    let n = 12;
    let jobs: Vec<(String, Option<&str>)> = (0..n).map(|i| (format!("drain-{i}"), None)).collect();
    publish_queued(&t, &jobs).await;
    // Moved, and some delivered from the wait queue, waiting for their
    // tokens there.
    wait_for("the backlog to move to the wait queue", 20, async || {
        waitlisted(&t.probe("/metrics").await.1, "argos") >= (n - 2) as f64
    })
    .await;
    // The drain gives the waiting deliveries back to the wait queue.
    t.stop_worker().await;
    let back = t.depth(&wait_q).await;
    let before = t.depth(&t.names.results_queue.clone().unwrap()).await;
    eprintln!("after the drain: {back} jobs in {wait_q}, {before} results");
    assert!(back >= 5, "{back}");
    assert_eq!(t.consumers(&wait_q).await, Some(0));
    // Restarted: every job ends as one result, paid once.
    t.start_worker().await;
    let results = t.results(n).await;
    assert_eq!(results.len(), n);
    assert!(results.values().all(|(_, _, r)| r["provider"] == "argos"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q = t.names.results_queue.clone().unwrap();
    assert_eq!(t.depth(&q).await, 0, "no second result");
    assert_eq!(t.calls().await["argos"]["submissions"], n as u64);
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    assert_eq!(t.depth(&t.names.poison_queue.clone()).await, 0);
    assert_eq!(t.depth(&wait_q).await, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_compares_a_share_of_the_jobs_with_a_second_vendor() {
    // Half the face jobs also go to Didit after their result, at most 3 of
    // them a day (fleet-wide budget in Redis).
    let t = TestEnv::start(
        "shadow",
        "[shadow]\nshare = 0.5\nface = \"didit\"\ndaily_budget = 3",
    )
    .await;
    let n = 12;
    publish_face_jobs(&t, "sh", n).await;
    let picked: Vec<String> = (0..n)
        .map(|i| format!("sh-{i}"))
        .filter(|id| liveness_worker::pipeline::shadow::selected(id, 0.5))
        .collect();
    assert!(
        picked.len() > 3,
        "the share picks more than the budget: {picked:?}"
    );

    // Every job has its result, from Argos alone, as without shadow mode.
    let results = t.results(n as usize).await;
    for (rk, _, r) in results.values() {
        assert_eq!(rk, "face.live");
        assert_eq!(r["provider"], "argos", "{r}");
        assert_eq!(r["schema"], "liveness.result.v1");
    }
    // Three comparisons (the budget), of picked jobs, on the shadow queue.
    let q = t.names.shadow_queue.clone().expect("shadow queue");
    let shadows = t.take(&q, 3, Duration::from_secs(60)).await;
    for (rk, props, c) in &shadows {
        assert_eq!(rk, "face.agree", "{c}");
        assert_eq!(c["schema"], "liveness.shadow.v1");
        let id = c["job_id"].as_str().unwrap();
        assert!(picked.iter().any(|p| p == id), "{id} was not picked");
        assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some(id));
        assert_eq!(c["primary"]["provider"], "argos");
        assert_eq!(c["primary"]["verdict"], "live");
        assert_eq!(c["shadow"]["provider"], "didit");
        assert_eq!(c["shadow"]["verdict"], "live");
        assert_eq!(c["shadow"]["attempts"], 1);
        assert_eq!(c["agreement"]["same_verdict"], true);
        assert!(c["agreement"]["score_difference"].is_number(), "{c}");
        assert_eq!(c["image"]["sha256"], results[id].2["image"]["sha256"]);
    }
    // The rest of the picked jobs were skipped for the budget; nothing
    // else was sent to Didit and no comparison lands in the results.
    wait_for("the skipped shadows to be counted", 30, async || {
        let m = t.probe("/metrics").await.1;
        series(
            &m,
            "liveness_shadow_skipped_total{shadow=\"didit\",reason=\"budget\"}",
        ) == Some((picked.len() - 3) as f64)
    })
    .await;
    assert_eq!(t.calls().await["didit"]["submissions"], 3);
    assert_eq!(t.calls().await["argos"]["submissions"], n);
    assert_eq!(t.depth(&q).await, 0);
    let m = t.probe("/metrics").await.1;
    assert_eq!(
        series(
            &m,
            "liveness_shadow_comparisons_total{check=\"face\",primary=\"argos\",shadow=\"didit\",agreement=\"agree\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        t.depth(&t.names.results_queue.clone().unwrap()).await,
        0,
        "no comparison among the results"
    );
    assert_eq!(t.depth(&t.names.dead_queue.clone()).await, 0);
    t.finish().await;
}
