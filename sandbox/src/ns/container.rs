//! The host side of a namespace container: what the agent calls to create,
//! start, inspect, signal and delete one, through its bundle directory.
//!
//! [`create`] writes the bundle and starts `crius internal monitor <bundle>`
//! (see [`super::monitor`]) detached. The agent stays the monitor's parent
//! until it exits; dropping the `Child` does not reap it, so the agent reaps
//! exited monitors with [`reap`] (`waitpid(pid, WNOHANG)`), which [`state`]
//! and [`delete`] also do when they find the monitor gone. After an agent
//! restart the monitors are re-parented to init (or a subreaper) and reaped
//! there.
//!
//! Pid files hold `<pid> <start time>`, the start time being field 22 of
//! `/proc/<pid>/stat`, so a recycled pid is never taken for the process.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill as send_signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, mkfifo};

use super::monitor::{READY_FILE, STARTED_FILE, now_ns};
use super::spec::{
    ContainerSpec, EXIT_FILE, ExitStatus, INIT_PID_FILE, MONITOR_PID_FILE, SPEC_FILE, START_ERROR_FILE, START_FIFO,
};

/// How often [`create`] looks at the bundle while it waits.
const CREATE_POLL: Duration = Duration::from_millis(2);
/// How long [`start`] waits for a live init to open the start FIFO (it
/// reports ready just before it opens it).
const START_WAIT: Duration = Duration::from_secs(2);
/// How long [`create`] gives a monitor to exit once its init is gone.
const MONITOR_EXIT_WAIT: Duration = Duration::from_secs(2);

/// What [`create`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// The monitor (a child of the caller until it exits: [`reap`] it).
    pub monitor_pid: i32,
    /// The container's init, blocked on the start FIFO.
    pub init_pid: i32,
}

/// A container's state as its bundle tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The monitor runs but init has not reported ready yet.
    Creating {
        /// The monitor.
        monitor_pid: i32,
    },
    /// Ready and waiting for [`start`].
    Created {
        /// The container's init.
        init_pid: i32,
    },
    /// Started and not yet exited.
    Running {
        /// The container process.
        init_pid: i32,
    },
    /// Exited (or never ran: `init_error` says why). A monitor that died
    /// without writing `exit.json` is reported with exit code 255 and
    /// `init_error` "monitor died".
    Exited(ExitStatus),
}

/// Failures of the host-side container operations.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A bundle file could not be read, written or removed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `config.json` or `exit.json` could not be encoded or decoded.
    #[error("{op} {}", path.display())]
    Json {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The bundle directory already exists.
    #[error("bundle {} already exists", .0.display())]
    Exists(PathBuf),
    /// The bundle directory does not exist.
    #[error("bundle {} does not exist", .0.display())]
    NotFound(PathBuf),
    /// The monitor could not be started.
    #[error("spawn monitor {}", exe.display())]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting up the container failed before it could run: init's (or the
    /// monitor's) message.
    #[error("container init failed: {0}")]
    Init(String),
    /// The container's process cannot be started (its program does not
    /// exist): why. Init was released and exits; the monitor reports the
    /// exit with [`crate::ns::spec::START_ERROR_EXIT_CODE`].
    #[error("{0}")]
    StartFailed(String),
    /// The monitor exited without reporting.
    #[error("monitor {pid} exited before the container was ready")]
    MonitorDied {
        /// The monitor.
        pid: i32,
    },
    /// The container was not ready in time; its processes have been killed.
    #[error("container not ready after {waited:?}")]
    Timeout {
        /// How long was waited.
        waited: Duration,
    },
    /// The operation needs a container in another state.
    #[error("container in {} is {state}", bundle.display())]
    BadState {
        /// The bundle.
        bundle: PathBuf,
        /// Its state, in words (`running`, `exited`, `not ready`, `already started`).
        state: &'static str,
    },
    /// A process could not be signalled.
    #[error("send {signal} to pid {pid}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// The cause.
        #[source]
        source: Errno,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io { op, path: path.to_owned(), source }
}

