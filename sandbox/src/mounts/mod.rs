//! Everything that happens inside a container's new mount namespace.
//!
//! The caller (the container child, right after `unshare(CLONE_NEWNS)` or a
//! clone with it) hands [`setup_rootfs`] a [`RootfsSpec`]: plain data the agent
//! translated from CRI. [`plan`] turns the spec into an ordered list of
//! [`MountOp`]s without touching the system, and the executor applies them:
//!
//! 1. `/` gets the root propagation (private by default) recursively, so
//!    nothing mounted here propagates back to the host; the mount holding the
//!    rootfs is made private and the rootfs is bound onto itself.
//! 2. `/proc`, `/dev` (a tmpfs with bind-mounted host device nodes, symlinks,
//!    `devpts`, `shm`, `mqueue`), `/sys` and a read-only `/sys/fs/cgroup`.
//! 3. The CRI mounts and the pod's `/etc/hostname`, `/etc/hosts`,
//!    `/etc/resolv.conf`, parents before children; then the devices.
//! 4. Masked and read-only paths, the read-only rootfs, and `pivot_root`.
//!
//! **Hostile images.** Every container path is resolved inside the rootfs by
//! [`resolve_in_root`] (symlinks are followed as if the rootfs were `/`, `..`
//! stops at the root). The result is then opened component by component from
//! a descriptor of the rootfs with `openat2(RESOLVE_NO_SYMLINKS)`, missing
//! components are created with `mkdirat`/`openat`, and the mount targets the
//! opened descriptor through `/proc/thread-self/fd/N`. A symlink swapped in
//! after the resolution makes the set-up fail; it can never redirect a mount
//! or a `mkdir` outside the rootfs. Host sources are canonicalized on the host.
//!
//! **Recursive read-only** would be `mount_setattr(AT_RECURSIVE,
//! MOUNT_ATTR_RDONLY)`, which nix does not wrap (and a raw syscall needs
//! `unsafe`). Instead every mount at or under the target, found in
//! `/proc/thread-self/mountinfo`, is remounted `MS_REMOUNT|MS_BIND|MS_RDONLY`
//! keeping its `nosuid`/`nodev`/`noexec` flags.
//!
//! This module must not mount the image (the caller mounts the overlay), set up
//! cgroups, seccomp or capabilities, nor touch the host's mount table. Needs
//! Linux 5.6+ (`openat2`).

mod exec;
mod mountinfo;
pub mod overlay;
mod plan;
mod resolve;

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

pub use exec::{setup_rootfs, validate};
pub use plan::{BindOp, FsMount, MountOp, ReadOnly, plan};
pub use resolve::{MAX_SYMLINK_HOPS, resolve_in_root};

/// Paths hidden from unprivileged containers (containerd's default list).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in unprivileged containers (containerd's default list).
pub const DEFAULT_READONLY_PATHS: &[&str] =
    &["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Size of the `/dev` tmpfs and of a fresh `/dev/shm`.
pub const DEV_TMPFS_SIZE: &str = "65536k";

/// How mount and unmount events propagate between a mount and its peers.
///
/// Ordered from the most to the least isolated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`: nothing propagates (CRI `PROPAGATION_PRIVATE`).
    #[default]
    Private,
    /// `rslave`: host mounts propagate in, nothing goes out
    /// (CRI `PROPAGATION_HOST_TO_CONTAINER`).
    RSlave,
    /// `rshared`: both ways (CRI `PROPAGATION_BIDIRECTIONAL`).
    RShared,
}

impl Propagation {
    /// The recursive `mount(2)` flags that set this propagation.
    pub fn flags(self) -> MsFlags {
        MsFlags::MS_REC
            | match self {
                Self::Private => MsFlags::MS_PRIVATE,
                Self::RSlave => MsFlags::MS_SLAVE,
                Self::RShared => MsFlags::MS_SHARED,
            }
    }
}

/// One CRI mount: a host path bound into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host path (symlinks are resolved on the host).
    pub source: PathBuf,
    /// Path inside the container, resolved inside the rootfs.
    pub destination: String,
    /// Remount the bind read-only.
    pub readonly: bool,
    /// Make every submount read-only too (implies `readonly`).
    pub recursive_readonly: bool,
    /// Propagation of the bind; anything but private also raises the root
    /// propagation (as containerd does).
    pub propagation: Propagation,
    /// Ignored: SELinux labelling is not done here.
    pub selinux_relabel: bool,
}

