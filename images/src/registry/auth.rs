//! Registry authentication: credentials, `WWW-Authenticate` challenges, the
//! distribution token flow (GET with basic auth, or OAuth2 refresh-token
//! POST) and a token cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use crate::digest::Digest;

/// Token lifetime when the token server does not say.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// `client_id` sent with OAuth2 requests.
const CLIENT_ID: &str = "crius";

/// What to authenticate to a registry with.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials; anonymous tokens are still fetched.
    #[default]
    Anonymous,
    /// User name and password (or a personal access token as password).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// OAuth2 refresh token (docker's `identitytoken`).
    IdentityToken(String),
    /// Bearer token sent to the registry as is (docker's `registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, password: <redacted> }}"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Self::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Who these credentials are, for cache keys; secrets appear only hashed.
    fn identity(&self) -> String {
        match self {
            Self::Anonymous => String::new(),
            Self::Basic { username, password } => format!("basic:{username}:{}", Digest::of(password.as_bytes())),
            Self::IdentityToken(token) => format!("identity:{}", Digest::of(token.as_bytes())),
            Self::RegistryToken(token) => format!("registry:{}", Digest::of(token.as_bytes())),
        }
    }
}

/// Why no authorization could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The registry asked for basic auth and there is no user and password.
    #[error("{origin} requires basic authentication and no user name and password were given")]
    NeedsBasic {
        /// The registry endpoint.
        origin: String,
    },
    /// A 401 without a challenge crius can answer.
    #[error("{origin} answered 401 without a usable challenge ({header:?})")]
    NoChallenge {
        /// The registry endpoint.
        origin: String,
        /// The `WWW-Authenticate` header, if any.
        header: String,
    },
    /// The token realm is not a URL.
    #[error("invalid token realm {realm:?}")]
    Realm {
        /// The realm.
        realm: String,
    },
    /// The token server could not be reached.
    #[error("token request to {realm} failed")]
    Request {
        /// The realm.
        realm: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The token server refused.
    #[error("token server {realm} answered {status}: {body}")]
    Status {
        /// The realm.
        realm: String,
        /// The HTTP status.
        status: StatusCode,
        /// Start of the response body.
        body: String,
    },
    /// The token server answered something that is not a token.
    #[error("bad token response from {realm}: {reason}")]
    Response {
        /// The realm.
        realm: String,
        /// What is wrong.
        reason: String,
    },
}

