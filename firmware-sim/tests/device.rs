//! The simulated firmware through its `Backend` API: tokens, PINs, sessions, objects, the
//! store. The exact `CKR_*` codes are asserted, one rule per test.

// clippy.toml exempts `#[test]` functions only; the helpers here panic on purpose too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use firmware_sim::Device;

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

/// A fresh home with one initialized token (slot 0) and a user PIN.
fn ready() -> (tempfile::TempDir, Device) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    dev.init_token(SlotId(0), SO, &label("test")).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.init_pin(s, USER).unwrap();
    dev.close_session(s).unwrap();
    (dir, dev)
}

fn rw(dev: &Device) -> SessionHandle {
    dev.open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap()
}

fn user(dev: &Device) -> SessionHandle {
    let s = rw(dev);
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    s
}

fn secret_key(value: &[u8], extra: &[Attribute]) -> Template {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
        .with(Attribute::bytes(CKA_VALUE, value.to_vec()));
    t.0.extend_from_slice(extra);
    t
}

fn data_object(label: &str, value: &[u8], token: bool, private: bool) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_DATA))
        .with(Attribute::bool(CKA_TOKEN, token))
        .with(Attribute::bool(CKA_PRIVATE, private))
        .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()))
        .with(Attribute::bytes(CKA_VALUE, value.to_vec()))
}

fn get(dev: &Device, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> AttrAnswer {
    dev.get_attribute_value(s, o, &[ty]).unwrap().remove(0)
}

fn bytes(a: AttrAnswer) -> Vec<u8> {
    match &a {
        AttrAnswer::Value(AttrValue::Bytes(b)) => b.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fresh_home_has_one_uninitialized_slot_and_a_new_one_appears_after_init() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    assert_eq!(dev.slot_list(true).unwrap(), vec![SlotId(0)]);
    let info = dev.token_info(SlotId(0)).unwrap();
    assert_eq!(info.flags & CKF_TOKEN_INITIALIZED, 0);
    assert_eq!(
        dev.open_session(SlotId(0), CKF_SERIAL_SESSION),
        Err(Error::TokenNotRecognized)
    );
    dev.init_token(SlotId(0), SO, &label("first")).unwrap();
    assert_eq!(dev.slot_list(true).unwrap(), vec![SlotId(0), SlotId(1)]);
    let info = dev.token_info(SlotId(0)).unwrap();
    assert_eq!(info.label, "first");
    assert_ne!(info.flags & CKF_TOKEN_INITIALIZED, 0);
    assert_eq!(info.flags & CKF_USER_PIN_INITIALIZED, 0);
    assert_eq!((info.min_pin_len, info.max_pin_len), (4, 64));
}

#[test]
fn serial_flag_is_required_and_ro_sessions_conflict_with_so() {
    let (_d, dev) = ready();
    assert_eq!(
        dev.open_session(SlotId(0), 0),
        Err(Error::SessionParallelNotSupported)
    );
    let ro = dev.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_eq!(
        dev.login(ro, CKU_SO, Some(SO)),
        Err(Error::SessionReadOnlyExists)
    );
    dev.close_session(ro).unwrap();
    let s = rw(&dev);
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_SO_FUNCTIONS);
    assert_eq!(
        dev.open_session(SlotId(0), CKF_SERIAL_SESSION),
        Err(Error::SessionReadWriteSoExists)
    );
    assert_eq!(
        dev.login(s, CKU_USER, Some(USER)),
        Err(Error::UserAnotherAlreadyLoggedIn)
    );
    assert_eq!(
        dev.login(s, CKU_SO, Some(SO)),
        Err(Error::UserAlreadyLoggedIn)
    );
}

#[test]
fn session_states_follow_login() {
    let (_d, dev) = ready();
    let ro = dev.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    let s = rw(&dev);
    assert_eq!(dev.session_info(ro).unwrap().state, CKS_RO_PUBLIC_SESSION);
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_PUBLIC_SESSION);
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    assert_eq!(dev.session_info(ro).unwrap().state, CKS_RO_USER_FUNCTIONS);
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_USER_FUNCTIONS);
    dev.logout(s).unwrap();
    assert_eq!(dev.logout(s), Err(Error::UserNotLoggedIn));
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_PUBLIC_SESSION);
    assert_eq!(dev.login(s, 7, Some(USER)), Err(Error::UserTypeInvalid));
}

/// C_LoginUser (3.0): without a user name it is C_Login, codes included; the token's users
/// have no names, so a named user cannot authenticate (and no PIN attempt is counted).
#[test]
fn login_user_without_a_name_is_login() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    let pin_flags = |dev: &Device| {
        dev.token_info(SlotId(0)).unwrap().flags
            & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)
    };
    // A name: refused whatever the PIN, before any PIN check.
    for _ in 0..4 {
        assert_eq!(
            dev.login_user(s, CKU_USER, Some(USER), b"alice"),
            Err(Error::PinIncorrect)
        );
    }
    assert_eq!(pin_flags(&dev), 0);
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_PUBLIC_SESSION);
    assert_eq!(
        dev.login_user(s, 7, Some(USER), b"alice"),
        Err(Error::UserTypeInvalid)
    );
    assert_eq!(
        dev.login_user(SessionHandle(999), CKU_USER, Some(USER), b"alice"),
        Err(Error::SessionHandleInvalid)
    );
    // No name: C_Login.
    assert_eq!(
        dev.login_user(s, CKU_USER, Some(b"0000"), b""),
        Err(Error::PinIncorrect)
    );
    assert_ne!(pin_flags(&dev) & CKF_USER_PIN_COUNT_LOW, 0);
    assert_eq!(
        dev.login_user(s, 7, Some(USER), b""),
        Err(Error::UserTypeInvalid)
    );
    assert_eq!(
        dev.login_user(s, CKU_USER, None, b""),
        Err(Error::ArgumentsBad)
    );
    dev.login_user(s, CKU_USER, Some(USER), b"").unwrap();
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_USER_FUNCTIONS);
    assert_eq!(pin_flags(&dev), 0);
    assert_eq!(
        dev.login_user(s, CKU_USER, Some(USER), b""),
        Err(Error::UserAlreadyLoggedIn)
    );
    // CKU_CONTEXT_SPECIFIC with nothing waiting for it.
    assert_eq!(
        dev.login_user(s, CKU_CONTEXT_SPECIFIC, Some(USER), b""),
        Err(Error::OperationNotInitialized)
    );
    dev.logout(s).unwrap();
    dev.login_user(s, CKU_SO, Some(SO), b"").unwrap();
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_SO_FUNCTIONS);
}

