//! Pod networking: the built-in netlink bridge / veth / IPAM network and the
//! optional CNI mode.
//!
//! This crate must not depend on `agent`, `sandbox` or `images`: it returns
//! plain data (interfaces, addresses) that the agent translates.
#![warn(missing_docs)]

mod error;
pub mod fake;
pub mod ipam;
pub mod netns;
pub mod plan;
pub mod rtnl;

pub use error::NetError;
pub mod bridge;
pub mod cni;
pub mod firewall;
pub mod forward;
