//! The resource limits crius applies, mirroring CRI `LinuxContainerResources`,
//! and the pure conversions between v1 and v2 units.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// Resource limits for a pod or container cgroup. `0` (or an empty string /
/// collection) leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU shares (v1 `cpu.shares`, converted to v2 `cpu.weight`).
    pub cpu_shares: u64,
    /// CFS quota in microseconds per period; `-1` is unlimited.
    pub cpu_quota: i64,
    /// CFS period in microseconds.
    pub cpu_period: u64,
    /// CPUs the cgroup may run on, in list format (`0-3,6`).
    pub cpuset_cpus: String,
    /// Memory nodes the cgroup may use, in list format.
    pub cpuset_mems: String,
    /// Memory limit in bytes; `-1` is unlimited.
    pub memory_limit_bytes: i64,
    /// Memory plus swap limit in bytes (CRI semantics: it includes the
    /// memory limit); `-1` is unlimited.
    pub memory_swap_limit_bytes: i64,
    /// Maximum number of tasks; negative is unlimited.
    pub pids_limit: i64,
    /// Huge page limits in bytes, by page size as the kernel names it
    /// (`"2MB"`, `"1GB"`).
    pub hugepage_limits: Vec<(String, u64)>,
    /// Raw cgroup v2 files and values, written verbatim last (v2 only).
    pub unified: BTreeMap<String, String>,
}

/// Converts v1 CPU shares to a v2 `cpu.weight` with the formula runc, crun
/// and the kubelet use: `[2, 262144]` maps onto `[1, 10000]`. `0` (unset)
/// stays `0`; out-of-range shares are clamped.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The v2 `memory.swap.max` for a CRI memory and memory+swap pair: `-1` is
/// `max`, `0` leaves it unset. As on v1, unlimited memory with swap unset
/// means unlimited swap too.
pub(super) fn swap_only_v2(memory: i64, memory_swap: i64) -> Result<i64, CgroupError> {
    if memory == -1 && memory_swap == 0 {
        return Ok(-1);
    }
    if memory_swap == -1 || memory_swap == 0 {
        return Ok(memory_swap);
    }
    let invalid = |reason| CgroupError::InvalidResource {
        field: "memory_swap_limit_bytes".into(),
        value: memory_swap.to_string(),
        reason,
    };
    if memory <= 0 {
        return Err(invalid("a swap limit needs a memory limit"));
    }
    if memory_swap < memory {
        return Err(invalid("must not be below the memory limit"));
    }
    Ok(memory_swap - memory)
}

impl Resources {
    /// Checks values that no kernel accepts, and unified keys that could
    /// leave the cgroup directory.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let invalid = |field: &str, value: &dyn ToString, reason| {
            Err(CgroupError::InvalidResource { field: field.to_owned(), value: value.to_string(), reason })
        };
        if self.cpu_quota < -1 {
            return invalid("cpu_quota", &self.cpu_quota, "must be -1, 0 or positive");
        }
        if self.memory_limit_bytes < -1 {
            return invalid("memory_limit_bytes", &self.memory_limit_bytes, "must be -1, 0 or positive");
        }
        if self.memory_swap_limit_bytes < -1 {
            return invalid("memory_swap_limit_bytes", &self.memory_swap_limit_bytes, "must be -1, 0 or positive");
        }
        if self.memory_limit_bytes > 0
            && self.memory_swap_limit_bytes > 0
            && self.memory_swap_limit_bytes < self.memory_limit_bytes
        {
            return invalid(
                "memory_swap_limit_bytes",
                &self.memory_swap_limit_bytes,
                "must not be below the memory limit",
            );
        }
        for (field, list) in [("cpuset_cpus", &self.cpuset_cpus), ("cpuset_mems", &self.cpuset_mems)] {
            if !list.chars().all(|c| c.is_ascii_digit() || c == ',' || c == '-') {
                return invalid(field, list, "not a cpu or node list");
            }
        }
        for (size, _) in &self.hugepage_limits {
            if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
                return invalid("hugepage_limits", size, "not a page size such as 2MB");
            }
        }
        for key in self.unified.keys() {
            if key.is_empty() || key.contains(['/', '\0']) || key.contains("..") {
                return invalid("unified", key, "not a cgroup file name");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_to_weight() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn swap_converts_to_swap_only() {
        assert_eq!(swap_only_v2(0, 0).expect("swap only v2"), 0);
        assert_eq!(swap_only_v2(-1, 0).expect("swap only v2"), -1);
        assert_eq!(swap_only_v2(100, -1).expect("swap only v2"), -1);
        assert_eq!(swap_only_v2(100, 0).expect("swap only v2"), 0);
        assert_eq!(swap_only_v2(100, 100).expect("swap only v2"), 0);
        assert_eq!(swap_only_v2(100, 250).expect("swap only v2"), 150);
        assert!(swap_only_v2(0, 250).is_err());
        assert!(swap_only_v2(-1, 250).is_err());
        assert!(swap_only_v2(300, 250).is_err());
    }

    #[test]
    fn validation_refuses_bad_values() {
        Resources::default().validate().expect("validate");
        let bad = [
            Resources { cpu_quota: -2, ..Default::default() },
            Resources { memory_limit_bytes: -5, ..Default::default() },
            Resources { memory_limit_bytes: 200, memory_swap_limit_bytes: 100, ..Default::default() },
            Resources { cpuset_cpus: "0\n1".into(), ..Default::default() },
            Resources { hugepage_limits: vec![("../2MB".into(), 1)], ..Default::default() },
            Resources { unified: [("../memory.max".to_owned(), "1".to_owned())].into(), ..Default::default() },
            Resources { unified: [("a/b".to_owned(), "1".to_owned())].into(), ..Default::default() },
        ];
        for r in bad {
            assert!(matches!(r.validate(), Err(CgroupError::InvalidResource { .. })), "{r:?} should be refused");
        }
        let ok = Resources {
            cpuset_cpus: "0-3,6".into(),
            hugepage_limits: vec![("2MB".into(), 1 << 21)],
            unified: [("memory.high".to_owned(), "1000000".to_owned())].into(),
            ..Default::default()
        };
        ok.validate().expect("validate");
    }
}
