//! Cgroup manager for pods and containers, written by hand with plain file
//! writes: cgroup v1 (including hybrid hosts, which are treated as v1) and
//! cgroup v2.
//!
//! Layout: every cgroup crius makes lives under one configured parent
//! (default [`DEFAULT_PARENT`]), as `<parent>/pod-<pod id>` for a pod and
//! `<parent>/pod-<pod id>/<container id>` for a container. This module never
//! removes or writes limits outside that parent; the one exception is v2
//! `cgroup.subtree_control` of the ancestors, where controllers that are not
//! yet enabled are switched on (nothing else is changed there).
//!
//! - [`detect`] / [`detect_host`] find the [`CgroupMode`] from mountinfo.
//! - [`Cgroup`] is the handle: create, apply [`Resources`], add processes,
//!   read [`CgroupStats`], kill everything, delete.
//! - [`CgroupManager`] binds a mode to the configured parent.

mod detect;
mod fsutil;
mod handle;
mod plan;
mod resources;
mod stats;
pub mod systemd;

#[cfg(test)]
mod tests_v1;
#[cfg(test)]
mod tests_v2;

use std::io;
use std::path::PathBuf;

pub use detect::{CGROUP_MOUNT_ROOT, CgroupMode, detect, detect_host};
pub use handle::Cgroup;
pub use resources::{Resources, shares_to_weight};
pub use stats::CgroupStats;

/// The default parent under which crius makes its cgroups.
pub const DEFAULT_PARENT: &str = "crius";

/// Everything that can go wrong while managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read.
    #[error("read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel (or the file system) refused a value.
    #[error("write {value:?} to {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The value that was written.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be made.
    #[error("create cgroup directory {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be removed (still busy after the retries,
    /// or another error).
    #[error("remove cgroup directory {}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup file held something unexpected.
    #[error("parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A cgroup path given by the caller is not a safe relative path.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A resource value is out of range or cannot be expressed on this
    /// cgroup version.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidResource {
        /// The field of [`Resources`].
        field: String,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A limit was asked for but its controller is not available.
    #[error("controller {controller} is not available for {}", path.display())]
    ControllerMissing {
        /// The controller, for example `memory`.
        controller: String,
        /// The cgroup ([`Cgroup::path`]).
        path: PathBuf,
    },
    /// No cgroup v1 controller hierarchy and no cgroup2 mount were found.
    #[error("no usable cgroup mount in mountinfo")]
    NotMounted,
    /// A process of the cgroup could not be signalled.
    #[error("send {signal} to pid {pid}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// The cause.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Binds a [`CgroupMode`] to the configured parent: every cgroup it hands out
/// lives below `<parent>`.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    mode: CgroupMode,
    parent: String,
}

impl CgroupManager {
    /// A manager for cgroups below `parent` (a relative cgroup path such as
    /// [`DEFAULT_PARENT`] or `kubepods/crius`).
    pub fn new(mode: CgroupMode, parent: &str) -> Result<Self, CgroupError> {
        validate_rel_path(parent)?;
        Ok(CgroupManager { mode, parent: parent.to_owned() })
    }

    /// The cgroup mode this manager works with.
    pub fn mode(&self) -> &CgroupMode {
        &self.mode
    }

    /// The configured parent.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The path, relative to the hierarchy root, of `rel` below the parent.
    pub fn full_path(&self, rel: &str) -> Result<String, CgroupError> {
        validate_rel_path(rel)?;
        Ok(format!("{}/{rel}", self.parent))
    }

    /// The pod cgroup path below the parent: `pod-<pod_id>`.
    pub fn pod_rel(pod_id: &str) -> String {
        format!("pod-{pod_id}")
    }

    /// The container cgroup path below the parent: `pod-<pod_id>/<container_id>`.
    pub fn container_rel(pod_id: &str, container_id: &str) -> String {
        format!("pod-{pod_id}/{container_id}")
    }

    /// Creates (or reuses) `<parent>/<rel>`.
    pub fn create(&self, rel: &str) -> Result<Cgroup, CgroupError> {
        Cgroup::create(&self.mode, &self.full_path(rel)?)
    }

    /// A handle for an existing `<parent>/<rel>` (nothing is created; for
    /// recovery after a restart).
    pub fn open(&self, rel: &str) -> Result<Cgroup, CgroupError> {
        Cgroup::open(&self.mode, &self.full_path(rel)?)
    }
}

/// Checks that `path` is a safe relative cgroup path: not empty, not
/// absolute, no empty, `.` or `..` components, no NUL and no newline.
pub fn validate_rel_path(path: &str) -> Result<(), CgroupError> {
    let refuse = |reason| Err(CgroupError::InvalidPath { path: path.to_owned(), reason });
    if path.is_empty() {
        return refuse("empty");
    }
    if path.starts_with('/') {
        return refuse("absolute");
    }
    if path.contains(['\0', '\n']) {
        return refuse("contains a NUL or newline");
    }
    for component in path.split('/') {
        match component {
            "" => return refuse("empty component"),
            "." | ".." => return refuse("dot component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths_are_validated() {
        for bad in ["../x", "/abs", "a//b", "", "a/", "a/./b", "a/..", "x\n"] {
            assert!(
                matches!(validate_rel_path(bad), Err(CgroupError::InvalidPath { .. })),
                "{bad:?} should be refused"
            );
        }
        for good in ["crius", "crius/pod-1/c1", "a.b/c..d"] {
            validate_rel_path(good).expect("validate rel path");
        }
    }

    #[test]
    fn manager_places_cgroups_below_parent() {
        let mode = CgroupMode::V2 { root: PathBuf::from("/nonexistent") };
        assert!(CgroupManager::new(mode.clone(), "../up").is_err());
        let m = CgroupManager::new(mode, DEFAULT_PARENT).expect("new");
        assert_eq!(m.full_path(&CgroupManager::container_rel("p1", "c1")).expect("full path"), "crius/pod-p1/c1");
        assert!(m.full_path("../escape").is_err());
        assert!(m.create("/abs").is_err());
        assert_eq!(m.open("pod-p1").expect("open").rel_path(), "crius/pod-p1");
    }

    #[test]
    fn error_messages_carry_context_without_source_text() {
        let e = CgroupError::Write {
            path: PathBuf::from("/sys/fs/cgroup/memory/x/memory.limit_in_bytes"),
            value: "1".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(e.to_string(), "write \"1\" to /sys/fs/cgroup/memory/x/memory.limit_in_bytes");
    }
}
