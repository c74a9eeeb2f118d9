//! Hosts whose `iptables` FORWARD policy is DROP (Docker sets it) would drop
//! every pod packet the node routes. crius's own nftables table cannot
//! override a drop in another table, so where the policy is DROP crius adds
//! two rules of its own to that chain — accept what comes from its bridge,
//! and replies going to it — marked with a comment naming the bridge, and
//! removes exactly those. Where the policy is ACCEPT, nothing is added.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::NetError;
use crate::netns;

/// The accept rules for `bridge`, as iptables arguments after the chain.
fn rules(bridge: &str) -> [Vec<String>; 2] {
    let comment = format!("crius {bridge}");
    let tail = |head: &[&str]| -> Vec<String> {
        let tail = ["-m", "comment", "--comment", comment.as_str(), "-j", "ACCEPT"];
        head.iter().chain(tail.iter()).map(|s| (*s).to_owned()).collect()
    };
    [tail(&["-i", bridge]), tail(&["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"])]
}

fn binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// Runs one iptables command in `ns`; `Ok(false)` when it exits non-zero.
fn run(ns: Option<&Path>, tool: &Path, args: &[String]) -> Result<bool, NetError> {
    let status = netns::run_in(ns, || {
        Command::new(tool)
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    })?
    .map_err(|e| NetError::Firewall(format!("run {}: {e}", tool.display())))?;
    Ok(status.success())
}

fn policy_is_drop(ns: Option<&Path>, tool: &Path) -> Result<bool, NetError> {
    let output = netns::run_in(ns, || {
        Command::new(tool).args(["-w", "-S", "FORWARD"]).stdin(Stdio::null()).stderr(Stdio::null()).output()
    })?
    .map_err(|e| NetError::Firewall(format!("run {}: {e}", tool.display())))?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().any(|l| l.trim() == "-P FORWARD DROP"))
}

/// Adds crius's accept rules where the FORWARD policy is DROP (IPv4 with
/// `iptables`, IPv6 with `ip6tables` when `ipv6`). No iptables: nothing to do.
pub fn open(ns: Option<&Path>, bridge: &str, ipv4: bool, ipv6: bool) -> Result<(), NetError> {
    for (wanted, tool) in [(ipv4, "iptables"), (ipv6, "ip6tables")] {
        let Some(tool) = binary(tool).filter(|_| wanted) else { continue };
        if !policy_is_drop(ns, &tool)? {
            continue;
        }
        for rule in rules(bridge) {
            let check = [vec!["-C".to_owned(), "FORWARD".to_owned()], rule.clone()].concat();
            if !run(ns, &tool, &check)? {
                let insert = [vec!["-I".to_owned(), "FORWARD".to_owned()], rule].concat();
                if !run(ns, &tool, &insert)? {
                    return Err(NetError::Firewall(format!(
                        "{} could not add crius's FORWARD accept rule",
                        tool.display()
                    )));
                }
                tracing::info!(bridge, tool = %tool.display(), "FORWARD policy is DROP: added crius's accept rule for the pod bridge");
            }
        }
    }
    Ok(())
}

/// Removes crius's accept rules for `bridge` (all copies), nothing else.
pub fn close(ns: Option<&Path>, bridge: &str) -> Result<(), NetError> {
    for tool in ["iptables", "ip6tables"].iter().filter_map(|t| binary(t)) {
        for rule in rules(bridge) {
            let delete = [vec!["-D".to_owned(), "FORWARD".to_owned()], rule].concat();
            while run(ns, &tool, &delete)? {}
        }
    }
    Ok(())
}
