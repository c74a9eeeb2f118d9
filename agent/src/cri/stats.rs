//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats:
//! cpu and memory from the cgroups, the writable layer from the snapshot,
//! process counts from the pids controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cri_api::v1::{
    ContainerAttributes, ContainerMetadata, ContainerStats, ContainerStatsRequest, ContainerStatsResponse, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats, ListContainerStatsRequest, ListContainerStatsResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, MemoryUsage, PodSandboxAttributes, PodSandboxMetadata,
    PodSandboxStats, PodSandboxStatsRequest, PodSandboxStatsResponse, ProcessUsage, UInt64Value,
};
use crius_images::store::FsUsage;
use crius_sandbox::cgroups::{Cgroup, CgroupStats};

use super::AgentState;
use super::pods::now_ns;
use crate::error::AgentError;
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};

/// The previous cpu sample of each cgroup, for `usage_nano_cores`.
#[derive(Debug, Default)]
pub struct CpuSamples {
    samples: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuSamples {
    /// Records a sample and returns the usage rate since the previous one.
    fn rate(&self, key: &str, timestamp: i64, usage_ns: u64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = samples.insert(key.to_owned(), (timestamp, usage_ns));
        let (then, used) = previous?;
        let elapsed = u64::try_from(timestamp - then).ok().filter(|e| *e > 0)?;
        let delta = usage_ns.checked_sub(used)?;
        u64::try_from(u128::from(delta) * 1_000_000_000 / u128::from(elapsed)).ok()
    }
}

/// How long a measured writable-layer usage is reused. Walking a writable
/// layer costs one stat per file; kubelet asks for every container every few
/// seconds (containerd likewise refreshes snapshot usage every 10 s).
const WRITABLE_USAGE_TTL: Duration = Duration::from_secs(10);

/// Recently measured writable-layer usage by container id: (when, its
/// timestamp in ns, usage).
#[derive(Debug)]
pub struct WritableUsage {
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, i64, FsUsage)>>,
}

impl Default for WritableUsage {
    fn default() -> Self {
        Self { ttl: WRITABLE_USAGE_TTL, cache: Mutex::default() }
    }
}

