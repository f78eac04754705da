//! The C ABI: `GetKeyStorageInterface`, the function table and its 29 entry points. The only
//! module with `unsafe`: it turns the caller's pointers into owned values (checking NULLs and
//! lengths first), runs the body under [`guard`], and writes results back.
//!
//! Entry points are `extern "C"` (WINAPI: `__stdcall` on 32-bit Windows, the platform C
//! convention everywhere else) and are reachable only through the table, as `ncrypt.dll` calls
//! them.

#![allow(non_snake_case, unreachable_pub)]

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{INVALID_PARAMETER, KResult, Status};
use crate::provider::{self, Direction, Out, Padding};
use crate::types::*;

/// Set once a panic has been caught: state may be inconsistent, so every later call fails.
static POISONED: AtomicBool = AtomicBool::new(false);

/// Runs an entry point's body: refuses work after a caught panic, catches panics, maps the
/// result to a `SECURITY_STATUS`.
fn guard(name: &'static str, body: impl FnOnce() -> KResult<()>) -> SECURITY_STATUS {
    if POISONED.load(Ordering::Acquire) {
        return NTE_INTERNAL_ERROR;
    }
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ERROR_SUCCESS,
        Ok(Err(Status(s))) => {
            log::debug!("ferrohsm-ksp {name}: {:#010x}", s.cast_unsigned());
            s
        }
        Err(_) => {
            POISONED.store(true, Ordering::Release);
            log::error!("ferrohsm-ksp {name}: panic caught; provider disabled");
            NTE_INTERNAL_ERROR
        }
    }
}

/// The longest string the provider reads, in UTF-16 units (names, properties, blob types).
const MAX_STRING: usize = 4096;

/// Reads a NUL-terminated UTF-16 string; NULL is `NTE_INVALID_PARAMETER`.
///
/// # Safety
///
/// If `p` is non-null it must point to a NUL-terminated UTF-16 string (or at least
/// `MAX_STRING` readable units).
unsafe fn wstr(p: LPCWSTR) -> KResult<String> {
    if p.is_null() {
        return Err(INVALID_PARAMETER);
    }
    let mut units = Vec::new();
    for i in 0..MAX_STRING {
        // SAFETY: units before the NUL are in the string's allocation (we stop at the NUL).
        let at = unsafe { p.add(i) };
        // SAFETY: the string is readable up to and including its NUL (the caller's contract).
        let u = unsafe { at.read_unaligned() };
        if u == 0 {
            return String::from_utf16(&units).map_err(|_| INVALID_PARAMETER);
        }
        units.push(u);
    }
    Err(INVALID_PARAMETER)
}

/// [`wstr`], with NULL meaning `None`.
///
/// # Safety
///
/// As [`wstr`].
unsafe fn opt_wstr(p: LPCWSTR) -> KResult<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null; the caller's contract.
    unsafe { wstr(p) }.map(Some)
}

