//! Object management functions: `C_CreateObject`, `C_CopyObject`, `C_DestroyObject`,
//! `C_GetObjectSize`, `C_GetAttributeValue`, `C_SetAttributeValue`, `C_FindObjectsInit`,
//! `C_FindObjects`, `C_FindObjectsFinal`.

use bridge::{BackendExt as _, Error, ObjectHandle, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::ptr::{out_value, to_ulong, to_usize, write_array};
use super::router;
use super::template::{attribute_requests, fill_answers, object_template_in, template_in};

/// The most handles one `C_FindObjects` call returns.
const MAX_FIND_BATCH: usize = 1 << 16;

/// `C_CreateObject`: creates an object from a template.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_CreateObject.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pTemplate` must be NULL or a valid template of `ulCount` attributes; `phObject` NULL or
/// valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CreateObject", || {
        let router = router()?;
        // SAFETY: `phObject` is NULL or writable per the C_CreateObject contract.
        let out = unsafe { out_value(phObject) }?;
        // SAFETY: `pTemplate` is a valid template of `ulCount` attributes per the contract.
        let template = unsafe { object_template_in(pTemplate, ulCount) }?;
        out.write(router.create_object(SessionHandle(hSession), &template)?.0);
        Ok(())
    })
}

/// `C_CopyObject`: copies an object, with the template's attributes changed.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_CopyObject.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pTemplate` must be NULL or a valid template of `ulCount` attributes; `phNewObject` NULL
/// or valid for writes of a `CK_OBJECT_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phNewObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CopyObject", || {
        let router = router()?;
        // SAFETY: `phNewObject` is NULL or writable per the C_CopyObject contract.
        let out = unsafe { out_value(phNewObject) }?;
        // SAFETY: `pTemplate` is a valid template of `ulCount` attributes per the contract.
        let template = unsafe { object_template_in(pTemplate, ulCount) }?;
        let copy = router.copy_object(SessionHandle(hSession), ObjectHandle(hObject), &template)?;
        out.write(copy.0);
        Ok(())
    })
}

/// `C_DestroyObject`: destroys an object.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_DestroyObject.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DestroyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_DestroyObject", || {
        router()?.destroy_object(SessionHandle(hSession), ObjectHandle(hObject))
    })
}

/// `C_GetObjectSize`: the size of an object in bytes.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_GetObjectSize.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulSize` must be NULL or valid for writes of a `CK_ULONG`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetObjectSize", || {
        let router = router()?;
        // SAFETY: `pulSize` is NULL or writable per the C_GetObjectSize contract.
        let out = unsafe { out_value(pulSize) }?;
        out.write(router.object_size(SessionHandle(hSession), ObjectHandle(hObject))?);
        Ok(())
    })
}

/// `C_GetAttributeValue`: reads attribute values into the caller's template. Every entry is
/// processed; sensitive, missing and too-long values are marked `CK_UNAVAILABLE_INFORMATION`
/// and the call returns, in this order of precedence, `CKR_TEMPLATE_INCONSISTENT` (malformed
/// attribute array), `CKR_ATTRIBUTE_SENSITIVE`, `CKR_ATTRIBUTE_TYPE_INVALID`,
/// `CKR_BUFFER_TOO_SMALL`.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_GetAttributeValue; Key objects,
/// Template Attributes.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pTemplate` must be NULL or valid for reads and writes of `ulCount` attributes, each
/// non-NULL `pValue` valid for writes of its `ulValueLen` bytes (for attribute arrays: an
/// array of `ulValueLen / sizeof(CK_ATTRIBUTE)` attributes satisfying the same contract).
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_GetAttributeValue", || {
        let router = router()?;
        // SAFETY: `pTemplate` holds `ulCount` attributes per the C_GetAttributeValue contract.
        let entries = unsafe { attribute_requests(pTemplate, ulCount) }?;
        let types: Vec<CK_ATTRIBUTE_TYPE> = entries.iter().map(|a| a.type_).collect();
        let answers =
            router.get_attribute_value(SessionHandle(hSession), ObjectHandle(hObject), &types)?;
        // Fills every entry, then returns the chosen error, if any.
        // SAFETY: `entries` was read from `pTemplate`, whose buffers the contract vouches for.
        unsafe { fill_answers(pTemplate, entries, &answers) }
    })
}

/// `C_SetAttributeValue`: changes attribute values, all or nothing.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_SetAttributeValue.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pTemplate` must be NULL or a valid template of `ulCount` attributes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_SetAttributeValue", || {
        let router = router()?;
        // SAFETY: `pTemplate` is a valid template of `ulCount` attributes per the contract.
        let template = unsafe { object_template_in(pTemplate, ulCount) }?;
        router.set_attribute_value(SessionHandle(hSession), ObjectHandle(hObject), &template)
    })
}

/// `C_FindObjectsInit`: starts a search for objects matching a template (an empty template
/// matches every object).
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_FindObjectsInit.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pTemplate` must be NULL or a valid template of `ulCount` attributes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_FindObjectsInit", || {
        let router = router()?;
        // SAFETY: `pTemplate` is a valid template of `ulCount` attributes per the contract.
        let template = unsafe { template_in(pTemplate, ulCount) }?;
        router.find_objects_init(SessionHandle(hSession), &template)
    })
}

/// `C_FindObjects`: continues a search, returning at most `ulMaxObjectCount` handles.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_FindObjects.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `phObject` must be NULL or valid for writes of `ulMaxObjectCount` handles;
/// `pulObjectCount` NULL or valid for writes of a `CK_ULONG`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: CK_OBJECT_HANDLE_PTR,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_FindObjects", || {
        let router = router()?;
        // SAFETY: `pulObjectCount` is NULL or writable per the C_FindObjects contract.
        let count = unsafe { out_value(pulObjectCount) }?;
        if phObject.is_null() && ulMaxObjectCount != 0 {
            return Err(Error::ArgumentsBad);
        }
        // "at most ulMaxObjectCount": a smaller batch is allowed, and keeps a huge count from
        // turning into a huge allocation in the backend.
        let max = to_usize(ulMaxObjectCount, Error::ArgumentsBad)?.min(MAX_FIND_BATCH);
        let found = router.find_objects(SessionHandle(hSession), max)?;
        if found.len() > max {
            return Err(Error::Internal(
                "backend returned more handles than asked for",
            ));
        }
        let handles: Vec<CK_OBJECT_HANDLE> = found.iter().map(|h| h.0).collect();
        // SAFETY: `found.len() <= max <= ulMaxObjectCount`, the room the caller declared; when it
        // is 0 nothing is written (and `phObject` may be NULL).
        unsafe { write_array(phObject, &handles) };
        count.write(to_ulong(handles.len())?);
        Ok(())
    })
}

/// `C_FindObjectsFinal`: ends a search.
///
/// Spec: [PKCS #11 v3.2], Object management functions, C_FindObjectsFinal.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_FindObjectsFinal", || {
        router()?.find_objects_final(SessionHandle(hSession))
    })
}
