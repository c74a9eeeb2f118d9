//! The executor: applies a [`plan`] inside the new mount namespace.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat};
use nix::sys::statvfs::{FsFlags, fstatvfs};
use nix::unistd::{chdir, fchdir, pivot_root, symlinkat};

use super::mountinfo;
use super::plan::{BindOp, FsMount, MountOp, ReadOnly, clean, plan};
use super::resolve::{NodeKind, resolve_rel, walk};
use super::{MountError, RootfsSpec};

/// Directories of the host's `/dev` not searched for devices (containerd's list).
const HOST_DEV_SKIP_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Set up the container's mount namespace and root as [`plan`] lays out, and
/// `pivot_root` into it. Call it in the container child, in a new mount
/// namespace (`unshare(CLONE_NEWNS)` or a clone with it), before exec; it
/// changes the root and the working directory of the calling thread.
///
/// Stops at the first failing step; the half-built namespace is meant to die
/// with the child.
pub fn setup_rootfs(spec: &RootfsSpec) -> Result<(), MountError> {
    validate(spec)?;
    let root = spec.rootfs.canonicalize().map_err(|source| MountError::Read { path: spec.rootfs.clone(), source })?;
    let exec = Executor { root };
    let ops = plan(spec);
    tracing::debug!(rootfs = %exec.root.display(), ops = ops.len(), "setting up the mount namespace");
    for op in &ops {
        tracing::trace!(?op, "mount op");
        exec.apply(op)?;
    }
    Ok(())
}

/// Check the spec before touching anything: the rootfs is a directory, every
/// source that must exist exists, no destination is the rootfs itself.
pub fn validate(spec: &RootfsSpec) -> Result<(), MountError> {
    let meta = fs::metadata(&spec.rootfs).map_err(|source| MountError::Read { path: spec.rootfs.clone(), source })?;
    if !meta.is_dir() {
        let source = io::Error::from(io::ErrorKind::NotADirectory);
        return Err(MountError::Read { path: spec.rootfs.clone(), source });
    }
    let mounts = spec.mounts.iter().map(|m| (&m.source, m.destination.as_str()));
    let devices = spec.devices.iter().map(|d| (&d.host_path, d.container_path.as_str()));
    let pod_files = [
        (&spec.shm, "/dev/shm"),
        (&spec.hostname_file, "/etc/hostname"),
        (&spec.hosts_file, "/etc/hosts"),
        (&spec.resolv_file, "/etc/resolv.conf"),
    ];
    let pod_files = pod_files.into_iter().filter_map(|(file, dest)| file.as_ref().map(|f| (f, dest)));
    for (source, destination) in mounts.chain(devices).chain(pod_files) {
        if clean(destination).as_os_str().is_empty() {
            return Err(MountError::InvalidDestination {
                destination: destination.to_owned(),
                reason: "the rootfs itself",
            });
        }
        fs::metadata(source).map_err(|e| MountError::Source {
            host_path: source.clone(),
            destination: destination.to_owned(),
            source: e,
        })?;
    }
    Ok(())
}

/// A path inside the rootfs, opened `O_PATH`.
struct Target {
    fd: OwnedFd,
    /// Relative to the rootfs, plain components only.
    rel: PathBuf,
    /// The same path on the host, for messages and mountinfo.
    host: PathBuf,
}

impl Target {
    /// The magic link `mount(2)` resolves to exactly this file.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/thread-self/fd/{}", self.fd.as_raw_fd()))
    }
}

#[derive(Debug)]
struct Executor {
    /// Canonical rootfs path.
    root: PathBuf,
}

impl Executor {
    fn apply(&self, op: &MountOp) -> Result<(), MountError> {
        match op {
            MountOp::RootPropagation(p) => set_propagation(Path::new("/"), p.flags()),
            MountOp::BindRootfs => self.bind_rootfs(),
            MountOp::Mount(m) => self.mount_fs(m),
            MountOp::Sysfs { readonly } => self.sysfs(*readonly),
            MountOp::Bind(b) => self.bind(b),
            MountOp::Symlink { link, target } => self.symlink(link, target),
            MountOp::HostDevices => self.host_devices(),
            MountOp::Mask(path) => self.mask(path),
            MountOp::ReadonlyPath(path) => self.readonly_path(path),
            MountOp::ReadonlyRootfs => self.remount_ro(&self.existing(Path::new(""))?),
            MountOp::PivotRoot => self.pivot_root(),
        }
    }

