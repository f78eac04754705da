//! The RSA family through the `Backend` API: key pair generation, PKCS#1 v1.5, raw RSA, PSS,
//! OAEP, the hash-and-sign mechanisms, import, wrap/unwrap and the RSA-AES key wrap.
//!
//! Every signature and ciphertext the device makes is checked by an independent implementation
//! (the RustCrypto `rsa` crate, and for the BYOK format also the `openssl` command when it is
//! installed), and the other way round; known answers come from the Wycheproof vectors.

// All of this crate is test code (clippy's allow-*-in-tests settings cover only `#[test]`
// functions, not their helpers); the test data sizes are small, so no cast truncates.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use firmware_sim::Device;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::OsRng;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Oaep, Pkcs1v15Encrypt, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::digest::DynDigest;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

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
    label[..3].copy_from_slice(b"rsa");
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum H {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

const HASHES: [H; 5] = [H::Sha1, H::Sha224, H::Sha256, H::Sha384, H::Sha512];

impl H {
    fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            H::Sha1 => CKM_SHA_1,
            H::Sha224 => CKM_SHA224,
            H::Sha256 => CKM_SHA256,
            H::Sha384 => CKM_SHA384,
            H::Sha512 => CKM_SHA512,
        }
    }
    fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            H::Sha1 => CKG_MGF1_SHA1,
            H::Sha224 => CKG_MGF1_SHA224,
            H::Sha256 => CKG_MGF1_SHA256,
            H::Sha384 => CKG_MGF1_SHA384,
            H::Sha512 => CKG_MGF1_SHA512,
        }
    }
    fn pkcs1_mech(self) -> CK_MECHANISM_TYPE {
        match self {
            H::Sha1 => CKM_SHA1_RSA_PKCS,
            H::Sha224 => CKM_SHA224_RSA_PKCS,
            H::Sha256 => CKM_SHA256_RSA_PKCS,
            H::Sha384 => CKM_SHA384_RSA_PKCS,
            H::Sha512 => CKM_SHA512_RSA_PKCS,
        }
    }
    fn pss_mech(self) -> CK_MECHANISM_TYPE {
        match self {
            H::Sha1 => CKM_SHA1_RSA_PKCS_PSS,
            H::Sha224 => CKM_SHA224_RSA_PKCS_PSS,
            H::Sha256 => CKM_SHA256_RSA_PKCS_PSS,
            H::Sha384 => CKM_SHA384_RSA_PKCS_PSS,
            H::Sha512 => CKM_SHA512_RSA_PKCS_PSS,
        }
    }
    fn len(self) -> usize {
        self.digest(b"").len()
    }
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            H::Sha1 => sha1::Sha1::digest(data).to_vec(),
            H::Sha224 => Sha224::digest(data).to_vec(),
            H::Sha256 => Sha256::digest(data).to_vec(),
            H::Sha384 => Sha384::digest(data).to_vec(),
            H::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
    fn dyn_digest(self) -> Box<dyn DynDigest + Send + Sync> {
        match self {
            H::Sha1 => Box::new(sha1::Sha1::default()),
            H::Sha224 => Box::new(Sha224::default()),
            H::Sha256 => Box::new(Sha256::default()),
            H::Sha384 => Box::new(Sha384::default()),
            H::Sha512 => Box::new(Sha512::default()),
        }
    }
    fn pkcs1(self) -> Pkcs1v15Sign {
        match self {
            H::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
            H::Sha224 => Pkcs1v15Sign::new::<Sha224>(),
            H::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            H::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            H::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
    fn pss(self, salt_len: usize) -> Pss {
        Pss {
            blinded: false,
            digest: self.dyn_digest(),
            salt_len,
        }
    }
    fn oaep(self, mgf: H, label: &str) -> Oaep {
        Oaep {
            digest: self.dyn_digest(),
            mgf_digest: mgf.dyn_digest(),
            label: (!label.is_empty()).then(|| label.to_owned()),
        }
    }
    fn from_wycheproof(h: wycheproof::HashFunction) -> Option<H> {
        use wycheproof::HashFunction as W;
        Some(match h {
            W::Sha1 => H::Sha1,
            W::Sha2_224 => H::Sha224,
            W::Sha2_256 => H::Sha256,
            W::Sha2_384 => H::Sha384,
            W::Sha2_512 => H::Sha512,
            _ => return None,
        })
    }
}

fn mech(ty: CK_MECHANISM_TYPE) -> Mechanism {
    Mechanism::new(ty)
}

fn pss_params(hash: H, mgf: H, salt_len: usize) -> MechanismParams {
    MechanismParams::RsaPkcsPss {
        hash_alg: hash.ckm(),
        mgf: mgf.mgf(),
        salt_len: salt_len as CK_ULONG,
    }
}

fn pss(ty: CK_MECHANISM_TYPE, hash: H, salt_len: usize) -> Mechanism {
    Mechanism {
        ty,
        params: pss_params(hash, hash, salt_len),
    }
}

fn oaep_params(hash: H, mgf: H, label: &[u8]) -> OaepParams {
    OaepParams {
        hash_alg: hash.ckm(),
        mgf: mgf.mgf(),
        source: CKZ_DATA_SPECIFIED,
        source_data: label.to_vec(),
    }
}

fn oaep(hash: H, mgf: H, label: &[u8]) -> Mechanism {
    Mechanism {
        ty: CKM_RSA_PKCS_OAEP,
        params: MechanismParams::RsaPkcsOaep(oaep_params(hash, mgf, label)),
    }
}

/// Runs an output-producing call the PKCS#11 way: length query, then the real call.
fn output(mut f: impl FnMut(Option<&mut [u8]>) -> Result<usize>) -> Result<Vec<u8>> {
    let n = f(None)?;
    let mut buf = vec![0u8; n];
    let m = f(Some(&mut buf))?;
    buf.truncate(m);
    Ok(buf)
}

fn sign(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.sign_init(s, m, key)?;
    output(|o| dev.sign(s, data, o))
}

fn sign_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
) -> Vec<u8> {
    dev.sign_init(s, m, key).unwrap();
    for part in data.chunks(100) {
        dev.sign_update(s, part).unwrap();
    }
    output(|o| dev.sign_final(s, o)).unwrap()
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

fn verify_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
    dev.verify_init(s, m, key)?;
    for part in data.chunks(100) {
        dev.verify_update(s, part)?;
    }
    dev.verify_final(s, sig)
}

fn encrypt(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.encrypt_init(s, m, key)?;
    output(|o| dev.encrypt(s, data, o))
}

fn decrypt(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.decrypt_init(s, m, key)?;
    output(|o| dev.decrypt(s, data, o))
}

fn attr(dev: &Device, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match &dev.get_attribute_value(s, o, &[ty]).unwrap()[0] {
        AttrAnswer::Value(AttrValue::Bytes(b)) => b.clone(),
        other => panic!("0x{ty:x}: {other:?}"),
    }
}

fn ulong(b: &[u8]) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(b.try_into().unwrap())
}

fn big(b: &[u8]) -> BigUint {
    BigUint::from_bytes_be(b)
}

/// Generates a key pair whose private half can be read back (to check it independently).
fn generate(
    dev: &Device,
    s: SessionHandle,
    bits: CK_ULONG,
    e: Option<&[u8]>,
) -> Result<(ObjectHandle, ObjectHandle)> {
    let mut public = Template::new().with(Attribute::ulong(CKA_MODULUS_BITS, bits));
    if let Some(e) = e {
        public
            .0
            .push(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.to_vec()));
    }
    let private = Template::new()
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    dev.generate_key_pair(s, &mech(CKM_RSA_PKCS_KEY_PAIR_GEN), &public, &private)
}

/// The RustCrypto form of a readable private key object.
fn read_private(dev: &Device, s: SessionHandle, o: ObjectHandle) -> RsaPrivateKey {
    let a = |ty| big(&attr(dev, s, o, ty));
    RsaPrivateKey::from_components(
        a(CKA_MODULUS),
        a(CKA_PUBLIC_EXPONENT),
        a(CKA_PRIVATE_EXPONENT),
        vec![a(CKA_PRIME_1), a(CKA_PRIME_2)],
    )
    .unwrap()
}

