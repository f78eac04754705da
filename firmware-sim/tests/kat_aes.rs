//! AES through the `Device` API: known answers (Wycheproof), cross-checks against RustCrypto
//! both ways, multi-part = single-part with exact update lengths, the buffer rules, GCM IV and
//! tag lengths, key wrap/unwrap with every wrap mechanism, and the 3.0 message API.

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "sym/mod.rs"]
mod sym;

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit, StreamCipher};
use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::consts::{U8, U12, U13, U16};
use aes_gcm::aead::{Aead, Payload};
use bridge::*;
use cryptoki_sys::*;
use sym::*;
use wycheproof::TestResult;

fn gcm(iv: &[u8], aad: &[u8], tag_bits: CK_ULONG) -> Mechanism {
    Mechanism::with(
        CKM_AES_GCM,
        MechanismParams::Gcm {
            iv: iv.to_vec(),
            iv_bits: 0,
            aad: aad.to_vec(),
            tag_bits,
        },
    )
}

fn cbc(ty: CK_MECHANISM_TYPE, iv: &[u8]) -> Mechanism {
    Mechanism::with(ty, MechanismParams::Bytes(iv.to_vec()))
}

fn ctr(bits: CK_ULONG, cb: [u8; 16]) -> Mechanism {
    Mechanism::with(
        CKM_AES_CTR,
        MechanismParams::AesCtr {
            counter_bits: bits,
            cb,
        },
    )
}

// ---- RustCrypto reference implementations, by key size -----------------------------------------

macro_rules! by_key {
    ($key:expr, $c:ident => $body:expr) => {
        match $key.len() {
            16 => {
                type $c = Aes128;
                $body
            }
            24 => {
                type $c = Aes192;
                $body
            }
            32 => {
                type $c = Aes256;
                $body
            }
            n => panic!("key length {n}"),
        }
    };
}

fn rc_ecb(key: &[u8], data: &[u8], enc: bool) -> Vec<u8> {
    by_key!(key, C => if enc {
        ecb::Encryptor::<C>::new(key.into()).encrypt_padded_vec_mut::<NoPadding>(data)
    } else {
        ecb::Decryptor::<C>::new(key.into()).decrypt_padded_vec_mut::<NoPadding>(data).unwrap()
    })
}

fn rc_cbc(key: &[u8], iv: &[u8], data: &[u8], enc: bool, pad: bool) -> Vec<u8> {
    by_key!(key, C => match (enc, pad) {
        (true, true) => cbc::Encryptor::<C>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(data),
        (true, false) => cbc::Encryptor::<C>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<NoPadding>(data),
        (false, true) => cbc::Decryptor::<C>::new(key.into(), iv.into()).decrypt_padded_vec_mut::<Pkcs7>(data).unwrap(),
        (false, false) => cbc::Decryptor::<C>::new(key.into(), iv.into()).decrypt_padded_vec_mut::<NoPadding>(data).unwrap(),
    })
}

fn rc_ctr(key: &[u8], cb: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    by_key!(key, C => ctr::Ctr128BE::<C>::new(key.into(), cb.into()).apply_keystream(&mut buf));
    buf
}

fn rc_gcm_seal(key: &[u8], iv: &[u8], aad: &[u8], pt: &[u8], tag: usize) -> Vec<u8> {
    macro_rules! seal {
        ($n:ty, $t:ty) => {
            by_key!(key, C => aes_gcm::AesGcm::<C, $n, $t>::new(key.into())
                .encrypt(iv.into(), Payload { msg: pt, aad })
                .unwrap())
        };
    }
    match (iv.len(), tag) {
        (12, 16) => seal!(U12, U16),
        (12, 12) => seal!(U12, U12),
        (12, 13) => seal!(U12, U13),
        (8, 16) => seal!(U8, U16),
        (16, 16) => seal!(U16, U16),
        (16, 12) => seal!(U16, U12),
        other => panic!("{other:?}"),
    }
}

fn rc_cmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    use cmac::Mac;
    by_key!(key, C => {
        let mut m = <cmac::Cmac<C> as Mac>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    })
}

// ---- key generation and mechanism info ---------------------------------------------------------

fn keygen_template(len: Option<CK_ULONG>) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false));
    if let Some(n) = len {
        t.0.push(Attribute::ulong(CKA_VALUE_LEN, n));
    }
    t
}

#[test]
fn aes_key_gen_needs_16_24_or_32_bytes() {
    let (_d, dev, s) = ready();
    let m = Mechanism::new(CKM_AES_KEY_GEN);
    for n in [16, 24, 32] {
        let k = dev.generate_key(s, &m, &keygen_template(Some(n))).unwrap();
        assert_eq!(value(&dev, s, k).len(), usize::try_from(n).unwrap());
        let a = dev
            .get_attribute_value(
                s,
                k,
                &[
                    CKA_KEY_TYPE,
                    CKA_LOCAL,
                    CKA_KEY_GEN_MECHANISM,
                    CKA_VALUE_LEN,
                ],
            )
            .unwrap();
        assert_eq!(
            a[0],
            AttrAnswer::Value(AttrValue::Bytes(CKK_AES.to_ne_bytes().to_vec()))
        );
        assert_eq!(a[1], AttrAnswer::Value(AttrValue::Bytes(vec![1])));
        assert_eq!(
            a[2],
            AttrAnswer::Value(AttrValue::Bytes(CKM_AES_KEY_GEN.to_ne_bytes().to_vec()))
        );
        assert_eq!(
            a[3],
            AttrAnswer::Value(AttrValue::Bytes(n.to_ne_bytes().to_vec()))
        );
    }
    assert_eq!(
        dev.generate_key(s, &m, &keygen_template(None)),
        Err(Error::TemplateIncomplete)
    );
    for n in [0, 8, 17, 33, 64] {
        assert_eq!(
            dev.generate_key(s, &m, &keygen_template(Some(n))),
            Err(Error::AttributeValueInvalid),
            "{n}"
        );
    }
    let with_value = keygen_template(Some(16)).with(Attribute::bytes(CKA_VALUE, vec![0; 16]));
    assert_eq!(
        dev.generate_key(s, &m, &with_value),
        Err(Error::AttributeReadOnly)
    );
    let wrong_type =
        keygen_template(Some(16)).with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET));
    assert_eq!(
        dev.generate_key(s, &m, &wrong_type),
        Err(Error::TemplateInconsistent)
    );
    let with_param = Mechanism::with(CKM_AES_KEY_GEN, MechanismParams::Ulong(1));
    assert_eq!(
        dev.generate_key(s, &with_param, &keygen_template(Some(16))),
        Err(Error::MechanismParamInvalid)
    );
}

