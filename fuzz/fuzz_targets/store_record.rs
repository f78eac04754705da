//! The store's record codec on arbitrary bytes (what a damaged or hostile database row would
//! hold): decoding gives a record or an error, never a panic, and whatever decodes re-encodes
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    firmware_sim::fuzzing::store_record(data);
});
