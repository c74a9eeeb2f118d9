//! The session: a sans-IO state machine for one host↔guest connection.
//!
//! It does no I/O, spawns nothing and never blocks. Its driver (a tokio task
//! on the host, a loop in the guest) moves bytes:
//!
//! ```text
//! socket ──bytes──► Decoder ──Frame──► Session::handle_frame ──► SessionEvent (to the application)
//! socket ◄─bytes─── Frame::encode ◄──── Session::poll_transmit ◄── open_stream / send_data / send_request / ...
//! ```
//!
//! It owns the handshake, request-id bookkeeping, the stream table and flow
//! control, and checks every frame the peer sends. A violation the stream
//! can absorb resets that stream (an event tells the application); any other
//! is fatal: `handle_frame` returns an error for which
//! [`SessionError::is_fatal`] holds, a Goodbye frame is queued last, and the
//! session is closed. It never panics on peer input.
//!
//! **Bounds.** Per side at most [`MAX_STREAMS`] open streams and (host)
//! [`MAX_PENDING_REQUESTS`] unanswered requests, both enforced on the opener
//! and checked on the receiver. Received stream data is not buffered here;
//! the application holds what it has not [`Session::consumed`], at most the
//! stream's window. The transmit queue holds at most
//! [`SessionConfig::max_queued`] bytes: data is accepted only below
//! [`SessionConfig::max_queued_data`], an application request, reply or
//! event beyond the bound is refused with [`SessionError::QueueFull`], and a
//! peer that makes the session queue answers beyond it without reading them
//! ends the session. Ping answers are coalesced to one.

mod requests;
#[cfg(test)]
mod stream_tests;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};

use self::streams::Stream;
use crate::codec::{
    CodecError, Frame, GoodbyeCode, Hello, MAX_BUILD_LEN, MAX_REASON_LEN, ResetCode, StreamId, Welcome,
};
use crate::message::{GuestEvent, HostRequest, MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION, MessageError, Reply};

/// The window each stream direction starts with: the receiver lets the
/// sender send this many bytes before the first Credit.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// Largest send credit a receiver may grant on one stream.
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;
/// Most streams one side may have opened and not yet finished.
pub const MAX_STREAMS: usize = 1024;
/// Most requests the host may have sent and not yet had answered.
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// crius: sends Hello and requests, opens odd stream ids.
    Host,
    /// The guest agent: answers requests, sends events, opens even stream ids.
    Guest,
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This side's build version, sent in the handshake (truncated to
    /// [`MAX_BUILD_LEN`]).
    pub build: String,
    /// Lowest protocol version to accept.
    pub min_version: u16,
    /// Highest protocol version to accept.
    pub max_version: u16,
    /// `send_data` accepts bytes only while less than this is queued.
    pub max_queued_data: usize,
    /// Hard bound of the transmit queue.
    pub max_queued: usize,
}

impl SessionConfig {
    /// The defaults, with this build version.
    pub fn new(build: impl Into<String>) -> Self {
        Self {
            build: build.into(),
            min_version: MIN_PROTOCOL_VERSION,
            max_version: MAX_PROTOCOL_VERSION,
            max_queued_data: 1024 * 1024,
            max_queued: 16 * 1024 * 1024,
        }
    }
}