fn public_template(key: &RsaPublicKey) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
        .with(Attribute::bytes(CKA_MODULUS, key.n().to_bytes_be()))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, key.e().to_bytes_be()))
}

/// A private key template with the given components (`None` leaves one out).
fn private_template(key: &RsaPrivateKey, with_primes: bool, with_crt: bool) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
        .with(Attribute::bytes(CKA_MODULUS, key.n().to_bytes_be()))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, key.e().to_bytes_be()))
        .with(Attribute::bytes(
            CKA_PRIVATE_EXPONENT,
            key.d().to_bytes_be(),
        ));
    if with_primes {
        t.0.push(Attribute::bytes(CKA_PRIME_1, key.primes()[0].to_bytes_be()));
        t.0.push(Attribute::bytes(CKA_PRIME_2, key.primes()[1].to_bytes_be()));
    }
    if with_crt {
        t.0.push(Attribute::bytes(
            CKA_EXPONENT_1,
            key.dp().unwrap().to_bytes_be(),
        ));
        t.0.push(Attribute::bytes(
            CKA_EXPONENT_2,
            key.dq().unwrap().to_bytes_be(),
        ));
        t.0.push(Attribute::bytes(
            CKA_COEFFICIENT,
            key.crt_coefficient().unwrap().to_bytes_be(),
        ));
    }
    t
}

fn rc_key(bits: usize) -> RsaPrivateKey {
    RsaPrivateKey::new(&mut OsRng, bits).unwrap()
}

// ---- key pair generation --------------------------------------------------------------------

#[test]
fn keygen_makes_consistent_keys_of_the_asked_size_and_exponent() {
    let (_d, dev, s) = ready();
    // 2048 and 3072 with the default exponent come from aws-lc-rs, 1024 and e = 3 from
    // RustCrypto.
    for (bits, e, want_e) in [
        (2048, None, vec![1, 0, 1]),
        (1024, Some(&[1u8, 0, 1][..]), vec![1, 0, 1]),
        (3072, None, vec![1, 0, 1]),
        (1024, Some(&[0u8, 3][..]), vec![3]),
    ] {
        let (public, private) = generate(&dev, s, bits, e).unwrap();
        let n = attr(&dev, s, public, CKA_MODULUS);
        assert_eq!(n.len() * 8, bits as usize);
        assert_eq!(ulong(&attr(&dev, s, public, CKA_MODULUS_BITS)), bits);
        assert_eq!(attr(&dev, s, public, CKA_PUBLIC_EXPONENT), want_e);
        assert_eq!(attr(&dev, s, private, CKA_MODULUS), n);
        assert_eq!(attr(&dev, s, private, CKA_PUBLIC_EXPONENT), want_e);
        let info = attr(&dev, s, public, CKA_PUBLIC_KEY_INFO);
        let spki = RsaPublicKey::from_public_key_der(&info).unwrap();
        assert_eq!(spki.n(), &big(&n));
        assert_eq!(attr(&dev, s, private, CKA_PUBLIC_KEY_INFO), info);
        // The private components are consistent (RustCrypto validates them), CRT included.
        let k = read_private(&dev, s, private);
        assert_eq!(
            big(&attr(&dev, s, private, CKA_EXPONENT_1)),
            *k.dp().unwrap()
        );
        assert_eq!(
            big(&attr(&dev, s, private, CKA_EXPONENT_2)),
            *k.dq().unwrap()
        );
        assert_eq!(
            big(&attr(&dev, s, private, CKA_COEFFICIENT)),
            k.crt_coefficient().unwrap()
        );
        for o in [public, private] {
            assert_eq!(attr(&dev, s, o, CKA_LOCAL), [1]);
            assert_eq!(
                ulong(&attr(&dev, s, o, CKA_KEY_GEN_MECHANISM)),
                CKM_RSA_PKCS_KEY_PAIR_GEN
            );
        }
    }
}

#[test]
fn keygen_refuses_bad_sizes_exponents_and_templates() {
    let (_d, dev, s) = ready();
    let gen_with = |public: Template| {
        dev.generate_key_pair(
            s,
            &mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &Template::new(),
        )
    };
    assert_eq!(gen_with(Template::new()), Err(Error::TemplateIncomplete));
    for bits in [0, 512, 1023, 4097, 8192] {
        assert_eq!(
            generate(&dev, s, bits, None),
            Err(Error::KeySizeRange),
            "{bits}"
        );
    }
    for e in [
        &[][..],
        &[0][..],
        &[1][..],
        &[0, 1][..],
        &[1, 0, 0][..],
        &[2][..],
    ] {
        assert_eq!(
            generate(&dev, s, 1024, Some(e)),
            Err(Error::AttributeValueInvalid),
            "{e:?}"
        );
    }
    // Valid RSA exponents this token cannot use.
    for e in [&[2u8, 0, 0, 0, 1][..], &[1, 0, 0, 0, 0, 0, 0, 0, 1]] {
        assert_eq!(
            generate(&dev, s, 1024, Some(e)),
            Err(Error::TemplateInconsistent),
            "{e:?}"
        );
    }
    let with_params = Mechanism {
        ty: CKM_RSA_PKCS_KEY_PAIR_GEN,
        params: MechanismParams::Ulong(1),
    };
    let public = Template::new().with(Attribute::ulong(CKA_MODULUS_BITS, 1024));
    assert_eq!(
        dev.generate_key_pair(s, &with_params, &public, &Template::new()),
        Err(Error::MechanismParamInvalid)
    );
    // Key material in the templates is the token's to choose.
    let with_modulus = public
        .clone()
        .with(Attribute::bytes(CKA_MODULUS, vec![1; 128]));
    assert_eq!(gen_with(with_modulus), Err(Error::AttributeReadOnly));
    let wrong_type = public.with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC));
    assert_eq!(gen_with(wrong_type), Err(Error::TemplateInconsistent));
}

#[test]
fn mechanism_list_and_info_are_exact() {
    let (_d, dev, _s) = ready();
    let list = dev.mechanism_list(SlotId(0)).unwrap();
    let sign_verify = CKF_HW | CKF_SIGN | CKF_VERIFY | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY;
    let expect = [
        (CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_HW | CKF_GENERATE_KEY_PAIR),
        (
            CKM_RSA_PKCS,
            sign_verify | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP,
        ),
        (CKM_RSA_X_509, sign_verify | CKF_ENCRYPT | CKF_DECRYPT),
        (
            CKM_RSA_PKCS_OAEP,
            CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP,
        ),
        (CKM_RSA_PKCS_PSS, sign_verify),
        (CKM_RSA_AES_KEY_WRAP, CKF_HW | CKF_WRAP | CKF_UNWRAP),
    ];
    let hashed = HASHES
        .iter()
        .flat_map(|h| [(h.pkcs1_mech(), sign_verify), (h.pss_mech(), sign_verify)]);
    for (ty, flags) in expect.into_iter().chain(hashed) {
        assert!(list.contains(&ty), "0x{ty:x} listed");
        let info = dev.mechanism_info(SlotId(0), ty).unwrap();
        assert_eq!(
            (info.min_key_size, info.max_key_size, info.flags),
            (1024, 4096, flags),
            "0x{ty:x}"
        );
    }
    for ty in [CKM_MD5_RSA_PKCS, CKM_RSA_9796, CKM_RSA_X9_31_KEY_PAIR_GEN] {
        assert_eq!(
            dev.mechanism_info(SlotId(0), ty),
            Err(Error::MechanismInvalid)
        );
    }
}

// ---- signatures -----------------------------------------------------------------------------

