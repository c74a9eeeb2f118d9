//! The image store: content store, layer store and snapshots under one root,
//! plus the registry client that fills them. This is what the agent holds.
//!
//! ```text
//! <root>/content/blobs/sha256/<hex>   manifests, configs, compressed layers
//! <root>/layers/<chain id hex>/fs     unpacked layers (overlay lowerdirs)
//! <containers root>/<key>/{upper,work}  writable container layers
//! ```

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::content::{ContentError, ContentStore};
use crate::digest::Digest;
use crate::layers::{LayerError, LayerStore};
use crate::lease::{Leases, Resource};
use crate::pull::PullProgress;
use crate::registry::manifest::MAX_CONFIG_SIZE;
use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::space::SpaceReserve;
use crate::unpack::{UnpackError, UnpackLimits};

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// Image content and layers.
    pub root: PathBuf,
    /// Writable container layers.
    pub containers_root: PathBuf,
    /// containerd-style `hosts.toml` directory.
    pub hosts_dir: Option<PathBuf>,
    /// docker `config.json` with default credentials.
    pub auth_file: Option<PathBuf>,
    /// A pull that receives nothing for this long is cancelled.
    pub progress_timeout: Duration,
    /// How often a running pull logs its progress.
    pub progress_interval: Duration,
    /// Per-layer unpack limits (their `reserve` is replaced by `space_reserve`).
    pub unpack_limits: UnpackLimits,
    /// Free space that downloads and unpacks leave on the image filesystem.
    pub space_reserve: SpaceReserve,
}

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Image id: the config digest.
    pub id: Digest,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The digest the reference resolved to: the index's for a multi-platform
    /// image, else the manifest's.
    pub resolved_digest: Digest,
    /// Uncompressed size of all layers.
    pub size: u64,
    /// Layer chain ids, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Every blob the image needs: index (if any), manifest, config, layers.
    pub blobs: Vec<Digest>,
    /// The config's `User`.
    pub user: String,
}

/// Bytes and inodes used under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes (allocated blocks).
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

impl FsUsage {
    /// Both usages together.
    pub fn plus(self, other: FsUsage) -> FsUsage {
        FsUsage { bytes: self.bytes.saturating_add(other.bytes), inodes: self.inodes.saturating_add(other.inodes) }
    }
}

/// Image filesystem and container filesystem usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Content and layers.
    pub images: FsUsage,
    /// Writable container layers.
    pub containers: FsUsage,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Layers deleted.
    pub layers_removed: usize,
}

