//! One host connection: the guest side of a [`Session`] driven over a byte
//! stream (a unix socket or vsock).
//!
//! One task owns the session and reads the socket; a second writes what the
//! session queued. Requests run in tasks of their own and come back as
//! [`Cmd`]s, as do the exec, attach and port-forward tasks' stream data.
//! Plain requests run at most [`MAX_HANDLERS`] at a time; the socket is not
//! read while that many run, while an answer waits for room in the
//! transmit queue, or while that queue is long (a host that does not read
//! cannot make the guest buffer without bound).
//!
//! When the connection ends, its streams go (their processes are stopped)
//! and its subscriptions with it; the containers keep running and keep
//! their output for the next connection.

mod output;
mod table;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crius_sandbox::backend::ResizeFn;
use guest_proto::codec::{Decoder, Frame, GoodbyeCode, StreamId};
use guest_proto::message::{ErrorCode, ErrorReply, GuestEvent, GuestReply, HostRequest, Reply};
use guest_proto::session::{Session, SessionConfig, SessionError, SessionEvent, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use self::output::Subscriptions;
use self::table::Table;
pub use self::table::{Inbound, Link};
use crate::guest::Guest;

/// Plain requests handled at once.
pub const MAX_HANDLERS: usize = 64;
/// The socket is read only while less than this waits to be written.
const READ_GATE: usize = 4 << 20;
/// Bytes handed to the writer at once.
const TX_CHUNK: usize = 256 << 10;
/// Commands waiting for the connection task.
const CMD_QUEUE: usize = 256;
/// How long the last frames (a Goodbye) may take to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What tasks ask of the connection.
pub enum Cmd {
    /// Answer a request.
    Respond {
        /// Request id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Send an event.
    Event(GuestEvent),
    /// Send a chunk on a stream (see [`table::Table::send`]).
    Data {
        /// Stream.
        stream: StreamId,
        /// Bytes (empty: only wait for credit).
        data: Bytes,
        /// Gets the stream's credit once the chunk is queued.
        ready: oneshot::Sender<u32>,
    },
    /// Bytes the host sent on a stream were written out.
    Consumed {
        /// Stream.
        stream: StreamId,
        /// Bytes.
        n: usize,
    },
    /// Half-close a stream.
    Close(StreamId),
    /// Reset a stream.
    Reset {
        /// Stream.
        stream: StreamId,
        /// Why.
        reason: String,
    },
    /// The terminal resizer of the exec or attach on a stream.
    Resizer {
        /// Its main stream.
        stream: StreamId,
        /// The resizer.
        resize: ResizeFn,
    },
    /// End the session (after Shutdown).
    Goodbye,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Respond { id, .. } => write!(f, "Respond({id})"),
            Cmd::Event(e) => write!(f, "Event({})", e.kind()),
            Cmd::Data { stream, data, .. } => write!(f, "Data({stream}, {})", data.len()),
            Cmd::Consumed { stream, n } => write!(f, "Consumed({stream}, {n})"),
            Cmd::Close(stream) => write!(f, "Close({stream})"),
            Cmd::Reset { stream, .. } => write!(f, "Reset({stream})"),
            Cmd::Resizer { stream, .. } => write!(f, "Resizer({stream})"),
            Cmd::Goodbye => write!(f, "Goodbye"),
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The host went away.
    Disconnected,
    /// The host ended the session, or broke the protocol.
    Closed,
    /// Another connection replaced this one.
    Replaced,
    /// The guest shut down at the host's request.
    Shutdown,
}

/// A request, command or event that is waiting for room in the queue.
#[derive(Debug)]
enum Backlog {
    Respond(u64, Reply),
    Event(GuestEvent),
}

struct Connection {
    guest: Arc<Guest>,
    session: Session,
    decoder: Decoder,
    table: Table,
    subs: Subscriptions,
    cmds: mpsc::Sender<Cmd>,
    handlers: Arc<Semaphore>,
    backlog: Option<Backlog>,
    txbuf: BytesMut,
    closing: Option<Ended>,
}

/// Serves one host connection until it ends; `stop` asks it to end (a new
/// connection replaces it).
pub async fn serve<S>(guest: Arc<Guest>, socket: S, mut stop: oneshot::Receiver<()>) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(socket);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let writer = tokio::spawn(write_loop(writer, rx));
    let (cmds, mut cmd_rx) = mpsc::channel(CMD_QUEUE);
    let mut changes = guest.subscribe_changes();
    let mut conn = Connection::new(guest, cmds);
    let mut rbuf = BytesMut::with_capacity(64 << 10);
    let ended = loop {
        conn.fill_tx();
        if let Some(ended) = &conn.closing
            && conn.txbuf.is_empty()
        {
            break ended.clone();
        }
        let open = conn.closing.is_none();
        let can_read = open
            && conn.backlog.is_none()
            && conn.session.queued_bytes() < READ_GATE
            && conn.handlers.available_permits() > 0;
        tokio::select! {
            permit = tx.reserve(), if !conn.txbuf.is_empty() => match permit {
                Ok(permit) => {
                    permit.send(conn.txbuf.split().freeze());
                    conn.after_send();
                }
                Err(_) => break Ended::Disconnected,
            },
            read = reader.read_buf(&mut rbuf), if can_read => match read {
                Ok(0) | Err(_) => break Ended::Disconnected,
                Ok(_) => {
                    conn.on_bytes(&rbuf);
                    rbuf.clear();
                }
            },
            Some(cmd) = cmd_rx.recv(), if conn.backlog.is_none() => conn.on_cmd(cmd),
            Ok(()) = changes.changed() => conn.subs.pump(&conn.guest, &mut conn.session),
            _ = &mut stop, if open => conn.end(Ended::Replaced, GoodbyeCode::Normal, "another host connection replaced this one"),
        }
    };
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer).await.is_err() {
        tracing::warn!("the host did not read the last frames");
        writer.abort();
    }
    tracing::info!(?ended, streams = conn.table.len(), "host connection ended");
    ended
}

