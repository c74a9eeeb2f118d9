//! Helpers for the image service tests: a local registry and a crius
//! started together, CRI image calls that return what tests compare, where
//! crius keeps image data on disk, chain ids, and tars with hostile entries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::{
    AuthConfig, Image, ImageFilter, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use crius_images::Digest;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use crate::registry::TestRegistry;
use crate::{Crius, CriusDirs};

/// A registry and a crius whose root is a fresh temp directory.
#[derive(Debug)]
pub struct ImageEnv {
    /// An ImageService client on its socket.
    pub client: ImageServiceClient<Channel>,
    /// The running crius (dropped first: it removes the test's pods while
    /// its directories still exist).
    pub crius: Crius,
    /// The registry (plain HTTP on loopback).
    pub registry: TestRegistry,
    /// crius's directories.
    pub dirs: CriusDirs,
}

impl ImageEnv {
    /// An open registry and a crius with default flags; `None` (after a
    /// skip) without the registry binary.
    pub async fn start(test: &str) -> Result<Option<Self>> {
        let Some(registry) = TestRegistry::start(test) else { return Ok(None) };
        Self::with_registry(registry, &[]).await.map(Some)
    }

    /// A crius started with the test config plus `config` (TOML) next to
    /// `registry`.
    pub async fn with_config(registry: TestRegistry, config: &str) -> Result<Self> {
        let dirs = CriusDirs::new()?;
        std::fs::write(&dirs.config, format!("{}{config}", crate::TEST_CONFIG)).context("write test config")?;
        let crius = Crius::start(&dirs, &[]).await?;
        let client = crius.images().await?;
        Ok(Self { registry, dirs, crius, client })
    }

    /// A crius started with `extra` flags next to `registry`.
    pub async fn with_registry(registry: TestRegistry, extra: &[&str]) -> Result<Self> {
        let dirs = CriusDirs::new()?;
        let crius = Crius::start(&dirs, extra).await?;
        let client = crius.images().await?;
        Ok(Self { registry, dirs, crius, client })
    }

    /// `127.0.0.1:PORT/<name_tag>`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.registry.host())
    }

    /// PullImage without credentials: the image ref, or the gRPC status.
    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with(image, None).await
    }

    /// PullImage with `auth`: the image ref, or the gRPC status.
    pub async fn pull_with(&self, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
        let request = PullImageRequest { image: spec(image), auth, sandbox_config: None };
        Ok(self.client.clone().pull_image(request).await?.into_inner().image_ref)
    }

    /// ImageStatus (not verbose): the image, `None` when crius does not know it.
    pub async fn status(&self, image: &str) -> Result<Option<Image>> {
        let request = ImageStatusRequest { image: spec(image), verbose: false };
        let response = self.client.clone().image_status(request).await.with_context(|| format!("status {image}"))?;
        Ok(response.into_inner().image)
    }

    /// ListImages, optionally with an image filter.
    pub async fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        let filter = filter.map(|image| ImageFilter { image: spec(image) });
        let response = self.client.clone().list_images(ListImagesRequest { filter }).await.context("list images")?;
        Ok(response.into_inner().images)
    }

    /// RemoveImage.
    pub async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        self.client.clone().remove_image(RemoveImageRequest { image: spec(image) }).await.map(drop)
    }

    /// `<root>/images`: the image filesystem.
    pub fn image_root(&self) -> PathBuf {
        self.dirs.root.join("images")
    }

    /// `<root>/images/layers`: unpacked layers by chain id.
    pub fn layers_root(&self) -> PathBuf {
        self.image_root().join("layers")
    }

    /// `<root>/images/content/blobs/sha256`: blobs by digest.
    pub fn blobs_root(&self) -> PathBuf {
        self.image_root().join("content/blobs/sha256")
    }

    /// The unpacked filesystem of the layer with `chain_id`.
    pub fn layer_fs(&self, chain_id: &Digest) -> PathBuf {
        self.layers_root().join(chain_id.hex()).join("fs")
    }

    /// Where the blob `digest` is stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_root().join(digest.hex())
    }

    /// Names of the entries of the layers directory (chain id hex, or
    /// leftovers like `tmp-...`).
    pub fn layer_entries(&self) -> BTreeSet<String> {
        dir_entries(&self.layers_root())
    }

    /// Names (hex) of the stored blobs.
    pub fn blob_entries(&self) -> BTreeSet<String> {
        dir_entries(&self.blobs_root())
    }
}

/// The entry names of `dir`; empty when it does not exist.
pub fn dir_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// An `ImageSpec` naming `image`.
pub fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_owned(), ..ImageSpec::default() })
}

/// `sha256:<hex>` of `data`, computed here (not by crius's code).
pub fn sha256(data: &[u8]) -> Digest {
    let hex: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}").parse().expect("sha256 digest")
}

/// OCI chain ids of a layer stack, bottom first: `chain(0) = diff(0)`,
/// `chain(n) = sha256("<chain(n-1)> <diff(n)>")`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// A tar entry written exactly as given: the tar crate's path checks are
/// bypassed, so paths like `../x` and links out of the layer can be built.
#[derive(Debug, Clone, Copy)]
pub enum RawEntry<'a> {
    /// A regular file (mode 0644).
    File(&'a str, &'a [u8]),
    /// A directory (mode 0755).
    Dir(&'a str),
    /// A symlink `path -> target`.
    Symlink(&'a str, &'a str),
    /// A hard link `path` to `target`.
    Hardlink(&'a str, &'a str),
}

/// A tar of `entries`, names and link targets written raw (at most 100 bytes each).
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (kind, path, link, data, mode): (_, _, _, &[u8], _) = match *entry {
            RawEntry::File(path, data) => (tar::EntryType::Regular, path, "", data, 0o644),
            RawEntry::Dir(path) => (tar::EntryType::Directory, path, "", &[], 0o755),
            RawEntry::Symlink(path, target) => (tar::EntryType::Symlink, path, target, &[], 0o777),
            RawEntry::Hardlink(path, target) => (tar::EntryType::Link, path, target, &[], 0o644),
        };
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        let old = header.as_old_mut();
        assert!(path.len() <= old.name.len() && link.len() <= old.linkname.len(), "raw tar names are short");
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, data).expect("raw tar entry");
    }
    builder.into_inner().expect("finish raw tar")
}

/// Debian's static busybox, which the test image carries as `/bin/sh`.
const BUSYBOX: &str = "/bin/busybox";

/// A registry with a one-layer busybox image (`/bin/sh` is busybox, so its
/// applets run inside the shell) and a crius that pulled it; `None` (after a
/// skip) without root, busybox or the registry.
pub async fn busybox_env(test: &str) -> Result<Option<(ImageEnv, String)>> {
    busybox_env_with(test, "").await
}

/// [`busybox_env`] with `config` (TOML) added to the test config.
pub async fn busybox_env_with(test: &str, config: &str) -> Result<Option<(ImageEnv, String)>> {
    if !testkit::require_root(test) || !testkit::require_tool(test, BUSYBOX, "busybox-static") {
        return Ok(None);
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    let Some(registry) = TestRegistry::start(test) else { return Ok(None) };
    let env = ImageEnv::with_config(registry, config).await?;
    let tar = crate::registry::layer_tar(&[
        ("bin/sh", &busybox, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("tmp/.keep", b"", 0o644),
    ]);
    env.registry.push_image_with("e2e/busybox", "1", &[crate::registry::gzip_layer(&tar)], None, false).await;
    let image = env.reference("e2e/busybox:1");
    env.pull(&image).await?;
    Ok(Some((env, image)))
}
