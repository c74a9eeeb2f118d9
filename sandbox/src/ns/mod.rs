//! The namespace runtime's processes: see `sandbox/DESIGN.md`.
//!
//! [`spec`] is the contract between the agent (which writes a bundle's
//! `config.json`) and the processes that run a container.

pub mod attach;
pub mod backend;
pub mod container;
pub mod exec;
pub mod init;
pub mod internal;
#[allow(unsafe_code)]
pub mod loopback;
pub mod monitor;
pub mod pod;
pub mod spec;
mod streams;
