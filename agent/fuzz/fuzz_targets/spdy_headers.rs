//! Any compressed header blocks: the decoder keeps its zlib state across
//! blocks as a session does, and only ever returns headers or an error.
#![no_main]

use crius::streaming::spdy::headers::HeaderDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = HeaderDecoder::default();
    for block in data.split(|b| *b == 0xff) {
        let _ = decoder.decode(block);
    }
});
