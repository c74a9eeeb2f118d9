//! `crius internal monitor <bundle>`: the parent of one container process.
//!
//! Started detached by [`super::container::create`], it makes itself a
//! session leader, spawns `<init_exe> internal init <bundle>`, moves it into
//! the container's cgroup, waits for init to report ready, copies the
//! container's output into the CRI log ([`crate::logs`]) and, when the process
//! exits, writes `exit.json` and exits. It holds no runtime: three small
//! threads (stdout, stderr, `SIGUSR1`) besides the main one, which waits.
//!
//! Protocol with init:
//! - init's stdin is `/dev/null` (a terminal's slave with `process.terminal`),
//!   its stdout and stderr are pipes to the monitor (both the terminal's slave
//!   with `process.terminal`: init then makes it its controlling terminal with
//!   `setsid` + `TIOCSCTTY` on fd 0 before `execve`).
//! - env [`READY_FD_ENV`] names an inherited descriptor (not 0, 1 or 2): init
//!   writes one byte to it once the set-up is done, closes it, then opens
//!   `<bundle>/start` for reading, reads one byte and `execve`s. If the
//!   descriptor reaches end of file without the byte, init failed: what it
//!   wrote to stderr becomes `init_error` in `exit.json`. If the byte is
//!   `START_ERROR_MARK`, the set-up is done but the process cannot start
//!   (no such program): the text after it goes to `<bundle>/start-error`
//!   and later, as `init_error`, into `exit.json`; init waits for the start
//!   like any other and then exits with `START_ERROR_EXIT_CODE`.
//! - init must not fork before it reports ready (the monitor moves only init's
//!   own pid into the cgroup).
//!
//! Files it writes in the bundle: `monitor.pid`, `init.pid` (`<pid> <start
//! time>`), [`READY_FILE`] and `exit.json`. It reads [`STARTED_FILE`] (written
//! by `container::start`) for `started_at_ns`. `SIGUSR1` reopens the log.

use std::convert::Infallible;
use std::error::Error;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::openpty;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{close, getpid, setsid};

use super::attach::{self, Attachments};
use super::container::{read_started, write_atomic, write_pid_file};
use super::spec::{
    ContainerSpec, EXIT_FILE, ExitStatus, INIT_PID_FILE, MONITOR_PID_FILE, PidNamespace, SPEC_FILE, START_ERROR_FILE,
};
use crate::cgroups::{Cgroup, CgroupError, detect_host};
use crate::logs::{LogError, LogWriter, Stream};

/// Empty file the monitor makes once init has reported ready.
pub const READY_FILE: &str = "ready";
/// Written by `container::start` just before it releases init: the start
/// time in nanoseconds since the epoch.
pub const STARTED_FILE: &str = "started";
/// Environment variable holding the descriptor init reports ready on.
pub const READY_FD_ENV: &str = "CRIUS_INIT_READY_FD";

/// How long output is still copied after the container process exited, for
/// descendants that keep the pipes open (without a PID namespace they outlive it).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Most bytes of init's stderr kept as `init_error`.
const MAX_INIT_ERROR: u64 = 16 * 1024;
/// Read size of the output pipes.
const READ_CHUNK: usize = 16 * 1024;
/// Stack of the monitor's helper threads.
const THREAD_STACK: usize = 128 * 1024;