/// Every signature mechanism, both ways against RustCrypto, for a 2048-bit key (aws-lc-rs
/// where it can) and a 1024-bit one (RustCrypto throughout).
#[test]
fn every_signature_mechanism_cross_checks_with_rustcrypto() {
    let (_d, dev, s) = ready();
    let msg: Vec<u8> = (0..777u32).map(|i| (i * 7) as u8).collect();
    for bits in [2048, 1024] {
        let (public, private) = generate(&dev, s, bits, None).unwrap();
        let ours = read_private(&dev, s, private);
        let theirs = ours.to_public_key();
        let k = bits as usize / 8;

        // CKM_RSA_PKCS over a DigestInfo of every hash, and over the 36-byte TLS 1.1 MD5+SHA-1.
        let m = mech(CKM_RSA_PKCS);
        for h in HASHES {
            let digest = h.digest(&msg);
            let mut info = h.pkcs1().prefix.to_vec();
            info.extend_from_slice(&digest);
            let sig = sign(&dev, s, &m, private, &info).unwrap();
            theirs.verify(h.pkcs1(), &digest, &sig).unwrap();
            let sig2 = ours.sign(h.pkcs1(), &digest).unwrap();
            assert_eq!(sig, sig2, "PKCS#1 v1.5 is deterministic");
            verify(&dev, s, &m, public, &info, &sig2).unwrap();
        }
        let tls = [0x5a; 36];
        let sig = sign(&dev, s, &m, private, &tls).unwrap();
        theirs
            .verify(Pkcs1v15Sign::new_unprefixed(), &tls, &sig)
            .unwrap();
        verify(&dev, s, &m, public, &tls, &sig).unwrap();
        let longest = vec![0x33; k - 11];
        let sig = sign(&dev, s, &m, private, &longest).unwrap();
        theirs
            .verify(Pkcs1v15Sign::new_unprefixed(), &longest, &sig)
            .unwrap();

        // The hash-and-sign mechanisms, single- and multi-part.
        for h in HASHES {
            let m = mech(h.pkcs1_mech());
            let sig = sign(&dev, s, &m, private, &msg).unwrap();
            assert_eq!(sign_parts(&dev, s, &m, private, &msg), sig);
            theirs.verify(h.pkcs1(), &h.digest(&msg), &sig).unwrap();
            let sig2 = ours.sign(h.pkcs1(), &h.digest(&msg)).unwrap();
            verify(&dev, s, &m, public, &msg, &sig2).unwrap();
            verify_parts(&dev, s, &m, public, &msg, &sig2).unwrap();
        }

        // PSS, pre-hashed and hashing, with the usual salt lengths: hLen, 0 and the largest
        // (SHA-512 with a 64-byte salt does not fit in 1024 bits).
        for h in HASHES {
            let em_len = (bits as usize - 1).div_ceil(8);
            let max_salt = em_len - h.len() - 2;
            for salt in [h.len(), 0, max_salt]
                .into_iter()
                .filter(|s| *s <= max_salt)
            {
                let digest = h.digest(&msg);
                let raw = pss(CKM_RSA_PKCS_PSS, h, salt);
                let sig = sign(&dev, s, &raw, private, &digest).unwrap();
                theirs.verify(h.pss(salt), &digest, &sig).unwrap();
                let sig2 = ours
                    .sign_with_rng(&mut OsRng, h.pss(salt), &digest)
                    .unwrap();
                verify(&dev, s, &raw, public, &digest, &sig2).unwrap();

                let hashing = pss(h.pss_mech(), h, salt);
                let sig = sign_parts(&dev, s, &hashing, private, &msg);
                theirs.verify(h.pss(salt), &digest, &sig).unwrap();
                verify(&dev, s, &hashing, public, &msg, &sig).unwrap();
                verify(&dev, s, &hashing, public, &msg, &sig2).unwrap();
                verify_parts(&dev, s, &hashing, public, &msg, &sig2).unwrap();
            }
        }
    }
}

#[test]
fn x509_is_raw_rsa_both_ways() {
    let (_d, dev, s) = ready();
    for bits in [2048, 1024] {
        let (public, private) = generate(&dev, s, bits, None).unwrap();
        let ours = read_private(&dev, s, private);
        let theirs = ours.to_public_key();
        let k = bits as usize / 8;
        let m = mech(CKM_RSA_X_509);

        // Decryption returns all k bytes, leading zeros included.
        let mut plain = vec![0u8; k];
        plain[5..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let ct = encrypt(&dev, s, &m, public, &plain).unwrap();
        assert_eq!(ct.len(), k);
        let expect = big(&plain).modpow(theirs.e(), theirs.n());
        assert_eq!(big(&ct), expect);
        assert_eq!(decrypt(&dev, s, &m, private, &ct).unwrap(), plain);
        // Short input is left-padded with zeros.
        let ct = encrypt(&dev, s, &m, public, b"short").unwrap();
        let dec = decrypt(&dev, s, &m, private, &ct).unwrap();
        assert_eq!(&dec[..k - 5], &vec![0u8; k - 5][..]);
        assert_eq!(&dec[k - 5..], b"short");

        // Signing a complete PKCS#1 v1.5 block equals CKM_RSA_PKCS over its content (what
        // pkcs11-tool --test checks).
        let mut info = H::Sha1.pkcs1().prefix.to_vec();
        info.extend_from_slice(&H::Sha1.digest(b"data"));
        let mut block = vec![0x00, 0x01];
        block.resize(k - info.len() - 1, 0xff);
        block.push(0);
        block.extend_from_slice(&info);
        let raw_sig = sign(&dev, s, &m, private, &block).unwrap();
        assert_eq!(
            raw_sig,
            sign(&dev, s, &mech(CKM_RSA_PKCS), private, &info).unwrap()
        );
        assert_eq!(big(&raw_sig), big(&block).modpow(ours.d(), ours.n()));
        verify(&dev, s, &m, public, &block, &raw_sig).unwrap();
        verify(&dev, s, &m, public, &block[1..], &raw_sig).unwrap();
        let mut bad = block.clone();
        bad[k - 1] ^= 1;
        assert_eq!(
            verify(&dev, s, &m, public, &bad, &raw_sig),
            Err(Error::SignatureInvalid)
        );

        // Values at or above the modulus.
        let n = theirs.n().to_bytes_be();
        assert_eq!(encrypt(&dev, s, &m, public, &n), Err(Error::DataInvalid));
        assert_eq!(sign(&dev, s, &m, private, &n), Err(Error::DataInvalid));
        assert_eq!(
            decrypt(&dev, s, &m, private, &n),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            verify(&dev, s, &m, public, b"x", &vec![0xff; k]),
            Err(Error::SignatureInvalid)
        );
        assert_eq!(
            encrypt(&dev, s, &m, public, &vec![1; k + 1]),
            Err(Error::DataLenRange)
        );
        assert_eq!(
            decrypt(&dev, s, &m, private, &vec![1; k - 1]),
            Err(Error::EncryptedDataLenRange)
        );
    }
}

#[test]
fn bad_signatures_and_lengths_have_their_codes() {
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 2048, None).unwrap();
    let k = 256;
    let m = mech(CKM_SHA256_RSA_PKCS);
    let mut sig = sign(&dev, s, &m, private, b"message").unwrap();
    verify(&dev, s, &m, public, b"message", &sig).unwrap();
    assert_eq!(
        verify(&dev, s, &m, public, b"messagE", &sig),
        Err(Error::SignatureInvalid)
    );
    sig[17] ^= 0x40;
    assert_eq!(
        verify(&dev, s, &m, public, b"message", &sig),
        Err(Error::SignatureInvalid)
    );
    assert_eq!(
        verify_parts(&dev, s, &m, public, b"message", &sig),
        Err(Error::SignatureInvalid)
    );
    assert_eq!(
        verify(&dev, s, &m, public, b"message", &sig[1..]),
        Err(Error::SignatureLenRange)
    );
    let p = pss(CKM_SHA256_RSA_PKCS_PSS, H::Sha256, 32);
    let sig = sign(&dev, s, &p, private, b"message").unwrap();
    assert_eq!(
        verify(&dev, s, &p, public, b"other", &sig),
        Err(Error::SignatureInvalid)
    );
    // A PSS signature made with another salt length does not verify.
    let p0 = pss(CKM_SHA256_RSA_PKCS_PSS, H::Sha256, 0);
    assert_eq!(
        verify(&dev, s, &p0, public, b"message", &sig),
        Err(Error::SignatureInvalid)
    );

    // Input lengths.
    let raw = mech(CKM_RSA_PKCS);
    assert_eq!(
        sign(&dev, s, &raw, private, &vec![1; k - 10]),
        Err(Error::DataLenRange)
    );
    let sig = sign(&dev, s, &raw, private, &[1; 20]).unwrap();
    assert_eq!(
        verify(&dev, s, &raw, public, &vec![1; k - 10], &sig),
        Err(Error::DataLenRange)
    );
    let pre = pss(CKM_RSA_PKCS_PSS, H::Sha256, 32);
    assert_eq!(
        sign(&dev, s, &pre, private, &[1; 31]),
        Err(Error::DataLenRange)
    );
    assert_eq!(
        sign(&dev, s, &pre, private, &[1; 33]),
        Err(Error::DataLenRange)
    );
    // A failed sign ends the operation.
    assert_eq!(
        dev.sign(s, &[1; 32], None),
        Err(Error::OperationNotInitialized)
    );

    // The single-part mechanisms refuse multi-part use.
    for m in [raw, mech(CKM_RSA_X_509), pre] {
        dev.sign_init(s, &m, private).unwrap();
        assert_eq!(dev.sign_update(s, b"x"), Err(Error::FunctionNotSupported));
        dev.verify_init(s, &m, public).unwrap();
        assert_eq!(dev.verify_update(s, b"x"), Err(Error::FunctionNotSupported));
    }

    // The buffer rules: a short buffer keeps the operation, the retry delivers.
    dev.sign_init(s, &m, private).unwrap();
    let mut small = [0u8; 10];
    assert_eq!(
        dev.sign(s, b"m", Some(&mut small)),
        Err(Error::BufferTooSmall { needed: k })
    );
    let mut buf = vec![0u8; k];
    assert_eq!(dev.sign(s, b"m", Some(&mut buf)).unwrap(), k);
    verify(&dev, s, &m, public, b"m", &buf).unwrap();
}

