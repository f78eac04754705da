//! `LoadedModule` against SoftHSMv2, the stand-in for a real HSM (a 2.40 module), and against
//! OpenSC's module for the 3.0 function list.
//!
//! SoftHSM's `C_Initialize` is process-global and the environment is set for it, so every
//! scenario runs inside one `#[test]`, on one module opened once. A library that is not
//! installed is skipped loudly ("SKIPPED: ...").

#![cfg(feature = "loaded")]
// The skip notice must be visible in the test output, and the scenario helpers are test code
// (clippy's allow-*-in-tests covers only `#[test]` functions themselves).
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;

use bridge::loaded::LoadedModule;
use bridge::{
    AttrAnswer, AttrValue, Attribute, BackendExt, Error, Mechanism, MechanismParams, ObjectHandle,
    SessionHandle, SlotId, Template,
};
use cryptoki_sys::*;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PKCS11_SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
const SO_PIN: &[u8] = b"so-pin-1234";
const USER_PIN: &[u8] = b"user-pin-5678";
const LABEL: &str = "ferrohsm-loaded";

#[test]
fn loaded_modules_through_the_backend_trait() {
    let dir = tempfile::tempdir().unwrap();
    configure_environment(dir.path());
    softhsm(dir.path());
    opensc_3_0_interface();
}

fn softhsm(dir: &Path) {
    let lib = Path::new(SOFTHSM);
    if !lib.exists() {
        eprintln!("SKIPPED: SoftHSM not installed ({SOFTHSM} is missing)");
        return;
    }
    let hsm = LoadedModule::open(lib).unwrap();
    module_facts(&hsm);
    let slot = initialize_token(&hsm);
    let s = login_user(&hsm, slot);

    rsa_sign_and_verify(&hsm, s);
    let aes = aes_key(&hsm, s, true);
    aes_cbc_pad(&hsm, s, aes);
    aes_gcm_with_aad(&hsm, s, slot, aes);
    attributes(&hsm, s, aes);
    aes_key_wrap(&hsm, s, aes);
    objects_and_search(&hsm, s);
    digest_and_random(&hsm, s);
    foreign_codes_pass_through(&hsm, s, slot);
    pkcs11_spy_over_softhsm(&hsm, slot, dir);

    hsm.close_session(s).unwrap();
    assert_eq!(hsm.close_session(s), Err(Error::SessionHandleInvalid));
    assert_eq!(Arc::strong_count(&hsm), 1);
    drop(hsm); // C_Finalize: we initialised it
}

/// A SoftHSM configuration whose tokens live in `dir`; the pkcs11-spy variables too.
#[allow(unsafe_code)]
fn configure_environment(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // SAFETY: this test binary has one test and nothing else runs yet: no other thread reads
    // or writes the environment while it is changed.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    // SAFETY: as above.
    unsafe { std::env::set_var("PKCS11SPY", SOFTHSM) };
    // SAFETY: as above.
    unsafe { std::env::set_var("PKCS11SPY_OUTPUT", dir.join("spy.log")) };
}

fn padded_label(label: &str) -> [u8; 32] {
    let mut out = [b' '; 32];
    out.iter_mut().zip(label.bytes()).for_each(|(d, s)| *d = s);
    out
}

fn module_facts(hsm: &Arc<LoadedModule>) {
    let info = hsm.info().unwrap();
    assert_eq!(info.manufacturer, "SoftHSM");
    assert_eq!(info.cryptoki_version.major, 2);
    assert!(!info.description.ends_with(' '));
    // SoftHSM 2.6 exports no C_GetInterface: the 2.x list, and the 3.0 functions answer
    // CKR_FUNCTION_NOT_SUPPORTED.
    assert!(!hsm.has_3_0_interface());
    assert!(hsm.initialized_by_us());
    // Opening the same library again gives the same, already initialised instance.
    let again = LoadedModule::open(Path::new(SOFTHSM)).unwrap();
    assert!(Arc::ptr_eq(hsm, &again));
}

