//! `crius internal exec <bundle> <request.json>`: runs a command inside a
//! running container (CRI `ExecSync`, later `Exec`).
//!
//! The agent writes an [`ExecRequest`] to a file and starts this process
//! (re-executed `crius`, single-threaded, as root) with the stdio the command
//! should get. [`run`], in this order:
//!
//! 1. marks inherited descriptors from 3 on close-on-exec, checks the
//!    request, reads `<bundle>/config.json` and prepares it as `init` does
//!    (capabilities, rlimits, the seccomp program: a `Localhost` profile is
//!    read now, on the host) with the request's argv and environment
//!    (`process.env`, then `env_extra`, which overrides equal keys);
//! 2. reads `<bundle>/init.pid` and checks the recorded start time, so a
//!    recycled pid is never taken for the container's process;
//! 3. opens `/proc/<pid>/ns/{ipc,uts,net,pid,mnt}` and reads
//!    `/proc/<pid>/cgroup`, then checks the process again: the descriptors
//!    hold the namespaces even if it exits now;
//! 4. joins the container's cgroups by writing its own pid to `cgroup.procs`:
//!    each v1 line with controllers (named hierarchies such as
//!    `name=systemd` are left alone, unmounted controllers skipped), or the
//!    `0::` line on a pure v2 host (a hybrid host's unified hierarchy is left
//!    alone, as [`crate::cgroups`] does);
//! 5. rlimits, `oom_score_adj`, the AppArmor exec profile (through the host's
//!    `/proc`, before the container's hides it);
//! 6. `setns` into IPC, UTS, net, PID and mount, mount last (it moves the
//!    root and working directory into the container's root);
//! 7. working directory, seccomp, identity, capabilities, `args[0]` in the
//!    container's `PATH`, `no_new_privs`, in `init`'s order (see
//!    [`crate::ns::init`]), and resets signal dispositions and mask;
//! 8. `setns(CLONE_NEWPID)` only places children in the namespace, so it
//!    spawns the command as a child (killed with `SIGKILL` if this process
//!    dies: the agent kills it on timeout), waits, and exits with the
//!    command's exit code, 128 + the signal when it was killed.

use std::convert::Infallible;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use super::container::read_pid_file;
use super::init::InitError;
use super::init::prepare::{Prepared, prepare};
use super::init::steps;
use super::spec::{ContainerSpec, INIT_PID_FILE};
use crate::cgroups::{CgroupError, CgroupMode, detect_host};

/// Exit code of [`ExecError::exit_code`] when the command could not be found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of [`ExecError::exit_code`] when the command could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code of [`ExecError::exit_code`] when the set-up failed before the
/// command was looked up (container not running, namespaces, cgroups, …).
pub const EXIT_SETUP_FAILED: i32 = 255;

/// The namespaces joined, in order: mount last.
const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// What to run in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's environment (overriding
    /// entries with the same key).
    #[serde(default)]
    pub env_extra: Vec<String>,
    /// Run the command on a terminal: the helper's stdin must be a unix
    /// socket; the helper opens a terminal on the container's `/dev/ptmx`,
    /// sends the master over that socket and gives the command the slave as
    /// stdio and controlling terminal, in a session of its own.
    #[serde(default)]
    pub tty: bool,
}

impl ExecRequest {
    /// Reads a request from a JSON file.
    pub fn load(path: &Path) -> Result<Self, ExecError> {
        let text = fs::read(path).map_err(|source| ExecError::ReadRequest { path: path.to_owned(), source })?;
        serde_json::from_slice(&text).map_err(|source| ExecError::ParseRequest { path: path.to_owned(), source })
    }
}

