//! The steps of `init` that change the process, in the order `run` takes
//! them. Each is small and names what failed.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, lchown};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::setrlimit;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{AccessFlags, Gid, Uid, access, chdir, execve, setgroups, sethostname, setresgid, setresuid};
use seccompiler::BpfProgram;

use super::InitError;
use super::prepare::{Rlimit, Sysctl, search_path};
use crate::caps::CapSet;
use crate::ns::spec::{ContainerSpec, NamespaceSpec, UserSpec};
use crate::sys;

/// Environment variable naming the descriptor `init` writes one `0` byte to
/// once the set-up succeeded, right before it blocks on the start FIFO.
pub const READY_FD_ENV: &str = "CRIUS_INIT_READY_FD";

/// Sent instead of the `0` byte when the set-up succeeded but the process
/// cannot be started; the rest of what init writes says why.
pub const START_ERROR_MARK: u8 = b'!';

/// Reads and parses `<bundle>/config.json`.
pub(crate) fn load_spec(bundle: &Path) -> Result<ContainerSpec, InitError> {
    let path = bundle.join(crate::ns::spec::SPEC_FILE);
    let text = fs::read(&path).map_err(|source| InitError::ReadSpec { path: path.clone(), source })?;
    serde_json::from_slice(&text).map_err(|source| InitError::ParseSpec { path, source })
}

/// Takes the readiness descriptor named by [`READY_FD_ENV`], if set.
pub(super) fn ready_fd() -> Result<Option<File>, InitError> {
    let Some(value) = std::env::var_os(READY_FD_ENV) else { return Ok(None) };
    let value = value.to_string_lossy().into_owned();
    let fail = |source| InitError::Ready { value: value.clone(), source };
    let fd = value.parse().map_err(|_| fail(io::Error::new(io::ErrorKind::InvalidInput, "not a descriptor number")))?;
    sys::take_inherited_fd(fd).map(|fd| Some(File::from(fd))).map_err(fail)
}

