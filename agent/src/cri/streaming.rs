//! Exec, Attach and PortForward: check the request, then hand back a
//! single-use URL of the streaming server (see [`crate::streaming`]).

use cri_api::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, NamespaceMode, PortForwardRequest, PortForwardResponse,
};

use super::AgentState;
use super::containers::running_bundle;
use crate::error::AgentError;
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
    let bundle = running_bundle(state, &request.container_id)?;
    let url = server(state)?.issue(Pending::Exec { bundle, cmd: request.cmd, options })?;
    Ok(ExecResponse { url })
}

/// Attach: a URL that connects to the container's stdio (kept by its monitor).
pub fn attach(state: &AgentState, request: AttachRequest) -> Result<AttachResponse, AgentError> {
    let options = stream_options(request.stdin, request.stdout, request.stderr, request.tty)?;
    let bundle = running_bundle(state, &request.container_id)?;
    let spec_path = bundle.join(crius_sandbox::ns::spec::SPEC_FILE);
    let spec: crius_sandbox::ns::spec::ContainerSpec = std::fs::read(&spec_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| AgentError::Runtime(format!("read {}", spec_path.display())))?;
    if request.stdin && !spec.process.stdin {
        return Err(AgentError::InvalidArgument {
            field: "stdin",
            reason: "the container was not created with stdin".into(),
        });
    }
    if request.tty != spec.process.terminal {
        return Err(AgentError::InvalidArgument {
            field: "tty",
            reason: format!("the container was created with tty={}", spec.process.terminal),
        });
    }
    let url = server(state)?.issue(Pending::Attach { bundle, options })?;
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
    let netns = if details.namespace_modes[0] == NamespaceMode::Node as i32 {
        None
    } else {
        Some(
            details
                .paths
                .and_then(|p| p.net)
                .ok_or_else(|| AgentError::Runtime(format!("pod sandbox {} has no network namespace", record.id)))?,
        )
    };
    if let Some(port) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(AgentError::InvalidArgument { field: "port", reason: format!("{port} is not a port number") });
    }
    let url = server(state)?.issue(Pending::PortForward { netns })?;
    Ok(PortForwardResponse { url })
}
