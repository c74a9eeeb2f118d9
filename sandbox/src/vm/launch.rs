//! Starting and stopping the machine that carries a pod's guest agent.
//!
//! `kvm-test`: `crius-guest kvm-test` enters the pod's network namespace,
//! unshares its own mount, PID, IPC and UTS namespaces and continues as PID
//! 1 of the new PID namespace; the launcher writes that process's pid to
//! `<state>/guest.pid` and exits. The agent outlives crius (its own
//! session). Killing it ends every process of its PID namespace, so nothing
//! of the pod survives it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{KvmBackend, Machine, VmPod};
use crate::backend::{BackendError, PodRequest};
use crate::cgroups::Cgroup;

/// How long the guest agent may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed guest agent may take to go.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the pod's guest agent and waits until it listens.
pub(super) fn start_guest(
    backend: &KvmBackend,
    pod: &VmPod,
    request: &PodRequest,
    netns: &Path,
) -> Result<(), BackendError> {
    if backend.machine == Machine::Kvm {
        return Err(BackendError::BadState("the kvm machine (crius's VMM) is not built into this crius yet".into()));
    }
    let dir = &pod.state_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| BackendError::failed(format!("create {}", dir.display()), e))?;
    let log = fs::File::create(dir.join("guest.log"))
        .map_err(|e| BackendError::failed(format!("create {}", dir.join("guest.log").display()), e))?;
    let mut command = Command::new(&backend.guest_binary);
    command.arg("kvm-test").arg("--listen").arg(pod.socket()).arg("--state").arg(dir).arg("--netns").arg(netns);
    if !request.hostname.is_empty() {
        command.arg("--hostname").arg(&request.hostname);
    }
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(|e| BackendError::failed(format!("run {}", backend.guest_binary.display()), e))?;
    if !status.success() {
        return Err(BackendError::BadState(format!("the guest agent did not start ({status}): {}", log_tail(dir))));
    }
    let pid = guest_pid(pod)
        .ok_or_else(|| BackendError::BadState(format!("the guest agent wrote no pid: {}", log_tail(dir))))?;
    if let (Ok(mode), Some(path)) = (backend.cgroups.as_ref(), request.cgroup.as_deref()) {
        // The agent, and with it every process it starts, is charged to the pod.
        Cgroup::open(mode, path)
            .and_then(|cgroup| cgroup.add_process(pid))
            .map_err(|e| BackendError::failed("move the guest agent into the pod cgroup", e))?;
    }
    let deadline = Instant::now() + START_TIMEOUT;
    while !pod.socket().exists() {
        if !guest_alive(pod) {
            return Err(BackendError::BadState(format!("the guest agent exited: {}", log_tail(dir))));
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Timeout(format!("the guest agent did not listen within {START_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The agent's pid, from its pid file.
fn guest_pid(pod: &VmPod) -> Option<i32> {
    fs::read_to_string(pod.state_dir.join("guest.pid")).ok()?.trim().parse().ok()
}

/// Whether the pod's guest agent runs (its pid is still this pod's agent:
/// pids are reused).
pub(super) fn guest_alive(pod: &VmPod) -> bool {
    guest_pid(pod).is_some_and(|pid| is_guest(pod, pid))
}

/// Whether `pid` is the agent of `pod`: its command line names the pod's
/// state directory (the agent re-executes itself, so its name is not there).
fn is_guest(pod: &VmPod, pid: i32) -> bool {
    let state = pod.state_dir.display().to_string();
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == state.as_bytes()))
}

/// Kills the pod's guest agent (and with it its PID namespace) and waits
/// until it is gone; a guest that is gone already is fine.
pub(super) fn stop_guest(pod: &VmPod) -> Result<(), BackendError> {
    let Some(pid) = guest_pid(pod).filter(|pid| is_guest(pod, *pid)) else { return Ok(()) };
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_guest(pod, pid) {
        if Instant::now() >= deadline {
            return Err(BackendError::BadState(format!("guest agent {pid} did not exit after SIGKILL")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The end of the agent's log, for errors.
fn log_tail(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("; ")
}
