//! The error type of registry operations.

use crate::digest::Digest;

use super::hosts::HostsError;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The hosts configuration for the registry is unusable.
    #[error("cannot configure endpoints for registry {registry}")]
    Hosts {
        /// The registry.
        registry: String,
        /// Why.
        #[source]
        source: HostsError,
    },
    /// No endpoint has the capability the operation needs.
    #[error("no endpoint of registry {registry} is allowed to {capability}")]
    NoEndpoint {
        /// The registry.
        registry: String,
        /// `resolve` or `pull`.
        capability: &'static str,
    },
    /// Every endpoint answered 404.
    #[error("{reference} not found")]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// At least one endpoint refused the credentials and none served the content.
    #[error("unauthorized to pull {reference}: {}", attempts.join("; "))]
    Unauthorized {
        /// What was asked for.
        reference: String,
        /// One line per endpoint tried: URL and why it failed.
        attempts: Vec<String>,
    },
    /// No endpoint served the content.
    #[error("cannot pull {reference}, every endpoint failed: {}", attempts.join("; "))]
    AllEndpointsFailed {
        /// What was asked for.
        reference: String,
        /// One line per endpoint tried: URL and why it failed.
        attempts: Vec<String>,
    },
    /// Content does not match its digest.
    #[error("digest mismatch for {reference} from {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was asked for.
        reference: String,
        /// Where it came from.
        url: String,
        /// The digest asked for or announced by the registry.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The manifest exceeds [`MAX_MANIFEST_SIZE`](super::client::MAX_MANIFEST_SIZE).
    #[error("manifest for {reference} from {url} is larger than {limit} bytes")]
    ManifestTooLarge {
        /// What was asked for.
        reference: String,
        /// Where it came from.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The manifest is of a kind crius cannot pull (docker schema1, ...).
    #[error("cannot pull {reference}: unsupported manifest media type {media_type:?}")]
    Unsupported {
        /// What was asked for.
        reference: String,
        /// The manifest's media type.
        media_type: String,
    },
    /// Reading a blob body failed part way.
    #[error("reading {url} failed")]
    Body {
        /// Where it came from.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// `error: source: source ...`, skipping sources already in the text.
impl RegistryError {
    /// How a failure should be reported to a CRI client.
    pub fn kind(&self) -> crate::store::ErrorKind {
        use crate::store::ErrorKind;
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unauthorized { .. } => ErrorKind::Unauthenticated,
            Self::AllEndpointsFailed { .. } | Self::Body { .. } => ErrorKind::Unavailable,
            Self::DigestMismatch { .. } | Self::ManifestTooLarge { .. } | Self::Unsupported { .. } => {
                ErrorKind::InvalidArgument
            }
            Self::Hosts { .. } | Self::NoEndpoint { .. } => ErrorKind::Internal,
        }
    }
}

pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
