//! The real [`Netlink`] executor, on rtnetlink. One executor serves one plan:
//! it opens a netlink socket in the host namespace and, when the plan touches
//! the pod, one inside the pod's namespace (see [`crate::netns`]), and drives
//! them on a private current-thread runtime, so callers stay synchronous.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::NetError;
use crate::netns;
use crate::plan::{Netlink, Op, Side};

const EEXIST: i32 = nix::libc::EEXIST;
const ENODEV: i32 = nix::libc::ENODEV;
const EADDRNOTAVAIL: i32 = nix::libc::EADDRNOTAVAIL;

/// Runs `ops` against the kernel: `host_ns` is the node's namespace (`None`:
/// crius's own), `pod_ns` the pod's namespace file.
pub fn run_plan(host_ns: Option<&Path>, pod_ns: Option<&Path>, ops: &[Op]) -> Result<(), NetError> {
    if ops.is_empty() {
        return Ok(());
    }
    // A fresh thread: the private runtime must not run inside a caller's runtime.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut executor = RtnlExecutor::open(host_ns, pod_ns)?;
                crate::plan::apply_all(&mut executor, ops)
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Netlink { op: "run plan".into(), message: "executor panicked".into() }))
    })
}

/// The host links attached to `bridge` whose names start with `prefix`.
pub fn bridge_ports(host_ns: Option<&Path>, bridge: &str, prefix: &str) -> Result<Vec<String>, NetError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let executor = RtnlExecutor::open(host_ns, None)?;
                executor.runtime.block_on(executor.ports_of(bridge, prefix))
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Netlink { op: "list ports".into(), message: "executor panicked".into() }))
    })
}

/// Netlink sockets in the host and (optionally) the pod namespace.
struct RtnlExecutor {
    runtime: tokio::runtime::Runtime,
    host: Handle,
    pod: Option<(Handle, File)>,
}

impl std::fmt::Debug for RtnlExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtnlExecutor").field("pod", &self.pod.is_some()).finish_non_exhaustive()
    }
}

fn connect_err(message: impl std::fmt::Display) -> NetError {
    NetError::Netlink { op: "open netlink socket".into(), message: message.to_string() }
}

