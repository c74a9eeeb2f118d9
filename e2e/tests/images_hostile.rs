//! Images that lie or attack: blobs that do not match their digest, configs
//! whose diff ids do not match the layers, descriptors with wrong sizes,
//! layer tars that try to write outside the layer, oversized tar headers and
//! configs, and decompression bombs. Each is refused with InvalidArgument
//! (ResourceExhausted at the free-space reserve) and a message of bounded
//! size, leaves no image, blob or layer directory behind, and writes nothing
//! outside crius's root.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crius_e2e::hostile;
use crius_e2e::images::{ImageEnv, RawEntry, chain_ids, dir_entries, raw_tar, sha256};
use crius_e2e::registry::{
    Layer, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, TestRegistry, gzip_layer, host_arch, layer_tar,
    tar_layer,
};

const VICTIM: &[u8] = b"must stay as it is";

/// A directory outside crius's root that hostile layers aim at; it holds
/// one file, `victim`.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("crius-sentinel-").tempdir_in("/tmp")?;
        std::fs::write(dir.path().join("victim"), VICTIM)?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The sentinel's path without the leading `/`.
    fn relative(&self) -> String {
        self.path().display().to_string().trim_start_matches('/').to_owned()
    }

    fn assert_untouched(&self, case: &str) {
        let entries = dir_entries(self.path());
        assert_eq!(entries, BTreeSet::from(["victim".to_owned()]), "{case}: written outside the root");
        let victim = self.path().join("victim");
        assert_eq!(std::fs::read(&victim).expect("victim"), VICTIM, "{case}: victim modified");
        assert_eq!(std::fs::metadata(&victim).expect("victim").nlink(), 1, "{case}: victim hard-linked");
    }
}

/// Pulls `name:v1` expecting InvalidArgument whose message contains every
/// one of `needles`; then checks that nothing of it stayed.
async fn assert_refused(env: &ImageEnv, sentinel: &Sentinel, name: &str, chains: &[String], needles: &[&str]) {
    assert_refused_with(env, sentinel, name, chains, needles, tonic::Code::InvalidArgument).await;
}

/// [`assert_refused`] expecting `code`.
async fn assert_refused_with(
    env: &ImageEnv,
    sentinel: &Sentinel,
    name: &str,
    chains: &[String],
    needles: &[&str],
    code: tonic::Code,
) {
    let reference = env.reference(&format!("{name}:v1"));
    let err = env.pull(&reference).await.expect_err(name);
    let shown: String = err.message().chars().take(2000).collect();
    println!("{name}: {shown}");
    assert_eq!(err.code(), code, "{name}: {:?}: {shown}", err.code());
    assert!(err.message().len() < 4096, "{name}: a message of {} bytes", err.message().len());
    for needle in needles {
        assert!(err.message().contains(needle), "{name}: message lacks {needle:?}: {}", err.message());
    }
    assert!(env.status(&reference).await.expect("status").is_none(), "{name}: image recorded");
    assert!(env.list(None).await.expect("list").is_empty(), "{name}: an image is listed");
    let layers = env.layer_entries();
    for entry in &layers {
        assert!(!entry.starts_with("tmp-") && !entry.starts_with("trash-"), "{name}: leftover {entry}");
        assert!(!chains.contains(entry), "{name}: refused layer {entry} stored");
    }
    assert!(layers.is_empty(), "{name}: layer directories left: {layers:?}");
    let blobs = env.blob_entries();
    assert!(blobs.is_empty(), "{name}: blobs left: {blobs:?}");
    let ingest = dir_entries(&env.image_root().join("content/ingest"));
    assert!(ingest.is_empty(), "{name}: downloads left: {ingest:?}");
    assert_no_file_named(&env.dirs.root, "escape", name);
    sentinel.assert_untouched(name);
}

