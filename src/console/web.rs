//! The console's HTTP side: routes, authentication, cross-site request
//! protection, and form and query parsing.
//!
//! Authentication is HTTP basic (`console.username` / `console.password`),
//! not a bearer token: a browser asks for basic credentials by itself and
//! sends them with every request, so the console needs no login form,
//! session store or cookie, and `curl -u` works for scripts. It is required
//! unless the console listens on loopback only (checked at start).
//!
//! Cross-site requests: a browser also sends basic credentials with a POST
//! that another site's page makes, so every POST must (1) carry the page's
//! CSRF token (an HMAC of a per-process random key: another site cannot read
//! it), (2) when the browser says where it comes from (`Sec-Fetch-Site`,
//! `Origin`), come from the console's own origin. GETs change nothing.

use super::App;
use crate::config::ConsoleConfig;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Form and query bodies larger than this are refused.
pub const MAX_FORM_BYTES: usize = 256 * 1024;

pub async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/style.css"),
    )
}

/// The credentials the console asks for, and its CSRF key.
pub struct Auth {
    /// The expected `Authorization` header value, when credentials are set.
    basic: Option<String>,
    csrf_key: [u8; 32],
}

impl Auth {
    pub fn new(cfg: &ConsoleConfig) -> anyhow::Result<Auth> {
        use base64::Engine as _;
        let basic = (!cfg.username.is_empty()).then(|| {
            let pair = format!("{}:{}", cfg.username, cfg.password.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let mut csrf_key = [0u8; 32];
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut csrf_key))
            .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for the CSRF key: {e}"))?;
        Ok(Auth { basic, csrf_key })
    }

    pub fn describe(&self) -> &'static str {
        if self.basic.is_some() {
            "basic"
        } else {
            "none (loopback)"
        }
    }

    /// The token every form carries.
    pub fn csrf_token(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.csrf_key).expect("any key length");
        mac.update(b"liveness-console csrf v1");
        hex::encode(mac.finalize().into_bytes())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.basic else {
            return true;
        };
        let got = headers
            .get(header::AUTHORIZATION)
            .map_or(&b""[..], HeaderValue::as_bytes);
        same(got, want.as_bytes())
    }

    fn csrf_ok(&self, token: &str) -> bool {
        same(token.as_bytes(), self.csrf_token().as_bytes())
    }
}

/// Constant-time equality (through HMAC verification, so the time does not
/// depend on where the inputs first differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"compare").expect("any key length");
    mac.update(a);
    let mut other = Hmac::<Sha256>::new_from_slice(b"compare").expect("any key length");
    other.update(b);
    mac.verify_slice(&other.finalize().into_bytes()).is_ok()
}

/// Authentication for every request; for POSTs the browser's own word on
/// where the request comes from. The CSRF token is checked with the form.
pub async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // The health check says only that the process serves.
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    if !app.auth.authorized(req.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"liveness-worker console\", charset=\"UTF-8\"",
            )],
            "The console needs its credentials (console.username / console.password).\n",
        )
            .into_response();
    }
    if req.method() == axum::http::Method::POST
        && let Err(why) = same_origin(req.headers())
    {
        return refuse(StatusCode::FORBIDDEN, &why);
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // The page is never framed, sniffed or cached (it shows job data).
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A POST from another site is refused: by `Sec-Fetch-Site` when the
/// browser sends it, else by `Origin` against `Host`.
pub fn same_origin(h: &HeaderMap) -> Result<(), String> {
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err(format!(
            "a cross-site request (Sec-Fetch-Site: {site}) cannot change anything here"
        ));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if origin_host != Some(host) {
            return Err(format!(
                "a request from another origin ({origin}) cannot change anything here"
            ));
        }
    }
    Ok(())
}

/// An error page, or plain text for a refused request.
pub fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// A refused request, before it becomes its response.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, &self.1)
    }
}

/// Name/value pairs of a query string or an urlencoded form body.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: &[u8]) -> Params {
        Params(
            url::form_urlencoded::parse(raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn query(q: Option<&str>) -> Params {
        Params::parse(q.unwrap_or_default().as_bytes())
    }

    /// The first non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A POSTed form, once its CSRF token checked out.
pub fn form(app: &App, body: &Bytes) -> Result<Params, Refused> {
    let p = Params::parse(body);
    match p.get("csrf") {
        Some(t) if app.auth.csrf_ok(t) => Ok(p),
        _ => Err(Refused(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong: reload the page and try again".into(),
        )),
    }
}

/// Refuses a change when the console is read-only.
pub fn writable(app: &App) -> Result<(), Refused> {
    if app.cfg.console.read_only {
        Err(Refused(
            StatusCode::FORBIDDEN,
            "the console is read-only (console.read_only): nothing can be changed from it".into(),
        ))
    } else {
        Ok(())
    }
}

/// A rendered page.
pub fn page(html: anyhow::Result<String>) -> Response {
    match html {
        Ok(h) => Html(h).into_response(),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "A console page failed to render");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the page could not be rendered: {e:#}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        assert!(same_origin(&headers(&[("host", "c:9180")])).is_ok());
        assert!(
            same_origin(&headers(&[
                ("host", "c:9180"),
                ("origin", "http://c:9180"),
                ("sec-fetch-site", "same-origin")
            ]))
            .is_ok()
        );
        assert!(
            same_origin(&headers(&[
                ("host", "c:9180"),
                ("origin", "http://evil:80")
            ]))
            .is_err()
        );
        assert!(
            same_origin(&headers(&[
                ("host", "c:9180"),
                ("sec-fetch-site", "cross-site")
            ]))
            .is_err()
        );
        assert!(same_origin(&headers(&[("host", "c:9180"), ("origin", "null")])).is_err());
    }

    #[test]
    fn credentials_and_tokens() {
        let cfg =
            crate::config::Config::from_toml("[console]\nusername = \"ops\"\npassword = \"pw\"")
                .unwrap();
        let auth = Auth::new(&cfg.console).unwrap();
        // "ops:pw"
        assert!(auth.authorized(&headers(&[("authorization", "Basic b3BzOnB3")])));
        assert!(!auth.authorized(&headers(&[("authorization", "Basic b3BzOnB4")])));
        assert!(!auth.authorized(&HeaderMap::new()));
        assert!(auth.csrf_ok(&auth.csrf_token()));
        assert!(!auth.csrf_ok("00"));
        // Another process has another key.
        assert_ne!(
            auth.csrf_token(),
            Auth::new(&cfg.console).unwrap().csrf_token()
        );
    }

    #[test]
    fn repeated_fields_are_kept() {
        let p = Params::parse(b"job_id=a&job_id=b&class=&x=1");
        assert_eq!(p.all("job_id"), vec!["a", "b"]);
        assert_eq!(p.get("class"), None);
        assert_eq!(p.get("x"), Some("1"));
    }
}
