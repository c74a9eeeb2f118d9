//! `crius internal init <bundle>`: turns itself into the container process.
//!
//! The monitor starts this process with the container's stdout and stderr
//! connected, in the container's PID namespace and cgroup, and optionally a
//! readiness pipe named by [`READY_FD_ENV`]. [`run`] then, in this order:
//!
//! 1. takes the readiness descriptor, marks every other inherited descriptor
//!    from 3 on close-on-exec, reads `<bundle>/config.json` and checks it
//!    (capability names, rlimit names, sysctls, argv, env) and compiles the
//!    seccomp profile (a `Localhost` file is on the host: read it now);
//! 2. opens the read end of `<bundle>/start` with `O_NONBLOCK` (the bundle is
//!    out of reach after `pivot_root`, and the container's user might not be
//!    allowed to open the FIFO, even through `/proc/self/fd`). It waits with
//!    `poll`: a FIFO opened so before any writer reports no hang-up until a
//!    writer came, so `poll` sleeps until StartContainer opens and writes.
//!    Holding the read end also keeps StartContainer's `open(O_WRONLY)` from
//!    blocking;
//! 3. joins the net, IPC and UTS namespaces (`setns`), then
//!    `unshare(CLONE_NEWNS)`. The PID namespace is the monitor's business:
//!    `setns(CLONE_NEWPID)` would only affect children, so `pid` is ignored;
//! 4. sets the hostname (only with a UTS namespace of its own) and writes the
//!    sysctls through the host's `/proc/sys`, which shows the joined
//!    namespaces; after step 5 `/proc/sys` is read-only;
//! 5. [`crate::mounts::setup_rootfs`], ending with `pivot_root`;
//! 6. rlimits, `oom_score_adj` (never below its current value), the AppArmor
//!    exec profile, and creates the working directory for the user;
//! 7. enters the working directory as root (retried as the user if denied);
//! 8. seccomp without `no_new_privs`: installed now, while `CAP_SYS_ADMIN` is
//!    still held (the kernel requires it then);
//! 9. `setgroups`, `setresgid`, `PR_SET_KEEPCAPS` + `setresuid`, then the
//!    capability sets ([`crate::caps::CapSet::apply`]);
//! 10. resolves `args[0]` in the container's `PATH` as the user, so a missing
//!     binary fails CreateContainer;
//! 11. with `no_new_privs`: sets it, then installs seccomp, last (as runc
//!     does);
//! 12. resets signal dispositions and mask, writes the byte `0` to the
//!     readiness descriptor and closes it, blocks until StartContainer writes
//!     a byte to the FIFO (exits 1 quietly if the writer closes it empty);
//! 13. `execve`.
//!
//! **Seccomp trade-off.** Without `no_new_privs` the filter is in place from
//! step 8 on, so it must allow what `init` still does: `setgroups`,
//! `setres[ug]id`, `prctl`, `capget`/`capset`, `chdir`, `faccessat`,
//! `newfstatat`, `rt_sigaction`, `rt_sigprocmask`, `write`, `poll`, `read`,
//! `close`, `execve`. The runtime default profile allows all of them; a
//! `Localhost` profile that denies one fails the set-up (runc has the same
//! constraint). With `no_new_privs` only `write`, `poll`, `read`, `close`,
//! `rt_sigaction`… and `execve` run under the filter.

mod error;
pub(crate) mod prepare;
pub(crate) mod steps;

use std::convert::Infallible;
use std::path::{Path, PathBuf};

pub use error::InitError;
pub use steps::{READY_FD_ENV, START_ERROR_MARK};

use crate::ns::spec::ContainerSpec;
use prepare::Prepared;

/// The body of `crius internal init <bundle>`: sets the container up as
/// described in the [module docs](self) and execs its process.
///
/// Never returns on success. On failure it returns why; the caller prints
/// [`InitError::report`] to stderr (the monitor records it) and exits 1
/// (127 for [`InitError::NotInPath`] and an `ENOENT` [`InitError::Exec`],
/// 126 for other `Exec` errors, as shells do). If StartContainer closes the
/// FIFO without writing, it exits 1 itself, silently. Call it
/// single-threaded, with the privileges of root.
pub fn run(bundle: &Path) -> InitError {
    match setup_and_exec(bundle) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn setup_and_exec(bundle: &Path) -> Result<Infallible, InitError> {
    let ready = steps::ready_fd()?;
    crate::sys::set_cloexec_from(3).map_err(|source| InitError::Cloexec { source })?;
    let spec = steps::load_spec(bundle)?;
    let prepared = prepare::prepare(&spec)?;
    let (fifo_path, fifo) = steps::open_start_fifo(bundle)?;
    enter_container(&spec, &prepared)?;
    let program = become_user(&spec, &prepared)?;
    steps::reset_signals();
    match program {
        Ok(program) => {
            steps::signal_ready(ready, None)?;
            steps::wait_for_start(&fifo_path, fifo)?;
            steps::exec(&program, &prepared.argv, &prepared.envp)
        }
        // The set-up is done but there is nothing to run: a start error,
        // reported when the container is started (as runc's start does).
        Err(cannot_start) => {
            steps::signal_ready(ready, Some(&cannot_start.report()))?;
            steps::wait_for_start(&fifo_path, fifo)?;
            std::process::exit(crate::ns::spec::START_ERROR_EXIT_CODE)
        }
    }
}

/// Steps 3 to 6: namespaces, hostname, sysctls, the root, limits, the
/// working directory.
fn enter_container(spec: &ContainerSpec, prepared: &Prepared) -> Result<(), InitError> {
    steps::join_namespaces(&spec.namespaces)?;
    steps::set_hostname(spec)?;
    steps::write_sysctls(&prepared.sysctls)?;
    crate::mounts::setup_rootfs(&spec.rootfs).map_err(|source| InitError::Rootfs { source })?;
    steps::set_rlimits(&prepared.rlimits)?;
    steps::set_oom_score_adj(spec.process.oom_score_adj)?;
    steps::set_apparmor(spec.process.apparmor_profile.as_deref())?;
    steps::make_cwd(&spec.process.cwd, &spec.process.user)
}

/// Steps 7 to 11: working directory, identity, capabilities, program,
/// `no_new_privs` and seccomp. Returns the program to exec, or why there
/// is none (a start error, reported at start).
fn become_user(spec: &ContainerSpec, prepared: &Prepared) -> Result<Result<PathBuf, InitError>, InitError> {
    let process = &spec.process;
    let nnp = process.no_new_privileges;
    let in_cwd = steps::enter_cwd(&process.cwd, true)?;
    if !nnp {
        steps::confine(prepared.seccomp.as_ref(), false)?;
    }
    steps::set_identity(&process.user, &prepared.caps)?;
    if !in_cwd {
        steps::enter_cwd(&process.cwd, false)?;
    }
    let program = match steps::resolve_program(&process.args[0], &process.env) {
        Ok(program) => program,
        Err(cannot_start) => return Ok(Err(cannot_start)),
    };
    if nnp {
        steps::confine(prepared.seccomp.as_ref(), true)?;
    }
    Ok(Ok(program))
}
