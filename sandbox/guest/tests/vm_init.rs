//! The VM's PID 1 without a VM: `crius-guest` with no arguments as PID 1 of
//! fresh PID, mount, network, UTS, IPC and cgroup namespaces (the cgroup
//! namespace rooted at a scratch cgroup2 directory, so that the cgroup2 it
//! mounts is that directory). It must mount what containers need, listen on
//! vsock, and at SIGTERM stop the server and power off, which in a PID
//! namespace ends its PID 1 with SIGINT. No host connection: this machine
//! has no vsock transport to connect over.
//! Root and `unshare` (util-linux) are needed, and a cgroup2 mount.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cgroup2 mount point of this host, if any.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let target = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(target))
    })
}

#[test]
fn vm_init_mounts_listens_on_vsock_and_powers_off_at_sigterm() {
    let test = "vm_init_mounts_listens_on_vsock_and_powers_off_at_sigterm";
    if !testkit::require_root(test) || !testkit::require_tool(test, "unshare", "util-linux") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        testkit::skip(test, testkit::ROOT, "needs a cgroup2 mount");
        return;
    };
    let scratch = root.join(format!("crius-guest-vm-test-{}", std::process::id()));
    fs::create_dir(&scratch).expect("scratch cgroup");
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("console.log");
    let log = fs::File::create(&log_path).expect("log");
    // Into the scratch cgroup first, then new namespaces; the agent is PID 1.
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec unshare --pid --fork --mount --net --uts --ipc --cgroup '{}'",
        scratch.display(),
        support::guest_binary().display()
    );
    let mut unshare = Command::new("sh")
        .args(["-c", &script])
        .env("CRIUS_GUEST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare");
    let console = || fs::read_to_string(&log_path).unwrap_or_default();
    let serving = support::wait_until(|| console().contains("guest agent serving"));
    let children = fs::read_to_string(format!("/proc/{}/task/{}/children", unshare.id(), unshare.id()));
    let pid1: i32 = children.unwrap_or_default().split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let mounts = fs::read_to_string(format!("/proc/{pid1}/mountinfo")).unwrap_or_default();
    let stopped = pid1 > 0 && kill(Pid::from_raw(pid1), Signal::SIGTERM).is_ok();
    let deadline = Instant::now() + support::TIMEOUT;
    let status = loop {
        match unshare.try_wait().expect("wait") {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if status.is_none() {
        let _ = unshare.kill();
        let _ = unshare.wait();
    }
    let _ = fs::remove_dir(&scratch);
    let console = console();
    assert!(serving, "the server did not start:\n{console}");
    assert!(stopped, "no PID 1 to signal");
    assert!(status.is_some(), "PID 1 did not end after SIGTERM:\n{console}");
    assert!(console.contains("listen=Vsock(1024)"), "{console}");
    let targets: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    for wanted in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp", "/sys/fs/cgroup"] {
        assert!(targets.contains(&wanted), "{wanted} not mounted: {targets:?}");
    }
    assert!(console.contains("powering off"), "{console}");
}
