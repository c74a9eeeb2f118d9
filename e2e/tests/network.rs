//! The built-in pod network through CRI: pod IPs in PodSandboxStatus, the pod
//! reachable from the node and through a hostPort on 127.0.0.1, surviving a
//! SIGKILL of crius, and nothing left (veth, address, NAT rule) after removal.
//!
//! Each test uses its own bridge and /24 so that tests, and a crius already
//! running on the node, never meet; the bridge and the nftables table are
//! removed at the end. Needs root and `nft`; skips otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use cri_api::v1::{RemovePodSandboxRequest, StatusRequest, StopPodSandboxRequest};
use crius_e2e::pod_net::{can_run, fetch, pod, pod_ip, serve_in_pod, walk_files};
use crius_e2e::{Crius, CriusDirs, TEST_CONFIG};
use nix::sys::signal::Signal;

/// A bridge name, subnet and host port of this test process, and removal of
/// the bridge and table when the test ends.
struct TestNetwork {
    bridge: String,
    subnet_prefix: String,
    host_port: u16,
    config: PathBuf,
}

impl TestNetwork {
    fn new(dirs: &CriusDirs, n: u32) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let bridge = format!("cre{}x{n}", pid % 100_000);
        let subnet_prefix = format!("10.{}.{}", 200 + (pid % 50), (pid / 50 % 200) + n);
        let host_port = 20_000 + u16::try_from(pid % 20_000)? + u16::try_from(n)?;
        let config = dirs.temp.path().join("network.toml");
        let text = TEST_CONFIG.replace(
            "mode = \"none\"",
            &format!("mode = \"bridge\"\nbridge = \"{bridge}\"\nsubnets = [\"{subnet_prefix}.0/24\"]"),
        );
        std::fs::write(&config, text)?;
        Ok(Self { bridge, subnet_prefix, host_port, config })
    }

    fn args(&self) -> [&str; 2] {
        ["--config", self.config.to_str().unwrap_or_default()]
    }

    /// Host-side veths attached to the bridge.
    fn veths(&self) -> Vec<String> {
        crius_network::rtnl::bridge_ports(None, &self.bridge, "cr").unwrap_or_default()
    }

    fn table(&self) -> String {
        let out = Command::new("nft").args(["list", "table", "inet", &self.bridge]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.bridge]).status();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

#[tokio::test]
async fn pods_get_addresses_and_host_ports_through_a_crius_restart_and_leave_nothing() -> anyhow::Result<()> {
    if !can_run("pods_get_addresses_and_host_ports_through_a_crius_restart_and_leave_nothing") {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let net = TestNetwork::new(&dirs, 0)?;
    let crius = Crius::start(&dirs, &net.args()).await?;
    let mut rt = crius.runtime().await?;
    let conditions = rt.status(StatusRequest { verbose: false }).await?.into_inner().status.unwrap_or_default();
    let ready = conditions.conditions.iter().find(|c| c.r#type == "NetworkReady").map(|c| c.status);
    assert_eq!(ready, Some(true), "{conditions:?}\n{}", crius.log_text());

    let web = rt.run_pod_sandbox(pod("web", net.host_port)).await?.into_inner().pod_sandbox_id;
    let ip = pod_ip(&mut rt, &web).await?;
    assert!(ip.to_string().starts_with(&format!("{}.", net.subnet_prefix)), "{ip}");
    serve_in_pod(&dirs, &web, "web says hi")?;
    assert_eq!(fetch(SocketAddr::new(ip, 80))?, "web says hi");
    let local = SocketAddr::from(([127, 0, 0, 1], net.host_port));
    assert_eq!(fetch(local)?, "web says hi");

    // A second pod asking for the same host port is refused and leaves nothing.
    let err = rt.run_pod_sandbox(pod("clash", net.host_port)).await.expect_err("host port taken");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(net.veths().len(), 1);

    // crius dies; the pod keeps its network, and a new crius keeps its rules.
    drop(rt);
    crius.signal(Signal::SIGKILL)?;
    drop(crius);
    assert_eq!(fetch(local)?, "web says hi");
    let crius = Crius::start(&dirs, &net.args()).await?;
    let mut rt = crius.runtime().await?;
    assert_eq!(fetch(local)?, "web says hi");
    assert_eq!(pod_ip(&mut rt, &web).await?, ip);

    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: web.clone() }).await?;
    assert!(fetch(local).is_err(), "the host port answers after StopPodSandbox");
    for _ in 0..2 {
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: web.clone() }).await?;
    }
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(!net.table().contains("dnat ip to"), "{}", net.table());
    let ipam = dirs.root.join("network").join(&net.bridge);
    let allocated: Vec<_> = walk_files(&ipam).into_iter().filter(|p| !p.ends_with("last_reserved")).collect();
    assert!(allocated.is_empty(), "{allocated:?}");
    crius.signal(Signal::SIGTERM)?;
    Ok(())
}

