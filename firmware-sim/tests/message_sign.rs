//! The PKCS#11 3.0 message-based signing and verification functions (`C_MessageSignInit`,
//! `C_SignMessage`, `C_SignMessageBegin`/`Next`, `C_MessageSignFinal` and the verify twins)
//! for the asymmetric mechanisms: RSA PKCS#1 v1.5, raw RSA, PSS and their hashed forms, ECDSA
//! and its hashed forms, EdDSA. (HMAC and CMAC are covered in `kat_hmac.rs`.)
//!
//! A deterministic scheme's message signature must equal `C_Sign`'s; a randomized one must
//! verify with `C_Verify` and with RustCrypto; the regular operation and the message-based
//! process are independent; misuse has its exact return code.

// All of this crate is test code (clippy's allow-*-in-tests settings cover only `#[test]`
// functions, not their helpers).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use firmware_sim::Device;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384};

const SO: &[u8] = b"12345678";
const USER: &[u8] = b"1234";

fn ready() -> (tempfile::TempDir, Device, SessionHandle) {
    let dir = tempfile::tempdir().unwrap();
    let config = FirmwareConfig {
        pin_kdf_iterations: 1000,
        ..FirmwareConfig::default()
    };
    let dev = Device::open_home(dir.path(), &config).unwrap();
    let mut label = [b' '; 32];
    label[..3].copy_from_slice(b"msg");
    dev.init_token(SlotId(0), SO, &label).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.init_pin(s, USER).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    (dir, dev, s)
}

// ---- helpers --------------------------------------------------------------------------------

/// Runs an output-producing call the PKCS#11 way: length query, then the real call.
fn output(mut f: impl FnMut(Option<&mut [u8]>) -> Result<usize>) -> Result<Vec<u8>> {
    let n = f(None)?;
    let mut buf = vec![0u8; n];
    let m = f(Some(&mut buf))?;
    buf.truncate(m);
    Ok(buf)
}

fn get(dev: &Device, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match &dev.get_attribute_value(s, o, &[ty]).unwrap()[0] {
        AttrAnswer::Value(AttrValue::Bytes(b)) => b.clone(),
        other => panic!("0x{ty:x}: {other:?}"),
    }
}

/// The content of a DER OCTET STRING (`CKA_EC_POINT`).
fn octet_string_content(der: &[u8]) -> Vec<u8> {
    use der::Decode as _;
    der::asn1::OctetStringRef::from_der(der)
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn rsa_pair(
    dev: &Device,
    s: SessionHandle,
    private_extra: &[Attribute],
) -> (ObjectHandle, ObjectHandle) {
    let public = Template::new().with(Attribute::ulong(CKA_MODULUS_BITS, 2048));
    let mut private = Template::new();
    if !private_extra.iter().any(|a| a.ty == CKA_SIGN) {
        private.0.push(Attribute::bool(CKA_SIGN, true));
    }
    private.0.extend_from_slice(private_extra);
    dev.generate_key_pair(
        s,
        &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
        &public,
        &private,
    )
    .unwrap()
}

fn ec_pair(
    dev: &Device,
    s: SessionHandle,
    generator: CK_MECHANISM_TYPE,
    oid: &[u8],
) -> (ObjectHandle, ObjectHandle) {
    let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, oid.to_vec()));
    let private = Template::new().with(Attribute::bool(CKA_SIGN, true));
    dev.generate_key_pair(s, &Mechanism::new(generator), &public, &private)
        .unwrap()
}

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

fn rsa_public(dev: &Device, s: SessionHandle, public: ObjectHandle) -> RsaPublicKey {
    RsaPublicKey::new(
        BigUint::from_bytes_be(&get(dev, s, public, CKA_MODULUS)),
        BigUint::from_bytes_be(&get(dev, s, public, CKA_PUBLIC_EXPONENT)),
    )
    .unwrap()
}

fn pss(
    ty: CK_MECHANISM_TYPE,
    hash: CK_MECHANISM_TYPE,
    mgf: CK_RSA_PKCS_MGF_TYPE,
    salt: CK_ULONG,
) -> Mechanism {
    Mechanism::with(
        ty,
        MechanismParams::RsaPkcsPss {
            hash_alg: hash,
            mgf,
            salt_len: salt,
        },
    )
}

fn sign(dev: &Device, s: SessionHandle, m: &Mechanism, key: ObjectHandle, data: &[u8]) -> Vec<u8> {
    dev.sign_init(s, m, key).unwrap();
    output(|o| dev.sign(s, data, o)).unwrap()
}

