//! The incremental frame decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::{CodecError, Frame, FrameType, GoodbyeCode, HEADER_LEN, Hello, MAGIC, ResetCode, StreamId, Welcome};

/// Decodes frames from byte chunks of any size, as they come off a socket.
///
/// [`Decoder::decode`] takes from its input only the bytes of the frame it
/// is assembling, so the decoder itself never holds more than one frame: a
/// header, then a payload buffer allocated once the header has been checked
/// (type known, flags zero, stream id fits the type, length within the
/// type's bound). An oversized frame is rejected from its header, before any
/// of its payload arrives.
///
/// ```
/// # use guest_proto::codec::{Decoder, Frame};
/// let mut decoder = Decoder::new();
/// let bytes = Frame::Ping(7).to_bytes()?;
/// let mut chunk: &[u8] = &bytes; // as read from the socket
/// while let Some(frame) = decoder.decode(&mut chunk)? {
///     assert_eq!(frame, Frame::Ping(7));
/// }
/// assert!(chunk.is_empty());
/// decoder.finish()?; // at EOF: no frame was cut off
/// # Ok::<(), guest_proto::codec::CodecError>(())
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    header_len: usize,
    payload: Option<Payload>,
    failed: bool,
}

#[derive(Debug)]
struct Payload {
    kind: FrameType,
    stream: u32,
    len: usize,
    buf: BytesMut,
}

impl Decoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from the front of `input` and returns the next complete
    /// frame, or `Ok(None)` once `input` is used up inside a frame (feed the
    /// next chunk). Call it in a loop until it returns `Ok(None)`: one chunk
    /// may hold many frames. After an error it returns
    /// [`CodecError::Failed`] forever.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, CodecError> {
        if self.failed {
            return Err(CodecError::Failed);
        }
        let result = self.step(input);
        if result.is_err() {
            self.failed = true;
            self.payload = None;
        }
        result
    }

    /// At the end of the input: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.failed {
            return Err(CodecError::Failed);
        }
        let buffered = self.payload.as_ref().map_or(self.header_len, |p| HEADER_LEN + p.buf.len());
        if buffered == 0 { Ok(()) } else { Err(CodecError::TruncatedAtEof { buffered }) }
    }

    /// Whether the decoder is between frames.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.payload.is_none()
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, CodecError> {
        if self.payload.is_none() {
            let take = (HEADER_LEN - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            input.advance(take);
            if self.header_len < HEADER_LEN {
                return Ok(None);
            }
            self.header_len = 0;
            self.payload = Some(parse_header(&self.header)?);
        }
        let Some(payload) = self.payload.as_mut() else { return Ok(None) };
        let take = (payload.len - payload.buf.len()).min(input.len());
        payload.buf.extend_from_slice(&input[..take]);
        input.advance(take);
        if payload.buf.len() < payload.len {
            return Ok(None);
        }
        match self.payload.take() {
            Some(p) => parse_payload(p.kind, p.stream, p.buf.freeze()).map(Some),
            None => Ok(None),
        }
    }
}

fn parse_header(header: &[u8; HEADER_LEN]) -> Result<Payload, CodecError> {
    let mut h = &header[..];
    let len = h.get_u32() as usize;
    let type_byte = h.get_u8();
    let flags = h.get_u8();
    let reserved = h.get_u16();
    let stream = h.get_u32();
    let kind = FrameType::from_u8(type_byte).ok_or(CodecError::UnknownType(type_byte))?;
    if flags != 0 || reserved != 0 {
        return Err(CodecError::NonZeroReserved { kind, flags, reserved });
    }
    if kind.is_stream() == (stream == 0) {
        return Err(CodecError::WrongStream { kind, stream });
    }
    let max = kind.max_payload();
    if len > max {
        return Err(CodecError::Oversized { kind, len, max });
    }
    if !payload_len_ok(kind, len) {
        return Err(CodecError::Malformed { kind, reason: "payload length impossible for the type" });
    }
    Ok(Payload { kind, stream, len, buf: BytesMut::with_capacity(len) })
}

/// Whether `len` (at most the type's bound) is a length the type can have.
fn payload_len_ok(kind: FrameType, len: usize) -> bool {
    let min = match kind {
        FrameType::Credit | FrameType::Ping | FrameType::Pong => kind.max_payload(),
        FrameType::Hello | FrameType::Request | FrameType::Response => 8,
        FrameType::Welcome => 10,
        FrameType::Reset | FrameType::Goodbye => 4,
        FrameType::Data => 1,
        FrameType::Event | FrameType::Open | FrameType::Close => 0,
    };
    len >= min
}

fn parse_payload(kind: FrameType, raw_stream: u32, mut p: Bytes) -> Result<Frame, CodecError> {
    let malformed = |reason| CodecError::Malformed { kind, reason };
    // The header check made stream frames non-zero and the lengths at least
    // the fixed part of each layout, so the get_* calls below cannot run out.
    let stream = StreamId::new(raw_stream);
    let frame = match (kind, stream) {
        (FrameType::Hello, _) => {
            check_magic(&mut p).ok_or(malformed("bad magic: not a crius guest protocol peer"))?;
            let min_version = p.get_u16();
            let max_version = p.get_u16();
            let build = utf8(p).ok_or(malformed("build is not UTF-8"))?;
            Frame::Hello(Hello { min_version, max_version, build })
        }
        (FrameType::Welcome, _) => {
            check_magic(&mut p).ok_or(malformed("bad magic: not a crius guest protocol peer"))?;
            let version = p.get_u16();
            let min_version = p.get_u16();
            let max_version = p.get_u16();
            let build = utf8(p).ok_or(malformed("build is not UTF-8"))?;
            Frame::Welcome(Welcome { version, min_version, max_version, build })
        }
        (FrameType::Request, _) => Frame::Request { id: p.get_u64(), body: p },
        (FrameType::Response, _) => Frame::Response { id: p.get_u64(), body: p },
        (FrameType::Event, _) => Frame::Event { body: p },
        (FrameType::Ping, _) => Frame::Ping(p.get_u64()),
        (FrameType::Pong, _) => Frame::Pong(p.get_u64()),
        (FrameType::Goodbye, _) => {
            let code = GoodbyeCode::from_u32(p.get_u32()).ok_or(malformed("unknown goodbye code"))?;
            let reason = utf8(p).ok_or(malformed("reason is not UTF-8"))?;
            Frame::Goodbye { code, reason }
        }
        (FrameType::Open, Some(stream)) => Frame::Open { stream },
        (FrameType::Data, Some(stream)) => Frame::Data { stream, data: p },
        (FrameType::Credit, Some(stream)) => Frame::Credit { stream, increment: p.get_u32() },
        (FrameType::Close, Some(stream)) => Frame::Close { stream },
        (FrameType::Reset, Some(stream)) => {
            let code = ResetCode::from_u32(p.get_u32()).ok_or(malformed("unknown reset code"))?;
            let reason = utf8(p).ok_or(malformed("reason is not UTF-8"))?;
            Frame::Reset { stream, code, reason }
        }
        (_, None) => return Err(CodecError::WrongStream { kind, stream: raw_stream }),
    };
    Ok(frame)
}

fn check_magic(p: &mut Bytes) -> Option<()> {
    (p.split_to(MAGIC.len())[..] == MAGIC).then_some(())
}

fn utf8(p: Bytes) -> Option<String> {
    String::from_utf8(p.to_vec()).ok()
}
