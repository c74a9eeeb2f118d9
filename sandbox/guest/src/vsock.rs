//! AF_VSOCK for the VM's host connection: a listener and a stream on
//! tokio's readiness (tokio has no vsock type). [`FdStream`] works on any
//! connected stream socket, which is how it is tested.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr, accept4, bind, listen, shutdown, socket,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections pending accept.
const BACKLOG: i32 = 4;

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Listens on `port` for any CID (the host connects to the VM's).
    pub fn bind(port: u32) -> io::Result<Self> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd = socket(AddressFamily::Vsock, SockType::Stream, flags, None)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(BACKLOG)?)?;
        Ok(Self { fd: crate::sys::register(fd)? })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<FdStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
            match guard.try_io(|fd| accept4(fd.as_raw_fd(), flags).map_err(io::Error::from)) {
                Ok(Ok(raw)) => return FdStream::new(crate::sys::owned_accepted(raw)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// A connected, non-blocking stream socket.
#[derive(Debug)]
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    /// Wraps a connected stream socket (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self { fd: crate::sys::register(fd)? })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown(self.fd.get_ref().as_raw_fd(), Shutdown::Write).map_err(io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_socket_reads_writes_and_half_closes() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut a = FdStream::new(OwnedFd::from(a)).expect("wrap");
        let mut b = FdStream::new(OwnedFd::from(b)).expect("wrap");
        let big = vec![7u8; 1 << 20];
        let writer = async {
            a.write_all(&big).await.expect("write");
            a.shutdown().await.expect("shutdown");
            a
        };
        let reader = async {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read");
            got
        };
        let (mut a, got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), big.len(), "everything, then end of stream");
        b.write_all(b"back").await.expect("write back");
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn vsock_listens_where_the_kernel_has_it() {
        match VsockListener::bind(0xC0DE) {
            Ok(_) => {}
            // No vsock transport on this machine (a VM has one).
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                eprintln!("vsock not available here: {e}");
            }
            Err(e) => panic!("vsock bind: {e}"),
        }
    }
}