/// Borrows `len` input bytes.
///
/// # Safety
///
/// If `p` is non-null it must be valid for reads of `len` bytes for `'a`.
unsafe fn in_bytes<'a>(p: *const u8, len: DWORD) -> KResult<&'a [u8]> {
    let len = usize::try_from(len).map_err(|_| INVALID_PARAMETER)?;
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(INVALID_PARAMETER);
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Writes `v` to the caller's `p`; NULL is `NTE_INVALID_PARAMETER`.
///
/// # Safety
///
/// If `p` is non-null it must be valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) -> KResult<()> {
    if p.is_null() {
        return Err(INVALID_PARAMETER);
    }
    // SAFETY: non-null and writable (the caller's contract); unaligned-safe.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Reads a `T` from the caller's `p`, if non-null.
///
/// # Safety
///
/// If `p` is non-null it must be valid for a read of `T`.
unsafe fn get<T>(p: *const T) -> Option<T> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and readable (the caller's contract).
    Some(unsafe { p.read_unaligned() })
}

/// The CNG output convention: a NULL buffer asks for the size (`ERROR_SUCCESS`); a short one
/// gets `NTE_BUFFER_TOO_SMALL`; both write the size to `pcbResult`.
///
/// # Safety
///
/// `pcbResult` must be writable if non-null; `pbOutput`, if non-null, writable for `cbOutput`.
unsafe fn output(
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    produce: impl FnOnce(bool) -> KResult<Out>,
) -> KResult<()> {
    if pcbResult.is_null() {
        return Err(INVALID_PARAMETER);
    }
    let size = |n: usize| DWORD::try_from(n).map_err(|_| Status(NTE_INTERNAL_ERROR));
    match produce(pbOutput.is_null())? {
        Out::Size(n) => {
            // SAFETY: checked non-null above; writable by the caller's contract.
            unsafe { put(pcbResult, size(n)?) }
        }
        Out::Data(d) => {
            // SAFETY: as above.
            unsafe { put(pcbResult, size(d.len())?) }?;
            if pbOutput.is_null() {
                return Ok(());
            }
            let cap = usize::try_from(cbOutput).map_err(|_| INVALID_PARAMETER)?;
            if d.len() > cap {
                return Err(Status(NTE_BUFFER_TOO_SMALL));
            }
            // SAFETY: `pbOutput` is writable for `cbOutput >= d.len()` bytes and cannot overlap
            // our freshly allocated `d`.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), pbOutput, d.len()) };
            Ok(())
        }
    }
}

/// Bytes for a property: the same convention as [`output`].
///
/// # Safety
///
/// As [`output`].
unsafe fn output_bytes(
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    produce: impl FnOnce() -> KResult<Vec<u8>>,
) -> KResult<()> {
    // SAFETY: forwarded contract.
    unsafe {
        output(pbOutput, cbOutput, pcbResult, |_| {
            produce().map(|v| Out::Data(zeroize::Zeroizing::new(v)))
        })
    }
}

/// Decodes an `NCryptBufferDesc` into owned `(type, bytes)` pairs.
///
/// # Safety
///
/// If non-null, `p` must point to a valid `NCryptBufferDesc` whose buffers are readable.
unsafe fn buffers(p: *const NCryptBufferDesc) -> KResult<Vec<(u32, Vec<u8>)>> {
    // SAFETY: the caller's contract.
    let Some(desc) = (unsafe { get(p) }) else {
        return Ok(Vec::new());
    };
    if desc.ulVersion != NCRYPTBUFFER_VERSION || desc.cBuffers > 64 {
        return Err(INVALID_PARAMETER);
    }
    let mut out = Vec::new();
    for i in 0..usize::try_from(desc.cBuffers).map_err(|_| INVALID_PARAMETER)? {
        if desc.pBuffers.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: `pBuffers` holds `cBuffers` entries (the caller's contract); `i` is in range.
        let at = unsafe { desc.pBuffers.add(i) };
        // SAFETY: as above: a readable entry.
        let b = unsafe { at.read_unaligned() };
        // SAFETY: each buffer is readable for its `cbBuffer` bytes.
        let bytes = unsafe { in_bytes(b.pvBuffer.cast::<u8>().cast_const(), b.cbBuffer) }?;
        out.push((b.BufferType, bytes.to_vec()));
    }
    Ok(out)
}

/// Decodes a padding request from `dwFlags` and `pPaddingInfo`.
///
/// # Safety
///
/// If non-null, `info` must point to the padding structure `flags` names.
unsafe fn padding(info: *const c_void, flags: DWORD) -> KResult<Padding> {
    let pad = flags & (BCRYPT_PAD_NONE | BCRYPT_PAD_PKCS1 | BCRYPT_PAD_OAEP | BCRYPT_PAD_PSS);
    match pad {
        0 | BCRYPT_PAD_NONE => Ok(Padding::None),
        BCRYPT_PAD_PKCS1 => {
            // SAFETY: with BCRYPT_PAD_PKCS1, `info` is a BCRYPT_PKCS1_PADDING_INFO or NULL.
            let i = unsafe { get(info.cast::<BCRYPT_PKCS1_PADDING_INFO>()) };
            match i {
                None => Ok(Padding::Pkcs1(None)),
                // SAFETY: `pszAlgId` is NULL or a string (the structure's contract).
                Some(i) => Ok(Padding::Pkcs1(unsafe { opt_wstr(i.pszAlgId) }?)),
            }
        }
        BCRYPT_PAD_PSS => {
            // SAFETY: with BCRYPT_PAD_PSS, `info` is a BCRYPT_PSS_PADDING_INFO.
            let i =
                unsafe { get(info.cast::<BCRYPT_PSS_PADDING_INFO>()) }.ok_or(INVALID_PARAMETER)?;
            // SAFETY: `pszAlgId` is a string.
            Ok(Padding::Pss(unsafe { wstr(i.pszAlgId) }?, i.cbSalt))
        }
        BCRYPT_PAD_OAEP => {
            // SAFETY: with BCRYPT_PAD_OAEP, `info` is a BCRYPT_OAEP_PADDING_INFO.
            let i =
                unsafe { get(info.cast::<BCRYPT_OAEP_PADDING_INFO>()) }.ok_or(INVALID_PARAMETER)?;
            // SAFETY: `pszAlgId` is a string.
            let alg = unsafe { wstr(i.pszAlgId) }?;
            // SAFETY: `pbLabel` is readable for `cbLabel` bytes.
            let label = unsafe { in_bytes(i.pbLabel.cast_const(), i.cbLabel) }?.to_vec();
            Ok(Padding::Oaep(alg, label))
        }
        _ => Err(Status(NTE_BAD_FLAGS)),
    }
}

/// The padding flags, which `padding` consumed, removed from `flags`.
fn without_padding(flags: DWORD) -> DWORD {
    flags & !(BCRYPT_PAD_NONE | BCRYPT_PAD_PKCS1 | BCRYPT_PAD_OAEP | BCRYPT_PAD_PSS)
}

// ---- the table ---------------------------------------------------------------------------

static TABLE: NCRYPT_KEY_STORAGE_FUNCTION_TABLE = NCRYPT_KEY_STORAGE_FUNCTION_TABLE {
    Version: NCRYPT_KEY_STORAGE_INTERFACE_VERSION_3,
    OpenProvider: Some(OpenProvider),
    OpenKey: Some(OpenKey),
    CreatePersistedKey: Some(CreatePersistedKey),
    GetProviderProperty: Some(GetProviderProperty),
    GetKeyProperty: Some(GetKeyProperty),
    SetProviderProperty: Some(SetProviderProperty),
    SetKeyProperty: Some(SetKeyProperty),
    FinalizeKey: Some(FinalizeKey),
    DeleteKey: Some(DeleteKey),
    FreeProvider: Some(FreeProvider),
    FreeKey: Some(FreeKey),
    FreeBuffer: Some(FreeBuffer),
    Encrypt: Some(Encrypt),
    Decrypt: Some(Decrypt),
    IsAlgSupported: Some(IsAlgSupported),
    EnumAlgorithms: Some(EnumAlgorithms),
    EnumKeys: Some(EnumKeys),
    ImportKey: Some(ImportKey),
    ExportKey: Some(ExportKey),
    SignHash: Some(SignHash),
    VerifySignature: Some(VerifySignature),
    PromptUser: Some(PromptUser),
    NotifyChangeKey: Some(NotifyChangeKey),
    SecretAgreement: Some(SecretAgreement),
    DeriveKey: Some(DeriveKey),
    FreeSecret: Some(FreeSecret),
    KeyDerivation: Some(KeyDerivation),
    CreateClaim: Some(CreateClaim),
    VerifyClaim: Some(VerifyClaim),
};

/// `GetKeyStorageInterface`: the provider's function table (interface version 3.0).
///
/// # Safety
///
/// `pszProviderName` is NULL or a NUL-terminated UTF-16 string; `ppFunctionTable` is NULL or
/// writable. The table is static and must not be written through.
// SAFETY: the one symbol ncrypt.dll looks up in a key storage provider; nothing else in the
// library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetKeyStorageInterface(
    pszProviderName: LPCWSTR,
    ppFunctionTable: *mut *mut NCRYPT_KEY_STORAGE_FUNCTION_TABLE,
    dwFlags: DWORD,
) -> NTSTATUS {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if ppFunctionTable.is_null() {
            return STATUS_INVALID_PARAMETER;
        }
        if dwFlags != 0 {
            return STATUS_NOT_SUPPORTED;
        }
        // SAFETY: NULL or a string (the contract above).
        if unsafe { opt_wstr(pszProviderName) }.is_err() {
            return STATUS_INVALID_PARAMETER;
        }
        let table = std::ptr::from_ref(&TABLE).cast_mut();
        // SAFETY: non-null and writable (the contract above).
        match unsafe { put(ppFunctionTable, table) } {
            Ok(()) => STATUS_SUCCESS,
            Err(_) => STATUS_INVALID_PARAMETER,
        }
    }));
    r.unwrap_or(STATUS_INVALID_PARAMETER)
}

