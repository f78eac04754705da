//! The elliptic-curve family through the `Backend` API: key pair generation on P-256, P-384,
//! P-521 and Ed25519, ECDSA and EdDSA signatures cross-checked both ways against RustCrypto
//! (`p256`, `p384`, `p521`, `ed25519-dalek`), ECDH against RustCrypto and an independent X9.63
//! KDF, Wycheproof vectors, imports and the exact error codes.

// clippy.toml exempts `#[test]` functions only; the helpers here panic on purpose too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use der::{Decode as _, Encode as _};
use firmware_sim::Device;
use sha2::Digest as _;

const SO: &[u8] = b"12345678";
const USER: &[u8] = b"1234";

fn config() -> FirmwareConfig {
    FirmwareConfig {
        pin_kdf_iterations: 1000,
        max_login_failures: 3,
        ..FirmwareConfig::default()
    }
}

fn label(s: &str) -> [u8; 32] {
    let mut l = [b' '; 32];
    l[..s.len()].copy_from_slice(s.as_bytes());
    l
}

/// A fresh home with one initialized token, and a logged-in R/W user session on it.
fn ready() -> (tempfile::TempDir, Device, SessionHandle) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    dev.init_token(SlotId(0), SO, &label("ec")).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.init_pin(s, USER).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    (dir, dev, s)
}

fn get(dev: &Device, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match &dev.get_attribute_value(s, o, &[ty]).unwrap()[0] {
        AttrAnswer::Value(AttrValue::Bytes(b)) => b.clone(),
        other => panic!("0x{ty:x}: {other:?}"),
    }
}

fn ulong(dev: &Device, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(get(dev, s, o, ty).try_into().unwrap())
}

fn hex(s: &str) -> Vec<u8> {
    base16ct::mixed::decode_vec(s).unwrap()
}

/// DER OCTET STRING.
fn octet_string(content: &[u8]) -> Vec<u8> {
    der::asn1::OctetStringRef::new(content)
        .unwrap()
        .to_der()
        .unwrap()
}

/// DER PrintableString.
fn printable(name: &str) -> Vec<u8> {
    der::asn1::PrintableStringRef::new(name)
        .unwrap()
        .to_der()
        .unwrap()
}

/// The content of a DER OCTET STRING (exactly one, nothing after it).
fn unwrap_octet_string(der: &[u8]) -> Vec<u8> {
    der::asn1::OctetStringRef::from_der(der)
        .unwrap()
        .as_bytes()
        .to_vec()
}

// ---- the curves, and RustCrypto as the second implementation --------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

impl Curve {
    /// Field (and scalar) length.
    fn n(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    fn order_bits(self) -> usize {
        match self {
            Curve::P256 => 256,
            Curve::P384 => 384,
            Curve::P521 => 521,
        }
    }

    fn oid(self) -> Vec<u8> {
        match self {
            Curve::P256 => hex("06082a8648ce3d030107"),
            Curve::P384 => hex("06052b81040022"),
            Curve::P521 => hex("06052b81040023"),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Curve::P256 => &["prime256v1", "secp256r1", "P-256"],
            Curve::P384 => &["secp384r1", "P-384"],
            Curve::P521 => &["secp521r1", "P-521"],
        }
    }

    /// A fixed private scalar for the RustCrypto side (below n on every curve).
    fn rc_scalar(self) -> Vec<u8> {
        let mut v = vec![0x5a; self.n()];
        v[0] = 0;
        v
    }
}

/// The integer ECDSA signs for a pre-hashed input (X9.62: the leftmost bits up to the order's
/// length), as field-length bytes. Written here again, independently of the firmware.
fn e_of(curve: Curve, hash: &[u8]) -> Vec<u8> {
    let n = curve.n();
    if hash.len() * 8 <= curve.order_bits() {
        let mut e = vec![0u8; n - hash.len()];
        e.extend_from_slice(hash);
        return e;
    }
    let shift = 8 * n - curve.order_bits();
    // Interpret the first n bytes as a big integer and shift right by `shift` bits.
    let mut e = hash[..n].to_vec();
    for _ in 0..shift {
        let mut carry = 0u8;
        for b in e.iter_mut() {
            let next = *b & 1;
            *b = (*b >> 1) | (carry << 7);
            carry = next;
        }
    }
    e
}

fn rc_point(curve: Curve, scalar: &[u8]) -> Vec<u8> {
    match curve {
        Curve::P256 => p256::SecretKey::from_slice(scalar)
            .unwrap()
            .public_key()
            .to_sec1_bytes()
            .to_vec(),
        Curve::P384 => p384::SecretKey::from_slice(scalar)
            .unwrap()
            .public_key()
            .to_sec1_bytes()
            .to_vec(),
        Curve::P521 => p521::SecretKey::from_slice(scalar)
            .unwrap()
            .public_key()
            .to_sec1_bytes()
            .to_vec(),
    }
}

fn rc_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    use p256::pkcs8::EncodePublicKey;
    match curve {
        Curve::P256 => p256::PublicKey::from_sec1_bytes(point)
            .unwrap()
            .to_public_key_der()
            .unwrap()
            .to_vec(),
        Curve::P384 => p384::PublicKey::from_sec1_bytes(point)
            .unwrap()
            .to_public_key_der()
            .unwrap()
            .to_vec(),
        Curve::P521 => p521::PublicKey::from_sec1_bytes(point)
            .unwrap()
            .to_public_key_der()
            .unwrap()
            .to_vec(),
    }
}

/// A RustCrypto ECDSA signature `r ‖ s` over the field-length integer `e`.
fn rc_sign(curve: Curve, scalar: &[u8], e: &[u8]) -> Vec<u8> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    assert_eq!(e.len(), curve.n());
    match curve {
        Curve::P256 => {
            let k = p256::ecdsa::SigningKey::from_slice(scalar).unwrap();
            let sig: p256::ecdsa::Signature = k.sign_prehash(e).unwrap();
            sig.to_bytes().to_vec()
        }
        Curve::P384 => {
            let k = p384::ecdsa::SigningKey::from_slice(scalar).unwrap();
            let sig: p384::ecdsa::Signature = k.sign_prehash(e).unwrap();
            sig.to_bytes().to_vec()
        }
        Curve::P521 => {
            let k = p521::ecdsa::SigningKey::from_slice(scalar).unwrap();
            let sig: p521::ecdsa::Signature = k.sign_prehash(e).unwrap();
            sig.to_bytes().to_vec()
        }
    }
}

/// Whether RustCrypto accepts `sig` over the field-length integer `e`.
fn rc_verify(curve: Curve, point: &[u8], e: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    assert_eq!(e.len(), curve.n());
    match curve {
        Curve::P256 => {
            let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let sig = p256::ecdsa::Signature::from_slice(sig).unwrap();
            k.verify_prehash(e, &sig).is_ok()
        }
        Curve::P384 => {
            let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let sig = p384::ecdsa::Signature::from_slice(sig).unwrap();
            k.verify_prehash(e, &sig).is_ok()
        }
        Curve::P521 => {
            let k = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let sig = p521::ecdsa::Signature::from_slice(sig).unwrap();
            k.verify_prehash(e, &sig).is_ok()
        }
    }
}