#[test]
fn wrong_pins_count_down_to_a_lockout_that_survives_reopening() {
    let (d, dev) = ready();
    let s = rw(&dev);
    assert_eq!(
        dev.login(s, CKU_USER, Some(b"0000")),
        Err(Error::PinIncorrect)
    );
    assert_ne!(
        dev.token_info(SlotId(0)).unwrap().flags & CKF_USER_PIN_COUNT_LOW,
        0
    );
    assert_eq!(
        dev.login(s, CKU_USER, Some(b"0000")),
        Err(Error::PinIncorrect)
    );
    assert_ne!(
        dev.token_info(SlotId(0)).unwrap().flags & CKF_USER_PIN_FINAL_TRY,
        0
    );
    assert_eq!(dev.login(s, CKU_USER, Some(b"0000")), Err(Error::PinLocked));
    assert_ne!(
        dev.token_info(SlotId(0)).unwrap().flags & CKF_USER_PIN_LOCKED,
        0
    );
    // Even the right PIN is refused now, also by another "process".
    assert_eq!(dev.login(s, CKU_USER, Some(USER)), Err(Error::PinLocked));
    let other = Device::open_home(d.path(), &config()).unwrap();
    let s2 = rw(&other);
    assert_eq!(other.login(s2, CKU_USER, Some(USER)), Err(Error::PinLocked));
    // The SO unlocks by setting a new user PIN.
    other.login(s2, CKU_SO, Some(SO)).unwrap();
    other.init_pin(s2, b"5678").unwrap();
    other.logout(s2).unwrap();
    other.login(s2, CKU_USER, Some(b"5678")).unwrap();
    assert_eq!(
        other.token_info(SlotId(0)).unwrap().flags & CKF_USER_PIN_LOCKED,
        0
    );
}

#[test]
fn a_right_pin_resets_the_counter() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    assert_eq!(
        dev.login(s, CKU_USER, Some(b"9999")),
        Err(Error::PinIncorrect)
    );
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    assert_eq!(
        dev.token_info(SlotId(0)).unwrap().flags & CKF_USER_PIN_COUNT_LOW,
        0
    );
}

#[test]
fn pin_rules() {
    let (_d, dev) = ready();
    let ro = dev.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_eq!(dev.set_pin(ro, USER, b"4321"), Err(Error::SessionReadOnly));
    dev.close_session(ro).unwrap();
    let s = rw(&dev);
    assert_eq!(dev.init_pin(s, b"4321"), Err(Error::UserNotLoggedIn));
    assert_eq!(dev.set_pin(s, USER, b"12"), Err(Error::PinLenRange));
    assert_eq!(dev.set_pin(s, b"9999", b"4321"), Err(Error::PinIncorrect));
    dev.set_pin(s, USER, b"4321").unwrap();
    assert_eq!(dev.login(s, CKU_USER, Some(USER)), Err(Error::PinIncorrect));
    dev.login(s, CKU_USER, Some(b"4321")).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    assert_eq!(dev.init_pin(s, &[b'x'; 65]), Err(Error::PinLenRange));
    dev.set_pin(s, SO, b"87654321").unwrap();
    dev.logout(s).unwrap();
    assert_eq!(dev.login(s, CKU_SO, Some(SO)), Err(Error::PinIncorrect));
    dev.login(s, CKU_SO, Some(b"87654321")).unwrap();
}

#[test]
fn user_login_before_init_pin() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    dev.init_token(SlotId(0), SO, &label("t")).unwrap();
    let s = rw(&dev);
    assert_eq!(
        dev.login(s, CKU_USER, Some(USER)),
        Err(Error::UserPinNotInitialized)
    );
}

#[test]
fn init_token_needs_no_open_session_and_the_right_so_pin() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    assert_eq!(
        dev.init_token(SlotId(0), SO, &label("again")),
        Err(Error::SessionExists)
    );
    dev.close_session(s).unwrap();
    assert_eq!(
        dev.init_token(SlotId(0), b"00000000", &label("again")),
        Err(Error::PinIncorrect)
    );
    dev.init_token(SlotId(0), SO, &label("again")).unwrap();
    let info = dev.token_info(SlotId(0)).unwrap();
    assert_eq!(info.label, "again");
    assert_eq!(
        info.flags & CKF_USER_PIN_INITIALIZED,
        0,
        "re-init clears the user PIN"
    );
}

#[test]
fn private_objects_are_invisible_before_login() {
    let (_d, dev) = ready();
    let s = user(&dev);
    dev.create_object(s, &data_object("priv", b"p", true, true))
        .unwrap();
    dev.create_object(s, &data_object("pub", b"q", true, false))
        .unwrap();
    dev.logout(s).unwrap();
    dev.find_objects_init(s, &Template::new()).unwrap();
    let found = dev.find_objects(s, 10).unwrap();
    dev.find_objects_final(s).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(bytes(get(&dev, s, found[0], CKA_LABEL)), b"pub");
    assert_eq!(
        dev.create_object(s, &data_object("x", b"x", false, true)),
        Err(Error::UserNotLoggedIn)
    );
}

#[test]
fn token_objects_need_a_rw_session() {
    let (_d, dev) = ready();
    let ro = dev.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    dev.login(ro, CKU_USER, Some(USER)).unwrap();
    assert_eq!(
        dev.create_object(ro, &data_object("t", b"", true, false)),
        Err(Error::SessionReadOnly)
    );
    let o = dev
        .create_object(ro, &data_object("session", b"", false, false))
        .unwrap();
    dev.destroy_object(ro, o).unwrap();
}

#[test]
fn session_objects_die_with_their_session() {
    let (_d, dev) = ready();
    let s1 = user(&dev);
    let s2 = rw(&dev);
    let o = dev
        .create_object(s1, &data_object("s", b"v", false, false))
        .unwrap();
    assert_eq!(bytes(get(&dev, s2, o, CKA_VALUE)), b"v");
    dev.close_session(s1).unwrap();
    assert_eq!(
        dev.get_attribute_value(s2, o, &[CKA_VALUE]),
        Err(Error::ObjectHandleInvalid)
    );
}

