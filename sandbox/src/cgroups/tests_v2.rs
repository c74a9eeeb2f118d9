//! cgroup v2 behaviour on a fake cgroupfs in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::*;

const OFFERED: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";
const LEAF_FILES: &[(&str, &str)] = &[
    ("cgroup.controllers", "cpuset cpu io memory pids\n"),
    ("cgroup.procs", ""),
    ("cgroup.freeze", "0\n"),
    ("cgroup.events", "populated 0\nfrozen 1\n"),
    ("cpu.weight", "100\n"),
    ("cpu.max", "max 100000\n"),
    ("cpuset.cpus", "\n"),
    ("cpuset.mems", "\n"),
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("memory.high", "max\n"),
    ("pids.max", "max\n"),
];

/// A fake v2 root with `crius/pod-1/c1` laid out as the kernel would.
fn fake_tree() -> (tempfile::TempDir, CgroupMode) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::write(root.join("cgroup.controllers"), OFFERED).expect("write");
    fs::write(root.join("cgroup.subtree_control"), "").expect("write");
    for (dir, enabled) in [("crius", "memory\n"), ("crius/pod-1", "")] {
        fs::create_dir_all(root.join(dir)).expect("create dir all");
        fs::write(root.join(dir).join("cgroup.subtree_control"), enabled).expect("write");
    }
    make_leaf(&root.join("crius/pod-1/c1"));
    let mode = CgroupMode::V2 { root: root.to_path_buf() };
    (tmp, mode)
}

