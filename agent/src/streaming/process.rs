//! The process end of an exec session: `crius internal exec` started with
//! pipes, or with a terminal that the helper opens inside the container (on
//! the container's own devpts, so its name resolves there, as runc's console
//! socket does) and whose master it sends back over a socket.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crius_sandbox::ns::exec::ExecRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::WaitFuture;
use super::remotecommand::{Outcome, ProcessIo, ResizeFn};
use crate::error::AgentError;

/// How long the helper may take to hand over the terminal.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(10);

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A running exec helper and its stdio.
pub struct ExecProcess {
    /// The helper (the command dies with it).
    pub child: tokio::process::Child,
    /// Input, when asked for.
    pub stdin: Option<Writer>,
    /// Output (the terminal's, with a tty).
    pub stdout: Option<Reader>,
    /// Error output (with a tty: the helper's own set-up errors).
    pub stderr: Option<Reader>,
    /// The terminal master, for resizing.
    pub terminal: Option<OwnedFd>,
    _request_file: RequestFile,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess").field("child", &self.child.id()).finish_non_exhaustive()
    }
}

impl ExecProcess {
    /// The session's view: stdio, terminal, and the exit status to come.
    /// Dropping the wait future kills the helper and with it the command.
    pub fn into_io(self) -> ProcessIo<WaitFuture> {
        let Self { mut child, stdin, stdout, stderr, terminal, _request_file: request_file } = self;
        let resize = terminal.map(|fd| Box::new(move |width, height| resize(&fd, width, height)) as ResizeFn);
        let wait: WaitFuture = Box::pin(async move {
            let _request_file = request_file;
            match child.wait().await {
                Ok(status) => Outcome::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
                Err(e) => Outcome::Failed(format!("wait for the exec helper: {e}")),
            }
        });
        ProcessIo { stdin, stdout, stderr, resize, wait }
    }
}

fn runtime(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Runtime(format!("{what}: {e}"))
}

/// Removes the exec request file when the session ends (or fails to start).
#[derive(Debug)]
struct RequestFile(PathBuf);

impl Drop for RequestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts `cmd` in the container of `bundle`.
pub async fn spawn(bundle: &Path, cmd: &[String], tty: bool, stdin: bool) -> Result<ExecProcess, AgentError> {
    let path = bundle.join(format!("exec-{}.json", crate::cri::pods::new_id()?));
    // As containerd and CRI-O do for terminals.
    let env_extra = if tty { vec!["TERM=xterm".to_owned()] } else { Vec::new() };
    let request = ExecRequest { args: cmd.to_vec(), env_extra, tty };
    let json = serde_json::to_vec(&request).map_err(|e| runtime("encode exec request", e))?;
    tokio::fs::write(&path, json).await.map_err(|e| runtime(&format!("write {}", path.display()), e))?;
    let request_file = RequestFile(path);
    let self_exe = std::env::current_exe().map_err(|e| runtime("locate crius binary", e))?;
    let mut command = tokio::process::Command::new(self_exe);
    command
        .arg("internal")
        .arg("exec")
        .arg(bundle)
        .arg(&request_file.0)
        .env(crius_sandbox::ns::exec::PARENT_ENV, std::process::id().to_string())
        .kill_on_drop(true);
    if !tty {
        command.stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| runtime("start exec helper", e))?;
        let stdin = child.stdin.take().map(|s| Box::new(s) as Writer);
        let stdout = child.stdout.take().map(|s| Box::new(s) as Reader);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Reader);
        return Ok(ExecProcess { child, stdin, stdout, stderr, terminal: None, _request_file: request_file });
    }
    // The helper opens the terminal inside the container and sends its
    // master back over this socket (its stdin); its stderr carries set-up errors.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| runtime("socketpair", e))?;
    command.stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| runtime("start exec helper", e))?;
    ours.set_read_timeout(Some(TERMINAL_TIMEOUT)).map_err(|e| runtime("socket timeout", e))?;
    let received = tokio::task::spawn_blocking(move || crius_sandbox::ns::exec::receive_terminal(&ours))
        .await
        .map_err(|e| runtime("receive the terminal", e))?;
    let master = match received {
        Ok(Some(master)) => master,
        failed => {
            let mut why = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = tokio::time::timeout(TERMINAL_TIMEOUT, stderr.read_to_string(&mut why)).await;
            }
            let _ = child.kill().await;
            let why = match failed {
                Err(e) => format!("{e}; {}", why.trim()),
                _ => why.trim().to_owned(),
            };
            return Err(AgentError::Runtime(format!("exec with a terminal: {why}")));
        }
    };
    let stderr = child.stderr.take().map(|s| Box::new(s) as Reader);
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| runtime("duplicate the terminal", e));
    let stdout = Some(Box::new(tokio::fs::File::from_std(File::from(dup(&master)?))) as Reader);
    let stdin =
        if stdin { Some(Box::new(tokio::fs::File::from_std(File::from(dup(&master)?))) as Writer) } else { None };
    Ok(ExecProcess { child, stdin, stdout, stderr, terminal: Some(master), _request_file: request_file })
}

/// Sets a terminal's window size.
pub fn resize(terminal: &OwnedFd, width: u16, height: u16) {
    let size = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    if let Err(e) = rustix::termios::tcsetwinsize(terminal.as_fd(), size) {
        tracing::debug!(error = %e, "terminal resize failed");
    }
}
