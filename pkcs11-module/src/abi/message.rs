//! The 3.0 message-based functions: encryption, decryption, signing and verification, each
//! with `*Init`, single-part, `*Begin`, `*Next` and `*Final`.
//!
//! Per-message parameters (`pParameter`) are decoded by size with [`MessageParams`]; after an
//! encrypting or signing call the (possibly generated) IV and the tag are written back into
//! the caller's `CK_GCM_MESSAGE_PARAMS` buffers.

use bridge::{BackendExt as _, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::mechanism::{MessageParams, TagFlow, init_or_cancel, message_init_or_cancel};
use super::ptr::{in_bytes, in_data, in_out};
use super::router;

/// `C_MessageEncryptInit`: prepares the session for message-based encryption with one mechanism and
/// key; a NULL mechanism ends the process.
///
/// Spec: [PKCS #11 v3.2], Message-based encryption functions, C_MessageEncryptInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageEncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageEncryptInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_MessageEncryptInit contract.
        unsafe {
            message_init_or_cancel(&router, session, pMechanism, CKF_MESSAGE_ENCRYPT, |mech| {
                router.message_encrypt_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_EncryptMessage`: encrypts one message in a single part.
///
/// Spec: [PKCS #11 v3.2], Message-based encryption functions, C_EncryptMessage.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pAssociatedData` and `pPlaintext` NULL or valid for reads of their lengths;
/// `pulCiphertextLen` NULL or valid for reads and writes of a `CK_ULONG`; `pCiphertext` NULL or
/// valid for writes of `*pulCiphertextLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    ulPlaintextLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    pulCiphertextLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_EncryptMessage", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_EncryptMessage contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Output) }?;
        {
            // SAFETY: the data and output pointers follow the C_EncryptMessage contract.
            let (data, out) =
                unsafe { in_out(pPlaintext, ulPlaintextLen, pCiphertext, pulCiphertextLen) }?;
            // SAFETY: `pAssociatedData` is NULL or readable for `ulAssociatedDataLen` bytes.
            let aad = out.unalias(unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?);
            out.fill(|buf| {
                router.encrypt_message(
                    SessionHandle(hSession),
                    &mut params.params,
                    &aad,
                    &data,
                    buf,
                )
            })?;
        }
        params.write_back()
    })
}

/// `C_EncryptMessageBegin`: begins a multi-part message encryption.
///
/// Spec: [PKCS #11 v3.2], Message-based encryption functions, C_EncryptMessageBegin.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pAssociatedData` NULL or valid for reads of `ulAssociatedDataLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    guard("C_EncryptMessageBegin", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_EncryptMessageBegin contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Output) }?;
        // SAFETY: `pAssociatedData` is NULL or readable for `ulAssociatedDataLen` bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        router.encrypt_message_begin(SessionHandle(hSession), &mut params.params, aad)?;
        params.write_back()
    })
}

/// `C_EncryptMessageNext`: continues a multi-part message encryption; `flags` is
/// `CKF_END_OF_MESSAGE` on the last part.
///
/// Spec: [PKCS #11 v3.2], Message-based encryption functions, C_EncryptMessageNext.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pPlaintextPart` NULL or valid for reads of `ulPlaintextPartLen` bytes;
/// `pulCiphertextPartLen` NULL or valid for reads and writes of a `CK_ULONG`;
/// `pCiphertextPart` NULL or valid for writes of `*pulCiphertextPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    ulPlaintextPartLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    pulCiphertextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_EncryptMessageNext", || {
        let router = router()?;
        let last = flags & CKF_END_OF_MESSAGE != 0;
        // SAFETY: `pParameter` follows the C_EncryptMessageNext contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Output) }?;
        {
            // SAFETY: the data and output pointers follow the C_EncryptMessageNext contract.
            let (data, out) = unsafe {
                in_out(
                    pPlaintextPart,
                    ulPlaintextPartLen,
                    pCiphertextPart,
                    pulCiphertextPartLen,
                )
            }?;
            out.fill(|buf| {
                router.encrypt_message_next(
                    SessionHandle(hSession),
                    &mut params.params,
                    &data,
                    buf,
                    last,
                )
            })?;
        }
        params.write_back()
    })
}

/// `C_MessageEncryptFinal`: ends the message-based encryption process.
///
/// Spec: [PKCS #11 v3.2], Message-based encryption functions, C_MessageEncryptFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageEncryptFinal", || {
        router()?.message_encrypt_final(SessionHandle(hSession))
    })
}

