//! ContainerStatus and ListContainers.

use std::collections::HashMap;

use cri_api::v1::{
    Container, ContainerMetadata, ContainerResources, ContainerState as CriState, ContainerStatus,
    ContainerStatusRequest, ContainerStatusResponse, ContainerUser, ImageSpec, LinuxContainerUser,
    ListContainersRequest, ListContainersResponse,
};

use super::super::AgentState;
use super::record::{ContainerDetails, details, refresh};
use crate::error::AgentError;
use crate::store::{ContainerRecord, ContainerState};

/// Reports one container.
pub fn container_status(
    state: &AgentState,
    request: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, AgentError> {
    let record = refresh(state, super::super::lookup::container(state, &request.container_id)?)?;
    // An unreadable record is still reported: UNKNOWN, with why.
    let details = details(&record).unwrap_or_default();
    let (cri_state, reason) = cri_state(&record, &details);
    let message = if record.problem.is_empty() { details.message.clone() } else { record.problem.clone() };
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
        message,
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
        resources: details
            .resources
            .as_ref()
            .map(|r| ContainerResources { linux: Some(r.into()), ..ContainerResources::default() }),
        mounts: details.mounts.iter().map(Into::into).collect(),
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
        let (cri_state, _) = cri_state(&record, &details(&record).unwrap_or_default());
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

/// The CRI state and reason of a record.
pub fn cri_state(record: &ContainerRecord, details: &ContainerDetails) -> (CriState, String) {
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
        ContainerState::Creating => (CriState::ContainerUnknown, String::new()),
        ContainerState::Unknown => (CriState::ContainerUnknown, "Unknown".to_owned()),
    }
}