/// The RustCrypto ECDH shared secret (x-coordinate).
fn rc_ecdh(curve: Curve, scalar: &[u8], peer: &[u8]) -> Vec<u8> {
    match curve {
        Curve::P256 => {
            let sk = p256::SecretKey::from_slice(scalar).unwrap();
            let pk = p256::PublicKey::from_sec1_bytes(peer).unwrap();
            p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        Curve::P384 => {
            let sk = p384::SecretKey::from_slice(scalar).unwrap();
            let pk = p384::PublicKey::from_sec1_bytes(peer).unwrap();
            p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        Curve::P521 => {
            let sk = p521::SecretKey::from_slice(scalar).unwrap();
            let pk = p521::PublicKey::from_sec1_bytes(peer).unwrap();
            p521::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
    }
}

/// The hash of a `CKM_ECDSA_<hash>` mechanism (or a `CKD_<hash>_KDF`), from `sha1`/`sha2`.
fn hash_of(mech: CK_ULONG, data: &[u8]) -> Vec<u8> {
    match mech {
        CKM_ECDSA_SHA1 | CKD_SHA1_KDF => sha1::Sha1::digest(data).to_vec(),
        CKM_ECDSA_SHA224 | CKD_SHA224_KDF => sha2::Sha224::digest(data).to_vec(),
        CKM_ECDSA_SHA256 | CKD_SHA256_KDF => sha2::Sha256::digest(data).to_vec(),
        CKM_ECDSA_SHA384 | CKD_SHA384_KDF => sha2::Sha384::digest(data).to_vec(),
        CKM_ECDSA_SHA512 | CKD_SHA512_KDF => sha2::Sha512::digest(data).to_vec(),
        _ => panic!("0x{mech:x}"),
    }
}

/// ANSI X9.63 KDF, written again here.
fn x963(kdf: CK_ULONG, z: &[u8], shared: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut counter = 1u32;
    while out.len() < len {
        let mut input = z.to_vec();
        input.extend_from_slice(&counter.to_be_bytes());
        input.extend_from_slice(shared);
        out.extend(hash_of(kdf, &input));
        counter += 1;
    }
    out.truncate(len);
    out
}

const HASHED: [CK_MECHANISM_TYPE; 5] = [
    CKM_ECDSA_SHA1,
    CKM_ECDSA_SHA224,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
];

// ---- device helpers ----------------------------------------------------------------------------

/// A key pair. The private key is readable (not sensitive, extractable) so that the tests can
/// hand its scalar to RustCrypto.
fn keypair(
    dev: &Device,
    s: SessionHandle,
    mech: CK_MECHANISM_TYPE,
    ec_params: &[u8],
) -> Result<(ObjectHandle, ObjectHandle)> {
    let public = Template::new()
        .with(Attribute::bytes(CKA_EC_PARAMS, ec_params.to_vec()))
        .with(Attribute::bool(CKA_VERIFY, true));
    let private = Template::new()
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bool(CKA_DERIVE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    dev.generate_key_pair(s, &Mechanism::new(mech), &public, &private)
}

fn ec_keypair(dev: &Device, s: SessionHandle, curve: Curve) -> (ObjectHandle, ObjectHandle) {
    keypair(dev, s, CKM_EC_KEY_PAIR_GEN, &curve.oid()).unwrap()
}

fn sign(
    dev: &Device,
    s: SessionHandle,
    mech: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.sign_init(s, mech, key)?;
    let n = dev.sign(s, data, None)?;
    let mut buf = vec![0u8; n];
    let n = dev.sign(s, data, Some(&mut buf))?;
    buf.truncate(n);
    Ok(buf)
}

fn sign_parts(
    dev: &Device,
    s: SessionHandle,
    mech: &Mechanism,
    key: ObjectHandle,
    parts: &[&[u8]],
) -> Result<Vec<u8>> {
    dev.sign_init(s, mech, key)?;
    for p in parts {
        dev.sign_update(s, p)?;
    }
    let mut buf = vec![0u8; 256];
    let n = dev.sign_final(s, Some(&mut buf))?;
    buf.truncate(n);
    Ok(buf)
}

fn verify(
    dev: &Device,
    s: SessionHandle,
    mech: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
    dev.verify_init(s, mech, key)?;
    dev.verify(s, data, sig)
}

fn verify_parts(
    dev: &Device,
    s: SessionHandle,
    mech: &Mechanism,
    key: ObjectHandle,
    parts: &[&[u8]],
    sig: &[u8],
) -> Result<()> {
    dev.verify_init(s, mech, key)?;
    for p in parts {
        dev.verify_update(s, p)?;
    }
    dev.verify_final(s, sig)
}

/// Imports an EC public key.
fn import_public(
    dev: &Device,
    s: SessionHandle,
    key_type: CK_KEY_TYPE,
    ec_params: &[u8],
    ec_point: &[u8],
) -> Result<ObjectHandle> {
    dev.create_object(
        s,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
            .with(Attribute::bytes(CKA_EC_PARAMS, ec_params.to_vec()))
            .with(Attribute::bytes(CKA_EC_POINT, ec_point.to_vec())),
    )
}

/// Imports an EC private key (sign and derive, readable).
fn import_private(
    dev: &Device,
    s: SessionHandle,
    key_type: CK_KEY_TYPE,
    ec_params: &[u8],
    value: &[u8],
) -> Result<ObjectHandle> {
    dev.create_object(
        s,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
            .with(Attribute::bool(CKA_SENSITIVE, false))
            .with(Attribute::bool(CKA_DERIVE, true))
            .with(Attribute::bytes(CKA_EC_PARAMS, ec_params.to_vec()))
            .with(Attribute::bytes(CKA_VALUE, value.to_vec())),
    )
}

fn ecdh(kdf: CK_EC_KDF_TYPE, shared: &[u8], public: &[u8]) -> Mechanism {
    Mechanism::with(
        CKM_ECDH1_DERIVE,
        MechanismParams::Ecdh1Derive {
            kdf,
            shared_data: shared.to_vec(),
            public_data: public.to_vec(),
        },
    )
}

fn secret_template(key_type: CK_KEY_TYPE, len: Option<usize>) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    if let Some(len) = len {
        t.0.push(Attribute::ulong(
            CKA_VALUE_LEN,
            CK_ULONG::try_from(len).unwrap(),
        ));
    }
    t
}

/// Derives and reads back the value.
fn derive(
    dev: &Device,
    s: SessionHandle,
    mech: &Mechanism,
    base: ObjectHandle,
    template: &Template,
) -> Result<Vec<u8>> {
    let k = dev.derive_key(s, mech, base, template)?;
    Ok(get(dev, s, k, CKA_VALUE))
}

// ---- mechanism list and info -----------------------------------------------------------------

#[test]
fn mechanisms_are_listed_with_exact_flags_and_sizes() {
    let (_d, dev, _s) = ready();
    let list = dev.mechanism_list(SlotId(0)).unwrap();
    let ec = CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME | CKF_EC_UNCOMPRESS;
    let ed = CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME;
    let sv = CKF_SIGN | CKF_VERIFY | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY;
    for (mech, flags, min, max) in [
        (CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR | ec, 256, 521),
        (CKM_ECDSA, sv | ec, 256, 521),
        (CKM_ECDSA_SHA1, sv | ec, 256, 521),
        (CKM_ECDSA_SHA224, sv | ec, 256, 521),
        (CKM_ECDSA_SHA256, sv | ec, 256, 521),
        (CKM_ECDSA_SHA384, sv | ec, 256, 521),
        (CKM_ECDSA_SHA512, sv | ec, 256, 521),
        (CKM_ECDH1_DERIVE, CKF_DERIVE | ec, 256, 521),
        (CKM_ECDH1_COFACTOR_DERIVE, CKF_DERIVE | ec, 256, 521),
        (
            CKM_EC_EDWARDS_KEY_PAIR_GEN,
            CKF_GENERATE_KEY_PAIR | ed,
            255,
            255,
        ),
        (CKM_EDDSA, sv | ed, 255, 255),
    ] {
        assert!(list.contains(&mech), "0x{mech:x}");
        let info = dev.mechanism_info(SlotId(0), mech).unwrap();
        assert_eq!(info.flags, CKF_HW | flags, "0x{mech:x}");
        assert_eq!((info.min_key_size, info.max_key_size), (min, max));
    }
    // Listed only if it works: no SHA-3 ECDSA, no Montgomery, no MQV.
    for mech in [
        CKM_ECDSA_SHA3_256,
        CKM_EC_MONTGOMERY_KEY_PAIR_GEN,
        CKM_ECMQV_DERIVE,
    ] {
        assert!(!list.contains(&mech));
    }
}

// ---- key pair generation -----------------------------------------------------------------------

#[test]
fn keygen_on_each_curve_with_oid_and_curve_name_params_stores_the_oid() {
    let (_d, dev, s) = ready();
    for curve in CURVES {
        let mut forms = vec![curve.oid()];
        forms.extend(curve.names().iter().map(|n| printable(n)));
        for params in forms {
            let (public, private) = keypair(&dev, s, CKM_EC_KEY_PAIR_GEN, &params).unwrap();
            assert_eq!(get(&dev, s, public, CKA_EC_PARAMS), curve.oid());
            assert_eq!(get(&dev, s, private, CKA_EC_PARAMS), curve.oid());
            assert_eq!(ulong(&dev, s, public, CKA_KEY_TYPE), CKK_EC);
            assert_eq!(ulong(&dev, s, private, CKA_CLASS), CKO_PRIVATE_KEY);
            assert_eq!(
                ulong(&dev, s, private, CKA_KEY_GEN_MECHANISM),
                CKM_EC_KEY_PAIR_GEN
            );
            assert_eq!(get(&dev, s, private, CKA_LOCAL), [1]);
            // CKA_EC_POINT: DER OCTET STRING of 04 ‖ X ‖ Y.
            let der = get(&dev, s, public, CKA_EC_POINT);
            let point = unwrap_octet_string(&der);
            assert_eq!(point.len(), 1 + 2 * curve.n());
            assert_eq!(point[0], 4);
            // CKA_VALUE: the scalar at the field length, the point's discrete log.
            let scalar = get(&dev, s, private, CKA_VALUE);
            assert_eq!(scalar.len(), curve.n());
            assert_eq!(rc_point(curve, &scalar), point);
            // CKA_PUBLIC_KEY_INFO on both, equal to RustCrypto's SPKI.
            let spki = rc_spki(curve, &point);
            assert_eq!(get(&dev, s, public, CKA_PUBLIC_KEY_INFO), spki);
            assert_eq!(get(&dev, s, private, CKA_PUBLIC_KEY_INFO), spki);
        }
    }
}

#[test]
fn keygen_refuses_unknown_malformed_and_missing_params() {
    let (_d, dev, s) = ready();
    let generate = |params: &[u8]| keypair(&dev, s, CKM_EC_KEY_PAIR_GEN, params).map(|_| ());
    // secp256k1, brainpoolP256r1, a name we do not know, and Ed25519 on the wrong mechanism.
    assert_eq!(
        generate(&hex("06052b8104000a")),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(
        generate(&hex("06092b2403030208010107")),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(
        generate(&printable("secp256k1")),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(generate(&hex("06032b6570")), Err(Error::CurveNotSupported));
    assert_eq!(
        generate(&printable("edwards25519")),
        Err(Error::CurveNotSupported)
    );
    // Malformed DER, implicitlyCA, explicit parameters.
    assert_eq!(
        generate(&hex("06082a8648ce3d0301")),
        Err(Error::DomainParamsInvalid)
    );
    assert_eq!(generate(&hex("0500")), Err(Error::DomainParamsInvalid));
    assert_eq!(
        generate(&hex("3003020101")),
        Err(Error::DomainParamsInvalid)
    );
    assert_eq!(generate(&[]), Err(Error::DomainParamsInvalid));
    // No CKA_EC_PARAMS at all.
    let public = Template::new().with(Attribute::bool(CKA_VERIFY, true));
    assert_eq!(
        dev.generate_key_pair(
            s,
            &Mechanism::new(CKM_EC_KEY_PAIR_GEN),
            &public,
            &Template::new()
        ),
        Err(Error::TemplateIncomplete)
    );
    // The private template may not name the curve (footnote 4 of CKA_EC_PARAMS).
    let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, Curve::P256.oid()));
    let private = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, Curve::P256.oid()));
    assert_eq!(
        dev.generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &public, &private),
        Err(Error::AttributeReadOnly)
    );
    // A parameter where none is taken.
    assert_eq!(
        dev.generate_key_pair(
            s,
            &Mechanism::with(CKM_EC_KEY_PAIR_GEN, MechanismParams::Bytes(vec![1])),
            &public,
            &Template::new()
        ),
        Err(Error::MechanismParamInvalid)
    );
    // A template that says another key type.
    let public = public.with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA));
    assert_eq!(
        dev.generate_key_pair(
            s,
            &Mechanism::new(CKM_EC_KEY_PAIR_GEN),
            &public,
            &Template::new()
        ),
        Err(Error::TemplateInconsistent)
    );
}

