//! AES-CCM and ChaCha20-Poly1305 through the `Device` API: Wycheproof's vectors both ways, a
//! cross-check of ChaCha20-Poly1305 against RustCrypto, multi-part = single-part, the
//! parameter and length codes, key generation and import rules, wrap/unwrap, and the attacks:
//! no tag oracle under a key that may not decrypt or unwrap, one encryption per nonce and init.

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "sym/mod.rs"]
mod sym;

use bridge::*;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use cryptoki_sys::*;
use sym::*;
use wycheproof::TestResult;

fn ccm(data_len: usize, nonce: &[u8], aad: &[u8], mac_len: usize) -> Mechanism {
    Mechanism::with(
        CKM_AES_CCM,
        MechanismParams::Ccm {
            data_len: CK_ULONG::try_from(data_len).unwrap(),
            nonce: nonce.to_vec(),
            aad: aad.to_vec(),
            mac_len: CK_ULONG::try_from(mac_len).unwrap(),
        },
    )
}

fn chacha(nonce: &[u8], aad: &[u8]) -> Mechanism {
    Mechanism::with(
        CKM_CHACHA20_POLY1305,
        MechanismParams::ChaCha20Poly1305 {
            nonce: nonce.to_vec(),
            aad: aad.to_vec(),
        },
    )
}

fn ulong(v: CK_ULONG) -> AttrValue {
    AttrValue::Bytes(v.to_ne_bytes().to_vec())
}

fn chacha_key(dev: &firmware_sim::Device, s: SessionHandle, value: &[u8]) -> ObjectHandle {
    secret(dev, s, CKK_CHACHA20, value)
}

#[test]
fn wycheproof_aes_ccm_both_ways() {
    let (_d, dev, s) = ready();
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesCcm).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in &set.test_groups {
        for t in &g.tests {
            let k = aes(&dev, s, &t.key);
            let m = ccm(t.pt.len(), &t.nonce, &t.aad, g.tag_size / 8);
            let ct = [&t.ct[..], &t.tag[..]].concat();
            let got = decrypt(&dev, s, &m, k, &ct);
            let params_ok = (7..=13).contains(&t.nonce.len())
                && [4, 6, 8, 10, 12, 14, 16].contains(&(g.tag_size / 8));
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(got.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                    assert_eq!(
                        encrypt(&dev, s, &m, k, &t.pt).unwrap(),
                        ct,
                        "tc {}",
                        t.tc_id
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    let want = if params_ok {
                        Error::EncryptedDataInvalid
                    } else {
                        Error::MechanismParamInvalid
                    };
                    assert_eq!(got, Err(want), "tc {} {:?}", t.tc_id, t.flags);
                    invalid += 1;
                }
            }
            dev.destroy_object(s, k).unwrap();
        }
    }
    assert!(
        valid > 100 && invalid > 20,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn wycheproof_chacha20_poly1305_both_ways() {
    let (_d, dev, s) = ready();
    let set =
        wycheproof::aead::TestSet::load(wycheproof::aead::TestName::ChaCha20Poly1305).unwrap();
    let mut valid = 0;
    for g in &set.test_groups {
        for t in &g.tests {
            let k = chacha_key(&dev, s, &t.key);
            let m = chacha(&t.nonce, &t.aad);
            let ct = [&t.ct[..], &t.tag[..]].concat();
            let got = decrypt(&dev, s, &m, k, &ct);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(got.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                    assert_eq!(encrypt(&dev, s, &m, k, &t.pt).unwrap(), ct);
                    valid += 1;
                }
                TestResult::Invalid => {
                    let want = if t.nonce.len() == 12 {
                        Error::EncryptedDataInvalid
                    } else {
                        Error::MechanismParamInvalid
                    };
                    assert_eq!(got, Err(want), "tc {} {:?}", t.tc_id, t.flags);
                }
            }
            dev.destroy_object(s, k).unwrap();
        }
    }
    assert!(valid > 100, "{valid} valid");
}

#[test]
fn chacha20_poly1305_agrees_with_rustcrypto_and_multi_part_is_single_part() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(2026);
    for _ in 0..8 {
        let key = rng.bytes(32);
        let k = chacha_key(&dev, s, &key);
        for len in [0usize, 1, 63, 64, 65, 300] {
            let nonce = rng.bytes(12);
            let aad_len = rng.below(40);
            let aad = rng.bytes(aad_len);
            let pt = rng.bytes(len);
            let m = chacha(&nonce, &aad);
            let ours = encrypt(&dev, s, &m, k, &pt).unwrap();
            let theirs = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key)
                .unwrap()
                .encrypt(
                    nonce.as_slice().into(),
                    Payload {
                        msg: &pt,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(ours, theirs);
            let (multi, lens) = encrypt_parts(&dev, s, &m, k, &pt, &[3, 20]).unwrap();
            assert_eq!(multi, ours);
            assert_eq!(&lens[..2], &[0, 0]);
            let (plain, lens) = decrypt_parts(&dev, s, &m, k, &ours, &[5, 9]).unwrap();
            assert_eq!(plain, pt);
            assert_eq!(&lens[..2], &[0, 0]);
        }
    }
}

