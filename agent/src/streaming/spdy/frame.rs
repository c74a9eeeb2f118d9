//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 as Kubernetes uses it):
//! parsing and encoding, with the header block still compressed. Pure code
//! without I/O, so it can be fuzzed and tested on bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// SPDY version in control frames.
const VERSION: u16 = 3;
/// Frame header size.
pub const HEADER_LEN: usize = 8;
/// Largest frame payload crius accepts (the protocol allows 16 MiB; data
/// frames from Kubernetes clients are at most 32 KiB).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Flag: last frame of the sender's half of the stream.
pub const FLAG_FIN: u8 = 0x01;

/// Control frame types.
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream data.
    Data {
        /// Stream.
        stream_id: u32,
        /// FIN and others.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A new stream from the peer.
    SynStream {
        /// Stream.
        stream_id: u32,
        /// FIN and UNIDIRECTIONAL.
        flags: u8,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Acceptance of a stream.
    SynReply {
        /// Stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Abnormal end of a stream.
    RstStream {
        /// Stream.
        stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Settings (ignored by crius beyond parsing).
    Settings,
    /// Liveness check, answered with the same id.
    Ping {
        /// Id.
        id: u32,
    },
    /// End of the session.
    GoAway {
        /// Last stream the sender processed.
        last_stream_id: u32,
    },
    /// More headers for a stream.
    Headers {
        /// Stream.
        stream_id: u32,
        /// Compressed header block.
        headers: Bytes,
    },
    /// Flow control credit.
    WindowUpdate {
        /// Stream (0: the session).
        stream_id: u32,
        /// Credit in bytes.
        delta: u32,
    },
    /// A control frame type crius does not know (skipped, as the spec says).
    Unknown,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} (expected 3)")]
    Version(u16),
    /// Longer than crius accepts.
    #[error("frame of {0} bytes is larger than the {MAX_PAYLOAD} bytes allowed")]
    TooLarge(usize),
    /// Too short for its type.
    #[error("{0} frame is too short")]
    Truncated(&'static str),
}

/// Takes one frame off the front of `buf`; `Ok(None)` when more bytes are
/// needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
    if length > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(length));
    }
    if buf.len() < HEADER_LEN + length {
        buf.reserve(HEADER_LEN + length - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(HEADER_LEN + length).freeze();
    let first = frame.get_u32();
    let flags = frame.get_u8();
    frame.advance(3);
    if first & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data { stream_id: first, flags, data: frame }));
    }
    let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(0);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let need = |frame: &Bytes, n: usize, name: &'static str| {
        if frame.len() < n { Err(FrameError::Truncated(name)) } else { Ok(()) }
    };
    let parsed = match u16::try_from(first & 0xffff).unwrap_or(0) {
        kind::SYN_STREAM => {
            need(&frame, 10, "SYN_STREAM")?;
            let stream_id = frame.get_u32() & 0x7fff_ffff;
            frame.advance(6); // associated stream, priority, slot
            Frame::SynStream { stream_id, flags, headers: frame }
        }
        kind::SYN_REPLY => {
            need(&frame, 4, "SYN_REPLY")?;
            Frame::SynReply { stream_id: frame.get_u32() & 0x7fff_ffff, flags, headers: frame }
        }
        kind::RST_STREAM => {
            need(&frame, 8, "RST_STREAM")?;
            Frame::RstStream { stream_id: frame.get_u32() & 0x7fff_ffff, status: frame.get_u32() }
        }
        kind::SETTINGS => Frame::Settings,
        kind::PING => {
            need(&frame, 4, "PING")?;
            Frame::Ping { id: frame.get_u32() }
        }
        kind::GOAWAY => {
            need(&frame, 4, "GOAWAY")?;
            Frame::GoAway { last_stream_id: frame.get_u32() & 0x7fff_ffff }
        }
        kind::HEADERS => {
            need(&frame, 4, "HEADERS")?;
            Frame::Headers { stream_id: frame.get_u32() & 0x7fff_ffff, headers: frame }
        }
        kind::WINDOW_UPDATE => {
            need(&frame, 8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate { stream_id: frame.get_u32() & 0x7fff_ffff, delta: frame.get_u32() & 0x7fff_ffff }
        }
        _ => Frame::Unknown,
    };
    Ok(Some(parsed))
}

/// Appends the wire form of `frame` to `out`. Frames crius never sends
/// (SYN_STREAM, SETTINGS, unknown) are encoded too, for tests.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let control = |out: &mut BytesMut, kind: u16, flags: u8, len: usize| {
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        put_flags_len(out, flags, len);
    };
    match frame {
        Frame::Data { stream_id, flags, data } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            put_flags_len(out, *flags, data.len());
            out.put_slice(data);
        }
        Frame::SynStream { stream_id, flags, headers } => {
            control(out, kind::SYN_STREAM, *flags, 10 + headers.len());
            out.put_u32(*stream_id);
            out.put_u32(0);
            out.put_u16(0);
            out.put_slice(headers);
        }
        Frame::SynReply { stream_id, flags, headers } => {
            control(out, kind::SYN_REPLY, *flags, 4 + headers.len());
            out.put_u32(*stream_id);
            out.put_slice(headers);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, kind::RST_STREAM, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*status);
        }
        Frame::Settings | Frame::Unknown => {
            control(out, kind::SETTINGS, 0, 4);
            out.put_u32(0);
        }
        Frame::Ping { id } => {
            control(out, kind::PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway { last_stream_id } => {
            control(out, kind::GOAWAY, 0, 8);
            out.put_u32(*last_stream_id);
            out.put_u32(0);
        }
        Frame::Headers { stream_id, headers } => {
            control(out, kind::HEADERS, 0, 4 + headers.len());
            out.put_u32(*stream_id);
            out.put_slice(headers);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, kind::WINDOW_UPDATE, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*delta);
        }
    }
}

fn put_flags_len(out: &mut BytesMut, flags: u8, len: usize) {
    // Payloads crius builds are far below 16 MiB; larger ones are cut by the caller.
    let len = u32::try_from(len.min(0xff_ffff)).unwrap_or(0xff_ffff);
    out.put_u32((u32::from(flags) << 24) | len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf);
        let wire = buf.clone();
        // Byte by byte: nothing until the frame is complete.
        let mut partial = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            partial.put_u8(*byte);
            let got = decode(&mut partial).expect("valid");
            if i + 1 < wire.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(frame.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"hello") });
        round_trip(Frame::SynStream { stream_id: 1, flags: 0, headers: Bytes::from_static(b"hdr") });
        round_trip(Frame::SynReply { stream_id: 1, flags: 0, headers: Bytes::from_static(b"x") });
        round_trip(Frame::RstStream { stream_id: 3, status: 5 });
        round_trip(Frame::Ping { id: 7 });
        round_trip(Frame::GoAway { last_stream_id: 9 });
        round_trip(Frame::Headers { stream_id: 3, headers: Bytes::new() });
        round_trip(Frame::WindowUpdate { stream_id: 0, delta: 1000 });
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut big = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode(&mut big), Err(FrameError::TooLarge(0xff_ffff)));
        let mut v2 = BytesMut::from(&[0x80u8, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(decode(&mut v2), Err(FrameError::Version(2)));
        let mut short = BytesMut::from(&[0x80u8, 3, 0, 3, 0, 0, 0, 2, 0, 1][..]);
        assert_eq!(decode(&mut short), Err(FrameError::Truncated("RST_STREAM")));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_u32;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..(seed % 64) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.put_u8((seed >> 16) as u8);
            }
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }
}
