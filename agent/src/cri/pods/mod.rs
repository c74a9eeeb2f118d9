//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox.
//!
//! A pod is recorded as `Creating` before anything is made, so that a crash
//! halfway leaves a record the next start can clean up; every step of
//! RunPodSandbox is undone in reverse order when a later one fails.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use cri_api::v1::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, NamespaceMode, NamespaceOption,
    PodIp, PodSandbox, PodSandboxConfig, PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState,
    PodSandboxStatus, PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest,
    RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest,
    StopPodSandboxResponse,
};
use crius_network::cni::{CniDns, CniPod};
use crius_network::firewall::PortMapping;
use crius_sandbox::backend::{Backend, DnsSpec, PodHandle, PodNamespaces, PodRequest};
use crius_sandbox::cgroups::{CgroupManager, systemd};
use serde::{Deserialize, Serialize};

mod recovery;

pub use self::recovery::recover;
use super::AgentState;
use crate::config::CgroupDriver;
use crate::error::AgentError;
use crate::store::{PodRecord, PodState};

/// What a pod record's `config` holds: the parts of the request crius needs
/// later, and the backend's handle on the pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodDetails {
    /// Requested hostname.
    pub hostname: String,
    /// kubelet's log directory for the pod's containers.
    pub log_directory: String,
    /// CRI NamespaceMode values: network, pid, ipc.
    pub namespace_modes: [i32; 3],
    /// The pod cgroup, relative to the hierarchy roots.
    pub cgroup: Option<String>,
    /// The backend's handle (recorded before anything is made).
    pub handle: Option<PodHandle>,
    /// The pod's network, when it has its own.
    #[serde(default)]
    pub network: Option<PodNetworkDetails>,
}

/// A pod's place on the pod network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodNetworkDetails {
    /// Its addresses, primary first.
    pub ips: Vec<std::net::IpAddr>,
    /// Its hostPorts.
    pub ports: Vec<PortMapping>,
    /// Whether the pod is connected now (false once stopped).
    pub attached: bool,
}

/// Creates a pod sandbox, or returns the one kubelet already created with the
/// same metadata (a retry after a timeout) while it is ready. A pod with the
/// same metadata that is no longer ready is an error: kubelet makes a new
/// attempt for a pod whose sandbox stopped.
pub fn run_pod_sandbox(state: &AgentState, request: RunPodSandboxRequest) -> Result<RunPodSandboxResponse, AgentError> {
    let config = request.config.unwrap_or_default();
    let metadata = validate_metadata(config.metadata.as_ref())?;
    let backend = state.backends.get(&request.runtime_handler)?;
    if let Some(why) = backend.unavailable() {
        return Err(AgentError::Runtime(format!(
            "runtime handler {:?} cannot run pods on this node: {why}",
            request.runtime_handler
        )));
    }
    let plan = PodPlan::check(state, backend.as_ref(), &config)?;
    let key = format!("pod {}/{}/{}/{}", metadata.namespace, metadata.name, metadata.uid, metadata.attempt);
    state.locks.exclusive(&key, || {
        if let Some(existing) = find_by_metadata(state, metadata)? {
            match existing.state {
                PodState::Ready => {
                    tracing::info!(pod_id = %existing.id, "RunPodSandbox retried: returning the existing sandbox");
                    return Ok(RunPodSandboxResponse { pod_sandbox_id: existing.id });
                }
                PodState::NotReady => {
                    return Err(AgentError::AlreadyExists(format!(
                        "pod sandbox {}/{} (uid {}, attempt {}) exists as {} and is not ready: remove it, or run a new attempt",
                        metadata.namespace, metadata.name, metadata.uid, metadata.attempt, existing.id
                    )));
                }
                // A half-made pod (a crash during creation): clean it and start over.
                PodState::Creating => teardown_or_mark(state, &existing)?,
            }
        }
        create(state, (&request.runtime_handler, backend.as_ref()), &config, metadata, &plan)
    })
}

/// What RunPodSandbox will make, checked before anything is.
struct PodPlan {
    modes: [i32; 3],
    spec_namespaces: PodNamespaces,
    sysctls: BTreeMap<String, String>,
    ports: Vec<PortMapping>,
    limits: Option<cri_api::v1::LinuxContainerResources>,
    /// The pod cgroup's parent and leaf, relative to the hierarchy roots;
    /// the leaf is completed with the pod id.
    cgroup_parent: String,
}

