//! Frame encoding.

use bytes::{BufMut, Bytes, BytesMut};

use super::{CodecError, Frame, HEADER_LEN, MAGIC, MAX_BUILD_LEN, MAX_MESSAGE_LEN, MAX_REASON_LEN};

impl Frame {
    /// Length of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Hello(h) => 8 + h.build.len(),
            Frame::Welcome(w) => 10 + w.build.len(),
            Frame::Request { body, .. } | Frame::Response { body, .. } => 8 + body.len(),
            Frame::Event { body } => body.len(),
            Frame::Open { .. } | Frame::Close { .. } => 0,
            Frame::Data { data, .. } => data.len(),
            Frame::Credit { .. } => 4,
            Frame::Reset { reason, .. } | Frame::Goodbye { reason, .. } => 4 + reason.len(),
            Frame::Ping(_) | Frame::Pong(_) => 8,
        }
    }

    /// Checks the bounds a decoder enforces, so that nothing is sent that the
    /// peer must reject.
    fn check(&self) -> Result<(), CodecError> {
        let kind = self.frame_type();
        let (len, max) = match self {
            Frame::Hello(h) => (h.build.len(), MAX_BUILD_LEN),
            Frame::Welcome(w) => (w.build.len(), MAX_BUILD_LEN),
            Frame::Request { body, .. } | Frame::Response { body, .. } => (body.len(), MAX_MESSAGE_LEN),
            Frame::Reset { reason, .. } | Frame::Goodbye { reason, .. } => (reason.len(), MAX_REASON_LEN),
            Frame::Data { data, .. } if data.is_empty() => {
                return Err(CodecError::Malformed { kind, reason: "empty data" });
            }
            _ => (self.payload_len(), kind.max_payload()),
        };
        if len > max {
            return Err(CodecError::Oversized { kind, len, max });
        }
        Ok(())
    }

    /// Appends the encoded frame to `dst`. Fails, writing nothing, if a
    /// payload exceeds its bound or a Data frame is empty.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check()?;
        let payload_len = self.payload_len();
        dst.reserve(HEADER_LEN + payload_len);
        // Bounded by check(): every max_payload fits a u32.
        dst.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
        dst.put_u8(self.frame_type() as u8);
        dst.put_u8(0);
        dst.put_u16(0);
        dst.put_u32(self.stream().map_or(0, |s| s.get()));
        match self {
            Frame::Hello(h) => {
                dst.put_slice(&MAGIC);
                dst.put_u16(h.min_version);
                dst.put_u16(h.max_version);
                dst.put_slice(h.build.as_bytes());
            }
            Frame::Welcome(w) => {
                dst.put_slice(&MAGIC);
                dst.put_u16(w.version);
                dst.put_u16(w.min_version);
                dst.put_u16(w.max_version);
                dst.put_slice(w.build.as_bytes());
            }
            Frame::Request { id, body } | Frame::Response { id, body } => {
                dst.put_u64(*id);
                dst.put_slice(body);
            }
            Frame::Event { body } => dst.put_slice(body),
            Frame::Open { .. } | Frame::Close { .. } => {}
            Frame::Data { data, .. } => dst.put_slice(data),
            Frame::Credit { increment, .. } => dst.put_u32(*increment),
            Frame::Reset { code, reason, .. } => {
                dst.put_u32(*code as u32);
                dst.put_slice(reason.as_bytes());
            }
            Frame::Goodbye { code, reason } => {
                dst.put_u32(*code as u32);
                dst.put_slice(reason.as_bytes());
            }
            Frame::Ping(v) | Frame::Pong(v) => dst.put_u64(*v),
        }
        Ok(())
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, CodecError> {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }
}
