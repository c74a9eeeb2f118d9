//! The pure plan: which mounts, in which order.

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

use super::{DEV_TMPFS_SIZE, Propagation, RootfsSpec};

/// Host device nodes bound into every container's `/dev`.
pub(crate) const STANDARD_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// `/dev` symlinks: (link, target).
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/core", "/proc/kcore"),
];

/// How a bind ends up read-only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadOnly {
    /// Writable.
    #[default]
    No,
    /// The bind itself is read-only; submounts keep their flags.
    Mount,
    /// The bind and every submount under it are read-only.
    Recursive,
}

/// A fresh filesystem mounted on a directory (created if missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsMount {
    /// Source (device name), e.g. `proc`.
    pub source: String,
    /// Filesystem type.
    pub fstype: String,
    /// Container path.
    pub target: String,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: Option<String>,
}

/// A host path bound at a container path. The mount point is created as a
/// directory for a directory source and as an empty file otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOp {
    /// Host path, canonicalized when the step runs.
    pub source: PathBuf,
    /// Container path.
    pub target: String,
    /// `MS_REC`: take the submounts of the source along.
    pub recursive: bool,
    /// Read-only remount after the bind.
    pub readonly: ReadOnly,
    /// Propagation set on the bind.
    pub propagation: Option<Propagation>,
    /// Skip quietly when the source does not exist (standard devices).
    pub optional: bool,
}

/// One step of the set-up inside the new mount namespace. Container paths are
/// resolved inside the rootfs when the step runs, so earlier mounts count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Set the propagation of every mount of the namespace (`/`, recursive).
    RootPropagation(Propagation),
    /// Make the mount holding the rootfs private and bind the rootfs onto
    /// itself (recursively), so that it is a private mount point
    /// `pivot_root` accepts. Done even when the rootfs already is a mount.
    BindRootfs,
    /// A fresh filesystem.
    Mount(FsMount),
    /// sysfs on `/sys`; where the kernel refuses a fresh one (`EPERM`: a
    /// network namespace not owned by our user namespace) a recursive bind of
    /// the host's `/sys` instead.
    Sysfs {
        /// Mount it read-only (recursively for the fallback).
        readonly: bool,
    },
    /// A bind of a host path.
    Bind(BindOp),
    /// A symlink at the container path `link` pointing to `target`.
    Symlink {
        /// Container path of the link.
        link: String,
        /// Link contents.
        target: String,
    },
    /// Privileged: bind every host device node under `/dev` that is not there
    /// yet (as containerd's `WithDevices` from the host).
    HostDevices,
    /// Hide a path: `/dev/null` over a file, an empty read-only tmpfs over a
    /// directory; a missing path is skipped.
    Mask(String),
    /// Bind a path onto itself and make it read-only recursively; a missing
    /// path is skipped.
    ReadonlyPath(String),
    /// Remount the rootfs read-only (its own mount; binds keep their flags).
    ReadonlyRootfs,
    /// `pivot_root(rootfs, rootfs)`, detach the old root, `chdir("/")`.
    PivotRoot,
}