// ---- ECDSA -----------------------------------------------------------------------------------

#[test]
fn ecdsa_every_mechanism_cross_checked_with_rustcrypto_both_ways() {
    let (_d, dev, s) = ready();
    let msg: &[u8] = b"My Heart's in the Highland, my heart is not here";
    for curve in CURVES {
        let (public, private) = ec_keypair(&dev, s, curve);
        let point = unwrap_octet_string(&get(&dev, s, public, CKA_EC_POINT));
        let rc_key = curve.rc_scalar();
        let rc_public = import_public(
            &dev,
            s,
            CKK_EC,
            &curve.oid(),
            &octet_string(&rc_point(curve, &rc_key)),
        )
        .unwrap();
        for mech in HASHED {
            let m = Mechanism::new(mech);
            let e = e_of(curve, &hash_of(mech, msg));
            // Device → RustCrypto, single- and multi-part.
            let sig = sign(&dev, s, &m, private, msg).unwrap();
            assert_eq!(sig.len(), 2 * curve.n());
            assert!(rc_verify(curve, &point, &e, &sig), "{curve:?} 0x{mech:x}");
            let sig2 = sign_parts(&dev, s, &m, private, &[&msg[..7], &msg[7..]]).unwrap();
            assert!(rc_verify(curve, &point, &e, &sig2));
            // The device verifies its own, both ways.
            verify(&dev, s, &m, public, msg, &sig).unwrap();
            verify_parts(&dev, s, &m, public, &[&msg[..3], &msg[3..]], &sig2).unwrap();
            // RustCrypto → device.
            let rc_sig = rc_sign(curve, &rc_key, &e);
            verify(&dev, s, &m, rc_public, msg, &rc_sig).unwrap();
            verify_parts(&dev, s, &m, rc_public, &[msg], &rc_sig).unwrap();
            assert_eq!(
                verify(&dev, s, &m, rc_public, b"other", &rc_sig),
                Err(Error::SignatureInvalid)
            );
        }
        // CKM_ECDSA on a SHA-256 digest.
        let m = Mechanism::new(CKM_ECDSA);
        let digest = hash_of(CKM_ECDSA_SHA256, msg);
        let sig = sign(&dev, s, &m, private, &digest).unwrap();
        assert!(rc_verify(curve, &point, &e_of(curve, &digest), &sig));
        verify(&dev, s, &m, public, &digest, &sig).unwrap();
        // Same digest through CKM_ECDSA_SHA256: interchangeable.
        verify(
            &dev,
            s,
            &Mechanism::new(CKM_ECDSA_SHA256),
            public,
            msg,
            &sig,
        )
        .unwrap();
    }
}

