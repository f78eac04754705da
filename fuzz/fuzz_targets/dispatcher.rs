//! The request dispatcher: arbitrary frames, one after another, decoded and run against the
//! simulated firmware with a token (a user logged in, a few keys present), as the daemon runs
//! a connection's requests. No input may panic the server.
#![no_main]

use bridge::Backend;
use bridge::remote::respond;
use libfuzzer_sys::fuzz_target;

include!("../common/device.rs");

fuzz_target!(|data: &[u8]| {
    let backend: &dyn Backend = &fixture().device;
    // The input is a sequence of frames: u16 length, then that many bytes.
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let frame = &rest[..n.min(rest.len())];
        rest = &rest[frame.len()..];
        let _ = respond(backend, frame);
    }
});
