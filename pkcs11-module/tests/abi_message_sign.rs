//! The PKCS#11 3.0 message-based signing functions (`C_MessageSignInit`, `C_SignMessage`,
//! `C_SignMessageBegin`/`Next`, `C_MessageSignFinal`, the verify twins) and `C_LoginUser`
//! through the built `libferrohsm_pkcs11.so`, loaded with `dlopen` and called through the 3.0
//! function list from `C_GetInterface`, exactly as an application would.
//!
//! As in `abi_smoke.rs`, the module's process-global state means the scenario runs in a child
//! process of its own (this test binary, filtered to the `#[ignore]`d scenario), with
//! `FERROHSM_HOME` set to a fresh directory. The module is found through
//! `TEST_PKCS11_MODULE`, else next to this binary.

// Calling into the loaded module is unsafe by nature; each call has its SAFETY line.
#![allow(unsafe_code)]
// clippy.toml allows these in `#[test]` functions; the helpers below are test code too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;
use std::ptr;

use cryptoki_sys::*;
use libloading::Library;

/// Marks the environment of the child process running the scenario.
const CHILD_MARKER: &str = "FERROHSM_ABI_MESSAGE_CHILD";
const SO_PIN: &[u8] = b"12345678";
const USER_PIN: &[u8] = b"1234";
/// DER OID of Ed25519 (`CKA_EC_PARAMS`).
const ED25519: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_PKCS11_MODULE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    let profile = deps.parent().expect("profile directory");
    for dir in [deps, profile] {
        let candidate = dir.join("libferrohsm_pkcs11.so");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "libferrohsm_pkcs11.so not found next to {}; set TEST_PKCS11_MODULE",
        exe.display()
    );
}

#[test]
fn sign_and_verify_messages_through_the_c_abi() {
    let home = tempfile::tempdir().expect("temporary home");
    let name = "child_sign_and_verify_messages";
    let output = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, "1")
        .env("FERROHSM_HOME", home.path())
        .env_remove("FERROHSM_CONF")
        .env_remove("FERROHSM_LOG")
        .output()
        .expect("spawn child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
}

/// The 3.0 function list, from the exported `C_GetInterface`.
fn interface_3_0(lib: &Library) -> &CK_FUNCTION_LIST_3_0 {
    // SAFETY: the symbol has the CK_C_GetInterface type by the PKCS#11 3.0 ABI.
    let get = unsafe { lib.get::<CK_C_GetInterface>(b"C_GetInterface\0") }
        .expect("C_GetInterface exported")
        .expect("non-null C_GetInterface");
    let mut name = *b"PKCS 11\0";
    let mut version = CK_VERSION { major: 3, minor: 0 };
    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    // SAFETY: the name is NUL-terminated, the version and the pointer slot are live.
    let rv = unsafe { get(name.as_mut_ptr(), &raw mut version, &raw mut iface, 0) };
    assert_eq!(rv, CKR_OK);
    assert!(!iface.is_null());
    // SAFETY: the module returned a pointer to its static interface.
    let list = unsafe { (*iface).pFunctionList };
    // SAFETY: the function list of "PKCS 11" version 3.0 is a CK_FUNCTION_LIST_3_0, static in
    // the module, alive as long as `lib` is loaded.
    unsafe { &*list.cast::<CK_FUNCTION_LIST_3_0>() }
}

fn bool_attr(ty: CK_ATTRIBUTE_TYPE, value: &CK_BBOOL) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::from_ref(value).cast_mut().cast::<c_void>(),
        ulValueLen: 1,
    }
}

fn ulen(n: usize) -> CK_ULONG {
    CK_ULONG::try_from(n).unwrap()
}

/// An initialized token in slot 0 with a user PIN, and a R/W session logged in as the user.
fn logged_in_session(f: &CK_FUNCTION_LIST_3_0) -> CK_SESSION_HANDLE {
    let mut label = [b' '; 32];
    label[..3].copy_from_slice(b"msg");
    let mut so = SO_PIN.to_vec();
    let mut user = USER_PIN.to_vec();
    // SAFETY: the PIN and the 32-byte label are live for the call.
    let rv =
        unsafe { f.C_InitToken.unwrap()(0, so.as_mut_ptr(), ulen(so.len()), label.as_mut_ptr()) };
    assert_eq!(rv, CKR_OK);
    let mut s: CK_SESSION_HANDLE = 0;
    // SAFETY: no callback; `s` is a live slot.
    let rv = unsafe {
        f.C_OpenSession.unwrap()(
            0,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &raw mut s,
        )
    };
    assert_eq!(rv, CKR_OK);
    assert_eq!(login(f, s, CKU_SO, SO_PIN), CKR_OK);
    // SAFETY: the PIN is live for its length.
    let rv = unsafe { f.C_InitPIN.unwrap()(s, user.as_mut_ptr(), ulen(user.len())) };
    assert_eq!(rv, CKR_OK);
    assert_eq!(logout(f, s), CKR_OK);
    assert_eq!(login(f, s, CKU_USER, USER_PIN), CKR_OK);
    s
}

