//! The function lists and the interface table: what `C_GetFunctionList`,
//! `C_GetInterfaceList` and `C_GetInterface` hand out.
//!
//! The lists are plain statics (they hold only function pointers and a version, so they are
//! `Sync`); the interface table holds raw pointers and needs the one [`SyncInterface`] wrapper.

use std::ffi::{CStr, c_void};

use cryptoki_sys::*;

use super::ptr::c_str_eq;
use super::{
    decrypt, digest, dual, encrypt, general, key_mgmt, message, object, parallel, random, session,
    sign, slot_token, verify,
};

/// The name of both interfaces.
const INTERFACE_NAME: &CStr = c"PKCS 11";
/// The version of [`FUNCTION_LIST`].
const VERSION_2_40: CK_VERSION = CK_VERSION {
    major: 2,
    minor: 40,
};
/// The version of [`FUNCTION_LIST_3_0`].
const VERSION_3_0: CK_VERSION = CK_VERSION { major: 3, minor: 0 };

/// The version 2.40 function list (`C_GetFunctionList`, and the "PKCS 11" 2.40 interface).
pub(crate) static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(general::C_Initialize),
    C_Finalize: Some(general::C_Finalize),
    C_GetInfo: Some(general::C_GetInfo),
    C_GetFunctionList: Some(general::C_GetFunctionList),
    C_GetSlotList: Some(slot_token::C_GetSlotList),
    C_GetSlotInfo: Some(slot_token::C_GetSlotInfo),
    C_GetTokenInfo: Some(slot_token::C_GetTokenInfo),
    C_GetMechanismList: Some(slot_token::C_GetMechanismList),
    C_GetMechanismInfo: Some(slot_token::C_GetMechanismInfo),
    C_InitToken: Some(slot_token::C_InitToken),
    C_InitPIN: Some(slot_token::C_InitPIN),
    C_SetPIN: Some(slot_token::C_SetPIN),
    C_OpenSession: Some(session::C_OpenSession),
    C_CloseSession: Some(session::C_CloseSession),
    C_CloseAllSessions: Some(session::C_CloseAllSessions),
    C_GetSessionInfo: Some(session::C_GetSessionInfo),
    C_GetOperationState: Some(session::C_GetOperationState),
    C_SetOperationState: Some(session::C_SetOperationState),
    C_Login: Some(session::C_Login),
    C_Logout: Some(session::C_Logout),
    C_CreateObject: Some(object::C_CreateObject),
    C_CopyObject: Some(object::C_CopyObject),
    C_DestroyObject: Some(object::C_DestroyObject),
    C_GetObjectSize: Some(object::C_GetObjectSize),
    C_GetAttributeValue: Some(object::C_GetAttributeValue),
    C_SetAttributeValue: Some(object::C_SetAttributeValue),
    C_FindObjectsInit: Some(object::C_FindObjectsInit),
    C_FindObjects: Some(object::C_FindObjects),
    C_FindObjectsFinal: Some(object::C_FindObjectsFinal),
    C_EncryptInit: Some(encrypt::C_EncryptInit),
    C_Encrypt: Some(encrypt::C_Encrypt),
    C_EncryptUpdate: Some(encrypt::C_EncryptUpdate),
    C_EncryptFinal: Some(encrypt::C_EncryptFinal),
    C_DecryptInit: Some(decrypt::C_DecryptInit),
    C_Decrypt: Some(decrypt::C_Decrypt),
    C_DecryptUpdate: Some(decrypt::C_DecryptUpdate),
    C_DecryptFinal: Some(decrypt::C_DecryptFinal),
    C_DigestInit: Some(digest::C_DigestInit),
    C_Digest: Some(digest::C_Digest),
    C_DigestUpdate: Some(digest::C_DigestUpdate),
    C_DigestKey: Some(digest::C_DigestKey),
    C_DigestFinal: Some(digest::C_DigestFinal),
    C_SignInit: Some(sign::C_SignInit),
    C_Sign: Some(sign::C_Sign),
    C_SignUpdate: Some(sign::C_SignUpdate),
    C_SignFinal: Some(sign::C_SignFinal),
    C_SignRecoverInit: Some(sign::C_SignRecoverInit),
    C_SignRecover: Some(sign::C_SignRecover),
    C_VerifyInit: Some(verify::C_VerifyInit),
    C_Verify: Some(verify::C_Verify),
    C_VerifyUpdate: Some(verify::C_VerifyUpdate),
    C_VerifyFinal: Some(verify::C_VerifyFinal),
    C_VerifyRecoverInit: Some(verify::C_VerifyRecoverInit),
    C_VerifyRecover: Some(verify::C_VerifyRecover),
    C_DigestEncryptUpdate: Some(dual::C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(dual::C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(dual::C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(dual::C_DecryptVerifyUpdate),
    C_GenerateKey: Some(key_mgmt::C_GenerateKey),
    C_GenerateKeyPair: Some(key_mgmt::C_GenerateKeyPair),
    C_WrapKey: Some(key_mgmt::C_WrapKey),
    C_UnwrapKey: Some(key_mgmt::C_UnwrapKey),
    C_DeriveKey: Some(key_mgmt::C_DeriveKey),
    C_SeedRandom: Some(random::C_SeedRandom),
    C_GenerateRandom: Some(random::C_GenerateRandom),
    C_GetFunctionStatus: Some(parallel::C_GetFunctionStatus),
    C_CancelFunction: Some(parallel::C_CancelFunction),
    C_WaitForSlotEvent: Some(slot_token::C_WaitForSlotEvent),
};

/// The version 3.0 function list (the default "PKCS 11" 3.0 interface).
pub(crate) static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
    version: VERSION_3_0,
    C_Initialize: Some(general::C_Initialize),
    C_Finalize: Some(general::C_Finalize),
    C_GetInfo: Some(general::C_GetInfo),
    C_GetFunctionList: Some(general::C_GetFunctionList),
    C_GetSlotList: Some(slot_token::C_GetSlotList),
    C_GetSlotInfo: Some(slot_token::C_GetSlotInfo),
    C_GetTokenInfo: Some(slot_token::C_GetTokenInfo),
    C_GetMechanismList: Some(slot_token::C_GetMechanismList),
    C_GetMechanismInfo: Some(slot_token::C_GetMechanismInfo),
    C_InitToken: Some(slot_token::C_InitToken),
    C_InitPIN: Some(slot_token::C_InitPIN),
    C_SetPIN: Some(slot_token::C_SetPIN),
    C_OpenSession: Some(session::C_OpenSession),
    C_CloseSession: Some(session::C_CloseSession),
    C_CloseAllSessions: Some(session::C_CloseAllSessions),
    C_GetSessionInfo: Some(session::C_GetSessionInfo),
    C_GetOperationState: Some(session::C_GetOperationState),
    C_SetOperationState: Some(session::C_SetOperationState),
    C_Login: Some(session::C_Login),
    C_Logout: Some(session::C_Logout),
    C_CreateObject: Some(object::C_CreateObject),
    C_CopyObject: Some(object::C_CopyObject),
    C_DestroyObject: Some(object::C_DestroyObject),
    C_GetObjectSize: Some(object::C_GetObjectSize),
    C_GetAttributeValue: Some(object::C_GetAttributeValue),
    C_SetAttributeValue: Some(object::C_SetAttributeValue),
    C_FindObjectsInit: Some(object::C_FindObjectsInit),
    C_FindObjects: Some(object::C_FindObjects),
    C_FindObjectsFinal: Some(object::C_FindObjectsFinal),
    C_EncryptInit: Some(encrypt::C_EncryptInit),
    C_Encrypt: Some(encrypt::C_Encrypt),
    C_EncryptUpdate: Some(encrypt::C_EncryptUpdate),
    C_EncryptFinal: Some(encrypt::C_EncryptFinal),
    C_DecryptInit: Some(decrypt::C_DecryptInit),
    C_Decrypt: Some(decrypt::C_Decrypt),
    C_DecryptUpdate: Some(decrypt::C_DecryptUpdate),
    C_DecryptFinal: Some(decrypt::C_DecryptFinal),
    C_DigestInit: Some(digest::C_DigestInit),
    C_Digest: Some(digest::C_Digest),
    C_DigestUpdate: Some(digest::C_DigestUpdate),
    C_DigestKey: Some(digest::C_DigestKey),
    C_DigestFinal: Some(digest::C_DigestFinal),
    C_SignInit: Some(sign::C_SignInit),
    C_Sign: Some(sign::C_Sign),
    C_SignUpdate: Some(sign::C_SignUpdate),
    C_SignFinal: Some(sign::C_SignFinal),
    C_SignRecoverInit: Some(sign::C_SignRecoverInit),
    C_SignRecover: Some(sign::C_SignRecover),
    C_VerifyInit: Some(verify::C_VerifyInit),
    C_Verify: Some(verify::C_Verify),
    C_VerifyUpdate: Some(verify::C_VerifyUpdate),
    C_VerifyFinal: Some(verify::C_VerifyFinal),
    C_VerifyRecoverInit: Some(verify::C_VerifyRecoverInit),
    C_VerifyRecover: Some(verify::C_VerifyRecover),
    C_DigestEncryptUpdate: Some(dual::C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(dual::C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(dual::C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(dual::C_DecryptVerifyUpdate),
    C_GenerateKey: Some(key_mgmt::C_GenerateKey),
    C_GenerateKeyPair: Some(key_mgmt::C_GenerateKeyPair),
    C_WrapKey: Some(key_mgmt::C_WrapKey),
    C_UnwrapKey: Some(key_mgmt::C_UnwrapKey),
    C_DeriveKey: Some(key_mgmt::C_DeriveKey),
    C_SeedRandom: Some(random::C_SeedRandom),
    C_GenerateRandom: Some(random::C_GenerateRandom),
    C_GetFunctionStatus: Some(parallel::C_GetFunctionStatus),
    C_CancelFunction: Some(parallel::C_CancelFunction),
    C_WaitForSlotEvent: Some(slot_token::C_WaitForSlotEvent),
    C_GetInterfaceList: Some(general::C_GetInterfaceList),
    C_GetInterface: Some(general::C_GetInterface),
    C_LoginUser: Some(session::C_LoginUser),
    C_SessionCancel: Some(session::C_SessionCancel),
    C_MessageEncryptInit: Some(message::C_MessageEncryptInit),
    C_EncryptMessage: Some(message::C_EncryptMessage),
    C_EncryptMessageBegin: Some(message::C_EncryptMessageBegin),
    C_EncryptMessageNext: Some(message::C_EncryptMessageNext),
    C_MessageEncryptFinal: Some(message::C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(message::C_MessageDecryptInit),
    C_DecryptMessage: Some(message::C_DecryptMessage),
    C_DecryptMessageBegin: Some(message::C_DecryptMessageBegin),
    C_DecryptMessageNext: Some(message::C_DecryptMessageNext),
    C_MessageDecryptFinal: Some(message::C_MessageDecryptFinal),
    C_MessageSignInit: Some(message::C_MessageSignInit),
    C_SignMessage: Some(message::C_SignMessage),
    C_SignMessageBegin: Some(message::C_SignMessageBegin),
    C_SignMessageNext: Some(message::C_SignMessageNext),
    C_MessageSignFinal: Some(message::C_MessageSignFinal),
    C_MessageVerifyInit: Some(message::C_MessageVerifyInit),
    C_VerifyMessage: Some(message::C_VerifyMessage),
    C_VerifyMessageBegin: Some(message::C_VerifyMessageBegin),
    C_VerifyMessageNext: Some(message::C_VerifyMessageNext),
    C_MessageVerifyFinal: Some(message::C_MessageVerifyFinal),
};

/// A `CK_INTERFACE` that may live in a `static`.
#[repr(transparent)]
pub(crate) struct SyncInterface(pub(crate) CK_INTERFACE);

// SAFETY: a `SyncInterface` only ever points at immutable statics (the interface name and the
// function lists above) and is never mutated, so sharing it between threads is sound.
unsafe impl Sync for SyncInterface {}

/// The interfaces, in the order `C_GetInterfaceList` reports them; the first is the default.
pub(crate) static INTERFACES: [SyncInterface; 2] = [
    SyncInterface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST_3_0).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
    SyncInterface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
];

/// The version of each entry of [`INTERFACES`], in the same order.
const INTERFACE_VERSIONS: [CK_VERSION; 2] = [VERSION_3_0, VERSION_2_40];

/// The first interface matching `C_GetInterface`'s three criteria: the name if given, the
/// version if given, and every bit of `flags`.
///
/// # Safety
///
/// `name` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn find_interface(
    name: *const CK_UTF8CHAR,
    version: Option<CK_VERSION>,
    flags: CK_FLAGS,
) -> Option<&'static CK_INTERFACE> {
    INTERFACES
        .iter()
        .zip(INTERFACE_VERSIONS)
        .find(|(interface, have)| {
            // SAFETY: `name` is NULL or NUL-terminated per the caller's contract.
            let name_ok = name.is_null() || unsafe { c_str_eq(name, INTERFACE_NAME) };
            let version_ok = version.is_none_or(|v| v.major == have.major && v.minor == have.minor);
            name_ok && version_ok && interface.0.flags & flags == flags
        })
        .map(|(interface, _)| &interface.0)
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    fn find(name: Option<&CStr>, version: Option<(u8, u8)>, flags: CK_FLAGS) -> Option<(u8, u8)> {
        let name = name.map_or(ptr::null(), |n| n.as_ptr().cast::<CK_UTF8CHAR>());
        let version = version.map(|(major, minor)| CK_VERSION { major, minor });
        // SAFETY: `name` is NULL or a C string literal.
        let found = unsafe { find_interface(name, version, flags) }?;
        // SAFETY: every interface points at one of our function lists, which start with a
        // CK_VERSION.
        let v = unsafe { found.pFunctionList.cast::<CK_VERSION>().read() };
        Some((v.major, v.minor))
    }

    #[test]
    fn default_interface_is_3_0() {
        assert_eq!(find(None, None, 0), Some((3, 0)));
        assert_eq!(find(Some(c"PKCS 11"), None, 0), Some((3, 0)));
    }

    #[test]
    fn interfaces_by_version() {
        assert_eq!(find(Some(c"PKCS 11"), Some((3, 0)), 0), Some((3, 0)));
        assert_eq!((find(Some(c"PKCS 11"), Some((2, 40)), 0)), Some((2, 40)));
        assert_eq!(find(None, Some((2, 40)), 0), Some((2, 40)));
        assert_eq!(find(Some(c"PKCS 11"), Some((3, 2)), 0), None);
    }

    #[test]
    fn unknown_names_and_flags_match_nothing() {
        assert_eq!(find(Some(c"Vendor"), None, 0), None);
        assert_eq!(find(Some(c"PKCS 11 "), None, 0), None);
        assert_eq!(find(Some(c""), None, 0), None);
        assert_eq!(find(None, None, CKF_INTERFACE_FORK_SAFE), None);
    }

    #[test]
    fn interface_table_matches_the_lists() {
        assert_eq!(FUNCTION_LIST.version.major, 2);
        assert_eq!(FUNCTION_LIST_3_0.version.major, 3);
        let lists = [
            (&raw const FUNCTION_LIST_3_0).cast::<c_void>(),
            (&raw const FUNCTION_LIST).cast::<c_void>(),
        ];
        for ((interface, version), list) in INTERFACES.iter().zip(INTERFACE_VERSIONS).zip(lists) {
            assert_eq!(interface.0.pFunctionList.cast_const(), list);
            // SAFETY: every function list starts with its CK_VERSION.
            let listed = unsafe { list.cast::<CK_VERSION>().read() };
            assert_eq!((listed.major, listed.minor), (version.major, version.minor));
            // SAFETY: the name points at INTERFACE_NAME, a C string literal.
            assert!(unsafe { c_str_eq(interface.0.pInterfaceName, INTERFACE_NAME) });
        }
    }
}
