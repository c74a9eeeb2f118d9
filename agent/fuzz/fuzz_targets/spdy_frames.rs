//! Any bytes from a client: the SPDY frame decoder returns frames or an
//! error, never panics, and never loops without consuming input.
#![no_main]

use bytes::BytesMut;
use crius::streaming::spdy::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fed in two pieces, as reads from a socket arrive.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut buf = BytesMut::new();
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf) {
                Ok(Some(f)) => {
                    let mut out = BytesMut::new();
                    frame::encode(&f, &mut out);
                    assert!(buf.len() < before, "a frame consumed no input");
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