/// An Ed25519 key pair (session objects): (public, private).
fn ed25519_pair(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let yes: CK_BBOOL = CK_TRUE;
    let mut params = ED25519;
    let mut public = [
        CK_ATTRIBUTE {
            type_: CKA_EC_PARAMS,
            pValue: params.as_mut_ptr().cast::<c_void>(),
            ulValueLen: ulen(params.len()),
        },
        bool_attr(CKA_VERIFY, &yes),
    ];
    let mut private = [bool_attr(CKA_SIGN, &yes), bool_attr(CKA_SENSITIVE, &yes)];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_EC_EDWARDS_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut pub_key, mut priv_key) = (0, 0);
    // SAFETY: the mechanism, both templates (and the values they point to) and the handle
    // slots are live for the call.
    let rv = unsafe {
        f.C_GenerateKeyPair.unwrap()(
            s,
            &raw mut mech,
            public.as_mut_ptr(),
            ulen(public.len()),
            private.as_mut_ptr(),
            ulen(private.len()),
            &raw mut pub_key,
            &raw mut priv_key,
        )
    };
    assert_eq!(rv, CKR_OK);
    (pub_key, priv_key)
}

fn eddsa() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_EDDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// `C_SignMessage` with no parameter; `out` NULL asks for the length.
fn sign_message(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    data: &[u8],
    out: Option<&mut [u8]>,
    len: &mut CK_ULONG,
) -> CK_RV {
    let mut data = data.to_vec();
    let out = out.map_or(ptr::null_mut(), <[u8]>::as_mut_ptr);
    // SAFETY: `data` is readable, `out` NULL or writable for `*len` bytes (the callers pass
    // a buffer of at least that length), `len` live.
    unsafe {
        f.C_SignMessage.unwrap()(
            s,
            ptr::null_mut(),
            0,
            data.as_mut_ptr(),
            ulen(data.len()),
            out,
            len,
        )
    }
}

/// `C_SignMessageNext`: `len` `None` means "more data follows" (NULL `pulSignatureLen`).
fn sign_message_next(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    part: &[u8],
    out: Option<&mut [u8]>,
    len: Option<&mut CK_ULONG>,
) -> CK_RV {
    let mut part = part.to_vec();
    let out = out.map_or(ptr::null_mut(), <[u8]>::as_mut_ptr);
    let len = len.map_or(ptr::null_mut(), ptr::from_mut);
    // SAFETY: as for `sign_message`; a NULL `len` means the output is not used.
    unsafe {
        f.C_SignMessageNext.unwrap()(
            s,
            ptr::null_mut(),
            0,
            part.as_mut_ptr(),
            ulen(part.len()),
            out,
            len,
        )
    }
}

fn verify_message(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    data: &[u8],
    sig: &[u8],
) -> CK_RV {
    let mut data = data.to_vec();
    let mut sig = sig.to_vec();
    // SAFETY: both buffers are readable for their lengths.
    unsafe {
        f.C_VerifyMessage.unwrap()(
            s,
            ptr::null_mut(),
            0,
            data.as_mut_ptr(),
            ulen(data.len()),
            sig.as_mut_ptr(),
            ulen(sig.len()),
        )
    }
}

fn verify_message_next(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    part: &[u8],
    sig: Option<&[u8]>,
) -> CK_RV {
    let mut part = part.to_vec();
    let mut sig = sig.map(<[u8]>::to_vec);
    let (sig_ptr, sig_len) = sig
        .as_mut()
        .map_or((ptr::null_mut(), 0), |v| (v.as_mut_ptr(), ulen(v.len())));
    // SAFETY: the part is readable; the signature NULL or readable for `sig_len` bytes.
    unsafe {
        f.C_VerifyMessageNext.unwrap()(
            s,
            ptr::null_mut(),
            0,
            part.as_mut_ptr(),
            ulen(part.len()),
            sig_ptr,
            sig_len,
        )
    }
}

