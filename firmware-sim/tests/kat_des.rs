//! Triple DES through the `Device` API: SP 800-67's known answer, the modes against RustCrypto
//! `cbc`/`ecb` over `des` (the chaining here is the firmware's own), multi-part = single-part,
//! key generation (odd parity, no weak component), the parity rule on import and unwrap,
//! wrap/unwrap with every DES3 mode, the padding-oracle attack, and the legacy rule (absent
//! from the strict personality).

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "sym/mod.rs"]
mod sym;

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit};
use bridge::*;
use cryptoki_sys::*;
use des::TdesEde3;
use sym::*;

/// SP 800-67 Rev. 2, Appendix B: the three keys, and "The qufck brown fox jump" in ECB mode.
const SP800_67_KEY: &str = "0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123";
const SP800_67_PT: &str = "5468652071756663 6B2062726F776E20 666F78206A756D70";
const SP800_67_CT: &str = "A826FD8CE53B855F CCE21C8112256FE6 68D5C05DD9B6B900";

fn des3(dev: &firmware_sim::Device, s: SessionHandle, value: &[u8]) -> ObjectHandle {
    secret(
        dev,
        s,
        if value.len() == 16 {
            CKK_DES2
        } else {
            CKK_DES3
        },
        value,
    )
}

fn iv_mech(ty: CK_MECHANISM_TYPE, iv: &[u8]) -> Mechanism {
    Mechanism::with(ty, MechanismParams::Bytes(iv.to_vec()))
}

/// An odd-parity key of `len` bytes from `rng`.
fn parity_key(rng: &mut Rng, len: usize) -> Vec<u8> {
    rng.bytes(len)
        .into_iter()
        .map(|b| (b & 0xfe) | u8::from((b & 0xfe).count_ones() % 2 == 0))
        .collect()
}

/// The three-key form RustCrypto takes (a two-key key runs as K1 K2 K1).
fn ede3(key: &[u8]) -> Vec<u8> {
    if key.len() == 16 {
        [key, &key[..8]].concat()
    } else {
        key.to_vec()
    }
}

fn rc(key: &[u8], iv: Option<&[u8]>, data: &[u8], enc: bool, pad: bool) -> Vec<u8> {
    let k = ede3(key);
    match (iv, enc, pad) {
        (None, true, _) => ecb::Encryptor::<TdesEde3>::new_from_slice(&k)
            .unwrap()
            .encrypt_padded_vec_mut::<NoPadding>(data),
        (None, false, _) => ecb::Decryptor::<TdesEde3>::new_from_slice(&k)
            .unwrap()
            .decrypt_padded_vec_mut::<NoPadding>(data)
            .unwrap(),
        (Some(iv), true, true) => cbc::Encryptor::<TdesEde3>::new_from_slices(&k, iv)
            .unwrap()
            .encrypt_padded_vec_mut::<Pkcs7>(data),
        (Some(iv), true, false) => cbc::Encryptor::<TdesEde3>::new_from_slices(&k, iv)
            .unwrap()
            .encrypt_padded_vec_mut::<NoPadding>(data),
        (Some(iv), false, true) => cbc::Decryptor::<TdesEde3>::new_from_slices(&k, iv)
            .unwrap()
            .decrypt_padded_vec_mut::<Pkcs7>(data)
            .unwrap(),
        (Some(iv), false, false) => cbc::Decryptor::<TdesEde3>::new_from_slices(&k, iv)
            .unwrap()
            .decrypt_padded_vec_mut::<NoPadding>(data)
            .unwrap(),
    }
}

#[test]
fn sp800_67_known_answer() {
    let (_d, dev, s) = ready();
    let k = des3(&dev, s, &hex(SP800_67_KEY));
    let m = Mechanism::new(CKM_DES3_ECB);
    assert_eq!(
        encrypt(&dev, s, &m, k, &hex(SP800_67_PT)).unwrap(),
        hex(SP800_67_CT)
    );
    assert_eq!(
        decrypt(&dev, s, &m, k, &hex(SP800_67_CT)).unwrap(),
        hex(SP800_67_PT)
    );
}

