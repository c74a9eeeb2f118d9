//! StopContainer (and the stop StopPodSandbox does for each container):
//! SIGTERM, a grace period, then SIGKILL.
//!
//! A client that gives up during the grace period (its deadline passed, or
//! it reset the stream) abandons the stop, as with containerd: the container
//! keeps running and kubelet retries. SIGKILL is only sent for a client
//! that still waits, or when the grace period is zero.

use std::path::Path;
use std::time::{Duration, Instant};

use cri_api::v1::{StopContainerRequest, StopContainerResponse};
use crius_sandbox::ns::container::{self as runtime, State};
use nix::sys::signal::Signal;

use super::super::AgentState;
use super::super::cancel::Cancel;
use super::super::pods::runtime_err;
use super::record::{details, refresh};
use crate::error::AgentError;
use crate::store::{ContainerRecord, ContainerState};

/// How long a container may take to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stops a container: SIGTERM, then SIGKILL after `timeout` seconds.
/// Stopping an exited or unknown container is not an error.
pub fn stop_container(
    state: &AgentState,
    request: StopContainerRequest,
    cancel: &Cancel,
) -> Result<StopContainerResponse, AgentError> {
    let Some(record) = super::super::lookup::container_if_any(state, &request.container_id)? else {
        return Ok(StopContainerResponse {});
    };
    stop(state, record, Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0)), cancel)?;
    Ok(StopContainerResponse {})
}

/// Stops `record` (used by StopPodSandbox too, with a zero timeout).
pub fn stop(state: &AgentState, record: ContainerRecord, timeout: Duration, cancel: &Cancel) -> Result<(), AgentError> {
    let record = refresh(state, record)?;
    if matches!(record.state, ContainerState::Exited | ContainerState::Unknown) {
        return Ok(());
    }
    let details = details(&record)?;
    if record.state == ContainerState::Running
        && !timeout.is_zero()
        && graceful_stop(&record.id, &details.bundle, timeout, cancel)?
    {
        refresh(state, record)?;
        return Ok(());
    }
    runtime::kill(&details.bundle, Signal::SIGKILL).map_err(runtime_err)?;
    if !wait_exited(&details.bundle, KILL_WAIT) {
        return Err(AgentError::Runtime(format!("container {} did not exit after SIGKILL", record.id)));
    }
    let record = refresh(state, record)?;
    tracing::info!(container_id = %record.id, exit_code = record.exit_code, "container stopped");
    Ok(())
}

/// Sends SIGTERM and waits up to `timeout` for the exit. A process that is
/// PID 1 of its namespace drops a signal it has no handler for; right after
/// start, a shell may not have exec'd the program that installs one yet. So
/// while the process has no SIGTERM handler the signal is sent again once the
/// handler appears (a process that had one gets exactly one SIGTERM).
/// `Ok(false)`: the grace period ended with the container still running.
fn graceful_stop(id: &str, bundle: &Path, timeout: Duration, cancel: &Cancel) -> Result<bool, AgentError> {
    let init = runtime::read_pid_file(&bundle.join(crius_sandbox::ns::spec::INIT_PID_FILE)).ok().map(|r| r.pid);
    let handled = || init.is_some_and(catches_sigterm);
    let mut delivered = handled();
    runtime::kill(bundle, Signal::SIGTERM).map_err(runtime_err)?;
    let deadline = Instant::now() + timeout;
    loop {
        if wait_exited(bundle, Duration::from_millis(100).min(timeout)) {
            return Ok(true);
        }
        if cancel.is_cancelled() {
            tracing::info!(container_id = %id, "StopContainer abandoned by its client; the container keeps running");
            return Err(AgentError::Cancelled(format!(
                "the client gave up before container {id} exited; it was sent SIGTERM and keeps running"
            )));
        }
        if !delivered && handled() {
            delivered = true;
            runtime::kill(bundle, Signal::SIGTERM).map_err(runtime_err)?;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Whether `pid` has a handler for SIGTERM (bit 15 of SigCgt).
fn catches_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Polls until the bundle reports an exit (true) or `timeout` passes.
pub fn wait_exited(bundle: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match runtime::state(bundle) {
            Ok(State::Exited(_)) | Err(_) => return true,
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
