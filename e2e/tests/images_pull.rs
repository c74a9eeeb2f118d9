//! PullImage from a real local registry: tags, digests, indexes, layer
//! compressions, image users, basic auth, mirrors, concurrent pulls.

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use base64::Engine;
use cri_api::v1::{AuthConfig, PullImageRequest};
use crius_e2e::images::{ImageEnv, chain_ids, sha256, spec};
use crius_e2e::registry::{
    HTPASSWD_PASSWORD, HTPASSWD_USER, TestRegistry, gzip, gzip_layer, host_arch, layer_tar, tar_layer, zstd_layer,
};

/// A one-file layer tar.
fn one_file(path: &str, content: &[u8]) -> Vec<u8> {
    layer_tar(&[(path, content, 0o644)])
}

#[tokio::test]
async fn pull_by_tag_is_found_by_tag_id_and_digest() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("pull_by_tag_is_found_by_tag_id_and_digest").await? else { return Ok(()) };
    let image =
        env.registry.push_image_with("team/app", "v1", &[gzip_layer(&one_file("hello", b"hi"))], None, true).await;
    let tagged = env.reference("team/app:v1");
    let by_digest = format!("{}@{}", env.reference("team/app"), image.digest);

    let image_ref = env.pull(&tagged).await?;
    assert_eq!(image_ref, image.config.to_string(), "image_ref is the config digest");
    for query in [tagged.as_str(), image_ref.as_str(), image.config.hex(), by_digest.as_str()] {
        let found = env.status(query).await?.with_context(|| format!("status {query}"))?;
        assert_eq!(found.id, image_ref, "{query}");
        assert_eq!(found.repo_tags, [tagged.as_str()], "{query}");
        assert_eq!(found.repo_digests, [by_digest.as_str()], "{query}");
        assert!(found.size > 0, "{found:?}");
        assert_eq!(found.spec.map(|s| s.image), Some(image_ref.clone()));
    }

    let listed = env.list(None).await?;
    assert_eq!(listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [image_ref.as_str()]);
    for filter in [tagged.as_str(), by_digest.as_str(), image_ref.as_str()] {
        let found = env.list(Some(filter)).await?;
        assert_eq!(found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [image_ref.as_str()], "{filter}");
    }
    for unknown in [env.reference("team/app:v2"), env.reference("team/other:v1"), "docker.io/library/x".into()] {
        assert!(env.list(Some(&unknown)).await?.is_empty(), "{unknown}");
        assert!(env.status(&unknown).await?.is_none(), "{unknown}");
    }
    Ok(())
}

#[tokio::test]
async fn pull_by_digest_adds_no_tag() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("pull_by_digest_adds_no_tag").await? else { return Ok(()) };
    let image = env.registry.push_image_with("team/app", "v1", &[tar_layer(&one_file("a", b"a"))], None, true).await;
    let pinned = format!("{}@{}", env.reference("team/app"), image.digest);

    assert_eq!(env.pull(&pinned).await?, image.config.to_string());
    let found = env.status(&pinned).await?.context("status by digest")?;
    assert!(found.repo_tags.is_empty(), "a pull by digest tags nothing: {:?}", found.repo_tags);
    assert_eq!(found.repo_digests, [pinned]);
    for tag in ["team/app:v1", "team/app:latest", "team/app"] {
        assert!(env.status(&env.reference(tag)).await?.is_none(), "{tag}");
    }
    assert_eq!(env.list(None).await?.len(), 1, "an image with a repo digest is listed");
    Ok(())
}

/// Pushes an index (`docker`: manifest list) with an arm64 entry first and
/// one for this machine; returns (index digest, host image config, arm image config).
async fn push_multi_arch(
    registry: &TestRegistry,
    name: &str,
    docker: bool,
) -> (crius_images::Digest, crius_images::Digest, crius_images::Digest) {
    let other_arch = if host_arch() == "arm64" { "amd64" } else { "arm64" };
    let other_tar = one_file("arch", other_arch.as_bytes());
    let host_tar = one_file("arch", host_arch().as_bytes());
    let other =
        registry.push_image(name, &format!("only-{other_arch}"), other_arch, &[&gzip(&other_tar)], docker).await;
    let host = registry.push_image(name, "only-host", host_arch(), &[&gzip(&host_tar)], docker).await;
    let entries = [(&other, other_arch, None), (&host, host_arch(), None)];
    let (index, _) = registry.push_index(name, "multi", &entries, docker).await;
    (index, host.config, other.config)
}

