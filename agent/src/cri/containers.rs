//! Container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers.
//!
//! A container's rootfs is the image's layers under an overlay mounted at
//! `<run_root>/rootfs/<id>`; its bundle (`<run_root>/containers/<id>`) is run
//! by a monitor process that outlives crius (see `sandbox/DESIGN.md`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cri_api::v1::{
    Container, ContainerMetadata, ContainerState as CriState, ContainerStatus, ContainerStatusRequest,
    ContainerStatusResponse, ContainerUser, CreateContainerRequest, CreateContainerResponse, ImageSpec,
    LinuxContainerUser, ListContainersRequest, ListContainersResponse, RemoveContainerRequest, RemoveContainerResponse,
    StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse,
};
use crius_images::digest::Digest;
use crius_images::snapshot::unmount_rootfs;
use crius_sandbox::ns::container::{self as runtime, State};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::AgentState;
use super::container_spec::{self, ImageDefaults, SpecInputs};
use super::pods::{PodDetails, find_pod, new_id, now_ns, runtime_err};
use crate::error::AgentError;
use crate::image_index;
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};

/// How long CreateContainer waits for the container's init to be ready.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a container record's `config` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerDetails {
    bundle: PathBuf,
    rootfs: PathBuf,
    log_path: String,
    cgroup: Option<String>,
    #[serde(default)]
    mounts: Vec<MountRecord>,
    monitor_pid: i32,
    reason: String,
    message: String,
    /// The identity the container's process runs with.
    #[serde(default)]
    user: Option<ProcessUser>,
}

/// uid, gid and every group (primary included) of a container's process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProcessUser {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// A CRI mount as ContainerStatus reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MountRecord {
    container_path: String,
    host_path: String,
    readonly: bool,
    selinux_relabel: bool,
    propagation: i32,
    recursive_read_only: bool,
}

/// Creates a container: rootfs, bundle, monitor and an init that waits for StartContainer.
pub fn create_container(
    state: &AgentState,
    request: CreateContainerRequest,
) -> Result<CreateContainerResponse, AgentError> {
    let config = request.config.unwrap_or_default();
    let metadata = config.metadata.clone().unwrap_or_default();
    if metadata.name.is_empty() {
        return Err(AgentError::InvalidArgument { field: "config.metadata.name", reason: "must not be empty".into() });
    }
    let pod = find_pod(state, &request.pod_sandbox_id)?
        .ok_or_else(|| AgentError::NotFound { kind: "pod sandbox", id: request.pod_sandbox_id.clone() })?;
    if pod.state != PodState::Ready {
        return Err(AgentError::InvalidArgument {
            field: "pod_sandbox_id",
            reason: format!("pod sandbox {} is not ready", pod.id),
        });
    }
    let image_ref = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let image = image_index::find(&state.store, &image_ref)?
        .ok_or_else(|| AgentError::NotFound { kind: "image", id: image_ref.clone() })?;
    let id = new_id()?;
    tracing::Span::current().record("container_id", id.as_str());
    let details = ContainerDetails {
        bundle: state.config.run_root.join("containers").join(&id),
        rootfs: state.config.run_root.join("rootfs").join(&id),
        log_path: log_path(&pod, &config.log_path),
        mounts: config
            .mounts
            .iter()
            .map(|m| MountRecord {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                recursive_read_only: m.recursive_read_only,
            })
            .collect(),
        ..ContainerDetails::default()
    };
    let mut record = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        name: metadata.name.clone(),
        attempt: metadata.attempt,
        image: image_ref,
        image_id: image.id.clone(),
        state: ContainerState::Creating,
        created_at_ns: now_ns(),
        started_at_ns: 0,
        finished_at_ns: 0,
        exit_code: 0,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        image_layers: image.layers.clone(),
        config: to_json(&details)?,
    };
    state.store.put(&record)?;
    let details = ContainerDetails {
        cgroup: pod_cgroup(&pod).map(|pod_cgroup| container_cgroup(state, &pod_cgroup, &id)),
        ..details
    };
    record.config = to_json(&details)?;
    match start_monitor(state, &pod, &image, &config, &details) {
        Ok((monitor_pid, user)) => {
            let details = ContainerDetails { monitor_pid, user: Some(user), ..details };
            record.config = to_json(&details)?;
            record.state = ContainerState::Created;
            state.store.put(&record)?;
            tracing::info!(container_id = %id, pod_id = %pod.id, name = %record.name, "container created");
            Ok(CreateContainerResponse { container_id: id })
        }
        Err(e) => {
            if let Err(cleanup) = teardown(state, &record) {
                tracing::error!(container_id = %id, error = %crate::error::chain(&cleanup), "cleanup after a failed CreateContainer failed");
            }
            Err(e)
        }
    }
}