fn verify(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
    dev.verify_init(s, m, key)?;
    dev.verify(s, data, sig)
}

fn no_params() -> MechanismParams {
    MechanismParams::None
}

/// One whole message through `C_SignMessage` (length query, then the call).
fn sign_message(dev: &Device, s: SessionHandle, data: &[u8]) -> Result<Vec<u8>> {
    output(|o| dev.sign_message(s, &mut no_params(), data, o))
}

/// One message in parts through `C_SignMessageBegin`/`C_SignMessageNext`; the last part
/// asks for the length first.
fn sign_message_parts(dev: &Device, s: SessionHandle, parts: &[&[u8]]) -> Result<Vec<u8>> {
    let (last, rest) = parts.split_last().unwrap();
    dev.sign_message_begin(s, &mut no_params())?;
    for p in rest {
        assert_eq!(
            dev.sign_message_next(s, &mut no_params(), p, false, None)?,
            0
        );
    }
    output(|o| dev.sign_message_next(s, &mut no_params(), last, true, o))
}

fn verify_message_parts(dev: &Device, s: SessionHandle, parts: &[&[u8]], sig: &[u8]) -> Result<()> {
    let (last, rest) = parts.split_last().unwrap();
    dev.verify_message_begin(s, &mut no_params())?;
    for p in rest {
        dev.verify_message_next(s, &mut no_params(), p, None)?;
    }
    dev.verify_message_next(s, &mut no_params(), last, Some(sig))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// DER DigestInfo for SHA-256 followed by the hash: what `CKM_RSA_PKCS` signs.
fn digest_info_sha256(data: &[u8]) -> Vec<u8> {
    let mut v = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    v.extend_from_slice(&sha256(data));
    v
}

const MESSAGES: [&[u8]; 3] = [
    b"first message",
    b"",
    b"the third message, somewhat longer than the others, split in parts below",
];

// ---- the mechanism table --------------------------------------------------------------------

#[test]
fn every_signature_mechanism_is_offered_for_messages_too() {
    let (_d, dev, _s) = ready();
    let mut signing = 0;
    for ty in dev.mechanism_list(SlotId(0)).unwrap() {
        let f = dev.mechanism_info(SlotId(0), ty).unwrap().flags;
        assert_eq!(f & CKF_SIGN != 0, f & CKF_MESSAGE_SIGN != 0, "0x{ty:x}");
        assert_eq!(f & CKF_VERIFY != 0, f & CKF_MESSAGE_VERIFY != 0, "0x{ty:x}");
        signing += usize::from(f & CKF_SIGN != 0);
    }
    // RSA: PKCS, X.509, PSS, 5 hashed PKCS, 5 hashed PSS; ECDSA and 5 hashed forms; EdDSA;
    // HMAC and CMAC (checked in their own tests) make up the rest.
    assert!(signing >= 20, "{signing}");
    for ty in [
        CKM_RSA_PKCS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_ECDSA_SHA384,
        CKM_EDDSA,
    ] {
        let f = dev.mechanism_info(SlotId(0), ty).unwrap().flags;
        assert_eq!(
            f & (CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY),
            CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY
        );
    }
}

// ---- deterministic schemes: equal to C_Sign ---------------------------------------------------

#[test]
fn rsa_pkcs1_message_signatures_equal_c_sign_and_cross_check() {
    let (_d, dev, s) = ready();
    let (public, private) = rsa_pair(&dev, s, &[]);
    let rc = rsa_public(&dev, s, public);
    let hashed = [
        CKM_SHA1_RSA_PKCS,
        CKM_SHA224_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
    ];
    for ty in hashed {
        let m = Mechanism::new(ty);
        let want: Vec<Vec<u8>> = MESSAGES
            .iter()
            .map(|d| sign(&dev, s, &m, private, d))
            .collect();
        dev.message_sign_init(s, &m, private).unwrap();
        for (d, w) in MESSAGES.iter().zip(&want) {
            assert_eq!(&sign_message(&dev, s, d).unwrap(), w, "0x{ty:x}");
        }
        // In parts: the same signature as in one part.
        let whole = MESSAGES[2];
        let parts: [&[u8]; 3] = [&whole[..10], &whole[10..11], &whole[11..]];
        assert_eq!(sign_message_parts(&dev, s, &parts).unwrap(), want[2]);
        assert_eq!(sign_message_parts(&dev, s, &[b"", whole]).unwrap(), want[2]);
        dev.message_sign_final(s).unwrap();

        dev.message_verify_init(s, &m, public).unwrap();
        for (d, w) in MESSAGES.iter().zip(&want) {
            dev.verify_message(s, &mut no_params(), d, w).unwrap();
        }
        verify_message_parts(&dev, s, &parts, &want[2]).unwrap();
        dev.message_verify_final(s).unwrap();
    }
    // RustCrypto agrees (SHA-256 and SHA-384).
    dev.message_sign_init(s, &Mechanism::new(CKM_SHA256_RSA_PKCS), private)
        .unwrap();
    let sig = sign_message(&dev, s, MESSAGES[0]).unwrap();
    rc.verify(Pkcs1v15Sign::new::<Sha256>(), &sha256(MESSAGES[0]), &sig)
        .unwrap();
    dev.message_sign_final(s).unwrap();
    dev.message_sign_init(s, &Mechanism::new(CKM_SHA384_RSA_PKCS), private)
        .unwrap();
    let sig = sign_message_parts(&dev, s, &[b"ab", b"c"]).unwrap();
    rc.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(b"abc"), &sig)
        .unwrap();
    dev.message_sign_final(s).unwrap();

    // The single-part mechanisms: CKM_RSA_PKCS over a DigestInfo, raw RSA.
    let input = digest_info_sha256(b"abc");
    for (ty, data) in [
        (CKM_RSA_PKCS, input.clone()),
        (CKM_RSA_X_509, input.clone()),
    ] {
        let m = Mechanism::new(ty);
        let want = sign(&dev, s, &m, private, &data);
        dev.message_sign_init(s, &m, private).unwrap();
        assert_eq!(sign_message(&dev, s, &data).unwrap(), want, "0x{ty:x}");
        // No multi-part form (as for C_SignUpdate); the process stays usable.
        assert_eq!(
            dev.sign_message_begin(s, &mut no_params()),
            Err(Error::FunctionNotSupported)
        );
        assert_eq!(
            dev.sign_message_next(s, &mut no_params(), &data, true, None),
            Err(Error::OperationNotInitialized)
        );
        assert_eq!(sign_message(&dev, s, &data).unwrap(), want);
        dev.message_sign_final(s).unwrap();
        dev.message_verify_init(s, &m, public).unwrap();
        dev.verify_message(s, &mut no_params(), &data, &want)
            .unwrap();
        assert_eq!(
            dev.verify_message_begin(s, &mut no_params()),
            Err(Error::FunctionNotSupported)
        );
        dev.message_verify_final(s).unwrap();
    }
    let sig = {
        dev.message_sign_init(s, &Mechanism::new(CKM_RSA_PKCS), private)
            .unwrap();
        let sig = sign_message(&dev, s, &input).unwrap();
        dev.message_sign_final(s).unwrap();
        sig
    };
    rc.verify(Pkcs1v15Sign::new::<Sha256>(), &sha256(b"abc"), &sig)
        .unwrap();
}

