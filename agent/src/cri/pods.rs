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
use crius_network::bridge::AttachedPod;
use crius_network::cni::{CniDns, CniPod};
use crius_network::firewall::PortMapping;
use crius_sandbox::cgroups::{CgroupManager, systemd};
use crius_sandbox::ns::pod::{self, DnsSpec, PodNamespaces, PodPaths, PodSpec};
use serde::{Deserialize, Serialize};

use super::AgentState;
use crate::config::CgroupDriver;
use crate::error::AgentError;
use crate::store::{PodRecord, PodState};

/// What a pod record's `config` holds: the parts of the request crius needs
/// later, and where the pod's pieces are.
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
    /// Namespaces and files.
    pub paths: Option<PodPaths>,
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
/// same metadata (a retry after a timeout).
pub fn run_pod_sandbox(state: &AgentState, request: RunPodSandboxRequest) -> Result<RunPodSandboxResponse, AgentError> {
    let config = request.config.unwrap_or_default();
    let metadata = validate_metadata(config.metadata.as_ref())?;
    if !request.runtime_handler.is_empty() {
        return Err(AgentError::InvalidArgument {
            field: "runtime_handler",
            reason: format!(
                "runtime handler {:?} is not configured (crius serves the default handler \"\")",
                request.runtime_handler
            ),
        });
    }
    let _serial = state.pod_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(existing) = find_by_metadata(state, metadata)? {
        if existing.state != PodState::Creating {
            tracing::info!(pod_id = %existing.id, "RunPodSandbox retried: returning the existing sandbox");
            return Ok(RunPodSandboxResponse { pod_sandbox_id: existing.id });
        }
        // A half-made pod (a crash during creation): clean it and start over.
        teardown(state, &existing)?;
    }
    let id = new_id()?;
    tracing::Span::current().record("pod_id", id.as_str());
    let modes = namespace_modes(&config);
    let mut record = PodRecord {
        id: id.clone(),
        name: metadata.name.clone(),
        namespace: metadata.namespace.clone(),
        uid: metadata.uid.clone(),
        attempt: metadata.attempt,
        runtime_handler: request.runtime_handler.clone(),
        state: PodState::Creating,
        created_at_ns: now_ns(),
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        config: details_json(&PodDetails {
            hostname: config.hostname.clone(),
            log_directory: config.log_directory.clone(),
            namespace_modes: modes,
            cgroup: None,
            paths: None,
            network: None,
        })?,
    };
    state.store.put(&record)?;
    match build_pod(state, &id, &config, modes) {
        Ok(details) => {
            record.config = details_json(&details)?;
            record.state = PodState::Ready;
            state.store.put(&record)?;
            tracing::info!(pod_id = %id, pod = %format!("{}/{}", record.namespace, record.name), "pod sandbox ready");
            Ok(RunPodSandboxResponse { pod_sandbox_id: id })
        }
        Err(e) => {
            if let Err(cleanup) = teardown(state, &record) {
                tracing::error!(pod_id = %id, error = %crate::error::chain(&cleanup), "cleanup after a failed RunPodSandbox failed");
            }
            Err(e)
        }
    }
}

