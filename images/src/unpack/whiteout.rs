//! Whiteouts, converted from the tar form (`.wh.NAME`, `.wh..wh..opq`) to
//! the overlayfs form (0:0 character device, `trusted.overlay.opaque=y`).

use rustix::fs::{FileType, Mode, OFlags, XattrFlags};

use super::UnpackError;
use super::entry::{Meta, Unpacker, io_error};
use super::path::EntryPath;

/// Marks a whiteout entry's last component.
pub(super) const PREFIX: &[u8] = b".wh.";

/// aufs metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`, ...).
const META_PREFIX: &[u8] = b".wh..wh.";

/// Makes its directory opaque: lower layers' content there is hidden.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The overlayfs opaque-directory xattr.
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Whether the entry lies below an aufs metadata directory (such as
/// `.wh..wh.plnk/`): such entries are skipped.
pub(super) fn is_aufs_metadata(path: &EntryPath) -> bool {
    path.parent().iter().any(|component| component.starts_with(META_PREFIX))
}

/// Applies a whiteout entry (its last component starts with [`PREFIX`]).
pub(super) fn apply(unpacker: &Unpacker, path: &EntryPath, entry: &str, meta: &Meta) -> Result<(), UnpackError> {
    let last = path.name().unwrap_or_default();
    if last == OPAQUE {
        let parent = unpacker.parent(path, entry)?;
        let dir = rustix::fs::openat(&parent, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(io_error(entry, "open the opaque directory"))?;
        return rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_error(entry, "mark the directory opaque"));
    }
    if last.starts_with(META_PREFIX) {
        tracing::debug!(entry, "skipping aufs metadata");
        return Ok(());
    }
    let hidden = &last[PREFIX.len()..];
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(UnpackError::InvalidName { entry: entry.to_owned(), reason: "whiteout of an invalid name" });
    }
    let parent = unpacker.parent(path, entry)?;
    unpacker.clear(&parent, hidden, false, entry)?;
    rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
        .map_err(io_error(entry, "create the whiteout"))?;
    unpacker.chown_at(&parent, hidden, meta, entry)
}
