//! Registry endpoints from containerd's `hosts.toml` layout:
//! `<dir>/<registry>/hosts.toml`, falling back to `<dir>/_default/hosts.toml`.
//!
//! Every `[host."URL"]` table is a mirror, tried in file order; `server` (or
//! the registry's default upstream) comes last.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::reference::DOCKER_HUB;

/// Where hosts directories live unless configured otherwise.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/crius/certs.d";
/// The directory consulted when a registry has none of its own.
pub const DEFAULT_DIR_NAME: &str = "_default";
/// The upstream that serves `docker.io`.
pub const DOCKER_HUB_UPSTREAM: &str = "https://registry-1.docker.io";

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve tags to digests.
    pub resolve: bool,
    /// Push content (unused by crius, parsed for completeness).
    pub push: bool,
}

impl Capabilities {
    /// Pull, resolve and push.
    pub const ALL: Self = Self { pull: true, resolve: true, push: true };
}

/// One place to send registry requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL requests are made under: `<scheme>://<host><path>`, where the
    /// path normally ends in `/v2` (no trailing slash).
    pub url: Url,
    /// What the endpoint may be used for.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files) to trust.
    pub ca: Vec<PathBuf>,
    /// Headers added to every request.
    pub headers: HeaderMap,
    /// For mirrors: the registry they stand in for, sent as `?ns=`.
    pub namespace: Option<String>,
}

impl Endpoint {
    /// URL of `<repository>/<kind>/<object>` on this endpoint, e.g.
    /// `kind = "manifests"`, `object = "latest"`.
    pub fn request_url(&self, repository: &str, kind: &str, object: &str) -> Result<Url, UrlParseError> {
        let base = self.url.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}/{repository}/{kind}/{object}"))?;
        if let Some(ns) = &self.namespace {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }

    /// `scheme://host[:port]`, for messages and per-host state.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

/// Why a URL does not parse (`url::ParseError`, reached through reqwest).
pub type UrlParseError = <Url as std::str::FromStr>::Err;

/// A hosts file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The registry name does not make a URL.
    #[error("invalid registry host {registry:?}")]
    Registry {
        /// The registry.
        registry: String,
        /// Why.
        #[source]
        source: UrlParseError,
    },
    /// The file exists but cannot be read.
    #[error("cannot read hosts file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not TOML.
    #[error("cannot parse hosts file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A key has a value of the wrong type or form.
    #[error("invalid hosts file {path}: {key}: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key (`host."https://m".capabilities`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The endpoints for `registry`, mirrors first, from `dir` (or only the
/// default upstream when `dir` is `None` or holds no hosts file for it).
pub fn load_endpoints(dir: Option<&Path>, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    let Some(dir) = dir else { return Ok(vec![default_endpoint(registry)?]) };
    for name in [registry, DEFAULT_DIR_NAME] {
        let host_dir = dir.join(name);
        let path = host_dir.join("hosts.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse_hosts(registry, &host_dir, &path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(HostsError::Read { path, source }),
        }
    }
    Ok(vec![default_endpoint(registry)?])
}

/// The upstream for `registry` with no configuration: Docker Hub's for
/// `docker.io`, plain HTTP for loopback registries (as containerd does),
/// else `https://<registry>`.
pub fn default_endpoint(registry: &str) -> Result<Endpoint, HostsError> {
    let base = if registry == DOCKER_HUB {
        DOCKER_HUB_UPSTREAM.to_owned()
    } else if is_loopback(registry) {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    };
    let mut url = Url::parse(&base).map_err(|source| HostsError::Registry { registry: registry.to_owned(), source })?;
    url.set_path("/v2");
    Ok(Endpoint {
        url,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        headers: HeaderMap::new(),
        namespace: None,
    })
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Whether an endpoint at `url` is the registry itself rather than a mirror.
fn is_upstream(url: &Url, registry: &str) -> bool {
    let authority = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return false,
    };
    authority == registry
        || (registry == DOCKER_HUB && matches!(authority.as_str(), "registry-1.docker.io" | "index.docker.io"))
}

/// Parses one hosts file. `host_dir` anchors relative `ca` paths.
pub fn parse_hosts(registry: &str, host_dir: &Path, path: &Path, text: &str) -> Result<Vec<Endpoint>, HostsError> {
    let root = DeTable::parse(text)
        .map_err(|source| HostsError::Parse { path: path.to_owned(), source: Box::new(source) })?
        .into_inner();
    let ctx = Ctx { path, host_dir, registry };
    let mut endpoints = Vec::new();
    let mut server = None;
    for (key, value) in &root {
        match key.get_ref().as_ref() {
            "server" => server = Some(ctx.string("server", value)?),
            "host" => {
                let Some(hosts) = value.get_ref().as_table() else {
                    return Err(ctx.bad("host", "expected tables [host.\"URL\"]"));
                };
                let mut ordered: Vec<_> = hosts.iter().collect();
                ordered.sort_by_key(|(key, _)| key.span().start);
                for (url, table) in ordered {
                    let name = format!("host.{:?}", url.get_ref().as_ref());
                    let Some(table) = table.get_ref().as_table() else {
                        return Err(ctx.bad(&name, "expected a table"));
                    };
                    endpoints.push(ctx.endpoint(&name, url.get_ref(), table, false)?);
                }
            }
            _ => {}
        }
    }
    // Top-level keys other than `server` and `host` configure the server.
    let upstream = match server {
        Some(server) => ctx.endpoint("server", &server, &root, true)?,
        None => {
            let mut endpoint = default_endpoint(registry)?;
            ctx.apply(&mut endpoint, "", &root, true, true)?;
            endpoint
        }
    };
    endpoints.push(upstream);
    Ok(endpoints)
}

struct Ctx<'a> {
    path: &'a Path,
    host_dir: &'a Path,
    registry: &'a str,
}

