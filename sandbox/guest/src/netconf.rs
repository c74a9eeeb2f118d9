//! The VM's network interfaces as SetupPod describes them: each found by
//! its MAC address, renamed, its MTU set, brought up, its addresses added,
//! then the routes.
//!
//! Planned first ([`plan`], pure), then applied as rtnetlink requests
//! ([`encode`], pure) on a `NETLINK_ROUTE` socket, each acknowledged by the
//! kernel. Only the few messages this needs are built, by hand: a netlink
//! header, the family's fixed header, attributes. Addresses and routes
//! replace what is there, so applying a plan twice is no error.

use std::fs;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use guest_proto::message::{Cidr, InterfaceConfig, MacAddr};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto, socket,
};

// rtnetlink(7) and the kernel's uapi headers; checked against libc in the tests.
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 0x1;
const IFA_F_NODAD: u8 = 0x2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
/// Longest interface name (`IFNAMSIZ` less the NUL).
const MAX_NAME: usize = 15;

/// Why the interfaces could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration cannot be applied as given.
    #[error("{0}")]
    Invalid(String),
    /// No interface has this MAC address.
    #[error("no interface with MAC address {0}")]
    NoSuchMac(MacAddr),
    /// Reading the interfaces or talking to the kernel failed.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("{op}")]
    Refused {
        /// The request.
        op: String,
        /// The kernel's error.
        #[source]
        source: nix::Error,
    },
}

/// An interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Name.
    pub name: String,
    /// Index.
    pub index: u32,
    /// MAC address.
    pub mac: MacAddr,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetOp {
    /// Rename (the link must be down for it), set the MTU, bring up or down.
    SetLink {
        /// The link.
        index: u32,
        /// A new name.
        name: Option<String>,
        /// A new MTU.
        mtu: Option<u32>,
        /// Up (else down).
        up: bool,
    },
    /// Add (or replace) an address.
    AddAddress {
        /// The link.
        index: u32,
        /// The address and prefix.
        address: Cidr,
    },
    /// Add (or replace) a route through a link.
    AddRoute {
        /// The link.
        index: u32,
        /// The destination.
        dest: Cidr,
        /// The next hop; none for an on-link route.
        gateway: Option<IpAddr>,
    },
}

/// The steps that make `links` look like `interfaces`.
pub fn plan(interfaces: &[InterfaceConfig], links: &[LinkInfo]) -> Result<Vec<NetOp>, NetError> {
    let mut ops = Vec::new();
    let mut routes = Vec::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let name = &iface.name;
        if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
            return Err(NetError::Invalid(format!("invalid interface name {:?}", truncate(name))));
        }
        if interfaces[..i].iter().any(|other| other.mac == iface.mac || other.name == iface.name) {
            return Err(NetError::Invalid(format!("interface {name} or its MAC {} given twice", iface.mac)));
        }
        let link = links.iter().find(|l| l.mac == iface.mac).ok_or(NetError::NoSuchMac(iface.mac))?;
        let index = link.index;
        if link.name != *name {
            ops.push(NetOp::SetLink { index, name: Some(name.clone()), mtu: None, up: false });
        }
        ops.push(NetOp::SetLink { index, name: None, mtu: (iface.mtu > 0).then_some(iface.mtu), up: true });
        ops.extend(iface.addresses.iter().map(|address| NetOp::AddAddress { index, address: *address }));
        for route in &iface.routes {
            if route.gateway.is_some_and(|g| g.is_ipv4() != route.dest.addr.is_ipv4()) {
                return Err(NetError::Invalid(format!("route to {} through a gateway of another family", route.dest)));
            }
            routes.push(NetOp::AddRoute { index, dest: route.dest, gateway: route.gateway });
        }
    }
    ops.extend(routes);
    Ok(ops)
}

fn truncate(s: &str) -> &str {
    guest_proto::codec::truncate_utf8(s, 64)
}

/// The interfaces under `/sys/class/net`.
pub fn links(sys_class_net: &Path) -> Result<Vec<LinkInfo>, NetError> {
    let io = |step: String| move |source| NetError::Io { step, source };
    let mut links = Vec::new();
    let entries = fs::read_dir(sys_class_net).map_err(io(format!("read {}", sys_class_net.display())))?;
    for entry in entries {
        let dir = entry.map_err(io(format!("read {}", sys_class_net.display())))?.path();
        let read = |file: &str| fs::read_to_string(dir.join(file)).map(|t| t.trim().to_owned());
        let (Ok(address), Ok(index)) = (read("address"), read("ifindex")) else { continue };
        let (Ok(mac), Ok(index)) = (address.parse::<MacAddr>(), index.parse::<u32>()) else { continue };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        links.push(LinkInfo { name, index, mac });
    }
    Ok(links)
}

