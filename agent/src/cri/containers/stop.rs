//! StopContainer (and the stop StopPodSandbox does for each container):
//! SIGTERM, a grace period, then SIGKILL.
//!
//! A client that gives up during the grace period (its deadline passed, or
//! it reset the stream) abandons the stop, as with containerd: the container
//! keeps running and kubelet retries. SIGKILL is only sent for a client
//! that still waits, or when the grace period is zero.

use std::time::{Duration, Instant};

use cri_api::v1::{StopContainerRequest, StopContainerResponse};
use crius_sandbox::backend::{Backend, ContainerHandle, RunState, Stopped};
use nix::sys::signal::Signal;

use super::super::AgentState;
use super::super::cancel::Cancel;
use super::record::{backend_of, refresh};
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
    let (backend, handle, _) = backend_of(state, &record)?;
    if record.state == ContainerState::Running && !timeout.is_zero() {
        match backend.stop_gracefully(&handle, timeout, &|| cancel.is_cancelled())? {
            Stopped::Exited => {
                refresh(state, record)?;
                return Ok(());
            }
            Stopped::Abandoned => {
                tracing::info!(container_id = %record.id, "StopContainer abandoned by its client; the container keeps running");
                return Err(AgentError::Cancelled(format!(
                    "the client gave up before container {} exited; it was sent SIGTERM and keeps running",
                    record.id
                )));
            }
            Stopped::StillRunning => {}
        }
    }
    backend.signal_container(&handle, Signal::SIGKILL)?;
    if !wait_exited(backend.as_ref(), &handle, KILL_WAIT)? {
        return Err(AgentError::Runtime(format!("container {} did not exit after SIGKILL", record.id)));
    }
    let record = refresh(state, record)?;
    tracing::info!(container_id = %record.id, exit_code = record.exit_code, "container stopped");
    Ok(())
}

/// Polls until the backend reports the container ended (true) or `timeout`
/// passes.
pub fn wait_exited(backend: &dyn Backend, handle: &ContainerHandle, timeout: Duration) -> Result<bool, AgentError> {
    let deadline = Instant::now() + timeout;
    loop {
        match backend.container_state(handle)? {
            RunState::Exited(_) | RunState::Gone(_) => return Ok(true),
            _ if Instant::now() >= deadline => return Ok(false),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