#[test]
fn generic_secret_key_gen_takes_1_to_512_bytes() {
    let (_d, dev, s) = ready();
    let m = Mechanism::new(CKM_GENERIC_SECRET_KEY_GEN);
    for n in [1, 20, 64, 512] {
        let k = dev.generate_key(s, &m, &keygen_template(Some(n))).unwrap();
        assert_eq!(value(&dev, s, k).len(), usize::try_from(n).unwrap());
    }
    assert_eq!(
        dev.generate_key(s, &m, &keygen_template(None)),
        Err(Error::TemplateIncomplete)
    );
    assert_eq!(
        dev.generate_key(s, &m, &keygen_template(Some(0))),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(
        dev.generate_key(s, &m, &keygen_template(Some(513))),
        Err(Error::KeySizeRange)
    );
}

#[test]
fn mechanism_info_reports_byte_sizes_and_exact_flags() {
    let (_d, dev, _s) = ready();
    let list = dev.mechanism_list(SlotId(0)).unwrap();
    let cipher = CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP;
    let mac = CKF_HW | CKF_SIGN | CKF_VERIFY | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY;
    let expect = [
        (CKM_AES_KEY_GEN, 16, 32, CKF_HW | CKF_GENERATE),
        (CKM_AES_ECB, 16, 32, cipher),
        (CKM_AES_CBC, 16, 32, cipher),
        (CKM_AES_CBC_PAD, 16, 32, cipher),
        (CKM_AES_CTR, 16, 32, cipher),
        (
            CKM_AES_GCM,
            16,
            32,
            cipher | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT,
        ),
        (CKM_AES_CMAC, 16, 32, mac),
        (CKM_AES_CMAC_GENERAL, 16, 32, mac),
        (CKM_AES_KEY_WRAP, 16, 32, cipher),
        (CKM_AES_KEY_WRAP_PAD, 16, 32, cipher),
        (CKM_AES_KEY_WRAP_KWP, 16, 32, cipher),
        (CKM_AES_KEY_WRAP_PKCS7, 16, 32, cipher),
        (CKM_GENERIC_SECRET_KEY_GEN, 1, 512, CKF_HW | CKF_GENERATE),
        (CKM_SHA256_HMAC, 1, 512, mac),
        (CKM_SHA3_512_HMAC_GENERAL, 1, 512, mac),
        (CKM_HKDF_DERIVE, 1, 512, CKF_HW | CKF_DERIVE),
        (CKM_HKDF_DATA, 1, 512, CKF_HW | CKF_DERIVE),
        (CKM_HKDF_KEY_GEN, 1, 512, CKF_HW | CKF_GENERATE),
        (CKM_PKCS5_PBKD2, 1, 512, CKF_HW | CKF_GENERATE),
    ];
    for (ty, min, max, flags) in expect {
        assert!(list.contains(&ty), "0x{ty:x} listed");
        let i = dev.mechanism_info(SlotId(0), ty).unwrap();
        assert_eq!(
            (i.min_key_size, i.max_key_size, i.flags),
            (min, max, flags),
            "0x{ty:x}"
        );
    }
    assert_eq!(
        dev.mechanism_info(SlotId(0), CKM_AES_OFB),
        Err(Error::MechanismInvalid)
    );
}

// ---- ECB / CBC / CBC_PAD ------------------------------------------------------------------------

#[test]
fn block_modes_agree_with_rustcrypto_both_ways() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(0x5eed);
    for key_len in [16, 24, 32] {
        let key = rng.bytes(key_len);
        let k = aes(&dev, s, &key);
        let iv = rng.bytes(16);
        for blocks in [0usize, 1, 2, 7] {
            let data = rng.bytes(blocks * 16);
            let m = Mechanism::new(CKM_AES_ECB);
            let c = encrypt(&dev, s, &m, k, &data).unwrap();
            assert_eq!(c, rc_ecb(&key, &data, true));
            assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), data);
            assert_eq!(
                decrypt(&dev, s, &m, k, &data).unwrap(),
                rc_ecb(&key, &data, false)
            );

            let m = cbc(CKM_AES_CBC, &iv);
            let c = encrypt(&dev, s, &m, k, &data).unwrap();
            assert_eq!(c, rc_cbc(&key, &iv, &data, true, false));
            assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), data);
            assert_eq!(
                decrypt(&dev, s, &m, k, &data).unwrap(),
                rc_cbc(&key, &iv, &data, false, false)
            );
        }
        for len in [0usize, 1, 15, 16, 17, 31, 32, 100] {
            let data = rng.bytes(len);
            let m = cbc(CKM_AES_CBC_PAD, &iv);
            let c = encrypt(&dev, s, &m, k, &data).unwrap();
            assert_eq!(c, rc_cbc(&key, &iv, &data, true, true));
            assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), data);
            let theirs = rc_cbc(&key, &iv, &data, true, true);
            assert_eq!(decrypt(&dev, s, &m, k, &theirs).unwrap(), data);
        }
    }
}

#[test]
fn block_modes_refuse_partial_blocks_and_bad_padding() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[0x70; 16]);
    let iv = [0u8; 16];
    for m in [Mechanism::new(CKM_AES_ECB), cbc(CKM_AES_CBC, &iv)] {
        assert_eq!(encrypt(&dev, s, &m, k, &[0; 31]), Err(Error::DataLenRange));
        assert_eq!(
            decrypt(&dev, s, &m, k, &[0; 31]),
            Err(Error::EncryptedDataLenRange)
        );
        // Multi-part: the remainder is refused by the final call.
        assert_eq!(
            encrypt_parts(&dev, s, &m, k, &[0; 31], &[10, 21]),
            Err(Error::DataLenRange)
        );
    }
    let m = cbc(CKM_AES_CBC_PAD, &iv);
    assert_eq!(
        decrypt(&dev, s, &m, k, &[0; 17]),
        Err(Error::EncryptedDataLenRange)
    );
    assert_eq!(
        decrypt(&dev, s, &m, k, &[]),
        Err(Error::EncryptedDataLenRange)
    );
    // A final block that decrypts to bad padding: one code.
    let mut c = encrypt(&dev, s, &m, k, b"sixteen bytes!!!").unwrap();
    c[31] ^= 0x55;
    assert_eq!(
        decrypt(&dev, s, &m, k, &c),
        Err(Error::EncryptedDataInvalid)
    );
    // Parameters.
    for bad in [
        Mechanism::new(CKM_AES_CBC),
        cbc(CKM_AES_CBC, &[0; 15]),
        cbc(CKM_AES_CBC_PAD, &[0; 17]),
        Mechanism::with(CKM_AES_ECB, MechanismParams::Bytes(vec![0; 16])),
    ] {
        assert_eq!(
            dev.encrypt_init(s, &bad, k),
            Err(Error::MechanismParamInvalid)
        );
    }
}

