//! The protocol between crius (the host) and the guest agent of a KVM pod.
//!
//! crius drives the guest agent (PID 1 of the pod's VM, which runs the
//! containers) over **one byte stream**: virtio-vsock in a VM, a unix socket
//! for the `kvm-test` handler. This crate is that protocol and nothing else:
//! frame codec, control messages, stream multiplexing with flow control, and
//! the output-offset contract. It is the reference the host and the guest
//! are written against.
//!
//! It does no I/O, spawns no thread, uses no async runtime and depends on no
//! other crius crate, so the static guest binary and the host share it and
//! its decoding is pure and fuzzed (`fuzz/`). Guest input is untrusted:
//! every frame size is bounded, nothing the peer sends can make it panic or
//! allocate beyond the bounds below.
//!
//! # Frames ([`codec`])
//!
//! ```text
//!  0               4       5       6               8               12
//! +---------------+-------+-------+---------------+---------------+-----------
//! | payload length| type  | flags |   reserved    |   stream id   | payload...
//! |   u32 BE      |  u8   |  u8=0 |   u16 BE = 0  |    u32 BE     |
//! +---------------+-------+-------+---------------+---------------+-----------
//! ```
//!
//! Connection frames (stream id 0): Hello, Welcome, Request (u64 id + JSON),
//! Response (u64 id + JSON), Event (JSON), Ping/Pong (u64), Goodbye (code +
//! reason). Stream frames (stream id ≠ 0): Open, Data, Credit (u32
//! increment), Close (half-close), Reset (code + reason). The table of
//! layouts is in [`codec`]. Flags and reserved bits must be zero in
//! protocol version 1. A [`codec::Decoder`] takes byte chunks of any size
//! and checks each header before buffering its payload; every error is
//! fatal for the connection (framing is lost).
//!
//! # Handshake
//!
//! The host sends Hello (magic `CRGP`, its lowest and highest protocol
//! version, its build version). The guest answers Welcome with the highest
//! version both ranges contain, its own range and build; when there is none
//! it answers version 0 and a Goodbye (`IncompatibleVersion`), and both
//! sides report [`session::SessionError::NoCommonVersion`] with both ranges.
//! Nothing else may be sent before the handshake completes. The message set
//! is versioned with this version ([`message`]).
//!
//! # Requests, responses, events ([`message`])
//!
//! The host sends [`message::HostRequest`]s with ids unique among its
//! pending requests (at most [`session::MAX_PENDING_REQUESTS`]). The guest
//! answers each exactly once, in any order, with a
//! [`message::Reply`]: a [`message::GuestReply`] or an
//! [`message::ErrorReply`] (`NotFound`, `InvalidArgument`, `StartFailed`,
//! `Unsupported`, `AlreadyExists`, `DeadlineExceeded`, `Internal` and a
//! message). A response to an id not pending is a violation. The guest sends
//! [`message::GuestEvent`]s unsolicited: container output, exits, OOM, exec
//! exits, its own logs. Bodies are JSON, at most [`codec::MAX_MESSAGE_LEN`].
//!
//! # Streams and flow control ([`session`])
//!
//! Byte streams carry exec/attach stdio and port-forward connections. The
//! host opens odd ids, the guest even ones, in increasing order, at most
//! [`session::MAX_STREAMS`] open per side; a request names the streams it
//! uses (`Exec { stream, .. }`). Each side half-closes with Close; a stream
//! ends when both have, or at a Reset from either side (Reset crosses data
//! in flight: frames for a stream that is gone are ignored, frames for an id
//! never opened are violations).
//!
//! Each direction of a stream has a window of [`session::INITIAL_WINDOW`]
//! bytes: the sender sends only within the credit the receiver granted,
//! and the receiver grants credit (Credit frames) as its application
//! consumes data, so a stream whose reader is slow stalls alone while the
//! others flow. Data beyond the window resets that stream; credit beyond
//! [`session::MAX_WINDOW`] is a violation.
//!
//! # Container output ([`output`])
//!
//! The guest numbers each container's output bytes (stdout and stderr
//! together) from 0 and cuts them into immutable records, one CRI log entry
//! each. `SubscribeOutput { from_offset }` streams them as Output events;
//! `AckOutput { offset }` lets the guest drop what the host has durably
//! written. A host that checkpoints `(offset, log length)` after writing,
//! truncates its log to the checkpoint on restart and resubscribes from it
//! gets every record into the log exactly once; [`output`] states the rules.
//!
//! # Limits
//!
//! | what | bound |
//! |---|---|
//! | Data payload | [`codec::MAX_DATA_PAYLOAD`] (64 KiB) |
//! | Request/Response/Event payload | [`codec::MAX_CONTROL_PAYLOAD`] (1 MiB) |
//! | build string, reset/goodbye reason | 256 B, 1 KiB |
//! | stream window (initial / largest) | 256 KiB / 16 MiB |
//! | open streams per side | 1024 |
//! | pending requests | 1024 |
//! | transmit queue | [`session::SessionConfig::max_queued`] (default 16 MiB) |
//! | ExecSync output per stream | [`message::MAX_EXEC_SYNC_OUTPUT`] (256 KiB) |
//! | output record / Output event data | 16 KiB / 256 KiB |
//!
//! The receiving application holds at most a window of unconsumed data per
//! stream; the session itself buffers no received data.
#![warn(missing_docs)]

pub mod codec;
pub mod message;
pub mod output;
pub mod session;
#[cfg(test)]
mod testutil;