    /// Open the container path `path`, `None` when it does not exist.
    fn open(&self, path: &Path) -> Result<Option<Target>, MountError> {
        let rel = resolve_rel(&self.root, path)?;
        self.open_rel(rel, None)
    }

    /// Open the container path `path`, creating what is missing.
    fn create(&self, path: &Path, kind: NodeKind) -> Result<Target, MountError> {
        let rel = resolve_rel(&self.root, path)?;
        if rel.as_os_str().is_empty() {
            let destination = path.display().to_string();
            return Err(MountError::InvalidDestination { destination, reason: "the rootfs itself" });
        }
        self.open_rel(rel, Some(kind))?.ok_or_else(|| self.vanished(path))
    }

    /// Open an already resolved path again (after a mount on it: this lands
    /// on the new mount).
    fn existing(&self, rel: &Path) -> Result<Target, MountError> {
        self.open_rel(rel.to_owned(), None)?.ok_or_else(|| self.vanished(rel))
    }

    fn open_rel(&self, rel: PathBuf, create: Option<NodeKind>) -> Result<Option<Target>, MountError> {
        let host = self.root.join(&rel);
        Ok(walk(&self.root, &rel, create)?.map(|fd| Target { fd, rel, host }))
    }

    fn vanished(&self, path: &Path) -> MountError {
        MountError::Open { path: self.root.join(clean(&path.to_string_lossy())), source: Errno::ENOENT }
    }