/// `OpenProvider`: a session on the configured token, logged in with `FERROHSM_PIN`.
///
/// # Safety
///
/// Pointer arguments as `NCryptOpenStorageProvider` documents.
unsafe extern "C" fn OpenProvider(
    phProvider: *mut NCRYPT_PROV_HANDLE,
    pszProviderName: LPCWSTR,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("OpenProvider", || {
        if phProvider.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: NULL or a string.
        let name = unsafe { opt_wstr(pszProviderName) }?;
        let h = provider::open_provider(name.as_deref(), dwFlags)?;
        // SAFETY: checked non-null; writable by contract.
        unsafe { put(phProvider, h) }
    })
}

/// `OpenKey`.
///
/// # Safety
///
/// Pointer arguments as `NCryptOpenKey` documents.
unsafe extern "C" fn OpenKey(
    hProvider: NCRYPT_PROV_HANDLE,
    phKey: *mut NCRYPT_KEY_HANDLE,
    pszKeyName: LPCWSTR,
    _dwLegacyKeySpec: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("OpenKey", || {
        if phKey.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: a string by contract.
        let name = unsafe { wstr(pszKeyName) }?;
        let h = provider::open_key(hProvider, &name, dwFlags)?;
        // SAFETY: checked non-null.
        unsafe { put(phKey, h) }
    })
}