/// Makes the bundle (mode 0700; its parent is created when missing) with
/// `config.json` and the start FIFO, starts the monitor detached, and waits up
/// to `timeout` until init reports ready. `self_exe` is run as
/// `self_exe internal monitor <bundle>` (crius passes `/proc/self/exe`).
///
/// On [`ContainerError::Init`], [`ContainerError::MonitorDied`] and
/// [`ContainerError::Timeout`] nothing is left running (the monitor is
/// reaped) but the bundle stays for inspection: [`delete`] it. Earlier
/// failures remove the bundle.
pub fn create(
    bundle: &Path,
    spec: &ContainerSpec,
    self_exe: &Path,
    timeout: Duration,
) -> Result<Created, ContainerError> {
    if let Some(parent) = bundle.parent() {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    match DirBuilder::new().mode(0o700).create(bundle) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(ContainerError::Exists(bundle.to_owned())),
        other => other.map_err(io_err("create bundle", bundle))?,
    }
    let monitor_pid = match prepare_and_spawn(bundle, spec, self_exe) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = fs::remove_dir_all(bundle);
            return Err(e);
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        let init = read_pid_file(&bundle.join(INIT_PID_FILE)).ok();
        if let Some(init) = init
            && bundle.join(READY_FILE).exists()
        {
            return Ok(Created { monitor_pid, init_pid: init.pid });
        }
        if let Some(status) = read_exit(bundle)? {
            wait_monitor_exit(monitor_pid);
            return Err(init_failed(status));
        }
        if reap(monitor_pid) {
            return match read_exit(bundle)? {
                Some(status) => Err(init_failed(status)),
                None => {
                    kill_recorded(init, Signal::SIGKILL);
                    Err(ContainerError::MonitorDied { pid: monitor_pid })
                }
            };
        }
        if Instant::now() >= deadline {
            kill_recorded(init.or_else(|| read_pid_file(&bundle.join(INIT_PID_FILE)).ok()), Signal::SIGKILL);
            wait_monitor_exit(monitor_pid);
            return Err(ContainerError::Timeout { waited: timeout });
        }
        sleep(CREATE_POLL);
    }
}

fn init_failed(status: ExitStatus) -> ContainerError {
    ContainerError::Init(status.init_error.unwrap_or_else(|| format!("init exited with code {}", status.exit_code)))
}

fn prepare_and_spawn(bundle: &Path, spec: &ContainerSpec, self_exe: &Path) -> Result<i32, ContainerError> {
    let spec_path = bundle.join(SPEC_FILE);
    let json = serde_json::to_vec(spec).map_err(|source| ContainerError::Json {
        op: "encode",
        path: spec_path.clone(),
        source,
    })?;
    write_atomic(&spec_path, &json).map_err(io_err("write", &spec_path))?;
    let fifo = bundle.join(START_FIFO);
    mkfifo(&fifo, Mode::from_bits_truncate(0o600)).map_err(|e| io_err("mkfifo", &fifo)(e.into()))?;
    let child = Command::new(self_exe)
        .args(["internal", "monitor"])
        .arg(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ContainerError::Spawn { exe: self_exe.to_owned(), source })?;
    // The Child is dropped without waiting: the monitor outlives this call and
    // is reaped by `reap`.
    i32::try_from(child.id())
        .map_err(|_| ContainerError::Spawn { exe: self_exe.to_owned(), source: io::Error::other("pid out of range") })
}

/// Waits (briefly) for a monitor whose init is gone to exit, then reaps it;
/// kills it when it lingers.
fn wait_monitor_exit(monitor_pid: i32) {
    let deadline = Instant::now() + MONITOR_EXIT_WAIT;
    while Instant::now() < deadline {
        if reap(monitor_pid) || !proc_exists(monitor_pid) {
            return;
        }
        sleep(CREATE_POLL);
    }
    let _ = send_signal(Pid::from_raw(monitor_pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(monitor_pid), None);
}

/// Starts a created container: writes `<bundle>/started` (the start time,
/// which the monitor copies into `exit.json`) and one byte to the start
/// FIFO, which releases init into `execve`.
///
/// Returns the start time recorded (nanoseconds since the epoch), taken
/// before init is released, so that it is never later than the exit time.
pub fn start(bundle: &Path) -> Result<i64, ContainerError> {
    let bad = |state| Err(ContainerError::BadState { bundle: bundle.to_owned(), state });
    if !bundle.is_dir() {
        return Err(ContainerError::NotFound(bundle.to_owned()));
    }
    if read_exit(bundle)?.is_some() {
        return bad("exited");
    }
    if !bundle.join(READY_FILE).exists() {
        return bad("not ready");
    }
    let started = bundle.join(STARTED_FILE);
    let mut marker = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&started) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return bad("already started"),
        other => other.map_err(io_err("create", &started))?,
    };
    let started_at = now_ns();
    let result = marker.write_all(format!("{started_at}\n").as_bytes()).map_err(io_err("write", &started));
    drop(marker);
    let result = result.and_then(|()| release_init(bundle));
    if result.is_err() {
        let _ = fs::remove_file(&started);
    }
    result?;
    // Init found at create time that there is nothing to run: released, it
    // exits; the start fails with why.
    let start_error = bundle.join(START_ERROR_FILE);
    match fs::read_to_string(&start_error) {
        Ok(why) => Err(ContainerError::StartFailed(why)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(started_at),
        Err(e) => Err(io_err("read", &start_error)(e)),
    }
}

