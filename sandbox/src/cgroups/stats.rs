//! Usage counters of a cgroup, from the v1 or v2 files.

use std::path::Path;

use super::CgroupError;
use super::fsutil::{keyed_value, parse_u64_or_max, read_optional};

/// A snapshot of a cgroup's usage. A counter whose controller is missing
/// reads as `0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time consumed, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to the cgroup, in bytes (page cache included).
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file pages: what the kubelet evicts on.
    pub memory_working_set_bytes: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`), in bytes.
    pub memory_rss: u64,
    /// The memory limit in bytes; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Number of tasks in the cgroup.
    pub pids_current: u64,
    /// How many times the OOM killer killed a task of the cgroup.
    pub oom_kills: u64,
}

/// v1 reports "unlimited" as the largest page-aligned i64 (or close to it).
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

fn number(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        Some(text) => parse_u64_or_max(path, &text),
        None => Ok(None),
    }
}

fn keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        Some(text) => keyed_value(path, &text, key),
        None => Ok(None),
    }
}

/// The first of `keys` present in the keyed file at `path`.
fn keyed_first(path: &Path, keys: &[&str]) -> Result<Option<u64>, CgroupError> {
    let Some(text) = read_optional(path)? else { return Ok(None) };
    for key in keys {
        if let Some(v) = keyed_value(path, &text, key)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The v1 OOM kill count from `memory.oom_control` (`oom_kill N`, 4.13+).
pub(super) fn oom_kills_v1(memory_dir: &Path) -> Result<u64, CgroupError> {
    Ok(keyed(&memory_dir.join("memory.oom_control"), "oom_kill")?.unwrap_or(0))
}

/// The v2 OOM kill count from `memory.events`.
pub(super) fn oom_kills_v2(dir: &Path) -> Result<u64, CgroupError> {
    Ok(keyed(&dir.join("memory.events"), "oom_kill")?.unwrap_or(0))
}

/// Reads v1 stats; each directory is the cgroup in that controller's
/// hierarchy, `None` when the controller is not mounted.
pub(super) fn read_v1(
    cpuacct: Option<&Path>,
    memory: Option<&Path>,
    pids: Option<&Path>,
) -> Result<CgroupStats, CgroupError> {
    let mut s = CgroupStats::default();
    if let Some(dir) = cpuacct {
        s.cpu_usage_ns = number(&dir.join("cpuacct.usage"))?.unwrap_or(0);
    }
    if let Some(dir) = memory {
        s.memory_usage_bytes = number(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
        let stat = dir.join("memory.stat");
        let inactive = keyed_first(&stat, &["total_inactive_file", "inactive_file"])?.unwrap_or(0);
        s.memory_working_set_bytes = s.memory_usage_bytes.saturating_sub(inactive);
        s.memory_rss = keyed_first(&stat, &["total_rss", "rss"])?.unwrap_or(0);
        s.memory_limit = number(&dir.join("memory.limit_in_bytes"))?.filter(|l| *l < V1_UNLIMITED_FLOOR);
        s.oom_kills = oom_kills_v1(dir)?;
    }
    if let Some(dir) = pids {
        s.pids_current = number(&dir.join("pids.current"))?.unwrap_or(0);
    }
    Ok(s)
}

/// Reads v2 stats from the cgroup directory.
pub(super) fn read_v2(dir: &Path) -> Result<CgroupStats, CgroupError> {
    let usage_usec = keyed(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0);
    let memory_usage_bytes = number(&dir.join("memory.current"))?.unwrap_or(0);
    let stat = dir.join("memory.stat");
    let inactive = keyed(&stat, "inactive_file")?.unwrap_or(0);
    Ok(CgroupStats {
        cpu_usage_ns: usage_usec.saturating_mul(1000),
        memory_usage_bytes,
        memory_working_set_bytes: memory_usage_bytes.saturating_sub(inactive),
        memory_rss: keyed(&stat, "anon")?.unwrap_or(0),
        memory_limit: number(&dir.join("memory.max"))?,
        pids_current: number(&dir.join("pids.current"))?.unwrap_or(0),
        oom_kills: oom_kills_v2(dir)?,
    })
}
