//! Tags that move, RemoveImage and garbage collection, ImageFsInfo, and
//! refused references.

use anyhow::Context;
use cri_api::v1::{ImageFsInfoRequest, ImageStatusRequest, PullImageRequest};
use crius_e2e::images::{ImageEnv, chain_ids, spec};
use crius_e2e::registry::{gzip_layer, layer_tar, zstd_layer};
use crius_e2e::{Crius, CriusDirs};

fn one_file(path: &str, content: &[u8]) -> Vec<u8> {
    layer_tar(&[(path, content, 0o644)])
}

#[tokio::test]
async fn repull_moves_the_tag_to_the_new_image() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("repull_moves_the_tag_to_the_new_image").await? else { return Ok(()) };
    let tag = env.reference("app:v1");
    let first = env.registry.push_image_with("app", "v1", &[gzip_layer(&one_file("v", b"1"))], None, true).await;
    assert_eq!(env.pull(&tag).await?, first.config.to_string());
    let second = env.registry.push_image_with("app", "v1", &[gzip_layer(&one_file("v", b"2"))], None, true).await;
    assert_eq!(env.pull(&tag).await?, second.config.to_string());

    let current = env.status(&tag).await?.context("status by tag")?;
    assert_eq!(current.id, second.config.to_string());
    assert_eq!(current.repo_tags, [tag.as_str()]);
    let old = env.status(&first.config.to_string()).await?.context("old image still there by id")?;
    assert!(old.repo_tags.is_empty(), "the tag moved away: {:?}", old.repo_tags);
    assert_eq!(old.repo_digests, [format!("{}@{}", env.reference("app"), first.digest)]);
    let mut listed: Vec<String> = env.list(None).await?.into_iter().map(|i| i.id).collect();
    listed.sort();
    let mut expected = vec![first.config.to_string(), second.config.to_string()];
    expected.sort();
    assert_eq!(listed, expected);
    Ok(())
}

#[tokio::test]
async fn remove_image_deletes_all_names_blobs_and_unshared_layers() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("remove_image_deletes_all_names_blobs_and_unshared_layers").await? else {
        return Ok(());
    };
    let shared = one_file("shared.txt", b"in both images");
    let layers_a = [gzip_layer(&shared), zstd_layer(&one_file("a.txt", b"only in a"))];
    let a = env.registry.push_image_with("app", "one", &layers_a, None, true).await;
    env.registry.push_manifest("app", "two", &a.media_type, &a.manifest).await;
    let layers_b = [gzip_layer(&shared), gzip_layer(&one_file("b.txt", b"only in b"))];
    let b = env.registry.push_image_with("other", "v1", &layers_b, None, true).await;
    let (one, two, other) = (env.reference("app:one"), env.reference("app:two"), env.reference("other:v1"));
    for name in [&one, &two] {
        assert_eq!(env.pull(name).await?, a.config.to_string());
    }
    assert_eq!(env.pull(&other).await?, b.config.to_string());
    let image_a = env.status(&one).await?.context("a")?;
    assert_eq!(image_a.repo_tags, [one.clone(), two.clone()]);

    let (chains_a, chains_b) = (chain_ids(&a.diff_ids), chain_ids(&b.diff_ids));
    assert_eq!(chains_a[0], chains_b[0], "the bottom layer is shared");
    assert_eq!(a.layers[0], b.layers[0], "so is its blob");
    assert!(env.layer_fs(&chains_a[1]).join("a.txt").is_file());
    let a_only_blobs = [&a.digest, &a.config, &a.layers[1]];
    for blob in a_only_blobs {
        assert!(env.blob_path(blob).is_file(), "{blob} stored before removal");
    }

    env.remove(&one).await?;
    let a_id = a.config.to_string();
    for query in [one.as_str(), two.as_str(), a_id.as_str(), &format!("{}@{}", env.reference("app"), a.digest)] {
        assert!(env.status(query).await?.is_none(), "{query} still answers after RemoveImage");
    }
    let listed: Vec<String> = env.list(None).await?.into_iter().map(|i| i.id).collect();
    assert_eq!(listed, [b.config.to_string()]);

    for blob in a_only_blobs {
        assert!(!env.blob_path(blob).exists(), "{blob} of the removed image is gone");
    }
    assert!(!env.layers_root().join(chains_a[1].hex()).exists(), "the unshared layer is gone");
    assert_eq!(std::fs::read(env.layer_fs(&chains_b[0]).join("shared.txt"))?, b"in both images");
    let mut kept_blobs: Vec<String> =
        [&b.digest, &b.config, &b.layers[0], &b.layers[1]].iter().map(|d| d.hex().to_owned()).collect();
    kept_blobs.sort();
    assert_eq!(env.blob_entries().into_iter().collect::<Vec<_>>(), kept_blobs);
    let mut kept_layers: Vec<String> = chains_b.iter().map(|c| c.hex().to_owned()).collect();
    kept_layers.sort();
    assert_eq!(env.layer_entries().into_iter().collect::<Vec<_>>(), kept_layers, "no trash or tmp leftovers");

    // Removing what is gone (by any name) or never existed is fine.
    for gone in [one.as_str(), two.as_str(), a_id.as_str(), &env.reference("never:v1")] {
        env.remove(gone).await.with_context(|| format!("remove {gone} again"))?;
    }
    assert_eq!(env.status(&other).await?.context("b untouched")?.id, b.config.to_string());

    // The last image goes too, and takes the shared layer with it.
    env.remove(&b.config.to_string()).await?;
    assert!(env.list(None).await?.is_empty());
    assert!(env.blob_entries().is_empty(), "{:?}", env.blob_entries());
    assert!(env.layer_entries().is_empty(), "{:?}", env.layer_entries());

    // A removed image pulls again, all of it fetched and unpacked anew.
    assert_eq!(env.pull(&two).await?, a.config.to_string());
    assert_eq!(env.status(&two).await?.context("pulled again")?.repo_tags, [two.as_str()]);
    assert_eq!(std::fs::read(env.layer_fs(&chains_a[1]).join("a.txt"))?, b"only in a");
    assert_eq!(env.registry.blob_get_count(&a.layers[1]), 2, "fetched once per pull");
    Ok(())
}

