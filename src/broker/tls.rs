//! The transport to RabbitMQ: plain TCP for `amqp://`, TLS for `amqps://`
//! (rustls with the ring provider).
//!
//! lapin gets the stream through `Connection::connector`, so the trust
//! store, the connect timeout and the error messages are decided here rather
//! than by lapin's defaults: `broker.tls.ca_file` replaces the system roots
//! instead of adding to them, and a failed handshake says which setting to
//! look at. Nothing here prints the URL, which carries the password.

use crate::config::{BrokerTlsConfig, Secret};
use anyhow::{Context as _, anyhow};
use lapin::tcp::{AMQPUriTcpExt as _, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls::{AlertDescription, CertificateError};
use std::fmt;
use std::io;
use std::time::Duration;

/// Without `connection_timeout` in the URL, a TCP connect or TLS handshake
/// that hangs (a firewall that swallows packets, a port that accepts and
/// never answers) fails after this instead of never.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a connection to the broker at `url`: over TLS configured by `tls`
/// when the URL is `amqps://`, over plain TCP when it is `amqp://`.
pub async fn connect(
    url: &Secret,
    tls: &BrokerTlsConfig,
    props: ConnectionProperties,
) -> anyhow::Result<Connection> {
    let uri: AMQPUri = url.expose().parse().map_err(|e: String| {
        // The parser may quote the URL back, password included.
        anyhow!(
            "broker.url is not a valid AMQP URL: {}",
            e.replace(url.expose(), "[broker.url]")
        )
    })?;
    let target = Target::of(&uri);
    let connector = match uri.scheme {
        AMQPScheme::AMQPS => Some(RustlsConnector::from(tls.client_config(true)?)),
        AMQPScheme::AMQP => None,
    };
    let timeout = uri
        .query
        .connection_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis);
    let runtime = lapin::runtime::default_runtime()
        .context("cannot connect to RabbitMQ: no async runtime")?;
    let server_name = target.server_name().to_owned();
    // lapin calls this for the first connect and for its own retries; it runs
    // on lapin's I/O thread inside the caller's tokio runtime, so tokio's
    // timer works here.
    let transport = async move |uri: AMQPUri, runtime| {
        let open = async {
            let mut tcp = uri;
            // TCP only: the TLS layer is added below with our configuration.
            tcp.scheme = AMQPScheme::AMQP;
            let stream = tcp
                .connect_async(&runtime)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TCP connection failed: {e}")))?;
            match &connector {
                None => Ok(stream),
                Some(c) => stream.into_rustls(c, &server_name).await,
            }
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(r) => r.map_err(lapin::Error::from),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no {} connection within {} (the connection_timeout query parameter of broker.url, in milliseconds, sets this limit)",
                    if connector.is_some() { "TLS" } else { "TCP" },
                    humantime::format_duration(timeout)
                ),
            )
            .into()),
        }
    };
    Connection::connector(uri, runtime, transport, props)
        .await
        .map_err(|e| explain(&e, &target, tls))
}

/// Where the connection goes, for messages: host and port, never the
/// credentials.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
}

impl Target {
    fn of(uri: &AMQPUri) -> Target {
        Target {
            host: uri.authority.host.clone(),
            port: uri.authority.port,
            tls: uri.scheme == AMQPScheme::AMQPS,
        }
    }

