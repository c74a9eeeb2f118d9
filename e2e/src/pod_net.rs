//! Helpers for pod network tests: a pod with a hostPort, its IP, a server
//! inside its network namespace, a client on the node.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol, RunPodSandboxRequest,
};
use crius_network::netns::run_in;
use tonic::transport::Channel;

use crate::CriusDirs;

/// Whether the test can run: root and `nft`; skips (`testkit`) otherwise.
pub fn can_run(name: &str) -> bool {
    testkit::require_root(name) && testkit::require_tool(name, "nft", "nftables")
}

/// A RunPodSandbox request for a pod mapping `host_port` to its port 80.
pub fn pod(name: &str, host_port: u16) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e-net".into(),
                attempt: 0,
            }),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port: i32::from(host_port),
                host_ip: String::new(),
            }],
            ..PodSandboxConfig::default()
        }),
        runtime_handler: String::new(),
    }
}

/// The pod's primary IP from PodSandboxStatus.
pub async fn pod_ip(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Result<IpAddr> {
    let status = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false }).await?;
    let network = status.into_inner().status.and_then(|s| s.network).unwrap_or_default();
    Ok(network.ip.parse()?)
}

/// Serves a greeting on port 80 (IPv4 and IPv6) inside the pod's network namespace.
pub fn serve_in_pod(dirs: &CriusDirs, id: &str, greeting: &'static str) -> Result<()> {
    let netns = dirs.run_root.join("pods").join(id).join("ns/net");
    let listener = run_in(Some(&netns), || TcpListener::bind("[::]:80"))??;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(greeting.as_bytes());
        }
    });
    Ok(())
}

/// Connects from the node and reads what the server says.
pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Every file below `dir`.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk_files(&path)) } else { out.push(path) }
    }
    out
}
