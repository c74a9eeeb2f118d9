//! The process end of a streaming session (exec or attach) and of a port
//! forward, as every backend hands it to the streaming server: byte streams,
//! a resize hook and a future for the end. Nothing here knows the wire
//! protocol (SPDY, WebSocket) or how the backend runs the process.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a streamed process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code.
    Exited(i32),
    /// It could not run: why.
    Failed(String),
}

/// Resolves when the process ends; dropping it stops the process (the
/// client went away).
pub type WaitFuture = BoxFuture<'static, Outcome>;

/// Sets the terminal size: width, height.
pub type ResizeFn = Box<dyn Fn(u16, u16) + Send + Sync>;

/// Input of a process.
pub type Input = Box<dyn AsyncWrite + Send + Unpin>;

/// Output of a process.
pub type Output = Box<dyn AsyncRead + Send + Unpin>;

/// Which streams a session carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Input.
    pub stdin: bool,
    /// Output.
    pub stdout: bool,
    /// Error output (never with a tty).
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

impl StreamOptions {
    /// Whether the options are valid for a session.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.stdin && !self.stdout && !self.stderr {
            return Err("one of stdin, stdout and stderr must be requested");
        }
        if self.tty && self.stderr {
            return Err("tty and stderr cannot both be requested");
        }
        Ok(())
    }
}

/// The process side of a session: its stdio, terminal, and its end.
pub struct ProcessIo {
    /// Input.
    pub stdin: Option<Input>,
    /// Output.
    pub stdout: Option<Output>,
    /// Error output.
    pub stderr: Option<Output>,
    /// Applies a terminal size (width, height), when there is a terminal.
    pub resize: Option<ResizeFn>,
    /// Resolves to the outcome when the process ends; dropping it must stop
    /// the process.
    pub wait: WaitFuture,
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// A byte stream both ways (a port-forward connection into the pod).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A boxed [`Duplex`].
pub type DuplexStream = Box<dyn Duplex>;
