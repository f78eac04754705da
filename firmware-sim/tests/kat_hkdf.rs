//! HKDF and PBKDF2 through the `Device` API: Wycheproof vectors, RFC 5869, RustCrypto `hkdf`
//! cross-checks for extract-only / expand-only / both and every salt type, a derived key put
//! to use, and the codes.

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "sym/mod.rs"]
mod sym;

use bridge::*;
use cryptoki_sys::*;
use hmac::{Hmac, Mac};
use sym::*;
use wycheproof::TestResult;

#[allow(clippy::too_many_arguments)]
fn hkdf(
    extract: bool,
    expand: bool,
    prf: CK_MECHANISM_TYPE,
    salt_type: CK_ULONG,
    salt: &[u8],
    salt_key: CK_OBJECT_HANDLE,
    info: &[u8],
) -> MechanismParams {
    MechanismParams::Hkdf {
        extract,
        expand,
        prf_hash: prf,
        salt_type,
        salt: salt.to_vec(),
        salt_key,
        info: info.to_vec(),
    }
}

fn data_template(len: usize) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_DATA))
        .with(Attribute::ulong(
            CKA_VALUE_LEN,
            CK_ULONG::try_from(len).unwrap(),
        ))
}

fn key_template(key_type: CK_KEY_TYPE, len: Option<usize>) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bool(CKA_DERIVE, true))
        .with(Attribute::bool(CKA_ENCRYPT, true));
    if let Some(n) = len {
        t.0.push(Attribute::ulong(
            CKA_VALUE_LEN,
            CK_ULONG::try_from(n).unwrap(),
        ));
    }
    t
}

fn derive(
    dev: &Device,
    s: SessionHandle,
    ty: CK_MECHANISM_TYPE,
    p: MechanismParams,
    base: ObjectHandle,
    t: &Template,
) -> Result<ObjectHandle> {
    dev.derive_key(s, &Mechanism::with(ty, p), base, t)
}

use firmware_sim::Device;

#[test]
fn wycheproof_hkdf_as_data_objects() {
    let (_d, dev, s) = ready();
    for (name, prf) in [
        (wycheproof::hkdf::TestName::HkdfSha1, CKM_SHA_1),
        (wycheproof::hkdf::TestName::HkdfSha256, CKM_SHA256),
        (wycheproof::hkdf::TestName::HkdfSha384, CKM_SHA384),
        (wycheproof::hkdf::TestName::HkdfSha512, CKM_SHA512),
    ] {
        let set = wycheproof::hkdf::TestSet::load(name).unwrap();
        let mut n = 0;
        for g in &set.test_groups {
            for t in &g.tests {
                if t.ikm.is_empty() {
                    continue;
                }
                let base = secret(&dev, s, CKK_GENERIC_SECRET, &t.ikm);
                let p = hkdf(true, true, prf, CKF_HKDF_SALT_DATA, &t.salt, 0, &t.info);
                let r = derive(&dev, s, CKM_HKDF_DATA, p, base, &data_template(t.size));
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        let o = r.unwrap();
                        assert_eq!(value(&dev, s, o), t.okm.to_vec(), "tc {}", t.tc_id);
                        dev.destroy_object(s, o).unwrap();
                    }
                    TestResult::Invalid => {
                        assert_eq!(r, Err(Error::KeySizeRange), "tc {}", t.tc_id)
                    }
                }
                dev.destroy_object(s, base).unwrap();
                n += 1;
            }
        }
        assert!(n > 50);
    }
}