fn release_init(bundle: &Path) -> Result<(), ContainerError> {
    let fifo = bundle.join(START_FIFO);
    let deadline = Instant::now() + START_WAIT;
    loop {
        match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
            Ok(mut f) => {
                return match f.write(&[0]) {
                    // A reader that opened and left already got past the FIFO.
                    Ok(_) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(()),
                    Err(e) => Err(io_err("write", &fifo)(e)),
                };
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                // No reader: init is between reporting ready and opening the
                // FIFO, or gone.
                let init = read_pid_file(&bundle.join(INIT_PID_FILE)).ok();
                if !init.is_some_and(|p| p.is_alive()) || read_exit(bundle)?.is_some() {
                    return Err(ContainerError::BadState { bundle: bundle.to_owned(), state: "exited" });
                }
                if Instant::now() >= deadline {
                    return Err(ContainerError::BadState { bundle: bundle.to_owned(), state: "not waiting for start" });
                }
                sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io_err("open", &fifo)(e)),
        }
    }
}

/// The container's state; reaps an exited monitor when the caller is its
/// parent.
pub fn state(bundle: &Path) -> Result<State, ContainerError> {
    if !bundle.is_dir() {
        return Err(ContainerError::NotFound(bundle.to_owned()));
    }
    if let Some(status) = read_exit(bundle)? {
        if let Ok(monitor) = read_pid_file(&bundle.join(MONITOR_PID_FILE)) {
            reap_recorded(monitor);
        }
        return Ok(State::Exited(status));
    }
    let monitor = read_pid_file(&bundle.join(MONITOR_PID_FILE)).ok();
    let monitor_alive = monitor.is_some_and(|m| {
        reap_recorded(m);
        m.is_alive()
    });
    if !monitor_alive {
        // It may have written exit.json just before exiting.
        if let Some(status) = read_exit(bundle)? {
            return Ok(State::Exited(status));
        }
        return Ok(State::Exited(ExitStatus {
            exit_code: 255,
            signal: None,
            finished_at_ns: now_ns(),
            started_at_ns: read_started(bundle),
            init_error: Some("monitor died".into()),
        }));
    }
    let monitor_pid = monitor.map_or(0, |m| m.pid);
    let Ok(init) = read_pid_file(&bundle.join(INIT_PID_FILE)) else {
        return Ok(State::Creating { monitor_pid });
    };
    Ok(if !bundle.join(READY_FILE).exists() {
        State::Creating { monitor_pid }
    } else if bundle.join(STARTED_FILE).exists() {
        State::Running { init_pid: init.pid }
    } else {
        State::Created { init_pid: init.pid }
    })
}