#[test]
fn ccm_multi_part_and_every_nonce_and_tag_length() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(7);
    for key_len in [16, 24, 32] {
        let k = aes(&dev, s, &rng.bytes(key_len));
        for nonce_len in 7..=13 {
            for tag in [4, 6, 8, 10, 12, 14, 16] {
                let n = rng.below(70);
                let pt = rng.bytes(n);
                let nonce = rng.bytes(nonce_len);
                let m = ccm(pt.len(), &nonce, b"hdr", tag);
                let c = encrypt(&dev, s, &m, k, &pt).unwrap();
                assert_eq!(c.len(), pt.len() + tag);
                assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), pt);
                let (multi, _) = encrypt_parts(&dev, s, &m, k, &pt, &[2, 30]).unwrap();
                assert_eq!(multi, c);
                let (plain, _) = decrypt_parts(&dev, s, &m, k, &c, &[1, 17]).unwrap();
                assert_eq!(plain, pt);
            }
        }
    }
}

#[test]
fn ccm_parameter_and_length_codes() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[9; 16]);
    for bad in [
        ccm(4, &[0; 6], b"", 16),
        ccm(4, &[0; 14], b"", 16),
        ccm(4, &[0; 12], b"", 5),
        ccm(4, &[0; 12], b"", 0),
        ccm(4, &[0; 12], b"", 18),
        // A 13-byte nonce leaves a 2-byte length field: at most 65535 bytes.
        ccm(65_536, &[0; 13], b"", 16),
        Mechanism::with(CKM_AES_CCM, chacha(&[0; 12], b"").params),
    ] {
        assert_eq!(
            dev.encrypt_init(s, &bad, k),
            Err(Error::MechanismParamInvalid),
            "{bad:?}"
        );
    }
    assert!(
        dev.encrypt_init(s, &ccm(65_535, &[0; 13], b"", 16), k)
            .is_ok()
    );
    dev.session_cancel(s, CKF_ENCRYPT).unwrap();
    // ulDataLen is the plaintext's length on both sides.
    let m = ccm(5, &[1; 12], b"a", 8);
    assert_eq!(encrypt(&dev, s, &m, k, b"four"), Err(Error::DataLenRange));
    assert_eq!(encrypt(&dev, s, &m, k, b"sixsix"), Err(Error::DataLenRange));
    let c = encrypt(&dev, s, &m, k, b"hello").unwrap();
    assert_eq!(c.len(), 13);
    assert_eq!(
        decrypt(&dev, s, &m, k, &c[..12]),
        Err(Error::EncryptedDataLenRange)
    );
    assert_eq!(
        decrypt(&dev, s, &m, k, &[&c[..], &[0]].concat()),
        Err(Error::EncryptedDataLenRange)
    );
    for i in [0, 4, 5, 12] {
        let mut t = c.clone();
        t[i] ^= 1;
        assert_eq!(
            decrypt(&dev, s, &m, k, &t),
            Err(Error::EncryptedDataInvalid)
        );
    }
    assert_eq!(
        decrypt(&dev, s, &ccm(5, &[1; 12], b"b", 8), k, &c),
        Err(Error::EncryptedDataInvalid)
    );
}

#[test]
fn chacha20_key_generation_import_and_info() {
    let (_d, dev, s) = ready();
    let keygen = Mechanism::new(CKM_CHACHA20_KEY_GEN);
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bool(CKA_DECRYPT, true));
    let k = dev.generate_key(s, &keygen, &t).unwrap();
    let a = dev
        .get_attribute_value(s, k, &[CKA_KEY_TYPE, CKA_VALUE_LEN, CKA_KEY_GEN_MECHANISM])
        .unwrap();
    assert_eq!(a[0], AttrAnswer::Value(ulong(CKK_CHACHA20)));
    assert_eq!(a[1], AttrAnswer::Value(ulong(32)));
    assert_eq!(a[2], AttrAnswer::Value(ulong(CKM_CHACHA20_KEY_GEN)));
    let m = chacha(&[5; 12], b"");
    let c = encrypt(&dev, s, &m, k, b"generated").unwrap();
    assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), b"generated");
    let with_len = t.clone().with(Attribute::ulong(CKA_VALUE_LEN, 32));
    assert!(dev.generate_key(s, &keygen, &with_len).is_ok());
    let bad_len = t.with(Attribute::ulong(CKA_VALUE_LEN, 16));
    assert_eq!(
        dev.generate_key(s, &keygen, &bad_len),
        Err(Error::AttributeValueInvalid)
    );
    // Import: 32 bytes only.
    let short = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_CHACHA20))
        .with(Attribute::bytes(CKA_VALUE, vec![1; 16]));
    assert_eq!(
        dev.create_object(s, &short),
        Err(Error::AttributeValueInvalid)
    );
    // Mechanism info: key sizes in bytes, exactly the flags implemented.
    let i = dev
        .mechanism_info(SlotId(0), CKM_CHACHA20_POLY1305)
        .unwrap();
    assert_eq!((i.min_key_size, i.max_key_size), (32, 32));
    assert_eq!(
        i.flags,
        CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP
    );
    let i = dev.mechanism_info(SlotId(0), CKM_CHACHA20_KEY_GEN).unwrap();
    assert_eq!(i.flags, CKF_HW | CKF_GENERATE);
    let i = dev.mechanism_info(SlotId(0), CKM_AES_CCM).unwrap();
    assert_eq!((i.min_key_size, i.max_key_size), (16, 32));
    assert_eq!(
        i.flags,
        CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP
    );
}