impl Ctx<'_> {
    fn bad(&self, key: &str, reason: impl Into<String>) -> HostsError {
        HostsError::Value { path: self.path.to_owned(), key: key.to_owned(), reason: reason.into() }
    }

    fn string(&self, key: &str, value: &Spanned<DeValue<'_>>) -> Result<String, HostsError> {
        value.get_ref().as_str().map(str::to_owned).ok_or_else(|| self.bad(key, "expected a string"))
    }

    fn bool(&self, key: &str, value: &Spanned<DeValue<'_>>) -> Result<bool, HostsError> {
        value.get_ref().as_bool().ok_or_else(|| self.bad(key, "expected true or false"))
    }

    /// A string or a list of strings.
    fn strings(&self, key: &str, value: &Spanned<DeValue<'_>>) -> Result<Vec<String>, HostsError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(vec![s.to_string()]),
            DeValue::Array(items) => items
                .iter()
                .map(|item| item.get_ref().as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad(key, "expected a list of strings")),
            _ => Err(self.bad(key, "expected a string or a list of strings")),
        }
    }

    fn endpoint(&self, name: &str, raw: &str, table: &DeTable<'_>, server: bool) -> Result<Endpoint, HostsError> {
        let with_scheme = if raw.contains("://") { raw.to_owned() } else { format!("https://{raw}") };
        let url = Url::parse(&with_scheme).map_err(|e| self.bad(name, format!("invalid URL {raw:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.bad(name, format!("URL {raw:?} needs an http or https scheme and a host")));
        }
        let mut endpoint = Endpoint {
            url,
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca: Vec::new(),
            headers: HeaderMap::new(),
            namespace: None,
        };
        let prefix = if server { String::new() } else { format!("{name}.") };
        self.apply(&mut endpoint, &prefix, table, server, false)?;
        if !is_upstream(&endpoint.url, self.registry) {
            endpoint.namespace = Some(self.registry.to_owned());
        }
        Ok(endpoint)
    }

    /// Applies the keys of `table` to `endpoint` and fixes up its path,
    /// unless `keep_path` (the default upstream already has one). In the
    /// top-level table, `server` and `host` are not endpoint settings.
    fn apply(
        &self,
        endpoint: &mut Endpoint,
        prefix: &str,
        table: &DeTable<'_>,
        top_level: bool,
        keep_path: bool,
    ) -> Result<(), HostsError> {
        let mut override_path = false;
        for (key, value) in table {
            let key = key.get_ref().as_ref();
            let full = format!("{prefix}{key}");
            match key {
                "server" | "host" if top_level => {}
                "capabilities" => {
                    let mut caps = Capabilities { pull: false, resolve: false, push: false };
                    for cap in self.strings(&full, value)? {
                        match cap.as_str() {
                            "pull" => caps.pull = true,
                            "resolve" => caps.resolve = true,
                            "push" => caps.push = true,
                            other => {
                                return Err(self.bad(&full, format!("unknown capability {other:?}")));
                            }
                        }
                    }
                    endpoint.capabilities = caps;
                }
                "skip_verify" => endpoint.skip_verify = self.bool(&full, value)?,
                "ca" => {
                    endpoint.ca = self.strings(&full, value)?.into_iter().map(|p| self.host_dir.join(p)).collect();
                }
                "override_path" => override_path = self.bool(&full, value)?,
                "header" => endpoint.headers = self.headers(&full, value)?,
                "client" => {
                    tracing::warn!(file = %self.path.display(), key = %full, "client certificates are not supported; ignored");
                }
                _ => tracing::warn!(file = %self.path.display(), key = %full, "unknown key in hosts file; ignored"),
            }
        }
        if !keep_path {
            let path = endpoint.url.path().trim_end_matches('/').to_owned();
            let path = if override_path || path.ends_with("/v2") { path } else { format!("{path}/v2") };
            endpoint.url.set_path(&path);
            endpoint.url.set_query(None);
            endpoint.url.set_fragment(None);
        }
        Ok(())
    }

    fn headers(&self, key: &str, value: &Spanned<DeValue<'_>>) -> Result<HeaderMap, HostsError> {
        let Some(table) = value.get_ref().as_table() else {
            return Err(self.bad(key, "expected a table of header names to values"));
        };
        let mut headers = HeaderMap::new();
        for (name, values) in table {
            let full = format!("{key}.{}", name.get_ref());
            let header = HeaderName::from_bytes(name.get_ref().as_bytes())
                .map_err(|_| self.bad(&full, "invalid header name"))?;
            for value in self.strings(&full, values)? {
                let value = HeaderValue::from_str(&value).map_err(|_| self.bad(&full, "invalid header value"))?;
                headers.append(header.clone(), value);
            }
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        let host_dir = dir.join(host);
        std::fs::create_dir_all(&host_dir).expect("mkdir");
        std::fs::write(host_dir.join("hosts.toml"), text).expect("write");
    }

    #[test]
    fn defaults_without_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (registry, want) in [
            ("docker.io", "https://registry-1.docker.io/v2"),
            ("quay.io", "https://quay.io/v2"),
            ("localhost:5000", "http://localhost:5000/v2"),
            ("127.0.0.1:5000", "http://127.0.0.1:5000/v2"),
        ] {
            for d in [None, Some(dir.path())] {
                let eps = load_endpoints(d, registry).expect("load");
                assert_eq!(eps.len(), 1);
                assert_eq!(eps[0].url.as_str(), want);
                assert_eq!(eps[0].namespace, None);
                assert_eq!(eps[0].capabilities, Capabilities::ALL);
            }
        }
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "docker.io",
            r#"
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]
unknown_top = 1

[host."https://z-mirror.example.com"]
capabilities = ["pull"]
skip_verify = true
ca = ["z.pem", "/abs/ca.pem"]
header = { "X-Token" = "abc", "X-Multi" = ["a", "b"] }

[host."http://a-mirror.example.com:5000/custom/path"]
override_path = true
ca = "a.pem"
something = "ignored"

[host."mirror.example.org/prefix"]
"#,
        );
        let eps = load_endpoints(Some(dir.path()), "docker.io").expect("load");
        let urls: Vec<_> = eps.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://z-mirror.example.com/v2",
                "http://a-mirror.example.com:5000/custom/path",
                "https://mirror.example.org/prefix/v2",
                "https://registry-1.docker.io/v2",
            ]
        );
        let z = &eps[0];
        assert!(z.skip_verify);
        assert_eq!(z.capabilities, Capabilities { pull: true, resolve: false, push: false });
        assert_eq!(z.ca, [dir.path().join("docker.io/z.pem"), PathBuf::from("/abs/ca.pem")]);
        assert_eq!(z.headers.get("x-token").map(|v| v.as_bytes()), Some(&b"abc"[..]));
        assert_eq!(z.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(z.namespace.as_deref(), Some("docker.io"));
        assert_eq!(eps[1].ca, [dir.path().join("docker.io/a.pem")]);
        let server = &eps[3];
        assert_eq!(server.namespace, None);
        assert_eq!(server.capabilities, Capabilities { pull: true, resolve: true, push: false });
        let url = z.request_url("library/busybox", "manifests", "latest").expect("url");
        assert_eq!(url.as_str(), "https://z-mirror.example.com/v2/library/busybox/manifests/latest?ns=docker.io");
        let url = server.request_url("library/busybox", "blobs", "sha256:00").expect("url");
        assert_eq!(url.as_str(), "https://registry-1.docker.io/v2/library/busybox/blobs/sha256:00");
    }

    #[test]
    fn default_dir_and_missing_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "_default", "[host.\"https://mirror.local\"]\ncapabilities = [\"pull\", \"resolve\"]\n");
        let eps = load_endpoints(Some(dir.path()), "ghcr.io").expect("load");
        let urls: Vec<_> = eps.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["https://mirror.local/v2", "https://ghcr.io/v2"]);
        assert_eq!(eps[0].namespace.as_deref(), Some("ghcr.io"));
        // A server whose path already ends in /v2 keeps it; override keeps "/".
        write(dir.path(), "example.com", "server = \"https://example.com/v2/\"\n");
        let eps = load_endpoints(Some(dir.path()), "example.com").expect("load");
        assert_eq!(eps[0].url.as_str(), "https://example.com/v2");
        assert_eq!(eps[0].namespace, None);
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, key) in [
            ("server = 1", "server"),
            ("skip_verify = \"yes\"", "skip_verify"),
            ("capabilities = [\"pull\", \"fly\"]", "capabilities"),
            ("[host.\"https://m\"]\nca = 3", "host.\"https://m\".ca"),
            ("[host.\"ftp://m\"]", "host.\"ftp://m\""),
            ("[host.\"https://m\"]\nheader = { \"bad name\" = \"x\" }", "host.\"https://m\".header.bad name"),
            ("host = 1", "host"),
        ] {
            write(dir.path(), "r.example", text);
            let err = load_endpoints(Some(dir.path()), "r.example").expect_err(text);
            match &err {
                HostsError::Value { path, key: got, .. } => {
                    assert_eq!(path, &dir.path().join("r.example/hosts.toml"));
                    assert_eq!(got, key, "{text}");
                }
                other => panic!("{text}: {other}"),
            }
        }
        write(dir.path(), "r.example", "server = ");
        let err = load_endpoints(Some(dir.path()), "r.example").expect_err("syntax");
        assert!(matches!(err, HostsError::Parse { .. }), "{err}");
    }
}