#[test]
fn multi_part_equals_single_part_with_exact_update_lengths() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(7);
    let key = rng.bytes(32);
    let k = aes(&dev, s, &key);
    let iv = rng.bytes(16);
    let data = rng.bytes(16 * 9);
    let chunks = [5usize, 16, 1, 30, 40, 0, 52];
    // Cumulative input per update, to predict whole-block output.
    let cum: Vec<usize> = chunks
        .iter()
        .scan(0usize, |acc, c| {
            *acc = (*acc + c).min(data.len());
            Some(*acc)
        })
        .collect();
    let mut cum = cum;
    *cum.last_mut().unwrap() = data.len();
    let blocks_out = |hold_back: bool| -> Vec<usize> {
        let mut done = 0;
        cum.iter()
            .map(|c| {
                let ready = if hold_back {
                    c.saturating_sub(1) / 16 * 16
                } else {
                    c / 16 * 16
                };
                let n = ready - done;
                done = ready;
                n
            })
            .collect()
    };
    for (ty, enc_final, dec_hold) in [
        (CKM_AES_ECB, 0, false),
        (CKM_AES_CBC, 0, false),
        (CKM_AES_CBC_PAD, 16, true),
    ] {
        let m = if ty == CKM_AES_ECB {
            Mechanism::new(ty)
        } else {
            cbc(ty, &iv)
        };
        let single = encrypt(&dev, s, &m, k, &data).unwrap();
        let (multi, lens) = encrypt_parts(&dev, s, &m, k, &data, &chunks).unwrap();
        assert_eq!(multi, single, "0x{ty:x}");
        let mut want = blocks_out(false);
        want.push(enc_final);
        assert_eq!(lens, want, "0x{ty:x} encrypt update lengths");
        let (plain, lens) = decrypt_parts(&dev, s, &m, k, &single, &chunks).unwrap();
        assert_eq!(plain, data);
        if dec_hold {
            // The held-back block comes out of the final call, unpadded (16 bytes of padding
            // here: the input is block aligned, so the last ciphertext block is all padding).
            let mut want = blocks_out(true);
            // The last update sees all of `data` but the padding block is extra input.
            let total = single.len();
            let done: usize = want.iter().sum();
            *want.last_mut().unwrap() += (total - 1) / 16 * 16 - done;
            want.push(0);
            assert_eq!(lens, want, "cbc_pad decrypt update lengths");
        } else {
            let mut want = blocks_out(false);
            want.push(0);
            assert_eq!(lens, want);
        }
    }
    // CTR: every update returns exactly its input length.
    let m = ctr(128, rng.bytes(16).try_into().unwrap());
    let single = encrypt(&dev, s, &m, k, &data).unwrap();
    let (multi, lens) = encrypt_parts(&dev, s, &m, k, &data, &chunks).unwrap();
    assert_eq!(multi, single);
    let mut want: Vec<usize> = cum
        .iter()
        .scan(0, |d, c| {
            let n = c - *d;
            *d = *c;
            Some(n)
        })
        .collect();
    want.push(0);
    assert_eq!(lens, want);
    let (plain, _) = decrypt_parts(&dev, s, &m, k, &single, &[3, 17, 100]).unwrap();
    assert_eq!(plain, data);
}

#[test]
fn length_query_and_short_buffer_keep_the_operation() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[1; 16]);
    let m = cbc(CKM_AES_CBC_PAD, &[0; 16]);
    dev.encrypt_init(s, &m, k).unwrap();
    assert_eq!(dev.encrypt(s, &[7; 20], None), Ok(32));
    let mut small = [0u8; 8];
    assert_eq!(
        dev.encrypt(s, &[7; 20], Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 32 })
    );
    let mut buf = [0u8; 32];
    assert_eq!(dev.encrypt(s, &[7; 20], Some(&mut buf)), Ok(32));
    assert_eq!(
        dev.encrypt(s, &[7; 20], Some(&mut buf)),
        Err(Error::OperationNotInitialized)
    );
    // Decrypt: the bound is the input length; the exact length comes back.
    dev.decrypt_init(s, &m, k).unwrap();
    assert_eq!(dev.decrypt(s, &buf, None), Ok(32));
    let mut small = [0u8; 4];
    assert_eq!(
        dev.decrypt(s, &buf, Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 20 })
    );
    let mut out = [0u8; 20];
    assert_eq!(dev.decrypt(s, &buf, Some(&mut out)), Ok(20));
    assert_eq!(out, [7; 20]);
    // Update: exact whole-block length.
    dev.encrypt_init(s, &m, k).unwrap();
    assert_eq!(dev.encrypt_update(s, &[1; 40], None), Ok(32));
    let mut small = [0u8; 16];
    assert_eq!(
        dev.encrypt_update(s, &[1; 40], Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 32 })
    );
    let mut buf = [0u8; 32];
    assert_eq!(dev.encrypt_update(s, &[1; 40], Some(&mut buf)), Ok(32));
    assert_eq!(dev.encrypt_final(s, None), Ok(16));
    let mut fin = [0u8; 16];
    assert_eq!(dev.encrypt_final(s, Some(&mut fin)), Ok(16));
}

#[test]
fn wycheproof_aes_cbc_pkcs5() {
    let (_d, dev, s) = ready();
    let set = wycheproof::cipher::TestSet::load(wycheproof::cipher::TestName::AesCbcPkcs5).unwrap();
    let mut n = 0;
    for g in &set.test_groups {
        for t in &g.tests {
            let k = aes(&dev, s, &t.key);
            let m = cbc(CKM_AES_CBC_PAD, &t.nonce);
            let got = decrypt(&dev, s, &m, k, &t.ct);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(got.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                    assert_eq!(
                        encrypt(&dev, s, &m, k, &t.pt).unwrap(),
                        t.ct.to_vec(),
                        "tc {}",
                        t.tc_id
                    );
                }
                TestResult::Invalid => {
                    assert!(
                        matches!(
                            got,
                            Err(Error::EncryptedDataInvalid | Error::EncryptedDataLenRange)
                        ),
                        "tc {}: {got:?}",
                        t.tc_id
                    );
                }
            }
            dev.destroy_object(s, k).unwrap();
            n += 1;
        }
    }
    assert!(n > 100);
}

// ---- CTR ----------------------------------------------------------------------------------------

#[test]
fn ctr_agrees_with_rustcrypto_and_refuses_counter_wrap() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(99);
    for key_len in [16, 24, 32] {
        let key = rng.bytes(key_len);
        let k = aes(&dev, s, &key);
        for len in [0usize, 1, 16, 33, 100] {
            let cb: [u8; 16] = rng.bytes(16).try_into().unwrap();
            let data = rng.bytes(len);
            let c = encrypt(&dev, s, &ctr(128, cb), k, &data).unwrap();
            assert_eq!(c, rc_ctr(&key, &cb, &data));
            assert_eq!(decrypt(&dev, s, &ctr(128, cb), k, &c).unwrap(), data);
            // With 64 counter bits and no wrap, the stream is the same.
            let mut cb64 = cb;
            cb64[8] = 0;
            assert_eq!(
                encrypt(&dev, s, &ctr(64, cb64), k, &data).unwrap(),
                rc_ctr(&key, &cb64, &data)
            );
        }
    }
    // pkcs11-tool master: CK_AES_CTR_PARAMS{ulCounterBits=128, cb=IV}, against OpenSSL's CTR.
    let k = aes(&dev, s, &[0x70; 16]);
    let mut cb = [0u8; 16];
    cb[15] = 0xfe; // 8 counter bits: blocks 0xfe and 0xff are left.
    assert_eq!(
        encrypt(&dev, s, &ctr(8, cb), k, &[0; 32]).unwrap().len(),
        32
    );
    assert_eq!(
        encrypt(&dev, s, &ctr(8, cb), k, &[0; 33]),
        Err(Error::DataLenRange)
    );
    assert_eq!(
        decrypt(&dev, s, &ctr(8, cb), k, &[0; 33]),
        Err(Error::EncryptedDataLenRange)
    );
    // Multi-part counts across updates; partial blocks use the same key-stream block.
    assert_eq!(
        encrypt_parts(&dev, s, &ctr(8, cb), k, &[0; 32], &[7, 9, 16])
            .unwrap()
            .0
            .len(),
        32
    );
    assert_eq!(
        encrypt_parts(&dev, s, &ctr(8, cb), k, &[0; 33], &[7, 9, 17]),
        Err(Error::DataLenRange)
    );
    cb[15] = 0xff;
    cb[14] = 0xff;
    let max = [0xffu8; 16];
    assert_eq!(
        encrypt(&dev, s, &ctr(128, max), k, &[0; 16]).unwrap().len(),
        16
    );
    assert_eq!(
        encrypt(&dev, s, &ctr(128, max), k, &[0; 17]),
        Err(Error::DataLenRange)
    );
    for bits in [0, 129] {
        assert_eq!(
            dev.encrypt_init(s, &ctr(bits, cb), k),
            Err(Error::MechanismParamInvalid)
        );
    }
    assert_eq!(
        dev.encrypt_init(s, &cbc(CKM_AES_CTR, &[0; 16]), k),
        Err(Error::MechanismParamInvalid)
    );
}