#[test]
fn raw_ecdsa_takes_inputs_longer_and_shorter_than_the_field() {
    let (_d, dev, s) = ready();
    let m = Mechanism::new(CKM_ECDSA);
    for curve in CURVES {
        let (public, private) = ec_keypair(&dev, s, curve);
        let point = unwrap_octet_string(&get(&dev, s, public, CKA_EC_POINT));
        let rc_key = curve.rc_scalar();
        let rc_public = import_public(
            &dev,
            s,
            CKK_EC,
            &curve.oid(),
            &rc_point(curve, &rc_key), // the raw form is accepted on import
        )
        .unwrap();
        let n = curve.n();
        for len in [0, 1, 20, n - 1, n, n + 1, 64, 65, 66, 67, 100, 128, 200] {
            // High bits set, so that truncation and the P-521 shift matter.
            let data: Vec<u8> = (0..len)
                .map(|i| 0xff ^ u8::try_from(i % 251).unwrap())
                .collect();
            let e = e_of(curve, &data);
            let sig = sign(&dev, s, &m, private, &data).unwrap();
            assert_eq!(sig.len(), 2 * n);
            assert!(rc_verify(curve, &point, &e, &sig), "{curve:?} len {len}");
            verify(&dev, s, &m, public, &data, &sig).unwrap();
            let rc_sig = rc_sign(curve, &rc_key, &e);
            verify(&dev, s, &m, rc_public, &data, &rc_sig).unwrap();
        }
        // What lies beyond the order's bits does not count; what lies within does.
        let long = vec![0xa5u8; 2 * n];
        let sig = sign(&dev, s, &m, private, &long).unwrap();
        let mut beyond = long.clone();
        *beyond.last_mut().unwrap() ^= 1;
        verify(&dev, s, &m, public, &beyond, &sig).unwrap();
        let mut within = long.clone();
        within[n - 1] ^= 0x80;
        assert_eq!(
            verify(&dev, s, &m, public, &within, &sig),
            Err(Error::SignatureInvalid)
        );
    }
}

#[test]
fn raw_ecdsa_is_single_part() {
    let (_d, dev, s) = ready();
    let (public, private) = ec_keypair(&dev, s, Curve::P256);
    let m = Mechanism::new(CKM_ECDSA);
    dev.sign_init(s, &m, private).unwrap();
    assert_eq!(
        dev.sign_update(s, &[0; 32]),
        Err(Error::FunctionNotSupported)
    );
    // The failed update ended the operation.
    assert_eq!(
        dev.sign(s, &[0; 32], None),
        Err(Error::OperationNotInitialized)
    );
    dev.verify_init(s, &m, public).unwrap();
    assert_eq!(
        dev.verify_update(s, &[0; 32]),
        Err(Error::FunctionNotSupported)
    );
}

#[test]
fn bad_signatures_and_bad_lengths_have_their_codes() {
    let (_d, dev, s) = ready();
    for curve in CURVES {
        let (public, private) = ec_keypair(&dev, s, curve);
        let n = curve.n();
        for mech in [CKM_ECDSA, CKM_ECDSA_SHA256] {
            let m = Mechanism::new(mech);
            let data = [7u8; 32];
            let sig = sign(&dev, s, &m, private, &data).unwrap();
            let mut bad = sig.clone();
            bad[n + 3] ^= 1;
            assert_eq!(
                verify(&dev, s, &m, public, &data, &bad),
                Err(Error::SignatureInvalid)
            );
            assert_eq!(
                verify(&dev, s, &m, public, &data, &vec![0u8; 2 * n]),
                Err(Error::SignatureInvalid)
            );
            for len in [0, 1, 2 * n - 1, 2 * n + 1, 2 * n + 2, 4 * n] {
                let mut wrong = sig.clone();
                wrong.resize(len, 0);
                assert_eq!(
                    verify(&dev, s, &m, public, &data, &wrong),
                    Err(Error::SignatureLenRange),
                    "{curve:?} len {len}"
                );
            }
            // A shorter, even-length signature is read as r ‖ s of half its length each: this
            // one is well-formed but wrong.
            let short: Vec<u8> = sig[1..n].iter().chain(&sig[n + 1..]).copied().collect();
            if sig[0] != 0 || sig[n] != 0 {
                assert_eq!(
                    verify(&dev, s, &m, public, &data, &short),
                    Err(Error::SignatureInvalid)
                );
            }
            // The multi-part path has the same codes.
            assert_eq!(
                verify_parts(
                    &dev,
                    s,
                    &Mechanism::new(CKM_ECDSA_SHA256),
                    public,
                    &[],
                    &[1]
                ),
                Err(Error::SignatureLenRange)
            );
        }
    }
}

/// §6.3.1: "signatures passed to a token for verification ... may have a shorter length", r and
/// s padded to equal length. A signature with small r and s is built from a chosen nonce: with
/// s = 1, the signed integer is z = k - r·d (mod n).
#[test]
fn shorter_even_length_signatures_verify() {
    use p256::elliptic_curve::ops::Reduce;
    use p256::elliptic_curve::point::AffineCoordinates;
    use p256::elliptic_curve::{Field, PrimeField};
    use p256::{ProjectivePoint, Scalar, U256};

    let (_d, dev, s) = ready();
    let d_bytes = Curve::P256.rc_scalar();
    let public = import_public(
        &dev,
        s,
        CKK_EC,
        &Curve::P256.oid(),
        &octet_string(&rc_point(Curve::P256, &d_bytes)),
    )
    .unwrap();
    let d = *p256::SecretKey::from_slice(&d_bytes)
        .unwrap()
        .to_nonzero_scalar();
    // Find k whose r = x(kG) mod n has a zero leading byte.
    let mut k = Scalar::ONE;
    let mut point = ProjectivePoint::GENERATOR;
    let r = loop {
        let x = point.to_affine().x();
        if x[0] == 0 {
            break <Scalar as Reduce<U256>>::reduce_bytes(&x);
        }
        k += Scalar::ONE;
        point += ProjectivePoint::GENERATOR;
    };
    let z = k - r * d;
    let z_bytes = z.to_repr().to_vec();
    let full: Vec<u8> = r
        .to_repr()
        .iter()
        .chain(Scalar::ONE.to_repr().iter())
        .copied()
        .collect();
    let m = Mechanism::new(CKM_ECDSA);
    verify(&dev, s, &m, public, &z_bytes, &full).unwrap();
    // Drop one leading zero byte from each half: 62 bytes.
    let short: Vec<u8> = full[1..32].iter().chain(&full[33..]).copied().collect();
    assert_eq!(short.len(), 62);
    verify(&dev, s, &m, public, &z_bytes, &short).unwrap();
    assert!(!bool::from(z.is_zero()));
}

// ---- ECDH ------------------------------------------------------------------------------------

