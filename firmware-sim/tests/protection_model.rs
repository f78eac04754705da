//! A reference model of protection (issue 16): random sequences of create, generate,
//! derive, wrap, unwrap, copy, set-attribute, encrypt/decrypt/sign and digest-key calls, as an
//! attacker with the user PIN would make them, asserting that no sequence ever makes a value
//! derived from a sensitive key readable, or a key usable outside its usage attributes, and
//! that no answer depends on the bytes of a key the caller may not read. The model and its
//! invariants (a)–(f) are described at the top of `protection_model/harness.rs`, which the
//! fuzz target `fuzz/fuzz_targets/protection.rs` shares.
//!
//! Each case runs one sequence against two devices in lockstep (their keys have independent
//! random values) under the default or the strict personality, with session objects only.
//! The sequence and the choices in it come from a fixed seed, so CI runs the same cases every
//! time; a failure is shrunk to a minimal sequence, printed as operations and as a hex input
//! that `FERROHSM_MODEL_REPLAY` (or the fuzz target) runs again.
//!
//! Environment (all optional):
//! - `FERROHSM_MODEL_CASES`: sequences to run (default 64; a long local run: 5000 or more);
//! - `FERROHSM_MODEL_STEPS`: the longest sequence (default 32 operations);
//! - `FERROHSM_MODEL_SEED`: the seed of the sequences (default 16);
//! - `FERROHSM_MODEL_REPLAY`: a hex input (as printed on a failure) to run alone;
//! - `FERROHSM_MODEL_LOG`: print every sequence's steps and answers (with `--no-capture`);
//!
//! In release mode the default run takes a few seconds:
//! `cargo nextest run --release -p ferrohsm-firmware --test protection_model`; a long run:
//! `FERROHSM_MODEL_CASES=5000 FERROHSM_MODEL_STEPS=40 cargo nextest run --release -p
//! ferrohsm-firmware --test protection_model --no-capture`.

// clippy.toml exempts `#[test]` functions only; the helpers here panic on purpose too. The
// summary of a run goes to stderr.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

#[path = "protection_model/harness.rs"]
mod harness;

use bridge::{
    AttrAnswer, Attribute, BackendExt, Error, Mechanism, MechanismParams, SlotId, Template,
};
use cryptoki_sys::*;
use harness::{
    ANY, Bench, Change, DeriveMech, KeySpec, NewKey, NewKind, OP_BYTES, Op, PairKind, Pins, Prot,
    Salt, SecretKind, Stats, Usage, WrapMech,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestError, TestRunner};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// The hex digits of `s` (anything else is skipped) as bytes.
fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    base16ct::mixed::decode_vec(s).unwrap()
}

/// The input of one case, in the fuzz target's format.
fn input(strict: bool, chunks: &[[u8; OP_BYTES]]) -> Vec<u8> {
    let mut v = vec![u8::from(strict)];
    for c in chunks {
        v.extend_from_slice(c);
    }
    v
}

