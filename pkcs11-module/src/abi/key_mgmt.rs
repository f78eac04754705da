//! Key management functions: `C_GenerateKey`, `C_GenerateKeyPair`, `C_WrapKey`,
//! `C_UnwrapKey`, `C_DeriveKey`.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::mechanism_in;
use super::ptr::{OutBuf, in_bytes, out_value};
use super::router;
use super::template::object_template_in;

/// `C_GenerateKey`: generates a secret key or domain parameters.
///
/// Spec: [PKCS #11 v3.2], Key management functions, C_GenerateKey.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM`; `pTemplate` NULL or a valid template
/// of `ulCount` attributes; `phKey` NULL or valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_GenerateKey", || {
        let router = router()?;
        // SAFETY: `phKey` is NULL or writable per the C_GenerateKey contract.
        let out = unsafe { out_value(phKey) }?;
        // SAFETY: `pMechanism` is NULL or a valid mechanism per the contract.
        let mech = unsafe { mechanism_in(pMechanism) }?;
        // SAFETY: `pTemplate` is a valid template of `ulCount` attributes per the contract.
        let template = unsafe { object_template_in(pTemplate, ulCount) }?;
        out.write(
            router
                .generate_key(SessionHandle(hSession), &mech, &template)?
                .0,
        );
        Ok(())
    })
}

/// `C_GenerateKeyPair`: generates a public/private key pair.
///
/// Spec: [PKCS #11 v3.2], Key management functions, C_GenerateKeyPair.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM`; each template NULL or valid for its
/// count; `phPublicKey` and `phPrivateKey` NULL or valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKeyPair(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pPublicKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPublicKeyAttributeCount: CK_ULONG,
    pPrivateKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPrivateKeyAttributeCount: CK_ULONG,
    phPublicKey: CK_OBJECT_HANDLE_PTR,
    phPrivateKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_GenerateKeyPair", || {
        let router = router()?;
        // Both handles are required before a key pair is generated that could not be
        // delivered.
        // SAFETY: `phPublicKey` is NULL or writable per the C_GenerateKeyPair contract.
        let out_public = unsafe { out_value(phPublicKey) }?;
        // SAFETY: `phPrivateKey` is NULL or writable per the C_GenerateKeyPair contract.
        let out_private = unsafe { out_value(phPrivateKey) }?;
        // SAFETY: `pMechanism` is NULL or a valid mechanism per the contract.
        let mech = unsafe { mechanism_in(pMechanism) }?;
        // SAFETY: `pPublicKeyTemplate` is a valid template of its count per the contract.
        let public = unsafe { object_template_in(pPublicKeyTemplate, ulPublicKeyAttributeCount) }?;
        // SAFETY: `pPrivateKeyTemplate` is a valid template of its count per the contract.
        let private =
            unsafe { object_template_in(pPrivateKeyTemplate, ulPrivateKeyAttributeCount) }?;
        let (public, private) =
            router.generate_key_pair(SessionHandle(hSession), &mech, &public, &private)?;
        out_public.write(public.0);
        out_private.write(private.0);
        Ok(())
    })
}

/// `C_WrapKey`: wraps (encrypts) a key under another.
///
/// Spec: [PKCS #11 v3.2], Key management functions, C_WrapKey.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM`; `pulWrappedKeyLen` NULL or valid for
/// reads and writes of a `CK_ULONG`; `pWrappedKey` NULL or valid for writes of
/// `*pulWrappedKeyLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_WrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hWrappingKey: CK_OBJECT_HANDLE,
    hKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    pulWrappedKeyLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_WrapKey", || {
        let router = router()?;
        // SAFETY: `pMechanism` is NULL or a valid mechanism per the C_WrapKey contract.
        let mech = unsafe { mechanism_in(pMechanism) }?;
        // SAFETY: the output pointers follow the C_WrapKey contract.
        let out = unsafe { OutBuf::new(pWrappedKey, pulWrappedKeyLen) }?;
        out.fill(|buf| {
            router.wrap_key(
                SessionHandle(hSession),
                &mech,
                ObjectHandle(hWrappingKey),
                ObjectHandle(hKey),
                buf,
            )
        })
    })
}

/// `C_UnwrapKey`: unwraps (decrypts) a wrapped key, creating a key object.
///
/// Spec: [PKCS #11 v3.2], Key management functions, C_UnwrapKey.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM`; `pWrappedKey` NULL or valid for reads
/// of `ulWrappedKeyLen` bytes; `pTemplate` NULL or a valid template of `ulAttributeCount`
/// attributes; `phKey` NULL or valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_UnwrapKey", || {
        let router = router()?;
        // SAFETY: `phKey` is NULL or writable per the C_UnwrapKey contract.
        let out = unsafe { out_value(phKey) }?;
        // SAFETY: `pMechanism` is NULL or a valid mechanism per the contract.
        let mech = unsafe { mechanism_in(pMechanism) }?;
        // SAFETY: `pWrappedKey` is NULL or readable for `ulWrappedKeyLen` bytes.
        let wrapped = unsafe { in_bytes(pWrappedKey, ulWrappedKeyLen) }?;
        // SAFETY: `pTemplate` is a valid template of `ulAttributeCount` attributes.
        let template = unsafe { object_template_in(pTemplate, ulAttributeCount) }?;
        let key = router.unwrap_key(
            SessionHandle(hSession),
            &mech,
            ObjectHandle(hUnwrappingKey),
            wrapped,
            &template,
        )?;
        out.write(key.0);
        Ok(())
    })
}

/// `C_DeriveKey`: derives a key from a base key.
///
/// Spec: [PKCS #11 v3.2], Key management functions, C_DeriveKey.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM`; `pTemplate` NULL or a valid template
/// of `ulAttributeCount` attributes; `phKey` NULL or valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_DeriveKey", || {
        let router = router()?;
        // SAFETY: `phKey` is NULL or writable per the C_DeriveKey contract.
        let out = unsafe { out_value(phKey) }?;
        // SAFETY: `pMechanism` is NULL or a valid mechanism per the contract.
        let mech = unsafe { mechanism_in(pMechanism) }?;
        // SAFETY: `pTemplate` is a valid template of `ulAttributeCount` attributes.
        let template = unsafe { object_template_in(pTemplate, ulAttributeCount) }?;
        let key = router.derive_key(
            SessionHandle(hSession),
            &mech,
            ObjectHandle(hBaseKey),
            &template,
        )?;
        out.write(key.0);
        Ok(())
    })
}
