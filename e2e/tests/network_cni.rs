//! CNI mode with Debian's containernetworking-plugins (bridge + host-local +
//! portmap): NetworkReady follows the conf dir, pods get an IP, are reachable
//! from the node and through a hostPort on 127.0.0.1, and DEL after a crius
//! restart leaves no veth and no address. Skips without root, nft or the
//! plugins in /usr/lib/cni.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cri_api::v1::{RemovePodSandboxRequest, StatusRequest};
use crius_e2e::pod_net::{can_run, fetch, pod, pod_ip, serve_in_pod, walk_files};
use crius_e2e::{Crius, CriusDirs};
use nix::sys::signal::Signal;

const PLUGINS: &str = "/usr/lib/cni";

struct CniLab {
    bridge: String,
    subnet_prefix: String,
    host_port: u16,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
    config: PathBuf,
}

impl CniLab {
    fn new(dirs: &CriusDirs) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let bridge = format!("crc{}", pid % 1_000_000);
        let subnet_prefix = format!("10.{}.{}", 150 + (pid % 50), pid / 50 % 250);
        let host_port = 40_000 + u16::try_from(pid % 20_000)?;
        let conf_dir = dirs.temp.path().join("net.d");
        let ipam_dir = dirs.temp.path().join("cni-ipam");
        std::fs::create_dir_all(&conf_dir)?;
        let config = dirs.temp.path().join("cni.toml");
        std::fs::write(
            &config,
            format!(
                "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{PLUGINS}\"]\n",
                conf_dir.display()
            ),
        )?;
        Ok(Self { bridge, subnet_prefix, host_port, conf_dir, ipam_dir, config })
    }

    fn write_conflist(&self) -> anyhow::Result<()> {
        let text = format!(
            r#"{{"cniVersion": "1.0.0", "name": "e2e-cni", "plugins": [
                {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
                  "ipam": {{"type": "host-local", "dataDir": "{ipam}",
                           "ranges": [[{{"subnet": "{prefix}.0/24"}}]]}}}},
                {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}"#,
            bridge = self.bridge,
            ipam = self.ipam_dir.display(),
            prefix = self.subnet_prefix
        );
        std::fs::write(self.conf_dir.join("10-e2e.conflist"), text)?;
        Ok(())
    }
}

impl Drop for CniLab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

async fn network_ready(crius: &Crius) -> anyhow::Result<(bool, String)> {
    let mut rt = crius.runtime().await?;
    let status = rt.status(StatusRequest { verbose: false }).await?.into_inner().status.unwrap_or_default();
    let net = status.conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap_or_default();
    Ok((net.status, net.message))
}

#[tokio::test]
async fn cni_plugins_connect_pods_and_del_works_after_a_restart() -> anyhow::Result<()> {
    let name = "cni_plugins_connect_pods_and_del_works_after_a_restart";
    if !can_run(name)
        || !testkit::require_tool(name, Path::new(PLUGINS).join("portmap"), "containernetworking-plugins")
        || !testkit::require_tool(name, "iptables", "iptables")
    {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let lab = CniLab::new(&dirs)?;
    let args = ["--config", lab.config.to_str().unwrap_or_default()];
    let crius = Crius::start(&dirs, &args).await?;
    let (ready, why) = network_ready(&crius).await?;
    assert!(!ready && why.contains("no valid CNI network config"), "{why}");
    lab.write_conflist()?;
    let (ready, why) = network_ready(&crius).await?;
    assert!(ready, "NetworkReady after the conflist appeared: {why}");

    let mut rt = crius.runtime().await?;
    let id = rt.run_pod_sandbox(pod("cni-web", lab.host_port)).await?.into_inner().pod_sandbox_id;
    let ip = pod_ip(&mut rt, &id).await?;
    assert!(ip.to_string().starts_with(&format!("{}.", lab.subnet_prefix)), "{ip}");
    serve_in_pod(&dirs, &id, "cni pod says hi")?;
    assert_eq!(fetch(SocketAddr::new(ip, 80))?, "cni pod says hi");
    assert_eq!(fetch(SocketAddr::from(([127, 0, 0, 1], lab.host_port)))?, "cni pod says hi");

    // A new crius (after SIGKILL) removes the pod with the cached result.
    drop(rt);
    crius.signal(Signal::SIGKILL)?;
    drop(crius);
    let crius = Crius::start(&dirs, &args).await?;
    let mut rt = crius.runtime().await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    let ports = Command::new("ip").args(["-o", "link", "show", "master", &lab.bridge]).output()?;
    assert!(ports.stdout.is_empty(), "veths left: {}", String::from_utf8_lossy(&ports.stdout));
    let leases: Vec<_> = walk_files(&lab.ipam_dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&lab.subnet_prefix)))
        .collect();
    assert!(leases.is_empty(), "host-local still holds {leases:?}");
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], lab.host_port))).is_err(), "host port still answers");
    Ok(())
}
