//! Images: registry client, digest-addressed content store, safe layer
//! unpacking and overlayfs snapshots.
//!
//! This crate must not depend on `agent`, `sandbox` or `network`: it hands
//! plain data (image ids, layer directories, mount options) to the agent.
//! Nothing it unpacks may ever be written outside the store's directories.
#![warn(missing_docs)]

pub mod content;
pub mod digest;
pub mod layers;
mod lease;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod shown;
pub mod snapshot;
pub mod space;
pub mod store;
pub mod unpack;

pub use digest::{Digest, DigestError};
