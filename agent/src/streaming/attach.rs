//! The process end of an attach session: the container monitor's attach
//! socket (see `crius_sandbox::ns::attach`), turned into stdio streams.

use std::path::Path;

use crius_sandbox::ns::attach::{self as monitor, KIND_RESIZE, KIND_STDERR, KIND_STDIN, KIND_STDIN_CLOSE, KIND_STDOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::WaitFuture;
use super::remotecommand::{Outcome, ProcessIo, ResizeFn, StreamOptions};
use crate::error::AgentError;

/// Connects to the container's monitor.
pub async fn connect(bundle: &Path, options: StreamOptions) -> Result<ProcessIo<WaitFuture>, AgentError> {
    let dir = monitor::open_dir(bundle).map_err(|e| AgentError::Runtime(format!("open {}: {e}", bundle.display())))?;
    let socket = tokio::net::UnixStream::connect(monitor::short_path(&dir, monitor::SOCKET))
        .await
        .map_err(|e| AgentError::Runtime(format!("connect to the container's attach socket: {e}")))?;
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
    let stdin = if options.stdin {
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
        Some(Box::new(writer) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>)
    } else {
        None
    };
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
        stdout: options.stdout.then(|| Box::new(stdout_r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        stderr: (options.stderr && !options.tty)
            .then(|| Box::new(stderr_r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        resize,
        wait,
    })
}
