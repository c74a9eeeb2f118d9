//! Pod sandboxes and containers: the namespace backend (namespaces, cgroups,
//! mounts, process spawn) and the KVM backend (VMM and guest agent).
//!
//! This crate must not depend on `agent`, `network` or `images`: it takes plain
//! data (a rootfs path, a network namespace path) that the agent hands over.
//! It is empty until the namespace-pods issue lands.
#![warn(missing_docs)]
