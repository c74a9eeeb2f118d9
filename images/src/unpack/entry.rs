//! Creating one tar entry beneath the layer root, with its metadata.

use std::fs::File;
use std::io::{self, Read, Write};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::path::EntryPath;
use super::resolve::{self, Previous};
use super::{StreamErrors, UnpackError, whiteout};

/// Size of the buffer file contents are copied through.
const COPY_BUFFER: usize = 64 * 1024;

/// Permission bits a tar mode may carry (setuid, setgid and sticky included).
const MODE_BITS: u32 = 0o7777;

/// Xattrs a layer may not set itself: overlayfs metadata such as redirects
/// would change what the merged view shows.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// Unpacks entries beneath one root directory fd.
#[derive(Debug)]
pub(super) struct Unpacker {
    root: OwnedFd,
    chown: bool,
    pub(super) errors: StreamErrors,
    /// Directory modes and mtimes, applied at the end: creating children
    /// changes a directory's mtime, and a read-only mode would block them.
    dirs: Vec<DirFixup>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct DirFixup {
    entry: String,
    path: Vec<u8>,
    mode: Mode,
    mtime: Timespec,
}

/// Metadata from an entry's header and PAX records.
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    mode: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Self, UnpackError> {
        let invalid = |field, source| UnpackError::InvalidHeader { entry: name.to_owned(), field, source };
        let header = entry.header();
        let raw = header.as_old();
        // Empty numeric fields read as 0, as Go's archive/tar (and so
        // containerd and docker) read them.
        let mut uid =
            id(lenient(header.uid(), &raw.uid).map_err(|e| invalid("uid", e))?).map_err(|e| invalid("uid", e))?;
        let mut gid =
            id(lenient(header.gid(), &raw.gid).map_err(|e| invalid("gid", e))?).map_err(|e| invalid("gid", e))?;
        let mode = lenient(header.mode().map(u64::from), &raw.mode).map_err(|e| invalid("mode", e))?;
        let mode = u32::try_from(mode).unwrap_or(0) & MODE_BITS;
        let seconds = lenient(header.mtime(), &raw.mtime).map_err(|e| invalid("mtime", e))?;
        let mut mtime = Timespec { tv_sec: i64::try_from(seconds).unwrap_or(i64::MAX), tv_nsec: 0 };
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(|e| invalid("pax", e))? {
            for record in records {
                let record = record.map_err(|e| invalid("pax", e))?;
                let key = record.key_bytes();
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((xattr.to_vec(), record.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    mtime = pax_time(record.value_bytes()).ok_or_else(|| {
                        invalid("pax mtime", io::Error::new(io::ErrorKind::InvalidData, "not a decimal time"))
                    })?;
                } else if key == b"uid" || key == b"gid" {
                    // PAX ids override the header's (ids past the octal field's range).
                    let value =
                        std::str::from_utf8(record.value_bytes()).ok().and_then(|v| v.trim().parse::<u32>().ok());
                    let value = value.ok_or_else(|| {
                        invalid("pax id", io::Error::new(io::ErrorKind::InvalidData, "not a decimal id"))
                    })?;
                    if key == b"uid" { uid = value } else { gid = value }
                } else if key.starts_with(b"GNU.sparse.") {
                    return Err(UnpackError::UnsupportedSparse { entry: name.to_owned() });
                }
            }
        }
        Ok(Self { uid: Uid::from_raw_unchecked(uid), gid: Gid::from_raw_unchecked(gid), mode, mtime, xattrs })
    }

    fn times(&self) -> Timestamps {
        Timestamps { last_access: self.mtime, last_modification: self.mtime }
    }
}

/// A uid or gid from a header: 32 bits, and not -1 (which means "unchanged").
fn id(raw: u64) -> io::Result<u32> {
    u32::try_from(raw)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "id out of range"))
}

/// A PAX time: decimal seconds with an optional fraction, maybe negative.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut seconds: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        let place = 10i64.pow(8 - u32::try_from(i).ok()?);
        nanos += i64::from(digit - b'0') * place;
    }
    if negative {
        seconds = -seconds;
        if nanos > 0 {
            seconds -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(Timespec { tv_sec: seconds, tv_nsec: nanos })
}

/// An error of a filesystem step for an entry.
pub(super) fn io_error<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io { entry: entry.to_owned(), op, source: errno.into() }
}

impl Unpacker {
    pub(super) fn new(root: OwnedFd, errors: StreamErrors) -> Self {
        let chown = rustix::process::geteuid().is_root();
        if !chown {
            tracing::debug!("not running as root: layer ownership is not applied");
        }
        Self { root, chown, errors, dirs: Vec::new(), buf: vec![0; COPY_BUFFER] }
    }

