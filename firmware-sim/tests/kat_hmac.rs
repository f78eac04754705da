//! HMAC through the `Device` API: Wycheproof vectors for SHA-1, SHA-2 and SHA-3, a RustCrypto
//! cross-check both ways, multi-part = single-part, the key types accepted, `_GENERAL` lengths
//! and the verification codes.

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "sym/mod.rs"]
mod sym;

use bridge::*;
use cryptoki_sys::*;
use hmac::{Hmac, Mac};
use sym::*;
use wycheproof::TestResult;
use wycheproof::mac::TestName;

/// (full mechanism, general mechanism, HMAC key type, hash length, Wycheproof set)
const ALL: [(
    CK_MECHANISM_TYPE,
    CK_MECHANISM_TYPE,
    CK_KEY_TYPE,
    usize,
    TestName,
); 11] = [
    (
        CKM_SHA_1_HMAC,
        CKM_SHA_1_HMAC_GENERAL,
        CKK_SHA_1_HMAC,
        20,
        TestName::HmacSha1,
    ),
    (
        CKM_SHA224_HMAC,
        CKM_SHA224_HMAC_GENERAL,
        CKK_SHA224_HMAC,
        28,
        TestName::HmacSha224,
    ),
    (
        CKM_SHA256_HMAC,
        CKM_SHA256_HMAC_GENERAL,
        CKK_SHA256_HMAC,
        32,
        TestName::HmacSha256,
    ),
    (
        CKM_SHA384_HMAC,
        CKM_SHA384_HMAC_GENERAL,
        CKK_SHA384_HMAC,
        48,
        TestName::HmacSha384,
    ),
    (
        CKM_SHA512_HMAC,
        CKM_SHA512_HMAC_GENERAL,
        CKK_SHA512_HMAC,
        64,
        TestName::HmacSha512,
    ),
    (
        CKM_SHA512_224_HMAC,
        CKM_SHA512_224_HMAC_GENERAL,
        CKK_SHA512_224_HMAC,
        28,
        TestName::HmacSha512_224,
    ),
    (
        CKM_SHA512_256_HMAC,
        CKM_SHA512_256_HMAC_GENERAL,
        CKK_SHA512_256_HMAC,
        32,
        TestName::HmacSha512_256,
    ),
    (
        CKM_SHA3_224_HMAC,
        CKM_SHA3_224_HMAC_GENERAL,
        CKK_SHA3_224_HMAC,
        28,
        TestName::HmacSha3_224,
    ),
    (
        CKM_SHA3_256_HMAC,
        CKM_SHA3_256_HMAC_GENERAL,
        CKK_SHA3_256_HMAC,
        32,
        TestName::HmacSha3_256,
    ),
    (
        CKM_SHA3_384_HMAC,
        CKM_SHA3_384_HMAC_GENERAL,
        CKK_SHA3_384_HMAC,
        48,
        TestName::HmacSha3_384,
    ),
    (
        CKM_SHA3_512_HMAC,
        CKM_SHA3_512_HMAC_GENERAL,
        CKK_SHA3_512_HMAC,
        64,
        TestName::HmacSha3_512,
    ),
];

fn general(ty: CK_MECHANISM_TYPE, len: usize) -> Mechanism {
    Mechanism::with(ty, MechanismParams::Ulong(CK_ULONG::try_from(len).unwrap()))
}

fn rustcrypto(ty: CK_MECHANISM_TYPE, key: &[u8], data: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = <Hmac<$d> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match ty {
        CKM_SHA_1_HMAC => mac!(sha1::Sha1),
        CKM_SHA224_HMAC => mac!(sha2::Sha224),
        CKM_SHA256_HMAC => mac!(sha2::Sha256),
        CKM_SHA384_HMAC => mac!(sha2::Sha384),
        CKM_SHA512_HMAC => mac!(sha2::Sha512),
        CKM_SHA512_224_HMAC => mac!(sha2::Sha512_224),
        CKM_SHA512_256_HMAC => mac!(sha2::Sha512_256),
        CKM_MD5_HMAC => mac!(md5::Md5),
        CKM_SHA3_224_HMAC => mac!(sha3::Sha3_224),
        CKM_SHA3_256_HMAC => mac!(sha3::Sha3_256),
        CKM_SHA3_384_HMAC => mac!(sha3::Sha3_384),
        CKM_SHA3_512_HMAC => mac!(sha3::Sha3_512),
        other => panic!("0x{other:x}"),
    }
}