/// `C_MessageDecryptInit`: prepares the session for message-based decryption with one mechanism and
/// key; a NULL mechanism ends the process.
///
/// Spec: [PKCS #11 v3.2], Message-based decryption functions, C_MessageDecryptInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageDecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageDecryptInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_MessageDecryptInit contract.
        unsafe {
            message_init_or_cancel(&router, session, pMechanism, CKF_MESSAGE_DECRYPT, |mech| {
                router.message_decrypt_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_DecryptMessage`: decrypts one message in a single part.
///
/// Spec: [PKCS #11 v3.2], Message-based decryption functions, C_DecryptMessage.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pAssociatedData` and `pCiphertext` NULL or valid for reads of their lengths;
/// `pulPlaintextLen` NULL or valid for reads and writes of a `CK_ULONG`; `pPlaintext` NULL or
/// valid for writes of `*pulPlaintextLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    ulCiphertextLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    pulPlaintextLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_DecryptMessage", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_DecryptMessage contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Input) }?;
        // SAFETY: the data and output pointers follow the C_DecryptMessage contract.
        let (data, out) =
            unsafe { in_out(pCiphertext, ulCiphertextLen, pPlaintext, pulPlaintextLen) }?;
        // SAFETY: `pAssociatedData` is NULL or readable for `ulAssociatedDataLen` bytes.
        let aad = out.unalias(unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?);
        out.fill(|buf| {
            router.decrypt_message(
                SessionHandle(hSession),
                &mut params.params,
                &aad,
                &data,
                buf,
            )
        })
    })
}

/// `C_DecryptMessageBegin`: begins a multi-part message decryption.
///
/// Spec: [PKCS #11 v3.2], Message-based decryption functions, C_DecryptMessageBegin.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pAssociatedData` NULL or valid for reads of `ulAssociatedDataLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    guard("C_DecryptMessageBegin", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_DecryptMessageBegin contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Input) }?;
        // SAFETY: `pAssociatedData` is NULL or readable for `ulAssociatedDataLen` bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        router.decrypt_message_begin(SessionHandle(hSession), &mut params.params, aad)
    })
}

/// `C_DecryptMessageNext`: continues a multi-part message decryption; `flags` is
/// `CKF_END_OF_MESSAGE` on the last part.
///
/// Spec: [PKCS #11 v3.2], Message-based decryption functions, C_DecryptMessageNext.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (for
/// `CK_GCM_MESSAGE_PARAMS`, with `pIv` and `pTag` valid for reads and writes of their lengths);
/// `pCiphertextPart` NULL or valid for reads of `ulCiphertextPartLen` bytes;
/// `pulPlaintextPartLen` NULL or valid for reads and writes of a `CK_ULONG`;
/// `pPlaintextPart` NULL or valid for writes of `*pulPlaintextPartLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    ulCiphertextPartLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    pulPlaintextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_DecryptMessageNext", || {
        let router = router()?;
        let last = flags & CKF_END_OF_MESSAGE != 0;
        // SAFETY: `pParameter` follows the C_DecryptMessageNext contract.
        let mut params =
            unsafe { MessageParams::decode(pParameter, ulParameterLen, TagFlow::Input) }?;
        // SAFETY: the data and output pointers follow the C_DecryptMessageNext contract.
        let (data, out) = unsafe {
            in_out(
                pCiphertextPart,
                ulCiphertextPartLen,
                pPlaintextPart,
                pulPlaintextPartLen,
            )
        }?;
        out.fill(|buf| {
            router.decrypt_message_next(
                SessionHandle(hSession),
                &mut params.params,
                &data,
                buf,
                last,
            )
        })
    })
}

/// `C_MessageDecryptFinal`: ends the message-based decryption process.
///
/// Spec: [PKCS #11 v3.2], Message-based decryption functions, C_MessageDecryptFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageDecryptFinal", || {
        router()?.message_decrypt_final(SessionHandle(hSession))
    })
}

/// `C_MessageSignInit`: prepares the session for message-based signing with one mechanism and key;
/// a NULL mechanism ends the process.
///
/// Spec: [PKCS #11 v3.2], Message-based signing and MACing functions, C_MessageSignInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageSignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageSignInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_MessageSignInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_MESSAGE_SIGN, |mech| {
                router.message_sign_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_SignMessage`: signs one message in a single part.
///
/// Spec: [PKCS #11 v3.2], Message-based signing and MACing functions, C_SignMessage.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters);
/// `pData` NULL or valid for reads of `ulDataLen` bytes; `pulSignatureLen` NULL or valid
/// for reads and writes of a `CK_ULONG`; `pSignature` NULL or valid for writes of
/// `*pulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_SignMessage", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_SignMessage contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        {
            // SAFETY: the data and output pointers follow the C_SignMessage contract.
            let (data, out) = unsafe { in_out(pData, ulDataLen, pSignature, pulSignatureLen) }?;
            out.fill(|buf| {
                router.sign_message(SessionHandle(hSession), &mut params.params, &data, buf)
            })?;
        }
        params.write_back()
    })
}

/// `C_SignMessageBegin`: begins a multi-part message signature.
///
/// Spec: [PKCS #11 v3.2], Message-based signing and MACing functions, C_SignMessageBegin.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters).
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
) -> CK_RV {
    guard("C_SignMessageBegin", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_SignMessageBegin contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        router.sign_message_begin(SessionHandle(hSession), &mut params.params)?;
        params.write_back()
    })
}

