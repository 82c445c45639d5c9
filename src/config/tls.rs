//! `[broker.tls]`: the PEM files for `amqps://`, read and checked at start,
//! and the rustls client configuration they make (ring provider).
//! `broker.tls.ca_file` replaces the system roots rather than adding to
//! them.

use super::de;
use anyhow::{Context as _, anyhow, bail};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use std::sync::Arc;

/// `[broker.tls]`: PEM files; an empty path means "not set".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// CA certificates that replace the system roots.
    #[serde(default, deserialize_with = "de::lenient_string")]
    pub ca_file: String,
    /// Client certificate chain and its key, for mutual TLS: both or neither.
    #[serde(default, deserialize_with = "de::lenient_string")]
    pub cert_file: String,
    #[serde(default, deserialize_with = "de::lenient_string")]
    pub key_file: String,
}

impl BrokerTlsConfig {
    /// Reads and checks the files (readable, PEM, the key matching the
    /// certificate) without connecting; validation calls it so a bad file
    /// stops the worker at start.
    pub fn check_files(&self) -> anyhow::Result<()> {
        self.client_config(false).map(drop)
    }

    /// The TLS client configuration these files make. `system_roots`: load
    /// the OS trust store when no CA file is configured (skipped by
    /// [`Self::check_files`], which only checks the configured files).
    pub fn client_config(&self, system_roots: bool) -> anyhow::Result<ClientConfig> {
        client_config(self, system_roots)
    }
}

fn client_config(tls: &BrokerTlsConfig, system_roots: bool) -> anyhow::Result<ClientConfig> {
    let roots = if !tls.ca_file.is_empty() {
        ca_roots(&tls.ca_file)?
    } else if system_roots {
        os_roots()?
    } else {
        RootCertStore::empty()
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("the ring TLS provider offers no protocol version")?
            .with_root_certificates(roots);
    if tls.cert_file.is_empty() && tls.key_file.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let chain = read_certs("broker.tls.cert_file", &tls.cert_file)?;
    let key = read_key(&tls.key_file)?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow!(
                "broker.tls.key_file ({}) is not the private key of the certificate in broker.tls.cert_file ({})",
                tls.key_file,
                tls.cert_file
            ),
            e => anyhow!(
                "broker.tls.cert_file ({}) and broker.tls.key_file ({}) cannot be used as a client certificate: {e}",
                tls.cert_file,
                tls.key_file
            ),
        })
}

fn ca_roots(path: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs("broker.tls.ca_file", path)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "broker.tls.ca_file: certificate #{} in {path} cannot be used as a CA: {e}",
                i + 1
            )
        })?;
    }
    Ok(roots)
}

fn os_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        bail!(
            "amqps:// without broker.tls.ca_file trusts the system's root certificates, but none were found{}: install the CA bundle (Debian and Ubuntu: ca-certificates) or set broker.tls.ca_file",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
    }
    for e in &found.errors {
        tracing::warn!(error = %e, "Some system root certificates could not be loaded");
    }
    Ok(roots)
}

fn read_certs(key: &str, path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("{key}: cannot read {path}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{key}: {path} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        bail!(
            "{key}: {path} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"); a DER file converts with `openssl x509 -inform der -in {path} -out cert.pem`"
        );
    }
    Ok(certs)
}

fn read_key(path: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let key = "broker.tls.key_file";
    let bytes = std::fs::read(path).with_context(|| format!("{key}: cannot read {path}"))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound if contains(&bytes, b"ENCRYPTED PRIVATE KEY") => anyhow!(
            "{key}: the key in {path} is encrypted; the worker takes an unencrypted key (decrypt it with `openssl pkey -in {path} -out key.pem` and protect the file instead)"
        ),
        pem::Error::NoItemsFound => anyhow!(
            "{key}: {path} holds no PEM private key (PKCS#8 \"BEGIN PRIVATE KEY\", PKCS#1 \"BEGIN RSA PRIVATE KEY\" or SEC1 \"BEGIN EC PRIVATE KEY\")"
        ),
        e => anyhow!("{key}: {path} is not valid PEM: {e}"),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
