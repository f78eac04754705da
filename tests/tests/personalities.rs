//! Personalities through the built module: a `kind = "sim"` slot with `personality = "..."`
//! answers as the vendor's documentation says its HSM does (each check cites the page in
//! `bridge/personalities/NAME.toml`), and token administration stays available so that a
//! rehearsal can be set up.
//!
//! Each personality runs in a child process of this test binary (its own `C_Initialize`),
//! configured by `FERROHSM_CONF`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;

const CHILD: &str = "PERSONALITY_CHILD";
const DONE: &str = "personality checks passed:";

/// A home whose one slot is a `kind = "sim"` token under `personality`.
fn conf_for(home: &Home, personality: &str) -> std::path::PathBuf {
    let conf = home.file("ferrohsm.toml");
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"sim\"\nlabel = \"rehearsal\"\nstore = {:?}\npersonality = \"{personality}\"\n",
            home.path().join("store")
        ),
    )
    .unwrap();
    conf
}

fn run_child(name: &str, personality: &str) {
    let home = Home::new();
    let conf = conf_for(&home, personality);
    let out = child_test(name, &home, CHILD)
        .env("FERROHSM_CONF", &conf)
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("{DONE} {personality}")),
        "child failed:\n{stdout}\n{stderr}"
    );
}

fn child() -> Option<(Pkcs11, Slot)> {
    std::env::var_os(CHILD)?;
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_all_slots().unwrap()[0];
    Some((p, slot))
}

fn rv<T: std::fmt::Debug>(r: Result<T, Error>) -> RvError {
    match r {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// Initializes the token (allowed under every personality) and sets the user PIN `pin`
/// after `refused` (each with its code) were refused.
fn set_up(p: &Pkcs11, slot: Slot, pin: &str, refused: &[(&str, RvError)]) {
    let so = AuthPin::new(SO_PIN.into());
    p.init_token(slot, &so, "rehearsal").unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&so)).unwrap();
    for (bad, code) in refused {
        assert_eq!(rv(s.init_pin(&AuthPin::new((*bad).into()))), *code, "{bad}");
    }
    s.init_pin(&AuthPin::new(pin.into())).unwrap();
    s.logout().unwrap();
}

fn user(p: &Pkcs11, slot: Slot, pin: &str) -> Session {
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(pin.into())))
        .unwrap();
    s
}

fn aes(s: &Session, extra: &[Attribute]) -> ObjectHandle {
    let mut t = vec![
        Attribute::Token(true),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    t.extend_from_slice(extra);
    s.generate_key(&Mechanism::AesKeyGen, &t).unwrap()
}

fn rsa(s: &Session, bits: u64) -> Result<(ObjectHandle, ObjectHandle), Error> {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(bits.into()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Extractable(true),
        ],
    )
}

fn flag(s: &Session, key: ObjectHandle, ty: AttributeType) -> bool {
    match s.get_attributes(key, &[ty]).unwrap().first() {
        Some(Attribute::Extractable(b) | Attribute::Sensitive(b)) => *b,
        other => panic!("{other:?}"),
    }
}

fn lists(p: &Pkcs11, slot: Slot, m: MechanismType) -> bool {
    p.get_mechanism_list(slot).unwrap().contains(&m)
}

#[test]
fn aws_cloudhsm_refuses_what_its_documentation_says() {
    run_child("child_aws_cloudhsm", "aws-cloudhsm");
}

