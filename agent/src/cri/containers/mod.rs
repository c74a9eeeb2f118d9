//! Container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers, ReopenContainerLog.
//!
//! The CRI request becomes a backend-neutral `ContainerRequest` (the image's
//! layer directories, the container's writable layer, mounts, the process),
//! which the pod's backend turns into a container its own way.

mod record;
mod status;
mod stop;

use std::sync::Arc;
use std::time::Duration;

use cri_api::v1::{
    CreateContainerRequest, CreateContainerResponse, RemoveContainerRequest, RemoveContainerResponse,
    StartContainerRequest, StartContainerResponse,
};
use crius_images::digest::Digest;
use crius_sandbox::backend::{Backend, BackendError, ContainerHandle, RootfsLayers, START_ERROR_EXIT_CODE};

pub use self::record::{ContainerDetails, backend_of, details, mark_unknown, refresh};
use self::record::{ProcessUser, StoredResources, container_cgroup, log_path, to_json, update};
pub use self::status::{container_status, list_containers};
pub use self::stop::{stop, stop_container};
use super::AgentState;
use super::container_spec::{self, ImageDefaults, SpecInputs};
use super::pods::{new_id, now_ns};
use crate::error::AgentError;
use crate::image_index;
use crate::store::{ContainerRecord, ContainerState, ImageRecord, PodRecord, PodState};

/// How long StartContainer waits for a container that could not start to
/// be reported exited.
const START_ERROR_WAIT: Duration = Duration::from_secs(5);

/// Creates a container, ready for StartContainer.
pub fn create_container(
    state: &AgentState,
    request: CreateContainerRequest,
) -> Result<CreateContainerResponse, AgentError> {
    let config = request.config.unwrap_or_default();
    let metadata = config.metadata.clone().unwrap_or_default();
    if metadata.name.is_empty() {
        return Err(AgentError::InvalidArgument { field: "config.metadata.name", reason: "must not be empty".into() });
    }
    let pod = super::lookup::pod(state, &request.pod_sandbox_id)?;
    // Held shared: StopPodSandbox and RemovePodSandbox wait for this create.
    state.locks.shared(&pod.id, || {
        let pod = super::lookup::pod(state, &pod.id)?;
        if pod.state != PodState::Ready {
            return Err(AgentError::InvalidArgument {
                field: "pod_sandbox_id",
                reason: format!("pod sandbox {} is not ready", pod.id),
            });
        }
        create_in_pod(state, &pod, &config)
    })
}

/// CreateContainer, once the pod is known to be ready: every check on the
/// request comes before anything is made, and the record (with the
/// backend's plan of what will be made) before the first thing is.
fn create_in_pod(
    state: &AgentState,
    pod: &PodRecord,
    config: &cri_api::v1::ContainerConfig,
) -> Result<CreateContainerResponse, AgentError> {
    let metadata = config.metadata.clone().unwrap_or_default();
    let pod_details = super::pods::details(pod)?;
    let pod_handle = pod_details
        .handle
        .clone()
        .ok_or_else(|| AgentError::Runtime(format!("pod sandbox {} has no runtime handle", pod.id)))?;
    let backend = Arc::clone(state.backends.get(&pod.runtime_handler)?);
    let image_ref = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let image = image_index::find(&state.store, &image_ref)?
        .ok_or_else(|| AgentError::NotFound { kind: "image", id: image_ref.clone() })?;
    let image_parts = ImageParts::read(state, &image)?;
    let log_path = log_path(&pod_details.log_directory, &config.log_path)?;
    container_spec::check_mounts(config)?;
    if let Some(resources) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        super::resources::validate(resources, "config.linux.resources")?;
    }
    let pod_cgroup = pod_details
        .cgroup
        .clone()
        .ok_or_else(|| AgentError::Runtime(format!("pod sandbox {} has no cgroup to put the container in", pod.id)))?;
    let id = new_id()?;
    tracing::Span::current().record("container_id", id.as_str());
    let writable = state.images.snapshots().locate(&id).map_err(|e| AgentError::Runtime(crate::error::chain(&e)))?;
    let request = container_spec::build(
        config,
        SpecInputs {
            id: &id,
            rootfs: RootfsLayers {
                layers: state.images.layer_dirs(&image_parts.chain_ids),
                upper: writable.upper,
                work: writable.work,
            },
            image: &image_parts.defaults,
            hostname: &pod_details.hostname,
            pod_modes: pod_details.namespace_modes,
            cgroup: Some(container_cgroup(state, &pod_cgroup, &id)),
            log_path: (!log_path.is_empty()).then(|| log_path.clone().into()),
        },
    )?;
    let mut handle = backend.plan_container(&pod_handle, &request)?;
    let details = ContainerDetails {
        handler: pod.runtime_handler.clone(),
        handle: Some(handle.clone()),
        log_path,
        mounts: config.mounts.iter().map(Into::into).collect(),
        tty: config.tty,
        stdin: config.stdin,
        resources: config.linux.as_ref().and_then(|l| l.resources.as_ref()).map(StoredResources::from),
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
        problem: String::new(),
    };
    state.store.put(&record)?;
    let created = state
        .images
        .snapshots()
        .prepare(&id)
        .map_err(|e| AgentError::Runtime(crate::error::chain(&e)))
        .and_then(|_| Ok(backend.create_container(&pod_handle, &mut handle, &request)?));
    match created {
        Ok(created) => {
            let user = &created.user;
            let details = ContainerDetails {
                handle: Some(handle),
                user: Some(ProcessUser { uid: user.uid, gid: user.gid, groups: user.additional_gids.clone() }),
                ..details
            };
            record.config = to_json(&details)?;
            record.state = ContainerState::Created;
            state.store.put(&record)?;
            tracing::info!(container_id = %id, pod_id = %pod.id, name = %record.name, "container created");
            Ok(CreateContainerResponse { container_id: id })
        }
        Err(e) => {
            if let Err(cleanup) = teardown(state, &record) {
                tracing::error!(container_id = %id, error = %crate::error::chain(&cleanup), "cleanup after a failed CreateContainer failed");
                mark_unknown(state, &record, &cleanup);
            }
            Err(e)
        }
    }
}