#[test]
fn sensitive_and_unextractable_values_are_never_revealed() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let k = dev
        .create_object(
            s,
            &secret_key(&[7u8; 16], &[Attribute::bool(CKA_SENSITIVE, true)]),
        )
        .unwrap();
    assert_eq!(get(&dev, s, k, CKA_VALUE), AttrAnswer::Sensitive);
    assert_eq!(get(&dev, s, k, CKA_MODULUS), AttrAnswer::Invalid);
    let k2 = dev
        .create_object(
            s,
            &secret_key(&[8u8; 16], &[Attribute::bool(CKA_EXTRACTABLE, false)]),
        )
        .unwrap();
    assert_eq!(get(&dev, s, k2, CKA_VALUE), AttrAnswer::Sensitive);
    let k3 = dev
        .create_object(
            s,
            &secret_key(&[9u8; 16], &[Attribute::bool(CKA_EXTRACTABLE, true)]),
        )
        .unwrap();
    assert_eq!(bytes(get(&dev, s, k3, CKA_VALUE)), vec![9u8; 16]);
    assert_eq!(bytes(get(&dev, s, k3, CKA_VALUE_LEN)), 16u64.to_ne_bytes());
    // Searching by value is no oracle on a sensitive key.
    dev.find_objects_init(
        s,
        &Template::new().with(Attribute::bytes(CKA_VALUE, vec![7u8; 16])),
    )
    .unwrap();
    assert!(dev.find_objects(s, 10).unwrap().is_empty());
    dev.find_objects_final(s).unwrap();
}

#[test]
fn provenance_of_created_keys_is_honest() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let k = dev
        .create_object(
            s,
            &secret_key(&[1u8; 32], &[Attribute::bool(CKA_SENSITIVE, true)]),
        )
        .unwrap();
    assert_eq!(bytes(get(&dev, s, k, CKA_LOCAL)), [0]);
    assert_eq!(bytes(get(&dev, s, k, CKA_ALWAYS_SENSITIVE)), [0]);
    assert_eq!(bytes(get(&dev, s, k, CKA_NEVER_EXTRACTABLE)), [0]);
    assert_eq!(
        bytes(get(&dev, s, k, CKA_KEY_GEN_MECHANISM)),
        CK_UNAVAILABLE_INFORMATION.to_ne_bytes()
    );
    assert_eq!(bytes(get(&dev, s, k, CKA_UNIQUE_ID)).len(), 32);
}

#[test]
fn template_rules_have_their_codes() {
    let (_d, dev) = ready();
    let s = user(&dev);
    // Missing class.
    assert_eq!(
        dev.create_object(s, &Template::new()),
        Err(Error::TemplateIncomplete)
    );
    // Missing key value.
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
    assert_eq!(dev.create_object(s, &t), Err(Error::TemplateIncomplete));
    // Unknown attribute.
    assert_eq!(
        dev.create_object(
            s,
            &secret_key(
                &[0; 16],
                &[Attribute::bool(CKA_MODULUS_BITS + 0x7000, true)]
            )
        ),
        Err(Error::AttributeTypeInvalid)
    );
    // Wrong length for a boolean.
    assert_eq!(
        dev.create_object(
            s,
            &secret_key(&[0; 16], &[Attribute::bytes(CKA_SENSITIVE, vec![1, 0])])
        ),
        Err(Error::AttributeValueInvalid)
    );
    // AES value of a bad length.
    assert_eq!(
        dev.create_object(s, &secret_key(&[0; 15], &[])),
        Err(Error::AttributeValueInvalid)
    );
    // Token-maintained attributes.
    for ty in [
        CKA_LOCAL,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_UNIQUE_ID,
        CKA_KEY_GEN_MECHANISM,
    ] {
        let v = if ty == CKA_UNIQUE_ID || ty == CKA_KEY_GEN_MECHANISM {
            Attribute::ulong(ty, 1)
        } else {
            Attribute::bool(ty, true)
        };
        let v = if ty == CKA_UNIQUE_ID {
            Attribute::bytes(ty, b"x".to_vec())
        } else {
            v
        };
        assert_eq!(
            dev.create_object(s, &secret_key(&[0; 16], &[v])),
            Err(Error::AttributeReadOnly),
            "{ty:#x}"
        );
    }
    // Conflicting duplicates.
    assert_eq!(
        dev.create_object(
            s,
            &secret_key(
                &[0; 16],
                &[
                    Attribute::bool(CKA_SENSITIVE, true),
                    Attribute::bool(CKA_SENSITIVE, false)
                ]
            )
        ),
        Err(Error::TemplateInconsistent)
    );
    // Identical duplicates too: every layer (a policy in front of a real module included)
    // must read one value, so the firmware never resolves a repeated type.
    assert_eq!(
        dev.create_object(
            s,
            &secret_key(
                &[0; 16],
                &[
                    Attribute::bool(CKA_SENSITIVE, true),
                    Attribute::bool(CKA_SENSITIVE, true),
                ],
            ),
        ),
        Err(Error::TemplateInconsistent)
    );
    // Unknown class.
    assert_eq!(
        dev.create_object(
            s,
            &Template::new().with(Attribute::ulong(CKA_CLASS, 0x7777))
        ),
        Err(Error::AttributeValueInvalid)
    );
    // ALWAYS_AUTHENTICATE on a public object.
    let t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bytes(CKA_VALUE, vec![1; 20]))
        .with(Attribute::bool(CKA_PRIVATE, false))
        .with(Attribute::bool(CKA_ALWAYS_AUTHENTICATE, true));
    assert_eq!(dev.create_object(s, &t), Err(Error::AttributeTypeInvalid));
}

