//! virtio-vsock with its host side as unix sockets (no vhost on this host).
//!
//! - Host to guest: a host process connects to `uds_path` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n`
//!   and the socket carries the stream.
//! - Guest to host: a guest connection to CID 2 port `P` is connected to the
//!   unix socket `<uds_path>_P`; no listener there resets the connection.
//!
//! Flow control is virtio-vsock's credit scheme: the guest's buffer space
//! bounds what is read from a host socket, ours what the guest may send.
//! Packet parsing ([`packet`]) is pure and bounds-checked.

pub mod conn;
pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use self::conn::{Conn, ConnState};
use self::packet::{HEADER_LEN, Header, MAX_PAYLOAD, op};
use super::{DeviceContext, Registrar, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, device_type};

/// The host's CID.
pub const HOST_CID: u64 = 2;
const RX: usize = 0;
const TX: usize = 1;
const LISTENER_TOKEN: u32 = 1;
const FIRST_CONN_TOKEN: u32 = 16;
/// Host-side ports of host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// The vsock device's host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The unix socket host processes connect to.
    pub uds_path: PathBuf,
}

/// A connection key: (host port, guest port).
type Key = (u32, u32);

/// The vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u32, Key>,
    /// Accepted host sockets that have not sent their CONNECT line yet.
    handshakes: HashMap<u32, (UnixStream, Vec<u8>)>,
    /// Control packets waiting for an rx buffer.
    control: VecDeque<Header>,
    next_token: u32,
    next_host_port: u32,
}

impl Vsock {
    /// Binds the host socket of `config` (replacing a stale one).
    pub fn new(config: &VsockConfig) -> Result<Self, VirtioError> {
        let err = |e| VirtioError::VsockSocket(config.uds_path.clone(), e);
        let _ = std::fs::remove_file(&config.uds_path);
        let listener = UnixListener::bind(&config.uds_path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Self {
            cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
            listener,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
        })
    }

