//! Dual-function cryptographic functions: `C_DigestEncryptUpdate`, `C_DecryptDigestUpdate`,
//! `C_SignEncryptUpdate`, `C_DecryptVerifyUpdate`.

use bridge::{BackendExt as _, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::ptr::in_out;
use super::router;

/// `C_DigestEncryptUpdate`: continues a digest and an encryption with the same data.
///
/// Spec: [PKCS #11 v3.2], Dual-function cryptographic functions, C_DigestEncryptUpdate.
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
pub unsafe extern "C" fn C_DigestEncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DigestEncryptUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DigestEncryptUpdate contract.
        let (part, out) = unsafe { in_out(pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen) }?;
        out.fill(|buf| router.digest_encrypt_update(SessionHandle(hSession), &part, buf))
    })
}

/// `C_DecryptDigestUpdate`: continues a decryption and a digest of the recovered data.
///
/// Spec: [PKCS #11 v3.2], Dual-function cryptographic functions, C_DecryptDigestUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pEncryptedPart` must be NULL or valid for reads of `ulEncryptedPartLen` bytes; `pulPartLen`
/// NULL or valid for reads and writes of a `CK_ULONG`; `pPart` NULL or valid for writes of
/// `*pulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptDigestUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptDigestUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DecryptDigestUpdate contract.
        let (part, out) = unsafe { in_out(pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen) }?;
        out.fill(|buf| router.decrypt_digest_update(SessionHandle(hSession), &part, buf))
    })
}

/// `C_SignEncryptUpdate`: continues a signature and an encryption with the same data.
///
/// Spec: [PKCS #11 v3.2], Dual-function cryptographic functions, C_SignEncryptUpdate.
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
pub unsafe extern "C" fn C_SignEncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_SignEncryptUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_SignEncryptUpdate contract.
        let (part, out) = unsafe { in_out(pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen) }?;
        out.fill(|buf| router.sign_encrypt_update(SessionHandle(hSession), &part, buf))
    })
}

/// `C_DecryptVerifyUpdate`: continues a decryption and a verification of the recovered data.
///
/// Spec: [PKCS #11 v3.2], Dual-function cryptographic functions, C_DecryptVerifyUpdate.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pEncryptedPart` must be NULL or valid for reads of `ulEncryptedPartLen` bytes; `pulPartLen`
/// NULL or valid for reads and writes of a `CK_ULONG`; `pPart` NULL or valid for writes of
/// `*pulPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptVerifyUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptVerifyUpdate", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_DecryptVerifyUpdate contract.
        let (part, out) = unsafe { in_out(pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen) }?;
        out.fill(|buf| router.decrypt_verify_update(SessionHandle(hSession), &part, buf))
    })
}