/// `C_InitToken`, then the token is found by its label (SoftHSM moves an initialised token
/// to a new slot id).
fn initialize_token(hsm: &LoadedModule) -> SlotId {
    let slots = hsm.slot_list(true).unwrap();
    let fresh = *slots
        .iter()
        .find(|s| hsm.token_info(**s).unwrap().flags & CKF_TOKEN_INITIALIZED == 0)
        .expect("SoftHSM offers an uninitialised token");
    let slot_info = hsm.slot_info(fresh).unwrap();
    assert!(slot_info.flags & CKF_TOKEN_PRESENT != 0);
    assert!(!slot_info.description.ends_with(' '));

    hsm.init_token(fresh, SO_PIN, &padded_label(LABEL)).unwrap();

    let slot = hsm.slot_by_token_label(LABEL).unwrap();
    assert_eq!(hsm.slot_by_token_label(&format!("{LABEL}   ")), Ok(slot));
    let token = hsm.token_info(slot).unwrap();
    assert_eq!(token.label, LABEL);
    assert!(token.flags & CKF_TOKEN_INITIALIZED != 0);
    assert_eq!(token.manufacturer, "SoftHSM project");
    assert!(!token.serial_number.is_empty() && !token.serial_number.ends_with(' '));
    match hsm.slot_by_token_label("no-such-token") {
        Err(Error::Config(msg)) => {
            assert!(
                msg.contains("no-such-token") && msg.contains("libsofthsm2"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    slot
}

fn login_user(hsm: &LoadedModule, slot: SlotId) -> SessionHandle {
    let so = hsm
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    hsm.login(so, CKU_SO, Some(SO_PIN)).unwrap();
    hsm.init_pin(so, USER_PIN).unwrap();
    hsm.logout(so).unwrap();
    hsm.close_session(so).unwrap();

    let s = hsm
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    // A wrong PIN: the module's code, exactly.
    let err = hsm.login(s, CKU_USER, Some(b"wrong-pin")).unwrap_err();
    assert_eq!(err, Error::PinIncorrect);
    assert_eq!(err.rv(), CKR_PIN_INCORRECT);
    hsm.login(s, CKU_USER, Some(USER_PIN)).unwrap();
    let info = hsm.session_info(s).unwrap();
    assert_eq!(info.slot, slot);
    assert_eq!(info.state, CKS_RW_USER_FUNCTIONS);
    assert!(info.flags & CKF_RW_SESSION != 0);
    s
}

fn rsa_sign_and_verify(hsm: &LoadedModule, s: SessionHandle) {
    let public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_VERIFY, true))
        .with(Attribute::ulong(CKA_MODULUS_BITS, 2048))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]))
        .with(Attribute::bytes(CKA_LABEL, b"rsa".to_vec()));
    let private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bytes(CKA_LABEL, b"rsa".to_vec()));
    let (pubkey, privkey) = hsm
        .generate_key_pair(
            s,
            &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .unwrap();

    let data = b"signed through a loaded module";
    let mech = Mechanism::new(CKM_SHA256_RSA_PKCS);
    hsm.sign_init(s, &mech, privkey).unwrap();
    // A length query, then a buffer too small: both leave the operation active, and the
    // length the module wrote comes back as `needed`.
    assert_eq!(hsm.sign(s, data, None), Ok(256));
    let mut small = [0u8; 16];
    assert_eq!(
        hsm.sign(s, data, Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 256 })
    );
    let mut signature = vec![0u8; 300];
    let n = hsm.sign(s, data, Some(&mut signature)).unwrap();
    assert_eq!(n, 256);
    signature.truncate(n);

    hsm.verify_init(s, &mech, pubkey).unwrap();
    hsm.verify(s, data, &signature).unwrap();
    signature[7] ^= 1;
    hsm.verify_init(s, &mech, pubkey).unwrap();
    assert_eq!(
        hsm.verify(s, data, &signature),
        Err(Error::SignatureInvalid)
    );

    // Multi-part signing agrees with single-part.
    signature[7] ^= 1;
    hsm.sign_init(s, &mech, privkey).unwrap();
    hsm.sign_update(s, &data[..10]).unwrap();
    hsm.sign_update(s, &data[10..]).unwrap();
    let mut multi = vec![0u8; 256];
    assert_eq!(hsm.sign_final(s, Some(&mut multi)), Ok(256));
    assert_eq!(multi, signature);

    // The private exponent is sensitive, the modulus is not, RSA keys have no CKA_VALUE.
    let answers = hsm
        .get_attribute_value(
            s,
            privkey,
            &[CKA_PRIVATE_EXPONENT, CKA_MODULUS, CKA_LABEL, CKA_VALUE],
        )
        .unwrap();
    assert_eq!(answers[0], AttrAnswer::Sensitive);
    let AttrAnswer::Value(AttrValue::Bytes(modulus)) = &answers[1] else {
        panic!("{answers:?}")
    };
    assert_eq!(modulus.len(), 256);
    assert_eq!(
        answers[2],
        AttrAnswer::Value(AttrValue::Bytes(b"rsa".to_vec()))
    );
    assert_eq!(answers[3], AttrAnswer::Invalid);
    // One unavailable entry alone: its code decides.
    assert_eq!(
        hsm.get_attribute_value(s, privkey, &[CKA_PRIME_1]),
        Ok(vec![AttrAnswer::Sensitive])
    );
    assert_eq!(
        hsm.get_attribute_value(s, pubkey, &[CKA_VALUE]),
        Ok(vec![AttrAnswer::Invalid])
    );
    assert_eq!(
        hsm.get_attribute_value(s, pubkey, &[CKA_MODULUS_BITS]),
        Ok(vec![AttrAnswer::Value(AttrValue::Bytes(
            CK_ULONG::to_ne_bytes(2048).to_vec()
        ))])
    );
}