#[test]
fn key_types_are_checked_before_usage_and_before_the_tag() {
    let (_d, dev, s) = ready();
    let a = aes(&dev, s, &[1; 32]);
    let c = chacha_key(&dev, s, &[1; 32]);
    assert_eq!(
        dev.encrypt_init(s, &chacha(&[0; 12], b""), a),
        Err(Error::KeyTypeInconsistent)
    );
    assert_eq!(
        dev.encrypt_init(s, &ccm(1, &[0; 12], b"", 16), c),
        Err(Error::KeyTypeInconsistent)
    );
    // Attack: a key that may encrypt but not decrypt is no tag oracle. Its ciphertexts,
    // valid or forged, are refused at C_DecryptInit with the same code, before any
    // cryptography; nothing about the tag leaks.
    for (key_type, m) in [
        (CKK_AES, ccm(6, &[3; 11], b"x", 16)),
        (CKK_CHACHA20, chacha(&[3; 12], b"x")),
    ] {
        let k = secret_with(
            &dev,
            s,
            key_type,
            &[4; 32],
            &[
                Attribute::bool(CKA_DECRYPT, false),
                Attribute::bool(CKA_UNWRAP, false),
            ],
        );
        let good = encrypt(&dev, s, &m, k, b"secret").unwrap();
        let mut forged = good.clone();
        forged[0] ^= 1;
        for ct in [&good, &forged] {
            assert_eq!(
                decrypt(&dev, s, &m, k, ct),
                Err(Error::KeyFunctionNotPermitted)
            );
            let t = Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET));
            assert_eq!(
                dev.unwrap_key(s, &m, k, ct, &t),
                Err(Error::KeyFunctionNotPermitted)
            );
        }
    }
}

#[test]
fn one_encryption_per_nonce_and_init() {
    let (_d, dev, s) = ready();
    for (k, m) in [
        (chacha_key(&dev, s, &[8; 32]), chacha(&[1; 12], b"")),
        (aes(&dev, s, &[8; 16]), ccm(5, &[1; 12], b"", 16)),
    ] {
        dev.encrypt_init(s, &m, k).unwrap();
        // A buffer too small: the ciphertext is made once and kept; the retry with other
        // data gets that same ciphertext, never a second message under the nonce.
        let mut small = [0u8; 4];
        assert_eq!(
            dev.encrypt(s, b"first", Some(&mut small)),
            Err(Error::BufferTooSmall { needed: 21 })
        );
        let mut buf = [0u8; 64];
        let n = dev.encrypt(s, b"other", Some(&mut buf)).unwrap();
        assert_eq!(decrypt(&dev, s, &m, k, &buf[..n]).unwrap(), b"first");
        // Delivered: the operation is over; the nonce takes no second message.
        assert_eq!(
            dev.encrypt(s, b"again", Some(&mut buf)),
            Err(Error::OperationNotInitialized)
        );
    }
}

#[test]
fn wrap_and_unwrap_with_ccm_and_chacha20_poly1305() {
    let (_d, dev, s) = ready();
    let target_value = [0x5a; 24];
    let target = secret(&dev, s, CKK_AES, &target_value);
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false));
    for (k, m) in [
        (chacha_key(&dev, s, &[2; 32]), chacha(&[6; 12], b"wrap")),
        (aes(&dev, s, &[2; 32]), ccm(24, &[6; 13], b"wrap", 12)),
    ] {
        let wrapped = two_call(|out| dev.wrap_key(s, &m, k, target, out)).unwrap();
        assert_eq!(decrypt(&dev, s, &m, k, &wrapped).unwrap(), target_value);
        let h = dev.unwrap_key(s, &m, k, &wrapped, &t).unwrap();
        assert_eq!(value(&dev, s, h), target_value);
        let mut bad = wrapped.clone();
        bad[3] ^= 0x80;
        assert_eq!(
            dev.unwrap_key(s, &m, k, &bad, &t),
            Err(Error::WrappedKeyInvalid)
        );
    }
}
