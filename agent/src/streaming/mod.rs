//! The streaming server: kubelet hands the URLs that Exec, Attach and
//! PortForward return to the API server, whose clients connect here and
//! upgrade to SPDY/3.1 (or WebSocket). URLs carry single-use tokens that
//! expire; an unknown, used or expired token gets 404.

pub mod portforward;
pub mod remotecommand;
pub mod spdy;
mod spdy_serve;
pub mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crius_sandbox::backend::{Backend, ContainerHandle, ExecStart};

use crate::error::AgentError;
use portforward::PodPorts;
use remotecommand::{ProcessIo, StreamOptions};

/// What a token was issued for.
#[derive(Debug, Clone)]
pub enum Pending {
    /// Run a command in a container.
    Exec {
        /// The container's backend.
        backend: Arc<dyn Backend>,
        /// The container.
        container: ContainerHandle,
        /// argv.
        cmd: Vec<String>,
        /// Streams.
        options: StreamOptions,
    },
    /// Connect to a container's stdio.
    Attach {
        /// The container's backend.
        backend: Arc<dyn Backend>,
        /// The container.
        container: ContainerHandle,
        /// Streams.
        options: StreamOptions,
    },
    /// Forward ports of a pod.
    PortForward(PodPorts),
}

impl Pending {
    fn kind(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Attach { .. } => "attach",
            Self::PortForward(_) => "portforward",
        }
    }

    fn options(&self) -> StreamOptions {
        match self {
            Self::Exec { options, .. } | Self::Attach { options, .. } => *options,
            Self::PortForward(_) => StreamOptions::default(),
        }
    }

    /// Starts the process the session talks to.
    async fn start(&self, options: StreamOptions) -> Result<ProcessIo, AgentError> {
        match self {
            Self::Attach { backend, container, .. } => Ok(backend.attach(container, options).await?),
            Self::Exec { backend, container, cmd, .. } => {
                Ok(backend.exec(container, ExecStart { args: cmd.clone(), options }).await?)
            }
            Self::PortForward(_) => Err(AgentError::InvalidArgument {
                field: "url",
                reason: "a port-forward URL cannot run a command".into(),
            }),
        }
    }
}

/// The server and its tokens.
#[derive(Debug)]
pub struct StreamServer {
    base_url: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl StreamServer {
    /// Binds `address` and serves in the background, over TLS when given.
    pub async fn start(
        address: SocketAddr,
        ttl: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Self { base_url: format!("{scheme}://{local}"), ttl, tokens: Mutex::default() });
        tracing::info!(address = %local, tls = tls.is_some(), "streaming server listening");
        let accepting = Arc::clone(&server);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let server = Arc::clone(&accepting);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_http(server, socket).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => serve_http(server, stream).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "streaming TLS handshake failed"),
                                Err(_) => tracing::debug!("streaming TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
        });
        Ok(server)
    }

    /// A single-use URL for `pending`.
    pub fn issue(&self, pending: Pending) -> Result<String, AgentError> {
        let token = crate::cri::pods::new_id()?;
        let kind = pending.kind();
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.retain(|_, (_, issued)| now.duration_since(*issued) < self.ttl);
        tokens.insert(token.clone(), (pending, now));
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (pending, issued) = tokens.remove(token)?;
        (pending.kind() == kind && issued.elapsed() < self.ttl).then_some(pending)
    }
}

/// How long a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_http<S>(server: Arc<StreamServer>, socket: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&server), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "streaming connection ended with an error");
    }
}

/// A TLS acceptor for a PEM certificate chain and key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("read certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("read private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

/// A 101 answer upgrading to `upgrade`, with `extra` headers.
fn switching_protocols(upgrade: &'static str, extra: &[(&'static str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    headers.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(upgrade));
    for (name, value) in extra {
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

/// The protocols the client offers, in its order of preference.
fn offered(req: &Request<Incoming>, header: &str) -> Vec<String> {
    req.headers()
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

async fn handle(server: Arc<StreamServer>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let Some((kind, token)) = path.split_once('/') else {
        return Ok(reply(StatusCode::NOT_FOUND, "not found"));
    };
    let Some(pending) = server.take(kind, token) else {
        return Ok(reply(StatusCode::NOT_FOUND, "unknown, used or expired streaming token"));
    };
    let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        return Ok(upgrade_websocket(req, pending));
    }
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Ok(reply(StatusCode::BAD_REQUEST, "expected Upgrade: SPDY/3.1 or websocket"));
    }
    let supported: &[&str] = match &pending {
        Pending::PortForward(_) => &["portforward.k8s.io"],
        Pending::Exec { .. } | Pending::Attach { .. } => &remotecommand::PROTOCOLS,
    };
    let Some(protocol) =
        offered(&req, "x-stream-protocol-version").into_iter().find(|p| supported.contains(&p.as_str()))
    else {
        let text = format!("unable to negotiate a protocol: crius speaks {}", supported.join(", "));
        return Ok(reply(StatusCode::FORBIDDEN, &text));
    };
    let version = remotecommand::version_of(&protocol);
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let session = spdy::session::Session::start(TokioIo::new(upgraded));
        match pending {
            Pending::PortForward(pod) => spdy_serve::serve_port_forward(session, pod).await,
            command => spdy_serve::serve_remote_command(session, version, command).await,
        }
    });
    Ok(switching_protocols("SPDY/3.1", &[("X-Stream-Protocol-Version", &protocol)]))
}

/// Answers a WebSocket upgrade (RFC 6455) and serves the session.
fn upgrade_websocket(req: Request<Incoming>, pending: Pending) -> Response<Full<Bytes>> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    let Some(key) = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let supported: &[&str] = match &pending {
        Pending::PortForward(_) => &[websocket::PORT_FORWARD_PROTOCOL],
        Pending::Exec { .. } | Pending::Attach { .. } => &websocket::REMOTE_COMMAND_PROTOCOLS,
    };
    let Some(protocol) = offered(&req, "sec-websocket-protocol").into_iter().find(|p| supported.contains(&p.as_str()))
    else {
        return reply(
            StatusCode::FORBIDDEN,
            &format!("unable to negotiate a WebSocket subprotocol: crius speaks {}", supported.join(", ")),
        );
    };
    let ports: Vec<u16> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("port="))
        .filter_map(|p| p.parse().ok())
        .collect();
    let version = remotecommand::version_of(&protocol);
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(websocket::MAX_MESSAGE))
            .max_frame_size(Some(websocket::MAX_MESSAGE));
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match pending {
            Pending::PortForward(pod) => websocket::serve_port_forward(ws, pod, ports).await,
            command => websocket::serve_remote_command(ws, version, command).await,
        }
    });
    switching_protocols("websocket", &[("Sec-WebSocket-Accept", &key), ("Sec-WebSocket-Protocol", &protocol)])
}