#[test]
fn modes_agree_with_rustcrypto_and_multi_part_is_single_part() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(3333);
    for key_len in [16, 24] {
        let key = parity_key(&mut rng, key_len);
        let k = des3(&dev, s, &key);
        for len in [0usize, 8, 16, 40, 64] {
            let data = rng.bytes(len);
            let iv = rng.bytes(8);
            let ecb_m = Mechanism::new(CKM_DES3_ECB);
            let cbc_m = iv_mech(CKM_DES3_CBC, &iv);
            for (m, iv, pad) in [(&ecb_m, None, false), (&cbc_m, Some(&iv[..]), false)] {
                let c = encrypt(&dev, s, m, k, &data).unwrap();
                assert_eq!(c, rc(&key, iv, &data, true, pad), "{m:?} {len}");
                assert_eq!(decrypt(&dev, s, m, k, &c).unwrap(), data);
                let (multi, _) = encrypt_parts(&dev, s, m, k, &data, &[3, 9]).unwrap();
                assert_eq!(multi, c);
                let (plain, _) = decrypt_parts(&dev, s, m, k, &c, &[5, 8]).unwrap();
                assert_eq!(plain, data);
            }
        }
        for len in [0usize, 1, 7, 8, 9, 77] {
            let data = rng.bytes(len);
            let iv = rng.bytes(8);
            let m = iv_mech(CKM_DES3_CBC_PAD, &iv);
            let c = encrypt(&dev, s, &m, k, &data).unwrap();
            assert_eq!(c, rc(&key, Some(&iv), &data, true, true));
            assert_eq!(c.len(), (len / 8 + 1) * 8);
            assert_eq!(decrypt(&dev, s, &m, k, &c).unwrap(), data);
            let (multi, _) = encrypt_parts(&dev, s, &m, k, &data, &[1, 8]).unwrap();
            assert_eq!(multi, c);
            let (plain, lens) = decrypt_parts(&dev, s, &m, k, &c, &[8, 3]).unwrap();
            assert_eq!(plain, data);
            // The last block is held back until the final call (it may be the padding).
            assert_eq!(lens[0], 0);
        }
    }
}

#[test]
fn parameter_and_length_codes() {
    let (_d, dev, s) = ready();
    let k = des3(&dev, s, &hex(SP800_67_KEY));
    for bad in [
        iv_mech(CKM_DES3_CBC, &[0; 16]),
        iv_mech(CKM_DES3_CBC_PAD, &[0; 7]),
        Mechanism::new(CKM_DES3_CBC),
        iv_mech(CKM_DES3_ECB, &[0; 8]),
    ] {
        assert_eq!(
            dev.encrypt_init(s, &bad, k),
            Err(Error::MechanismParamInvalid),
            "{bad:?}"
        );
    }
    assert_eq!(
        encrypt(&dev, s, &Mechanism::new(CKM_DES3_ECB), k, &[0; 9]),
        Err(Error::DataLenRange)
    );
    let m = iv_mech(CKM_DES3_CBC_PAD, &[1; 8]);
    assert_eq!(
        decrypt(&dev, s, &m, k, &[0; 12]),
        Err(Error::EncryptedDataLenRange)
    );
    // DES3 mechanisms take DES2/DES3 keys only, before the usage attribute.
    let a = aes(&dev, s, &[1; 16]);
    assert_eq!(
        dev.encrypt_init(s, &Mechanism::new(CKM_DES3_ECB), a),
        Err(Error::KeyTypeInconsistent)
    );
    assert_eq!(
        dev.encrypt_init(s, &Mechanism::new(CKM_AES_ECB), k),
        Err(Error::KeyTypeInconsistent)
    );
}

fn keygen(
    dev: &firmware_sim::Device,
    s: SessionHandle,
    ty: CK_MECHANISM_TYPE,
    extra: &[Attribute],
) -> Result<ObjectHandle> {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bool(CKA_DECRYPT, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false));
    t.0.extend_from_slice(extra);
    dev.generate_key(s, &Mechanism::new(ty), &t)
}

