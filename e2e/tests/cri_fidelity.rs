//! Behaviour kubelet and its users depend on, as containerd and CRI-O show
//! it: the container's groups and HOSTNAME, ContainerStatus.resources, id
//! prefixes on every RPC, StopContainer abandoned by its client, no stopped
//! pod handed back by RunPodSandbox, and paths from requests that must not
//! escape.

use std::time::Duration;

use cri_api::v1::ContainerState;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    AttachRequest, ContainerConfig, ContainerMetadata, ContainerStatsRequest, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, Mount, PodSandboxStatsRequest, PodSandboxStatusRequest,
    PortForwardRequest, RemoveContainerRequest, RemovePodSandboxRequest, ReopenContainerLogRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use crius_e2e::containers::{create, pod_config, run_pod, status, wait_state};
use tonic::transport::Channel;

async fn exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> anyhow::Result<String> {
    let request = ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout: 10,
    };
    let reply = rt.exec_sync(request).await?.into_inner();
    anyhow::ensure!(
        reply.exit_code == 0,
        "{script}: exit {} {}",
        reply.exit_code,
        String::from_utf8_lossy(&reply.stderr)
    );
    Ok(String::from_utf8_lossy(&reply.stdout).trim().to_owned())
}

fn container(image: &str, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..ImageSpec::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..ContainerConfig::default()
    }
}

#[tokio::test]
async fn groups_hostname_and_resources_are_reported_as_containerd_does() -> anyhow::Result<()> {
    let test = "groups_hostname_and_resources_are_reported_as_containerd_does";
    let Some((env, image)) = crius_e2e::images::busybox_env(test).await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("fidelity", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;

    let root = create(&mut rt, &pod, &pod_config, &image, "root", "sleep 1000").await?;
    rt.start_container(StartContainerRequest { container_id: root.clone() }).await?;
    wait_state(&mut rt, &root, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;
    // The primary group is a supplementary group too (runc, crun, containerd).
    assert_eq!(exec(&mut rt, &root, "id").await?, "uid=0(root) gid=0(root) groups=0(root)");
    assert_eq!(
        exec(&mut rt, &root, "cat /proc/1/environ | tr '\\0' '\\n' | grep ^HOSTNAME=").await?,
        "HOSTNAME=fidelity"
    );

    let mut grouped = container(&image, "grouped", "sleep 1000");
    let resources = LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..LinuxContainerResources::default()
    };
    grouped.linux = Some(LinuxContainerConfig {
        resources: Some(resources.clone()),
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            run_as_group: Some(Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            ..LinuxContainerSecurityContext::default()
        }),
    });
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(grouped),
        sandbox_config: Some(pod_config.clone()),
    };
    let grouped = rt.create_container(request).await?.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id: grouped.clone() }).await?;
    wait_state(&mut rt, &grouped, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;
    assert_eq!(exec(&mut rt, &grouped, "id -G").await?, "2000 3000", "primary gid listed with run_as_group");

    let reported = status(&mut rt, &grouped).await?.resources.and_then(|r| r.linux).expect("resources reported");
    assert_eq!((reported.cpu_shares, reported.memory_limit_in_bytes), (512, 64 << 20), "{reported:?}");
    let updated = LinuxContainerResources { memory_limit_in_bytes: 128 << 20, ..resources };
    let short_id = grouped[..12].to_owned();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: short_id,
        linux: Some(updated),
        ..UpdateContainerResourcesRequest::default()
    })
    .await?;
    let reported = status(&mut rt, &grouped).await?.resources.and_then(|r| r.linux).expect("resources reported");
    assert_eq!(reported.memory_limit_in_bytes, 128 << 20, "UpdateContainerResources is reported: {reported:?}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    Ok(())
}

/// Every RPC that names a pod or a container takes a unique id prefix.
#[tokio::test]
async fn every_rpc_takes_a_unique_id_prefix() -> anyhow::Result<()> {
    let Some((env, image)) = crius_e2e::images::busybox_env("every_rpc_takes_a_unique_id_prefix").await? else {
        return Ok(());
    };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("prefix", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let id = create(&mut rt, &pod, &pod_config, &image, "c", "sleep 1000").await?;
    let (p, c) = (pod[..12].to_owned(), id[..12].to_owned());
    rt.start_container(StartContainerRequest { container_id: c.clone() }).await?;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;
    rt.container_status(ContainerStatusRequest { container_id: c.clone(), verbose: false }).await?;
    let stats = rt.container_stats(ContainerStatsRequest { container_id: c.clone() }).await?.into_inner();
    assert_eq!(stats.stats.and_then(|s| s.attributes).map(|a| a.id), Some(id.clone()));
    let stats = rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: p.clone() }).await?.into_inner();
    assert_eq!(stats.stats.and_then(|s| s.attributes).map(|a| a.id), Some(pod.clone()));
    assert_eq!(exec(&mut rt, &c, "echo hi").await?, "hi");
    rt.reopen_container_log(ReopenContainerLogRequest { container_id: c.clone() }).await?;
    let exec_request =
        ExecRequest { container_id: c.clone(), cmd: vec!["true".into()], stdout: true, ..Default::default() };
    assert!(!rt.exec(exec_request).await?.into_inner().url.is_empty());
    let attach = AttachRequest { container_id: c.clone(), stdout: true, ..Default::default() };
    assert!(!rt.attach(attach).await?.into_inner().url.is_empty());
    let forward = PortForwardRequest { pod_sandbox_id: p.clone(), port: vec![80] };
    assert!(!rt.port_forward(forward).await?.into_inner().url.is_empty());
    rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: p.clone(), verbose: false }).await?;
    rt.stop_container(StopContainerRequest { container_id: c.clone(), timeout: 0 }).await?;
    assert_eq!(status(&mut rt, &id).await?.state, ContainerState::ContainerExited as i32);
    rt.remove_container(RemoveContainerRequest { container_id: c }).await?;
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: p.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p }).await?;
    assert!(rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod, verbose: false }).await.is_err());
    Ok(())
}

