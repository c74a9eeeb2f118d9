//! Privileged: `ns::exec::run` runs commands in a real, running container.
//!
//! The container is made as `init_run.rs` makes it: this test binary
//! re-executed (`exec_init_child`) becomes the container through
//! `ns::init::run`, in namespaces pinned by an `unshare --uts --net --ipc
//! sleep` helper, with a rootfs of read-only binds of the host's `/usr`,
//! `/bin`, `/lib`…, and runs `sleep 30`. The test moves it into a cgroup of
//! its own and writes `init.pid` as the monitor would. With
//! `own_pid_ns` it starts under `unshare --pid --fork`, so the container's
//! process is PID 1 of a PID namespace (the monitor does not make one yet).
//! The exec helper is this binary re-executed again (`exec_helper_child`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crius_sandbox::cgroups::{Cgroup, detect_host};
use crius_sandbox::mounts::{MountSpec, RootfsSpec};
use crius_sandbox::ns::exec::{self, ExecRequest};
use crius_sandbox::ns::init::{InitError, READY_FD_ENV};
use crius_sandbox::ns::spec::{CapabilitySpec, ContainerSpec, INIT_PID_FILE, NamespaceSpec, ProcessSpec, UserSpec};
use crius_sandbox::seccomp::SeccompProfile;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod common;

use common::{Fixture, PinnedNs, default_caps};
use testkit::require_root;

/// Set in the container child: the bundle directory.
const INIT_ENV: &str = "CRIUS_EXEC_TEST_INIT_BUNDLE";
/// Set in the exec helper child: the bundle directory.
const EXEC_BUNDLE_ENV: &str = "CRIUS_EXEC_TEST_BUNDLE";
/// Set in the exec helper child: the request file.
const EXEC_REQUEST_ENV: &str = "CRIUS_EXEC_TEST_REQUEST";
const TIMEOUT: Duration = Duration::from_secs(20);
const HOSTNAME: &str = "exec-test";

/// The tests spawn processes that inherit a pipe: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Numbers the cgroups and request files.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(10));
    }
    false
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pid")
}

/// A fixture whose rootfs holds `/exec-marker`, which the host lacks.
fn fixture() -> Fixture {
    let fx = Fixture::new();
    fs::write(fx.rootfs.join("exec-marker"), "inside\n").expect("write marker");
    assert!(!Path::new("/exec-marker").exists(), "the host has /exec-marker");
    fx
}

fn default_cap_bits() -> String {
    let caps = crius_sandbox::caps::effective_set(&[], &[], false, &[]).expect("default caps");
    let bits: u64 = caps.effective.iter().map(|c| 1u64 << c.index()).sum();
    format!("{bits:016x}")
}

fn spec(fx: &Fixture, ns: NamespaceSpec) -> ContainerSpec {
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
        id: "exec-test".to_owned(),
        rootfs,
        process: ProcessSpec {
            args: vec!["sleep".to_owned(), "30".to_owned()],
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
        hostname: Some(HOSTNAME.to_owned()),
        cgroup: None,
        sysctls: Default::default(),
        log_path: None,
    }
}

/// `<pid> <start time>`, as the monitor writes pid files.
fn pid_line(pid: i32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let start = stat[stat.rfind(')').expect("comm") + 1..].split_whitespace().nth(19).expect("start time");
    format!("{pid} {start}\n")
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s[s.rfind(')')? + 1..].split_whitespace().next().map(|st| st != "Z" && st != "X"))
        .unwrap_or(false)
}

fn exe_is_sleep(pid: i32) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
}

/// A started container running `sleep 30`, in a cgroup of its own. Killed,
/// reaped and its cgroup removed on drop.
struct Container {
    launcher: Child,
    init_pid: i32,
    cgroup: Cgroup,
    log: PathBuf,
}

