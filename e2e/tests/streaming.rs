//! The streaming server through CRI, with a WebSocket client: exec with
//! stdin and the exit code, attach, port forwarding (a large transfer and
//! parallel connections), single-use URLs, and no process left behind when
//! a client disconnects.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    AttachRequest, ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecRequest, ImageSpec,
    PortForwardRequest, RunPodSandboxRequest, StartContainerRequest,
};
use crius_e2e::images::{ImageEnv, busybox_env};
use crius_e2e::{count_processes, pod_config, ws};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

/// A pod with one running container: `sh -c script`, with stdin when asked.
async fn running(
    env: &ImageEnv,
    image: &str,
    script: &str,
    stdin: bool,
) -> anyhow::Result<(RuntimeServiceClient<Channel>, String, String)> {
    let mut rt = env.crius.runtime().await?;
    let config = pod_config("stream");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let container = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "sh".into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..ImageSpec::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin,
        stdin_once: stdin,
        ..ContainerConfig::default()
    };
    let request =
        CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(container), sandbox_config: Some(config) };
    let id = rt.create_container(request).await?.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
    Ok((rt, pod, id))
}

#[tokio::test]
async fn websocket_exec_with_stdin_reports_the_exit_code_and_urls_are_single_use() -> anyhow::Result<()> {
    let Some((env, image)) =
        busybox_env("websocket_exec_with_stdin_reports_the_exit_code_and_urls_are_single_use").await?
    else {
        return Ok(());
    };
    let (mut rt, _pod, id) = running(&env, &image, "sleep 3600", false).await?;
    let exec = ExecRequest {
        container_id: id.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), "read line; echo got:$line; echo oops >&2; exit 7".into()],
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = rt.exec(exec.clone()).await?.into_inner().url;
    let mut ws = ws::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(Message::binary(b"\0hello\n".to_vec())).await?;
    ws.send(Message::binary(vec![255, 0])).await?; // v5: stdin closed
    let channels = ws::collect(&mut ws).await?;
    assert_eq!(String::from_utf8_lossy(&channels[&1]), "got:hello\n");
    assert_eq!(String::from_utf8_lossy(&channels[&2]), "oops\n");
    let status: serde_json::Value = serde_json::from_slice(&channels[&3])?;
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "7", "{status}");

    // Used once: 404 now, as for a token that never existed.
    let used = reqwest::get(&url).await?;
    assert_eq!(used.status(), reqwest::StatusCode::NOT_FOUND);
    let unknown =
        reqwest::get(url.rsplit_once('/').map(|(base, _)| format!("{base}/nope")).unwrap_or_default()).await?;
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);

    // A client that goes away takes its command with it.
    let exec = ExecRequest {
        cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 4242".into()],
        stdin: false,
        stderr: false,
        ..exec
    };
    let url = rt.exec(exec).await?.into_inner().url;
    let ws = ws::connect(&url, "v4.channel.k8s.io").await?;
    let started = Instant::now();
    while count_processes(|cmd| cmd.contains("sleep") && cmd.contains("4242")) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the exec never started:\n{}", env.crius.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
    while count_processes(|cmd| cmd.contains("sleep") && cmd.contains("4242")) > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn websocket_attach_reaches_the_container_stdin_and_output() -> anyhow::Result<()> {
    let Some((env, image)) = busybox_env("websocket_attach_reaches_the_container_stdin_and_output").await? else {
        return Ok(());
    };
    let (mut rt, _pod, id) = running(&env, &image, "while read line; do echo echo:$line; done", true).await?;
    let request = AttachRequest { container_id: id, stdin: true, stdout: true, stderr: true, tty: false };
    let url = rt.attach(request).await?.into_inner().url;
    let mut ws = ws::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(Message::binary(b"\0one\n".to_vec())).await?;
    ws.send(Message::binary(b"\0two\n".to_vec())).await?;
    ws.send(Message::binary(vec![255, 0])).await?; // stdin_once: the container ends
    let channels = ws::collect(&mut ws).await?;
    assert_eq!(String::from_utf8_lossy(&channels[&1]), "echo:one\necho:two\n");
    Ok(())
}

