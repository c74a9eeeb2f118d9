//! The namespace backend's streamed processes: `crius internal exec` with
//! pipes or with a terminal the helper opens inside the container (on the
//! container's own devpts, so its name resolves there, as runc's console
//! socket does) and sends back over a socket; attach through the monitor's
//! attach socket; port forwards dialled inside the pod's network namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::attach::{self as monitor, KIND_RESIZE, KIND_STDERR, KIND_STDIN, KIND_STDIN_CLOSE, KIND_STDOUT};
use super::exec::{ExecRequest, PARENT_ENV, receive_terminal};
use crate::backend::{
    BackendError, ExecStart, ExecSyncOutput, ExecSyncRequest, Input, Outcome, Output, ProcessIo, ResizeFn,
    StreamOptions, WaitFuture,
};

/// How long the helper may take to hand over the terminal.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most output ExecSync keeps per stream; the rest is read and dropped.
const MAX_EXEC_SYNC_OUTPUT: usize = 16 << 20;
/// How long connecting to a pod port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn failed(step: &str, e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::failed(step, e)
}

/// Removes the exec request file when the session ends (or fails to start).
#[derive(Debug)]
struct RequestFile(PathBuf);

impl Drop for RequestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the request for the helper into the bundle.
async fn request_file(bundle: &Path, request: &ExecRequest) -> Result<RequestFile, BackendError> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut id))
        .map_err(|e| failed("read /dev/urandom", e))?;
    let name: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = bundle.join(format!("exec-{name}.json"));
    let json = serde_json::to_vec(request).map_err(|e| failed("encode exec request", e))?;
    tokio::fs::write(&path, json).await.map_err(|e| failed(&format!("write {}", path.display()), e))?;
    Ok(RequestFile(path))
}

fn helper(self_exe: &Path, bundle: &Path, request: &RequestFile) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(self_exe);
    command
        .arg("internal")
        .arg("exec")
        .arg(bundle)
        .arg(&request.0)
        .env(PARENT_ENV, std::process::id().to_string())
        .kill_on_drop(true);
    command
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs a command in the container of `bundle` and collects its output.
/// A timeout kills the helper (SIGTERM: it kills and reaps the command).
pub async fn exec_sync(
    self_exe: &Path,
    bundle: &Path,
    request: ExecSyncRequest,
) -> Result<ExecSyncOutput, BackendError> {
    let file = request_file(bundle, &ExecRequest { args: request.args, env_extra: Vec::new(), tty: false }).await?;
    let mut child = helper(self_exe, bundle, &file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("start exec helper", e))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BackendError::BadState("the exec helper has no output pipes".into()));
    };
    let work = async {
        let (out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
        (out, err, child.wait().await)
    };
    let (stdout, stderr, status) = match request.timeout {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => {
                stop_helper(&mut child).await;
                return Err(BackendError::Timeout(format!("command timed out after {} s", limit.as_secs())));
            }
        },
        None => work.await,
    };
    let status = status.map_err(|e| failed("wait for exec helper", e))?;
    Ok(ExecSyncOutput { exit_code: exit_code(status), stdout, stderr })
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

async fn read_capped(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_EXEC_SYNC_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Starts a command in the container of `bundle` with streamed stdio.
/// Dropping the session's wait future kills the helper and with it the command.
pub async fn exec(self_exe: &Path, bundle: &Path, request: ExecStart) -> Result<ProcessIo, BackendError> {
    let options = request.options;
    // As containerd and CRI-O do for terminals.
    let env_extra = if options.tty { vec!["TERM=xterm".to_owned()] } else { Vec::new() };
    let file = request_file(bundle, &ExecRequest { args: request.args, env_extra, tty: options.tty }).await?;
    let mut command = helper(self_exe, bundle, &file);
    if !options.tty {
        command
            .stdin(if options.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| failed("start exec helper", e))?;
        let stdin = child.stdin.take().map(|s| Box::new(s) as Input);
        let stdout = child.stdout.take().map(|s| Box::new(s) as Output);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Output);
        return Ok(ProcessIo { stdin, stdout, stderr, resize: None, wait: wait_for(child, file) });
    }
    // The helper opens the terminal inside the container and sends its
    // master back over this socket (its stdin); its stderr carries set-up errors.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| failed("socketpair", e))?;
    command.stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| failed("start exec helper", e))?;
    ours.set_read_timeout(Some(TERMINAL_TIMEOUT)).map_err(|e| failed("socket timeout", e))?;
    let received = tokio::task::spawn_blocking(move || receive_terminal(&ours))
        .await
        .map_err(|e| failed("receive the terminal", e))?;
    let master = match received {
        Ok(Some(master)) => master,
        failure => {
            let mut why = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = tokio::time::timeout(TERMINAL_TIMEOUT, stderr.read_to_string(&mut why)).await;
            }
            let _ = child.kill().await;
            let why = match failure {
                Err(e) => format!("{e}; {}", why.trim()),
                _ => why.trim().to_owned(),
            };
            return Err(BackendError::BadState(format!("exec with a terminal: {why}")));
        }
    };
    let stderr = child.stderr.take().map(|s| Box::new(s) as Output);
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| failed("duplicate the terminal", e));
    let stdout = Some(Box::new(tokio::fs::File::from_std(File::from(dup(&master)?))) as Output);
    let stdin = if options.stdin {
        Some(Box::new(tokio::fs::File::from_std(File::from(dup(&master)?))) as Input)
    } else {
        None
    };
    let resize = Some(Box::new(move |width, height| resize(&master, width, height)) as ResizeFn);
    Ok(ProcessIo { stdin, stdout, stderr, resize, wait: wait_for(child, file) })
}

