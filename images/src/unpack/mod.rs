//! Safe layer unpacking: turns one OCI/Docker layer tarball into a directory
//! that can serve as an overlayfs lower (or upper) layer.
//!
//! Every filesystem operation happens relative to a directory fd obtained
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` below the
//! destination, plus one final path component that is never followed. An
//! entry whose path (or hardlink target) would resolve outside the
//! destination is refused, so nothing outside it is ever created, modified
//! or chowned. Symlinks may point anywhere, but a later entry can only go
//! through relative symlinks that stay inside: absolute symlinks (even
//! `lib -> /usr/lib`) are not followed while resolving entry paths.
//!
//! Whiteouts are converted to the overlayfs form: `.wh.NAME` becomes a 0:0
//! character device `NAME`, `.wh..wh..opq` becomes the
//! `trusted.overlay.opaque=y` xattr on its directory, and other `.wh..wh.*`
//! (aufs metadata) entries are skipped.
//!
//! Replacement rules: a later entry with the same path replaces the earlier
//! one. A directory over a directory only updates its metadata; any other
//! entry over a directory removes that directory tree first (beneath the
//! destination, never following symlinks).
//!
//! Xattrs named `trusted.overlay.*` in the layer are skipped: only whiteout
//! conversion may set overlayfs metadata.

mod entry;
mod headers;
mod path;
mod resolve;
mod whiteout;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{Mode, OFlags};

use crate::digest::{Digest, Hasher};
use crate::space::{CHECK_EVERY, SpaceError, SpaceReserve};
pub use headers::{Extension, MAX_EXTENSION};
use headers::{Framing, HeaderBound};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (possibly several concatenated members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of a layer with the given media type: Docker and OCI
    /// layer media types, including `...tar`, `...tar+gzip`, `...tar+zstd`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`, Docker foreign
    /// layers and the OCI nondistributable variants.
    pub fn from_media_type(media_type: &str) -> Result<Self, UnpackError> {
        let compression = match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Self::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Self::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Self::Zstd,
            other => return Err(UnpackError::UnsupportedMediaType { media_type: crate::shown::cut(other) }),
        };
        Ok(compression)
    }
}

/// Bounds on what one layer may unpack to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most decompressed bytes (the whole tar stream, headers included).
    pub max_bytes: u64,
    /// Most tar entries.
    pub max_entries: u64,
    /// Free space the destination's filesystem keeps: unpacking stops
    /// before it would fall under it.
    pub reserve: SpaceReserve,
}

/// The default of [`UnpackLimits::max_bytes`]: 16 GiB. Larger than the
/// layers of real images (the biggest common ones, CUDA and PyTorch
/// runtimes, unpack to 5 to 10 GB), well under the free disk of a typical
/// node (100 to 130 GB boot disks), so that one hostile layer cannot take
/// the node's disk even before the space reserve stops it. Images that bake
/// in larger files (model weights) need it raised.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_BYTES, max_entries: 10_000_000, reserve: SpaceReserve::default() }
    }
}

/// What one unpacked layer held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Decompressed bytes (the whole tar stream, trailing padding included).
    pub bytes: u64,
    /// The sha256 of the decompressed tar stream, as listed in the image
    /// config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// Why a layer could not be unpacked. The destination may then hold partial