/// Errors of a session. The fatal ones ([`SessionError::is_fatal`]) end it;
/// the others refuse one call and leave the session as it was.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Fatal: the peer broke the protocol.
    #[error("peer protocol violation: {0}")]
    Violation(String),
    /// Fatal: the two sides share no protocol version.
    #[error("no common protocol version: this side speaks {ours:?}, the peer {theirs:?}")]
    NoCommonVersion {
        /// Our range.
        ours: (u16, u16),
        /// The peer's range.
        theirs: (u16, u16),
    },
    /// Fatal: the peer makes this side queue answers it does not read.
    #[error("transmit queue over {max} bytes: the peer is not reading")]
    TransmitOverflow {
        /// The bound.
        max: usize,
    },
    /// The handshake has not completed yet.
    #[error("session not ready: handshake not complete")]
    NotReady,
    /// The session has ended.
    #[error("session closed")]
    Closed,
    /// The call is for the other side (a guest sending a request).
    #[error("{0} is not for this side of the session")]
    WrongSide(&'static str),
    /// The message is newer than the negotiated version.
    #[error("{kind} needs protocol version {since}, session speaks {version}")]
    Unsupported {
        /// The message's type tag.
        kind: &'static str,
        /// The version that introduced it.
        since: u16,
        /// The negotiated version.
        version: u16,
    },
    /// No such stream was ever opened.
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    /// This side has closed the stream for sending, or it is gone.
    #[error("stream {0} is closed for sending")]
    StreamClosed(StreamId),
    /// [`MAX_STREAMS`] streams of this side are open.
    #[error("too many open streams")]
    TooManyStreams,
    /// Every stream id of this side has been used.
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
    /// [`MAX_PENDING_REQUESTS`] requests are unanswered.
    #[error("too many pending requests")]
    TooManyRequests,
    /// `respond` for a request that is not awaiting an answer.
    #[error("no pending request {0}")]
    UnknownRequest(u64),
    /// `consumed` for more bytes than were delivered and not yet consumed.
    #[error("stream {stream}: consumed {n} bytes, only {unconsumed} are unconsumed")]
    OverConsumed {
        /// Stream.
        stream: StreamId,
        /// Bytes claimed.
        n: usize,
        /// Bytes delivered and not consumed.
        unconsumed: u32,
    },
    /// The transmit queue is full; drain `poll_transmit` and retry.
    #[error("transmit queue full ({queued} of {max} bytes)")]
    QueueFull {
        /// Bytes queued.
        queued: usize,
        /// The bound.
        max: usize,
    },
    /// A message could not be encoded.
    #[error("encode message")]
    Message(#[from] MessageError),
    /// A queued frame could not be encoded (a bug: frames are checked when queued).
    #[error("encode frame")]
    Codec(#[from] CodecError),
}

impl SessionError {
    /// Whether the session has ended with this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::Violation(_) | SessionError::NoCommonVersion { .. } | SessionError::TransmitOverflow { .. }
        )
    }
}