#[test]
fn generated_keys_have_odd_parity_and_no_weak_component() {
    let (_d, dev, s) = ready();
    for (ty, key_type, len) in [
        (CKM_DES3_KEY_GEN, CKK_DES3, 24usize),
        (CKM_DES2_KEY_GEN, CKK_DES2, 16),
    ] {
        for _ in 0..20 {
            let k = keygen(&dev, s, ty, &[]).unwrap();
            let v = value(&dev, s, k);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|b| b.count_ones() % 2 == 1), "{v:02x?}");
            let parts: Vec<&[u8]> = v.chunks(8).collect();
            assert!(parts.windows(2).all(|w| w[0] != w[1]));
            let a = dev
                .get_attribute_value(s, k, &[CKA_KEY_TYPE, CKA_LOCAL])
                .unwrap();
            assert_eq!(
                a[0],
                AttrAnswer::Value(AttrValue::Bytes(key_type.to_ne_bytes().to_vec()))
            );
            assert_eq!(a[1], AttrAnswer::Value(AttrValue::Bytes(vec![1])));
            // And it works against RustCrypto.
            let c = encrypt(&dev, s, &Mechanism::new(CKM_DES3_ECB), k, &[7; 16]).unwrap();
            assert_eq!(c, rc(&v, None, &[7; 16], true, false));
        }
        let n = CK_ULONG::try_from(len).unwrap();
        assert!(keygen(&dev, s, ty, &[Attribute::ulong(CKA_VALUE_LEN, n)]).is_ok());
        assert_eq!(
            keygen(&dev, s, ty, &[Attribute::ulong(CKA_VALUE_LEN, 8)]),
            Err(Error::AttributeValueInvalid)
        );
        let i = dev.mechanism_info(SlotId(0), ty).unwrap();
        assert_eq!(
            (i.min_key_size, i.max_key_size, i.flags),
            (n, n, CKF_HW | CKF_GENERATE)
        );
    }
    for ty in [CKM_DES3_ECB, CKM_DES3_CBC, CKM_DES3_CBC_PAD] {
        let i = dev.mechanism_info(SlotId(0), ty).unwrap();
        assert_eq!(
            (i.min_key_size, i.max_key_size, i.flags),
            (
                16,
                24,
                CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP
            )
        );
    }
}

#[test]
fn import_and_unwrap_refuse_bad_parity_and_length() {
    let (_d, dev, s) = ready();
    let good = hex(SP800_67_KEY);
    let mut bad_parity = good.clone();
    bad_parity[5] ^= 1;
    for (key_type, v) in [
        (CKK_DES3, bad_parity.clone()),
        (CKK_DES3, good[..16].to_vec()),
        (CKK_DES2, good.clone()),
        (CKK_DES2, bad_parity[..16].to_vec()),
    ] {
        let t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
            .with(Attribute::bytes(CKA_VALUE, v));
        assert_eq!(dev.create_object(s, &t), Err(Error::AttributeValueInvalid));
    }
    // A key wrapped without parity (its bytes through a KEK) does not unwrap as DES3.
    let kek = aes(&dev, s, &[9; 32]);
    let m = Mechanism::with(CKM_AES_CBC_PAD, MechanismParams::Bytes(vec![2; 16]));
    let wrapped = encrypt(&dev, s, &m, kek, &bad_parity).unwrap();
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_DES3));
    assert_eq!(
        dev.unwrap_key(s, &m, kek, &wrapped, &t),
        Err(Error::WrappedKeyInvalid)
    );
    let wrapped = encrypt(&dev, s, &m, kek, &good).unwrap();
    assert!(dev.unwrap_key(s, &m, kek, &wrapped, &t).is_ok());
}

#[test]
fn wrap_and_unwrap_with_des3() {
    let (_d, dev, s) = ready();
    let kek = des3(&dev, s, &hex(SP800_67_KEY));
    let target_value = [0x3c; 24];
    let target = aes(&dev, s, &target_value);
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false));
    for m in [
        Mechanism::new(CKM_DES3_ECB),
        iv_mech(CKM_DES3_CBC, &[4; 8]),
        iv_mech(CKM_DES3_CBC_PAD, &[4; 8]),
    ] {
        let w = two_call(|out| dev.wrap_key(s, &m, kek, target, out)).unwrap();
        let h = dev.unwrap_key(s, &m, kek, &w, &t).unwrap();
        assert_eq!(value(&dev, s, h), target_value, "{m:?}");
    }
    // A DES3 key moves under an AES KEK and keeps its value.
    let aes_kek = aes(&dev, s, &[5; 16]);
    let kw = Mechanism::new(CKM_AES_KEY_WRAP_PAD);
    let w = two_call(|out| dev.wrap_key(s, &kw, aes_kek, kek, out)).unwrap();
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_DES3))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_ENCRYPT, true));
    let h = dev.unwrap_key(s, &kw, aes_kek, &w, &t).unwrap();
    assert_eq!(value(&dev, s, h), hex(SP800_67_KEY));
}

