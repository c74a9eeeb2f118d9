//! Privileged: `ns::init::run` runs a real container. The test binary
//! re-executes itself (`init_child`), and that child becomes the container:
//! namespaces pinned by an `unshare --uts --net --ipc sleep` helper, a rootfs
//! made of read-only binds of the host's `/usr`, `/bin`, `/lib`…, the start
//! FIFO, the readiness pipe. The parent checks what the container printed
//! and that nothing is left behind (mounts, processes).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use crius_sandbox::mounts::{MountSpec, RootfsSpec};
use crius_sandbox::ns::init::{InitError, READY_FD_ENV};
use crius_sandbox::ns::spec::{CapabilitySpec, ContainerSpec, NamespaceSpec, ProcessSpec, UserSpec};
use crius_sandbox::seccomp::SeccompProfile;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

mod common;

use common::{Fixture, PinnedNs, default_caps};
use testkit::require_root;

/// Set in the child: the bundle directory.
const CHILD_ENV: &str = "CRIUS_INIT_TEST_BUNDLE";

/// The tests spawn processes that inherit a pipe: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn spec(fx: &Fixture, ns: NamespaceSpec, args: &[&str]) -> ContainerSpec {
    let mut rootfs = RootfsSpec::new(&fx.rootfs);
    for dir in ["/usr", "/bin", "/lib", "/lib64", "/sbin"].into_iter().filter(|d| Path::new(d).exists()) {
        rootfs.mounts.push(MountSpec {
            source: dir.into(),
            destination: dir.to_owned(),
            readonly: true,
            ..Default::default()
        });
    }
    let caps = default_caps();
    ContainerSpec {
        id: "init-test".to_owned(),
        rootfs,
        process: ProcessSpec {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec!["FOO=bar".to_owned(), "PATH=/usr/bin:/bin".to_owned()],
            cwd: "/".to_owned(),
            user: UserSpec::default(),
            terminal: false,
            stdin: false,
            stdin_once: false,
            no_new_privileges: false,
            capabilities: CapabilitySpec {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
                inheritable: Vec::new(),
                ambient: Vec::new(),
            },
            seccomp: SeccompProfile::RuntimeDefault,
            apparmor_profile: None,
            rlimits: Vec::new(),
            oom_score_adj: None,
        },
        namespaces: ns,
        hostname: Some("init-test".to_owned()),
        cgroup: None,
        sysctls: BTreeMap::new(),
        log_path: None,
    }
}

/// What one container run gave.
#[derive(Debug)]
struct Outcome {
    /// The readiness byte came.
    ready: bool,
    /// Init reported ready with a start error: why.
    start_error: Option<String>,
    output: Output,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// `KEY=value` and `Key:\tvalue` lines of stdout.
    fn values(&self) -> BTreeMap<String, String> {
        let stdout = self.stdout();
        stdout
            .lines()
            .filter_map(|l| l.split_once('=').or_else(|| l.split_once(':')))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }
}

/// Runs `spec` in a child; once it reports ready, calls `before_start` and
/// writes one byte to the start FIFO if it returns true, else closes it
/// empty (the agent giving up). Kills the child after a minute.
fn run_container(fx: &Fixture, spec: &ContainerSpec, before_start: impl FnOnce() -> bool) -> Outcome {
    let json = serde_json::to_vec_pretty(spec).expect("serialize spec");
    fs::write(fx.bundle.join("config.json"), json).expect("write config.json");
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
    fcntl(&ready_w, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear cloexec");
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", "init_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &fx.bundle)
        .env(READY_FD_ENV, ready_w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    drop(ready_w);
    let (cancel, watchdog) = watchdog(&child);
    let mut report = Vec::new();
    File::from(ready_r).read_to_end(&mut report).expect("read readiness");
    let ready = !report.is_empty();
    let start_error = (report.first() == Some(&crius_sandbox::ns::init::START_ERROR_MARK))
        .then(|| String::from_utf8_lossy(&report[1..]).into_owned());
    if ready {
        if start_error.is_none() {
            assert_eq!(report, [0], "readiness byte");
        }
        let start: &[u8] = if before_start() { b"s" } else { b"" };
        let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fx.bundle.join("start"));
        fifo.and_then(|mut f| f.write_all(start)).expect("write the start fifo");
    }
    let output = child.wait_with_output().expect("wait for child");
    drop(cancel);
    watchdog.join().expect("watchdog");
    let outcome = Outcome { ready, start_error, output };
    println!("--- child {:?}\n--- stdout\n{}--- stderr\n{}", outcome.output.status, outcome.stdout(), outcome.stderr());
    assert_eq!(fx.host_mounts(), Vec::<String>::new(), "mounts left on the host");
    outcome
}