/// Why the monitor could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A bundle file could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `config.json` could not be decoded.
    #[error("decode {}", path.display())]
    Spec {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A system call failed.
    #[error("{op}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// An output pipe, a thread or the wait for the container failed.
    #[error("{op}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// init could not be started.
    #[error("spawn {}", exe.display())]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// init could not be moved into the container's cgroup.
    #[error("join cgroup {path}")]
    Cgroup {
        /// `spec.cgroup`.
        path: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// The CRI log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The body of `crius internal monitor <bundle>`; `init_exe` is run as
/// `<init_exe> internal init <bundle>` (crius passes `/proc/self/exe`).
///
/// Call it first thing in the process, on its only thread, before opening
/// anything: it closes every inherited descriptor above 2, and it blocks
/// `SIGUSR1` in the calling thread (every thread must have it blocked).
/// Exits the process with status 0 once `exit.json` is written. Returns only
/// on a failure, after recording it in `exit.json` (exit code 255 and
/// `init_error`) when it could; the caller prints it and exits non-zero.
pub fn run(bundle: &Path, init_exe: &Path) -> MonitorError {
    // Absolute, as the monitor leaves the caller's working directory.
    let bundle = &std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_owned());
    let init_exe = &std::path::absolute(init_exe).unwrap_or_else(|_| init_exe.to_owned());
    let err = match monitor(bundle, init_exe) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if !bundle.join(EXIT_FILE).exists() {
        let status = ExitStatus {
            exit_code: 255,
            signal: None,
            finished_at_ns: now_ns(),
            started_at_ns: read_started(bundle),
            init_error: Some(error_chain(&err)),
        };
        let _ = write_exit(bundle, &status);
    }
    err
}

fn monitor(bundle: &Path, init_exe: &Path) -> Result<Infallible, MonitorError> {
    let mut reopen_signal = SigSet::empty();
    reopen_signal.add(Signal::SIGUSR1);
    reopen_signal.thread_block().map_err(|source| MonitorError::Sys { op: "block SIGUSR1", source })?;
    // EPERM: already a process group leader, which is as detached.
    match setsid() {
        Ok(_) | Err(Errno::EPERM) => {}
        Err(source) => return Err(MonitorError::Sys { op: "setsid", source }),
    }
    close_inherited_fds();
    // Keep no directory of the caller busy.
    std::env::set_current_dir("/").map_err(io_err("chdir", Path::new("/")))?;
    let pid_path = bundle.join(MONITOR_PID_FILE);
    write_pid_file(&pid_path, getpid().as_raw()).map_err(io_err("write", &pid_path))?;
    let spec = read_spec(bundle)?;
    let log = Arc::new(Mutex::new(spec.log_path.as_deref().map(LogWriter::open).transpose()?));

    let child_io = ChildIo::new(spec.process.terminal, spec.process.stdin)?;
    let attachments = Attachments::new(child_io.stdin_writer, child_io.terminal, spec.process.stdin_once);
    let (ready_r, ready_w) = io::pipe().map_err(|source| MonitorError::Os { op: "pipe", source })?;
    // Inherited at its own number: the one descriptor beyond 0-2 init gets.
    // Nothing else is spawned while it is open.
    fcntl(&ready_w, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|source| MonitorError::Sys { op: "clear FD_CLOEXEC", source })?;
    let own_pid_ns = enter_pid_namespace(&spec.namespaces.pid)?;
    let mut cmd = Command::new(init_exe);
    cmd.args(["internal", "init"])
        .arg(bundle)
        .env(READY_FD_ENV, ready_w.as_raw_fd().to_string())
        .stdin(child_io.stdin)
        .stdout(child_io.stdout)
        .stderr(child_io.stderr);
    let spawned = cmd.spawn();
    // Children of a process whose PID namespace for children differs from
    // its own cannot be threads (EINVAL): switch back before any thread starts.
    if let Some(own) = own_pid_ns {
        setns(own, CloneFlags::CLONE_NEWPID)
            .map_err(|source| MonitorError::Sys { op: "return to own pid namespace", source })?;
    }
    // Close the monitor's copies of init's ends, or no end of file would come.
    drop(cmd);
    drop(ready_w);
    let mut child = spawned.map_err(|source| MonitorError::Spawn { exe: init_exe.to_owned(), source })?;
    if let Err(e) = before_ready(bundle, &spec, &child) {
        kill_child(&mut child);
        return Err(e);
    }
    let mut byte = [0u8; 1];
    let mut ready_r = File::from(OwnedFd::from(ready_r));
    let ready = match read_retrying(&mut ready_r, &mut byte) {
        Ok(n) => n,
        Err(source) => {
            kill_child(&mut child);
            return Err(MonitorError::Os { op: "read init's ready byte", source });
        }
    };
    if ready == 0 {
        return init_failed(bundle, child, child_io.outputs);
    }
    let start_error = if byte[0] == crate::ns::init::START_ERROR_MARK {
        let mut why = Vec::new();
        let _ = (&mut ready_r).take(MAX_INIT_ERROR).read_to_end(&mut why);
        let why = String::from_utf8_lossy(&why).trim().to_owned();
        let path = bundle.join(START_ERROR_FILE);
        if let Err(e) = write_atomic(&path, why.as_bytes()) {
            kill_child(&mut child);
            return Err(io_err("write", &path)(e));
        }
        Some(why)
    } else {
        None
    };
    drop(ready_r);

    let streams: Vec<Stream> = child_io.outputs.iter().map(|(s, _)| *s).collect();
    let done = match forward(bundle, child_io.outputs, &log, &attachments, reopen_signal) {
        Ok(done) => done,
        Err(e) => {
            kill_child(&mut child);
            return Err(e);
        }
    };
    let status = child.wait().map_err(|source| MonitorError::Os { op: "wait for the container", source })?;
    end_leftovers(&spec);
    let deadline = Instant::now() + DRAIN_GRACE;
    for _ in &streams {
        if done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
            break;
        }
    }
    attachments.close_all();
    // Held until exit: no record is written after exit.json.
    let mut log = lock(&log);
    if let Some(w) = log.as_mut() {
        for stream in streams {
            let _ = w.flush_partial(stream);
        }
    }
    let (exit_code, signal) = decode(status);
    let started_at_ns = read_started(bundle);
    let status = ExitStatus { exit_code, signal, finished_at_ns: now_ns(), started_at_ns, init_error: start_error };
    write_exit(bundle, &status)?;
    std::process::exit(0)
}

