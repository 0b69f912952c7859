//! Fuzzes the frame decoder of knapsec-net: arbitrary bytes, cut into arbitrary pieces, with
//! an arbitrary maximum. The decoder must never panic, never emit a frame above the maximum,
//! never emit a goodbye with a payload, and after an error must refuse everything.
#![no_main]

use knapsec_net::frame::{FrameDecoder, FrameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = u16::from_le_bytes([data[0], data[1]]) as usize;
    let step = (data[2] as usize).max(1);
    let mut dec = FrameDecoder::new(max);
    let mut failed = false;
    for piece in data[3..].chunks(step) {
        let r = dec.feed(piece, |f| {
            assert!(f.payload.len() <= max);
            assert!(f.kind != FrameKind::Goodbye || f.payload.is_empty());
        });
        if failed {
            assert!(r.is_err(), "a decoder that failed must stay failed");
        }
        failed |= r.is_err();
    }
});
