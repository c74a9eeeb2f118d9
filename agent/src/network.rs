//! The pod network as the CRI handlers see it: the built-in bridge network
//! (or none), whether it is ready, and the translation of CRI port mappings.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use cri_api::v1::{PortMapping as CriPortMapping, Protocol as CriProtocol};
use std::collections::HashSet;

use crius_network::bridge::{AttachedPod, BridgeConfig, BridgeNetwork};
use crius_network::cni::{CniConfig, CniDns, CniNetwork, CniPod};
use crius_network::firewall::{PortMapping, Protocol};

use crate::config::{Config, NetworkMode};
use crate::error::AgentError;

/// Which network pods get.
#[derive(Debug)]
enum Backend {
    /// Loopback only.
    None,
    /// The built-in bridge network.
    Bridge(Box<BridgeNetwork>),
    /// Standard CNI plugins.
    Cni(CniNetwork),
}

/// The pod network of this crius.
#[derive(Debug)]
pub struct PodNetwork {
    backend: RwLock<Backend>,
    /// Why pods cannot get a network now; `None` when they can.
    not_ready: Mutex<Option<String>>,
}

impl PodNetwork {
    /// Opens the configured network (`auto`: CNI when the conf dir holds a
    /// valid config, else the built-in bridge); it is not ready until
    /// [`PodNetwork::restore`] ran.
    pub fn open(config: &Config, kubelet_pod_cidrs: Option<&str>) -> Self {
        let net = &config.network;
        let subnets = match kubelet_pod_cidrs.filter(|_| net.use_kubelet_pod_cidr) {
            Some(cidrs) => cidrs.split(',').map(str::to_owned).collect(),
            None => net.subnets.clone(),
        };
        let cni_config = CniConfig {
            conf_dir: net.cni_conf_dir.clone(),
            bin_dirs: net.cni_bin_dirs.clone(),
            cache_dir: config.root.join("network").join("cni"),
        };
        let mode = match net.mode {
            NetworkMode::Auto if crius_network::cni::config::load(&net.cni_conf_dir).is_ok() => NetworkMode::Cni,
            NetworkMode::Auto => NetworkMode::Bridge,
            mode => mode,
        };
        let backend = match mode {
            NetworkMode::None => {
                let why = "network.mode is \"none\": pods get only a loopback interface".to_owned();
                return Self { backend: RwLock::new(Backend::None), not_ready: Mutex::new(Some(why)) };
            }
            NetworkMode::Cni => CniNetwork::new(cni_config).map(Backend::Cni),
            NetworkMode::Bridge | NetworkMode::Auto => {
                bridge_network(config, &subnets).map(|b| Backend::Bridge(Box::new(b)))
            }
        };
        match backend {
            Ok(backend) => {
                tracing::info!(mode = ?mode, "pod network");
                Self { backend: RwLock::new(backend), not_ready: Mutex::new(Some("not set up yet".into())) }
            }
            Err(e) => {
                Self { backend: RwLock::new(Backend::None), not_ready: Mutex::new(Some(crate::error::chain(&e))) }
            }
        }
    }

    /// kubelet's pod CIDR(s) (UpdateRuntimeConfig) become the built-in
    /// network's subnets when `network.use_kubelet_pod_cidr` is on: at once
    /// when no pod holds an address, else at the next start.
    pub fn use_pod_cidrs(&self, config: &Config, cidrs: &[String]) {
        if !config.network.use_kubelet_pod_cidr {
            return;
        }
        let mut backend = self.backend.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Backend::Bridge(current) = &*backend else { return };
        let new = match bridge_network(config, cidrs) {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "pod CIDR from kubelet not usable by the built-in network");
                return;
            }
        };
        if new.config().subnets == current.config().subnets {
            return;
        }
        match current.has_attached_pods() {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(pod_cidr = %cidrs.join(","), "pods hold addresses of the current subnets: the pod CIDR from kubelet takes effect at the next start");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot tell whether pods hold addresses; keeping the subnets");
                return;
            }
        }
        let old = current.config().subnets.clone();
        let result = new.restore(&[]).and_then(|()| new.retire_subnets(&old));
        if let Err(e) = &result {
            tracing::warn!(error = %crate::error::chain(e), "switching the pod network to kubelet's pod CIDR failed");
        } else {
            tracing::info!(pod_cidr = %cidrs.join(","), "the built-in network now allocates from kubelet's pod CIDR");
        }
        self.set_ready(result.as_ref().err());
        *backend = Backend::Bridge(Box::new(new));
    }

    /// Puts back the bridge and crius's nftables table when something else
    /// removed them (a firewall reload flushes tables); run periodically.
    pub fn resync(&self) {
        let Backend::Bridge(bridge) = &*self.backend() else { return };
        match bridge.resync() {
            Ok(true) => tracing::warn!("crius's nftables table was missing (a firewall reload?); loaded it again"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "pod network resync failed"),
        }
    }

    fn backend(&self) -> RwLockReadGuard<'_, Backend> {
        self.backend.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets up the network for the pods that are attached and removes what
    /// belonged to pods that are not (after a crash).
    pub fn restore(&self, pods: &[AttachedPod]) {
        let result = match &*self.backend() {
            Backend::None => return,
            Backend::Bridge(bridge) => bridge.restore(pods),
            Backend::Cni(cni) => cni.restore(&pods.iter().map(|p| p.id.clone()).collect::<HashSet<_>>()),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %crate::error::chain(e), "pod network is not ready");
        }
        self.set_ready(result.as_ref().err());
    }

    /// `None` when pods get a network; else why not. In CNI mode this
    /// follows the conf dir: a config that appears or breaks counts at once.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Backend::Cni(cni) = &*self.backend() {
            return cni.check_ready().err().map(|e| crate::error::chain(&e));
        }
        self.not_ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Connects a pod's network namespace; returns its addresses (none
    /// without a network).
    pub fn attach(
        &self,
        pod: &CniPod<'_>,
        netns: &Path,
        ports: &[PortMapping],
        dns: &CniDns,
    ) -> Result<Vec<IpAddr>, AgentError> {
        let result = match &*self.backend() {
            Backend::None => return Ok(Vec::new()),
            Backend::Bridge(bridge) => bridge.attach(pod.id, netns, ports),
            Backend::Cni(cni) => cni.attach(pod, netns, ports, dns),
        };
        match &result {
            Ok(_) => self.set_ready(None),
            Err(e) if !e.is_invalid_input() => self.set_ready(Some(e)),
            Err(_) => {}
        }
        Ok(result?)
    }

    /// Disconnects a pod at StopPodSandbox: like [`PodNetwork::detach`],
    /// but the built-in network finishes removing the veth in the background.
    pub fn detach_soon(&self, pod_id: &str) -> Result<(), AgentError> {
        if let Backend::Bridge(bridge) = &*self.backend() {
            return Ok(bridge.detach_soon(pod_id)?);
        }
        self.detach(pod_id)
    }

    /// Disconnects a pod; idempotent.
    pub fn detach(&self, pod_id: &str) -> Result<(), AgentError> {
        match &*self.backend() {
            Backend::None => Ok(()),
            Backend::Bridge(bridge) => Ok(bridge.detach(pod_id)?),
            Backend::Cni(cni) => Ok(cni.detach(pod_id)?),
        }
    }

    fn set_ready(&self, error: Option<&crius_network::NetError>) {
        *self.not_ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            error.map(|e| crate::error::chain(e));
    }
}

