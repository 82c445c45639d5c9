//! Where configuration comes from: the compiled-in defaults, an optional
//! TOML file, an optional environment file and the environment, later
//! layers winning key by key.

use super::Config;
use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use std::path::{Path, PathBuf};

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
const SECTIONS: [&str; 12] = [
    "broker",
    "console",
    "worker",
    "retry",
    "s3",
    "results",
    "providers",
    "coordination",
    "traffic",
    "shadow",
    "callbacks",
    "telemetry",
];

/// Where configuration comes from besides the compiled-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
}

impl Config {
    /// Loads defaults, the optional file, the optional env file and the
    /// environment, then validates. Errors name the offending key.
    pub fn load(sources: &Sources) -> anyhow::Result<Config> {
        let file = sources
            .file
            .clone()
            .or_else(|| std::env::var_os("LIVENESS_CONFIG").map(PathBuf::from));
        let env_file = sources
            .env_file
            .clone()
            .or_else(|| std::env::var_os("LIVENESS_ENV_FILE").map(PathBuf::from));
        let mut fig = Figment::new().merge(Toml::string(DEFAULT_TOML));
        if let Some(path) = &file {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        if let Some(path) = &env_file {
            for (k, v) in read_env_file(path)? {
                // The real environment wins over the file.
                if std::env::var_os(&k).is_none() {
                    // SAFETY: called once at start-up before any thread is spawned.
                    unsafe { std::env::set_var(k, v) };
                }
            }
        }
        fig = fig.merge(env());
        from_figment(fig)
    }

    /// Defaults plus a TOML snippet: for tests and embedding.
    pub fn from_toml(overrides: &str) -> anyhow::Result<Config> {
        Self::from_toml_layers(&[overrides])
    }

    /// Defaults plus TOML snippets, later ones winning key by key.
    pub fn from_toml_layers(layers: &[&str]) -> anyhow::Result<Config> {
        let base = Figment::new().merge(Toml::string(DEFAULT_TOML));
        from_figment(layers.iter().fold(base, |f, l| f.merge(Toml::string(l))))
    }
}

/// Environment variables `LIVENESS_<SECTION>__<KEY>`; other LIVENESS_*
/// variables (LIVENESS_CONFIG, test settings) are not configuration keys.
fn env() -> Env {
    Env::prefixed("LIVENESS_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        // The key is seen after `split`, so "broker__url" reads "broker.url".
        SECTIONS.iter().any(|s| {
            k.strip_prefix(s)
                .is_some_and(|r| r.starts_with('.') || r.starts_with("__"))
        })
    })
}

fn from_figment(fig: Figment) -> anyhow::Result<Config> {
    let mut cfg: Config = fig.extract().map_err(|e| {
        let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
    })?;
    let p = &mut cfg.providers;
    for (secret, key) in [
        (&mut cfg.broker.url, "broker.url"),
        (&mut cfg.broker.state_secret, "broker.state_secret"),
        (&mut cfg.s3.secret_access_key, "s3.secret_access_key"),
        (&mut p.argos.api_key, "providers.argos.api_key"),
        (
            &mut p.argos.callback_secret,
            "providers.argos.callback_secret",
        ),
        (
            &mut p.intellicheck.signing_key,
            "providers.intellicheck.signing_key",
        ),
        (&mut p.didit.api_key, "providers.didit.api_key"),
        (&mut cfg.coordination.redis_url, "coordination.redis_url"),
        (&mut cfg.console.password, "console.password"),
    ] {
        secret.resolve(key)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// KEY=VALUE lines; `#` comments, blank lines, an optional `export ` and
/// matching quotes around the value are allowed.
pub(super) fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read env file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected KEY=VALUE", path.display(), n + 1);
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_of_the_defaults_is_reachable_from_the_environment() {
        let tables: Vec<&str> = DEFAULT_TOML
            .lines()
            .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']'))
            .filter(|t| !t.contains('.'))
            .collect();
        assert!(tables.len() >= 9, "{tables:?}");
        for t in tables {
            assert!(
                SECTIONS.contains(&t),
                "[{t}] is missing from SECTIONS: LIVENESS_{}__* would be ignored",
                t.to_uppercase()
            );
        }
    }
}
