//! A stateful fake of the kernel's link, address and route tables, for
//! testing plans without privileges. It keeps the kernel's rules that plans
//! rely on: names are unique per namespace, a veth's ends live and die
//! together, addresses and routes need an existing link, and a route needs a
//! link that is up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::NetError;
use crate::plan::{Netlink, Op, Side};

/// What kind of link a fake link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeKind {
    /// A bridge.
    Bridge,
    /// One end of a veth pair; the other end's namespace and name.
    Veth {
        /// Where the peer is.
        peer_side: Side,
        /// The peer's name.
        peer: String,
    },
}

/// One fake link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    /// Bridge or veth.
    pub kind: FakeKind,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// The bridge it is attached to.
    pub master: Option<String>,
    /// Addresses with prefix lengths.
    pub addresses: BTreeSet<(IpAddr, u8)>,
}

/// One fake namespace: links by name, and default routes as (link, gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNamespace {
    /// Links by name.
    pub links: BTreeMap<String, FakeLink>,
    /// Default routes.
    pub routes: BTreeSet<(String, IpAddr)>,
}

/// The fake kernel: a host namespace and one pod namespace.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    /// The host namespace.
    pub host: FakeNamespace,
    /// The pod namespace.
    pub pod: FakeNamespace,
    /// How many more ops succeed before every op fails (fault injection).
    remaining_ok: usize,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        Self { host: FakeNamespace::default(), pod: FakeNamespace::default(), remaining_ok: usize::MAX }
    }
}

impl FakeNetlink {
    /// Lets `n` more ops succeed, then fails every op (`usize::MAX`: never fail).
    pub fn fail_after(&mut self, n: usize) {
        self.remaining_ok = n;
    }

    /// A link, if it exists.
    pub fn link(&self, side: Side, name: &str) -> Option<&FakeLink> {
        self.ns(side).links.get(name)
    }

    /// The link names of a namespace, sorted.
    pub fn link_names(&self, side: Side) -> Vec<String> {
        self.ns(side).links.keys().cloned().collect()
    }

    /// The default routes of a namespace.
    pub fn routes(&self, side: Side) -> Vec<(String, IpAddr)> {
        self.ns(side).routes.iter().cloned().collect()
    }

    fn ns(&self, side: Side) -> &FakeNamespace {
        match side {
            Side::Host => &self.host,
            Side::Pod => &self.pod,
        }
    }

    fn ns_mut(&mut self, side: Side) -> &mut FakeNamespace {
        match side {
            Side::Host => &mut self.host,
            Side::Pod => &mut self.pod,
        }
    }

    fn link_mut(&mut self, op: &Op, side: Side, name: &str) -> Result<&mut FakeLink, NetError> {
        self.ns_mut(side).links.get_mut(name).ok_or_else(|| refused(op, "no such device"))
    }

    fn remove_link(&mut self, side: Side, name: &str) {
        let ns = self.ns_mut(side);
        ns.routes.retain(|(link, _)| link != name);
        if let Some(FakeLink { kind: FakeKind::Veth { peer_side, peer }, .. }) = ns.links.remove(name) {
            let peer_ns = self.ns_mut(peer_side);
            peer_ns.links.remove(&peer);
            peer_ns.routes.retain(|(link, _)| *link != peer);
        }
        for link in self.ns_mut(side).links.values_mut() {
            if link.master.as_deref() == Some(name) {
                link.master = None;
            }
        }
    }
}

fn refused(op: &Op, why: &str) -> NetError {
    NetError::Netlink { op: op.to_string(), message: why.to_owned() }
}

fn new_link(kind: FakeKind, mtu: u32) -> FakeLink {
    FakeLink { kind, up: false, mtu, master: None, addresses: BTreeSet::new() }
}

impl Netlink for FakeNetlink {
    fn apply(&mut self, op: &Op) -> Result<(), NetError> {
        if self.remaining_ok == 0 {
            return Err(refused(op, "injected failure"));
        }
        self.remaining_ok = self.remaining_ok.saturating_sub(1);
        match op {
            Op::EnsureBridge { name, mtu } => match self.host.links.get(name) {
                Some(FakeLink { kind: FakeKind::Bridge, .. }) => {}
                Some(_) => return Err(refused(op, "a link of that name exists and is not a bridge")),
                None => {
                    self.host.links.insert(name.clone(), new_link(FakeKind::Bridge, *mtu));
                }
            },
            Op::EnsureAddress { side, link, addr, prefix } => {
                self.link_mut(op, *side, link)?.addresses.insert((*addr, *prefix));
            }
            Op::RemoveAddress { side, link, addr, prefix } => {
                if let Some(l) = self.ns_mut(*side).links.get_mut(link) {
                    l.addresses.remove(&(*addr, *prefix));
                }
            }
            Op::SetUp { side, link } => self.link_mut(op, *side, link)?.up = true,
            Op::CreateVeth { host, pod, mtu } => {
                if self.host.links.contains_key(host) || self.pod.links.contains_key(pod) {
                    return Err(refused(op, "file exists"));
                }
                let to_pod = FakeKind::Veth { peer_side: Side::Pod, peer: pod.clone() };
                let to_host = FakeKind::Veth { peer_side: Side::Host, peer: host.clone() };
                self.host.links.insert(host.clone(), new_link(to_pod, *mtu));
                self.pod.links.insert(pod.clone(), new_link(to_host, *mtu));
            }
            Op::SetMaster { link, master } => {
                match self.host.links.get(master) {
                    Some(FakeLink { kind: FakeKind::Bridge, .. }) => {}
                    _ => return Err(refused(op, &format!("no bridge {master}"))),
                }
                self.link_mut(op, Side::Host, link)?.master = Some(master.clone());
            }
            Op::EnsureDefaultRoute { side, link, gateway } => {
                let l = self.link_mut(op, *side, link)?;
                if !l.up {
                    return Err(refused(op, "network is down"));
                }
                self.ns_mut(*side).routes.insert((link.clone(), *gateway));
            }
            Op::DeleteLink { side, name } => self.remove_link(*side, name),
        }
        Ok(())
    }
}
