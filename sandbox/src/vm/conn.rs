//! The host's end of one guest agent connection: a task that owns the
//! socket and the protocol [`Session`], and a cheap handle the backend calls
//! (requests, streams). Guest events go to the pod's event handler.
//!
//! Streams are bounded both ways: received data waits in the stream's
//! channel only up to the window the guest was granted (credit comes back as
//! the reader consumes), and data to send waits in the stream's queue until
//! the session takes it within the stream's credit, so a stalled stream
//! never blocks the others or grows without bound.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use guest_proto::codec::{Decoder, Frame, ResetCode, StreamId};
use guest_proto::message::{GuestEvent, HostRequest, Reply};
use guest_proto::session::{Session, SessionConfig, SessionEvent, Side};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes written to the socket per write.
const WRITE_CHUNK: usize = 256 << 10;

/// Why a connection call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The connection is gone (the guest or the transport ended).
    #[error("the guest agent connection is closed: {0}")]
    Closed(String),
    /// The session refused the call (a protocol bound).
    #[error("guest protocol: {0}")]
    Protocol(String),
}

/// Where a connection delivers what the guest sends unasked.
pub type EventSink = mpsc::UnboundedSender<GuestEvent>;

enum Command {
    Request(HostRequest, oneshot::Sender<Result<Reply, ConnError>>),
    Open(oneshot::Sender<Result<(StreamId, mpsc::UnboundedReceiver<Bytes>), ConnError>>),
    Send(StreamId, Bytes, oneshot::Sender<Result<(), ConnError>>),
    Consumed(StreamId, usize),
    Close(StreamId),
    Reset(StreamId),
}

/// A handle on a connection; cheap to clone. The connection ends when the
/// guest or the transport does, or when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    commands: mpsc::UnboundedSender<Command>,
    build: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Request(..) => "Request",
            Command::Open(_) => "Open",
            Command::Send(..) => "Send",
            Command::Consumed(..) => "Consumed",
            Command::Close(_) => "Close",
            Command::Reset(_) => "Reset",
        })
    }
}

impl Connection {
    /// Runs the protocol over `io` (a connected socket): handshake, then a
    /// task on the current runtime that serves the connection.
    pub async fn start<S>(io: S, build: &str, events: EventSink) -> Result<Self, ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut driver = Driver {
            session: Session::new(Side::Host, SessionConfig::new(build)),
            decoder: Decoder::default(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            events,
        };
        let (mut io, peer_build) = driver.handshake(io).await?;
        let (commands, mut receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let why = driver.serve(&mut io, &mut receiver).await;
            tracing::debug!(reason = %why, "guest connection ended");
            driver.fail_all(&why);
        });
        Ok(Self { commands, build: peer_build })
    }

    /// The guest agent's build version.
    pub fn peer_build(&self) -> &str {
        &self.build
    }

    /// Whether the connection still runs.
    pub fn is_open(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, request: HostRequest) -> Result<Reply, ConnError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Request(request, tx))?;
        rx.await.map_err(|_| closed())?
    }

    /// Opens a stream: its id and what the guest sends on it.
    pub async fn open_stream(&self) -> Result<(StreamId, mpsc::UnboundedReceiver<Bytes>), ConnError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Open(tx))?;
        rx.await.map_err(|_| closed())?
    }

    /// Sends `data` on a stream; resolves once the session took all of it
    /// (within the stream's credit).
    pub async fn send_data(&self, stream: StreamId, data: Bytes) -> Result<(), ConnError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Send(stream, data, tx))?;
        rx.await.map_err(|_| closed())?
    }

    /// The reader of `stream` consumed `n` bytes: the guest may send more.
    pub fn consumed(&self, stream: StreamId, n: usize) {
        let _ = self.send(Command::Consumed(stream, n));
    }

    /// Half-closes a stream after the data already sent.
    pub fn close_stream(&self, stream: StreamId) {
        let _ = self.send(Command::Close(stream));
    }

    /// Aborts a stream.
    pub fn reset_stream(&self, stream: StreamId) {
        let _ = self.send(Command::Reset(stream));
    }

    fn send(&self, command: Command) -> Result<(), ConnError> {
        self.commands.send(command).map_err(|_| closed())
    }
}

fn closed() -> ConnError {
    ConnError::Closed("the connection task ended".into())
}

/// Data for one stream, sent in order as credit allows.
struct Outgoing {
    data: Bytes,
    done: oneshot::Sender<Result<(), ConnError>>,
}

#[derive(Default)]
struct StreamState {
    /// What the guest sent; `None` once it closed its side.
    inbound: Option<mpsc::UnboundedSender<Bytes>>,
    outbound: VecDeque<Outgoing>,
    /// Close once `outbound` is sent.
    close_after: bool,
    /// The host closed its side.
    local_closed: bool,
}

struct Driver {
    session: Session,
    decoder: Decoder,
    pending: HashMap<u64, oneshot::Sender<Result<Reply, ConnError>>>,
    streams: HashMap<StreamId, StreamState>,
    events: EventSink,
}