/// What a container needs of its image, read (and checked) before anything
/// is made: a layer id or config that cannot be read is an error, never a
/// rootfs with fewer layers or a container without the image's defaults.
struct ImageParts {
    chain_ids: Vec<Digest>,
    defaults: ImageDefaults,
}

impl ImageParts {
    fn read(state: &AgentState, image: &ImageRecord) -> Result<Self, AgentError> {
        let broken =
            |what: String| AgentError::Runtime(format!("image {} is damaged: {what}; pull it again", image.id));
        let chain_ids = image
            .layers
            .iter()
            .map(|layer| layer.parse::<Digest>().map_err(|e| broken(format!("layer id {layer:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let config_id = image.id.parse::<Digest>().map_err(|e| broken(format!("image id: {e}")))?;
        let config = state.images.config_json(&config_id).map_err(|e| broken(crate::error::chain(&e)))?;
        let defaults = ImageDefaults::from_config_json(&config).map_err(|e| broken(format!("config: {e}")))?;
        Ok(Self { chain_ids, defaults })
    }
}

/// Removes whatever exists of a container: what its backend made, its
/// writable layer, its record.
fn teardown(state: &AgentState, record: &ContainerRecord) -> Result<(), AgentError> {
    let details = details(record)?;
    if let Some(handle) = &details.handle {
        state.backends.get(&details.handler)?.remove_container(handle)?;
    }
    state.images.snapshots().remove(&record.id).map_err(|e| AgentError::Runtime(crate::error::chain(&e)))?;
    state.store.delete::<ContainerRecord>(&record.id)?;
    Ok(())
}

/// Tears the container down; when that fails, the record stays, `Unknown`
/// with why, for the next RemoveContainer to retry.
fn teardown_or_mark(state: &AgentState, record: &ContainerRecord) -> Result<(), AgentError> {
    teardown(state, record).inspect_err(|e| {
        mark_unknown(state, record, e);
    })
}

/// Lets a created container's process run. A process that cannot be started
/// (its program does not exist) fails the RPC with why and leaves the
/// container EXITED with code 128 and reason `StartError`, as containerd does.
pub fn start_container(
    state: &AgentState,
    request: StartContainerRequest,
) -> Result<StartContainerResponse, AgentError> {
    let record = super::lookup::container(state, &request.container_id)?;
    state.locks.exclusive(&record.id, || {
        let record = refresh(state, super::lookup::container(state, &record.id)?)?;
        if record.state != ContainerState::Created {
            return Err(AgentError::InvalidArgument {
                field: "container_id",
                reason: format!("container {} is not in the created state", record.id),
            });
        }
        let (backend, handle, _) = backend_of(state, &record)?;
        let started_at = match backend.start_container(&handle) {
            Ok(started_at) => started_at,
            Err(BackendError::StartFailed(why)) => {
                return Err(start_failed(state, &record, (backend.as_ref(), &handle), why));
            }
            Err(e) => return Err(e.into()),
        };
        update(state, &record.id, |r| {
            if r.state == ContainerState::Created {
                r.state = ContainerState::Running;
            }
            r.started_at_ns = started_at;
            Ok(())
        })?;
        tracing::info!(container_id = %record.id, "container started");
        Ok(StartContainerResponse {})
    })
}

/// Records a start that failed: the monitor reports the exit (code 128,
/// the reason as init error); if it does not in time, the record says so
/// itself.
fn start_failed(
    state: &AgentState,
    record: &ContainerRecord,
    (backend, handle): (&dyn Backend, &ContainerHandle),
    why: String,
) -> AgentError {
    let _ = stop::wait_exited(backend, handle, START_ERROR_WAIT);
    let refreshed = refresh(state, record.clone());
    if !matches!(refreshed, Ok(ref r) if r.state == ContainerState::Exited) {
        let _ = update(state, &record.id, |r| {
            let mut details = details(r)?;
            details.reason = "StartError".into();
            details.message.clone_from(&why);
            r.state = ContainerState::Exited;
            r.exit_code = START_ERROR_EXIT_CODE;
            r.finished_at_ns = now_ns();
            r.config = to_json(&details)?;
            Ok(())
        });
    }
    tracing::warn!(container_id = %record.id, error = %why, "container could not start");
    AgentError::Runtime(format!("start container {}: {why}", record.id))
}

/// Removes a container (killing it first); removing an unknown one is fine.
pub fn remove_container(
    state: &AgentState,
    request: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, AgentError> {
    let Some(record) = super::lookup::container_if_any(state, &request.container_id)? else {
        return Ok(RemoveContainerResponse {});
    };
    state.locks.exclusive(&record.id, || {
        let Some(record) = state.store.get::<ContainerRecord>(&record.id)? else { return Ok::<(), AgentError>(()) };
        teardown_or_mark(state, &record)
    })?;
    tracing::info!(container_id = %record.id, "container removed");
    Ok(RemoveContainerResponse {})
}

/// Makes the monitor reopen the container's log file (after kubelet rotated it).
pub fn reopen_container_log(
    state: &AgentState,
    request: cri_api::v1::ReopenContainerLogRequest,
) -> Result<cri_api::v1::ReopenContainerLogResponse, AgentError> {
    let (backend, handle, _) = running(state, &request.container_id)?;
    backend.reopen_log(&handle)?;
    Ok(cri_api::v1::ReopenContainerLogResponse {})
}

/// A running container's backend, handle and details (for exec, attach
/// and log reopening).
pub fn running(
    state: &AgentState,
    id: &str,
) -> Result<(Arc<dyn Backend>, ContainerHandle, ContainerDetails), AgentError> {
    let record = refresh(state, super::lookup::container(state, id)?)?;
    if record.state != ContainerState::Running {
        return Err(AgentError::InvalidArgument {
            field: "container_id",
            reason: format!("container {} is not running", record.id),
        });
    }
    backend_of(state, &record)
}

/// Records the resources a container was updated to.
pub fn record_resources(
    state: &AgentState,
    id: &str,
    cri: &cri_api::v1::LinuxContainerResources,
) -> Result<(), AgentError> {
    update(state, id, |r| {
        let mut details = details(r)?;
        details.resources = Some(StoredResources::from(cri));
        r.config = to_json(&details)?;
        Ok(())
    })?;
    Ok(())
}

/// Every container of a pod.
pub fn containers_of(state: &AgentState, pod_id: &str) -> Result<Vec<ContainerRecord>, AgentError> {
    Ok(state.store.list::<ContainerRecord>()?.into_iter().filter(|c| c.pod_id == pod_id).collect())
}

/// Removes every container of a pod (RemovePodSandbox). Each is tried; the
/// first failure is returned once all were.
pub fn remove_all(state: &AgentState, pod_id: &str) -> Result<(), AgentError> {
    let mut first_error = None;
    for record in containers_of(state, pod_id)? {
        if let Err(e) = state.locks.exclusive(&record.id, || teardown_or_mark(state, &record)) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// At start: rolls back containers whose creation a crash interrupted and
/// removes those whose pod is gone. Each is tried; one that cannot be
/// cleaned up is left `Unknown` with why. Returns how many failed.
pub fn recover(state: &AgentState, pods: &[PodRecord]) -> Result<usize, AgentError> {
    let mut failed = 0;
    for record in state.store.list::<ContainerRecord>()? {
        let orphan = !pods.iter().any(|p| p.id == record.pod_id);
        if record.state != ContainerState::Creating && !orphan {
            continue;
        }
        let what = if orphan { "whose pod sandbox is gone" } else { "whose creation was interrupted" };
        tracing::info!(container_id = %record.id, "removing a container {what}");
        if teardown_or_mark(state, &record).is_err() {
            failed += 1;
        }
    }
    Ok(failed)
}
