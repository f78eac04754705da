//! A count in a frame reserves no more than the frame can fill (issue 25, class 4: bounded
//! frame allocation). A `CKA_*` template's count is checked against the frame at one byte an
//! item; reserving that many `Attribute`s (40 bytes each) would let one 16 MiB frame reserve
//! over half a gigabyte before its first item decodes. Measured as the growth of the process's
//! peak virtual memory (`VmPeak`), in a test binary of its own so that nothing else runs
//! meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bridge::Request;
use bridge::remote::MAX_FRAME;
use bridge::remote::wire::Writer;
use cryptoki_sys::CKA_LABEL;

/// This process's peak virtual memory, in KiB.
fn vm_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmPeak in /proc/self/status")
}

#[test]
fn a_frame_full_of_count_reserves_no_more_than_it_holds() {
    // C_CreateObject (tag 20) on session 1, a template announcing one attribute per byte of
    // the rest of the frame; the first attribute's value tag (9) is malformed.
    let mut w = Writer::new();
    w.u8(20);
    w.u64(1);
    let header = 1 + 8 + 4;
    let n = MAX_FRAME - header;
    w.u32(u32::try_from(n).unwrap());
    w.u64(CKA_LABEL);
    w.u8(9);
    let mut frame = w.into_bytes();
    frame.resize(MAX_FRAME, 0);
    let before = vm_peak_kib();
    assert!(
        Request::decode(&frame).is_err(),
        "the malformed frame decoded"
    );
    let grew_mib = (vm_peak_kib() - before) / 1024;
    assert!(
        grew_mib < 64,
        "decoding one {} MiB frame raised the peak virtual memory by {grew_mib} MiB",
        MAX_FRAME >> 20
    );
}