#[test]
fn attribute_transitions_follow_the_sticky_rules() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let readable = [
        Attribute::bool(CKA_SENSITIVE, false),
        Attribute::bool(CKA_EXTRACTABLE, true),
    ];
    // A public key never becomes protected: a protected key is always private.
    let public = dev
        .create_object(s, &secret_key(&[4; 16], &readable))
        .unwrap();
    for a in [
        Attribute::bool(CKA_SENSITIVE, true),
        Attribute::bool(CKA_EXTRACTABLE, false),
    ] {
        assert_eq!(
            dev.set_attribute_value(s, public, &Template::new().with(a)),
            Err(Error::TemplateInconsistent)
        );
    }
    let mut private = readable.to_vec();
    private.push(Attribute::bool(CKA_PRIVATE, true));
    let k = dev
        .create_object(s, &secret_key(&[3; 16], &private))
        .unwrap();
    // FALSE -> TRUE allowed for SENSITIVE, never back.
    dev.set_attribute_value(
        s,
        k,
        &Template::new().with(Attribute::bool(CKA_SENSITIVE, true)),
    )
    .unwrap();
    assert_eq!(
        dev.set_attribute_value(
            s,
            k,
            &Template::new().with(Attribute::bool(CKA_SENSITIVE, false))
        ),
        Err(Error::AttributeReadOnly)
    );
    // TRUE -> FALSE allowed for EXTRACTABLE, never back.
    dev.set_attribute_value(
        s,
        k,
        &Template::new().with(Attribute::bool(CKA_EXTRACTABLE, false)),
    )
    .unwrap();
    assert_eq!(
        dev.set_attribute_value(
            s,
            k,
            &Template::new().with(Attribute::bool(CKA_EXTRACTABLE, true))
        ),
        Err(Error::AttributeReadOnly)
    );
    // Computed and copy-only attributes are read-only here. (An unprotected session key whose
    // template does not name CKA_PRIVATE is public.)
    assert_eq!(
        dev.get_attribute_value(s, public, &[CKA_PRIVATE]).unwrap(),
        vec![AttrAnswer::Value(AttrValue::Bytes(vec![0]))]
    );
    for a in [
        Attribute::bool(CKA_LOCAL, true),
        Attribute::bool(CKA_TOKEN, true),
        Attribute::bool(CKA_PRIVATE, false),
    ] {
        assert_eq!(
            dev.set_attribute_value(s, k, &Template::new().with(a)),
            Err(Error::AttributeReadOnly)
        );
    }
    // Only the SO may set TRUSTED.
    assert_eq!(
        dev.set_attribute_value(
            s,
            k,
            &Template::new().with(Attribute::bool(CKA_TRUSTED, true))
        ),
        Err(Error::AttributeReadOnly)
    );
    // All or nothing: a good label with a bad change leaves the label alone.
    let r = dev.set_attribute_value(
        s,
        k,
        &Template::new()
            .with(Attribute::bytes(CKA_LABEL, b"new".to_vec()))
            .with(Attribute::bool(CKA_SENSITIVE, false)),
    );
    assert_eq!(r, Err(Error::AttributeReadOnly));
    assert_eq!(bytes(get(&dev, s, k, CKA_LABEL)), b"");
    dev.set_attribute_value(
        s,
        k,
        &Template::new().with(Attribute::bytes(CKA_LABEL, b"new".to_vec())),
    )
    .unwrap();
    assert_eq!(bytes(get(&dev, s, k, CKA_LABEL)), b"new");
}

#[test]
fn modifiable_copyable_destroyable() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let t = data_object("ro", b"v", true, false).with(Attribute::bool(CKA_MODIFIABLE, false));
    let o = dev.create_object(s, &t).unwrap();
    assert_eq!(
        dev.set_attribute_value(
            s,
            o,
            &Template::new().with(Attribute::bytes(CKA_LABEL, b"x".to_vec()))
        ),
        Err(Error::ActionProhibited)
    );
    let t = data_object("nc", b"v", true, false).with(Attribute::bool(CKA_COPYABLE, false));
    let o = dev.create_object(s, &t).unwrap();
    assert_eq!(
        dev.copy_object(s, o, &Template::new()),
        Err(Error::ActionProhibited)
    );
    assert_eq!(
        dev.set_attribute_value(
            s,
            o,
            &Template::new().with(Attribute::bool(CKA_COPYABLE, true))
        ),
        Err(Error::AttributeReadOnly)
    );
    let t = data_object("nd", b"v", true, false).with(Attribute::bool(CKA_DESTROYABLE, false));
    let o = dev.create_object(s, &t).unwrap();
    assert_eq!(dev.destroy_object(s, o), Err(Error::ActionProhibited));
}

#[test]
fn copy_with_an_empty_template_and_with_changes() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let k = dev
        .create_object(
            s,
            &secret_key(
                &[5; 16],
                &[
                    Attribute::bool(CKA_EXTRACTABLE, true),
                    Attribute::bool(CKA_TOKEN, true),
                ],
            ),
        )
        .unwrap();
    let c = dev.copy_object(s, k, &Template::new()).unwrap();
    assert_ne!(c, k);
    assert_eq!(bytes(get(&dev, s, c, CKA_VALUE)), vec![5; 16]);
    assert_ne!(
        bytes(get(&dev, s, c, CKA_UNIQUE_ID)),
        bytes(get(&dev, s, k, CKA_UNIQUE_ID))
    );
    let c2 = dev
        .copy_object(
            s,
            k,
            &Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_SENSITIVE, true)),
        )
        .unwrap();
    assert_eq!(get(&dev, s, c2, CKA_VALUE), AttrAnswer::Sensitive);
    assert_eq!(bytes(get(&dev, s, c2, CKA_TOKEN)), [0]);
    assert_eq!(
        dev.copy_object(
            s,
            c2,
            &Template::new().with(Attribute::bool(CKA_SENSITIVE, false))
        ),
        Err(Error::AttributeReadOnly)
    );
}

#[test]
fn a_second_device_on_the_same_home_sees_changes_without_reopening() {
    let (d, a) = ready();
    let b = Device::open_home(d.path(), &config()).unwrap();
    let sa = user(&a);
    let sb = user(&b);
    let find = |dev: &Device, s| {
        dev.find_objects_init(
            s,
            &Template::new().with(Attribute::bytes(CKA_LABEL, b"shared".to_vec())),
        )
        .unwrap();
        let r = dev.find_objects(s, 10).unwrap();
        dev.find_objects_final(s).unwrap();
        r
    };
    assert!(find(&b, sb).is_empty());
    let o = a
        .create_object(sa, &data_object("shared", b"one", true, true))
        .unwrap();
    assert_eq!(find(&b, sb), vec![o]);
    assert_eq!(bytes(get(&b, sb, o, CKA_VALUE)), b"one");
    a.set_attribute_value(
        sa,
        o,
        &Template::new().with(Attribute::bytes(CKA_LABEL, b"renamed".to_vec())),
    )
    .unwrap();
    assert!(find(&b, sb).is_empty());
    assert_eq!(bytes(get(&b, sb, o, CKA_LABEL)), b"renamed");
    a.destroy_object(sa, o).unwrap();
    assert_eq!(
        b.get_attribute_value(sb, o, &[CKA_LABEL]),
        Err(Error::ObjectHandleInvalid)
    );
}

