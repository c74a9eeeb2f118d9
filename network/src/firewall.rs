//! NAT for the built-in network, in nftables: masquerade for traffic that
//! leaves the node, and hostPort DNAT (also from the node itself through
//! 127.0.0.1). crius owns one table, `inet <bridge name>`, and nothing else:
//! every change re-renders the whole table from crius's own state and loads
//! it in one `nft -f` transaction, so the table is always complete, a crash
//! cannot leave half a change, and no other table or rule is touched.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::NetError;
use crate::ipam::Cidr;
use crate::netns;

/// A transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One hostPort mapping of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Protocol.
    pub protocol: Protocol,
    /// The node address it listens on; `None`: every address of the node.
    pub host_ip: Option<IpAddr>,
    /// The node port.
    pub host_port: u16,
    /// The port inside the pod.
    pub container_port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{ip}:")?,
            None => f.write_str("*:")?,
        }
        write!(f, "{}/{} -> {}", self.host_port, self.protocol.keyword(), self.container_port)
    }
}

impl PortMapping {
    /// Whether two mappings would claim the same node port.
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// A pod's part of the table: its addresses and its hostPorts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodPorts {
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// Its hostPort mappings.
    pub ports: Vec<PortMapping>,
}

/// The nftables side of one bridge network.
#[derive(Debug, Clone)]
pub struct Firewall {
    /// Bridge name; also the table name.
    pub bridge: String,
    /// Pod subnets.
    pub subnets: Vec<Cidr>,
    /// Whether traffic from pods to outside the subnets is masqueraded.
    pub masquerade: bool,
    /// The namespace the rules go in (`None`: crius's own).
    pub host_ns: Option<PathBuf>,
}