fn wait_for(mut child: tokio::process::Child, request_file: RequestFile) -> WaitFuture {
    Box::pin(async move {
        let _request_file = request_file;
        match child.wait().await {
            Ok(status) => Outcome::Exited(exit_code(status)),
            Err(e) => Outcome::Failed(format!("wait for the exec helper: {e}")),
        }
    })
}

/// Sets a terminal's window size.
fn resize(terminal: &OwnedFd, width: u16, height: u16) {
    let size = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    if let Err(e) = rustix::termios::tcsetwinsize(terminal.as_fd(), size) {
        tracing::debug!(error = %e, "terminal resize failed");
    }
}

/// Connects to the container's monitor (its attach socket).
pub async fn attach(bundle: &Path, options: StreamOptions) -> Result<ProcessIo, BackendError> {
    let dir = monitor::open_dir(bundle).map_err(|e| failed(&format!("open {}", bundle.display()), e))?;
    let socket = tokio::net::UnixStream::connect(monitor::short_path(&dir, monitor::SOCKET))
        .await
        .map_err(|e| failed("connect to the container's attach socket", e))?;
    drop(dir);
    let (mut from_monitor, mut to_monitor) = socket.into_split();
    let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(frame) = frames_rx.recv().await {
            if to_monitor.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let stdin = options.stdin.then(|| {
        let (writer, mut reader) = tokio::io::duplex(64 << 10);
        let frames = frames_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.send(monitor::encode_frame(KIND_STDIN, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = frames.send(monitor::encode_frame(KIND_STDIN_CLOSE, b"")).await;
        });
        Box::new(writer) as Input
    });
    let resize = options.tty.then(|| {
        let frames = frames_tx.clone();
        Box::new(move |width: u16, height: u16| {
            let mut size = width.to_be_bytes().to_vec();
            size.extend_from_slice(&height.to_be_bytes());
            let _ = frames.try_send(monitor::encode_frame(KIND_RESIZE, &size));
        }) as ResizeFn
    });
    let (stdout_w, stdout_r) = tokio::io::duplex(64 << 10);
    let (stderr_w, stderr_r) = tokio::io::duplex(64 << 10);
    let wait: WaitFuture = Box::pin(async move {
        let (mut stdout_w, mut stderr_w) = (Some(stdout_w), Some(stderr_w));
        loop {
            let mut header = [0u8; 5];
            if from_monitor.read_exact(&mut header).await.is_err() {
                break;
            }
            let len =
                usize::try_from(u32::from_be_bytes([header[1], header[2], header[3], header[4]])).unwrap_or(usize::MAX);
            if len > monitor::MAX_FRAME {
                break;
            }
            let mut payload = vec![0u8; len];
            if from_monitor.read_exact(&mut payload).await.is_err() {
                break;
            }
            let sink = match header[0] {
                KIND_STDOUT => &mut stdout_w,
                KIND_STDERR => &mut stderr_w,
                _ => continue,
            };
            if let Some(writer) = sink
                && writer.write_all(&payload).await.is_err()
            {
                sink.take();
            }
        }
        // The container ended (or its monitor): the output streams end too.
        drop(frames_tx);
        Outcome::Exited(0)
    });
    Ok(ProcessIo {
        stdin,
        stdout: options.stdout.then(|| Box::new(stdout_r) as Output),
        stderr: (options.stderr && !options.tty).then(|| Box::new(stderr_r) as Output),
        resize,
        wait,
    })
}

/// Connects to `port` on localhost (IPv4, then IPv6) inside the network
/// namespace `netns` (the node's when `None`). The socket is opened on a
/// short-lived thread that enters the namespace (`setns` changes only the
/// calling thread); it stays bound to that namespace.
pub async fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream, BackendError> {
    let connect = move || -> io::Result<std::net::TcpStream> {
        if let Some(path) = &netns {
            let file = File::open(path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        }
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|first| {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| first)
        })
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            let _ = tx.send(connect());
        })
        .map_err(|e| failed("start the connect thread", e))?;
    let stream = rx
        .await
        .map_err(|_| BackendError::BadState("the connect thread ended early".into()))?
        .map_err(|e| failed(&format!("connect to port {port} in the pod"), e))?;
    stream.set_nonblocking(true).map_err(|e| failed("set non-blocking", e))?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| failed("register the connection", e))
}