fn aes_template(extractable: bool, token: bool) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::ulong(CKA_VALUE_LEN, 32))
        .with(Attribute::bool(CKA_TOKEN, token))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bool(CKA_DECRYPT, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, extractable))
}

/// An AES-256 key; the wrapping one carries a `CKA_WRAP_TEMPLATE`.
fn aes_key(hsm: &LoadedModule, s: SessionHandle, wrapping: bool) -> ObjectHandle {
    let mut template = aes_template(!wrapping, false);
    if wrapping {
        template = template
            .with(Attribute::bool(CKA_WRAP, true))
            .with(Attribute::bool(CKA_UNWRAP, true))
            .with(Attribute::bytes(CKA_LABEL, b"aes-wrapping".to_vec()))
            .with(Attribute::template(
                CKA_WRAP_TEMPLATE,
                Template::new()
                    .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                    .with(Attribute::bool(CKA_EXTRACTABLE, true)),
            ));
    }
    hsm.generate_key(s, &Mechanism::new(CKM_AES_KEY_GEN), &template)
        .unwrap()
}

fn aes_cbc_pad(hsm: &LoadedModule, s: SessionHandle, key: ObjectHandle) {
    let mech = Mechanism::with(CKM_AES_CBC_PAD, MechanismParams::Bytes(vec![0x24; 16]));
    let plain = b"forty-one bytes of plaintext, padded out";
    hsm.encrypt_init(s, &mech, key).unwrap();
    let len = hsm.encrypt(s, plain, None).unwrap();
    assert!(len >= 48, "{len}");
    let mut cipher = vec![0u8; len];
    let n = hsm.encrypt(s, plain, Some(&mut cipher)).unwrap();
    assert_eq!(n, 48);
    cipher.truncate(n);

    hsm.decrypt_init(s, &mech, key).unwrap();
    let mut out = vec![0u8; cipher.len()];
    let n = hsm.decrypt(s, &cipher, Some(&mut out)).unwrap();
    assert_eq!(&out[..n], plain);

    // A different IV does not decrypt to the same first block.
    let other = Mechanism::with(CKM_AES_CBC_PAD, MechanismParams::Bytes(vec![0; 16]));
    hsm.decrypt_init(s, &other, key).unwrap();
    let mut out = vec![0u8; cipher.len()];
    let n = hsm.decrypt(s, &cipher, Some(&mut out)).unwrap();
    assert_ne!(&out[..16], &plain[..16]);
    assert_eq!(&out[16..n], &plain[16..]);
}

