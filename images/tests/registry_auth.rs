//! Registry authentication: htpasswd against a real registry, the bearer
//! token flow, redirects and manifest checks against a tiny fake server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_e2e::registry::{HTPASSWD_PASSWORD, HTPASSWD_USER, OCI_MANIFEST, TestRegistry};
use crius_images::Digest;
use crius_images::reference::Reference;
use crius_images::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        hosts_dir: None,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        user_agent: "crius-test".to_owned(),
    })
}

fn reference(text: &str) -> Reference {
    text.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn basic(username: &str, password: &str) -> Credentials {
    Credentials::Basic { username: username.to_owned(), password: password.to_owned() }
}

#[tokio::test]
async fn htpasswd_basic_auth() {
    let Some(registry) = TestRegistry::start_with_htpasswd("htpasswd_basic_auth") else { return };
    let image = registry.push_image("private/app", "v1", "amd64", &[b"layer bytes"], false).await;
    let client = client();
    let app = reference(&format!("{}/private/app:v1", registry.host()));

    let good = basic(HTPASSWD_USER, HTPASSWD_PASSWORD);
    let resolved = client.resolve(&app, &good).await.expect("resolve with password");
    assert_eq!(resolved.digest, image.digest);
    let mut blob = client.fetch_blob(&app, &image.layers[0], 0, &good).await.expect("blob");
    let mut bytes = Vec::new();
    while let Some(chunk) = blob.stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(bytes, b"layer bytes");

    for creds in [basic(HTPASSWD_USER, "wrong"), Credentials::Anonymous] {
        let err = client.resolve(&app, &creds).await.expect_err("refused");
        match &err {
            RegistryError::Unauthorized { reference, attempts } => {
                assert_eq!(reference, &app.to_string());
                assert_eq!(attempts.len(), 1, "{attempts:?}");
            }
            other => panic!("{creds:?}: {other}"),
        }
        assert!(err.to_string().starts_with("unauthorized to pull"), "{err}");
    }
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

type Handler = dyn Fn(u16, &Request) -> Response + Send + Sync;

/// HTTP/1.1 written by hand: one request per connection.
struct FakeServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    async fn start(handler: impl Fn(u16, &Request) -> Response + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else { return };
                    let response = handler(port, &request);
                    log.lock().expect("log").push(request);
                    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", response.status);
                    for (name, value) in &response.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&response.body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { port, requests, task }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.requests.lock().expect("log").iter().filter(|r| pred(r)).count()
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("log").clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request { method, target, headers, body })
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn challenge(port: u16) -> Response {
    let realm = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="test",scope="repository:x:pull""#);
    Response::new(401).header("WWW-Authenticate", &realm).body(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
}

#[tokio::test]
async fn bearer_token_fetched_once_for_two_requests() {
    let server = FakeServer::start(|port, req| {
        if req.target.starts_with("/token?") {
            let auth_ok = req.header("authorization") == Some("Basic dXNlcjpwYXNz"); // user:pass
            let query_ok = req.target.contains("service=test") && req.target.contains("scope=repository%3Ax%3Apull");
            return if auth_ok && query_ok {
                Response::new(200).body(r#"{"token":"t","expires_in":300}"#)
            } else {
                Response::new(401)
            };
        }
        if req.header("authorization") != Some("Bearer t") {
            return challenge(port);
        }
        Response::new(200).header("Content-Type", OCI_MANIFEST).body(MANIFEST)
    })
    .await;
    let client = client();
    let creds = basic("user", "pass");
    let image = reference(&format!("{}/x:latest", server.host()));
    for _ in 0..2 {
        let resolved = client.resolve(&image, &creds).await.expect("resolve");
        assert_eq!(resolved.digest, Digest::of(MANIFEST));
    }
    assert_eq!(server.count(|r| r.target.starts_with("/token")), 1, "token cached: {:?}", server.requests());
    // 401 + retry, then one request that carries the cached token up front.
    assert_eq!(server.count(|r| r.target.starts_with("/v2/x/manifests/latest")), 3);
    let accept = server.requests().iter().find_map(|r| r.header("accept").map(str::to_owned)).expect("accept");
    for media_type in [OCI_MANIFEST, "index.v1+json", "manifest.v2+json", "manifest.list.v2+json"] {
        assert!(accept.contains(media_type), "{accept}");
    }

    // Wrong credentials: the token server refuses, the error says unauthorized.
    let err = client.resolve(&image, &basic("user", "wrong")).await.expect_err("refused");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn identity_token_uses_oauth2_refresh() {
    let server = FakeServer::start(|port, req| {
        if req.target == "/token" {
            let form = String::from_utf8_lossy(&req.body).into_owned();
            let ok = req.method == "POST"
                && ["grant_type=refresh_token", "refresh_token=rt", "client_id=crius", "service=test"]
                    .iter()
                    .all(|p| form.split('&').any(|kv| kv == *p))
                && form.contains("scope=repository%3Ax%3Apull");
            return if ok { Response::new(200).body(r#"{"access_token":"a2"}"#) } else { Response::new(400) };
        }
        if req.header("authorization") != Some("Bearer a2") {
            return challenge(port);
        }
        Response::new(200).header("Content-Type", OCI_MANIFEST).body(MANIFEST)
    })
    .await;
    let image = reference(&format!("{}/x", server.host()));
    let resolved = client().resolve(&image, &Credentials::IdentityToken("rt".into())).await.expect("resolve");
    assert_eq!(resolved.media_type, OCI_MANIFEST);
}

#[tokio::test]
async fn blob_redirect_drops_authorization() {
    let blob = b"blob bytes from storage".to_vec();
    let digest = Digest::of(&blob);
    let storage = {
        let blob = blob.clone();
        FakeServer::start(move |_, _| Response::new(200).body(blob.clone())).await
    };
    let storage_port = storage.port;
    let server = FakeServer::start(move |port, req| {
        if req.target.starts_with("/token") {
            return Response::new(200).body(r#"{"token":"t"}"#);
        }
        if req.header("authorization") != Some("Bearer t") {
            return challenge(port);
        }
        Response::new(307).header("Location", &format!("http://127.0.0.1:{storage_port}/bucket/blob?sig=1"))
    })
    .await;
    let image = reference(&format!("{}/x:latest", server.host()));
    let mut response = client().fetch_blob(&image, &digest, 0, &Credentials::Anonymous).await.expect("blob");
    let mut bytes = Vec::new();
    while let Some(chunk) = response.stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(Digest::of(&bytes), digest);
    let seen = storage.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/bucket/blob?sig=1");
    assert_eq!(seen[0].header("authorization"), None, "token leaked to storage");
}

#[tokio::test]
async fn bad_manifests_are_refused() {
    let big = vec![b' '; (4 << 20) + 1];
    let server = FakeServer::start(move |_, req| match req.target.as_str() {
        "/v2/x/manifests/mismatch" => Response::new(200)
            .header("Content-Type", OCI_MANIFEST)
            .header("Docker-Content-Digest", &Digest::of(b"other").to_string())
            .body(MANIFEST),
        "/v2/x/manifests/schema1" => Response::new(200)
            .header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
            .body(r#"{"schemaVersion":1}"#),
        "/v2/x/manifests/huge" => Response::new(200).header("Content-Type", OCI_MANIFEST).body(big.clone()),
        "/v2/x/manifests/boom" => Response::new(503),
        t if t.starts_with("/v2/x/manifests/sha256:") => {
            Response::new(200).header("Content-Type", OCI_MANIFEST).body(MANIFEST)
        }
        _ => Response::new(404).body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
    })
    .await;
    let client = client();
    let get = |tag: &str| reference(&format!("{}/x:{tag}", server.host()));
    let anon = Credentials::Anonymous;

    let err = client.resolve(&get("mismatch"), &anon).await.expect_err("mismatch");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let err = client.resolve(&get("schema1"), &anon).await.expect_err("schema1");
    assert!(
        matches!(&err, RegistryError::Unsupported { media_type, .. } if media_type.contains("v1+prettyjws")),
        "{err}"
    );
    let err = client.resolve(&get("huge"), &anon).await.expect_err("huge");
    assert!(matches!(err, RegistryError::ManifestTooLarge { .. }), "{err}");
    let err = client.resolve(&get("boom"), &anon).await.expect_err("5xx");
    match &err {
        RegistryError::AllEndpointsFailed { attempts, .. } => assert!(attempts[0].ends_with("503 Service Unavailable")),
        other => panic!("{other}"),
    }
    // Pulling by digest checks the bytes against the reference.
    let pinned = reference(&format!("{}/x@{}", server.host(), Digest::of(b"wanted")));
    let err = client.resolve(&pinned, &anon).await.expect_err("wrong bytes");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let err = client.resolve(&get("absent"), &anon).await.expect_err("not found");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn mirrors_do_not_get_credentials() {
    let mirror = FakeServer::start(|_, _| Response::new(401).header("WWW-Authenticate", r#"Basic realm="m""#)).await;
    let upstream = FakeServer::start(|_, req| {
        if req.header("authorization").is_none() {
            return Response::new(401).header("WWW-Authenticate", r#"Basic realm="u""#);
        }
        Response::new(200).header("Content-Type", OCI_MANIFEST).body(MANIFEST)
    })
    .await;
    let hosts = tempfile::tempdir().expect("tempdir");
    let dir = hosts.path().join(upstream.host());
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("hosts.toml"), format!("[host.\"http://{}\"]\n", mirror.host())).expect("hosts.toml");
    let client =
        RegistryClient::new(RegistryConfig { hosts_dir: Some(hosts.path().to_owned()), ..RegistryConfig::default() });
    let image = reference(&format!("{}/x:latest", upstream.host()));
    let resolved = client.resolve(&image, &basic("user", "pass")).await.expect("resolve from upstream");
    assert_eq!(resolved.endpoint.as_str(), format!("http://{}/v2", upstream.host()));
    let seen = mirror.requests();
    assert_eq!(seen.len(), 1, "no retry without credentials");
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].target, format!("/v2/x/manifests/latest?ns={}", upstream.host().replace(':', "%3A")));
    assert!(upstream.requests().iter().any(|r| r.header("authorization").is_some()));
}