#[test]
fn eddsa_message_signatures_equal_c_sign_and_cross_check() {
    use ed25519_dalek::Verifier as _;
    let (_d, dev, s) = ready();
    let (public, private) = ec_pair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, ED25519);
    let point: [u8; 32] = octet_string_content(&get(&dev, s, public, CKA_EC_POINT))
        .try_into()
        .unwrap();
    let dalek = ed25519_dalek::VerifyingKey::from_bytes(&point).unwrap();
    // Pure Ed25519, named with or without its (empty) parameter at init.
    for m in [
        Mechanism::new(CKM_EDDSA),
        Mechanism::with(
            CKM_EDDSA,
            MechanismParams::Eddsa {
                ph_flag: false,
                context: vec![],
            },
        ),
    ] {
        let want: Vec<Vec<u8>> = MESSAGES
            .iter()
            .map(|d| sign(&dev, s, &m, private, d))
            .collect();
        dev.message_sign_init(s, &m, private).unwrap();
        for (d, w) in MESSAGES.iter().zip(&want) {
            let sig = sign_message(&dev, s, d).unwrap();
            assert_eq!(&sig, w);
            dalek
                .verify(d, &ed25519_dalek::Signature::from_slice(&sig).unwrap())
                .unwrap();
        }
        let whole = MESSAGES[2];
        assert_eq!(
            sign_message_parts(&dev, s, &[&whole[..5], &whole[5..]]).unwrap(),
            want[2]
        );
        dev.message_sign_final(s).unwrap();
        dev.message_verify_init(s, &m, public).unwrap();
        for (d, w) in MESSAGES.iter().zip(&want) {
            dev.verify_message(s, &mut no_params(), d, w).unwrap();
        }
        verify_message_parts(&dev, s, &[&whole[..7], b"", &whole[7..]], &want[2]).unwrap();
        assert_eq!(
            dev.verify_message(s, &mut no_params(), b"other", &want[0]),
            Err(Error::SignatureInvalid)
        );
        assert_eq!(
            dev.verify_message(s, &mut no_params(), MESSAGES[0], &want[0][..63]),
            Err(Error::SignatureLenRange)
        );
        dev.message_verify_final(s).unwrap();
    }
}

