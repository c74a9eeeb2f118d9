//! The content store: blobs (manifests, configs, compressed layers) addressed
//! by digest.
//!
//! A blob becomes visible under `blobs/sha256/<hex>` only after its size and
//! digest were verified and it was fsynced: it is written to `ingest/<hex>`
//! first and renamed. An interrupted download leaves only its ingest file,
//! which the next download of the same blob resumes (or restarts). Concurrent
//! downloads of one blob are serialised, so each blob is fetched once.
//!
//! Nothing here blocks an async runtime thread for long: a download writes
//! and hashes on a blocking thread of its own ([`writer`]), fed through a
//! short queue, and opening, re-hashing and committing (fsync, rename) a blob
//! run on blocking threads too. The writer holds an exclusive `flock` on its
//! ingest file, so a download that was cancelled finishes its writes before
//! the next download of that blob reads the file.
//!
//! Writes stop at the image filesystem's free-space reserve ([`SpaceReserve`]).

mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::digest::{Digest, Hasher};
use crate::space::{SpaceError, SpaceReserve};
use writer::Writer;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A filesystem step failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data does not hash to the digest it was fetched as.
    #[error("blob {expected} failed verification: content hashes to {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The data is not as long as its descriptor says.
    #[error("blob {digest} has {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (stops counting once past `expected`).
        actual: u64,
    },
    /// The source of the blob failed.
    #[error("fetch blob {digest}: {message}")]
    Fetch {
        /// The blob.
        digest: Digest,
        /// The fetcher's error, as text.
        message: String,
    },
    /// The blob is not in the store.
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
    /// The blob is larger than its reader accepts.
    #[error("blob {digest} has {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Writing the blob would take the image filesystem under its reserve.
    #[error("blob {digest} does not fit above the free-space reserve")]
    LowSpace {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: SpaceError,
    },
    /// A blocking task failed.
    #[error("content store task failed: {0}")]
    Task(String),
}

/// What a fetch returns: a byte stream starting at the offset it was asked
/// for, or at 0 when the source cannot resume (`resumed == false`).
#[derive(Debug)]
pub struct FetchedStream<S> {
    /// The bytes.
    pub stream: S,
    /// Whether the stream starts at the requested offset.
    pub resumed: bool,
}

/// Counters a download updates as bytes arrive (for progress reports).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes received so far, over all blobs of a pull.
    pub bytes_done: AtomicU64,
}

/// A blob in the store after [`ContentStore::ingest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Where it lives.
    pub path: PathBuf,
    /// Whether this call stored it (it was not there before).
    pub created: bool,
}

/// The content store.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    /// One lock per blob being ingested.
    ingesting: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Numbers temp files of `write_bytes`.
    next_tmp: AtomicU64,
    reserve: SpaceReserve,
}

