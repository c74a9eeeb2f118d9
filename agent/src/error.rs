//! The agent's error type and its one mapping to gRPC status codes.
//!
//! Handlers return [`AgentError`]; [`status`] is the only place that decides
//! which gRPC code a failure becomes.

use crius_images::store::{ErrorKind as ImageErrorKind, ImageError};
use crius_sandbox::backend::BackendError;

use crate::store::StoreError;

/// A failed RPC.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the CRI proto (dotted path).
        field: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The object the request names does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "pod sandbox", "container", "image".
        kind: &'static str,
        /// The id or reference asked for.
        id: String,
    },
    /// A feature or option crius does not support (yet).
    #[error("{what} is not supported by crius")]
    Unsupported {
        /// The RPC or option.
        what: String,
    },
    /// An object with the request's identity exists and the request cannot
    /// return it.
    #[error("{0}")]
    AlreadyExists(String),
    /// The client gave up before the RPC could finish what it waited for.
    #[error("{0}")]
    Cancelled(String),
    /// A part of a stored record could not be decoded.
    #[error("{kind} {id} record is unreadable")]
    Unreadable {
        /// "pod sandbox", "container".
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state store failed.
    #[error("state store")]
    Store(#[from] StoreError),
    /// An operation ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The runtime (namespaces, cgroups, processes) failed.
    #[error("{0}")]
    Runtime(String),
    /// The image store or a registry failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The pod network failed.
    #[error("pod network")]
    Network(#[from] crius_network::NetError),
    /// A runtime backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Converts an agent error into the gRPC status returned to the client.
/// The message carries the whole error chain, since kubelet logs only it.
pub fn status(error: &AgentError) -> tonic::Status {
    let message = chain(error);
    match error {
        AgentError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
        AgentError::NotFound { .. } => tonic::Status::not_found(message),
        AgentError::Unsupported { .. } => tonic::Status::unimplemented(message),
        AgentError::AlreadyExists(_) => tonic::Status::already_exists(message),
        AgentError::Cancelled(_) => tonic::Status::cancelled(message),
        AgentError::Store(_) | AgentError::Runtime(_) | AgentError::Unreadable { .. } => {
            tonic::Status::internal(message)
        }
        AgentError::Timeout(_) => tonic::Status::deadline_exceeded(message),
        AgentError::Network(e) if e.is_invalid_input() => tonic::Status::invalid_argument(message),
        AgentError::Network(_) => tonic::Status::internal(message),
        AgentError::Backend(e) => match e {
            BackendError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            BackendError::BadState(_) => tonic::Status::failed_precondition(message),
            BackendError::Timeout(_) => tonic::Status::deadline_exceeded(message),
            BackendError::StartFailed(_)
            | BackendError::WrongBackend { .. }
            | BackendError::NewerVersion { .. }
            | BackendError::Failed { .. } => tonic::Status::internal(message),
        },
        AgentError::Image(e) => match e.kind() {
            ImageErrorKind::NotFound => tonic::Status::not_found(message),
            ImageErrorKind::InvalidArgument => tonic::Status::invalid_argument(message),
            ImageErrorKind::Unauthenticated => tonic::Status::unauthenticated(message),
            ImageErrorKind::Unavailable => tonic::Status::unavailable(message),
            ImageErrorKind::ResourceExhausted => tonic::Status::resource_exhausted(message),
            ImageErrorKind::Internal => tonic::Status::internal(message),
        },
    }
}

impl From<AgentError> for tonic::Status {
    fn from(error: AgentError) -> Self {
        status(&error)
    }
}

/// "outer: inner: innermost", the way anyhow prints `{:#}`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_error_kind() {
        let invalid =
            AgentError::InvalidArgument { field: "runtime_config.network_config.pod_cidr", reason: "bad".into() };
        let status = status(&invalid);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("runtime_config.network_config.pod_cidr"), "{}", status.message());

        let missing = AgentError::NotFound { kind: "container", id: "abc".into() };
        assert_eq!(super::status(&missing).code(), tonic::Code::NotFound);

        let unsupported = AgentError::Unsupported { what: "CheckpointContainer".into() };
        assert_eq!(super::status(&unsupported).code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn message_includes_the_source_chain() {
        let io = std::io::Error::other("disk on fire");
        let store = StoreError::CreateDir { path: "/x".into(), source: io };
        let status = status(&AgentError::Store(store));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "state store: create state directory /x: disk on fire");
    }
}
