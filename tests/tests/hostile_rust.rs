//! Hostile calls from Rust, systematically: every session-taking function with bad session
//! handles, every object-taking function with bad object handles, every (pointer, length)
//! input with NULL and a length, every operation call with no operation, every init twice,
//! unknown mechanisms, keys of the wrong type, parameter blocks of the wrong size and absurd
//! lengths. Each call's code is compared with the exact `CKR_*` the specification names; the
//! child process running them must not crash. (tests/c/hostile.c does the same from C, with
//! threads; this one covers the function list exhaustively.)

// Calling the module through its C function list is unsafe by nature; each closure below
// passes live locals or NULL where NULL is the point.
#![allow(
    unsafe_code,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Stdio;
use std::ptr;

use cryptoki_sys::*;
use ferrohsm_e2e::{Home, USER_PIN, child_test, module};
use libloading::Library;

const CHILD: &str = "FERROHSM_HOSTILE_RUST_CHILD";

#[test]
fn every_function_refuses_bad_handles_pointers_states_and_lengths_with_exact_codes() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let home = Home::with_token("hostile");
    let out = child_test("matrix_child", &home, CHILD)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success() && text.contains("hostile matrix:"),
        "the child failed or crashed ({}):\n{text}",
        out.status
    );
}

/// The calls and their outcomes.
struct Checks {
    total: usize,
    mismatches: Vec<String>,
}

impl Checks {
    fn expect(&mut self, what: &str, got: CK_RV, want: CK_RV) {
        self.total += 1;
        if got != want {
            self.mismatches
                .push(format!("{what}: got {got:#x}, expected {want:#x}"));
        }
    }
}

type Call<'a> = (&'static str, Box<dyn Fn(CK_SESSION_HANDLE) -> CK_RV + 'a>);
type ObjCall<'a> = (
    &'static str,
    CK_RV,
    Box<dyn Fn(CK_OBJECT_HANDLE) -> CK_RV + 'a>,
);

macro_rules! call {
    ($f:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        unsafe { $f.$name.expect(stringify!($name))($($arg),*) }
    };
}