    /// Creates one entry.
    pub(super) fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        // Names are cut in errors and logs: a long name is up to MAX_EXTENSION bytes.
        let name = crate::shown::lossy(&raw);
        if kind.is_pax_global_extensions() {
            tracing::debug!(entry = %name, "skipping a pax global header");
            return Ok(());
        }
        let path = EntryPath::parse(&raw).map_err(|reason| UnpackError::InvalidName { entry: name.clone(), reason })?;
        if whiteout::is_aufs_metadata(&path) {
            tracing::debug!(entry = %name, "skipping aufs metadata");
            return Ok(());
        }
        let meta = Meta::read(entry, &name)?;
        if path.name().is_some_and(|last| last.starts_with(whiteout::PREFIX)) {
            return whiteout::apply(self, &path, &name, &meta);
        }
        if path.is_root() && kind != EntryType::Directory {
            return Err(UnpackError::InvalidName { entry: name, reason: "only a directory may name the layer root" });
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => self.file(entry, &path, &name, &meta),
            EntryType::Directory => self.directory(&path, &name, &meta),
            EntryType::Symlink => {
                let target = link_name(entry, &name)?;
                self.symlink(&path, &name, &target, &meta)
            }
            EntryType::Link => {
                let target = link_name(entry, &name)?;
                self.hardlink(&path, &name, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let major = device(entry.header().device_major(), &name, "device major")?;
                        let minor = device(entry.header().device_minor(), &name, "device minor")?;
                        let file_type =
                            if kind == EntryType::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                        (file_type, rustix::fs::makedev(major, minor))
                    }
                };
                self.node(&path, &name, file_type, dev, &meta)
            }
            other => Err(UnpackError::UnsupportedType { entry: name, kind: char::from(other.as_byte()) }),
        }
    }

    /// Applies the deferred directory modes and mtimes.
    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        for dir in std::mem::take(&mut self.dirs) {
            let fd = match resolve::open_beneath(
                self.root.as_fd(),
                &dir.path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => {
                    tracing::debug!(entry = %dir.entry, "directory is gone: metadata not applied");
                    continue;
                }
                Err(errno) => return Err(io_error(&dir.entry, "open the directory")(errno)),
            };
            rustix::fs::fchmod(&fd, dir.mode).map_err(io_error(&dir.entry, "set the mode"))?;
            let times = Timestamps { last_access: dir.mtime, last_modification: dir.mtime };
            rustix::fs::futimens(&fd, &times).map_err(io_error(&dir.entry, "set the mtime"))?;
        }
        Ok(())
    }

    /// The entry's parent directory, created if missing.
    pub(super) fn parent(&self, path: &EntryPath, entry: &str) -> Result<OwnedFd, UnpackError> {
        resolve::ensure_dir_beneath(self.root.as_fd(), path.parent()).map_err(|errno| match errno {
            Errno::XDEV => UnpackError::Escape { entry: entry.to_owned() },
            errno => io_error(entry, "resolve the parent directory")(errno),
        })
    }

    /// Clears the entry's name in `parent` (see [`resolve::clear_name`]).
    pub(super) fn clear(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        keep_dir: bool,
        entry: &str,
    ) -> Result<Previous, UnpackError> {
        resolve::clear_name(parent.as_fd(), name, keep_dir).map_err(io_error(entry, "replace the existing file"))
    }

    /// Sets ownership without following a final symlink.
    pub(super) fn chown_at(&self, parent: &OwnedFd, name: &[u8], meta: &Meta, entry: &str) -> Result<(), UnpackError> {
        if !self.chown {
            return Ok(());
        }
        rustix::fs::chownat(parent, name, Some(meta.uid), Some(meta.gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(entry, "set the owner"))
    }

    fn chown_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, entry: &str) -> Result<(), UnpackError> {
        if !self.chown {
            return Ok(());
        }
        rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(io_error(entry, "set the owner"))
    }

    fn file<R: Read>(
        &mut self,
        data: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        entry: &str,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = (self.parent(path, entry)?, final_name(path));
        self.clear(&parent, name, false, entry)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600))
            .map_err(io_error(entry, "create the file"))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) if written == data.size() => break,
                Ok(0) => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ends inside the entry");
                    return Err(self.errors.entry_data(entry, eof));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.errors.entry_data(entry, e)),
            };
            file.write_all(&self.buf[..n]).map_err(|source| UnpackError::Io {
                entry: entry.to_owned(),
                op: "write the file",
                source,
            })?;
            written += n as u64;
        }
        // chown clears setuid/setgid, so the mode comes after it; xattrs
        // (security.capability) after both.
        self.chown_fd(file.as_fd(), meta, entry)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(io_error(entry, "set the mode"))?;
        set_xattrs(file.as_fd(), meta, entry)?;
        rustix::fs::futimens(&file, &meta.times()).map_err(io_error(entry, "set the mtime"))
    }

    fn directory(&mut self, path: &EntryPath, entry: &str, meta: &Meta) -> Result<(), UnpackError> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match path.name() {
            None => resolve::open_beneath(self.root.as_fd(), b".", dir_flags)
                .map_err(io_error(entry, "open the layer root"))?,
            Some(name) => {
                let parent = self.parent(path, entry)?;
                if self.clear(&parent, name, true, entry)? != Previous::KeptDir {
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))
                        .map_err(io_error(entry, "create the directory"))?;
                }
                rustix::fs::openat(&parent, name, dir_flags, Mode::empty())
                    .map_err(io_error(entry, "open the directory"))?
            }
        };
        self.chown_fd(fd.as_fd(), meta, entry)?;
        set_xattrs(fd.as_fd(), meta, entry)?;
        self.dirs.push(DirFixup {
            entry: entry.to_owned(),
            path: path.joined(),
            mode: Mode::from_raw_mode(meta.mode),
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn symlink(&self, path: &EntryPath, entry: &str, target: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let (parent, name) = (self.parent(path, entry)?, final_name(path));
        self.clear(&parent, name, false, entry)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(io_error(entry, "create the symlink"))?;
        self.chown_at(&parent, name, meta, entry)?;
        skip_xattrs(meta, entry, "symlink");
        rustix::fs::utimensat(&parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(entry, "set the mtime"))
    }

    /// A hardlink shares its target's inode, so its own header metadata is
    /// not applied.
    fn hardlink(&self, path: &EntryPath, entry: &str, raw_target: &[u8]) -> Result<(), UnpackError> {
        let shown = crate::shown::lossy(raw_target);
        let invalid =
            |reason| UnpackError::InvalidLinkTarget { entry: entry.to_owned(), target: shown.clone(), reason };
        let target = EntryPath::parse(raw_target).map_err(invalid)?;
        let Some(target_name) = target.name() else {
            return Err(invalid("names the layer root"));
        };
        if target == *path {
            tracing::debug!(entry, "skipping a hardlink to itself");
            return Ok(());
        }
        let target_parent = resolve::dir_beneath(self.root.as_fd(), target.parent()).map_err(|errno| match errno {
            Errno::XDEV => UnpackError::LinkEscape { entry: entry.to_owned(), target: shown.clone() },
            errno => io_error(entry, "resolve the hardlink target")(errno),
        })?;
        let (parent, name) = (self.parent(path, entry)?, final_name(path));
        self.clear(&parent, name, false, entry)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself.
        rustix::fs::linkat(&target_parent, target_name, &parent, name, AtFlags::empty())
            .map_err(io_error(entry, "create the hardlink"))
    }

    fn node(
        &self,
        path: &EntryPath,
        entry: &str,
        file_type: FileType,
        dev: rustix::fs::Dev,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = (self.parent(path, entry)?, final_name(path));
        self.clear(&parent, name, false, entry)?;
        rustix::fs::mknodat(&parent, name, file_type, Mode::from_raw_mode(meta.mode & 0o777), dev)
            .map_err(io_error(entry, "create the special file"))?;
        self.chown_at(&parent, name, meta, entry)?;
        // fchmodat cannot refuse to follow a symlink: make sure the name
        // still is the node just made.
        let stat =
            rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_error(entry, "stat the file"))?;
        if FileType::from_raw_mode(stat.st_mode) != file_type {
            return Err(io_error(entry, "set the mode")(Errno::STALE));
        }
        rustix::fs::chmodat(&parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(io_error(entry, "set the mode"))?;
        skip_xattrs(meta, entry, "special file");
        rustix::fs::utimensat(&parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(entry, "set the mtime"))
    }
}

/// The last component of a path that is not the root.
fn final_name(path: &EntryPath) -> &[u8] {
    path.name().unwrap_or(b".")
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<Vec<u8>, UnpackError> {
    match entry.link_name_bytes() {
        Some(target) if !target.is_empty() => Ok(target.into_owned()),
        _ => Err(UnpackError::InvalidHeader {
            entry: name.to_owned(),
            field: "link name",
            source: io::Error::new(io::ErrorKind::InvalidData, "empty link target"),
        }),
    }
}

fn device(value: io::Result<Option<u32>>, entry: &str, field: &'static str) -> Result<u32, UnpackError> {
    value.map(Option::unwrap_or_default).map_err(|source| UnpackError::InvalidHeader {
        entry: entry.to_owned(),
        field,
        source,
    })
}

/// Sets the entry's xattrs on an open file or directory. Filesystems without
/// xattr support (or a caller without the privilege) only get a warning.
fn set_xattrs(fd: BorrowedFd<'_>, meta: &Meta, entry: &str) -> Result<(), UnpackError> {
    for (name, value) in &meta.xattrs {
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            tracing::debug!(entry, xattr = %crate::shown::lossy(name), "skipping an overlayfs xattr");
            continue;
        }
        match rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(errno @ (Errno::NOTSUP | Errno::PERM)) => {
                tracing::warn!(entry, xattr = %crate::shown::lossy(name), %errno, "cannot set an xattr");
            }
            Err(errno) => return Err(io_error(entry, "set an xattr")(errno)),
        }
    }
    Ok(())
}

fn skip_xattrs(meta: &Meta, entry: &str, what: &str) {
    if !meta.xattrs.is_empty() {
        tracing::debug!(entry, "xattrs on a {what} are not applied");
    }
}

/// A numeric header field, with an empty (all NUL or space) field read as 0.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_pax_time() {
        let t = |s: &str| pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("12.0000000019"), Some((12, 1)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t(""), None);
        assert_eq!(t("1e3"), None);
        assert_eq!(t(".5"), None);
    }
}
