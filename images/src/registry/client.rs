//! The registry client: resolves references to verified manifests and
//! streams blobs, trying each endpoint (mirrors first) until one answers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use reqwest::{StatusCode, Url};

use super::auth::{AuthError, Authenticator, Credentials};
pub use super::error::RegistryError;
use super::error::error_chain;
use super::hosts::{self, Endpoint};
use super::manifest::{self, Manifest, ManifestError};
use super::read_limited;
use crate::digest::Digest;
use crate::reference::Reference;

/// Largest manifest accepted.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Largest error body read for messages.
const MAX_ERROR_BODY: usize = 64 << 10;

/// How the client is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// containerd-style hosts directory (`<dir>/<registry>/hosts.toml`);
    /// `None` uses each registry's default upstream only.
    pub hosts_dir: Option<PathBuf>,
    /// Limit for establishing a connection (DNS, TCP, TLS).
    pub connect_timeout: Duration,
    /// Limit for each read from a connection (a stalled transfer fails).
    pub read_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            hosts_dir: Some(PathBuf::from(hosts::DEFAULT_HOSTS_DIR)),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            user_agent: concat!("crius/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A manifest fetched and verified.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The manifest bytes, exactly as served.
    pub bytes: Bytes,
    /// Its media type (`Content-Type`, else the document's `mediaType`).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Base URL of the endpoint that served it.
    pub endpoint: Url,
}

impl Resolved {
    /// Parses the manifest.
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        manifest::parse_manifest(&self.media_type, &self.bytes)
    }
}