/// Why the exec helper could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request file could not be read.
    #[error("read exec request {}", path.display())]
    ReadRequest {
        /// The request file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The request file is not a valid [`ExecRequest`].
    #[error("parse exec request {}", path.display())]
    ParseRequest {
        /// The request file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The terminal of a tty exec could not be set up.
    #[error("terminal: {op}")]
    Terminal {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A field of the request cannot be used.
    #[error("invalid exec request: {field}: {reason}")]
    InvalidRequest {
        /// The field (`args`, `env_extra[2]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The container's pid file could not be read.
    #[error("read container pid file {}", path.display())]
    ReadPid {
        /// The pid file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The container's process is gone (or its pid was recycled).
    #[error("container {} is not running (pid {pid})", bundle.display())]
    NotRunning {
        /// The bundle.
        bundle: PathBuf,
        /// The recorded pid.
        pid: i32,
    },
    /// A namespace of the container's process could not be opened.
    #[error("open {kind} namespace {}", path.display())]
    OpenNamespace {
        /// `ipc`, `uts`, `net`, `pid` or `mnt`.
        kind: &'static str,
        /// `/proc/<pid>/ns/<kind>`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Joining a namespace failed.
    #[error("join {kind} namespace of pid {pid}")]
    Setns {
        /// `ipc`, `uts`, `net`, `pid` or `mnt`.
        kind: &'static str,
        /// The container's process.
        pid: i32,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `unshare(CLONE_FS)` (needed before joining a mount namespace) failed.
    #[error("unshare the filesystem attributes")]
    UnshareFs {
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The container's cgroups could not be read or the host's cgroup
    /// mounts could not be found.
    #[error("cgroups of pid {pid}")]
    Cgroups {
        /// The container's process.
        pid: i32,
        /// Why.
        #[source]
        source: CgroupError,
    },
    /// Joining one of the container's cgroups failed.
    #[error("join cgroup {}", path.display())]
    JoinCgroup {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A step shared with `init` failed (reading or checking the spec,
    /// limits, working directory, identity, capabilities, seccomp, finding
    /// the program).
    #[error("exec set-up")]
    Setup {
        /// The step's error.
        #[source]
        source: InitError,
    },
    /// Spawning the command failed.
    #[error("exec {}", program.display())]
    Spawn {
        /// The resolved program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for the command failed.
    #[error("wait for {}", program.display())]
    Wait {
        /// The resolved program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl ExecError {
    /// The error and its sources, joined by `": "`: the line to print.
    pub fn report(&self) -> String {
        crate::error_report(self)
    }

    /// The exit code the helper should exit with, as shells do:
    /// [`EXIT_NOT_FOUND`] for a missing program, [`EXIT_CANNOT_EXECUTE`] for
    /// one that cannot be run, else [`EXIT_SETUP_FAILED`].
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Setup { source: InitError::NotInPath { .. } | InitError::Exec { errno: Errno::ENOENT, .. } } => {
                EXIT_NOT_FOUND
            }
            Self::Setup { source: InitError::Exec { .. } } => EXIT_CANNOT_EXECUTE,
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            Self::Spawn { .. } => EXIT_CANNOT_EXECUTE,
            _ => EXIT_SETUP_FAILED,
        }
    }
}

fn setup(source: InitError) -> ExecError {
    ExecError::Setup { source }
}

/// The body of `crius internal exec <bundle> <request.json>`: runs
/// `request` in the container of `bundle` as described in the
/// [module docs](self).
///
/// Never returns on success: it exits the process with the command's exit
/// code (128 + the signal when it was killed). On failure it returns why;
/// the caller prints [`ExecError::report`] to stderr and exits with
/// [`ExecError::exit_code`]. Call it single-threaded, as root, with the
/// stdio the command should inherit.
pub fn run(bundle: &Path, request: &ExecRequest) -> ExecError {
    match exec(bundle, request) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Environment variable naming the agent's pid: the exec ends (SIGTERM,
/// which kills the command) when that process dies, since the session's
/// client is gone with it. `PR_SET_PDEATHSIG` fires when the *thread* that
/// spawned the helper ends, so the agent spawns it from a thread that lives
/// as long as the agent (tokio's worker threads; never a blocking-pool
/// thread, which ends when idle).
pub const PARENT_ENV: &str = "CRIUS_EXEC_PARENT";

/// Ties this helper's life to the agent that started it.
fn die_with_agent() {
    let Some(agent) = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    // The agent may have died before the line above took effect.
    if nix::unistd::getppid().as_raw() != agent {
        std::process::exit(EXIT_SETUP_FAILED);
    }
}

fn exec(bundle: &Path, request: &ExecRequest) -> Result<Infallible, ExecError> {
    die_with_agent();
    if let Err(e) = crate::sys::set_cloexec_from(3) {
        tracing::debug!(error = %e, "could not mark inherited descriptors close-on-exec");
    }
    check_request(request)?;
    if request.tty && !stdin_is_socket() {
        return Err(ExecError::InvalidRequest {
            field: "tty".into(),
            reason: "a terminal was requested but stdin is not the console socket".into(),
        });
    }
    let mut spec = steps::load_spec(bundle).map_err(setup)?;
    exec_spec(&mut spec, request);
    let prepared = prepare(&spec).map_err(setup)?;

    let pid_path = bundle.join(INIT_PID_FILE);
    let record = read_pid_file(&pid_path).map_err(|source| ExecError::ReadPid { path: pid_path, source })?;
    let not_running = || ExecError::NotRunning { bundle: bundle.to_owned(), pid: record.pid };
    if !record.is_alive() {
        return Err(not_running());
    }
    let namespaces = open_namespaces(record.pid)?;
    let cgroup_text = fs::read_to_string(format!("/proc/{}/cgroup", record.pid));
    // The descriptors are the recorded process's only if it still is that
    // process now (its pid may have been recycled meanwhile).
    if !record.is_alive() {
        return Err(not_running());
    }
    let cgroup_text = cgroup_text.map_err(|source| ExecError::Cgroups {
        pid: record.pid,
        source: CgroupError::Read { path: format!("/proc/{}/cgroup", record.pid).into(), source },
    })?;
    join_cgroups(record.pid, &cgroup_text)?;

    steps::set_rlimits(&prepared.rlimits).map_err(setup)?;
    steps::set_oom_score_adj(spec.process.oom_score_adj).map_err(setup)?;
    steps::set_apparmor(spec.process.apparmor_profile.as_deref()).map_err(setup)?;
    join_namespaces(record.pid, namespaces)?;
    // The terminal comes from the container's own devpts, so that its name
    // resolves inside the container; its master goes to the agent.
    let terminal = if request.tty { Some(open_terminal()?) } else { None };

    let program = become_user(&spec, &prepared)?;
    steps::reset_signals();
    let mut cmd = Command::new(&program);
    if let Some(slave) = &terminal {
        let dup = || slave.try_clone().map_err(|source| ExecError::Terminal { op: "duplicate the terminal", source });
        cmd.stdin(dup()?).stdout(dup()?).stderr(dup()?);
    }
    cmd.arg0(&request.args[0]).args(&request.args[1..]).env_clear();
    for entry in &spec.process.env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                cmd.env(key, value);
            }
            _ => tracing::debug!(entry, "environment entry without a key ignored"),
        }
    }
    // SIGTERM from the agent (an ExecSync timeout) must kill and reap the
    // command here: if this helper died first, the command would be
    // reparented to the container's PID 1, which may never reap it. The
    // signals are blocked before the spawn (the child starts with an empty
    // mask) so that none is lost.
    let watched = watched_signals();
    let _ = watched.thread_block();
    let mut child = crate::sys::spawn_dying_with_parent(cmd, request.tty)
        .map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| ExecError::Wait { program: program.clone(), source })? {
            break status;
        }
        match watched.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(_) => {
                let _ = child.kill();
                break child.wait().map_err(|source| ExecError::Wait { program: program.clone(), source })?;
            }
        }
    };
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(EXIT_SETUP_FAILED);
    std::process::exit(code)
}

/// Whether fd 0 is a socket (the console socket of a tty exec).
fn stdin_is_socket() -> bool {
    nix::sys::stat::fstat(io::stdin()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Opens a terminal pair on the container's `/dev/ptmx`, sends the master
/// over the console socket (fd 0) and returns the slave.
fn open_terminal() -> Result<File, ExecError> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let sys = |op: &'static str| move |e: Errno| ExecError::Terminal { op, source: io::Error::from(e) };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(sys("open /dev/ptmx"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|source| ExecError::Terminal { op: "open the terminal", source })?;
    crate::sys::send_fd(io::stdin().as_fd(), master.as_fd())
        .map_err(|source| ExecError::Terminal { op: "send the terminal to the agent", source })?;
    Ok(slave)
}

/// The agent's side of [`open_terminal`]: the terminal master the exec
/// helper sends on `socket` (`None` if it ended without sending one).
pub fn receive_terminal(socket: &std::os::unix::net::UnixStream) -> io::Result<Option<std::os::fd::OwnedFd>> {
    crate::sys::recv_fd(socket.as_fd())
}

/// SIGCHLD (the command ended) and the signals that end an exec early.
fn watched_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

fn check_request(request: &ExecRequest) -> Result<(), ExecError> {
    let invalid = |field: String, reason: &str| ExecError::InvalidRequest { field, reason: reason.to_owned() };
    if request.args.is_empty() || request.args[0].is_empty() {
        return Err(invalid("args".to_owned(), "no command"));
    }
    if let Some(i) = request.args.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("args[{i}]"), "contains a NUL byte"));
    }
    for (i, entry) in request.env_extra.iter().enumerate() {
        let reason = match entry.split_once('=') {
            _ if entry.contains('\0') => "contains a NUL byte",
            Some((key, _)) if !key.is_empty() => continue,
            _ => "not KEY=value",
        };
        return Err(invalid(format!("env_extra[{i}]"), reason));
    }
    Ok(())
}

/// Turns the container's spec into the exec process's: the request's argv,
/// the environment with `env_extra` merged in, no sysctls (they are the
/// container's, written once by `init`).
fn exec_spec(spec: &mut ContainerSpec, request: &ExecRequest) {
    spec.process.args.clone_from(&request.args);
    spec.process.env = merge_env(&spec.process.env, &request.env_extra);
    spec.sysctls.clear();
}

/// `base` with each entry of `extra` replacing the entries of the same key
/// (or appended).
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    let mut env: Vec<String> = base.to_vec();
    for entry in extra {
        let k = key(entry);
        env.retain(|e| key(e) != k);
        env.push(entry.clone());
    }
    env
}

fn open_namespaces(pid: i32) -> Result<Vec<(&'static str, CloneFlags, File)>, ExecError> {
    NAMESPACES
        .iter()
        .map(|&(kind, flag)| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
            File::open(&path).map(|f| (kind, flag, f)).map_err(|source| ExecError::OpenNamespace { kind, path, source })
        })
        .collect()
}

