//! Plan, then execute: [`Resources`] become an ordered list of file writes,
//! computed without touching the file system so that tests can assert on it.

use std::collections::BTreeSet;

use super::CgroupError;
use super::resources::{Resources, shares_to_weight, swap_only_v2};

/// One write of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileWrite {
    /// The controller the file belongs to; empty for raw v2 `unified` keys.
    pub controller: &'static str,
    /// The file name inside the cgroup directory.
    pub file: String,
    /// What is written.
    pub value: String,
    /// When the kernel answers EINVAL, try this write again after the rest
    /// of the plan (v1 CFS period before quota).
    pub retry_last_on_einval: bool,
}

fn w(controller: &'static str, file: impl Into<String>, value: impl ToString) -> FileWrite {
    FileWrite { controller, file: file.into(), value: value.to_string(), retry_last_on_einval: false }
}

/// What a v1 plan needs to know about the cgroup.
#[derive(Debug, Clone, Copy)]
pub(super) struct V1State {
    /// `memory.memsw.limit_in_bytes` exists (swap accounting on).
    pub memsw: bool,
    /// The current `memory.limit_in_bytes`.
    pub current_memory_limit: u64,
}

/// The v1 writes for `res`, in an order the kernel accepts.
pub(super) fn plan_v1(res: &Resources, state: V1State) -> Result<Vec<FileWrite>, CgroupError> {
    res.validate()?;
    if let Some(key) = res.unified.keys().next() {
        return Err(CgroupError::InvalidResource {
            field: "unified".into(),
            value: key.clone(),
            reason: "raw cgroup v2 keys cannot be applied on cgroup v1",
        });
    }
    let mut plan = Vec::new();
    if res.cpu_shares != 0 {
        plan.push(w("cpu", "cpu.shares", res.cpu_shares));
    }
    if res.cpu_period != 0 {
        let mut period = w("cpu", "cpu.cfs_period_us", res.cpu_period);
        // A shorter period can break the parent's quota until the new quota
        // is in; runc retries it after the quota.
        period.retry_last_on_einval = res.cpu_quota != 0;
        plan.push(period);
    }
    if res.cpu_quota != 0 {
        plan.push(w("cpu", "cpu.cfs_quota_us", res.cpu_quota));
    }
    push_cpuset(&mut plan, res);
    plan.extend(memory_v1(res, state));
    if res.pids_limit != 0 {
        plan.push(w("pids", "pids.max", pids_value(res.pids_limit)));
    }
    for (size, limit) in &res.hugepage_limits {
        plan.push(w("hugetlb", format!("hugetlb.{size}.limit_in_bytes"), limit));
    }
    Ok(plan)
}

/// Memory and memory+swap on v1: the kernel keeps `memory <= memsw` at every
/// step, so raise memsw first when the new memsw is above the current memory
/// limit, else lower memory first (runc's order).
fn memory_v1(res: &Resources, state: V1State) -> Vec<FileWrite> {
    let memory = res.memory_limit_bytes;
    let mut swap = if state.memsw { res.memory_swap_limit_bytes } else { 0 };
    if memory == -1 && swap == 0 && state.memsw {
        swap = -1;
    }
    let mem_w = || w("memory", "memory.limit_in_bytes", memory);
    let swap_w = || w("memory", "memory.memsw.limit_in_bytes", swap);
    match (memory != 0, swap != 0) {
        (true, true) => {
            let swap_first = match u64::try_from(swap) {
                Ok(new_swap) => state.current_memory_limit < new_swap,
                Err(_) => true, // -1: unlimited
            };
            if swap_first { vec![swap_w(), mem_w()] } else { vec![mem_w(), swap_w()] }
        }
        (true, false) => vec![mem_w()],
        (false, true) => vec![swap_w()],
        (false, false) => vec![],
    }
}

/// What a v2 plan needs to know about the cgroup.
#[derive(Debug, Clone)]
pub(super) struct V2State {
    /// The controllers in the cgroup's `cgroup.controllers`.
    pub controllers: BTreeSet<String>,
    /// `memory.swap.max` exists.
    pub swap: bool,
}

/// The v2 writes for `res`.
pub(super) fn plan_v2(res: &Resources, state: &V2State) -> Result<Vec<FileWrite>, CgroupError> {
    res.validate()?;
    let mut plan = Vec::new();
    if res.cpu_shares != 0 {
        plan.push(w("cpu", "cpu.weight", shares_to_weight(res.cpu_shares)));
    }
    if res.cpu_quota != 0 || res.cpu_period != 0 {
        let mut value = if res.cpu_quota > 0 { res.cpu_quota.to_string() } else { "max".to_owned() };
        if res.cpu_period != 0 {
            value = format!("{value} {}", res.cpu_period);
        }
        plan.push(w("cpu", "cpu.max", value));
    }
    push_cpuset(&mut plan, res);
    match res.memory_limit_bytes {
        0 => {}
        -1 => plan.push(w("memory", "memory.max", "max")),
        m => plan.push(w("memory", "memory.max", m)),
    }
    if state.swap {
        match swap_only_v2(res.memory_limit_bytes, res.memory_swap_limit_bytes)? {
            0 => {}
            -1 => plan.push(w("memory", "memory.swap.max", "max")),
            s => plan.push(w("memory", "memory.swap.max", s)),
        }
    }
    if res.pids_limit != 0 {
        plan.push(w("pids", "pids.max", pids_value(res.pids_limit)));
    }
    if state.controllers.contains("hugetlb") {
        for (size, limit) in &res.hugepage_limits {
            plan.push(w("hugetlb", format!("hugetlb.{size}.max"), limit));
        }
    }
    for (key, value) in &res.unified {
        plan.push(w("", key.clone(), value));
    }
    Ok(plan)
}

