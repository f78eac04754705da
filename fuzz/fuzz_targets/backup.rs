//! The backup file's header parser and payload decoder on arbitrary bytes (the payload is
//! only decoded after AES-GCM authentication, so this is defence in depth): a value or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    firmware_sim::fuzzing::backup(data);
});
