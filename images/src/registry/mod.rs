//! OCI distribution client, pull side, in the style of containerd: endpoints
//! and mirrors from `hosts.toml` ([`hosts`]), token and basic auth
//! ([`auth`], [`docker_config`]), manifest resolution and blob streaming
//! ([`client`]), manifest parsing and platform selection ([`manifest`]).

pub mod auth;
pub mod client;
pub mod docker_config;
pub mod error;
pub mod hosts;
pub mod manifest;
mod tls;

pub use auth::Credentials;
pub use client::{BlobResponse, BlobStream, RegistryClient, RegistryConfig, Resolved};
pub use docker_config::{DockerConfig, decode_basic_auth};
pub use error::RegistryError;
pub use hosts::{Endpoint, HostsError};
pub use manifest::{Manifest, ManifestError, select_platform};

/// Reads a response body of at most `limit` bytes; `None` when it is longer.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Ok(None);
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}
