//! What a container record keeps besides its CRI fields, and how the record
//! follows the container: its exit, a failed cleanup, a record part that
//! cannot be read. Every state change is one store transaction.

use std::path::{Component, Path};

use std::sync::Arc;

use cri_api::v1::{HugepageLimit, LinuxContainerResources};
use crius_sandbox::backend::{Backend, ContainerHandle, RunState};
use serde::{Deserialize, Serialize};

use super::super::AgentState;
use super::super::pods::now_ns;
use crate::error::AgentError;
use crate::store::{ContainerRecord, ContainerState};

/// What a container record's `config` holds: CRI facts for status, and
/// the backend's handle on the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerDetails {
    /// The pod's runtime handler (whose backend runs the container).
    #[serde(default)]
    pub handler: String,
    /// The backend's handle (recorded before anything is made).
    #[serde(default)]
    pub handle: Option<ContainerHandle>,
    pub log_path: String,
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    /// Created with a terminal (CRI `tty`).
    #[serde(default)]
    pub tty: bool,
    /// Created with stdin kept open (CRI `stdin`).
    #[serde(default)]
    pub stdin: bool,
    pub reason: String,
    pub message: String,
    /// The identity the container's process runs with.
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The Linux resources it was created with or last updated to.
    #[serde(default)]
    pub resources: Option<StoredResources>,
}

/// uid, gid and every group (primary included) of a container's process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A CRI mount as ContainerStatus reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub selinux_relabel: bool,
    pub propagation: i32,
    pub recursive_read_only: bool,
}

impl From<&cri_api::v1::Mount> for MountRecord {
    fn from(m: &cri_api::v1::Mount) -> Self {
        Self {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            recursive_read_only: m.recursive_read_only,
        }
    }
}

impl From<&MountRecord> for cri_api::v1::Mount {
    fn from(m: &MountRecord) -> Self {
        Self {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            recursive_read_only: m.recursive_read_only,
            ..Self::default()
        }
    }
}

/// CRI `LinuxContainerResources`, as the record keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<(String, u64)>,
    pub unified: std::collections::BTreeMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

impl From<&LinuxContainerResources> for StoredResources {
    fn from(r: &LinuxContainerResources) -> Self {
        Self {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepage_limits: r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
            unified: r.unified.clone().into_iter().collect(),
            memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        }
    }
}

impl From<&StoredResources> for LinuxContainerResources {
    fn from(r: &StoredResources) -> Self {
        Self {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|(page_size, limit)| HugepageLimit { page_size: page_size.clone(), limit: *limit })
                .collect(),
            unified: r.unified.clone().into_iter().collect(),
            memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        }
    }
}

/// The details a record keeps; an error (never empty details) when they
/// cannot be read, so nothing is done as if the container had no bundle,
/// rootfs or cgroup.
pub fn details(record: &ContainerRecord) -> Result<ContainerDetails, AgentError> {
    serde_json::from_value(record.config.clone()).map_err(|source| AgentError::Unreadable {
        kind: "container",
        id: record.id.clone(),
        source,
    })
}

pub fn to_json(details: &ContainerDetails) -> Result<serde_json::Value, AgentError> {
    serde_json::to_value(details).map_err(|e| AgentError::Runtime(format!("encode container details: {e}")))
}

/// Changes the stored record `id` in one transaction; `None` when it is
/// gone (removed meanwhile).
pub fn update(
    state: &AgentState,
    id: &str,
    change: impl FnOnce(&mut ContainerRecord) -> Result<(), AgentError>,
) -> Result<Option<ContainerRecord>, AgentError> {
    state.store.update::<ContainerRecord, AgentError>(id, change)
}

/// Marks the container `Unknown` with why; returns the record as stored.
pub fn mark_unknown(state: &AgentState, record: &ContainerRecord, problem: &AgentError) -> ContainerRecord {
    let problem = crate::error::chain(problem);
    tracing::warn!(container_id = %record.id, problem = %problem, "container state unknown");
    let marked = update(state, &record.id, |r| {
        r.state = ContainerState::Unknown;
        r.problem.clone_from(&problem);
        Ok(())
    });
    match marked {
        Ok(Some(stored)) => stored,
        Ok(None) => record.clone(),
        Err(e) => {
            tracing::error!(container_id = %record.id, error = %crate::error::chain(&e), "could not record the problem");
            ContainerRecord { state: ContainerState::Unknown, problem, ..record.clone() }
        }
    }
}