// ---- randomized schemes: verify like C_Sign's --------------------------------------------------

#[test]
fn rsa_pss_message_signatures_verify_everywhere() {
    let (_d, dev, s) = ready();
    let (public, private) = rsa_pair(&dev, s, &[]);
    let rc = rsa_public(&dev, s, public);
    let rc_pss = |hash: &str| match hash {
        "sha256" => Pss {
            blinded: false,
            digest: Box::new(Sha256::default()),
            salt_len: 32,
        },
        _ => Pss {
            blinded: false,
            digest: Box::new(Sha384::default()),
            salt_len: 48,
        },
    };
    let sha256_pss = pss(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32);
    let sha384_pss = pss(CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384, CKG_MGF1_SHA384, 48);
    for (m, hash) in [(&sha256_pss, "sha256"), (&sha384_pss, "sha384")] {
        let digest = |d: &[u8]| -> Vec<u8> {
            if hash == "sha256" {
                sha256(d)
            } else {
                Sha384::digest(d).to_vec()
            }
        };
        dev.message_sign_init(s, m, private).unwrap();
        let sigs: Vec<Vec<u8>> = MESSAGES
            .iter()
            .map(|d| sign_message(&dev, s, d).unwrap())
            .collect();
        let whole = MESSAGES[2];
        let parts_sig = sign_message_parts(&dev, s, &[&whole[..3], &whole[3..]]).unwrap();
        dev.message_sign_final(s).unwrap();
        for (d, sig) in MESSAGES.iter().zip(&sigs) {
            assert_eq!(sig.len(), 256);
            verify(&dev, s, m, public, d, sig).unwrap();
            rc.verify(rc_pss(hash), &digest(d), sig).unwrap();
        }
        verify(&dev, s, m, public, whole, &parts_sig).unwrap();
        rc.verify(rc_pss(hash), &digest(whole), &parts_sig).unwrap();
        // And the other way: C_Sign's signature verifies message by message.
        let regular = sign(&dev, s, m, private, whole);
        dev.message_verify_init(s, m, public).unwrap();
        dev.verify_message(s, &mut no_params(), whole, &regular)
            .unwrap();
        verify_message_parts(&dev, s, &[&whole[..1], &whole[1..]], &parts_sig).unwrap();
        for (d, sig) in MESSAGES.iter().zip(&sigs) {
            dev.verify_message(s, &mut no_params(), d, sig).unwrap();
        }
        let mut bad = sigs[0].clone();
        bad[100] ^= 1;
        assert_eq!(
            dev.verify_message(s, &mut no_params(), MESSAGES[0], &bad),
            Err(Error::SignatureInvalid)
        );
        dev.message_verify_final(s).unwrap();
    }
    // Raw PSS over a SHA-256 digest (single-part): the parameters come with the init.
    let raw = pss(CKM_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32);
    let h = sha256(b"abc");
    dev.message_sign_init(s, &raw, private).unwrap();
    let sig = sign_message(&dev, s, &h).unwrap();
    assert_eq!(
        dev.sign_message_begin(s, &mut no_params()),
        Err(Error::FunctionNotSupported)
    );
    dev.message_sign_final(s).unwrap();
    verify(&dev, s, &raw, public, &h, &sig).unwrap();
    verify(&dev, s, &sha256_pss, public, b"abc", &sig).unwrap();
    rc.verify(rc_pss("sha256"), &h, &sig).unwrap();
    // PSS parameters that do not fit are refused at init, leaving nothing initialized.
    let wrong = pss(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384, CKG_MGF1_SHA256, 32);
    assert_eq!(
        dev.message_sign_init(s, &wrong, private),
        Err(Error::MechanismParamInvalid)
    );
    assert_eq!(
        dev.sign_message(s, &mut no_params(), b"x", None),
        Err(Error::OperationNotInitialized)
    );
}