impl PodPlan {
    fn check(state: &AgentState, backend: &dyn Backend, config: &PodSandboxConfig) -> Result<Self, AgentError> {
        state.cgroups()?;
        if !config.log_directory.is_empty() {
            check_absolute("config.log_directory", &config.log_directory)?;
        }
        let modes = namespace_modes(config);
        let own = |mode: i32| mode != NamespaceMode::Node as i32;
        let shares_the_node = !(own(modes[0]) && own(modes[1]) && own(modes[2]));
        if shares_the_node && !backend.features().host_namespaces {
            return Err(AgentError::InvalidArgument {
                field: "config.linux.security_context.namespace_options",
                reason: format!(
                    "the {} runtime cannot share the node's network, PID or IPC namespace",
                    backend.kind().name()
                ),
            });
        }
        let spec_namespaces = PodNamespaces {
            net: own(modes[0]),
            ipc: own(modes[2]),
            uts: own(modes[0]),
            pid: modes[1] == NamespaceMode::Pod as i32,
        };
        let sysctls: BTreeMap<String, String> =
            config.linux.as_ref().map(|l| l.sysctls.clone().into_iter().collect()).unwrap_or_default();
        let ports = crate::network::host_port_mappings(&config.port_mappings)?;
        let linux = config.linux.as_ref();
        let limits = super::resources::pod_resources(
            linux.and_then(|l| l.resources.as_ref()),
            linux.and_then(|l| l.overhead.as_ref()),
        );
        if let Some(limits) = &limits {
            super::resources::validate(limits, "config.linux.resources")?;
        }
        let parent = linux.map(|l| l.cgroup_parent.trim_matches('/').to_owned()).unwrap_or_default();
        // Checked now with a placeholder id; computed again with the real one.
        pod_cgroup_location(state.config.runtime.cgroup_driver, &parent, "0")?;
        Ok(Self { modes, spec_namespaces, sysctls, ports, limits, cgroup_parent: parent })
    }

    /// The pod cgroup's path relative to the hierarchy roots.
    fn cgroup_path(&self, state: &AgentState, id: &str) -> Result<(String, String), AgentError> {
        pod_cgroup_location(state.config.runtime.cgroup_driver, &self.cgroup_parent, id)
    }
}

/// Records the pod as `Creating` (with where its cgroup goes), then makes
/// it; every step is undone when a later one fails.
fn create(
    state: &AgentState,
    (handler, backend): (&str, &dyn Backend),
    config: &PodSandboxConfig,
    metadata: &PodSandboxMetadata,
    plan: &PodPlan,
) -> Result<RunPodSandboxResponse, AgentError> {
    let id = new_id()?;
    tracing::Span::current().record("pod_id", id.as_str());
    let (cgroup_parent, cgroup_leaf) = plan.cgroup_path(state, &id)?;
    let dns = config.dns_config.clone().unwrap_or_default();
    let pod_request = PodRequest {
        id: id.clone(),
        hostname: config.hostname.clone(),
        dns: DnsSpec { servers: dns.servers, searches: dns.searches, options: dns.options },
        namespaces: plan.spec_namespaces,
        sysctls: plan.sysctls.clone(),
        cgroup: Some(format!("{cgroup_parent}/{cgroup_leaf}")),
    };
    let mut details = PodDetails {
        hostname: config.hostname.clone(),
        log_directory: config.log_directory.clone(),
        namespace_modes: plan.modes,
        cgroup: pod_request.cgroup.clone(),
        handle: Some(backend.plan_pod(&pod_request)?),
        network: None,
    };
    let mut record = PodRecord {
        id: id.clone(),
        name: metadata.name.clone(),
        namespace: metadata.namespace.clone(),
        uid: metadata.uid.clone(),
        attempt: metadata.attempt,
        runtime_handler: handler.to_owned(),
        state: PodState::Creating,
        created_at_ns: now_ns(),
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        config: details_json(&details)?,
        problem: String::new(),
    };
    state.store.put(&record)?;
    match build_pod(state, backend, (config, &pod_request), plan, &mut details, (&cgroup_parent, &cgroup_leaf)) {
        Ok(()) => {
            record.config = details_json(&details)?;
            record.state = PodState::Ready;
            state.store.put(&record)?;
            tracing::info!(pod_id = %id, pod = %format!("{}/{}", record.namespace, record.name), "pod sandbox ready");
            Ok(RunPodSandboxResponse { pod_sandbox_id: id })
        }
        Err(e) => {
            record.config = details_json(&details)?;
            if let Err(cleanup) = teardown_or_mark(state, &record) {
                tracing::error!(pod_id = %id, error = %crate::error::chain(&cleanup), "cleanup after a failed RunPodSandbox failed");
            }
            Err(e)
        }
    }
}