/// The backend running the container and its handle.
pub fn backend_of(
    state: &AgentState,
    record: &ContainerRecord,
) -> Result<(Arc<dyn Backend>, ContainerHandle, ContainerDetails), AgentError> {
    let details = details(record)?;
    let handle = details
        .handle
        .clone()
        .ok_or_else(|| AgentError::Runtime(format!("container {} was recorded before it was planned", record.id)))?;
    Ok((Arc::clone(state.backends.get(&details.handler)?), handle, details))
}

/// Brings a record up to date with its backend: a created or running
/// container whose process exited becomes EXITED with its exit code and
/// reason; one of which nothing is left (a reboot) exits with code 255 and
/// reason `Unknown`.
pub fn refresh(state: &AgentState, record: ContainerRecord) -> Result<ContainerRecord, AgentError> {
    if !matches!(record.state, ContainerState::Created | ContainerState::Running) {
        return Ok(record);
    }
    let (backend, handle, _) = match backend_of(state, &record) {
        Ok(found) => found,
        Err(e) => return Ok(mark_unknown(state, &record, &e)),
    };
    let (exit_code, finished_at, reason, message) = match backend.container_state(&handle)? {
        RunState::Exited(exit) => {
            let finished = if exit.finished_at_ns > 0 { exit.finished_at_ns } else { now_ns() };
            let reason = if exit.start_error.is_some() {
                "StartError"
            } else if exit.oom_killed {
                "OOMKilled"
            } else {
                ""
            };
            (exit.exit_code, finished, reason, exit.start_error.unwrap_or_default())
        }
        RunState::Gone(why) => (255, now_ns(), "Unknown", why),
        RunState::Creating | RunState::Created | RunState::Running => return Ok(record),
    };
    let updated = update(state, &record.id, |r| {
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Ok(()); // Another RPC recorded the exit first.
        }
        let mut stored = details(r)?;
        stored.reason = reason.to_owned();
        stored.message.clone_from(&message);
        r.state = ContainerState::Exited;
        r.exit_code = exit_code;
        r.finished_at_ns = finished_at;
        r.config = to_json(&stored)?;
        Ok(())
    })?;
    Ok(updated.unwrap_or(record))
}

/// Where the container's CRI log goes: `log_path` under the pod's log
/// directory. The path comes from the request: it must stay below the
/// directory (relative, no `..`), or nothing is created.
pub fn log_path(log_directory: &str, relative: &str) -> Result<String, AgentError> {
    if log_directory.is_empty() || relative.is_empty() {
        return Ok(String::new());
    }
    let path = Path::new(relative);
    if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(AgentError::InvalidArgument {
            field: "config.log_path",
            reason: format!("{relative:?} must be a relative path below the pod's log directory, without \"..\""),
        });
    }
    Ok(Path::new(log_directory).join(path).display().to_string())
}

/// A container's cgroup in its pod's: named by id, or as a scope unit with
/// the systemd driver.
pub fn container_cgroup(state: &AgentState, pod_cgroup: &str, id: &str) -> String {
    match state.config.runtime.cgroup_driver {
        crate::config::CgroupDriver::Systemd => {
            format!("{pod_cgroup}/{}", crius_sandbox::cgroups::systemd::container_scope(id))
        }
        crate::config::CgroupDriver::Cgroupfs => format!("{pod_cgroup}/{id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_below_the_log_directory() {
        assert_eq!(log_path("/var/log/pods/x", "c/0.log").expect("valid"), "/var/log/pods/x/c/0.log");
        assert_eq!(log_path("/var/log/pods/x", "./c.log").expect("valid"), "/var/log/pods/x/./c.log");
        assert_eq!(log_path("", "c.log").expect("no directory"), "");
        assert_eq!(log_path("/var/log/pods/x", "").expect("no log"), "");
        for hostile in ["../../../etc/escaped-log.log", "c/../../x.log", "/etc/passwd", "c/.."] {
            let err = log_path("/var/log/pods/x", hostile).expect_err(hostile);
            assert!(matches!(err, AgentError::InvalidArgument { field: "config.log_path", .. }), "{hostile}: {err}");
        }
    }

    #[test]
    fn resources_round_trip_through_the_record() {
        let cri = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 5,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 0 }],
            unified: [("memory.high".to_owned(), "1000000".to_owned())].into(),
            ..LinuxContainerResources::default()
        };
        let stored = StoredResources::from(&cri);
        let json = serde_json::to_value(&stored).expect("encode");
        let back: StoredResources = serde_json::from_value(json).expect("decode");
        assert_eq!(LinuxContainerResources::from(&back), cri);
    }
}