    fn token(&mut self) -> u32 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_CONN_TOKEN) % super::event_loop::QUEUE_TOKEN;
        token
    }

    /// A control packet from the host to the guest about `key`.
    fn reply(&self, key: Key, op: u16, flags: u32) -> Header {
        let conn = self.conns.get(&key);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            kind: packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc: conn::BUF_ALLOC,
            fwd_cnt: conn.map_or(0, |c| c.fwd_cnt),
        }
    }

    fn reset(&mut self, key: Key, reg: &Registrar) {
        let header = self.reply(key, op::RST, 0);
        self.control.push_back(header);
        self.close(key, reg);
    }

    fn close(&mut self, key: Key, reg: &Registrar) {
        if let Some(conn) = self.conns.remove(&key) {
            reg.remove(conn.stream.as_raw_fd());
            self.tokens.remove(&conn.token);
        }
    }

    /// Handles one packet the guest sent.
    fn guest_packet(&mut self, header: &Header, payload: &[u8], reg: &Registrar) {
        let key = (header.dst_port, header.src_port);
        if header.dst_cid != HOST_CID || header.src_cid != self.cid || header.kind != packet::TYPE_STREAM {
            if header.op != op::RST {
                let mut rst = self.reply(key, op::RST, 0);
                rst.dst_cid = header.src_cid;
                self.control.push_back(rst);
            }
            return;
        }
        if header.op == op::REQUEST {
            self.connect_host(key, header, reg);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if header.op != op::RST {
                self.control.push_back(self.reply(key, op::RST, 0));
            }
            return;
        };
        conn.peer_credit(header.buf_alloc, header.fwd_cnt);
        match header.op {
            op::RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                let line = format!("OK {}\n", key.0);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(key, reg);
                }
            }
            op::RW if conn.state == ConnState::Established => {
                if conn.write_host(payload).is_err() {
                    self.reset(key, reg);
                } else if conn.credit_update_due() {
                    self.control.push_back(self.reply(key, op::CREDIT_UPDATE, 0));
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.credit_sent();
                    }
                }
            }
            op::CREDIT_REQUEST => self.control.push_back(self.reply(key, op::CREDIT_UPDATE, 0)),
            op::SHUTDOWN => {
                if header.flags & packet::SHUTDOWN_SEND != 0 {
                    conn.guest_done_sending();
                }
                if header.flags & packet::SHUTDOWN_BOTH == packet::SHUTDOWN_BOTH {
                    self.reset(key, reg);
                }
            }
            op::RST => self.close(key, reg),
            op::CREDIT_UPDATE | op::RW | op::RESPONSE => {}
            _ => self.reset(key, reg),
        }
    }

    /// A guest connection to host port `key.0`: `<uds_path>_<port>`.
    fn connect_host(&mut self, key: Key, header: &Header, reg: &Registrar) {
        if self.conns.contains_key(&key) {
            self.reset(key, reg);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        let Ok(stream) = UnixStream::connect(&path) else {
            self.control.push_back(self.reply(key, op::RST, 0));
            return;
        };
        let token = self.token();
        let mut conn = Conn::new(stream, token, ConnState::Established);
        conn.peer_credit(header.buf_alloc, header.fwd_cnt);
        if conn.watch(reg).is_err() {
            self.control.push_back(self.reply(key, op::RST, 0));
            return;
        }
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.control.push_back(self.reply(key, op::RESPONSE, 0));
    }

    /// New host connections on the listener.
    fn accept(&mut self, reg: &Registrar) {
        while let Ok((stream, _)) = self.listener.accept() {
            let token = self.token();
            if stream.set_nonblocking(true).is_ok() && reg.add(stream.as_raw_fd(), token, EventSet::IN).is_ok() {
                self.handshakes.insert(token, (stream, Vec::new()));
            }
        }
    }

    /// Reads a host socket's `CONNECT <port>\n`, byte by byte (nothing after
    /// the line is consumed).
    fn handshake(&mut self, token: u32, reg: &Registrar) {
        let Some((stream, line)) = self.handshakes.get_mut(&token) else { return };
        let mut byte = [0u8];
        let done = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break true,
                Ok(1) if line.len() < 64 => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => break false,
            }
        };
        let Some((mut stream, line)) = self.handshakes.remove(&token) else { return };
        reg.remove(stream.as_raw_fd());
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse().ok());
        let Some(port) = port.filter(|_| done) else {
            let _ = stream.write_all(b"ERR bad CONNECT line\n");
            return;
        };
        let host_port = self.next_host_port;
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        let key = (host_port, port);
        let mut conn = Conn::new(stream, token, ConnState::Connecting);
        if conn.watch(reg).is_err() {
            return;
        }
        conn.readable = false;
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.control.push_back(self.reply(key, op::REQUEST, 0));
    }

    /// The next packet for the guest: a control packet, else data (or an
    /// end-of-stream shutdown) from a host socket the guest has credit for.
    fn next_packet(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(header) = self.control.pop_front() {
            return Some((header, Vec::new()));
        }
        let keys: Vec<Key> = self.conns.iter().filter(|(_, c)| c.wants_to_send()).map(|(k, _)| *k).collect();
        for key in keys {
            let conn = self.conns.get_mut(&key)?;
            match conn.read_host(room.min(MAX_PAYLOAD)) {
                Ok(Some(data)) => {
                    let mut header = self.reply(key, op::RW, 0);
                    header.len = data.len() as u32;
                    return Some((header, data));
                }
                Ok(None) => {}
                Err(_) => {
                    // The host closed its socket: no more data either way.
                    let header = self.reply(key, op::SHUTDOWN, packet::SHUTDOWN_BOTH);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.state = ConnState::Closing;
                    }
                    return Some((header, Vec::new()));
                }
            }
        }
        None
    }

    /// Fills the guest's rx buffers with whatever is waiting.
    fn pump_rx(&mut self, ctx: &mut DeviceContext) {
        let mem = &ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX) else { return };
        let mut used = false;
        loop {
            // Only take a buffer when there is something to put in it.
            if self.control.is_empty() && !self.conns.values().any(Conn::wants_to_send) {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            let Ok(mut writer) = Writer::<()>::new(mem, chain) else {
                used |= queue.add_used(mem, head, 0).is_ok();
                continue;
            };
            let room = writer.available_bytes().saturating_sub(HEADER_LEN);
            let Some((header, payload)) = self.next_packet(room) else {
                queue.go_to_previous_position();
                break;
            };
            let written = match writer.write_all(&header.to_bytes()).and_then(|()| writer.write_all(&payload)) {
                Ok(()) => (HEADER_LEN + payload.len()) as u32,
                Err(_) => 0,
            };
            used |= queue.add_used(mem, head, written).is_ok();
        }
        if used {
            ctx.notify(RX);
        }
    }

    fn pump_tx(&mut self, ctx: &mut DeviceContext, reg: &Registrar) {
        let mem = ctx.mem.clone();
        let Some(queue) = ctx.queues.get_mut(TX) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            if let Ok(mut reader) = Reader::<()>::new(&mem, chain) {
                let mut bytes = vec![0u8; reader.available_bytes().min(HEADER_LEN + MAX_PAYLOAD)];
                if reader.read_exact(&mut bytes).is_ok()
                    && let Ok((header, payload)) = packet::parse(&bytes)
                {
                    self.guest_packet(&header, payload, reg);
                }
            }
            used |= queue.add_used(&mem, head, 0).is_ok();
        }
        if used {
            ctx.notify(TX);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256, 16]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| config.get(o + i)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, _ctx: &mut DeviceContext, reg: &Registrar) {
        if let Err(e) = reg.add(self.listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN) {
            tracing::warn!("vsock: cannot watch {}: {e}", self.uds_path.display());
        }
    }

    fn queue_event(&mut self, ctx: &mut DeviceContext, index: usize, reg: &Registrar) {
        if index == TX {
            self.pump_tx(ctx, reg);
        }
        self.pump_rx(ctx);
    }

    fn fd_event(&mut self, ctx: &mut DeviceContext, token: u32, events: u32, reg: &Registrar) {
        if token == LISTENER_TOKEN {
            self.accept(reg);
        } else if self.handshakes.contains_key(&token) {
            self.handshake(token, reg);
        } else if let Some(key) = self.tokens.get(&token).copied() {
            let events = EventSet::from_bits_truncate(events);
            if let Some(conn) = self.conns.get_mut(&key) {
                if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
                    conn.readable = true;
                }
                if events.contains(EventSet::OUT) && conn.flush().is_err() {
                    self.reset(key, reg);
                }
            }
        }
        self.pump_rx(ctx);
    }

    fn reset(&mut self, reg: &Registrar) {
        reg.remove(self.listener.as_raw_fd());
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, reg);
        }
        for (_, (stream, _)) in self.handshakes.drain() {
            reg.remove(stream.as_raw_fd());
        }
        self.control.clear();
    }
}
