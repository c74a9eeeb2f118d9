//! The monitor end to end, as root (skipped otherwise, through `testkit`):
//! the real `monitor::run` (this test binary re-executed as the ignored test
//! `child_monitor`) and the real host API (`ns::container`), with a fake
//! init: a bash script that follows init's protocol (ready byte on
//! `$CRIUS_INIT_READY_FD`, block on the start FIFO, then exec the container
//! command).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crius_sandbox::cgroups::{Cgroup, DEFAULT_PARENT, detect_host};
use crius_sandbox::logs::{Stream, parse_line};
use crius_sandbox::mounts::RootfsSpec;
use crius_sandbox::ns::container::{self, ContainerError, Created, State, read_pid_file};
use crius_sandbox::ns::monitor;
use crius_sandbox::ns::spec::{
    CapabilitySpec, ContainerSpec, ExitStatus, INIT_PID_FILE, MONITOR_PID_FILE, NamespaceSpec, ProcessSpec, UserSpec,
};
use crius_sandbox::seccomp::SeccompProfile;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;
use testkit::require_root;

const STAGE_ENV: &str = "CRIUS_TEST_MONITOR_STAGE";
const CREATE_DIR_ENV: &str = "CRIUS_TEST_CREATE_DIR";
const TIMEOUT: Duration = Duration::from_secs(20);

/// The monitor process of the tests (`monitor.sh` execs it). Stage 1 blocks
/// `SIGUSR1` and re-execs, so that every libtest thread of stage 2 starts with
/// it blocked (as the single-threaded production monitor has it), then stage 2
/// runs the real monitor.
#[test]
#[ignore = "entry point of the monitor processes the other tests start"]
fn child_monitor() {
    let (Some(bundle), Some(init)) = (std::env::var_os("CRIUS_TEST_BUNDLE"), std::env::var_os("CRIUS_TEST_INIT"))
    else {
        return;
    };
    if std::env::var_os(STAGE_ENV).is_none() {
        let mut usr1 = SigSet::empty();
        usr1.add(Signal::SIGUSR1);
        usr1.thread_block().expect("block SIGUSR1");
        let exe = CString::new(std::env::current_exe().expect("exe").into_os_string().into_vec()).expect("exe");
        let mut args = vec![exe.clone()];
        for a in ["--exact", "child_monitor", "--ignored", "--nocapture", "--test-threads=1"] {
            args.push(CString::new(a).expect("arg"));
        }
        let mut env: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).expect("env"))
            .collect();
        env.push(CString::new(format!("{STAGE_ENV}=2")).expect("env"));
        let Err(e) = nix::unistd::execve(&exe, &args, &env);
        panic!("execve: {e}");
    }
    let err = monitor::run(Path::new(&bundle), Path::new(&init));
    eprintln!("monitor: {err}");
    std::process::exit(1);
}

/// A middle process that creates and starts a container, then exits.
#[test]
#[ignore = "entry point of the short-lived parent in survives_its_parents_death"]
fn child_create() {
    let Some(dir) = std::env::var_os(CREATE_DIR_ENV) else { return };
    let dir = PathBuf::from(dir);
    container::create(&dir.join("bundle"), &test_spec(&dir), &dir.join("monitor.sh"), TIMEOUT).expect("create");
    container::start(&dir.join("bundle")).expect("start");
    std::process::exit(0);
}