#[test]
fn rfc5869_case_1_derive_then_use_the_key() {
    let (_d, dev, s) = ready();
    let ikm = hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    let salt = hex("000102030405060708090a0b0c");
    let info = hex("f0f1f2f3f4f5f6f7f8f9");
    let okm =
        hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    let prk = hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
    let base = secret(&dev, s, CKK_HKDF, &ikm);
    // Both steps.
    let p = hkdf(true, true, CKM_SHA256, CKF_HKDF_SALT_DATA, &salt, 0, &info);
    let k = derive(
        &dev,
        s,
        CKM_HKDF_DERIVE,
        p,
        base,
        &key_template(CKK_GENERIC_SECRET, Some(42)),
    )
    .unwrap();
    assert_eq!(value(&dev, s, k), okm);
    // The derived key is an ordinary generic secret: HMAC with it equals RustCrypto's.
    let mac = sign(&dev, s, &Mechanism::new(CKM_SHA256_HMAC), k, b"use me").unwrap();
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&okm).unwrap();
    m.update(b"use me");
    assert_eq!(mac, m.finalize().into_bytes().to_vec());
    // Extract only: the PRK (its length is implied).
    let p = hkdf(true, false, CKM_SHA256, CKF_HKDF_SALT_DATA, &salt, 0, &info);
    let k = derive(
        &dev,
        s,
        CKM_HKDF_DERIVE,
        p,
        base,
        &key_template(CKK_HKDF, None),
    )
    .unwrap();
    assert_eq!(value(&dev, s, k), prk);
    // Expand only, from that PRK.
    let p = hkdf(false, true, CKM_SHA256, CKF_HKDF_SALT_NULL, &[], 0, &info);
    let k2 = derive(
        &dev,
        s,
        CKM_HKDF_DERIVE,
        p,
        k,
        &key_template(CKK_GENERIC_SECRET, Some(42)),
    )
    .unwrap();
    assert_eq!(value(&dev, s, k2), okm);
    // An AES key as the output type, used for AES.
    let p = hkdf(true, true, CKM_SHA256, CKF_HKDF_SALT_DATA, &salt, 0, &info);
    let a = derive(
        &dev,
        s,
        CKM_HKDF_DERIVE,
        p,
        base,
        &key_template(CKK_AES, Some(32)),
    )
    .unwrap();
    assert_eq!(value(&dev, s, a), okm[..32].to_vec());
    let c = encrypt(&dev, s, &Mechanism::new(CKM_AES_ECB), a, &[0; 16]).unwrap();
    assert_eq!(c.len(), 16);
}

#[test]
fn hkdf_salt_types_and_hashes_agree_with_rustcrypto() {
    let (_d, dev, s) = ready();
    let mut rng = Rng(5869);
    macro_rules! rc {
        ($d:ty, $salt:expr, $ikm:expr, $info:expr, $len:expr) => {{
            let h = hkdf::Hkdf::<$d>::new($salt, $ikm);
            let mut out = vec![0u8; $len];
            h.expand($info, &mut out).unwrap();
            out
        }};
    }
    for prf in [CKM_SHA_1, CKM_SHA256, CKM_SHA384, CKM_SHA512] {
        let ikm = rng.bytes(40);
        let base = secret(&dev, s, CKK_GENERIC_SECRET, &ikm);
        let salt = rng.bytes(20);
        let salt_key = secret(&dev, s, CKK_GENERIC_SECRET, &salt);
        let info = rng.bytes(10);
        for (salt_type, handle, rc_salt) in [
            (CKF_HKDF_SALT_NULL, 0, None),
            (CKF_HKDF_SALT_DATA, 0, Some(salt.as_slice())),
            (CKF_HKDF_SALT_KEY, salt_key.0, Some(salt.as_slice())),
        ] {
            let data = if salt_type == CKF_HKDF_SALT_DATA {
                salt.as_slice()
            } else {
                &[]
            };
            let p = hkdf(true, true, prf, salt_type, data, handle, &info);
            let o = derive(&dev, s, CKM_HKDF_DATA, p, base, &data_template(70)).unwrap();
            let want = match prf {
                CKM_SHA_1 => rc!(sha1::Sha1, rc_salt, &ikm, &info, 70),
                CKM_SHA256 => rc!(sha2::Sha256, rc_salt, &ikm, &info, 70),
                CKM_SHA384 => rc!(sha2::Sha384, rc_salt, &ikm, &info, 70),
                _ => rc!(sha2::Sha512, rc_salt, &ikm, &info, 70),
            };
            assert_eq!(value(&dev, s, o), want, "prf 0x{prf:x} salt {salt_type}");
        }
    }
}