fn aes_gcm_with_aad(hsm: &LoadedModule, s: SessionHandle, slot: SlotId, key: ObjectHandle) {
    if !hsm.mechanism_list(slot).unwrap().contains(&CKM_AES_GCM) {
        eprintln!("SKIPPED: this SoftHSM has no CKM_AES_GCM");
        return;
    }
    let info = hsm.mechanism_info(slot, CKM_AES_GCM).unwrap();
    assert!(info.flags & CKF_ENCRYPT != 0);
    let gcm = |aad: &[u8]| {
        Mechanism::with(
            CKM_AES_GCM,
            MechanismParams::Gcm {
                iv: vec![7; 12],
                iv_bits: 96,
                aad: aad.to_vec(),
                tag_bits: 128,
            },
        )
    };
    let plain = b"authenticated and encrypted";
    hsm.encrypt_init(s, &gcm(b"header"), key).unwrap();
    let mut cipher = vec![0u8; plain.len() + 16];
    let n = hsm.encrypt(s, plain, Some(&mut cipher)).unwrap();
    assert_eq!(n, plain.len() + 16);

    hsm.decrypt_init(s, &gcm(b"header"), key).unwrap();
    let mut out = vec![0u8; cipher.len()];
    let n = hsm.decrypt(s, &cipher, Some(&mut out)).unwrap();
    assert_eq!(&out[..n], plain);

    // Other AAD: the tag does not verify.
    hsm.decrypt_init(s, &gcm(b"tampered"), key).unwrap();
    let mut out = vec![0u8; cipher.len()];
    assert!(hsm.decrypt(s, &cipher, Some(&mut out)).is_err());
}

fn attributes(hsm: &LoadedModule, s: SessionHandle, key: ObjectHandle) {
    let answers = hsm
        .get_attribute_value(
            s,
            key,
            &[CKA_VALUE, CKA_WRAP_TEMPLATE, CKA_VALUE_LEN, CKA_LABEL],
        )
        .unwrap();
    assert_eq!(answers[0], AttrAnswer::Sensitive);
    let AttrAnswer::Value(AttrValue::Template(wrap)) = &answers[1] else {
        panic!("{answers:?}")
    };
    assert_eq!(wrap.len(), 2, "{wrap:?}");
    assert_eq!(wrap.get(CKA_KEY_TYPE).unwrap().as_ulong(), Ok(CKK_AES));
    assert_eq!(wrap.get(CKA_EXTRACTABLE).unwrap().as_bool(), Ok(true));
    assert_eq!(
        answers[2],
        AttrAnswer::Value(AttrValue::Bytes(CK_ULONG::to_ne_bytes(32).to_vec()))
    );
    assert_eq!(
        answers[3],
        AttrAnswer::Value(AttrValue::Bytes(b"aes-wrapping".to_vec()))
    );

    // Set, then read back; an empty label is a value too.
    let label = Template::new().with(Attribute::bytes(CKA_LABEL, b"renamed".to_vec()));
    hsm.set_attribute_value(s, key, &label).unwrap();
    assert_eq!(
        hsm.get_attribute_value(s, key, &[CKA_LABEL]),
        Ok(vec![AttrAnswer::Value(AttrValue::Bytes(
            b"renamed".to_vec()
        ))])
    );
    let empty = Template::new().with(Attribute::bytes(CKA_LABEL, Vec::new()));
    hsm.set_attribute_value(s, key, &empty).unwrap();
    assert_eq!(
        hsm.get_attribute_value(s, key, &[CKA_LABEL]),
        Ok(vec![AttrAnswer::Value(AttrValue::Bytes(Vec::new()))])
    );
    // Sensitive cannot be turned off: the module's code.
    let unsensitive = Template::new().with(Attribute::bool(CKA_SENSITIVE, false));
    assert_eq!(
        hsm.set_attribute_value(s, key, &unsensitive),
        Err(Error::AttributeReadOnly)
    );
}

/// The template for an unwrapped AES key: the length comes from the blob.
fn unwrap_template() -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bool(CKA_DECRYPT, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
}

