//! Pod sandboxes: lifecycle, retries, namespaces, and nothing left behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cri_api::v1::{
    DnsConfig, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxState, PodSandboxStateValue, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};
use crius_e2e::{Crius, CriusDirs, mounts_under};

fn config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["e2e.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: [("app".to_owned(), name.to_owned())].into(),
        linux: Some(LinuxPodSandboxConfig {
            sysctls: [
                ("net.ipv4.ip_unprivileged_port_start".to_owned(), "0".to_owned()),
                ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
            ]
            .into(),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

fn run(name: &str) -> RunPodSandboxRequest {
    RunPodSandboxRequest { config: Some(config(name)), runtime_handler: String::new() }
}

#[tokio::test]
async fn pod_lifecycle_and_nothing_left_behind() -> anyhow::Result<()> {
    if !testkit::require_root("pod_lifecycle_and_nothing_left_behind") {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let mut rt = crius.runtime().await?;

    let id = rt.run_pod_sandbox(run("web")).await?.into_inner().pod_sandbox_id;
    assert_eq!(id.len(), 64);
    let retried = rt.run_pod_sandbox(run("web")).await?.into_inner().pod_sandbox_id;
    assert_eq!(retried, id, "a retry with the same metadata returns the same sandbox");

    let status = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false }).await?;
    let status = status.into_inner().status.expect("status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.expect("metadata").name, "web");
    assert_eq!(status.labels.get("app").map(String::as_str), Some("web"));

    // Pinned namespaces (nsfs bind mounts) and the pod's files.
    let pod_dir = dirs.run_root.join("pods").join(&id);
    let host_net = std::fs::metadata("/proc/self/ns/net")?.ino();
    let pod_net = std::fs::metadata(pod_dir.join("ns/net"))?.ino();
    assert_ne!(pod_net, host_net, "the pod has its own network namespace");
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf"))?;
    assert_eq!(resolv, "nameserver 10.96.0.10\nsearch e2e.svc.cluster.local\noptions ndots:5\n");
    assert_eq!(std::fs::read_to_string(pod_dir.join("hostname"))?, "web-host\n");
    assert!(mounts_under(&pod_dir).len() >= 4, "net, ipc, uts and shm are mounted");
    let in_pod = |ns: &str, file: &str| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--{ns}={}", pod_dir.join("ns").join(ns).display()))
            .args(["cat", file])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(in_pod("net", "/proc/sys/net/ipv4/ip_unprivileged_port_start"), "0", "pod sysctl applied");
    assert_eq!(in_pod("ipc", "/proc/sys/kernel/shm_rmid_forced"), "1", "pod sysctl applied");
    assert_eq!(in_pod("uts", "/proc/sys/kernel/hostname"), "web-host");
    let lo = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod_dir.join("ns/net").display()))
        .args(["ip", "-o", "link", "show", "lo"])
        .output()?;
    assert!(String::from_utf8_lossy(&lo.stdout).contains(",UP"), "lo is up in the pod: {lo:?}");

    let other = rt.run_pod_sandbox(run("db")).await?.into_inner().pod_sandbox_id;
    let list = |filter: PodSandboxFilter| ListPodSandboxRequest { filter: Some(filter) };
    let all = rt.list_pod_sandbox(list(PodSandboxFilter::default())).await?.into_inner().items;
    assert_eq!(all.len(), 2);
    let by_label = PodSandboxFilter { label_selector: [("app".into(), "db".into())].into(), ..Default::default() };
    let items = rt.list_pod_sandbox(list(by_label)).await?.into_inner().items;
    assert_eq!(items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [other.as_str()]);
    let by_prefix = PodSandboxFilter { id: id[..12].to_owned(), ..Default::default() };
    assert_eq!(rt.list_pod_sandbox(list(by_prefix)).await?.into_inner().items.len(), 1);

    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
    let not_ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxNotready as i32 }),
        ..Default::default()
    };
    let items = rt.list_pod_sandbox(list(not_ready)).await?.into_inner().items;
    assert_eq!(items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    for pod in [&id, &other] {
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    }
    assert!(rt.list_pod_sandbox(list(PodSandboxFilter::default())).await?.into_inner().items.is_empty());
    assert!(mounts_under(&dirs.run_root).is_empty(), "no namespace or shm mount left");
    assert!(!pod_dir.exists());
    for hierarchy in ["memory", "pids", "cpu"] {
        let cgroup = Path::new("/sys/fs/cgroup").join(hierarchy).join("crius").join(format!("pod-{id}"));
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    }
    let err = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false }).await;
    assert_eq!(err.expect_err("removed").code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn bad_pod_requests_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let mut rt = crius.runtime().await?;
    let mut nameless = config("x");
    nameless.metadata.as_mut().expect("metadata").name.clear();
    let err = rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(nameless), runtime_handler: String::new() }).await;
    let err = err.expect_err("no name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("config.metadata.name"), "{}", err.message());
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config("x")), runtime_handler: "kata".into() })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(rt.list_pod_sandbox(ListPodSandboxRequest::default()).await?.into_inner().items.is_empty());
    assert!(!dirs.run_root.join("pods").exists() || std::fs::read_dir(dirs.run_root.join("pods"))?.next().is_none());
    // Stopping and removing unknown pods is not an error (kubelet retries them).
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: "f".repeat(64) }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: "f".repeat(64) }).await?;
    Ok(())
}

#[tokio::test]
async fn pods_survive_a_crius_sigkill() -> anyhow::Result<()> {
    if !testkit::require_root("pods_survive_a_crius_sigkill") {
        return Ok(());
    }
    let dirs = CriusDirs::new()?;
    let mut first = Crius::start(&dirs, &[]).await?;
    let id = first.runtime().await?.run_pod_sandbox(run("keep")).await?.into_inner().pod_sandbox_id;
    first.signal(nix::sys::signal::Signal::SIGKILL)?;
    first.wait_exit(std::time::Duration::from_secs(20)).await?;

    let second = Crius::start(&dirs, &[]).await?;
    let mut rt = second.runtime().await?;
    let status = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false }).await?;
    assert_eq!(status.into_inner().status.expect("status").state, PodSandboxState::SandboxReady as i32);
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    assert!(mounts_under(&dirs.run_root).is_empty());
    Ok(())
}