fn assert_no_file_named(root: &Path, file: &str, case: &str) {
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            assert_ne!(entry.file_name().to_string_lossy(), file, "{case}: {} exists", entry.path().display());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

fn chain_hex(tars: &[&[u8]]) -> Vec<String> {
    let diff_ids: Vec<_> = tars.iter().map(|t| sha256(t)).collect();
    chain_ids(&diff_ids).iter().map(|c| c.hex().to_owned()).collect()
}

#[tokio::test]
async fn lying_blobs_and_manifests_are_refused() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("lying_blobs_and_manifests_are_refused").await? else { return Ok(()) };
    let sentinel = Sentinel::new()?;

    // The registry serves layer bytes that do not hash to the layer's digest.
    let tar = layer_tar(&[("file", &[1u8; 3000], 0o644)]);
    let image = env.registry.push_image_with("tampered", "v1", &[gzip_layer(&tar)], None, true).await;
    let mut stored = gzip_layer(&tar).0;
    let middle = stored.len() / 2;
    stored[middle] ^= 0xff;
    env.registry.tamper_blob(&image.layers[0], &stored);
    let layer = image.layers[0].to_string();
    assert_refused(&env, &sentinel, "tampered", &chain_hex(&[&tar]), &[&layer, "verification"]).await;
    assert!(!env.blob_path(&image.layers[0]).exists(), "unverified blob stored");

    // The config's diff id is not the layer's: the descriptor names other
    // content that is in the registry.
    let real = layer_tar(&[("real", b"what the config promises", 0o644)]);
    let other = layer_tar(&[("other", b"what the manifest names", 0o644)]);
    let promised = sha256(&real);
    let config = config_json(&[&promised.to_string()]);
    env.registry.push_image_parts("lying", "v1", &[tar_layer(&other)], vec![promised.clone()], config, true).await;
    let needles = [promised.to_string(), sha256(&other).to_string()];
    let chains = [chain_hex(&[&real]), chain_hex(&[&other])].concat();
    assert_refused(&env, &sentinel, "lying", &chains, &[&needles[0], &needles[1]]).await;

    // The config lists fewer diff ids than the manifest has layers.
    let config = config_json(&[&sha256(&real).to_string()]);
    let layers = [tar_layer(&real), tar_layer(&other)];
    env.registry.push_image_parts("count", "v1", &layers, vec![], config, true).await;
    assert_refused(&env, &sentinel, "count", &[], &["2 layers", "1 diff ids"]).await;

    // The descriptor's size is smaller, then larger, than the blob.
    for (name, delta) in [("shorter", -1i64), ("longer", 1)] {
        push_with_layer_size(&env, name, &real, delta).await;
        let (blob, size) = (sha256(&real).to_string(), (real.len() as i64 + delta).to_string());
        assert_refused(&env, &sentinel, name, &chain_hex(&[&real]), &[&blob, &size]).await;
    }
    Ok(())
}

/// Pushes `name:v1`, one uncompressed layer `tar` whose descriptor's size is
/// off by `delta`.
async fn push_with_layer_size(env: &ImageEnv, name: &str, tar: &[u8], delta: i64) {
    let blob = env.registry.push_blob(name, tar).await;
    let config = config_json(&[&sha256(tar).to_string()]);
    let config_digest = env.registry.push_blob(name, &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
        "layers": [{ "mediaType": OCI_LAYER_TAR, "digest": blob.to_string(), "size": tar.len() as i64 + delta }],
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    env.registry.push_manifest(name, "v1", OCI_MANIFEST, &manifest).await;
}

#[tokio::test]
async fn a_lying_size_does_not_poison_the_blob_for_honest_images() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("a_lying_size_does_not_poison_the_blob_for_honest_images").await? else {
        return Ok(());
    };
    let tar = layer_tar(&[("real", b"shared by a liar and an honest image", 0o644)]);
    for (name, delta) in [("shorter", -1i64), ("longer", 1)] {
        push_with_layer_size(&env, name, &tar, delta).await;
        let err = env.pull(&env.reference(&format!("{name}:v1"))).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
    }
    let honest = env.registry.push_image_with("honest", "v1", &[tar_layer(&tar)], None, true).await;
    assert_eq!(env.pull(&env.reference("honest:v1")).await?, honest.config.to_string());
    let fs = env.layer_fs(&chain_ids(&honest.diff_ids)[0]);
    assert_eq!(std::fs::read(fs.join("real"))?, b"shared by a liar and an honest image");
    Ok(())
}

fn config_json(diff_ids: &[&str]) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    serde_json::to_vec(&config).expect("config json")
}

