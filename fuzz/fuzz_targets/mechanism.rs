//! Mechanism parameters: `CK_MECHANISM` with every parameter structure the module reads
//! (GCM, CCM, OAEP, PSS, ECDH, HKDF, RSA-AES key wrap, PBKDF2, ...) built from arbitrary
//! bytes — NULL pointers with lengths, `ulParameterLen` off by a little or absurd — and the
//! 3.0 per-message parameters, decoded by the module's decoders; what decodes is used to start
//! operations on the firmware's keys, as `C_*Init` would, and to derive from them (what is
//! derived from a protected key is protected: the checks of the protection model, issue 16).
//! No input may panic or crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../common/device.rs");

/// Both fixture keys are protected (the EC key is sensitive, the AES key was generated
/// unextractable), so what is derived from them is too — except what ECDH's template chose
/// readable (the specification's exception) — and a derived key never publishes a check value
/// unless its value may be read anyway.
fn check_derived(d: &Device, s: SessionHandle, mech: &Mechanism, h: ObjectHandle) {
    use bridge::AttrAnswer;
    let a = d
        .get_attribute_value(
            s,
            h,
            &[CKA_VALUE, CKA_CHECK_VALUE, CKA_EXTRACTABLE, CKA_PRIVATE],
        )
        .expect("read what was derived");
    let readable = matches!(a[0], AttrAnswer::Value(_));
    let ecdh = matches!(mech.ty, CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE);
    assert!(
        ecdh || !readable,
        "0x{:x} derived a readable key from a protected one",
        mech.ty
    );
    if !ecdh {
        assert_eq!(
            a[2],
            AttrAnswer::Value(bridge::AttrValue::Bytes(vec![0])),
            "a key derived from unextractable keys is extractable"
        );
    }
    if !readable {
        assert_eq!(
            a[1],
            AttrAnswer::Invalid,
            "a derived key that may not be read publishes its check value"
        );
        assert_eq!(
            a[3],
            AttrAnswer::Value(bridge::AttrValue::Bytes(vec![1])),
            "a protected derived key is public"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    if first % 4 == 0 {
        let _ = ferrohsm_pkcs11::fuzzing::message_params(rest);
        return;
    }
    let Ok(mech) = ferrohsm_pkcs11::fuzzing::mechanism(rest) else {
        return;
    };
    let f = fixture();
    let d = &f.device;
    let Ok(s) = d.open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION) else {
        return;
    };
    let _ = d.encrypt_init(s, &mech, f.aes);
    let _ = d.decrypt_init(s, &mech, f.aes);
    let _ = d.sign_init(s, &mech, f.ec);
    let _ = d.sign_init(s, &mech, f.aes);
    let _ = d.verify_init(s, &mech, f.ec_pub);
    let derived = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::ulong(CKA_VALUE_LEN, 32));
    for base in [f.ec, f.aes] {
        if let Ok(h) = d.derive_key(s, &mech, base, &derived) {
            check_derived(d, s, &mech, h);
            d.destroy_object(s, h).expect("destroy what was derived");
        }
    }
    d.close_session(s).expect("close the session");
});
