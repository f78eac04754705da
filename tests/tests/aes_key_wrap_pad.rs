//! `CKM_AES_KEY_WRAP_PAD` (0x210A) moves keys between FerroHSM and the tools that read it as
//! RFC 5649 (OpenSSL's `id-aes*-wrap-pad`, SoftHSMv2, OpenSC's test scripts): a key wrapped
//! through the built module is byte for byte what `openssl enc -id-aes256-wrap-pad` makes of
//! its value, and what openssl wraps unwraps here; the PKCS#7-padded RFC 3394 form of PKCS#11
//! v2.40 still unwraps; every integrity failure is one code, and a key that may not unwrap is
//! refused before any of it.
//!
//! The module runs in a child process of this test binary (`FERROHSM_HOME` of a fresh token).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;

const CHILD: &str = "AES_KEY_WRAP_PAD_CHILD";
/// What the child prints when every check passed.
const DONE: &str = "aes-key-wrap-pad interop: all checks passed";

/// The KEK's value (AES-256), known to openssl.
const KEK: [u8; 32] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

fn pkcs7(data: &[u8]) -> Vec<u8> {
    let n = 8 - data.len() % 8;
    let mut v = data.to_vec();
    v.resize(data.len() + n, u8::try_from(n).unwrap());
    v
}

/// `openssl enc <cipher>` with the KEK and initial value `iv`, in `dir`.
fn openssl_enc(dir: &Home, cipher: &str, iv: &str, data: &[u8], decrypt: bool) -> Vec<u8> {
    let input = dir.file("enc-in");
    std::fs::write(&input, data).unwrap();
    let k = hex(&KEK);
    let mut args = vec!["enc", cipher, "-K", &k, "-iv", iv, "-in", s(&input)];
    if decrypt {
        args.push("-d");
    }
    let out = openssl(&args);
    assert_eq!(out.status, 0, "openssl {args:?}: {}", out.stderr);
    out.raw.stdout
}

#[test]
fn aes_key_wrap_pad_moves_keys_to_and_from_openssl() {
    require("openssl");
    let home = Home::with_token("kwp");
    let out = child_test("child_wrap_pad", &home, CHILD)
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "child failed:\n{stdout}\n{stderr}"
    );
}

fn pad() -> Mechanism<'static> {
    Mechanism::AesKeyWrapPad
}

fn secret(s: &Session, key_type: KeyType, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Value(value.to_vec()),
    ];
    t.extend_from_slice(extra);
    s.create_object(&t).unwrap()
}

fn template(key_type: KeyType) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Extractable(true),
        Attribute::Sensitive(false),
    ]
}

fn value(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(h, &[AttributeType::Value]).unwrap().pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("CKA_VALUE: {other:?}"),
    }
}

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other:?}"),
    }
}

#[test]
#[ignore = "a child of aes_key_wrap_pad_moves_keys_to_and_from_openssl"]
fn child_wrap_pad() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let home = Home {
        dir: tempfile::tempdir().unwrap(),
    };
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    let info = p
        .get_mechanism_info(slot, MechanismType::AES_KEY_WRAP_PAD)
        .unwrap();
    assert!(info.wrap() && info.unwrap());
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
        .unwrap();
    let kek = secret(
        &s,
        KeyType::AES,
        &KEK,
        &[Attribute::Wrap(true), Attribute::Unwrap(true)],
    );

    // FerroHSM wraps, openssl unwraps: the same bytes as openssl's own wrap (RFC 5649, its
    // default initial value A65959A6). Key lengths that are and are not a semiblock multiple.
    let targets: [(KeyType, Vec<u8>); 4] = [
        (KeyType::GENERIC_SECRET, (1u8..=20).collect()),
        (KeyType::AES, vec![0x5c; 16]),
        (
            KeyType::AES,
            (0u8..32).map(|i| i.wrapping_mul(37)).collect(),
        ),
        (KeyType::GENERIC_SECRET, vec![0xe7; 7]),
    ];
    for (key_type, v) in &targets {
        let t = secret(&s, *key_type, v, &[Attribute::Extractable(true)]);
        let wrapped = s.wrap_key(&pad(), kek, t).unwrap();
        let theirs = openssl_enc(&home, "-id-aes256-wrap-pad", "A65959A6", v, false);
        assert_eq!(wrapped, theirs, "{} bytes", v.len());
        assert_eq!(
            openssl_enc(&home, "-id-aes256-wrap-pad", "A65959A6", &wrapped, true),
            *v
        );
    }

    // openssl wraps, FerroHSM unwraps: RFC 5649, and the PKCS#7-padded RFC 3394 form of
    // PKCS#11 v2.40 (what CKM_AES_KEY_WRAP_PKCS7 makes; the firmware's known-answer tests
    // check that and CKM_AES_KEY_WRAP_KWP byte for byte).
    let v: Vec<u8> = (0u8..24).map(|i| i ^ 0x3c).collect();
    let kwp = openssl_enc(&home, "-id-aes256-wrap-pad", "A65959A6", &v, false);
    let pkcs7_form = openssl_enc(
        &home,
        "-id-aes256-wrap",
        "A6A6A6A6A6A6A6A6",
        &pkcs7(&v),
        false,
    );
    assert_ne!(kwp, pkcs7_form);
    for blob in [&kwp, &pkcs7_form] {
        let h = s
            .unwrap_key(&pad(), kek, blob, &template(KeyType::GENERIC_SECRET))
            .unwrap();
        assert_eq!(value(&s, h), v);
    }

    // Any change to either form is the one integrity code (no padding oracle): the first
    // byte, a middle one, the last.
    for blob in [&kwp, &pkcs7_form] {
        for i in [0, blob.len() / 2, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let e = s
                .unwrap_key(&pad(), kek, &bad, &template(KeyType::GENERIC_SECRET))
                .unwrap_err();
            assert_eq!(rv(e), RvError::WrappedKeyInvalid, "byte {i}");
        }
    }
    // A KEK that may not unwrap answers the same for a good and a bad blob, before any
    // cryptography.
    let wrap_only = secret(
        &s,
        KeyType::AES,
        &KEK,
        &[Attribute::Wrap(true), Attribute::Unwrap(false)],
    );
    let mut bad = kwp.clone();
    bad[3] ^= 0x80;
    for blob in [&kwp, &bad, &pkcs7_form] {
        let e = s
            .unwrap_key(&pad(), wrap_only, blob, &template(KeyType::GENERIC_SECRET))
            .unwrap_err();
        assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    }
    println!("{DONE}");
}
