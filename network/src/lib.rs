//! Pod networking: the built-in netlink bridge / veth / IPAM network and the
//! optional CNI mode.
//!
//! This crate must not depend on `agent`, `sandbox` or `images`: it returns
//! plain data (interfaces, addresses) that the agent translates.
#![warn(missing_docs)]

pub mod ipam;
