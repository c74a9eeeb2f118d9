//! The one error type of the network crate.

use std::path::PathBuf;

use crate::ipam::IpamError;

/// Why a pod network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request was refused.
    #[error("netlink: {op}: {message}")]
    Netlink {
        /// The operation, as the plan names it.
        op: String,
        /// The kernel's or the library's answer.
        message: String,
    },
    /// A network namespace could not be entered or made.
    #[error("network namespace {path}: {message}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Address allocation failed.
    #[error("ip allocation")]
    Ipam(#[from] IpamError),
    /// A port mapping cannot be honoured.
    #[error("port mapping {mapping}: {reason}")]
    PortMapping {
        /// The mapping, as given.
        mapping: String,
        /// Why it is refused.
        reason: String,
    },
    /// The packet filter (nftables) refused crius's rules.
    #[error("nftables: {0}")]
    Firewall(String),
    /// A CNI plugin failed.
    #[error("CNI plugin {plugin} {command}: {message}")]
    Cni {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The plugin's error message.
        message: String,
    },
    /// A configuration value is unusable.
    #[error("network config: {0}")]
    Config(String),
    /// A host setting (sysctl) could not be written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    /// Whether the error is about the caller's input rather than the host.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Self::PortMapping { .. })
    }
}