#[test]
fn wrong_key_types_are_inconsistent() {
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 1024, None).unwrap();
    let aes = dev
        .create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                .with(Attribute::bytes(CKA_VALUE, vec![7; 32])),
        )
        .unwrap();
    let o = oaep(H::Sha256, H::Sha256, b"");
    for m in [
        mech(CKM_RSA_PKCS),
        mech(CKM_RSA_X_509),
        mech(CKM_SHA256_RSA_PKCS),
        pss(CKM_SHA256_RSA_PKCS_PSS, H::Sha256, 32),
    ] {
        for key in [public, aes] {
            assert_eq!(dev.sign_init(s, &m, key), Err(Error::KeyTypeInconsistent));
        }
        for key in [private, aes] {
            assert_eq!(dev.verify_init(s, &m, key), Err(Error::KeyTypeInconsistent));
        }
    }
    for m in [mech(CKM_RSA_PKCS), mech(CKM_RSA_X_509), o.clone()] {
        for key in [private, aes] {
            assert_eq!(
                dev.encrypt_init(s, &m, key),
                Err(Error::KeyTypeInconsistent)
            );
        }
        for key in [public, aes] {
            assert_eq!(
                dev.decrypt_init(s, &m, key),
                Err(Error::KeyTypeInconsistent)
            );
        }
    }
    assert_eq!(
        dev.wrap_key(s, &o, private, aes, None),
        Err(Error::WrappingKeyTypeInconsistent)
    );
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
    assert_eq!(
        dev.unwrap_key(s, &o, public, &[0; 128], &t),
        Err(Error::UnwrappingKeyTypeInconsistent)
    );
    // Key type problems come before usage ones.
    dev.set_attribute_value(
        s,
        private,
        &Template::new().with(Attribute::bool(CKA_SIGN, false)),
    )
    .unwrap();
    assert_eq!(
        dev.sign_init(s, &mech(CKM_RSA_PKCS), private),
        Err(Error::KeyFunctionNotPermitted)
    );
    assert_eq!(
        dev.sign_init(s, &mech(CKM_RSA_PKCS), public),
        Err(Error::KeyTypeInconsistent)
    );
}

#[test]
fn wrong_pss_params_are_param_invalid() {
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 1024, None).unwrap();
    let with = |ty, params| Mechanism { ty, params };
    let bad = [
        // No parameter, or another structure.
        with(CKM_RSA_PKCS_PSS, MechanismParams::None),
        with(CKM_SHA256_RSA_PKCS_PSS, MechanismParams::None),
        with(CKM_RSA_PKCS_PSS, MechanismParams::Ulong(32)),
        // The mechanism's hash and the parameter's differ.
        with(CKM_SHA256_RSA_PKCS_PSS, pss_params(H::Sha1, H::Sha1, 20)),
        // MGF1 with another hash than the message's.
        with(CKM_RSA_PKCS_PSS, pss_params(H::Sha256, H::Sha1, 32)),
        // Salt longer than emLen - hLen - 2 (128 - 64 - 2 = 62 for SHA-512 here).
        with(
            CKM_SHA512_RSA_PKCS_PSS,
            pss_params(H::Sha512, H::Sha512, 63),
        ),
        // Hashes RSA does not do here.
        with(
            CKM_RSA_PKCS_PSS,
            MechanismParams::RsaPkcsPss {
                hash_alg: CKM_MD5,
                mgf: CKG_MGF1_SHA1,
                salt_len: 16,
            },
        ),
        with(
            CKM_RSA_PKCS_PSS,
            MechanismParams::RsaPkcsPss {
                hash_alg: CKM_SHA3_256,
                mgf: CKG_MGF1_SHA3_256,
                salt_len: 32,
            },
        ),
        with(
            CKM_RSA_PKCS_PSS,
            MechanismParams::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: 0,
                salt_len: 32,
            },
        ),
    ];
    for m in bad {
        assert_eq!(
            dev.sign_init(s, &m, private),
            Err(Error::MechanismParamInvalid),
            "{m:?}"
        );
        assert_eq!(
            dev.verify_init(s, &m, public),
            Err(Error::MechanismParamInvalid),
            "{m:?}"
        );
    }
    // The largest salt is fine.
    let m = with(
        CKM_SHA512_RSA_PKCS_PSS,
        pss_params(H::Sha512, H::Sha512, 62),
    );
    let sig = sign(&dev, s, &m, private, b"x").unwrap();
    verify(&dev, s, &m, public, b"x", &sig).unwrap();
    // Mechanisms without parameters refuse one.
    let m = with(CKM_SHA256_RSA_PKCS, pss_params(H::Sha256, H::Sha256, 32));
    assert_eq!(
        dev.sign_init(s, &m, private),
        Err(Error::MechanismParamInvalid)
    );
}

// ---- encryption -----------------------------------------------------------------------------

#[test]
fn oaep_with_every_hash_pair_and_labels_cross_checks_both_ways() {
    let (_d, dev, s) = ready();
    for bits in [2048, 1024] {
        let (public, private) = generate(&dev, s, bits, None).unwrap();
        let ours = read_private(&dev, s, private);
        let theirs = ours.to_public_key();
        let k = bits as usize / 8;
        for h in HASHES {
            if k < 2 * h.len() + 2 {
                assert_eq!(
                    dev.encrypt_init(s, &oaep(h, h, b""), public),
                    Err(Error::MechanismParamInvalid)
                );
                continue;
            }
            for mgf in [h, H::Sha1, H::Sha512] {
                for label in ["", "ABC"] {
                    let m = oaep(h, mgf, label.as_bytes());
                    let max = k - 2 * h.len() - 2;
                    let plain: Vec<u8> = (0..max.min(48) as u8).collect();
                    let ct = encrypt(&dev, s, &m, public, &plain).unwrap();
                    assert_eq!(ct.len(), k);
                    assert_eq!(ours.decrypt(h.oaep(mgf, label), &ct).unwrap(), plain);
                    let ct = theirs
                        .encrypt(&mut OsRng, h.oaep(mgf, label), &plain)
                        .unwrap();
                    assert_eq!(decrypt(&dev, s, &m, private, &ct).unwrap(), plain);
                    // The label is bound: another one fails, with the one decrypt code.
                    let other = oaep(h, mgf, b"other");
                    assert_eq!(
                        decrypt(&dev, s, &other, private, &ct),
                        Err(Error::EncryptedDataInvalid)
                    );
                    // Lengths.
                    assert_eq!(
                        encrypt(&dev, s, &m, public, &vec![0; max + 1]),
                        Err(Error::DataLenRange)
                    );
                    encrypt(&dev, s, &m, public, &vec![0; max]).unwrap();
                    assert_eq!(
                        decrypt(&dev, s, &m, private, &ct[1..]),
                        Err(Error::EncryptedDataLenRange)
                    );
                }
            }
        }
    }
}