/// Makes the pod's cgroup, then has the backend make the pod, connecting
/// its network namespace to the pod network on the way; fills `details` as
/// each exists (so that a failure tears down exactly what was made).
fn build_pod(
    state: &AgentState,
    backend: &dyn Backend,
    (config, request): (&PodSandboxConfig, &PodRequest),
    plan: &PodPlan,
    details: &mut PodDetails,
    (cgroup_parent, cgroup_leaf): (&str, &str),
) -> Result<(), AgentError> {
    let manager = CgroupManager::new(state.cgroups()?.clone(), cgroup_parent).map_err(runtime_err)?;
    match &plan.limits {
        // The same limits kubelet gives the pod cgroup it made, or crius's own.
        Some(limits) => {
            super::resources::create_cgroup(state, &manager.full_path(cgroup_leaf).map_err(runtime_err)?, Some(limits))?
        }
        None => {
            manager.create(cgroup_leaf).map_err(runtime_err)?;
        }
    }
    let handle = details.handle.clone().ok_or_else(|| AgentError::Runtime("the pod was not planned".into()))?;
    let mut attached = None;
    let mut network_error = None;
    let mut hook = |netns: &Path| {
        match attach_network(state, &request.id, config, netns, &plan.ports) {
            Ok(ips) => attached = Some(ips),
            Err(e) => {
                let failure = crius_sandbox::backend::BackendError::BadState(crate::error::chain(&e));
                network_error = Some(e);
                return Err(failure);
            }
        }
        Ok(())
    };
    let result = backend.run_pod(&handle, request, &mut hook);
    if let Some(ips) = attached {
        // Recorded even when a later step failed, so teardown detaches it.
        details.network = Some(PodNetworkDetails { ips, ports: plan.ports.clone(), attached: true });
    }
    match (result, network_error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(network)) => Err(network),
        (Err(e), None) => Err(e.into()),
    }
}

/// Connects the pod's network namespace to the pod network.
fn attach_network(
    state: &AgentState,
    id: &str,
    config: &PodSandboxConfig,
    netns: &Path,
    ports: &[PortMapping],
) -> Result<Vec<std::net::IpAddr>, AgentError> {
    let metadata = config.metadata.clone().unwrap_or_default();
    let dns = config.dns_config.clone().unwrap_or_default();
    let pod = CniPod { id, name: &metadata.name, namespace: &metadata.namespace, uid: &metadata.uid };
    let dns = CniDns { servers: dns.servers, searches: dns.searches, options: dns.options };
    state.network.attach(&pod, netns, ports, &dns)
}

/// Where a pod's cgroup goes: (parent, leaf), relative to the hierarchy
/// roots. With the systemd driver kubelet names the pod's slice, which is
/// expanded into its directory path.
fn pod_cgroup_location(driver: CgroupDriver, parent: &str, id: &str) -> Result<(String, String), AgentError> {
    let path = match driver {
        CgroupDriver::Systemd if parent.is_empty() => format!("crius.slice/crius-pod{id}.slice"),
        CgroupDriver::Systemd => systemd::slice_path(parent)
            .map_err(|reason| AgentError::InvalidArgument { field: "config.linux.cgroup_parent", reason })?,
        CgroupDriver::Cgroupfs => parent.to_owned(),
    };
    Ok(match path.rsplit_once('/') {
        _ if path.is_empty() => (crius_sandbox::cgroups::DEFAULT_PARENT.to_owned(), CgroupManager::pod_rel(id)),
        Some((dir, leaf)) => (dir.to_owned(), leaf.to_owned()),
        None => (path.clone(), CgroupManager::pod_rel(id)),
    })
}

/// Removes whatever exists of a pod: containers, network, namespaces,
/// files, cgroup, record. A record whose details cannot be read is not
/// torn down as if it had nothing: that is an error.
fn teardown(state: &AgentState, record: &PodRecord) -> Result<(), AgentError> {
    let details = details(record)?;
    super::containers::remove_all(state, &record.id)?;
    state.network.detach(&record.id)?;
    if let Some(handle) = &details.handle {
        state.backends.get(&record.runtime_handler)?.remove_pod(handle)?;
    }
    if let Some(cgroup) = details.cgroup {
        let cgroup = crius_sandbox::cgroups::Cgroup::open(state.cgroups()?, &cgroup).map_err(runtime_err)?;
        cgroup.delete().map_err(runtime_err)?;
    }
    state.store.delete::<PodRecord>(&record.id)?;
    Ok(())
}