#[test]
fn hkdf_codes() {
    let (_d, dev, s) = ready();
    let base = secret(&dev, s, CKK_GENERIC_SECRET, &[1; 32]);
    let t = key_template(CKK_GENERIC_SECRET, Some(32));
    let ok = hkdf(true, true, CKM_SHA256, CKF_HKDF_SALT_NULL, &[], 0, b"");
    derive(&dev, s, CKM_HKDF_DERIVE, ok.clone(), base, &t).unwrap();
    for bad in [
        hkdf(false, false, CKM_SHA256, CKF_HKDF_SALT_NULL, &[], 0, b""),
        hkdf(true, true, CKM_SHA224, CKF_HKDF_SALT_NULL, &[], 0, b""),
        hkdf(true, true, CKM_SHA3_256, CKF_HKDF_SALT_NULL, &[], 0, b""),
        hkdf(true, true, CKM_AES_ECB, CKF_HKDF_SALT_NULL, &[], 0, b""),
        hkdf(true, true, CKM_SHA256, 8, &[], 0, b""),
        MechanismParams::Bytes(vec![0; 8]),
    ] {
        assert_eq!(
            derive(&dev, s, CKM_HKDF_DERIVE, bad, base, &t),
            Err(Error::MechanismParamInvalid)
        );
    }
    // A salt key that is not usable for derivation.
    let no_derive = secret_with(
        &dev,
        s,
        CKK_GENERIC_SECRET,
        &[2; 16],
        &[Attribute::bool(CKA_DERIVE, false)],
    );
    let p = hkdf(
        true,
        true,
        CKM_SHA256,
        CKF_HKDF_SALT_KEY,
        &[],
        no_derive.0,
        b"",
    );
    assert_eq!(
        derive(&dev, s, CKM_HKDF_DERIVE, p, base, &t),
        Err(Error::MechanismParamInvalid)
    );
    // The class each mechanism makes.
    assert_eq!(
        derive(
            &dev,
            s,
            CKM_HKDF_DERIVE,
            ok.clone(),
            base,
            &data_template(16)
        ),
        Err(Error::TemplateInconsistent)
    );
    assert_eq!(
        derive(&dev, s, CKM_HKDF_DATA, ok.clone(), base, &t),
        Err(Error::TemplateInconsistent)
    );
    // Lengths.
    assert_eq!(
        derive(
            &dev,
            s,
            CKM_HKDF_DERIVE,
            ok.clone(),
            base,
            &key_template(CKK_GENERIC_SECRET, None)
        ),
        Err(Error::TemplateIncomplete)
    );
    assert_eq!(
        derive(
            &dev,
            s,
            CKM_HKDF_DATA,
            ok.clone(),
            base,
            &data_template(255 * 32 + 1)
        ),
        Err(Error::KeySizeRange)
    );
    let extract_only = hkdf(true, false, CKM_SHA256, CKF_HKDF_SALT_NULL, &[], 0, b"");
    assert_eq!(
        derive(
            &dev,
            s,
            CKM_HKDF_DERIVE,
            extract_only,
            base,
            &key_template(CKK_GENERIC_SECRET, Some(16))
        ),
        Err(Error::TemplateInconsistent)
    );
    // Base key types: HKDF and generic secrets only; key type before usage.
    let a = aes(&dev, s, &[1; 32]);
    assert_eq!(
        derive(&dev, s, CKM_HKDF_DERIVE, ok.clone(), a, &t),
        Err(Error::KeyTypeInconsistent)
    );
    let no = secret_with(
        &dev,
        s,
        CKK_HKDF,
        &[1; 32],
        &[Attribute::bool(CKA_DERIVE, false)],
    );
    assert_eq!(
        derive(&dev, s, CKM_HKDF_DERIVE, ok, no, &t),
        Err(Error::KeyFunctionNotPermitted)
    );
}