impl RtnlExecutor {
    fn open(host_ns: Option<&Path>, pod_ns: Option<&Path>) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(connect_err)?;
        let connect = |ns: Option<&Path>| -> Result<Handle, NetError> {
            let (connection, handle, _) = netns::run_in(ns, || {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(connect_err)?;
            runtime.spawn(connection);
            Ok(handle)
        };
        let host = connect(host_ns)?;
        let pod = match pod_ns {
            Some(path) => {
                let file = File::open(path)
                    .map_err(|e| NetError::Netns { path: path.to_owned(), message: format!("open: {e}") })?;
                Some((connect(Some(path))?, file))
            }
            None => None,
        };
        Ok(Self { runtime, host, pod })
    }

    fn handle(&self, side: Side) -> Result<&Handle, NetError> {
        match side {
            Side::Host => Ok(&self.host),
            Side::Pod => self.pod.as_ref().map(|(h, _)| h).ok_or_else(|| NetError::Netlink {
                op: "pod namespace".into(),
                message: "this plan was opened without a pod namespace".into(),
            }),
        }
    }

    async fn apply_async(&self, op: &Op) -> Result<(), rtnetlink::Error> {
        match op {
            Op::EnsureBridge { name, mtu } => {
                if let Some(link) = find_link(&self.host, name).await? {
                    return if is_bridge(&link) { Ok(()) } else { Err(not_a_bridge()) };
                }
                let add = self.host.link().add(LinkBridge::new(name).mtu(*mtu).build()).execute().await;
                ignore_errno(add, EEXIST)
            }
            Op::EnsureAddress { side, link, addr, prefix } => {
                let handle = self.pod_or_host(*side);
                let index = index_of(handle, link).await?;
                let mut request = handle.address().add(index, *addr, *prefix);
                if addr.is_ipv6() {
                    // A pod's address must work at once, not after duplicate detection.
                    request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
                }
                ignore_errno(request.execute().await, EEXIST)
            }
            Op::RemoveAddress { side, link, addr, prefix } => {
                let handle = self.pod_or_host(*side);
                let Some(found) = find_link(handle, link).await? else { return Ok(()) };
                let mut addresses = handle.address().get().set_link_index_filter(found.header.index).execute();
                while let Some(message) = addresses.try_next().await? {
                    let matches = message.header.prefix_len == *prefix
                        && message.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if ip == addr));
                    if matches {
                        return ignore_errno(handle.address().del(message).execute().await, EADDRNOTAVAIL);
                    }
                }
                Ok(())
            }
            Op::SetUp { side, link } => {
                let handle = self.pod_or_host(*side);
                let index = index_of(handle, link).await?;
                handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await
            }
            Op::CreateVeth { host, pod, mtu } => {
                let fd = self.pod.as_ref().map(|(_, f)| f.as_raw_fd()).ok_or_else(no_pod)?;
                let peer = LinkUnspec::new_with_name(pod).mtu(*mtu).setns_by_fd(fd).build();
                let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(host.clone())
                    .mtu(*mtu)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                self.host.link().add(message).execute().await
            }
            Op::SetMaster { link, master } => {
                let bridge = index_of(&self.host, master).await?;
                let index = index_of(&self.host, link).await?;
                self.host.link().set(LinkUnspec::new_with_index(index).controller(bridge).build()).execute().await
            }
            Op::EnsureDefaultRoute { side, link, gateway } => {
                let handle = self.pod_or_host(*side);
                let index = index_of(handle, link).await?;
                let route = match gateway {
                    IpAddr::V4(gw) => {
                        RouteMessageBuilder::<std::net::Ipv4Addr>::new().gateway(*gw).output_interface(index).build()
                    }
                    IpAddr::V6(gw) => {
                        RouteMessageBuilder::<std::net::Ipv6Addr>::new().gateway(*gw).output_interface(index).build()
                    }
                };
                ignore_errno(handle.route().add(route).execute().await, EEXIST)
            }
            Op::DeleteLink { side, name } => {
                let handle = self.pod_or_host(*side);
                let Some(link) = find_link(handle, name).await? else { return Ok(()) };
                ignore_errno(handle.link().del(link.header.index).execute().await, ENODEV)
            }
        }
    }

    /// For ops on the pod side, the pod handle (checked by `apply`).
    fn pod_or_host(&self, side: Side) -> &Handle {
        self.handle(side).unwrap_or(&self.host)
    }

    async fn ports_of(&self, bridge: &str, prefix: &str) -> Result<Vec<String>, NetError> {
        let err =
            |e: rtnetlink::Error| NetError::Netlink { op: format!("list ports of {bridge}"), message: e.to_string() };
        let Some(bridge_link) = find_link(&self.host, bridge).await.map_err(err)? else { return Ok(Vec::new()) };
        let mut links = self.host.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links.try_next().await.map_err(err)? {
            let master = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_link.header.index));
            match link_name(&link) {
                Some(name) if master && name.starts_with(prefix) => names.push(name.to_owned()),
                _ => {}
            }
        }
        Ok(names)
    }
}

impl Netlink for RtnlExecutor {
    fn apply(&mut self, op: &Op) -> Result<(), NetError> {
        let side = match op {
            Op::EnsureAddress { side, .. }
            | Op::RemoveAddress { side, .. }
            | Op::SetUp { side, .. }
            | Op::EnsureDefaultRoute { side, .. }
            | Op::DeleteLink { side, .. } => *side,
            Op::CreateVeth { .. } => Side::Pod,
            Op::EnsureBridge { .. } | Op::SetMaster { .. } => Side::Host,
        };
        self.handle(side)?;
        self.runtime
            .block_on(self.apply_async(op))
            .map_err(|e| NetError::Netlink { op: op.to_string(), message: describe(&e) })
    }
}

fn no_pod() -> rtnetlink::Error {
    rtnetlink::Error::NamespaceError("this plan was opened without a pod namespace".into())
}

fn not_a_bridge() -> rtnetlink::Error {
    rtnetlink::Error::InvalidNla("a link of that name exists and is not a bridge".into())
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The kernel's words for an errno, rather than the library's debug output.
fn describe(error: &rtnetlink::Error) -> String {
    match errno(error) {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => error.to_string(),
    }
}

fn ignore_errno(result: Result<(), rtnetlink::Error>, code: i32) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e) == Some(code) => Ok(()),
        other => other,
    }
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    match find_link(handle, name).await? {
        Some(link) => Ok(link.header.index),
        None => Err(rtnetlink::Error::InvalidNla(format!("no link named {name}"))),
    }
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}
