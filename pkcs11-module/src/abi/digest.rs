//! Message digesting functions: `C_DigestInit`, `C_Digest`, `C_DigestUpdate`, `C_DigestKey`,
//! `C_DigestFinal`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::init_or_cancel;
use super::ptr::{OutBuf, in_data, in_out};
use super::router;
use super::state::ends_operation;

/// `C_DigestInit`: starts a digest; a NULL mechanism terminates the active one.
///
/// Spec: [PKCS #11 v3.2], Message digesting functions, C_DigestInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
) -> CK_RV {
    guard("C_DigestInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_DigestInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_DIGEST, |mech| {
                router.digest_init(session, mech)
            })
        }
    })
}

/// `C_Digest`: digests single-part data.
///
/// Spec: [PKCS #11 v3.2], Message digesting functions, C_Digest.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pData` must be NULL or valid for reads of `ulDataLen` bytes; `pulDigestLen` NULL or valid
/// for reads and writes of a `CK_ULONG`; `pDigest` NULL or valid for writes of `*pulDigestLen`
/// bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Digest(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pDigest: CK_BYTE_PTR,
    pulDigestLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_Digest", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_Digest contract.
        let (data, out) = unsafe { in_out(pData, ulDataLen, pDigest, pulDigestLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DIGEST, e))?;
        out.fill(|buf| router.digest(SessionHandle(hSession), &data, buf))
    })
}

/// `C_DigestUpdate`: continues a multi-part digest.
///
/// Spec: [PKCS #11 v3.2], Message digesting functions, C_DigestUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPart` must be NULL or valid for reads of `ulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    guard("C_DigestUpdate", || {
        let router = router()?;
        // SAFETY: `pPart` is NULL or readable for `ulPartLen` bytes per the contract.
        let part = unsafe { in_data(pPart, ulPartLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DIGEST, e))?;
        router.digest_update(SessionHandle(hSession), part)
    })
}

/// `C_DigestKey`: continues a multi-part digest with the value of a secret key.
///
/// Spec: [PKCS #11 v3.2], Message digesting functions, C_DigestKey.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DigestKey", || {
        router()?.digest_key(SessionHandle(hSession), ObjectHandle(hKey))
    })
}

/// `C_DigestFinal`: finishes a multi-part digest.
///
/// Spec: [PKCS #11 v3.2], Message digesting functions, C_DigestFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulDigestLen` must be NULL or valid for reads and writes of a `CK_ULONG`; `pDigest` NULL
/// or valid for writes of `*pulDigestLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestFinal(
    hSession: CK_SESSION_HANDLE,
    pDigest: CK_BYTE_PTR,
    pulDigestLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DigestFinal", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DigestFinal contract.
        let out = unsafe { OutBuf::new(pDigest, pulDigestLen) }
            .map_err(|e| ends_operation(&router, hSession, CKF_DIGEST, e))?;
        out.fill(|buf| router.digest_final(SessionHandle(hSession), buf))
    })
}