/// Mounts the rootfs, builds the spec and starts monitor + init.
fn start_monitor(
    state: &AgentState,
    pod: &PodRecord,
    image: &crate::store::ImageRecord,
    config: &cri_api::v1::ContainerConfig,
    details: &ContainerDetails,
) -> Result<(i32, ProcessUser), AgentError> {
    let pod_details: PodDetails = serde_json::from_value(pod.config.clone())
        .map_err(|e| AgentError::Runtime(format!("pod {} record is unreadable: {e}", pod.id)))?;
    let paths =
        pod_details.paths.clone().ok_or_else(|| AgentError::Runtime(format!("pod {} has no namespaces", pod.id)))?;
    let chain_ids: Vec<Digest> = image.layers.iter().filter_map(|l| l.parse().ok()).collect();
    let id = details.bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let overlay = state.images.snapshots().prepare(&id, &state.images.layer_dirs(&chain_ids)).map_err(runtime_err)?;
    std::fs::create_dir_all(&details.rootfs).map_err(|e| AgentError::Runtime(format!("create rootfs dir: {e}")))?;
    overlay.mount(&details.rootfs).map_err(runtime_err)?;
    let image_config =
        image.id.parse::<Digest>().ok().and_then(|d| state.images.config_json(&d).ok()).unwrap_or_default();
    let defaults = ImageDefaults::from_config_json(&image_config);
    let cgroup = details.cgroup.clone();
    let log_path = (!details.log_path.is_empty()).then(|| PathBuf::from(&details.log_path));
    if let Some(dir) = log_path.as_ref().and_then(|p| p.parent()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Runtime(format!("create log directory {}: {e}", dir.display())))?;
    }
    if let Some(path) = &cgroup {
        let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
        super::resources::create_cgroup(state, path, resources)?;
    }
    let spec = container_spec::build(
        config,
        &SpecInputs {
            id: &id,
            rootfs: &details.rootfs,
            image: &defaults,
            pod: &paths,
            hostname: &pod_details.hostname,
            pod_modes: pod_details.namespace_modes,
            cgroup,
            log_path,
        },
    )?;
    let self_exe = std::env::current_exe().map_err(|e| AgentError::Runtime(format!("locate crius binary: {e}")))?;
    let created = runtime::create(&details.bundle, &spec, &self_exe, CREATE_TIMEOUT).map_err(runtime_err)?;
    let user = &spec.process.user;
    let mut groups: Vec<u32> = std::iter::once(user.gid).chain(user.additional_gids.iter().copied()).collect();
    groups.sort_unstable();
    groups.dedup();
    Ok((created.monitor_pid, ProcessUser { uid: user.uid, gid: user.gid, groups }))
}

/// Removes whatever exists of a container: process, bundle, rootfs, snapshot, record.
fn teardown(state: &AgentState, record: &ContainerRecord) -> Result<(), AgentError> {
    let details = details(record);
    if details.bundle.exists() {
        let _ = runtime::kill(&details.bundle, Signal::SIGKILL);
        wait_exited(&details.bundle, Duration::from_secs(10));
        runtime::delete(&details.bundle).map_err(runtime_err)?;
    }
    if details.monitor_pid > 0 {
        runtime::reap(details.monitor_pid);
    }
    if let (Some(mode), Some(path)) = (state.cgroup_mode.as_ref(), details.cgroup.as_ref()) {
        // Whatever the container process left running (its own children) goes too.
        let cgroup = crius_sandbox::cgroups::Cgroup::open(mode, path).map_err(runtime_err)?;
        if cgroup.exists() {
            cgroup.kill_all(Signal::SIGKILL).map_err(runtime_err)?;
            cgroup.delete().map_err(runtime_err)?;
        }
    }
    if !details.rootfs.as_os_str().is_empty() {
        unmount_rootfs(&details.rootfs).map_err(runtime_err)?;
        let _ = std::fs::remove_dir(&details.rootfs);
    }
    state.images.snapshots().remove(&record.id).map_err(runtime_err)?;
    state.store.delete::<ContainerRecord>(&record.id)?;
    Ok(())
}