/// `C_SignMessageNext`: continues a multi-part message signature. "The pulSignatureLen argument is
/// set to NULL if there is more data part to follow, or set to a non-NULL value (to receive the
/// signature length) if this is the last data part."
///
/// Spec: [PKCS #11 v3.2], Message-based signing and MACing functions, C_SignMessageNext.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters);
/// `pDataPart` NULL or valid for reads of `ulDataPartLen` bytes; `pulSignatureLen` NULL or
/// valid for reads and writes of a `CK_ULONG`; `pSignature` NULL or valid for writes of
/// `*pulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pDataPart: CK_BYTE_PTR,
    ulDataPartLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_SignMessageNext", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pParameter` follows the C_SignMessageNext contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        if pulSignatureLen.is_null() {
            // More data follows: nothing is produced, and `pSignature` is not used.
            // SAFETY: `pDataPart` is NULL or readable for `ulDataPartLen` bytes.
            let data = unsafe { in_data(pDataPart, ulDataPartLen) }?;
            router.sign_message_next(session, &mut params.params, data, false, None)?;
        } else {
            // SAFETY: the data and output pointers follow the C_SignMessageNext contract.
            let (data, out) =
                unsafe { in_out(pDataPart, ulDataPartLen, pSignature, pulSignatureLen) }?;
            out.fill(|buf| {
                router.sign_message_next(session, &mut params.params, &data, true, buf)
            })?;
        }
        params.write_back()
    })
}

/// `C_MessageSignFinal`: ends the message-based signing process.
///
/// Spec: [PKCS #11 v3.2], Message-based signing and MACing functions, C_MessageSignFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageSignFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageSignFinal", || {
        router()?.message_sign_final(SessionHandle(hSession))
    })
}

/// `C_MessageVerifyInit`: prepares the session for message-based verification with one mechanism
/// and key; a NULL mechanism ends the process.
///
/// Spec: [PKCS #11 v3.2], Message-based functions for verifying signatures and MACs,
/// C_MessageVerifyInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pMechanism` must be NULL or a valid `CK_MECHANISM` whose parameter matches its type.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageVerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_MessageVerifyInit", || {
        let router = router()?;
        let session = SessionHandle(hSession);
        // SAFETY: `pMechanism` follows the C_MessageVerifyInit contract.
        unsafe {
            init_or_cancel(&router, session, pMechanism, CKF_MESSAGE_VERIFY, |mech| {
                router.message_verify_init(session, mech, ObjectHandle(hKey))
            })
        }
    })
}

/// `C_VerifyMessage`: verifies the signature of one message in a single part.
///
/// Spec: [PKCS #11 v3.2], Message-based functions for verifying signatures and MACs,
/// C_VerifyMessage.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters);
/// `pData` and `pSignature` NULL or valid for reads of their lengths.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    guard("C_VerifyMessage", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_VerifyMessage contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        // SAFETY: `pData` is NULL or readable for `ulDataLen` bytes.
        let data = unsafe { in_data(pData, ulDataLen) }?;
        // SAFETY: `pSignature` is NULL or readable for `ulSignatureLen` bytes.
        let signature = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        router.verify_message(SessionHandle(hSession), &mut params.params, data, signature)
    })
}

/// `C_VerifyMessageBegin`: begins a multi-part message verification.
///
/// Spec: [PKCS #11 v3.2], Message-based functions for verifying signatures and MACs,
/// C_VerifyMessageBegin.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters).
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
) -> CK_RV {
    guard("C_VerifyMessageBegin", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_VerifyMessageBegin contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        router.verify_message_begin(SessionHandle(hSession), &mut params.params)
    })
}

/// `C_VerifyMessageNext`: continues a multi-part message verification. "The pSignature argument is
/// set to NULL if there is more data part to follow, or set to a non-NULL value (pointing to
/// the signature to verify) if this is the last data part."
///
/// Spec: [PKCS #11 v3.2], Message-based functions for verifying signatures and MACs,
/// C_VerifyMessageNext.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pParameter` must be NULL or valid for reads of `ulParameterLen` bytes (read as opaque
/// bytes: no signing mechanism has per-message parameters);
/// `pDataPart` NULL or valid for reads of `ulDataPartLen` bytes; `pSignature` NULL or valid
/// for reads of `ulSignatureLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pDataPart: CK_BYTE_PTR,
    ulDataPartLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    guard("C_VerifyMessageNext", || {
        let router = router()?;
        // SAFETY: `pParameter` follows the C_VerifyMessageNext contract.
        let mut params = unsafe { MessageParams::decode_opaque(pParameter, ulParameterLen) }?;
        // SAFETY: `pDataPart` is NULL or readable for `ulDataPartLen` bytes.
        let data = unsafe { in_data(pDataPart, ulDataPartLen) }?;
        let signature = if pSignature.is_null() {
            None
        } else {
            // SAFETY: `pSignature` is non-NULL and readable for `ulSignatureLen` bytes.
            Some(unsafe { in_bytes(pSignature, ulSignatureLen) }?)
        };
        router.verify_message_next(SessionHandle(hSession), &mut params.params, data, signature)
    })
}

/// `C_MessageVerifyFinal`: ends the message-based verification process.
///
/// Spec: [PKCS #11 v3.2], Message-based functions for verifying signatures and MACs,
/// C_MessageVerifyFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_MessageVerifyFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageVerifyFinal", || {
        router()?.message_verify_final(SessionHandle(hSession))
    })
}