/// Closes every descriptor above 2 the monitor inherited, so that none of
/// the caller's reaches init or the container.
fn close_inherited_fds() {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd: &i32| fd > 2).collect();
    for fd in fds {
        // The directory's own descriptor is listed too and already closed: EBADF.
        let _ = close(fd);
    }
}

/// What init gets as stdin/stdout/stderr, and the monitor's ends.
struct ChildIo {
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    /// Reading ends; the last one carries init's error messages.
    outputs: Vec<(Stream, File)>,
    /// Where attach clients' input goes (with CRI `stdin`).
    stdin_writer: Option<File>,
    /// The terminal master, for window sizes.
    terminal: Option<OwnedFd>,
}

impl ChildIo {
    fn new(terminal: bool, stdin: bool) -> Result<Self, MonitorError> {
        let os = |op| move |source| MonitorError::Os { op, source };
        if terminal {
            let pty = openpty(None, None).map_err(|source| MonitorError::Sys { op: "openpty", source })?;
            for fd in [&pty.master, &pty.slave] {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
                    .map_err(|source| MonitorError::Sys { op: "set FD_CLOEXEC", source })?;
            }
            let stdout = pty.slave.try_clone().map_err(os("dup terminal"))?;
            let stderr = pty.slave.try_clone().map_err(os("dup terminal"))?;
            let stdin_writer =
                if stdin { Some(File::from(pty.master.try_clone().map_err(os("dup terminal"))?)) } else { None };
            let resize = pty.master.try_clone().map_err(os("dup terminal"))?;
            return Ok(ChildIo {
                stdin: pty.slave.into(),
                stdout: stdout.into(),
                stderr: stderr.into(),
                outputs: vec![(Stream::Stdout, File::from(pty.master))],
                stdin_writer,
                terminal: Some(resize),
            });
        }
        let (out_r, out_w) = io::pipe().map_err(os("pipe"))?;
        let (err_r, err_w) = io::pipe().map_err(os("pipe"))?;
        let (stdin, stdin_writer) = if stdin {
            let (in_r, in_w) = io::pipe().map_err(os("pipe"))?;
            (Stdio::from(in_r), Some(File::from(OwnedFd::from(in_w))))
        } else {
            (Stdio::null(), None)
        };
        Ok(ChildIo {
            stdin,
            stdout: out_w.into(),
            stderr: err_w.into(),
            outputs: vec![
                (Stream::Stdout, File::from(OwnedFd::from(out_r))),
                (Stream::Stderr, File::from(OwnedFd::from(err_r))),
            ],
            stdin_writer,
            terminal: None,
        })
    }
}

