//! Finding pods and containers by full id or by a unique id prefix (as
//! crictl users and kubelet abbreviate them), for every RPC that names one.

use super::AgentState;
use crate::error::AgentError;
use crate::store::{ContainerRecord, PodRecord, Record};

/// The pod `id` names.
pub fn pod(state: &AgentState, id: &str) -> Result<PodRecord, AgentError> {
    pod_if_any(state, id)?.ok_or_else(|| AgentError::NotFound { kind: "pod sandbox", id: id.to_owned() })
}

/// The pod `id` names, or `None` (for RPCs where a missing pod is no error).
pub fn pod_if_any(state: &AgentState, id: &str) -> Result<Option<PodRecord>, AgentError> {
    by_id_or_prefix(state, "pod_sandbox_id", id)
}

/// The container `id` names.
pub fn container(state: &AgentState, id: &str) -> Result<ContainerRecord, AgentError> {
    container_if_any(state, id)?.ok_or_else(|| AgentError::NotFound { kind: "container", id: id.to_owned() })
}

/// The container `id` names, or `None` (for RPCs where a missing container
/// is no error). A store that cannot be read is an error, never `None`.
pub fn container_if_any(state: &AgentState, id: &str) -> Result<Option<ContainerRecord>, AgentError> {
    by_id_or_prefix(state, "container_id", id)
}

fn by_id_or_prefix<R: Record>(state: &AgentState, field: &'static str, id: &str) -> Result<Option<R>, AgentError> {
    if id.is_empty() {
        return Err(AgentError::InvalidArgument { field, reason: "empty id".into() });
    }
    Ok(state.store.get_by_id_or_prefix::<R>(id)?)
}
