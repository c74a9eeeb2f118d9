//! Pod sandboxes and containers: the runtime seam ([`backend`]: what every
//! runtime must do), the namespace backend (namespaces, cgroups, mounts,
//! process spawn, security) and, later, the KVM backend.
//!
//! This crate must not depend on `agent`, `network` or `images`: it takes
//! plain data (the neutral requests of [`backend`]) that the agent
//! translates from CRI.
//!
//! `unsafe` is denied crate-wide; the few calls that need it (fork, exec
//! set-up in the child) live in modules that allow it explicitly and carry a
//! `// SAFETY:` comment on every block.
#![warn(missing_docs)]

pub mod backend;
pub mod caps;
pub mod cgroups;
pub mod logs;
pub mod mounts;
pub mod ns;
pub mod seccomp;
#[allow(unsafe_code)]
mod sys;
pub mod users;
pub mod vm;

/// An error and its causes on one line (`outer: inner: innermost`), as the
/// internal processes print it before exiting.
pub fn error_report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
