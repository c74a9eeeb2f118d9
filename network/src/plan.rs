//! What the built-in network does to the kernel, as plain data: a plan is a
//! list of [`Op`]s, computed by pure functions and carried out by a
//! [`Netlink`] executor (the real one in [`crate::rtnl`], a stateful fake in
//! [`crate::fake`]). Every op is idempotent where a retry needs it to be:
//! "ensure" ops and deletes succeed when the kernel is already in that state.

use std::fmt;
use std::net::IpAddr;

use crate::NetError;
use crate::ipam::{Allocation, Cidr};

/// The name the pod side of the veth gets inside the pod.
pub const POD_INTERFACE: &str = "eth0";
/// Prefix of the host side veth names crius makes; the rest is the start of
/// the pod id, so a restart can tell which pod a veth belongs to.
pub const HOST_VETH_PREFIX: &str = "cr";
/// How many characters of the pod id a host veth name carries (the kernel
/// allows 15 characters in all).
const HOST_VETH_ID_CHARS: usize = 12;

/// Which namespace an op runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The node's namespace (where the bridge lives).
    Host,
    /// The pod's network namespace.
    Pod,
}

/// One netlink change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the bridge unless a bridge of that name exists.
    EnsureBridge {
        /// Bridge name.
        name: String,
        /// Its MTU.
        mtu: u32,
    },
    /// Adds an address to a link unless it is there already.
    EnsureAddress {
        /// Where the link is.
        side: Side,
        /// The link.
        link: String,
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Removes an address from a link; an absent address or link is fine.
    RemoveAddress {
        /// Where the link is.
        side: Side,
        /// The link.
        link: String,
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Sets a link administratively up.
    SetUp {
        /// Where the link is.
        side: Side,
        /// The link.
        link: String,
    },
    /// Creates a veth pair: `host` in the host namespace, `pod` in the pod's.
    CreateVeth {
        /// Host side name.
        host: String,
        /// Pod side name.
        pod: String,
        /// MTU of both ends.
        mtu: u32,
    },
    /// Attaches a host link to a bridge.
    SetMaster {
        /// The port.
        link: String,
        /// The bridge.
        master: String,
    },
    /// Adds a default route through `gateway` on `link` unless one exists.
    EnsureDefaultRoute {
        /// Where the route goes.
        side: Side,
        /// The outgoing link.
        link: String,
        /// The next hop.
        gateway: IpAddr,
    },
    /// Deletes a link; a missing link is not an error. Deleting one end of a
    /// veth deletes the other.
    DeleteLink {
        /// Where the link is.
        side: Side,
        /// The link.
        name: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EnsureBridge { name, mtu } => write!(f, "ensure bridge {name} mtu {mtu}"),
            Self::EnsureAddress { side, link, addr, prefix } => {
                write!(f, "ensure address {addr}/{prefix} on {link} ({side:?})")
            }
            Self::RemoveAddress { side, link, addr, prefix } => {
                write!(f, "remove address {addr}/{prefix} from {link} ({side:?})")
            }
            Self::SetUp { side, link } => write!(f, "set {link} up ({side:?})"),
            Self::CreateVeth { host, pod, mtu } => write!(f, "create veth {host} <-> pod {pod} mtu {mtu}"),
            Self::SetMaster { link, master } => write!(f, "attach {link} to {master}"),
            Self::EnsureDefaultRoute { side, link, gateway } => {
                write!(f, "default route via {gateway} dev {link} ({side:?})")
            }
            Self::DeleteLink { side, name } => write!(f, "delete link {name} ({side:?})"),
        }
    }
}

/// Carries out ops. Implementations must make each op atomic: when `apply`
/// fails, that op changed nothing.
pub trait Netlink {
    /// Carries out one op.
    fn apply(&mut self, op: &Op) -> Result<(), NetError>;
}

/// Carries out `ops` in order, stopping at the first failure.
pub fn apply_all(netlink: &mut dyn Netlink, ops: &[Op]) -> Result<(), NetError> {
    for op in ops {
        tracing::trace!(%op, "netlink");
        netlink.apply(op)?;
    }
    Ok(())
}

/// The bridge, with the gateway address of every subnet, up.
pub fn bridge_plan(bridge: &str, mtu: u32, subnets: &[Cidr]) -> Vec<Op> {
    let mut ops = vec![Op::EnsureBridge { name: bridge.to_owned(), mtu }];
    ops.extend(subnets.iter().map(|s| Op::EnsureAddress {
        side: Side::Host,
        link: bridge.to_owned(),
        addr: s.gateway(),
        prefix: s.prefix(),
    }));
    ops.push(Op::SetUp { side: Side::Host, link: bridge.to_owned() });
    ops
}

/// Takes the gateway addresses of subnets no longer used off the bridge.
pub fn retire_plan(bridge: &str, subnets: &[Cidr]) -> Vec<Op> {
    subnets
        .iter()
        .map(|s| Op::RemoveAddress { side: Side::Host, link: bridge.to_owned(), addr: s.gateway(), prefix: s.prefix() })
        .collect()
}

/// A pod's veth on the bridge, its addresses and default routes. The pod's
/// `lo` is already up (the pod's namespace is made that way).
pub fn attach_plan(bridge: &str, mtu: u32, host_veth: &str, addresses: &[Allocation]) -> Vec<Op> {
    let mut ops = vec![
        Op::CreateVeth { host: host_veth.to_owned(), pod: POD_INTERFACE.to_owned(), mtu },
        Op::SetMaster { link: host_veth.to_owned(), master: bridge.to_owned() },
        Op::SetUp { side: Side::Host, link: host_veth.to_owned() },
    ];
    ops.extend(addresses.iter().map(|a| Op::EnsureAddress {
        side: Side::Pod,
        link: POD_INTERFACE.to_owned(),
        addr: a.ip,
        prefix: a.prefix,
    }));
    ops.push(Op::SetUp { side: Side::Pod, link: POD_INTERFACE.to_owned() });
    ops.extend(addresses.iter().map(|a| Op::EnsureDefaultRoute {
        side: Side::Pod,
        link: POD_INTERFACE.to_owned(),
        gateway: a.gateway,
    }));
    ops
}