impl Firewall {
    /// The whole table for these pods, as an `nft -f` script that replaces
    /// the previous one atomically.
    pub fn render(&self, pods: &BTreeMap<String, PodPorts>) -> String {
        let t = &self.bridge;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            let _ = write!(
                s,
                "\tchain {chain} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\
                 \t\tfib daddr type local jump hostports\n\t}}\n"
            );
        }
        s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n");
        // hostPort traffic from the node itself keeps 127.0.0.1 as its source
        // unless rewritten, and the pod could not answer it.
        s.push_str("\t\tct status dnat ip saddr 127.0.0.0/8 masquerade\n");
        for subnet in &self.subnets {
            let family = family(subnet.addr());
            // A pod reaching a hostPort that lands on a pod of this bridge.
            let _ = writeln!(s, "\t\tct status dnat oifname \"{t}\" {family} saddr {subnet} masquerade");
            if self.masquerade {
                let _ = writeln!(s, "\t\t{family} saddr {subnet} {family} daddr != {subnet} masquerade");
            }
        }
        s.push_str("\t}\n\tchain hostports {\n");
        for (pod, entry) in pods {
            for mapping in &entry.ports {
                for ip in entry.ips.iter().filter(|ip| mapping.host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4())) {
                    let family = family(*ip);
                    let daddr = match mapping.host_ip {
                        Some(h) => format!("{family} daddr {h}"),
                        None => format!("meta nfproto {}", if ip.is_ipv4() { "ipv4" } else { "ipv6" }),
                    };
                    let target = match ip {
                        IpAddr::V4(v4) => format!("{v4}:{}", mapping.container_port),
                        IpAddr::V6(v6) => format!("[{v6}]:{}", mapping.container_port),
                    };
                    let _ = writeln!(
                        s,
                        "\t\t{daddr} {} dport {} dnat {family} to {target} comment \"pod {pod}\"",
                        mapping.protocol.keyword(),
                        mapping.host_port
                    );
                }
            }
        }
        s.push_str("\t}\n}\n");
        s
    }

    /// Loads the table for these pods.
    pub fn apply(&self, pods: &BTreeMap<String, PodPorts>) -> Result<(), NetError> {
        nft(self.host_ns.as_deref(), &self.render(pods))
    }

    /// Whether crius's table is loaded (a firewall reload may have flushed it).
    pub fn is_loaded(&self) -> Result<bool, NetError> {
        let binary = nft_binary();
        let table = self.bridge.clone();
        let status = netns::run_in(self.host_ns.as_deref(), || {
            Command::new(&binary)
                .args(["list", "table", "inet", &table])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        })?
        .map_err(|e| NetError::Firewall(format!("run {}: {e}", binary.display())))?;
        Ok(status.success())
    }

    /// Removes crius's table (nothing else).
    pub fn remove(&self) -> Result<(), NetError> {
        let t = &self.bridge;
        nft(self.host_ns.as_deref(), &format!("table inet {t}\ndelete table inet {t}\n"))
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

/// The `nft` binary: the usual sbin paths first (root's PATH may lack them).
fn nft_binary() -> PathBuf {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

/// Runs `nft -f -` with `script` inside `ns`.
fn nft(ns: Option<&Path>, script: &str) -> Result<(), NetError> {
    let binary = nft_binary();
    let output = netns::run_in(ns, || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(&binary)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        child.wait_with_output()
    })?
    .map_err(|e| NetError::Firewall(format!("run {}: {e} (install the nftables package)", binary.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(NetError::Firewall(format!(
        "{} -f - failed ({}): {}",
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall(masquerade: bool) -> Firewall {
        Firewall {
            bridge: "crius0".into(),
            subnets: vec!["10.89.0.0/16".parse().expect("cidr"), "fd89::/64".parse().expect("cidr")],
            masquerade,
            host_ns: None,
        }
    }

    fn mapping(host_ip: Option<&str>, host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            protocol: Protocol::Tcp,
            host_ip: host_ip.map(|h| h.parse().expect("ip")),
            host_port,
            container_port,
        }
    }

    #[test]
    fn the_script_replaces_only_crius_table() {
        let script = firewall(true).render(&BTreeMap::new());
        assert!(script.starts_with("table inet crius0\ndelete table inet crius0\ntable inet crius0 {"), "{script}");
        assert!(script.contains("ip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade"), "{script}");
        assert!(script.contains("ip6 saddr fd89::/64 ip6 daddr != fd89::/64 masquerade"), "{script}");
        assert!(!firewall(false).render(&BTreeMap::new()).contains("daddr != 10.89.0.0/16"));
    }

    #[test]
    fn host_ports_map_to_each_pod_address_of_the_matching_family() {
        let mut pods = BTreeMap::new();
        pods.insert(
            "pod1".to_owned(),
            PodPorts {
                ips: vec!["10.89.0.2".parse().expect("ip"), "fd89::2".parse().expect("ip")],
                ports: vec![mapping(None, 8080, 80), mapping(Some("192.168.1.5"), 53, 5353)],
            },
        );
        let script = firewall(true).render(&pods);
        assert!(
            script.contains("meta nfproto ipv4 tcp dport 8080 dnat ip to 10.89.0.2:80 comment \"pod pod1\""),
            "{script}"
        );
        assert!(script.contains("meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd89::2]:80"), "{script}");
        assert!(script.contains("ip daddr 192.168.1.5 tcp dport 53 dnat ip to 10.89.0.2:5353"), "{script}");
        assert!(!script.contains("dnat ip6 to [fd89::2]:5353"), "{script}");
    }

    #[test]
    fn overlapping_host_ports_are_detected() {
        assert!(mapping(None, 80, 1).overlaps(&mapping(Some("10.0.0.1"), 80, 2)));
        assert!(mapping(Some("10.0.0.1"), 80, 1).overlaps(&mapping(Some("10.0.0.1"), 80, 2)));
        assert!(!mapping(Some("10.0.0.1"), 80, 1).overlaps(&mapping(Some("10.0.0.2"), 80, 2)));
        assert!(!mapping(None, 80, 1).overlaps(&mapping(None, 81, 1)));
        let udp = PortMapping { protocol: Protocol::Udp, ..mapping(None, 80, 1) };
        assert!(!udp.overlaps(&mapping(None, 80, 1)));
    }
}