#[test]
fn ecdh_between_device_keys_and_against_rustcrypto() {
    let (_d, dev, s) = ready();
    for curve in CURVES {
        let n = curve.n();
        let (a_pub, a_priv) = ec_keypair(&dev, s, curve);
        let (b_pub, b_priv) = ec_keypair(&dev, s, curve);
        let a_point = unwrap_octet_string(&get(&dev, s, a_pub, CKA_EC_POINT));
        let b_point = unwrap_octet_string(&get(&dev, s, b_pub, CKA_EC_POINT));
        let a_scalar = get(&dev, s, a_priv, CKA_VALUE);
        let generic = |len| secret_template(CKK_GENERIC_SECRET, len);

        // CKD_NULL, raw and DER public data, both directions, and RustCrypto.
        let z = rc_ecdh(curve, &a_scalar, &b_point);
        assert_eq!(z.len(), n);
        let ab = derive(
            &dev,
            s,
            &ecdh(CKD_NULL, &[], &b_point),
            a_priv,
            &generic(Some(n)),
        );
        let ba = derive(
            &dev,
            s,
            &ecdh(CKD_NULL, &[], &octet_string(&a_point)),
            b_priv,
            &generic(Some(n)),
        );
        assert_eq!(ab.unwrap(), z);
        assert_eq!(ba.unwrap(), z);
        // A RustCrypto key on the other side.
        let r = curve.rc_scalar();
        let r_point = rc_point(curve, &r);
        let with_rc = derive(
            &dev,
            s,
            &ecdh(CKD_NULL, &[], &r_point),
            a_priv,
            &generic(None),
        );
        assert_eq!(with_rc.unwrap(), rc_ecdh(curve, &r, &a_point));
        // Truncation keeps the trailing bytes; no CKA_VALUE_LEN gives the whole x-coordinate.
        let k = dev
            .derive_key(
                s,
                &ecdh(CKD_NULL, &[], &b_point),
                a_priv,
                &generic(Some(16)),
            )
            .unwrap();
        assert_eq!(get(&dev, s, k, CKA_VALUE), z[n - 16..]);
        assert_eq!(ulong(&dev, s, k, CKA_VALUE_LEN), 16);
        let whole = derive(
            &dev,
            s,
            &ecdh(CKD_NULL, &[], &b_point),
            a_priv,
            &generic(None),
        );
        assert_eq!(whole.unwrap(), z);
        // The cofactor variant is the same on these curves.
        let cofactor = Mechanism::with(
            CKM_ECDH1_COFACTOR_DERIVE,
            ecdh(CKD_NULL, &[], &b_point).params,
        );
        assert_eq!(
            derive(&dev, s, &cofactor, a_priv, &generic(Some(n))).unwrap(),
            z
        );
        // An AES key from the x-coordinate.
        let aes = derive(
            &dev,
            s,
            &ecdh(CKD_NULL, &[], &b_point),
            a_priv,
            &secret_template(CKK_AES, Some(32)),
        );
        assert_eq!(aes.unwrap(), z[n - 32..]);

        // X9.63 KDFs, with and without shared data, lengths beyond one hash block.
        for kdf in [
            CKD_SHA1_KDF,
            CKD_SHA224_KDF,
            CKD_SHA256_KDF,
            CKD_SHA384_KDF,
            CKD_SHA512_KDF,
        ] {
            for shared in [&b""[..], b"shared info"] {
                for len in [16, 32, 100] {
                    let got = derive(
                        &dev,
                        s,
                        &ecdh(kdf, shared, &b_point),
                        a_priv,
                        &generic(Some(len)),
                    )
                    .unwrap();
                    assert_eq!(got, x963(kdf, &z, shared, len), "kdf {kdf} len {len}");
                    let other = derive(
                        &dev,
                        s,
                        &ecdh(kdf, shared, &octet_string(&a_point)),
                        b_priv,
                        &generic(Some(len)),
                    )
                    .unwrap();
                    assert_eq!(got, other);
                }
            }
        }
    }
}

#[test]
fn ecdh_errors() {
    let (_d, dev, s) = ready();
    let (_a_pub, a_priv) = ec_keypair(&dev, s, Curve::P256);
    let (b_pub, _b_priv) = ec_keypair(&dev, s, Curve::P256);
    let (c_pub, _c_priv) = ec_keypair(&dev, s, Curve::P384);
    let b_point = unwrap_octet_string(&get(&dev, s, b_pub, CKA_EC_POINT));
    let c_point = unwrap_octet_string(&get(&dev, s, c_pub, CKA_EC_POINT));
    let generic = |len| secret_template(CKK_GENERIC_SECRET, len);
    let d = |mech: &Mechanism, t: &Template| dev.derive_key(s, mech, a_priv, t).map(|_| ());

    // Lengths: AES needs CKA_VALUE_LEN, so does every KDF; more than the x-coordinate, or 0.
    assert_eq!(
        d(
            &ecdh(CKD_NULL, &[], &b_point),
            &secret_template(CKK_AES, None)
        ),
        Err(Error::TemplateIncomplete)
    );
    assert_eq!(
        d(&ecdh(CKD_SHA256_KDF, &[], &b_point), &generic(None)),
        Err(Error::TemplateIncomplete)
    );
    assert_eq!(
        d(&ecdh(CKD_NULL, &[], &b_point), &generic(Some(33))),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(
        d(&ecdh(CKD_NULL, &[], &b_point), &generic(Some(0))),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(
        d(
            &ecdh(CKD_SHA256_KDF, &[], &b_point),
            &generic(Some(1 << 20))
        ),
        Err(Error::AttributeValueInvalid)
    );
    // An AES key of a length AES does not have.
    assert_eq!(
        d(
            &ecdh(CKD_NULL, &[], &b_point),
            &secret_template(CKK_AES, Some(20))
        ),
        Err(Error::TemplateInconsistent)
    );
    // Parameters: shared data with CKD_NULL, unknown KDFs, no or other parameters.
    assert_eq!(
        d(&ecdh(CKD_NULL, b"x", &b_point), &generic(Some(32))),
        Err(Error::MechanismParamInvalid)
    );
    for kdf in [
        0,
        CKD_SHA1_KDF_ASN1,
        CKD_SHA256_KDF_SP800,
        CKD_SHA3_256_KDF,
        0x99,
    ] {
        assert_eq!(
            d(&ecdh(kdf, &[], &b_point), &generic(Some(32))),
            Err(Error::MechanismParamInvalid),
            "kdf {kdf}"
        );
    }
    assert_eq!(
        d(&Mechanism::new(CKM_ECDH1_DERIVE), &generic(Some(32))),
        Err(Error::MechanismParamInvalid)
    );
    assert_eq!(
        d(
            &Mechanism::with(CKM_ECDH1_DERIVE, MechanismParams::Bytes(b_point.clone())),
            &generic(Some(32))
        ),
        Err(Error::MechanismParamInvalid)
    );
    // Public data: another curve's point, a compressed point, truncated, garbage DER.
    let mut compressed = b_point[..33].to_vec();
    compressed[0] = 2 + (b_point[64] & 1);
    for bad in [
        c_point.clone(),
        compressed,
        b_point[..64].to_vec(),
        octet_string(&b_point[..64]),
        vec![],
        vec![0x04, 0x41],
    ] {
        assert_eq!(
            d(&ecdh(CKD_NULL, &[], &bad), &generic(Some(32))),
            Err(Error::MechanismParamInvalid)
        );
    }
    // A well-formed point that is not on the curve.
    let mut off = b_point.clone();
    off[64] ^= 1;
    assert_eq!(
        d(&ecdh(CKD_NULL, &[], &off), &generic(Some(32))),
        Err(Error::PublicKeyInvalid)
    );
    // ECDH derives secret keys only.
    let data = Template::new().with(Attribute::ulong(CKA_CLASS, CKO_DATA));
    assert_eq!(
        d(&ecdh(CKD_NULL, &[], &b_point), &data),
        Err(Error::TemplateInconsistent)
    );
    // Base keys: a public key, an Ed25519 key.
    assert_eq!(
        dev.derive_key(s, &ecdh(CKD_NULL, &[], &b_point), b_pub, &generic(Some(32)))
            .map(|_| ()),
        Err(Error::KeyTypeInconsistent)
    );
    let (_e_pub, e_priv) =
        keypair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, &hex("06032b6570")).unwrap();
    assert_eq!(
        dev.derive_key(
            s,
            &ecdh(CKD_NULL, &[], &b_point),
            e_priv,
            &generic(Some(32))
        )
        .map(|_| ()),
        Err(Error::KeyTypeInconsistent)
    );
}

// ---- EdDSA -------------------------------------------------------------------------------------

#[test]
fn ed25519_keygen_with_oid_and_curve_name() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let (_d, dev, s) = ready();
    for params in [hex("06032b6570"), printable("edwards25519")] {
        let (public, private) = keypair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, &params).unwrap();
        assert_eq!(get(&dev, s, public, CKA_EC_PARAMS), hex("06032b6570"));
        assert_eq!(get(&dev, s, private, CKA_EC_PARAMS), hex("06032b6570"));
        assert_eq!(ulong(&dev, s, public, CKA_KEY_TYPE), CKK_EC_EDWARDS);
        assert_eq!(
            ulong(&dev, s, private, CKA_KEY_GEN_MECHANISM),
            CKM_EC_EDWARDS_KEY_PAIR_GEN
        );
        let der = get(&dev, s, public, CKA_EC_POINT);
        assert_eq!(&der[..2], &[0x04, 0x20]);
        let seed: [u8; 32] = get(&dev, s, private, CKA_VALUE).try_into().unwrap();
        let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
        assert_eq!(der[2..], dalek.verifying_key().to_bytes());
        let spki = dalek.verifying_key().to_public_key_der().unwrap().to_vec();
        assert_eq!(get(&dev, s, public, CKA_PUBLIC_KEY_INFO), spki);
        assert_eq!(get(&dev, s, private, CKA_PUBLIC_KEY_INFO), spki);
    }
    let generate =
        |params: &[u8]| keypair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, params).map(|_| ());
    // Ed448, X25519, a prime curve: not on this mechanism.
    assert_eq!(generate(&hex("06032b6571")), Err(Error::CurveNotSupported));
    assert_eq!(generate(&hex("06032b656e")), Err(Error::CurveNotSupported));
    assert_eq!(
        generate(&printable("edwards448")),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(generate(&Curve::P256.oid()), Err(Error::CurveNotSupported));
    assert_eq!(generate(&hex("13")), Err(Error::DomainParamsInvalid));
}