// ---- GCM ----------------------------------------------------------------------------------------

#[test]
fn wycheproof_aes_gcm_all_iv_and_tag_sizes() {
    let (_d, dev, s) = ready();
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut odd_iv = 0;
    for g in &set.test_groups {
        for t in &g.tests {
            let k = aes(&dev, s, &t.key);
            let bits = CK_ULONG::try_from(g.tag_size).unwrap();
            let m = gcm(&t.nonce, &t.aad, bits);
            let mut ct = t.ct.to_vec();
            ct.extend_from_slice(&t.tag);
            let got = decrypt(&dev, s, &m, k, &ct);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(got.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                    assert_eq!(
                        encrypt(&dev, s, &m, k, &t.pt).unwrap(),
                        ct,
                        "tc {}",
                        t.tc_id
                    );
                    if t.nonce.len() != 12 {
                        odd_iv += 1;
                    }
                }
                TestResult::Invalid => {
                    let want = if t.nonce.is_empty() {
                        Error::MechanismParamInvalid
                    } else {
                        Error::EncryptedDataInvalid
                    };
                    assert_eq!(got, Err(want), "tc {} {:?}", t.tc_id, t.flags);
                }
            }
            dev.destroy_object(s, k).unwrap();
        }
    }
    assert!(odd_iv > 10, "non-96-bit IVs exercised: {odd_iv}");
}

#[test]
fn gcm_agrees_with_rustcrypto_for_iv_and_tag_lengths() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(4242);
    for key_len in [16, 24, 32] {
        let key = rng.bytes(key_len);
        let k = aes(&dev, s, &key);
        for (iv_len, tag) in [(12, 16), (12, 12), (12, 13), (8, 16), (16, 16), (16, 12)] {
            for len in [0usize, 1, 16, 65] {
                let iv = rng.bytes(iv_len);
                let aad_len = rng.below(40);
                let aad = rng.bytes(aad_len);
                let pt = rng.bytes(len);
                let bits = CK_ULONG::try_from(tag * 8).unwrap();
                let m = gcm(&iv, &aad, bits);
                let ours = encrypt(&dev, s, &m, k, &pt).unwrap();
                let theirs = rc_gcm_seal(&key, &iv, &aad, &pt, tag);
                assert_eq!(ours, theirs, "iv {iv_len} tag {tag} len {len}");
                assert_eq!(decrypt(&dev, s, &m, k, &theirs).unwrap(), pt);
                // Multi-part: updates return nothing, the final call everything.
                let (multi, lens) = encrypt_parts(&dev, s, &m, k, &pt, &[3, 20]).unwrap();
                assert_eq!(multi, ours);
                assert_eq!(&lens[..2], &[0, 0]);
                let (plain, lens) = decrypt_parts(&dev, s, &m, k, &ours, &[5, 9]).unwrap();
                assert_eq!(plain, pt);
                assert_eq!(&lens[..2], &[0, 0]);
            }
        }
        // Tags of 32 and 64 bits (SP 800-38D special cases): truncations of the full tag.
        let iv = rng.bytes(12);
        let full = encrypt(&dev, s, &gcm(&iv, b"a", 128), k, b"message").unwrap();
        for bits in [32usize, 64, 96, 104, 112, 120] {
            let m = gcm(&iv, b"a", CK_ULONG::try_from(bits).unwrap());
            let c = encrypt(&dev, s, &m, k, b"message").unwrap();
            assert_eq!(c, full[..7 + bits / 8].to_vec());
            assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), b"message");
        }
    }
}

#[test]
fn gcm_tamper_and_parameter_codes() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[3; 32]);
    for iv in [vec![1u8; 12], vec![1u8; 7]] {
        let m = gcm(&iv, b"header", 128);
        let c = encrypt(&dev, s, &m, k, b"attack at dawn").unwrap();
        for i in [0, 5, c.len() - 1] {
            let mut t = c.clone();
            t[i] ^= 1;
            assert_eq!(
                decrypt(&dev, s, &m, k, &t),
                Err(Error::EncryptedDataInvalid)
            );
        }
        assert_eq!(
            decrypt(&dev, s, &gcm(&iv, b"Header", 128), k, &c),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            decrypt(&dev, s, &m, k, &c[..15]),
            Err(Error::EncryptedDataLenRange)
        );
        // Multi-part: the failure comes from the final call, one code.
        assert_eq!(
            decrypt_parts(&dev, s, &m, k, &[&c[..c.len() - 1], &[0]].concat(), &[4]),
            Err(Error::EncryptedDataInvalid)
        );
    }
    for bad in [
        gcm(&[], b"", 128),
        gcm(&[0; 12], b"", 100),
        gcm(&[0; 12], b"", 0),
        gcm(&[0; 12], b"", 136),
    ] {
        assert_eq!(
            dev.encrypt_init(s, &bad, k),
            Err(Error::MechanismParamInvalid)
        );
    }
    assert_eq!(
        dev.encrypt_init(s, &cbc(CKM_AES_GCM, &[0; 12]), k),
        Err(Error::MechanismParamInvalid)
    );
}

#[test]
fn aes_mechanisms_refuse_other_key_types_before_usage_checks() {
    let (_d, dev, s) = ready();
    let g = secret(&dev, s, CKK_GENERIC_SECRET, &[1; 16]);
    for m in [
        Mechanism::new(CKM_AES_ECB),
        cbc(CKM_AES_CBC, &[0; 16]),
        gcm(&[0; 12], b"", 128),
        ctr(128, [0; 16]),
    ] {
        assert_eq!(dev.encrypt_init(s, &m, g), Err(Error::KeyTypeInconsistent));
    }
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_AES_CMAC), g),
        Err(Error::KeyTypeInconsistent)
    );
    let no_encrypt = secret_with(
        &dev,
        s,
        CKK_AES,
        &[1; 16],
        &[Attribute::bool(CKA_ENCRYPT, false)],
    );
    assert_eq!(
        dev.encrypt_init(s, &Mechanism::new(CKM_AES_ECB), no_encrypt),
        Err(Error::KeyFunctionNotPermitted)
    );
    // AES mechanisms are not signature mechanisms and the reverse.
    let k = aes(&dev, s, &[1; 16]);
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_AES_ECB), k),
        Err(Error::MechanismInvalid)
    );
    assert_eq!(
        dev.encrypt_init(s, &Mechanism::new(CKM_AES_CMAC), k),
        Err(Error::MechanismInvalid)
    );
}

// ---- CMAC ---------------------------------------------------------------------------------------