impl ContentStore {
    /// Opens (creating) the store under `root`, with the default reserve.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        Self::open_with(root, SpaceReserve::default())
    }

    /// Opens (creating) the store under `root`; downloads keep `reserve` free.
    pub fn open_with(root: &Path, reserve: SpaceReserve) -> Result<Self, ContentError> {
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(|source| io("create", &dir, source))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            ingesting: Mutex::new(HashMap::new()),
            next_tmp: AtomicU64::new(0),
            reserve,
        })
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(digest.hex())
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole (small) blob, a manifest or a config, of at most
    /// `limit` bytes. Blocking.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.blob_path(digest);
        let file = self.open_blob(digest)?;
        let size = file.metadata().map_err(|source| io("stat", &path, source))?.len();
        if size > limit {
            return Err(ContentError::TooLarge { digest: digest.clone(), size, limit });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // Bounded even if the file grew since the stat.
        file.take(limit.saturating_add(1)).read_to_end(&mut data).map_err(|source| io("read", &path, source))?;
        if data.len() as u64 > limit {
            return Err(ContentError::TooLarge { digest: digest.clone(), size: data.len() as u64, limit });
        }
        Ok(data)
    }

    /// Opens a blob for streaming reads.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            ErrorKind::NotFound => ContentError::NotFound(digest.clone()),
            _ => io("open", &path, source),
        })
    }

    /// Stores bytes already in memory, after checking they hash to `digest`;
    /// `true` when this call stored them. Blocking (hashing, fsync).
    pub fn write_bytes(&self, digest: &Digest, data: &[u8]) -> Result<bool, ContentError> {
        let actual = Digest::of(data);
        if &actual != digest {
            return Err(ContentError::DigestMismatch { expected: digest.clone(), actual });
        }
        if self.contains(digest) {
            return Ok(false);
        }
        self.reserve
            .check_path(&self.root, data.len() as u64)
            .map_err(|source| ContentError::LowSpace { digest: digest.clone(), source })?;
        // A name of its own per writer: concurrent writers of one blob must
        // not share (and truncate, or rename away) each other's temp file.
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let ingest = self.root.join("ingest").join(format!("{}.{}.{n}.tmp", digest.hex(), std::process::id()));
        let mut file = File::create(&ingest).map_err(|source| io("create", &ingest, source))?;
        let written = file.write_all(data).map_err(|source| io("write", &ingest, source));
        let result = written.and_then(|()| commit(file, &ingest, &self.blob_path(digest)));
        if result.is_err() {
            let _ = fs::remove_file(&ingest);
        }
        result.map(|()| true)
    }

    /// Downloads a blob unless it is already stored, and returns its path.
    ///
    /// `fetch(offset)` opens the source at `offset`. A partial ingest file
    /// from an interrupted download is re-hashed and resumed. Callers that
    /// ingest the same digest concurrently wait for the first, and the blob
    /// is fetched once.
    pub async fn ingest<F, Fut, S, E>(
        &self,
        digest: &Digest,
        size: u64,
        progress: &Progress,
        fetch: F,
    ) -> Result<Ingested, ContentError>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<FetchedStream<S>, E>>,
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let lock = self.ingest_lock(digest);
        let _guard = lock.lock().await;
        let path = self.blob_path(digest);
        if path.is_file() {
            self.release_lock(digest);
            return Ok(Ingested { path, created: false });
        }
        let result = self.download(digest, size, progress, fetch).await;
        self.release_lock(digest);
        result.map(|()| Ingested { path, created: true })
    }

    async fn download<F, Fut, S, E>(
        &self,
        digest: &Digest,
        size: u64,
        progress: &Progress,
        mut fetch: F,
    ) -> Result<(), ContentError>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<FetchedStream<S>, E>>,
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let ingest = self.ingest_path(digest);
        let (file, hasher) = {
            let (ingest, digest) = (ingest.clone(), digest.clone());
            blocking(move || open_partial(&ingest, &digest, size)).await?
        };
        if hasher.len() == size && hasher.clone().finish() == *digest {
            // An earlier download got every byte but failed after: done.
            return self.commit_blocking(file, digest).await;
        }
        if let Err(source) = self.reserve.check_path(&self.root, size - hasher.len()) {
            if hasher.is_empty() {
                drop(file);
                let _ = fs::remove_file(&ingest);
            }
            return Err(ContentError::LowSpace { digest: digest.clone(), source });
        }
        let fetch_err = |e: E| ContentError::Fetch { digest: digest.clone(), message: e.to_string() };
        let fetched = match fetch(hasher.len()).await {
            Ok(fetched) => fetched,
            // A source that cannot serve the rest (416, a changed blob):
            // start over once from byte 0.
            Err(e) if !hasher.is_empty() => {
                tracing::debug!(%digest, offset = hasher.len(), error = %e, "resume refused; restarting download");
                fetch(0).await.map(|f| FetchedStream { stream: f.stream, resumed: false }).map_err(fetch_err)?
            }
            Err(e) => return Err(fetch_err(e)),
        };
        // The source restarted from byte 0: so do we.
        let restart = !fetched.resumed && !hasher.is_empty();
        let mut received = if restart { 0 } else { hasher.len() };
        progress.bytes_done.fetch_add(received, Ordering::Relaxed);
        let mut writer = Writer::start(file, hasher, restart, ingest.clone(), digest.clone(), self.reserve);
        let mut stream = fetched.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    // What arrived stays, for the next download to resume.
                    writer.finish().await.map_err(|e| discard_if_low_space(e, &ingest))?;
                    return Err(fetch_err(e));
                }
            };
            if received + chunk.len() as u64 > size {
                drop(writer.finish().await);
                let _ = fs::remove_file(&ingest);
                return Err(ContentError::SizeMismatch {
                    digest: digest.clone(),
                    expected: size,
                    actual: received + chunk.len() as u64,
                });
            }
            received += chunk.len() as u64;
            let len = chunk.len() as u64;
            writer.send(chunk).await.map_err(|e| discard_if_low_space(e, &ingest))?;
            progress.bytes_done.fetch_add(len, Ordering::Relaxed);
        }
        let (file, hasher) = writer.finish().await.map_err(|e| discard_if_low_space(e, &ingest))?;
        if hasher.len() != size {
            let actual = hasher.len();
            if hasher.finish() == *digest {
                // The whole blob arrived and is genuine, but the descriptor
                // lied about its size: keep the blob, refuse the descriptor.
                self.commit_blocking(file, digest).await?;
            }
            // Otherwise the partial file stays: the next pull resumes from here.
            return Err(ContentError::SizeMismatch { digest: digest.clone(), expected: size, actual });
        }
        let actual = hasher.finish();
        if &actual != digest {
            drop(file);
            let _ = fs::remove_file(&ingest);
            return Err(ContentError::DigestMismatch { expected: digest.clone(), actual });
        }
        self.commit_blocking(file, digest).await
    }

    /// [`commit`] on a blocking thread.
    async fn commit_blocking(&self, file: File, digest: &Digest) -> Result<(), ContentError> {
        let (ingest, target) = (self.ingest_path(digest), self.blob_path(digest));
        blocking(move || commit(file, &ingest, &target)).await
    }

    /// Deletes a blob (and any partial download of it). Missing is fine.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        for path in [self.blob_path(digest), self.ingest_path(digest)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(io("remove", &path, source)),
            }
        }
        Ok(())
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        let dir = self.root.join("blobs/sha256");
        let entries = fs::read_dir(&dir).map_err(|source| io("list", &dir, source))?;
        let mut digests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io("list", &dir, source))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(digest) = format!("sha256:{name}").parse::<Digest>()
            {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    fn ingest_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.ingesting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(digest.clone()).or_default())
    }

    fn release_lock(&self, digest: &Digest) {
        let mut map = self.ingesting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map and the finishing caller hold it: nobody else waits.
        if map.get(digest).is_some_and(|lock| Arc::strong_count(lock) <= 2) {
            map.remove(digest);
        }
    }
}