#[tokio::test]
async fn index_and_manifest_list_pull_this_machines_platform() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("index_and_manifest_list_pull_this_machines_platform").await? else {
        return Ok(());
    };
    for (name, docker) in [("multi/oci", false), ("multi/docker", true)] {
        let (_, host_config, other_config) = push_multi_arch(&env.registry, name, docker).await;
        let reference = env.reference(&format!("{name}:multi"));
        assert_eq!(env.pull(&reference).await?, host_config.to_string(), "{name}: the {} entry", host_arch());
        let found = env.status(&reference).await?.context("status")?;
        assert_eq!(found.id, host_config.to_string());
        assert!(env.status(&other_config.to_string()).await?.is_none(), "{name}: other platform not pulled");
        assert_eq!(env.registry.blob_get_count(&other_config), 0, "{name}: other platform's config not fetched");
    }
    Ok(())
}

#[tokio::test]
async fn pull_by_index_digest_is_found_by_that_digest() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("pull_by_index_digest_is_found_by_that_digest").await? else { return Ok(()) };
    let (index, host_config, _) = push_multi_arch(&env.registry, "multi/oci", false).await;
    let pinned = format!("{}@{index}", env.reference("multi/oci"));
    assert_eq!(env.pull(&pinned).await?, host_config.to_string());
    // kubelet asks ImageStatus with the pod's image string before pulling;
    // containerd records the digest the reference resolved to.
    let found = env.status(&pinned).await?.context("status by the index digest kubelet knows")?;
    assert_eq!(found.id, host_config.to_string());
    assert!(found.repo_digests.contains(&pinned), "{:?}", found.repo_digests);
    Ok(())
}

#[tokio::test]
async fn gzip_zstd_and_plain_layers_are_unpacked() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("gzip_zstd_and_plain_layers_are_unpacked").await? else { return Ok(()) };
    let tars = [
        layer_tar(&[("etc/gzip.txt", b"from the gzip layer", 0o644), ("bin/tool", b"#!/bin/sh\n", 0o750)]),
        layer_tar(&[("etc/zstd.txt", b"from the zstd layer", 0o600)]),
        layer_tar(&[("usr/share/plain.txt", b"from the plain layer", 0o644)]),
    ];
    let layers = [gzip_layer(&tars[0]), zstd_layer(&tars[1]), tar_layer(&tars[2])];
    let image = env.registry.push_image_with("mixed", "v1", &layers, None, true).await;
    let diff_ids: Vec<_> = tars.iter().map(|t| sha256(t)).collect();
    assert_eq!(image.diff_ids, diff_ids);

    assert_eq!(env.pull(&env.reference("mixed:v1")).await?, image.config.to_string());
    let chains = chain_ids(&diff_ids);
    let expected: [(usize, &str, &[u8], u32); 4] = [
        (0, "etc/gzip.txt", b"from the gzip layer", 0o644),
        (0, "bin/tool", b"#!/bin/sh\n", 0o750),
        (1, "etc/zstd.txt", b"from the zstd layer", 0o600),
        (2, "usr/share/plain.txt", b"from the plain layer", 0o644),
    ];
    for (layer, path, content, mode) in expected {
        let file = env.layer_fs(&chains[layer]).join(path);
        assert_eq!(std::fs::read(&file).with_context(|| file.display().to_string())?, content, "{path}");
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o7777, mode, "{path}");
    }
    assert!(!env.layer_fs(&chains[1]).join("etc/gzip.txt").exists(), "each layer holds only its own files");
    let stored: Vec<String> = chains.iter().map(|c| c.hex().to_owned()).collect();
    assert_eq!(env.layer_entries().into_iter().collect::<Vec<_>>(), sorted(stored));
    for blob in image.layers.iter().chain([&image.config, &image.digest]) {
        assert!(env.blob_path(blob).is_file(), "blob {blob} stored");
    }
    Ok(())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn image_user_gives_uid_or_username() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("image_user_gives_uid_or_username").await? else { return Ok(()) };
    for (tag, user) in [("numeric", "1002"), ("named", "www-data:1004"), ("none", "")] {
        let layer = tar_layer(&one_file("user", user.as_bytes()));
        let config_user = (!user.is_empty()).then_some(user);
        env.registry.push_image_with("users", tag, &[layer], config_user, true).await;
        env.pull(&env.reference(&format!("users:{tag}"))).await?;
    }
    let numeric = env.status(&env.reference("users:numeric")).await?.context("numeric")?;
    assert_eq!(numeric.uid.map(|u| u.value), Some(1002));
    assert_eq!(numeric.username, "");
    let named = env.status(&env.reference("users:named")).await?.context("named")?;
    assert_eq!(named.uid, None);
    assert_eq!(named.username, "www-data");
    let none = env.status(&env.reference("users:none")).await?.context("none")?;
    assert_eq!((none.uid, none.username.as_str()), (None, ""));
    Ok(())
}

