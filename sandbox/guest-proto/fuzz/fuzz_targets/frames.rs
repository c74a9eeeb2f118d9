//! Any bytes from the guest, cut anywhere: the decoder returns frames or an
//! error, never panics, takes only the bytes of one frame at a time, and
//! every frame it returns encodes back to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use guest_proto::codec::{Decoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the chunk sizes, the rest is the stream.
    let (sizes, stream) = data.split_at(data.len().min(8));
    let mut decoder = Decoder::new();
    let mut rest = stream;
    let mut consumed = 0usize;
    let mut i = 0;
    while !rest.is_empty() {
        let size = usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(255)) * 97 + 1;
        i += 1;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        let mut input = chunk;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    frame.encode(&mut out).expect("a decoded frame encodes");
                    assert_eq!(out.len(), frame.encoded_len());
                    assert!(out.len() >= HEADER_LEN);
                    // The frame's bytes end where the decoder stopped taking input.
                    let end = consumed + (chunk.len() - input.len());
                    assert_eq!(&stream[end - out.len()..end], &out[..], "re-encoding differs");
                }
                Ok(None) => {
                    assert!(input.is_empty(), "decoder stopped with input left");
                    break;
                }
                Err(_) => {
                    assert!(decoder.decode(&mut input).is_err(), "decoder recovered after an error");
                    return;
                }
            }
        }
        consumed += chunk.len();
    }
    let _ = decoder.finish();
});