/// `CreatePersistedKey`.
///
/// # Safety
///
/// Pointer arguments as `NCryptCreatePersistedKey` documents.
unsafe extern "C" fn CreatePersistedKey(
    hProvider: NCRYPT_PROV_HANDLE,
    phKey: *mut NCRYPT_KEY_HANDLE,
    pszAlgId: LPCWSTR,
    pszKeyName: LPCWSTR,
    _dwLegacyKeySpec: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("CreatePersistedKey", || {
        if phKey.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: a string by contract.
        let alg = unsafe { wstr(pszAlgId) }?;
        // SAFETY: NULL (an ephemeral key) or a string.
        let name = unsafe { opt_wstr(pszKeyName) }?;
        let h = provider::create_persisted_key(hProvider, &alg, name.as_deref(), dwFlags)?;
        // SAFETY: checked non-null.
        unsafe { put(phKey, h) }
    })
}

/// `GetProviderProperty`.
///
/// # Safety
///
/// Pointer arguments as `NCryptGetProperty` documents.
unsafe extern "C" fn GetProviderProperty(
    hProvider: NCRYPT_PROV_HANDLE,
    pszProperty: LPCWSTR,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("GetProviderProperty", || {
        // SAFETY: a string by contract.
        let prop = unsafe { wstr(pszProperty) }?;
        // SAFETY: the output contract.
        unsafe {
            output_bytes(pbOutput, cbOutput, pcbResult, || {
                provider::get_provider_property(hProvider, &prop, dwFlags)
            })
        }
    })
}

/// `GetKeyProperty`.
///
/// # Safety
///
/// Pointer arguments as `NCryptGetProperty` documents.
unsafe extern "C" fn GetKeyProperty(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pszProperty: LPCWSTR,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("GetKeyProperty", || {
        // SAFETY: a string by contract.
        let prop = unsafe { wstr(pszProperty) }?;
        // SAFETY: the output contract.
        unsafe {
            output_bytes(pbOutput, cbOutput, pcbResult, || {
                provider::get_key_property(hProvider, hKey, &prop, dwFlags)
            })
        }
    })
}

/// `SetProviderProperty`.
///
/// # Safety
///
/// Pointer arguments as `NCryptSetProperty` documents.
unsafe extern "C" fn SetProviderProperty(
    hProvider: NCRYPT_PROV_HANDLE,
    pszProperty: LPCWSTR,
    pbInput: *mut u8,
    cbInput: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("SetProviderProperty", || {
        // SAFETY: a string by contract.
        let prop = unsafe { wstr(pszProperty) }?;
        // SAFETY: readable for `cbInput` bytes.
        let value = unsafe { in_bytes(pbInput, cbInput) }?;
        provider::set_provider_property(hProvider, &prop, value, dwFlags)
    })
}

/// `SetKeyProperty`.
///
/// # Safety
///
/// Pointer arguments as `NCryptSetProperty` documents.
unsafe extern "C" fn SetKeyProperty(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pszProperty: LPCWSTR,
    pbInput: *mut u8,
    cbInput: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("SetKeyProperty", || {
        // SAFETY: a string by contract.
        let prop = unsafe { wstr(pszProperty) }?;
        // SAFETY: readable for `cbInput` bytes.
        let value = unsafe { in_bytes(pbInput, cbInput) }?;
        provider::set_key_property(hProvider, hKey, &prop, value, dwFlags)
    })
}

/// `FinalizeKey`.
///
/// # Safety
///
/// No pointer arguments; `unsafe` for the table's type.
unsafe extern "C" fn FinalizeKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("FinalizeKey", || {
        provider::finalize_key(hProvider, hKey, dwFlags)
    })
}

/// `DeleteKey`.
///
/// # Safety
///
/// No pointer arguments; `unsafe` for the table's type.
unsafe extern "C" fn DeleteKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("DeleteKey", || {
        provider::delete_key(hProvider, hKey, dwFlags)
    })
}