#[test]
fn oaep_parameters_are_checked() {
    let (_d, dev, s) = ready();
    let (public_2048, private_2048) = generate(&dev, s, 2048, None).unwrap();
    let (public_1024, _) = generate(&dev, s, 1024, None).unwrap();
    let with = |p: OaepParams| Mechanism {
        ty: CKM_RSA_PKCS_OAEP,
        params: MechanismParams::RsaPkcsOaep(p),
    };
    // pkcs11-tool 0.23 sends source 0 with no label: accepted, as the empty label.
    let mut zero = oaep_params(H::Sha1, H::Sha1, b"");
    zero.source = 0;
    let ct = encrypt(&dev, s, &with(zero.clone()), public_2048, b"k").unwrap();
    assert_eq!(
        decrypt(&dev, s, &oaep(H::Sha1, H::Sha1, b""), private_2048, &ct).unwrap(),
        b"k"
    );
    // A binary label works wherever aws-lc-rs does the work (2048 bits, same hashes).
    let binary = oaep(H::Sha256, H::Sha256, &[0xff, 0x00, 0xfe]);
    let ct = encrypt(&dev, s, &binary, public_2048, b"k").unwrap();
    assert_eq!(decrypt(&dev, s, &binary, private_2048, &ct).unwrap(), b"k");
    let mut bad = vec![MechanismParams::None, MechanismParams::Bytes(vec![0; 40])];
    let mut labelled_zero = zero.clone();
    labelled_zero.source_data = b"ABC".to_vec();
    let mut source_2 = oaep_params(H::Sha1, H::Sha1, b"");
    source_2.source = 2;
    let mut md5 = oaep_params(H::Sha1, H::Sha1, b"");
    md5.hash_alg = CKM_MD5;
    let mut sha3 = oaep_params(H::Sha1, H::Sha1, b"");
    sha3.mgf = CKG_MGF1_SHA3_256;
    for p in [labelled_zero, source_2, md5, sha3] {
        bad.push(MechanismParams::RsaPkcsOaep(p));
    }
    for params in bad {
        let m = Mechanism {
            ty: CKM_RSA_PKCS_OAEP,
            params,
        };
        assert_eq!(
            dev.encrypt_init(s, &m, public_2048),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            dev.decrypt_init(s, &m, private_2048),
            Err(Error::MechanismParamInvalid)
        );
    }
    // RustCrypto (used for 1024-bit keys) takes only UTF-8 labels.
    let binary = oaep(H::Sha256, H::Sha256, &[0xff]);
    assert_eq!(
        dev.encrypt_init(s, &binary, public_1024),
        Err(Error::MechanismParamInvalid)
    );
    // No room for SHA-512 OAEP in a 1024-bit modulus.
    assert_eq!(
        dev.encrypt_init(s, &oaep(H::Sha512, H::Sha512, b""), public_1024),
        Err(Error::MechanismParamInvalid)
    );
}

#[test]
fn pkcs1_v15_encryption_both_ways() {
    let (_d, dev, s) = ready();
    for bits in [2048, 1024] {
        let (public, private) = generate(&dev, s, bits, None).unwrap();
        let ours = read_private(&dev, s, private);
        let theirs = ours.to_public_key();
        let k = bits as usize / 8;
        let m = mech(CKM_RSA_PKCS);
        for len in [1, 10, k - 11] {
            let plain = vec![0xa5; len];
            let ct = encrypt(&dev, s, &m, public, &plain).unwrap();
            assert_eq!(ct.len(), k);
            assert_eq!(ours.decrypt(Pkcs1v15Encrypt, &ct).unwrap(), plain);
            let ct = theirs.encrypt(&mut OsRng, Pkcs1v15Encrypt, &plain).unwrap();
            assert_eq!(decrypt(&dev, s, &m, private, &ct).unwrap(), plain);
        }
        assert_eq!(
            encrypt(&dev, s, &m, public, &vec![0; k - 10]),
            Err(Error::DataLenRange)
        );
        // Wrong padding, a wrong-length ciphertext, a value above the modulus.
        let not_padded = big(&[0x12; 32])
            .modpow(theirs.e(), theirs.n())
            .to_bytes_be();
        let mut not_padded_k = vec![0; k - not_padded.len()];
        not_padded_k.extend_from_slice(&not_padded);
        assert_eq!(
            decrypt(&dev, s, &m, private, &not_padded_k),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            decrypt(&dev, s, &m, private, &vec![0xff; k]),
            Err(Error::EncryptedDataInvalid)
        );
        assert_eq!(
            decrypt(&dev, s, &m, private, &vec![1; k + 1]),
            Err(Error::EncryptedDataLenRange)
        );
        // RSA encryption is single-part.
        dev.encrypt_init(s, &m, public).unwrap();
        assert_eq!(
            dev.encrypt_update(s, b"x", None),
            Err(Error::FunctionNotSupported)
        );
    }
}

// ---- import ---------------------------------------------------------------------------------

#[test]
fn imported_keys_sign_and_verify() {
    let (_d, dev, s) = ready();
    for bits in [2048, 1024] {
        let key = rc_key(bits);
        let theirs = key.to_public_key();
        let digest = Sha256::digest(b"imported").to_vec();
        for (primes, crt) in [(true, true), (true, false), (false, false)] {
            let private = dev
                .create_object(s, &private_template(&key, primes, crt))
                .unwrap();
            let sig = sign(&dev, s, &mech(CKM_SHA256_RSA_PKCS), private, b"imported").unwrap();
            theirs.verify(H::Sha256.pkcs1(), &digest, &sig).unwrap();
            // Created keys are not local, and carry their public key info.
            assert_eq!(attr(&dev, s, private, CKA_LOCAL), [0]);
            assert_eq!(
                attr(&dev, s, private, CKA_PUBLIC_KEY_INFO),
                theirs.to_public_key_der().unwrap().as_bytes()
            );
        }
        // Public keys get CKA_MODULUS_BITS and CKA_PUBLIC_KEY_INFO.
        let public = dev.create_object(s, &public_template(&theirs)).unwrap();
        assert_eq!(
            ulong(&attr(&dev, s, public, CKA_MODULUS_BITS)),
            bits as CK_ULONG
        );
        assert_eq!(
            attr(&dev, s, public, CKA_PUBLIC_KEY_INFO),
            theirs.to_public_key_der().unwrap().as_bytes()
        );
        let sig = key.sign(H::Sha256.pkcs1(), &digest).unwrap();
        verify(
            &dev,
            s,
            &mech(CKM_SHA256_RSA_PKCS),
            public,
            b"imported",
            &sig,
        )
        .unwrap();
    }
}

