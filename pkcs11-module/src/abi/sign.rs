//! Signing and MACing functions: `C_SignInit`, `C_Sign`, `C_SignUpdate`, `C_SignFinal`,
//! `C_SignRecoverInit`, `C_SignRecover`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::init_or_cancel;
use super::ptr::{OutBuf, in_data, in_out};
use super::router;
use super::state::ends_operation;

/// `C_SignInit`: starts a signature or MAC; a NULL mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_SignInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SignInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_SignInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_SIGN, |mech| {
                router.sign_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_Sign`: signs single-part data. "A call to C_Sign always terminates the active signing
/// operation unless it returns CKR_BUFFER_TOO_SMALL or is a successful call ... to determine
/// the length of the buffer needed": the backend applies that rule.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_Sign.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pData` must be NULL or valid for reads of `ulDataLen` bytes; `pulSignatureLen` NULL or
/// valid for reads and writes of a `CK_ULONG`; `pSignature` NULL or valid for writes of
/// `*pulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Sign(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Sign", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_Sign contract.
        let (data, out) = unsafe { in_out(pData, ulDataLen, pSignature, pulSignatureLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_SIGN, e))?;
        out.fill(|buf| router.sign(SessionHandle(hSession), &data, buf))
    })
}

/// `C_SignUpdate`: continues a multi-part signature.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_SignUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPart` must be NULL or valid for reads of `ulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    guard("C_SignUpdate", || {
        let router = router()?;
        // SAFETY: `pPart` is NULL or readable for `ulPartLen` bytes per the contract.
        let part = unsafe { in_data(pPart, ulPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_SIGN, e))?;
        router.sign_update(SessionHandle(hSession), part)
    })
}

/// `C_SignFinal`: finishes a multi-part signature.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_SignFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulSignatureLen` must be NULL or valid for reads and writes of a `CK_ULONG`; `pSignature`
/// NULL or valid for writes of `*pulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_SignFinal", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_SignFinal contract.
        let out = unsafe { OutBuf::new(pSignature, pulSignatureLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_SIGN, e))?;
        out.fill(|buf| router.sign_final(SessionHandle(hSession), buf))
    })
}

/// `C_SignRecoverInit`: starts a signature from which the data can be recovered; a NULL
/// mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_SignRecoverInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SignRecoverInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_SignRecoverInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_SIGN_RECOVER, |mech| {
                router.sign_recover_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_SignRecover`: signs data so that it can be recovered from the signature.
///
/// Spec: [PKCS #11 v3.2], Signing and MACing functions, C_SignRecover.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pData` must be NULL or valid for reads of `ulDataLen` bytes; `pulSignatureLen` NULL or
/// valid for reads and writes of a `CK_ULONG`; `pSignature` NULL or valid for writes of
/// `*pulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignRecover(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_SignRecover", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_SignRecover contract.
        let (data, out) = unsafe { in_out(pData, ulDataLen, pSignature, pulSignatureLen) }?;
        out.fill(|buf| router.sign_recover(SessionHandle(hSession), &data, buf))
    })
}