#[test]
fn wycheproof_hmac_every_hash() {
    let (_d, dev, s) = ready();
    for (full, gen_ty, _, hash_len, set) in ALL {
        let set = wycheproof::mac::TestSet::load(set).unwrap();
        let mut n = 0;
        for g in &set.test_groups {
            for t in &g.tests {
                if t.key.is_empty() {
                    // A zero-length key cannot be a key object (CKR_ATTRIBUTE_VALUE_INVALID).
                    continue;
                }
                let k = secret(&dev, s, CKK_GENERIC_SECRET, &t.key);
                let tag_len = g.tag_size / 8;
                let m = if tag_len == hash_len {
                    Mechanism::new(full)
                } else {
                    general(gen_ty, tag_len)
                };
                let r = verify(&dev, s, &m, k, &t.msg, &t.tag);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        r.unwrap();
                        assert_eq!(
                            sign(&dev, s, &m, k, &t.msg).unwrap(),
                            t.tag.to_vec(),
                            "tc {}",
                            t.tc_id
                        );
                    }
                    TestResult::Invalid => assert!(
                        matches!(r, Err(Error::SignatureInvalid | Error::SignatureLenRange)),
                        "0x{full:x} tc {}: {r:?}",
                        t.tc_id
                    ),
                }
                dev.destroy_object(s, k).unwrap();
                n += 1;
            }
        }
        assert!(n > 50, "0x{full:x}: {n} vectors");
    }
}

#[test]
fn hmac_agrees_with_rustcrypto_single_and_multi_part() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(31337);
    for (full, gen_ty, own_type, hash_len, _) in ALL {
        for key_len in [1usize, 16, 64, 200] {
            let key = rng.bytes(key_len);
            for key_type in [CKK_GENERIC_SECRET, own_type] {
                let k = secret(&dev, s, key_type, &key);
                for len in [0usize, 1, 100, 1000] {
                    let data = rng.bytes(len);
                    let want = rustcrypto(full, &key, &data);
                    let m = Mechanism::new(full);
                    assert_eq!(sign(&dev, s, &m, k, &data).unwrap(), want);
                    assert_eq!(sign_parts(&dev, s, &m, k, &data, 33).unwrap(), want);
                    verify(&dev, s, &m, k, &data, &want).unwrap();
                    verify_parts(&dev, s, &m, k, &data, &want, 7).unwrap();
                    let half = hash_len / 2;
                    let g = general(gen_ty, half);
                    assert_eq!(sign(&dev, s, &g, k, &data).unwrap(), want[..half].to_vec());
                    verify(&dev, s, &g, k, &data, &want[..half]).unwrap();
                }
            }
        }
    }
}

#[test]
fn hmac_codes() {
    let (_d, dev, s) = ready();
    let k = secret(&dev, s, CKK_GENERIC_SECRET, &[7; 32]);
    let m = Mechanism::new(CKM_SHA256_HMAC);
    let mac = sign(&dev, s, &m, k, b"data").unwrap();
    let mut bad = mac.clone();
    bad[31] ^= 0x80;
    assert_eq!(
        verify(&dev, s, &m, k, b"data", &bad),
        Err(Error::SignatureInvalid)
    );
    assert_eq!(
        verify(&dev, s, &m, k, b"data", &mac[..31]),
        Err(Error::SignatureLenRange)
    );
    assert_eq!(
        verify_parts(&dev, s, &m, k, b"data", &bad, 1),
        Err(Error::SignatureInvalid)
    );
    // _GENERAL lengths: 1..=hash length; no parameter for the plain mechanism.
    for n in [0, 33] {
        assert_eq!(
            dev.sign_init(s, &general(CKM_SHA256_HMAC_GENERAL, n), k),
            Err(Error::MechanismParamInvalid)
        );
    }
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_SHA256_HMAC_GENERAL), k),
        Err(Error::MechanismParamInvalid)
    );
    assert_eq!(
        dev.sign_init(s, &general(CKM_SHA256_HMAC, 16), k),
        Err(Error::MechanismParamInvalid)
    );
    // Key types: AES keys are accepted (pkcs11-tool), a typed HMAC key only for its hash.
    let a = secret(&dev, s, CKK_AES, &[7; 32]);
    assert_eq!(sign(&dev, s, &m, a, b"data").unwrap(), mac);
    let typed = secret(&dev, s, CKK_SHA256_HMAC, &[7; 32]);
    assert_eq!(sign(&dev, s, &m, typed, b"data").unwrap(), mac);
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_SHA512_HMAC), typed),
        Err(Error::KeyTypeInconsistent)
    );
    let hkdf = secret(&dev, s, CKK_HKDF, &[7; 32]);
    assert_eq!(dev.sign_init(s, &m, hkdf), Err(Error::KeyTypeInconsistent));
    // Key type is reported before the usage attribute.
    let no_sign = secret_with(
        &dev,
        s,
        CKK_GENERIC_SECRET,
        &[7; 32],
        &[Attribute::bool(CKA_SIGN, false)],
    );
    assert_eq!(
        dev.sign_init(s, &m, no_sign),
        Err(Error::KeyFunctionNotPermitted)
    );
    let big = secret(&dev, s, CKK_GENERIC_SECRET, &[7; 513]);
    assert_eq!(dev.sign_init(s, &m, big), Err(Error::KeySizeRange));
    // The buffer rules: a short buffer keeps the operation, the exact length comes back.
    dev.sign_init(s, &m, k).unwrap();
    let mut small = [0u8; 8];
    assert_eq!(
        dev.sign(s, b"data", Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 32 })
    );
    assert_eq!(dev.sign(s, b"data", None), Ok(32));
    let mut out = [0u8; 32];
    assert_eq!(dev.sign(s, b"data", Some(&mut out)), Ok(32));
    assert_eq!(out.to_vec(), mac);
}

