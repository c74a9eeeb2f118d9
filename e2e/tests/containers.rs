//! Containers run by crius's own runtime: lifecycle, logs, exit codes, stop
//! timeouts, cleanup, and surviving a SIGKILL of crius.
//!
//! The image is built here: one layer with Debian's static busybox as
//! `/bin/sh` (its applets run inside the shell).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_api::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, CreateContainerRequest, ImageSpec,
    ListContainersRequest, RemoveContainerRequest, RemovePodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use crius_e2e::containers::{create, log_lines, monitors_of, pod_config, run_pod, status, wait_state};
use crius_e2e::images::ImageEnv;
use crius_e2e::{Crius, count_processes, mounts_under};

/// A registry with the busybox image and a crius that pulled it.
async fn env(test: &str) -> anyhow::Result<Option<(ImageEnv, String)>> {
    crius_e2e::images::busybox_env(test).await
}

#[tokio::test]
async fn container_lifecycle_logs_exit_codes_and_cleanup() -> anyhow::Result<()> {
    let Some((env, image)) = env("container_lifecycle_logs_exit_codes_and_cleanup").await? else { return Ok(()) };
    let logs: PathBuf = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("life", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;

    let short = create(&mut rt, &pod, &pod_config, &image, "short", "echo out; echo err >&2; echo $$; exit 3").await?;
    assert_eq!(status(&mut rt, &short).await?.state, ContainerState::ContainerCreated as i32);
    rt.start_container(StartContainerRequest { container_id: short.clone() }).await?;
    let done = wait_state(&mut rt, &short, ContainerState::ContainerExited, Duration::from_secs(20)).await?;
    assert_eq!(done.exit_code, 3);
    assert_eq!(done.reason, "Error");
    assert!(done.started_at > 0 && done.finished_at >= done.started_at);
    let lines = log_lines(&logs.join("short.log"));
    assert!(lines.contains(&("stdout".into(), "F".into(), "out".into())), "{lines:?}");
    assert!(lines.contains(&("stderr".into(), "F".into(), "err".into())), "{lines:?}");
    assert!(lines.contains(&("stdout".into(), "F".into(), "1".into())), "PID 1 of its own namespace: {lines:?}");

    // A shell as PID 1 ignores SIGTERM: StopContainer kills it after the timeout.
    let long = create(&mut rt, &pod, &pod_config, &image, "long", "while true; do sleep 1; done").await?;
    rt.start_container(StartContainerRequest { container_id: long.clone() }).await?;
    wait_state(&mut rt, &long, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;
    let filter = ContainerFilter {
        state: Some(cri_api::v1::ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        ..ContainerFilter::default()
    };
    let running = rt.list_containers(ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers;
    assert_eq!(running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [long.as_str()]);
    rt.stop_container(StopContainerRequest { container_id: long.clone(), timeout: 1 }).await?;
    let stopped = status(&mut rt, &long).await?;
    assert_eq!(stopped.state, ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 137, "{stopped:?}");
    rt.stop_container(StopContainerRequest { container_id: long.clone(), timeout: 1 }).await?;

    rt.remove_container(RemoveContainerRequest { container_id: short.clone() }).await?;
    rt.remove_container(RemoveContainerRequest { container_id: short.clone() }).await?;
    assert_eq!(rt.list_containers(ListContainersRequest::default()).await?.into_inner().containers.len(), 1);

    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    assert!(rt.list_containers(ListContainersRequest::default()).await?.into_inner().containers.is_empty());
    assert!(mounts_under(env.dirs.temp.path()).is_empty(), "{:?}", mounts_under(env.dirs.temp.path()));
    assert_eq!(monitors_of(&env.dirs.run_root), 0, "no monitor left");
    assert!(std::fs::read_dir(env.dirs.run_root.join("containers"))?.next().is_none());
    Ok(())
}

#[tokio::test]
async fn containers_survive_a_crius_sigkill() -> anyhow::Result<()> {
    let Some((env, image)) = env("containers_survive_a_crius_sigkill").await? else { return Ok(()) };
    let ImageEnv { registry: _registry, dirs, crius: mut first, client: _ } = env;
    let logs = dirs.temp.path().join("logs");
    let mut rt = first.runtime().await?;
    let pod_config = pod_config("keep", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    // Twenty running containers, plus one that exits while crius is down.
    let mut tickers = Vec::new();
    for n in 0..20 {
        let name = if n == 0 { "ticker".to_owned() } else { format!("ticker{n}") };
        tickers.push(
            create(&mut rt, &pod, &pod_config, &image, &name, "while true; do echo tick; sleep 0.1; done").await?,
        );
    }
    let ticker = tickers[0].clone();
    let exiter = create(&mut rt, &pod, &pod_config, &image, "exiter", "sleep 1; exit 7").await?;
    for id in tickers.iter().chain([&exiter]) {
        rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    }
    drop(rt);
    first.signal(nix::sys::signal::Signal::SIGKILL)?;
    first.wait_exit(Duration::from_secs(20)).await?;
    let ticks_at_kill = log_lines(&logs.join("ticker.log")).len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(log_lines(&logs.join("ticker.log")).len() > ticks_at_kill, "logs keep flowing while crius is down");

    let second = Crius::start(&dirs, &[]).await?;
    let mut rt = second.runtime().await?;
    for id in &tickers {
        assert_eq!(status(&mut rt, id).await?.state, ContainerState::ContainerRunning as i32, "{id}");
    }
    let exited = wait_state(&mut rt, &exiter, ContainerState::ContainerExited, Duration::from_secs(10)).await?;
    assert_eq!(exited.exit_code, 7, "the exit during the outage is not lost");

    // kubelet's log rotation: rename, then ReopenContainerLog.
    std::fs::rename(logs.join("ticker.log"), logs.join("ticker.log.1"))?;
    rt.reopen_container_log(cri_api::v1::ReopenContainerLogRequest { container_id: ticker.clone() }).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while log_lines(&logs.join("ticker.log")).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no lines in the reopened log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = rt.reopen_container_log(cri_api::v1::ReopenContainerLogRequest { container_id: exiter.clone() }).await;
    assert_eq!(err.expect_err("not running").code(), tonic::Code::InvalidArgument);
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    assert!(mounts_under(dirs.temp.path()).is_empty());
    assert_eq!(monitors_of(&dirs.run_root), 0);
    Ok(())
}

#[tokio::test]
async fn create_container_failures_leave_nothing() -> anyhow::Result<()> {
    let Some((env, image)) = env("create_container_failures_leave_nothing").await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("fail", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "nope".into(), attempt: 0 }),
        image: Some(ImageSpec { image: "127.0.0.1:1/never/pulled:1".into(), ..ImageSpec::default() }),
        command: vec!["/bin/sh".into()],
        ..ContainerConfig::default()
    };
    let request =
        CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(config), sandbox_config: Some(pod_config) };
    let err = rt.create_container(request).await.expect_err("unknown image");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(rt.list_containers(ListContainersRequest::default()).await?.into_inner().containers.is_empty());
    assert_eq!(monitors_of(&env.dirs.run_root), 0);
    assert!(mounts_under(&env.dirs.run_root.join("rootfs")).is_empty());
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    let _ = image;
    Ok(())
}

/// As with containerd and runc: a program that does not exist is a start
/// error. CreateContainer succeeds, StartContainer fails with why, and the
/// container is EXITED with code 128 and reason StartError, then removable.
#[tokio::test]
async fn a_missing_program_fails_the_start_not_the_create() -> anyhow::Result<()> {
    let Some((env, image)) = env("a_missing_program_fails_the_start_not_the_create").await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("nostart", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    for program in ["/bin/does-not-exist", "not-in-path"] {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: program.trim_start_matches('/').replace('/', "-"), attempt: 0 }),
            image: Some(ImageSpec { image: image.clone(), ..ImageSpec::default() }),
            command: vec![program.into()],
            log_path: "nostart.log".into(),
            ..ContainerConfig::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = rt.create_container(request).await?.into_inner().container_id;
        assert_eq!(status(&mut rt, &id).await?.state, ContainerState::ContainerCreated as i32);
        let err = rt.start_container(StartContainerRequest { container_id: id.clone() }).await.expect_err(program);
        assert!(err.message().contains(program), "{program}: {}", err.message());
        let exited = status(&mut rt, &id).await?;
        assert_eq!(exited.state, ContainerState::ContainerExited as i32, "{exited:?}");
        assert_eq!((exited.exit_code, exited.reason.as_str()), (128, "StartError"), "{exited:?}");
        assert!(exited.message.contains(program), "{exited:?}");
        assert!(exited.finished_at > 0, "{exited:?}");
        let again = rt.start_container(StartContainerRequest { container_id: id.clone() }).await;
        assert_eq!(again.expect_err("exited").code(), tonic::Code::InvalidArgument);
        rt.remove_container(RemoveContainerRequest { container_id: id }).await?;
    }
    assert!(rt.list_containers(ListContainersRequest::default()).await?.into_inner().containers.is_empty());
    assert_eq!(monitors_of(&env.dirs.run_root), 0, "no monitor or init left");
    assert!(mounts_under(&env.dirs.run_root.join("rootfs")).is_empty());
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    Ok(())
}

#[tokio::test]
async fn exec_sync_runs_in_the_container_with_exit_codes_and_timeouts() -> anyhow::Result<()> {
    let Some((env, image)) = env("exec_sync_runs_in_the_container_with_exit_codes_and_timeouts").await? else {
        return Ok(());
    };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("exec", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let id = create(&mut rt, &pod, &pod_config, &image, "target", "echo ready > /tmp/marker; sleep 1000").await?;
    rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, Duration::from_secs(10)).await?;
    let exec = |cmd: &str, timeout: i64| cri_api::v1::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        timeout,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let reply =
            rt.exec_sync(exec("cat /tmp/marker; hostname; echo $$; echo oops >&2; exit 4", 0)).await?.into_inner();
        if reply.exit_code == 4 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.exit_code, 4, "{reply:?}");
    let stdout = String::from_utf8_lossy(&reply.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["ready", "exec"], "sees the container's files and hostname: {stdout}");
    assert_ne!(lines[2], "1", "a new process in the container's PID namespace");
    assert_eq!(String::from_utf8_lossy(&reply.stderr), "oops\n");
    let err = rt.exec_sync(exec("sleep 30", 1)).await.expect_err("timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    let ps = rt.exec_sync(exec("ps", 0)).await?.into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains("sleep 30") && !ps.contains("[sleep]"), "the timed-out command is gone and reaped: {ps}");
    let missing =
        rt.exec_sync(cri_api::v1::ExecSyncRequest { container_id: id.clone(), cmd: vec!["nope".into()], timeout: 0 });
    assert_eq!(missing.await?.into_inner().exit_code, 127);
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    assert_eq!(monitors_of(&env.dirs.run_root), 0);
    Ok(())
}

#[tokio::test]
async fn memory_limits_apply_and_oom_kills_are_reported() -> anyhow::Result<()> {
    let Some((env, image)) = env("memory_limits_apply_and_oom_kills_are_reported").await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("limits", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let resources = |memory: i64| cri_api::v1::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_shares: 256,
        ..cri_api::v1::LinuxContainerResources::default()
    };
    let config = |name: &str, script: &str| ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.clone(), ..ImageSpec::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        linux: Some(cri_api::v1::LinuxContainerConfig {
            resources: Some(resources(16 << 20)),
            ..cri_api::v1::LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    };
    let create = |config: ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let hog = rt.create_container(create(config("hog", "dd if=/dev/zero of=/dev/null bs=64M count=1"))).await?;
    let hog = hog.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id: hog.clone() }).await?;
    let done = wait_state(&mut rt, &hog, ContainerState::ContainerExited, Duration::from_secs(20)).await?;
    assert_eq!((done.exit_code, done.reason.as_str()), (137, "OOMKilled"), "{done:?}");

    let calm = rt.create_container(create(config("calm", "sleep 1000"))).await?.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id: calm.clone() }).await?;
    let limit_file =
        Path::new("/sys/fs/cgroup/memory/crius").join(format!("pod-{pod}")).join(&calm).join("memory.limit_in_bytes");
    if limit_file.exists() {
        assert_eq!(std::fs::read_to_string(&limit_file)?.trim(), (16u64 << 20).to_string());
        let update = cri_api::v1::UpdateContainerResourcesRequest {
            container_id: calm.clone(),
            linux: Some(resources(32 << 20)),
            ..Default::default()
        };
        rt.update_container_resources(update).await?;
        assert_eq!(std::fs::read_to_string(&limit_file)?.trim(), (32u64 << 20).to_string());
    }
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    assert!(!Path::new("/sys/fs/cgroup/memory/crius").join(format!("pod-{pod}")).exists(), "cgroups removed");
    Ok(())
}

#[tokio::test]
async fn a_pod_can_share_one_pid_namespace() -> anyhow::Result<()> {
    let Some((env, image)) = env("a_pod_can_share_one_pid_namespace").await? else { return Ok(()) };
    let logs = env.dirs.temp.path().join("logs");
    let mut rt = env.crius.runtime().await?;
    let mut shared = pod_config("shared", &logs);
    shared.linux = None; // pid: POD
    let pod = run_pod(&mut rt, &shared).await?;
    let first = create(&mut rt, &pod, &shared, &image, "first", "sleep 1000").await?;
    let second = create(&mut rt, &pod, &shared, &image, "second", "ps; sleep 1000").await?;
    for id in [&first, &second] {
        rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(logs.join("second.log")).unwrap_or_default();
        if text.contains("sleep 1000") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("pod-init"), "PID 1 is the pod's init: {text}");
    assert!(text.matches("sleep 1000").count() >= 1 && text.contains("ps"), "{text}");
    let pod_inits = || count_processes(|cmdline| cmdline.contains("pod-init"));
    let before = pod_inits();
    assert!(before >= 1);
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    assert_eq!(pod_inits(), before - 1, "the pod init ends with the pod");
    Ok(())
}
