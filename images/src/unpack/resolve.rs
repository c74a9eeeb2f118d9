//! Path resolution that cannot leave the layer root, and removal of what an
//! entry replaces.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::path::join;

/// `RESOLVE_BENEATH` refuses `..` above the root and absolute symlinks (with
/// `EXDEV`); `RESOLVE_NO_MAGICLINKS` refuses `/proc/*/fd`-style links.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` can fail with `EAGAIN` when a rename races with `..` resolution.
const EAGAIN_RETRIES: usize = 16;

/// Mode of directories created because an entry needs them.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Opens `path` (relative, `/`-separated) beneath `root`. Symlinks inside
/// the root are followed, including in the final component unless `flags`
/// has `NOFOLLOW`; anything leading outside fails with `EXDEV`.
pub(super) fn open_beneath(root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            result => return result,
        }
    }
}

/// An `O_PATH` fd of the directory `components` beneath `root`.
pub(super) fn dir_beneath(root: BorrowedFd<'_>, components: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
    open_beneath(root, &join(components), OFlags::PATH | OFlags::DIRECTORY)
}

/// Like [`dir_beneath`], creating missing directories (mode 0755) one
/// component at a time, each with `mkdirat` on an fd resolved beneath `root`.
pub(super) fn ensure_dir_beneath(root: BorrowedFd<'_>, components: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
    match dir_beneath(root, components) {
        Err(Errno::NOENT) => {}
        result => return result,
    }
    let mut dir = dir_beneath(root, &[])?;
    for (i, component) in components.iter().enumerate() {
        let prefix = &components[..=i];
        dir = match dir_beneath(root, prefix) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, component.as_slice(), Mode::from_raw_mode(IMPLICIT_DIR_MODE)) {
                    // EEXIST: a dangling symlink; reopening reports ENOENT.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(errno),
                }
                dir_beneath(root, prefix)?
            }
            Err(errno) => return Err(errno),
        };
    }
    Ok(dir)
}

/// What was at a name before an entry took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Previous {
    /// Nothing.
    Nothing,
    /// A directory that was kept (the new entry is a directory too).
    KeptDir,
    /// Something that was removed.
    Removed,
}

/// Clears `name` in `parent` for a new entry: keeps a directory when
/// `keep_dir`, otherwise removes what is there (a directory with its whole
/// tree). Never follows a symlink.
pub(super) fn clear_name(parent: BorrowedFd<'_>, name: &[u8], keep_dir: bool) -> Result<Previous, Errno> {
    let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(Previous::Nothing),
        Err(errno) => return Err(errno),
    };
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        if keep_dir {
            return Ok(Previous::KeptDir);
        }
        remove_tree(parent, name)?;
    } else {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(Previous::Removed)
}

/// Removes the directory `name` in `parent` and everything below it, each
/// step relative to a directory fd opened with `O_NOFOLLOW`.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for child in Dir::read_from(&dir)? {
        let child = child?;
        let child_name = child.file_name().to_bytes();
        if child_name == b"." || child_name == b".." {
            continue;
        }
        children.push((child_name.to_vec(), child.file_type()));
    }
    for (child_name, file_type) in children {
        let file_type = match file_type {
            FileType::Unknown => {
                let stat = rustix::fs::statat(&dir, child_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode)
            }
            known => known,
        };
        if file_type == FileType::Directory {
            remove_tree(dir.as_fd(), &child_name)?;
        } else {
            rustix::fs::unlinkat(&dir, child_name.as_slice(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}
