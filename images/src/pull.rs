//! Pulling an image: resolve the reference, pick the platform manifest,
//! fetch the config, then download and unpack every layer that the layer
//! store lacks, each blob verified before use.
//!
//! Layers download and unpack concurrently (each layer directory is
//! independent of its parents). A watchdog logs progress and cancels a pull
//! that receives nothing for the configured time.
//!
//! Hostile input is bounded: manifests are read up to 4 MiB, a config whose
//! descriptor is larger than [`MAX_CONFIG_SIZE`] is refused before it is
//! downloaded, every blob is written to disk as it streams (never held in
//! memory), and unpacking bounds headers, bytes and entries. A pull that
//! fails removes what it added ([`crate::lease`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_spec::image::{Descriptor, ImageManifest};

use crate::content::{ContentError, FetchedStream, Ingested, Progress};
use crate::digest::Digest;
use crate::layers::{LayerInfo, Unpacked, chain_ids};
use crate::lease::{Lease, Resource};
use crate::reference::Reference;
use crate::registry::manifest::{MAX_CONFIG_SIZE, parse_config};
use crate::registry::{Credentials, DockerConfig, Manifest, Resolved, select_platform};
use crate::shown;
use crate::store::{ImageError, ImageStore, Pulled};
use crate::unpack::{Compression, UnpackLimits, unpack_layer};

/// Layers downloaded at the same time by one pull.
const PARALLEL_LAYERS: usize = 3;

/// A pull in progress, for logs and metrics.
#[derive(Debug)]
pub struct PullProgress {
    /// The image.
    pub reference: String,
    /// Bytes received.
    pub bytes: Progress,
    /// Sum of the layer and config sizes, once the manifest is known.
    pub bytes_total: AtomicU64,
    /// Layers in place (unpacked now or before).
    pub layers_done: AtomicUsize,
    /// Layers of the image.
    pub layers_total: AtomicUsize,
    /// Unpacks running right now (they make progress without receiving bytes).
    pub unpacking: AtomicUsize,
}

impl PullProgress {
    fn new(reference: &Reference) -> Self {
        Self {
            reference: reference.to_string(),
            bytes: Progress::default(),
            bytes_total: AtomicU64::new(0),
            layers_done: AtomicUsize::new(0),
            layers_total: AtomicUsize::new(0),
            unpacking: AtomicUsize::new(0),
        }
    }
}

/// The platform crius runs: `linux` and the Go name of the CPU architecture.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

impl ImageStore {
    /// Pulls `reference`. `credentials` come from the request; without them
    /// the configured docker `config.json` is consulted, then anonymous.
    pub async fn pull(&self, reference: &Reference, credentials: Option<Credentials>) -> Result<Pulled, ImageError> {
        let credentials = match credentials {
            Some(credentials) => credentials,
            None => self.file_credentials(reference),
        };
        let progress = Arc::new(PullProgress::new(reference));
        let id = self.next_pull.fetch_add(1, Ordering::Relaxed);
        self.lock_pulls().insert(id, Arc::clone(&progress));
        let lease = Lease::new(Arc::clone(&self.leases), Arc::clone(&self.content), Arc::clone(&self.layers));
        let result = tokio::select! {
            result = self.pull_inner(Job { reference, credentials: &credentials, progress: &progress, lease: &lease }) => result,
            stalled = self.watchdog(&progress) => Err(stalled),
        };
        self.lock_pulls().remove(&id);
        // A failed (or cancelled: dropped) pull's lease removes what it added.
        match result {
            Ok(_) => lease.keep(),
            Err(_) => lease.release().await,
        }
        result
    }

    /// Pulls in progress right now.
    pub fn active_pulls(&self) -> Vec<Arc<PullProgress>> {
        self.lock_pulls().values().cloned().collect()
    }

