//! Pods that share the node's network, PID and IPC namespaces
//! (hostNetwork / hostPID / hostIPC) against pods with their own: what a
//! container sees, checked by the namespace ids of `/proc/self/ns/*`.

use cri_api::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest,
};
use crius_e2e::images::busybox_env;

fn pod(name: &str, mode: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: mode as i32,
                    pid: mode as i32,
                    ipc: mode as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..crius_e2e::pod_config(name)
    }
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).map(|p| p.display().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn host_namespaces_are_shared_only_when_asked() -> anyhow::Result<()> {
    let Some((env, image)) = busybox_env("host_namespaces_are_shared_only_when_asked").await? else { return Ok(()) };
    let mut rt = env.crius.runtime().await?;
    for (name, mode, shared) in [("host", NamespaceMode::Node, true), ("own", NamespaceMode::Pod, false)] {
        let config = pod(name, mode);
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let pod_id = rt.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "c".into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.clone(), ..ImageSpec::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 3600".into()],
            ..ContainerConfig::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        };
        let id = rt.create_container(request).await?.into_inner().container_id;
        rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
        for kind in ["net", "pid", "ipc", "uts"] {
            let cmd = vec!["/bin/sh".into(), "-c".into(), format!("readlink /proc/self/ns/{kind}")];
            let out = rt.exec_sync(ExecSyncRequest { container_id: id.clone(), cmd, timeout: 10 }).await?.into_inner();
            assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
            let inside = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // hostNetwork also means the node's hostname (UTS), as in kubelet.
            assert_eq!(inside == host_ns(kind), shared, "{name} pod, {kind}: {inside} vs node {}", host_ns(kind));
        }
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id }).await?;
    }
    Ok(())
}
