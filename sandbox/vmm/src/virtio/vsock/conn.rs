//! One vsock stream between a guest port and a host unix socket: credit
//! accounting both ways and bytes waiting for a slow host socket.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use crate::virtio::Registrar;

/// The buffer space the host side advertises to the guest per connection.
pub const BUF_ALLOC: u32 = 256 << 10;

/// The host socket is gone (closed, reset, or a protocol violation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("vsock connection closed")]
pub struct ConnClosed;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The host closed its end; waiting for the guest's RST.
    Closing,
}

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// The host socket.
    pub stream: UnixStream,
    /// Its epoll token.
    pub token: u32,
    /// Where it stands.
    pub state: ConnState,
    /// The host socket has data (or end of file) to read.
    pub readable: bool,
    /// Bytes of guest data written to the host socket.
    pub fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Guest data the host socket has not taken yet.
    pending: Vec<u8>,
    shut_write_when_flushed: bool,
}

impl Conn {
    /// A connection over `stream` (made non-blocking).
    pub fn new(stream: UnixStream, token: u32, state: ConnState) -> Self {
        let _ = stream.set_nonblocking(true);
        Self {
            stream,
            token,
            state,
            readable: true,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            pending: Vec::new(),
            shut_write_when_flushed: false,
        }
    }

    /// Watches the socket, edge-triggered: reads happen when the guest has
    /// room, so a level-triggered watch would spin.
    pub fn watch(&self, reg: &Registrar) -> std::io::Result<()> {
        let events = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        reg.add(self.stream.as_raw_fd(), self.token, events)
    }

    /// The guest's latest buffer figures.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether there may be host data to send and the guest can take some.
    pub fn wants_to_send(&self) -> bool {
        self.state == ConnState::Established && self.readable && self.credit() > 0
    }

    /// Reads at most `max` bytes (and the guest's credit) from the host
    /// socket: `Ok(None)` when nothing is there, `Err` at end of file.
    pub fn read_host(&mut self, max: usize) -> Result<Option<Vec<u8>>, ConnClosed> {
        let n = max.min(self.credit() as usize);
        if n == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; n];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(ConnClosed),
            Ok(got) => {
                buf.truncate(got);
                self.tx_cnt = self.tx_cnt.wrapping_add(got as u32);
                Ok(Some(buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.readable = false;
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(_) => Err(ConnClosed),
        }
    }

    /// Guest data for the host socket: written now, or kept until the
    /// socket takes it. More than our advertised buffer is a protocol error.
    pub fn write_host(&mut self, data: &[u8]) -> Result<(), ConnClosed> {
        if self.pending.len() + data.len() > BUF_ALLOC as usize {
            return Err(ConnClosed);
        }
        self.pending.extend_from_slice(data);
        self.flush()
    }

    /// Writes what is pending to the host socket.
    pub fn flush(&mut self) -> Result<(), ConnClosed> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(ConnClosed),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(ConnClosed),
            }
        }
        if self.shut_write_when_flushed {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// The guest will send no more: close the host socket's write side once
    /// the pending bytes are out.
    pub fn guest_done_sending(&mut self) {
        self.shut_write_when_flushed = true;
        let _ = self.flush();
    }

    /// Whether the guest should hear about freed buffer space.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 4
    }

    /// A credit update went out.
    pub fn credit_sent(&mut self) {
        self.fwd_cnt_sent = self.fwd_cnt;
    }
}
