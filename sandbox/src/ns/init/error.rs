//! Why `init` failed: one variant per step, each naming what it worked on.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::caps::CapsError;
use crate::mounts::MountError;
use crate::seccomp::SeccompError;

/// A failure of the container `init` process, before or at `execve`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `<bundle>/config.json` could not be read.
    #[error("read container spec {path}")]
    ReadSpec {
        /// The spec file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `<bundle>/config.json` is not a valid [`crate::ns::spec::ContainerSpec`].
    #[error("parse container spec {path}")]
    ParseSpec {
        /// The spec file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field of the spec cannot be used.
    #[error("invalid container spec: {field}: {reason}")]
    InvalidSpec {
        /// The field (`process.args`, `process.rlimits[1]`, …).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The readiness descriptor named by `CRIUS_INIT_READY_FD` is unusable,
    /// or writing to it failed.
    #[error("readiness descriptor {value:?}")]
    Ready {
        /// The variable's value.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Marking inherited descriptors close-on-exec failed.
    #[error("mark inherited descriptors close-on-exec")]
    Cloexec {
        /// The error from `close_range`.
        #[source]
        source: io::Error,
    },
    /// The start FIFO could not be opened, is not a FIFO, or waiting on it failed.
    #[error("start fifo {path}")]
    StartFifo {
        /// The FIFO.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Opening or joining a namespace failed.
    #[error("join {kind} namespace {path}")]
    Setns {
        /// `net`, `ipc` or `uts`.
        kind: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `unshare(CLONE_NEWNS)` failed.
    #[error("unshare the mount namespace")]
    Unshare {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `sethostname` failed.
    #[error("set hostname {hostname:?}")]
    Hostname {
        /// The hostname.
        hostname: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A sysctl is not allowed, or writing it failed.
    #[error("sysctl {key}: {reason}")]
    Sysctl {
        /// The key as given (`net.ipv4.ip_forward`).
        key: String,
        /// Why.
        reason: String,
    },
    /// Setting up the mount namespace and the root failed.
    #[error("set up the root filesystem")]
    Rootfs {
        /// The mount error.
        #[source]
        source: MountError,
    },
    /// `setrlimit` failed.
    #[error("set {name} to {soft}/{hard}")]
    Rlimit {
        /// The limit's name as given.
        name: String,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Reading or writing `/proc/self/oom_score_adj` failed.
    #[error("set oom_score_adj to {value}")]
    OomScoreAdj {
        /// The value written.
        value: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Setting the AppArmor profile for `execve` failed.
    #[error("set AppArmor profile {profile}")]
    AppArmor {
        /// The profile.
        profile: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating or entering the working directory failed.
    #[error("working directory {path}")]
    Cwd {
        /// The directory, inside the container.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A step of changing the uid, gids or supplementary groups failed.
    #[error("{step}")]
    Identity {
        /// The call (`setresuid(1000)`).
        step: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Resolving or applying the capability sets failed.
    #[error("capabilities")]
    Caps {
        /// The capability error.
        #[source]
        source: CapsError,
    },
    /// Compiling the seccomp profile failed.
    #[error("seccomp")]
    Seccomp {
        /// The seccomp error.
        #[source]
        source: SeccompError,
    },
    /// Setting `no_new_privs` or installing the seccomp filter failed.
    #[error("{step}")]
    Confine {
        /// What failed (`install seccomp filter`, `set no_new_privs`).
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `args[0]` has no `/` and is in no directory of the container's `PATH`.
    #[error("exec {name}: executable file not found in PATH {path}")]
    NotInPath {
        /// `args[0]`.
        name: String,
        /// The `PATH` searched.
        path: String,
    },
    /// `execve` (or the check before it) failed. The message carries the
    /// errno's text (`exec /bin/nope: No such file or directory`); callers
    /// map `ENOENT` to exit code 127 and the rest to 126, as shells do.
    #[error("exec {}: {}", path.display(), errno.desc())]
    Exec {
        /// The program.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

impl InitError {
    /// The error and its sources, joined by `": "`: the line to print.
    pub fn report(&self) -> String {
        crate::error_report(self)
    }
}