impl WritableUsage {
    /// The cached usage of `id` while fresh, else `measure`'s (then cached);
    /// with the time it was measured.
    fn get(&self, id: &str, measure: impl FnOnce() -> Option<FsUsage>) -> (i64, Option<FsUsage>) {
        let now = Instant::now();
        if let Some((at, timestamp, usage)) = self.lock().get(id)
            && now.duration_since(*at) < self.ttl
        {
            return (*timestamp, Some(*usage));
        }
        // Measured without the lock: other containers' stats need not wait.
        let timestamp = now_ns();
        let usage = measure();
        let mut cache = self.lock();
        cache.retain(|_, (at, _, _)| now.duration_since(*at) < self.ttl * 3);
        if let Some(usage) = usage {
            cache.insert(id.to_owned(), (now, timestamp, usage));
        }
        (timestamp, usage)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, i64, FsUsage)>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stats of one container.
pub fn container_stats(
    state: &AgentState,
    request: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, AgentError> {
    let record = super::lookup::container(state, &request.container_id)?;
    Ok(ContainerStatsResponse { stats: Some(stats_of(state, &record)) })
}

/// Stats of every container matching the filter.
pub fn list_container_stats(
    state: &AgentState,
    request: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, AgentError> {
    let filter = request.filter.unwrap_or_default();
    let stats = state
        .store
        .list::<ContainerRecord>()?
        .into_iter()
        .filter(|c| c.state != ContainerState::Creating)
        .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
        .filter(|c| filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
        .filter(|c| filter.label_selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
        .map(|c| stats_of(state, &c))
        .collect();
    Ok(ListContainerStatsResponse { stats })
}

/// Stats of one pod and its containers.
pub fn pod_sandbox_stats(
    state: &AgentState,
    request: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, AgentError> {
    let pod = super::lookup::pod(state, &request.pod_sandbox_id)?;
    Ok(PodSandboxStatsResponse { stats: Some(pod_stats_of(state, &pod)?) })
}

/// Stats of every ready pod matching the filter.
pub fn list_pod_sandbox_stats(
    state: &AgentState,
    request: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, AgentError> {
    let filter = request.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for pod in state.store.list::<PodRecord>()? {
        if pod.state != PodState::Ready
            || (!filter.id.is_empty() && !pod.id.starts_with(&filter.id))
            || !filter.label_selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        {
            continue;
        }
        stats.push(pod_stats_of(state, &pod)?);
    }
    Ok(ListPodSandboxStatsResponse { stats })
}

fn pod_stats_of(state: &AgentState, pod: &PodRecord) -> Result<PodSandboxStats, AgentError> {
    let timestamp = now_ns();
    let cgroup = super::pods::details(pod)?.cgroup;
    let sample = cgroup_stats(state, cgroup.as_deref());
    let containers = state
        .store
        .list::<ContainerRecord>()?
        .into_iter()
        .filter(|c| c.pod_id == pod.id && c.state != ContainerState::Creating)
        .map(|c| stats_of(state, &c))
        .collect();
    Ok(PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: pod.attempt,
            }),
            labels: pod.labels.clone().into_iter().collect(),
            annotations: pod.annotations.clone().into_iter().collect(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: Some(cpu(state, &format!("pod/{}", pod.id), timestamp, sample.as_ref())),
            memory: Some(memory(timestamp, sample.as_ref())),
            network: None,
            process: Some(ProcessUsage {
                timestamp,
                process_count: sample.as_ref().map(|s| UInt64Value { value: s.pids_current }),
            }),
            containers,
            io: None,
        }),
        windows: None,
    })
}

fn stats_of(state: &AgentState, record: &ContainerRecord) -> ContainerStats {
    let timestamp = now_ns();
    let running = record.state == ContainerState::Running;
    let sample = if running { container_usage(state, record) } else { None };
    let (measured_at, writable) =
        state.writable_usage.get(&record.id, || state.images.snapshots().usage(&record.id).ok());
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(state, &record.id, timestamp, sample.as_ref())),
        memory: Some(memory(timestamp, sample.as_ref())),
        writable_layer: Some(FilesystemUsage {
            timestamp: measured_at,
            fs_id: Some(FilesystemIdentifier { mountpoint: state.images.container_root().display().to_string() }),
            used_bytes: Some(UInt64Value { value: writable.map_or(0, |w| w.bytes) }),
            inodes_used: Some(UInt64Value { value: writable.map_or(0, |w| w.inodes) }),
        }),
        swap: None,
        io: None,
    }
}

/// A running container's usage, from its backend; `None` (reported as
/// zeros) when it cannot be read, with the reason at debug level.
fn container_usage(state: &AgentState, record: &ContainerRecord) -> Option<CgroupStats> {
    let (backend, handle, _) = super::containers::backend_of(state, record).ok()?;
    match backend.container_usage(&handle) {
        Ok(usage) => usage,
        Err(e) => {
            tracing::debug!(container_id = %record.id, error = %crate::error::chain(&e), "no usage for container");
            None
        }
    }
}

/// The pod cgroup's usage (the pod cgroup is the agent's).
fn cgroup_stats(state: &AgentState, path: Option<&str>) -> Option<CgroupStats> {
    let mode = state.cgroup_mode.as_ref().ok()?;
    let cgroup = Cgroup::open(mode, path?).ok()?;
    cgroup.stats().ok()
}

fn cpu(state: &AgentState, key: &str, timestamp: i64, sample: Option<&CgroupStats>) -> CpuUsage {
    let usage = sample.map_or(0, |s| s.cpu_usage_ns);
    let rate = sample.and_then(|_| state.cpu_samples.rate(key, timestamp, usage));
    CpuUsage {
        timestamp,
        usage_core_nano_seconds: Some(UInt64Value { value: usage }),
        usage_nano_cores: Some(UInt64Value { value: rate.unwrap_or(0) }),
        psi: None,
    }
}

fn memory(timestamp: i64, sample: Option<&CgroupStats>) -> MemoryUsage {
    let value = |v: u64| Some(UInt64Value { value: v });
    MemoryUsage {
        timestamp,
        working_set_bytes: value(sample.map_or(0, |s| s.memory_working_set_bytes)),
        available_bytes: sample
            .and_then(|s| s.memory_limit.map(|limit| limit.saturating_sub(s.memory_working_set_bytes)))
            .and_then(value),
        usage_bytes: value(sample.map_or(0, |s| s.memory_usage_bytes)),
        rss_bytes: value(sample.map_or(0, |s| s.memory_rss)),
        page_faults: value(0),
        major_page_faults: value(0),
        psi: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_usage_is_reused_while_fresh() {
        let usage = |bytes| Some(FsUsage { bytes, inodes: 1 });
        let cache = WritableUsage::default();
        let (first_at, first) = cache.get("c1", || usage(10));
        let (again_at, again) = cache.get("c1", || panic!("measured again within the ttl"));
        assert_eq!((first, first_at), (again, again_at));
        assert_eq!(cache.get("c2", || usage(20)).1, usage(20), "per container");
        let expired = WritableUsage { ttl: Duration::ZERO, cache: Mutex::default() };
        expired.get("c1", || usage(10));
        assert_eq!(expired.get("c1", || usage(11)).1, usage(11), "measured again once stale");
        assert_eq!(cache.get("gone", || None).1, None);
    }

    #[test]
    fn cpu_rate_needs_two_samples() {
        let samples = CpuSamples::default();
        assert_eq!(samples.rate("c", 1_000_000_000, 0), None);
        // Half a core over one second.
        assert_eq!(samples.rate("c", 2_000_000_000, 500_000_000), Some(500_000_000));
        assert_eq!(samples.rate("c", 2_000_000_000, 600_000_000), None, "no time passed");
        assert_eq!(samples.rate("other", 1, 1), None);
    }
}