#[test]
fn hkdf_key_gen() {
    let (_d, dev, s) = ready();
    let m = Mechanism::new(CKM_HKDF_KEY_GEN);
    let k = dev
        .generate_key(s, &m, &key_template(CKK_HKDF, Some(32)))
        .unwrap();
    assert_eq!(value(&dev, s, k).len(), 32);
    assert_eq!(
        dev.generate_key(s, &m, &key_template(CKK_HKDF, None)),
        Err(Error::TemplateIncomplete)
    );
    assert_eq!(
        dev.generate_key(s, &m, &key_template(CKK_GENERIC_SECRET, Some(32))),
        Err(Error::TemplateInconsistent)
    );
    // The generated key derives.
    let p = hkdf(true, true, CKM_SHA256, CKF_HKDF_SALT_NULL, &[], 0, b"ctx");
    derive(
        &dev,
        s,
        CKM_HKDF_DERIVE,
        p,
        k,
        &key_template(CKK_AES, Some(16)),
    )
    .unwrap();
}

fn pbkd2(prf: CK_ULONG, password: &[u8], salt: &[u8], iterations: CK_ULONG) -> Mechanism {
    Mechanism::with(
        CKM_PKCS5_PBKD2,
        MechanismParams::Pbkdf2 {
            salt_source: CKZ_SALT_SPECIFIED,
            salt: salt.to_vec(),
            iterations,
            prf,
            prf_data: Vec::new(),
            password: password.to_vec(),
        },
    )
}

#[test]
fn wycheproof_pbkdf2_as_key_generation() {
    let (_d, dev, s) = ready();
    for (name, prf) in [
        (
            wycheproof::pbkdf2::TestName::Pbkdf2HmacSha1,
            CKP_PKCS5_PBKD2_HMAC_SHA1,
        ),
        (
            wycheproof::pbkdf2::TestName::Pbkdf2HmacSha256,
            CKP_PKCS5_PBKD2_HMAC_SHA256,
        ),
        (
            wycheproof::pbkdf2::TestName::Pbkdf2HmacSha512,
            CKP_PKCS5_PBKD2_HMAC_SHA512,
        ),
    ] {
        let set = wycheproof::pbkdf2::TestSet::load(name).unwrap();
        let mut n = 0;
        for g in &set.test_groups {
            for t in &g.tests {
                // Keep the run short: small iteration counts and key-sized outputs.
                if t.iteration_count > 4096
                    || t.dk_len == 0
                    || t.dk_len > 512
                    || t.result != TestResult::Valid
                {
                    continue;
                }
                let m = pbkd2(
                    prf,
                    &t.password,
                    &t.salt,
                    CK_ULONG::try_from(t.iteration_count).unwrap(),
                );
                let k = dev
                    .generate_key(s, &m, &key_template(CKK_GENERIC_SECRET, Some(t.dk_len)))
                    .unwrap();
                assert_eq!(value(&dev, s, k), t.dk.to_vec(), "tc {}", t.tc_id);
                dev.destroy_object(s, k).unwrap();
                n += 1;
            }
        }
        assert!(n > 5, "{n}");
    }
    // RFC 6070 case 2, as an AES key.
    let m = pbkd2(CKP_PKCS5_PBKD2_HMAC_SHA1, b"password", b"salt", 2);
    let k = dev
        .generate_key(s, &m, &key_template(CKK_AES, Some(16)))
        .unwrap();
    assert_eq!(value(&dev, s, k), hex("ea6c014dc72d6f8ccd1ed92ace1d41f0"));
    assert_eq!(
        dev.generate_key(s, &m, &key_template(CKK_AES, Some(20))),
        Err(Error::AttributeValueInvalid)
    );
    let no_type = Template::new().with(Attribute::ulong(CKA_VALUE_LEN, 16));
    assert_eq!(
        dev.generate_key(s, &m, &no_type),
        Err(Error::TemplateIncomplete)
    );
    for bad in [
        pbkd2(CKP_PKCS5_PBKD2_HMAC_SHA1, b"p", b"s", 0),
        pbkd2(CKP_PKCS5_PBKD2_HMAC_GOSTR3411, b"p", b"s", 1),
        Mechanism::new(CKM_PKCS5_PBKD2),
    ] {
        assert_eq!(
            dev.generate_key(s, &bad, &key_template(CKK_GENERIC_SECRET, Some(16))),
            Err(Error::MechanismParamInvalid)
        );
    }
}
