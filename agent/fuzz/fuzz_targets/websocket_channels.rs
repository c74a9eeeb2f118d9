//! Any WebSocket message payloads: channel routing and the resize decoder
//! (which buffers partial JSON across messages) never panic, and the buffer
//! never grows past what was fed.
#![no_main]

use crius::streaming::remotecommand::parse_sizes;
use crius::streaming::websocket::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pending = Vec::new();
    for message in data.split(|b| *b == b'\n') {
        for version in [4, 5] {
            let _ = classify(message, version);
        }
        pending.extend_from_slice(message);
        let _ = parse_sizes(&mut pending);
        assert!(pending.len() <= data.len());
    }
});