/// Blob bytes as they arrive; the caller verifies the digest.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// A blob download under way.
pub struct BlobResponse {
    /// Bytes the stream will yield, when the server said.
    pub content_length: Option<u64>,
    /// Offset of the first byte the stream yields: the offset asked for when
    /// the server honoured the range (`partial`), else 0.
    pub offset: u64,
    /// Whether the server answered 206 to a range request; when `false` after
    /// asking for an offset, the stream starts from the beginning.
    pub partial: bool,
    /// Base URL of the endpoint that served it.
    pub endpoint: Url,
    /// The bytes.
    pub stream: BlobStream,
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("content_length", &self.content_length)
            .field("offset", &self.offset)
            .field("partial", &self.partial)
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// Why one endpoint did not serve a request.
#[derive(Debug)]
enum Failure {
    NotFound(String),
    Denied(String),
    Other(String),
    /// Stops the fallback: the content itself is bad or unusable.
    Fatal(RegistryError),
}

#[derive(Debug, Clone, Copy)]
enum Need {
    /// Resolve a tag (needs `resolve` and `pull`).
    Resolve,
    /// Fetch by digest (needs `pull`).
    Pull,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    ca: Vec<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    config: RegistryConfig,
    clients: Mutex<HashMap<TlsKey, reqwest::Client>>,
    auth: Authenticator,
    /// Last endpoint URL that served a manifest, per `registry/repository`.
    preferred: Mutex<HashMap<String, Url>>,
}

/// Pulls manifests and blobs. Cheap to clone; clones share connections,
/// tokens and endpoint preferences.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl RegistryClient {
    /// A client; HTTP clients are built on first use of each TLS setting.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                clients: Mutex::default(),
                auth: Authenticator::new(),
                preferred: Mutex::default(),
            }),
        }
    }

    /// The endpoints for `registry`, in the order they are tried.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, RegistryError> {
        hosts::load_endpoints(self.inner.config.hosts_dir.as_deref(), registry)
            .map_err(|source| RegistryError::Hosts { registry: registry.to_owned(), source })
    }

    /// Fetches the manifest `reference` names (by digest when it pins one,
    /// else by tag) and verifies it.
    pub async fn resolve(&self, reference: &Reference, creds: &Credentials) -> Result<Resolved, RegistryError> {
        match &reference.digest {
            Some(digest) => self.get_manifest(reference, digest, creds).await,
            None => {
                let target = reference.to_string();
                self.manifest_from(reference, &target, &reference.object(), None, Need::Resolve, creds).await
            }
        }
    }

    /// Fetches the manifest `digest` from `reference`'s repository and verifies it.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        digest: &Digest,
        creds: &Credentials,
    ) -> Result<Resolved, RegistryError> {
        self.get_manifest(reference, digest, creds).await
    }

    /// Starts downloading blob `digest` of `reference`'s repository from
    /// byte `offset`, from the endpoint that served the manifest first.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
        creds: &Credentials,
    ) -> Result<BlobResponse, RegistryError> {
        let target = reference.with_digest(digest);
        let mut attempts = Vec::new();
        for endpoint in self.candidates(reference, Need::Pull)? {
            let url = match endpoint.request_url(&reference.repository, "blobs", &digest.to_string()) {
                Ok(url) => url,
                Err(e) => {
                    attempts.push((endpoint.url.to_string(), Failure::Other(format!("bad URL: {e}"))));
                    continue;
                }
            };
            match self.try_blob(&endpoint, &url, &reference.repository, offset, creds).await {
                Ok(response) => return Ok(response),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(failure) => {
                    tracing::debug!(url = %url, ?failure, "blob endpoint failed");
                    attempts.push((url.to_string(), failure));
                }
            }
        }
        Err(failed(target, attempts))
    }

    async fn get_manifest(
        &self,
        reference: &Reference,
        digest: &Digest,
        creds: &Credentials,
    ) -> Result<Resolved, RegistryError> {
        let target = reference.with_digest(digest);
        self.manifest_from(reference, &target, &digest.to_string(), Some(digest), Need::Pull, creds).await
    }

    async fn manifest_from(
        &self,
        reference: &Reference,
        target: &str,
        object: &str,
        expected: Option<&Digest>,
        need: Need,
        creds: &Credentials,
    ) -> Result<Resolved, RegistryError> {
        let mut attempts = Vec::new();
        for endpoint in self.candidates(reference, need)? {
            let url = match endpoint.request_url(&reference.repository, "manifests", object) {
                Ok(url) => url,
                Err(e) => {
                    attempts.push((endpoint.url.to_string(), Failure::Other(format!("bad URL: {e}"))));
                    continue;
                }
            };
            match self.try_manifest(&endpoint, &url, &reference.repository, target, expected, creds).await {
                Ok(resolved) => {
                    self.inner
                        .preferred
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(reference.name(), endpoint.url.clone());
                    return Ok(resolved);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(failure) => {
                    tracing::debug!(url = %url, ?failure, "manifest endpoint failed");
                    attempts.push((url.to_string(), failure));
                }
            }
        }
        Err(failed(target.to_owned(), attempts))
    }

    async fn try_manifest(
        &self,
        endpoint: &Endpoint,
        url: &Url,
        repository: &str,
        target: &str,
        expected: Option<&Digest>,
        creds: &Credentials,
    ) -> Result<Resolved, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(manifest::MANIFEST_ACCEPT));
        let response = self.send(endpoint, url, repository, creds, headers).await?;
        if !response.status().is_success() {
            return Err(status_failure(response).await);
        }
        let too_large = || {
            Failure::Fatal(RegistryError::ManifestTooLarge {
                reference: target.to_owned(),
                url: url.to_string(),
                limit: MAX_MANIFEST_SIZE,
            })
        };
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok());
        let bytes =
            read_limited(response, MAX_MANIFEST_SIZE).await.map_err(transport_failure)?.ok_or_else(too_large)?;
        let digest = Digest::of(&bytes);
        for wanted in expected.into_iter().chain(announced.as_ref()) {
            if *wanted != digest {
                return Err(Failure::Fatal(RegistryError::DigestMismatch {
                    reference: target.to_owned(),
                    url: url.to_string(),
                    expected: wanted.clone(),
                    actual: digest,
                }));
            }
        }
        let media_type = manifest::detect_media_type(content_type.as_deref(), &bytes);
        if manifest::check_supported(&media_type).is_err() {
            let media_type = crate::shown::cut(&media_type);
            return Err(Failure::Fatal(RegistryError::Unsupported { reference: target.to_owned(), media_type }));
        }
        Ok(Resolved { bytes: Bytes::from(bytes), media_type, digest, endpoint: endpoint.url.clone() })
    }

    async fn try_blob(
        &self,
        endpoint: &Endpoint,
        url: &Url,
        repository: &str,
        offset: u64,
        creds: &Credentials,
    ) -> Result<BlobResponse, Failure> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range =
                HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| Failure::Other(e.to_string()))?;
            headers.insert(RANGE, range);
        }
        let response = self.send(endpoint, url, repository, creds, headers).await?;
        let partial = match response.status() {
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if !range.starts_with(&format!("bytes {offset}-")) {
                    let range = crate::shown::cut(range);
                    return Err(Failure::Other(format!("asked for bytes from {offset}, got range {range:?}")));
                }
                true
            }
            _ => return Err(status_failure(response).await),
        };
        let content_length = response.content_length();
        let source_url = response.url().to_string();
        let stream =
            response.bytes_stream().map_err(move |source| RegistryError::Body { url: source_url.clone(), source });
        Ok(BlobResponse {
            content_length,
            offset: if partial { offset } else { 0 },
            partial,
            endpoint: endpoint.url.clone(),
            stream: Box::pin(stream),
        })
    }

    /// Sends a GET, answering one authentication challenge. Mirrors get no
    /// credentials.
    async fn send(
        &self,
        endpoint: &Endpoint,
        url: &Url,
        repository: &str,
        creds: &Credentials,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, Failure> {
        let http = self.http(endpoint).map_err(Failure::Other)?;
        // Credentials belong to the registry; mirrors are asked anonymously.
        let anonymous = Credentials::Anonymous;
        let creds = if endpoint.namespace.is_some() { &anonymous } else { creds };
        let origin = endpoint.origin();
        let auth = &self.inner.auth;
        let request = |authorization: Option<&HeaderValue>| {
            let mut request = http.get(url.clone()).headers(endpoint.headers.clone()).headers(headers.clone());
            if let Some(value) = authorization {
                request = request.header(AUTHORIZATION, value.clone());
            }
            request
        };
        let sent = auth.authorize(&http, &origin, repository, creds).await.map_err(auth_failure)?;
        let response = request(sent.as_ref()).send().await.map_err(transport_failure)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let answer = auth
            .challenged(&http, &origin, repository, creds, response.headers(), sent.as_ref())
            .await
            .map_err(auth_failure)?;
        let response = request(Some(&answer)).send().await.map_err(transport_failure)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(status_failure(response).await);
        }
        Ok(response)
    }

    /// The HTTP client for `endpoint`'s TLS settings, built on first use.
    fn http(&self, endpoint: &Endpoint) -> Result<reqwest::Client, String> {
        let https = endpoint.url.scheme() == "https";
        let key = TlsKey {
            skip_verify: https && endpoint.skip_verify,
            ca: if https { endpoint.ca.clone() } else { Vec::new() },
        };
        if let Some(client) = self.inner.clients.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = &self.inner.config;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(config.user_agent.clone())
            // Authorization is dropped when a redirect leaves the host.
            .redirect(reqwest::redirect::Policy::limited(10));
        if key.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let mut certs = Vec::new();
        for path in &key.ca {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read CA certificate {}: {e}", path.display()))?;
            let bundle =
                super::tls::parse_pem(&pem).map_err(|e| format!("invalid CA certificate {}: {e}", path.display()))?;
            certs.extend(bundle);
        }
        if !certs.is_empty() && !key.skip_verify {
            builder = builder.use_preconfigured_tls(super::tls::client_config(certs)?);
        }
        let client = builder.build().map_err(|e| format!("cannot build HTTP client: {}", error_chain(&e)))?;
        let mut clients = self.inner.clients.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(clients.entry(key).or_insert(client).clone())
    }

    /// Endpoints allowed for `need`, the one that last served this
    /// repository's manifest first.
    fn candidates(&self, reference: &Reference, need: Need) -> Result<Vec<Endpoint>, RegistryError> {
        let mut endpoints: Vec<Endpoint> = self
            .endpoints(&reference.registry)?
            .into_iter()
            .filter(|e| match need {
                Need::Resolve => e.capabilities.resolve && e.capabilities.pull,
                Need::Pull => e.capabilities.pull,
            })
            .collect();
        if endpoints.is_empty() {
            let capability = match need {
                Need::Resolve => "resolve",
                Need::Pull => "pull",
            };
            return Err(RegistryError::NoEndpoint { registry: reference.registry.clone(), capability });
        }
        let preferred =
            self.inner.preferred.lock().unwrap_or_else(PoisonError::into_inner).get(&reference.name()).cloned();
        if let Some(preferred) = preferred {
            endpoints.sort_by_key(|e| e.url != preferred);
        }
        Ok(endpoints)
    }
}

