//! ExecSync: run a command in a running container and collect its output,
//! through the container's backend.

use std::sync::Arc;
use std::time::Duration;

use cri_api::v1::{ExecSyncRequest, ExecSyncResponse};

use super::AgentState;
use super::containers::running;
use crate::error::AgentError;

/// Runs the command; its exit code, stdout and stderr come back.
pub async fn exec_sync(state: Arc<AgentState>, request: ExecSyncRequest) -> Result<ExecSyncResponse, AgentError> {
    if request.cmd.is_empty() {
        return Err(AgentError::InvalidArgument { field: "cmd", reason: "empty command".into() });
    }
    let timeout = (request.timeout > 0).then(|| Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0)));
    let id = request.container_id.clone();
    // The store (which may commit a container's exit) is used on a blocking
    // thread, never on the async workers.
    let (backend, container, _) = tokio::task::spawn_blocking(move || running(&state, &id))
        .await
        .map_err(|e| AgentError::Runtime(format!("exec task failed: {e}")))??;
    let output =
        backend.exec_sync(&container, crius_sandbox::backend::ExecSyncRequest { args: request.cmd, timeout }).await?;
    Ok(ExecSyncResponse { stdout: output.stdout, stderr: output.stderr, exit_code: output.exit_code })
}