/// Makes the pod's namespaces, files and cgroup.
fn build_pod(
    state: &AgentState,
    id: &str,
    config: &PodSandboxConfig,
    modes: [i32; 3],
) -> Result<PodDetails, AgentError> {
    let own = |mode: i32| mode != NamespaceMode::Node as i32;
    let dns = config.dns_config.clone().unwrap_or_default();
    let spec = PodSpec {
        id: id.to_owned(),
        hostname: config.hostname.clone(),
        dns: DnsSpec { servers: dns.servers, searches: dns.searches, options: dns.options },
        namespaces: PodNamespaces {
            net: own(modes[0]),
            ipc: own(modes[2]),
            uts: own(modes[0]),
            pid: modes[1] == NamespaceMode::Pod as i32,
        },
        sysctls: config.linux.as_ref().map(|l| l.sysctls.clone().into_iter().collect()).unwrap_or_default(),
    };
    pod::check_sysctls(&spec.sysctls, spec.namespaces)
        .map_err(|e| AgentError::InvalidArgument { field: "config.linux.sysctls", reason: e.to_string() })?;
    let ports = crate::network::host_port_mappings(&config.port_mappings)?;
    let self_exe = std::env::current_exe().map_err(|e| AgentError::Runtime(format!("locate crius binary: {e}")))?;
    let paths = pod::create_pod(&state.config.run_root, &spec, &self_exe).map_err(runtime_err)?;
    let cgroup = match create_pod_cgroup(state, id, config) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            let _ = pod::destroy_pod(&state.config.run_root, id);
            return Err(e);
        }
    };
    let network = match paths.net.as_deref().filter(|_| spec.namespaces.net) {
        Some(netns) => match attach_network(state, id, config, netns, &ports) {
            Ok(ips) => Some(PodNetworkDetails { ips, ports, attached: true }),
            Err(e) => {
                let _ = pod::destroy_pod(&state.config.run_root, id);
                if let (Some(mode), Some(path)) = (state.cgroup_mode.clone(), &cgroup) {
                    let _ = crius_sandbox::cgroups::Cgroup::open(&mode, path).and_then(|c| c.delete());
                }
                return Err(e);
            }
        },
        None => None,
    };
    Ok(PodDetails {
        hostname: config.hostname.clone(),
        log_directory: config.log_directory.clone(),
        namespace_modes: modes,
        cgroup,
        paths: Some(paths),
        network,
    })
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