#[tokio::test]
async fn basic_auth_from_the_request() -> anyhow::Result<()> {
    let Some(registry) = TestRegistry::start_with_htpasswd("basic_auth_from_the_request") else { return Ok(()) };
    let image =
        registry.push_image_with("private/app", "v1", &[gzip_layer(&one_file("secret", b"s"))], None, true).await;
    let env = ImageEnv::with_registry(registry, &[]).await?;
    let reference = env.reference("private/app:v1");
    let basic = |password: &str| AuthConfig {
        username: HTPASSWD_USER.into(),
        password: password.into(),
        ..AuthConfig::default()
    };

    let err = env.pull(&reference).await.expect_err("anonymous pull refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reference), "{}", err.message());
    let err = env.pull_with(&reference, Some(basic("wrong"))).await.expect_err("wrong password");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(env.list(None).await?.is_empty());

    assert_eq!(env.pull_with(&reference, Some(basic(HTPASSWD_PASSWORD))).await?, image.config.to_string());
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"));
    let auth = AuthConfig { auth: encoded, ..AuthConfig::default() };
    assert_eq!(env.pull_with(&reference, Some(auth)).await?, image.config.to_string());

    // Credentials are checked on every pull, not remembered from the last one.
    let err = env.pull_with(&reference, Some(basic("wrong"))).await.expect_err("wrong password after success");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = env.pull(&reference).await.expect_err("anonymous after success");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn hosts_toml_server_serves_another_registry_name() -> anyhow::Result<()> {
    let Some(registry) = TestRegistry::start("hosts_toml_server_serves_another_registry_name") else { return Ok(()) };
    let image = registry.push_image_with("x", "tag", &[gzip_layer(&one_file("m", b"mirrored"))], None, true).await;
    let config_dir = tempfile::tempdir()?;
    let hosts = config_dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join("mirror.example.invalid"))?;
    let hosts_toml = format!("server = \"{}\"\n", registry.url());
    std::fs::write(hosts.join("mirror.example.invalid/hosts.toml"), hosts_toml)?;
    let config = config_dir.path().join("crius.toml");
    std::fs::write(&config, format!("{}[registry]\nconfig_path = \"{}\"\n", crius_e2e::TEST_CONFIG, hosts.display()))?;
    let env = ImageEnv::with_registry(registry, &["--config", config.to_str().context("utf8")?]).await?;

    let reference = "mirror.example.invalid/x:tag";
    assert_eq!(env.pull(reference).await?, image.config.to_string());
    let found = env.status(reference).await?.context("status by the original name")?;
    assert_eq!(found.repo_tags, [reference]);
    assert_eq!(found.repo_digests, [format!("mirror.example.invalid/x@{}", image.digest)]);
    assert!(env.registry.request_count("GET", "/v2/x/manifests/tag") >= 1, "served by the local registry");
    assert_eq!(env.registry.blob_get_count(&image.layers[0]), 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_pulls_fetch_each_blob_once() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("concurrent_pulls_fetch_each_blob_once").await? else { return Ok(()) };
    let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let layers = [
        gzip_layer(&layer_tar(&[("data/big", &big, 0o644)])),
        zstd_layer(&one_file("data/small", b"small")),
        gzip_layer(&one_file("data/third", b"third")),
    ];
    let image = env.registry.push_image_with("busy", "v1", &layers, None, true).await;
    let reference = env.reference("busy:v1");

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = env.crius.images().await?;
        let request = PullImageRequest { image: spec(&reference), ..PullImageRequest::default() };
        tasks.push(tokio::spawn(async move { client.pull_image(request).await.map(|r| r.into_inner().image_ref) }));
    }
    for result in futures_util::future::join_all(tasks).await {
        let image_ref =
            result?.map_err(|e| anyhow::anyhow!("{e:?} (manifest {}, config {})", image.digest, image.config))?;
        assert_eq!(image_ref, image.config.to_string());
    }
    for blob in image.layers.iter().chain([&image.config]) {
        assert_eq!(env.registry.blob_get_count(blob), 1, "blob {blob} fetched once:\n{:#?}", env.registry.access_log());
    }
    let listed = env.list(None).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags, [reference]);
    assert_eq!(env.layer_entries().len(), 3, "{:?}", env.layer_entries());
    Ok(())
}

#[tokio::test]
async fn missing_tag_or_repository_is_not_found() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("missing_tag_or_repository_is_not_found").await? else { return Ok(()) };
    env.registry.push_image_with("present", "v1", &[tar_layer(&one_file("p", b"p"))], None, true).await;
    for missing in [env.reference("present:v2"), env.reference("absent:latest")] {
        let err = env.pull(&missing).await.expect_err("missing");
        assert_eq!(err.code(), tonic::Code::NotFound, "{missing}: {err:?}");
        assert!(err.message().contains(&missing), "{}", err.message());
    }
    assert!(env.list(None).await?.is_empty());
    Ok(())
}
