//! Images: registry client, digest-addressed content store, safe layer
//! unpacking and overlayfs snapshots.
//!
//! This crate must not depend on `agent`, `sandbox` or `network`.
//! It is empty until the image-service issue lands.
#![warn(missing_docs)]