fn push_cpuset(plan: &mut Vec<FileWrite>, res: &Resources) {
    if !res.cpuset_cpus.is_empty() {
        plan.push(w("cpuset", "cpuset.cpus", &res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        plan.push(w("cpuset", "cpuset.mems", &res.cpuset_mems));
    }
}

fn pids_value(limit: i64) -> String {
    if limit < 0 { "max".to_owned() } else { limit.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(plan: &[FileWrite]) -> Vec<(String, String)> {
        plan.iter().map(|w| (w.file.clone(), w.value.clone())).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(f, v)| ((*f).to_owned(), (*v).to_owned())).collect()
    }

    const MIB: i64 = 1 << 20;

    #[test]
    fn v1_memsw_order_keeps_memory_below_memsw() {
        let state = |cur| V1State { memsw: true, current_memory_limit: cur };
        let res = Resources { memory_limit_bytes: 64 * MIB, memory_swap_limit_bytes: 64 * MIB, ..Default::default() };
        // Fresh cgroup (unlimited memory): lower memory first.
        let plan = plan_v1(&res, state(u64::MAX)).expect("plan v1");
        assert_eq!(plan[0].file, "memory.limit_in_bytes");
        assert_eq!(plan[1].file, "memory.memsw.limit_in_bytes");
        // Raising from 16 MiB: memsw first.
        let plan = plan_v1(&res, state(16 << 20)).expect("plan v1");
        assert_eq!(plan[0].file, "memory.memsw.limit_in_bytes");
        assert_eq!(plan[1].file, "memory.limit_in_bytes");
        // Unlimited memory with swap unset: both unlimited, memsw first.
        let res = Resources { memory_limit_bytes: -1, ..Default::default() };
        let plan = plan_v1(&res, state(16 << 20)).expect("plan v1");
        assert_eq!(files(&plan), pairs(&[("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]));
        // Without swap accounting memsw is never written.
        let res = Resources { memory_limit_bytes: 64 * MIB, memory_swap_limit_bytes: -1, ..Default::default() };
        let plan = plan_v1(&res, V1State { memsw: false, current_memory_limit: 0 }).expect("plan v1");
        assert_eq!(files(&plan), pairs(&[("memory.limit_in_bytes", "67108864")]));
    }

    #[test]
    fn v1_cpu_pids_hugetlb() {
        let res = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            pids_limit: -1,
            hugepage_limits: vec![("2MB".into(), 4 << 21)],
            ..Default::default()
        };
        let plan = plan_v1(&res, V1State { memsw: true, current_memory_limit: 0 }).expect("plan v1");
        let expected = [
            ("cpu.shares", "512"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "50000"),
            ("pids.max", "max"),
            ("hugetlb.2MB.limit_in_bytes", "8388608"),
        ];
        assert_eq!(files(&plan), pairs(&expected));
        assert!(plan[1].retry_last_on_einval);
        let unified = Resources { unified: [("memory.high".to_owned(), "1".to_owned())].into(), ..Default::default() };
        assert!(plan_v1(&unified, V1State { memsw: true, current_memory_limit: 0 }).is_err());
    }

    #[test]
    fn v2_cpu_max_and_weight() {
        let state = V2State { controllers: BTreeSet::new(), swap: false };
        let plan = |quota, period| {
            files(
                &plan_v2(&Resources { cpu_quota: quota, cpu_period: period, ..Default::default() }, &state)
                    .expect("plan v2"),
            )
        };
        assert_eq!(plan(50_000, 100_000), pairs(&[("cpu.max", "50000 100000")]));
        assert_eq!(plan(-1, 100_000), pairs(&[("cpu.max", "max 100000")]));
        assert_eq!(plan(20_000, 0), pairs(&[("cpu.max", "20000")]));
        assert_eq!(plan(0, 0), pairs(&[]));
        let res = Resources { cpu_shares: 1024, ..Default::default() };
        assert_eq!(files(&plan_v2(&res, &state).expect("plan v2")), pairs(&[("cpu.weight", "39")]));
    }

    #[test]
    fn v2_memory_swap_pids_hugetlb_unified() {
        let mut state =
            V2State { controllers: ["memory", "pids"].iter().map(|s| (*s).to_owned()).collect(), swap: true };
        let res = Resources {
            memory_limit_bytes: 64 * MIB,
            memory_swap_limit_bytes: 96 * MIB,
            pids_limit: -5,
            hugepage_limits: vec![("2MB".into(), 0)],
            unified: [("memory.high".to_owned(), "50000000".to_owned())].into(),
            ..Default::default()
        };
        let expected = [
            ("memory.max", "67108864"),
            ("memory.swap.max", "33554432"),
            ("pids.max", "max"),
            ("memory.high", "50000000"),
        ];
        assert_eq!(files(&plan_v2(&res, &state).expect("plan v2")), pairs(&expected));
        state.controllers.insert("hugetlb".into());
        state.swap = false;
        let plan = files(&plan_v2(&res, &state).expect("plan v2"));
        assert!(plan.contains(&("hugetlb.2MB.max".to_owned(), "0".to_owned())));
        assert!(!plan.iter().any(|(f, _)| f == "memory.swap.max"));
        let unlimited = Resources { memory_limit_bytes: -1, ..Default::default() };
        let plan = files(&plan_v2(&unlimited, &V2State { controllers: BTreeSet::new(), swap: true }).expect("plan v2"));
        assert_eq!(plan, pairs(&[("memory.max", "max"), ("memory.swap.max", "max")]));
    }
}