/// Kills `child` unless the returned sender is dropped within a minute.
fn watchdog(child: &Child) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    (tx, handle)
}

const PROBE: &str = r#"echo FOO=$FOO; echo HOST=$(hostname); echo UID=$(id -u); echo GID=$(id -g); echo GROUPS=$(id -G)
echo PWD=$(pwd); echo NOFILE=$(ulimit -n)/$(ulimit -H -n); echo OOM=$(cat /proc/self/oom_score_adj)
echo FWD=$(cat /proc/sys/net/ipv4/ip_forward); echo SHMMNI=$(cat /proc/sys/kernel/shmmni)
grep -E '^(CapEff|NoNewPrivs|Seccomp|SigIgn|SigBlk):' /proc/self/status"#;

fn current_oom_score_adj() -> i32 {
    fs::read_to_string("/proc/self/oom_score_adj").expect("read oom_score_adj").trim().parse().expect("number")
}

fn assert_values(outcome: &Outcome, expected: &[(&str, String)]) {
    let values = outcome.values();
    for (key, want) in expected {
        assert_eq!(values.get(*key), Some(want), "{key} in:\n{}", outcome.stdout());
    }
}

#[test]
fn init_run_unprivileged_user() {
    if !require_root("init_run_unprivileged_user") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = Fixture::new();
    let mut spec = spec(&fx, pinned.spec(), &["sh", "-c", PROBE]);
    spec.process.user = UserSpec { uid: 1000, gid: 1000, additional_gids: vec![50] };
    spec.process.cwd = "/work/dir".to_owned();
    spec.process.rlimits = vec![("RLIMIT_NOFILE".to_owned(), 1000, 2000)];
    spec.process.oom_score_adj = Some(-500);
    spec.sysctls = [("net.ipv4.ip_forward", "1"), ("kernel.shmmni", "1234")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let outcome = run_container(&fx, &spec, || true);
    assert!(outcome.ready && outcome.output.status.success(), "container failed");
    assert_values(
        &outcome,
        &[
            ("FOO", "bar".to_owned()),
            ("HOST", "init-test".to_owned()),
            ("UID", "1000".to_owned()),
            ("GID", "1000".to_owned()),
            ("GROUPS", "1000 50".to_owned()),
            ("PWD", "/work/dir".to_owned()),
            ("NOFILE", "1000/2000".to_owned()),
            ("OOM", (-500).max(current_oom_score_adj()).to_string()),
            ("FWD", "1".to_owned()),
            ("SHMMNI", "1234".to_owned()),
            ("CapEff", "0000000000000000".to_owned()),
            ("NoNewPrivs", "0".to_owned()),
            ("Seccomp", "2".to_owned()),
            ("SigIgn", "0000000000000000".to_owned()),
            ("SigBlk", "0000000000000000".to_owned()),
        ],
    );
    for dir in ["work", "work/dir"] {
        let meta = fs::metadata(fx.rootfs.join(dir)).expect("cwd created");
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{dir} owned by the user");
    }
    let host_hostname = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_ne!(host_hostname.trim(), "init-test", "the host's hostname changed");
}

#[test]
fn init_run_root_no_new_privileges() {
    if !require_root("init_run_root_no_new_privileges") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = Fixture::new();
    let mut spec = spec(&fx, pinned.spec(), &["/bin/sh", "-c", PROBE]);
    spec.process.no_new_privileges = true;
    spec.process.oom_score_adj = Some(500);
    let outcome = run_container(&fx, &spec, || true);
    assert!(outcome.ready && outcome.output.status.success(), "container failed");
    let caps = crius_sandbox::caps::effective_set(&[], &[], false, &[]).expect("default caps");
    let bits: u64 = caps.effective.iter().map(|c| 1u64 << c.index()).sum();
    assert_values(
        &outcome,
        &[
            ("UID", "0".to_owned()),
            ("GROUPS", "0".to_owned()),
            ("PWD", "/".to_owned()),
            ("OOM", "500".to_owned()),
            ("CapEff", format!("{bits:016x}")),
            ("NoNewPrivs", "1".to_owned()),
            ("Seccomp", "2".to_owned()),
        ],
    );
}

#[test]
fn init_run_waits_for_the_start_fifo() {
    if !require_root("init_run_waits_for_the_start_fifo") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = Fixture::new();
    let spec = spec(&fx, pinned.spec(), &["touch", "/marker"]);
    let marker = fx.rootfs.join("marker");
    let outcome = run_container(&fx, &spec, || {
        std::thread::sleep(Duration::from_millis(300));
        assert!(!marker.exists(), "the process ran before StartContainer");
        true
    });
    assert!(outcome.ready && outcome.output.status.success(), "container failed");
    assert!(marker.is_file(), "the process did not run after the start fifo was written");

    // The agent gives up: it closes the FIFO without writing. init exits 1, quietly.
    fs::remove_file(&marker).expect("remove marker");
    let outcome = run_container(&fx, &spec, || false);
    assert!(outcome.ready, "not ready");
    assert_eq!(outcome.output.status.code(), Some(1), "exit status");
    assert!(outcome.stderr().is_empty(), "init printed something");
    assert!(!marker.exists(), "the process ran without a start byte");
}

#[test]
fn init_run_failures_are_reported() {
    if !require_root("init_run_failures_are_reported") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = Fixture::new();
    let mut spec = spec(&fx, pinned.spec(), &["true"]);
    spec.sysctls.insert("vm.swappiness".to_owned(), "10".to_owned());
    let outcome = run_container(&fx, &spec, || true);
    assert!(!outcome.ready, "a failed set-up is not reported ready");
    assert!(!outcome.output.status.success(), "exit status");
    let message = "sysctl vm.swappiness: not a namespaced sysctl";
    assert!(outcome.stderr().contains(message), "stderr lacks {message:?}");
}

/// A program that does not exist is not a set-up failure: init reports
/// ready with the start error, waits for the start and exits 128 (the
/// monitor records why; StartContainer fails with it).
#[test]
fn missing_programs_are_start_errors() {
    if !require_root("missing_programs_are_start_errors") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let cases: [(&str, &[&str]); 2] = [
        ("exec /bin/nope: No such file or directory", &["/bin/nope"]),
        ("exec nope: executable file not found in PATH /usr/bin:/bin", &["nope"]),
    ];
    for (message, args) in cases {
        let fx = Fixture::new();
        let spec = spec(&fx, pinned.spec(), args);
        let outcome = run_container(&fx, &spec, || true);
        let start_error = outcome.start_error.as_deref().unwrap_or_else(|| panic!("{message}: no start error"));
        assert!(start_error.contains(message), "start error {start_error:?} lacks {message:?}");
        assert_eq!(outcome.output.status.code(), Some(128), "{message}: exit status");
    }
}

/// The child half: not a test on its own (ignored, and a no-op without the
/// environment the parent sets). Becomes the container, or prints why not.
#[test]
#[ignore = "child half of the init_run_* tests"]
fn init_child() {
    let Some(bundle) = std::env::var_os(CHILD_ENV) else { return };
    // Ends libtest's "test init_child ... " line: the container's output starts on its own line.
    println!();
    let err = crius_sandbox::ns::init::run(Path::new(&bundle));
    eprintln!("init: {}", err.report());
    std::process::exit(if matches!(err, InitError::Exec { .. } | InitError::NotInPath { .. }) { 127 } else { 1 });
}
