//! `crius health`: asks the crius serving a socket for its `Version` and
//! `Status`, as kubelet would. Installers and unit scripts use it to wait
//! until a freshly started crius answers; no other CRI client is needed on
//! the node. It only reads: it never changes the crius it asks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{StatusRequest, VersionRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one attempt may take to connect or to get an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while waiting.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// What the crius on the socket answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Version.runtime_name`.
    pub runtime_name: String,
    /// `Version.runtime_version`.
    pub runtime_version: String,
    /// `Version.runtime_api_version`.
    pub api_version: String,
    /// `Status` conditions, in the order crius sent them.
    pub conditions: Vec<Condition>,
}

/// One `Status` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `RuntimeReady`, `NetworkReady`.
    pub kind: String,
    /// Whether it holds.
    pub status: bool,
    /// Why not, when it does not.
    pub message: String,
}

/// Why the socket gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Nothing accepted a connection on the socket.
    #[error("connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A connection was made but the RPC failed.
    #[error("{rpc} on {path}")]
    Rpc {
        /// `Version` or `Status`.
        rpc: &'static str,
        /// The socket.
        path: PathBuf,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// An attempt took longer than [`ATTEMPT_TIMEOUT`].
    #[error("no answer on {path} within {ATTEMPT_TIMEOUT:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
    },
}

impl Health {
    /// One line for people and logs:
    /// `crius 0.1.0 (CRI v1): RuntimeReady=true NetworkReady=false (why)`.
    pub fn summary(&self) -> String {
        let mut line = format!("{} {} (CRI {}):", self.runtime_name, self.runtime_version, self.api_version);
        for condition in &self.conditions {
            line.push_str(&format!(" {}={}", condition.kind, condition.status));
            if !condition.status && !condition.message.is_empty() {
                line.push_str(&format!(" ({})", condition.message));
            }
        }
        line
    }

    /// Whether every condition holds.
    pub fn ready(&self) -> bool {
        self.conditions.iter().all(|c| c.status)
    }
}

/// Asks the crius on `socket` once.
pub async fn probe(socket: &Path) -> Result<Health, HealthError> {
    let timeout = || HealthError::Timeout { path: socket.to_path_buf() };
    tokio::time::timeout(ATTEMPT_TIMEOUT, ask(socket)).await.map_err(|_| timeout())?
}

/// Asks until the crius on `socket` answers or `wait` has passed; the last
/// failure when it never did.
pub async fn wait(socket: &Path, wait: Duration) -> Result<Health, HealthError> {
    let deadline = Instant::now() + wait;
    loop {
        let error = match probe(socket).await {
            Ok(health) => return Ok(health),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(error);
        }
        tokio::time::sleep(RETRY_INTERVAL.min(deadline - now)).await;
    }
}

async fn ask(socket: &Path) -> Result<Health, HealthError> {
    let mut client = RuntimeServiceClient::new(connect(socket).await?);
    let rpc_error = |rpc, source| HealthError::Rpc { rpc, path: socket.to_path_buf(), source };
    let version = client.version(VersionRequest::default()).await.map_err(|e| rpc_error("Version", e))?.into_inner();
    let status = client.status(StatusRequest { verbose: false }).await.map_err(|e| rpc_error("Status", e))?;
    let conditions = status
        .into_inner()
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| Condition { kind: c.r#type, status: c.status, message: c.message })
        .collect();
    Ok(Health {
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        api_version: version.runtime_api_version,
        conditions,
    })
}

async fn connect(socket: &Path) -> Result<Channel, HealthError> {
    let path = socket.to_path_buf();
    // tonic needs a URI; the connector ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(ATTEMPT_TIMEOUT);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| HealthError::Connect { path: socket.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: bool, message: &str) -> Condition {
        Condition { kind: kind.into(), status, message: message.into() }
    }

    #[test]
    fn summary_names_the_runtime_and_why_a_condition_fails() {
        let health = Health {
            runtime_name: "crius".into(),
            runtime_version: "0.1.0".into(),
            api_version: "v1".into(),
            conditions: vec![condition("RuntimeReady", true, ""), condition("NetworkReady", false, "no cni config")],
        };
        assert_eq!(health.summary(), "crius 0.1.0 (CRI v1): RuntimeReady=true NetworkReady=false (no cni config)");
        assert!(!health.ready());
    }

    #[tokio::test]
    async fn a_socket_nobody_serves_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let err = wait(&socket, Duration::from_millis(300)).await.expect_err("nobody serves");
        assert!(matches!(err, HealthError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
