//! Decryption functions: `C_DecryptInit`, `C_Decrypt`, `C_DecryptUpdate`, `C_DecryptFinal`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::init_or_cancel;
use super::ptr::{OutBuf, in_out};
use super::router;
use super::state::ends_operation;

/// `C_DecryptInit`: starts a decryption; a NULL mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Decryption functions, C_DecryptInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DecryptInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_DecryptInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_DECRYPT, |mech| {
                router.decrypt_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_Decrypt`: decrypts single-part data (in place if the buffers coincide).
///
/// Spec: [PKCS #11 v3.2], Decryption functions, C_Decrypt.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pEncryptedData` must be NULL or valid for reads of `ulEncryptedDataLen` bytes;
/// `pulDataLen` NULL or valid for reads and writes of a `CK_ULONG`; `pData` NULL or valid for
/// writes of `*pulDataLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Decrypt(
    hSession: CK_SESSION_HANDLE,
    pEncryptedData: CK_BYTE_PTR,
    ulEncryptedDataLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    pulDataLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Decrypt", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_Decrypt contract.
        let (data, out) = unsafe { in_out(pEncryptedData, ulEncryptedDataLen, pData, pulDataLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DECRYPT, e))?;
        out.fill(|buf| router.decrypt(SessionHandle(hSession), &data, buf))
    })
}

/// `C_DecryptUpdate`: continues a multi-part decryption.
///
/// Spec: [PKCS #11 v3.2], Decryption functions, C_DecryptUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pEncryptedPart` must be NULL or valid for reads of `ulEncryptedPartLen` bytes;
/// `pulPartLen` NULL or valid for reads and writes of a `CK_ULONG`; `pPart` NULL or valid for
/// writes of `*pulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DecryptUpdate contract.
        let (data, out) = unsafe { in_out(pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DECRYPT, e))?;
        out.fill(|buf| router.decrypt_update(SessionHandle(hSession), &data, buf))
    })
}

/// `C_DecryptFinal`: finishes a multi-part decryption.
///
/// Spec: [PKCS #11 v3.2], Decryption functions, C_DecryptFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulLastPartLen` must be NULL or valid for reads and writes of a `CK_ULONG`; `pLastPart`
/// NULL or valid for writes of `*pulLastPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastPart: CK_BYTE_PTR,
    pulLastPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptFinal", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DecryptFinal contract.
        let out = unsafe { OutBuf::new(pLastPart, pulLastPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DECRYPT, e))?;
        out.fill(|buf| router.decrypt_final(SessionHandle(hSession), buf))
    })
}