#[test]
fn no_sequence_breaks_protection() {
    let benches = [Bench::new(false), Bench::new(true)];
    if let Ok(replay) = std::env::var("FERROHSM_MODEL_REPLAY") {
        let (strict, ops) = harness::decode_input(&unhex(&replay));
        eprintln!("replaying {} operations, strict={strict}:", ops.len());
        for o in &ops {
            eprintln!("    {o:?}");
        }
        if let Err(e) = harness::run(&benches[usize::from(strict)], &ops) {
            panic!("{e}");
        }
        return;
    }
    let cases = u32::try_from(env_u64("FERROHSM_MODEL_CASES", 64)).unwrap();
    let steps = usize::try_from(env_u64("FERROHSM_MODEL_STEPS", 32)).unwrap();
    let seed = env_u64("FERROHSM_MODEL_SEED", 16);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4096,
        // A failing run spends at most a minute shrinking.
        max_shrink_time: 60_000,
        ..Config::default()
    });
    let total = std::cell::RefCell::new(Stats::default());
    let strategy = (
        any::<bool>(),
        vec(
            proptest::array::uniform32(any::<u8>()),
            steps.clamp(1, 8)..=steps.max(1),
        ),
    );
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |(strict, chunks)| {
        let ops = harness::decode_ops(chunks.iter().map(|c| &c[..]));
        let stats =
            harness::run(&benches[usize::from(strict)], &ops).map_err(TestCaseError::fail)?;
        total.borrow_mut().add(&stats);
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (strict, chunks))) => {
            let ops = harness::decode_ops(chunks.iter().map(|c| &c[..]));
            let listing: String = ops.iter().map(|o| format!("    {o:?},\n")).collect();
            panic!(
                "the protection model fails (seed {seed}).\nminimal sequence (strict={strict}):\n\
                 {listing}replay: FERROHSM_MODEL_REPLAY={}\n{reason}",
                hex(&input(strict, &chunks))
            );
        }
        Err(e) => panic!("{e}"),
    }
    let total = *total.borrow();
    eprintln!(
        "protection model: {cases} cases, seed {seed}, in {:.1?}: {total:?}",
        started.elapsed()
    );
    // The model must reach the states it is about, or it proves nothing.
    if cases >= 32 {
        for (what, n) in [
            ("victims", total.victims),
            ("objects depending on victims", total.dependent),
            ("derivations", total.derived),
            ("wraps", total.wrapped),
            ("unwraps", total.unwrapped),
            ("refusals", total.refusals),
            ("refused unwraps", total.unwrap_refusals),
        ] {
            assert!(n > 0, "the run made no {what}: {total:?}");
        }
    }
}

