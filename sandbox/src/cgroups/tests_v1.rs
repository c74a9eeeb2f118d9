//! cgroup v1 behaviour on a fake cgroupfs in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::*;

const UNLIMITED: &str = "9223372036854771712\n";

/// Fake hierarchies: `cpu,cpuacct` comounted, cpuset, memory, pids, freezer
/// (no hugetlb, as on this host).
fn fake_mode(root: &Path, controllers: &[&str]) -> CgroupMode {
    let mut mounts = BTreeMap::new();
    for c in controllers {
        let dir = match *c {
            "cpu" | "cpuacct" => "cpu,cpuacct",
            other => other,
        };
        fs::create_dir_all(root.join(dir)).expect("create dir all");
        mounts.insert((*c).to_owned(), root.join(dir));
    }
    CgroupMode::V1 { mounts }
}

const ALL: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"];

/// The cpuset levels exist with empty cpus/mems, as a fresh kernel cgroup
/// without clone_children has them.
fn fake_tree() -> (tempfile::TempDir, CgroupMode) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mode = fake_mode(tmp.path(), ALL);
    let cpuset = tmp.path().join("cpuset");
    fs::write(cpuset.join("cpuset.cpus"), "0-3\n").expect("write");
    fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
    for dir in ["crius", "crius/pod-1", "crius/pod-1/c1"] {
        fs::create_dir_all(cpuset.join(dir)).expect("create dir all");
        fs::write(cpuset.join(dir).join("cpuset.cpus"), "\n").expect("write");
        fs::write(cpuset.join(dir).join("cpuset.mems"), "\n").expect("write");
    }
    (tmp, mode)
}

/// The files the kernel would show in the new leaf of each hierarchy.
fn fill_leaf(cg: &Cgroup) {
    let files: &[(&str, &[(&str, &str)])] = &[
        ("cpu", &[("cpu.shares", "1024\n"), ("cpu.cfs_quota_us", "-1\n"), ("cpu.cfs_period_us", "100000\n")]),
        (
            "memory",
            &[
                ("memory.limit_in_bytes", UNLIMITED),
                ("memory.memsw.limit_in_bytes", UNLIMITED),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
            ],
        ),
        ("pids", &[("pids.max", "max\n")]),
        ("freezer", &[("freezer.state", "THAWED\n")]),
    ];
    for (controller, list) in files {
        let dir = cg.controller_path(controller).expect("controller path");
        for (name, content) in *list {
            fs::write(dir.join(name), content).expect("write");
        }
    }
    for dir in cg.mode().hierarchies() {
        fs::write(dir.join(cg.rel_path()).join("cgroup.procs"), "").expect("write");
    }
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn create_makes_every_hierarchy_and_copies_cpuset_top_down() {
    let (tmp, mode) = fake_tree();
    let cg = CgroupManager::new(mode, DEFAULT_PARENT).expect("new").create("pod-1/c1").expect("create");
    let root = tmp.path();
    for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "freezer"] {
        assert!(root.join(h).join("crius/pod-1/c1").is_dir(), "{h}");
    }
    for dir in ["crius", "crius/pod-1", "crius/pod-1/c1"] {
        assert_eq!(read(root.join("cpuset").join(dir).join("cpuset.cpus")), "0-3");
        assert_eq!(read(root.join("cpuset").join(dir).join("cpuset.mems")), "0");
    }
    assert_eq!(cg.path(), root.join("memory/crius/pod-1/c1"));
    assert_eq!(cg.controller_path("cpuacct"), Some(root.join("cpu,cpuacct/crius/pod-1/c1")));
    assert_eq!(cg.controller_path("hugetlb"), None);
}

#[test]
fn create_keeps_a_cpuset_that_is_already_set() {
    let (tmp, mode) = fake_tree();
    fs::write(tmp.path().join("cpuset/crius/cpuset.cpus"), "1\n").expect("write");
    Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    assert_eq!(read(tmp.path().join("cpuset/crius/cpuset.cpus")), "1\n");
    assert_eq!(read(tmp.path().join("cpuset/crius/pod-1/c1/cpuset.cpus")), "1");
}

#[test]
fn create_undoes_new_leaves_on_failure() {
    let (tmp, mode) = fake_tree();
    // c2 has no cpuset files in the fake: inheriting them fails after the
    // leaf was made in the hierarchies before cpuset.
    let err = Cgroup::create(&mode, "crius/pod-1/c2").expect_err("create should fail");
    assert!(matches!(err, CgroupError::Read { .. }), "{err:?}");
    for h in ["cpu,cpuacct", "cpuset", "memory"] {
        assert!(!tmp.path().join(h).join("crius/pod-1/c2").exists(), "{h}");
    }
    assert!(tmp.path().join("cpuset/crius/pod-1/c1").exists());
}

