//! Container root filesystems as overlayfs: the image's layers as read-only
//! lowerdirs and a per-container upper and work directory.
//!
//! Mounting uses the kernel's mount API (`fsopen`/`fsconfig`), adding one
//! lowerdir per `lowerdir+` call, so the number of layers is not limited by
//! the one-page `mount(2)` option string. Kernels before 6.8 lack
//! `lowerdir+`: there the classic option string is used when it fits.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, mount, move_mount, unmount,
};

/// The most a classic overlay option string may hold (one page, with its NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// Why a snapshot could not be made, mounted or removed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The key is not a safe directory name.
    #[error("invalid snapshot key {0:?}: use 1 to 128 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidKey(String),
    /// An overlay needs at least one lower layer.
    #[error("snapshot {0} has no layers")]
    NoLayers(String),
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
    /// The overlay mount failed.
    #[error("mount overlay on {target} ({layers} layers)")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// Number of lowerdirs.
        layers: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The classic option string is too long and the kernel lacks `lowerdir+`.
    #[error("{layers} layers need {len} bytes of overlay options, over the kernel's {MAX_MOUNT_DATA}-byte limit")]
    TooManyLayers {
        /// Number of lowerdirs.
        layers: usize,
        /// Option string length.
        len: usize,
    },
}

/// An overlay ready to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower layers, top-most first (overlay's order).
    pub lowerdirs: Vec<PathBuf>,
    /// Writable layer; `None` for a read-only view.
    pub upperdir: Option<PathBuf>,
    /// Overlay's scratch directory, beside `upperdir`.
    pub workdir: Option<PathBuf>,
}

/// Per-container writable layers under one directory.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating) the store.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        fs::create_dir_all(root).map_err(|source| io("create", root, source))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Makes a writable snapshot `key` over `lowerdirs` (image layers, bottom
    /// first, as an image lists them). Preparing an existing key reuses its
    /// upper directory.
    pub fn prepare(&self, key: &str, lowerdirs: &[PathBuf]) -> Result<OverlayMount, SnapshotError> {
        let dir = self.dir(key)?;
        if lowerdirs.is_empty() {
            return Err(SnapshotError::NoLayers(key.to_owned()));
        }
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for path in [&upper, &work] {
            fs::create_dir_all(path).map_err(|source| io("create", path, source))?;
        }
        Ok(OverlayMount {
            lowerdirs: lowerdirs.iter().rev().cloned().collect(),
            upperdir: Some(upper),
            workdir: Some(work),
        })
    }

    /// The writable directory of a snapshot (its size is the container's
    /// writable-layer usage).
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        Ok(self.dir(key)?.join("upper"))
    }

    /// Bytes and inodes of a snapshot's writable layer (a container's
    /// writable-layer usage); a missing snapshot uses nothing.
    pub fn usage(&self, key: &str) -> Result<crate::store::FsUsage, SnapshotError> {
        let upper = self.upper_dir(key)?;
        crate::store::du(&upper).map_err(|source| io("measure", &upper, source))
    }

    /// Removes a snapshot's directories (unmount it first). Missing is fine.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = self.dir(key)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io("remove", &dir, source)),
        }
    }

    /// Keys of every snapshot.
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|source| io("list", &self.root, source))? {
            let entry = entry.map_err(|source| io("list", &self.root, source))?;
            keys.push(entry.file_name().to_string_lossy().into_owned());
        }
        keys.sort();
        Ok(keys)
    }

    fn dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        let valid = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('.')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid { Ok(self.root.join(key)) } else { Err(SnapshotError::InvalidKey(key.to_owned())) }
    }
}

impl OverlayMount {
    /// A read-only view of layers (bottom first), for inspecting an image.
    pub fn view(lowerdirs: &[PathBuf]) -> Self {
        Self { lowerdirs: lowerdirs.iter().rev().cloned().collect(), upperdir: None, workdir: None }
    }

    /// The classic `mount(2)` option string.
    pub fn options(&self) -> String {
        let lower: Vec<String> = self.lowerdirs.iter().map(|p| escape(p)).collect();
        let mut options = format!("lowerdir={}", lower.join(":"));
        if let (Some(upper), Some(work)) = (&self.upperdir, &self.workdir) {
            options.push_str(&format!(",upperdir={},workdir={}", escape(upper), escape(work)));
        }
        options
    }

    /// Mounts the overlay on `target`.
    pub fn mount(&self, target: &Path) -> Result<(), SnapshotError> {
        let layers = self.lowerdirs.len();
        if layers == 0 {
            return Err(SnapshotError::NoLayers(target.display().to_string()));
        }
        match self.mount_with_fsconfig(target) {
            Ok(()) => Ok(()),
            // EINVAL on "lowerdir+": a kernel before 6.8. ENOSYS: no mount API.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => self.mount_classic(target),
            Err(e) => Err(SnapshotError::Mount { target: target.to_path_buf(), layers, source: e.into() }),
        }
    }

    fn mount_with_fsconfig(&self, target: &Path) -> rustix::io::Result<()> {
        let fs_fd = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        fsconfig_set_string(&fs_fd, "source", "overlay")?;
        for lower in &self.lowerdirs {
            fsconfig_set_string(&fs_fd, "lowerdir+", lower.as_path())?;
        }
        if let (Some(upper), Some(work)) = (&self.upperdir, &self.workdir) {
            fsconfig_set_string(&fs_fd, "upperdir", upper.as_path())?;
            fsconfig_set_string(&fs_fd, "workdir", work.as_path())?;
        }
        fsconfig_create(&fs_fd)?;
        let attrs = if self.upperdir.is_some() { MountAttrFlags::empty() } else { MountAttrFlags::MOUNT_ATTR_RDONLY };
        let mount_fd = fsmount(&fs_fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
        move_mount(&mount_fd, "", CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
    }

    fn mount_classic(&self, target: &Path) -> Result<(), SnapshotError> {
        let options = self.options();
        if options.len() > MAX_MOUNT_DATA {
            return Err(SnapshotError::TooManyLayers { layers: self.lowerdirs.len(), len: options.len() });
        }
        let flags = if self.upperdir.is_some() { MountFlags::empty() } else { MountFlags::RDONLY };
        let data = std::ffi::CString::new(options).map_err(|e| SnapshotError::Mount {
            target: target.to_path_buf(),
            layers: self.lowerdirs.len(),
            source: std::io::Error::new(ErrorKind::InvalidInput, e),
        })?;
        mount("overlay", target, "overlay", flags, data.as_c_str()).map_err(|e| SnapshotError::Mount {
            target: target.to_path_buf(),
            layers: self.lowerdirs.len(),
            source: e.into(),
        })
    }
}

/// Unmounts a rootfs (lazily, so a busy mount never blocks removal).
pub fn unmount_rootfs(target: &Path) -> Result<(), SnapshotError> {
    match unmount(target, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        // Not mounted (EINVAL) or already gone (ENOENT): nothing to do.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io("unmount", target, e.into())),
    }
}

/// Overlay option values escape `,` `:` and `\` with a backslash.
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for ch in String::from_utf8_lossy(path.as_os_str().as_bytes()).chars() {
        if matches!(ch, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests;