#[tokio::test]
async fn image_fs_info_reports_usage_under_the_root() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("image_fs_info_reports_usage_under_the_root").await? else { return Ok(()) };
    let fs_info = || async { env.client.clone().image_fs_info(ImageFsInfoRequest {}).await.map(|r| r.into_inner()) };
    let before = fs_info().await?;
    let payload = vec![7u8; 256 * 1024];
    env.registry
        .push_image_with("fs", "v1", &[gzip_layer(&layer_tar(&[("payload", &payload, 0o644)]))], None, true)
        .await;
    env.pull(&env.reference("fs:v1")).await?;
    let after = fs_info().await?;

    assert_eq!(after.image_filesystems.len(), 1, "{after:?}");
    assert_eq!(after.container_filesystems.len(), 1, "{after:?}");
    let images = &after.image_filesystems[0];
    let used = |fs: &cri_api::v1::FilesystemUsage| fs.used_bytes.as_ref().map_or(0, |u| u.value);
    assert!(used(images) > 0, "{images:?}");
    assert!(images.inodes_used.as_ref().is_some_and(|i| i.value > 0), "{images:?}");
    assert!(images.timestamp > 0);
    let used_before = used(&before.image_filesystems[0]);
    assert!(
        used(images) >= used_before + payload.len() as u64,
        "{used_before} -> {}: the unpacked layer counts",
        used(images)
    );
    for fs in [images, &after.container_filesystems[0]] {
        let mountpoint = fs.fs_id.as_ref().map(|f| f.mountpoint.clone()).unwrap_or_default();
        assert!(std::path::Path::new(&mountpoint).starts_with(&env.dirs.root), "{mountpoint} under the root");
    }
    Ok(())
}

#[tokio::test]
async fn invalid_references_are_invalid_arguments() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let mut client = crius.images().await?;
    for bad in ["", "   ", "UPPER/Case:tag", "registry.example/x:bad tag", "x@sha256:123"] {
        let request = PullImageRequest { image: spec(bad), ..PullImageRequest::default() };
        let err = client.pull_image(request).await.expect_err(bad);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("image.image"), "{bad:?}: {}", err.message());
    }
    let err = client.pull_image(PullImageRequest::default()).await.expect_err("no image spec");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let zeros = format!("sha256:{}", "0".repeat(64));
    for unknown in ["docker.io/library/busybox:latest", "busybox", zeros.as_str(), "0123456789ab"] {
        let response = client.image_status(ImageStatusRequest { image: spec(unknown), verbose: true }).await?;
        assert_eq!(response.into_inner().image, None, "{unknown}");
    }
    let response = client.image_status(ImageStatusRequest { image: spec("UPPER/Case:tag"), verbose: false }).await?;
    assert_eq!(response.into_inner().image, None, "an invalid name is simply not present");
    Ok(())
}