/// Puts the monitor's future children in the container's PID namespace: a
/// new one (init becomes its PID 1), the pod's shared one, or the host's.
/// `unshare`/`setns` of a PID namespace only affect children, so the monitor
/// itself stays where it is.
/// A container ends with its main process. With its own PID namespace the
/// kernel ends the rest; in the pod's or the host's, what the process left
/// running in the container's cgroup is killed here (as containerd does), so
/// that nothing outlives the container or keeps its output pipes open.
fn end_leftovers(spec: &ContainerSpec) {
    if spec.namespaces.pid == PidNamespace::Container {
        return;
    }
    let Some(path) = spec.cgroup.as_deref() else { return };
    if let Ok(mode) = detect_host()
        && let Ok(cgroup) = Cgroup::open(&mode, path)
    {
        let _ = cgroup.kill_all(Signal::SIGKILL);
    }
}

/// Returns the monitor's own PID namespace when it switched, to switch back
/// after spawning init.
fn enter_pid_namespace(pid: &PidNamespace) -> Result<Option<File>, MonitorError> {
    if *pid == PidNamespace::Host {
        return Ok(None);
    }
    let own_path = Path::new("/proc/self/ns/pid");
    let own = File::open(own_path).map_err(io_err("open pid namespace", own_path))?;
    match pid {
        PidNamespace::Host => {}
        PidNamespace::Container => {
            unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|source| MonitorError::Sys { op: "unshare pid namespace", source })?;
        }
        PidNamespace::Pod(path) => {
            let file = File::open(path).map_err(io_err("open pid namespace", path))?;
            setns(file, CloneFlags::CLONE_NEWPID)
                .map_err(|source| MonitorError::Sys { op: "join pid namespace", source })?;
        }
    }
    Ok(Some(own))
}

/// Records init's pid and moves it into the container's cgroup.
fn before_ready(bundle: &Path, spec: &ContainerSpec, child: &Child) -> Result<(), MonitorError> {
    let pid = i32::try_from(child.id())
        .map_err(|_| MonitorError::Sys { op: "init pid out of range", source: Errno::EOVERFLOW })?;
    let pid_path = bundle.join(INIT_PID_FILE);
    write_pid_file(&pid_path, pid).map_err(io_err("write", &pid_path))?;
    if let Some(rel) = &spec.cgroup {
        join_cgroup(rel, pid)?;
    }
    Ok(())
}

/// Moves `pid` into the cgroup `rel` (relative to the hierarchy roots, as
/// `crius/pod-<pod>/<container>`), creating it when the agent has not.
fn join_cgroup(rel: &str, pid: i32) -> Result<(), MonitorError> {
    let err = |source| MonitorError::Cgroup { path: rel.to_owned(), source };
    let mode = detect_host().map_err(err)?;
    let mut cgroup = Cgroup::open(&mode, rel).map_err(err)?;
    if !cgroup.exists() {
        cgroup = Cgroup::create(&mode, rel).map_err(err)?;
    }
    cgroup.add_process(pid).map_err(err)
}

/// init closed its ready descriptor without the byte: record what it said
/// on stderr (or the terminal) and how it ended, then exit.
fn init_failed(bundle: &Path, mut child: Child, outputs: Vec<(Stream, File)>) -> Result<Infallible, MonitorError> {
    let mut text = Vec::new();
    if let Some((_, errors)) = outputs.into_iter().next_back() {
        // A terminal ends with EIO; what was read before is kept.
        let _ = errors.take(MAX_INIT_ERROR).read_to_end(&mut text);
    }
    let status = child.wait().map_err(|source| MonitorError::Os { op: "wait for init", source })?;
    let (exit_code, signal) = decode(status);
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let init_error = if text.is_empty() { format!("init exited ({status}) before it was ready") } else { text };
    let status =
        ExitStatus { exit_code, signal, finished_at_ns: now_ns(), started_at_ns: 0, init_error: Some(init_error) };
    write_exit(bundle, &status)?;
    std::process::exit(0)
}

