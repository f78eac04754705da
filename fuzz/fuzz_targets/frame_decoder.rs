//! The remote protocol's decoders on arbitrary bytes: a frame reader, the hello, requests and
//! responses. Any input must give a value or an error, never a panic; a decoded value must
//! re-encode to the same bytes.
#![no_main]

use bridge::remote::proto::{
    Hello, Request, Welcome, decode_response, encode_response, read_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        let _ = Request::decode(&frame);
    }
    if let Ok(req) = Request::decode(data) {
        assert_eq!(req.encode(), data);
    }
    if let Ok(resp) = decode_response(data) {
        // Errors carry only their CK_RV, so only successful replies re-encode byte for byte.
        if resp.is_ok() {
            assert_eq!(encode_response(&resp), data);
        }
    }
    let _ = Hello::decode(data);
    let _ = Welcome::decode(data);
});