/// What a frame from the peer means for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake completed.
    Ready {
        /// The protocol version both sides now speak.
        version: u16,
        /// The peer's build version.
        peer_build: String,
    },
    /// (Guest) a request to answer with [`Session::respond`].
    Request {
        /// Request id.
        id: u64,
        /// The request.
        request: HostRequest,
    },
    /// (Host) the answer to request `id`.
    Response {
        /// Request id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// (Host) an event from the guest.
    Event(GuestEvent),
    /// The peer opened a stream.
    StreamOpened(StreamId),
    /// Data on a stream; call [`Session::consumed`] once it is written out.
    Data {
        /// Stream.
        stream: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The peer granted credit: `send_data` may send `credit` bytes.
    Writable {
        /// Stream.
        stream: StreamId,
        /// Send credit now.
        credit: u32,
    },
    /// The peer sends no more data on the stream.
    Finished(StreamId),
    /// The stream is gone in both directions.
    StreamReset {
        /// Stream.
        stream: StreamId,
        /// Why.
        code: ResetCode,
        /// Details.
        reason: String,
        /// Whether the peer reset it (otherwise this side did, for a
        /// violation on the stream).
        by_peer: bool,
    },
    /// The answer to a [`Session::ping`].
    Pong(u64),
    /// The peer ended the session.
    Goodbye {
        /// Why.
        code: GoodbyeCode,
        /// Details.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Ready(u16),
    Closed,
}

/// One end of a host↔guest connection; see the module documentation.
#[derive(Debug)]
pub struct Session {
    side: Side,
    config: SessionConfig,
    phase: Phase,
    peer_build: Option<String>,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    pong: Option<u64>,
    /// Host: requests sent and not answered. Guest: requests received and not answered.
    requests: HashSet<u64>,
    next_request_id: u64,
    streams: HashMap<StreamId, Stream>,
    /// Next id this side opens.
    next_local: u64,
    /// Lowest id the peer may open next.
    next_remote: u64,
    local_open: usize,
    remote_open: usize,
}

impl Session {
    /// A session for `side`. The host's first frame, Hello, is queued at once.
    pub fn new(side: Side, config: SessionConfig) -> Self {
        let (next_local, next_remote) = match side {
            Side::Host => (1, 2),
            Side::Guest => (2, 1),
        };
        let mut session = Self {
            side,
            config,
            phase: Phase::Handshake,
            peer_build: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            pong: None,
            requests: HashSet::new(),
            next_request_id: 1,
            streams: HashMap::new(),
            next_local,
            next_remote,
            local_open: 0,
            remote_open: 0,
        };
        if side == Side::Host {
            let hello = Hello {
                min_version: session.config.min_version,
                max_version: session.config.max_version,
                build: crate::codec::truncate_utf8(&session.config.build, MAX_BUILD_LEN).to_owned(),
            };
            session.push(Frame::Hello(hello));
        }
        session
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The negotiated protocol version, once the handshake has completed.
    pub fn version(&self) -> Option<u16> {
        match self.phase {
            Phase::Ready(v) => Some(v),
            _ => None,
        }
    }

    /// The peer's build version, once known.
    pub fn peer_build(&self) -> Option<&str> {
        self.peer_build.as_deref()
    }

    /// Whether the session has ended (Goodbye sent or received, or a fatal error).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Requests awaiting an answer (host: sent; guest: received).
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Bytes waiting in the transmit queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The next frame to send, if any. Frames come out in the order they were
    /// queued, a Pong first.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(v) = self.pong.take() {
            return Some(Frame::Pong(v));
        }
        let frame = self.queue.pop_front()?;
        self.queued_bytes -= frame.encoded_len();
        Some(frame)
    }

    /// Encodes queued frames into `dst` until it holds at least `limit` bytes
    /// or the queue is empty.
    pub fn write_transmit(&mut self, dst: &mut BytesMut, limit: usize) -> Result<(), SessionError> {
        while dst.len() < limit {
            let Some(frame) = self.poll_transmit() else { break };
            frame.encode(dst)?;
        }
        Ok(())
    }

    /// Handles one frame from the peer; `Ok(None)` when it means nothing to
    /// the application. Frames arriving after the session closed are ignored.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<Option<SessionEvent>, SessionError> {
        let result = match self.phase {
            Phase::Closed => return Ok(None),
            Phase::Handshake => self.handle_handshake(frame),
            Phase::Ready(version) => self.handle_ready(frame, version),
        };
        if let Err(e) = &result
            && e.is_fatal()
        {
            let code = match e {
                SessionError::NoCommonVersion { .. } => GoodbyeCode::IncompatibleVersion,
                SessionError::TransmitOverflow { .. } => GoodbyeCode::Internal,
                _ => GoodbyeCode::ProtocolError,
            };
            self.close_with(code, &e.to_string());
        }
        result
    }

    fn handle_handshake(&mut self, frame: Frame) -> Result<Option<SessionEvent>, SessionError> {
        match (self.side, frame) {
            (Side::Guest, Frame::Hello(hello)) => self.on_hello(hello),
            (Side::Host, Frame::Welcome(welcome)) => self.on_welcome(welcome),
            (_, Frame::Goodbye { code, reason }) => Ok(Some(self.on_goodbye(code, reason))),
            (_, frame) => Err(violation(format!("{:?} frame before the handshake completed", frame.frame_type()))),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<Option<SessionEvent>, SessionError> {
        let theirs = (hello.min_version, hello.max_version);
        if theirs.0 > theirs.1 {
            return Err(violation(format!("hello with empty version range {theirs:?}")));
        }
        let ours = (self.config.min_version, self.config.max_version);
        let version = common_version(ours, theirs);
        let build = crate::codec::truncate_utf8(&self.config.build, MAX_BUILD_LEN).to_owned();
        let welcome = Welcome { version: version.unwrap_or(0), min_version: ours.0, max_version: ours.1, build };
        self.push(Frame::Welcome(welcome));
        self.peer_build = Some(hello.build.clone());
        let Some(version) = version else { return Err(SessionError::NoCommonVersion { ours, theirs }) };
        self.phase = Phase::Ready(version);
        Ok(Some(SessionEvent::Ready { version, peer_build: hello.build }))
    }

    fn on_welcome(&mut self, welcome: Welcome) -> Result<Option<SessionEvent>, SessionError> {
        let ours = (self.config.min_version, self.config.max_version);
        let theirs = (welcome.min_version, welcome.max_version);
        self.peer_build = Some(welcome.build.clone());
        let expected = common_version(ours, theirs);
        if welcome.version == 0 && expected.is_none() {
            // The guest follows its Welcome with a Goodbye; nothing to send.
            self.phase = Phase::Closed;
            return Err(SessionError::NoCommonVersion { ours, theirs });
        }
        if Some(welcome.version) != expected {
            return Err(violation(format!(
                "welcome chose version {} for ranges {ours:?} and {theirs:?}, expected {expected:?}",
                welcome.version
            )));
        }
        self.phase = Phase::Ready(welcome.version);
        Ok(Some(SessionEvent::Ready { version: welcome.version, peer_build: welcome.build }))
    }

    fn on_goodbye(&mut self, code: GoodbyeCode, reason: String) -> SessionEvent {
        self.phase = Phase::Closed;
        SessionEvent::Goodbye { code, reason }
    }

    fn handle_ready(&mut self, frame: Frame, version: u16) -> Result<Option<SessionEvent>, SessionError> {
        match (self.side, frame) {
            (_, Frame::Hello(_) | Frame::Welcome(_)) => Err(violation("handshake frame after the handshake".into())),
            (Side::Guest, Frame::Request { id, body }) => self.on_request(id, &body, version),
            (Side::Host, Frame::Response { id, body }) => self.on_response(id, &body, version),
            (Side::Host, Frame::Event { body }) => Self::on_event(&body, version),
            (_, frame @ (Frame::Request { .. } | Frame::Response { .. } | Frame::Event { .. })) => {
                Err(violation(format!("{:?} frame sent to the wrong side", frame.frame_type())))
            }
            (_, Frame::Ping(v)) => {
                self.pong = Some(v);
                Ok(None)
            }
            (_, Frame::Pong(v)) => Ok(Some(SessionEvent::Pong(v))),
            (_, Frame::Goodbye { code, reason }) => Ok(Some(self.on_goodbye(code, reason))),
            (_, frame) => self.handle_stream_frame(frame),
        }
    }

    /// Sends a Ping; the peer's Pong comes back as [`SessionEvent::Pong`].
    pub fn ping(&mut self, value: u64) -> Result<(), SessionError> {
        self.ready()?;
        self.push_app(Frame::Ping(value))
    }

    /// Ends the session: queues a Goodbye (after everything already queued)
    /// and closes. Frames that arrive later are ignored.
    pub fn goodbye(&mut self, code: GoodbyeCode, reason: &str) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        self.close_with(code, reason);
        Ok(())
    }

    fn close_with(&mut self, code: GoodbyeCode, reason: &str) {
        if self.phase != Phase::Closed {
            let reason = crate::codec::truncate_utf8(reason, MAX_REASON_LEN).to_owned();
            self.push(Frame::Goodbye { code, reason });
            self.phase = Phase::Closed;
            // Nothing follows the Goodbye: no credit, close or reset.
            self.streams.clear();
            self.local_open = 0;
            self.remote_open = 0;
        }
    }

    fn ready(&self) -> Result<u16, SessionError> {
        match self.phase {
            Phase::Ready(v) => Ok(v),
            Phase::Handshake => Err(SessionError::NotReady),
            Phase::Closed => Err(SessionError::Closed),
        }
    }

    /// Queues a frame whose number is bounded by the session's own state:
    /// the handshake, a Goodbye, and per stream (opened within the bound) a
    /// Close, a Reset and credits for data received.
    fn push(&mut self, frame: Frame) {
        self.queued_bytes += frame.encoded_len();
        self.queue.push_back(frame);
    }

    /// Queues a frame the application asked for, within the hard bound.
    fn push_app(&mut self, frame: Frame) -> Result<(), SessionError> {
        let (queued, max) = (self.queued_bytes, self.config.max_queued);
        if queued + frame.encoded_len() > max {
            return Err(SessionError::QueueFull { queued, max });
        }
        self.push(frame);
        Ok(())
    }

    /// Queues a frame the peer's input made necessary; beyond the hard bound
    /// the peer is not reading, which is fatal.
    fn push_answer(&mut self, frame: Frame) -> Result<(), SessionError> {
        let max = self.config.max_queued;
        if self.queued_bytes + frame.encoded_len() > max {
            return Err(SessionError::TransmitOverflow { max });
        }
        self.push(frame);
        Ok(())
    }
}

/// The highest version in both ranges.
fn common_version(ours: (u16, u16), theirs: (u16, u16)) -> Option<u16> {
    let (low, high) = (ours.0.max(theirs.0).max(1), ours.1.min(theirs.1));
    (low <= high).then_some(high)
}

fn violation(reason: String) -> SessionError {
    SessionError::Violation(reason)
}

/// An error and its sources, for a violation's reason.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