/// Applies `interfaces` in the calling thread's network namespace (whose
/// interfaces the sysfs at `/sys` shows).
pub fn configure(interfaces: &[InterfaceConfig]) -> Result<(), NetError> {
    configure_in(interfaces, Path::new("/sys/class/net"))
}

/// [`configure`], with the interfaces listed in `sys_class_net`.
pub fn configure_in(interfaces: &[InterfaceConfig], sys_class_net: &Path) -> Result<(), NetError> {
    if interfaces.is_empty() {
        return Ok(());
    }
    let ops = plan(interfaces, &links(sys_class_net)?)?;
    let socket = Netlink::open()?;
    for (seq, op) in (1..).zip(&ops) {
        socket.request(&encode(op, seq)).map_err(|e| match e {
            Failure::Io(source) => NetError::Io { step: format!("netlink request {op:?}"), source },
            Failure::Refused(source) => NetError::Refused { op: format!("{op:?}"), source },
        })?;
    }
    Ok(())
}

enum Failure {
    Io(std::io::Error),
    Refused(nix::Error),
}

struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> Result<Self, NetError> {
        let io = |step: &str| {
            let step = step.to_owned();
            move |e: nix::Error| NetError::Io { step, source: e.into() }
        };
        let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
            .map_err(io("open a netlink socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io("bind the netlink socket"))?;
        Ok(Self { fd })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&self, message: &[u8]) -> Result<(), Failure> {
        sendto(self.fd.as_raw_fd(), message, &NetlinkAddr::new(0, 0), MsgFlags::empty())
            .map_err(|e| Failure::Io(e.into()))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| Failure::Io(e.into()))?;
            match ack(&buf[..n]) {
                Some(0) => return Ok(()),
                Some(errno) => return Err(Failure::Refused(nix::Error::from_raw(-errno))),
                None => {}
            }
        }
    }
}

/// The error code of an `NLMSG_ERROR` message (0: an acknowledgement);
/// `None` for anything else.
fn ack(message: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(message.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(message.get(16..20)?.try_into().ok()?))
}

/// The rtnetlink request for `op`, with sequence number `seq`.
pub fn encode(op: &NetOp, seq: u32) -> Vec<u8> {
    let mut body = Vec::new();
    let (kind, flags) = match op {
        NetOp::SetLink { index, name, mtu, up } => {
            // ifinfomsg: family, pad, type, index, flags, change.
            body.extend_from_slice(&[0, 0, 0, 0]);
            body.extend_from_slice(&index.to_ne_bytes());
            body.extend_from_slice(&(if *up { IFF_UP } else { 0 }).to_ne_bytes());
            body.extend_from_slice(&IFF_UP.to_ne_bytes());
            if let Some(name) = name {
                let mut text = name.as_bytes().to_vec();
                text.push(0);
                attr(&mut body, IFLA_IFNAME, &text);
            }
            if let Some(mtu) = mtu {
                attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
            }
            (RTM_NEWLINK, 0)
        }
        NetOp::AddAddress { index, address } => {
            // ifaddrmsg: family, prefix length, flags, scope, index.
            let (family, flags) = if address.addr.is_ipv4() { (AF_INET, 0) } else { (AF_INET6, IFA_F_NODAD) };
            body.extend_from_slice(&[family, address.prefix, flags, RT_SCOPE_UNIVERSE]);
            body.extend_from_slice(&index.to_ne_bytes());
            attr(&mut body, IFA_LOCAL, &ip_bytes(address.addr));
            attr(&mut body, IFA_ADDRESS, &ip_bytes(address.addr));
            (RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)
        }
        NetOp::AddRoute { index, dest, gateway } => {
            // rtmsg: family, dst len, src len, tos, table, protocol, scope, type, flags.
            let family = if dest.addr.is_ipv4() { AF_INET } else { AF_INET6 };
            let scope = if gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
            body.extend_from_slice(&[family, dest.prefix, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST]);
            body.extend_from_slice(&0u32.to_ne_bytes());
            if dest.prefix > 0 {
                attr(&mut body, RTA_DST, &ip_bytes(dest.addr));
            }
            if let Some(gateway) = gateway {
                attr(&mut body, RTA_GATEWAY, &ip_bytes(*gateway));
            }
            attr(&mut body, RTA_OIF, &index.to_ne_bytes());
            (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)
        }
    };
    let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut message = Vec::with_capacity(16 + body.len());
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    message
}

/// Appends an attribute (length, type, payload, padding to 4 bytes).
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    // Payloads here are at most 16 bytes.
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests;