async fn write_loop<W: AsyncWrite>(mut writer: tokio::io::WriteHalf<W>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

impl Connection {
    fn new(guest: Arc<Guest>, cmds: mpsc::Sender<Cmd>) -> Self {
        Self {
            session: Session::new(Side::Guest, SessionConfig::new(concat!("crius-guest ", env!("CARGO_PKG_VERSION")))),
            guest,
            decoder: Decoder::new(),
            table: Table::default(),
            subs: Subscriptions::default(),
            cmds,
            handlers: Arc::new(Semaphore::new(MAX_HANDLERS)),
            backlog: None,
            txbuf: BytesMut::new(),
            closing: None,
        }
    }

    /// Moves queued frames into the buffer the writer gets next.
    fn fill_tx(&mut self) {
        if self.txbuf.len() < TX_CHUNK
            && let Err(e) = self.session.write_transmit(&mut self.txbuf, TX_CHUNK)
        {
            tracing::error!(error = %e, "encode a frame");
            self.closing.get_or_insert(Ended::Closed);
        }
    }

    /// The queue shrank: waiting chunks, answers and output may go.
    fn after_send(&mut self) {
        self.fill_tx();
        if let Some(backlog) = self.backlog.take() {
            match backlog {
                Backlog::Respond(id, reply) => self.respond(id, reply),
                Backlog::Event(event) => self.send_event(event),
            }
        }
        self.table.flush_all(&mut self.session);
        self.subs.pump(&self.guest, &mut self.session);
    }

    fn on_bytes(&mut self, mut chunk: &[u8]) {
        while self.closing.is_none() {
            match self.decoder.decode(&mut chunk) {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable frame from the host");
                    self.end(Ended::Closed, GoodbyeCode::ProtocolError, &e.to_string());
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match self.session.handle_frame(frame) {
            Ok(Some(event)) => self.on_event(event),
            Ok(None) => {}
            Err(e) if e.is_fatal() => {
                tracing::warn!(error = %e, "host session failed");
                self.closing.get_or_insert(Ended::Closed);
            }
            Err(e) => tracing::warn!(error = %e, "frame from the host"),
        }
    }

    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Ready { version, peer_build } => {
                tracing::info!(version, host = %peer_build, "host connected");
                self.subs.pump(&self.guest, &mut self.session);
            }
            SessionEvent::Request { id, request } => self.on_request(id, request),
            SessionEvent::StreamOpened(stream) => self.table.opened(stream),
            SessionEvent::Data { stream, data } => self.table.data(&mut self.session, stream, data),
            SessionEvent::Writable { stream, .. } => self.table.flush(&mut self.session, stream),
            SessionEvent::Finished(stream) => self.table.finished(stream),
            SessionEvent::StreamReset { stream, .. } => self.table.reset(stream),
            SessionEvent::Goodbye { code, reason } => {
                tracing::info!(?code, %reason, "the host ended the session");
                self.closing.get_or_insert(Ended::Closed);
            }
            SessionEvent::Response { .. } | SessionEvent::Event(_) | SessionEvent::Pong(_) => {}
        }
    }

    fn on_request(&mut self, id: u64, request: HostRequest) {
        tracing::debug!(id, kind = request.kind(), "request");
        match request {
            HostRequest::Exec(req) => match self.bind_streams(req.stream, req.stderr_stream) {
                Ok((main, err)) => {
                    tokio::spawn(crate::bridge::exec(Arc::clone(&self.guest), id, req, main, err));
                }
                Err(e) => self.respond(id, Err(e)),
            },
            HostRequest::Attach(req) => match self.bind_streams(req.stream, req.stderr_stream) {
                Ok((main, err)) => {
                    tokio::spawn(crate::bridge::attach(Arc::clone(&self.guest), id, req, main, err));
                }
                Err(e) => self.respond(id, Err(e)),
            },
            HostRequest::PortForward { port, stream } => match self.table.bind(&self.session, stream, &self.cmds) {
                Ok(link) => {
                    tokio::spawn(crate::bridge::port_forward(Arc::clone(&self.guest), id, port, link));
                }
                Err(e) => self.respond(id, Err(e)),
            },
            HostRequest::Resize { stream, rows, cols } => {
                let reply = self.table.resize(stream, cols, rows).map(|()| GuestReply::Ok);
                self.respond(id, reply);
            }
            HostRequest::SubscribeOutput { id: container, from_offset } => {
                let reply = self.subs.subscribe(&self.guest, &container, from_offset);
                self.respond(id, reply);
                self.subs.pump(&self.guest, &mut self.session);
            }
            HostRequest::AckOutput { id: container, offset } => {
                self.respond(id, Subscriptions::ack(&self.guest, &container, offset));
            }
            HostRequest::Shutdown => {
                let (guest, cmds) = (Arc::clone(&self.guest), self.cmds.clone());
                tokio::spawn(async move {
                    let reply = guest.shutdown().await.map(|()| GuestReply::Ok);
                    let _ = cmds.send(Cmd::Respond { id, reply }).await;
                    let _ = cmds.send(Cmd::Goodbye).await;
                });
            }
            other => {
                let Ok(permit) = Arc::clone(&self.handlers).try_acquire_owned() else {
                    self.respond(id, Err(ErrorReply::new(ErrorCode::Internal, "too many requests at once")));
                    return;
                };
                let (guest, cmds) = (Arc::clone(&self.guest), self.cmds.clone());
                tokio::spawn(async move {
                    let reply = guest.handle(other).await;
                    drop(permit);
                    let _ = cmds.send(Cmd::Respond { id, reply }).await;
                });
            }
        }
    }

    /// Binds an exec's or attach's streams; on failure none stays bound.
    fn bind_streams(&mut self, main: StreamId, err: Option<StreamId>) -> Result<(Link, Option<Link>), ErrorReply> {
        let main_link = self.table.bind(&self.session, main, &self.cmds)?;
        let err_link = match err.map(|err| self.table.bind(&self.session, err, &self.cmds)).transpose() {
            Ok(link) => link,
            Err(e) => {
                self.table.reset_local(&mut self.session, main, "request refused");
                return Err(e);
            }
        };
        Ok((main_link, err_link))
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Respond { id, reply } => self.respond(id, reply),
            Cmd::Event(event) => self.send_event(event),
            Cmd::Data { stream, data, ready } => self.table.send(&mut self.session, stream, data, ready),
            Cmd::Consumed { stream, n } => {
                if let Err(e) = self.session.consumed(stream, n) {
                    tracing::warn!(%stream, error = %e, "stream credit");
                }
            }
            Cmd::Close(stream) => self.table.close(&mut self.session, stream),
            Cmd::Reset { stream, reason } => self.table.reset_local(&mut self.session, stream, &reason),
            Cmd::Resizer { stream, resize } => self.table.set_resize(stream, resize),
            Cmd::Goodbye => self.end(Ended::Shutdown, GoodbyeCode::Normal, "the guest shut down"),
        }
    }

    fn respond(&mut self, id: u64, reply: Reply) {
        match self.session.respond(id, &reply) {
            Ok(()) => {}
            Err(SessionError::QueueFull { .. }) => self.backlog = Some(Backlog::Respond(id, reply)),
            Err(SessionError::Message(e)) => {
                tracing::error!(id, error = %e, "reply cannot be sent");
                let error = ErrorReply::new(ErrorCode::Internal, format!("the reply cannot be sent: {e}"));
                self.respond(id, Err(error));
            }
            Err(e) => tracing::debug!(id, error = %e, "reply dropped"),
        }
    }

    fn send_event(&mut self, event: GuestEvent) {
        match self.session.send_event(&event) {
            Ok(()) => {}
            Err(SessionError::QueueFull { .. }) => self.backlog = Some(Backlog::Event(event)),
            Err(e) => tracing::debug!(kind = event.kind(), error = %e, "event dropped"),
        }
    }

    fn end(&mut self, ended: Ended, code: GoodbyeCode, reason: &str) {
        let _ = self.session.goodbye(code, reason);
        self.closing.get_or_insert(ended);
    }
}