#[test]
fn inconsistent_or_incomplete_key_material_is_refused() {
    let (_d, dev, s) = ready();
    let key = rc_key(1024);
    let other = rc_key(1024);
    let replace = |t: &Template, ty, v: Vec<u8>| -> Template {
        t.iter()
            .map(|a| {
                if a.ty == ty {
                    Attribute::bytes(ty, v.clone())
                } else {
                    a.clone()
                }
            })
            .collect()
    };
    let drop =
        |t: &Template, ty| -> Template { t.iter().filter(|a| a.ty != ty).cloned().collect() };
    let full = private_template(&key, true, true);
    let bad_value = [
        replace(&full, CKA_PRIVATE_EXPONENT, other.d().to_bytes_be()),
        replace(&full, CKA_PRIME_1, other.primes()[0].to_bytes_be()),
        replace(&full, CKA_EXPONENT_1, other.dp().unwrap().to_bytes_be()),
        replace(&full, CKA_COEFFICIENT, vec![1]),
        replace(&full, CKA_MODULUS, other.n().to_bytes_be()),
        replace(&full, CKA_PUBLIC_EXPONENT, vec![1, 0, 0]),
        full.clone()
            .with(Attribute::bytes(CKA_PUBLIC_KEY_INFO, vec![0x30, 0])),
    ];
    for t in bad_value {
        assert_eq!(dev.create_object(s, &t), Err(Error::AttributeValueInvalid));
    }
    for ty in [
        CKA_MODULUS,
        CKA_PUBLIC_EXPONENT,
        CKA_PRIVATE_EXPONENT,
        CKA_PRIME_2,
    ] {
        assert_eq!(
            dev.create_object(s, &drop(&full, ty)),
            Err(Error::TemplateIncomplete),
            "0x{ty:x}"
        );
    }
    // Without the primes, e = 3 leaves nothing to recover them from.
    let small_e = RsaPrivateKey::new_with_exp(&mut OsRng, 1024, &BigUint::from(3u32)).unwrap();
    assert_eq!(
        dev.create_object(s, &private_template(&small_e, false, false)),
        Err(Error::TemplateIncomplete)
    );
    dev.create_object(s, &private_template(&small_e, true, false))
        .unwrap();
    // Public keys: sizes and exponents.
    let public = public_template(&key.to_public_key());
    for t in [
        replace(&public, CKA_PUBLIC_EXPONENT, vec![2]),
        replace(&public, CKA_PUBLIC_EXPONENT, vec![1]),
        replace(&public, CKA_MODULUS, vec![0xff; 64]),
        replace(&public, CKA_MODULUS, vec![0xff; 513]),
        replace(&public, CKA_MODULUS, vec![0xfe; 128]),
    ] {
        assert_eq!(dev.create_object(s, &t), Err(Error::AttributeValueInvalid));
    }
    assert_eq!(
        dev.create_object(
            s,
            &public
                .clone()
                .with(Attribute::ulong(CKA_MODULUS_BITS, 1024))
        ),
        Err(Error::AttributeReadOnly)
    );
    // Leading zeros are fine.
    let mut n = vec![0];
    n.extend_from_slice(&key.n().to_bytes_be());
    let h = dev
        .create_object(s, &replace(&public, CKA_MODULUS, n))
        .unwrap();
    assert_eq!(ulong(&attr(&dev, s, h, CKA_MODULUS_BITS)), 1024);
}

// ---- wrapping -------------------------------------------------------------------------------

fn aes_template(extra: &[Attribute]) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
    t.0.extend_from_slice(extra);
    t
}

fn wrap(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>> {
    output(|o| dev.wrap_key(s, m, wrapping, key, o))
}

#[test]
fn secret_keys_wrap_with_oaep_and_pkcs1_and_unwrap() {
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 2048, None).unwrap();
    let ours = read_private(&dev, s, private);
    let value: Vec<u8> = (0..32).collect();
    let aes = dev
        .create_object(
            s,
            &aes_template(&[Attribute::bytes(CKA_VALUE, value.clone())]),
        )
        .unwrap();
    let readable = aes_template(&[Attribute::bool(CKA_SENSITIVE, false)]);
    for (m, padding) in [
        (
            oaep(H::Sha256, H::Sha256, b"label"),
            Some(H::Sha256.oaep(H::Sha256, "label")),
        ),
        (oaep(H::Sha1, H::Sha1, b""), Some(H::Sha1.oaep(H::Sha1, ""))),
        (mech(CKM_RSA_PKCS), None),
    ] {
        let wrapped = wrap(&dev, s, &m, public, aes).unwrap();
        assert_eq!(wrapped.len(), 256);
        let plain = match padding {
            Some(p) => ours.decrypt(p, &wrapped).unwrap(),
            None => ours.decrypt(Pkcs1v15Encrypt, &wrapped).unwrap(),
        };
        assert_eq!(plain, value);
        let h = dev.unwrap_key(s, &m, private, &wrapped, &readable).unwrap();
        assert_eq!(attr(&dev, s, h, CKA_VALUE), value);
        assert_eq!(ulong(&attr(&dev, s, h, CKA_VALUE_LEN)), 32);
        // Garbage and wrong lengths.
        let mut bad = wrapped.clone();
        bad[100] ^= 1;
        assert_eq!(
            dev.unwrap_key(s, &m, private, &bad, &readable),
            Err(Error::WrappedKeyInvalid)
        );
        assert_eq!(
            dev.unwrap_key(s, &m, private, &wrapped[1..], &readable),
            Err(Error::WrappedKeyLenRange)
        );
    }
    // pkcs11-tool 0.23 unwraps with OAEP and no parameters.
    let bare = mech(CKM_RSA_PKCS_OAEP);
    assert_eq!(
        dev.unwrap_key(s, &bare, private, &[0; 256], &readable),
        Err(Error::MechanismParamInvalid)
    );
    // A private key does not fit in one RSA block.
    let (_, target) = generate(&dev, s, 1024, None).unwrap();
    assert_eq!(
        wrap(&dev, s, &mech(CKM_RSA_PKCS), public, target),
        Err(Error::KeySizeRange)
    );
    // X.509 does not wrap.
    assert_eq!(
        wrap(&dev, s, &mech(CKM_RSA_X_509), public, aes),
        Err(Error::MechanismInvalid)
    );
}

fn aes_wrap_params(bits: CK_ULONG, hash: H, mgf: H, label: &[u8]) -> Mechanism {
    Mechanism {
        ty: CKM_RSA_AES_KEY_WRAP,
        params: MechanismParams::RsaAesKeyWrap {
            aes_key_bits: bits,
            oaep: oaep_params(hash, mgf, label),
        },
    }
}

fn private_unwrap_template() -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
        .with(Attribute::bool(CKA_SENSITIVE, false))
}

/// Builds the BYOK blob the way a cloud HSM's tooling does, with RustCrypto only.
fn byok_blob(wrapping: &RsaPublicKey, aes_len: usize, oaep: Oaep, target_pkcs8: &[u8]) -> Vec<u8> {
    let aes: Vec<u8> = (0..aes_len as u8).map(|i| i.wrapping_mul(29)).collect();
    let mut blob = wrapping.encrypt(&mut OsRng, oaep, &aes).unwrap();
    let kwp = match aes_len {
        16 => aes_kw::KekAes128::try_from(&aes[..])
            .unwrap()
            .wrap_with_padding_vec(target_pkcs8),
        24 => aes_kw::KekAes192::try_from(&aes[..])
            .unwrap()
            .wrap_with_padding_vec(target_pkcs8),
        _ => aes_kw::KekAes256::try_from(&aes[..])
            .unwrap()
            .wrap_with_padding_vec(target_pkcs8),
    };
    blob.extend_from_slice(&kwp.unwrap());
    blob
}

