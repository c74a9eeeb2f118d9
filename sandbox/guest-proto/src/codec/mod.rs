//! Frames: the binary envelope every byte on the host↔guest connection travels in.
//!
//! A frame is a 12-byte header followed by a payload of at most the bound of
//! its type ([`FrameType::max_payload`]):
//!
//! ```text
//!  0               4       5       6               8               12
//! +---------------+-------+-------+---------------+---------------+--------------
//! | payload length| type  | flags |   reserved    |   stream id   | payload ...
//! |   u32 BE      |  u8   |  u8=0 |   u16 BE = 0  |    u32 BE     | (length bytes)
//! +---------------+-------+-------+---------------+---------------+--------------
//! ```
//!
//! Connection frames (Hello, Welcome, Request, Response, Event, Ping, Pong,
//! Goodbye) carry stream id 0; stream frames (Open, Data, Credit, Close,
//! Reset) a non-zero one. Protocol version 1 defines no flags: flags and the
//! reserved field must be zero. Integers are big-endian; strings are UTF-8.
//!
//! | type | name     | payload                                                     | max payload |
//! |------|----------|-------------------------------------------------------------|-------------|
//! | 1    | Hello    | magic `CRGP`, min version u16, max version u16, build str   | 264         |
//! | 2    | Welcome  | magic `CRGP`, chosen version u16 (0: none), min u16, max u16, build str | 266 |
//! | 3    | Request  | request id u64, JSON message                                | 1 MiB       |
//! | 4    | Response | request id u64, JSON result                                 | 1 MiB       |
//! | 5    | Event    | JSON message                                                | 1 MiB       |
//! | 6    | Open     | empty                                                       | 0           |
//! | 7    | Data     | 1.. bytes of stream data                                    | 64 KiB      |
//! | 8    | Credit   | window increment u32                                        | 4           |
//! | 9    | Close    | empty (half-close: no more data from the sender)            | 0           |
//! | 10   | Reset    | [`ResetCode`] u32, reason str                               | 1028        |
//! | 11   | Ping     | opaque u64                                                  | 8           |
//! | 12   | Pong     | the u64 of the Ping it answers                              | 8           |
//! | 13   | Goodbye  | [`GoodbyeCode`] u32, reason str                             | 1028        |
//!
//! [`Frame::encode`] writes a frame; [`Decoder`] reads them back from byte
//! chunks of any size. Neither panics on any input.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroU32;

use bytes::Bytes;
pub use decode::Decoder;
use serde::{Deserialize, Serialize};

/// Length of the frame header.
pub const HEADER_LEN: usize = 12;
/// Largest payload of a Data frame.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Largest payload of a Request, Response or Event frame (request id included).
pub const MAX_CONTROL_PAYLOAD: usize = 1024 * 1024;
/// Largest JSON body of a Request or Response (the payload less the request id).
pub const MAX_MESSAGE_LEN: usize = MAX_CONTROL_PAYLOAD - 8;
/// Longest build version string in Hello and Welcome, in bytes.
pub const MAX_BUILD_LEN: usize = 256;
/// Longest reason string in Reset and Goodbye, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// The first four payload bytes of Hello and Welcome.
pub const MAGIC: [u8; 4] = *b"CRGP";

/// Errors of the frame codec. Every one of them is fatal for the connection:
/// after it the byte stream cannot be re-synchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The type byte names no frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A frame's payload length exceeds the bound of its type.
    #[error("{kind:?} frame of {len} bytes exceeds its limit of {max}")]
    Oversized {
        /// Frame type.
        kind: FrameType,
        /// Payload length announced (decoding) or needed (encoding).
        len: usize,
        /// Bound of the type.
        max: usize,
    },
    /// Flags or the reserved field are not zero.
    #[error("{kind:?} frame with flags {flags:#04x} and reserved {reserved:#06x}, both must be zero")]
    NonZeroReserved {
        /// Frame type.
        kind: FrameType,
        /// Flags byte.
        flags: u8,
        /// Reserved field.
        reserved: u16,
    },
    /// A connection frame with a stream id or a stream frame without one.
    #[error("{kind:?} frame on stream id {stream}")]
    WrongStream {
        /// Frame type.
        kind: FrameType,
        /// Stream id in the header.
        stream: u32,
    },
    /// The payload does not have the layout of its type.
    #[error("malformed {kind:?} payload: {reason}")]
    Malformed {
        /// Frame type.
        kind: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
    /// The input ended inside a frame.
    #[error("connection ended inside a frame ({buffered} bytes of it received)")]
    TruncatedAtEof {
        /// Bytes of the unfinished frame received.
        buffered: usize,
    },
    /// An earlier error left the decoder without frame boundaries.
    #[error("decoder stopped after an earlier error")]
    Failed,
}

/// The type byte of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Handshake, host → guest.
    Hello = 1,
    /// Handshake answer, guest → host.
    Welcome = 2,
    /// Request, host → guest.
    Request = 3,
    /// Response to a request, guest → host.
    Response = 4,
    /// Unsolicited message, guest → host.
    Event = 5,
    /// Opens a stream.
    Open = 6,
    /// Stream data.
    Data = 7,
    /// Window update of a stream.
    Credit = 8,
    /// Half-close of a stream.
    Close = 9,
    /// Abort of a stream.
    Reset = 10,
    /// Liveness probe.
    Ping = 11,
    /// Answer to a Ping.
    Pong = 12,
    /// End of the session.
    Goodbye = 13,
}