impl Driver {
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut io: S) -> Result<(S, String), ConnError> {
        let work = async {
            loop {
                self.flush(&mut io).await?;
                for event in self.read_some(&mut io).await? {
                    if let SessionEvent::Ready { peer_build, .. } = event {
                        return Ok(peer_build);
                    }
                }
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
            Ok(Ok(build)) => Ok((io, build)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnError::Closed(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))),
        }
    }

    /// Serves until the connection ends; why it ended.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> String {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Err(e) = self.flush(io).await {
                return e.to_string();
            }
            if self.session.is_closed() {
                return "the session ended".into();
            }
            tokio::select! {
                read = io.read(&mut buf) => match read {
                    Ok(0) => return "the guest closed the connection".into(),
                    Ok(n) => {
                        if let Err(e) = self.received(&buf[..n]) {
                            return e.to_string();
                        }
                    }
                    Err(e) => return format!("read: {e}"),
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return "every handle was dropped".into(),
                },
            }
        }
    }

    async fn read_some<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> Result<Vec<SessionEvent>, ConnError> {
        let mut buf = vec![0u8; 64 << 10];
        let n = io.read(&mut buf).await.map_err(|e| ConnError::Closed(format!("read: {e}")))?;
        if n == 0 {
            return Err(ConnError::Closed("the guest closed the connection".into()));
        }
        let mut events = Vec::new();
        let mut input = &buf[..n];
        while let Some(frame) = self.decoder.decode(&mut input).map_err(|e| ConnError::Protocol(e.to_string()))? {
            if let Some(event) = self.handle(frame)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn received(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let mut input = bytes;
        while let Some(frame) = self.decoder.decode(&mut input).map_err(|e| ConnError::Protocol(e.to_string()))? {
            if let Some(event) = self.handle(frame)? {
                self.dispatch(event);
            }
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame) -> Result<Option<SessionEvent>, ConnError> {
        match self.session.handle_frame(frame) {
            Ok(event) => Ok(event),
            Err(e) if e.is_fatal() => Err(ConnError::Protocol(e.to_string())),
            Err(e) => {
                tracing::debug!(error = %e, "guest protocol: a stream was reset");
                Ok(None)
            }
        }
    }

    fn dispatch(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Response { id, reply } => {
                if let Some(waiter) = self.pending.remove(&id) {
                    let _ = waiter.send(Ok(reply));
                }
            }
            SessionEvent::Event(event) => {
                let _ = self.events.send(event);
            }
            SessionEvent::Data { stream, data } => match self.streams.get(&stream).and_then(|s| s.inbound.as_ref()) {
                Some(inbound) if inbound.send(data).is_ok() => {}
                // Nobody reads this stream any more: stop it.
                _ => self.reset(stream),
            },
            SessionEvent::Writable { stream, .. } => self.flush_stream(stream),
            // The guest closed its side: the reader sees the end; the
            // stream is gone once the host has closed its side too.
            SessionEvent::Finished(stream) => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.inbound = None;
                    if state.local_closed {
                        self.streams.remove(&stream);
                    }
                }
            }
            SessionEvent::StreamReset { stream, reason, .. } => {
                if let Some(state) = self.streams.remove(&stream) {
                    for out in state.outbound {
                        let _ = out.done.send(Err(ConnError::Closed(format!("stream reset: {reason}"))));
                    }
                }
            }
            // The guest opens no streams in protocol version 1.
            SessionEvent::StreamOpened(stream) => self.reset(stream),
            SessionEvent::Ready { .. }
            | SessionEvent::Request { .. }
            | SessionEvent::Pong(_)
            | SessionEvent::Goodbye { .. } => {}
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Request(request, reply) => match self.session.send_request(&request) {
                Ok(id) => {
                    self.pending.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(ConnError::Protocol(e.to_string())));
                }
            },
            Command::Open(reply) => {
                let opened = self.session.open_stream().map_err(|e| ConnError::Protocol(e.to_string()));
                let _ = reply.send(opened.map(|id| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.streams.insert(id, StreamState { inbound: Some(tx), ..StreamState::default() });
                    (id, rx)
                }));
            }
            Command::Send(stream, data, done) => match self.streams.get_mut(&stream) {
                Some(state) => {
                    state.outbound.push_back(Outgoing { data, done });
                    self.flush_stream(stream);
                }
                None => {
                    let _ = done.send(Err(ConnError::Closed("the stream is gone".into())));
                }
            },
            Command::Consumed(stream, n) => {
                if self.session.consumed(stream, n).is_err() {
                    self.streams.remove(&stream);
                }
            }
            Command::Close(stream) => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.close_after = true;
                    self.flush_stream(stream);
                }
            }
            Command::Reset(stream) => self.reset(stream),
        }
    }

    /// Hands queued data of `stream` to the session as its credit allows.
    fn flush_stream(&mut self, stream: StreamId) {
        let Some(state) = self.streams.get_mut(&stream) else { return };
        while let Some(front) = state.outbound.front_mut() {
            match self.session.send_data(stream, &front.data) {
                Ok(taken) if taken == front.data.len() => {
                    if let Some(done) = state.outbound.pop_front() {
                        let _ = done.done.send(Ok(()));
                    }
                }
                Ok(taken) => {
                    let _ = front.data.split_to(taken);
                    return;
                }
                Err(e) => {
                    for out in state.outbound.drain(..) {
                        let _ = out.done.send(Err(ConnError::Protocol(e.to_string())));
                    }
                    return;
                }
            }
        }
        if state.close_after {
            state.close_after = false;
            state.local_closed = true;
            let _ = self.session.close_stream(stream);
            if state.inbound.is_none() {
                self.streams.remove(&stream);
            }
        }
    }

    fn reset(&mut self, stream: StreamId) {
        let _ = self.session.reset_stream(stream, ResetCode::Cancel, "closed by the host");
        self.streams.remove(&stream);
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        loop {
            out.clear();
            self.session.write_transmit(&mut out, WRITE_CHUNK).map_err(|e| ConnError::Protocol(e.to_string()))?;
            if out.is_empty() {
                return Ok(());
            }
            io.write_all(&out).await.map_err(|e| ConnError::Closed(format!("write: {e}")))?;
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, waiter) in self.pending.drain() {
            let _ = waiter.send(Err(ConnError::Closed(why.to_owned())));
        }
        for (_, state) in self.streams.drain() {
            for out in state.outbound {
                let _ = out.done.send(Err(ConnError::Closed(why.to_owned())));
            }
        }
    }
}
