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
use crate::pull::PullProgress;
use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
use crate::snapshot::{SnapshotError, SnapshotStore};
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
    /// Per-layer unpack limits.
    pub unpack_limits: UnpackLimits,
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
            Self::Content {
                source: ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. }, ..
            } => ErrorKind::InvalidArgument,
            Self::Content { source: ContentError::Fetch { .. }, .. } | Self::Stalled { .. } => ErrorKind::Unavailable,
            Self::Layer { source: LayerError::Unpack { .. } | LayerError::DiffIdMismatch { .. }, .. }
            | Self::Unpack { .. }
            | Self::Manifest { .. }
            | Self::NoPlatform { .. } => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// The image store.
#[derive(Debug)]
pub struct ImageStore {
    pub(crate) config: ImageStoreConfig,
    pub(crate) content: ContentStore,
    pub(crate) layers: Arc<LayerStore>,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) registry: RegistryClient,
    pub(crate) pulls: Mutex<HashMap<u64, Arc<PullProgress>>>,
    pub(crate) next_pull: AtomicU64,
}

impl ImageStore {
    /// Opens (creating) every part of the store.
    pub fn open(config: ImageStoreConfig) -> Result<Self, ImageError> {
        let content = ContentStore::open(&config.root.join("content")).map_err(ImageError::Storage)?;
        let layers = LayerStore::open(&config.root.join("layers")).map_err(ImageError::Layers)?;
        let snapshots = SnapshotStore::open(&config.containers_root).map_err(ImageError::Snapshots)?;
        let registry =
            RegistryClient::new(RegistryConfig { hosts_dir: config.hosts_dir.clone(), ..RegistryConfig::default() });
        Ok(Self {
            config,
            content,
            layers: Arc::new(layers),
            snapshots,
            registry,
            pulls: Mutex::new(HashMap::new()),
            next_pull: AtomicU64::new(0),
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

    /// The raw config JSON of an image.
    pub fn config_json(&self, id: &Digest) -> Result<Vec<u8>, ImageError> {
        self.content.read(id).map_err(ImageError::Storage)
    }

    /// The overlay lowerdirs of a layer stack, bottom first.
    pub fn layer_dirs(&self, chain_ids: &[Digest]) -> Vec<PathBuf> {
        chain_ids.iter().map(|c| self.layers.layer_dir(c)).collect()
    }

    /// Writable container layers.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Deletes every blob and layer not in the keep sets.
    pub fn collect_garbage(
        &self,
        keep_blobs: &HashSet<Digest>,
        keep_layers: &HashSet<Digest>,
    ) -> Result<GcStats, ImageError> {
        let mut stats = GcStats::default();
        for blob in self.content.list().map_err(ImageError::Storage)? {
            if !keep_blobs.contains(&blob) {
                self.content.delete(&blob).map_err(ImageError::Storage)?;
                stats.blobs_removed += 1;
            }
        }
        for layer in self.layers.list().map_err(ImageError::Layers)? {
            if !keep_layers.contains(&layer.chain_id) {
                self.layers.remove(&layer.chain_id).map_err(ImageError::Layers)?;
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
        Ok(Usage {
            images: du(&self.config.root).map_err(|e| io(&self.config.root, e))?,
            containers: du(&self.config.containers_root).map_err(|e| io(&self.config.containers_root, e))?,
        })
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
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}
