//! Exec, Attach and PortForward: check the request, then hand back a
//! single-use URL of the streaming server (see [`crate::streaming`]).

use cri_api::v1::{AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest, PortForwardResponse};

use super::AgentState;
use super::containers::running;
use crate::error::AgentError;
use crate::streaming::portforward::PodPorts;
use crate::streaming::remotecommand::StreamOptions;
use crate::streaming::{Pending, StreamServer};

fn server(state: &AgentState) -> Result<&StreamServer, AgentError> {
    state
        .streaming
        .get()
        .map(|s| s.as_ref())
        .ok_or_else(|| AgentError::Runtime("the streaming server is not running".into()))
}

/// The streams a request asks for, checked.
fn stream_options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<StreamOptions, AgentError> {
    let options = StreamOptions { stdin, stdout, stderr, tty };
    options
        .check()
        .map_err(|reason| AgentError::InvalidArgument { field: "stdin/stdout/stderr/tty", reason: reason.into() })?;
    Ok(options)
}

/// Exec: a URL that runs `cmd` in the container when a client connects.
pub fn exec(state: &AgentState, request: ExecRequest) -> Result<ExecResponse, AgentError> {
    if request.cmd.is_empty() || request.cmd[0].is_empty() {
        return Err(AgentError::InvalidArgument { field: "cmd", reason: "empty command".into() });
    }
    let options = stream_options(request.stdin, request.stdout, request.stderr, request.tty)?;
    let (backend, container, _) = running(state, &request.container_id)?;
    let url = server(state)?.issue(Pending::Exec { backend, container, cmd: request.cmd, options })?;
    Ok(ExecResponse { url })
}

/// Attach: a URL that connects to the container's stdio (kept by its monitor).
pub fn attach(state: &AgentState, request: AttachRequest) -> Result<AttachResponse, AgentError> {
    let options = stream_options(request.stdin, request.stdout, request.stderr, request.tty)?;
    let (backend, container, details) = running(state, &request.container_id)?;
    if request.stdin && !details.stdin {
        return Err(AgentError::InvalidArgument {
            field: "stdin",
            reason: "the container was not created with stdin".into(),
        });
    }
    if request.tty != details.tty {
        return Err(AgentError::InvalidArgument {
            field: "tty",
            reason: format!("the container was created with tty={}", details.tty),
        });
    }
    let url = server(state)?.issue(Pending::Attach { backend, container, options })?;
    Ok(AttachResponse { url })
}

/// PortForward: a URL that connects to ports inside the pod's network namespace.
pub fn port_forward(state: &AgentState, request: PortForwardRequest) -> Result<PortForwardResponse, AgentError> {
    let record = super::lookup::pod(state, &request.pod_sandbox_id)?;
    if record.state != crate::store::PodState::Ready {
        return Err(AgentError::InvalidArgument {
            field: "pod_sandbox_id",
            reason: format!("pod sandbox {} is not ready", record.id),
        });
    }
    let details = super::pods::details(&record)?;
    let pod = details
        .handle
        .ok_or_else(|| AgentError::Runtime(format!("pod sandbox {} has no runtime handle", record.id)))?;
    let backend = std::sync::Arc::clone(state.backends.get(&record.runtime_handler)?);
    if let Some(port) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(AgentError::InvalidArgument { field: "port", reason: format!("{port} is not a port number") });
    }
    let url = server(state)?.issue(Pending::PortForward(PodPorts::new(backend, pod)))?;
    Ok(PortForwardResponse { url })
}
