//! Encryption functions: `C_EncryptInit`, `C_Encrypt`, `C_EncryptUpdate`, `C_EncryptFinal`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::init_or_cancel;
use super::ptr::{OutBuf, in_out};
use super::router;
use super::state::ends_operation;

/// `C_EncryptInit`: starts an encryption; a NULL mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Encryption functions, C_EncryptInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_EncryptInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_EncryptInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_ENCRYPT, |mech| {
                router.encrypt_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_Encrypt`: encrypts single-part data (in place if the buffers coincide).
///
/// Spec: [PKCS #11 v3.2], Encryption functions, C_Encrypt.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pData` must be NULL or valid for reads of `ulDataLen` bytes; `pulEncryptedDataLen` NULL or
/// valid for reads and writes of a `CK_ULONG`; `pEncryptedData` NULL or valid for writes of
/// `*pulEncryptedDataLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Encrypt(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pEncryptedData: CK_BYTE_PTR,
    pulEncryptedDataLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Encrypt", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_Encrypt contract.
        let (data, out) = unsafe { in_out(pData, ulDataLen, pEncryptedData, pulEncryptedDataLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_ENCRYPT, e))?;
        out.fill(|buf| router.encrypt(SessionHandle(hSession), &data, buf))
    })
}

/// `C_EncryptUpdate`: continues a multi-part encryption.
///
/// Spec: [PKCS #11 v3.2], Encryption functions, C_EncryptUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPart` must be NULL or valid for reads of `ulPartLen` bytes; `pulEncryptedPartLen` NULL or
/// valid for reads and writes of a `CK_ULONG`; `pEncryptedPart` NULL or valid for writes of
/// `*pulEncryptedPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_EncryptUpdate contract.
        let (part, out) = unsafe { in_out(pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_ENCRYPT, e))?;
        out.fill(|buf| router.encrypt_update(SessionHandle(hSession), &part, buf))
    })
}

/// `C_EncryptFinal`: finishes a multi-part encryption.
///
/// Spec: [PKCS #11 v3.2], Encryption functions, C_EncryptFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulLastEncryptedPartLen` must be NULL or valid for reads and writes of a `CK_ULONG`;
/// `pLastEncryptedPart` NULL or valid for writes of `*pulLastEncryptedPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastEncryptedPart: CK_BYTE_PTR,
    pulLastEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptFinal", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_EncryptFinal contract.
        let out = unsafe { OutBuf::new(pLastEncryptedPart, pulLastEncryptedPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_ENCRYPT, e))?;
        out.fill(|buf| router.encrypt_final(SessionHandle(hSession), buf))
    })
}