fn test_spec(dir: &Path) -> ContainerSpec {
    ContainerSpec {
        id: "c1".into(),
        rootfs: RootfsSpec::new(dir),
        process: ProcessSpec {
            args: vec!["/bin/sh".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: UserSpec::default(),
            terminal: false,
            stdin: false,
            stdin_once: false,
            no_new_privileges: false,
            capabilities: CapabilitySpec::default(),
            seccomp: SeccompProfile::Unconfined,
            apparmor_profile: None,
            rlimits: Vec::new(),
            oom_score_adj: None,
        },
        namespaces: NamespaceSpec::default(),
        hostname: None,
        cgroup: None,
        sysctls: Default::default(),
        log_path: Some(dir.join("ctr.log")),
    }
}

/// A temporary directory with `monitor.sh`, the fake `init.sh` (running
/// `pre_ready` before it reports ready) and `cmd.sh` (the container, with
/// `$D` set to the directory). Kills what is left on drop.
struct Fixture {
    dir: tempfile::TempDir,
    spec: ContainerSpec,
    /// Cgroups (below the default parent) to remove, leaf first.
    cgroups: Vec<String>,
}

impl Fixture {
    fn new(pre_ready: &str, cmd: &str) -> Fixture {
        // Orphaned monitors come back to this process, which reaps them.
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let exe = std::env::current_exe().expect("exe").display().to_string();
        let script = |name: &str, text: String| {
            let path = dir.path().join(name);
            fs::write(&path, text).expect("write script");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        script(
            "monitor.sh",
            format!(
                "#!/bin/sh\n[ \"$1 $2\" = 'internal monitor' ] || exit 2\nCRIUS_TEST_BUNDLE=\"$3\" \
                 CRIUS_TEST_INIT='{d}/init.sh' exec '{exe}' --exact child_monitor --ignored --nocapture \
                 --test-threads=1\n"
            ),
        );
        script(
            "init.sh",
            format!(
                "#!/bin/bash\n[ \"$1 $2\" = 'internal init' ] || {{ echo \"bad arguments: $*\" >&2; exit 2; }}\n\
                 b=\"$3\"\ncase \"$CRIUS_INIT_READY_FD\" in ''|0|1|2) echo bad ready fd >&2; exit 2;; esac\n\
                 {pre_ready}\nprintf 0 >&\"$CRIUS_INIT_READY_FD\" || exit 1\n\
                 eval \"exec $CRIUS_INIT_READY_FD>&-\"\nhead -c1 \"$b/start\" >/dev/null || exit 1\n\
                 exec /bin/sh '{d}/cmd.sh'\n"
            ),
        );
        fs::write(dir.path().join("cmd.sh"), format!("D='{d}'\n{cmd}\n")).expect("write cmd");
        let spec = test_spec(dir.path());
        Fixture { dir, spec, cgroups: Vec::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bundle(&self) -> PathBuf {
        self.path("bundle")
    }

    fn create(&self) -> Result<Created, ContainerError> {
        container::create(&self.bundle(), &self.spec, &self.path("monitor.sh"), TIMEOUT)
    }

    fn touch(&self, name: &str) {
        fs::write(self.path(name), "").expect("touch");
    }

    fn state(&self) -> State {
        container::state(&self.bundle()).expect("state")
    }

    fn wait_exit(&self) -> ExitStatus {
        let mut last = None;
        let found = wait_for(|| match self.state() {
            State::Exited(s) => {
                last = Some(s);
                true
            }
            _ => false,
        });
        assert!(found, "no exit: {:?}", self.state());
        last.expect("status")
    }

    fn records(&self, name: &str) -> Vec<(Stream, bool, String)> {
        let text = fs::read_to_string(self.path(name)).unwrap_or_default();
        text.split_terminator('\n')
            .map(|l| {
                let r = parse_line(l).unwrap_or_else(|| panic!("malformed record {l:?}"));
                (r.stream, r.partial, r.content.to_owned())
            })
            .collect()
    }

    fn wait_log(&self, name: &str, content: &str) {
        let found = wait_for(|| self.records(name).iter().any(|(_, _, c)| c == content));
        assert!(found, "{content:?} not in {:?}", self.records(name));
    }

    fn pids(&self) -> Vec<i32> {
        [MONITOR_PID_FILE, INIT_PID_FILE]
            .iter()
            .filter_map(|f| read_pid_file(&self.bundle().join(f)).ok())
            .map(|r| r.pid)
            .collect()
    }

    /// Asserts that the monitor and init are gone (reaped, not zombies).
    fn assert_no_process_left(&self) {
        assert_gone(&self.pids());
    }
}

fn assert_gone(pids: &[i32]) {
    for &pid in pids {
        let gone = wait_for(|| {
            container::reap(pid);
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "pid {pid} still there: {:?}", fs::read_to_string(format!("/proc/{pid}/stat")));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in [INIT_PID_FILE, MONITOR_PID_FILE] {
            if let Ok(r) = read_pid_file(&self.bundle().join(name))
                && r.is_alive()
            {
                let _ = kill(Pid::from_raw(r.pid), Signal::SIGKILL);
            }
        }
        for pid in self.pids() {
            wait_for(|| container::reap(pid) || !Path::new(&format!("/proc/{pid}")).exists());
        }
        if let Ok(mode) = detect_host() {
            for rel in &self.cgroups {
                let _ = Cgroup::open(&mode, rel).and_then(|c| c.delete());
            }
        }
    }
}

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

fn smaps_rollup(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let keep = ["Rss:", "Pss:", "Pss_Anon:", "Pss_File:", "Private_Dirty:"];
    text.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))).collect::<Vec<_>>().join(", ")
}

#[test]
fn monitor_runs_a_container_end_to_end() {
    if !require_root("monitor_runs_a_container_end_to_end") {
        return;
    }
    let mut fx = Fixture::new(
        "",
        r#"echo hello; echo world >&2; grep SigBlk /proc/self/status; ls /proc/self/fd | tr '\n' ' '; echo
while [ ! -e "$D/go" ]; do sleep 0.02; done; printf tail"#,
    );
    let cg_top = format!("{DEFAULT_PARENT}/monitor-test-{}", std::process::id());
    let cg_rel = format!("{cg_top}/c1");
    fx.spec.cgroup = Some(cg_rel.clone());
    fx.cgroups = vec![cg_rel.clone(), cg_top];
    let created = fx.create().expect("create");
    assert_eq!(fx.state(), State::Created { init_pid: created.init_pid });
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", created.init_pid)).expect("cgroup");
    assert!(cgroups.contains(&format!(":/{cg_rel}\n")), "{cgroups}");
    assert_eq!(fs::read(fx.path("ctr.log")).expect("log opened").len(), 0, "nothing runs before start");
    assert!(matches!(container::delete(&fx.bundle()), Err(ContainerError::BadState { state: "running", .. })));

    container::start(&fx.bundle()).expect("start");
    assert!(matches!(container::start(&fx.bundle()), Err(ContainerError::BadState { state: "already started", .. })));
    assert_eq!(fx.state(), State::Running { init_pid: created.init_pid });
    fx.wait_log("ctr.log", "world");
    println!(
        "monitor {} smaps_rollup (test binary as monitor): {}",
        created.monitor_pid,
        smaps_rollup(created.monitor_pid)
    );
    fx.touch("go");

    let status = fx.wait_exit();
    assert_eq!((status.exit_code, status.signal, status.init_error.as_deref()), (0, None, None));
    assert!(status.started_at_ns > 0 && status.finished_at_ns >= status.started_at_ns, "{status:?}");
    let records = fx.records("ctr.log");
    let stdout: Vec<_> = records.iter().filter(|r| r.0 == Stream::Stdout).cloned().collect();
    let out = |partial, text: &str| (Stream::Stdout, partial, text.to_owned());
    assert_eq!(
        stdout,
        vec![out(false, "hello"), out(false, "SigBlk:\t0000000000000000"), out(false, "0 1 2 3 "), out(true, "tail"),],
        "signal mask reset, no descriptor leaked, unfinished line as P"
    );
    assert_eq!(records.iter().filter(|r| r.0 == Stream::Stderr).count(), 1);
    assert!(records.contains(&(Stream::Stderr, false, "world".into())));

    container::delete(&fx.bundle()).expect("delete");
    assert!(!fx.bundle().exists());
    container::delete(&fx.bundle()).expect("delete again");
    assert_gone(&[created.monitor_pid, created.init_pid]);
}

#[test]
fn monitor_records_exit_codes_and_signals() {
    if !require_root("monitor_records_exit_codes_and_signals") {
        return;
    }
    let fx = Fixture::new("", "exit 3");
    fx.create().expect("create");
    container::start(&fx.bundle()).expect("start");
    let status = fx.wait_exit();
    assert_eq!((status.exit_code, status.signal), (3, None));
    fx.assert_no_process_left();

    let fx = Fixture::new("", "exec sleep 100");
    let created = fx.create().expect("create");
    container::start(&fx.bundle()).expect("start");
    container::kill(&fx.bundle(), Signal::SIGKILL).expect("kill");
    let status = fx.wait_exit();
    assert_eq!((status.exit_code, status.signal, status.init_error), (137, Some(9), None));
    container::kill(&fx.bundle(), Signal::SIGKILL).expect("kill after exit");
    fx.assert_no_process_left();
    assert_gone(&[created.monitor_pid, created.init_pid]);
}

#[test]
fn monitor_reports_init_failure() {
    if !require_root("monitor_reports_init_failure") {
        return;
    }
    let fx = Fixture::new("echo 'mount /proc: operation not permitted' >&2; exit 1", "exit 0");
    match fx.create() {
        Err(ContainerError::Init(msg)) => assert_eq!(msg, "mount /proc: operation not permitted"),
        other => panic!("unexpected {other:?}"),
    }
    match fx.state() {
        State::Exited(s) => assert_eq!(s.exit_code, 1),
        other => panic!("unexpected {other:?}"),
    }
    fx.assert_no_process_left();
    container::delete(&fx.bundle()).expect("delete");
}

#[test]
fn monitor_create_times_out_and_cleans_up() {
    if !require_root("monitor_create_times_out_and_cleans_up") {
        return;
    }
    let fx = Fixture::new("exec sleep 100", "exit 0");
    let err = container::create(&fx.bundle(), &fx.spec, &fx.path("monitor.sh"), Duration::from_millis(500));
    assert!(matches!(err, Err(ContainerError::Timeout { .. })), "{err:?}");
    fx.assert_no_process_left();
}

#[test]
fn monitor_start_after_init_died_fails() {
    if !require_root("monitor_start_after_init_died_fails") {
        return;
    }
    let fx = Fixture::new("", "exit 0");
    fx.create().expect("create");
    container::kill(&fx.bundle(), Signal::SIGKILL).expect("kill");
    assert_eq!(fx.wait_exit().exit_code, 137);
    let err = container::start(&fx.bundle());
    assert!(matches!(err, Err(ContainerError::BadState { state: "exited", .. })), "{err:?}");
    fx.assert_no_process_left();
}

#[test]
fn monitor_death_is_reported() {
    if !require_root("monitor_death_is_reported") {
        return;
    }
    let fx = Fixture::new("", "exit 0");
    let created = fx.create().expect("create");
    kill(Pid::from_raw(created.monitor_pid), Signal::SIGKILL).expect("kill monitor");
    let died =
        wait_for(|| matches!(fx.state(), State::Exited(ref s) if s.init_error.as_deref() == Some("monitor died")));
    assert!(died, "{:?}", fx.state());
    // init is orphaned, still signalable.
    container::kill(&fx.bundle(), Signal::SIGKILL).expect("kill init");
    fx.assert_no_process_left();
}

#[test]
fn monitor_survives_its_parents_death() {
    if !require_root("monitor_survives_its_parents_death") {
        return;
    }
    let fx = Fixture::new("", r#"echo before; while [ ! -e "$D/go" ]; do sleep 0.02; done; echo after; exit 7"#);
    let mut middle = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_create", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CREATE_DIR_ENV, fx.dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn middle");
    assert!(middle.wait().expect("wait middle").success());
    let monitor = read_pid_file(&fx.bundle().join(MONITOR_PID_FILE)).expect("monitor pid");
    assert!(monitor.is_alive(), "monitor gone with its parent {}", middle.id());
    let stat = fs::read_to_string(format!("/proc/{}/stat", monitor.pid)).expect("stat");
    let ppid: u32 =
        stat[stat.rfind(')').expect("comm") + 4..].split(' ').next().and_then(|p| p.parse().ok()).expect("ppid");
    assert_eq!(ppid, std::process::id(), "re-parented to the subreaper");
    fx.wait_log("ctr.log", "before");
    fx.touch("go");
    assert_eq!(fx.wait_exit().exit_code, 7);
    fx.wait_log("ctr.log", "after");
    fx.assert_no_process_left();
}

#[test]
fn monitor_reopens_the_log_on_sigusr1() {
    if !require_root("monitor_reopens_the_log_on_sigusr1") {
        return;
    }
    let fx = Fixture::new("", r#"echo one; while [ ! -e "$D/go" ]; do sleep 0.02; done; echo two"#);
    fx.create().expect("create");
    container::start(&fx.bundle()).expect("start");
    fx.wait_log("ctr.log", "one");
    fs::rename(fx.path("ctr.log"), fx.path("ctr.log.1")).expect("rotate");
    container::reopen_log(&fx.bundle(), TIMEOUT).expect("reopen");
    assert!(fx.path("ctr.log").exists());
    fx.touch("go");
    assert_eq!(fx.wait_exit().exit_code, 0);
    assert_eq!(fx.records("ctr.log.1"), vec![(Stream::Stdout, false, "one".to_owned())]);
    assert_eq!(fx.records("ctr.log"), vec![(Stream::Stdout, false, "two".to_owned())]);
    fx.assert_no_process_left();
}

#[test]
fn monitor_splits_long_lines() {
    if !require_root("monitor_splits_long_lines") {
        return;
    }
    let fx = Fixture::new("", r"head -c 20480 /dev/zero | tr '\0' x; echo; echo done");
    fx.create().expect("create");
    container::start(&fx.bundle()).expect("start");
    assert_eq!(fx.wait_exit().exit_code, 0);
    let x = |n| "x".repeat(n);
    assert_eq!(
        fx.records("ctr.log"),
        vec![
            (Stream::Stdout, true, x(16 * 1024)),
            (Stream::Stdout, false, x(4 * 1024)),
            (Stream::Stdout, false, "done".to_owned()),
        ]
    );
    fx.assert_no_process_left();
}

#[test]
fn monitor_copies_a_terminal() {
    if !require_root("monitor_copies_a_terminal") {
        return;
    }
    let mut fx = Fixture::new("", "echo hi; echo err >&2; [ -t 0 ] && [ -t 1 ] && echo tty");
    fx.spec.process.terminal = true;
    fx.create().expect("create");
    container::start(&fx.bundle()).expect("start");
    assert_eq!(fx.wait_exit().exit_code, 0);
    let out = |text: &str| (Stream::Stdout, false, text.to_owned());
    assert_eq!(fx.records("ctr.log"), vec![out("hi\r"), out("err\r"), out("tty\r")], "one stream, ONLCR kept");
    fx.assert_no_process_left();
}