/// The built-in network on `subnets`.
fn bridge_network(config: &Config, subnets: &[String]) -> Result<BridgeNetwork, crius_network::NetError> {
    let net = &config.network;
    let subnets = subnets
        .iter()
        .map(|s| s.trim().parse().map_err(|e| crius_network::NetError::Config(format!("subnet {s:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    BridgeNetwork::new(BridgeConfig {
        bridge: net.bridge.clone(),
        subnets,
        mtu: net.mtu,
        masquerade: net.masquerade,
        ipam_dir: config.root.join("network").join(&net.bridge),
        host_ns: None,
    })
}

/// CRI port mappings with a host port, as the network takes them. Mappings
/// without a host port only document the container port and need no rule.
pub fn host_port_mappings(mappings: &[CriPortMapping]) -> Result<Vec<PortMapping>, AgentError> {
    let invalid = |reason: String| AgentError::InvalidArgument { field: "config.port_mappings", reason };
    let mut out = Vec::new();
    for m in mappings.iter().filter(|m| m.host_port != 0) {
        let port = |value: i32, what: &str| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(format!("{what} {value} is not a port number (1-65535)")))
        };
        let protocol = match CriProtocol::try_from(m.protocol) {
            Ok(CriProtocol::Tcp) => Protocol::Tcp,
            Ok(CriProtocol::Udp) => Protocol::Udp,
            Ok(CriProtocol::Sctp) => Protocol::Sctp,
            Err(_) => return Err(invalid(format!("unknown protocol {}", m.protocol))),
        };
        let host_ip = match m.host_ip.as_str() {
            "" => None,
            text => {
                let ip: IpAddr = text.parse().map_err(|_| invalid(format!("host_ip {text:?} is not an IP address")))?;
                Some(ip).filter(|ip| !ip.is_unspecified())
            }
        };
        out.push(PortMapping {
            protocol,
            host_ip,
            host_port: port(m.host_port, "host_port")?,
            container_port: port(m.container_port, "container_port")?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(protocol: CriProtocol, host_ip: &str, host_port: i32, container_port: i32) -> CriPortMapping {
        CriPortMapping { protocol: protocol as i32, host_ip: host_ip.into(), host_port, container_port }
    }

    #[test]
    fn only_mappings_with_a_host_port_become_rules() {
        let got = host_port_mappings(&[
            cri(CriProtocol::Tcp, "", 0, 80),
            cri(CriProtocol::Udp, "0.0.0.0", 5353, 53),
            cri(CriProtocol::Tcp, "192.168.0.9", 8080, 80),
        ])
        .expect("valid");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], PortMapping { protocol: Protocol::Udp, host_ip: None, host_port: 5353, container_port: 53 });
        assert_eq!(got[1].host_ip, Some("192.168.0.9".parse().expect("ip")));
    }

    #[test]
    fn bad_mappings_are_invalid_arguments() {
        for bad in [
            cri(CriProtocol::Tcp, "", 70000, 80),
            cri(CriProtocol::Tcp, "", 8080, 0),
            cri(CriProtocol::Tcp, "not-an-ip", 8080, 80),
            CriPortMapping { protocol: 9, host_ip: String::new(), host_port: 1, container_port: 1 },
        ] {
            let err = host_port_mappings(&[bad]).expect_err("refused");
            assert!(matches!(err, AgentError::InvalidArgument { .. }), "{err}");
        }
    }
}