/// Opens the read end of `<bundle>/start` without waiting for a writer
/// (`O_NONBLOCK`), as root and before `pivot_root` hides the bundle. Holding
/// it open also means StartContainer's open for writing never blocks.
pub(super) fn open_start_fifo(bundle: &Path) -> Result<(PathBuf, OwnedFd), InitError> {
    let path = bundle.join(crate::ns::spec::START_FIFO);
    let fail = |source: io::Error| InitError::StartFifo { path: path.clone(), source };
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = open(&path, flags, Mode::empty()).map_err(|e| fail(e.into()))?;
    let stat = fstat(&fd).map_err(|e| fail(e.into()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(fail(io::Error::new(io::ErrorKind::InvalidInput, "not a FIFO")));
    }
    Ok((path, fd))
}

/// Joins the pod's net, IPC and UTS namespaces, then unshares the mount
/// namespace. Every file is opened before the first `setns`.
///
/// The PID namespace is not joined here: `setns(CLONE_NEWPID)` only moves
/// the caller's future children, and `init` execs instead of forking. The
/// monitor creates or joins the PID namespace when it spawns `init`.
pub(super) fn join_namespaces(ns: &NamespaceSpec) -> Result<(), InitError> {
    let wanted = [("net", &ns.net, CloneFlags::CLONE_NEWNET), ("ipc", &ns.ipc, CloneFlags::CLONE_NEWIPC)];
    let wanted = wanted.into_iter().chain([("uts", &ns.uts, CloneFlags::CLONE_NEWUTS)]);
    let mut opened = Vec::new();
    for (kind, path, flag) in wanted {
        let Some(path) = path else { continue };
        let file = File::open(path).map_err(|source| InitError::Setns { kind, path: path.clone(), source })?;
        opened.push((kind, path, flag, file));
    }
    for (kind, path, flag, file) in opened {
        setns(file.as_fd(), flag).map_err(|e| InitError::Setns { kind, path: path.clone(), source: e.into() })?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|source| InitError::Unshare { source })
}

/// Sets the hostname, only in a UTS namespace of the container's own (never
/// the host's).
pub(super) fn set_hostname(spec: &ContainerSpec) -> Result<(), InitError> {
    match (&spec.hostname, &spec.namespaces.uts) {
        (Some(hostname), Some(_)) => {
            sethostname(hostname).map_err(|source| InitError::Hostname { hostname: hostname.clone(), source })
        }
        (Some(_), None) => {
            tracing::debug!("hostname ignored: the container shares the host's UTS namespace");
            Ok(())
        }
        (None, _) => Ok(()),
    }
}

/// Writes the sysctls through the host's `/proc/sys`: they apply to the
/// namespaces the calling thread is in, which are the container's now.
pub(super) fn write_sysctls(sysctls: &[Sysctl]) -> Result<(), InitError> {
    for s in sysctls {
        fs::write(Path::new("/proc/sys").join(&s.path), s.value.as_bytes())
            .map_err(|e| InitError::Sysctl { key: s.key.clone(), reason: e.to_string() })?;
    }
    Ok(())
}

/// Sets the resource limits.
pub(crate) fn set_rlimits(rlimits: &[Rlimit]) -> Result<(), InitError> {
    for r in rlimits {
        setrlimit(r.resource, r.soft, r.hard).map_err(|source| InitError::Rlimit {
            name: r.name.clone(),
            soft: r.soft,
            hard: r.hard,
            source,
        })?;
    }
    Ok(())
}

/// Writes `oom_score_adj`, raised to the current value when lower: lowering
/// it needs `CAP_SYS_RESOURCE`, which this host's root lacks.
pub(crate) fn set_oom_score_adj(wanted: Option<i32>) -> Result<(), InitError> {
    let Some(wanted) = wanted else { return Ok(()) };
    let file = Path::new("/proc/self/oom_score_adj");
    let fail = |value| move |source| InitError::OomScoreAdj { value, source };
    let current = fs::read_to_string(file).map_err(fail(wanted))?;
    let current: i32 =
        current.trim().parse().map_err(|e| fail(wanted)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let value = wanted.max(current);
    if value != wanted {
        tracing::debug!(wanted, value, "oom_score_adj raised to the current value");
    }
    fs::write(file, value.to_string()).map_err(fail(value))
}

/// Asks AppArmor to confine the program `execve` starts.
pub(crate) fn set_apparmor(profile: Option<&str>) -> Result<(), InitError> {
    let Some(profile) = profile else { return Ok(()) };
    let fail = |source| InitError::AppArmor { profile: profile.to_owned(), source };
    let modern = Path::new("/proc/thread-self/attr/apparmor/exec");
    let file = if modern.exists() { modern } else { Path::new("/proc/thread-self/attr/exec") };
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("exec {profile}").as_bytes()))
        .map_err(fail)
}

/// Creates the missing components of `cwd` (mode 0755), owned by the
/// container's user. Runs inside the new root, so symlinks stay inside it.
pub(super) fn make_cwd(cwd: &str, user: &UserSpec) -> Result<(), InitError> {
    let target = Path::new(cwd);
    if target.is_dir() {
        return Ok(());
    }
    let fail = |source| InitError::Cwd { path: cwd.to_owned(), source };
    let mut dir = PathBuf::from("/");
    for component in target.components().skip(1) {
        dir.push(component);
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => lchown(&dir, Some(user.uid), Some(user.gid)).map_err(fail)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// `chdir(cwd)`. `Ok(false)` when denied: the caller tries again as the
/// container's user (a directory root cannot enter is rare; one the user
/// can only enter once it is that user is not).
pub(crate) fn enter_cwd(cwd: &str, may_defer: bool) -> Result<bool, InitError> {
    match chdir(cwd) {
        Ok(()) => Ok(true),
        Err(Errno::EACCES | Errno::EPERM) if may_defer => Ok(false),
        Err(e) => Err(InitError::Cwd { path: cwd.to_owned(), source: e.into() }),
    }
}

/// Sets `no_new_privs` when asked, then installs the seccomp filter, if any.
/// Without `no_new_privs` the filter needs `CAP_SYS_ADMIN`: call it before
/// [`set_identity`] then.
pub(crate) fn confine(seccomp: Option<&BpfProgram>, no_new_privs: bool) -> Result<(), InitError> {
    match seccomp {
        Some(prog) => sys::install_seccomp_filter(prog, no_new_privs)
            .map_err(|source| InitError::Confine { step: "install seccomp filter", source }),
        None if no_new_privs => nix::sys::prctl::set_no_new_privs()
            .map_err(|e| InitError::Confine { step: "set no_new_privs", source: e.into() }),
        None => Ok(()),
    }
}

/// Becomes the container's user, then applies the capability sets.
///
/// Order: `setgroups` and `setresgid` need `CAP_SETGID`, so they come
/// before `setresuid`; `PR_SET_KEEPCAPS` keeps the permitted set across
/// `setresuid` away from uid 0 (effective is cleared), and
/// [`CapSet::apply`] raises effective to permitted again before it uses
/// `CAP_SETPCAP` to shrink every set.
pub(crate) fn set_identity(user: &UserSpec, caps: &CapSet) -> Result<(), InitError> {
    let step = |step: String| move |source| InitError::Identity { step, source };
    let groups: Vec<Gid> = user.additional_gids.iter().copied().map(Gid::from_raw).collect();
    setgroups(&groups).map_err(step(format!("setgroups({:?})", user.additional_gids)))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).map_err(step(format!("setresgid({gid})")))?;
    nix::sys::prctl::set_keepcaps(true).map_err(step("prctl(PR_SET_KEEPCAPS)".to_owned()))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).map_err(step(format!("setresuid({uid})")))?;
    caps.apply().map_err(|source| InitError::Caps { source })
}

