//! The crate's raw system calls: the few that neither std nor nix wrap
//! safely. This is the only module allowed to use `unsafe`; every block says
//! why it is sound. Each function is a safe, minimal wrapper.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::BpfProgram;

/// Installs `prog` as a seccomp filter of the calling thread
/// (`seccomp(SECCOMP_SET_MODE_FILTER, 0, …)`).
///
/// With `set_no_new_privs`, `PR_SET_NO_NEW_PRIVS` is set first, and the
/// filter installs without privileges. Without it, the thread must hold
/// `CAP_SYS_ADMIN` (the kernel refuses with `EACCES` otherwise), so call it
/// before dropping capabilities. Unlike `seccompiler::apply_filter`, this
/// never sets `no_new_privs` behind the caller's back.
pub(crate) fn install_seccomp_filter(prog: &BpfProgram, set_no_new_privs: bool) -> io::Result<()> {
    if prog.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty seccomp program"));
    }
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program longer than 65535 instructions"))?;
    if set_no_new_privs {
        nix::sys::prctl::set_no_new_privs()?;
    }
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut() };
    // SAFETY: `seccompiler::sock_filter` is `#[repr(C)]` with the fields of
    // the kernel's `struct sock_filter` (u16, u8, u8, u32), as is
    // `libc::sock_filter`, so the cast pointer addresses `len` valid
    // instructions. The kernel only copies them (`copy_from_user`) and never
    // writes through the pointer; `prog` and `fprog` outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            0 as libc::c_ulong,
            &raw const fprog,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Marks every descriptor from `first` on close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11+), so that
/// nothing inherited leaks through `execve`.
pub(crate) fn set_cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing and touches
    // no memory: it only sets a flag on open descriptors, which changes
    // nothing for the descriptors this process keeps using until `execve`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::from(first),
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Set once [`take_inherited_fd`] has handed out a descriptor.
static INHERITED_FD_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the descriptor `fd` this process inherited from its
/// parent for its exclusive use (the readiness pipe of `init`).
///
/// Refuses the standard descriptors and descriptors that are not open, and
/// hands out at most one descriptor per process, so that no two owners can
/// exist.
pub(crate) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is a standard stream")));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number
    // yields EBADF and nothing else.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    if INHERITED_FD_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the inherited descriptor was already taken"));
    }
    // SAFETY: `fd` is open (checked above) and was passed to this process by
    // its parent for this single purpose: nothing else in the process opened
    // it or refers to it, and the flag above makes this the only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until `fd` is readable or hung up (`poll(POLLIN)`, no timeout,
/// restarted on `EINTR`).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `pfd` is one valid, exclusively borrowed pollfd for the
        // duration of the call, matching the count of 1; `fd` is borrowed,
        // so it stays open.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Resets the disposition of every signal to `SIG_DFL`. Ignored signals
/// stay ignored across `execve` (the Rust runtime ignores `SIGPIPE`; a
/// parent may ignore others), so a process about to exec a container must
/// reset them. Uses the raw `rt_sigaction`: libc refuses its internal
/// signals (32, 33), which a parent may have left ignored too. Call it after
/// the last `set*id` (glibc uses signal 33 for those in threaded processes).
/// `SIGKILL` and `SIGSTOP` cannot be changed and are skipped.
pub(crate) fn reset_signal_dispositions() {
    // The kernel's `struct sigaction` (handler, flags, restorer, mask on
    // x86_64 and aarch64): all zeros is SIG_DFL, no flags, empty mask.
    let default = [0u64; 4];
    let sigset_size: libc::size_t = 8;
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid, readable kernel sigaction of 32
        // bytes (installing SIG_DFL registers no handler code); the old
        // action pointer is null, so the kernel writes nothing. An error
        // leaves the disposition as it was and is ignored on purpose.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), std::ptr::null_mut::<u64>(), sigset_size);
        }
    }
}

/// Spawns `cmd` so that the child is killed (`SIGKILL`) when the calling
/// thread exits: `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child, between
/// `fork` and `execve`.
///
/// A parent that dies before the child's `prctl` would go unnoticed, and
/// `getppid` cannot tell (the child may be in a PID namespace where its
/// parent has no number). So the child also checks a pipe whose write end
/// only the parent holds: hung up after the `prctl` means the parent is gone,
/// and the child exits instead of running the command. The pipe is closed in
/// the parent when this returns. Call it from a single-threaded process (a
/// child forked meanwhile by another thread would hold the write end too).
///
/// With `controlling_tty`, the child also starts a new session and makes its
/// stdin (a terminal) the session's controlling terminal.
pub(crate) fn spawn_dying_with_parent(
    mut cmd: std::process::Command,
    controlling_tty: bool,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;

    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (read_fd, write_fd) = (read_end.as_raw_fd(), write_end.as_raw_fd());
    let check = move || -> io::Result<()> {
        // SAFETY: closes the child's copy of the pipe's write end, open here
        // (inherited, close-on-exec) and used by nothing else in the child;
        // without it, only the parent's keeps the pipe from hanging up.
        // `close` is async-signal-safe.
        unsafe { libc::close(write_fd) };
        // SAFETY: `prctl(PR_SET_PDEATHSIG)` only sets a flag of the calling
        // process; it is async-signal-safe and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd { fd: read_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd on this stack frame, matching
        // the count of 1, naming the pipe's read end (open in the child);
        // a zero timeout never blocks. `poll` is async-signal-safe.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc > 0 {
            // Hung up: the parent died before PR_SET_PDEATHSIG took effect.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // The parent blocks the signals it waits for; the command must
        // start with none blocked.
        // SAFETY: `empty` is a local sigset initialised by `sigemptyset`
        // before use; `pthread_sigmask` with SIG_SETMASK only reads it and
        // is async-signal-safe; the old mask is not requested (null).
        let rc = unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if controlling_tty {
            // SAFETY: `setsid` and `ioctl(TIOCSCTTY)` on fd 0 only change the
            // calling process's session and terminal; both are
            // async-signal-safe and pass no pointers.
            let rc = unsafe { if libc::setsid() < 0 { -1 } else { libc::ioctl(0, libc::TIOCSCTTY, 0) } };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: `pre_exec` requires the closure to be sound in the forked
    // child of a possibly multi-threaded process: it only makes the
    // async-signal-safe calls above, allocates nothing, takes no lock and
    // shares no memory with other threads (it captures integers and a bool by value).
    unsafe { cmd.pre_exec(check) };
    let child = cmd.spawn();
    drop(read_end);
    drop(write_end);
    child
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub(crate) fn set_window_size(terminal: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `TIOCSWINSZ` reads one `winsize` from the pointer, which points
    // to a valid, initialised struct on this stack frame; the descriptor is
    // borrowed, so it is open for the call.
    let rc = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sends one descriptor over a unix socket (`SCM_RIGHTS`).
pub(crate) fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let payload = [io::IoSlice::new(b"t")];
    sendmsg::<()>(socket.as_raw_fd(), &payload, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`]; `None` when the peer closed
/// the socket without sending one.
pub(crate) fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for
                // this message (SCM_RIGHTS); nothing else owns it, so it is
                // wrapped exactly once (a second one is closed by its own wrapper).
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    Ok(received)
}