/// The error once every endpoint failed.
fn failed(target: String, attempts: Vec<(String, Failure)>) -> RegistryError {
    if !attempts.is_empty() && attempts.iter().all(|(_, f)| matches!(f, Failure::NotFound(_))) {
        return RegistryError::NotFound { reference: target };
    }
    let denied = attempts.iter().any(|(_, f)| matches!(f, Failure::Denied(_)));
    let lines = attempts
        .into_iter()
        .map(|(url, failure)| match failure {
            Failure::NotFound(why) | Failure::Denied(why) | Failure::Other(why) => format!("{url}: {why}"),
            Failure::Fatal(e) => format!("{url}: {}", error_chain(&e)),
        })
        .collect();
    if denied {
        RegistryError::Unauthorized { reference: target, attempts: lines }
    } else {
        RegistryError::AllEndpointsFailed { reference: target, attempts: lines }
    }
}

/// A request that got no answer; the URL is already on the attempt line.
fn transport_failure(error: reqwest::Error) -> Failure {
    Failure::Other(error_chain(&error.without_url()))
}

fn auth_failure(error: AuthError) -> Failure {
    if error.is_denied() { Failure::Denied(error_chain(&error)) } else { Failure::Other(error_chain(&error)) }
}

/// Classifies a non-success response, with the registry's error text.
async fn status_failure(response: reqwest::Response) -> Failure {
    let status = response.status();
    let body = read_limited(response, MAX_ERROR_BODY).await.ok().flatten().unwrap_or_default();
    let detail = error_detail(&body);
    let text = if detail.is_empty() { status.to_string() } else { format!("{status}: {detail}") };
    match status {
        StatusCode::NOT_FOUND => Failure::NotFound(text),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::Denied(text),
        _ => Failure::Other(text),
    }
}

/// `CODE message` from a distribution error body, else its start.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<Errors>(body) {
        let text =
            parsed.errors.iter().map(|e| format!("{} {}", e.code, e.message).trim().to_owned()).collect::<Vec<_>>();
        return crate::shown::cut(&text.join(", "));
    }
    String::from_utf8_lossy(body).chars().take(200).collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_detail(body), "MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(error_detail(b"  plain text\n"), "plain text");
    }

    #[test]
    fn failure_classification() {
        let nf = || ("u".to_owned(), Failure::NotFound("404".into()));
        assert!(matches!(failed("r".into(), vec![nf(), nf()]), RegistryError::NotFound { .. }));
        let mixed = failed("r".into(), vec![nf(), ("v".into(), Failure::Other("boom".into()))]);
        match mixed {
            RegistryError::AllEndpointsFailed { attempts, .. } => assert_eq!(attempts, ["u: 404", "v: boom"]),
            other => panic!("{other}"),
        }
        let denied = failed("r".into(), vec![nf(), ("v".into(), Failure::Denied("401".into()))]);
        assert!(matches!(denied, RegistryError::Unauthorized { .. }), "{denied}");
    }
}