/// The program to exec: `args[0]` itself when it has a `/`, else its match
/// in the container's `PATH`. Checked now, as the container's user, so
/// that a missing binary fails CreateContainer, not StartContainer.
pub(crate) fn resolve_program(arg0: &str, env: &[String]) -> Result<PathBuf, InitError> {
    let executable = |p: &Path| p.is_file() && access(p, AccessFlags::X_OK).is_ok();
    if !arg0.contains('/') {
        return search_path(arg0, env, executable);
    }
    let path = PathBuf::from(arg0);
    access(&path, AccessFlags::X_OK).map_err(|errno| InitError::Exec { path: path.clone(), errno })?;
    if path.is_dir() {
        return Err(InitError::Exec { path, errno: Errno::EISDIR });
    }
    Ok(path)
}

/// Resets signal dispositions and the signal mask, so the container starts
/// with none ignored (the Rust runtime ignores `SIGPIPE`) or blocked.
pub(crate) fn reset_signals() {
    sys::reset_signal_dispositions();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        tracing::debug!(error = %e, "could not clear the signal mask");
    }
}

/// Writes the readiness byte and closes the descriptor; with a start error,
/// [`START_ERROR_MARK`] and the message instead (the monitor keeps it for
/// StartContainer).
pub(super) fn signal_ready(ready: Option<File>, start_error: Option<&str>) -> Result<(), InitError> {
    let Some(mut ready) = ready else { return Ok(()) };
    let message = match start_error {
        None => vec![0],
        Some(why) => [&[START_ERROR_MARK][..], why.as_bytes()].concat(),
    };
    ready.write_all(&message).map_err(|source| InitError::Ready { value: READY_FD_ENV.to_owned(), source })
}

/// Blocks until StartContainer writes to the start FIFO. Without a byte (the
/// writer closed it empty: the agent gave up), exits 1 without a message.
pub(super) fn wait_for_start(path: &Path, fifo: OwnedFd) -> Result<(), InitError> {
    let fail = |source| InitError::StartFifo { path: path.to_owned(), source };
    let mut fifo = File::from(fifo);
    let mut byte = [0u8; 1];
    loop {
        // A FIFO opened with O_NONBLOCK before any writer did reports no
        // hang-up until a writer has come and gone, so this waits for one.
        sys::wait_readable(fifo.as_fd()).map_err(fail)?;
        match fifo.read(&mut byte) {
            Ok(0) => std::process::exit(1),
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(fail(e)),
        }
    }
}

/// `execve(program, argv, envp)`.
pub(super) fn exec(program: &Path, argv: &[CString], envp: &[CString]) -> Result<Infallible, InitError> {
    let fail = |errno| InitError::Exec { path: program.to_owned(), errno };
    let c_program = CString::new(program.as_os_str().as_bytes()).map_err(|_| fail(Errno::EINVAL))?;
    execve(&c_program, argv, envp).map_err(fail)
}
