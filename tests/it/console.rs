//! The operator console (`liveness-worker console`), the real binary against
//! the real RabbitMQ, Garage and Redis: its pages, a selection previewed,
//! replayed, exported and purged, credentials, read-only mode, cross-site
//! requests, and SIGINT in the middle of a replay and of a purge. The same
//! pages in a real browser: `browser_drives_the_console`.

use crate::console_ops::{archived, cbin};
use crate::harness::{TestEnv, wait_for};
use crate::ops::{dead_letter, delete_prefix, drain, env, odd_job, text};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

pub(crate) struct Console {
    child: tokio::process::Child,
    pub url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the console for `t` with `extra` settings and waits until it answers.
pub(crate) async fn start_console(t: &TestEnv, extra: &[(&str, &str)]) -> Console {
    let port = free_port();
    // The ladder of `t`'s worker, so the console names the same queues.
    let delays: Vec<String> = t
        .cfg
        .broker
        .retry_delays
        .iter()
        .map(|d| humantime::format_duration(*d).to_string())
        .collect();
    let child = cbin(t)
        .args(["console", "--listen", &format!("127.0.0.1:{port}")])
        .env("LIVENESS_CONSOLE__REFRESH", "1s")
        .env(
            "LIVENESS_BROKER__RETRY_DELAYS",
            serde_json::to_string(&delays).unwrap(),
        )
        .envs(extra.iter().copied())
        .spawn()
        .expect("console starts");
    let url = format!("http://127.0.0.1:{port}");
    let mut c = Console { child, url };
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(&c.url).send().await.is_ok() {
            return c;
        }
        if let Ok(Some(status)) = c.child.try_wait() {
            panic!("the console exited with {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the console did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Console {
    /// SIGINT; waits for it to exit; returns its exit code and its log.
    pub(crate) async fn interrupt(self) -> (Option<i32>, String) {
        crate::ops::interrupt(self.child, "console").await
    }
}

/// The CSRF token of a page's forms.
fn csrf(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("the page has a form");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn post(url: &str, pairs: &[(&str, &str)]) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `post`, in a task of its own (the test interrupts the console meanwhile).
fn post_in_background(
    url: String,
    pairs: &[(&str, &str)],
) -> tokio::task::JoinHandle<(u16, String)> {
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::spawn(async move {
        let pairs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        post(&url, &pairs).await
    })
}

fn ids(msgs: &[(lapin::BasicProperties, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_a_selection_previewed_replayed_exported_and_purged() {
    let t = env("console-web").await;
    for i in 0..4 {
        let id = format!("rw-{i}");
        dead_letter(
            &t,
            &id,
            "retries_exhausted",
            Some("argos"),
            Some(&odd_job(&id)),
        )
        .await;
    }
    for i in 0..3 {
        let id = format!("iw-{i}");
        dead_letter(&t, &id, "invalid_job", None, Some(&odd_job(&id))).await;
    }
    dead_letter(&t, "rw-raw", "retries_exhausted", None, None).await;
    let dead = t.names.dead_queue.clone();
    let c = start_console(&t, &[]).await;

    // Groups by class, vendor and age, each with its count and message.
    let (status, html) = get(&format!("{}/dead-letters", c.url)).await;
    assert_eq!(status, 200, "{html}");
    for (class, vendor, count) in [
        ("retries_exhausted", "argos", 4),
        ("retries_exhausted", "none", 1),
        ("invalid_job", "none", 3),
    ] {
        let row = format!(r#"data-class="{class}" data-vendor="{vendor}""#);
        let at = html.find(&row).unwrap_or_else(|| panic!("{row}: {html}"));
        let cells = &html[at..at + html[at..].find("</tr>").unwrap()];
        assert!(
            cells.contains(&format!(r#"<td class="n">{count}</td>"#)),
            "{cells}"
        );
        assert!(cells.contains("over 1 day"), "{cells}");
    }
    wait_for("the view's dead letters back", 10, async || {
        t.depth(&dead).await == 8
    })
    .await;

    // A group's messages: metadata folded unless asked for.
    let group = "class=retries_exhausted&vendor=argos&older_than=1d";
    let (status, html) = get(&format!("{}/dead-letters/messages?{group}", c.url)).await;
    assert_eq!(status, 200, "{html}");
    for i in 0..4 {
        assert!(html.contains(&format!("rw-{i}")), "{html}");
    }
    assert!(!html.contains("rw-raw") && !html.contains("iw-0"), "{html}");
    assert!(html.contains("2 keys hidden"), "{html}");
    assert!(!html.contains("123456789012345678901234567890"), "{html}");
    let (_, shown) = get(&format!(
        "{}/dead-letters/messages?{group}&metadata=1",
        c.url
    ))
    .await;
    assert!(shown.contains("123456789012345678901234567890"), "{shown}");
    let token = csrf(&html);

    // Preview two checked by hand: nothing moves.
    let sel = [
        ("class", "retries_exhausted"),
        ("vendor", "argos"),
        ("older_than", "1d"),
        ("job_id", "rw-1"),
        ("job_id", "rw-2"),
    ];
    let mut with_token = vec![("csrf", token.as_str())];
    with_token.extend(sel);
    let (status, _) = post(&format!("{}/dead-letters/preview", c.url), &sel).await;
    assert_eq!(status, 403, "no CSRF token");
    let mut preview = with_token.clone();
    preview.push(("action", "replay"));
    let (status, html) = post(&format!("{}/dead-letters/preview", c.url), &preview).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("2 of the 8 dead letters read would move"),
        "{html}"
    );
    wait_for("the preview's dead letters back", 10, async || {
        t.depth(&dead).await == 8
    })
    .await;
    assert_eq!(t.depth(&t.names.jobs_queue).await, 0);

    // Replay them: exactly those two, byte for byte.
    let (status, html) = post(&format!("{}/dead-letters/replay", c.url), &with_token).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Replay done"), "{html}");
    let moved = drain(&t.ch, &t.names.jobs_queue).await;
    assert_eq!(ids(&moved), ["rw-1", "rw-2"]);
    assert_eq!(moved[0].1, odd_job("rw-1").as_bytes());

    // Export a group as JSON lines.
    let r = reqwest::Client::new()
        .post(format!("{}/dead-letters/export", c.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &token), ("class", "invalid_job")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let body = r.text().await.unwrap();
    let exported: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<&str> = exported
        .iter()
        .map(|v| v["dead_letter"]["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["iw-0", "iw-1", "iw-2"]);
    assert_eq!(exported[0]["routing_key"], "invalid_job");

    // Purge a group: archived first; a purge without a class is refused.
    let (status, _) = post(
        &format!("{}/dead-letters/purge", c.url),
        &[("csrf", &token), ("vendor", "none")],
    )
    .await;
    assert_eq!(status, 400);
    let (status, html) = post(
        &format!("{}/dead-letters/purge", c.url),
        &[
            ("csrf", &token),
            ("class", "invalid_job"),
            ("vendor", "none"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    let arch: HashSet<String> = archived(&t).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(arch, ["iw-0", "iw-1", "iw-2"].map(String::from).into());

    // The overview sees the dead-letter queue's depth.
    wait_for("the overview to show 3 dead letters", 20, async || {
        let o: Value = reqwest::get(format!("{}/api/overview", c.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        o["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == dead.as_str() && q["ready"] == 3)
    })
    .await;
    let (status, html) = get(&c.url).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!(r#"data-queue="{dead}""#)), "{html}");

    // What is left, in its order.
    let (code, log) = c.interrupt().await;
    assert_eq!(code, Some(0), "{log}");
    wait_for("the dead letters back", 10, async || {
        t.depth(&dead).await == 3
    })
    .await;
    assert_eq!(ids(&drain(&t.ch, &dead).await), ["rw-0", "rw-3", "rw-raw"]);
    delete_prefix(
        &t,
        &t.cfg.results.bucket.clone(),
        &t.cfg.results.prefix.clone(),
    )
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_read_only_and_cross_site_requests() {
    let t = env("console-auth").await;
    dead_letter(&t, "au-1", "internal", None, Some(&odd_job("au-1"))).await;
    let dead = t.names.dead_queue.clone();

    // Beyond loopback, credentials are required.
    let out = cbin(&t)
        .args(["console", "--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("console.username"),
        "{}",
        text(&out.stderr)
    );

    let c = start_console(
        &t,
        &[
            ("LIVENESS_CONSOLE__USERNAME", "ops"),
            ("LIVENESS_CONSOLE__PASSWORD", "s3cret"),
            ("LIVENESS_CONSOLE__READ_ONLY", "true"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let r = client.get(&c.url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    // The health check alone needs no credentials (and shows nothing).
    let r = client
        .get(format!("{}/healthz", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(&c.url)
        .basic_auth("ops", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let page = client
        .get(format!("{}/dead-letters/messages?class=internal", c.url))
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("read-only") && !html.contains("preview-purge"),
        "{html}"
    );
    let token = csrf(&html);
    let r = client
        .post(format!("{}/dead-letters/replay", c.url))
        .basic_auth("ops", Some("s3cret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &token), ("class", "internal")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "read-only");
    let (code, _) = c.interrupt().await;
    assert_eq!(code, Some(0));

    // Writable, on loopback: a POST from another origin is refused even
    // with the right token; from its own origin it goes through.
    let c = start_console(&t, &[]).await;
    let (_, html) = get(&format!("{}/dead-letters/messages?class=internal", c.url)).await;
    let token = csrf(&html);
    let body = form(&[("csrf", &token), ("class", "internal")]);
    let host = c.url.trim_start_matches("http://").to_owned();
    for (name, value) in [
        ("origin", "http://evil.example".to_owned()),
        ("sec-fetch-site", "cross-site".to_owned()),
    ] {
        let r = client
            .post(format!("{}/dead-letters/replay", c.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(name, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name}");
    }
    assert_eq!(t.depth(&dead).await, 1, "nothing moved");
    let r = client
        .post(format!("{}/dead-letters/replay", c.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ids(&drain(&t.ch, &t.names.jobs_queue).await), ["au-1"]);
    let (code, _) = c.interrupt().await;
    assert_eq!(code, Some(0));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_replay_and_purge_lose_nothing() {
    let t = env("console-int").await;
    let n = 120;
    let all: HashSet<String> = (0..n).map(|i| format!("ci-{i}")).collect();
    for i in 0..n {
        let id = format!("ci-{i}");
        dead_letter(&t, &id, "internal", None, Some(&odd_job(&id))).await;
    }
    let dead = t.names.dead_queue.clone();
    let jobs = t.names.jobs_queue.clone();

    // A slow replay, interrupted by SIGINT part-way.
    let c = start_console(&t, &[]).await;
    let (_, html) = get(&format!("{}/dead-letters/messages?class=internal", c.url)).await;
    let token = csrf(&html);
    let url = format!("{}/dead-letters/replay", c.url);
    let pairs = [
        ("csrf", token.as_str()),
        ("class", "internal"),
        ("rate", "20"),
    ];
    let request = post_in_background(url, &pairs);
    wait_for("the replay to move some", 60, async || {
        t.depth(&jobs).await >= 10
    })
    .await;
    // One operation on the queue at a time: a second is refused at once.
    let (status, why) = post(&format!("{}/dead-letters/replay", c.url), &pairs).await;
    assert_eq!(status, 409, "{why}");
    let (status, _) = get(&format!("{}/dead-letters", c.url)).await;
    assert_eq!(status, 409);
    let (code, log) = c.interrupt().await;
    assert_eq!(code, Some(0), "{log}");
    let (status, page) = request.await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Replay interrupted"), "{page}");
    let moved = ids(&drain(&t.ch, &jobs).await);
    wait_for("the rest back in the dead queue", 20, async || {
        t.depth(&dead).await as usize + moved.len() >= n
    })
    .await;
    let moved_set: HashSet<String> = moved.iter().cloned().collect();
    assert_eq!(moved_set.len(), moved.len(), "moved once each");
    assert!(moved.len() < n, "interrupted before the end");

    // The rest, purged slowly and interrupted: archived or still dead, never neither.
    let c = start_console(&t, &[]).await;
    let url = format!("{}/dead-letters/purge", c.url);
    // Another process, another CSRF key.
    let (_, html) = get(&format!("{}/dead-letters/messages?class=internal", c.url)).await;
    let token = csrf(&html);
    let purge_pairs = [
        ("csrf", token.as_str()),
        ("class", "internal"),
        ("rate", "20"),
        ("batch", "5"),
    ];
    let request = post_in_background(url, &purge_pairs);
    wait_for("the purge to archive a batch", 60, async || {
        !archived(&t).await.is_empty()
    })
    .await;
    let (code, log) = c.interrupt().await;
    assert_eq!(code, Some(0), "{log}");
    let (status, page) = request.await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Purge interrupted"), "{page}");
    let arch: Vec<String> = archived(&t).await.into_iter().map(|(id, _)| id).collect();
    wait_for("the dead letters back", 20, async || {
        t.depth(&dead).await as usize + arch.len() + moved.len() >= n
    })
    .await;
    let left = ids(&drain(&t.ch, &dead).await);
    let found: HashSet<String> = moved
        .iter()
        .chain(arch.iter())
        .chain(left.iter())
        .cloned()
        .collect();
    assert_eq!(found, all, "nothing lost");
    assert_eq!(moved.len() + arch.len() + left.len(), n, "nothing twice");
    delete_prefix(
        &t,
        &t.cfg.results.bucket.clone(),
        &t.cfg.results.prefix.clone(),
    )
    .await;
    t.finish().await;
}

/// The console in headless Chromium (tests/browser/console.test.mjs, run by
/// Node.js with playwright-core): a worker verifies a job, the test fills
/// the results queue and the dead-letter queue, and the browser checks the
/// overview's depths, opens, previews and replays a dead-letter group, finds
/// the job's attempts, and is refused without credentials and on a
/// cross-site POST. Skipped when Chromium or the test's node_modules are
/// missing, unless LIVENESS_BROWSER_TESTS=1 (scripts/test.sh) makes that an
/// error. With LIVENESS_SCREENSHOTS=<dir> it also saves the pictures of
/// docs/console.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_drives_the_console() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/console.test.mjs");
    let modules = root.join("tests/browser/node_modules/playwright-core");
    let chromium =
        std::env::var("LIVENESS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let required = std::env::var("LIVENESS_BROWSER_TESTS").is_ok_and(|v| v == "1");
    if !modules.exists() || !std::path::Path::new(&chromium).exists() {
        assert!(
            !required,
            "LIVENESS_BROWSER_TESTS=1 but {} or {chromium} is missing (scripts/test.sh installs them)",
            modules.display()
        );
        eprintln!("skipped: no Chromium or no tests/browser/node_modules (run scripts/test.sh)");
        return;
    }
    let t = TestEnv::start("console-browser", "").await;
    // One verified job, for the lookup.
    let img = liveness_worker::samples::png(31, 3000, None);
    let uri = t.upload("b.png", img).await;
    t.publish(&t.job("bj-1", "document", &uri)).await;
    wait_for("the job's result", 60, async || {
        t.depth(t.names.results_queue.as_ref().unwrap()).await == 1
    })
    .await;
    // More results, and dead letters whose jobs will verify when replayed.
    for i in 0..6 {
        t.publish(&t.job(&format!("bj-r{i}"), "document", &uri))
            .await;
    }
    for i in 0..3 {
        let id = format!("bd-{i}");
        let job = serde_json::json!({"schema": "liveness.job.v1", "job_id": id,
            "check": "document", "image": uri, "metadata": {"tenant": "acme"}});
        dead_letter(
            &t,
            &id,
            "retries_exhausted",
            Some("argos"),
            Some(&job.to_string()),
        )
        .await;
    }
    for i in 0..2 {
        let id = format!("bx-{i}");
        dead_letter(&t, &id, "invalid_job", None, Some(&odd_job(&id))).await;
    }
    let results = t.names.results_queue.clone().unwrap();
    wait_for("7 results", 60, async || t.depth(&results).await == 7).await;

    let open = start_console(&t, &[]).await;
    let guarded = start_console(
        &t,
        &[
            ("LIVENESS_CONSOLE__USERNAME", "ops"),
            ("LIVENESS_CONSOLE__PASSWORD", "s3cret"),
        ],
    )
    .await;
    let mut node = tokio::process::Command::new("node");
    if let Ok(dir) = std::env::var("LIVENESS_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        node.env("SCREENSHOTS", dir);
    }
    let out = node
        .arg("--test")
        .arg(&script)
        .env("CONSOLE_URL", &open.url)
        .env("GUARDED_URL", &guarded.url)
        .env("CHROMIUM", &chromium)
        .env("RESULTS_QUEUE", &results)
        .env("RESULTS_DEPTH", "7")
        .env("DEAD_QUEUE", &t.names.dead_queue)
        .env("JOB_ID", "bj-1")
        .env("REPLAY_CLASS", "retries_exhausted")
        .env("REPLAY_COUNT", "3")
        .env("OTHER_CLASS", "invalid_job")
        .output()
        .await
        .expect("node runs");
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{log}");
    // The replay the browser made went through the worker; the cross-site
    // POST moved nothing.
    wait_for("the replayed jobs' results", 60, async || {
        t.depth(&results).await == 10
    })
    .await;
    assert_eq!(t.depth(&t.names.dead_queue).await, 2, "{log}");
    for c in [open, guarded] {
        let (code, _) = c.interrupt().await;
        assert_eq!(code, Some(0));
    }
    delete_prefix(
        &t,
        &t.cfg.results.bucket.clone(),
        &t.cfg.results.prefix.clone(),
    )
    .await;
    t.finish().await;
}