#[test]
fn ecdsa_message_signatures_verify_everywhere() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let (_d, dev, s) = ready();
    for oid in [P256, P384] {
        let (public, private) = ec_pair(&dev, s, CKM_EC_KEY_PAIR_GEN, oid);
        let point = octet_string_content(&get(&dev, s, public, CKA_EC_POINT));
        // RustCrypto over the hash whose length is the curve's.
        let rc_ok = |msg: &[u8], sig: &[u8]| -> bool {
            if oid == P256 {
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
                let sig = p256::ecdsa::Signature::from_slice(sig).unwrap();
                k.verify_prehash(&sha256(msg), &sig).is_ok()
            } else {
                let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
                let sig = p384::ecdsa::Signature::from_slice(sig).unwrap();
                k.verify_prehash(&Sha384::digest(msg), &sig).is_ok()
            }
        };
        let (hashed, n) = if oid == P256 {
            (CKM_ECDSA_SHA256, 32)
        } else {
            (CKM_ECDSA_SHA384, 48)
        };
        let m = Mechanism::new(hashed);
        dev.message_sign_init(s, &m, private).unwrap();
        let sigs: Vec<Vec<u8>> = MESSAGES
            .iter()
            .map(|d| sign_message(&dev, s, d).unwrap())
            .collect();
        let whole = MESSAGES[2];
        let parts_sig = sign_message_parts(&dev, s, &[&whole[..20], &whole[20..]]).unwrap();
        dev.message_sign_final(s).unwrap();
        for (d, sig) in MESSAGES.iter().zip(&sigs) {
            assert_eq!(sig.len(), 2 * n);
            verify(&dev, s, &m, public, d, sig).unwrap();
            assert!(rc_ok(d, sig));
        }
        verify(&dev, s, &m, public, whole, &parts_sig).unwrap();
        assert!(rc_ok(whole, &parts_sig));
        let regular = sign(&dev, s, &m, private, whole);
        dev.message_verify_init(s, &m, public).unwrap();
        dev.verify_message(s, &mut no_params(), whole, &regular)
            .unwrap();
        verify_message_parts(&dev, s, &[&whole[..2], &whole[2..]], &regular).unwrap();
        assert_eq!(
            dev.verify_message(s, &mut no_params(), b"other", &regular),
            Err(Error::SignatureInvalid)
        );
        dev.message_verify_final(s).unwrap();

        // Raw ECDSA over a hash: single-part only.
        let raw = Mechanism::new(CKM_ECDSA);
        let h = if oid == P256 {
            sha256(b"abc")
        } else {
            Sha384::digest(b"abc").to_vec()
        };
        dev.message_sign_init(s, &raw, private).unwrap();
        let sig = sign_message(&dev, s, &h).unwrap();
        assert_eq!(
            dev.sign_message_begin(s, &mut no_params()),
            Err(Error::FunctionNotSupported)
        );
        dev.message_sign_final(s).unwrap();
        verify(&dev, s, &m, public, b"abc", &sig).unwrap();
        assert!(rc_ok(b"abc", &sig));
        dev.message_verify_init(s, &raw, public).unwrap();
        dev.verify_message(s, &mut no_params(), &h, &sig).unwrap();
        dev.message_verify_final(s).unwrap();
    }
}

// ---- misuse -------------------------------------------------------------------------------------