/// Opens the ingest file, waiting for any earlier writer of it (a
/// cancelled download still draining its queue) to let go of its lock, and
/// hashes what earlier attempts left in it. Blocking.
fn open_partial(ingest: &Path, digest: &Digest, size: u64) -> Result<(File, Hasher), ContentError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(ingest)
        .map_err(|source| io("open", ingest, source))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|errno| io("lock", ingest, errno.into()))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| io("read", ingest, source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.len() > size {
        tracing::debug!(%digest, "discarding oversized partial download");
        writer::truncate(&mut file, ingest)?;
        hasher = Hasher::new();
    }
    Ok((file, hasher))
}

/// A download stopped at the free-space reserve gives its space back (the
/// writer has closed the file by then).
fn discard_if_low_space(error: ContentError, ingest: &Path) -> ContentError {
    if matches!(error, ContentError::LowSpace { .. }) {
        let _ = fs::remove_file(ingest);
    }
    error
}

/// fsync, rename into place, fsync the directory. Blocking.
fn commit(file: File, ingest: &Path, target: &Path) -> Result<(), ContentError> {
    file.sync_all().map_err(|source| io("fsync", ingest, source))?;
    drop(file);
    fs::rename(ingest, target).map_err(|source| io("rename into place", target, source))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| io("fsync", dir, source))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ContentError> + Send + 'static,
) -> Result<T, ContentError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ContentError::Task(e.to_string()))?
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> ContentError {
    ContentError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests;