/// `FreeProvider`.
///
/// # Safety
///
/// No pointer arguments; `unsafe` for the table's type.
unsafe extern "C" fn FreeProvider(hProvider: NCRYPT_PROV_HANDLE) -> SECURITY_STATUS {
    guard("FreeProvider", || provider::free_provider(hProvider))
}

/// `FreeKey`.
///
/// # Safety
///
/// No pointer arguments; `unsafe` for the table's type.
unsafe extern "C" fn FreeKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
) -> SECURITY_STATUS {
    guard("FreeKey", || provider::free_key(hProvider, hKey))
}

/// `FreeBuffer`: only a buffer this provider handed out, once.
///
/// # Safety
///
/// `pvInput` is only compared with the addresses of our own buffers, never dereferenced.
unsafe extern "C" fn FreeBuffer(pvInput: *mut c_void) -> SECURITY_STATUS {
    guard("FreeBuffer", || {
        if pvInput.is_null() {
            return Err(INVALID_PARAMETER);
        }
        provider::free_buffer(pvInput.addr())
    })
}

/// `Encrypt`.
///
/// # Safety
///
/// Pointer arguments as `NCryptEncrypt` documents.
unsafe extern "C" fn Encrypt(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pbInput: *mut u8,
    cbInput: DWORD,
    pPaddingInfo: *mut c_void,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    let io = CryptIo {
        pbInput,
        cbInput,
        pPaddingInfo,
        pbOutput,
        cbOutput,
        pcbResult,
        dwFlags,
    };
    // SAFETY: forwarded from the caller.
    unsafe { crypt("Encrypt", Direction::Encrypt, hProvider, hKey, io) }
}

/// `Decrypt`.
///
/// # Safety
///
/// Pointer arguments as `NCryptDecrypt` documents.
unsafe extern "C" fn Decrypt(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pbInput: *mut u8,
    cbInput: DWORD,
    pPaddingInfo: *mut c_void,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    let io = CryptIo {
        pbInput,
        cbInput,
        pPaddingInfo,
        pbOutput,
        cbOutput,
        pcbResult,
        dwFlags,
    };
    // SAFETY: forwarded from the caller.
    unsafe { crypt("Decrypt", Direction::Decrypt, hProvider, hKey, io) }
}

/// The buffers of an `Encrypt` or `Decrypt` call, as the caller passed them.
struct CryptIo {
    pbInput: *mut u8,
    cbInput: DWORD,
    pPaddingInfo: *mut c_void,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
}

/// The body `Encrypt` and `Decrypt` share.
///
/// # Safety
///
/// The pointers in `io` as `NCryptEncrypt`/`NCryptDecrypt` document.
unsafe fn crypt(
    name: &'static str,
    dir: Direction,
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    io: CryptIo,
) -> SECURITY_STATUS {
    guard(name, || {
        // SAFETY: readable for `cbInput` bytes.
        let input = unsafe { in_bytes(io.pbInput, io.cbInput) }?;
        // SAFETY: the padding structure `dwFlags` names.
        let pad = unsafe { padding(io.pPaddingInfo, io.dwFlags) }?;
        let flags = without_padding(io.dwFlags);
        // SAFETY: the output contract.
        unsafe {
            output(io.pbOutput, io.cbOutput, io.pcbResult, |probe| {
                provider::crypt(dir, hProvider, hKey, pad, input, probe, flags)
            })
        }
    })
}

/// `IsAlgSupported`.
///
/// # Safety
///
/// `pszAlgId` is a NUL-terminated UTF-16 string.
unsafe extern "C" fn IsAlgSupported(
    hProvider: NCRYPT_PROV_HANDLE,
    pszAlgId: LPCWSTR,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("IsAlgSupported", || {
        // SAFETY: a string by contract.
        let alg = unsafe { wstr(pszAlgId) }?;
        provider::is_alg_supported(hProvider, &alg, dwFlags)
    })
}

/// `EnumAlgorithms`: the list is one buffer, freed with `FreeBuffer`.
///
/// # Safety
///
/// Pointer arguments as `NCryptEnumAlgorithms` documents.
unsafe extern "C" fn EnumAlgorithms(
    hProvider: NCRYPT_PROV_HANDLE,
    dwAlgClass: DWORD,
    pdwAlgCount: *mut DWORD,
    ppAlgList: *mut *mut NCryptAlgorithmName,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("EnumAlgorithms", || {
        if pdwAlgCount.is_null() || ppAlgList.is_null() {
            return Err(INVALID_PARAMETER);
        }
        let (count, list) = provider::enum_algorithms(hProvider, dwAlgClass, dwFlags)?;
        // SAFETY: checked non-null; writable by contract.
        unsafe { put(pdwAlgCount, count) }?;
        // SAFETY: as above.
        unsafe { put(ppAlgList, list) }
    })
}

