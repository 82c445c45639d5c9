//! The one HTTP client every vendor adapter shares, and the one way an
//! adapter reads an answer: redirects are never followed and bodies are
//! read up to a cap.

use super::VendorError;
use crate::config::ProvidersConfig;
use crate::domain::ProviderName;
use crate::domain::text::{VENDOR_TEXT_CHARS, clean};
use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;

/// The vendor HTTP client and the largest answer it reads.
#[derive(Clone)]
pub struct VendorHttp {
    client: reqwest::Client,
    max_response_bytes: u64,
}

/// A vendor's answer, its body read whole (within the cap).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl VendorHttp {
    /// HTTP/1.1 with a keep-alive pool, one connection per request in
    /// flight (HTTP/2 would put every in-flight upload of several megabytes
    /// on one TCP connection and its flow-control window; vendors are
    /// HTTP/1.1-first anyway). No redirect is followed: a redirected
    /// request would carry the API key (or signed image) to whatever host
    /// the answer names, HTTPS to plain HTTP included.
    pub fn new(cfg: &ProvidersConfig) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("liveness-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the vendor HTTP client")?;
        Ok(VendorHttp {
            client,
            max_response_bytes: cfg.max_response_bytes,
        })
    }

    /// With the default configuration (adapter tests).
    #[cfg(test)]
    pub fn for_tests() -> Self {
        let cfg = crate::config::Config::from_toml("").expect("defaults load");
        Self::new(&cfg.providers).expect("the client builds")
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` and reads the answer. A transport failure, a redirect
    /// and a body over `providers.max_response_bytes` are errors; any other
    /// status is the caller's to read.
    pub async fn send(
        &self,
        vendor: ProviderName,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer, VendorError> {
        let resp = req
            .send()
            .await
            .map_err(|e| VendorError::from_transport(vendor, &e))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(redirected(vendor, resp.url(), status, resp.headers()));
        }
        let headers = resp.headers().clone();
        let body = read_capped(vendor, resp, self.max_response_bytes).await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// A 3xx: the base URL is not where the vendor answers (a moved API, an
/// `http://` URL upgraded to `https://`, a proxy or captive portal in the
/// way). Classified as an outage, not as a problem of the job: every job
/// for this vendor meets it, nothing about the job can fix it, and the
/// circuit breaker then stops calling while the operator fixes the base
/// URL; the jobs wait on the delay ladder and stay replayable instead of
/// being dead-lettered as the vendor rejecting them.
fn redirected(
    vendor: ProviderName,
    from: &reqwest::Url,
    status: u16,
    headers: &HeaderMap,
) -> VendorError {
    let target = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| match from.join(l) {
            Ok(u) => match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
                (Some(h), None) => format!("{}://{h}", u.scheme()),
                (None, _) => clean(l, 100),
            },
            Err(_) => clean(l, 100),
        })
        .unwrap_or_else(|| "nowhere (no Location header)".into());
    VendorError::outage(format!(
        "{vendor} answered HTTP {status}, a redirect to {target}: redirects are not followed (the request carries our credentials); \
         check providers.{vendor}.base_url"
    ))
    .with_status(status)
}

