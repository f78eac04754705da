//! Functions for verifying signatures and MACs: `C_VerifyInit`, `C_Verify`, `C_VerifyUpdate`,
//! `C_VerifyFinal`, `C_VerifyRecoverInit`, `C_VerifyRecover`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::init_or_cancel;
use super::ptr::{in_bytes, in_data, in_out};
use super::router;
use super::state::ends_operation;

/// `C_VerifyInit`: starts a verification; a NULL mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_VerifyInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_VerifyInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_VerifyInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_VERIFY, |mech| {
                router.verify_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_Verify`: verifies a signature on single-part data.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_Verify.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pData` and `pSignature` must each be NULL or valid for reads of their lengths.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Verify(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    guard("C_Verify", || {
        let router = router()?;
        // SAFETY: `pData` is NULL or readable for `ulDataLen` bytes per the contract.
        let data = unsafe { in_data(pData, ulDataLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_VERIFY, e))?;
        // SAFETY: `pSignature` is NULL or readable for `ulSignatureLen` bytes per the contract.
        let signature = unsafe { in_bytes(pSignature, ulSignatureLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_VERIFY, e))?;
        router.verify(SessionHandle(hSession), data, signature)
    })
}

/// `C_VerifyUpdate`: continues a multi-part verification.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_VerifyUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPart` must be NULL or valid for reads of `ulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    guard("C_VerifyUpdate", || {
        let router = router()?;
        // SAFETY: `pPart` is NULL or readable for `ulPartLen` bytes per the contract.
        let part = unsafe { in_data(pPart, ulPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_VERIFY, e))?;
        router.verify_update(SessionHandle(hSession), part)
    })
}

/// `C_VerifyFinal`: finishes a multi-part verification, checking the signature.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_VerifyFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pSignature` must be NULL or valid for reads of `ulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    guard("C_VerifyFinal", || {
        let router = router()?;
        // SAFETY: `pSignature` is NULL or readable for `ulSignatureLen` bytes per the contract.
        let signature = unsafe { in_bytes(pSignature, ulSignatureLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_VERIFY, e))?;
        router.verify_final(SessionHandle(hSession), signature)
    })
}

/// `C_VerifyRecoverInit`: starts a verification that recovers the data; a NULL mechanism
/// terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_VerifyRecoverInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_VerifyRecoverInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_VerifyRecoverInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_VERIFY_RECOVER, |mech| {
                router.verify_recover_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_VerifyRecover`: verifies a signature and recovers the signed data.
///
/// Spec: [PKCS #11 v3.2], Functions for verifying signatures and MACs, C_VerifyRecover.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pSignature` must be NULL or valid for reads of `ulSignatureLen` bytes; `pulDataLen` NULL
/// or valid for reads and writes of a `CK_ULONG`; `pData` NULL or valid for writes of
/// `*pulDataLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyRecover(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    pulDataLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_VerifyRecover", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_VerifyRecover contract.
        let (signature, out) = unsafe { in_out(pSignature, ulSignatureLen, pData, pulDataLen) }?;
        out.fill(|buf| router.verify_recover(SessionHandle(hSession), &signature, buf))
    })
}
