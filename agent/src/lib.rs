//! `crius`: the node agent. It serves the Container Runtime Interface to
//! kubelet over a unix socket and runs pods as Linux namespaces or KVM VMs.
//!
//! This crate is the composition root: the only place where the library
//! crates (`sandbox`, `sandbox/vmm`, `network`, `images`) are wired together.

pub mod backends;
pub mod cli;
pub mod config;
pub mod cri;
pub mod error;
pub mod health;
pub mod image_index;
pub mod logging;
pub mod network;
pub mod server;
pub mod store;
pub mod streaming;
pub mod vm_cli;