#[test]
fn eddsa_cross_checked_with_ed25519_dalek_both_ways() {
    use ed25519_dalek::{Signer, Verifier};
    let (_d, dev, s) = ready();
    let (public, private) =
        keypair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, &hex("06032b6570")).unwrap();
    let seed: [u8; 32] = get(&dev, s, private, CKA_VALUE).try_into().unwrap();
    let ours = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let theirs = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let their_public = import_public(
        &dev,
        s,
        CKK_EC_EDWARDS,
        &printable("edwards25519"),
        &theirs.verifying_key().to_bytes(), // raw form accepted on import
    )
    .unwrap();
    let m = Mechanism::new(CKM_EDDSA);
    let pure = Mechanism::with(
        CKM_EDDSA,
        MechanismParams::Eddsa {
            ph_flag: false,
            context: vec![],
        },
    );
    for msg in [&b""[..], b"abc", &[0x5au8; 3000]] {
        let sig = sign(&dev, s, &m, private, msg).unwrap();
        assert_eq!(sig.len(), 64);
        let dalek_sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        ours.verify(msg, &dalek_sig).unwrap();
        // Deterministic: multi-part and the explicit pure parameter give the same.
        let half = msg.len() / 2;
        assert_eq!(
            sign_parts(&dev, s, &pure, private, &[&msg[..half], &msg[half..]]).unwrap(),
            sig
        );
        verify(&dev, s, &m, public, msg, &sig).unwrap();
        verify_parts(&dev, s, &pure, public, &[&msg[..half], &msg[half..]], &sig).unwrap();
        let theirs_sig = theirs.sign(msg).to_bytes();
        verify(&dev, s, &m, their_public, msg, &theirs_sig).unwrap();
        let mut bad = theirs_sig;
        bad[10] ^= 1;
        assert_eq!(
            verify(&dev, s, &m, their_public, msg, &bad),
            Err(Error::SignatureInvalid)
        );
        assert_eq!(
            verify(&dev, s, &m, their_public, msg, &theirs_sig[..63]),
            Err(Error::SignatureLenRange)
        );
    }
    // Ed25519ph and Ed25519ctx are not offered.
    for params in [
        MechanismParams::Eddsa {
            ph_flag: true,
            context: vec![],
        },
        MechanismParams::Eddsa {
            ph_flag: false,
            context: b"ctx".to_vec(),
        },
        MechanismParams::Bytes(vec![0]),
    ] {
        let m = Mechanism::with(CKM_EDDSA, params);
        assert_eq!(
            dev.sign_init(s, &m, private),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            dev.verify_init(s, &m, public),
            Err(Error::MechanismParamInvalid)
        );
    }
}

/// RFC 8032 §7.1, TEST 1 and TEST 2: an imported seed signs to the published signatures.
#[test]
fn ed25519_rfc8032_known_answers() {
    let (_d, dev, s) = ready();
    let oid = hex("06032b6570");
    for (seed, public, msg, sig) in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ] {
        let private = import_private(&dev, s, CKK_EC_EDWARDS, &oid, &hex(seed)).unwrap();
        let m = Mechanism::new(CKM_EDDSA);
        assert_eq!(sign(&dev, s, &m, private, &hex(msg)).unwrap(), hex(sig));
        let public =
            import_public(&dev, s, CKK_EC_EDWARDS, &oid, &octet_string(&hex(public))).unwrap();
        verify(&dev, s, &m, public, &hex(msg), &hex(sig)).unwrap();
    }
}

// ---- key types -------------------------------------------------------------------------------

#[test]
fn wrong_key_class_or_type_is_key_type_inconsistent() {
    let (_d, dev, s) = ready();
    let (ec_pub, ec_priv) = ec_keypair(&dev, s, Curve::P256);
    let (ed_pub, ed_priv) =
        keypair(&dev, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, &hex("06032b6570")).unwrap();
    let aes = dev
        .create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                .with(Attribute::bytes(CKA_VALUE, vec![1; 32])),
        )
        .unwrap();
    for mech in [CKM_ECDSA, CKM_ECDSA_SHA256] {
        let m = Mechanism::new(mech);
        for key in [ed_priv, ec_pub, aes] {
            assert_eq!(dev.sign_init(s, &m, key), Err(Error::KeyTypeInconsistent));
        }
        for key in [ed_pub, ec_priv, aes] {
            assert_eq!(dev.verify_init(s, &m, key), Err(Error::KeyTypeInconsistent));
        }
    }
    let m = Mechanism::new(CKM_EDDSA);
    for key in [ec_priv, ed_pub, aes] {
        assert_eq!(dev.sign_init(s, &m, key), Err(Error::KeyTypeInconsistent));
    }
    for key in [ec_pub, ed_priv, aes] {
        assert_eq!(dev.verify_init(s, &m, key), Err(Error::KeyTypeInconsistent));
    }
    // A usage attribute is checked after the key type: CKA_SIGN=FALSE on a right key.
    let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, Curve::P256.oid()));
    let private = Template::new().with(Attribute::bool(CKA_SIGN, false));
    let (_p, no_sign) = dev
        .generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &public, &private)
        .unwrap();
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_ECDSA), no_sign),
        Err(Error::KeyFunctionNotPermitted)
    );
    assert_eq!(
        dev.sign_init(s, &Mechanism::new(CKM_EDDSA), no_sign),
        Err(Error::KeyTypeInconsistent)
    );
}

// ---- import ----------------------------------------------------------------------------------