#[test]
#[ignore = "runs in a child process (see the visible test)"]
fn child_aws_cloudhsm() {
    let Some((p, slot)) = child() else { return };
    // pkcs11-pin.html: the PIN is <CU_user_name>:<password>; limits.html: passwords of 7 to 32
    // characters, user names of at most 31.
    set_up(
        &p,
        slot,
        "cu1:password1",
        &[
            ("password1", RvError::PinInvalid),
            ("cu1:short", RvError::PinLenRange),
            (
                &format!("{}:password1", "u".repeat(32)),
                RvError::PinInvalid,
            ),
        ],
    );
    // ki-pkcs11-sdk.html#ki-pkcs11-13: read-only sessions fail with CKR_FUNCTION_FAILED.
    assert_eq!(rv(p.open_ro_session(slot)), RvError::FunctionFailed);
    let s = p.open_rw_session(slot).unwrap();
    assert_eq!(
        rv(s.login(UserType::User, Some(&AuthPin::new("password1".into())))),
        RvError::PinInvalid
    );
    drop(s);
    let s = user(&p, slot, "cu1:password1");

    // pkcs11-mechanisms.html: SHA-2 RSA signatures are listed; RFC 5649 key wrap, HKDF and
    // EdDSA are not.
    assert!(lists(&p, slot, MechanismType::SHA256_RSA_PKCS));
    assert!(!lists(&p, slot, MechanismType::AES_KEY_WRAP_PAD));
    assert!(!lists(&p, slot, MechanismType::HKDF_DERIVE));
    assert!(!lists(&p, slot, MechanismType::ECC_EDWARDS_KEY_PAIR_GEN));
    assert_eq!(
        rv(s.generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &[Attribute::EcParams(b"\x13\x0cedwards25519".to_vec())],
            &[Attribute::Sign(true)],
        )),
        RvError::MechanismInvalid
    );
    // CKM_AES_CBC_PAD is offered for encryption but not for wrapping.
    let info = p
        .get_mechanism_info(slot, MechanismType::AES_CBC_PAD)
        .unwrap();
    assert!(info.encrypt() && !info.wrap(), "{info:?}");

    // pkcs11-key-types.html: RSA 2048 to 4096 bits in steps of 256.
    assert_eq!(rv(rsa(&s, 1024)), RvError::KeySizeRange);
    let (public, private) = rsa(&s, 2048).unwrap();
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, private, b"rehearsal")
        .unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, public, b"rehearsal", &sig)
        .unwrap();

    // pkcs11-mechanisms.html note 1: the HSM generates AES-GCM IVs; ki-pkcs11-8: no multi-part
    // AES-GCM (C_DecryptUpdate: CKR_MECHANISM_INVALID) and at most 16 KB per call.
    let key = aes(&s, &[]);
    let mut iv = [7u8; 12];
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into()).unwrap());
    assert_eq!(
        rv(s.encrypt_init(&gcm, key)),
        RvError::MechanismParamInvalid
    );
    s.decrypt_init(&gcm, key).unwrap();
    assert_eq!(rv(s.decrypt_update(&[0u8; 32])), RvError::MechanismInvalid);
    // The operation ended with the refusal.
    assert_eq!(
        rv(s.decrypt_update(&[0u8; 32])),
        RvError::OperationNotInitialized
    );
    assert_eq!(
        rv(s.decrypt(&gcm, key, &vec![0u8; 16 * 1024 + 1])),
        RvError::EncryptedDataLenRange
    );
    // CBC-PAD has neither limit.
    let mut cbc_iv = [1u8; 16];
    let cbc = Mechanism::AesCbcPad(cbc_iv);
    let big = vec![5u8; 40_000];
    let ct = s.encrypt(&cbc, key, &big).unwrap();
    cbc_iv = [1u8; 16];
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(cbc_iv), key, &ct).unwrap(),
        big
    );

    // pkcs11-apis.html lists no C_CopyObject and no C_SetAttributeValue.
    assert_eq!(rv(s.copy_object(key, &[])), RvError::FunctionNotSupported);
    assert_eq!(
        rv(s.update_attributes(key, &[Attribute::Label(b"x".to_vec())])),
        RvError::FunctionNotSupported
    );
    // pkcs11-attributes.html: the specification's defaults (a generated key is not
    // extractable unless asked).
    assert!(!flag(&s, key, AttributeType::Extractable));
    println!("{DONE} aws-cloudhsm");
}

#[test]
fn luna_keeps_private_keys_on_the_partition() {
    run_child("child_luna", "luna");
}

#[test]
#[ignore = "runs in a child process (see the visible test)"]
fn child_luna() {
    let Some((p, slot)) = child() else { return };
    // Passwords of 7-255 characters.
    set_up(&p, slot, "partition1", &[("123456", RvError::PinLenRange)]);
    let s = user(&p, slot, "partition1");
    let (_, private) = rsa(&s, 2048).unwrap();
    let wrapping = aes(&s, &[Attribute::Wrap(true), Attribute::Unwrap(true)]);
    let secret = aes(&s, &[Attribute::Extractable(true)]);
    // Partition policy 1 (private key wrapping) is off by default: CKR_KEY_NOT_WRAPPABLE.
    assert_eq!(
        rv(s.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, private)),
        RvError::KeyNotWrappable
    );
    // Secret keys still wrap.
    assert!(
        !s.wrap_key(&Mechanism::AesKeyWrap, wrapping, secret)
            .unwrap()
            .is_empty()
    );
    // Every FerroHSM mechanism stays listed.
    assert!(lists(&p, slot, MechanismType::HKDF_DERIVE));
    assert!(p.open_ro_session(slot).is_ok());
    println!("{DONE} luna");
}

