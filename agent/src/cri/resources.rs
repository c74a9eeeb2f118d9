//! CRI LinuxContainerResources → cgroup limits, for CreateContainer and
//! UpdateContainerResources; OOM detection for ContainerStatus.

use cri_api::v1::{LinuxContainerResources, UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use crius_sandbox::cgroups::{Cgroup, Resources};

use super::AgentState;
use super::pods::runtime_err;
use crate::error::AgentError;
use crate::store::ContainerState;

/// The cgroup limits CRI asks for (0 or empty fields are left unset).
pub fn cgroup_resources(cri: &LinuxContainerResources) -> Resources {
    Resources {
        cpu_shares: u64::try_from(cri.cpu_shares).unwrap_or(0),
        cpu_quota: cri.cpu_quota,
        cpu_period: u64::try_from(cri.cpu_period).unwrap_or(0),
        cpuset_cpus: cri.cpuset_cpus.clone(),
        cpuset_mems: cri.cpuset_mems.clone(),
        memory_limit_bytes: cri.memory_limit_in_bytes,
        memory_swap_limit_bytes: cri.memory_swap_limit_in_bytes,
        pids_limit: 0,
        hugepage_limits: cri.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
        unified: cri.unified.clone().into_iter().collect(),
    }
}

/// A pod's limits: the sum of its containers' (`resources`, as kubelet
/// sends it) plus the pod overhead. A limit the containers leave unset (0)
/// stays unset; overhead alone limits nothing. `None` without `resources`.
pub fn pod_resources(
    resources: Option<&LinuxContainerResources>,
    overhead: Option<&LinuxContainerResources>,
) -> Option<LinuxContainerResources> {
    let base = resources?;
    let Some(extra) = overhead else { return Some(base.clone()) };
    let plus = |limit: i64, more: i64| if limit > 0 { limit.saturating_add(more.max(0)) } else { limit };
    // Overhead quota in the pod's period.
    let extra_quota = if extra.cpu_quota > 0 && extra.cpu_period > 0 && base.cpu_period > 0 {
        extra.cpu_quota.saturating_mul(base.cpu_period) / extra.cpu_period
    } else {
        extra.cpu_quota
    };
    Some(LinuxContainerResources {
        cpu_quota: plus(base.cpu_quota, extra_quota),
        cpu_shares: base.cpu_shares.saturating_add(extra.cpu_shares.max(0)),
        memory_limit_in_bytes: plus(base.memory_limit_in_bytes, extra.memory_limit_in_bytes),
        ..base.clone()
    })
}

/// Checks CRI resources before anything is made with them.
pub fn validate(cri: &LinuxContainerResources, field: &'static str) -> Result<(), AgentError> {
    cgroup_resources(cri).validate().map_err(|e| AgentError::InvalidArgument { field, reason: crate::error::chain(&e) })
}

/// Creates a cgroup with its limits (before a process joins it).
pub fn create_cgroup(state: &AgentState, path: &str, cri: Option<&LinuxContainerResources>) -> Result<(), AgentError> {
    let cgroup = Cgroup::create(state.cgroups()?, path).map_err(runtime_err)?;
    if let Some(cri) = cri {
        validate(cri, "config.linux.resources")?;
        cgroup.apply(&cgroup_resources(cri)).map_err(runtime_err)?;
    }
    Ok(())
}

/// Changes a container's limits; ContainerStatus reports them from then on.
pub fn update_container_resources(
    state: &AgentState,
    request: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, AgentError> {
    let record = super::lookup::container(state, &request.container_id)?;
    if matches!(record.state, ContainerState::Exited | ContainerState::Unknown) {
        return Err(AgentError::InvalidArgument {
            field: "container_id",
            reason: format!("container {} is not running", record.id),
        });
    }
    let Some(cri) = request.linux.as_ref() else { return Ok(UpdateContainerResourcesResponse {}) };
    validate(cri, "linux")?;
    let (backend, handle, _) = super::containers::backend_of(state, &record)?;
    backend.update_resources(&handle, &cgroup_resources(cri))?;
    super::containers::record_resources(state, &record.id, cri)?;
    tracing::info!(container_id = %record.id, "container resources updated");
    Ok(UpdateContainerResourcesResponse {})
}

#[cfg(test)]
mod pod_tests {
    use super::*;

    #[test]
    fn pod_limits_are_the_containers_plus_overhead() {
        let containers = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            cpu_shares: 2048,
            memory_limit_in_bytes: 512 << 20,
            ..LinuxContainerResources::default()
        };
        let overhead = LinuxContainerResources {
            cpu_period: 50_000,
            cpu_quota: 5_000,
            cpu_shares: 10,
            memory_limit_in_bytes: 64 << 20,
            ..LinuxContainerResources::default()
        };
        let pod = pod_resources(Some(&containers), Some(&overhead)).expect("limits");
        assert_eq!((pod.cpu_period, pod.cpu_quota, pod.cpu_shares), (100_000, 210_000, 2058));
        assert_eq!(pod.memory_limit_in_bytes, 576 << 20);
        let unlimited = LinuxContainerResources { memory_limit_in_bytes: 0, cpu_quota: -1, ..containers.clone() };
        let pod = pod_resources(Some(&unlimited), Some(&overhead)).expect("limits");
        assert_eq!((pod.memory_limit_in_bytes, pod.cpu_quota), (0, -1), "overhead alone limits nothing");
        assert_eq!(pod_resources(None, Some(&overhead)), None);
        assert_eq!(pod_resources(Some(&containers), None), Some(containers));
    }
}

#[cfg(test)]
mod tests {
    use cri_api::v1::HugepageLimit;

    use super::*;

    #[test]
    fn cri_fields_map_to_cgroup_limits() {
        let cri = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 0 }],
            ..LinuxContainerResources::default()
        };
        let resources = cgroup_resources(&cri);
        assert_eq!(resources.cpu_shares, 512);
        assert_eq!(resources.cpu_quota, 50_000);
        assert_eq!(resources.cpu_period, 100_000);
        assert_eq!(resources.memory_limit_bytes, 64 << 20);
        assert_eq!(resources.memory_swap_limit_bytes, 128 << 20);
        assert_eq!(resources.cpuset_cpus, "0");
        assert_eq!(resources.hugepage_limits, [("2MB".to_owned(), 0)]);
        resources.validate().expect("valid");
        let unset = cgroup_resources(&LinuxContainerResources::default());
        assert_eq!(unset, Resources::default());
    }
}