#[test]
fn imported_ec_private_key_signs_and_public_key_verifies() {
    let (_d, dev, s) = ready();
    for curve in CURVES {
        // A scalar with a leading zero byte, given in its minimal form (as pkcs11-tool does).
        let scalar = curve.rc_scalar();
        assert_eq!(scalar[0], 0);
        for params in [curve.oid(), printable(curve.names()[0])] {
            let private = import_private(&dev, s, CKK_EC, &params, &scalar[1..]).unwrap();
            // Imported keys keep their attributes as given.
            assert_eq!(get(&dev, s, private, CKA_EC_PARAMS), params);
            assert_eq!(get(&dev, s, private, CKA_LOCAL), [0]);
            let m = Mechanism::new(CKM_ECDSA_SHA384);
            let sig = sign(&dev, s, &m, private, b"imported").unwrap();
            let e = e_of(curve, &hash_of(CKM_ECDSA_SHA384, b"imported"));
            let point = rc_point(curve, &scalar);
            assert!(rc_verify(curve, &point, &e, &sig));
            let public = import_public(&dev, s, CKK_EC, &params, &octet_string(&point)).unwrap();
            verify(&dev, s, &m, public, b"imported", &sig).unwrap();
            // The full-length form, with an extra leading zero, is the same key.
            let mut longer = vec![0u8];
            longer.extend_from_slice(&scalar);
            let same = import_private(&dev, s, CKK_EC, &params, &longer).unwrap();
            let sig = sign(&dev, s, &m, same, b"imported").unwrap();
            verify(&dev, s, &m, public, b"imported", &sig).unwrap();
        }
    }
}

