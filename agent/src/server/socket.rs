//! Owning the CRI socket: one crius per socket, stale sockets replaced.
//!
//! A lock file beside the socket (`<socket>.lock`, `flock`ed for crius's
//! lifetime) decides who owns the socket. The kernel drops the lock when its
//! holder dies, even by SIGKILL, so a crashed crius never blocks the next one,
//! while a live one always makes a second one refuse to start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

/// Why the socket could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another crius holds the socket's lock.
    #[error("another crius{pid} is already serving {socket}; stop it first or choose another --socket")]
    AlreadyServed {
        /// The socket.
        socket: PathBuf,
        /// " (pid N)" when the lock file names it.
        pid: String,
    },
    /// A process that is not crius answers on the socket.
    #[error("{socket} is already in use by another process that accepts connections; refusing to replace it")]
    InUse {
        /// The socket.
        socket: PathBuf,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{socket} exists and is not a unix socket; refusing to remove it")]
    NotASocket {
        /// The path.
        socket: PathBuf,
    },
    /// A filesystem step failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Holds the socket lock; removes the socket when dropped (if it is still ours).
#[derive(Debug)]
pub struct SocketGuard {
    socket: PathBuf,
    inode: u64,
    _lock: Flock<File>,
}

/// Permissions of the bound socket.
#[derive(Debug, Clone, Copy)]
pub struct SocketAccess {
    /// Mode bits (0o660 by default).
    pub mode: u32,
    /// Owning group, or `None` to keep crius's own.
    pub gid: Option<u32>,
}

/// Takes the socket at `socket`: locks it, replaces a stale socket file and binds.
pub fn bind(socket: &Path, access: SocketAccess) -> Result<(UnixListener, SocketGuard), SocketError> {
    if let Some(dir) = socket.parent() {
        create_socket_dir(dir)?;
    }
    let lock = lock(socket)?;
    remove_stale(socket)?;

    let listener = UnixListener::bind(socket).map_err(|source| io("bind", socket, source))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(access.mode))
        .map_err(|source| io("chmod", socket, source))?;
    if let Some(gid) = access.gid {
        std::os::unix::fs::lchown(socket, None, Some(gid)).map_err(|source| io("chown", socket, source))?;
    }
    let inode = std::fs::symlink_metadata(socket).map_err(|source| io("stat", socket, source))?.ino();
    Ok((listener, SocketGuard { socket: socket.to_path_buf(), inode, _lock: lock }))
}

fn create_socket_dir(dir: &Path) -> Result<(), SocketError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| io("create socket directory", dir, source))?;
    // Like /run/containerd: others may traverse, but not list.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(|source| io("chmod", dir, source))
}

fn lock(socket: &Path) -> Result<Flock<File>, SocketError> {
    let path = lock_path(socket);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| io("open lock file", &path, source))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim();
            let pid = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(SocketError::AlreadyServed { socket: socket.to_path_buf(), pid });
        }
        Err((_, errno)) => return Err(io("lock", &path, errno.into())),
    };
    // Record who holds it, for the next one's error message.
    lock.set_len(0).map_err(|source| io("truncate lock file", &path, source))?;
    lock.rewind().map_err(|source| io("rewind lock file", &path, source))?;
    writeln!(lock, "{}", std::process::id()).map_err(|source| io("write lock file", &path, source))?;
    Ok(lock)
}

/// A socket file left by a crius that died without cleaning up accepts no
/// connections: remove it. Anything else at the path is refused.
fn remove_stale(socket: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io("stat", socket, source)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { socket: socket.to_path_buf() });
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(SocketError::InUse { socket: socket.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "replacing stale socket");
            std::fs::remove_file(socket).map_err(|source| io("remove stale socket", socket, source))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("probe existing socket", socket, source)),
    }
}

/// `<socket>.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        // Only remove the socket we bound: never one that replaced it.
        if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> SocketError {
    SocketError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS: SocketAccess = SocketAccess { mode: 0o660, gid: None };

    #[tokio::test]
    async fn binds_with_mode_and_creates_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/crius/crius.sock");
        let (_listener, guard) = bind(&socket, ACCESS).expect("bind");
        let meta = std::fs::metadata(&socket).expect("socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let lock = std::fs::read_to_string(lock_path(&socket)).expect("lock file");
        assert_eq!(lock.trim(), std::process::id().to_string());
        drop(guard);
        assert!(!socket.exists(), "socket removed when the guard drops");
    }

    #[tokio::test]
    async fn second_bind_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("crius.sock");
        let (_listener, _guard) = bind(&socket, ACCESS).expect("first bind");
        let err = bind(&socket, ACCESS).expect_err("second bind");
        assert!(matches!(err, SocketError::AlreadyServed { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("already serving") && text.contains(&std::process::id().to_string()), "{text}");
        assert!(socket.exists(), "the live socket is untouched");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("crius.sock");
        // A socket file nobody listens on, as a killed crius leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale"));
        assert!(socket.exists());
        let (_listener, _guard) = bind(&socket, ACCESS).expect("stale socket replaced");
        std::os::unix::net::UnixStream::connect(&socket).expect("new socket accepts");
    }

    #[tokio::test]
    async fn a_foreign_listener_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("crius.sock");
        let _other = std::os::unix::net::UnixListener::bind(&socket).expect("foreign listener");
        let err = bind(&socket, ACCESS).expect_err("in use");
        assert!(matches!(err, SocketError::InUse { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_regular_file_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("crius.sock");
        std::fs::write(&socket, b"precious").expect("file");
        let err = bind(&socket, ACCESS).expect_err("not a socket");
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err:?}");
        assert_eq!(std::fs::read(&socket).expect("still there"), b"precious");
    }
}
