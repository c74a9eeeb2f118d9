//! One crius per socket, recovery after SIGKILL, clean exit on SIGTERM.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use cri_api::v1::{NetworkConfig, RuntimeConfig, StatusRequest, UpdateRuntimeConfigRequest, VersionRequest};
use crius_e2e::{Crius, CriusDirs};
use nix::sys::signal::Signal;

#[tokio::test]
async fn socket_is_created_with_mode_0660_in_a_new_directory() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    assert!(!dirs.socket.parent().expect("dir").exists());
    let _crius = Crius::start(&dirs, &[]).await?;
    let meta = std::fs::metadata(&dirs.socket)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    Ok(())
}

#[tokio::test]
async fn second_crius_on_the_same_socket_refuses_to_start() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let first = Crius::start(&dirs, &[]).await?;

    // Same socket, different state root: the socket decides.
    let mut other = CriusDirs::new()?;
    other.socket = dirs.socket.clone();
    let log = other.temp.path().join("second.log");
    let mut second = Crius::spawn(&other, &[], &log)?;
    let status = second.wait_exit(Duration::from_secs(20)).await?;
    assert!(!status.success(), "second crius must fail");
    let message = second.log_text();
    assert!(message.contains("already serving") && message.contains(&dirs.socket.display().to_string()), "{message}");
    assert!(message.contains(&format!("pid {}", first.pid())), "names the holder: {message}");

    // The first one is unaffected.
    first.runtime().await?.version(VersionRequest::default()).await?;
    Ok(())
}

#[tokio::test]
async fn second_crius_on_the_same_state_root_refuses_to_start() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let _first = Crius::start(&dirs, &[]).await?;
    let mut other = CriusDirs::new()?;
    other.root = dirs.root.clone();
    let log = other.temp.path().join("second.log");
    let mut second = Crius::spawn(&other, &[], &log)?;
    let status = second.wait_exit(Duration::from_secs(20)).await?;
    assert!(!status.success());
    assert!(second.log_text().contains("in use by another process"), "{}", second.log_text());
    Ok(())
}

#[tokio::test]
async fn after_sigkill_a_new_crius_takes_the_socket_and_reopens_the_store() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let mut first = Crius::start(&dirs, &[]).await?;
    let update = UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig { pod_cidr: "10.244.7.0/24".into() }),
        }),
    };
    first.runtime().await?.update_runtime_config(update).await?;

    first.signal(Signal::SIGKILL)?;
    first.wait_exit(Duration::from_secs(20)).await?;
    assert!(dirs.socket.exists(), "SIGKILL leaves the stale socket behind");

    let second = Crius::start(&dirs, &[]).await?;
    let status = second.runtime().await?.status(StatusRequest { verbose: true }).await?.into_inner();
    let ready = status.status.expect("status").conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status);
    assert!(ready, "store opened and runtime ready");
    let runtime_config: serde_json::Value = serde_json::from_str(&status.info["runtimeConfig"])?;
    assert_eq!(runtime_config["podCIDR"], "10.244.7.0/24", "state written before the kill survived");
    Ok(())
}

#[tokio::test]
async fn sigterm_and_sigint_exit_zero_and_remove_the_socket() -> anyhow::Result<()> {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let dirs = CriusDirs::new()?;
        let mut crius = Crius::start(&dirs, &[]).await?;
        // Hold an open connection, as kubelet does: shutdown must not wait for it forever.
        let mut client = crius.runtime().await?;
        client.version(VersionRequest::default()).await?;
        crius.signal(signal)?;
        let status = crius.wait_exit(Duration::from_secs(20)).await?;
        assert!(status.success(), "{signal}: exit {status}\n{}", crius.log_text());
        assert!(!dirs.socket.exists(), "{signal}: socket removed on clean exit");
        assert!(crius.log_text().contains("shutdown requested"), "{}", crius.log_text());
    }
    Ok(())
}