#[tokio::test]
async fn websocket_port_forward_carries_data_intact_in_parallel() -> anyhow::Result<()> {
    let Some((env, _image)) = busybox_env("websocket_port_forward_carries_data_intact_in_parallel").await? else {
        return Ok(());
    };
    let mut rt = env.crius.runtime().await?;
    let request = RunPodSandboxRequest { config: Some(pod_config("pf")), runtime_handler: String::new() };
    let pod = rt.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
    // A server inside the pod's network namespace: sends 8 MiB, then the sha256 of what it received.
    let netns = env.dirs.run_root.join("pods").join(&pod).join("ns/net");
    let listener = crius_network::netns::run_in(Some(&netns), || TcpListener::bind("127.0.0.1:7777"))??;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let block: Vec<u8> = (0..8 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
                let _ = stream.write_all(&block);
                let mut received = Vec::new();
                let _ = stream.read_to_end(&mut received);
            });
        }
    });
    let expected = {
        let block: Vec<u8> = (0..8 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        Sha256::digest(&block).to_vec()
    };
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let url = rt
            .port_forward(PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![7777] })
            .await?
            .into_inner()
            .url;
        sessions.push(tokio::spawn(async move {
            let mut ws = ws::connect(&format!("{url}?port=7777"), "portforward.k8s.io").await?;
            let mut hasher = Sha256::new();
            let (mut total, mut openings) = (0usize, 0);
            while total < 8 << 20 {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) if data.len() == 3 && openings < 2 => openings += 1,
                    Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                        total += data.len() - 1;
                        hasher.update(&data[1..]);
                    }
                    Some(Ok(Message::Binary(data))) => {
                        anyhow::bail!("error channel: {}", String::from_utf8_lossy(&data[1..]))
                    }
                    other => anyhow::bail!("session ended early after {total} bytes: {other:?}"),
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>(hasher.finalize().to_vec())
        }));
    }
    for session in sessions {
        assert_eq!(session.await??, expected, "corrupted transfer");
    }
    Ok(())
}

#[tokio::test]
async fn websocket_exec_with_a_terminal_gets_a_container_tty_and_its_size() -> anyhow::Result<()> {
    let Some((env, image)) = busybox_env("websocket_exec_with_a_terminal_gets_a_container_tty_and_its_size").await?
    else {
        return Ok(());
    };
    let (mut rt, _pod, id) = running(&env, &image, "sleep 3600", false).await?;
    let exec = ExecRequest {
        container_id: id,
        cmd: vec!["/bin/sh".into(), "-c".into(), "read go; tty; stty size; echo TERM=$TERM".into()],
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = rt.exec(exec).await?.into_inner().url;
    let mut ws = ws::connect(&url, "v5.channel.k8s.io").await?;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":100,"Height":30}"#);
    ws.send(Message::binary(resize)).await?;
    ws.send(Message::binary(b"\0go\n".to_vec())).await?;
    let channels = ws::collect(&mut ws).await?;
    let out = String::from_utf8_lossy(&channels[&1]).replace('\r', "");
    // The terminal is the container's own (its name resolves inside), sized as asked.
    assert!(out.contains("/dev/pts/") && out.contains("30 100") && out.contains("TERM=xterm"), "{out}");
    let status: serde_json::Value = serde_json::from_slice(&channels[&3])?;
    assert_eq!(status["status"], "Success", "{status}");
    Ok(())
}

#[tokio::test]
async fn the_streaming_server_can_serve_tls() -> anyhow::Result<()> {
    let name = "the_streaming_server_can_serve_tls";
    if !testkit::require_root(name) || !testkit::require_tool(name, "openssl", "openssl") {
        return Ok(());
    }
    let dirs = crius_e2e::CriusDirs::new()?;
    let (cert, key) = (dirs.temp.path().join("cert.pem"), dirs.temp.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let made = made?;
    anyhow::ensure!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let config = dirs.temp.path().join("tls.toml");
    let text = format!(
        "{}[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        crius_e2e::TEST_CONFIG,
        cert.display(),
        key.display()
    );
    std::fs::write(&config, text)?;
    let crius = crius_e2e::Crius::start(&dirs, &["--config", config.to_str().unwrap_or_default()]).await?;
    let mut rt = crius.runtime().await?;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config("tls")), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let url = rt.port_forward(PortForwardRequest { pod_sandbox_id: pod, port: vec![80] }).await?.into_inner().url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // Over TLS, the server answers (a plain GET is not an upgrade: 400).
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    let response = client.get(&url).send().await?;
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::get(url.replace("https://", "http://")).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    Ok(())
}

#[tokio::test]
async fn exec_sessions_end_when_crius_dies() -> anyhow::Result<()> {
    let Some((env, image)) = busybox_env("exec_sessions_end_when_crius_dies").await? else { return Ok(()) };
    let (mut rt, _pod, id) = running(&env, &image, "sleep 3600", false).await?;
    let request = cri_api::v1::ExecSyncRequest {
        container_id: id,
        cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 4343".into()],
        timeout: 0,
    };
    let pending = tokio::spawn(async move { rt.exec_sync(request).await });
    let is_exec = |cmd: &str| cmd.contains("sleep") && cmd.contains("4343");
    let started = Instant::now();
    while count_processes(is_exec) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the exec never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.crius.signal(nix::sys::signal::Signal::SIGKILL)?;
    while count_processes(is_exec) > 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "the exec outlived crius");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pending.await?.is_err(), "the ExecSync call cannot succeed without crius");
    // The container itself keeps running; a new crius cleans it up when the test ends.
    let _cleanup = crius_e2e::Crius::start(&env.dirs, &[]).await?;
    Ok(())
}
