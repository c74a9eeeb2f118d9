//! The RPCs the foundation serves, over the real socket.

use cri_api::v1::{
    CheckpointContainerRequest, NetworkConfig, PortForwardRequest, RunPodSandboxRequest, RuntimeConfig,
    RuntimeConfigRequest, StatusRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use crius_e2e::{Crius, CriusDirs};

#[tokio::test]
async fn version_names_crius() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let version = crius.runtime().await?.version(VersionRequest { version: "v1".into() }).await?.into_inner();
    assert_eq!(version.runtime_name, "crius");
    assert_eq!(version.runtime_api_version, "v1");
    assert!(!version.runtime_version.is_empty());
    Ok(())
}

#[tokio::test]
async fn status_reports_runtime_ready_and_why_the_network_is_not() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let status = crius.runtime().await?.status(StatusRequest { verbose: true }).await?.into_inner();
    let conditions = status.status.expect("runtime status").conditions;
    let runtime = conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("RuntimeReady");
    assert!(runtime.status, "{runtime:?}");
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady");
    assert!(!network.status);
    assert!(!network.reason.is_empty() && !network.message.is_empty(), "{network:?}");
    let config: serde_json::Value = serde_json::from_str(status.info.get("config").expect("verbose config"))?;
    assert_eq!(config["root"].as_str(), dirs.root.to_str(), "{config}");
    Ok(())
}

#[tokio::test]
async fn status_turns_not_ready_when_the_run_root_disappears() -> anyhow::Result<()> {
    let mut dirs = CriusDirs::new()?;
    dirs.run_root = dirs.temp.path().join("state");
    let crius = Crius::start(&dirs, &[]).await?;
    std::fs::remove_dir_all(&dirs.run_root)?;
    let status = crius.runtime().await?.status(StatusRequest::default()).await?.into_inner();
    let runtime = status.status.expect("status").conditions.into_iter().find(|c| c.r#type == "RuntimeReady");
    let runtime = runtime.expect("RuntimeReady");
    assert!(!runtime.status);
    assert_eq!(runtime.reason, "StateDirectoryUnavailable");
    Ok(())
}

#[tokio::test]
async fn runtime_config_reports_the_cgroup_driver() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let config = crius.runtime().await?.runtime_config(RuntimeConfigRequest {}).await?.into_inner();
    assert_eq!(config.linux.expect("linux").cgroup_driver, cri_api::v1::CgroupDriver::Cgroupfs as i32);
    Ok(())
}

#[tokio::test]
async fn unsupported_rpcs_are_unimplemented_and_named() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let err = crius.runtime().await?.port_forward(PortForwardRequest::default()).await.expect_err("no pod id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let unknown = PortForwardRequest { pod_sandbox_id: "nope".into(), port: vec![80] };
    let err = crius.runtime().await?.port_forward(unknown).await.expect_err("unknown pod");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let err =
        crius.runtime().await?.checkpoint_container(CheckpointContainerRequest::default()).await.expect_err("not yet");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn bad_pod_cidr_is_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let request = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: cidr.into() }) }),
    };
    let mut runtime = crius.runtime().await?;
    let err = runtime.update_runtime_config(request("10.0.0.0/99")).await.expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("runtime_config.network_config.pod_cidr"), "{}", err.message());
    runtime.update_runtime_config(request("10.244.0.0/24")).await?;
    Ok(())
}

#[tokio::test]
async fn json_logs_carry_one_span_per_rpc() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &["--log-format", "json", "--log-level", "debug"]).await?;
    let mut runtime = crius.runtime().await?;
    runtime.status(StatusRequest::default()).await?;
    let _ = runtime.run_pod_sandbox(RunPodSandboxRequest::default()).await;
    let log = crius.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
    }
    // Polls at debug, mutations at info or above, each inside its rpc span.
    assert!(lines.iter().any(|l| l.contains("\"rpc\":\"Status\"") && l.contains("\"level\":\"DEBUG\"")), "{log}");
    assert!(lines.iter().any(|l| l.contains("\"rpc\":\"RunPodSandbox\"") && l.contains("\"level\":\"WARN\"")), "{log}");
    Ok(())
}

#[tokio::test]
async fn health_command_reports_what_the_running_crius_answers() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let _crius = Crius::start(&dirs, &[]).await?;
    let socket = dirs.socket.to_str().expect("utf8");
    let output = crius_e2e::run_crius(&["--socket", socket, "health"])?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout)?;
    assert!(line.starts_with(&format!("{socket}: crius ")), "{line}");
    assert!(line.contains("RuntimeReady=true") && line.contains("NetworkReady=false ("), "{line}");
    Ok(())
}

#[test]
fn health_command_fails_naming_the_socket_nobody_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nobody.sock");
    let started = std::time::Instant::now();
    let output = crius_e2e::run_crius(&["--socket", socket.to_str().expect("utf8"), "health", "--wait", "1"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "it waited");
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("nobody.sock"), "{stderr}");
    Ok(())
}
