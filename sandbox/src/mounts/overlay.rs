//! Container root filesystems as overlayfs: read-only layer directories
//! under a writable upper directory.
//!
//! Mounting uses the kernel's mount API (`fsopen`/`fsconfig`), adding one
//! lowerdir per `lowerdir+` call, so the number of layers is not limited by
//! the one-page `mount(2)` option string. Kernels before 6.8 lack
//! `lowerdir+`: there the classic option string is used when it fits.

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

/// Why an overlay could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An overlay needs at least one lower layer.
    #[error("overlay on {0} has no layers")]
    NoLayers(PathBuf),
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
    /// Unmounting failed.
    #[error("unmount {0}")]
    Unmount(PathBuf, #[source] std::io::Error),
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

impl OverlayMount {
    /// A writable overlay of `layers` (bottom first, as an image lists them)
    /// under `upper`, with overlay's scratch directory `work`.
    pub fn writable(layers: &[PathBuf], upper: &Path, work: &Path) -> Self {
        Self {
            lowerdirs: layers.iter().rev().cloned().collect(),
            upperdir: Some(upper.to_path_buf()),
            workdir: Some(work.to_path_buf()),
        }
    }

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
    pub fn mount(&self, target: &Path) -> Result<(), OverlayError> {
        let layers = self.lowerdirs.len();
        if layers == 0 {
            return Err(OverlayError::NoLayers(target.to_path_buf()));
        }
        match self.mount_with_fsconfig(target) {
            Ok(()) => Ok(()),
            // EINVAL on "lowerdir+": a kernel before 6.8. ENOSYS: no mount API.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => self.mount_classic(target),
            Err(e) => Err(OverlayError::Mount { target: target.to_path_buf(), layers, source: e.into() }),
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

    fn mount_classic(&self, target: &Path) -> Result<(), OverlayError> {
        let options = self.options();
        if options.len() > MAX_MOUNT_DATA {
            return Err(OverlayError::TooManyLayers { layers: self.lowerdirs.len(), len: options.len() });
        }
        let flags = if self.upperdir.is_some() { MountFlags::empty() } else { MountFlags::RDONLY };
        let data = std::ffi::CString::new(options).map_err(|e| OverlayError::Mount {
            target: target.to_path_buf(),
            layers: self.lowerdirs.len(),
            source: std::io::Error::new(ErrorKind::InvalidInput, e),
        })?;
        mount("overlay", target, "overlay", flags, data.as_c_str()).map_err(|e| OverlayError::Mount {
            target: target.to_path_buf(),
            layers: self.lowerdirs.len(),
            source: e.into(),
        })
    }
}

/// Unmounts a rootfs (lazily, so a busy mount never blocks removal).
pub fn unmount_rootfs(target: &Path) -> Result<(), OverlayError> {
    match unmount(target, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        // Not mounted (EINVAL) or already gone (ENOENT): nothing to do.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(OverlayError::Unmount(target.to_path_buf(), e.into())),
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

#[cfg(test)]
mod tests;