/// `EnumKeys`: one key per call; `*ppEnumState` is our cursor, freed with `FreeBuffer`.
///
/// # Safety
///
/// Pointer arguments as `NCryptEnumKeys` documents.
unsafe extern "C" fn EnumKeys(
    hProvider: NCRYPT_PROV_HANDLE,
    _pszScope: LPCWSTR,
    ppKeyName: *mut *mut NCryptKeyName,
    ppEnumState: *mut *mut c_void,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("EnumKeys", || {
        if ppKeyName.is_null() || ppEnumState.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: checked non-null; readable by contract.
        let state = unsafe { get(ppEnumState.cast_const()) }.filter(|s| !s.is_null());
        let (name, new_state) = provider::enum_keys(hProvider, state.map(|s| s.addr()), dwFlags)?;
        if let Some(s) = new_state {
            // SAFETY: checked non-null; writable.
            unsafe { put(ppEnumState, s) }?;
        }
        // SAFETY: checked non-null; writable.
        unsafe { put(ppKeyName, name) }
    })
}

/// `ImportKey`.
///
/// # Safety
///
/// Pointer arguments as `NCryptImportKey` documents.
unsafe extern "C" fn ImportKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hImportKey: NCRYPT_KEY_HANDLE,
    pszBlobType: LPCWSTR,
    pParameterList: *mut NCryptBufferDesc,
    phKey: *mut NCRYPT_KEY_HANDLE,
    pbData: *mut u8,
    cbData: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("ImportKey", || {
        if phKey.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: a string by contract.
        let ty = unsafe { wstr(pszBlobType) }?;
        // SAFETY: NULL or a valid descriptor.
        let params = unsafe { buffers(pParameterList) }?;
        // SAFETY: readable for `cbData` bytes.
        let data = unsafe { in_bytes(pbData, cbData) }?;
        let import = (hImportKey != 0).then_some(hImportKey);
        let h = provider::import_key(hProvider, import, &ty, &params, data, dwFlags)?;
        // SAFETY: checked non-null.
        unsafe { put(phKey, h) }
    })
}

/// `ExportKey`.
///
/// # Safety
///
/// Pointer arguments as `NCryptExportKey` documents.
unsafe extern "C" fn ExportKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    hExportKey: NCRYPT_KEY_HANDLE,
    pszBlobType: LPCWSTR,
    pParameterList: *mut NCryptBufferDesc,
    pbOutput: *mut u8,
    cbOutput: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("ExportKey", || {
        // SAFETY: a string by contract.
        let ty = unsafe { wstr(pszBlobType) }?;
        // SAFETY: NULL or a valid descriptor (checked, then unused).
        let _params = unsafe { buffers(pParameterList) }?;
        let export = (hExportKey != 0).then_some(hExportKey);
        // SAFETY: the output contract.
        unsafe {
            output(pbOutput, cbOutput, pcbResult, |_| {
                provider::export_key(hProvider, hKey, export, &ty, dwFlags).map(Out::Data)
            })
        }
    })
}

/// `SignHash`.
///
/// # Safety
///
/// Pointer arguments as `NCryptSignHash` documents.
unsafe extern "C" fn SignHash(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pPaddingInfo: *mut c_void,
    pbHashValue: *mut u8,
    cbHashValue: DWORD,
    pbSignature: *mut u8,
    cbSignature: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("SignHash", || {
        // SAFETY: readable for `cbHashValue` bytes.
        let hash = unsafe { in_bytes(pbHashValue, cbHashValue) }?;
        // SAFETY: the padding structure `dwFlags` names.
        let pad = unsafe { padding(pPaddingInfo, dwFlags) }?;
        let flags = without_padding(dwFlags);
        // SAFETY: the output contract.
        unsafe {
            output(pbSignature, cbSignature, pcbResult, |probe| {
                provider::sign_hash(hProvider, hKey, pad, hash, probe, flags)
            })
        }
    })
}

/// `VerifySignature`.
///
/// # Safety
///
/// Pointer arguments as `NCryptVerifySignature` documents.
unsafe extern "C" fn VerifySignature(
    hProvider: NCRYPT_PROV_HANDLE,
    hKey: NCRYPT_KEY_HANDLE,
    pPaddingInfo: *mut c_void,
    pbHashValue: *mut u8,
    cbHashValue: DWORD,
    pbSignature: *mut u8,
    cbSignature: DWORD,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("VerifySignature", || {
        // SAFETY: readable for `cbHashValue` bytes.
        let hash = unsafe { in_bytes(pbHashValue, cbHashValue) }?;
        // SAFETY: readable for `cbSignature` bytes.
        let sig = unsafe { in_bytes(pbSignature, cbSignature) }?;
        // SAFETY: the padding structure `dwFlags` names.
        let pad = unsafe { padding(pPaddingInfo, dwFlags) }?;
        provider::verify_signature(hProvider, hKey, pad, hash, sig, without_padding(dwFlags))
    })
}