/// content; nothing outside it was touched.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer's media type is not a known tar layer type.
    #[error("unsupported layer media type {media_type:?}")]
    UnsupportedMediaType {
        /// The refused media type.
        media_type: String,
    },
    /// The destination directory cannot be opened.
    #[error("cannot open the unpack directory {path:?}")]
    OpenDest {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The compressed or tar stream is malformed or cannot be read.
    #[error("cannot read the layer stream")]
    Stream(#[source] io::Error),
    /// The data of an entry cannot be read from the stream.
    #[error("cannot read the data of entry {entry:?}")]
    EntryData {
        /// The entry name as found in the layer.
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The decompressed stream is larger than [`UnpackLimits::max_bytes`].
    #[error("layer exceeds the unpack limit of {limit} bytes")]
    TooManyBytes {
        /// The limit.
        limit: u64,
    },
    /// A GNU long-name, long-link or PAX header declares a body larger than
    /// [`MAX_EXTENSION`]; the body is not read.
    #[error("{kind} header of {size} bytes exceeds the limit of {limit} bytes")]
    ExtensionTooLarge {
        /// Which extension header.
        kind: Extension,
        /// The body size it declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The destination's filesystem reached its free-space reserve.
    #[error("layer unpack stopped at the free-space reserve")]
    LowSpace(#[source] SpaceError),
    /// The layer has more entries than [`UnpackLimits::max_entries`].
    #[error("layer exceeds the unpack limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// An entry name is absolute, has a `..` component, is empty or has a NUL.
    #[error("entry {entry:?} has an invalid name: {reason}")]
    InvalidName {
        /// The entry name as found in the layer.
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A hardlink target is absolute, has a `..` component or is empty.
    #[error("hardlink {entry:?} has an invalid target {target:?}: {reason}")]
    InvalidLinkTarget {
        /// The entry name as found in the layer.
        entry: String,
        /// The target as found in the layer.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header field cannot be parsed or holds an unusable value.
    #[error("entry {entry:?} has an invalid {field} field")]
    InvalidHeader {
        /// The entry name as found in the layer.
        entry: String,
        /// The header field or PAX record.
        field: &'static str,
        /// What is wrong.
        #[source]
        source: io::Error,
    },
    /// The entry uses a PAX (GNU 0.x/1.0) sparse format, which is not
    /// supported.
    #[error("entry {entry:?} uses an unsupported pax sparse format")]
    UnsupportedSparse {
        /// The entry name as found in the layer.
        entry: String,
    },
    /// An entry type this unpacker does not handle.
    #[error("entry {entry:?} has unsupported type {kind:?}")]
    UnsupportedType {
        /// The entry name as found in the layer.
        entry: String,
        /// The tar type flag.
        kind: char,
    },
    /// The entry's parent path goes through a symlink leading outside the
    /// destination.
    #[error("entry {entry:?} resolves outside the layer")]
    Escape {
        /// The entry name as found in the layer.
        entry: String,
    },
    /// The hardlink's target goes through a symlink leading outside the
    /// destination.
    #[error("hardlink {entry:?} target {target:?} resolves outside the layer")]
    LinkEscape {
        /// The entry name as found in the layer.
        entry: String,
        /// The target as found in the layer.
        target: String,
    },
    /// A filesystem operation for an entry failed.
    #[error("cannot {op} for entry {entry:?}")]
    Io {
        /// The entry name as found in the layer (empty for the layer root).
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Unpacks one layer into `dest` (an existing, empty directory). Blocking;
/// callers run it in `spawn_blocking`.
///
/// The whole decompressed stream is read, including any padding after the
/// tar end-of-archive blocks, so that [`UnpackStats::diff_id`] matches the
/// image config. On error `dest` may hold partial content, which the caller
/// removes.
pub fn unpack_layer<R: Read>(
    compressed: R,
    compression: Compression,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(dest, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|errno| UnpackError::OpenDest { path: dest.to_owned(), source: errno.into() })?;
    match compression {
        Compression::None => unpack_stream(BufReader::with_capacity(STREAM_BUFFER, compressed), root, limits),
        Compression::Gzip => unpack_stream(flate2::read::MultiGzDecoder::new(compressed), root, limits),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(compressed).map_err(UnpackError::Stream)?;
            unpack_stream(decoder, root, limits)
        }
    }
}

const STREAM_BUFFER: usize = 64 * 1024;

fn unpack_stream<D: Read>(
    decompressed: D,
    root: rustix::fd::OwnedFd,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let stops = Rc::new(Stops::default());
    let space_fd =
        root.try_clone().map_err(|source| UnpackError::OpenDest { path: PathBuf::from("<layer root>"), source })?;
    let reader = LimitedReader {
        inner: decompressed,
        hasher: Hasher::new(),
        max_bytes: limits.max_bytes,
        stops: Rc::clone(&stops),
        space: SpaceCheck { fd: space_fd, reserve: limits.reserve, next_at: 0 },
    };
    let framing = Rc::new(Framing::default());
    let mut archive = tar::Archive::new(HeaderBound::new(reader, Rc::clone(&framing)));
    let errors = StreamErrors { stops, max_bytes: limits.max_bytes, framing: Rc::clone(&framing) };
    let mut unpacker = entry::Unpacker::new(root, errors);
    let mut entries = 0u64;
    for item in archive.entries().map_err(|e| unpacker.errors.stream(e))? {
        let mut item = item.map_err(|e| unpacker.errors.stream(e))?;
        if framing.entry_header.get() != Some(item.raw_header_position()) {
            let at = item.raw_header_position();
            return Err(UnpackError::Stream(io::Error::other(format!(
                "tar framing disagrees with the tar reader at byte {at}"
            ))));
        }
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries { limit: limits.max_entries });
        }
        unpacker.apply(&mut item)?;
    }
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink()).map_err(|e| unpacker.errors.stream(e))?;
    unpacker.finish()?;
    let reader = reader.inner;
    let bytes = reader.hasher.len();
    Ok(UnpackStats { entries, bytes, diff_id: reader.hasher.finish() })
}

/// Why the stream reader stopped on purpose.
#[derive(Debug, Default)]
struct Stops {
    /// The decompressed stream grew past `max_bytes`.
    too_many_bytes: Cell<bool>,
    /// The filesystem reached its reserve (the error is taken once).
    space_hit: Cell<bool>,
    low_space: RefCell<Option<SpaceError>>,
}

/// Maps stream read errors, telling a hit limit apart from a broken stream.
#[derive(Debug, Clone)]
struct StreamErrors {
    stops: Rc<Stops>,
    max_bytes: u64,
    framing: Rc<Framing>,
}

impl StreamErrors {
    fn limit_hit(&self) -> Option<UnpackError> {
        if self.stops.too_many_bytes.get() {
            return Some(UnpackError::TooManyBytes { limit: self.max_bytes });
        }
        if let Some(space) = self.stops.low_space.borrow_mut().take() {
            return Some(UnpackError::LowSpace(space));
        }
        let (kind, size) = self.framing.refused.get()?;
        Some(UnpackError::ExtensionTooLarge { kind, size, limit: MAX_EXTENSION })
    }

    fn stream(&self, source: io::Error) -> UnpackError {
        self.limit_hit().unwrap_or(UnpackError::Stream(source))
    }

    fn entry_data(&self, entry: &str, source: io::Error) -> UnpackError {
        self.limit_hit().unwrap_or_else(|| UnpackError::EntryData { entry: entry.to_owned(), source })
    }
}

/// Hashes and counts the decompressed stream, failing once it grows past
/// the limit (so a decompression bomb stops early) or the filesystem
/// reaches its reserve.
struct LimitedReader<R> {
    inner: R,
    hasher: Hasher,
    max_bytes: u64,
    stops: Rc<Stops>,
    space: SpaceCheck,
}

/// Reads the free space every [`CHECK_EVERY`] bytes.
struct SpaceCheck {
    fd: rustix::fd::OwnedFd,
    reserve: SpaceReserve,
    /// Stream length at which to read it next.
    next_at: u64,
}

impl<R: Read> LimitedReader<R> {
    fn stopped(&self) -> io::Error {
        if self.stops.too_many_bytes.get() {
            io::Error::other(format!("layer exceeds the unpack limit of {} bytes", self.max_bytes))
        } else {
            io::Error::other("the image filesystem reached its free-space reserve")
        }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stops.too_many_bytes.get() || self.stops.space_hit.get() {
            return Err(self.stopped());
        }
        if self.hasher.len() >= self.space.next_at {
            // What is read next is written next: it must fit above the reserve.
            if let Err(e) = self.space.reserve.check_fd(&self.space.fd, CHECK_EVERY) {
                self.stops.space_hit.set(true);
                *self.stops.low_space.borrow_mut() = Some(e);
                return Err(self.stopped());
            }
            self.space.next_at = self.hasher.len().saturating_add(CHECK_EVERY);
        }
        // Ask for at most one byte past the limit: enough to notice it.
        let room = self.max_bytes.saturating_sub(self.hasher.len()).saturating_add(1);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if self.hasher.len().saturating_add(n as u64) > self.max_bytes {
            self.stops.too_many_bytes.set(true);
            return Err(self.stopped());
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