#[test]
fn apply_writes_v1_files() {
    let (_tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    fill_leaf(&cg);
    let res = Resources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "1-2".into(),
        cpuset_mems: "0".into(),
        memory_limit_bytes: 64 << 20,
        memory_swap_limit_bytes: 64 << 20,
        pids_limit: 20,
        // No hugetlb hierarchy: skipped without error.
        hugepage_limits: vec![("2MB".into(), 0)],
        ..Default::default()
    };
    cg.apply(&res).expect("apply");
    let at = |c: &str, f: &str| read(cg.controller_path(c).expect("controller path").join(f));
    assert_eq!(at("cpu", "cpu.shares"), "512");
    assert_eq!(at("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(at("cpuset", "cpuset.cpus"), "1-2");
    assert_eq!(at("cpuset", "cpuset.mems"), "0");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(at("memory", "memory.memsw.limit_in_bytes"), "67108864");
    assert_eq!(at("pids", "pids.max"), "20");

    cg.apply(&Resources { memory_limit_bytes: -1, pids_limit: -1, cpu_quota: -1, ..Default::default() })
        .expect("apply");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "-1");
    assert_eq!(at("memory", "memory.memsw.limit_in_bytes"), "-1");
    assert_eq!(at("pids", "pids.max"), "max");
    assert_eq!(at("cpu", "cpu.cfs_quota_us"), "-1");

    // Without swap accounting memsw is left alone.
    fs::remove_file(cg.controller_path("memory").expect("controller path").join("memory.memsw.limit_in_bytes"))
        .expect("remove file");
    cg.apply(&Resources { memory_limit_bytes: 1 << 20, memory_swap_limit_bytes: 2 << 20, ..Default::default() })
        .expect("apply");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "1048576");

    let unified = Resources { unified: [("memory.high".to_owned(), "1".to_owned())].into(), ..Default::default() };
    assert!(matches!(cg.apply(&unified), Err(CgroupError::InvalidResource { .. })));
}

#[test]
fn apply_refuses_a_limit_without_its_hierarchy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mode = fake_mode(tmp.path(), &["cpu", "cpuacct", "memory"]);
    let cg = Cgroup::create(&mode, "crius/c1").expect("create");
    let err = cg.apply(&Resources { pids_limit: 5, ..Default::default() }).expect_err("apply should fail");
    assert!(matches!(err, CgroupError::ControllerMissing { ref controller, .. } if controller == "pids"), "{err:?}");
}

#[test]
fn stats_and_oom_parse_v1_files() {
    let (_tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    fill_leaf(&cg);
    let mem = cg.controller_path("memory").expect("controller path");
    fs::write(cg.controller_path("cpuacct").expect("controller path").join("cpuacct.usage"), "123456789\n")
        .expect("write");
    fs::write(mem.join("memory.usage_in_bytes"), "10485760\n").expect("write");
    let stat = "cache 6291456\nrss 1\ninactive_file 1\ntotal_cache 6291456\ntotal_rss 4194304\n\
                total_inactive_file 2097152\ntotal_active_file 4194304\n";
    fs::write(mem.join("memory.stat"), stat).expect("write");
    fs::write(cg.controller_path("pids").expect("controller path").join("pids.current"), "2\n").expect("write");
    let s = cg.stats().expect("stats");
    let expected = CgroupStats {
        cpu_usage_ns: 123_456_789,
        memory_usage_bytes: 10 << 20,
        memory_working_set_bytes: 8 << 20,
        memory_rss: 4 << 20,
        memory_limit: None,
        pids_current: 2,
        oom_kills: 0,
    };
    assert_eq!(s, expected);
    assert!(!cg.oom_killed().expect("oom killed"));
    fs::write(mem.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").expect("write");
    assert!(cg.oom_killed().expect("oom killed"));
    fs::write(mem.join("memory.limit_in_bytes"), "16777216\n").expect("write");
    assert_eq!(cg.stats().expect("stats").memory_limit, Some(16 << 20));
}

#[test]
fn processes_go_to_every_hierarchy_once() {
    let (tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    fill_leaf(&cg);
    cg.add_process(31337).expect("add process");
    for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "freezer"] {
        assert_eq!(read(tmp.path().join(h).join("crius/pod-1/c1/cgroup.procs")), "31337", "{h}");
    }
    assert_eq!(cg.pids().expect("pids"), vec![31337]);
    for dir in cg.mode().hierarchies() {
        fs::write(dir.join(cg.rel_path()).join("cgroup.procs"), "").expect("write");
    }
    // Freeze, signal nobody, thaw.
    cg.kill_all(Signal::SIGKILL).expect("kill all");
    assert_eq!(read(cg.controller_path("freezer").expect("controller path").join("freezer.state")), "THAWED");
}

#[test]
fn delete_removes_the_leaf_everywhere_and_is_idempotent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mode = fake_mode(tmp.path(), &["cpu", "cpuacct", "memory", "pids"]);
    let cg = Cgroup::create(&mode, "crius/pod-9").expect("create");
    cg.delete().expect("delete");
    for h in ["cpu,cpuacct", "memory", "pids"] {
        assert!(!tmp.path().join(h).join("crius/pod-9").exists(), "{h}");
        assert!(tmp.path().join(h).join("crius").is_dir(), "{h}");
    }
    cg.delete().expect("delete");
}