#[test]
fn key_bytes_are_nowhere_in_clear_in_the_store() {
    let (d, dev) = ready();
    let s = user(&dev);
    let private_key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let public_key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(53).wrapping_add(7))
        .collect();
    let data: Vec<u8> = b"private data object value 0123456789".to_vec();
    dev.create_object(
        s,
        &secret_key(
            &private_key,
            &[
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_PRIVATE, true),
            ],
        ),
    )
    .unwrap();
    dev.create_object(
        s,
        &secret_key(
            &public_key,
            &[
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_PRIVATE, false),
            ],
        ),
    )
    .unwrap();
    dev.create_object(s, &data_object("d", &data, true, true))
        .unwrap();
    drop(dev);
    let mut files = 0;
    for entry in walk(d.path()) {
        let content = std::fs::read(&entry).unwrap();
        files += 1;
        for needle in [&private_key[..], &public_key[..], &data[..], USER, SO] {
            assert!(
                !content.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret in clear",
                entry.display()
            );
        }
    }
    assert!(files >= 1);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_foreign_file_is_a_device_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokens/0");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::write(
        tok.join("token.db"),
        b"this is not a database at all, just some text".repeat(100),
    )
    .unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    let e = dev.token_info(SlotId(0)).unwrap_err();
    assert_eq!(e.rv(), CKR_DEVICE_ERROR, "{e}");
    assert!(e.to_string().contains("not a database"), "{e}");
}

#[test]
fn digests_match_known_answers_single_and_multi_part() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    let expect = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"hello world");
    dev.digest_init(s, &Mechanism::new(CKM_SHA256)).unwrap();
    assert_eq!(dev.digest(s, b"hello world", None).unwrap(), 32);
    let mut small = [0u8; 10];
    assert_eq!(
        dev.digest(s, b"hello world", Some(&mut small)),
        Err(Error::BufferTooSmall { needed: 32 })
    );
    let mut out = [0u8; 64];
    assert_eq!(dev.digest(s, b"hello world", Some(&mut out)).unwrap(), 32);
    assert_eq!(&out[..32], expect.as_ref());
    assert_eq!(
        dev.digest(s, b"x", Some(&mut out)),
        Err(Error::OperationNotInitialized)
    );
    dev.digest_init(s, &Mechanism::new(CKM_SHA256)).unwrap();
    assert_eq!(
        dev.digest_init(s, &Mechanism::new(CKM_SHA256)),
        Err(Error::OperationActive)
    );
    dev.digest_update(s, b"hello ").unwrap();
    dev.digest_update(s, b"world").unwrap();
    assert_eq!(dev.digest_final(s, Some(&mut out)).unwrap(), 32);
    assert_eq!(&out[..32], expect.as_ref());
    // The digests only RustCrypto has: FIPS 180-4 / FIPS 202 / RFC 1321 answers for "abc",
    // single- and multi-part.
    for (ty, expect) in [
        (CKM_MD5, "900150983cd24fb0d6963f7d28e17f72"),
        (
            CKM_SHA3_224,
            "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf",
        ),
        (
            CKM_SHA512_224,
            "4634270f707b6a54daae7530460842e20e37ed265ceee9a43e8924aa",
        ),
        (
            CKM_SHA512_256,
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23",
        ),
    ] {
        let expect: Vec<u8> = (0..expect.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&expect[i..i + 2], 16).unwrap())
            .collect();
        let m = Mechanism::new(ty);
        dev.digest_init(s, &m).unwrap();
        let n = dev.digest(s, b"abc", Some(&mut out)).unwrap();
        assert_eq!(&out[..n], &expect[..], "0x{ty:x}");
        dev.digest_init(s, &m).unwrap();
        dev.digest_update(s, b"a").unwrap();
        dev.digest_update(s, b"bc").unwrap();
        let n = dev.digest_final(s, Some(&mut out)).unwrap();
        assert_eq!(&out[..n], &expect[..], "0x{ty:x} multi-part");
    }
    assert_eq!(
        dev.digest_init(s, &Mechanism::new(CKM_MD2)),
        Err(Error::MechanismInvalid)
    );
}

#[test]
fn random_and_seed() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    dev.generate_random(s, &mut a).unwrap();
    dev.generate_random(s, &mut b).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        dev.seed_random(s, b"seed"),
        Err(Error::RandomSeedNotSupported)
    );
    assert_eq!(
        dev.generate_random(SessionHandle(999), &mut a),
        Err(Error::SessionHandleInvalid)
    );
}

