//! The virtio-vsock packet header (virtio 1.x §5.10.6), parsed from guest
//! bytes without trusting them: short input and lengths beyond the data are
//! errors.

/// Size of the header on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload accepted from or sent to the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// `type`: stream socket.
pub const TYPE_STREAM: u16 = 1;
/// Shutdown flag: the peer will receive no more.
pub const SHUTDOWN_RECV: u32 = 1;
/// Shutdown flag: the peer will send no more.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RECV | SHUTDOWN_SEND;

/// Operations.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept.
    pub const RESPONSE: u16 = 2;
    /// Reset.
    pub const RST: u16 = 3;
    /// Shut one or both directions down.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my buffer space.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Tell me your buffer space.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Errors parsing a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than a header.
    #[error("vsock packet of {0} bytes is shorter than its header")]
    Short(usize),
    /// The header's length exceeds the limit or the bytes present.
    #[error("vsock packet says {len} payload bytes, {present} present")]
    BadLength {
        /// Claimed.
        len: u32,
        /// Present.
        present: usize,
    },
}

/// A packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Flags (shutdown).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed so far.
    pub fwd_cnt: u32,
}

impl Header {
    /// The wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Parses a packet: its header, and its payload (`len` bytes after it).
pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), PacketError> {
    let h: &[u8; HEADER_LEN] =
        bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(PacketError::Short(bytes.len()))?;
    let u64_at =
        |i: usize| u64::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3], h[i + 4], h[i + 5], h[i + 6], h[i + 7]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let header = Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        kind: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    };
    let present = bytes.len() - HEADER_LEN;
    let len = header.len as usize;
    if len > MAX_PAYLOAD || len > present {
        return Err(PacketError::BadLength { len: header.len, present });
    }
    Ok((header, &bytes[HEADER_LEN..HEADER_LEN + len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_payload_is_cut_to_len() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 3,
            kind: 1,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(b"abcdef");
        let (parsed, payload) = parse(&bytes).expect("parse");
        assert_eq!(parsed, h);
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn short_or_overlong_packets_are_errors() {
        assert_eq!(parse(&[0; 43]), Err(PacketError::Short(43)));
        let h = Header { len: 10, ..Default::default() };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(&[0; 9]);
        assert_eq!(parse(&bytes), Err(PacketError::BadLength { len: 10, present: 9 }));
        let huge = Header { len: u32::MAX, ..Default::default() };
        assert!(parse(&huge.to_bytes()).is_err());
    }
}