/// The fuzz target's bench (RSA pairs created from one generated pair) runs the model too.
#[test]
fn the_fuzz_targets_bench_holds_the_model() {
    let benches = [
        Bench::without_rsa_keygen(false),
        Bench::without_rsa_keygen(true),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(61),
        ..Config::default()
    });
    let strategy = (
        any::<bool>(),
        vec(proptest::array::uniform32(any::<u8>()), 8..=24),
    );
    runner
        .run(&strategy, |(strict, chunks)| {
            let ops = harness::decode_ops(chunks.iter().map(|c| &c[..]));
            harness::run(&benches[usize::from(strict)], &ops).map_err(TestCaseError::fail)?;
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_model_drives_every_wrap_unwrap_and_derive_mechanism() {
    let bench = Bench::new(false);
    harness::check_coverage(&bench.worlds[0].dev).unwrap();
}

// ---- deterministic sequences --------------------------------------------------------------

fn usage(pairs: &[(usize, bool)]) -> Usage {
    let mut u = Usage::default();
    for (i, v) in pairs {
        u.0[*i] = Some(*v);
    }
    u
}

const DECRYPT: usize = 1;
const SIGN: usize = 2;
const WRAP: usize = 4;
const UNWRAP: usize = 5;
const DERIVE: usize = 6;

fn victim_spec(usage: Usage) -> KeySpec {
    KeySpec {
        prot: Prot {
            sensitive: Some(true),
            extractable: Some(false),
            private: None,
        },
        usage,
        ..KeySpec::default()
    }
}

fn known_spec(usage: Usage) -> KeySpec {
    KeySpec {
        prot: Prot {
            sensitive: Some(false),
            extractable: Some(true),
            private: None,
        },
        usage,
        ..KeySpec::default()
    }
}

fn readable(kind: Option<NewKind>, value_len: Option<u8>) -> NewKey {
    NewKey {
        kind,
        prot: Prot {
            sensitive: Some(false),
            extractable: Some(true),
            private: None,
        },
        usage: usage(&[(SIGN, true), (DERIVE, true)]),
        value_len,
    }
}

fn hkdf(data: bool, salt: Salt) -> DeriveMech {
    DeriveMech::Hkdf {
        data,
        extract: true,
        expand: true,
        prf: 1,
        salt,
        info_len: 4,
    }
}

/// `CKM_HKDF_DERIVE` that only expands (the base key is the PRK), no salt, no info.
fn hkdf_expand_only() -> Mechanism {
    Mechanism::with(
        CKM_HKDF_DERIVE,
        MechanismParams::Hkdf {
            extract: false,
            expand: true,
            prf_hash: CKM_SHA256,
            salt_type: CKF_HKDF_SALT_NULL,
            salt: Vec::new(),
            salt_key: 0,
            info: Vec::new(),
        },
    )
}

fn run_ok(strict: bool, ops: &[Op]) -> Stats {
    let bench = Bench::new(strict);
    match harness::run(&bench, ops) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The classes of issue 16 the model is about, as fixed sequences: truncated HKDF outputs of a
/// victim, a victim lent as an HKDF salt key, copies to public, a key without CKA_UNWRAP used
/// to unwrap (valid, damaged and random ciphertexts), wraps of derived keys.
#[test]
fn the_attacks_of_issue_16_are_refused_in_sequence() {
    for strict in [false, true] {
        let ops = [
            // 0: a victim generic secret that may derive; 1: a known HKDF key.
            Op::Generate {
                kind: SecretKind::Generic,
                len: 31,
                spec: victim_spec(usage(&[(DERIVE, true)])),
            },
            Op::Create {
                kind: SecretKind::Hkdf,
                len: 31,
                fill: 7,
                spec: known_spec(usage(&[(DERIVE, true)])),
            },
            // Truncated outputs of the victim: readable (refused), then short and protected
            // (refused), then a 32-byte protected one (made).
            Op::Derive {
                mech: hkdf(false, Salt::Null),
                base: 0,
                new: readable(None, Some(1)),
            },
            Op::Derive {
                mech: hkdf(false, Salt::Null),
                base: 0,
                new: NewKey {
                    prot: Prot::default(),
                    ..readable(None, Some(1))
                },
            },
            Op::Derive {
                mech: hkdf(false, Salt::Null),
                base: 0,
                new: NewKey {
                    prot: Prot::default(),
                    ..readable(None, Some(32))
                },
            },
            // The victim as the salt key of a known base key: readable output, data object.
            Op::Derive {
                mech: hkdf(false, Salt::Key(0)),
                base: 1,
                new: readable(None, Some(32)),
            },
            Op::Derive {
                mech: hkdf(true, Salt::Key(0)),
                base: 1,
                new: readable(None, Some(32)),
            },
            // Copies of the victim to public, and to readable.
            Op::Copy {
                obj: ANY,
                change: Change {
                    prot: Prot {
                        private: Some(false),
                        ..Prot::default()
                    },
                    usage: Usage::default(),
                },
            },
            Op::Copy {
                obj: ANY,
                change: Change {
                    prot: Prot {
                        sensitive: Some(false),
                        extractable: Some(true),
                        private: None,
                    },
                    usage: Usage::default(),
                },
            },
            // A known AES key that may neither unwrap nor decrypt: a blob made under it, and
            // unwraps of it, damaged or not (refused alike).
            Op::Create {
                kind: SecretKind::Aes,
                len: 0,
                fill: 1,
                spec: known_spec(usage(&[(UNWRAP, false), (DECRYPT, false), (WRAP, true)])),
            },
            Op::Forge {
                mech: WrapMech::AesCbcPad,
                key: 0,
                len: 20,
                fill: 5,
            },
            Op::Unwrap {
                mech: WrapMech::AesCbcPad,
                unwrapper: 0,
                blob: 0,
                tamper: false,
                aim: 0,
                new: readable(Some(NewKind::Secret(SecretKind::Generic)), None),
            },
            Op::Unwrap {
                mech: WrapMech::AesCbcPad,
                unwrapper: 0,
                blob: 0,
                tamper: true,
                aim: 0,
                new: readable(Some(NewKind::Secret(SecretKind::Generic)), None),
            },
            // Wraps of the victim-derived key under the known AES key.
            Op::Wrap {
                mech: WrapMech::AesKwp,
                wrapper: 0,
                target: ANY + 2,
            },
        ];
        let st = run_ok(strict, &ops);
        assert_eq!(st.victims, 1, "{st:?}");
        assert!(st.dependent >= 1, "{st:?}");
        assert!(st.unwrap_refusals >= 2, "{st:?}");
    }
}

/// ECDH, the specification's exception: from a victim EC key, a template that asks for a
/// readable output gets one (the shared secret is the peer's as much as ours: readable by
/// design, and the model counts it as depending on no victim). Under the strict personality
/// the output is sensitive whatever the template says, and a base key whose
/// `CKA_DERIVE_TEMPLATE` pins `CKA_SENSITIVE=TRUE, CKA_EXTRACTABLE=FALSE` refuses a template
/// asking for less; what it makes depends on the victim and stays protected (the model's
/// invariants (a)–(d) hold for it).
#[test]
fn ecdh_lets_the_template_choose_unless_the_device_must_protect() {
    let ecdh = |peer| DeriveMech::Ecdh {
        cofactor: false,
        kdf: 0,
        shared_len: 0,
        peer,
    };
    let pinned = Pins {
        sensitive: Some(true),
        extractable: Some(false),
    };
    for (strict, derive_template) in [(false, None), (true, None), (false, Some(pinned))] {
        let bench = Bench::new(strict);
        let ops = [
            Op::GeneratePair {
                kind: PairKind::Ec,
                spec: KeySpec {
                    derive_template,
                    ..victim_spec(usage(&[(DERIVE, true)]))
                },
            },
            Op::GeneratePair {
                kind: PairKind::Ec,
                spec: known_spec(usage(&[(DERIVE, true)])),
            },
            // The victim with the other pair's public point; CKD_NULL, the whole secret.
            Op::Derive {
                mech: ecdh(1),
                base: 0,
                new: readable(None, Some(32)),
            },
            Op::Derive {
                mech: ecdh(1),
                base: 0,
                new: NewKey {
                    prot: Prot::default(),
                    ..readable(None, Some(32))
                },
            },
        ];
        let stats = harness::run(&bench, &ops).unwrap_or_else(|e| panic!("{e}"));
        if strict || derive_template.is_some() {
            assert_eq!(stats.ecdh_free, 0, "strict={strict}: {stats:?}");
        } else {
            assert!(stats.ecdh_free > 0, "{stats:?}");
        }

        // The same, by hand, for the exact codes.
        let d = &bench.worlds[0].dev;
        let s = d
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .unwrap();
        let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let mut private = Template::new()
            .with(Attribute::bool(CKA_TOKEN, false))
            .with(Attribute::bool(CKA_DERIVE, true))
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_EXTRACTABLE, false));
        if derive_template.is_some() {
            private.0.push(Attribute::template(
                CKA_DERIVE_TEMPLATE,
                Template::new()
                    .with(Attribute::bool(CKA_SENSITIVE, true))
                    .with(Attribute::bool(CKA_EXTRACTABLE, false)),
            ));
        }
        let (pubk, privk) = d
            .generate_key_pair(
                s,
                &Mechanism::new(CKM_EC_KEY_PAIR_GEN),
                &Template::new()
                    .with(Attribute::bool(CKA_TOKEN, false))
                    .with(Attribute::bytes(CKA_EC_PARAMS, p256)),
                &private,
            )
            .unwrap();
        let point = d.get_attribute_value(s, pubk, &[CKA_EC_POINT]).unwrap();
        let AttrAnswer::Value(bridge::AttrValue::Bytes(point)) = &point[0] else {
            panic!("{point:?}")
        };
        let m = Mechanism::with(
            CKM_ECDH1_DERIVE,
            MechanismParams::Ecdh1Derive {
                kdf: CKD_NULL,
                shared_data: Vec::new(),
                public_data: point.clone(),
            },
        );
        let free_template = Template::new()
            .with(Attribute::bool(CKA_TOKEN, false))
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
            .with(Attribute::ulong(CKA_VALUE_LEN, 32))
            .with(Attribute::bool(CKA_SENSITIVE, false))
            .with(Attribute::bool(CKA_EXTRACTABLE, true));
        let r = d.derive_key(s, &m, privk, &free_template);
        match (strict, derive_template.is_some()) {
            (false, false) => {
                let h = r.unwrap();
                let v = d.get_attribute_value(s, h, &[CKA_VALUE]).unwrap();
                assert!(matches!(v[0], AttrAnswer::Value(_)), "readable by design");
            }
            (false, true) => assert_eq!(r, Err(Error::TemplateInconsistent)),
            (true, _) => {
                // Strict: refused, or made sensitive whatever the template asked.
                if let Ok(h) = r {
                    let v = d
                        .get_attribute_value(s, h, &[CKA_VALUE, CKA_SENSITIVE])
                        .unwrap();
                    assert_eq!(v[0], AttrAnswer::Sensitive);
                }
            }
        }
        d.close_session(s).unwrap();
    }
}

// ---- defects found by the model -----------------------------------------------------------

/// A protected key is always private (issue 16): `CKA_PRIVATE=FALSE` for a key that is (or
/// becomes) sensitive or not extractable is `CKR_TEMPLATE_INCONSISTENT` on every path that
/// makes or changes a key — create, generate, a pair, unwrap, derive, copy and set-attribute
/// (a public key made sensitive) — and nothing is made. Keys that are not protected may still
/// be public.
#[test]
fn public_protected_keys_are_refused_on_every_path() {
    for strict in [false, true] {
        let bench = Bench::new(strict);
        let d = &bench.worlds[0].dev;
        let s = d
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .unwrap();
        let count = || {
            d.find_objects_init(s, &Template::new()).unwrap();
            let n = d.find_objects(s, 1000).unwrap().len();
            d.find_objects_final(s).unwrap();
            n
        };
        let before = count();
        let public = |attrs: &[Attribute]| {
            let mut t = Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_PRIVATE, false));
            t.0.extend(attrs.iter().cloned());
            t
        };
        let aes = |value: u8| {
            [
                Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attribute::ulong(CKA_KEY_TYPE, CKK_AES),
                Attribute::bytes(CKA_VALUE, vec![value; 32]),
            ]
        };
        let sensitive = Attribute::bool(CKA_SENSITIVE, true);
        let unextractable = Attribute::bool(CKA_EXTRACTABLE, false);
        for p in [&sensitive, &unextractable] {
            let mut t = public(&aes(7));
            t.0.push(p.clone());
            assert_eq!(
                d.create_object(s, &t),
                Err(Error::TemplateInconsistent),
                "create, {p:?}"
            );
            let mut t = public(&[Attribute::ulong(CKA_VALUE_LEN, 32), p.clone()]);
            assert_eq!(
                d.generate_key(s, &Mechanism::new(CKM_AES_KEY_GEN), &t),
                Err(Error::TemplateInconsistent),
                "generate, {p:?}"
            );
            t.0.retain(|a| a.ty != CKA_VALUE_LEN);
            t.0.push(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY));
            let pub_t = Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bytes(CKA_EC_PARAMS, harness::P256.to_vec()));
            assert_eq!(
                d.generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &pub_t, &t),
                Err(Error::TemplateInconsistent),
                "pair, {p:?}"
            );
        }
        // Generated keys are not extractable by default: a public one asks for nothing else.
        assert_eq!(
            d.generate_key(
                s,
                &Mechanism::new(CKM_AES_KEY_GEN),
                &public(&[Attribute::ulong(CKA_VALUE_LEN, 32)])
            ),
            Err(Error::TemplateInconsistent),
            "generate, defaults"
        );
        // Unwrap and derive, from an unprotected input into a public sensitive key.
        let mut kek_t = public(&aes(9));
        kek_t.0.extend([
            Attribute::bool(CKA_SENSITIVE, false),
            Attribute::bool(CKA_EXTRACTABLE, true),
            Attribute::bool(CKA_WRAP, true),
            Attribute::bool(CKA_UNWRAP, true),
            Attribute::bool(CKA_DECRYPT, true),
            Attribute::bool(CKA_DERIVE, true),
        ]);
        let kek = d.create_object(s, &kek_t);
        if strict {
            // The strict personality makes every key sensitive: none is public.
            assert_eq!(
                kek,
                Err(Error::TemplateInconsistent),
                "strict: a public key is sensitive"
            );
            assert_eq!(count(), before, "strict: nothing made");
            continue;
        }
        let kek = kek.unwrap();
        let mut target_t = public(&aes(5));
        target_t.0.extend([
            Attribute::bool(CKA_SENSITIVE, false),
            Attribute::bool(CKA_EXTRACTABLE, true),
        ]);
        let target = d.create_object(s, &target_t).unwrap();
        let wrap = Mechanism::new(CKM_AES_KEY_WRAP);
        let mut blob = vec![0; 64];
        let n = d.wrap_key(s, &wrap, kek, target, Some(&mut blob)).unwrap();
        blob.truncate(n);
        let into = public(&[
            Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attribute::ulong(CKA_KEY_TYPE, CKK_AES),
            sensitive.clone(),
        ]);
        assert_eq!(
            d.unwrap_key(s, &wrap, kek, &blob, &into),
            Err(Error::TemplateInconsistent),
            "unwrap"
        );
        let base = d
            .create_object(
                s,
                &public(&[
                    Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
                    Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                    Attribute::bytes(CKA_VALUE, vec![4; 32]),
                    Attribute::bool(CKA_SENSITIVE, false),
                    Attribute::bool(CKA_EXTRACTABLE, true),
                    Attribute::bool(CKA_DERIVE, true),
                ]),
            )
            .unwrap();
        let derive = hkdf_expand_only();
        let derived = public(&[
            Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
            Attribute::ulong(CKA_VALUE_LEN, 32),
            sensitive.clone(),
        ]);
        assert_eq!(
            d.derive_key(s, &derive, base, &derived),
            Err(Error::TemplateInconsistent),
            "derive"
        );
        // Copy and set-attribute: a public key made protected, a private one made public.
        for change in [&sensitive, &unextractable] {
            let t = Template::new().with(change.clone());
            assert_eq!(
                d.copy_object(s, target, &t),
                Err(Error::TemplateInconsistent),
                "copy, {change:?}"
            );
            assert_eq!(
                d.set_attribute_value(s, target, &t),
                Err(Error::TemplateInconsistent),
                "set, {change:?}"
            );
        }
        let mut private_t = aes(3).to_vec();
        private_t.extend([
            Attribute::bool(CKA_TOKEN, false),
            Attribute::bool(CKA_PRIVATE, true),
            sensitive.clone(),
        ]);
        let private = d.create_object(s, &Template(private_t)).unwrap();
        let to_public = Template::new().with(Attribute::bool(CKA_PRIVATE, false));
        assert_eq!(
            d.copy_object(s, private, &to_public),
            Err(Error::TemplateInconsistent),
            "copy public"
        );
        // CKA_PRIVATE changes only by a copy.
        assert_eq!(
            d.set_attribute_value(s, private, &to_public),
            Err(Error::AttributeReadOnly),
            "set public"
        );
        assert_eq!(
            count(),
            before + 4,
            "only the four legitimate keys were made"
        );
        // A public unprotected key keeps its other attributes changeable.
        d.set_attribute_value(
            s,
            target,
            &Template::new().with(Attribute::bytes(CKA_LABEL, b"t".to_vec())),
        )
        .unwrap();
        d.close_session(s).unwrap();
    }
}