/// `PromptUser`: not supported (the provider never prompts).
///
/// # Safety
///
/// No pointer is dereferenced.
unsafe extern "C" fn PromptUser(
    hProvider: NCRYPT_PROV_HANDLE,
    _hKey: NCRYPT_KEY_HANDLE,
    _pszOperation: LPCWSTR,
    _dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("PromptUser", || provider::unsupported(hProvider))
}

/// `NotifyChangeKey`: not supported.
///
/// # Safety
///
/// No pointer is dereferenced.
unsafe extern "C" fn NotifyChangeKey(
    hProvider: NCRYPT_PROV_HANDLE,
    _phEvent: *mut HANDLE,
    _dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("NotifyChangeKey", || provider::unsupported(hProvider))
}

/// `SecretAgreement` (ECDH).
///
/// # Safety
///
/// Pointer arguments as `NCryptSecretAgreement` documents.
unsafe extern "C" fn SecretAgreement(
    hProvider: NCRYPT_PROV_HANDLE,
    hPrivKey: NCRYPT_KEY_HANDLE,
    hPubKey: NCRYPT_KEY_HANDLE,
    phAgreedSecret: *mut NCRYPT_SECRET_HANDLE,
    dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("SecretAgreement", || {
        if phAgreedSecret.is_null() {
            return Err(INVALID_PARAMETER);
        }
        let h = provider::secret_agreement(hProvider, hPrivKey, hPubKey, dwFlags)?;
        // SAFETY: checked non-null.
        unsafe { put(phAgreedSecret, h) }
    })
}

/// `DeriveKey`.
///
/// # Safety
///
/// Pointer arguments as `NCryptDeriveKey` documents.
unsafe extern "C" fn DeriveKey(
    hProvider: NCRYPT_PROV_HANDLE,
    hSharedSecret: NCRYPT_SECRET_HANDLE,
    pwszKDF: LPCWSTR,
    pParameterList: *mut NCryptBufferDesc,
    pbDerivedKey: *mut u8,
    cbDerivedKey: DWORD,
    pcbResult: *mut DWORD,
    dwFlags: ULONG,
) -> SECURITY_STATUS {
    guard("DeriveKey", || {
        // SAFETY: a string by contract.
        let kdf = unsafe { wstr(pwszKDF) }?;
        // SAFETY: NULL or a valid descriptor.
        let params = unsafe { buffers(pParameterList) }?;
        // SAFETY: the output contract.
        unsafe {
            output(pbDerivedKey, cbDerivedKey, pcbResult, |probe| {
                provider::derive_key(hProvider, hSharedSecret, &kdf, &params, probe, dwFlags)
            })
        }
    })
}

/// `FreeSecret`.
///
/// # Safety
///
/// No pointer arguments; `unsafe` for the table's type.
unsafe extern "C" fn FreeSecret(
    hProvider: NCRYPT_PROV_HANDLE,
    hSharedSecret: NCRYPT_SECRET_HANDLE,
) -> SECURITY_STATUS {
    guard("FreeSecret", || {
        provider::free_secret(hProvider, hSharedSecret)
    })
}

/// `KeyDerivation`: not supported.
///
/// # Safety
///
/// No pointer is dereferenced.
unsafe extern "C" fn KeyDerivation(
    hProvider: NCRYPT_PROV_HANDLE,
    _hKey: NCRYPT_KEY_HANDLE,
    _pParameterList: *mut NCryptBufferDesc,
    _pbDerivedKey: *mut u8,
    _cbDerivedKey: DWORD,
    _pcbResult: *mut DWORD,
    _dwFlags: ULONG,
) -> SECURITY_STATUS {
    guard("KeyDerivation", || provider::unsupported(hProvider))
}

/// `CreateClaim`: not supported.
///
/// # Safety
///
/// No pointer is dereferenced.
unsafe extern "C" fn CreateClaim(
    hProv: NCRYPT_PROV_HANDLE,
    _hSubjectKey: NCRYPT_KEY_HANDLE,
    _hAuthorityKey: NCRYPT_KEY_HANDLE,
    _dwClaimType: DWORD,
    _pParameterList: *mut NCryptBufferDesc,
    _pbClaimBlob: *mut u8,
    _cbClaimBlob: DWORD,
    _pcbResult: *mut DWORD,
    _dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("CreateClaim", || provider::unsupported(hProv))
}