/// Lets a created container's process run.
pub fn start_container(
    state: &AgentState,
    request: StartContainerRequest,
) -> Result<StartContainerResponse, AgentError> {
    let mut record = find(state, &request.container_id)?;
    if record.state != ContainerState::Created {
        return Err(AgentError::InvalidArgument {
            field: "container_id",
            reason: format!("container {} is not in the created state", record.id),
        });
    }
    let details = details(&record);
    let started_at = runtime::start(&details.bundle).map_err(runtime_err)?;
    record.state = ContainerState::Running;
    record.started_at_ns = started_at;
    state.store.put(&record)?;
    tracing::info!(container_id = %record.id, "container started");
    Ok(StartContainerResponse {})
}

/// Stops a container: SIGTERM, then SIGKILL after `timeout` seconds. Stopping
/// an exited or unknown container is not an error.
pub fn stop_container(state: &AgentState, request: StopContainerRequest) -> Result<StopContainerResponse, AgentError> {
    let Ok(record) = find(state, &request.container_id) else { return Ok(StopContainerResponse {}) };
    stop(state, record, Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0)))?;
    Ok(StopContainerResponse {})
}

/// Stops `record` (used by StopPodSandbox too).
pub fn stop(state: &AgentState, record: ContainerRecord, timeout: Duration) -> Result<(), AgentError> {
    let record = refresh(state, record)?;
    if matches!(record.state, ContainerState::Exited | ContainerState::Unknown) {
        return Ok(());
    }
    let details = details(&record);
    if record.state == ContainerState::Running && !timeout.is_zero() && graceful_stop(&details.bundle, timeout)? {
        refresh(state, record)?;
        return Ok(());
    }
    runtime::kill(&details.bundle, Signal::SIGKILL).map_err(runtime_err)?;
    if !wait_exited(&details.bundle, Duration::from_secs(10)) {
        return Err(AgentError::Runtime(format!("container {} did not exit after SIGKILL", record.id)));
    }
    let record = refresh(state, record)?;
    tracing::info!(container_id = %record.id, exit_code = record.exit_code, "container stopped");
    Ok(())
}