impl FrameType {
    /// The type for a header's type byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        use FrameType::*;
        Some(match byte {
            1 => Hello,
            2 => Welcome,
            3 => Request,
            4 => Response,
            5 => Event,
            6 => Open,
            7 => Data,
            8 => Credit,
            9 => Close,
            10 => Reset,
            11 => Ping,
            12 => Pong,
            13 => Goodbye,
            _ => return None,
        })
    }

    /// Largest payload a frame of this type may have.
    pub fn max_payload(self) -> usize {
        use FrameType::*;
        match self {
            Hello => 8 + MAX_BUILD_LEN,
            Welcome => 10 + MAX_BUILD_LEN,
            Request | Response | Event => MAX_CONTROL_PAYLOAD,
            Open | Close => 0,
            Data => MAX_DATA_PAYLOAD,
            Credit => 4,
            Reset | Goodbye => 4 + MAX_REASON_LEN,
            Ping | Pong => 8,
        }
    }

    /// Whether frames of this type belong to a stream (non-zero stream id).
    pub fn is_stream(self) -> bool {
        matches!(self, FrameType::Open | FrameType::Data | FrameType::Credit | FrameType::Close | FrameType::Reset)
    }
}

/// A stream id: non-zero; the host opens odd ids, the guest even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(NonZeroU32);

impl StreamId {
    /// The id for a raw value; `None` for 0.
    pub fn new(raw: u32) -> Option<Self> {
        NonZeroU32::new(raw).map(Self)
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Whether the host opened this stream (odd id).
    pub fn is_host_opened(self) -> bool {
        self.get() % 2 == 1
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hello: the host's offer (first frame on a connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the host speaks.
    pub min_version: u16,
    /// Highest protocol version the host speaks.
    pub max_version: u16,
    /// The host's build version, for logs.
    pub build: String,
}

/// Welcome: the guest's answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The highest version both sides speak, or 0 when there is none (the
    /// guest then ends the session).
    pub version: u16,
    /// Lowest protocol version the guest speaks.
    pub min_version: u16,
    /// Highest protocol version the guest speaks.
    pub max_version: u16,
    /// The guest's build version, for logs.
    pub build: String,
}

/// Why a stream was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ResetCode {
    /// The application aborted the stream.
    Cancel = 0,
    /// The receiver refused a new stream (too many, or not wanted).
    Refused = 1,
    /// The peer sent beyond the window it was granted.
    FlowControl = 2,
    /// The peer sent a frame the stream's state does not allow (data after Close).
    StreamState = 3,
    /// The stream's endpoint failed (a dial, a process, a pipe).
    Internal = 4,
}

impl ResetCode {
    fn from_u32(raw: u32) -> Option<Self> {
        use ResetCode::*;
        [Cancel, Refused, FlowControl, StreamState, Internal].into_iter().find(|c| *c as u32 == raw)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GoodbyeCode {
    /// Orderly end.
    Normal = 0,
    /// The sender saw the peer break the protocol.
    ProtocolError = 1,
    /// The two sides share no protocol version.
    IncompatibleVersion = 2,
    /// The sender failed.
    Internal = 3,
}

impl GoodbyeCode {
    fn from_u32(raw: u32) -> Option<Self> {
        use GoodbyeCode::*;
        [Normal, ProtocolError, IncompatibleVersion, Internal].into_iter().find(|c| *c as u32 == raw)
    }
}

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Handshake offer, host → guest.
    Hello(Hello),
    /// Handshake answer, guest → host.
    Welcome(Welcome),
    /// A request: its id (chosen by the host, unique among those pending) and
    /// its JSON message (`HostRequest`).
    Request {
        /// Request id.
        id: u64,
        /// JSON body, at most [`MAX_MESSAGE_LEN`].
        body: Bytes,
    },
    /// The response to request `id`: JSON of a `Reply`.
    Response {
        /// Request id.
        id: u64,
        /// JSON body, at most [`MAX_MESSAGE_LEN`].
        body: Bytes,
    },
    /// An unsolicited JSON message (`GuestEvent`).
    Event {
        /// JSON body, at most [`MAX_CONTROL_PAYLOAD`].
        body: Bytes,
    },
    /// Opens stream `stream` (by the side whose parity it has).
    Open {
        /// Stream id.
        stream: StreamId,
    },
    /// Data on a stream, 1 to [`MAX_DATA_PAYLOAD`] bytes.
    Data {
        /// Stream id.
        stream: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The sender may send `increment` more bytes on the stream.
    Credit {
        /// Stream id.
        stream: StreamId,
        /// Window increment.
        increment: u32,
    },
    /// The sender sends no more data on the stream.
    Close {
        /// Stream id.
        stream: StreamId,
    },
    /// The stream is aborted in both directions.
    Reset {
        /// Stream id.
        stream: StreamId,
        /// Why.
        code: ResetCode,
        /// Details, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
    /// Liveness probe; the peer answers with a Pong of the same value.
    Ping(u64),
    /// Answer to a Ping.
    Pong(u64),
    /// The sender ends the session and sends nothing after it.
    Goodbye {
        /// Why.
        code: GoodbyeCode,
        /// Details, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
}

impl Frame {
    /// The type of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Request { .. } => FrameType::Request,
            Frame::Response { .. } => FrameType::Response,
            Frame::Event { .. } => FrameType::Event,
            Frame::Open { .. } => FrameType::Open,
            Frame::Data { .. } => FrameType::Data,
            Frame::Credit { .. } => FrameType::Credit,
            Frame::Close { .. } => FrameType::Close,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::Goodbye { .. } => FrameType::Goodbye,
        }
    }

    /// The stream of a stream frame; `None` for connection frames.
    pub fn stream(&self) -> Option<StreamId> {
        match self {
            Frame::Open { stream }
            | Frame::Data { stream, .. }
            | Frame::Credit { stream, .. }
            | Frame::Close { stream }
            | Frame::Reset { stream, .. } => Some(*stream),
            _ => None,
        }
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary: reasons and
/// build strings are informative, so senders shorten rather than fail.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