fn aes_key_wrap(hsm: &LoadedModule, s: SessionHandle, wrapping: ObjectHandle) {
    let target = aes_key(hsm, s, false);
    let wrap = Mechanism::new(CKM_AES_KEY_WRAP);
    // 32 key bytes + the 8-byte integrity block.
    assert_eq!(hsm.wrap_key(s, &wrap, wrapping, target, None), Ok(40));
    let mut small = [0u8; 8];
    assert_eq!(
        hsm.wrap_key(s, &wrap, wrapping, target, Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 40 })
    );
    let mut wrapped = vec![0u8; 40];
    assert_eq!(
        hsm.wrap_key(s, &wrap, wrapping, target, Some(&mut wrapped)),
        Ok(40)
    );

    let unwrapped = hsm
        .unwrap_key(s, &wrap, wrapping, &wrapped, &unwrap_template())
        .unwrap();
    // The unwrapped key is the same key: it decrypts what the original encrypted.
    let ecb = Mechanism::new(CKM_AES_ECB);
    let block = [0x5au8; 16];
    hsm.encrypt_init(s, &ecb, target).unwrap();
    let mut c1 = [0u8; 16];
    assert_eq!(hsm.encrypt(s, &block, Some(&mut c1)), Ok(16));
    hsm.decrypt_init(s, &ecb, unwrapped).unwrap();
    let mut p = [0u8; 16];
    assert_eq!(hsm.decrypt(s, &c1, Some(&mut p)), Ok(16));
    assert_eq!(p, block);

    // A corrupted blob fails the integrity check: whatever the module says, passed through.
    wrapped[3] ^= 1;
    let err = hsm
        .unwrap_key(s, &wrap, wrapping, &wrapped, &unwrap_template())
        .unwrap_err();
    assert_ne!(err.rv(), CKR_OK);

    // A key that is not extractable is not wrapped.
    assert_eq!(
        hsm.wrap_key(s, &wrap, wrapping, unwrapped, None),
        Err(Error::KeyUnextractable)
    );
}

fn objects_and_search(hsm: &LoadedModule, s: SessionHandle) {
    // More objects than one C_FindObjects chunk.
    let mut created = Vec::new();
    for i in 0..70u8 {
        let t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_DATA))
            .with(Attribute::bool(CKA_TOKEN, false))
            .with(Attribute::bytes(CKA_LABEL, b"many".to_vec()))
            .with(Attribute::bytes(CKA_VALUE, vec![i; 3]));
        created.push(hsm.create_object(s, &t).unwrap());
    }
    let many = Template::new().with(Attribute::bytes(CKA_LABEL, b"many".to_vec()));
    hsm.find_objects_init(s, &many).unwrap();
    let mut found = hsm.find_objects(s, 1000).unwrap();
    assert_eq!(hsm.find_objects(s, 10), Ok(vec![]));
    hsm.find_objects_final(s).unwrap();
    found.sort();
    let mut expected = created.clone();
    expected.sort();
    assert_eq!(found, expected);

    // `max` is respected across calls.
    hsm.find_objects_init(s, &many).unwrap();
    assert_eq!(hsm.find_objects(s, 65).unwrap().len(), 65);
    assert_eq!(hsm.find_objects(s, 65).unwrap().len(), 5);
    hsm.find_objects_final(s).unwrap();

    // The RSA pair by label, and the copy, size and destroy paths.
    let rsa = Template::new().with(Attribute::bytes(CKA_LABEL, b"rsa".to_vec()));
    hsm.find_objects_init(s, &rsa).unwrap();
    assert_eq!(hsm.find_objects(s, 10).unwrap().len(), 2);
    hsm.find_objects_final(s).unwrap();

    let copy = hsm
        .copy_object(
            s,
            created[0],
            &Template::new().with(Attribute::bytes(CKA_LABEL, b"copy".to_vec())),
        )
        .unwrap();
    assert_eq!(
        hsm.get_attribute_value(s, copy, &[CKA_LABEL, CKA_VALUE]),
        Ok(vec![
            AttrAnswer::Value(AttrValue::Bytes(b"copy".to_vec())),
            AttrAnswer::Value(AttrValue::Bytes(vec![0; 3])),
        ])
    );
    // Whatever SoftHSM answers for the size, it is its answer.
    let _ = hsm.object_size(s, copy);
    for h in created.into_iter().chain([copy]) {
        hsm.destroy_object(s, h).unwrap();
    }
    assert_eq!(
        hsm.get_attribute_value(s, copy, &[CKA_LABEL]),
        Err(Error::ObjectHandleInvalid)
    );
}

fn digest_and_random(hsm: &LoadedModule, s: SessionHandle) {
    let sha256 = Mechanism::new(CKM_SHA256);
    hsm.digest_init(s, &sha256).unwrap();
    let mut one = [0u8; 32];
    assert_eq!(hsm.digest(s, b"abc", Some(&mut one)), Ok(32));
    hsm.digest_init(s, &sha256).unwrap();
    hsm.digest_update(s, b"a").unwrap();
    hsm.digest_update(s, b"bc").unwrap();
    let mut two = [0u8; 32];
    assert_eq!(hsm.digest_final(s, Some(&mut two)), Ok(32));
    assert_eq!(one, two);

    let mut random = [0u8; 32];
    hsm.generate_random(s, &mut random).unwrap();
    assert_ne!(random, [0u8; 32]);
}