/// One device mapping: a host device node bound into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Host device node.
    pub host_path: PathBuf,
    /// Path inside the container.
    pub container_path: String,
    /// cgroup permissions (`rwm`); enforced by the device cgroup, not here.
    pub permissions: String,
}

/// Everything the mount namespace of one container needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The container's root: an overlay the caller mounted, or a directory.
    pub rootfs: PathBuf,
    /// Remount the rootfs read-only after all mounts.
    pub readonly_rootfs: bool,
    /// CRI mounts.
    pub mounts: Vec<MountSpec>,
    /// Device mappings.
    pub devices: Vec<DeviceSpec>,
    /// Paths to hide (ignored when privileged).
    pub masked_paths: Vec<String>,
    /// Paths to make read-only (ignored when privileged).
    pub readonly_paths: Vec<String>,
    /// The pod's shared `/dev/shm` on the host; `None` mounts a fresh tmpfs.
    pub shm: Option<PathBuf>,
    /// Pod file bound at `/etc/hostname`.
    pub hostname_file: Option<PathBuf>,
    /// Pod file bound at `/etc/hosts`.
    pub hosts_file: Option<PathBuf>,
    /// Pod file bound at `/etc/resolv.conf`.
    pub resolv_file: Option<PathBuf>,
    /// Propagation of `/` in the new namespace; raised to the strongest
    /// propagation any mount asks for.
    pub root_propagation: Propagation,
    /// `/sys` and `/sys/fs/cgroup` writable, no masked or read-only paths,
    /// every host device.
    pub privileged: bool,
}

impl RootfsSpec {
    /// A spec for `rootfs` with the default masked and read-only paths and
    /// nothing else.
    pub fn new(rootfs: impl Into<PathBuf>) -> Self {
        Self {
            rootfs: rootfs.into(),
            readonly_rootfs: false,
            mounts: Vec::new(),
            devices: Vec::new(),
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            shm: None,
            hostname_file: None,
            hosts_file: None,
            resolv_file: None,
            root_propagation: Propagation::Private,
            privileged: false,
        }
    }
}

/// Errors of the mount namespace set-up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount(2)` of a filesystem or a bind failed.
    #[error("mount {src} on {target} (type {fstype}, flags {flags:?})")]
    Mount {
        /// Source (device name or host path).
        src: String,
        /// Target, as a host path.
        target: PathBuf,
        /// Filesystem type, `bind` for binds.
        fstype: String,
        /// Flags passed.
        flags: MsFlags,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Read-only remount failed.
    #[error("remount {target} (flags {flags:?})")]
    Remount {
        /// Target, as a host path.
        target: PathBuf,
        /// Flags passed.
        flags: MsFlags,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Changing the propagation of a mount failed.
    #[error("set propagation of {target} (flags {flags:?})")]
    Propagation {
        /// Target, as a host path.
        target: PathBuf,
        /// Flags passed.
        flags: MsFlags,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The host source of a mount or device is missing or unusable.
    #[error("source {host_path} of mount {destination}")]
    Source {
        /// Host path.
        host_path: PathBuf,
        /// Container path it was meant for.
        destination: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A destination that cannot be mounted on.
    #[error("invalid mount destination {destination:?}: {reason}")]
    InvalidDestination {
        /// Container path.
        destination: String,
        /// Why.
        reason: &'static str,
    },
    /// Reading the image while resolving a container path failed.
    #[error("resolve {path} in {root}")]
    Resolve {
        /// The rootfs.
        root: PathBuf,
        /// Container path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// More than [`MAX_SYMLINK_HOPS`] symlinks while resolving a path.
    #[error("too many levels of symbolic links resolving {path} in {root}")]
    SymlinkLoop {
        /// The rootfs.
        root: PathBuf,
        /// Container path.
        path: String,
    },
    /// Opening a path inside the rootfs failed (a symlink appearing after
    /// resolution ends here with `ELOOP`).
    #[error("open {path}")]
    Open {
        /// Host path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Creating a mount point, file or symlink inside the rootfs failed.
    #[error("create {path}")]
    Create {
        /// Host path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Reading host state (mountinfo, `/dev`, the rootfs path) failed.
    #[error("read {path}")]
    Read {
        /// Host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A step of `pivot_root` failed.
    #[error("pivot_root into {rootfs}: {step}")]
    PivotRoot {
        /// The rootfs.
        rootfs: PathBuf,
        /// Which step.
        step: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}
