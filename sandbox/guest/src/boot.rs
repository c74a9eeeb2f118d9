//! Getting to the server: the kvm-test launcher, and the PID 1 of kvm-test's
//! PID namespace or of a VM.
//!
//! ```text
//! crius ──spawns──► crius-guest kvm-test       (the launcher; exits once the agent listens)
//!                     setns(pod netns), unshare(mount, IPC, UTS, PID), / private
//!                     └─► crius-guest pid1     PID 1: mounts /proc, /dev/shm; hostname; reaps
//!                           └─► crius-guest serve --unix ... --kvm-test    the server (PID 2)
//!
//! VM kernel ──► crius-guest                    PID 1: mounts, lo up; reaps; powers off at the end
//!                 └─► crius-guest serve --vsock 1024
//! ```
//!
//! PID 1 only reaps, and passes SIGTERM and SIGINT on to the server, so
//! that the server (which waits for its own children: monitors, exec
//! helpers) never has an orphan's exit stolen from it. When the server
//! exits, kvm-test's PID 1 exits with its code (the kernel then kills what
//! is left in the PID namespace); a VM's PID 1 powers the VM off.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::{self, KvmTestArgs, Listen, ServeArgs, VSOCK_PORT};

/// The file the launcher writes the agent's (PID 1's) host pid to.
pub const PID_FILE: &str = "guest.pid";
/// How long the launcher waits for the agent to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The run root in a VM.
const VM_RUN_ROOT: &str = "/run/crius-guest";
/// The size of kvm-test's own `/dev/shm`.
const SHM_SIZE: &str = "size=64m";

/// Failures before the server runs.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A system call failed.
    #[error("{step}")]
    Sys {
        /// What was being done.
        step: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent exited before it listened.
    #[error("the agent exited before it listened ({0})")]
    Exited(String),
    /// The agent did not listen in time.
    #[error("the agent did not listen on {} within {:?}", .0.display(), LISTEN_TIMEOUT)]
    Timeout(PathBuf),
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> BootError {
    let step = step.into();
    move |e| BootError::Sys { step, source: e.into() }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> BootError {
    let step = step.into();
    move |source| BootError::Sys { step, source }
}

/// `crius-guest kvm-test`: enters the pod's network namespace and new
/// mount, IPC, UTS and PID namespaces, starts the agent as their PID 1,
/// writes its host pid to `<state>/guest.pid`, and returns once the agent
/// listens on its socket.
pub fn launch_kvm_test(args: &KvmTestArgs) -> Result<(), BootError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state)
        .map_err(io_err(format!("create {}", args.state.display())))?;
    // So that the socket's existence means the new agent listens.
    match fs::remove_file(&args.listen) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err(format!("remove {}", args.listen.display()))(e));
        }
        _ => {}
    }
    if let Some(netns) = &args.netns {
        let file = File::open(netns).map_err(io_err(format!("open {}", netns.display())))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(sys(format!("enter {}", netns.display())))?;
    }
    let flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID;
    unshare(flags).map_err(sys("unshare mount, IPC, UTS and PID namespaces"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make mounts private"))?;
    // The first child after unshare(CLONE_NEWPID) is PID 1 of the new namespace.
    let mut agent = Command::new("/proc/self/exe")
        .args(cli::pid1_args(args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io_err("start the agent"))?;
    let pid_file = args.state.join(PID_FILE);
    let written = write_atomic(&pid_file, format!("{}\n", agent.id()).as_bytes());
    if let Err(e) = written {
        let _ = agent.kill();
        return Err(io_err(format!("write {}", pid_file.display()))(e));
    }
    wait_listening(&mut agent, &args.listen)
}

fn wait_listening(agent: &mut Child, socket: &Path) -> Result<(), BootError> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = agent.try_wait() {
            return Err(BootError::Exited(status.to_string()));
        }
        if Instant::now() >= deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            return Err(BootError::Timeout(socket.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

/// PID 1 of kvm-test's namespaces: its own /proc and /dev/shm, the
/// hostname, then the server. Returns the server's exit code.
pub fn kvm_test_init(args: &KvmTestArgs) -> Result<i32, BootError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), nodev, None::<&str>).map_err(sys("mount /proc"))?;
    // The pod's IPC namespace gets a /dev/shm of its own, not the node's.
    let shm_options = format!("mode=1777,{SHM_SIZE}");
    mount(Some("shm"), "/dev/shm", Some("tmpfs"), nodev, Some(shm_options.as_str())).map_err(sys("mount /dev/shm"))?;
    if let Some(name) = args.hostname.as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(name).map_err(sys("set the hostname"))?;
    }
    if let Err(e) = crius_sandbox::ns::loopback::set_loopback_up() {
        tracing::warn!(error = %e, "bring lo up");
    }
    let serve =
        ServeArgs { listen: Listen::Unix(args.listen.clone()), run_root: args.state.join("run"), kvm_test: true };
    supervise(&cli::serve_command(&serve))
}