/// Removes a pod's veth (both ends, with the pod side's addresses and routes).
pub fn detach_plan(host_veth: &str) -> Vec<Op> {
    vec![Op::DeleteLink { side: Side::Host, name: host_veth.to_owned() }]
}

/// The host side veth name of a pod.
pub fn host_veth_name(pod_id: &str) -> String {
    let id: String = pod_id.chars().filter(char::is_ascii_alphanumeric).take(HOST_VETH_ID_CHARS).collect();
    format!("{HOST_VETH_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeNetlink;

    fn alloc(ip: &str, prefix: u8, gateway: &str) -> Allocation {
        Allocation { ip: ip.parse().expect("ip"), prefix, gateway: gateway.parse().expect("gateway") }
    }

    fn subnets() -> Vec<Cidr> {
        vec!["10.89.0.0/16".parse().expect("cidr"), "fd89::/64".parse().expect("cidr")]
    }

    fn dual() -> Vec<Allocation> {
        vec![alloc("10.89.0.2", 16, "10.89.0.1"), alloc("fd89::2", 64, "fd89::1")]
    }

    #[test]
    fn veth_names_fit_the_kernel_limit_and_name_the_pod() {
        let name = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(name, "cr0123456789ab");
        assert!(name.len() <= 15);
        assert_eq!(host_veth_name("../x"), "crx");
    }

    #[test]
    fn attach_gives_the_pod_eth0_with_addresses_and_routes_on_the_bridge() {
        let mut nl = FakeNetlink::default();
        apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
        apply_all(&mut nl, &attach_plan("crius0", 1500, "crpod1", &dual())).expect("attach");
        let bridge = nl.link(Side::Host, "crius0").expect("bridge exists");
        assert!(bridge.up);
        assert_eq!(bridge.addresses.len(), 2);
        let host = nl.link(Side::Host, "crpod1").expect("host veth");
        assert_eq!(host.master.as_deref(), Some("crius0"));
        assert!(host.up);
        let eth0 = nl.link(Side::Pod, "eth0").expect("pod eth0");
        assert!(eth0.up);
        assert_eq!(eth0.mtu, 1500);
        assert!(eth0.addresses.contains(&("10.89.0.2".parse().expect("ip"), 16)));
        assert_eq!(nl.routes(Side::Pod).len(), 2);
    }

    #[test]
    fn bridge_plan_is_idempotent() {
        let mut nl = FakeNetlink::default();
        for _ in 0..3 {
            apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
        }
        assert_eq!(nl.link(Side::Host, "crius0").expect("bridge").addresses.len(), 2);
        assert_eq!(nl.link_names(Side::Host), ["crius0"]);
    }

    #[test]
    fn detach_removes_both_ends_and_is_idempotent() {
        let mut nl = FakeNetlink::default();
        apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
        apply_all(&mut nl, &attach_plan("crius0", 1500, "crpod1", &dual())).expect("attach");
        for _ in 0..2 {
            apply_all(&mut nl, &detach_plan("crpod1")).expect("detach");
        }
        assert_eq!(nl.link_names(Side::Host), ["crius0"]);
        assert!(nl.link_names(Side::Pod).is_empty());
        assert!(nl.routes(Side::Pod).is_empty());
    }

    #[test]
    fn a_failure_halfway_is_undone_by_the_detach_plan() {
        for fail_at in 0..6 {
            let mut nl = FakeNetlink::default();
            apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
            nl.fail_after(fail_at);
            let err = apply_all(&mut nl, &attach_plan("crius0", 1500, "crpod1", &dual()));
            assert!(err.is_err(), "op {fail_at} should fail");
            nl.fail_after(usize::MAX);
            apply_all(&mut nl, &detach_plan("crpod1")).expect("detach");
            assert_eq!(nl.link_names(Side::Host), ["crius0"], "after failing op {fail_at}");
            assert!(nl.link_names(Side::Pod).is_empty(), "after failing op {fail_at}");
        }
    }

    #[test]
    fn a_second_pod_with_the_same_veth_name_is_refused() {
        let mut nl = FakeNetlink::default();
        apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
        apply_all(&mut nl, &attach_plan("crius0", 1500, "crpod1", &dual())).expect("attach");
        let mut other = FakeNetlink::default();
        other.host = nl.host.clone();
        assert!(apply_all(&mut other, &attach_plan("crius0", 1500, "crpod1", &dual())).is_err());
    }

    #[test]
    fn retired_subnets_leave_the_bridge_and_retiring_twice_is_fine() {
        let mut nl = FakeNetlink::default();
        apply_all(&mut nl, &bridge_plan("crius0", 1500, &subnets())).expect("bridge");
        let v4 = [subnets()[0]];
        for _ in 0..2 {
            apply_all(&mut nl, &retire_plan("crius0", &v4)).expect("retire");
        }
        let left: Vec<_> = nl.link(Side::Host, "crius0").expect("bridge").addresses.iter().map(|a| a.0).collect();
        assert_eq!(left, ["fd89::1".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn attaching_to_a_missing_bridge_fails() {
        let mut nl = FakeNetlink::default();
        let err = apply_all(&mut nl, &attach_plan("crius0", 1500, "crpod1", &dual())).expect_err("no bridge");
        assert!(err.to_string().contains("crius0"), "{err}");
    }
}
