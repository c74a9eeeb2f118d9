//! The server: the guest's state, the listener, one host connection at a
//! time, and the end (Shutdown or SIGTERM).
//!
//! A new connection replaces the one being served (the host that connects
//! last is the live one: after a crius restart the old connection may not
//! have noticed it is dead yet); the old one gets a Goodbye. Containers are
//! never touched by a disconnect.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::signal::SigSet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::{Listen, ServeArgs};
use crate::conn::{self, Ended};
use crate::guest::{Guest, GuestError};
use crate::vsock::VsockListener;

/// Failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The runtime could not be built.
    #[error("build the async runtime")]
    Runtime(#[source] io::Error),
    /// The guest's state could not be set up.
    #[error("set up the guest")]
    Guest(#[from] GuestError),
    /// The listener could not be made.
    #[error("listen on {what}")]
    Listen {
        /// The socket.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("handle signals")]
    Signals(#[source] io::Error),
}

/// A socket the host is connected on.
pub trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Vsock(VsockListener),
}

impl Listener {
    fn bind(listen: &Listen) -> Result<Self, ServeError> {
        match listen {
            Listen::Unix(path) => bind_unix(path)
                .map(|l| Listener::Unix(l, path.clone()))
                .map_err(|source| ServeError::Listen { what: path.display().to_string(), source }),
            Listen::Vsock(port) => VsockListener::bind(*port)
                .map(Listener::Vsock)
                .map_err(|source| ServeError::Listen { what: format!("vsock port {port}"), source }),
        }
    }

    async fn accept(&self) -> io::Result<Box<dyn Socket>> {
        match self {
            Listener::Unix(listener, _) => Ok(Box::new(listener.accept().await?.0)),
            Listener::Vsock(listener) => Ok(Box::new(listener.accept().await?)),
        }
    }

    fn remove(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A fresh socket, mode 0600 from the start (a stale one is removed).
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Nothing else runs yet: the umask is this thread's business for a moment.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Runs the server until Shutdown or SIGTERM.
pub fn serve(args: &ServeArgs) -> ExitCode {
    // PID 1 starts the server with its own signals blocked (std keeps the
    // mask for children): SIGTERM and SIGCHLD must reach this process.
    if let Err(e) = SigSet::empty().thread_set_mask() {
        tracing::error!(error = %e, "unblock signals");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return failed(&ServeError::Runtime(e)),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

fn failed(e: &ServeError) -> ExitCode {
    tracing::error!(error = %crius_sandbox::error_report(e), "the guest server failed");
    ExitCode::FAILURE
}

enum Next {
    Accepted(io::Result<Box<dyn Socket>>),
    Served(Option<Ended>),
    Terminate,
}

/// Ends the connection being served and waits until it has.
async fn end_current(current: Option<Current>) {
    if let Some(old) = current {
        let _ = old.stop.send(());
        let _ = old.task.await;
    }
}

struct Current {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Ended>,
}

async fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let guest = Arc::new(Guest::new(&args.run_root, Path::new("/proc/self/exe"), args.kvm_test)?);
    let listener = Listener::bind(&args.listen)?;
    let mut children = signal(SignalKind::child()).map_err(ServeError::Signals)?;
    let reaped = Arc::clone(&guest);
    tokio::spawn(async move {
        while children.recv().await.is_some() {
            reaped.child_exited();
        }
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    tracing::info!(listen = ?args.listen, run_root = %args.run_root.display(), "guest agent serving");
    let mut current: Option<Current> = None;
    loop {
        let next = {
            let served = async {
                match current.as_mut() {
                    Some(c) => (&mut c.task).await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = listener.accept() => Next::Accepted(accepted),
                ended = served => Next::Served(ended),
                _ = terminate.recv() => Next::Terminate,
            }
        };
        match next {
            Next::Accepted(Err(e)) => {
                tracing::warn!(error = %e, "accept a host connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Next::Accepted(Ok(socket)) => {
                end_current(current.take()).await;
                let (stop, stopped) = oneshot::channel();
                let task = tokio::spawn(conn::serve(Arc::clone(&guest), socket, stopped));
                current = Some(Current { stop, task });
            }
            Next::Served(ended) => {
                current = None;
                if ended == Some(Ended::Shutdown) {
                    break;
                }
            }
            Next::Terminate => {
                tracing::info!("SIGTERM: stopping every container");
                if let Err(e) = guest.shutdown().await {
                    tracing::warn!(error = %e.message, "shutdown");
                }
                end_current(current.take()).await;
                break;
            }
        }
    }
    listener.remove();
    tracing::info!("guest agent stopped");
    Ok(())
}
