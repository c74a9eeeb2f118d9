//! ExecSync: run a command in a running container and collect its output.
//!
//! The command is run by `crius internal exec`, a re-execution of crius that
//! joins the container's namespaces and cgroup and takes on its user and
//! security settings (see `crius_sandbox::ns::exec`); the command dies with
//! it, so a timeout kills the helper and with it the command.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cri_api::v1::{ExecSyncRequest, ExecSyncResponse};
use crius_sandbox::ns::exec::ExecRequest;
use tokio::io::AsyncReadExt;

use super::AgentState;
use super::containers::running_bundle;
use crate::error::AgentError;

/// Most output kept per stream; the rest is read and dropped.
const MAX_OUTPUT: usize = 16 << 20;

/// Runs the command; its exit code, stdout and stderr come back.
pub async fn exec_sync(state: Arc<AgentState>, request: ExecSyncRequest) -> Result<ExecSyncResponse, AgentError> {
    if request.cmd.is_empty() {
        return Err(AgentError::InvalidArgument { field: "cmd", reason: "empty command".into() });
    }
    let timeout = request.timeout;
    // The store (which may commit a container's exit) and the filesystem
    // are used on a blocking thread, never on the async workers.
    let (bundle, file) = blocking(move || {
        let bundle = running_bundle(&state, &request.container_id)?;
        let file = bundle.join(format!("exec-{}.json", super::pods::new_id()?));
        let exec = ExecRequest { args: request.cmd, env_extra: Vec::new(), tty: false };
        let json = serde_json::to_vec(&exec).map_err(|e| AgentError::Runtime(format!("encode exec request: {e}")))?;
        std::fs::write(&file, json).map_err(|e| AgentError::Runtime(format!("write {}: {e}", file.display())))?;
        Ok((bundle, file))
    })
    .await?;
    let result = run_helper(&bundle, &file, timeout).await;
    let _ = tokio::fs::remove_file(&file).await;
    result
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| AgentError::Runtime(format!("exec task failed: {e}")))?
}

async fn run_helper(
    bundle: &std::path::Path,
    file: &std::path::Path,
    timeout: i64,
) -> Result<ExecSyncResponse, AgentError> {
    let self_exe = std::env::current_exe().map_err(|e| AgentError::Runtime(format!("locate crius binary: {e}")))?;
    let mut child = tokio::process::Command::new(self_exe)
        .arg("internal")
        .arg("exec")
        .arg(bundle)
        .arg(file)
        .env(crius_sandbox::ns::exec::PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::Runtime(format!("start exec helper: {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(AgentError::Runtime("exec helper has no output pipes".into()));
    };
    let work = async {
        let (out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
        let status = child.wait().await;
        (out, err, status)
    };
    let (stdout, stderr, status) = if timeout > 0 {
        let limit = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        let outcome = tokio::time::timeout(limit, work).await;
        match outcome {
            Ok(done) => done,
            Err(_) => {
                stop_helper(&mut child).await;
                return Err(AgentError::Timeout(format!("command timed out after {timeout} s")));
            }
        }
    } else {
        work.await
    };
    let status = status.map_err(|e| AgentError::Runtime(format!("wait for exec helper: {e}")))?;
    let exit_code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(ExecSyncResponse { stdout, stderr, exit_code })
}

/// SIGTERM lets the helper kill and reap the command inside the container;
/// SIGKILL follows if it does not exit promptly.
async fn stop_helper(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn read_capped(mut pipe: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