/// `VerifyClaim`: not supported.
///
/// # Safety
///
/// No pointer is dereferenced.
unsafe extern "C" fn VerifyClaim(
    hProv: NCRYPT_PROV_HANDLE,
    _hSubjectKey: NCRYPT_KEY_HANDLE,
    _hAuthorityKey: NCRYPT_KEY_HANDLE,
    _dwClaimType: DWORD,
    _pParameterList: *mut NCryptBufferDesc,
    _pbClaimBlob: *mut u8,
    _cbClaimBlob: DWORD,
    _pOutput: *mut NCryptBufferDesc,
    _dwFlags: DWORD,
) -> SECURITY_STATUS {
    guard("VerifyClaim", || provider::unsupported(hProv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_version_3_and_complete() {
        let mut t: *mut NCRYPT_KEY_STORAGE_FUNCTION_TABLE = std::ptr::null_mut();
        // SAFETY: a valid out pointer and no name.
        let s = unsafe { GetKeyStorageInterface(std::ptr::null(), &raw mut t, 0) };
        assert_eq!(s, STATUS_SUCCESS);
        // SAFETY: the static table.
        let t = unsafe { &*t };
        assert_eq!(t.Version, NCRYPT_KEY_STORAGE_INTERFACE_VERSION_3);
        assert!(t.OpenProvider.is_some() && t.VerifyClaim.is_some());
        // SAFETY: NULL out pointer is refused before any write.
        let s = unsafe { GetKeyStorageInterface(std::ptr::null(), std::ptr::null_mut(), 0) };
        assert_eq!(s, STATUS_INVALID_PARAMETER);
    }

    #[test]
    fn a_caught_panic_is_internal_error_and_fails_closed() {
        assert_eq!(guard("t", || Ok(())), ERROR_SUCCESS);
        assert_eq!(guard("t", || panic!("boom")), NTE_INTERNAL_ERROR);
        // Poisoned: nothing runs any more (nextest gives each test its own process).
        assert_eq!(guard("t", || Ok(())), NTE_INTERNAL_ERROR);
    }

    #[test]
    fn output_probes_short_buffers_and_null_lengths() {
        let data = || Ok(Out::Data(zeroize::Zeroizing::new(vec![7u8; 5])));
        let mut n: DWORD = 0;
        // SAFETY: a valid length pointer and no buffer.
        let r = unsafe { output(std::ptr::null_mut(), 0, &raw mut n, |_| data()) };
        assert_eq!((r, n), (Ok(()), 5));
        let mut buf = [0u8; 4];
        // SAFETY: a 4-byte buffer.
        let r = unsafe { output(buf.as_mut_ptr(), 4, &raw mut n, |_| data()) };
        assert_eq!((r, n, buf), (Err(Status(NTE_BUFFER_TOO_SMALL)), 5, [0; 4]));
        let mut big = [0u8; 8];
        // SAFETY: an 8-byte buffer.
        let r = unsafe { output(big.as_mut_ptr(), 8, &raw mut n, |_| data()) };
        assert_eq!((r, n, big), (Ok(()), 5, [7, 7, 7, 7, 7, 0, 0, 0]));
        // SAFETY: a NULL length pointer is refused before anything is written.
        let r = unsafe { output(big.as_mut_ptr(), 8, std::ptr::null_mut(), |_| data()) };
        assert_eq!(r, Err(INVALID_PARAMETER));
    }

    #[test]
    fn null_and_bad_handles_are_refused() {
        let f = TABLE.FreeProvider.unwrap();
        // SAFETY: no pointers.
        assert_eq!(unsafe { f(0) }, NTE_INVALID_HANDLE);
        // SAFETY: no pointers.
        assert_eq!(unsafe { f(usize::MAX) }, NTE_INVALID_HANDLE);
        let fb = TABLE.FreeBuffer.unwrap();
        let mut x = 0u64;
        // SAFETY: never dereferenced.
        assert_eq!(unsafe { fb((&raw mut x).cast()) }, NTE_INVALID_PARAMETER);
        // SAFETY: never dereferenced.
        assert_eq!(unsafe { fb(std::ptr::null_mut()) }, NTE_INVALID_PARAMETER);
        let op = TABLE.OpenProvider.unwrap();
        // SAFETY: NULL out pointer is refused before any write.
        let s = unsafe { op(std::ptr::null_mut(), std::ptr::null(), 0) };
        assert_eq!(s, NTE_INVALID_PARAMETER);
    }
}