/// A protected key unwrapped under a protected key may be as short as the ciphertext: the
/// derivation rule (`MIN_DERIVED_LEN`, 16 bytes) has no counterpart for unwrap, and
/// `CKM_AES_CTR` unwraps any length. So a 16-byte key `K`, wrapped with AES-CTR under a KEK
/// that may unwrap and wrap but neither encrypt nor decrypt (its default unwrap template keeps
/// what it unwraps sensitive and unextractable), is recovered byte by byte by anyone with the
/// user PIN and the blob: unwrap the blob's first `i+1` bytes into a sensitive generic secret
/// that may sign (it is `K[..=i]`), `C_Sign(CKM_SHA256_HMAC)` with it, and compare with the
/// HMACs under the 256 candidates for byte `i`: 16 × 256 HMACs, no decryption allowed. The
/// same walk over an attacker-chosen ciphertext gives the CTR keystream, an AES encryption
/// oracle under the KEK (GHASH key, GCM and CTR decryption of anything wrapped under it).
/// The test decides by comparing what the attacker recovered with `K`.
#[test]
fn short_unwraps_do_not_reveal_a_wrapped_key_byte_by_byte() {
    use hmac::{Hmac, Mac};
    let bench = Bench::new(false);
    let d = &bench.worlds[0].dev;
    let s = d
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let kek = d
        .generate_key(
            s,
            &Mechanism::new(CKM_AES_KEY_GEN),
            &Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::ulong(CKA_VALUE_LEN, 16))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, false))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bool(CKA_UNWRAP, true))
                .with(Attribute::bool(CKA_ENCRYPT, false))
                .with(Attribute::bool(CKA_DECRYPT, false)),
        )
        .unwrap();
    // The wrapped key: its owner exports it under the KEK.
    let k: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let target = d
        .create_object(
            s,
            &Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                .with(Attribute::bytes(CKA_VALUE, k.clone()))
                .with(Attribute::bool(CKA_EXTRACTABLE, true)),
        )
        .unwrap();
    let ctr = Mechanism::with(
        CKM_AES_CTR,
        MechanismParams::AesCtr {
            counter_bits: 128,
            cb: [0; 16],
        },
    );
    let mut blob = vec![0u8; 64];
    let n = d.wrap_key(s, &ctr, kek, target, Some(&mut blob)).unwrap();
    blob.truncate(n);
    // The attacker: prefixes of the blob, each unwrapped into a short key that may sign.
    let short_key = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bool(CKA_SIGN, true));
    let mut recovered = Vec::new();
    let mut refusal = None;
    for i in 0..n {
        let h = match d.unwrap_key(s, &ctr, kek, &blob[..=i], &short_key) {
            Ok(h) => h,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        };
        d.sign_init(s, &Mechanism::new(CKM_SHA256_HMAC), h).unwrap();
        let mut mac = [0u8; 32];
        d.sign(s, b"oracle", Some(&mut mac)).unwrap();
        let byte = (0..=255u8).find(|b| {
            let mut guess = recovered.clone();
            guess.push(*b);
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(&guess).unwrap();
            m.update(b"oracle");
            m.finalize().into_bytes().as_slice() == mac
        });
        recovered.push(byte.unwrap());
        d.destroy_object(s, h).unwrap();
    }
    assert_ne!(recovered, k, "the wrapped key was recovered byte by byte");
    // Refused (the derivation rule answers CKR_KEY_SIZE_RANGE), whatever the code.
    assert!(refusal.is_some(), "no short unwrap was refused");
}