/// Every path that could reveal a key's bytes, for each protection state of the key: read the
/// value, wrap it, copy it and read (or loosen) the copy, derive data or a loose secret from it,
/// wrap-then-unwrap and read. Clear bytes come out only of a key that is neither sensitive nor
/// unextractable, and each refusal has its exact code.
#[test]
fn non_exportability_matrix() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let kek = dev
        .create_object(
            s,
            &secret_key(
                &[0x4bu8; 16],
                &[
                    Attribute::bool(CKA_WRAP, true),
                    Attribute::bool(CKA_UNWRAP, true),
                ],
            ),
        )
        .unwrap();
    let kw = Mechanism::new(CKM_AES_KEY_WRAP);
    let hkdf = |data: bool| {
        Mechanism::with(
            if data { CKM_HKDF_DATA } else { CKM_HKDF_DERIVE },
            MechanismParams::Hkdf {
                extract: true,
                expand: true,
                prf_hash: CKM_SHA256,
                salt_type: CKF_HKDF_SALT_NULL,
                salt: Vec::new(),
                salt_key: 0,
                info: b"info".to_vec(),
            },
        )
    };
    for (sensitive, extractable) in [(true, true), (true, false), (false, false), (false, true)] {
        let state = format!("sensitive={sensitive} extractable={extractable}");
        let value = [0x11u8; 16];
        // A generic secret: the base HKDF takes.
        let k = dev
            .create_object(
                s,
                &Template::new()
                    .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                    .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                    .with(Attribute::bytes(CKA_VALUE, value.to_vec()))
                    .with(Attribute::bool(CKA_SENSITIVE, sensitive))
                    .with(Attribute::bool(CKA_EXTRACTABLE, extractable))
                    .with(Attribute::bool(CKA_DERIVE, true)),
            )
            .unwrap();
        let clear = !sensitive && extractable;

        // 1. C_GetAttributeValue.
        let v = get(&dev, s, k, CKA_VALUE);
        if clear {
            assert_eq!(bytes(v), value, "{state}");
        } else {
            assert_eq!(v, AttrAnswer::Sensitive, "{state}");
        }

        // 2. C_WrapKey: only an extractable key, and then only encrypted.
        let mut out = [0u8; 64];
        let w = dev.wrap_key(s, &kw, kek, k, Some(&mut out));
        if extractable {
            let n = w.unwrap();
            assert!(
                !out[..n].windows(16).any(|x| x == value),
                "{state}: clear bytes in wrap"
            );
        } else {
            assert_eq!(w, Err(Error::KeyUnextractable), "{state}");
        }

        // 3. C_CopyObject: the copy is as protected; loosening it is refused.
        let c = dev.copy_object(s, k, &Template::new()).unwrap();
        assert_eq!(
            get(&dev, s, c, CKA_VALUE) == AttrAnswer::Sensitive,
            !clear,
            "{state}: copy"
        );
        if sensitive {
            assert_eq!(
                dev.copy_object(
                    s,
                    k,
                    &Template::new().with(Attribute::bool(CKA_SENSITIVE, false))
                ),
                Err(Error::AttributeReadOnly),
                "{state}: copy with CKA_SENSITIVE=FALSE"
            );
        }
        if !extractable {
            assert_eq!(
                dev.copy_object(
                    s,
                    k,
                    &Template::new().with(Attribute::bool(CKA_EXTRACTABLE, true))
                ),
                Err(Error::AttributeReadOnly),
                "{state}: copy with CKA_EXTRACTABLE=TRUE"
            );
            assert_eq!(
                dev.set_attribute_value(
                    s,
                    k,
                    &Template::new().with(Attribute::bool(CKA_EXTRACTABLE, true))
                ),
                Err(Error::AttributeReadOnly),
                "{state}: set CKA_EXTRACTABLE=TRUE"
            );
        }

        // 4. C_DeriveKey: no readable data object, no loose secret, from a protected key.
        let data = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_DATA))
            .with(Attribute::ulong(CKA_VALUE_LEN, 32));
        let d = dev.derive_key(s, &hkdf(true), k, &data);
        if clear {
            assert!(d.is_ok(), "{state}: {d:?}");
        } else {
            assert_eq!(d, Err(Error::KeyFunctionNotPermitted), "{state}: HKDF_DATA");
        }
        let loose = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
            .with(Attribute::ulong(CKA_VALUE_LEN, 32))
            .with(Attribute::bool(CKA_SENSITIVE, false))
            .with(Attribute::bool(CKA_EXTRACTABLE, true));
        let d = dev.derive_key(s, &hkdf(false), k, &loose);
        if clear {
            assert!(d.is_ok(), "{state}: {d:?}");
        } else {
            assert_eq!(
                d,
                Err(Error::TemplateInconsistent),
                "{state}: loose derived secret"
            );
        }

        // 5. Wrap, then unwrap as a sensitive key: the unwrapped copy does not show its value.
        if extractable {
            let n = dev.wrap_key(s, &kw, kek, k, Some(&mut out)).unwrap();
            let u = dev
                .unwrap_key(
                    s,
                    &kw,
                    kek,
                    &out[..n],
                    &Template::new()
                        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                        .with(Attribute::bool(CKA_SENSITIVE, true)),
                )
                .unwrap();
            assert_eq!(
                get(&dev, s, u, CKA_VALUE),
                AttrAnswer::Sensitive,
                "{state}: unwrapped"
            );
            assert_eq!(
                bytes(get(&dev, s, u, CKA_ALWAYS_SENSITIVE)),
                vec![0],
                "{state}"
            );
            assert_eq!(bytes(get(&dev, s, u, CKA_LOCAL)), vec![0], "{state}");
        }
    }
}

/// CKA_WRAP_TEMPLATE restricts what a key wraps (`CKR_KEY_NOT_WRAPPABLE` otherwise);
/// CKA_UNWRAP_TEMPLATE and CKA_DERIVE_TEMPLATE are applied to the new key, and a caller's
/// template that contradicts them is `CKR_TEMPLATE_INCONSISTENT`.
#[test]
fn wrap_unwrap_and_derive_templates() {
    let (_d, dev) = ready();
    let s = user(&dev);
    let only_aes = Template::new().with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
    let unwrapped_shape = Template::new()
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_ENCRYPT, true));
    let kek = dev
        .create_object(
            s,
            &secret_key(
                &[0x4bu8; 16],
                &[
                    Attribute::bool(CKA_WRAP, true),
                    Attribute::bool(CKA_UNWRAP, true),
                    Attribute::template(CKA_WRAP_TEMPLATE, only_aes.clone()),
                    Attribute::template(CKA_UNWRAP_TEMPLATE, unwrapped_shape),
                ],
            ),
        )
        .unwrap();
    let kw = Mechanism::new(CKM_AES_KEY_WRAP);
    let aes = dev
        .create_object(
            s,
            &secret_key(&[1u8; 16], &[Attribute::bool(CKA_EXTRACTABLE, true)]),
        )
        .unwrap();
    let generic = dev
        .create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                .with(Attribute::bytes(CKA_VALUE, vec![2u8; 16]))
                .with(Attribute::bool(CKA_EXTRACTABLE, true)),
        )
        .unwrap();
    let mut out = [0u8; 64];
    let n = dev.wrap_key(s, &kw, kek, aes, Some(&mut out)).unwrap();
    assert_eq!(
        dev.wrap_key(s, &kw, kek, generic, Some(&mut [0u8; 64])),
        Err(Error::KeyNotWrappable)
    );
    // The unwrap template shapes the new key.
    let base = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
    let u = dev.unwrap_key(s, &kw, kek, &out[..n], &base).unwrap();
    assert_eq!(get(&dev, s, u, CKA_VALUE), AttrAnswer::Sensitive);
    assert_eq!(bytes(get(&dev, s, u, CKA_ENCRYPT)), vec![1]);
    let against = base.clone().with(Attribute::bool(CKA_SENSITIVE, false));
    assert_eq!(
        dev.unwrap_key(s, &kw, kek, &out[..n], &against),
        Err(Error::TemplateInconsistent)
    );
    // The derive template shapes derived keys the same way.
    let derive_shape = Template::new().with(Attribute::bool(CKA_SIGN, true));
    let base_key = dev
        .create_object(
            s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                .with(Attribute::bytes(CKA_VALUE, vec![3u8; 32]))
                .with(Attribute::bool(CKA_DERIVE, true))
                .with(Attribute::template(CKA_DERIVE_TEMPLATE, derive_shape)),
        )
        .unwrap();
    let hkdf = Mechanism::with(
        CKM_HKDF_DERIVE,
        MechanismParams::Hkdf {
            extract: true,
            expand: true,
            prf_hash: CKM_SHA256,
            salt_type: CKF_HKDF_SALT_NULL,
            salt: Vec::new(),
            salt_key: 0,
            info: Vec::new(),
        },
    );
    let new = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::ulong(CKA_VALUE_LEN, 32));
    let d = dev.derive_key(s, &hkdf, base_key, &new).unwrap();
    assert_eq!(bytes(get(&dev, s, d, CKA_SIGN)), vec![1]);
    assert_eq!(
        dev.derive_key(
            s,
            &hkdf,
            base_key,
            &new.clone().with(Attribute::bool(CKA_SIGN, false))
        ),
        Err(Error::TemplateInconsistent)
    );
}