/// A client that gives up during the grace period abandons the stop, as
/// with containerd: the container keeps running, and kubelet retries.
#[tokio::test]
async fn a_stop_abandoned_by_its_client_leaves_the_container_running() -> anyhow::Result<()> {
    let test = "a_stop_abandoned_by_its_client_leaves_the_container_running";
    let Some((env, image)) = crius_e2e::images::busybox_env(test).await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("abandon", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    // A shell as PID 1 has no SIGTERM handler: only SIGKILL ends it.
    let id = create(&mut rt, &pod, &pod_config, &image, "stubborn", "while true; do sleep 1; done").await?;
    rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;

    // Grace periods of 2 s abandoned after 1 s: once 2 s have passed, an
    // abandoned stop would have sent SIGKILL.
    let grace = Duration::from_secs(2);
    let stopper = rt.clone();
    let stop = |request: tonic::Request<StopContainerRequest>| {
        let mut stopper = stopper.clone();
        async move { stopper.stop_container(request).await }
    };
    let request = || StopContainerRequest { container_id: id.clone(), timeout: 2 };

    // The client drops the call (its own timeout): the stream is reset.
    let dropped = tokio::time::timeout(Duration::from_secs(1), stop(tonic::Request::new(request()))).await;
    assert!(dropped.is_err(), "the stop waited for the grace period");
    tokio::time::sleep(grace).await;
    assert_eq!(status(&mut rt, &id).await?.state, ContainerState::ContainerRunning as i32, "not killed");

    // The client sends a deadline (grpc-timeout): crius gives up when it passes.
    let mut with_deadline = tonic::Request::new(request());
    with_deadline.set_timeout(Duration::from_secs(1));
    let err = stop(with_deadline).await.expect_err("abandoned at the deadline");
    assert!(matches!(err.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{err:?}");
    tokio::time::sleep(grace).await;
    assert_eq!(status(&mut rt, &id).await?.state, ContainerState::ContainerRunning as i32, "not killed");

    // A client that waits gets the SIGKILL after the grace period.
    rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 1 }).await?;
    let stopped = status(&mut rt, &id).await?;
    assert_eq!((stopped.state, stopped.exit_code), (ContainerState::ContainerExited as i32, 137), "{stopped:?}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    Ok(())
}

#[tokio::test]
async fn run_pod_sandbox_never_returns_a_pod_that_is_not_ready() -> anyhow::Result<()> {
    let test = "run_pod_sandbox_never_returns_a_pod_that_is_not_ready";
    let Some((env, _image)) = crius_e2e::images::busybox_env(test).await? else { return Ok(()) };
    let mut rt = env.crius.runtime().await?;
    let config = pod_config("retry", &env.dirs.temp.path().join("logs"));
    let run = |config: &cri_api::v1::PodSandboxConfig| RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let first = rt.run_pod_sandbox(run(&config)).await?.into_inner().pod_sandbox_id;
    assert_eq!(rt.run_pod_sandbox(run(&config)).await?.into_inner().pod_sandbox_id, first, "a retry while ready");
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: first.clone() }).await?;
    let err = rt.run_pod_sandbox(run(&config)).await.expect_err("the stopped pod is not handed back");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&first), "{}", err.message());
    let mut next = config.clone();
    if let Some(metadata) = next.metadata.as_mut() {
        metadata.attempt = 1;
    }
    let second = rt.run_pod_sandbox(run(&next)).await?.into_inner().pod_sandbox_id;
    assert_ne!(second, first, "a new attempt is a new pod");
    for pod in [first, second] {
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    }
    Ok(())
}

/// Paths in requests are untrusted: each escape is refused with
/// InvalidArgument and creates nothing.
#[tokio::test]
async fn paths_from_requests_cannot_escape() -> anyhow::Result<()> {
    let Some((env, image)) = crius_e2e::images::busybox_env("paths_from_requests_cannot_escape").await? else {
        return Ok(());
    };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("paths", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let escaped = format!("crius-escaped-{}.log", std::process::id());
    let depth = logs.components().count();
    let mut bad_log = container(&image, "log", "true");
    bad_log.log_path = format!("{}etc/{escaped}", "../".repeat(depth));
    let mut relative_mount = container(&image, "mount", "true");
    relative_mount.mounts = vec![Mount { container_path: "/mnt".into(), host_path: "bin".into(), ..Mount::default() }];
    for (case, config) in [("log_path with ..", bad_log), ("relative host path", relative_mount)] {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let err = rt.create_container(request).await.expect_err(case);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{case}: {err:?}");
    }
    assert!(!std::path::Path::new("/etc").join(&escaped).exists(), "a log was written outside the log directory");
    assert!(!logs.exists(), "nothing was made for refused containers");
    let mut relative_logs = pod_config.clone();
    relative_logs.log_directory = "crius-relative-logs".into();
    if let Some(metadata) = relative_logs.metadata.as_mut() {
        metadata.name = "relative".into();
    }
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(relative_logs), runtime_handler: String::new() })
        .await
        .expect_err("relative log directory");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(!std::path::Path::new("crius-relative-logs").exists());
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    Ok(())
}