fn make_leaf(dir: &Path) {
    fs::create_dir_all(dir).expect("create dir all");
    for (name, content) in LEAF_FILES {
        fs::write(dir.join(name), content).expect("write");
    }
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn create_enables_missing_controllers_in_every_ancestor() {
    let (tmp, mode) = fake_tree();
    let cg = CgroupManager::new(mode, DEFAULT_PARENT).expect("new").create("pod-1/c1").expect("create");
    let root = tmp.path();
    assert_eq!(read(root.join("cgroup.subtree_control")), "+cpu +cpuset +hugetlb +io +memory +pids");
    // memory was already on in crius: only the rest is written.
    assert_eq!(read(root.join("crius/cgroup.subtree_control")), "+cpu +cpuset +hugetlb +io +pids");
    assert_eq!(read(root.join("crius/pod-1/cgroup.subtree_control")), "+cpu +cpuset +hugetlb +io +memory +pids");
    // The leaf holds processes, so its subtree_control is never touched.
    assert!(!root.join("crius/pod-1/c1/cgroup.subtree_control").exists());
    assert_eq!(cg.path(), root.join("crius/pod-1/c1"));
    assert_eq!(cg.controller_path("memory"), Some(root.join("crius/pod-1/c1")));
    assert!(cg.exists());
}

#[test]
fn create_writes_nothing_when_controllers_are_enabled() {
    let (tmp, mode) = fake_tree();
    let all = "cpuset cpu io memory hugetlb pids\n";
    for dir in ["", "crius", "crius/pod-1"] {
        fs::write(tmp.path().join(dir).join("cgroup.subtree_control"), all).expect("write");
    }
    Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    for dir in ["", "crius", "crius/pod-1"] {
        assert_eq!(read(tmp.path().join(dir).join("cgroup.subtree_control")), all);
    }
}

#[test]
fn apply_writes_v2_files() {
    let (tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    let res = Resources {
        cpu_shares: 1024,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        memory_limit_bytes: 64 << 20,
        memory_swap_limit_bytes: 96 << 20,
        pids_limit: 20,
        hugepage_limits: vec![("2MB".into(), 0)],
        unified: [("memory.high".to_owned(), "50000000".to_owned())].into(),
    };
    cg.apply(&res).expect("apply");
    let leaf = tmp.path().join("crius/pod-1/c1");
    let expected = [
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "0-1"),
        ("cpuset.mems", "0"),
        ("memory.max", "67108864"),
        ("memory.swap.max", "33554432"),
        ("pids.max", "20"),
        ("memory.high", "50000000"),
    ];
    for (file, value) in expected {
        assert_eq!(read(leaf.join(file)), value, "{file}");
    }
    // hugetlb is not in the leaf's cgroup.controllers: skipped, not created.
    assert!(!leaf.join("hugetlb.2MB.max").exists());

    for (shares, weight) in [(2, "1"), (1024, "39"), (262_144, "10000")] {
        cg.apply(&Resources { cpu_shares: shares, ..Default::default() }).expect("apply");
        assert_eq!(read(leaf.join("cpu.weight")), weight);
    }
    let unlimited =
        Resources { cpu_quota: -1, cpu_period: 100_000, pids_limit: -1, memory_limit_bytes: -1, ..Default::default() };
    cg.apply(&unlimited).expect("apply");
    assert_eq!(read(leaf.join("cpu.max")), "max 100000");
    assert_eq!(read(leaf.join("pids.max")), "max");
    assert_eq!(read(leaf.join("memory.max")), "max");
    assert_eq!(read(leaf.join("memory.swap.max")), "max");
}

#[test]
fn apply_refuses_missing_controllers_and_bad_keys() {
    let (tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    fs::write(tmp.path().join("crius/pod-1/c1/cgroup.controllers"), "cpu memory\n").expect("write");
    let err = cg.apply(&Resources { pids_limit: 5, ..Default::default() }).expect_err("apply should fail");
    assert!(matches!(err, CgroupError::ControllerMissing { ref controller, .. } if controller == "pids"), "{err:?}");
    let bad = Resources { unified: [("../../escape".to_owned(), "1".to_owned())].into(), ..Default::default() };
    assert!(matches!(cg.apply(&bad), Err(CgroupError::InvalidResource { .. })));
    // A file the kernel lacks: the write error names path and value.
    let missing = Resources { unified: [("memory.oom.group".to_owned(), "1".to_owned())].into(), ..Default::default() };
    let err = cg.apply(&missing).expect_err("apply should fail");
    let CgroupError::Write { path, value, .. } = err else { panic!("{err:?}") };
    assert!(path.ends_with("c1/memory.oom.group"));
    assert_eq!(value, "1");
}

#[test]
fn stats_and_oom_parse_v2_files() {
    let (tmp, mode) = fake_tree();
    let cg = Cgroup::open(&mode, "crius/pod-1/c1").expect("open");
    let leaf = tmp.path().join("crius/pod-1/c1");
    fs::write(leaf.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n").expect("write");
    fs::write(leaf.join("memory.current"), "10485760\n").expect("write");
    fs::write(leaf.join("memory.stat"), "anon 4194304\nfile 6291456\nactive_file 2097152\ninactive_file 4194304\n")
        .expect("write");
    fs::write(leaf.join("memory.max"), "67108864\n").expect("write");
    fs::write(leaf.join("pids.current"), "3\n").expect("write");
    fs::write(leaf.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n").expect("write");
    let s = cg.stats().expect("stats");
    let expected = CgroupStats {
        cpu_usage_ns: 1_500_000,
        memory_usage_bytes: 10 << 20,
        memory_working_set_bytes: 6 << 20,
        memory_rss: 4 << 20,
        memory_limit: Some(64 << 20),
        pids_current: 3,
        oom_kills: 0,
    };
    assert_eq!(s, expected);
    assert!(!cg.oom_killed().expect("oom killed"));
    fs::write(leaf.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n")
        .expect("write");
    assert!(cg.oom_killed().expect("oom killed"));
    assert_eq!(cg.stats().expect("stats").oom_kills, 2);
    fs::write(leaf.join("memory.max"), "max\n").expect("write");
    assert_eq!(cg.stats().expect("stats").memory_limit, None);
    let gone = Cgroup::open(&mode, "crius/pod-1/nope").expect("open");
    assert!(matches!(gone.stats(), Err(CgroupError::Read { .. })));
}

#[test]
fn processes_kill_and_delete() {
    let (tmp, mode) = fake_tree();
    let cg = Cgroup::create(&mode, "crius/pod-1/c1").expect("create");
    let leaf = tmp.path().join("crius/pod-1/c1");
    cg.add_process(4242).expect("add process");
    assert_eq!(read(leaf.join("cgroup.procs")), "4242");
    assert_eq!(cg.pids().expect("pids"), vec![4242]);
    assert!(matches!(cg.add_process(0), Err(CgroupError::InvalidResource { .. })));
    fs::write(leaf.join("cgroup.procs"), "").expect("write");

    // No cgroup.kill (kernel < 5.14): freeze, signal nobody, thaw.
    cg.kill_all(Signal::SIGKILL).expect("kill all");
    assert_eq!(read(leaf.join("cgroup.freeze")), "0");
    fs::write(leaf.join("cgroup.kill"), "").expect("write");
    cg.kill_all(Signal::SIGKILL).expect("kill all");
    assert_eq!(read(leaf.join("cgroup.kill")), "1");

    // delete removes only the leaf and is idempotent.
    let empty = Cgroup::create(&mode, "crius/pod-1/c2").expect("create");
    assert!(empty.exists());
    empty.delete().expect("delete");
    assert!(!empty.exists());
    empty.delete().expect("delete");
    assert!(tmp.path().join("crius/pod-1").is_dir());
}

#[test]
fn create_fails_where_an_ancestor_lacks_subtree_control() {
    let (tmp, mode) = fake_tree();
    // pod-2 lacks cgroup.subtree_control: enabling controllers there fails.
    fs::create_dir(tmp.path().join("crius/pod-2")).expect("create dir");
    let err = Cgroup::create(&mode, "crius/pod-2/c1").expect_err("create should fail");
    assert!(matches!(err, CgroupError::Read { .. }), "{err:?}");
    assert!(!tmp.path().join("crius/pod-2/c1").exists());
}
