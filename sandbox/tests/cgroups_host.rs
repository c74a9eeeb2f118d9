//! Privileged cgroup tests on a real cgroup v1 (or hybrid) host. They skip
//! (`testkit`) when not root or when `/sys/fs/cgroup/memory` is not a v1
//! hierarchy; with `TEST_REQUIRE` naming `root` or `cgroup-v1` (or `all`)
//! they fail instead.
//! Every cgroup is made below `crius-test-<pid>-<n>` and removed by a guard,
//! even when an assertion fails.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crius_sandbox::cgroups::{Cgroup, CgroupError, CgroupManager, CgroupMode, Resources, detect_host};
use nix::sys::signal::Signal;

static NEXT: AtomicU32 = AtomicU32::new(0);

const MIB: i64 = 1 << 20;

fn require_v1_host(name: &str) -> Option<CgroupMode> {
    if !testkit::require_root(name) {
        return None;
    }
    let why = match detect_host() {
        Ok(mode @ CgroupMode::V1 { .. }) if mode.hierarchy_of("memory") == Some(Path::new("/sys/fs/cgroup/memory")) => {
            return Some(mode);
        }
        Ok(mode) => format!("/sys/fs/cgroup/memory is not a cgroup v1 mount ({mode:?})"),
        Err(e) => format!("no cgroup mounts: {e}"),
    };
    testkit::skip(name, testkit::CGROUP_V1, &why);
    None
}

/// A test cgroup `crius-test-<pid>-<n>/c1` and the child in it; dropping
/// it kills the child and everything in the cgroup and removes both levels.
struct Fixture {
    parent: Cgroup,
    leaf: Cgroup,
    child: Option<Child>,
}

impl Fixture {
    fn new(mode: &CgroupMode) -> Fixture {
        let parent_rel = format!("crius-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let manager = CgroupManager::new(mode.clone(), &parent_rel).expect("new");
        let parent = Cgroup::open(mode, &parent_rel).expect("open");
        let leaf = match manager.create("c1") {
            Ok(leaf) => leaf,
            Err(e) => {
                let _ = parent.delete();
                panic!("create {parent_rel}/c1: {e:?}");
            }
        };
        Fixture { parent, leaf, child: None }
    }

    /// Starts `sh -c 'read _; exec <cmd>'`, moves it into the leaf, then lets
    /// it exec, so that everything `cmd` allocates is charged to the leaf.
    fn spawn_inside(&mut self, cmd: &str) -> i32 {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; exec {cmd}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let mut stdin = child.stdin.take().expect("take");
        self.child = Some(child);
        self.leaf.add_process(pid).expect("add process");
        stdin.write_all(b"go\n").expect("write all");
        pid
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("as mut")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.leaf.kill_all(Signal::SIGKILL);
        if let Err(e) = self.leaf.delete().and_then(|()| self.parent.delete()) {
            eprintln!("cleanup of {}: {e:?}", self.parent.rel_path());
        }
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// The cgroup of `pid` in the v1 hierarchy that holds `controller`.
fn proc_cgroup(pid: i32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read to string");
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.to_owned())
    })
}

#[test]
fn cgroups_v1_host_limits_stats_kill_delete() {
    let Some(mode) = require_v1_host("cgroups_v1_host_limits_stats_kill_delete") else { return };
    let mut fx = Fixture::new(&mode);
    let res = Resources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_bytes: 64 * MIB,
        pids_limit: 20,
        ..Default::default()
    };
    fx.leaf.apply(&res).expect("apply");
    let at = |c: &str, f: &str| read_trimmed(&fx.leaf.controller_path(c).expect("controller path").join(f));
    assert_eq!(at("memory", "memory.limit_in_bytes"), (64 * MIB).to_string());
    assert_eq!(at("pids", "pids.max"), "20");
    assert_eq!(at("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(at("cpu", "cpu.shares"), "512");
    if fx.leaf.controller_path("cpuset").is_some() {
        assert!(!at("cpuset", "cpuset.cpus").is_empty(), "cpuset.cpus copied from the parent");
    }

    let pid = fx.spawn_inside("sleep 30");
    let expected = format!("/{}", fx.leaf.rel_path());
    assert_eq!(proc_cgroup(pid, "memory").as_deref(), Some(expected.as_str()));
    assert_eq!(proc_cgroup(pid, "pids").as_deref(), Some(expected.as_str()));
    assert!(fx.leaf.pids().expect("pids").contains(&pid));
    wait_until("memory usage after exec", || fx.leaf.stats().expect("stats").memory_usage_bytes > 0);
    let stats = fx.leaf.stats().expect("stats");
    assert!(stats.pids_current >= 1, "{stats:?}");
    assert_eq!(stats.memory_limit, Some(64 << 20));
    assert!(!fx.leaf.oom_killed().expect("oom killed"));

    // A cgroup with a live process stays busy: delete gives up after its bounded retries.
    let busy = fx.leaf.delete().expect_err("delete of a populated cgroup should fail");
    assert!(
        matches!(&busy, CgroupError::Remove { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{busy:?}"
    );

    fx.leaf.kill_all(Signal::SIGKILL).expect("kill all");
    let status = fx.child().wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    if let Some(freezer) = fx.leaf.controller_path("freezer") {
        assert_eq!(read_trimmed(&freezer.join("freezer.state")), "THAWED");
    }

    fx.leaf.delete().expect("delete");
    for root in mode.hierarchies() {
        assert!(!root.join(fx.leaf.rel_path()).exists(), "{} still there", root.display());
    }
    fx.parent.delete().expect("delete");
    for root in mode.hierarchies() {
        assert!(!root.join(fx.parent.rel_path()).exists(), "{} still there", root.display());
    }
    fx.leaf.delete().expect("delete");
}

#[test]
fn cgroups_v1_host_oom_kill_is_seen() {
    let Some(mode) = require_v1_host("cgroups_v1_host_oom_kill_is_seen") else { return };
    let mut fx = Fixture::new(&mode);
    // The memsw limit is written only where swap accounting exists.
    let res = Resources { memory_limit_bytes: 16 * MIB, memory_swap_limit_bytes: 16 * MIB, ..Default::default() };
    fx.leaf.apply(&res).expect("apply");
    fx.spawn_inside("dd if=/dev/zero of=/dev/null bs=64M count=1");
    let status = fx.child().wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "dd should be OOM-killed: {status:?}");
    wait_until("oom_kill in memory.oom_control", || fx.leaf.oom_killed().expect("oom killed"));
    assert!(fx.leaf.stats().expect("stats").oom_kills >= 1);
}

#[test]
fn cgroups_v1_host_rejected_value_names_file_and_value() {
    let Some(mode) = require_v1_host("cgroups_v1_host_rejected_value_names_file_and_value") else { return };
    let fx = Fixture::new(&mode);
    // The kernel's CFS quota minimum is 1 ms.
    let err = fx.leaf.apply(&Resources { cpu_quota: 10, ..Default::default() }).expect_err("apply should fail");
    let CgroupError::Write { path, value, source } = &err else { panic!("{err:?}") };
    assert!(path.ends_with("c1/cpu.cfs_quota_us"), "{err:?}");
    assert_eq!(value, "10");
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
    assert!(err.to_string().starts_with("write \"10\" to /sys/fs/cgroup/"), "{err}");
}