    /// The name the certificate must carry: an IPv6 literal without its brackets.
    fn server_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The TLS handshake was refused (a certificate, a host name, a client
/// certificate): a configuration to fix, not an outage to wait out. The
/// worker stops on it when it has never connected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsRejected(String);

/// A connection failure in words that name the setting to look at.
fn explain(e: &lapin::Error, target: &Target, tls: &BrokerTlsConfig) -> anyhow::Error {
    let head = format!(
        "cannot connect to RabbitMQ at {target} (broker.url){}",
        if target.tls { " over TLS" } else { "" }
    );
    // lapin prefixes I/O errors with "IO error: ", which adds nothing here.
    let detail = match e.kind() {
        lapin::ErrorKind::IOError(io) => io.to_string(),
        _ => e.to_string(),
    };
    if !target.tls {
        return anyhow!("{head}: {detail}");
    }
    match find_rustls_error(e) {
        Some(err) => TlsRejected(format!("{head}: {}", tls_advice(err, target, tls))).into(),
        None if handshake_cut(e) => anyhow!(
            "{head}: the server closed the connection during the TLS handshake ({detail}): is {target} a TLS port? amqps:// needs the broker's TLS listener (5671 by default); a plain AMQP port (5672) is written amqp://"
        ),
        None => anyhow!("{head}: {detail}"),
    }
}

/// rustls keeps its error inside an `io::Error`, whose `source()` skips the
/// wrapped error, so the chain is walked through `get_ref` as well.
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_rustls_error(inner))
        {
            return Some(inner);
        }
        cur = err.source();
    }
    None
}

/// An end of stream where the TLS handshake expected more: a server that
/// does not speak TLS and hangs up on the ClientHello.
fn handshake_cut(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::IOError(io) if io.kind() == io::ErrorKind::UnexpectedEof)
}

fn tls_advice(err: &rustls::Error, target: &Target, tls: &BrokerTlsConfig) -> String {
    use rustls::Error as E;
    let roots = if tls.ca_file.is_empty() {
        "the system roots; broker.tls.ca_file is empty".to_owned()
    } else {
        format!("the CA in broker.tls.ca_file, {}", tls.ca_file)
    };
    let client_cert = !tls.cert_file.is_empty();
    match err {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the broker's certificate is not signed by a trusted CA ({err}; trusted: {roots}): set broker.tls.ca_file to the PEM file of the CA that issued the broker's certificate"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the broker's certificate is not valid for the host name {:?} ({err}): the host in broker.url must be a name (or IP address) the certificate lists in its subjectAltName",
                    target.server_name()
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "the broker's certificate is outside its validity period ({err}): renew it on the broker, or check this machine's clock"
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "the broker's certificate is not issued for TLS servers ({err}): its extended key usage must include serverAuth"
                )
            }
            _ => format!("the broker's certificate was rejected: {err} (trusted: {roots})"),
        },
        E::AlertReceived(alert) => alert_advice(*alert, err, client_cert, tls),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => format!(
            "the server did not answer with TLS ({err}): is {target} a TLS port? amqps:// needs the broker's TLS listener (5671 by default); a plain AMQP port (5672) is written amqp://"
        ),
        E::NoCertificatesPresented => {
            "the broker presented no certificate, so it cannot be verified".to_owned()
        }
        _ => format!("the TLS handshake failed: {err}"),
    }
}

/// The broker (or a TLS terminator in front of it) ended the handshake.
/// With TLS 1.3 a refused client certificate is only reported after the
/// client has finished its side, so this also arrives on the first read.
fn alert_advice(
    alert: AlertDescription,
    err: &rustls::Error,
    client_cert: bool,
    tls: &BrokerTlsConfig,
) -> String {
    use AlertDescription as A;
    let about_client_cert = matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::HandshakeFailure
    );
    match (about_client_cert, client_cert) {
        (true, false) if alert == A::CertificateRequired => format!(
            "the broker requires a client certificate (mutual TLS) and none is configured ({err}): set broker.tls.cert_file and broker.tls.key_file"
        ),
        (true, false) => format!(
            "the broker refused the TLS handshake ({err}); it may require a client certificate (mutual TLS): set broker.tls.cert_file and broker.tls.key_file"
        ),
        (true, true) => format!(
            "the broker refused the client certificate in broker.tls.cert_file ({}) ({err}): the broker must trust the CA that issued it, and it must be valid for client authentication (extended key usage clientAuth) and not expired",
            tls.cert_file
        ),
        (false, _) if matches!(alert, A::ProtocolVersion | A::InsufficientSecurity) => format!(
            "the broker and this client share no TLS version or cipher suite ({err}): the worker offers TLS 1.2 and 1.3 with modern ciphers only"
        ),
        (false, _) => format!("the broker ended the TLS handshake: {err}"),
    }
}