#[test]
fn import_checks_curve_scalar_point_and_key_info() {
    let (_d, dev, s) = ready();
    let oid = Curve::P256.oid();
    let scalar = Curve::P256.rc_scalar();
    let point = rc_point(Curve::P256, &scalar);
    let n_p256 = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let private =
        |params: &[u8], value: &[u8]| import_private(&dev, s, CKK_EC, params, value).map(|_| ());
    // Scalars out of [1, n-1], or too long.
    assert_eq!(private(&oid, &[0]), Err(Error::AttributeValueInvalid));
    assert_eq!(private(&oid, &n_p256), Err(Error::AttributeValueInvalid));
    assert_eq!(
        private(&oid, &[0xff; 32]),
        Err(Error::AttributeValueInvalid)
    );
    let mut long = vec![1u8];
    long.extend_from_slice(&scalar);
    assert_eq!(private(&oid, &long), Err(Error::AttributeValueInvalid));
    let mut n_minus_1 = n_p256.clone();
    n_minus_1[31] -= 1;
    private(&oid, &n_minus_1).unwrap();
    private(&oid, &[1]).unwrap();
    // Curves.
    assert_eq!(
        private(&hex("06052b8104000a"), &scalar),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(
        private(&hex("06032b6570"), &scalar),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(
        private(&hex("0500"), &scalar),
        Err(Error::DomainParamsInvalid)
    );
    // Missing attributes.
    let no_value = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
        .with(Attribute::bytes(CKA_EC_PARAMS, oid.clone()));
    assert_eq!(
        dev.create_object(s, &no_value).map(|_| ()),
        Err(Error::TemplateIncomplete)
    );

    let public = |point: &[u8]| import_public(&dev, s, CKK_EC, &oid, point).map(|_| ());
    public(&point).unwrap();
    public(&octet_string(&point)).unwrap();
    // Not on the curve; compressed; wrong length; DER around the wrong length.
    let mut off = point.clone();
    off[64] ^= 1;
    assert_eq!(public(&octet_string(&off)), Err(Error::PublicKeyInvalid));
    let mut compressed = point[..33].to_vec();
    compressed[0] = 2 + (point[64] & 1);
    assert_eq!(public(&compressed), Err(Error::AttributeValueInvalid));
    assert_eq!(
        public(&octet_string(&compressed)),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(public(&point[..64]), Err(Error::AttributeValueInvalid));
    assert_eq!(public(&[]), Err(Error::AttributeValueInvalid));
    let mut bad_tag = octet_string(&point);
    bad_tag[0] = 0x03;
    assert_eq!(public(&bad_tag), Err(Error::AttributeValueInvalid));
    let no_point = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
        .with(Attribute::bytes(CKA_EC_PARAMS, oid.clone()));
    assert_eq!(
        dev.create_object(s, &no_point).map(|_| ()),
        Err(Error::TemplateIncomplete)
    );

    // CKA_PUBLIC_KEY_INFO, if given, must describe the key.
    let spki = rc_spki(Curve::P256, &point);
    let with_info = |info: Vec<u8>| {
        dev.create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
                .with(Attribute::bytes(CKA_EC_PARAMS, oid.clone()))
                .with(Attribute::bytes(CKA_EC_POINT, octet_string(&point)))
                .with(Attribute::bytes(CKA_PUBLIC_KEY_INFO, info)),
        )
        .map(|_| ())
    };
    with_info(spki.clone()).unwrap();
    let mut other = spki.clone();
    *other.last_mut().unwrap() ^= 1;
    assert_eq!(with_info(other), Err(Error::AttributeValueInvalid));

    // Ed25519: 32-byte seed, 32-byte point raw or DER.
    let ed = hex("06032b6570");
    assert_eq!(
        import_private(&dev, s, CKK_EC_EDWARDS, &ed, &[1; 31]).map(|_| ()),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(
        import_private(&dev, s, CKK_EC_EDWARDS, &oid, &[1; 32]).map(|_| ()),
        Err(Error::CurveNotSupported)
    );
    assert_eq!(
        import_public(&dev, s, CKK_EC_EDWARDS, &ed, &[1; 33]).map(|_| ()),
        Err(Error::AttributeValueInvalid)
    );
    assert_eq!(
        import_public(&dev, s, CKK_EC_EDWARDS, &ed, &octet_string(&[1; 31])).map(|_| ()),
        Err(Error::AttributeValueInvalid)
    );
}

// ---- Wycheproof --------------------------------------------------------------------------------

/// Wycheproof ECDSA (IEEE P1363 signature format, the PKCS#11 one) through `C_Verify`: every
/// valid vector verifies, every invalid one is refused (`CKR_SIGNATURE_INVALID` or
/// `CKR_SIGNATURE_LEN_RANGE`), except the short encodings PKCS#11 allows (see below).
#[test]
fn wycheproof_ecdsa_p1363_verify() {
    use wycheproof::ecdsa::{TestFlag, TestName, TestSet};
    use wycheproof::{HashFunction, TestResult};
    let (_d, dev, s) = ready();
    // (valid, invalid, short forms that PKCS#11 accepts)
    let mut counts = (0, 0, 0);
    for (name, curve) in [
        (TestName::EcdsaSecp256r1Sha256P1363, Curve::P256),
        (TestName::EcdsaSecp256r1Sha512P1363, Curve::P256),
        (TestName::EcdsaSecp384r1Sha384P1363, Curve::P384),
        (TestName::EcdsaSecp384r1Sha512P1363, Curve::P384),
        (TestName::EcdsaSecp521r1Sha512P1363, Curve::P521),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in set.test_groups {
            let mech = match group.hash {
                HashFunction::Sha2_256 => CKM_ECDSA_SHA256,
                HashFunction::Sha2_384 => CKM_ECDSA_SHA384,
                HashFunction::Sha2_512 => CKM_ECDSA_SHA512,
                h => panic!("{h:?}"),
            };
            let key = import_public(&dev, s, CKK_EC, &curve.oid(), &group.key.key).unwrap();
            for t in group.tests {
                let r = verify(&dev, s, &Mechanism::new(mech), key, &t.msg, &t.sig);
                let n = curve.n();
                if t.flags.contains(&TestFlag::SignatureSize)
                    && !t.sig.is_empty()
                    && t.sig.len() % 2 == 0
                    && t.sig.len() < 2 * n
                {
                    // Wycheproof's P1363 wants exactly 2n bytes; PKCS#11 §6.3.1 also takes
                    // a shorter r ‖ s of equal halves. Such a signature must verify exactly
                    // when its left-padded form does (checked with RustCrypto).
                    let (r_half, s_half) = t.sig.split_at(t.sig.len() / 2);
                    let mut padded = vec![0u8; n - r_half.len()];
                    padded.extend_from_slice(r_half);
                    padded.resize(2 * n - s_half.len(), 0);
                    padded.extend_from_slice(s_half);
                    let e = e_of(curve, &hash_of(mech, &t.msg));
                    let want = rc_verify(curve, &group.key.key, &e, &padded);
                    assert_eq!(r.is_ok(), want, "{name:?} tc {} {}", t.tc_id, t.comment);
                    if !want {
                        assert_eq!(r, Err(Error::SignatureInvalid));
                    }
                    counts.2 += usize::from(want);
                    continue;
                }
                match t.result {
                    TestResult::Valid => {
                        assert_eq!(r, Ok(()), "{name:?} tc {} {}", t.tc_id, t.comment);
                        counts.0 += 1;
                    }
                    TestResult::Invalid => {
                        assert!(
                            matches!(r, Err(Error::SignatureInvalid | Error::SignatureLenRange)),
                            "{name:?} tc {} {}: {r:?}",
                            t.tc_id,
                            t.comment
                        );
                        counts.1 += 1;
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
    }
    assert!(
        counts.0 > 100 && counts.1 > 100 && counts.2 > 10,
        "{counts:?}"
    );
}

/// Wycheproof Ed25519 through `C_Verify`.
#[test]
fn wycheproof_ed25519_verify() {
    use wycheproof::TestResult;
    use wycheproof::eddsa::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut n = 0;
    for group in set.test_groups {
        let key =
            import_public(&dev, s, CKK_EC_EDWARDS, &hex("06032b6570"), &group.key.pk).unwrap();
        for t in group.tests {
            let r = verify(&dev, s, &Mechanism::new(CKM_EDDSA), key, &t.msg, &t.sig);
            match t.result {
                TestResult::Valid => assert_eq!(r, Ok(()), "tc {} {}", t.tc_id, t.comment),
                TestResult::Invalid => assert!(
                    matches!(r, Err(Error::SignatureInvalid | Error::SignatureLenRange)),
                    "tc {} {}: {r:?}",
                    t.tc_id,
                    t.comment
                ),
                TestResult::Acceptable => {}
            }
            n += 1;
        }
    }
    assert!(n > 100);
}

/// Wycheproof ECDH with X9.62 points: an imported private key derives the expected shared
/// secret with `CKD_NULL`; invalid public points are refused.
#[test]
fn wycheproof_ecdh_ecpoint() {
    use wycheproof::TestResult;
    use wycheproof::ecdh::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let mut counts = (0, 0);
    for (name, curve) in [
        (TestName::EcdhSecp256r1Ecpoint, Curve::P256),
        (TestName::EcdhSecp384r1Ecpoint, Curve::P384),
        (TestName::EcdhSecp521r1Ecpoint, Curve::P521),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in set.test_groups {
            for t in group.tests {
                let private = import_private(&dev, s, CKK_EC, &curve.oid(), &t.private_key);
                let private = private.unwrap_or_else(|e| panic!("tc {}: {e:?}", t.tc_id));
                let r = derive(
                    &dev,
                    s,
                    &ecdh(CKD_NULL, &[], &t.public_key),
                    private,
                    &secret_template(CKK_GENERIC_SECRET, None),
                );
                match t.result {
                    TestResult::Valid => {
                        assert_eq!(
                            r.as_deref(),
                            Ok(&t.shared_secret[..]),
                            "{name:?} tc {} {}",
                            t.tc_id,
                            t.comment
                        );
                        counts.0 += 1;
                    }
                    TestResult::Invalid => {
                        assert!(
                            matches!(
                                r,
                                Err(Error::MechanismParamInvalid | Error::PublicKeyInvalid)
                            ),
                            "{name:?} tc {} {}: {r:?}",
                            t.tc_id,
                            t.comment
                        );
                        counts.1 += 1;
                    }
                    // Compressed points: acceptable to refuse (CKF_EC_UNCOMPRESS only).
                    TestResult::Acceptable => {}
                }
            }
        }
    }
    assert!(counts.0 > 10 && counts.1 > 10, "{counts:?}");
}

// ---- persistence -------------------------------------------------------------------------------

/// Token keys are sealed in the store; after a reopen the private keys unseal and sign, and the
/// public keys verify.
#[test]
fn token_keys_work_after_the_store_is_reopened() {
    let (dir, dev, s) = ready();
    let token = |t: Template| t.with(Attribute::bool(CKA_TOKEN, true));
    for (mech, params) in [
        (CKM_EC_KEY_PAIR_GEN, Curve::P384.oid()),
        (CKM_EC_EDWARDS_KEY_PAIR_GEN, hex("06032b6570")),
    ] {
        dev.generate_key_pair(
            s,
            &Mechanism::new(mech),
            &token(Template::new().with(Attribute::bytes(CKA_EC_PARAMS, params))),
            &token(Template::new()),
        )
        .unwrap();
    }
    drop(dev);
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    let find = |class, key_type| {
        dev.find_objects_init(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, class))
                .with(Attribute::ulong(CKA_KEY_TYPE, key_type)),
        )
        .unwrap();
        let found = dev.find_objects(s, 10).unwrap();
        dev.find_objects_final(s).unwrap();
        assert_eq!(found.len(), 1);
        found[0]
    };
    for (key_type, mech) in [(CKK_EC, CKM_ECDSA_SHA256), (CKK_EC_EDWARDS, CKM_EDDSA)] {
        let private = find(CKO_PRIVATE_KEY, key_type);
        let public = find(CKO_PUBLIC_KEY, key_type);
        let m = Mechanism::new(mech);
        let sig = sign(&dev, s, &m, private, b"persisted").unwrap();
        verify(&dev, s, &m, public, b"persisted", &sig).unwrap();
    }
}

// ---- protection of ECDH-derived keys ---------------------------------------------------------

/// ECDH lets the template choose CKA_SENSITIVE / CKA_EXTRACTABLE even from a sensitive,
/// unextractable base key (the secret is the peer's too); with nothing said the secret is
/// extractable, and CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE record the choice.
#[test]
fn ecdh_secrets_from_protected_keys_follow_the_template() {
    let (_dir, dev, s) = ready();
    let protected = |dev: &Device| {
        let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, Curve::P256.oid()));
        let private = Template::new().with(Attribute::bool(CKA_DERIVE, true));
        dev.generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &public, &private)
            .unwrap()
    };
    let (a_pub, a_priv) = protected(&dev);
    let (b_pub, b_priv) = protected(&dev);
    let a_point = unwrap_octet_string(&get(&dev, s, a_pub, CKA_EC_POINT));
    let b_point = unwrap_octet_string(&get(&dev, s, b_pub, CKA_EC_POINT));
    let bare = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET));
    let ka = dev
        .derive_key(s, &ecdh(CKD_NULL, &[], &b_point), a_priv, &bare)
        .unwrap();
    let kb = dev
        .derive_key(s, &ecdh(CKD_NULL, &[], &a_point), b_priv, &bare)
        .unwrap();
    let za = get(&dev, s, ka, CKA_VALUE);
    assert_eq!(za.len(), 32);
    assert_eq!(za, get(&dev, s, kb, CKA_VALUE));
    assert_eq!(get(&dev, s, ka, CKA_ALWAYS_SENSITIVE), vec![0]);
    assert_eq!(get(&dev, s, ka, CKA_NEVER_EXTRACTABLE), vec![0]);

    // Asking for protection keeps it, and the token-maintained flags say so.
    let kept = bare
        .clone()
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false));
    let k = dev
        .derive_key(s, &ecdh(CKD_NULL, &[], &b_point), a_priv, &kept)
        .unwrap();
    assert_eq!(get(&dev, s, k, CKA_ALWAYS_SENSITIVE), vec![1]);
    assert_eq!(get(&dev, s, k, CKA_NEVER_EXTRACTABLE), vec![1]);
    assert!(matches!(
        dev.get_attribute_value(s, k, &[CKA_VALUE]).unwrap()[0],
        AttrAnswer::Sensitive
    ));
}