/// A mount a VM's PID 1 makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmMount {
    /// Source.
    pub source: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// File system type.
    pub fstype: &'static str,
    /// `nosuid`, `nodev`, `noexec`.
    pub flags: MsFlags,
    /// Options.
    pub data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// What a VM's PID 1 mounts, in order.
pub const VM_MOUNTS: &[VmMount] = &[
    VmMount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    VmMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: "" },
    VmMount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: "mode=0755" },
    VmMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    VmMount { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=1777" },
    VmMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=0755" },
    VmMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=1777" },
    VmMount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: "" },
];

/// PID 1 of a VM: mounts, `lo` up, the server on vsock; when the server
/// exits, the VM powers off. Never returns.
pub fn vm_init() -> ! {
    for m in VM_MOUNTS {
        if let Err(e) = vm_mount(m) {
            tracing::error!(target = m.target, error = %crius_sandbox::error_report(&e), "mount");
        }
    }
    // Controllers for the containers' cgroups (best effort: the kernel may lack some).
    for controller in ["+cpu", "+cpuset", "+memory", "+pids", "+io", "+hugetlb"] {
        let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", controller);
    }
    if let Err(e) = crius_sandbox::ns::loopback::set_loopback_up() {
        tracing::error!(error = %e, "bring lo up");
    }
    let serve = ServeArgs { listen: Listen::Vsock(VSOCK_PORT), run_root: PathBuf::from(VM_RUN_ROOT), kvm_test: false };
    match supervise(&cli::serve_command(&serve)) {
        Ok(code) => tracing::info!(code, "the guest server exited: powering off"),
        Err(e) => tracing::error!(error = %crius_sandbox::error_report(&e), "the guest server failed: powering off"),
    }
    nix::unistd::sync();
    let e = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // PID 1 must not exit (the kernel would panic): wait to be killed.
    tracing::error!(error = %e, "power off failed");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn vm_mount(m: &VmMount) -> Result<(), BootError> {
    fs::create_dir_all(m.target).map_err(io_err(format!("create {}", m.target)))?;
    let data = (!m.data.is_empty()).then_some(m.data);
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, data) {
        // Already there (the kernel mounts devtmpfs itself with CONFIG_DEVTMPFS_MOUNT).
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        other => other.map_err(sys(format!("mount {} on {}", m.fstype, m.target))),
    }
}

/// Runs `crius-guest <args>` as the server and reaps every child until it
/// exits; SIGTERM and SIGINT become a SIGTERM to the server (which then
/// stops every container and exits), SIGHUP is ignored. Its exit code (128
/// + signal when killed).
fn supervise(args: &[OsString]) -> Result<i32, BootError> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    // Blocked before the server exists, so that no SIGCHLD is missed. The
    // server inherits the mask and clears it first thing.
    signals.thread_block().map_err(sys("block signals"))?;
    let server =
        Command::new("/proc/self/exe").args(args).stdin(Stdio::null()).spawn().map_err(io_err("start the server"))?;
    let server = Pid::from_raw(i32::try_from(server.id()).unwrap_or(i32::MAX));
    loop {
        match signals.wait().map_err(sys("wait for signals"))? {
            Signal::SIGCHLD => {
                if let Some(code) = reap(server) {
                    return Ok(code);
                }
            }
            // A lost session or terminal is no reason to stop the pod.
            Signal::SIGHUP => {}
            _ => {
                let _ = kill(server, Signal::SIGTERM);
            }
        }
    }
}

/// Reaps every exited child; the server's exit code once it is among them.
fn reap(server: Pid) -> Option<i32> {
    let mut server_code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == server => server_code = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == server => server_code = Some(128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return server_code,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_mounts_what_containers_need_in_order() {
        let targets: Vec<&str> = VM_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp", "/sys/fs/cgroup"]);
        for (i, m) in VM_MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().and_then(Path::to_str).unwrap_or("/");
            assert!(
                parent == "/" || targets[..i].iter().any(|t| parent.starts_with(t)),
                "{} is mounted before its parent",
                m.target
            );
            assert!(m.flags.contains(MsFlags::MS_NOSUID), "{}", m.target);
        }
    }
}
