//! Control messages: what travels, as JSON, inside Request, Response and
//! Event frames.
//!
//! - [`HostRequest`]: host → guest, in a Request frame.
//! - [`Reply`] (`Result<GuestReply, ErrorReply>`): guest → host, in the
//!   Response frame of that request. JSON `{"ok": {...}}` or
//!   `{"error": {"code": "not_found", "message": "..."}}`.
//! - [`GuestEvent`]: guest → host, unsolicited, in an Event frame.
//!
//! Every message is a JSON object with a `"type"` tag in snake_case.
//!
//! **Versions.** The message set is versioned with the protocol version the
//! handshake picks. Every variant says, in its `since()`, the version that
//! introduced it; a session refuses to send a variant newer than the version
//! it negotiated ([`crate::session::SessionError::Unsupported`]), so within
//! one session both sides know every message the other may send. Version 1
//! is the initial set below. A message that does not decode is therefore a
//! protocol violation, except for a request: the guest answers an unknown
//! request type with [`ErrorCode::Unsupported`] and an undecodable one with
//! [`ErrorCode::InvalidArgument`], and goes on.

mod base64;
mod event;
mod net;
mod reply;
mod request;
#[cfg(test)]
pub(crate) mod tests;

use serde::{Deserialize, Serialize};

pub use self::event::{ExitStatus, GuestEvent, GuestLog, LogLevel, OutputBatch, OutputRecord, OutputStream};
pub use self::net::{AddrParseError, Cidr, MacAddr};
pub use self::reply::{
    ContainerInfo, ContainerStats, ContainerStatus, CpuStats, ExecSyncOutput, GuestReply, InterfaceStats, MemoryStats,
    PodStats, StatsReply,
};
pub use self::request::{
    AttachRequest, ContainerCreate, DnsConfig, ExecRequest, ExecSyncRequest, HostRequest, HostsEntry, InterfaceConfig,
    PodSetup, Rootfs, RouteConfig,
};
use crate::codec::{MAX_CONTROL_PAYLOAD, MAX_MESSAGE_LEN};

/// Lowest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Highest protocol version this build speaks.
pub const MAX_PROTOCOL_VERSION: u16 = 1;

/// Most bytes of stdout, and of stderr, an [`ExecSyncOutput`] carries (the
/// request's `max_output` is capped to it): base64 in JSON, both fit one
/// Response frame.
pub const MAX_EXEC_SYNC_OUTPUT: u32 = 256 * 1024;
/// Most data bytes in one [`OutputRecord`]; longer lines are split into
/// partial records, as CRI logs do.
pub const MAX_OUTPUT_RECORD: usize = 16 * 1024;
/// Most data bytes, all records together, in one [`OutputBatch`].
pub const MAX_OUTPUT_BATCH: usize = 256 * 1024;

/// The answer to a request.
pub type Reply = Result<GuestReply, ErrorReply>;

/// Errors of encoding and decoding messages.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message could not be written as JSON.
    #[error("encode {kind} message")]
    Encode {
        /// The message's `type` tag.
        kind: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The encoded message exceeds the frame's bound.
    #[error("{kind} message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The message's `type` tag.
        kind: &'static str,
        /// Its encoded length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not a message of the expected direction.
    #[error("decode {what}")]
    Decode {
        /// What was expected ("request", "reply", "event").
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The class of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The container, exec stream or port does not exist.
    NotFound,
    /// The request is malformed or its values are not acceptable.
    InvalidArgument,
    /// The container's process could not be started.
    StartFailed,
    /// The guest does not implement this request.
    Unsupported,
    /// The object already exists (a container id created twice).
    AlreadyExists,
    /// The operation ran past its deadline (an ExecSync timeout).
    DeadlineExceeded,
    /// Anything else failed inside the guest.
    Internal,
}

/// A failed request: a code the host maps to a CRI status, and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorReply {
    /// The class of failure.
    pub code: ErrorCode,
    /// Details for logs and the kubelet.
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResponseBody<T, E> {
    Ok(T),
    Error(E),
}

/// JSON of a request, at most [`MAX_MESSAGE_LEN`] bytes.
pub fn encode_request(request: &HostRequest) -> Result<Vec<u8>, MessageError> {
    encode(request.kind(), request, MAX_MESSAGE_LEN)
}

/// A request from JSON.
pub fn decode_request(body: &[u8]) -> Result<HostRequest, MessageError> {
    serde_json::from_slice(body).map_err(|source| MessageError::Decode { what: "request", source })
}

/// JSON of a reply, at most [`MAX_MESSAGE_LEN`] bytes.
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, MessageError> {
    let (kind, body) = match reply {
        Ok(r) => (r.kind(), ResponseBody::Ok(r)),
        Err(e) => ("error", ResponseBody::Error(e)),
    };
    encode(kind, &body, MAX_MESSAGE_LEN)
}

/// A reply from JSON.
pub fn decode_reply(body: &[u8]) -> Result<Reply, MessageError> {
    match serde_json::from_slice(body) {
        Ok(ResponseBody::Ok(r)) => Ok(Ok(r)),
        Ok(ResponseBody::Error(e)) => Ok(Err(e)),
        Err(source) => Err(MessageError::Decode { what: "reply", source }),
    }
}

/// JSON of an event, at most [`MAX_CONTROL_PAYLOAD`] bytes.
pub fn encode_event(event: &GuestEvent) -> Result<Vec<u8>, MessageError> {
    encode(event.kind(), event, MAX_CONTROL_PAYLOAD)
}

/// An event from JSON.
pub fn decode_event(body: &[u8]) -> Result<GuestEvent, MessageError> {
    serde_json::from_slice(body).map_err(|source| MessageError::Decode { what: "event", source })
}

/// The error reply a guest sends for a request body it could not decode:
/// Unsupported when its type tag is unknown (a newer host), InvalidArgument
/// otherwise.
pub fn undecodable_request_reply(body: &[u8], error: &MessageError) -> ErrorReply {
    #[derive(Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        kind: String,
    }
    let detail = match error {
        MessageError::Decode { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    match serde_json::from_slice::<Tag>(body) {
        Ok(tag) if !HostRequest::KINDS.contains(&tag.kind.as_str()) => {
            let kind = crate::codec::truncate_utf8(&tag.kind, 64);
            ErrorReply::new(ErrorCode::Unsupported, format!("unknown request type {kind:?}"))
        }
        _ => {
            // serde quotes input (an unknown field's name): keep the reply small.
            let detail = crate::codec::truncate_utf8(&detail, 512);
            ErrorReply::new(ErrorCode::InvalidArgument, format!("undecodable request: {detail}"))
        }
    }
}

fn encode<T: Serialize>(kind: &'static str, value: &T, max: usize) -> Result<Vec<u8>, MessageError> {
    let json = serde_json::to_vec(value).map_err(|source| MessageError::Encode { kind, source })?;
    if json.len() > max {
        return Err(MessageError::TooLarge { kind, len: json.len(), max });
    }
    Ok(json)
}