/// How a failure should be reported to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The image or one of its parts does not exist.
    NotFound,
    /// The request or the image is malformed or unsupported.
    InvalidArgument,
    /// The registry refused the credentials.
    Unauthenticated,
    /// The registry could not be reached or stalled.
    Unavailable,
    /// The image filesystem reached its free-space reserve.
    ResourceExhausted,
    /// Anything else.
    Internal,
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry failed.
    #[error("pull {reference}")]
    Registry {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: Box<RegistryError>,
    },
    /// A blob could not be stored.
    #[error("pull {reference}")]
    Content {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: ContentError,
    },
    /// A layer could not be unpacked or stored.
    #[error("pull {reference}")]
    Layer {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// A layer's media type or content is refused.
    #[error("pull {reference}")]
    Unpack {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// The manifest or config is malformed or inconsistent.
    #[error("pull {reference}: {reason}")]
    Manifest {
        /// The image.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The manifest declares a config larger than
    /// [`MAX_CONFIG_SIZE`]; it is not downloaded.
    #[error("pull {reference}: the image config has {size} bytes, more than the {limit} accepted")]
    ConfigTooLarge {
        /// The image.
        reference: String,
        /// The size the manifest declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The index has no manifest for this platform.
    #[error("pull {reference}: no manifest for platform {platform} in the image index")]
    NoPlatform {
        /// The image.
        reference: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// No byte arrived for the configured time.
    #[error("pull {reference}: no progress for {secs} s (images.pull_progress_timeout_secs); cancelled")]
    Stalled {
        /// The image.
        reference: String,
        /// The timeout.
        secs: u64,
    },
    /// Local storage failed.
    #[error("image store")]
    Storage(#[source] ContentError),
    /// Local layer storage failed.
    #[error("image store")]
    Layers(#[source] LayerError),
    /// Snapshot storage failed.
    #[error("image store")]
    Snapshots(#[source] SnapshotError),
    /// A blocking task failed.
    #[error("image store task failed: {0}")]
    Task(String),
}

impl ImageError {
    /// How to report it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Registry { source, .. } => source.kind(),
            Self::Content { source: ContentError::LowSpace { .. }, .. } => ErrorKind::ResourceExhausted,
            Self::Layer { source: LayerError::Unpack { source, .. }, .. }
                if matches!(source.downcast_ref::<UnpackError>(), Some(UnpackError::LowSpace(_))) =>
            {
                ErrorKind::ResourceExhausted
            }
            Self::Content {
                source:
                    ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } | ContentError::TooLarge { .. },
                ..
            } => ErrorKind::InvalidArgument,
            Self::Content { source: ContentError::Fetch { .. }, .. } | Self::Stalled { .. } => ErrorKind::Unavailable,
            Self::Layer { source: LayerError::Unpack { .. } | LayerError::DiffIdMismatch { .. }, .. }
            | Self::Unpack { .. }
            | Self::Manifest { .. }
            | Self::ConfigTooLarge { .. }
            | Self::NoPlatform { .. } => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// The image store.
#[derive(Debug)]
pub struct ImageStore {
    pub(crate) config: ImageStoreConfig,
    pub(crate) content: Arc<ContentStore>,
    pub(crate) layers: Arc<LayerStore>,
    /// What pulls in progress hold and added.
    pub(crate) leases: Arc<Leases>,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) registry: RegistryClient,
    pub(crate) pulls: Mutex<HashMap<u64, Arc<PullProgress>>>,
    pub(crate) next_pull: AtomicU64,
    /// Usage of each unpacked layer by directory name: layers never change
    /// once unpacked, so each is walked once, not on every ImageFsInfo.
    layer_usage: Mutex<HashMap<String, FsUsage>>,
}

impl ImageStore {
    /// Opens (creating) every part of the store.
    pub fn open(config: ImageStoreConfig) -> Result<Self, ImageError> {
        let content =
            ContentStore::open_with(&config.root.join("content"), config.space_reserve).map_err(ImageError::Storage)?;
        let layers = LayerStore::open(&config.root.join("layers")).map_err(ImageError::Layers)?;
        let snapshots = SnapshotStore::open(&config.containers_root).map_err(ImageError::Snapshots)?;
        let registry =
            RegistryClient::new(RegistryConfig { hosts_dir: config.hosts_dir.clone(), ..RegistryConfig::default() });
        Ok(Self {
            config,
            content: Arc::new(content),
            layers: Arc::new(layers),
            leases: Arc::default(),
            snapshots,
            registry,
            pulls: Mutex::new(HashMap::new()),
            next_pull: AtomicU64::new(0),
            layer_usage: Mutex::new(HashMap::new()),
        })
    }

    /// The image filesystem root (for ImageFsInfo).
    pub fn image_root(&self) -> &Path {
        &self.config.root
    }

    /// The container filesystem root (for ImageFsInfo).
    pub fn container_root(&self) -> &Path {
        &self.config.containers_root
    }

    /// The raw config JSON of an image (at most [`MAX_CONFIG_SIZE`] bytes). Blocking.
    pub fn config_json(&self, id: &Digest) -> Result<Vec<u8>, ImageError> {
        self.content.read(id, MAX_CONFIG_SIZE).map_err(ImageError::Storage)
    }

    /// The overlay lowerdirs of a layer stack, bottom first.
    pub fn layer_dirs(&self, chain_ids: &[Digest]) -> Vec<PathBuf> {
        chain_ids.iter().map(|c| self.layers.layer_dir(c)).collect()
    }

    /// Writable container layers.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Deletes every blob and layer not in the keep sets, except what a
    /// pull in progress holds.
    pub fn collect_garbage(
        &self,
        keep_blobs: &HashSet<Digest>,
        keep_layers: &HashSet<Digest>,
    ) -> Result<GcStats, ImageError> {
        let mut stats = GcStats::default();
        for blob in self.content.list().map_err(ImageError::Storage)? {
            let resource = Resource::Blob(blob.clone());
            if !keep_blobs.contains(&blob) && !self.leases.is_held(&resource) {
                self.content.delete(&blob).map_err(ImageError::Storage)?;
                self.leases.forget(&resource);
                stats.blobs_removed += 1;
            }
        }
        for layer in self.layers.list().map_err(ImageError::Layers)? {
            let resource = Resource::Layer(layer.chain_id.clone());
            if !keep_layers.contains(&layer.chain_id) && !self.leases.is_held(&resource) {
                self.layers.remove(&layer.chain_id).map_err(ImageError::Layers)?;
                self.leases.forget(&resource);
                stats.layers_removed += 1;
            }
        }
        Ok(stats)
    }

    /// Bytes and inodes used by images and by container layers.
    pub fn usage(&self) -> Result<Usage, ImageError> {
        let io = |path: &Path, source| {
            ImageError::Storage(ContentError::Io { operation: "measure", path: path.to_path_buf(), source })
        };
        let mut images = du_entry(&self.config.root).map_err(|e| io(&self.config.root, e))?;
        for entry in std::fs::read_dir(&self.config.root).map_err(|e| io(&self.config.root, e))? {
            let path = entry.map_err(|e| io(&self.config.root, e))?.path();
            let part = if path.file_name().is_some_and(|n| n == "layers") {
                self.layers_usage(&path).map_err(|e| io(&path, e))?
            } else {
                du(&path).map_err(|e| io(&path, e))?
            };
            images = images.plus(part);
        }
        Ok(Usage {
            images,
            containers: du(&self.config.containers_root).map_err(|e| io(&self.config.containers_root, e))?,
        })
    }

    /// The layers directory: committed layers from the cache (walked once),
    /// anything else (unpacks in progress, layers being removed) walked now.
    fn layers_usage(&self, dir: &Path) -> std::io::Result<FsUsage> {
        let mut total = du_entry(dir)?;
        let mut cache = self.layer_usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let committed = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let usage = match cache.get(&name) {
                Some(usage) if committed => *usage,
                _ => {
                    let usage = du(&entry.path())?;
                    if committed {
                        cache.insert(name.clone(), usage);
                    }
                    usage
                }
            };
            present.insert(name);
            total = total.plus(usage);
        }
        cache.retain(|name, _| present.contains(name));
        Ok(total)
    }
}

/// Allocated bytes and inode count of a tree, each inode counted once.
pub(crate) fn du(root: &Path) -> std::io::Result<FsUsage> {
    let mut usage = FsUsage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.bytes += meta.blocks() * 512;
        }
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                // Removed meanwhile (a layer being deleted): it uses nothing now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}

/// The usage of one inode, without what is below it.
fn du_entry(path: &Path) -> std::io::Result<FsUsage> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok(FsUsage { bytes: meta.blocks() * 512, inodes: 1 })
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn usage_with_cached_layers_matches_a_full_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ImageStoreConfig {
            root: dir.path().join("images"),
            containers_root: dir.path().join("snapshots"),
            hosts_dir: None,
            auth_file: None,
            progress_timeout: Duration::from_secs(60),
            progress_interval: Duration::from_secs(5),
            unpack_limits: UnpackLimits::default(),
            space_reserve: SpaceReserve::default(),
        };
        let store = ImageStore::open(config).expect("store");
        let layers = dir.path().join("images/layers");
        for (n, size) in [(1u8, 10_000usize), (2, 200_000)] {
            let fs = layers.join(format!("{n:064x}")).join("fs");
            std::fs::create_dir_all(&fs).expect("mkdir");
            std::fs::write(fs.join("file"), vec![n; size]).expect("write");
        }
        std::fs::create_dir_all(layers.join(".tmp-unpacking")).expect("mkdir");
        let full = |root: &Path| du(root).expect("du");
        for _ in 0..2 {
            assert_eq!(store.usage().expect("usage").images, full(&dir.path().join("images")));
        }
        // A removed layer no longer counts (and leaves the cache).
        std::fs::remove_dir_all(layers.join(format!("{:064x}", 2))).expect("rm");
        assert_eq!(store.usage().expect("usage").images, full(&dir.path().join("images")));
        assert_eq!(store.layer_usage.lock().expect("lock").len(), 1);
    }
}