/// Sends SIGTERM and waits up to `timeout` for the exit. A process that is
/// PID 1 of its namespace drops a signal it has no handler for; right after
/// start, a shell may not have exec'd the program that installs one yet. So
/// while the process has no SIGTERM handler the signal is sent again once the
/// handler appears (a process that had one gets exactly one SIGTERM).
fn graceful_stop(bundle: &std::path::Path, timeout: Duration) -> Result<bool, AgentError> {
    let init = runtime::read_pid_file(&bundle.join(crius_sandbox::ns::spec::INIT_PID_FILE)).ok().map(|r| r.pid);
    let handled = || init.is_some_and(catches_sigterm);
    let mut delivered = handled();
    runtime::kill(bundle, Signal::SIGTERM).map_err(runtime_err)?;
    let deadline = Instant::now() + timeout;
    loop {
        if wait_exited(bundle, Duration::from_millis(100).min(timeout)) {
            return Ok(true);
        }
        if !delivered && handled() {
            delivered = true;
            runtime::kill(bundle, Signal::SIGTERM).map_err(runtime_err)?;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Whether `pid` has a handler for SIGTERM (bit 15 of SigCgt).
fn catches_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Removes a container (killing it first); removing an unknown one is fine.
pub fn remove_container(
    state: &AgentState,
    request: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, AgentError> {
    let Ok(record) = find(state, &request.container_id) else { return Ok(RemoveContainerResponse {}) };
    teardown(state, &record)?;
    tracing::info!(container_id = %record.id, "container removed");
    Ok(RemoveContainerResponse {})
}

/// Reports one container.
pub fn container_status(
    state: &AgentState,
    request: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, AgentError> {
    let record = refresh(state, find(state, &request.container_id)?)?;
    let details = details(&record);
    let (cri_state, reason) = cri_state(&record, &details);
    let status = ContainerStatus {
        id: record.id.clone(),
        metadata: Some(ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
        state: cri_state as i32,
        created_at: record.created_at_ns,
        started_at: record.started_at_ns,
        finished_at: record.finished_at_ns,
        exit_code: record.exit_code,
        image: Some(ImageSpec { image: record.image.clone(), ..ImageSpec::default() }),
        image_ref: record.image_id.clone(),
        image_id: record.image_id.clone(),
        reason,
        message: details.message.clone(),
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        log_path: details.log_path.clone(),
        user: details.user.as_ref().map(|user| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: i64::from(user.uid),
                gid: i64::from(user.gid),
                supplemental_groups: user.groups.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        mounts: details
            .mounts
            .iter()
            .map(|m| cri_api::v1::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                recursive_read_only: m.recursive_read_only,
                ..cri_api::v1::Mount::default()
            })
            .collect(),
        ..ContainerStatus::default()
    };
    Ok(ContainerStatusResponse { status: Some(status), info: HashMap::new() })
}

/// Lists containers, filtered by id prefix, pod, state and labels.
pub fn list_containers(
    state: &AgentState,
    request: ListContainersRequest,
) -> Result<ListContainersResponse, AgentError> {
    let filter = request.filter.unwrap_or_default();
    let mut containers = Vec::new();
    for record in state.store.list::<ContainerRecord>()? {
        if record.state == ContainerState::Creating
            || (!filter.id.is_empty() && !record.id.starts_with(&filter.id))
            || (!filter.pod_sandbox_id.is_empty() && !record.pod_id.starts_with(&filter.pod_sandbox_id))
            || !filter.label_selector.iter().all(|(k, v)| record.labels.get(k) == Some(v))
        {
            continue;
        }
        let record = refresh(state, record)?;
        let (cri_state, _) = cri_state(&record, &details(&record));
        if filter.state.as_ref().is_some_and(|s| s.state != cri_state as i32) {
            continue;
        }
        containers.push(Container {
            id: record.id.clone(),
            pod_sandbox_id: record.pod_id.clone(),
            metadata: Some(ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
            image: Some(ImageSpec { image: record.image.clone(), ..ImageSpec::default() }),
            image_ref: record.image_id.clone(),
            image_id: record.image_id.clone(),
            state: cri_state as i32,
            created_at: record.created_at_ns,
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        });
    }
    Ok(ListContainersResponse { containers })
}

/// Makes the monitor reopen the container's log file (after kubelet rotated it).
pub fn reopen_container_log(
    state: &AgentState,
    request: cri_api::v1::ReopenContainerLogRequest,
) -> Result<cri_api::v1::ReopenContainerLogResponse, AgentError> {
    let record = refresh(state, find(state, &request.container_id)?)?;
    if record.state != ContainerState::Running {
        return Err(AgentError::InvalidArgument {
            field: "container_id",
            reason: format!("container {} is not running", record.id),
        });
    }
    runtime::reopen_log(&details(&record).bundle, Duration::from_secs(5)).map_err(runtime_err)?;
    Ok(cri_api::v1::ReopenContainerLogResponse {})
}

/// The bundle of a running container (for exec).
pub fn running_bundle(state: &AgentState, id: &str) -> Result<PathBuf, AgentError> {
    let record = refresh(state, find(state, id)?)?;
    if record.state != ContainerState::Running {
        return Err(AgentError::InvalidArgument {
            field: "container_id",
            reason: format!("container {} is not running", record.id),
        });
    }
    Ok(details(&record).bundle)
}

/// Every container of a pod.
pub fn containers_of(state: &AgentState, pod_id: &str) -> Result<Vec<ContainerRecord>, AgentError> {
    Ok(state.store.list::<ContainerRecord>()?.into_iter().filter(|c| c.pod_id == pod_id).collect())
}

/// Removes every container of a pod (RemovePodSandbox).
pub fn remove_all(state: &AgentState, pod_id: &str) -> Result<(), AgentError> {
    for record in containers_of(state, pod_id)? {
        teardown(state, &record)?;
    }
    Ok(())
}

/// Brings a record up to date with its bundle: a running container whose
/// process exited becomes EXITED with its exit code.
fn refresh(state: &AgentState, mut record: ContainerRecord) -> Result<ContainerRecord, AgentError> {
    if !matches!(record.state, ContainerState::Created | ContainerState::Running) {
        return Ok(record);
    }
    let mut details = details(&record);
    if details.monitor_pid > 0 {
        runtime::reap(details.monitor_pid);
    }
    if let Ok(State::Exited(exit)) = runtime::state(&details.bundle) {
        record.state = ContainerState::Exited;
        record.exit_code = exit.exit_code;
        record.finished_at_ns = if exit.finished_at_ns > 0 { exit.finished_at_ns } else { now_ns() };
        details.reason = if exit.init_error.is_some() {
            "StartError".into()
        } else if exit.exit_code != 0 && super::resources::oom_killed(state, details.cgroup.as_deref()) {
            "OOMKilled".into()
        } else {
            String::new()
        };
        details.message = exit.init_error.unwrap_or_default();
        record.config = to_json(&details)?;
        state.store.put(&record)?;
    }
    Ok(record)
}

fn cri_state(record: &ContainerRecord, details: &ContainerDetails) -> (CriState, String) {
    match record.state {
        ContainerState::Created => (CriState::ContainerCreated, String::new()),
        ContainerState::Running => (CriState::ContainerRunning, String::new()),
        ContainerState::Exited => {
            let reason = if !details.reason.is_empty() {
                details.reason.clone()
            } else if record.exit_code == 0 {
                "Completed".to_owned()
            } else {
                "Error".to_owned()
            };
            (CriState::ContainerExited, reason)
        }
        ContainerState::Creating | ContainerState::Unknown => (CriState::ContainerUnknown, String::new()),
    }
}

/// Polls until the bundle reports an exit (true) or `timeout` passes.
fn wait_exited(bundle: &std::path::Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match runtime::state(bundle) {
            Ok(State::Exited(_)) | Err(_) => return true,
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn find(state: &AgentState, id: &str) -> Result<ContainerRecord, AgentError> {
    if id.is_empty() {
        return Err(AgentError::InvalidArgument { field: "container_id", reason: "empty id".into() });
    }
    state
        .store
        .get_by_id_or_prefix::<ContainerRecord>(id)?
        .ok_or_else(|| AgentError::NotFound { kind: "container", id: id.to_owned() })
}

/// A container's cgroup in its pod's: named by id, or as a scope unit with
/// the systemd driver.
fn container_cgroup(state: &AgentState, pod_cgroup: &str, id: &str) -> String {
    match state.config.runtime.cgroup_driver {
        crate::config::CgroupDriver::Systemd => {
            format!("{pod_cgroup}/{}", crius_sandbox::cgroups::systemd::container_scope(id))
        }
        crate::config::CgroupDriver::Cgroupfs => format!("{pod_cgroup}/{id}"),
    }
}

fn pod_cgroup(pod: &PodRecord) -> Option<String> {
    serde_json::from_value::<PodDetails>(pod.config.clone()).ok().and_then(|d| d.cgroup)
}

fn log_path(pod: &PodRecord, relative: &str) -> String {
    let dir = serde_json::from_value::<PodDetails>(pod.config.clone()).map(|d| d.log_directory).unwrap_or_default();
    if dir.is_empty() || relative.is_empty() {
        String::new()
    } else {
        format!("{}/{}", dir.trim_end_matches('/'), relative)
    }
}

fn details(record: &ContainerRecord) -> ContainerDetails {
    serde_json::from_value(record.config.clone()).unwrap_or_default()
}

fn to_json(details: &ContainerDetails) -> Result<serde_json::Value, AgentError> {
    serde_json::to_value(details).map_err(|e| AgentError::Runtime(format!("encode container details: {e}")))
}
