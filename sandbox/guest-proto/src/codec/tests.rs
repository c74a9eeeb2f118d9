use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("non-zero")
}

/// One frame of every type, with payloads at both ends of their bounds.
pub(crate) fn every_frame() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello { min_version: 1, max_version: 3, build: "crius 0.1.0 (abc)".into() }),
        Frame::Hello(Hello { min_version: 0, max_version: u16::MAX, build: "é".repeat(MAX_BUILD_LEN / 2) }),
        Frame::Welcome(Welcome { version: 2, min_version: 1, max_version: 2, build: String::new() }),
        Frame::Welcome(Welcome { version: 0, min_version: 9, max_version: 9, build: "g".repeat(MAX_BUILD_LEN) }),
        Frame::Request { id: 1, body: Bytes::from_static(br#"{"type":"shutdown"}"#) },
        Frame::Request { id: u64::MAX, body: Bytes::from(vec![b'x'; MAX_MESSAGE_LEN]) },
        Frame::Response { id: 42, body: Bytes::new() },
        Frame::Event { body: Bytes::from(vec![0; MAX_CONTROL_PAYLOAD]) },
        Frame::Event { body: Bytes::new() },
        Frame::Open { stream: sid(1) },
        Frame::Data { stream: sid(u32::MAX), data: Bytes::from_static(b"x") },
        Frame::Data { stream: sid(2), data: Bytes::from(vec![7; MAX_DATA_PAYLOAD]) },
        Frame::Credit { stream: sid(3), increment: u32::MAX },
        Frame::Close { stream: sid(4) },
        Frame::Reset { stream: sid(5), code: ResetCode::FlowControl, reason: "r".repeat(MAX_REASON_LEN) },
        Frame::Reset { stream: sid(6), code: ResetCode::Cancel, reason: String::new() },
        Frame::Ping(0),
        Frame::Pong(u64::MAX),
        Frame::Goodbye { code: GoodbyeCode::IncompatibleVersion, reason: "no common version".into() },
    ]
}

fn encode(frame: &Frame) -> Vec<u8> {
    frame.to_bytes().expect("encodes").to_vec()
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
    let mut decoder = Decoder::new();
    let mut input = bytes;
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut input)? {
        frames.push(frame);
    }
    assert!(input.is_empty(), "decode returned None with input left");
    decoder.finish()?;
    Ok(frames)
}

fn header(len: u32, kind: u8, flags: u8, reserved: u16, stream: u32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(len);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u16(reserved);
    b.put_u32(stream);
    b
}

#[test]
fn every_frame_type_round_trips() {
    let frames = every_frame();
    let mut seen = std::collections::HashSet::new();
    for frame in &frames {
        let bytes = encode(frame);
        assert_eq!(bytes.len(), frame.encoded_len());
        assert_eq!(decode_all(&bytes).expect("decodes"), vec![frame.clone()]);
        seen.insert(frame.frame_type() as u8);
    }
    assert_eq!(seen.len(), 13, "a frame type is missing from every_frame()");
    for byte in 0..=255u8 {
        assert_eq!(FrameType::from_u8(byte).is_some(), seen.contains(&byte), "type byte {byte}");
    }
}