fn mech(ty: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::from_mut(v).cast(),
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// One call of every function that takes a session, with valid arguments otherwise (`key`
/// is a live AES key that can do everything).
fn session_calls(f: &CK_FUNCTION_LIST, key: CK_OBJECT_HANDLE) -> Vec<Call<'_>> {
    let pin = USER_PIN.as_bytes();
    let pin_len = pin.len() as CK_ULONG;
    vec![
        (
            "C_GetSessionInfo",
            Box::new(move |h| {
                let mut info = CK_SESSION_INFO::default();
                call!(f, C_GetSessionInfo(h, &raw mut info))
            }),
        ),
        (
            "C_Login",
            Box::new(move |h| call!(f, C_Login(h, CKU_USER, pin.as_ptr().cast_mut(), pin_len))),
        ),
        ("C_Logout", Box::new(move |h| call!(f, C_Logout(h)))),
        (
            "C_InitPIN",
            Box::new(move |h| call!(f, C_InitPIN(h, pin.as_ptr().cast_mut(), pin_len))),
        ),
        (
            "C_SetPIN",
            Box::new(move |h| {
                call!(
                    f,
                    C_SetPIN(
                        h,
                        pin.as_ptr().cast_mut(),
                        pin_len,
                        pin.as_ptr().cast_mut(),
                        pin_len
                    )
                )
            }),
        ),
        (
            "C_CreateObject",
            Box::new(move |h| {
                let mut class = CKO_DATA;
                let mut t = [attr(CKA_CLASS, &mut class)];
                let mut o = 0;
                call!(f, C_CreateObject(h, t.as_mut_ptr(), 1, &raw mut o))
            }),
        ),
        (
            "C_CopyObject",
            Box::new(move |h| {
                let mut o = 0;
                call!(f, C_CopyObject(h, key, ptr::null_mut(), 0, &raw mut o))
            }),
        ),
        (
            "C_DestroyObject",
            Box::new(move |h| call!(f, C_DestroyObject(h, key))),
        ),
        (
            "C_GetObjectSize",
            Box::new(move |h| {
                let mut n = 0;
                call!(f, C_GetObjectSize(h, key, &raw mut n))
            }),
        ),
        (
            "C_GetAttributeValue",
            Box::new(move |h| {
                let mut class: CK_ULONG = 0;
                let mut t = [attr(CKA_CLASS, &mut class)];
                call!(f, C_GetAttributeValue(h, key, t.as_mut_ptr(), 1))
            }),
        ),
        (
            "C_SetAttributeValue",
            Box::new(move |h| {
                let mut label = *b"x";
                let mut t = [attr(CKA_LABEL, &mut label)];
                call!(f, C_SetAttributeValue(h, key, t.as_mut_ptr(), 1))
            }),
        ),
        (
            "C_FindObjectsInit",
            Box::new(move |h| call!(f, C_FindObjectsInit(h, ptr::null_mut(), 0))),
        ),
        (
            "C_FindObjects",
            Box::new(move |h| {
                let (mut o, mut n) = (0, 0);
                call!(f, C_FindObjects(h, &raw mut o, 1, &raw mut n))
            }),
        ),
        (
            "C_FindObjectsFinal",
            Box::new(move |h| call!(f, C_FindObjectsFinal(h))),
        ),
        (
            "C_EncryptInit",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_ECB);
                call!(f, C_EncryptInit(h, &raw mut m, key))
            }),
        ),
        (
            "C_Encrypt",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 16], 16);
                call!(
                    f,
                    C_Encrypt(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_EncryptUpdate",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 16], 16);
                call!(
                    f,
                    C_EncryptUpdate(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_EncryptFinal",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], 16);
                call!(f, C_EncryptFinal(h, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_DecryptInit",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_ECB);
                call!(f, C_DecryptInit(h, &raw mut m, key))
            }),
        ),
        (
            "C_Decrypt",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 16], 16);
                call!(
                    f,
                    C_Decrypt(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_DecryptUpdate",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 16], 16);
                call!(
                    f,
                    C_DecryptUpdate(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_DecryptFinal",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], 16);
                call!(f, C_DecryptFinal(h, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_DigestInit",
            Box::new(move |h| {
                let mut m = mech(CKM_SHA256);
                call!(f, C_DigestInit(h, &raw mut m))
            }),
        ),
        (
            "C_Digest",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 32], 32);
                call!(
                    f,
                    C_Digest(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_DigestUpdate",
            Box::new(move |h| {
                let mut d = [0u8; 16];
                call!(f, C_DigestUpdate(h, d.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_DigestKey",
            Box::new(move |h| call!(f, C_DigestKey(h, key))),
        ),
        (
            "C_DigestFinal",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 32], 32);
                call!(f, C_DigestFinal(h, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_SignInit",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_CMAC);
                call!(f, C_SignInit(h, &raw mut m, key))
            }),
        ),
        (
            "C_Sign",
            Box::new(move |h| {
                let (mut d, mut o, mut n) = ([0u8; 16], [0u8; 16], 16);
                call!(f, C_Sign(h, d.as_mut_ptr(), 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_SignUpdate",
            Box::new(move |h| {
                let mut d = [0u8; 16];
                call!(f, C_SignUpdate(h, d.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_SignFinal",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], 16);
                call!(f, C_SignFinal(h, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_VerifyInit",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_CMAC);
                call!(f, C_VerifyInit(h, &raw mut m, key))
            }),
        ),
        (
            "C_Verify",
            Box::new(move |h| {
                let (mut d, mut s) = ([0u8; 16], [0u8; 16]);
                call!(f, C_Verify(h, d.as_mut_ptr(), 16, s.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_VerifyUpdate",
            Box::new(move |h| {
                let mut d = [0u8; 16];
                call!(f, C_VerifyUpdate(h, d.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_VerifyFinal",
            Box::new(move |h| {
                let mut s = [0u8; 16];
                call!(f, C_VerifyFinal(h, s.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_GenerateKey",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_GEN);
                let mut len: CK_ULONG = 32;
                let mut t = [attr(CKA_VALUE_LEN, &mut len)];
                let mut o = 0;
                call!(
                    f,
                    C_GenerateKey(h, &raw mut m, t.as_mut_ptr(), 1, &raw mut o)
                )
            }),
        ),
        (
            "C_GenerateKeyPair",
            Box::new(move |h| {
                let mut m = mech(CKM_EC_KEY_PAIR_GEN);
                let mut p256 = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
                let mut t = [attr(CKA_EC_PARAMS, &mut p256)];
                let (mut pubk, mut privk) = (0, 0);
                call!(
                    f,
                    C_GenerateKeyPair(
                        h,
                        &raw mut m,
                        t.as_mut_ptr(),
                        1,
                        ptr::null_mut(),
                        0,
                        &raw mut pubk,
                        &raw mut privk
                    )
                )
            }),
        ),
        (
            "C_WrapKey",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let (mut o, mut n) = ([0u8; 64], 64);
                call!(
                    f,
                    C_WrapKey(h, &raw mut m, key, key, o.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_UnwrapKey",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut w = [0u8; 40];
                let mut o = 0;
                call!(
                    f,
                    C_UnwrapKey(
                        h,
                        &raw mut m,
                        key,
                        w.as_mut_ptr(),
                        40,
                        ptr::null_mut(),
                        0,
                        &raw mut o
                    )
                )
            }),
        ),
        (
            "C_DeriveKey",
            Box::new(move |h| {
                let mut m = mech(CKM_SHA256_KEY_DERIVATION);
                let mut o = 0;
                call!(
                    f,
                    C_DeriveKey(h, &raw mut m, key, ptr::null_mut(), 0, &raw mut o)
                )
            }),
        ),
        (
            "C_SeedRandom",
            Box::new(move |h| {
                let mut s = [0u8; 16];
                call!(f, C_SeedRandom(h, s.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_GenerateRandom",
            Box::new(move |h| {
                let mut o = [0u8; 16];
                call!(f, C_GenerateRandom(h, o.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_CloseSession",
            Box::new(move |h| call!(f, C_CloseSession(h))),
        ),
    ]
}

/// One call of every function that takes an object handle (in session `s`), with the code
/// the specification names for an invalid handle in that position.
fn object_calls(
    f: &CK_FUNCTION_LIST,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> Vec<ObjCall<'_>> {
    vec![
        (
            "C_GetAttributeValue",
            CKR_OBJECT_HANDLE_INVALID,
            Box::new(move |o| {
                let mut class: CK_ULONG = 0;
                let mut t = [attr(CKA_CLASS, &mut class)];
                call!(f, C_GetAttributeValue(s, o, t.as_mut_ptr(), 1))
            }),
        ),
        (
            "C_SetAttributeValue",
            CKR_OBJECT_HANDLE_INVALID,
            Box::new(move |o| {
                let mut label = *b"x";
                let mut t = [attr(CKA_LABEL, &mut label)];
                call!(f, C_SetAttributeValue(s, o, t.as_mut_ptr(), 1))
            }),
        ),
        (
            "C_GetObjectSize",
            CKR_OBJECT_HANDLE_INVALID,
            Box::new(move |o| {
                let mut n = 0;
                call!(f, C_GetObjectSize(s, o, &raw mut n))
            }),
        ),
        (
            "C_CopyObject",
            CKR_OBJECT_HANDLE_INVALID,
            Box::new(move |o| {
                let mut n = 0;
                call!(f, C_CopyObject(s, o, ptr::null_mut(), 0, &raw mut n))
            }),
        ),
        (
            "C_DestroyObject",
            CKR_OBJECT_HANDLE_INVALID,
            Box::new(move |o| call!(f, C_DestroyObject(s, o))),
        ),
        (
            "C_EncryptInit",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_ECB);
                call!(f, C_EncryptInit(s, &raw mut m, o))
            }),
        ),
        (
            "C_DecryptInit",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_ECB);
                call!(f, C_DecryptInit(s, &raw mut m, o))
            }),
        ),
        (
            "C_SignInit",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_CMAC);
                call!(f, C_SignInit(s, &raw mut m, o))
            }),
        ),
        (
            "C_VerifyInit",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_CMAC);
                call!(f, C_VerifyInit(s, &raw mut m, o))
            }),
        ),
        (
            "C_WrapKey (wrapping key)",
            CKR_WRAPPING_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let (mut out, mut n) = ([0u8; 64], 64);
                call!(
                    f,
                    C_WrapKey(s, &raw mut m, o, key, out.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_WrapKey (key)",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let (mut out, mut n) = ([0u8; 64], 64);
                call!(
                    f,
                    C_WrapKey(s, &raw mut m, key, o, out.as_mut_ptr(), &raw mut n)
                )
            }),
        ),
        (
            "C_UnwrapKey",
            CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut w = [0u8; 40];
                let mut h = 0;
                call!(
                    f,
                    C_UnwrapKey(
                        s,
                        &raw mut m,
                        o,
                        w.as_mut_ptr(),
                        40,
                        ptr::null_mut(),
                        0,
                        &raw mut h
                    )
                )
            }),
        ),
        (
            "C_DeriveKey",
            CKR_KEY_HANDLE_INVALID,
            Box::new(move |o| {
                let mut m = mech(CKM_SHA256_KEY_DERIVATION);
                let mut h = 0;
                call!(
                    f,
                    C_DeriveKey(s, &raw mut m, o, ptr::null_mut(), 0, &raw mut h)
                )
            }),
        ),
    ]
}

/// Calls with a NULL input pointer and a non-zero length: `CKR_ARGUMENTS_BAD`, before
/// anything is read or the session is even looked up.
fn null_input_calls(f: &CK_FUNCTION_LIST, key: CK_OBJECT_HANDLE) -> Vec<Call<'_>> {
    let n16: CK_ULONG = 16;
    let null = ptr::null_mut::<u8>();
    vec![
        (
            "C_Login NULL PIN",
            Box::new(move |h| call!(f, C_Login(h, CKU_USER, null, 6))),
        ),
        (
            "C_InitPIN NULL PIN",
            Box::new(move |h| call!(f, C_InitPIN(h, null, 6))),
        ),
        (
            "C_SetPIN NULL old PIN",
            Box::new(move |h| {
                let mut p = *b"123456";
                call!(f, C_SetPIN(h, null, 6, p.as_mut_ptr(), 6))
            }),
        ),
        (
            "C_CreateObject NULL template",
            Box::new(move |h| {
                let mut o = 0;
                call!(f, C_CreateObject(h, ptr::null_mut(), 2, &raw mut o))
            }),
        ),
        (
            "C_CreateObject NULL value",
            Box::new(move |h| {
                let mut t = [CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: ptr::null_mut(),
                    ulValueLen: 4,
                }];
                let mut o = 0;
                call!(f, C_CreateObject(h, t.as_mut_ptr(), 1, &raw mut o))
            }),
        ),
        (
            "C_CreateObject NULL handle out",
            Box::new(move |h| {
                let mut class = CKO_DATA;
                let mut t = [attr(CKA_CLASS, &mut class)];
                call!(f, C_CreateObject(h, t.as_mut_ptr(), 1, ptr::null_mut()))
            }),
        ),
        (
            "C_FindObjectsInit NULL template",
            Box::new(move |h| call!(f, C_FindObjectsInit(h, ptr::null_mut(), 1))),
        ),
        (
            "C_GetAttributeValue NULL template",
            Box::new(move |h| call!(f, C_GetAttributeValue(h, key, ptr::null_mut(), 1))),
        ),
        (
            "C_SetAttributeValue NULL template",
            Box::new(move |h| call!(f, C_SetAttributeValue(h, key, ptr::null_mut(), 1))),
        ),
        (
            "C_Encrypt NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], n16);
                call!(f, C_Encrypt(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_Encrypt NULL length out",
            Box::new(move |h| {
                let mut d = [0u8; 16];
                call!(f, C_Encrypt(h, d.as_mut_ptr(), 16, null, ptr::null_mut()))
            }),
        ),
        (
            "C_EncryptUpdate NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], n16);
                call!(f, C_EncryptUpdate(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_EncryptFinal NULL length out",
            Box::new(move |h| call!(f, C_EncryptFinal(h, null, ptr::null_mut()))),
        ),
        (
            "C_Decrypt NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], n16);
                call!(f, C_Decrypt(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_DecryptUpdate NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], n16);
                call!(f, C_DecryptUpdate(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_Digest NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 32], 32);
                call!(f, C_Digest(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_DigestUpdate NULL data",
            Box::new(move |h| call!(f, C_DigestUpdate(h, null, 16))),
        ),
        (
            "C_DigestFinal NULL length out",
            Box::new(move |h| call!(f, C_DigestFinal(h, null, ptr::null_mut()))),
        ),
        (
            "C_Sign NULL data",
            Box::new(move |h| {
                let (mut o, mut n) = ([0u8; 16], n16);
                call!(f, C_Sign(h, null, 16, o.as_mut_ptr(), &raw mut n))
            }),
        ),
        (
            "C_SignUpdate NULL data",
            Box::new(move |h| call!(f, C_SignUpdate(h, null, 16))),
        ),
        (
            "C_SignFinal NULL length out",
            Box::new(move |h| call!(f, C_SignFinal(h, null, ptr::null_mut()))),
        ),
        (
            "C_Verify NULL data",
            Box::new(move |h| {
                let mut s = [0u8; 16];
                call!(f, C_Verify(h, null, 16, s.as_mut_ptr(), 16))
            }),
        ),
        (
            "C_Verify NULL signature",
            Box::new(move |h| {
                let mut d = [0u8; 16];
                call!(f, C_Verify(h, d.as_mut_ptr(), 16, null, 16))
            }),
        ),
        (
            "C_VerifyUpdate NULL data",
            Box::new(move |h| call!(f, C_VerifyUpdate(h, null, 16))),
        ),
        (
            "C_VerifyFinal NULL signature",
            Box::new(move |h| call!(f, C_VerifyFinal(h, null, 16))),
        ),
        (
            "C_GenerateKey NULL template",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_GEN);
                let mut o = 0;
                call!(
                    f,
                    C_GenerateKey(h, &raw mut m, ptr::null_mut(), 1, &raw mut o)
                )
            }),
        ),
        (
            "C_WrapKey NULL length out",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                call!(f, C_WrapKey(h, &raw mut m, key, key, null, ptr::null_mut()))
            }),
        ),
        (
            "C_UnwrapKey NULL wrapped",
            Box::new(move |h| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut o = 0;
                call!(
                    f,
                    C_UnwrapKey(h, &raw mut m, key, null, 40, ptr::null_mut(), 0, &raw mut o)
                )
            }),
        ),
        (
            "C_DeriveKey NULL handle out",
            Box::new(move |h| {
                let mut m = mech(CKM_SHA256_KEY_DERIVATION);
                call!(
                    f,
                    C_DeriveKey(h, &raw mut m, key, ptr::null_mut(), 0, ptr::null_mut())
                )
            }),
        ),
        (
            "C_SeedRandom NULL seed",
            Box::new(move |h| call!(f, C_SeedRandom(h, null, 16))),
        ),
        (
            "C_GenerateRandom NULL out",
            Box::new(move |h| call!(f, C_GenerateRandom(h, null, 16))),
        ),
        (
            "C_FindObjects NULL count out",
            Box::new(move |h| {
                let mut o = 0;
                call!(f, C_FindObjects(h, &raw mut o, 1, ptr::null_mut()))
            }),
        ),
        (
            "C_GetSessionInfo NULL",
            Box::new(move |h| call!(f, C_GetSessionInfo(h, ptr::null_mut()))),
        ),
        (
            "C_GetObjectSize NULL",
            Box::new(move |h| call!(f, C_GetObjectSize(h, key, ptr::null_mut()))),
        ),
    ]
}

#[test]
#[ignore = "runs in a child process of every_function_refuses_bad_handles_..."]
fn matrix_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let lib = unsafe { Library::new(module()) }.unwrap();
    let get = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }.unwrap();
    let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
    assert_eq!(unsafe { get.unwrap()(&raw mut list) }, CKR_OK);
    let f: &CK_FUNCTION_LIST = unsafe { &*list };
    let mut c = Checks {
        total: 0,
        mismatches: Vec::new(),
    };

    assert_eq!(call!(f, C_Initialize(ptr::null_mut())), CKR_OK);
    let rw = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    let mut s = 0;
    assert_eq!(
        call!(f, C_OpenSession(0, rw, ptr::null_mut(), None, &raw mut s)),
        CKR_OK
    );
    let pin = USER_PIN.as_bytes();
    assert_eq!(
        call!(
            f,
            C_Login(s, CKU_USER, pin.as_ptr().cast_mut(), pin.len() as CK_ULONG)
        ),
        CKR_OK
    );
    // An AES-256 session key that may do everything, and one destroyed at once (a stale
    // handle); a session closed at once (a stale session handle).
    let new_key = || {
        let mut m = mech(CKM_AES_KEY_GEN);
        let (mut len, mut yes, mut no): (CK_ULONG, CK_BBOOL, CK_BBOOL) = (32, CK_TRUE, CK_FALSE);
        let mut t = [
            attr(CKA_VALUE_LEN, &mut len),
            attr(CKA_TOKEN, &mut no),
            attr(CKA_ENCRYPT, &mut yes),
            attr(CKA_DECRYPT, &mut yes),
            attr(CKA_SIGN, &mut yes),
            attr(CKA_VERIFY, &mut yes),
            attr(CKA_WRAP, &mut yes),
            attr(CKA_UNWRAP, &mut yes),
            attr(CKA_DERIVE, &mut yes),
            attr(CKA_EXTRACTABLE, &mut yes),
            attr(CKA_SENSITIVE, &mut no),
        ];
        let mut k = 0;
        assert_eq!(
            call!(
                f,
                C_GenerateKey(
                    s,
                    &raw mut m,
                    t.as_mut_ptr(),
                    t.len() as CK_ULONG,
                    &raw mut k
                )
            ),
            CKR_OK
        );
        k
    };
    let key = new_key();
    let gone = new_key();
    assert_eq!(call!(f, C_DestroyObject(s, gone)), CKR_OK);
    let mut closed = 0;
    assert_eq!(
        call!(
            f,
            C_OpenSession(0, rw, ptr::null_mut(), None, &raw mut closed)
        ),
        CKR_OK
    );
    assert_eq!(call!(f, C_CloseSession(closed)), CKR_OK);

    // 1. Bad session handles: never-issued, stale, and an object handle in its place.
    let bad_sessions = [
        ("0", CK_INVALID_HANDLE),
        ("never issued", 0xdead_beef),
        ("closed", closed),
        ("an object handle", key),
    ];
    for (name, call) in session_calls(f, key) {
        for (which, h) in bad_sessions {
            if h == s {
                continue;
            }
            c.expect(
                &format!("{name} on a session handle that is {which}"),
                call(h),
                CKR_SESSION_HANDLE_INVALID,
            );
        }
    }

    // 2. Bad object handles in every object and key position.
    let bad_objects = [
        ("0", CK_INVALID_HANDLE),
        ("never issued", 0x7eed_f00d),
        ("destroyed", gone),
        ("the session handle", s),
    ];
    for (name, want, call) in object_calls(f, s, key) {
        for (which, o) in bad_objects {
            if o == key {
                continue;
            }
            c.expect(
                &format!("{name} with an object handle that is {which}"),
                call(o),
                want,
            );
        }
    }

    // 3. NULL inputs with lengths, on a live session and on a bad one: the pointer is the
    //    first thing checked.
    for (name, call) in null_input_calls(f, key) {
        c.expect(name, call(s), CKR_ARGUMENTS_BAD);
        c.expect(
            &format!("{name}, bad session"),
            call(0xdead_beef),
            CKR_ARGUMENTS_BAD,
        );
    }

    // 4. Operation calls with no operation.
    let calls = session_calls(f, key);
    let by_name = |n: &str| &calls.iter().find(|(name, _)| *name == n).unwrap().1;
    for name in [
        "C_Encrypt",
        "C_EncryptUpdate",
        "C_EncryptFinal",
        "C_Decrypt",
        "C_DecryptUpdate",
        "C_DecryptFinal",
        "C_Digest",
        "C_DigestUpdate",
        "C_DigestKey",
        "C_DigestFinal",
        "C_Sign",
        "C_SignUpdate",
        "C_SignFinal",
        "C_Verify",
        "C_VerifyUpdate",
        "C_VerifyFinal",
        "C_FindObjects",
        "C_FindObjectsFinal",
    ] {
        c.expect(
            &format!("{name} with no operation"),
            by_name(name)(s),
            CKR_OPERATION_NOT_INITIALIZED,
        );
    }

    // 5. Every init twice: the second is CKR_OPERATION_ACTIVE and leaves the first running;
    //    the operation is then ended by its single-part call.
    for (init, end) in [
        ("C_EncryptInit", "C_Encrypt"),
        ("C_DecryptInit", "C_Decrypt"),
        ("C_DigestInit", "C_Digest"),
        ("C_SignInit", "C_Sign"),
        ("C_FindObjectsInit", "C_FindObjectsFinal"),
    ] {
        c.expect(&format!("{init} first"), by_name(init)(s), CKR_OK);
        c.expect(
            &format!("{init} again"),
            by_name(init)(s),
            CKR_OPERATION_ACTIVE,
        );
        c.expect(
            &format!("{end} after a refused second init"),
            by_name(end)(s),
            CKR_OK,
        );
    }
    c.expect("C_VerifyInit first", by_name("C_VerifyInit")(s), CKR_OK);
    c.expect(
        "C_VerifyInit again",
        by_name("C_VerifyInit")(s),
        CKR_OPERATION_ACTIVE,
    );
    c.expect(
        "C_Verify of a wrong MAC ends it",
        by_name("C_Verify")(s),
        CKR_SIGNATURE_INVALID,
    );
    c.expect(
        "C_Verify after the end",
        by_name("C_Verify")(s),
        CKR_OPERATION_NOT_INITIALIZED,
    );

    // 6. Unknown mechanisms, and mechanisms for another key type.
    let unknown: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x0bad;
    type Init =
        unsafe extern "C" fn(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV;
    let inits: [(&str, Init); 4] = [
        ("C_EncryptInit", f.C_EncryptInit.unwrap()),
        ("C_DecryptInit", f.C_DecryptInit.unwrap()),
        ("C_SignInit", f.C_SignInit.unwrap()),
        ("C_VerifyInit", f.C_VerifyInit.unwrap()),
    ];
    for (name, init) in inits {
        // ECDSA does not encrypt at all (the mechanism is invalid for the function); RSA
        // PKCS#1 does everything, just not with an AES key.
        let ecdsa = if name.contains("crypt") {
            CKR_MECHANISM_INVALID
        } else {
            CKR_KEY_TYPE_INCONSISTENT
        };
        for (ty, want) in [
            (unknown, CKR_MECHANISM_INVALID),
            (CKM_ECDSA, ecdsa),
            (CKM_RSA_PKCS, CKR_KEY_TYPE_INCONSISTENT),
        ] {
            let mut m = mech(ty);
            c.expect(
                &format!("{name} {ty:#x} on an AES key"),
                unsafe { init(s, &raw mut m, key) },
                want,
            );
        }
    }
    let mut m = mech(unknown);
    c.expect(
        "C_DigestInit unknown",
        call!(f, C_DigestInit(s, &raw mut m)),
        CKR_MECHANISM_INVALID,
    );
    let mut o = 0;
    c.expect(
        "C_GenerateKey unknown",
        call!(
            f,
            C_GenerateKey(s, &raw mut m, ptr::null_mut(), 0, &raw mut o)
        ),
        CKR_MECHANISM_INVALID,
    );

    // 7. Parameter blocks of the wrong size: one byte short or long of the structure.
    let mut iv = [0u8; 12];
    let mut gcm = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    let mut big = [0u8; 64];
    for (what, p, len) in [
        ("a NULL CBC IV with a length", ptr::null_mut(), 16),
        (
            "GCM params one byte short",
            ptr::from_mut(&mut gcm).cast(),
            size_of::<CK_GCM_PARAMS>() - 1,
        ),
        (
            "GCM params one byte long",
            big.as_mut_ptr().cast(),
            size_of::<CK_GCM_PARAMS>() + 1,
        ),
        ("CBC IV of 15 bytes", big.as_mut_ptr().cast(), 15),
        ("CBC IV of 17 bytes", big.as_mut_ptr().cast(), 17),
    ] {
        let ty = if what.starts_with("GCM") {
            CKM_AES_GCM
        } else {
            CKM_AES_CBC
        };
        let mut m = CK_MECHANISM {
            mechanism: ty,
            pParameter: p,
            ulParameterLen: len as CK_ULONG,
        };
        c.expect(
            &format!("C_EncryptInit {what}"),
            call!(f, C_EncryptInit(s, &raw mut m, key)),
            CKR_MECHANISM_PARAM_INVALID,
        );
    }
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let mut m = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS_PSS,
        pParameter: ptr::from_mut(&mut pss).cast(),
        ulParameterLen: (size_of::<CK_RSA_PKCS_PSS_PARAMS>() - 8) as CK_ULONG,
    };
    c.expect(
        "C_SignInit PSS params short (AES key)",
        call!(f, C_SignInit(s, &raw mut m, key)),
        CKR_MECHANISM_PARAM_INVALID,
    );

    // 8. Absurd lengths with a short buffer: refused before a byte is read.
    let huge: CK_ULONG = 1 << 40;
    let mut small = [0u8; 16];
    let mut label = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: small.as_mut_ptr().cast(),
        ulValueLen: huge,
    };
    let mut h = 0;
    c.expect(
        "C_CreateObject with a 1 TiB label",
        call!(f, C_CreateObject(s, &raw mut label, 1, &raw mut h)),
        CKR_ATTRIBUTE_VALUE_INVALID,
    );
    c.expect(
        "C_CreateObject with 2^40 attributes",
        call!(f, C_CreateObject(s, &raw mut label, huge, &raw mut h)),
        CKR_ARGUMENTS_BAD,
    );
    let mut sha = mech(CKM_SHA256);
    assert_eq!(call!(f, C_DigestInit(s, &raw mut sha)), CKR_OK);
    c.expect(
        "C_DigestUpdate of 1 TiB",
        call!(f, C_DigestUpdate(s, small.as_mut_ptr(), huge)),
        CKR_DATA_LEN_RANGE,
    );
    c.expect(
        "C_DigestUpdate after a refusal",
        call!(f, C_DigestUpdate(s, small.as_mut_ptr(), 16)),
        CKR_OPERATION_NOT_INITIALIZED,
    );
    c.expect(
        "C_GenerateRandom of 1 TiB",
        call!(f, C_GenerateRandom(s, small.as_mut_ptr(), huge)),
        CKR_ARGUMENTS_BAD,
    );
    c.expect(
        "C_SeedRandom of 1 TiB",
        call!(f, C_SeedRandom(s, small.as_mut_ptr(), huge)),
        CKR_ARGUMENTS_BAD,
    );
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: small.as_mut_ptr().cast(),
        ulParameterLen: huge,
    };
    c.expect(
        "C_EncryptInit with a 1 TiB IV",
        call!(f, C_EncryptInit(s, &raw mut cbc, key)),
        CKR_MECHANISM_PARAM_INVALID,
    );
    let pin_huge = call!(f, C_Login(s, CKU_SO, small.as_mut_ptr(), huge));
    c.expect("C_Login with a 1 TiB PIN", pin_huge, CKR_ARGUMENTS_BAD);

    // The session still works after all of it.
    c.expect(
        "C_GenerateRandom at the end",
        by_name("C_GenerateRandom")(s),
        CKR_OK,
    );
    assert_eq!(call!(f, C_Finalize(ptr::null_mut())), CKR_OK);

    for m in &c.mismatches {
        println!("MISMATCH {m}");
    }
    println!(
        "hostile matrix: {} calls, {} mismatches",
        c.total,
        c.mismatches.len()
    );
    assert!(c.mismatches.is_empty(), "{} mismatches", c.mismatches.len());
}