#[test]
fn wycheproof_aes_cmac_and_rustcrypto() {
    let (_d, dev, s) = ready();
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::AesCmac).unwrap();
    for g in &set.test_groups {
        for t in &g.tests {
            if !matches!(t.key.len(), 16 | 24 | 32) {
                // Invalid key sizes cannot even be created as AES keys.
                continue;
            }
            let k = aes(&dev, s, &t.key);
            let tag_len = g.tag_size / 8;
            let m = if tag_len == 16 {
                Mechanism::new(CKM_AES_CMAC)
            } else {
                Mechanism::with(
                    CKM_AES_CMAC_GENERAL,
                    MechanismParams::Ulong(CK_ULONG::try_from(tag_len).unwrap()),
                )
            };
            let r = verify(&dev, s, &m, k, &t.msg, &t.tag);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    r.unwrap();
                    assert_eq!(sign(&dev, s, &m, k, &t.msg).unwrap(), t.tag.to_vec());
                }
                TestResult::Invalid => assert!(
                    matches!(r, Err(Error::SignatureInvalid | Error::SignatureLenRange)),
                    "tc {}",
                    t.tc_id
                ),
            }
            dev.destroy_object(s, k).unwrap();
        }
    }
    let mut rng = Rng(1);
    for key_len in [16, 24, 32] {
        let key = rng.bytes(key_len);
        let k = aes(&dev, s, &key);
        for len in [0usize, 1, 16, 17, 100] {
            let data = rng.bytes(len);
            let m = Mechanism::new(CKM_AES_CMAC);
            let mac = sign(&dev, s, &m, k, &data).unwrap();
            assert_eq!(mac, rc_cmac(&key, &data));
            assert_eq!(sign_parts(&dev, s, &m, k, &data, 7).unwrap(), mac);
            verify_parts(&dev, s, &m, k, &data, &mac, 5).unwrap();
            let g = Mechanism::with(CKM_AES_CMAC_GENERAL, MechanismParams::Ulong(4));
            assert_eq!(sign(&dev, s, &g, k, &data).unwrap(), mac[..4].to_vec());
        }
        let m = Mechanism::new(CKM_AES_CMAC);
        let mac = sign(&dev, s, &m, k, b"x").unwrap();
        let mut bad = mac.clone();
        bad[0] ^= 1;
        assert_eq!(
            verify(&dev, s, &m, k, b"x", &bad),
            Err(Error::SignatureInvalid)
        );
        assert_eq!(
            verify(&dev, s, &m, k, b"x", &mac[..15]),
            Err(Error::SignatureLenRange)
        );
        for n in [0, 17] {
            let g = Mechanism::with(CKM_AES_CMAC_GENERAL, MechanismParams::Ulong(n));
            assert_eq!(dev.sign_init(s, &g, k), Err(Error::MechanismParamInvalid));
        }
    }
}

// ---- key wrap -----------------------------------------------------------------------------------

fn kw(ty: CK_MECHANISM_TYPE) -> Mechanism {
    Mechanism::new(ty)
}

fn kw_iv(ty: CK_MECHANISM_TYPE, iv: &[u8]) -> Mechanism {
    Mechanism::with(ty, MechanismParams::Bytes(iv.to_vec()))
}

#[test]
fn wycheproof_aes_kw_and_kwp_as_ciphers() {
    let (_d, dev, s) = ready();
    for (name, ty) in [
        (wycheproof::keywrap::TestName::AesKeyWrap, CKM_AES_KEY_WRAP),
        (
            wycheproof::keywrap::TestName::AesKeyWrapWithPadding,
            CKM_AES_KEY_WRAP_KWP,
        ),
    ] {
        let set = wycheproof::keywrap::TestSet::load(name).unwrap();
        for g in &set.test_groups {
            for t in &g.tests {
                let k = aes(&dev, s, &t.key);
                let got = decrypt(&dev, s, &kw(ty), k, &t.ct);
                match t.result {
                    TestResult::Valid => {
                        assert_eq!(got.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                        assert_eq!(encrypt(&dev, s, &kw(ty), k, &t.pt).unwrap(), t.ct.to_vec());
                    }
                    TestResult::Acceptable | TestResult::Invalid => {
                        if let Ok(p) = &got {
                            // "Acceptable" vectors (small inputs) may unwrap; never wrongly.
                            assert_eq!(p, &t.pt.to_vec(), "tc {}", t.tc_id);
                            assert!(t.result == TestResult::Acceptable, "tc {}", t.tc_id);
                        } else {
                            assert!(
                                matches!(
                                    got,
                                    Err(Error::EncryptedDataInvalid | Error::EncryptedDataLenRange)
                                ),
                                "tc {} {got:?}",
                                t.tc_id
                            );
                        }
                    }
                }
                dev.destroy_object(s, k).unwrap();
            }
        }
    }
}

fn pkcs7(data: &[u8], size: usize) -> Vec<u8> {
    let n = size - data.len() % size;
    let mut v = data.to_vec();
    v.resize(data.len() + n, u8::try_from(n).unwrap());
    v
}

#[test]
fn key_wrap_ciphers_agree_with_rustcrypto_aes_kw() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(77);
    for key_len in [16, 24, 32] {
        let key = rng.bytes(key_len);
        let k = aes(&dev, s, &key);
        macro_rules! kek {
            ($c:ty) => {
                aes_kw::Kek::<$c>::new(key.as_slice().into())
            };
        }
        for len in [1usize, 7, 8, 9, 16, 24, 31, 40] {
            let data = rng.bytes(len);
            let kwp = by_key!(key, C => kek!(C).wrap_with_padding_vec(&data).unwrap());
            // KWP, and PAD by default, are RFC 5649; PAD takes RFC 5649 back too.
            for ty in [CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD] {
                assert_eq!(encrypt(&dev, s, &kw(ty), k, &data).unwrap(), kwp);
                assert_eq!(decrypt(&dev, s, &kw(ty), k, &kwp).unwrap(), data);
            }
            assert_eq!(
                encrypt(
                    &dev,
                    s,
                    &kw_iv(CKM_AES_KEY_WRAP_PAD, &[0xa6, 0x59, 0x59, 0xa6]),
                    k,
                    &data
                )
                .unwrap(),
                kwp
            );
            let padded = pkcs7(&data, 8);
            if padded.len() >= 16 {
                let want = by_key!(key, C => kek!(C).wrap_vec(&padded).unwrap());
                assert_eq!(
                    encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP_PKCS7), k, &data).unwrap(),
                    want
                );
                // PAD opens the PKCS#7 form as well; with v2.40's 8-byte IV it is that form.
                for m in [
                    kw(CKM_AES_KEY_WRAP_PKCS7),
                    kw(CKM_AES_KEY_WRAP_PAD),
                    kw_iv(CKM_AES_KEY_WRAP_PAD, &[0xa6; 8]),
                ] {
                    assert_eq!(
                        decrypt(&dev, s, &m, k, &want).unwrap(),
                        data,
                        "0x{:x}",
                        m.ty
                    );
                }
                assert_eq!(
                    encrypt(&dev, s, &kw_iv(CKM_AES_KEY_WRAP_PAD, &[0xa6; 8]), k, &data).unwrap(),
                    want
                );
                // Each explicit reading refuses the other form: one code.
                assert_eq!(
                    decrypt(&dev, s, &kw_iv(CKM_AES_KEY_WRAP_PAD, &[0xa6; 8]), k, &kwp),
                    Err(if kwp.len() >= 24 {
                        Error::EncryptedDataInvalid
                    } else {
                        Error::EncryptedDataLenRange
                    })
                );
                assert_eq!(
                    decrypt(
                        &dev,
                        s,
                        &kw_iv(CKM_AES_KEY_WRAP_PAD, &[0xa6, 0x59, 0x59, 0xa6]),
                        k,
                        &want
                    ),
                    Err(Error::EncryptedDataInvalid)
                );
            } else {
                assert_eq!(
                    encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP_PKCS7), k, &data),
                    Err(Error::DataLenRange)
                );
            }
            if len % 8 == 0 && len >= 16 {
                let want = by_key!(key, C => kek!(C).wrap_vec(&data).unwrap());
                assert_eq!(
                    encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &data).unwrap(),
                    want
                );
                assert_eq!(
                    decrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &want).unwrap(),
                    data
                );
            } else {
                assert_eq!(
                    encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &data),
                    Err(Error::DataLenRange)
                );
            }
        }
        // A padding that is not PKCS#7 after a valid RFC 3394 unwrap: one code.
        let not_padded = by_key!(key, C => kek!(C).wrap_vec(&[0x11u8; 16]).unwrap());
        assert_eq!(
            decrypt(&dev, s, &kw(CKM_AES_KEY_WRAP_PAD), k, &not_padded),
            Err(Error::EncryptedDataInvalid)
        );
    }
    // Key wrap is single-part only.
    let k = aes(&dev, s, &[9; 16]);
    dev.encrypt_init(s, &kw(CKM_AES_KEY_WRAP), k).unwrap();
    assert_eq!(
        dev.encrypt_update(s, &[0; 16], None),
        Err(Error::FunctionNotSupported)
    );
}