/// Attack: CBC-PAD unwrap as a padding oracle. Under a key without `CKA_UNWRAP` (and without
/// `CKA_DECRYPT`), good and bad padding get the same refusal, before any decryption; under a
/// key that may unwrap, every padding failure is one code.
#[test]
fn cbc_pad_unwrap_is_no_padding_oracle() {
    let (_d, dev, s) = ready();
    let value = hex(SP800_67_KEY);
    let m = iv_mech(CKM_DES3_CBC_PAD, &[6; 8]);
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET));
    // Ciphertexts whose last block decrypts to good and to bad padding.
    let good_pad = rc(&value, Some(&[6; 8]), &[1; 20], true, true);
    let bad_pad = rc(&value, Some(&[6; 8]), &[0x41; 24], true, false);
    let mut flipped = good_pad.clone();
    flipped[good_pad.len() - 9] ^= 0x01;
    let locked = secret_with(
        &dev,
        s,
        CKK_DES3,
        &value,
        &[
            Attribute::bool(CKA_UNWRAP, false),
            Attribute::bool(CKA_DECRYPT, false),
        ],
    );
    for ct in [&good_pad, &bad_pad, &flipped] {
        assert_eq!(
            dev.unwrap_key(s, &m, locked, ct, &t),
            Err(Error::KeyFunctionNotPermitted)
        );
        assert_eq!(
            decrypt(&dev, s, &m, locked, ct),
            Err(Error::KeyFunctionNotPermitted)
        );
    }
    let open = des3(&dev, s, &value);
    assert!(dev.unwrap_key(s, &m, open, &good_pad, &t).is_ok());
    for ct in [&bad_pad, &flipped] {
        assert_eq!(
            dev.unwrap_key(s, &m, open, ct, &t),
            Err(Error::WrappedKeyInvalid)
        );
    }
    assert_eq!(
        dev.unwrap_key(s, &m, open, &good_pad[..12], &t),
        Err(Error::WrappedKeyLenRange)
    );
}

/// Legacy mechanisms work by default and are absent from the strict personality.
#[test]
fn strict_personality_has_no_legacy_mechanism() {
    let (_d, dev, _s) = ready();
    let list = dev.mechanism_list(SlotId(0)).unwrap();
    for ty in [CKM_DES3_KEY_GEN, CKM_DES3_CBC_PAD, CKM_DES2_KEY_GEN] {
        assert!(list.contains(&ty), "0x{ty:x}");
    }
    let strict = config::FirmwareConfig {
        personality: config::Personality::Strict,
        ..config()
    };
    let (_d2, dev, s) = ready_with(&strict);
    let list = dev.mechanism_list(SlotId(0)).unwrap();
    let legacy = [
        CKM_DES2_KEY_GEN,
        CKM_DES3_KEY_GEN,
        CKM_DES3_ECB,
        CKM_DES3_CBC,
        CKM_DES3_CBC_PAD,
        CKM_MD5,
        CKM_MD5_HMAC,
        CKM_MD5_HMAC_GENERAL,
    ];
    for ty in legacy {
        assert!(!list.contains(&ty), "0x{ty:x} listed under strict");
        assert_eq!(
            dev.mechanism_info(SlotId(0), ty),
            Err(Error::MechanismInvalid)
        );
    }
    assert!(list.contains(&CKM_AES_CBC_PAD));
    assert_eq!(
        keygen(&dev, s, CKM_DES3_KEY_GEN, &[]),
        Err(Error::MechanismInvalid)
    );
    let k = des3(&dev, s, &hex(SP800_67_KEY));
    assert_eq!(
        dev.encrypt_init(s, &Mechanism::new(CKM_DES3_ECB), k),
        Err(Error::MechanismInvalid)
    );
    let aes_kek = aes(&dev, s, &[5; 16]);
    assert_eq!(
        dev.wrap_key(s, &iv_mech(CKM_DES3_CBC_PAD, &[0; 8]), k, aes_kek, None),
        Err(Error::MechanismInvalid)
    );
    assert_eq!(
        dev.digest_init(s, &Mechanism::new(CKM_MD5)),
        Err(Error::MechanismInvalid)
    );
}