#[tokio::test]
async fn kubelet_pod_cidr_replaces_the_configured_subnet() -> anyhow::Result<()> {
    if !can_run("kubelet_pod_cidr_replaces_the_configured_subnet") {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let net = TestNetwork::new(&dirs, 1)?;
    let crius = Crius::start(&dirs, &net.args()).await?;
    let mut rt = crius.runtime().await?;
    let pid = std::process::id();
    let kubelet_prefix = format!("10.{}.{}", 100 + (pid % 50), pid / 50 % 250);
    let request = cri_api::v1::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri_api::v1::RuntimeConfig {
            network_config: Some(cri_api::v1::NetworkConfig { pod_cidr: format!("{kubelet_prefix}.0/24") }),
        }),
    };
    rt.update_runtime_config(request).await?;
    let id = rt.run_pod_sandbox(pod("cidr", net.host_port)).await?.into_inner().pod_sandbox_id;
    let ip = pod_ip(&mut rt, &id).await?;
    assert!(ip.to_string().starts_with(&format!("{kubelet_prefix}.")), "{ip} not in kubelet's pod CIDR");
    let bridge = Command::new("ip").args(["-o", "addr", "show", "dev", &net.bridge]).output()?;
    let addresses = String::from_utf8_lossy(&bridge.stdout).into_owned();
    assert!(addresses.contains(&format!("{kubelet_prefix}.1/24")), "{addresses}");
    assert!(!addresses.contains(&format!("{}.1/24", net.subnet_prefix)), "old gateway left: {addresses}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    Ok(())
}

#[tokio::test]
async fn dual_stack_pods_report_both_addresses() -> anyhow::Result<()> {
    if !can_run("dual_stack_pods_report_both_addresses") {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let net = TestNetwork::new(&dirs, 2)?;
    // The same network, plus an IPv6 subnet of its own.
    let v6 = format!("fd00:{:x}::/64", std::process::id() % 0xffff);
    let text = std::fs::read_to_string(&net.config)?
        .replace(&format!("{}.0/24\"]", net.subnet_prefix), &format!("{}.0/24\", \"{v6}\"]", net.subnet_prefix));
    std::fs::write(&net.config, text)?;
    let crius = Crius::start(&dirs, &net.args()).await?;
    let mut rt = crius.runtime().await?;
    let id = rt.run_pod_sandbox(pod("dual", net.host_port)).await?.into_inner().pod_sandbox_id;
    let request = cri_api::v1::PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false };
    let status = rt.pod_sandbox_status(request).await?.into_inner().status.unwrap_or_default();
    let network = status.network.unwrap_or_default();
    assert!(network.ip.starts_with(&format!("{}.", net.subnet_prefix)), "IPv4 first: {network:?}");
    let additional: Vec<std::net::IpAddr> = network.additional_ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect();
    assert!(additional.len() == 1 && additional[0].is_ipv6(), "{network:?}");
    serve_in_pod(&dirs, &id, "over IPv6")?;
    assert_eq!(fetch(SocketAddr::new(additional[0], 80))?, "over IPv6");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    Ok(())
}