/// The same defect through the model: the sequence the property test reduces it to.
#[test]
fn the_model_finds_short_unwrapped_keys_without_tolerance() {
    let ops = [
        Op::Generate {
            kind: SecretKind::Aes,
            len: 0,
            spec: victim_spec(usage(&[(UNWRAP, true), (DECRYPT, false), (0, false)])),
        },
        Op::Create {
            kind: SecretKind::Aes,
            len: 0,
            fill: 0,
            spec: known_spec(usage(&[(WRAP, true)])),
        },
        Op::Forge {
            mech: WrapMech::AesCtr,
            key: 1,
            len: 0,
            fill: 0,
        },
        Op::Unwrap {
            mech: WrapMech::AesCtr,
            unwrapper: 0,
            blob: 0,
            tamper: false,
            aim: 0,
            new: NewKey {
                prot: Prot::default(),
                ..readable(Some(NewKind::Secret(SecretKind::Generic)), None)
            },
        },
    ];
    let bench = Bench::new(false);
    harness::run(&bench, &ops).unwrap_or_else(|e| panic!("{e}"));
}

/// `C_DeriveKey(CKM_HKDF_DERIVE)` with `bExtract=FALSE, bExpand=TRUE` uses the base key as
/// the PRK; the firmware hands it to aws-lc-rs' `hkdf::Prk::new_less_safe`, which panics above
/// 64 bytes ("Prk length limit exceeded"). A generic secret of 65 bytes is enough, and it may
/// be a public session object made without logging in; through the C ABI the guard catches the
/// panic and disables the module for the rest of the process (every later call
/// `CKR_GENERAL_ERROR`): a denial of service for every application sharing it. Expected: an
/// error code (or a result), never a panic.
#[test]
fn hkdf_expand_only_with_a_long_base_key_does_not_panic() {
    // A fresh token where nobody is logged in: no PIN is needed.
    let dir = tempfile::tempdir().unwrap();
    let dev = firmware_sim::Device::open_home(
        dir.path(),
        &bridge::config::FirmwareConfig {
            pin_kdf_iterations: 1,
            ..bridge::config::FirmwareConfig::default()
        },
    )
    .unwrap();
    let mut label = [b' '; 32];
    label[0] = b't';
    dev.init_token(SlotId(0), b"12345678", &label).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let base = dev
        .create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                .with(Attribute::bytes(CKA_VALUE, vec![0x42; 65]))
                .with(Attribute::bool(CKA_DERIVE, true))
                // A public, readable session key: anyone may make one.
                .with(Attribute::bool(CKA_PRIVATE, false))
                .with(Attribute::bool(CKA_EXTRACTABLE, true)),
        )
        .unwrap();
    let m = hkdf_expand_only();
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::ulong(CKA_VALUE_LEN, 32))
        // Public and readable, as its base: a public key is never protected.
        .with(Attribute::bool(CKA_PRIVATE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dev.derive_key(s, &m, base, &t)
    }));
    let r = r.unwrap_or_else(|_| panic!("C_DeriveKey panicked"));
    // A PRK longer than HashLen is no error in RFC 5869 (HMAC hashes a long key), so either a
    // key or a refusal is acceptable; the answer to this exact call is what matters.
    assert!(
        matches!(r, Ok(_) | Err(Error::KeySizeRange)),
        "C_DeriveKey answered {r:?}"
    );
}