fn join_namespaces(pid: i32, namespaces: Vec<(&'static str, CloneFlags, File)>) -> Result<(), ExecError> {
    // setns(CLONE_NEWNS) needs filesystem attributes of our own (a threaded
    // caller shares them); a no-op in a single-threaded process.
    unshare(CloneFlags::CLONE_FS).map_err(|source| ExecError::UnshareFs { source })?;
    for (kind, flag, file) in namespaces {
        setns(&file, flag).map_err(|source| ExecError::Setns { kind, pid, source })?;
    }
    Ok(())
}

/// Writes our pid to the `cgroup.procs` file of every cgroup the container's
/// process is in.
fn join_cgroups(pid: i32, cgroup_text: &str) -> Result<(), ExecError> {
    let mode = detect_host().map_err(|source| ExecError::Cgroups { pid, source })?;
    let me = std::process::id().to_string();
    for path in cgroup_procs_files(&mode, cgroup_text) {
        fs::write(&path, &me).map_err(|source| ExecError::JoinCgroup { path, source })?;
    }
    Ok(())
}

/// The `cgroup.procs` files of the cgroups listed in a `/proc/<pid>/cgroup`
/// text, for the hierarchies `mode` manages.
fn cgroup_procs_files(mode: &CgroupMode, cgroup_text: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in cgroup_text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let root = match mode {
            CgroupMode::V2 { root } if controllers.is_empty() => Some(root.as_path()),
            CgroupMode::V1 { .. } if !controllers.is_empty() && !controllers.starts_with("name=") => {
                controllers.split(',').find_map(|c| mode.hierarchy_of(c))
            }
            _ => None,
        };
        let Some(root) = root else {
            tracing::debug!(line, "cgroup hierarchy left alone");
            continue;
        };
        let file = root.join(path.trim_start_matches('/')).join("cgroup.procs");
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// `init`'s steps 7 to 11 for the exec process: working directory,
/// identity, capabilities, the program, `no_new_privs` and seccomp. Returns
/// the program to run.
fn become_user(spec: &ContainerSpec, prepared: &Prepared) -> Result<PathBuf, ExecError> {
    let process = &spec.process;
    let nnp = process.no_new_privileges;
    let in_cwd = steps::enter_cwd(&process.cwd, true).map_err(setup)?;
    if !nnp {
        steps::confine(prepared.seccomp.as_ref(), false).map_err(setup)?;
    }
    steps::set_identity(&process.user, &prepared.caps).map_err(setup)?;
    if !in_cwd {
        steps::enter_cwd(&process.cwd, false).map_err(setup)?;
    }
    let program = steps::resolve_program(&process.args[0], &process.env).map_err(setup)?;
    if nnp {
        steps::confine(prepared.seccomp.as_ref(), true).map_err(setup)?;
    }
    Ok(program)
}

#[cfg(test)]
mod tests;