#[test]
fn generated_generic_secret_macs_like_its_value() {
    let (_d, dev, s) = ready();
    // pkcs11-tool --keygen --key-type GENERIC:64 --usage-sign
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bool(CKA_VERIFY, true))
        .with(Attribute::ulong(CKA_VALUE_LEN, 64));
    let k = dev
        .generate_key(s, &Mechanism::new(CKM_GENERIC_SECRET_KEY_GEN), &t)
        .unwrap();
    let key = value(&dev, s, k);
    assert_eq!(key.len(), 64);
    for (full, ..) in ALL {
        let mac = sign(
            &dev,
            s,
            &Mechanism::new(full),
            k,
            b"data to sign (max 100 bytes)\n",
        )
        .unwrap();
        assert_eq!(
            mac,
            rustcrypto(full, &key, b"data to sign (max 100 bytes)\n")
        );
    }
}

#[test]
fn message_based_mac_sign_and_verify() {
    let (_d, dev, s) = ready();
    let k = secret(&dev, s, CKK_GENERIC_SECRET, &[9; 32]);
    let a = secret(&dev, s, CKK_AES, &[9; 16]);
    for (m, key) in [
        (Mechanism::new(CKM_SHA256_HMAC), k),
        (general(CKM_SHA3_512_HMAC_GENERAL, 20), k),
        (Mechanism::new(CKM_AES_CMAC), a),
    ] {
        let msgs: [&[u8]; 3] = [b"first", b"", b"third message, a little longer"];
        let want: Vec<Vec<u8>> = msgs
            .iter()
            .map(|d| sign(&dev, s, &m, key, d).unwrap())
            .collect();
        dev.message_sign_init(s, &m, key).unwrap();
        assert_eq!(
            dev.message_sign_init(s, &m, key),
            Err(Error::OperationActive)
        );
        let mut p = MechanismParams::None;
        for (d, w) in msgs.iter().zip(&want) {
            let got = two_call(|out| dev.sign_message(s, &mut p, d, out)).unwrap();
            assert_eq!(&got, w);
        }
        // In parts: only the last part (with a signature buffer) produces.
        dev.sign_message_begin(s, &mut p).unwrap();
        assert_eq!(
            dev.sign_message(s, &mut p, b"x", None),
            Err(Error::OperationActive)
        );
        assert_eq!(
            dev.sign_message_next(s, &mut p, b"third ", false, None),
            Ok(0)
        );
        let n = dev
            .sign_message_next(s, &mut p, b"message, a little longer", true, None)
            .unwrap();
        assert_eq!(n, want[2].len());
        let mut small = [0u8; 2];
        assert_eq!(
            dev.sign_message_next(
                s,
                &mut p,
                b"message, a little longer",
                true,
                Some(&mut small)
            ),
            Err(Error::BufferTooSmall { needed: n })
        );
        let mut buf = vec![0u8; n];
        dev.sign_message_next(s, &mut p, b"message, a little longer", true, Some(&mut buf))
            .unwrap();
        assert_eq!(buf, want[2]);
        assert_eq!(
            dev.sign_message_next(s, &mut p, b"", true, Some(&mut buf)),
            Err(Error::OperationNotInitialized)
        );
        dev.message_sign_final(s).unwrap();
        assert_eq!(
            dev.message_sign_final(s),
            Err(Error::OperationNotInitialized)
        );

        dev.message_verify_init(s, &m, key).unwrap();
        for (d, w) in msgs.iter().zip(&want) {
            dev.verify_message(s, &mut p, d, w).unwrap();
        }
        let mut bad = want[0].clone();
        bad[0] ^= 1;
        assert_eq!(
            dev.verify_message(s, &mut p, msgs[0], &bad),
            Err(Error::SignatureInvalid)
        );
        dev.verify_message_begin(s, &mut p).unwrap();
        dev.verify_message_next(s, &mut p, b"third message, ", None)
            .unwrap();
        dev.verify_message_next(s, &mut p, b"a little longer", Some(&want[2]))
            .unwrap();
        dev.verify_message_begin(s, &mut p).unwrap();
        assert_eq!(
            dev.verify_message_next(s, &mut p, b"other", Some(&want[2])),
            Err(Error::SignatureInvalid)
        );
        // The process survives; the message ended.
        assert_eq!(
            dev.verify_message_next(s, &mut p, b"", None),
            Err(Error::OperationNotInitialized)
        );
        let mut with_param = MechanismParams::Ulong(4);
        assert_eq!(
            dev.verify_message(s, &mut with_param, b"", &want[1]),
            Err(Error::MechanismParamInvalid)
        );
        dev.message_verify_final(s).unwrap();
    }
    // Init rules: a mechanism without CKF_MESSAGE_SIGN, key type before usage.
    assert_eq!(
        dev.message_sign_init(s, &Mechanism::new(CKM_AES_ECB), a),
        Err(Error::MechanismInvalid)
    );
    let hkdf = secret(&dev, s, CKK_HKDF, &[1; 32]);
    assert_eq!(
        dev.message_sign_init(s, &Mechanism::new(CKM_SHA256_HMAC), hkdf),
        Err(Error::KeyTypeInconsistent)
    );
    let no_sign = secret_with(
        &dev,
        s,
        CKK_GENERIC_SECRET,
        &[1; 32],
        &[Attribute::bool(CKA_SIGN, false)],
    );
    assert_eq!(
        dev.message_sign_init(s, &Mechanism::new(CKM_SHA256_HMAC), no_sign),
        Err(Error::KeyFunctionNotPermitted)
    );
    dev.message_sign_init(s, &Mechanism::new(CKM_SHA256_HMAC), k)
        .unwrap();
    dev.session_cancel(s, CKF_MESSAGE_SIGN).unwrap();
    assert_eq!(
        dev.message_sign_final(s),
        Err(Error::OperationNotInitialized)
    );
}

