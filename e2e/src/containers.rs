//! Pods with containers for the e2e tests: a pod config with a log
//! directory, and the create / status / wait steps every container test
//! takes.

use std::path::Path;
use std::time::{Duration, Instant};

use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::count_processes;

/// A pod `name` (namespace `e2e`) whose containers log under `logs`, each
/// with its own PID namespace (kubelet's default).
pub fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        // kubelet's default: each container has its own PID namespace.
        linux: Some(cri_api::v1::LinuxPodSandboxConfig {
            security_context: Some(cri_api::v1::LinuxSandboxSecurityContext {
                namespace_options: Some(cri_api::v1::NamespaceOption {
                    pid: cri_api::v1::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// Runs the pod; its id.
pub async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, config: &PodSandboxConfig) -> anyhow::Result<String> {
    let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    Ok(rt.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
}

/// Creates container `name` running `sh -c script`, logging to `<name>.log`.
pub async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_config: &PodSandboxConfig,
    image: &str,
    name: &str,
    script: &str,
) -> anyhow::Result<String> {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..ImageSpec::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: [("name".to_owned(), name.to_owned())].into(),
        ..ContainerConfig::default()
    };
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    Ok(rt.create_container(request).await?.into_inner().container_id)
}

/// The container's status.
pub async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> anyhow::Result<cri_api::v1::ContainerStatus> {
    let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
    Ok(rt.container_status(request).await?.into_inner().status.expect("status"))
}

/// Polls until the container is in `state`; its status then.
pub async fn wait_state(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    state: ContainerState,
    timeout: Duration,
) -> anyhow::Result<cri_api::v1::ContainerStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = status(rt, id).await?;
        if status.state == state as i32 {
            return Ok(status);
        }
        anyhow::ensure!(Instant::now() < deadline, "container {id} never reached {state:?}: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(stream, tag, content)` of every CRI log line.
pub fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (_time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
            Some((stream.to_owned(), tag.to_owned(), parts.next().unwrap_or("").to_owned()))
        })
        .collect()
}

/// Monitor, init and exec processes of the crius using `run_root`.
pub fn monitors_of(run_root: &Path) -> usize {
    let needle = run_root.display().to_string();
    count_processes(|cmdline| cmdline.contains("internal") && cmdline.contains(&needle))
}
