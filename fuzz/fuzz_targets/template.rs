//! Templates: `CK_ATTRIBUTE[]` built from arbitrary bytes (nested attribute arrays, NULL
//! values with lengths, absurd lengths and counts) decoded by the module's template decoder;
//! what decodes is handed to the firmware to create an object and to generate a key, as
//! `C_CreateObject` and `C_GenerateKey` would. No input may panic or crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../common/device.rs");

fuzz_target!(|data: &[u8]| {
    let Ok(mut template) = ferrohsm_pkcs11::fuzzing::template(data) else {
        return;
    };
    // Session objects only: the store's writes would make each run take milliseconds, and
    // the token path's decoding is the store-record target's.
    template.0.retain(|a| a.ty != CKA_TOKEN);
    template.0.push(Attribute::bool(CKA_TOKEN, false));
    let f = fixture();
    if let Ok(h) = f.device.create_object(f.session, &template) {
        f.device
            .destroy_object(f.session, h)
            .expect("destroy what was created");
    }
    let keygen = Mechanism::new(CKM_AES_KEY_GEN);
    if let Ok(h) = f.device.generate_key(f.session, &keygen, &template) {
        f.device
            .destroy_object(f.session, h)
            .expect("destroy what was generated");
    }
});