/// The body, refused unread when it declares more than `max` bytes, and
/// refused as soon as more than `max` arrive.
async fn read_capped(
    vendor: ProviderName,
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Bytes, VendorError> {
    let status = resp.status().as_u16();
    let too_large = |what: String| {
        VendorError::outage(format!(
            "{vendor} answered HTTP {status} with a body of {what}, over the providers.max_response_bytes limit of {max} bytes; it was not read"
        ))
        .with_status(status)
    };
    if let Some(declared) = resp.content_length()
        && declared > max
    {
        return Err(too_large(format!("{declared} bytes")));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| VendorError::from_transport(vendor, &e))?
    {
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(too_large(format!("more than {max} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A vendor's own words from an error body, ready for a message: cleaned
/// and cut (see [`clean`]). Empty text is none.
pub fn vendor_text(s: &str) -> Option<String> {
    Some(clean(s, VENDOR_TEXT_CHARS)).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one request head (to the blank line).
    async fn read_head(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        String::from_utf8_lossy(&buf).to_ascii_lowercase()
    }

    /// A server that answers each connection with `answer` (then, for an
    /// endless body, `tail` forever); returns its address and the bytes it
    /// managed to write.
    async fn server(
        answer: String,
        tail: Option<Vec<u8>>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            let mut written = answer.len() as u64;
            if s.write_all(answer.as_bytes()).await.is_err() {
                return written;
            }
            match tail {
                Some(chunk) => {
                    while s.write_all(&chunk).await.is_ok() {
                        written += chunk.len() as u64;
                    }
                }
                // Hold the connection open, sending nothing more.
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            written
        });
        (addr, task)
    }

    fn request(http: &VendorHttp, url: String) -> reqwest::RequestBuilder {
        http.client()
            .post(url)
            .timeout(Duration::from_secs(20))
            .header("x-api-key", "sk-must-not-travel")
            .body("{}")
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_names_where_it_pointed() {
        let http = VendorHttp::for_tests();
        // Where the redirect points: it must never see the key (or anything).
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        for status in [
            "301 Moved Permanently",
            "302 Found",
            "307 Temporary Redirect",
            "308 Permanent Redirect",
        ] {
            let (addr, _) = server(
                format!("HTTP/1.1 {status}\r\nlocation: http://{target}/steal\r\ncontent-length: 0\r\n\r\n"),
                None,
            )
            .await;
            let e = match http
                .send(
                    ProviderName::Argos,
                    request(&http, format!("http://{addr}/modules/document")),
                )
                .await
            {
                Err(e) => e,
                Ok(a) => panic!("{status}: answered {}", a.status),
            };
            assert_eq!(e.kind, ErrorKind::Outage { retry_after: None }, "{status}");
            assert_eq!(e.http_status, Some(status[..3].parse().unwrap()));
            assert!(
                e.message.contains(&format!(
                    "a redirect to http://{target}: redirects are not followed"
                )) && e.message.contains("check providers.argos.base_url"),
                "{}",
                e.message
            );
        }
        let hit = tokio::time::timeout(Duration::from_millis(500), elsewhere.accept()).await;
        assert!(hit.is_err(), "the redirect target was contacted");
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_unread() {
        let http = VendorHttp::for_tests();
        let (addr, _) = server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n".into(),
            None,
        )
        .await;
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            http.send(
                ProviderName::Didit,
                request(&http, format!("http://{addr}/v3/passive-liveness/")),
            ),
        )
        .await
        .expect("refused at once, not after reading");
        let e = sent.err().expect("refused");
        assert!(e.is_outage(), "{e}");
        assert!(
            e.message.contains("didit answered HTTP 200 with a body of 104857600 bytes, over the providers.max_response_bytes limit of 1048576 bytes; it was not read"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_off_at_the_cap() {
        let http = VendorHttp::for_tests();
        let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
        chunk.extend(std::iter::repeat_n(b'a', 64 * 1024));
        chunk.extend_from_slice(b"\r\n");
        let (addr, written) = server(
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            Some(chunk),
        )
        .await;
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            http.send(
                ProviderName::Intellicheck,
                request(&http, format!("http://{addr}/api/v1/start")),
            ),
        )
        .await
        .expect("cut off, not read forever");
        let e = sent.err().expect("refused");
        assert!(e.is_outage(), "{e}");
        assert!(
            e.message.contains("with a body of more than 1048576 bytes, over the providers.max_response_bytes limit"),
            "{}",
            e.message
        );
        // The connection was dropped: the server stopped soon after the cap
        // (what the socket buffers held besides).
        let written = tokio::time::timeout(Duration::from_secs(10), written)
            .await
            .expect("the server saw the connection close")
            .unwrap();
        assert!(written < 64 << 20, "{written} bytes written");
    }

    #[test]
    fn vendor_text_is_cleaned_and_capped() {
        let t = vendor_text(&format!("bad\r\n\tthing\u{7}{}", "x ".repeat(50_000))).unwrap();
        assert!(t.starts_with("bad thing x x"), "{t}");
        assert!(t.chars().count() <= VENDOR_TEXT_CHARS + 1);
        assert!(!t.chars().any(char::is_control));
        assert_eq!(vendor_text(" \n "), None);
    }
}