/// RFC 2202 §2 (HMAC-MD5), test cases 1, 2 and 6; and the legacy mechanism is absent from the
/// strict personality.
#[test]
fn md5_hmac_rfc2202_and_strict() {
    let (_d, dev, s) = ready();
    let cases: [(&[u8], &[u8], &str); 3] = [
        (&[0x0b; 16], b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "750c783e6ab0b503eaa86e310a5db738",
        ),
        (
            &[0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
        ),
    ];
    let m = Mechanism::new(CKM_MD5_HMAC);
    for (key, data, mac) in cases {
        let k = secret(&dev, s, CKK_MD5_HMAC, key);
        let got = sign(&dev, s, &m, k, data).unwrap();
        assert_eq!(got, hex(mac));
        assert_eq!(got, rustcrypto(CKM_MD5_HMAC, key, data));
        assert_eq!(verify(&dev, s, &m, k, data, &got), Ok(()));
        let short = sign(&dev, s, &general(CKM_MD5_HMAC_GENERAL, 12), k, data).unwrap();
        assert_eq!(short, hex(mac)[..12].to_vec());
    }
    let strict = config::FirmwareConfig {
        personality: config::Personality::Strict,
        ..config()
    };
    let (_d2, dev, s) = ready_with(&strict);
    let k = secret(&dev, s, CKK_GENERIC_SECRET, &[1; 16]);
    assert_eq!(dev.sign_init(s, &m, k), Err(Error::MechanismInvalid));
}