impl Container {
    fn start(fx: &Fixture, spec: &ContainerSpec, own_pid_ns: bool) -> Container {
        let json = serde_json::to_vec_pretty(spec).expect("serialize spec");
        fs::write(fx.bundle.join("config.json"), json).expect("write config.json");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let rel = format!("crius-exec-test-{}-{n}", std::process::id());
        let cgroup = Cgroup::create(&detect_host().expect("cgroup mode"), &rel).expect("create cgroup");

        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        fcntl(&ready_w, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear cloexec");
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = if own_pid_ns {
            let mut cmd = Command::new("unshare");
            cmd.args(["--pid", "--fork", "--kill-child", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        let log = fx.dir.join("init.log");
        let log_file = File::create(&log).expect("create init.log");
        let launcher = cmd
            .args(["--exact", "exec_init_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(INIT_ENV, &fx.bundle)
            .env(READY_FD_ENV, ready_w.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn container");
        drop(ready_w);
        let mut container = Container { launcher, init_pid: 0, cgroup, log };

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [1u8; 1];
            let _ = tx.send(File::from(ready_r).read(&mut byte).map(|n| n == 1 && byte == [0]));
        });
        let ready = matches!(rx.recv_timeout(TIMEOUT), Ok(Ok(true)));
        assert!(ready, "container not ready:\n{}", container.log());

        let launcher_pid = pid_of(&container.launcher);
        container.init_pid = if own_pid_ns {
            let mut found = Vec::new();
            assert!(
                wait_for(|| {
                    found = children(launcher_pid);
                    !found.is_empty()
                }),
                "no child of unshare"
            );
            found[0]
        } else {
            launcher_pid
        };
        container.cgroup.add_process(container.init_pid).expect("move init into the cgroup");
        fs::write(fx.bundle.join(INIT_PID_FILE), pid_line(container.init_pid)).expect("write init.pid");
        let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fx.bundle.join("start"));
        fifo.and_then(|mut f| f.write_all(b"s")).expect("write the start fifo");
        assert!(wait_for(|| exe_is_sleep(container.init_pid)), "container did not exec sleep:\n{}", container.log());
        container
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the container and reaps it; `false` if its process is left.
    fn stop(&mut self) -> bool {
        let pid = std::mem::take(&mut self.init_pid);
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        pid == 0 || wait_for(|| !running(pid))
    }

    fn cgroup_of(&self) -> Vec<String> {
        let text = fs::read_to_string(format!("/proc/{}/cgroup", self.init_pid)).expect("container cgroup");
        text.lines().map(str::to_owned).collect()
    }

    fn ns(&self, kind: &str) -> String {
        fs::read_link(format!("/proc/{}/ns/{kind}", self.init_pid)).expect("ns link").display().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let stopped = self.stop();
        let deleted = self.cgroup.delete();
        if !std::thread::panicking() {
            assert!(stopped, "the container's process is left");
            deleted.expect("the container's cgroup is empty and removed");
        }
    }
}

/// Writes `request` to a file and starts the exec helper with it.
fn spawn_exec(fx: &Fixture, request: &ExecRequest) -> Child {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = fx.dir.join(format!("request-{n}.json"));
    fs::write(&path, serde_json::to_vec(request).expect("encode request")).expect("write request");
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "exec_helper_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(EXEC_BUNDLE_ENV, &fx.bundle)
        .env(EXEC_REQUEST_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec helper")
}

/// What one exec gave.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The value of the first `KEY=value` or `Key:\tvalue` line of stdout.
    fn value(&self, key: &str) -> Option<String> {
        self.stdout.lines().find_map(|l| {
            let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    }

    /// Every `KEY=value` line's value, in order.
    fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).collect()
    }
}

/// Runs the exec helper to its end (killed after a minute).
fn run_exec(fx: &Fixture, args: &[&str], env_extra: &[&str]) -> Outcome {
    let request = ExecRequest {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env_extra: env_extra.iter().map(|a| (*a).to_owned()).collect(),
        tty: false,
    };
    let child = spawn_exec(fx, &request);
    let pid = Pid::from_raw(pid_of(&child));
    let (tx, rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    });
    let output: Output = child.wait_with_output().expect("wait for the exec helper");
    drop(tx);
    watchdog.join().expect("watchdog");
    let outcome = Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    println!("--- exec {args:?}: {:?}\n--- stdout\n{}--- stderr\n{}", output.status, outcome.stdout, outcome.stderr);
    outcome
}

const PROBE: &str = r#"echo HOST=$(hostname); echo UID=$(id -u); echo GROUPS=$(id -G); echo PWD=$(pwd)
echo FOO=$FOO; echo EXTRA=$EXTRA; echo MARK=$(cat /exec-marker)
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
for ns in ipc uts net mnt pid; do echo NS_$ns=$(readlink /proc/self/ns/$ns); done
sed 's/^/CG=/' /proc/self/cgroup; exit 7"#;

#[test]
fn exec_runs_in_the_container_namespaces_and_cgroup() {
    if !require_root("exec_runs_in_the_container_namespaces_and_cgroup") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = fixture();
    let mut spec = spec(&fx, pinned.spec());
    spec.process.user = UserSpec { uid: 1000, gid: 1000, additional_gids: vec![50] };
    spec.process.cwd = "/home/app".to_owned();
    {
        let container = Container::start(&fx, &spec, false);
        let out = run_exec(&fx, &["sh", "-c", PROBE], &["EXTRA=yes", "FOO=baz"]);
        assert_eq!(out.code, Some(7), "exit code");
        let expected = [
            ("HOST", HOSTNAME),
            ("UID", "1000"),
            ("GROUPS", "1000 50"),
            ("PWD", "/home/app"),
            ("FOO", "baz"),
            ("EXTRA", "yes"),
            ("MARK", "inside"),
            ("CapEff", "0000000000000000"),
            ("NoNewPrivs", "0"),
            ("Seccomp", "2"),
        ];
        for (key, want) in expected {
            assert_eq!(out.value(key).as_deref(), Some(want), "{key}");
        }
        for ns in ["ipc", "uts", "net", "mnt", "pid"] {
            assert_eq!(out.value(&format!("NS_{ns}")), Some(container.ns(ns)), "{ns} namespace");
        }
        assert_eq!(out.values("CG"), container.cgroup_of(), "cgroups");
        assert!(container.cgroup_of().iter().any(|l| l.ends_with(container.cgroup.rel_path())));
        assert_eq!(container.cgroup.pids().expect("cgroup pids"), [container.init_pid], "exec process left");
    }
    assert_eq!(fx.host_mounts(), Vec::<String>::new(), "mounts left on the host");
}

#[test]
fn exec_joins_the_container_pid_namespace() {
    if !require_root("exec_joins_the_container_pid_namespace") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = fixture();
    let mut spec = spec(&fx, pinned.spec());
    spec.process.no_new_privileges = true;
    {
        let container = Container::start(&fx, &spec, true);
        let own_pidns = fs::read_link("/proc/self/ns/pid").expect("own pid ns").display().to_string();
        assert_ne!(container.ns("pid"), own_pidns, "the container has no PID namespace of its own");
        let script = r#"hostname; id -u; cat /proc/self/status | grep -E "^(CapEff|NoNewPrivs|Seccomp)"
echo EXE=$(readlink /proc/1/exe); echo PIDNS=$(readlink /proc/self/ns/pid); echo MARK=$(cat /exec-marker); exit 7"#;
        let out = run_exec(&fx, &["sh", "-c", script], &[]);
        assert_eq!(out.code, Some(7), "exit code");
        assert!(out.stdout.lines().any(|l| l == HOSTNAME), "hostname");
        assert!(out.stdout.lines().any(|l| l == "0"), "uid");
        assert_eq!(out.value("CapEff"), Some(default_cap_bits()), "CapEff");
        assert_eq!(out.value("NoNewPrivs").as_deref(), Some("1"), "NoNewPrivs");
        assert_eq!(out.value("Seccomp").as_deref(), Some("2"), "Seccomp");
        let exe = out.value("EXE").unwrap_or_default();
        assert!(exe.ends_with("/sleep"), "/proc/1/exe is {exe:?}, not the container's sleep");
        assert_eq!(out.value("PIDNS"), Some(container.ns("pid")), "pid namespace");
        assert_eq!(out.value("MARK").as_deref(), Some("inside"), "mount namespace");
    }
    assert_eq!(fx.host_mounts(), Vec::<String>::new(), "mounts left on the host");
}

#[test]
fn exec_failures_are_reported() {
    if !require_root("exec_failures_are_reported") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = fixture();
    let spec = spec(&fx, pinned.spec());
    {
        let mut container = Container::start(&fx, &spec, false);
        let out = run_exec(&fx, &["nope-not-here", "x"], &[]);
        assert_eq!(out.code, Some(127), "missing program in PATH");
        assert!(out.stderr.contains("exec nope-not-here: executable file not found in PATH /usr/bin:/bin"));
        let out = run_exec(&fx, &["/bin/nope"], &[]);
        assert_eq!(out.code, Some(127), "missing program");
        assert!(out.stderr.contains("exec /bin/nope: No such file or directory"));
        let out = run_exec(&fx, &["/exec-marker"], &[]);
        assert_eq!(out.code, Some(126), "not executable");
        assert!(out.stderr.contains("exec /exec-marker: Permission denied"));
        let out = run_exec(&fx, &["sh", "-c", "kill -TERM $$"], &[]);
        assert_eq!(out.code, Some(128 + libc::SIGTERM), "killed by a signal");

        let tty = spawn_exec(&fx, &ExecRequest { args: vec!["sh".into()], env_extra: vec![], tty: true });
        let tty_out = tty.wait_with_output().expect("wait");
        assert_eq!(tty_out.status.code(), Some(exec::EXIT_SETUP_FAILED), "tty without a terminal");
        assert!(String::from_utf8_lossy(&tty_out.stderr).contains("not the console socket"), "{tty_out:?}");

        assert!(container.stop(), "the container's process is left");
        let out = run_exec(&fx, &["true"], &[]);
        assert_eq!(out.code, Some(exec::EXIT_SETUP_FAILED), "stopped container");
        assert!(out.stderr.contains("is not running"), "stopped container");
    }
    assert_eq!(fx.host_mounts(), Vec::<String>::new(), "mounts left on the host");
}

#[test]
fn exec_command_dies_with_the_helper() {
    if !require_root("exec_command_dies_with_the_helper") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pinned = PinnedNs::start();
    let fx = fixture();
    let spec = spec(&fx, pinned.spec());
    {
        let container = Container::start(&fx, &spec, false);
        let request = ExecRequest { args: vec!["sleep".into(), "30".into()], ..Default::default() };
        let mut helper = spawn_exec(&fx, &request);
        let helper_pid = pid_of(&helper);
        let mut command = None;
        let found = wait_for(|| {
            command = children(helper_pid).into_iter().find(|&c| exe_is_sleep(c));
            command.is_some()
        });
        assert!(found, "the exec'd sleep did not start");
        let command = command.expect("command pid");
        assert!(container.cgroup.pids().expect("cgroup pids").contains(&command), "command in the cgroup");
        helper.kill().expect("kill the helper");
        let status = helper.wait().expect("wait for the helper");
        assert_eq!(status.code(), None, "helper killed");
        assert!(wait_for(|| !running(command)), "the command outlived the helper");
    }
    assert_eq!(fx.host_mounts(), Vec::<String>::new(), "mounts left on the host");
}

/// The container half: not a test on its own (ignored, and a no-op without
/// the environment the parent sets). Becomes the container, or prints why not.
#[test]
#[ignore = "child half of the exec_* tests: the container"]
fn exec_init_child() {
    let Some(bundle) = std::env::var_os(INIT_ENV) else { return };
    println!();
    let err = crius_sandbox::ns::init::run(Path::new(&bundle));
    eprintln!("init: {}", err.report());
    std::process::exit(if matches!(err, InitError::Exec { .. } | InitError::NotInPath { .. }) { 127 } else { 1 });
}

/// The exec helper half: `crius internal exec <bundle> <request.json>`.
#[test]
#[ignore = "child half of the exec_* tests: the exec helper"]
fn exec_helper_child() {
    let (Some(bundle), Some(request)) = (std::env::var_os(EXEC_BUNDLE_ENV), std::env::var_os(EXEC_REQUEST_ENV)) else {
        return;
    };
    // Ends libtest's "test exec_helper_child ... " line.
    println!();
    let err = match ExecRequest::load(Path::new(&request)) {
        Ok(request) => exec::run(Path::new(&bundle), &request),
        Err(e) => e,
    };
    eprintln!("exec: {}", err.report());
    std::process::exit(err.exit_code());
}
