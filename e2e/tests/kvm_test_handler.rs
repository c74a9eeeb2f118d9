//! The `kvm-test` handler: the KVM backend's host side and the real guest
//! agent, with the VM replaced by a host process. A pod and its containers
//! through CRI: logs written on the node from the guest's output, ExecSync,
//! exec and port-forward over the streaming server, stats; SIGKILL of crius
//! with the pod up, restart, and the logs go on with no line lost or
//! doubled; removal leaves no guest agent.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cri_api::v1::{
    ContainerState, ContainerStatsRequest, ExecRequest, ExecSyncRequest, PodSandboxStatusRequest, PortForwardRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use crius_e2e::containers::{create, log_lines, pod_config, status, wait_state};
use crius_e2e::images::{ImageEnv, busybox_env_with};
use crius_e2e::{Crius, count_processes, ws};
use futures_util::SinkExt;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = "[runtime.handlers.kvm-test]\ntype = \"kvm-test\"\n";

/// Guest agent processes of the crius running in `run_root`.
fn guests(run_root: &Path) -> usize {
    let pods = run_root.join("vm").display().to_string();
    count_processes(|cmd| cmd.contains("pid1") && cmd.contains(&pods))
}

/// The ticker's numbers as the CRI log has them: each exactly once, in order.
fn ticks(log: &Path) -> Vec<u64> {
    log_lines(log).into_iter().filter_map(|(_, _, text)| text.strip_prefix("tick ")?.parse().ok()).collect()
}

fn assert_consecutive(ticks: &[u64]) {
    for pair in ticks.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a line lost or doubled: {ticks:?}");
    }
}

#[tokio::test]
async fn kvm_test_pods_run_containers_in_the_guest_agent() -> anyhow::Result<()> {
    let test = "kvm_test_pods_run_containers_in_the_guest_agent";
    let Some((env, image)) = busybox_env_with(test, CONFIG).await? else { return Ok(()) };
    let ImageEnv { registry: _registry, dirs, crius: first, client: _ } = env;
    let logs = dirs.temp.path().join("logs");
    let mut rt = first.runtime().await?;
    let config = pod_config("guest", &logs);
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "kvm-test".into() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let pod_status = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false });
    let pod_status = pod_status.await?.into_inner().status.expect("status");
    assert_eq!((pod_status.state, pod_status.runtime_handler.as_str()), (0, "kvm-test"), "ready, kvm-test");
    assert!(guests(&dirs.run_root) >= 1, "the pod's guest agent runs");

    let ticker = create(
        &mut rt,
        &pod,
        &config,
        &image,
        "ticker",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    )
    .await?;
    rt.start_container(StartContainerRequest { container_id: ticker.clone() }).await?;
    wait_state(&mut rt, &ticker, ContainerState::ContainerRunning, Duration::from_secs(20)).await?;
    let log = logs.join("ticker.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks(&log).len() < 5 {
        assert!(Instant::now() < deadline, "no output reached the CRI log:\n{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let exec = |cmd: &str| ExecSyncRequest {
        container_id: ticker.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        timeout: 10,
    };
    let reply = rt.exec_sync(exec("echo in-guest; exit 3")).await?.into_inner();
    assert_eq!((reply.exit_code, String::from_utf8_lossy(&reply.stdout).trim()), (3, "in-guest"));

    // Exec with stdin over the streaming server.
    let url = rt
        .exec(ExecRequest {
            container_id: ticker.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "read line; echo got:$line; exit 7".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await?
        .into_inner()
        .url;
    let mut session = ws::connect(&url, "v5.channel.k8s.io").await?;
    session.send(Message::binary(b"\0hello\n".to_vec())).await?;
    session.send(Message::binary(vec![255, 0])).await?;
    let channels = ws::collect(&mut session).await?;
    assert_eq!(String::from_utf8_lossy(&channels[&1]), "got:hello\n");
    let exit: serde_json::Value = serde_json::from_slice(&channels[&3])?;
    assert_eq!(exit["details"]["causes"][0]["message"], "7", "{exit}");

    // Ten parallel port forwards of 8 MiB each, intact.
    let netns = dirs.run_root.join("pods").join(&pod).join("ns/net");
    let listener = crius_network::netns::run_in(Some(&netns), || TcpListener::bind("127.0.0.1:7777"))??;
    let block: Vec<u8> = (0..8 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let expected = Sha256::digest(&block).to_vec();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let block = block.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.write_all(&block);
                let _ = stream.read_to_end(&mut Vec::new());
            });
        }
    });
    let mut transfers = Vec::new();
    for _ in 0..10 {
        let forward = PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![7777] };
        let url = rt.port_forward(forward).await?.into_inner().url;
        transfers.push(tokio::spawn(async move {
            let mut session = ws::connect(&format!("{url}?port=7777"), "portforward.k8s.io").await?;
            ws::read_forwarded(&mut session, 8 << 20).await
        }));
    }
    for transfer in transfers {
        assert_eq!(transfer.await??, expected, "a port-forward transfer was corrupted");
    }

    let stats = rt.container_stats(ContainerStatsRequest { container_id: ticker.clone() }).await?.into_inner();
    let memory = stats.stats.and_then(|s| s.memory).and_then(|m| m.working_set_bytes).map_or(0, |v| v.value);
    assert!(memory > 0, "memory usage comes from the guest");

    // crius dies with the pod up; the guest agent and the ticker go on.
    drop(rt);
    let mut first = first;
    first.signal(nix::sys::signal::Signal::SIGKILL)?;
    first.wait_exit(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(guests(&dirs.run_root) >= 1, "the guest agent outlives crius");
    let second = Crius::start(&dirs, &[]).await?;
    let mut rt = second.runtime().await?;
    assert_eq!(status(&mut rt, &ticker).await?.state, ContainerState::ContainerRunning as i32);
    let before = ticks(&log).len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks(&log).len() < before + 20 {
        assert!(Instant::now() < deadline, "the log did not resume:\n{}", second.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = ticks(&log);
    assert_eq!(all[0], 0, "the log starts at the first line");
    assert_consecutive(&all);
    let reply = rt.exec_sync(exec("echo after-restart")).await?.into_inner();
    assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "after-restart");

    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    assert_eq!(guests(&dirs.run_root), 0, "the guest agent is gone with its pod");
    assert!(crius_e2e::mounts_under(dirs.temp.path()).is_empty(), "{:?}", crius_e2e::mounts_under(dirs.temp.path()));
    Ok(())
}