/// Starts the output and `SIGUSR1` threads, then reports ready. The receiver
/// gets one message per output stream that reached its end.
fn forward(
    bundle: &Path,
    outputs: Vec<(Stream, File)>,
    log: &Arc<Mutex<Option<LogWriter>>>,
    attachments: &Arc<Attachments>,
    reopen_signal: SigSet,
) -> Result<mpsc::Receiver<()>, MonitorError> {
    let spawn_err = |source| MonitorError::Os { op: "spawn a monitor thread", source };
    attach::listen(bundle, attachments)
        .map_err(|source| MonitorError::Os { op: "listen for attach clients", source })?;
    let (tx, rx) = mpsc::channel();
    for (stream, file) in outputs {
        let (log, tx, attachments) = (Arc::clone(log), tx.clone(), Arc::clone(attachments));
        helper_thread(stream.as_str(), move || {
            pump(file, stream, &log, &attachments);
            let _ = tx.send(());
        })
        .map_err(spawn_err)?;
    }
    let log = Arc::clone(log);
    helper_thread("reopen", move || {
        while let Ok(signal) = reopen_signal.wait() {
            if signal == Signal::SIGUSR1
                && let Some(w) = lock(&log).as_mut()
            {
                let _ = w.reopen();
            }
        }
    })
    .map_err(spawn_err)?;
    let ready = bundle.join(READY_FILE);
    File::create(&ready).map_err(io_err("create", &ready))?;
    Ok(rx)
}

fn helper_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name.to_owned()).stack_size(THREAD_STACK).spawn(f).map(drop)
}

/// Copies one output stream into the log until its end (EIO on a terminal),
/// then writes its unfinished line. Write errors drop output; reading goes on
/// so that the container never blocks on a full pipe.
fn pump(mut file: File, stream: Stream, log: &Mutex<Option<LogWriter>>, attachments: &Attachments) {
    let mut buf = vec![0u8; READ_CHUNK];
    while let Ok(n) = read_retrying(&mut file, &mut buf) {
        if n == 0 {
            break;
        }
        if let Some(w) = lock(log).as_mut() {
            let _ = w.write_chunk(stream, &buf[..n]);
        }
        attachments.broadcast(stream, &buf[..n]);
    }
    if let Some(w) = lock(log).as_mut() {
        let _ = w.flush_partial(stream);
    }
}

fn read_retrying(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Exit code (128 + signal when killed) and signal.
fn decode(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    }
}

fn read_spec(bundle: &Path) -> Result<ContainerSpec, MonitorError> {
    let path = bundle.join(SPEC_FILE);
    let text = fs::read(&path).map_err(io_err("read", &path))?;
    serde_json::from_slice(&text).map_err(|source| MonitorError::Spec { path, source })
}

fn write_exit(bundle: &Path, status: &ExitStatus) -> Result<(), MonitorError> {
    let path = bundle.join(EXIT_FILE);
    let json = serde_json::to_vec(status).map_err(|source| MonitorError::Spec { path: path.clone(), source })?;
    write_atomic(&path, &json).map_err(io_err("write", &path))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MonitorError + 'a {
    move |source| MonitorError::Io { op, path: path.to_owned(), source }
}

/// `err: source: source…`, for `init_error`.
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let code = |raw| decode(std::process::ExitStatus::from_raw(raw));
        assert_eq!(code(3 << 8), (3, None));
        assert_eq!(code(9), (137, Some(9)));
        assert_eq!(code(15 | 0x80), (143, Some(15)), "core dumped");
    }

    #[test]
    fn error_chains_carry_every_cause() {
        let err = MonitorError::Io {
            op: "read",
            path: PathBuf::from("/b/config.json"),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(error_chain(&err).starts_with("read /b/config.json: No such file"), "{}", error_chain(&err));
    }
}