/// OpenSSL 3's pkcs11-provider makes session keys (imported, ECDH and HKDF secrets) on a
/// session that is not logged in, without naming CKA_PRIVATE: an unprotected session key then
/// defaults to public; a protected one, or a token key, stays private.
#[test]
fn silent_cka_private_of_an_unprotected_session_key_is_false() {
    let (_d, dev) = ready();
    let s = rw(&dev);
    let private_of = |k| {
        dev.get_attribute_value(s, k, &[CKA_PRIVATE]).unwrap()
            == vec![AttrAnswer::Value(AttrValue::Bytes(vec![1]))]
    };
    // An imported secret (not sensitive, extractable: the defaults for C_CreateObject).
    let k = dev.create_object(
        s,
        &secret_key(&[4; 16], &[Attribute::bool(CKA_ENCRYPT, true)]),
    );
    let k = k.unwrap();
    assert!(!private_of(k));
    let mut out = [0u8; 16];
    let ecb = Mechanism::new(CKM_AES_ECB);
    dev.encrypt_init(s, &ecb, k).unwrap();
    assert_eq!(dev.encrypt(s, &[0; 16], Some(&mut out)), Ok(16));
    // Protected (sensitive, or not extractable), or a token object: private, so refused here.
    for extra in [
        Attribute::bool(CKA_SENSITIVE, true),
        Attribute::bool(CKA_EXTRACTABLE, false),
        Attribute::bool(CKA_TOKEN, true),
    ] {
        assert_eq!(
            dev.create_object(s, &secret_key(&[4; 16], std::slice::from_ref(&extra))),
            Err(Error::UserNotLoggedIn),
            "{extra:?}"
        );
    }
    // A generated session key is not extractable by default: private.
    let keygen = Mechanism::new(CKM_AES_KEY_GEN);
    let t = Template::new().with(Attribute::ulong(CKA_VALUE_LEN, 16));
    assert_eq!(
        dev.generate_key(s, &keygen, &t),
        Err(Error::UserNotLoggedIn)
    );
    let t = t
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::bool(CKA_SENSITIVE, false));
    let g = dev.generate_key(s, &keygen, &t).unwrap();
    assert!(!private_of(g));
    // Logged in, the same rule: the default does not depend on the session.
    let u = user(&dev);
    let k = dev.create_object(u, &secret_key(&[5; 16], &[])).unwrap();
    assert!(!private_of(k));
    let k = dev
        .create_object(
            u,
            &secret_key(&[5; 16], &[Attribute::bool(CKA_SENSITIVE, true)]),
        )
        .unwrap();
    assert!(private_of(k));
}

/// The user's flags of the token info (`CKF_USER_PIN_*`).
fn user_pin_flags(dev: &Device) -> CK_FLAGS {
    dev.token_info(SlotId(0)).unwrap().flags
        & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)
}

/// An ECDSA P-256 pair whose private half wants a context-specific login for each use.
fn always_authenticate_pair(dev: &Device, s: SessionHandle) -> ObjectHandle {
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, P256.to_vec()));
    let private = Template::new()
        .with(Attribute::bool(CKA_SIGN, true))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_ALWAYS_AUTHENTICATE, true));
    dev.generate_key_pair(s, &Mechanism::new(CKM_EC_KEY_PAIR_GEN), &public, &private)
        .unwrap()
        .1
}

/// A context-specific login with the PIN the user proved is recognized without the PIN
/// derivation, but never where the full check would refuse it: a wrong PIN still counts, a
/// PIN changed by another application (over the same store) is the new one at once, and a PIN
/// another application locked stays locked.
#[test]
fn a_context_login_never_outlives_the_pin_it_proved() {
    let (dir, dev) = ready();
    let s = user(&dev);
    let key = always_authenticate_pair(&dev, s);
    let m = Mechanism::new(CKM_ECDSA);
    let sign = |pin: &[u8]| -> Result<usize> {
        dev.sign_init(s, &m, key)?;
        let r = dev.login(s, CKU_CONTEXT_SPECIFIC, Some(pin));
        let mut sig = [0u8; 64];
        let out = r.and_then(|()| dev.sign(s, &[7; 32], Some(&mut sig)));
        if out.is_err() {
            // End the operation whatever happened (a refused login leaves it waiting).
            let _ = dev.session_cancel(s, CKF_SIGN);
        }
        out
    };
    assert_eq!(sign(USER), Ok(64));
    assert_eq!(sign(USER), Ok(64));
    // A wrong PIN counts under the lockout; the right one after it clears the count.
    assert_eq!(sign(b"9999"), Err(Error::PinIncorrect));
    assert_ne!(user_pin_flags(&dev) & CKF_USER_PIN_COUNT_LOW, 0);
    assert_eq!(sign(USER), Ok(64));
    assert_eq!(user_pin_flags(&dev), 0);

    // Another application (another device over the same home) changes the user PIN.
    let other = Device::open_home(dir.path(), &config()).unwrap();
    let o = other
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    other.login(o, CKU_USER, Some(USER)).unwrap();
    other.set_pin(o, USER, b"5678").unwrap();
    assert_eq!(sign(USER), Err(Error::PinIncorrect));
    assert_eq!(sign(b"5678"), Ok(64));

    // It locks the PIN with wrong tries: the PIN this application just proved is refused,
    // and the refusal logs the user out.
    other.logout(o).unwrap();
    for _ in 0..3 {
        assert!(other.login(o, CKU_USER, Some(b"0000")).is_err());
    }
    assert_ne!(user_pin_flags(&other) & CKF_USER_PIN_LOCKED, 0);
    assert_eq!(sign(b"5678"), Err(Error::PinLocked));
    assert_eq!(dev.session_info(s).unwrap().state, CKS_RW_PUBLIC_SESSION);
}

