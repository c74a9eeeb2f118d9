//! Credentials from a docker `config.json` (`auths` only; credential
//! helpers and stores are not run).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::auth::Credentials;
use crate::reference::DOCKER_HUB;

/// A docker `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    /// The file cannot be read.
    #[error("cannot read docker config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not the expected JSON.
    #[error("cannot parse docker config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An `auths` entry is malformed.
    #[error("invalid docker config {path}: auths.{key:?}: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(Debug, Default, serde::Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The `auths` of a docker `config.json`, decoded.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    /// (original key, registry host it names, credentials), in key order.
    entries: Vec<(String, String, Credentials)>,
}

impl DockerConfig {
    /// Reads and decodes `path`.
    pub fn load(path: &Path) -> Result<Self, DockerConfigError> {
        let bytes = std::fs::read(path).map_err(|source| DockerConfigError::Read { path: path.to_owned(), source })?;
        Self::from_slice(path, &bytes)
    }

    /// Decodes `bytes`; `path` is only used in errors.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Self, DockerConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|source| DockerConfigError::Parse { path: path.to_owned(), source })?;
        if raw.creds_store.is_some() || !raw.cred_helpers.is_empty() {
            tracing::warn!(file = %path.display(), "docker credential helpers are not supported; using auths only");
        }
        let mut entries = Vec::new();
        for (key, auth) in raw.auths {
            let bad = |reason| DockerConfigError::Entry { path: path.to_owned(), key: key.clone(), reason };
            let creds = if let Some(token) = auth.registrytoken.filter(|t| !t.is_empty()) {
                Credentials::RegistryToken(token)
            } else if let Some(token) = auth.identitytoken.filter(|t| !t.is_empty()) {
                Credentials::IdentityToken(token)
            } else if let Some(encoded) = auth.auth.filter(|a| !a.is_empty()) {
                let (username, password) = decode_basic_auth(&encoded).map_err(bad)?;
                Credentials::Basic { username, password }
            } else if let (Some(username), Some(password)) = (auth.username, auth.password) {
                Credentials::Basic { username, password }
            } else {
                continue;
            };
            let host = registry_of_key(&key);
            entries.push((key, host, creds));
        }
        Ok(Self { entries })
    }

    /// Credentials for `registry` (as in [`crate::reference::Reference::registry`]);
    /// an entry whose key is exactly `registry` wins over one that only
    /// normalises to it (`https://index.docker.io/v1/` for `docker.io`).
    pub fn credentials_for(&self, registry: &str) -> Option<Credentials> {
        let wanted = normalise_host(registry);
        let exact = self.entries.iter().find(|(key, _, _)| key == registry);
        exact.or_else(|| self.entries.iter().find(|(_, host, _)| *host == wanted)).map(|(_, _, creds)| creds.clone())
    }
}

/// The registry host a `config.json` key names: keys may be bare hosts or
/// URLs such as `https://index.docker.io/v1/`.
fn registry_of_key(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    normalise_host(host)
}

fn normalise_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

/// Decodes docker's `auth` field: base64 of `username:password`.
pub fn decode_basic_auth(encoded: &str) -> Result<(String, String), &'static str> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| "auth is not base64")?;
    let text = String::from_utf8(decoded).map_err(|_| "auth is not UTF-8")?;
    let (username, password) = text.split_once(':').ok_or("auth is not user:password")?;
    Ok((username.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DockerConfig, DockerConfigError> {
        DockerConfig::from_slice(Path::new("/cfg.json"), json.as_bytes())
    }

    #[test]
    fn decodes_entries() {
        let config = parse(
            r#"{
              "auths": {
                "https://index.docker.io/v1/": { "auth": "dXNlcjpwYTpzcw==" },
                "quay.io": { "username": "q", "password": "p" },
                "ghcr.io": { "identitytoken": "refresh" },
                "registry.example.com:5000": { "registrytoken": "bearer", "auth": "eDp5" },
                "empty.example.com": {}
              },
              "credsStore": "desktop"
            }"#,
        )
        .expect("parse");
        assert_eq!(
            config.credentials_for("docker.io"),
            Some(Credentials::Basic { username: "user".into(), password: "pa:ss".into() })
        );
        assert_eq!(
            config.credentials_for("quay.io"),
            Some(Credentials::Basic { username: "q".into(), password: "p".into() })
        );
        assert_eq!(config.credentials_for("ghcr.io"), Some(Credentials::IdentityToken("refresh".into())));
        assert_eq!(
            config.credentials_for("registry.example.com:5000"),
            Some(Credentials::RegistryToken("bearer".into()))
        );
        assert_eq!(config.credentials_for("registry.example.com"), None);
        assert_eq!(config.credentials_for("empty.example.com"), None);
        assert_eq!(config.credentials_for("gcr.io"), None);
    }

    #[test]
    fn exact_key_wins() {
        let config = parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": { "username": "old", "password": "x" },
                "docker.io": { "username": "new", "password": "y" }
            }}"#,
        )
        .expect("parse");
        assert_eq!(
            config.credentials_for("docker.io"),
            Some(Credentials::Basic { username: "new".into(), password: "y".into() })
        );
        assert!(parse("{}").expect("empty").credentials_for("docker.io").is_none());
    }

    #[test]
    fn errors_name_the_entry() {
        let err = parse(r#"{"auths": {"quay.io": {"auth": "!!!"}}}"#).expect_err("bad base64");
        assert!(err.to_string().contains("quay.io"), "{err}");
        let err = parse(r#"{"auths": {"quay.io": {"auth": "bm9jb2xvbg=="}}}"#).expect_err("no colon");
        assert!(err.to_string().contains("user:password"), "{err}");
        assert!(matches!(parse("[").expect_err("json"), DockerConfigError::Parse { .. }));
        let err = DockerConfig::load(Path::new("/nonexistent/config.json")).expect_err("missing");
        assert!(matches!(err, DockerConfigError::Read { .. }));
    }
}