/// Pushes `name:v1` with one layer, `tar` (gzip).
async fn push_hostile(env: &ImageEnv, name: &str, tar: &[u8]) -> Vec<String> {
    let layers: [Layer<'_>; 1] = [gzip_layer(tar)];
    env.registry.push_image_with(name, "v1", &layers, None, true).await;
    chain_hex(&[tar])
}

#[tokio::test]
async fn layers_escaping_the_layer_directory_are_refused() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("layers_escaping_the_layer_directory_are_refused").await? else { return Ok(()) };
    let sentinel = Sentinel::new()?;
    let outside = sentinel.relative();
    let up = "../".repeat(16);
    let deep_file = format!("{up}{outside}/pwned");
    let through_root = format!("evil/{outside}/pwned");
    let victim_abs = format!("/{outside}/victim");
    let victim_up = format!("{up}{outside}/victim");
    let up_dir = up.trim_end_matches('/').to_owned();
    let victim_via_symlink = format!("evil/{outside}/victim");
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &str)> = vec![
        ("dotdot", vec![RawEntry::File("../escape", b"x")], "../escape"),
        ("deep-dotdot", vec![RawEntry::File(&deep_file, b"x")], "pwned"),
        ("dir-dotdot", vec![RawEntry::Dir("a"), RawEntry::File("a/../../escape", b"x")], "escape"),
        ("absolute-symlink", vec![RawEntry::Symlink("evil", "/"), RawEntry::File(&through_root, b"x")], "evil"),
        ("relative-symlink", vec![RawEntry::Symlink("evil", &up_dir), RawEntry::File(&through_root, b"x")], "evil"),
        ("hardlink-absolute", vec![RawEntry::Hardlink("link", &victim_abs)], "link"),
        ("hardlink-dotdot", vec![RawEntry::Hardlink("link", &victim_up)], "link"),
        (
            "hardlink-via-symlink",
            vec![RawEntry::Symlink("evil", "/"), RawEntry::Hardlink("link", &victim_via_symlink)],
            "link",
        ),
    ];
    for (name, entries, needle) in &cases {
        let tar = raw_tar(entries);
        let chains = push_hostile(&env, name, &tar).await;
        assert_refused(&env, &sentinel, name, &chains, &[needle]).await;
    }
    Ok(())
}

#[tokio::test]
async fn later_entries_replace_symlinks_instead_of_writing_through_them() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("later_entries_replace_symlinks_instead_of_writing_through_them").await? else {
        return Ok(());
    };
    let sentinel = Sentinel::new()?;
    let victim = format!("{}/victim", sentinel.path().display());
    let entries = [
        RawEntry::Symlink("victim-link", &victim),
        RawEntry::File("victim-link", b"replaced"),
        RawEntry::Symlink("dir-link", sentinel.path().to_str().expect("utf8")),
        RawEntry::Dir("dir-link"),
        RawEntry::File("dir-link/inside", b"stays inside"),
    ];
    let tar = raw_tar(&entries);
    let chains = push_hostile(&env, "replace", &tar).await;
    env.pull(&env.reference("replace:v1")).await?;
    let fs = env.layers_root().join(&chains[0]).join("fs");
    let replaced = fs.join("victim-link");
    assert!(std::fs::symlink_metadata(&replaced)?.is_file(), "the symlink was replaced by a file");
    assert_eq!(std::fs::read(&replaced)?, b"replaced");
    assert!(std::fs::symlink_metadata(fs.join("dir-link"))?.is_dir(), "the symlink was replaced by a directory");
    assert_eq!(std::fs::read(fs.join("dir-link/inside"))?, b"stays inside");
    sentinel.assert_untouched("replace");
    Ok(())
}