fn foreign_codes_pass_through(hsm: &LoadedModule, s: SessionHandle, slot: SlotId) {
    // Handles the module never issued.
    let bogus = SessionHandle(0xdead_beef);
    assert_eq!(hsm.session_info(bogus), Err(Error::SessionHandleInvalid));
    assert_eq!(
        hsm.sign(bogus, b"x", None).map_err(|e| e.rv()),
        Err(CKR_SESSION_HANDLE_INVALID)
    );
    assert_eq!(
        hsm.slot_info(SlotId(0xdead_beef)),
        Err(Error::SlotIdInvalid)
    );
    // An operation that was never started.
    assert_eq!(
        hsm.encrypt(s, b"x", None),
        Err(Error::OperationNotInitialized)
    );
    // An unknown mechanism.
    assert_eq!(
        hsm.mechanism_info(slot, CKM_VENDOR_DEFINED | 0x77),
        Err(Error::MechanismInvalid)
    );
    // The 3.0 functions of a 2.x module.
    let gcm = Mechanism::new(CKM_AES_GCM);
    assert_eq!(
        hsm.message_encrypt_init(s, &gcm, ObjectHandle(1)),
        Err(Error::FunctionNotSupported)
    );
    assert_eq!(hsm.session_cancel(s, 0), Err(Error::FunctionNotSupported));
    assert_eq!(
        hsm.login_user(s, CKU_USER, Some(USER_PIN), b"user"),
        Err(Error::FunctionNotSupported)
    );
}

/// OpenSC's pkcs11-spy forwards to SoftHSM: a module that someone in the process already
/// initialised (SoftHSM, through us), and a `C_GetInterface` that is exported but refuses 3.0
/// (spy over a 2.x module offers only its 2.11 "compat" interface).
fn pkcs11_spy_over_softhsm(softhsm: &Arc<LoadedModule>, slot: SlotId, dir: &Path) {
    if !Path::new(PKCS11_SPY).exists() {
        eprintln!("SKIPPED: pkcs11-spy not installed ({PKCS11_SPY} is missing)");
        return;
    }
    let spy = LoadedModule::open(Path::new(PKCS11_SPY)).unwrap();
    assert!(!Arc::ptr_eq(softhsm, &spy));
    assert!(!spy.initialized_by_us(), "SoftHSM was initialised already");
    assert_eq!(spy.function_list_version().major, 2, "{spy:?}");
    // The same token, through the other library.
    assert_eq!(spy.slot_by_token_label(LABEL), Ok(slot));
    let s = spy.open_session(slot, CKF_SERIAL_SESSION).unwrap();
    let mut random = [0u8; 8];
    spy.generate_random(s, &mut random).unwrap();
    spy.close_session(s).unwrap();
    drop(spy); // no C_Finalize: SoftHSM stays usable through `softhsm`
    assert!(softhsm.token_info(slot).is_ok());
    assert!(dir.join("spy.log").exists());
}

/// OpenSC's own module offers a 3.0 interface and initialises without a card reader: the
/// 3.0 function list is used, and its functions reach the module.
fn opensc_3_0_interface() {
    let lib = Path::new(OPENSC);
    if !lib.exists() {
        eprintln!("SKIPPED: OpenSC not installed ({OPENSC} is missing)");
        return;
    }
    let opensc = LoadedModule::open(lib).unwrap();
    assert!(opensc.has_3_0_interface(), "{opensc:?}");
    assert_eq!(opensc.function_list_version().major, 3);
    assert!(opensc.initialized_by_us());
    assert_eq!(opensc.info().unwrap().cryptoki_version.major, 3);
    // C_SessionCancel is a 3.0-only function: the module itself rejects the handle.
    let bogus = SessionHandle(0xdead);
    assert_eq!(
        opensc.session_cancel(bogus, 0),
        Err(Error::SessionHandleInvalid)
    );
    assert_eq!(
        opensc.close_session(bogus),
        Err(Error::SessionHandleInvalid)
    );
    drop(opensc); // C_Finalize
}