    fn bind_rootfs(&self) -> Result<(), MountError> {
        let parent = mountinfo::mount_point_of(&self.root)?;
        set_propagation(&parent, MsFlags::MS_PRIVATE)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(&self.root), &self.root, None::<&str>, flags, None::<&str>).map_err(|source| MountError::Mount {
            src: self.root.display().to_string(),
            target: self.root.clone(),
            fstype: "bind".to_owned(),
            flags,
            source,
        })
    }

    fn mount_fs(&self, m: &FsMount) -> Result<(), MountError> {
        let target = self.create(Path::new(&m.target), NodeKind::Dir)?;
        mount_at(Some(Path::new(&m.source)), &target, Some(&m.fstype), m.flags, m.data.as_deref())
    }

    fn sysfs(&self, readonly: bool) -> Result<(), MountError> {
        let target = self.create(Path::new("/sys"), NodeKind::Dir)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        flags.set(MsFlags::MS_RDONLY, readonly);
        match mount(Some("sysfs"), &target.proc_path(), Some("sysfs"), flags, None::<&str>) {
            Err(Errno::EPERM) => {
                tracing::debug!("fresh sysfs refused, binding the host's /sys");
                self.bind(&BindOp {
                    source: "/sys".into(),
                    target: "/sys".to_owned(),
                    recursive: true,
                    readonly: if readonly { ReadOnly::Recursive } else { ReadOnly::No },
                    propagation: None,
                    optional: false,
                })
            }
            res => res.map_err(|source| mount_error(Some(Path::new("sysfs")), &target, Some("sysfs"), flags, source)),
        }
    }

    fn bind(&self, b: &BindOp) -> Result<(), MountError> {
        let source = match b.source.canonicalize() {
            Ok(source) => source,
            Err(e) if b.optional && e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(MountError::Source {
                    host_path: b.source.clone(),
                    destination: b.target.clone(),
                    source: e,
                });
            }
        };
        let kind = if source.is_dir() { NodeKind::Dir } else { NodeKind::File };
        let target = self.create(Path::new(&b.target), kind)?;
        let mut flags = MsFlags::MS_BIND;
        flags.set(MsFlags::MS_REC, b.recursive);
        mount_at(Some(&source), &target, None, flags, None)?;
        if b.propagation.is_none() && b.readonly == ReadOnly::No {
            return Ok(());
        }
        let top = self.existing(&target.rel)?;
        if let Some(p) = b.propagation {
            set_propagation(&top.proc_path(), p.flags()).map_err(|e| with_target(e, &top.host))?;
        }
        match b.readonly {
            ReadOnly::No => Ok(()),
            ReadOnly::Mount => self.remount_ro(&top),
            ReadOnly::Recursive => self.remount_ro_recursive(&top),
        }
    }

    fn symlink(&self, link: &str, target: &str) -> Result<(), MountError> {
        let path = Path::new(link);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(MountError::InvalidDestination { destination: link.to_owned(), reason: "no file name" });
        };
        let dir = self.create(parent, NodeKind::Dir)?;
        match symlinkat(target, &dir.fd, name) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(source) => Err(MountError::Create { path: dir.host.join(name), source }),
        }
    }

    fn host_devices(&self) -> Result<(), MountError> {
        let mut devices = Vec::new();
        collect_devices(Path::new("/dev"), 0, &mut devices)?;
        for host in devices {
            if self.open(&host)?.is_some() {
                continue;
            }
            let target = host.display().to_string();
            self.bind(&BindOp {
                source: host,
                target,
                recursive: false,
                readonly: ReadOnly::No,
                propagation: None,
                optional: true,
            })?;
        }
        Ok(())
    }

    fn mask(&self, path: &str) -> Result<(), MountError> {
        let Some(target) = self.open(Path::new(path))? else { return Ok(()) };
        if target.rel.as_os_str().is_empty() {
            return Err(MountError::InvalidDestination { destination: path.to_owned(), reason: "the rootfs itself" });
        }
        let stat = fstat(&target.fd).map_err(|source| MountError::Open { path: target.host.clone(), source })?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount_at(Some(Path::new("tmpfs")), &target, Some("tmpfs"), flags, Some("size=4k,nr_inodes=1"))
        } else {
            mount_at(Some(Path::new("/dev/null")), &target, None, MsFlags::MS_BIND, None)
        }
    }

    fn readonly_path(&self, path: &str) -> Result<(), MountError> {
        let Some(target) = self.open(Path::new(path))? else { return Ok(()) };
        let proc_path = target.proc_path();
        mount_at(Some(&proc_path), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        self.remount_ro_recursive(&self.existing(&target.rel)?)
    }

    /// Remount the mount `target` is the root of read-only, keeping the
    /// flags an unprivileged remount may not drop.
    fn remount_ro(&self, target: &Target) -> Result<(), MountError> {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        let remount_error = |source| MountError::Remount { target: target.host.clone(), flags, source };
        let current = fstatvfs(&target.fd).map_err(remount_error)?.flags();
        flags.set(MsFlags::MS_NOSUID, current.contains(FsFlags::ST_NOSUID));
        flags.set(MsFlags::MS_NODEV, current.contains(FsFlags::ST_NODEV));
        flags.set(MsFlags::MS_NOEXEC, current.contains(FsFlags::ST_NOEXEC));
        mount(None::<&str>, &target.proc_path(), None::<&str>, flags, None::<&str>)
            .map_err(|source| MountError::Remount { target: target.host.clone(), flags, source })
    }

    /// [`Self::remount_ro`] on `target` and every mount under it.
    fn remount_ro_recursive(&self, target: &Target) -> Result<(), MountError> {
        self.remount_ro(target)?;
        for mount_point in mountinfo::mount_points()? {
            if mount_point == target.host || !mount_point.starts_with(&target.host) {
                continue;
            }
            let Ok(rel) = mount_point.strip_prefix(&self.root) else { continue };
            // A mount point hidden by a later mount is gone from view: skip it.
            if let Some(sub) = self.open_rel(rel.to_owned(), None)? {
                self.remount_ro(&sub)?;
            }
        }
        Ok(())
    }

    fn pivot_root(&self) -> Result<(), MountError> {
        let step = |step| move |source| MountError::PivotRoot { rootfs: self.root.clone(), step, source };
        let dir = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let old_root = open("/", dir, Mode::empty()).map_err(step("open the old root"))?;
        let new_root = open(&self.root, dir, Mode::empty()).map_err(step("open the rootfs"))?;
        fchdir(&new_root).map_err(step("chdir into the rootfs"))?;
        pivot_root(".", ".").map_err(step("pivot_root"))?;
        // The old root now sits on top of the new one. Make it rslave before
        // detaching it, so that the unmount cannot propagate to the host.
        fchdir(&old_root).map_err(step("chdir into the old root"))?;
        mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(step("make the old root rslave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
        chdir("/").map_err(step("chdir /"))
    }
}

fn mount_at(
    src: Option<&Path>,
    target: &Target,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(src, &target.proc_path(), fstype, flags, data).map_err(|e| mount_error(src, target, fstype, flags, e))
}

fn mount_error(src: Option<&Path>, target: &Target, fstype: Option<&str>, flags: MsFlags, e: Errno) -> MountError {
    MountError::Mount {
        src: src.map_or_else(|| "none".to_owned(), |s| s.display().to_string()),
        target: target.host.clone(),
        fstype: fstype.unwrap_or("bind").to_owned(),
        flags,
        source: e,
    }
}

fn set_propagation(path: &Path, flags: MsFlags) -> Result<(), MountError> {
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|source| MountError::Propagation {
        target: path.to_owned(),
        flags,
        source,
    })
}

/// Replace the `/proc/thread-self/fd/N` target of an error by the real path.
fn with_target(e: MountError, host: &Path) -> MountError {
    match e {
        MountError::Propagation { flags, source, .. } => {
            MountError::Propagation { target: host.to_owned(), flags, source }
        }
        other => other,
    }
}

/// Device nodes under the host's `dir`, skipping pseudo-terminal, shm and
/// similar directories and the console.
fn collect_devices(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), MountError> {
    if depth > 4 {
        return Ok(());
    }
    let read_error = |source| MountError::Read { path: dir.to_owned(), source };
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let kind = entry.file_type().map_err(read_error)?;
        let name = entry.file_name();
        if kind.is_dir() {
            if !HOST_DEV_SKIP_DIRS.iter().any(|skip| name == *skip) {
                collect_devices(&entry.path(), depth + 1, out)?;
            }
        } else if (kind.is_char_device() || kind.is_block_device()) && name != "console" {
            out.push(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::MountSpec;
    use super::*;

    #[test]
    fn validate_names_the_missing_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = RootfsSpec::new(dir.path());
        spec.mounts.push(MountSpec {
            source: dir.path().join("nope"),
            destination: "/data".into(),
            ..Default::default()
        });
        let err = validate(&spec).expect_err("missing source");
        let text = err.to_string();
        assert!(text.contains("nope") && text.contains("/data"), "{text}");
        assert!(matches!(err, MountError::Source { .. }));
    }

    #[test]
    fn validate_refuses_the_root_as_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = RootfsSpec::new(dir.path());
        spec.mounts.push(MountSpec { source: dir.path().into(), destination: "/a/..".into(), ..Default::default() });
        assert!(matches!(validate(&spec), Err(MountError::InvalidDestination { .. })));
    }

    #[test]
    fn validate_refuses_a_missing_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = RootfsSpec::new(dir.path().join("missing"));
        assert!(matches!(validate(&spec), Err(MountError::Read { .. })));
        assert!(validate(&RootfsSpec::new(dir.path())).is_ok());
    }

    #[test]
    fn host_devices_are_found() {
        let mut out = Vec::new();
        collect_devices(Path::new("/dev"), 0, &mut out).expect("read /dev");
        assert!(out.contains(&PathBuf::from("/dev/null")));
        assert!(!out.iter().any(|p| p.starts_with("/dev/pts") || p == Path::new("/dev/console")));
    }
}