#[test]
fn calls_without_init_and_second_inits_have_their_codes() {
    let (_d, dev, s) = ready();
    let (public, private) = ec_pair(&dev, s, CKM_EC_KEY_PAIR_GEN, P256);
    let m = Mechanism::new(CKM_ECDSA_SHA256);
    let mut p = no_params();
    let nope = Err(Error::OperationNotInitialized);
    assert_eq!(dev.sign_message(s, &mut p, b"x", None), nope);
    assert_eq!(
        dev.sign_message_begin(s, &mut p),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(dev.sign_message_next(s, &mut p, b"x", false, None), nope);
    assert_eq!(dev.sign_message_next(s, &mut p, b"x", true, None), nope);
    assert_eq!(
        dev.message_sign_final(s),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.verify_message(s, &mut p, b"x", &[0; 64]),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.verify_message_begin(s, &mut p),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.verify_message_next(s, &mut p, b"x", None),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.message_verify_final(s),
        Err(Error::OperationNotInitialized)
    );

    dev.message_sign_init(s, &m, private).unwrap();
    assert_eq!(
        dev.message_sign_init(s, &m, private),
        Err(Error::OperationActive)
    );
    // Begun, but no message in parts yet.
    assert_eq!(dev.sign_message_next(s, &mut p, b"x", true, None), nope);
    dev.message_verify_init(s, &m, public).unwrap();
    assert_eq!(
        dev.message_verify_init(s, &m, public),
        Err(Error::OperationActive)
    );
    assert_eq!(
        dev.verify_message_next(s, &mut p, b"x", Some(&[0; 64])),
        Err(Error::OperationNotInitialized)
    );

    // The regular operations are independent of the message-based processes, both ways.
    dev.sign_init(s, &m, private).unwrap();
    let sig = output(|o| dev.sign(s, b"abc", o)).unwrap();
    let msg_sig = sign_message(&dev, s, b"abc").unwrap();
    dev.verify_init(s, &m, public).unwrap();
    dev.verify_message(s, &mut p, b"abc", &sig).unwrap();
    dev.verify(s, b"abc", &msg_sig).unwrap();
    dev.sign_init(s, &m, private).unwrap();
    dev.sign_update(s, b"a").unwrap();
    dev.sign_message_begin(s, &mut p).unwrap();
    dev.sign_update(s, b"bc").unwrap();
    dev.sign_message_next(s, &mut p, b"abc", false, None)
        .unwrap();
    let regular = output(|o| dev.sign_final(s, o)).unwrap();
    let in_parts = output(|o| dev.sign_message_next(s, &mut p, b"", true, o)).unwrap();
    verify(&dev, s, &m, public, b"abc", &regular).unwrap();
    verify(&dev, s, &m, public, b"abc", &in_parts).unwrap();

    // A message in parts blocks single-part messages and a second begin, not the process.
    dev.sign_message_begin(s, &mut p).unwrap();
    assert_eq!(
        dev.sign_message(s, &mut p, b"x", None),
        Err(Error::OperationActive)
    );
    assert_eq!(
        dev.sign_message_begin(s, &mut p),
        Err(Error::OperationActive)
    );
    dev.verify_message_begin(s, &mut p).unwrap();
    assert_eq!(
        dev.verify_message(s, &mut p, b"abc", &sig),
        Err(Error::OperationActive)
    );
    assert_eq!(
        dev.verify_message_begin(s, &mut p),
        Err(Error::OperationActive)
    );
    // C_MessageSignFinal ends the process, and the message in progress with it.
    dev.message_sign_final(s).unwrap();
    dev.message_verify_final(s).unwrap();
    assert_eq!(dev.sign_message_next(s, &mut p, b"", true, None), nope);
    assert_eq!(
        dev.verify_message_next(s, &mut p, b"", Some(&sig)),
        Err(Error::OperationNotInitialized)
    );
    // A new process can start.
    dev.message_sign_init(s, &m, private).unwrap();
    dev.message_sign_final(s).unwrap();
}

#[test]
fn key_and_mechanism_checks_at_init() {
    let (_d, dev, s) = ready();
    let (public, private) = rsa_pair(&dev, s, &[]);
    let m = Mechanism::new(CKM_SHA256_RSA_PKCS);
    // Usage attributes.
    let (_, no_sign) = rsa_pair(&dev, s, &[Attribute::bool(CKA_SIGN, false)]);
    assert_eq!(
        dev.message_sign_init(s, &m, no_sign),
        Err(Error::KeyFunctionNotPermitted)
    );
    let no_verify = dev
        .copy_object(
            s,
            public,
            &Template::new().with(Attribute::bool(CKA_VERIFY, false)),
        )
        .unwrap();
    assert_eq!(
        dev.message_verify_init(s, &m, no_verify),
        Err(Error::KeyFunctionNotPermitted)
    );
    // Wrong key class or type.
    assert_eq!(
        dev.message_sign_init(s, &m, public),
        Err(Error::KeyTypeInconsistent)
    );
    let (ec_public, ec_private) = ec_pair(&dev, s, CKM_EC_KEY_PAIR_GEN, P256);
    assert_eq!(
        dev.message_sign_init(s, &m, ec_private),
        Err(Error::KeyTypeInconsistent)
    );
    assert_eq!(
        dev.message_verify_init(s, &Mechanism::new(CKM_EDDSA), ec_public),
        Err(Error::KeyTypeInconsistent)
    );
    // Mechanisms that do not sign, and CKA_ALLOWED_MECHANISMS.
    assert_eq!(
        dev.message_sign_init(s, &Mechanism::new(CKM_RSA_PKCS_OAEP), private),
        Err(Error::MechanismInvalid)
    );
    assert_eq!(
        dev.message_sign_init(s, &Mechanism::new(CKM_SHA256), private),
        Err(Error::MechanismInvalid)
    );
    let allowed = {
        let mut b = Vec::new();
        b.extend_from_slice(&CKM_SHA384_RSA_PKCS.to_ne_bytes());
        Attribute::bytes(CKA_ALLOWED_MECHANISMS, b)
    };
    let (_, only_sha384) = rsa_pair(&dev, s, &[allowed]);
    assert_eq!(
        dev.message_sign_init(s, &m, only_sha384),
        Err(Error::MechanismInvalid)
    );
    dev.message_sign_init(s, &Mechanism::new(CKM_SHA384_RSA_PKCS), only_sha384)
        .unwrap();
    dev.message_sign_final(s).unwrap();
    assert_eq!(
        dev.message_sign_init(s, &m, ObjectHandle(0xdead)),
        Err(Error::KeyHandleInvalid)
    );
    // None of the failed inits left a process behind.
    assert_eq!(
        dev.message_sign_final(s),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.message_verify_final(s),
        Err(Error::OperationNotInitialized)
    );
}

#[test]
fn buffers_parameters_and_failures_keep_the_process() {
    let (_d, dev, s) = ready();
    let (public, private) = rsa_pair(&dev, s, &[]);
    let m = Mechanism::new(CKM_SHA256_RSA_PKCS);
    let want = sign(&dev, s, &m, private, b"abc");
    dev.message_sign_init(s, &m, private).unwrap();
    let mut p = no_params();
    // C_SignMessage: a length query and a short buffer give the exact length, no signature.
    assert_eq!(dev.sign_message(s, &mut p, b"abc", None), Ok(256));
    let mut small = [0u8; 255];
    assert_eq!(
        dev.sign_message(s, &mut p, b"abc", Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 256 })
    );
    let mut big = [0u8; 300];
    assert_eq!(dev.sign_message(s, &mut p, b"abc", Some(&mut big)), Ok(256));
    assert_eq!(&big[..256], &want[..]);
    // C_SignMessageNext (last part): a short buffer keeps the message open.
    dev.sign_message_begin(s, &mut p).unwrap();
    dev.sign_message_next(s, &mut p, b"a", false, None).unwrap();
    assert_eq!(dev.sign_message_next(s, &mut p, b"bc", true, None), Ok(256));
    assert_eq!(
        dev.sign_message_next(s, &mut p, b"bc", true, Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 256 })
    );
    let mut buf = [0u8; 256];
    assert_eq!(
        dev.sign_message_next(s, &mut p, b"bc", true, Some(&mut buf)),
        Ok(256)
    );
    assert_eq!(&buf[..], &want[..]);
    // That ended the message, not the process.
    assert_eq!(
        dev.sign_message_next(s, &mut p, b"", true, Some(&mut buf)),
        Err(Error::OperationNotInitialized)
    );
    // A per-message parameter for mechanisms that take none.
    let mut junk = MechanismParams::Raw(vec![1, 2, 3, 4]);
    assert_eq!(
        dev.sign_message(s, &mut junk, b"abc", None),
        Err(Error::MechanismParamInvalid)
    );
    assert_eq!(
        dev.sign_message_begin(s, &mut junk),
        Err(Error::MechanismParamInvalid)
    );
    // ... on a part: that message ends (an error on a part ends it), the process stays.
    dev.sign_message_begin(s, &mut p).unwrap();
    assert_eq!(
        dev.sign_message_next(s, &mut junk, b"a", false, None),
        Err(Error::MechanismParamInvalid)
    );
    assert_eq!(
        dev.sign_message_next(s, &mut p, b"bc", true, None),
        Err(Error::OperationNotInitialized)
    );
    // An empty parameter is no parameter.
    let mut empty = MechanismParams::Raw(vec![]);
    assert_eq!(
        output(|o| dev.sign_message(s, &mut empty, b"abc", o)).unwrap(),
        want
    );
    dev.message_sign_final(s).unwrap();

    // CKM_RSA_PKCS with an input too long for the modulus: CKR_DATA_LEN_RANGE, process stays.
    dev.message_sign_init(s, &Mechanism::new(CKM_RSA_PKCS), private)
        .unwrap();
    assert_eq!(
        dev.sign_message(s, &mut p, &[1; 246], Some(&mut buf)),
        Err(Error::DataLenRange)
    );
    let di = digest_info_sha256(b"abc");
    assert_eq!(dev.sign_message(s, &mut p, &di, Some(&mut buf)), Ok(256));
    dev.message_sign_final(s).unwrap();

    // Verification: bad signatures and lengths end the message only.
    dev.message_verify_init(s, &m, public).unwrap();
    assert_eq!(
        dev.verify_message(s, &mut p, b"abc", &want[..255]),
        Err(Error::SignatureLenRange)
    );
    let mut bad = want.clone();
    bad[7] ^= 0x80;
    assert_eq!(
        dev.verify_message(s, &mut p, b"abc", &bad),
        Err(Error::SignatureInvalid)
    );
    dev.verify_message_begin(s, &mut p).unwrap();
    dev.verify_message_next(s, &mut p, b"ab", None).unwrap();
    assert_eq!(
        dev.verify_message_next(s, &mut p, b"c", Some(&bad)),
        Err(Error::SignatureInvalid)
    );
    assert_eq!(
        dev.verify_message_next(s, &mut p, b"c", Some(&want)),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.verify_message(s, &mut junk, b"abc", &want),
        Err(Error::MechanismParamInvalid)
    );
    dev.verify_message(s, &mut p, b"abc", &want).unwrap();
    dev.message_verify_final(s).unwrap();

    // C_SessionCancel ends the processes.
    dev.message_sign_init(s, &m, private).unwrap();
    dev.message_verify_init(s, &m, public).unwrap();
    dev.session_cancel(s, CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY)
        .unwrap();
    assert_eq!(
        dev.message_sign_final(s),
        Err(Error::OperationNotInitialized)
    );
    assert_eq!(
        dev.message_verify_final(s),
        Err(Error::OperationNotInitialized)
    );
}