/// The steps [`setup_rootfs`](super::setup_rootfs) runs for `spec`, in order.
pub fn plan(spec: &RootfsSpec) -> Vec<MountOp> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut ops = vec![MountOp::RootPropagation(root_propagation(spec)), MountOp::BindRootfs];
    ops.push(fs("proc", "proc", "/proc", nosuid_nodev_noexec, None));
    ops.push(fs(
        "tmpfs",
        "tmpfs",
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(format!("mode=755,size={DEV_TMPFS_SIZE}")),
    ));
    for name in STANDARD_DEVICES {
        let path = format!("/dev/{name}");
        ops.push(MountOp::Bind(BindOp { optional: true, ..bind(path.clone().into(), path) }));
    }
    for (link, target) in DEV_SYMLINKS {
        ops.push(MountOp::Symlink { link: (*link).to_owned(), target: (*target).to_owned() });
    }
    ops.push(fs(
        "devpts",
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5".to_owned()),
    ));
    ops.push(match &spec.shm {
        Some(shm) => MountOp::Bind(bind(shm.clone(), "/dev/shm".to_owned())),
        None => fs("shm", "tmpfs", "/dev/shm", nosuid_nodev_noexec, Some(format!("mode=1777,size={DEV_TMPFS_SIZE}"))),
    });
    ops.push(fs("mqueue", "mqueue", "/dev/mqueue", nosuid_nodev_noexec, None));
    ops.push(MountOp::Sysfs { readonly: !spec.privileged });
    ops.push(MountOp::Bind(BindOp {
        recursive: true,
        readonly: if spec.privileged { ReadOnly::No } else { ReadOnly::Recursive },
        optional: true,
        ..bind("/sys/fs/cgroup".into(), "/sys/fs/cgroup".to_owned())
    }));
    if spec.privileged {
        ops.push(MountOp::HostDevices);
    }
    ops.extend(user_binds(spec).into_iter().map(MountOp::Bind));
    for dev in &spec.devices {
        ops.push(MountOp::Bind(bind(dev.host_path.clone(), dev.container_path.clone())));
    }
    if !spec.privileged {
        ops.extend(spec.masked_paths.iter().cloned().map(MountOp::Mask));
        ops.extend(spec.readonly_paths.iter().cloned().map(MountOp::ReadonlyPath));
    }
    if spec.readonly_rootfs {
        ops.push(MountOp::ReadonlyRootfs);
    }
    ops.push(MountOp::PivotRoot);
    ops
}

/// The spec's root propagation, raised to the strongest any mount asks for
/// (a bind only stays linked to the host if `/` is at least that linked).
fn root_propagation(spec: &RootfsSpec) -> Propagation {
    spec.mounts.iter().map(|m| m.propagation).fold(spec.root_propagation, Ord::max)
}

/// CRI mounts plus the pod's `/etc` files (unless a CRI mount has the same
/// destination), parents before children (stable sort on depth, as
/// containerd does).
fn user_binds(spec: &RootfsSpec) -> Vec<BindOp> {
    let mut binds: Vec<BindOp> = spec
        .mounts
        .iter()
        .map(|m| BindOp {
            source: m.source.clone(),
            target: m.destination.clone(),
            recursive: true,
            readonly: match (m.readonly, m.recursive_readonly) {
                (_, true) => ReadOnly::Recursive,
                (true, false) => ReadOnly::Mount,
                (false, false) => ReadOnly::No,
            },
            propagation: Some(m.propagation),
            optional: false,
        })
        .collect();
    let etc = [
        (&spec.hostname_file, "/etc/hostname"),
        (&spec.hosts_file, "/etc/hosts"),
        (&spec.resolv_file, "/etc/resolv.conf"),
    ];
    for (file, dest) in etc {
        let Some(file) = file else { continue };
        if spec.mounts.iter().any(|m| clean(&m.destination) == clean(dest)) {
            continue;
        }
        let readonly = if spec.readonly_rootfs { ReadOnly::Mount } else { ReadOnly::No };
        binds.push(BindOp { readonly, ..bind(file.clone(), dest.to_owned()) });
    }
    binds.sort_by_key(|b| clean(&b.target).components().count());
    binds
}

/// `path` made relative with `.` dropped and `..` applied lexically (clamped).
pub(crate) fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
        }
    }
    out
}

fn fs(source: &str, fstype: &str, target: &str, flags: MsFlags, data: Option<String>) -> MountOp {
    MountOp::Mount(FsMount {
        source: source.to_owned(),
        fstype: fstype.to_owned(),
        target: target.to_owned(),
        flags,
        data,
    })
}

