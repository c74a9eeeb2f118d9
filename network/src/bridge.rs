//! The built-in network: one Linux bridge, a veth per pod, addresses from
//! [`Ipam`], NAT from [`Firewall`]. Every pod-facing step is idempotent and
//! undone when a later one fails; [`BridgeNetwork::restore`] reconciles the
//! kernel and the allocations with the pods that exist after a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::NetError;
use crate::firewall::{Firewall, PodPorts, PortMapping};
use crate::ipam::{Cidr, Ipam};
use crate::plan::{self, HOST_VETH_PREFIX};
use crate::rtnl;

/// Settings of the built-in network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge name (also the name of crius's nftables table).
    pub bridge: String,
    /// Pod subnets: one per address family at most.
    pub subnets: Vec<Cidr>,
    /// MTU of the bridge and the veths.
    pub mtu: u32,
    /// Masquerade traffic from pods to outside the pod subnets.
    pub masquerade: bool,
    /// Where address allocations are kept.
    pub ipam_dir: PathBuf,
    /// The namespace standing for the node (`None`: crius's own; tests use a
    /// scratch namespace).
    pub host_ns: Option<PathBuf>,
}

impl BridgeConfig {
    /// Checks the values that the kernel or nftables would refuse.
    pub fn validate(&self) -> Result<(), NetError> {
        let name_ok = !self.bridge.is_empty()
            && self.bridge.len() <= 15
            && self.bridge.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(NetError::Config(format!(
                "bridge name {:?}: 1-15 characters of [A-Za-z0-9_] (it also names the nftables table)",
                self.bridge
            )));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(NetError::Config(format!("mtu {}: must be 68-65535", self.mtu)));
        }
        if let Some(small) = self.subnets.iter().find(|s| s.prefix() > if s.addr().is_ipv4() { 30 } else { 126 }) {
            return Err(NetError::Config(format!(
                "subnet {small} leaves no room for pods (IPv4 prefix at most /30, IPv6 at most /126)"
            )));
        }
        let v4 = self.subnets.iter().filter(|s| s.addr().is_ipv4()).count();
        if self.subnets.is_empty() || v4 > 1 || self.subnets.len() - v4 > 1 {
            return Err(NetError::Config("one or two subnets: at most one per address family".into()));
        }
        Ok(())
    }
}

/// A pod as it was attached, for [`BridgeNetwork::restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPod {
    /// Pod id.
    pub id: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its hostPorts.
    pub ports: Vec<PortMapping>,
}