#[test]
fn rsa_aes_key_wrap_round_trips_private_keys_and_reads_outside_blobs() {
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 2048, None).unwrap();
    let ours = read_private(&dev, s, private);
    let (target_public, target) = generate(&dev, s, 1024, None).unwrap();
    let target_key = read_private(&dev, s, target);

    for (aes_bits, hash, mgf) in [
        (256, H::Sha256, H::Sha256),
        (128, H::Sha1, H::Sha1),
        (192, H::Sha384, H::Sha1),
    ] {
        let m = aes_wrap_params(aes_bits, hash, mgf, b"");
        let blob = wrap(&dev, s, &m, public, target).unwrap();
        // Outside: OAEP-decrypt the first k bytes, KWP-unwrap the rest, parse the PKCS#8.
        let (head, tail) = blob.split_at(256);
        let aes = ours.decrypt(hash.oaep(mgf, ""), head).unwrap();
        assert_eq!(aes.len() * 8, aes_bits as usize);
        let pkcs8 = match aes.len() {
            16 => aes_kw::KekAes128::try_from(&aes[..])
                .unwrap()
                .unwrap_with_padding_vec(tail),
            24 => aes_kw::KekAes192::try_from(&aes[..])
                .unwrap()
                .unwrap_with_padding_vec(tail),
            _ => aes_kw::KekAes256::try_from(&aes[..])
                .unwrap()
                .unwrap_with_padding_vec(tail),
        }
        .unwrap();
        assert_eq!(RsaPrivateKey::from_pkcs8_der(&pkcs8).unwrap(), target_key);

        // Back in: the unwrapped key signs for the original public key.
        let h = dev
            .unwrap_key(s, &m, private, &blob, &private_unwrap_template())
            .unwrap();
        assert_eq!(attr(&dev, s, h, CKA_MODULUS), target_key.n().to_bytes_be());
        assert_eq!(attr(&dev, s, h, CKA_LOCAL), [0]);
        let sig = sign(&dev, s, &mech(CKM_SHA256_RSA_PKCS), h, b"byok").unwrap();
        verify(
            &dev,
            s,
            &mech(CKM_SHA256_RSA_PKCS),
            target_public,
            b"byok",
            &sig,
        )
        .unwrap();
    }

    // A blob made outside (RustCrypto OAEP + aes-kw), of a key the device never saw.
    let foreign = rc_key(2048);
    let pkcs8 = foreign.to_pkcs8_der().unwrap();
    for (aes_len, bits) in [(32, 256), (16, 128), (24, 192)] {
        let blob = byok_blob(
            &ours.to_public_key(),
            aes_len,
            H::Sha256.oaep(H::Sha1, ""),
            pkcs8.as_bytes(),
        );
        let m = aes_wrap_params(bits, H::Sha256, H::Sha1, b"");
        let h = dev
            .unwrap_key(s, &m, private, &blob, &private_unwrap_template())
            .unwrap();
        let sig = sign(&dev, s, &mech(CKM_SHA384_RSA_PKCS), h, b"foreign").unwrap();
        foreign
            .to_public_key()
            .verify(H::Sha384.pkcs1(), &H::Sha384.digest(b"foreign"), &sig)
            .unwrap();
        assert_eq!(
            attr(&dev, s, h, CKA_PRIVATE_EXPONENT),
            foreign.d().to_bytes_be()
        );

        // One failure code for a bad OAEP block, a bad KWP block, an AES key of the wrong size.
        let mut bad_head = blob.clone();
        bad_head[10] ^= 1;
        let mut bad_tail = blob.clone();
        *bad_tail.last_mut().unwrap() ^= 1;
        let wrong_size =
            aes_wrap_params(if bits == 256 { 128 } else { 256 }, H::Sha256, H::Sha1, b"");
        for (blob, m) in [(&bad_head, &m), (&bad_tail, &m), (&blob, &wrong_size)] {
            assert_eq!(
                dev.unwrap_key(s, m, private, blob, &private_unwrap_template()),
                Err(Error::WrappedKeyInvalid)
            );
        }
        assert_eq!(
            dev.unwrap_key(s, &m, private, &blob[..256 + 8], &private_unwrap_template()),
            Err(Error::WrappedKeyLenRange)
        );
    }

    // A PKCS#8 of another key type, unwrapped as RSA.
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let blob = byok_blob(
        &ours.to_public_key(),
        32,
        H::Sha256.oaep(H::Sha256, ""),
        ec.as_ref(),
    );
    let m = aes_wrap_params(256, H::Sha256, H::Sha256, b"");
    assert_eq!(
        dev.unwrap_key(s, &m, private, &blob, &private_unwrap_template()),
        Err(Error::TemplateInconsistent)
    );
    // Not PKCS#8 at all.
    let blob = byok_blob(
        &ours.to_public_key(),
        32,
        H::Sha256.oaep(H::Sha256, ""),
        b"not a key",
    );
    assert_eq!(
        dev.unwrap_key(s, &m, private, &blob, &private_unwrap_template()),
        Err(Error::WrappedKeyInvalid)
    );

    // Secret keys go through the same format.
    let aes = dev
        .create_object(
            s,
            &aes_template(&[Attribute::bytes(CKA_VALUE, vec![0x70; 32])]),
        )
        .unwrap();
    let blob = wrap(&dev, s, &m, public, aes).unwrap();
    let h = dev
        .unwrap_key(
            s,
            &m,
            private,
            &blob,
            &aes_template(&[Attribute::bool(CKA_SENSITIVE, false)]),
        )
        .unwrap();
    assert_eq!(attr(&dev, s, h, CKA_VALUE), vec![0x70; 32]);

    // Parameters.
    let small = generate(&dev, s, 1024, None).unwrap().0;
    for params in [
        MechanismParams::None,
        aes_wrap_params(100, H::Sha256, H::Sha256, b"").params,
        aes_wrap_params(256, H::Sha512, H::Sha512, b"").params,
    ] {
        let m = Mechanism {
            ty: CKM_RSA_AES_KEY_WRAP,
            params,
        };
        assert_eq!(
            wrap(&dev, s, &m, small, aes),
            Err(Error::MechanismParamInvalid)
        );
    }
}

/// The BYOK format against OpenSSL's command line (`pkeyutl` OAEP and `enc -id-aes256-wrap-pad`),
/// as Azure's and AWS's import instructions build it.
#[test]
#[allow(clippy::print_stderr)] // the skip must be loud (style.md §3.10)
fn rsa_aes_key_wrap_matches_openssl() {
    let Ok(out) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("openssl not found: SKIPPED");
        return;
    };
    assert!(out.status.success());
    let (_d, dev, s) = ready();
    let (public, private) = generate(&dev, s, 2048, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("pub.der"), attr(&dev, s, public, CKA_PUBLIC_KEY_INFO)).unwrap();
    let target = rc_key(1024);
    std::fs::write(
        path("target.der"),
        target.to_pkcs8_der().unwrap().as_bytes(),
    )
    .unwrap();
    let aes: Vec<u8> = (100..132).collect();
    std::fs::write(path("aes.bin"), &aes).unwrap();
    let hex = base16ct::lower::encode_string(&aes);
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        "pub.der",
        "-in",
        "aes.bin",
        "-out",
        "aes.wrapped",
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ]);
    run(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &hex,
        "-iv",
        "A65959A6",
        "-in",
        "target.der",
        "-out",
        "target.wrapped",
    ]);
    let mut blob = std::fs::read(path("aes.wrapped")).unwrap();
    blob.extend_from_slice(&std::fs::read(path("target.wrapped")).unwrap());
    let m = aes_wrap_params(256, H::Sha256, H::Sha256, b"");
    let h = dev
        .unwrap_key(s, &m, private, &blob, &private_unwrap_template())
        .unwrap();
    assert_eq!(attr(&dev, s, h, CKA_MODULUS), target.n().to_bytes_be());

    // And the other way: OpenSSL opens what the device wraps.
    std::fs::write(
        path("priv.der"),
        read_private(&dev, s, private)
            .to_pkcs8_der()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let blob = wrap(&dev, s, &m, public, h).unwrap();
    std::fs::write(path("head"), &blob[..256]).unwrap();
    std::fs::write(path("tail"), &blob[256..]).unwrap();
    run(&[
        "pkeyutl",
        "-decrypt",
        "-keyform",
        "DER",
        "-inkey",
        "priv.der",
        "-in",
        "head",
        "-out",
        "aes.out",
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ]);
    let aes = std::fs::read(path("aes.out")).unwrap();
    let hex = base16ct::lower::encode_string(&aes);
    run(&[
        "enc",
        "-d",
        "-id-aes256-wrap-pad",
        "-K",
        &hex,
        "-iv",
        "A65959A6",
        "-in",
        "tail",
        "-out",
        "target.out",
    ]);
    let pkcs8 = std::fs::read(path("target.out")).unwrap();
    assert_eq!(RsaPrivateKey::from_pkcs8_der(&pkcs8).unwrap(), target);
}