/// Tears the pod down; when that fails, the record stays (NOTREADY) with
/// why, for the next RemovePodSandbox to retry.
pub(super) fn teardown_or_mark(state: &AgentState, record: &PodRecord) -> Result<(), AgentError> {
    teardown(state, record).inspect_err(|e| {
        let problem = crate::error::chain(e);
        tracing::warn!(pod_id = %record.id, problem = %problem, "pod sandbox cleanup failed");
        let _ = state.store.update::<PodRecord, AgentError>(&record.id, |r| {
            r.state = PodState::NotReady;
            r.problem.clone_from(&problem);
            Ok(())
        });
    })
}

/// Stops the pod (its containers, when there are any) and marks it NOTREADY.
/// Stopping an unknown or stopped pod is not an error.
pub fn stop_pod_sandbox(
    state: &AgentState,
    request: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, AgentError> {
    let Some(record) = super::lookup::pod_if_any(state, &request.pod_sandbox_id)? else {
        return Ok(StopPodSandboxResponse {});
    };
    state.locks.exclusive(&record.id, || {
        let Some(record) = state.store.get::<PodRecord>(&record.id)? else { return Ok::<(), AgentError>(()) };
        let cancel = super::cancel::Cancel::never();
        for container in super::containers::containers_of(state, &record.id)? {
            super::containers::stop(state, container, std::time::Duration::ZERO, &cancel)?;
        }
        if let Some(handle) = &details(&record)?.handle {
            state.backends.get(&record.runtime_handler)?.stop_pod(handle)?;
        }
        if details(&record)?.network.is_some_and(|n| n.attached) {
            state.network.detach_soon(&record.id)?;
        }
        let was_ready = record.state != PodState::NotReady;
        state.store.update::<PodRecord, AgentError>(&record.id, |r| {
            let mut pod_details = details(r)?;
            if let Some(network) = pod_details.network.as_mut() {
                network.attached = false;
            }
            r.config = details_json(&pod_details)?;
            r.state = PodState::NotReady;
            Ok(())
        })?;
        if was_ready {
            tracing::info!(pod_id = %record.id, "pod sandbox stopped");
        }
        Ok(())
    })?;
    Ok(StopPodSandboxResponse {})
}

/// Removes the pod and everything it holds; removing an unknown pod is fine.
pub fn remove_pod_sandbox(
    state: &AgentState,
    request: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, AgentError> {
    let Some(record) = super::lookup::pod_if_any(state, &request.pod_sandbox_id)? else {
        return Ok(RemovePodSandboxResponse {});
    };
    state.locks.exclusive(&record.id, || {
        let Some(record) = state.store.get::<PodRecord>(&record.id)? else { return Ok::<(), AgentError>(()) };
        teardown_or_mark(state, &record)
    })?;
    tracing::info!(pod_id = %record.id, "pod sandbox removed");
    Ok(RemovePodSandboxResponse {})
}

/// Reports one pod.
pub fn pod_sandbox_status(
    state: &AgentState,
    request: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, AgentError> {
    let record = super::lookup::pod(state, &request.pod_sandbox_id)?;
    // An unreadable record is still reported (NOTREADY), without addresses.
    let pod_details = details(&record).ok();
    let modes = pod_details.as_ref().map_or([0; 3], |d| d.namespace_modes);
    let mut ips = pod_details.and_then(|d| d.network).map(|n| n.ips).unwrap_or_default().into_iter();
    let ip = ips.next().map(|ip| ip.to_string()).unwrap_or_default();
    let additional_ips = ips.map(|ip| PodIp { ip: ip.to_string() }).collect();
    let status = PodSandboxStatus {
        id: record.id.clone(),
        metadata: Some(metadata(&record)),
        state: cri_state(record.state) as i32,
        created_at: record.created_at_ns,
        network: Some(PodSandboxNetworkStatus { ip, additional_ips }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network: modes[0],
                    pid: modes[1],
                    ipc: modes[2],
                    ..NamespaceOption::default()
                }),
            }),
        }),
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        runtime_handler: record.runtime_handler.clone(),
    };
    let mut info = HashMap::new();
    if request.verbose {
        info.insert("info".to_owned(), record.config.to_string());
    }
    Ok(PodSandboxStatusResponse { status: Some(status), info, containers_statuses: Vec::new(), timestamp: now_ns() })
}