/// Writes seed inputs for the `protection` fuzz target (run by hand:
/// `FERROHSM_MODEL_SEEDS_OUT=$PWD/fuzz/corpus/protection cargo test --release -p ferrohsm-firmware
/// --test protection_model -- --ignored write_fuzz_seeds`): sequences from the property test's
/// own strategy and seed, so the fuzzer starts where the test command stops.
#[test]
#[ignore = "writes the fuzz target's seed corpus; run by hand"]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use sha1::Digest;
    let out = std::path::PathBuf::from(std::env::var("FERROHSM_MODEL_SEEDS_OUT").unwrap());
    std::fs::create_dir_all(&out).unwrap();
    let mut runner = TestRunner::new(Config {
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(16),
        ..Config::default()
    });
    let strategy = (
        any::<bool>(),
        vec(proptest::array::uniform32(any::<u8>()), 8..=32),
    );
    for _ in 0..24 {
        let (strict, chunks) = strategy.new_tree(&mut runner).unwrap().current();
        let data = input(strict, &chunks);
        let name = hex(&sha1::Sha1::digest(&data));
        std::fs::write(out.join(name), data).unwrap();
    }
}

/// Decoding never panics and every input decodes to the same operations twice (the fuzz
/// target and the property test share the decoder).
#[test]
fn decoding_is_total_and_deterministic() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(1),
        ..Config::default()
    });
    runner
        .run(&vec(any::<u8>(), 0..200), |bytes| {
            let a = harness::decode_input(&bytes);
            let b = harness::decode_input(&bytes);
            prop_assert_eq!(a, b);
            Ok(())
        })
        .unwrap();
}