/// `CKM_AES_KEY_WRAP_PAD` is RFC 5649 by default (SoftHSMv2, OpenSSL's `id-aes*-wrap-pad`) and
/// unwraps both forms; the strict personality keeps v2.40's PKCS#7 + RFC 3394 only. RFC 5649 §6
/// known answer: 192-bit KEK, 20-byte key.
#[test]
fn key_wrap_pad_reading_by_personality() {
    let kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
    let key = hex("c37b7e6492584340bed12207808941155068f738");
    let rfc5649 = hex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
    let pkcs7_form = {
        let c = aes_kw::KekAes192::new(kek.as_slice().into());
        c.wrap_vec(&pkcs7(&key, 8)).unwrap()
    };
    let template = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    let pad = kw(CKM_AES_KEY_WRAP_PAD);

    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &kek);
    let g = secret(&dev, s, CKK_GENERIC_SECRET, &key);
    assert_eq!(
        two_call(|out| dev.wrap_key(s, &pad, k, g, out)).unwrap(),
        rfc5649
    );
    for blob in [&rfc5649, &pkcs7_form] {
        let new = dev.unwrap_key(s, &pad, k, blob, &template).unwrap();
        assert_eq!(value(&dev, s, new), key);
    }
    // Every failure of either reading is one code; a length neither takes is its own.
    for blob in [&rfc5649, &pkcs7_form] {
        for i in [0, 8, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                dev.unwrap_key(s, &pad, k, &bad, &template),
                Err(Error::WrappedKeyInvalid)
            );
        }
    }
    assert_eq!(
        dev.unwrap_key(s, &pad, k, &rfc5649[..20], &template),
        Err(Error::WrappedKeyLenRange)
    );

    let strict = config::FirmwareConfig {
        personality: config::Personality::Strict,
        ..config()
    };
    let (_d, dev, s) = ready_with(&strict);
    let k = aes(&dev, s, &kek);
    assert_eq!(encrypt(&dev, s, &pad, k, &key).unwrap(), pkcs7_form);
    assert_eq!(decrypt(&dev, s, &pad, k, &pkcs7_form).unwrap(), key);
    assert_eq!(
        decrypt(&dev, s, &pad, k, &rfc5649),
        Err(Error::EncryptedDataInvalid)
    );
    // The explicit RFC 5649 mechanism is there for RFC 5649.
    assert_eq!(
        encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP_KWP), k, &key).unwrap(),
        rfc5649
    );
}

#[test]
fn key_wrap_iv_parameter() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[9; 16]);
    let data = [0x11u8; 24];
    let iv = vec![1, 2, 3, 4, 5, 6, 7, 8];
    let m = Mechanism::with(CKM_AES_KEY_WRAP, MechanismParams::Bytes(iv.clone()));
    let c = encrypt(&dev, s, &m, k, &data).unwrap();
    assert_ne!(
        c,
        encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &data).unwrap()
    );
    assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), data);
    // The wrong IV fails the integrity check.
    assert_eq!(
        decrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &c),
        Err(Error::EncryptedDataInvalid)
    );
    // The default IV given explicitly is the default.
    let explicit = Mechanism::with(CKM_AES_KEY_WRAP, MechanismParams::Bytes(vec![0xa6; 8]));
    assert_eq!(
        encrypt(&dev, s, &explicit, k, &data).unwrap(),
        encrypt(&dev, s, &kw(CKM_AES_KEY_WRAP), k, &data).unwrap()
    );
    let kwp = Mechanism::with(
        CKM_AES_KEY_WRAP_KWP,
        MechanismParams::Bytes(vec![1, 2, 3, 4]),
    );
    let c = encrypt(&dev, s, &kwp, k, b"hello").unwrap();
    assert_eq!(decrypt(&dev, s, &kwp, k, &c).unwrap(), b"hello");
    assert_eq!(
        decrypt(&dev, s, &kw(CKM_AES_KEY_WRAP_KWP), k, &c),
        Err(Error::EncryptedDataInvalid)
    );
    for bad in [
        Mechanism::with(CKM_AES_KEY_WRAP, MechanismParams::Bytes(vec![0; 4])),
        Mechanism::with(CKM_AES_KEY_WRAP_KWP, MechanismParams::Bytes(vec![0; 8])),
        Mechanism::with(CKM_AES_KEY_WRAP, MechanismParams::Ulong(8)),
    ] {
        assert_eq!(
            dev.encrypt_init(s, &bad, k),
            Err(Error::MechanismParamInvalid)
        );
    }
}