/// Lists pods, filtered by id (prefix), state and labels.
pub fn list_pod_sandbox(
    state: &AgentState,
    request: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, AgentError> {
    let filter = request.filter.unwrap_or_default();
    let items = state
        .store
        .list::<PodRecord>()?
        .into_iter()
        .filter(|p| p.state != PodState::Creating)
        .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
        .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == cri_state(p.state) as i32))
        .filter(|p| labels_match(&p.labels, &filter.label_selector))
        .map(|p| PodSandbox {
            id: p.id.clone(),
            metadata: Some(metadata(&p)),
            state: cri_state(p.state) as i32,
            created_at: p.created_at_ns,
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
            runtime_handler: p.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}

fn labels_match(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn find_by_metadata(state: &AgentState, metadata: &PodSandboxMetadata) -> Result<Option<PodRecord>, AgentError> {
    Ok(state.store.list::<PodRecord>()?.into_iter().find(|p| {
        p.name == metadata.name
            && p.namespace == metadata.namespace
            && p.uid == metadata.uid
            && p.attempt == metadata.attempt
    }))
}

fn validate_metadata(metadata: Option<&PodSandboxMetadata>) -> Result<&PodSandboxMetadata, AgentError> {
    let metadata =
        metadata.ok_or(AgentError::InvalidArgument { field: "config.metadata", reason: "missing".into() })?;
    for (field, value) in [
        ("config.metadata.name", &metadata.name),
        ("config.metadata.namespace", &metadata.namespace),
        ("config.metadata.uid", &metadata.uid),
    ] {
        if value.is_empty() {
            return Err(AgentError::InvalidArgument { field, reason: "must not be empty".into() });
        }
    }
    Ok(metadata)
}

fn namespace_modes(config: &PodSandboxConfig) -> [i32; 3] {
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    [options.network, options.pid, options.ipc]
}

fn metadata(record: &PodRecord) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: record.name.clone(),
        uid: record.uid.clone(),
        namespace: record.namespace.clone(),
        attempt: record.attempt,
    }
}

fn cri_state(state: PodState) -> PodSandboxState {
    match state {
        PodState::Ready => PodSandboxState::SandboxReady,
        PodState::NotReady | PodState::Creating => PodSandboxState::SandboxNotready,
    }
}

/// The details a pod record keeps; an error when they cannot be read.
pub fn details(record: &PodRecord) -> Result<PodDetails, AgentError> {
    serde_json::from_value(record.config.clone()).map_err(|source| AgentError::Unreadable {
        kind: "pod sandbox",
        id: record.id.clone(),
        source,
    })
}

/// A path from the request that must be absolute and without `..`.
pub fn check_absolute(field: &'static str, path: &str) -> Result<(), AgentError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(AgentError::InvalidArgument {
            field,
            reason: format!("{path:?} must be an absolute path without \"..\""),
        });
    }
    Ok(())
}

fn details_json(details: &PodDetails) -> Result<serde_json::Value, AgentError> {
    serde_json::to_value(details).map_err(|e| AgentError::Runtime(format!("encode pod details: {e}")))
}

/// A runtime failure, with its whole error chain.
pub fn runtime_err(error: impl std::error::Error) -> AgentError {
    AgentError::Runtime(crate::error::chain(&error))
}

/// 64 random hex characters, like containerd's ids.
pub fn new_id() -> Result<String, AgentError> {
    let mut bytes = [0u8; 32];
    let mut urandom = std::fs::File::open(Path::new("/dev/urandom"))
        .map_err(|e| AgentError::Runtime(format!("open /dev/urandom: {e}")))?;
    std::io::Read::read_exact(&mut urandom, &mut bytes)
        .map_err(|e| AgentError::Runtime(format!("read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn pod_cgroups_follow_the_driver() {
        let at = |driver, parent: &str| pod_cgroup_location(driver, parent, "abc").expect("valid");
        assert_eq!(at(CgroupDriver::Cgroupfs, ""), ("crius".into(), "pod-abc".into()));
        assert_eq!(at(CgroupDriver::Cgroupfs, "kubepods/burstable/pod1"), ("kubepods/burstable".into(), "pod1".into()));
        assert_eq!(
            at(CgroupDriver::Systemd, "kubepods-burstable-pod1.slice"),
            ("kubepods.slice/kubepods-burstable.slice".into(), "kubepods-burstable-pod1.slice".into())
        );
        assert_eq!(at(CgroupDriver::Systemd, ""), ("crius.slice".into(), "crius-podabc.slice".into()));
        let err = pod_cgroup_location(CgroupDriver::Systemd, "kubepods/burstable", "abc").expect_err("not a slice");
        assert!(matches!(err, AgentError::InvalidArgument { field: "config.linux.cgroup_parent", .. }), "{err}");
    }
}