/// What another application changes in a token key reaches this one's attribute reads at once
/// and its operations within a millisecond (`Token::key`): a destroyed key, or one whose use
/// was taken away, is not used by an operation that starts after that.
#[test]
fn another_applications_change_reaches_operations_within_a_millisecond() {
    let (dir, dev) = ready();
    let s = user(&dev);
    let make = |label: &str| {
        dev.create_object(
            s,
            &secret_key(
                &[9; 32],
                &[
                    Attribute::bool(CKA_TOKEN, true),
                    Attribute::bool(CKA_ENCRYPT, true),
                    Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
                ],
            ),
        )
        .unwrap()
    };
    let (gone, barred) = (make("gone"), make("barred"));
    let m = Mechanism::new(CKM_AES_ECB);
    for k in [gone, barred] {
        dev.encrypt_init(s, &m, k).unwrap();
        let mut out = [0u8; 16];
        dev.encrypt(s, &[0; 16], Some(&mut out)).unwrap();
    }

    let other = Device::open_home(dir.path(), &config()).unwrap();
    let o = other
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    other.login(o, CKU_USER, Some(USER)).unwrap();
    other.destroy_object(o, gone).unwrap();
    other
        .set_attribute_value(
            o,
            barred,
            &Template::new().with(Attribute::bool(CKA_ENCRYPT, false)),
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(dev.encrypt_init(s, &m, gone), Err(Error::KeyHandleInvalid));
    assert_eq!(
        dev.encrypt_init(s, &m, barred),
        Err(Error::KeyFunctionNotPermitted)
    );
    // Attribute reads see a change at once.
    other
        .set_attribute_value(
            o,
            barred,
            &Template::new().with(Attribute::bytes(CKA_LABEL, b"renamed".to_vec())),
        )
        .unwrap();
    assert_eq!(
        dev.get_attribute_value(s, barred, &[CKA_LABEL]).unwrap(),
        vec![AttrAnswer::Value(AttrValue::Bytes(b"renamed".to_vec()))]
    );
    other.destroy_object(o, barred).unwrap();
    assert_eq!(
        dev.get_attribute_value(s, barred, &[CKA_LABEL]),
        Err(Error::ObjectHandleInvalid)
    );
}

/// A tenant's tokens in a home with a security domain are sealed under the tenant's key (from
/// the domain master key, the tenant's name bound in): the same files under another tenant's
/// name — the directory renamed or copied — or opened as a plain home give up nothing: no PIN
/// opens the token, no object's secret value is read.
#[test]
fn a_tenants_token_opens_under_its_own_key_only() {
    use firmware_sim::TenantSeal;
    let home = tempfile::tempdir().unwrap();
    let (dk, _) = firmware_sim::domain::load_or_create(home.path()).unwrap();
    let a_dir = home.path().join("tenants").join("A");
    let seal = |t: &str| Some(TenantSeal::for_home(&dk, t).unwrap());
    let public_value = vec![0x3c; 32];
    {
        let dev = Device::open_tenant_home(&a_dir, &config(), seal("A")).unwrap();
        dev.init_token(SlotId(0), SO, &label("a")).unwrap();
        let s = rw(&dev);
        dev.login(s, CKU_SO, Some(SO)).unwrap();
        dev.init_pin(s, USER).unwrap();
        dev.logout(s).unwrap();
        dev.login(s, CKU_USER, Some(USER)).unwrap();
        // A public secret key (sealed under the device key) and a private one.
        for private in [false, true] {
            dev.create_object(
                s,
                &secret_key(
                    &public_value,
                    &[
                        Attribute::bool(CKA_TOKEN, true),
                        Attribute::bool(CKA_PRIVATE, private),
                        Attribute::bool(CKA_SENSITIVE, false),
                        Attribute::bool(CKA_EXTRACTABLE, true),
                    ],
                ),
            )
            .unwrap();
        }
        // A PIN change is sealed too.
        dev.set_pin(s, USER, b"4321").unwrap();
        dev.set_pin(s, b"4321", USER).unwrap();
    }
    // Under A's key, in A's directory: everything.
    let find_all = |dev: &Device, s: SessionHandle| {
        dev.find_objects_init(s, &Template::new()).unwrap();
        let found = dev.find_objects(s, 10).unwrap();
        dev.find_objects_final(s).unwrap();
        found
    };
    {
        let dev = Device::open_tenant_home(&a_dir, &config(), seal("A")).unwrap();
        let s = user(&dev);
        let found = find_all(&dev, s);
        assert_eq!(found.len(), 2);
        for o in found {
            assert_eq!(bytes(get(&dev, s, o, CKA_VALUE)), public_value);
        }
    }
    // A's directory renamed to B's: under B's key, the token does not open.
    let b_dir = home.path().join("tenants").join("B");
    std::fs::rename(&a_dir, &b_dir).unwrap();
    let refused = |dev: &Device| {
        if let Ok(s) = dev.open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION) {
            assert!(dev.login(s, CKU_USER, Some(USER)).is_err());
            assert!(dev.login(s, CKU_SO, Some(SO)).is_err());
            assert!(find_all(dev, s).is_empty(), "objects seen without the key");
        }
    };
    refused(&Device::open_tenant_home(&b_dir, &config(), seal("B")).unwrap());
    // Opened as a plain home (no tenant key at all): nothing either.
    refused(&Device::open_home(&b_dir, &config()).unwrap());
    // Back under its own name: whole again.
    std::fs::rename(&b_dir, &a_dir).unwrap();
    let dev = Device::open_tenant_home(&a_dir, &config(), seal("A")).unwrap();
    let s = user(&dev);
    assert_eq!(find_all(&dev, s).len(), 2);
}
