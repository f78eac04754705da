//! The request dispatcher: arbitrary frames, one after another, decoded and run against the
//! simulated firmware with a token, as the daemon runs a connection's requests. No input may
//! panic the server.
#![no_main]

use std::sync::{Arc, OnceLock};

use bridge::Backend;
use bridge::config::FirmwareConfig;
use bridge::remote::respond;
use firmware_sim::Device;
use libfuzzer_sys::fuzz_target;

fn device() -> &'static (tempfile::TempDir, Arc<dyn Backend>) {
    static DEVICE: OnceLock<(tempfile::TempDir, Arc<dyn Backend>)> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let home = tempfile::tempdir().expect("temporary home");
        let config = FirmwareConfig {
            pin_kdf_iterations: 1,
            ..FirmwareConfig::default()
        };
        let device = Device::open_home(home.path(), &config).expect("device");
        let mut label = [b' '; 32];
        label[..4].copy_from_slice(b"fuzz");
        let _ = device.init_token(bridge::SlotId(0), b"12345678", &label);
        (home, Arc::new(device))
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, backend) = device();
    // The input is a sequence of frames: u16 length, then that many bytes.
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let frame = &rest[..n.min(rest.len())];
        rest = &rest[frame.len()..];
        let _ = respond(backend.as_ref(), frame);
    }
});
