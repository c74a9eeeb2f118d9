//! Pull behaviour that needs a misbehaving registry: a hand-written HTTP
//! server on loopback that can stall mid-blob.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::store::ImageStoreConfig;
use crate::unpack::UnpackLimits;

struct Fixture {
    manifest: Vec<u8>,
    config: Vec<u8>,
    config_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

fn fixture() -> Fixture {
    let mut tar = tar::Builder::new(Vec::new());
    let data = vec![7u8; 64 * 1024];
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "file", data.as_slice()).expect("tar");
    let raw = tar.into_inner().expect("tar");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&raw).to_string()]},
    })
    .to_string()
    .into_bytes();
    let (config_digest, layer_digest) = (Digest::of(&config), Digest::of(&raw));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest.to_string()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "size": raw.len(), "digest": layer_digest.to_string()}],
    })
    .to_string()
    .into_bytes();
    Fixture { manifest, config, config_digest, layer: raw, layer_digest }
}

/// Serves the fixture; the layer blob sends its headers and half its body, then stalls.
async fn stalling_registry(fixture: Fixture) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fixture = Arc::new(fixture);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let fixture = Arc::clone(&fixture);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (content_type, body, stall) = if path.contains("/manifests/") {
                    ("application/vnd.docker.distribution.manifest.v2+json", fixture.manifest.clone(), false)
                } else if path.contains(fixture.config_digest.hex()) {
                    ("application/octet-stream", fixture.config.clone(), false)
                } else if path.contains(fixture.layer_digest.hex()) {
                    ("application/octet-stream", fixture.layer.clone(), true)
                } else {
                    ("application/json", b"{}".to_vec(), false)
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                if stall {
                    let _ = conn.write_all(&body[..body.len() / 2]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else {
                    let _ = conn.write_all(&body).await;
                }
            });
        }
    });
    port
}

fn store(dir: &std::path::Path, timeout: Duration) -> ImageStore {
    ImageStore::open(ImageStoreConfig {
        root: dir.join("images"),
        containers_root: dir.join("snapshots"),
        hosts_dir: None,
        auth_file: None,
        progress_timeout: timeout,
        progress_interval: Duration::from_millis(100),
        unpack_limits: UnpackLimits::default(),
        space_reserve: crate::space::SpaceReserve::default(),
    })
    .expect("open store")
}

#[tokio::test]
async fn a_stalled_pull_is_cancelled_and_leaves_no_visible_blob() {
    let fixture = fixture();
    let layer_digest = fixture.layer_digest.clone();
    let port = stalling_registry(fixture).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let images = store(dir.path(), Duration::from_millis(800));
    let reference: Reference = format!("127.0.0.1:{port}/stall/me:1").parse().expect("reference");

    let err = tokio::time::timeout(Duration::from_secs(20), images.pull(&reference, None))
        .await
        .expect("the watchdog ends the pull, not the test timeout")
        .expect_err("stalled");
    assert!(matches!(err, ImageError::Stalled { .. }), "{err:?}");
    assert!(err.to_string().contains("no progress"), "{err}");
    assert_eq!(err.kind(), crate::store::ErrorKind::Unavailable);
    assert!(!images.content.contains(&layer_digest), "half a blob is never visible");
    assert!(images.layers.list().expect("layers").is_empty());
    assert!(images.active_pulls().is_empty(), "progress entry removed");
}