/// The built-in network.
#[derive(Debug)]
pub struct BridgeNetwork {
    config: BridgeConfig,
    ipam: Arc<Ipam>,
    firewall: Firewall,
    /// Pods with hostPorts: what the nftables table holds.
    port_pods: Mutex<BTreeMap<String, PodPorts>>,
    /// Veth removals running in the background, by pod id.
    pending: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl BridgeNetwork {
    /// Checks the settings and opens the allocation store; touches no
    /// interface yet.
    pub fn new(config: BridgeConfig) -> Result<Self, NetError> {
        config.validate()?;
        let ipam = Arc::new(Ipam::open(&config.ipam_dir, config.subnets.clone())?);
        let firewall = Firewall {
            bridge: config.bridge.clone(),
            subnets: config.subnets.clone(),
            masquerade: config.masquerade,
            host_ns: config.host_ns.clone(),
        };
        Ok(Self { config, ipam, firewall, port_pods: Mutex::new(BTreeMap::new()), pending: Mutex::default() })
    }

    /// The settings.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Makes sure the bridge exists with its gateway addresses and is up, and
    /// that the node forwards pod traffic.
    pub fn ensure_bridge(&self) -> Result<(), NetError> {
        let c = &self.config;
        rtnl::run_plan(c.host_ns.as_deref(), None, &plan::bridge_plan(&c.bridge, c.mtu, &c.subnets))?;
        let mut sysctls = vec![format!("net/ipv4/conf/{}/route_localnet", c.bridge)];
        if c.subnets.iter().any(|s| s.addr().is_ipv4()) {
            sysctls.push("net/ipv4/ip_forward".into());
        }
        if c.subnets.iter().any(|s| s.addr().is_ipv6()) {
            sysctls.push("net/ipv6/conf/all/forwarding".into());
        }
        crate::netns::run_in(c.host_ns.as_deref(), || sysctls.iter().try_for_each(|key| enable_sysctl(key)))?
    }

    /// Connects a pod: veth, addresses, routes, hostPorts. Returns its
    /// addresses, in subnet order. Nothing is left when it fails.
    pub fn attach(&self, pod_id: &str, pod_ns: &Path, ports: &[PortMapping]) -> Result<Vec<IpAddr>, NetError> {
        let mut port_pods = self.port_pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        check_ports(&port_pods, pod_id, ports)?;
        self.ensure_bridge()?;
        let allocations = self.ipam.allocate(pod_id)?;
        let ips: Vec<IpAddr> = allocations.iter().map(|a| a.ip).collect();
        let c = &self.config;
        let veth = plan::host_veth_name(pod_id);
        let mut ops = plan::detach_plan(&veth);
        ops.extend(plan::attach_plan(&c.bridge, c.mtu, &veth, &allocations));
        let attached = rtnl::run_plan(c.host_ns.as_deref(), Some(pod_ns), &ops).and_then(|()| {
            if ports.is_empty() {
                return Ok(());
            }
            port_pods.insert(pod_id.to_owned(), PodPorts { ips: ips.clone(), ports: ports.to_vec() });
            self.firewall.apply(&port_pods)
        });
        if let Err(e) = attached {
            if port_pods.remove(pod_id).is_some() {
                let _ = self.firewall.apply(&port_pods);
            }
            let _ = rtnl::run_plan(c.host_ns.as_deref(), None, &plan::detach_plan(&veth));
            let _ = self.ipam.release(pod_id);
            return Err(e);
        }
        Ok(ips)
    }

    /// Disconnects a pod: its hostPorts at once, its veth and address in the
    /// background (deleting a veth waits for an RCU grace period, which is
    /// most of StopPodSandbox's time otherwise). The address is released only
    /// once the veth is gone, so it is never handed out while still in use;
    /// [`BridgeNetwork::detach`] waits for the background part, and a crash
    /// in between is cleaned by [`BridgeNetwork::restore`].
    pub fn detach_soon(&self, pod_id: &str) -> Result<(), NetError> {
        self.remove_ports(pod_id)?;
        let veth = plan::host_veth_name(pod_id);
        let host_ns = self.config.host_ns.clone();
        let ipam = Arc::clone(&self.ipam);
        let id = pod_id.to_owned();
        let worker = std::thread::Builder::new().name("veth-delete".into()).spawn(move || {
            let done = rtnl::run_plan(host_ns.as_deref(), None, &plan::detach_plan(&veth))
                .and_then(|()| ipam.release(&id).map_err(NetError::from));
            if let Err(e) = done {
                tracing::warn!(pod_id = %id, error = %e, "background veth removal failed; RemovePodSandbox retries it");
            }
        });
        match worker {
            Ok(handle) => {
                let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(previous) = pending.insert(pod_id.to_owned(), handle) {
                    let _ = previous.join();
                }
                Ok(())
            }
            Err(_) => self.detach(pod_id),
        }
    }

    fn remove_ports(&self, pod_id: &str) -> Result<(), NetError> {
        let mut port_pods = self.port_pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if port_pods.remove(pod_id).is_some() {
            self.firewall.apply(&port_pods)?;
        }
        Ok(())
    }

    /// Disconnects a pod: its hostPorts, veth and addresses. Idempotent.
    pub fn detach(&self, pod_id: &str) -> Result<(), NetError> {
        let background = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(pod_id);
        if let Some(handle) = background {
            let _ = handle.join();
        }
        let mut port_pods = self.port_pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if port_pods.remove(pod_id).is_some() {
            self.firewall.apply(&port_pods)?;
        }
        let veth = plan::host_veth_name(pod_id);
        rtnl::run_plan(self.config.host_ns.as_deref(), None, &plan::detach_plan(&veth))?;
        self.ipam.release(pod_id)?;
        Ok(())
    }

    /// After a start: sets up the bridge and the table for the pods that
    /// exist, removes veths and allocations of pods that do not.
    pub fn restore(&self, pods: &[AttachedPod]) -> Result<(), NetError> {
        self.ensure_bridge()?;
        let mut port_pods = self.port_pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *port_pods = pods
            .iter()
            .filter(|p| !p.ports.is_empty())
            .map(|p| (p.id.clone(), PodPorts { ips: p.ips.clone(), ports: p.ports.clone() }))
            .collect();
        self.firewall.apply(&port_pods)?;
        self.open_forwarding()?;
        let live: HashSet<String> = pods.iter().map(|p| p.id.clone()).collect();
        for (ip, owner) in self.ipam.reconcile(&live)? {
            tracing::info!(%ip, pod_id = %owner, "released the address of a pod that no longer exists");
        }
        let live_veths: HashSet<String> = pods.iter().map(|p| plan::host_veth_name(&p.id)).collect();
        let host_ns = self.config.host_ns.as_deref();
        for stray in rtnl::bridge_ports(host_ns, &self.config.bridge, HOST_VETH_PREFIX)? {
            if !live_veths.contains(&stray) {
                tracing::info!(veth = %stray, "removing the veth of a pod that no longer exists");
                rtnl::run_plan(host_ns, None, &plan::detach_plan(&stray))?;
            }
        }
        Ok(())
    }

    /// Puts back what someone else removed: the bridge (with its addresses)
    /// and crius's nftables table (a firewall reload may flush it). Returns
    /// whether the table had to be reloaded.
    pub fn resync(&self) -> Result<bool, NetError> {
        self.ensure_bridge()?;
        self.open_forwarding()?;
        let port_pods = self.port_pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.firewall.is_loaded()? {
            return Ok(false);
        }
        self.firewall.apply(&port_pods)?;
        Ok(true)
    }

    /// Whether any pod holds an address of this network.
    pub fn has_attached_pods(&self) -> Result<bool, NetError> {
        Ok(!self.ipam.allocations()?.is_empty())
    }

    /// Takes the gateway addresses of `subnets` (no longer this network's)
    /// off the bridge.
    pub fn retire_subnets(&self, subnets: &[Cidr]) -> Result<(), NetError> {
        let retired: Vec<Cidr> = subnets.iter().filter(|s| !self.config.subnets.contains(s)).copied().collect();
        rtnl::run_plan(self.config.host_ns.as_deref(), None, &plan::retire_plan(&self.config.bridge, &retired))
    }

    /// Removes crius's nftables table (the bridge is left, as CNI does).
    pub fn remove_rules(&self) -> Result<(), NetError> {
        crate::forward::close(self.config.host_ns.as_deref(), &self.config.bridge)?;
        self.firewall.remove()
    }

    /// Where the host's iptables FORWARD policy is DROP, lets pod traffic through.
    fn open_forwarding(&self) -> Result<(), NetError> {
        let c = &self.config;
        let v4 = c.subnets.iter().any(|s| s.addr().is_ipv4());
        let v6 = c.subnets.iter().any(|s| s.addr().is_ipv6());
        crate::forward::open(c.host_ns.as_deref(), &c.bridge, v4, v6)
    }
}

/// Refuses a hostPort another pod holds, or one given twice.
fn check_ports(held: &BTreeMap<String, PodPorts>, pod_id: &str, ports: &[PortMapping]) -> Result<(), NetError> {
    for (i, mapping) in ports.iter().enumerate() {
        let refuse = |reason: String| NetError::PortMapping { mapping: mapping.to_string(), reason };
        if mapping.host_port == 0 || mapping.container_port == 0 {
            return Err(refuse("host and container ports must be 1-65535".into()));
        }
        if ports[..i].iter().any(|m| m.overlaps(mapping)) {
            return Err(refuse("the pod maps this host port twice".into()));
        }
        for (other, entry) in held {
            if other != pod_id && entry.ports.iter().any(|m| m.overlaps(mapping)) {
                return Err(refuse(format!("host port already mapped by pod {other}")));
            }
        }
    }
    Ok(())
}

/// Sets a boolean sysctl to 1 unless it already is.
fn enable_sysctl(key: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    let current =
        std::fs::read_to_string(&path).map_err(|source| NetError::Io { op: "read", path: path.clone(), source })?;
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| NetError::Io { op: "write", path, source })
}