impl AuthError {
    /// Whether the registry or token server denied the credentials (rather
    /// than failing to answer).
    pub fn is_denied(&self) -> bool {
        match self {
            Self::NeedsBasic { .. } | Self::NoChallenge { .. } => true,
            Self::Status { status, .. } => matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            _ => false,
        }
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order; names lower-cased.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 7235): e.g.
/// `Bearer realm="https://auth",service="reg",scope="repository:a:pull"`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut parser = Parser { s: header.as_bytes(), i: 0 };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        parser.skip(|b| b == b',' || b.is_ascii_whitespace());
        let Some(scheme) = parser.token() else { break };
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new() };
        loop {
            parser.skip(|b| b == b',' || b.is_ascii_whitespace());
            let start = parser.i;
            let Some(name) = parser.token() else { break };
            parser.skip(|b| b == b' ' || b == b'\t');
            if !parser.eat(b'=') {
                parser.i = start; // the next challenge's scheme
                break;
            }
            parser.skip(|b| b == b' ' || b == b'\t');
            let value = parser.quoted().or_else(|| parser.token()).unwrap_or_default();
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        out.push(challenge);
        if parser.i >= parser.s.len() {
            break;
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip(&mut self, pred: impl Fn(u8) -> bool) {
        while self.i < self.s.len() && pred(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&byte);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|b| b.is_ascii_graphic() && !b"\",=;".contains(&b));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(&next) = self.s.get(self.i) {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

/// What a registry origin asked for the last time it challenged us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: Option<String>,
    scopes: Vec<String>,
    identity: String,
}

#[derive(Debug, Clone)]
struct Token {
    header: HeaderValue,
    valid_until: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Remembers challenges per registry origin and caches bearer tokens.
#[derive(Debug, Default)]
pub struct Authenticator {
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<TokenKey, TokenSlot>>,
}

impl Authenticator {
    /// A fresh authenticator with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `Authorization` value to send up front, when `origin` challenged
    /// before (so repeated requests do not pay a 401 round trip).
    pub async fn authorize(
        &self,
        http: &reqwest::Client,
        origin: &str,
        repository: &str,
        creds: &Credentials,
    ) -> Result<Option<HeaderValue>, AuthError> {
        let scheme = self.schemes.lock().unwrap_or_else(PoisonError::into_inner).get(origin).cloned();
        match scheme {
            None => Ok(None),
            Some(scheme) => self.answer(http, origin, &scheme, creds, scopes(repository, None), None).await.map(Some),
        }
    }

    /// Answers the 401 in `headers`: remembers the challenge and returns the
    /// `Authorization` value to retry with. `sent` is what the failed request
    /// carried; a cached token equal to it is dropped and fetched anew.
    pub async fn challenged(
        &self,
        http: &reqwest::Client,
        origin: &str,
        repository: &str,
        creds: &Credentials,
        headers: &HeaderMap,
        sent: Option<&HeaderValue>,
    ) -> Result<HeaderValue, AuthError> {
        let raw: Vec<&str> = headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect();
        let challenges: Vec<Challenge> = raw.iter().flat_map(|v| parse_challenges(v)).collect();
        let bearer = challenges.iter().find(|c| c.scheme == "bearer" && c.param("realm").is_some());
        let scheme = match bearer {
            Some(c) => Scheme::Bearer {
                realm: c.param("realm").unwrap_or_default().to_owned(),
                service: c.param("service").map(str::to_owned),
            },
            None if challenges.iter().any(|c| c.scheme == "basic") => Scheme::Basic,
            None => return Err(AuthError::NoChallenge { origin: origin.to_owned(), header: raw.join(", ") }),
        };
        self.schemes.lock().unwrap_or_else(PoisonError::into_inner).insert(origin.to_owned(), scheme.clone());
        let scopes = scopes(repository, bearer.and_then(|c| c.param("scope")));
        self.answer(http, origin, &scheme, creds, scopes, sent).await
    }

    /// The header answering `scheme`; `stale` is a header that was refused.
    async fn answer(
        &self,
        http: &reqwest::Client,
        origin: &str,
        scheme: &Scheme,
        creds: &Credentials,
        scopes: Vec<String>,
        stale: Option<&HeaderValue>,
    ) -> Result<HeaderValue, AuthError> {
        let (realm, service) = match scheme {
            Scheme::Basic => {
                return match creds {
                    Credentials::Basic { username, password } => Ok(basic_header(username, password)),
                    _ => Err(AuthError::NeedsBasic { origin: origin.to_owned() }),
                };
            }
            Scheme::Bearer { realm, service } => (realm, service),
        };
        if let Credentials::RegistryToken(token) = creds {
            return bearer_header(realm, token);
        }
        let key = TokenKey { realm: realm.clone(), service: service.clone(), scopes, identity: creds.identity() };
        let slot = self.tokens.lock().unwrap_or_else(PoisonError::into_inner).entry(key.clone()).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref() {
            let fresh = Instant::now() < token.valid_until;
            if fresh && stale != Some(&token.header) {
                return Ok(token.header.clone());
            }
        }
        let token = fetch_token(http, &key, creds).await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }
}

/// Pull scope for `repository`, plus a live challenge's own scope (a
/// remembered challenge's scope may name another repository).
fn scopes(repository: &str, challenge_scope: Option<&str>) -> Vec<String> {
    let mut scopes = vec![format!("repository:{repository}:pull")];
    if let Some(scope) = challenge_scope {
        scopes.extend(scope.split(' ').filter(|s| !s.is_empty()).map(str::to_owned));
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

fn bearer_header(realm: &str, token: &str) -> Result<HeaderValue, AuthError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| AuthError::Response {
        realm: realm.to_owned(),
        reason: "token is not a valid header value".to_owned(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

async fn fetch_token(http: &reqwest::Client, key: &TokenKey, creds: &Credentials) -> Result<Token, AuthError> {
    let realm = &key.realm;
    let mut url = Url::parse(realm).map_err(|_| AuthError::Realm { realm: realm.clone() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AuthError::Realm { realm: realm.clone() });
    }
    let request = match creds {
        Credentials::IdentityToken(refresh) => {
            let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
            if let Some(service) = &key.service {
                form.push(("service", service));
            }
            let scope = key.scopes.join(" ");
            form.push(("scope", &scope));
            form.push(("client_id", CLIENT_ID));
            http.post(url).header(CONTENT_TYPE, "application/x-www-form-urlencoded").body(form_encode(&form))
        }
        _ => {
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = &key.service {
                    query.append_pair("service", service);
                }
                for scope in &key.scopes {
                    query.append_pair("scope", scope);
                }
            }
            let request = http.get(url);
            match creds {
                Credentials::Basic { username, password } => {
                    request.header(AUTHORIZATION, basic_header(username, password))
                }
                _ => request,
            }
        }
    };
    let started = Instant::now();
    let response = request.send().await.map_err(|source| AuthError::Request { realm: realm.clone(), source })?;
    let status = response.status();
    let body = super::read_limited(response, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|source| AuthError::Request { realm: realm.clone(), source })?
        .ok_or_else(|| AuthError::Response { realm: realm.clone(), reason: "response too large".to_owned() })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let body: String = text.chars().take(200).collect();
        return Err(AuthError::Status { realm: realm.clone(), status, body: body.trim().to_owned() });
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| AuthError::Response { realm: realm.clone(), reason: format!("not token JSON: {e}") })?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::Response { realm: realm.clone(), reason: "no token in response".to_owned() })?;
    let lifetime = parsed.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let lifetime = lifetime.saturating_sub(EXPIRY_MARGIN).max(Duration::from_secs(1));
    tracing::debug!(realm = %realm, scopes = ?key.scopes, "fetched registry token");
    Ok(Token { header: bearer_header(realm, &token)?, valid_until: started + lifetime })
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::new();
        for &b in text.as_bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let got = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scheme, "bearer");
        assert_eq!(got[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(got[0].param("service"), Some("registry.docker.io"));
        assert_eq!(got[0].param("scope"), Some("repository:library/busybox:pull,push"));

        let got = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            got,
            [Challenge { scheme: "basic".into(), params: vec![("realm".into(), "Registry Realm".into())] }]
        );

        let got = parse_challenges(r#"basic realm=x, BEARER Realm="a \"q\", b" , error=invalid_token"#);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].param("realm"), Some("x"));
        assert_eq!(got[1].scheme, "bearer");
        assert_eq!(got[1].param("realm"), Some(r#"a "q", b"#));
        assert_eq!(got[1].param("error"), Some("invalid_token"));

        assert_eq!(parse_challenges("Negotiate").len(), 1);
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode(&[("a b", "x/y:z"), ("k", "é")]), "a+b=x%2Fy%3Az&k=%C3%A9");
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let creds = Credentials::Basic { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{creds:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::IdentityToken("secret".into())).contains("secret"));
        assert!(!creds.identity().contains("hunter2"));
    }

    #[test]
    fn denied_classification() {
        let denied = AuthError::Status { realm: "r".into(), status: StatusCode::UNAUTHORIZED, body: String::new() };
        assert!(denied.is_denied());
        let broken = AuthError::Status { realm: "r".into(), status: StatusCode::BAD_GATEWAY, body: String::new() };
        assert!(!broken.is_denied());
    }
}