fn login(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> CK_RV {
    let mut pin = pin.to_vec();
    // SAFETY: the PIN is live for its length.
    unsafe { f.C_Login.unwrap()(s, user, pin.as_mut_ptr(), ulen(pin.len())) }
}

/// `C_LoginUser`; `name` `None` is a NULL user name of length 0.
fn login_user(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    pin: &[u8],
    name: Option<&[u8]>,
) -> CK_RV {
    let mut pin = pin.to_vec();
    let mut name = name.map(<[u8]>::to_vec);
    let (name_ptr, name_len) = name
        .as_mut()
        .map_or((ptr::null_mut(), 0), |v| (v.as_mut_ptr(), ulen(v.len())));
    // SAFETY: the PIN is live for its length; the name NULL (length 0) or live for its length.
    unsafe {
        f.C_LoginUser.unwrap()(
            s,
            CKU_USER,
            pin.as_mut_ptr(),
            ulen(pin.len()),
            name_ptr,
            name_len,
        )
    }
}

fn logout(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: the session handle is the only argument.
    unsafe { f.C_Logout.unwrap()(s) }
}

/// `C_MessageSignInit` (`mech` `None`: a NULL mechanism).
fn message_sign_init(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    mech: Option<&mut CK_MECHANISM>,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let mech = mech.map_or(ptr::null_mut(), ptr::from_mut);
    // SAFETY: the mechanism is NULL or live, without a parameter.
    unsafe { f.C_MessageSignInit.unwrap()(s, mech, key) }
}

fn message_verify_init(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    mech: &mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the mechanism is live, without a parameter.
    unsafe { f.C_MessageVerifyInit.unwrap()(s, mech, key) }
}

fn message_sign_final(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: the session handle is the only argument.
    unsafe { f.C_MessageSignFinal.unwrap()(s) }
}

fn message_verify_final(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: the session handle is the only argument.
    unsafe { f.C_MessageVerifyFinal.unwrap()(s) }
}

fn sign_message_begin(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: no parameter.
    unsafe { f.C_SignMessageBegin.unwrap()(s, ptr::null_mut(), 0) }
}

fn verify_message_begin(f: &CK_FUNCTION_LIST_3_0, s: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: no parameter.
    unsafe { f.C_VerifyMessageBegin.unwrap()(s, ptr::null_mut(), 0) }
}

/// `C_SignInit` and `C_Sign` into a 64-byte buffer.
fn sign(
    f: &CK_FUNCTION_LIST_3_0,
    s: CK_SESSION_HANDLE,
    mech: &mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> [u8; 64] {
    // SAFETY: the mechanism is live, without a parameter.
    let rv = unsafe { f.C_SignInit.unwrap()(s, mech, key) };
    assert_eq!(rv, CKR_OK);
    let mut data = data.to_vec();
    let mut sig = [0u8; 64];
    let mut len = ulen(sig.len());
    // SAFETY: the data is readable, the output writable for `len` bytes, `len` live.
    let rv = unsafe {
        f.C_Sign.unwrap()(
            s,
            data.as_mut_ptr(),
            ulen(data.len()),
            sig.as_mut_ptr(),
            &raw mut len,
        )
    };
    assert_eq!((rv, len), (CKR_OK, 64));
    sig
}

#[test]
#[ignore = "runs in a child process of `sign_and_verify_messages_through_the_c_abi`"]
fn child_sign_and_verify_messages() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    // SAFETY: loading our own module runs no foreign initialisers beyond Rust's std setup.
    let lib = unsafe { Library::new(module_path()) }.expect("dlopen libferrohsm_pkcs11.so");
    let f = interface_3_0(&lib);
    // SAFETY: NULL is the documented argument.
    let rv = unsafe { f.C_Initialize.unwrap()(ptr::null_mut()) };
    assert_eq!(rv, CKR_OK);
    let s = logged_in_session(f);
    let (public, private) = ed25519_pair(f, s);
    let data = b"a message signed through the C ABI";
    let mut mech = eddsa();
    // The regular C_Sign signature (Ed25519 is deterministic).
    let regular = sign(f, s, &mut mech, private, data);

    // Without C_MessageSignInit.
    let mut len: CK_ULONG = 0;
    assert_eq!(
        sign_message(f, s, data, None, &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(message_sign_final(f, s), CKR_OPERATION_NOT_INITIALIZED);

    assert_eq!(
        message_sign_init(f, s, Some(&mut mech), public),
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(message_sign_init(f, s, Some(&mut mech), private), CKR_OK);
    assert_eq!(
        message_sign_init(f, s, Some(&mut mech), private),
        CKR_OPERATION_ACTIVE
    );

    // C_SignMessage: the length, a short buffer, the signature.
    assert_eq!(sign_message(f, s, data, None, &mut len), CKR_OK);
    assert_eq!(len, 64);
    let mut sig = [0u8; 64];
    len = 10;
    assert_eq!(
        sign_message(f, s, data, Some(&mut sig), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 64);
    assert_eq!(sign_message(f, s, data, Some(&mut sig), &mut len), CKR_OK);
    assert_eq!((len, sig), (64, regular));
    // A per-message parameter where the mechanism takes none.
    let mut junk = [1u8, 2, 3, 4];
    let mut input = data.to_vec();
    // SAFETY: the parameter, data and length are live; the output is NULL (length query).
    let rv = unsafe {
        f.C_SignMessage.unwrap()(
            s,
            junk.as_mut_ptr().cast::<c_void>(),
            ulen(junk.len()),
            input.as_mut_ptr(),
            ulen(input.len()),
            ptr::null_mut(),
            &raw mut len,
        )
    };
    assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);

    // In parts: NULL pulSignatureLen feeds data; the last part queries, then signs.
    assert_eq!(sign_message_begin(f, s), CKR_OK);
    assert_eq!(
        sign_message(f, s, data, None, &mut len),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(sign_message_next(f, s, &data[..9], None, None), CKR_OK);
    let mut len: CK_ULONG = 0;
    assert_eq!(
        sign_message_next(f, s, &data[9..], None, Some(&mut len)),
        CKR_OK
    );
    assert_eq!(len, 64);
    let mut sig = [0u8; 64];
    assert_eq!(
        sign_message_next(f, s, &data[9..], Some(&mut sig), Some(&mut len)),
        CKR_OK
    );
    assert_eq!(sig, regular);
    assert_eq!(
        sign_message_next(f, s, b"", Some(&mut sig), Some(&mut len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    // C_MessageSignFinal ends the process; so does C_MessageSignInit with a NULL mechanism.
    assert_eq!(message_sign_final(f, s), CKR_OK);
    assert_eq!(
        sign_message(f, s, data, None, &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(message_sign_init(f, s, Some(&mut mech), private), CKR_OK);
    assert_eq!(message_sign_init(f, s, None, 0), CKR_OK);
    assert_eq!(
        sign_message(f, s, data, None, &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Verification, in one part and in parts.
    assert_eq!(message_verify_init(f, s, &mut mech, public), CKR_OK);
    assert_eq!(verify_message(f, s, data, &regular), CKR_OK);
    let mut bad = regular;
    bad[5] ^= 1;
    assert_eq!(verify_message(f, s, data, &bad), CKR_SIGNATURE_INVALID);
    assert_eq!(
        verify_message(f, s, data, &regular[..63]),
        CKR_SIGNATURE_LEN_RANGE
    );
    assert_eq!(verify_message_begin(f, s), CKR_OK);
    assert_eq!(verify_message_next(f, s, &data[..3], None), CKR_OK);
    assert_eq!(
        verify_message_next(f, s, &data[3..], Some(&regular)),
        CKR_OK
    );
    assert_eq!(
        verify_message_next(f, s, b"", Some(&regular)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(message_verify_final(f, s), CKR_OK);
    assert_eq!(message_verify_final(f, s), CKR_OPERATION_NOT_INITIALIZED);

    // C_LoginUser: without a user name it is C_Login; this token's users have no names.
    assert_eq!(logout(f, s), CKR_OK);
    assert_eq!(
        login_user(f, s, USER_PIN, Some(b"alice")),
        CKR_PIN_INCORRECT
    );
    assert_eq!(login_user(f, s, USER_PIN, None), CKR_OK);
    // SAFETY: NULL is the documented argument.
    let rv = unsafe { f.C_Finalize.unwrap()(ptr::null_mut()) };
    assert_eq!(rv, CKR_OK);
}