/// The pod's cgroup: kubelet's `cgroup_parent` when given, else
/// `crius/pod-<id>` (`crius.slice/crius-pod<id>.slice` with the systemd
/// driver). Returns its path relative to the hierarchy roots.
fn create_pod_cgroup(state: &AgentState, id: &str, config: &PodSandboxConfig) -> Result<Option<String>, AgentError> {
    let Some(mode) = state.cgroup_mode.clone() else { return Ok(None) };
    let parent = config.linux.as_ref().map(|l| l.cgroup_parent.trim_matches('/').to_owned()).unwrap_or_default();
    let (manager_parent, rel) = pod_cgroup_location(state.config.runtime.cgroup_driver, &parent, id)?;
    let manager = CgroupManager::new(mode, &manager_parent).map_err(runtime_err)?;
    let full = manager.full_path(&rel).map_err(runtime_err)?;
    let linux = config.linux.as_ref();
    let limits = super::resources::pod_resources(
        linux.and_then(|l| l.resources.as_ref()),
        linux.and_then(|l| l.overhead.as_ref()),
    );
    match limits {
        // The same limits kubelet gives the pod cgroup it made, or crius's own.
        Some(limits) => super::resources::create_cgroup(state, &full, Some(&limits)).map_err(|e| match e {
            AgentError::InvalidArgument { reason, .. } => {
                AgentError::InvalidArgument { field: "config.linux.resources", reason }
            }
            other => other,
        })?,
        None => {
            manager.create(&rel).map_err(runtime_err)?;
        }
    }
    Ok(Some(full))
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

/// Removes whatever exists of a pod: namespaces, files, cgroup, record.
fn teardown(state: &AgentState, record: &PodRecord) -> Result<(), AgentError> {
    super::containers::remove_all(state, &record.id)?;
    state.network.detach(&record.id)?;
    pod::destroy_pod(&state.config.run_root, &record.id).map_err(runtime_err)?;
    if let (Some(mode), Some(cgroup)) = (state.cgroup_mode.clone(), details(record).and_then(|d| d.cgroup)) {
        let cgroup = crius_sandbox::cgroups::Cgroup::open(&mode, &cgroup).map_err(runtime_err)?;
        cgroup.delete().map_err(runtime_err)?;
    }
    state.store.delete::<PodRecord>(&record.id)?;
    Ok(())
}

/// At start: removes pods a crash left half-made, and marks NOTREADY the pods
/// whose namespaces are gone (after a reboot `run_root` is empty).
pub fn recover(state: &AgentState) -> Result<(), AgentError> {
    for mut record in state.store.list::<PodRecord>()? {
        if record.state == PodState::Creating {
            tracing::info!(pod_id = %record.id, "removing a pod sandbox whose creation was interrupted");
            teardown(state, &record)?;
            continue;
        }
        let pinned = details(&record).and_then(|d| d.paths).map(|p| [p.net, p.ipc, p.uts]);
        let intact = pinned.is_some_and(|files| files.iter().flatten().all(|f| f.exists()));
        if record.state == PodState::Ready && !intact {
            tracing::warn!(pod_id = %record.id, "pod namespaces are gone (reboot?): marking the sandbox NOTREADY");
            record.state = PodState::NotReady;
            state.store.put(&record)?;
        }
    }
    let attached: Vec<AttachedPod> = state
        .store
        .list::<PodRecord>()?
        .iter()
        .filter_map(|record| {
            let network = details(record)?.network.filter(|n| n.attached)?;
            Some(AttachedPod { id: record.id.clone(), ips: network.ips, ports: network.ports })
        })
        .collect();
    state.network.restore(&attached);
    Ok(())
}

/// Stops the pod (its containers, when there are any) and marks it NOTREADY.
/// Stopping an unknown or stopped pod is not an error.
pub fn stop_pod_sandbox(
    state: &AgentState,
    request: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, AgentError> {
    let Some(mut record) = find(state, &request.pod_sandbox_id)? else {
        return Ok(StopPodSandboxResponse {});
    };
    for container in super::containers::containers_of(state, &record.id)? {
        super::containers::stop(state, container, std::time::Duration::ZERO)?;
    }
    if let Some(mut pod_details) = details(&record).filter(|d| d.network.as_ref().is_some_and(|n| n.attached)) {
        state.network.detach_soon(&record.id)?;
        if let Some(network) = pod_details.network.as_mut() {
            network.attached = false;
        }
        record.config = details_json(&pod_details)?;
        state.store.put(&record)?;
    }
    if record.state != PodState::NotReady {
        record.state = PodState::NotReady;
        state.store.put(&record)?;
        tracing::info!(pod_id = %record.id, "pod sandbox stopped");
    }
    Ok(StopPodSandboxResponse {})
}

/// Removes the pod and everything it holds; removing an unknown pod is fine.
pub fn remove_pod_sandbox(
    state: &AgentState,
    request: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, AgentError> {
    let _serial = state.pod_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(record) = find(state, &request.pod_sandbox_id)? else {
        return Ok(RemovePodSandboxResponse {});
    };
    teardown(state, &record)?;
    tracing::info!(pod_id = %record.id, "pod sandbox removed");
    Ok(RemovePodSandboxResponse {})
}

/// Reports one pod.
pub fn pod_sandbox_status(
    state: &AgentState,
    request: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, AgentError> {
    let record = find(state, &request.pod_sandbox_id)?
        .ok_or_else(|| AgentError::NotFound { kind: "pod sandbox", id: request.pod_sandbox_id.clone() })?;
    let pod_details = details(&record);
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

/// A pod by full id or unique id prefix.
pub fn find_pod(state: &AgentState, id: &str) -> Result<Option<PodRecord>, AgentError> {
    find(state, id)
}

fn find(state: &AgentState, id: &str) -> Result<Option<PodRecord>, AgentError> {
    if id.is_empty() {
        return Err(AgentError::InvalidArgument { field: "pod_sandbox_id", reason: "empty id".into() });
    }
    Ok(state.store.get_by_id_or_prefix::<PodRecord>(id)?)
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

pub fn details(record: &PodRecord) -> Option<PodDetails> {
    serde_json::from_value(record.config.clone()).ok()
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