/// Every wrap mechanism: wrap an AES key, unwrap it as a new key, and prove the new key is the
/// same by encrypting with both.
#[test]
fn wrap_and_unwrap_an_aes_key_with_every_wrap_mechanism() {
    let (_d, dev, s) = ready();
    let kek = aes(&dev, s, &[0x42; 32]);
    let target_value = [0x70u8; 32];
    let target = aes(&dev, s, &target_value);
    let mechs = [
        Mechanism::new(CKM_AES_ECB),
        cbc(CKM_AES_CBC, &[1; 16]),
        cbc(CKM_AES_CBC_PAD, &[2; 16]),
        ctr(128, [3; 16]),
        gcm(&[4; 12], b"wrap", 128),
        gcm(&[4; 16], b"", 96),
        kw(CKM_AES_KEY_WRAP),
        kw(CKM_AES_KEY_WRAP_PAD),
        kw(CKM_AES_KEY_WRAP_KWP),
        kw(CKM_AES_KEY_WRAP_PKCS7),
    ];
    let template = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    for m in &mechs {
        let wrapped = two_call(|out| dev.wrap_key(s, m, kek, target, out)).unwrap();
        // Wrapping is encrypting the key value (the cipher view of the same mechanism).
        assert_eq!(
            encrypt(&dev, s, m, kek, &target_value).unwrap(),
            wrapped,
            "0x{:x}",
            m.ty
        );
        let new = dev.unwrap_key(s, m, kek, &wrapped, &template).unwrap();
        assert_eq!(value(&dev, s, new), target_value.to_vec(), "0x{:x}", m.ty);
        let probe = Mechanism::new(CKM_AES_ECB);
        assert_eq!(
            encrypt(&dev, s, &probe, new, &[0; 16]).unwrap(),
            encrypt(&dev, s, &probe, target, &[0; 16]).unwrap()
        );
        // A tampered blob (where the mechanism authenticates) is one code.
        if matches!(
            m.ty,
            CKM_AES_GCM
                | CKM_AES_KEY_WRAP
                | CKM_AES_KEY_WRAP_PAD
                | CKM_AES_KEY_WRAP_KWP
                | CKM_AES_KEY_WRAP_PKCS7
        ) {
            let mut bad = wrapped.clone();
            bad[0] ^= 1;
            assert_eq!(
                dev.unwrap_key(s, m, kek, &bad, &template),
                Err(Error::WrappedKeyInvalid),
                "0x{:x}",
                m.ty
            );
        }
    }
    // A key length that is not a block multiple is refused as ciphertext before decryption.
    assert_eq!(
        dev.unwrap_key(s, &Mechanism::new(CKM_AES_ECB), kek, &[0; 20], &template),
        Err(Error::WrappedKeyLenRange)
    );
    // A generic secret of 20 bytes: padded by ECB/KW, exact with the padding mechanisms.
    let g = secret(&dev, s, CKK_GENERIC_SECRET, &[5; 20]);
    let gt = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    for m in [
        kw(CKM_AES_KEY_WRAP_KWP),
        kw(CKM_AES_KEY_WRAP_PAD),
        cbc(CKM_AES_CBC_PAD, &[0; 16]),
        ctr(128, [0; 16]),
    ] {
        let wrapped = two_call(|out| dev.wrap_key(s, &m, kek, g, out)).unwrap();
        let new = dev.unwrap_key(s, &m, kek, &wrapped, &gt).unwrap();
        assert_eq!(value(&dev, s, new), vec![5; 20], "0x{:x}", m.ty);
    }
    let wrapped = two_call(|out| dev.wrap_key(s, &kw(CKM_AES_KEY_WRAP), kek, g, out)).unwrap();
    assert_eq!(wrapped.len(), 24 + 8);
}

// ---- message-based encryption (3.0) --------------------------------------------------------------

fn msg_params(
    iv: Vec<u8>,
    fixed_bits: CK_ULONG,
    generator: CK_ULONG,
    tag: Vec<u8>,
    tag_bits: CK_ULONG,
) -> MechanismParams {
    MechanismParams::GcmMessage {
        iv,
        iv_fixed_bits: fixed_bits,
        iv_generator: generator,
        tag,
        tag_bits,
    }
}

