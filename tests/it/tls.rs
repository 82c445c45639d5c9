//! TLS to RabbitMQ against a real TLS listener: stunnel in front of the
//! local broker on an ephemeral port, with a CA and certificates made by
//! openssl in each test's own directory. `scripts/services.sh` installs
//! openssl and stunnel4; without them these tests fail and say so.

use crate::harness::{TestEnv, env, images_bucket, unique};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use liveness_worker::broker::tls as broker_tls;
use liveness_worker::config::{BrokerTlsConfig, Config, Secret};
use liveness_worker::samples;
use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program the tests need, or a failure that says how to get it.
fn tool(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{} not found on PATH: the TLS tests need openssl and stunnel; run scripts/services.sh (it installs them) or `apt-get install -y openssl stunnel4`",
        names.join(" or ")
    )
}

/// A temporary directory with a test CA, a second CA nobody trusts, and
/// certificates signed by them; removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca", "liveness-it test CA");
        pki.ca("other-ca", "liveness-it untrusted CA");
        let server = "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1";
        pki.leaf("server", "ca", "localhost", server);
        pki.leaf(
            "elsewhere",
            "ca",
            "elsewhere.invalid",
            "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:elsewhere.invalid",
        );
        pki.leaf("client", "ca", "worker", "extendedKeyUsage=clientAuth");
        pki.leaf(
            "stranger",
            "other-ca",
            "worker",
            "extendedKeyUsage=clientAuth",
        );
        pki
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new(tool(&["openssl"]))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, stem: &str, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, stem: &str, ca: &str, cn: &str, extensions: &str) {
        std::fs::write(
            self.dir.join(format!("{stem}.ext")),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}\n"
            ),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &fastrand::u64(1..).to_string(),
            "-days",
            "2",
            "-extfile",
            &format!("{stem}.ext"),
            "-out",
            &format!("{stem}.pem"),
        ]);
    }

    /// `[broker.tls]` trusting `ca` (empty: the system roots), with the
    /// client certificate `client` if any.
    fn tls(&self, ca: &str, client: Option<&str>) -> BrokerTlsConfig {
        BrokerTlsConfig {
            ca_file: if ca.is_empty() {
                String::new()
            } else {
                self.path(&format!("{ca}.pem"))
            },
            cert_file: client.map_or(String::new(), |c| self.path(&format!("{c}.pem"))),
            key_file: client.map_or(String::new(), |c| self.path(&format!("{c}.key"))),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test broker's URL parts: (user:password, host, port, "/vhost...").
fn broker_parts() -> (String, String, u16, String) {
    let url = env("LIVENESS_BROKER__URL");
    let uri: AMQPUri = url.parse().expect("LIVENESS_BROKER__URL parses");
    let rest = url.splitn(4, '/').nth(3).unwrap_or("");
    let user = uri.authority.userinfo;
    (
        format!("{}:{}", user.username, user.password),
        uri.authority.host,
        uri.authority.port,
        format!("/{rest}"),
    )
}

/// stunnel terminating TLS on an ephemeral port and forwarding to the local
/// RabbitMQ; killed on drop, so also when a test panics.
struct Stunnel {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Stunnel {
    /// Serves certificate `cert` of `pki`; with `require_client_cert`, only
    /// clients presenting a certificate issued by the test CA get through.
    fn start(pki: &Pki, cert: &str, require_client_cert: bool) -> Stunnel {
        let bin = tool(&["stunnel4", "stunnel"]);
        let (_, host, port, _) = broker_parts();
        for _ in 0..5 {
            // Another process may take the port before stunnel binds it: try again.
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = free.local_addr().unwrap().port();
            drop(free);
            let mut conf = format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = info\n[amqps]\naccept = 127.0.0.1:{listen}\nconnect = {host}:{port}\ncert = {}\nkey = {}\n",
                pki.path(&format!("{cert}.pem")),
                pki.path(&format!("{cert}.key")),
            );
            if require_client_cert {
                conf += &format!(
                    "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                    pki.path("ca.pem")
                );
            }
            let conf_path = pki.dir.join(format!("stunnel-{listen}.conf"));
            std::fs::write(&conf_path, conf).unwrap();
            let log = pki.dir.join(format!("stunnel-{listen}.log"));
            let child = Command::new(&bin)
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(File::create(&log).unwrap())
                .stderr(File::create(pki.dir.join(format!("stunnel-{listen}.err"))).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut s = Stunnel {
                child,
                port: listen,
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = s.child.try_wait().unwrap() {
                    eprintln!("stunnel exited ({status}): {}", s.log_text(pki));
                    break;
                }
                if TcpStream::connect(("127.0.0.1", listen)).is_ok() {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "stunnel does not listen on {listen}: {}",
                    s.log_text(pki)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("stunnel did not start after 5 attempts (see the logs above)")
    }

    fn log_text(&self, pki: &Pki) -> String {
        let err = pki.dir.join(format!("stunnel-{}.err", self.port));
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }

    /// An amqps:// URL to this listener, reaching it as `host`.
    fn url(&self, host: &str) -> String {
        let (creds, _, _, vhost) = broker_parts();
        format!("amqps://{creds}@{host}:{}{vhost}", self.port)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A password the failure messages must never show (TLS fails before the
/// broker would see it).
const CANARY: &str = "canary-pw-7f3a";

fn with_canary(url: &str) -> String {
    let (creds, ..) = broker_parts();
    let user = creds.split(':').next().unwrap().to_owned();
    url.replace(&creds, &format!("{user}:{CANARY}"))
}

async fn connect(url: &str, tls: &BrokerTlsConfig) -> anyhow::Result<Connection> {
    broker_tls::connect(&Secret::new(url), tls, ConnectionProperties::default()).await
}

/// The error of a connect that must fail, checked for the password.
async fn refused(url: &str, tls: &BrokerTlsConfig) -> String {
    let url = with_canary(url);
    let started = Instant::now();
    let e = match connect(&url, tls).await {
        Ok(_) => panic!("connected to {url} with {tls:?}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(!e.contains(CANARY), "the password leaked: {e}");
    e
}

/// A message through the broker and back, over `conn`.
async fn round_trip(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let body = format!("over tls {}", fastrand::u64(..));
    ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ch
            .basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get");
        if let Some(m) = got {
            assert_eq!(m.delivery.data, body.as_bytes());
            ch.close(200, "".into()).await.expect("channel closes");
            return;
        }
        assert!(Instant::now() < deadline, "the message did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_configured_ca() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", false);
    // A DNS name and an IP address, both listed in the certificate.
    for host in ["localhost", "127.0.0.1"] {
        let conn = connect(&st.url(host), &pki.tls("ca", None))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:#}\nstunnel: {}", st.log_text(&pki)));
        round_trip(&conn).await;
        conn.close(200, "".into()).await.unwrap();
    }
    // The traffic did cross the TLS listener.
    let log = st.log_text(&pki);
    assert!(log.matches("accepted connection").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_certificate_from_an_untrusted_ca() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", false);
    let url = st.url("localhost");
    let e = refused(&url, &pki.tls("other-ca", None)).await;
    assert!(
        e.contains("not signed by a trusted CA")
            && e.contains("broker.tls.ca_file")
            && e.contains(&pki.path("other-ca.pem"))
            && e.contains(&format!("localhost:{}", st.port)),
        "{e}"
    );
    // The system roots do not know the test CA either.
    let e = refused(&url, &pki.tls("", None)).await;
    assert!(
        e.contains("not signed by a trusted CA") && e.contains("the system roots"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_certificate_for_another_host() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "elsewhere", false);
    let e = refused(&st.url("localhost"), &pki.tls("ca", None)).await;
    assert!(
        e.contains(r#"not valid for the host name "localhost""#)
            && e.contains("elsewhere.invalid")
            && e.contains("the host in broker.url"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_needs_a_client_certificate_the_broker_trusts() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", true);
    let url = st.url("localhost");

    let e = refused(&url, &pki.tls("ca", None)).await;
    assert!(
        e.contains("client certificate")
            && e.contains("broker.tls.cert_file and broker.tls.key_file"),
        "{e}"
    );

    let e = refused(&url, &pki.tls("ca", Some("stranger"))).await;
    assert!(
        e.contains("refused the client certificate") && e.contains(&pki.path("stranger.pem")),
        "{e}"
    );

    let conn = connect(&url, &pki.tls("ca", Some("client")))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nstunnel: {}", st.log_text(&pki)));
    round_trip(&conn).await;
    conn.close(200, "".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_amqp_port_says_so() {
    let pki = Pki::new();
    let (_, host, port, vhost) = broker_parts();
    let e = refused(
        &format!("amqps://guest:guest@{host}:{port}{vhost}"),
        &pki.tls("ca", None),
    )
    .await;
    assert!(
        e.contains("a TLS port?") && e.contains("5671") && e.contains("amqp://"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_that_never_ends_times_out() {
    let pki = Pki::new();
    // Accepts, then never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let e = refused(
        &format!("amqps://guest:guest@localhost:{port}/%2f?connection_timeout=500"),
        &pki.tls("ca", None),
    )
    .await;
    assert!(
        e.contains("no TLS connection") && e.contains("within 500ms"),
        "{e}"
    );
    drop(held.join());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hang_up_and_refused_port_are_named() {
    let pki = Pki::new();
    // Accepts, reads the ClientHello, hangs up.
    let rude = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = rude.local_addr().unwrap().port();
    let rude = std::thread::spawn(move || {
        let (mut s, _) = rude.accept().unwrap();
        let _ = std::io::Read::read(&mut s, &mut [0; 512]);
    });
    let e = refused(
        &format!("amqps://guest:guest@localhost:{port}/%2f"),
        &pki.tls("ca", None),
    )
    .await;
    assert!(
        e.contains("closed the connection during the TLS handshake") && e.contains("a TLS port?"),
        "{e}"
    );
    rude.join().unwrap();

    // Nothing listens: the TCP step is named, for amqps:// and amqp:// alike.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for scheme in ["amqps", "amqp"] {
        let e = refused(
            &format!("{scheme}://guest:guest@127.0.0.1:{port}/%2f"),
            &BrokerTlsConfig::default(),
        )
        .await;
        assert!(
            e.contains(&format!("RabbitMQ at 127.0.0.1:{port} (broker.url)"))
                && e.contains("TCP connection failed"),
            "{e}"
        );
    }
}

#[test]
fn tls_settings_are_checked_at_start() {
    let pki = Pki::new();
    let load = |broker: &str| {
        Config::from_toml(broker)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let tls = |url: &str, table: &str| format!("[broker]\nurl = \"{url}\"\n[broker.tls]\n{table}");
    let amqps = "amqps://u:p@localhost:5671/%2f";
    let ca = pki.path("ca.pem");

    let e = load(&tls(
        "amqp://u:p@localhost:5672/%2f",
        &format!("ca_file = \"{ca}\""),
    ));
    assert!(
        e.contains("broker.tls.ca_file is set but broker.url is not amqps://"),
        "{e}"
    );

    let e = load(&tls(
        amqps,
        &format!("cert_file = \"{}\"", pki.path("client.pem")),
    ));
    assert!(
        e.contains("broker.tls.cert_file and broker.tls.key_file must be set together"),
        "{e}"
    );

    let missing = pki.path("absent.pem");
    let e = load(&tls(amqps, &format!("ca_file = \"{missing}\"")));
    assert!(
        e.contains(&format!("broker.tls.ca_file: cannot read {missing}")),
        "{e}"
    );

    let e = load(&tls(
        amqps,
        &format!("ca_file = \"{}\"", pki.path("server.ext")),
    ));
    assert!(
        e.contains("broker.tls.ca_file") && e.contains("holds no PEM certificate"),
        "{e}"
    );

    let e = load(&tls(
        amqps,
        &format!(
            "ca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("client.pem"),
            pki.path("server.key")
        ),
    ));
    assert!(
        e.contains("broker.tls.key_file") && e.contains("is not the private key"),
        "{e}"
    );

    pki.openssl(&[
        "pkey",
        "-in",
        "client.key",
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        "client-encrypted.key",
    ]);
    let e = load(&tls(
        amqps,
        &format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("client.pem"),
            pki.path("client-encrypted.key")
        ),
    ));
    assert!(e.contains("is encrypted"), "{e}");

    let ok = load(&tls(
        amqps,
        &format!(
            "ca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    ));
    assert_eq!(ok, "");
}

/// The real binary's `status --json` reads the queues through the TLS
/// listener, configured from the environment like a deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_operator_status_goes_through_tls() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", true);
    let t = TestEnv::new("tls-status", "").await;
    liveness_worker::broker::declare_topology(&t.conn, &t.cfg.broker)
        .await
        .expect("topology");
    t.publish(&serde_json::json!({"job_id": "waiting"})).await;
    let tls = pki.tls("ca", Some("client"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_liveness-worker"))
        .args(["status", "--json"])
        .env("LIVENESS_BROKER__URL", st.url("localhost"))
        .env("LIVENESS_BROKER__TLS__CA_FILE", &tls.ca_file)
        .env("LIVENESS_BROKER__TLS__CERT_FILE", &tls.cert_file)
        .env("LIVENESS_BROKER__TLS__KEY_FILE", &tls.key_file)
        .env("LIVENESS_BROKER__PREFIX", &t.prefix)
        .env(
            "LIVENESS_WORKER__ALLOWED_BUCKETS",
            format!(r#"["{}"]"#, images_bucket()),
        )
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["role"] == "jobs")
        .cloned()
        .unwrap();
    assert_eq!(jobs["ready"], 1, "{v}");
    assert!(
        st.log_text(&pki).contains("accepted connection"),
        "status did not go through stunnel"
    );

    // The same command without the client certificate is refused, naming the keys.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_liveness-worker"))
        .args(["status", "--json"])
        .env("LIVENESS_BROKER__URL", st.url("localhost"))
        .env("LIVENESS_BROKER__TLS__CA_FILE", &tls.ca_file)
        .env("LIVENESS_BROKER__PREFIX", &t.prefix)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broker.tls.cert_file"), "{stderr}");
    t.finish().await;
}

/// The worker consumes and publishes results over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_worker_processes_a_job_over_mutual_tls() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", true);
    let mut t = TestEnv::new("tls-worker", "").await;
    t.cfg.broker.url = Secret::new(st.url("localhost"));
    t.cfg.broker.tls = pki.tls("ca", Some("client"));
    t.cfg.validate().expect("TLS settings are valid");
    t.start_worker().await;
    let img = samples::png(
        11,
        3000,
        Some(r#"{"screen_replay":99,"printed_copy":82,"portrait_substitution":100}"#),
    );
    let uri = t.upload("tls.png", img).await;
    t.publish(&t.job("tls-1", "document", &uri)).await;
    let results = t.results(1).await;
    let (_, _, body) = &results["tls-1"];
    assert_eq!(body["verdict"], "live", "{body}");
    assert!(
        st.log_text(&pki).contains("accepted connection"),
        "the worker did not go through stunnel"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_worker_stops_when_its_first_connection_refuses_the_certificate() {
    let pki = Pki::new();
    let st = Stunnel::start(&pki, "server", false);
    let mut cfg = TestEnv::new("tls-refused", "").await.cfg.clone();
    cfg.broker.url = Secret::new(st.url("localhost"));
    cfg.broker.tls = pki.tls("other-ca", None);
    let telemetry = liveness_worker::telemetry::Telemetry::default();
    let pipeline = liveness_worker::worker::build_pipeline(&cfg, telemetry.metrics.clone())
        .await
        .unwrap();
    let run = liveness_worker::worker::run(
        cfg,
        pipeline,
        telemetry,
        tokio_util::sync::CancellationToken::new(),
    );
    let e = tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the worker stops instead of retrying a refused certificate")
        .expect_err("an error, not a clean exit");
    let e = format!("{e:#}");
    assert!(
        e.contains("not signed by a trusted CA") && e.contains("broker.tls.ca_file"),
        "{e}"
    );
}
