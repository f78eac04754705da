//! The reference model of protection (issue 16), driven by the fuzzer: the input is a
//! sequence of attacker operations (generate, create, derive, wrap, unwrap, forge, copy,
//! set-attribute, encrypt/decrypt/sign, digest-key; one byte for the personality, then 32
//! bytes per operation), run in lockstep against two simulated devices whose keys have
//! independent values. After every step the invariants of the model hold (nothing that depends
//! on a sensitive, never-extractable key is readable, extractable, public, short or wrapped out;
//! usage, allowed mechanisms and always-authenticate refuse with the predicted code before any
//! work; no answer depends on secret bytes). The model is the property test's
//! (`firmware-sim/tests/protection_model/harness.rs`); a failure panics with the steps that led
//! to it, and `FERROHSM_MODEL_REPLAY=<hex of the input>` replays it there.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../firmware-sim/tests/protection_model/harness.rs"]
mod harness;

/// Operations per input at most: a run stays well under a second.
const MAX_OPS: usize = 32;

fn benches() -> &'static [harness::Bench; 2] {
    static BENCHES: OnceLock<[harness::Bench; 2]> = OnceLock::new();
    // RSA pairs are created from one generated pair: RSA key generation under coverage
    // instrumentation would take most of the time (the property test generates them).
    BENCHES.get_or_init(|| {
        [
            harness::Bench::without_rsa_keygen(false),
            harness::Bench::without_rsa_keygen(true),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let (strict, mut ops) = harness::decode_input(data);
    ops.truncate(MAX_OPS);
    if let Err(e) = harness::run(&benches()[usize::from(strict)], &ops) {
        panic!("the protection model fails: {e}");
    }
});