#[test]
fn always_authenticate_keys_want_the_pin_for_each_message() {
    let (_d, dev, s) = ready();
    let (public, private) = ec_pair_always_auth(&dev, s);
    let m = Mechanism::new(CKM_ECDSA_SHA256);
    let mut p = no_params();
    dev.message_sign_init(s, &m, private).unwrap();
    assert_eq!(
        dev.sign_message(s, &mut p, b"abc", None),
        Err(Error::UserNotLoggedIn)
    );
    assert_eq!(
        dev.sign_message_begin(s, &mut p),
        Err(Error::UserNotLoggedIn)
    );
    assert_eq!(
        dev.login(s, CKU_CONTEXT_SPECIFIC, Some(b"wrong")),
        Err(Error::PinIncorrect)
    );
    dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER)).unwrap();
    // A length query and a short buffer do not use the authentication up.
    assert_eq!(dev.sign_message(s, &mut p, b"abc", None), Ok(64));
    let mut small = [0u8; 10];
    assert_eq!(
        dev.sign_message(s, &mut p, b"abc", Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 64 })
    );
    let mut sig = [0u8; 64];
    assert_eq!(dev.sign_message(s, &mut p, b"abc", Some(&mut sig)), Ok(64));
    verify(&dev, s, &m, public, b"abc", &sig).unwrap();
    // The next message is another use of the key.
    assert_eq!(
        dev.sign_message(s, &mut p, b"abc", Some(&mut sig)),
        Err(Error::UserNotLoggedIn)
    );
    dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER)).unwrap();
    dev.sign_message_begin(s, &mut p).unwrap();
    dev.sign_message_next(s, &mut p, b"ab", false, None)
        .unwrap();
    assert_eq!(
        dev.sign_message_next(s, &mut p, b"c", true, Some(&mut sig)),
        Ok(64)
    );
    verify(&dev, s, &m, public, b"abc", &sig).unwrap();
    assert_eq!(
        dev.sign_message_begin(s, &mut p),
        Err(Error::UserNotLoggedIn)
    );

    // A regular operation waiting for its login too: each login serves one that waits.
    dev.sign_init(s, &m, private).unwrap();
    dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER)).unwrap();
    dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER)).unwrap();
    assert_eq!(dev.sign_message(s, &mut p, b"abc", Some(&mut sig)), Ok(64));
    let regular = output(|o| dev.sign(s, b"abc", o)).unwrap();
    verify(&dev, s, &m, public, b"abc", &regular).unwrap();
    dev.message_sign_final(s).unwrap();
    // Nothing waits for a login any more.
    assert_eq!(
        dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER)),
        Err(Error::OperationNotInitialized)
    );
}

fn ec_pair_always_auth(dev: &Device, s: SessionHandle) -> (ObjectHandle, ObjectHandle) {
    let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, P256.to_vec()));
    let private = Template::new()
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_ALWAYS_AUTHENTICATE, true));
    dev.generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &public, &private)
        .unwrap()
}