fn msg_iv_tag(p: &MechanismParams) -> (Vec<u8>, Vec<u8>) {
    match p {
        MechanismParams::GcmMessage { iv, tag, .. } => (iv.clone(), tag.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn message_encrypt_with_generated_iv_then_decrypt() {
    let (_d, dev, s) = ready();
    let key = [0x33u8; 16];
    let k = aes(&dev, s, &key);
    let gcm_msg = Mechanism::new(CKM_AES_GCM);
    dev.message_encrypt_init(s, &gcm_msg, k).unwrap();
    dev.message_decrypt_init(s, &gcm_msg, k).unwrap();
    let pt = b"a message of some length".to_vec();

    // CKG_GENERATE with a 32-bit fixed field: the fixed bits stay, the rest is fresh.
    let fixed = vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut p = msg_params(fixed.clone(), 32, CKG_GENERATE, vec![0; 16], 128);
    assert_eq!(
        dev.encrypt_message(s, &mut p, b"aad", &pt, None),
        Ok(pt.len())
    );
    let ct = two_call(|out| dev.encrypt_message(s, &mut p, b"aad", &pt, out)).unwrap();
    let (iv, tag) = msg_iv_tag(&p);
    assert_eq!(&iv[..4], &fixed[..4]);
    assert_ne!(iv, fixed);
    assert_eq!(tag.len(), 16);
    // The same message under C_Encrypt with the generated IV: ct ‖ tag.
    let whole = encrypt(&dev, s, &gcm(&iv, b"aad", 128), k, &pt).unwrap();
    assert_eq!(whole, [ct.clone(), tag.clone()].concat());
    assert_eq!(whole, rc_gcm_seal(&key, &iv, b"aad", &pt, 16));

    let mut dp = msg_params(iv.clone(), 0, CKG_NO_GENERATE, tag.clone(), 128);
    let plain = two_call(|out| dev.decrypt_message(s, &mut dp, b"aad", &ct, out)).unwrap();
    assert_eq!(plain, pt);
    // Tampered tag, ciphertext or AAD: CKR_AEAD_DECRYPT_FAILED (the 3.0 code for this API).
    let mut bad_tag = tag.clone();
    bad_tag[3] ^= 1;
    let mut dp = msg_params(iv.clone(), 0, CKG_NO_GENERATE, bad_tag, 128);
    let mut out = vec![0u8; ct.len()];
    assert_eq!(
        dev.decrypt_message(s, &mut dp, b"aad", &ct, Some(&mut out)),
        Err(Error::AeadDecryptFailed)
    );
    let mut dp = msg_params(iv.clone(), 0, CKG_NO_GENERATE, tag.clone(), 128);
    assert_eq!(
        dev.decrypt_message(s, &mut dp, b"AAD", &ct, Some(&mut out)),
        Err(Error::AeadDecryptFailed)
    );
    // The process survives a failed message.
    assert_eq!(
        dev.decrypt_message(s, &mut dp, b"aad", &ct, Some(&mut out)),
        Ok(ct.len())
    );

    // CKG_GENERATE_COUNTER: the non-fixed part counts from zero.
    let mut ivs = Vec::new();
    for _ in 0..3 {
        let mut p = msg_params(vec![0xaa; 12], 64, CKG_GENERATE_COUNTER, vec![0; 12], 96);
        two_call(|out| dev.encrypt_message(s, &mut p, b"", b"x", out)).unwrap();
        let (iv, tag) = msg_iv_tag(&p);
        assert_eq!(tag.len(), 12);
        ivs.push(iv);
    }
    assert_eq!(ivs[0], [vec![0xaa; 8], vec![0, 0, 0, 0]].concat());
    assert_eq!(ivs[2], [vec![0xaa; 8], vec![0, 0, 0, 2]].concat());

    // Multi-part: Begin, Next (no output: buffered), Next(last) with everything and the tag.
    let mut p = msg_params(vec![0; 12], 0, CKG_GENERATE_RANDOM, vec![0; 16], 128);
    dev.encrypt_message_begin(s, &mut p, b"hdr").unwrap();
    assert_eq!(
        dev.encrypt_message(s, &mut p, b"", b"", None),
        Err(Error::OperationActive)
    );
    assert_eq!(
        dev.encrypt_message_begin(s, &mut p, b"hdr"),
        Err(Error::OperationActive)
    );
    let first = two_call(|out| dev.encrypt_message_next(s, &mut p, &pt[..10], out, false)).unwrap();
    assert!(first.is_empty());
    assert_eq!(
        dev.encrypt_message_next(s, &mut p, &pt[10..], None, true),
        Ok(pt.len())
    );
    let mut small = vec![0u8; 3];
    assert_eq!(
        dev.encrypt_message_next(s, &mut p, &pt[10..], Some(&mut small), true),
        Err(Error::BufferTooSmall { needed: pt.len() })
    );
    let rest = two_call(|out| dev.encrypt_message_next(s, &mut p, &pt[10..], out, true)).unwrap();
    let (iv, tag) = msg_iv_tag(&p);
    assert_eq!(
        rest,
        encrypt(&dev, s, &gcm(&iv, b"hdr", 128), k, &pt).unwrap()[..pt.len()].to_vec()
    );
    assert_eq!(
        dev.encrypt_message_next(s, &mut p, b"", None, true),
        Err(Error::OperationNotInitialized)
    );
    // Decrypt in parts.
    let mut dp = msg_params(iv, 0, 0, tag, 128);
    dev.decrypt_message_begin(s, &mut dp, b"hdr").unwrap();
    let a = two_call(|out| dev.decrypt_message_next(s, &mut dp, &rest[..5], out, false)).unwrap();
    let b = two_call(|out| dev.decrypt_message_next(s, &mut dp, &rest[5..], out, true)).unwrap();
    assert_eq!([a, b].concat(), pt);

    dev.message_encrypt_final(s).unwrap();
    dev.message_decrypt_final(s).unwrap();
    assert_eq!(
        dev.message_encrypt_final(s),
        Err(Error::OperationNotInitialized)
    );
    let mut p = msg_params(vec![0; 12], 0, CKG_GENERATE, vec![0; 16], 128);
    assert_eq!(
        dev.encrypt_message(s, &mut p, b"", b"", None),
        Err(Error::OperationNotInitialized)
    );
}

#[test]
fn message_init_follows_the_encrypt_init_rules() {
    let (_d, dev, s) = ready();
    let k = aes(&dev, s, &[1; 32]);
    let m = Mechanism::new(CKM_AES_GCM);
    dev.message_encrypt_init(s, &m, k).unwrap();
    assert_eq!(
        dev.message_encrypt_init(s, &m, k),
        Err(Error::OperationActive)
    );
    dev.message_encrypt_final(s).unwrap();
    // Mechanisms without CKF_MESSAGE_ENCRYPT.
    assert_eq!(
        dev.message_encrypt_init(s, &cbc(CKM_AES_CBC, &[0; 16]), k),
        Err(Error::MechanismInvalid)
    );
    // Key type before usage; usage attribute per direction.
    let g = secret(&dev, s, CKK_GENERIC_SECRET, &[1; 32]);
    assert_eq!(
        dev.message_encrypt_init(s, &m, g),
        Err(Error::KeyTypeInconsistent)
    );
    let no_enc = secret_with(
        &dev,
        s,
        CKK_AES,
        &[1; 32],
        &[Attribute::bool(CKA_ENCRYPT, false)],
    );
    assert_eq!(
        dev.message_encrypt_init(s, &m, no_enc),
        Err(Error::KeyFunctionNotPermitted)
    );
    dev.message_decrypt_init(s, &m, no_enc).unwrap();
    let no_dec = secret_with(
        &dev,
        s,
        CKK_AES,
        &[1; 32],
        &[Attribute::bool(CKA_DECRYPT, false)],
    );
    assert_eq!(
        dev.message_decrypt_init(s, &m, no_dec),
        Err(Error::OperationActive)
    );
    dev.message_decrypt_final(s).unwrap();
    assert_eq!(
        dev.message_decrypt_init(s, &m, no_dec),
        Err(Error::KeyFunctionNotPermitted)
    );
    assert_eq!(
        dev.message_encrypt_init(s, &m, ObjectHandle(0xdead)),
        Err(Error::KeyHandleInvalid)
    );
    // Allowed mechanisms.
    let only_cbc = secret_with(
        &dev,
        s,
        CKK_AES,
        &[1; 32],
        &[Attribute::bytes(
            CKA_ALLOWED_MECHANISMS,
            CKM_AES_CBC.to_ne_bytes().to_vec(),
        )],
    );
    assert_eq!(
        dev.message_encrypt_init(s, &m, only_cbc),
        Err(Error::MechanismInvalid)
    );
    // Per-message parameter problems.
    dev.message_encrypt_init(s, &m, k).unwrap();
    for bad in [
        msg_params(vec![], 0, CKG_NO_GENERATE, vec![0; 16], 128),
        msg_params(vec![0; 12], 0, CKG_NO_GENERATE, vec![0; 16], 100),
        msg_params(vec![0; 12], 97, CKG_GENERATE, vec![0; 16], 128),
        msg_params(vec![0; 12], 64, CKG_GENERATE_RANDOM, vec![0; 16], 128),
        msg_params(vec![0; 12], 0, 99, vec![0; 16], 128),
    ] {
        let mut p = bad;
        let mut out = [0u8; 4];
        assert_eq!(
            dev.encrypt_message(s, &mut p, b"", b"abcd", Some(&mut out)),
            Err(Error::MechanismParamInvalid)
        );
    }
    let mut p = gcm(&[0; 12], b"", 128).params;
    let mut out = [0u8; 4];
    assert_eq!(
        dev.encrypt_message(s, &mut p, b"", b"abcd", Some(&mut out)),
        Err(Error::MechanismParamInvalid)
    );
    // A counter that runs out of non-fixed bits.
    let mut p = msg_params(vec![0; 4], 31, CKG_GENERATE_COUNTER, vec![0; 16], 128);
    dev.encrypt_message(s, &mut p, b"", b"a", Some(&mut out))
        .unwrap();
    let mut p = msg_params(vec![0; 4], 31, CKG_GENERATE_COUNTER, vec![0; 16], 128);
    dev.encrypt_message(s, &mut p, b"", b"a", Some(&mut out))
        .unwrap();
    let mut p = msg_params(vec![0; 4], 31, CKG_GENERATE_COUNTER, vec![0; 16], 128);
    assert_eq!(
        dev.encrypt_message(s, &mut p, b"", b"a", Some(&mut out)),
        Err(Error::MechanismParamInvalid)
    );
    // Cancel clears the message context.
    dev.session_cancel(s, CKF_MESSAGE_ENCRYPT).unwrap();
    assert_eq!(
        dev.message_encrypt_final(s),
        Err(Error::OperationNotInitialized)
    );
}

/// CKA_CHECK_VALUE: the token computes it (first three bytes of AES-ECB of a zero block,
/// cross-checked with RustCrypto); a supplied value must match; an empty one asks for none.
#[test]
fn check_value_is_computed_and_a_wrong_one_refused() {
    let (_dir, dev, s) = ready();
    let key: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(37)).collect();
    let expected = rc_ecb(&key, &[0u8; 16], true)[..3].to_vec();
    let k = aes(&dev, s, &key);
    match &dev.get_attribute_value(s, k, &[CKA_CHECK_VALUE]).unwrap()[0] {
        AttrAnswer::Value(AttrValue::Bytes(b)) => assert_eq!(*b, expected),
        other => panic!("{other:?}"),
    }
    let given = |v: Vec<u8>| {
        let t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::bytes(CKA_VALUE, key.clone()))
            .with(Attribute::bytes(CKA_CHECK_VALUE, v));
        dev.create_object(s, &t)
    };
    assert!(given(expected.clone()).is_ok());
    assert!(given(Vec::new()).is_ok());
    assert!(matches!(
        given(vec![0, 0, 0]),
        Err(Error::AttributeValueInvalid)
    ));
}