#[test]
fn header_layout_matches_the_diagram() {
    let bytes = encode(&Frame::Credit { stream: sid(0x0102_0304), increment: 0x0a0b_0c0d });
    assert_eq!(bytes, [0, 0, 0, 4, 8, 0, 0, 0, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    let hello = encode(&Frame::Hello(Hello { min_version: 1, max_version: 2, build: "b".into() }));
    assert_eq!(hello, [0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, b'C', b'R', b'G', b'P', 0, 1, 0, 2, b'b']);
}

#[test]
fn decoder_fed_one_byte_at_a_time() {
    let frames = every_frame();
    let stream: Vec<u8> = frames.iter().flat_map(encode).collect();
    let mut decoder = Decoder::new();
    let mut got = Vec::new();
    for byte in &stream {
        let mut input = std::slice::from_ref(byte);
        while let Some(frame) = decoder.decode(&mut input).expect("decodes") {
            got.push(frame);
        }
        assert!(input.is_empty());
    }
    decoder.finish().expect("ends on a boundary");
    assert_eq!(got, frames);
}

#[test]
fn decoder_fed_random_chunks() {
    let frames = every_frame();
    let stream: Vec<u8> = frames.iter().flat_map(encode).collect();
    let mut rng = crate::testutil::Rng::new(7);
    for _ in 0..20 {
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = rng.below(70_000).min(rest.len()) + usize::from(rest.len() == 1);
            let (mut chunk, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            while let Some(frame) = decoder.decode(&mut chunk).expect("decodes") {
                got.push(frame);
            }
        }
        decoder.finish().expect("ends on a boundary");
        assert_eq!(got, frames);
    }
}

#[test]
fn truncated_input_is_an_error_at_eof() {
    let bytes = encode(&Frame::Data { stream: sid(1), data: Bytes::from_static(b"hello") });
    for cut in 1..bytes.len() {
        let mut decoder = Decoder::new();
        let mut input = &bytes[..cut];
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert!(!decoder.is_idle());
        assert_eq!(decoder.finish(), Err(CodecError::TruncatedAtEof { buffered: cut }));
    }
    assert!(Decoder::new().finish().is_ok());
}

#[test]
fn oversized_frames_are_rejected_from_the_header() {
    for kind in (1..=13).filter_map(FrameType::from_u8) {
        let max = kind.max_payload();
        let stream = if kind.is_stream() { 1 } else { 0 };
        let len = u32::try_from(max + 1).expect("small");
        // Only the header arrives: the error must not wait for the payload.
        let mut decoder = Decoder::new();
        let bytes = header(len, kind as u8, 0, 0, stream);
        let mut input = &bytes[..];
        assert_eq!(decoder.decode(&mut input), Err(CodecError::Oversized { kind, len: max + 1, max }));
        assert_eq!(decoder.decode(&mut &b"more"[..]), Err(CodecError::Failed));
        assert_eq!(decoder.finish(), Err(CodecError::Failed));
    }
    let huge = header(u32::MAX, FrameType::Data as u8, 0, 0, 1);
    assert!(matches!(decode_all(&huge), Err(CodecError::Oversized { .. })));
}

#[test]
fn encoder_refuses_what_a_decoder_would_reject() {
    let too_long = [
        Frame::Data { stream: sid(1), data: Bytes::from(vec![0; MAX_DATA_PAYLOAD + 1]) },
        Frame::Request { id: 1, body: Bytes::from(vec![0; MAX_MESSAGE_LEN + 1]) },
        Frame::Event { body: Bytes::from(vec![0; MAX_CONTROL_PAYLOAD + 1]) },
        Frame::Hello(Hello { min_version: 1, max_version: 1, build: "b".repeat(MAX_BUILD_LEN + 1) }),
        Frame::Goodbye { code: GoodbyeCode::Normal, reason: "r".repeat(MAX_REASON_LEN + 1) },
    ];
    for frame in too_long {
        let mut dst = BytesMut::new();
        assert!(matches!(frame.encode(&mut dst), Err(CodecError::Oversized { .. })), "{:?}", frame.frame_type());
        assert!(dst.is_empty());
    }
    let empty = Frame::Data { stream: sid(1), data: Bytes::new() };
    assert!(matches!(empty.to_bytes(), Err(CodecError::Malformed { .. })));
}

#[test]
fn malformed_headers_and_payloads_are_errors() {
    type Expect = fn(&CodecError) -> bool;
    let mut cases: Vec<(BytesMut, Expect)> = vec![
        (header(0, 0, 0, 0, 0), |e| matches!(e, CodecError::UnknownType(0))),
        (header(0, 14, 0, 0, 0), |e| matches!(e, CodecError::UnknownType(14))),
        (header(8, 11, 1, 0, 0), |e| matches!(e, CodecError::NonZeroReserved { flags: 1, .. })),
        (header(8, 11, 0, 9, 0), |e| matches!(e, CodecError::NonZeroReserved { reserved: 9, .. })),
        (header(8, 11, 0, 0, 5), |e| matches!(e, CodecError::WrongStream { stream: 5, .. })),
        (header(0, 6, 0, 0, 0), |e| matches!(e, CodecError::WrongStream { stream: 0, .. })),
        (header(0, 7, 0, 0, 1), |e| matches!(e, CodecError::Malformed { .. })),
        (header(3, 8, 0, 0, 1), |e| matches!(e, CodecError::Malformed { .. })),
        (header(7, 3, 0, 0, 0), |e| matches!(e, CodecError::Malformed { .. })),
        (header(3, 13, 0, 0, 0), |e| matches!(e, CodecError::Malformed { .. })),
    ];
    let mut bad_magic = header(8, 1, 0, 0, 0);
    bad_magic.put_slice(b"HTTP\0\x01\0\x01");
    cases.push((bad_magic, |e| matches!(e, CodecError::Malformed { .. })));
    let mut bad_utf8 = header(6, 13, 0, 0, 0);
    bad_utf8.put_slice(&[0, 0, 0, 0, 0xff, 0xfe]);
    cases.push((bad_utf8, |e| matches!(e, CodecError::Malformed { .. })));
    let mut bad_code = header(4, 10, 0, 0, 1);
    bad_code.put_u32(99);
    cases.push((bad_code, |e| matches!(e, CodecError::Malformed { .. })));
    for (bytes, expected) in cases {
        let err = decode_all(&bytes).expect_err("must not decode");
        assert!(expected(&err), "{bytes:?}: {err}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = crate::testutil::Rng::new(99);
    for _ in 0..2_000 {
        let len = rng.below(64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Steer some inputs to a plausible header so payload parsing runs too.
        if len >= HEADER_LEN && rng.below(2) == 0 {
            bytes[..4].copy_from_slice(&u32::try_from(len - HEADER_LEN).unwrap_or(0).to_be_bytes());
            bytes[4] = 1 + rng.byte() % 13;
            bytes[5..8].fill(0);
        }
        let _ = decode_all(&bytes);
    }
}

#[test]
fn truncate_utf8_keeps_char_boundaries() {
    assert_eq!(truncate_utf8("héllo", 2), "h");
    assert_eq!(truncate_utf8("héllo", 3), "hé");
    assert_eq!(truncate_utf8("abc", 10), "abc");
}
