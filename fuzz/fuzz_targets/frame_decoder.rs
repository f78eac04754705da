//! The remote protocol's decoders on arbitrary bytes: a frame reader, the hello, requests and
//! responses (PKCS#11 and daemon ones). Any input must give a value or an error, never a
//! panic; a decoded value must re-encode to the same bytes. The frame reader must read the
//! same frames whether the bytes come all at once or in pieces (the first byte picks the
//! piece size), and must never ask its input for more than one chunk at a time, whatever a
//! header announces.
#![no_main]

use std::io::Read;

use bridge::Request;
use bridge::remote::proto::{
    DaemonRequest, Hello, READ_CHUNK, Welcome, decode_daemon_response, decode_response,
    encode_daemon_response, encode_response, read_frame,
};
use libfuzzer_sys::fuzz_target;

/// Hands out the input at most `step` bytes per read and records the largest read asked for.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
    largest_ask: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest_ask = self.largest_ask.max(buf.len());
        let n = buf.len().min(self.step).min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf.get_mut(..n)
            .ok_or(std::io::ErrorKind::InvalidInput)?
            .copy_from_slice(now);
        self.data = later;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut whole = data;
    let mut frames = Vec::new();
    let whole_end = loop {
        match read_frame(&mut whole) {
            Ok(Some(frame)) => {
                let _ = Request::decode(&frame);
                frames.push(frame);
            }
            Ok(None) => break None,
            Err(e) => break Some(e.kind()),
        }
    };
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut pieces = Pieces {
        data,
        step,
        largest_ask: 0,
    };
    for frame in &frames {
        assert_eq!(read_frame(&mut pieces).ok().flatten().as_ref(), Some(frame));
    }
    assert_eq!(read_frame(&mut pieces).err().map(|e| e.kind()), whole_end);
    assert!(pieces.largest_ask <= READ_CHUNK);
    if let Ok(req) = Request::decode(data) {
        assert_eq!(req.encode(), data);
    }
    if let Ok(resp) = decode_response(data) {
        // Errors carry only their CK_RV, so only successful replies re-encode byte for byte.
        if resp.is_ok() {
            assert_eq!(encode_response(&resp), data);
        }
    }
    if let Ok(req) = DaemonRequest::decode(data) {
        assert_eq!(req.encode(), data);
    }
    if let Ok(resp) = decode_daemon_response(data) {
        if resp.is_ok() {
            assert_eq!(encode_daemon_response(&resp), data);
        }
    }
    let _ = Hello::decode(data);
    let _ = Welcome::decode(data);
});