#[test]
fn azure_cloudhsm_and_softhsm_defaults() {
    run_child("child_azure_cloudhsm", "azure-cloudhsm");
    run_child("child_softhsm", "softhsm");
}

#[test]
#[ignore = "runs in a child process (see the visible test)"]
fn child_azure_cloudhsm() {
    let Some((p, slot)) = child() else { return };
    set_up(
        &p,
        slot,
        "cu1:user1234",
        &[("user1234", RvError::PinInvalid)],
    );
    let s = user(&p, slot, "cu1:user1234");
    // key-management: PKCS#11 keys are EXTRACTABLE by default.
    let key = aes(&s, &[]);
    assert!(flag(&s, key, AttributeType::Extractable));
    // An explicit CKA_EXTRACTABLE=FALSE holds.
    let kept = aes(&s, &[Attribute::Extractable(false)]);
    assert!(!flag(&s, kept, AttributeType::Extractable));
    // supported-algorithms: RSA 1024 (non-FIPS) to 4096 in steps of 1024.
    assert_eq!(rv(rsa(&s, 1536)), RvError::KeySizeRange);
    // service-limits: 3,200 key handles. Keys count, session keys too; data objects do not.
    for i in 0..50u8 {
        s.create_object(&[
            Attribute::Class(cryptoki::object::ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Value(vec![i]),
        ])
        .unwrap();
    }
    let session_key =
        |s: &Session| s.generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(16.into())]);
    let many = p.open_rw_session(slot).unwrap();
    let mut last = None;
    for _ in 2..3200 {
        last = Some(session_key(&many).unwrap());
    }
    assert_eq!(rv(session_key(&many)), RvError::DeviceMemory);
    assert_eq!(rv(rsa(&s, 2048)), RvError::DeviceMemory);
    // A data object is no key handle.
    s.create_object(&[
        Attribute::Class(cryptoki::object::ObjectClass::DATA),
        Attribute::Value(vec![1]),
    ])
    .unwrap();
    many.destroy_object(last.unwrap()).unwrap();
    session_key(&s).unwrap();
    assert_eq!(rv(session_key(&s)), RvError::DeviceMemory);
    // A session's keys end with it, and their handles with them.
    drop(many);
    session_key(&s).unwrap();
    println!("{DONE} azure-cloudhsm");
}

#[test]
#[ignore = "runs in a child process (see the visible test)"]
fn child_softhsm() {
    let Some((p, slot)) = child() else { return };
    // MIN_PIN_LEN 4.
    set_up(&p, slot, "1234", &[("123", RvError::PinLenRange)]);
    let s = user(&p, slot, "1234");
    // P11AttrSensitive/P11AttrExtractable::setDefault: neither sensitive nor extractable.
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(true), Attribute::ModulusBits(2048.into())],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .unwrap();
    assert!(!flag(&s, private, AttributeType::Sensitive));
    assert!(!flag(&s, private, AttributeType::Extractable));
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(true), Attribute::ValueLen(16.into())],
        )
        .unwrap();
    assert!(!flag(&s, key, AttributeType::Sensitive));
    assert!(!flag(&s, key, AttributeType::Extractable));
    // An unextractable private key is still unreadable, sensitive or not (cryptoki leaves out
    // what the token answers CKR_ATTRIBUTE_SENSITIVE for).
    assert!(
        s.get_attributes(private, &[AttributeType::PrivateExponent])
            .unwrap()
            .is_empty()
    );
    // SoftHSM has no HKDF.
    assert!(!lists(&p, slot, MechanismType::HKDF_DERIVE));
    assert!(lists(&p, slot, MechanismType::AES_KEY_WRAP_PAD));
    println!("{DONE} softhsm");
}