/// A token key pair lives in the store: another device on the same home finds and uses it
/// (its sealed private components parse again), and the key bytes are not in the store files.
#[test]
fn token_keys_are_stored_sealed_and_work_after_reopening() {
    let (d, dev, s) = ready();
    let id = Attribute::bytes(CKA_ID, b"rsa-token".to_vec());
    let public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::ulong(CKA_MODULUS_BITS, 2048))
        .with(id.clone());
    let private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(id.clone());
    let (pub_h, priv_h) = dev
        .generate_key_pair(s, &mech(CKM_RSA_PKCS_KEY_PAIR_GEN), &public, &private)
        .unwrap();
    let d_bytes = attr(&dev, s, priv_h, CKA_PRIVATE_EXPONENT);
    let p_bytes = attr(&dev, s, priv_h, CKA_PRIME_1);

    let config = FirmwareConfig {
        pin_kdf_iterations: 1000,
        ..FirmwareConfig::default()
    };
    let other = Device::open_home(d.path(), &config).unwrap();
    let s2 = other
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    other.login(s2, CKU_USER, Some(USER)).unwrap();
    let find = |class| {
        let t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, class))
            .with(id.clone());
        other.find_objects_init(s2, &t).unwrap();
        let found = other.find_objects(s2, 10).unwrap();
        other.find_objects_final(s2).unwrap();
        found
    };
    assert_eq!(find(CKO_PRIVATE_KEY), vec![priv_h]);
    assert_eq!(find(CKO_PUBLIC_KEY), vec![pub_h]);
    let sig = sign(&other, s2, &mech(CKM_SHA256_RSA_PKCS), priv_h, b"stored").unwrap();
    verify(&dev, s, &mech(CKM_SHA256_RSA_PKCS), pub_h, b"stored", &sig).unwrap();

    let mut files = vec![d.path().to_path_buf()];
    while let Some(f) = files.pop() {
        if f.is_dir() {
            files.extend(std::fs::read_dir(&f).unwrap().map(|e| e.unwrap().path()));
        } else {
            let content = std::fs::read(&f).unwrap();
            for secret in [&d_bytes, &p_bytes] {
                let probe = &secret[..32];
                assert!(
                    !content.windows(32).any(|w| w == probe),
                    "{} holds key bytes in clear",
                    f.display()
                );
            }
        }
    }
}

// ---- known answers (Wycheproof) -------------------------------------------------------------

fn import_wycheproof_private(
    dev: &Device,
    s: SessionHandle,
    k: &wycheproof::RsaPrivate,
) -> Result<ObjectHandle> {
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
        .with(Attribute::bytes(CKA_MODULUS, k.n.to_vec()))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, k.e.to_vec()))
        .with(Attribute::bytes(CKA_PRIVATE_EXPONENT, k.d.to_vec()))
        .with(Attribute::bytes(CKA_PRIME_1, k.p.to_vec()))
        .with(Attribute::bytes(CKA_PRIME_2, k.q.to_vec()))
        .with(Attribute::bytes(CKA_EXPONENT_1, k.d1.to_vec()))
        .with(Attribute::bytes(CKA_EXPONENT_2, k.d2.to_vec()))
        .with(Attribute::bytes(CKA_COEFFICIENT, k.c.to_vec()));
    dev.create_object(s, &t)
}

fn import_wycheproof_public(
    dev: &Device,
    s: SessionHandle,
    k: &wycheproof::RsaPublic,
) -> Result<ObjectHandle> {
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
        .with(Attribute::bytes(CKA_MODULUS, k.n.to_vec()))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, k.e.to_vec()));
    dev.create_object(s, &t)
}

/// Counts (checked, skipped) so a test can assert it did something.
fn expect(result: &wycheproof::TestResult, ok: bool, what: &str) {
    use wycheproof::TestResult as R;
    match result {
        R::Valid => assert!(ok, "{what}: a valid case failed"),
        R::Invalid => assert!(!ok, "{what}: an invalid case passed"),
        R::Acceptable => {}
    }
}

#[test]
fn wycheproof_pkcs1_v15_decryption() {
    use wycheproof::rsa_pkcs1_decrypt::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let mut checked = 0;
    for name in [TestName::Rsa2048, TestName::Rsa3072] {
        for g in TestSet::load(name).unwrap().test_groups {
            let key = import_wycheproof_private(&dev, s, &g.key).unwrap();
            for t in g.tests {
                let r = decrypt(&dev, s, &mech(CKM_RSA_PKCS), key, &t.ct);
                if let Err(e) = &r {
                    assert!(
                        matches!(
                            e,
                            Error::EncryptedDataInvalid | Error::EncryptedDataLenRange
                        ),
                        "tc {}: {e:?}",
                        t.tc_id
                    );
                }
                let ok = r.as_deref() == Ok(&t.pt[..]);
                expect(&t.result, ok, &format!("pkcs1 decrypt tc {}", t.tc_id));
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn wycheproof_oaep_decryption() {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let (mut checked, mut skipped) = (0, 0);
    for name in [
        TestName::Rsa2048Sha1Mgf1Sha1,
        TestName::Rsa2048Sha256Mgf1Sha256,
        TestName::Rsa2048Sha256Mgf1Sha1,
        TestName::Rsa2048Sha224Mgf1Sha224,
        TestName::Rsa2048Sha512Mgf1Sha1,
        TestName::Rsa3072Sha512Mgf1Sha512,
    ] {
        for g in TestSet::load(name).unwrap().test_groups {
            let (Some(hash), Some(mgf)) =
                (H::from_wycheproof(g.hash), H::from_wycheproof(g.mgf_hash))
            else {
                continue;
            };
            let key = import_wycheproof_private(&dev, s, &g.key).unwrap();
            for t in g.tests {
                let m = oaep(hash, mgf, &t.label);
                let r = match dev.decrypt_init(s, &m, key) {
                    // Binary labels where RustCrypto does the work (see crypto/rsa.rs).
                    Err(Error::MechanismParamInvalid) => {
                        assert!(std::str::from_utf8(&t.label).is_err(), "tc {}", t.tc_id);
                        skipped += 1;
                        continue;
                    }
                    Err(e) => panic!("tc {}: {e:?}", t.tc_id),
                    Ok(()) => output(|o| dev.decrypt(s, &t.ct, o)),
                };
                if let Err(e) = &r {
                    assert!(
                        matches!(
                            e,
                            Error::EncryptedDataInvalid | Error::EncryptedDataLenRange
                        ),
                        "tc {}: {e:?}",
                        t.tc_id
                    );
                }
                let ok = r.as_deref() == Ok(&t.pt[..]);
                expect(&t.result, ok, &format!("{name:?} tc {}", t.tc_id));
                checked += 1;
            }
        }
    }
    assert!(
        checked > 150 && skipped < checked / 4,
        "{checked} checked, {skipped} skipped"
    );
}

#[test]
fn wycheproof_pkcs1_v15_signatures() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let mut checked = 0;
    for name in [
        TestName::Rsa2048Sha224,
        TestName::Rsa2048Sha256,
        TestName::Rsa2048Sha512,
        TestName::Rsa3072Sha384,
        TestName::Rsa4096Sha512,
    ] {
        for g in TestSet::load(name).unwrap().test_groups {
            let hash = H::from_wycheproof(g.hash).unwrap();
            let key = import_wycheproof_public(&dev, s, &g.key).unwrap();
            let m = mech(hash.pkcs1_mech());
            for t in g.tests {
                let r = verify(&dev, s, &m, key, &t.msg, &t.sig);
                if let Err(e) = &r {
                    assert!(
                        matches!(e, Error::SignatureInvalid | Error::SignatureLenRange),
                        "tc {}: {e:?}",
                        t.tc_id
                    );
                }
                expect(&t.result, r.is_ok(), &format!("{name:?} tc {}", t.tc_id));
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{checked}");
}

#[test]
fn wycheproof_pss_signatures() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let (_d, dev, s) = ready();
    let mut checked = 0;
    for name in [
        TestName::RsaPss2048Sha1Mgf1SaltLen20,
        TestName::RsaPss2048Sha256Mgf1SaltLen0,
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha512Mgf1SaltLen64,
        TestName::RsaPss4096Sha512Mgf1SaltLen32,
    ] {
        for g in TestSet::load(name).unwrap().test_groups {
            let hash = H::from_wycheproof(g.hash).unwrap();
            let mgf = H::from_wycheproof(g.mgf_hash.unwrap()).unwrap();
            let key = import_wycheproof_public(&dev, s, &g.key).unwrap();
            let m = Mechanism {
                ty: hash.pss_mech(),
                params: pss_params(hash, mgf, g.salt_size),
            };
            for t in g.tests {
                let r = verify(&dev, s, &m, key, &t.msg, &t.sig);
                if let Err(e) = &r {
                    assert!(
                        matches!(e, Error::SignatureInvalid | Error::SignatureLenRange),
                        "tc {}: {e:?}",
                        t.tc_id
                    );
                }
                expect(&t.result, r.is_ok(), &format!("{name:?} tc {}", t.tc_id));
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "{checked}");
}