/// Sends `signal` to the container's init (the container process once
/// started). Nothing to do, and `Ok`, when it has exited or is not spawned yet.
/// Only that process is signalled: without a PID namespace its children are
/// the cgroup's business (`Cgroup::kill_all`).
pub fn kill(bundle: &Path, signal: Signal) -> Result<(), ContainerError> {
    if !bundle.is_dir() {
        return Err(ContainerError::NotFound(bundle.to_owned()));
    }
    if read_exit(bundle)?.is_some() {
        return Ok(());
    }
    let Ok(init) = read_pid_file(&bundle.join(INIT_PID_FILE)) else {
        return Ok(());
    };
    if !init.is_alive() {
        return Ok(());
    }
    match send_signal(Pid::from_raw(init.pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(ContainerError::Signal { pid: init.pid, signal, source }),
    }
}

/// Asks the monitor to reopen the CRI log (`ReopenContainerLog`) with
/// `SIGUSR1`, then waits up to `timeout` until the log path exists again
/// (after a rename, the monitor creates it when it reopens).
pub fn reopen_log(bundle: &Path, timeout: Duration) -> Result<(), ContainerError> {
    let spec_path = bundle.join(SPEC_FILE);
    let text = fs::read(&spec_path).map_err(io_err("read", &spec_path))?;
    let spec: ContainerSpec = serde_json::from_slice(&text).map_err(|source| ContainerError::Json {
        op: "decode",
        path: spec_path.clone(),
        source,
    })?;
    let Some(log_path) = spec.log_path else { return Ok(()) };
    let monitor = read_pid_file(&bundle.join(MONITOR_PID_FILE)).map_err(io_err("read", bundle))?;
    if !monitor.is_alive() || read_exit(bundle)?.is_some() {
        return Err(ContainerError::BadState { bundle: bundle.to_owned(), state: "exited" });
    }
    send_signal(Pid::from_raw(monitor.pid), Signal::SIGUSR1).map_err(|source| ContainerError::Signal {
        pid: monitor.pid,
        signal: Signal::SIGUSR1,
        source,
    })?;
    let deadline = Instant::now() + timeout;
    while !log_path.exists() {
        if Instant::now() >= deadline {
            return Err(ContainerError::Timeout { waited: timeout });
        }
        sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Removes the bundle of a container that has exited (or whose monitor is
/// gone). Refuses while the monitor runs: [`kill`] it first. `Ok` when the
/// bundle is already gone.
pub fn delete(bundle: &Path) -> Result<(), ContainerError> {
    if !bundle.exists() {
        return Ok(());
    }
    match state(bundle)? {
        State::Exited(_) => {}
        State::Creating { .. } => {
            return Err(ContainerError::BadState { bundle: bundle.to_owned(), state: "creating" });
        }
        State::Created { .. } | State::Running { .. } => {
            return Err(ContainerError::BadState { bundle: bundle.to_owned(), state: "running" });
        }
    }
    match fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", bundle)(e)),
        _ => Ok(()),
    }
}

/// Reaps `pid` if it is an exited child of the caller (`waitpid` with
/// `WNOHANG`): `true` when it was reaped now. Not a child (`ECHILD`), still
/// running, or any other error: `false`.
pub fn reap(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    !matches!(waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive) | Err(_))
}

fn reap_recorded(p: PidRecord) {
    if p.matches() {
        reap(p.pid);
    }
}

fn kill_recorded(p: Option<PidRecord>, signal: Signal) {
    if let Some(p) = p
        && p.is_alive()
    {
        let _ = send_signal(Pid::from_raw(p.pid), signal);
    }
}

/// Reads `exit.json`: `None` when it does not exist.
pub fn read_exit(bundle: &Path) -> Result<Option<ExitStatus>, ContainerError> {
    let path = bundle.join(EXIT_FILE);
    match fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|source| ContainerError::Json {
            op: "decode",
            path,
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// The start time [`start`] recorded, nanoseconds since the epoch; 0 if none.
pub(crate) fn read_started(bundle: &Path) -> i64 {
    fs::read_to_string(bundle.join(STARTED_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A pid file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    /// The process id.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22), when recorded.
    pub start_time: Option<u64>,
}

impl PidRecord {
    /// Whether a process with this pid (and start time, when known) exists,
    /// zombies included.
    pub fn matches(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(_, start)| self.start_time.is_none_or(|t| t == start))
    }

    /// Whether the recorded process is still running (not a zombie).
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(state, start)| {
            !matches!(state, 'Z' | 'X' | 'x') && self.start_time.is_none_or(|t| t == start)
        })
    }
}

/// Reads a pid file (`<pid>` or `<pid> <start time>`).
pub fn read_pid_file(path: &Path) -> io::Result<PidRecord> {
    let text = fs::read_to_string(path)?;
    let mut fields = text.split_whitespace();
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("bad pid file {text:?}"));
    let pid = fields.next().and_then(|p| p.parse().ok()).filter(|&p: &i32| p > 0).ok_or_else(invalid)?;
    let start_time = match fields.next() {
        Some(t) => Some(t.parse().map_err(|_| invalid())?),
        None => None,
    };
    Ok(PidRecord { pid, start_time })
}

/// Writes `<pid> <start time>\n` to `path` atomically.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> io::Result<()> {
    let line = match proc_stat(pid) {
        Some((_, start)) => format!("{pid} {start}\n"),
        None => format!("{pid}\n"),
    };
    write_atomic(path, line.as_bytes())
}

/// Writes `path` through a temporary file, fsync and rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// State letter and start time of `pid` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3, the start time field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_carry_the_start_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.pid");
        let me = i32::try_from(std::process::id()).expect("pid");
        write_pid_file(&path, me).expect("write");
        let rec = read_pid_file(&path).expect("read");
        assert_eq!(rec.pid, me);
        assert!(rec.start_time.is_some() && rec.is_alive() && rec.matches());
        let recycled = PidRecord { start_time: rec.start_time.map(|t| t + 1), ..rec };
        assert!(!recycled.is_alive() && !recycled.matches());
        fs::write(&path, "42").expect("write");
        assert_eq!(read_pid_file(&path).expect("bare pid"), PidRecord { pid: 42, start_time: None });
        for bad in ["", "x", "-1", "1 y"] {
            fs::write(&path, bad).expect("write");
            assert!(read_pid_file(&path).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_bundles_are_reported_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("none");
        assert!(matches!(state(&bundle), Err(ContainerError::NotFound(_))));
        assert!(matches!(start(&bundle), Err(ContainerError::NotFound(_))));
        delete(&bundle).expect("delete of a missing bundle");
        fs::create_dir(&bundle).expect("mkdir");
        match state(&bundle).expect("state") {
            State::Exited(s) => assert_eq!((s.exit_code, s.init_error.as_deref()), (255, Some("monitor died"))),
            other => panic!("unexpected {other:?}"),
        }
        delete(&bundle).expect("delete");
        assert!(!bundle.exists());
        assert!(!reap(1) && !reap(0));
    }
}