#[tokio::test]
async fn oversized_tar_headers_are_refused_unread() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("oversized_tar_headers_are_refused_unread").await? else { return Ok(()) };
    let sentinel = Sentinel::new()?;
    let size = 8 << 20;
    let cases = [
        ("long-name", hostile::long_name_tar(tar::EntryType::GNULongName, size), "GNU long name header"),
        ("long-link", hostile::long_name_tar(tar::EntryType::GNULongLink, size), "GNU long link name header"),
        ("pax", hostile::pax_tar(size), "PAX header"),
    ];
    for (name, tar, what) in cases {
        let tar_bytes = tar.to_vec();
        let layer: Layer<'_> = (tar.gzip(), OCI_LAYER_GZIP, tar_bytes.clone());
        env.registry.push_image_with(name, "v1", &[layer], None, true).await;
        let needle = format!("{what} of {size} bytes exceeds the limit of 1048576 bytes");
        assert_refused(&env, &sentinel, name, &chain_hex(&[&tar_bytes]), &[&needle]).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_oversized_config_is_refused_before_it_is_downloaded() -> anyhow::Result<()> {
    let Some(env) = ImageEnv::start("an_oversized_config_is_refused_before_it_is_downloaded").await? else {
        return Ok(());
    };
    let sentinel = Sentinel::new()?;
    let tar = layer_tar(&[("file", b"small layer, big config", 0o644)]);
    let config = hostile::config_of_size(5 << 20, host_arch(), &[sha256(&tar)]).to_vec();
    let image = env.registry.push_image_parts("bigconfig", "v1", &[tar_layer(&tar)], vec![], config, true).await;
    assert_refused(&env, &sentinel, "bigconfig", &chain_hex(&[&tar]), &["5242880 bytes", "4194304"]).await;
    assert_eq!(env.registry.blob_get_count(&image.config), 0, "the config was downloaded");
    Ok(())
}

/// A registry and a crius whose config file adds `images` (TOML lines of
/// the `[images]` section) to the test config.
async fn env_with_images_config(test: &str, images: &str) -> anyhow::Result<Option<ImageEnv>> {
    let Some(registry) = TestRegistry::start(test) else { return Ok(None) };
    let config = registry.dir().join("crius.toml");
    std::fs::write(&config, format!("{}[images]\n{images}\n", crius_e2e::TEST_CONFIG))?;
    let config = config.to_str().expect("utf-8").to_owned();
    Ok(Some(ImageEnv::with_registry(registry, &["--config", &config]).await?))
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_layer_cap_and_leaves_nothing() -> anyhow::Result<()> {
    let test = "a_gzip_bomb_stops_at_the_layer_cap_and_leaves_nothing";
    let Some(env) = env_with_images_config(test, "max_layer_unpacked_bytes = 67108864").await? else {
        return Ok(());
    };
    let sentinel = Sentinel::new()?;
    // 1 GiB of zeros in about a MB; its diff id is never compared.
    let gz = hostile::bomb_tar(1 << 30).gzip();
    let config = config_json(&[&sha256(b"never compared").to_string()]);
    env.registry.push_image_parts("bomb", "v1", &[(gz, OCI_LAYER_GZIP, Vec::new())], vec![], config, true).await;
    assert_refused(&env, &sentinel, "bomb", &[], &["exceeds the unpack limit of 67108864 bytes"]).await;
    Ok(())
}

#[tokio::test]
async fn pulls_stop_at_the_free_space_reserve() -> anyhow::Result<()> {
    let test = "pulls_stop_at_the_free_space_reserve";
    // A reserve just above what the test filesystem has free.
    let stat = nix::sys::statvfs::statvfs(std::env::temp_dir().as_path())?;
    let free_percent = stat.blocks_available() as f64 * 100.0 / stat.blocks() as f64;
    let reserve = free_percent.floor() as u64 + 1;
    if reserve > 99 {
        println!("SKIP {test}: the filesystem of {} is {free_percent:.0}% free", std::env::temp_dir().display());
        return Ok(());
    }
    let Some(env) = env_with_images_config(test, &format!("min_free_percent = {reserve}")).await? else {
        return Ok(());
    };
    let sentinel = Sentinel::new()?;
    let tar = layer_tar(&[("file", b"any image", 0o644)]);
    env.registry.push_image_with("tight", "v1", &[gzip_layer(&tar)], None, true).await;
    let needle = format!("{reserve}% of");
    let needles = ["images.min_free_percent", needle.as_str()];
    assert_refused_with(&env, &sentinel, "tight", &chain_hex(&[&tar]), &needles, tonic::Code::ResourceExhausted).await;
    Ok(())
}