    fn lock_pulls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<PullProgress>>> {
        self.pulls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn file_credentials(&self, reference: &Reference) -> Credentials {
        let Some(path) = &self.config.auth_file else { return Credentials::Anonymous };
        match DockerConfig::load(path) {
            Ok(config) => config.credentials_for(&reference.registry).unwrap_or(Credentials::Anonymous),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read registry auth file; pulling anonymously");
                Credentials::Anonymous
            }
        }
    }

    async fn pull_inner(&self, job: Job<'_>) -> Result<Pulled, ImageError> {
        let Job { reference, credentials, progress, lease } = job;
        let name = reference.to_string();
        let registry_err = |source| ImageError::Registry { reference: name.clone(), source: Box::new(source) };
        let manifest_err =
            |reason: String| ImageError::Manifest { reference: name.clone(), reason: shown::cut(&reason) };
        let resolved = self.registry.resolve(reference, credentials).await.map_err(registry_err)?;
        let resolved_digest = resolved.digest.clone();
        let mut blobs = Vec::new();
        let (resolved, manifest) = match resolved.manifest().map_err(|e| manifest_err(e.to_string()))? {
            Manifest::Image(manifest) => (resolved, *manifest),
            Manifest::Index(index) => {
                self.store_bytes(&name, &resolved, lease).await?;
                blobs.push(resolved.digest.clone());
                let (os, arch) = host_platform();
                let descriptor = select_platform(&index, os, arch, None).ok_or_else(|| ImageError::NoPlatform {
                    reference: name.clone(),
                    platform: format!("{os}/{arch}"),
                })?;
                let digest = parse_digest(&name, descriptor.digest().as_ref())?;
                let platform_manifest =
                    self.registry.fetch_manifest(reference, &digest, credentials).await.map_err(registry_err)?;
                match platform_manifest.manifest().map_err(|e| manifest_err(e.to_string()))? {
                    Manifest::Image(manifest) => (platform_manifest, *manifest),
                    Manifest::Index(_) => return Err(manifest_err("an index entry points at another index".into())),
                }
            }
        };
        self.store_bytes(&name, &resolved, lease).await?;
        blobs.push(resolved.digest.clone());

        let config_digest = parse_digest(&name, manifest.config().digest().as_ref())?;
        let config_size = manifest.config().size();
        if config_size > MAX_CONFIG_SIZE {
            return Err(ImageError::ConfigTooLarge {
                reference: name.clone(),
                size: config_size,
                limit: MAX_CONFIG_SIZE,
            });
        }
        // Sizes are the manifest's word: they must not overflow.
        let total = manifest.layers().iter().map(Descriptor::size).fold(config_size, u64::saturating_add);
        progress.bytes_total.store(total, Ordering::Relaxed);
        progress.layers_total.store(manifest.layers().len(), Ordering::Relaxed);
        self.fetch_blob(job, &config_digest, config_size).await?;
        blobs.push(config_digest.clone());
        let content = Arc::clone(&self.content);
        let digest = config_digest.clone();
        let config_bytes = tokio::task::spawn_blocking(move || content.read(&digest, MAX_CONFIG_SIZE))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(|source| ImageError::Content { reference: name.clone(), source })?;
        let config = parse_config(&config_bytes).map_err(|e| manifest_err(e.to_string()))?;
        drop(config_bytes);
        let diff_ids =
            config.rootfs().diff_ids().iter().map(|d| parse_digest(&name, d)).collect::<Result<Vec<_>, _>>()?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(manifest_err(format!(
                "manifest has {} layers but the config lists {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let layers = self.fetch_layers(job, &manifest, &diff_ids, &chains).await?;
        for layer in manifest.layers() {
            blobs.push(parse_digest(&name, layer.digest().as_ref())?);
        }
        let user = config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
        Ok(Pulled {
            id: config_digest,
            manifest_digest: resolved.digest,
            resolved_digest,
            size: layers.iter().map(|l| l.size).sum(),
            chain_ids: chains,
            blobs,
            user,
        })
    }

    async fn fetch_layers(
        &self,
        job: Job<'_>,
        manifest: &ImageManifest,
        diff_ids: &[Digest],
        chains: &[Digest],
    ) -> Result<Vec<LayerInfo>, ImageError> {
        // Futures collected first: a closure in the stream's type would make
        // the pull future fail the `Send` check (rustc's higher-ranked lifetimes).
        let mut jobs = Vec::with_capacity(chains.len());
        for ((descriptor, diff_id), chain_id) in manifest.layers().iter().zip(diff_ids).zip(chains) {
            let layer = LayerJob { descriptor, diff_id, chain_id };
            jobs.push(self.fetch_layer(job, layer));
        }
        stream::iter(jobs).buffered(PARALLEL_LAYERS).try_collect().await
    }

    async fn fetch_layer(&self, job: Job<'_>, layer: LayerJob<'_>) -> Result<LayerInfo, ImageError> {
        let (Job { reference, progress, lease, .. }, LayerJob { descriptor, diff_id, chain_id }) = (job, layer);
        let name = reference.to_string();
        let digest = parse_digest(&name, descriptor.digest().as_ref())?;
        // Held before looking: a failed pull must not remove them meanwhile.
        lease.hold(Resource::Layer(chain_id.clone()));
        lease.hold(Resource::Blob(digest.clone()));
        if let Some(info) = self.layers.info(chain_id).map_err(ImageError::Layers)? {
            progress.layers_done.fetch_add(1, Ordering::Relaxed);
            return Ok(info);
        }
        let compression = Compression::from_media_type(descriptor.media_type().as_ref())
            .map_err(|source| ImageError::Unpack { reference: name.clone(), source })?;
        let blob = self.fetch_blob(job, &digest, descriptor.size()).await?;

        let layers = Arc::clone(&self.layers);
        let (chain, diff_id) = (chain_id.clone(), diff_id.clone());
        let limits = UnpackLimits { reserve: self.config.space_reserve, ..self.config.unpack_limits.clone() };
        progress.unpacking.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let unpacked = tokio::task::spawn_blocking(move || {
            layers.add(&chain, &diff_id, |dir| {
                let file = std::fs::File::open(&blob).map_err(|e| format!("open blob {}: {e}", blob.display()))?;
                let reader = std::io::BufReader::with_capacity(1 << 20, file);
                let stats = unpack_layer(reader, compression, dir, &limits)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Unpacked {
                    diff_id: stats.diff_id,
                    size: stats.bytes,
                })
            })
        })
        .await;
        progress.unpacking.fetch_sub(1, Ordering::Relaxed);
        let (info, added) = unpacked
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(|source| ImageError::Layer { reference: name, source })?;
        if added {
            lease.added(Resource::Layer(chain_id.clone()));
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::debug!(layer = %info.chain_id, bytes = info.size, mb_per_s = info.size as f64 / 1e6 / secs.max(1e-6), "layer unpacked");
        progress.layers_done.fetch_add(1, Ordering::Relaxed);
        Ok(info)
    }

    /// Downloads a blob into the content store (once, resuming a partial
    /// download), held by `lease`.
    async fn fetch_blob(&self, job: Job<'_>, digest: &Digest, size: u64) -> Result<std::path::PathBuf, ImageError> {
        let Job { reference, credentials, progress, lease } = job;
        lease.hold(Resource::Blob(digest.clone()));
        // The fetch future owns what it uses, so the pull future stays `Send`.
        let registry = self.registry.clone();
        let (owned_reference, owned_digest, owned_credentials) =
            (reference.clone(), digest.clone(), credentials.clone());
        self.content
            .ingest(digest, size, &progress.bytes, move |offset| {
                let (registry, reference, digest, credentials) =
                    (registry.clone(), owned_reference.clone(), owned_digest.clone(), owned_credentials.clone());
                async move {
                    let response = registry.fetch_blob(&reference, &digest, offset, &credentials).await?;
                    let resumed = offset == 0 || response.partial;
                    Ok(FetchedStream { stream: response.stream, resumed })
                }
            })
            .await
            .map(|Ingested { path, created }| {
                if created {
                    lease.added(Resource::Blob(digest.clone()));
                }
                path
            })
            .map_err(|source| {
                if matches!(source, ContentError::SizeMismatch { .. }) && self.content.contains(digest) {
                    // The whole genuine blob arrived and was kept, but its
                    // descriptor lied: it is this pull's to remove.
                    lease.added(Resource::Blob(digest.clone()));
                }
                match source {
                    ContentError::Io { .. } | ContentError::NotFound(_) => ImageError::Storage(source),
                    _ => ImageError::Content { reference: reference.to_string(), source },
                }
            })
    }

    /// Stores a manifest (hashing and fsync on a blocking thread), held by `lease`.
    async fn store_bytes(&self, name: &str, resolved: &Resolved, lease: &Lease) -> Result<(), ImageError> {
        lease.hold(Resource::Blob(resolved.digest.clone()));
        let (content, digest, bytes) = (Arc::clone(&self.content), resolved.digest.clone(), resolved.bytes.clone());
        let created = tokio::task::spawn_blocking(move || content.write_bytes(&digest, &bytes))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(|source| ImageError::Content { reference: name.to_owned(), source })?;
        if created {
            lease.added(Resource::Blob(resolved.digest.clone()));
        }
        Ok(())
    }

    /// Logs progress every `progress_interval`; returns the error that
    /// cancels the pull once nothing moved for `progress_timeout`.
    async fn watchdog(&self, progress: &PullProgress) -> ImageError {
        let mut last_bytes = 0;
        let mut last_layers = 0;
        let mut last_change = Instant::now();
        let mut last_log = Instant::now();
        let tick = self
            .config
            .progress_interval
            .min(self.config.progress_timeout / 4)
            .max(std::time::Duration::from_millis(50));
        loop {
            tokio::time::sleep(tick).await;
            let bytes = progress.bytes.bytes_done.load(Ordering::Relaxed);
            let layers = progress.layers_done.load(Ordering::Relaxed);
            if bytes != last_bytes || layers != last_layers || progress.unpacking.load(Ordering::Relaxed) > 0 {
                (last_bytes, last_layers, last_change) = (bytes, layers, Instant::now());
            } else if last_change.elapsed() >= self.config.progress_timeout {
                tracing::warn!(image = %progress.reference, bytes, "pull made no progress; cancelling");
                return ImageError::Stalled {
                    reference: progress.reference.clone(),
                    secs: self.config.progress_timeout.as_secs(),
                };
            }
            if last_log.elapsed() >= self.config.progress_interval {
                last_log = Instant::now();
                tracing::info!(
                    image = %progress.reference,
                    bytes_done = bytes,
                    bytes_total = progress.bytes_total.load(Ordering::Relaxed),
                    layers_done = layers,
                    layers_total = progress.layers_total.load(Ordering::Relaxed),
                    "pull progress"
                );
            }
        }
    }
}

/// What every step of one pull works for.
#[derive(Debug, Clone, Copy)]
struct Job<'a> {
    reference: &'a Reference,
    credentials: &'a Credentials,
    progress: &'a PullProgress,
    lease: &'a Lease,
}

/// One layer of the manifest, as `fetch_layer` needs it.
#[derive(Debug, Clone, Copy)]
struct LayerJob<'a> {
    descriptor: &'a Descriptor,
    diff_id: &'a Digest,
    chain_id: &'a Digest,
}

fn parse_digest(reference: &str, text: &str) -> Result<Digest, ImageError> {
    text.parse::<Digest>().map_err(|e| ImageError::Manifest { reference: reference.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests;