fn bind(source: PathBuf, target: String) -> BindOp {
    BindOp { source, target, recursive: false, readonly: ReadOnly::No, propagation: None, optional: false }
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, DeviceSpec, MountSpec};
    use super::*;

    fn spec() -> RootfsSpec {
        let mut spec = RootfsSpec::new("/run/crius/c1/rootfs");
        spec.mounts = vec![
            MountSpec { source: "/var/data".into(), destination: "/data/sub".into(), ..Default::default() },
            MountSpec { source: "/var/cfg".into(), destination: "/data".into(), readonly: true, ..Default::default() },
        ];
        spec.devices = vec![DeviceSpec {
            host_path: "/dev/fuse".into(),
            container_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        spec.hosts_file = Some("/run/crius/pod/hosts".into());
        spec
    }

    fn pos(ops: &[MountOp], pred: impl Fn(&MountOp) -> bool) -> usize {
        ops.iter().position(pred).expect("op present")
    }

    fn target_is(op: &MountOp, path: &str) -> bool {
        match op {
            MountOp::Mount(m) => m.target == path,
            MountOp::Bind(b) => b.target == path,
            MountOp::Mask(p) | MountOp::ReadonlyPath(p) => p == path,
            MountOp::Symlink { link, .. } => link == path,
            _ => false,
        }
    }

    fn bind_of<'a>(ops: &'a [MountOp], path: &str) -> &'a BindOp {
        ops.iter()
            .find_map(|op| match op {
                MountOp::Bind(b) if b.target == path => Some(b),
                _ => None,
            })
            .expect("bind present")
    }

    #[test]
    fn default_plan_order() {
        let ops = plan(&spec());
        assert_eq!(ops[0], MountOp::RootPropagation(Propagation::Private));
        assert_eq!(ops[1], MountOp::BindRootfs);
        assert_eq!(ops.last(), Some(&MountOp::PivotRoot));
        let proc = pos(&ops, |op| target_is(op, "/proc"));
        let dev = pos(&ops, |op| target_is(op, "/dev"));
        let null = pos(&ops, |op| target_is(op, "/dev/null"));
        let pts = pos(&ops, |op| target_is(op, "/dev/pts"));
        let ptmx = pos(&ops, |op| target_is(op, "/dev/ptmx"));
        let sys = pos(&ops, |op| *op == MountOp::Sysfs { readonly: true });
        let cgroup = pos(&ops, |op| target_is(op, "/sys/fs/cgroup"));
        let data = pos(&ops, |op| target_is(op, "/data"));
        let sub = pos(&ops, |op| target_is(op, "/data/sub"));
        let hosts = pos(&ops, |op| target_is(op, "/etc/hosts"));
        let fuse = pos(&ops, |op| target_is(op, "/dev/fuse"));
        let kcore = pos(&ops, |op| *op == MountOp::Mask("/proc/kcore".into()));
        let procsys = pos(&ops, |op| *op == MountOp::ReadonlyPath("/proc/sys".into()));
        assert!(proc < dev && dev < null && null < pts && pts < sys && sys < cgroup);
        assert!(ptmx < ops.len());
        assert!(cgroup < data && data < sub, "parents before children");
        assert!(cgroup < hosts && dev < fuse && sub < fuse);
        assert!(proc < kcore && fuse < kcore && kcore < procsys);
        assert!(!ops.contains(&MountOp::ReadonlyRootfs));
        assert!(!ops.contains(&MountOp::HostDevices));
        for path in DEFAULT_MASKED_PATHS {
            assert!(ops.contains(&MountOp::Mask((*path).into())), "{path}");
        }
        for path in DEFAULT_READONLY_PATHS {
            assert!(ops.contains(&MountOp::ReadonlyPath((*path).into())), "{path}");
        }
        assert_eq!(bind_of(&ops, "/sys/fs/cgroup").readonly, ReadOnly::Recursive);
        assert_eq!(bind_of(&ops, "/data").readonly, ReadOnly::Mount);
        assert!(bind_of(&ops, "/data").recursive);
        assert_eq!(bind_of(&ops, "/data/sub").readonly, ReadOnly::No);
        assert_eq!(bind_of(&ops, "/etc/hosts").readonly, ReadOnly::No);
        assert!(bind_of(&ops, "/dev/null").optional && !bind_of(&ops, "/dev/fuse").optional);
        let MountOp::Mount(shm) = &ops[pos(&ops, |op| target_is(op, "/dev/shm"))] else { panic!("shm is a tmpfs") };
        assert_eq!(shm.fstype, "tmpfs");
    }

    #[test]
    fn privileged_plan() {
        let mut spec = spec();
        spec.privileged = true;
        let ops = plan(&spec);
        assert!(ops.contains(&MountOp::Sysfs { readonly: false }));
        assert!(ops.contains(&MountOp::HostDevices));
        assert!(!ops.iter().any(|op| matches!(op, MountOp::Mask(_) | MountOp::ReadonlyPath(_))));
        assert_eq!(bind_of(&ops, "/sys/fs/cgroup").readonly, ReadOnly::No);
        let null = pos(&ops, |op| target_is(op, "/dev/null"));
        let host = pos(&ops, |op| *op == MountOp::HostDevices);
        let data = pos(&ops, |op| target_is(op, "/data"));
        assert!(null < host && host < data);
    }

    #[test]
    fn readonly_rootfs_is_last_before_pivot() {
        let mut spec = spec();
        spec.readonly_rootfs = true;
        spec.hostname_file = Some("/run/crius/pod/hostname".into());
        let ops = plan(&spec);
        assert_eq!(ops[ops.len() - 2], MountOp::ReadonlyRootfs);
        assert_eq!(ops[ops.len() - 1], MountOp::PivotRoot);
        assert_eq!(bind_of(&ops, "/etc/hosts").readonly, ReadOnly::Mount);
        assert_eq!(bind_of(&ops, "/etc/hostname").readonly, ReadOnly::Mount);
    }

    #[test]
    fn shm_bind_and_propagation() {
        let mut spec = spec();
        spec.shm = Some("/run/crius/pod/shm".into());
        spec.mounts[0].propagation = Propagation::RSlave;
        spec.mounts.push(MountSpec {
            source: "/var/x".into(),
            destination: "/x".into(),
            readonly: true,
            recursive_readonly: true,
            ..Default::default()
        });
        let ops = plan(&spec);
        assert_eq!(ops[0], MountOp::RootPropagation(Propagation::RSlave));
        assert_eq!(bind_of(&ops, "/dev/shm").source, PathBuf::from("/run/crius/pod/shm"));
        assert_eq!(bind_of(&ops, "/data/sub").propagation, Some(Propagation::RSlave));
        assert_eq!(bind_of(&ops, "/x").readonly, ReadOnly::Recursive);
        spec.mounts[1].propagation = Propagation::RShared;
        assert_eq!(plan(&spec)[0], MountOp::RootPropagation(Propagation::RShared));
    }

    #[test]
    fn cri_mount_replaces_pod_etc_file() {
        let mut spec = spec();
        spec.mounts.push(MountSpec {
            source: "/var/my-hosts".into(),
            destination: "/etc/./hosts".into(),
            ..Default::default()
        });
        let ops = plan(&spec);
        let hosts: Vec<_> =
            ops.iter().filter(|op| matches!(op, MountOp::Bind(b) if clean(&b.target) == clean("/etc/hosts"))).collect();
        assert_eq!(hosts.len(), 1);
        assert!(matches!(hosts[0], MountOp::Bind(b) if b.source == Path::new("/var/my-hosts")));
    }

    #[test]
    fn clean_is_lexical_and_clamped() {
        assert_eq!(clean("/a/./b/../c"), PathBuf::from("a/c"));
        assert_eq!(clean("/../../x"), PathBuf::from("x"));
        assert_eq!(clean("/"), PathBuf::new());
    }
}
