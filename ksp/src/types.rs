//! The CNG types the key storage provider interface uses, with the widths of the Windows x64
//! ABI spelled out: `DWORD`/`ULONG` are `u32`, `LONG`/`SECURITY_STATUS`/`NTSTATUS` are `i32`,
//! strings are UTF-16 (`u16`, never `wchar_t`, which is 32 bits on Linux), and `ULONG_PTR`
//! handles are `usize`. Source: the public Windows SDK headers `bcrypt.h`, `ncrypt.h`,
//! `ncrypt_provider.h` and `winerror.h`.
//!
//! Nothing here is `unsafe`: these are declarations. The entry points live in `abi`.

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::c_void;

/// `SECURITY_STATUS` (a `LONG`).
pub type SECURITY_STATUS = i32;
/// `NTSTATUS` (a `LONG`), returned only by `GetKeyStorageInterface`.
pub type NTSTATUS = i32;
/// `DWORD`.
pub type DWORD = u32;
/// `ULONG` (32 bits on Windows, whatever the C `long` of the build host).
pub type ULONG = u32;
/// `NCRYPT_PROV_HANDLE` (a `ULONG_PTR`).
pub type NCRYPT_PROV_HANDLE = usize;
/// `NCRYPT_KEY_HANDLE` (a `ULONG_PTR`).
pub type NCRYPT_KEY_HANDLE = usize;
/// `NCRYPT_SECRET_HANDLE` (a `ULONG_PTR`).
pub type NCRYPT_SECRET_HANDLE = usize;
/// `LPCWSTR`: a NUL-terminated UTF-16 string.
pub type LPCWSTR = *const u16;
/// `HANDLE`.
pub type HANDLE = *mut c_void;

// ---- status codes (winerror.h, ntstatus.h) ----------------------------------------------

/// `ERROR_SUCCESS`.
pub const ERROR_SUCCESS: SECURITY_STATUS = 0;
/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_INVALID_PARAMETER` (0xC000000D).
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
/// `STATUS_NOT_SUPPORTED` (0xC00000BB).
pub const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
/// `NTE_BAD_DATA`.
pub const NTE_BAD_DATA: SECURITY_STATUS = 0x8009_0005_u32 as i32;
/// `NTE_BAD_SIGNATURE`.
pub const NTE_BAD_SIGNATURE: SECURITY_STATUS = 0x8009_0006_u32 as i32;
/// `NTE_BAD_KEY`.
pub const NTE_BAD_KEY: SECURITY_STATUS = 0x8009_0003_u32 as i32;
/// `NTE_BAD_LEN`.
pub const NTE_BAD_LEN: SECURITY_STATUS = 0x8009_0004_u32 as i32;
/// `NTE_BAD_ALGID`.
pub const NTE_BAD_ALGID: SECURITY_STATUS = 0x8009_0008_u32 as i32;
/// `NTE_BAD_FLAGS`.
pub const NTE_BAD_FLAGS: SECURITY_STATUS = 0x8009_0009_u32 as i32;
/// `NTE_BAD_TYPE`.
pub const NTE_BAD_TYPE: SECURITY_STATUS = 0x8009_000A_u32 as i32;
/// `NTE_BAD_KEY_STATE`.
pub const NTE_BAD_KEY_STATE: SECURITY_STATUS = 0x8009_000B_u32 as i32;
/// `NTE_NO_MEMORY`.
pub const NTE_NO_MEMORY: SECURITY_STATUS = 0x8009_000E_u32 as i32;
/// `NTE_EXISTS`.
pub const NTE_EXISTS: SECURITY_STATUS = 0x8009_000F_u32 as i32;
/// `NTE_PERM`.
pub const NTE_PERM: SECURITY_STATUS = 0x8009_0010_u32 as i32;
/// `NTE_NOT_FOUND`.
pub const NTE_NOT_FOUND: SECURITY_STATUS = 0x8009_0011_u32 as i32;
/// `NTE_BAD_PUBLIC_KEY`.
pub const NTE_BAD_PUBLIC_KEY: SECURITY_STATUS = 0x8009_0015_u32 as i32;
/// `NTE_BAD_KEYSET`.
pub const NTE_BAD_KEYSET: SECURITY_STATUS = 0x8009_0016_u32 as i32;
/// `NTE_PROVIDER_DLL_FAIL`.
pub const NTE_PROVIDER_DLL_FAIL: SECURITY_STATUS = 0x8009_001D_u32 as i32;
/// `NTE_FAIL`.
pub const NTE_FAIL: SECURITY_STATUS = 0x8009_0020_u32 as i32;
/// `NTE_INVALID_HANDLE`.
pub const NTE_INVALID_HANDLE: SECURITY_STATUS = 0x8009_0026_u32 as i32;
/// `NTE_INVALID_PARAMETER`.
pub const NTE_INVALID_PARAMETER: SECURITY_STATUS = 0x8009_0027_u32 as i32;
/// `NTE_BUFFER_TOO_SMALL`.
pub const NTE_BUFFER_TOO_SMALL: SECURITY_STATUS = 0x8009_0028_u32 as i32;
/// `NTE_NOT_SUPPORTED`.
pub const NTE_NOT_SUPPORTED: SECURITY_STATUS = 0x8009_0029_u32 as i32;
/// `NTE_NO_MORE_ITEMS`.
pub const NTE_NO_MORE_ITEMS: SECURITY_STATUS = 0x8009_002A_u32 as i32;
/// `NTE_DECRYPTION_FAILURE`.
pub const NTE_DECRYPTION_FAILURE: SECURITY_STATUS = 0x8009_002C_u32 as i32;
/// `NTE_INTERNAL_ERROR`.
pub const NTE_INTERNAL_ERROR: SECURITY_STATUS = 0x8009_002D_u32 as i32;
/// `NTE_DEVICE_NOT_READY`.
pub const NTE_DEVICE_NOT_READY: SECURITY_STATUS = 0x8009_0030_u32 as i32;
/// `NTE_INCORRECT_PASSWORD`.
pub const NTE_INCORRECT_PASSWORD: SECURITY_STATUS = 0x8009_0033_u32 as i32;
/// `NTE_DEVICE_NOT_FOUND`.
pub const NTE_DEVICE_NOT_FOUND: SECURITY_STATUS = 0x8009_0035_u32 as i32;

// ---- flags (ncrypt.h, bcrypt.h) ---------------------------------------------------------

/// `NCRYPT_NO_KEY_VALIDATION` (FinalizeKey, ImportKey).
pub const NCRYPT_NO_KEY_VALIDATION: DWORD = 0x0000_0008;
/// `NCRYPT_MACHINE_KEY_FLAG`.
pub const NCRYPT_MACHINE_KEY_FLAG: DWORD = 0x0000_0020;
/// `NCRYPT_SILENT_FLAG`.
pub const NCRYPT_SILENT_FLAG: DWORD = 0x0000_0040;
/// `NCRYPT_OVERWRITE_KEY_FLAG`.
pub const NCRYPT_OVERWRITE_KEY_FLAG: DWORD = 0x0000_0080;
/// `NCRYPT_WRITE_KEY_TO_LEGACY_STORE_FLAG`.
pub const NCRYPT_WRITE_KEY_TO_LEGACY_STORE_FLAG: DWORD = 0x0000_0200;
/// `NCRYPT_DO_NOT_FINALIZE_FLAG` (ImportKey).
pub const NCRYPT_DO_NOT_FINALIZE_FLAG: DWORD = 0x0000_0400;
/// `NCRYPT_PERSIST_ONLY_FLAG` (Get/SetKeyProperty).
pub const NCRYPT_PERSIST_ONLY_FLAG: DWORD = 0x4000_0000;
/// `NCRYPT_PERSIST_FLAG` (SetKeyProperty).
pub const NCRYPT_PERSIST_FLAG: DWORD = 0x8000_0000;
/// `BCRYPT_PAD_NONE`.
pub const BCRYPT_PAD_NONE: DWORD = 0x0000_0001;
/// `BCRYPT_PAD_PKCS1`.
pub const BCRYPT_PAD_PKCS1: DWORD = 0x0000_0002;
/// `BCRYPT_PAD_OAEP`.
pub const BCRYPT_PAD_OAEP: DWORD = 0x0000_0004;
/// `BCRYPT_PAD_PSS`.
pub const BCRYPT_PAD_PSS: DWORD = 0x0000_0008;
/// `KDF_USE_SECRET_AS_HMAC_KEY_FLAG` (DeriveKey).
pub const KDF_USE_SECRET_AS_HMAC_KEY_FLAG: DWORD = 0x0000_0001;

/// `NCRYPT_ALLOW_EXPORT_FLAG` (export policy).
pub const NCRYPT_ALLOW_EXPORT_FLAG: DWORD = 0x0000_0001;
/// `NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG` (export policy).
pub const NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG: DWORD = 0x0000_0002;
/// `NCRYPT_ALLOW_DECRYPT_FLAG` (key usage).
pub const NCRYPT_ALLOW_DECRYPT_FLAG: DWORD = 0x0000_0001;
/// `NCRYPT_ALLOW_SIGNING_FLAG` (key usage).
pub const NCRYPT_ALLOW_SIGNING_FLAG: DWORD = 0x0000_0002;
/// `NCRYPT_ALLOW_KEY_AGREEMENT_FLAG` (key usage).
pub const NCRYPT_ALLOW_KEY_AGREEMENT_FLAG: DWORD = 0x0000_0004;
/// `NCRYPT_ALLOW_ALL_USAGES` (key usage).
pub const NCRYPT_ALLOW_ALL_USAGES: DWORD = 0x00FF_FFFF;
/// `NCRYPT_IMPL_HARDWARE_FLAG` (the `Impl Type` property).
pub const NCRYPT_IMPL_HARDWARE_FLAG: DWORD = 0x0000_0001;

/// `NCRYPT_ASYMMETRIC_ENCRYPTION_INTERFACE` (an algorithm's class).
pub const NCRYPT_ASYMMETRIC_ENCRYPTION_INTERFACE: DWORD = 3;
/// `NCRYPT_SECRET_AGREEMENT_INTERFACE`.
pub const NCRYPT_SECRET_AGREEMENT_INTERFACE: DWORD = 4;
/// `NCRYPT_SIGNATURE_INTERFACE`.
pub const NCRYPT_SIGNATURE_INTERFACE: DWORD = 5;
/// `NCRYPT_CIPHER_OPERATION` (EnumAlgorithms class filter).
pub const NCRYPT_CIPHER_OPERATION: DWORD = 0x0000_0001;
/// `NCRYPT_HASH_OPERATION`.
pub const NCRYPT_HASH_OPERATION: DWORD = 0x0000_0002;
/// `NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION`.
pub const NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION: DWORD = 0x0000_0004;
/// `NCRYPT_SECRET_AGREEMENT_OPERATION`.
pub const NCRYPT_SECRET_AGREEMENT_OPERATION: DWORD = 0x0000_0008;
/// `NCRYPT_SIGNATURE_OPERATION`.
pub const NCRYPT_SIGNATURE_OPERATION: DWORD = 0x0000_0010;
/// `NCRYPT_RNG_OPERATION`.
pub const NCRYPT_RNG_OPERATION: DWORD = 0x0000_0020;

/// `KDF_HASH_ALGORITHM` (an `NCryptBuffer` type for DeriveKey).
pub const KDF_HASH_ALGORITHM: ULONG = 0;
/// `KDF_SECRET_PREPEND`.
pub const KDF_SECRET_PREPEND: ULONG = 1;
/// `KDF_SECRET_APPEND`.
pub const KDF_SECRET_APPEND: ULONG = 2;
/// `KDF_HMAC_KEY`.
pub const KDF_HMAC_KEY: ULONG = 3;
/// `NCRYPTBUFFER_PKCS_ALG_ID` (ImportKey: the algorithm of the imported key).
pub const NCRYPTBUFFER_PKCS_ALG_ID: ULONG = 43;
/// `NCRYPTBUFFER_PKCS_KEY_NAME` (ImportKey: the name to persist the key under).
pub const NCRYPTBUFFER_PKCS_KEY_NAME: ULONG = 45;
/// `NCRYPTBUFFER_VERSION`.
pub const NCRYPTBUFFER_VERSION: ULONG = 0;

// ---- blob magics (bcrypt.h) -------------------------------------------------------------

/// `BCRYPT_RSAPUBLIC_MAGIC` ('RSA1').
pub const BCRYPT_RSAPUBLIC_MAGIC: ULONG = 0x3141_5352;
/// `BCRYPT_RSAPRIVATE_MAGIC` ('RSA2').
pub const BCRYPT_RSAPRIVATE_MAGIC: ULONG = 0x3241_5352;
/// `BCRYPT_RSAFULLPRIVATE_MAGIC` ('RSA3').
pub const BCRYPT_RSAFULLPRIVATE_MAGIC: ULONG = 0x3341_5352;
/// `BCRYPT_ECDH_PUBLIC_P256_MAGIC` ('ECK1').
pub const BCRYPT_ECDH_PUBLIC_P256_MAGIC: ULONG = 0x314B_4345;
/// `BCRYPT_ECDH_PRIVATE_P256_MAGIC` ('ECK2').
pub const BCRYPT_ECDH_PRIVATE_P256_MAGIC: ULONG = 0x324B_4345;
/// `BCRYPT_ECDH_PUBLIC_P384_MAGIC` ('ECK3').
pub const BCRYPT_ECDH_PUBLIC_P384_MAGIC: ULONG = 0x334B_4345;
/// `BCRYPT_ECDH_PRIVATE_P384_MAGIC` ('ECK4').
pub const BCRYPT_ECDH_PRIVATE_P384_MAGIC: ULONG = 0x344B_4345;
/// `BCRYPT_ECDH_PUBLIC_P521_MAGIC` ('ECK5').
pub const BCRYPT_ECDH_PUBLIC_P521_MAGIC: ULONG = 0x354B_4345;
/// `BCRYPT_ECDH_PRIVATE_P521_MAGIC` ('ECK6').
pub const BCRYPT_ECDH_PRIVATE_P521_MAGIC: ULONG = 0x364B_4345;
/// `BCRYPT_ECDSA_PUBLIC_P256_MAGIC` ('ECS1').
pub const BCRYPT_ECDSA_PUBLIC_P256_MAGIC: ULONG = 0x3153_4345;
/// `BCRYPT_ECDSA_PRIVATE_P256_MAGIC` ('ECS2').
pub const BCRYPT_ECDSA_PRIVATE_P256_MAGIC: ULONG = 0x3253_4345;
/// `BCRYPT_ECDSA_PUBLIC_P384_MAGIC` ('ECS3').
pub const BCRYPT_ECDSA_PUBLIC_P384_MAGIC: ULONG = 0x3353_4345;
/// `BCRYPT_ECDSA_PRIVATE_P384_MAGIC` ('ECS4').
pub const BCRYPT_ECDSA_PRIVATE_P384_MAGIC: ULONG = 0x3453_4345;
/// `BCRYPT_ECDSA_PUBLIC_P521_MAGIC` ('ECS5').
pub const BCRYPT_ECDSA_PUBLIC_P521_MAGIC: ULONG = 0x3553_4345;
/// `BCRYPT_ECDSA_PRIVATE_P521_MAGIC` ('ECS6').
pub const BCRYPT_ECDSA_PRIVATE_P521_MAGIC: ULONG = 0x3653_4345;
/// `BCRYPT_PKCS11_RSA_AES_WRAP_BLOB_MAGIC` ('RAPW').
pub const BCRYPT_PKCS11_RSA_AES_WRAP_BLOB_MAGIC: ULONG = 0x5750_4152;

/// `NCRYPT_KEY_STORAGE_INTERFACE_VERSION_3`: major 3, minor 0.
pub const NCRYPT_KEY_STORAGE_INTERFACE_VERSION_3: BCRYPT_INTERFACE_VERSION =
    BCRYPT_INTERFACE_VERSION {
        MajorVersion: 3,
        MinorVersion: 0,
    };

// ---- structures -------------------------------------------------------------------------

/// `BCRYPT_INTERFACE_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BCRYPT_INTERFACE_VERSION {
    /// `MajorVersion`.
    pub MajorVersion: u16,
    /// `MinorVersion`.
    pub MinorVersion: u16,
}

/// `NCryptAlgorithmName`: one entry of EnumAlgorithms' answer.
#[repr(C)]
#[derive(Debug)]
pub struct NCryptAlgorithmName {
    /// `pszName`.
    pub pszName: *mut u16,
    /// `dwClass` (`NCRYPT_*_INTERFACE`).
    pub dwClass: DWORD,
    /// `dwAlgOperations` (`NCRYPT_*_OPERATION`).
    pub dwAlgOperations: DWORD,
    /// `dwFlags`.
    pub dwFlags: DWORD,
}

/// `NCryptKeyName`: one key of EnumKeys' answer.
#[repr(C)]
#[derive(Debug)]
pub struct NCryptKeyName {
    /// `pszName`.
    pub pszName: *mut u16,
    /// `pszAlgid`.
    pub pszAlgid: *mut u16,
    /// `dwLegacyKeySpec`.
    pub dwLegacyKeySpec: DWORD,
    /// `dwFlags`.
    pub dwFlags: DWORD,
}

/// `NCryptBuffer` (`BCryptBuffer`).
#[repr(C)]
#[derive(Debug)]
pub struct NCryptBuffer {
    /// `cbBuffer`.
    pub cbBuffer: ULONG,
    /// `BufferType`.
    pub BufferType: ULONG,
    /// `pvBuffer`.
    pub pvBuffer: *mut c_void,
}

/// `NCryptBufferDesc` (`BCryptBufferDesc`).
#[repr(C)]
#[derive(Debug)]
pub struct NCryptBufferDesc {
    /// `ulVersion`.
    pub ulVersion: ULONG,
    /// `cBuffers`.
    pub cBuffers: ULONG,
    /// `pBuffers`.
    pub pBuffers: *mut NCryptBuffer,
}

/// `BCRYPT_PKCS1_PADDING_INFO`.
#[repr(C)]
#[derive(Debug)]
pub struct BCRYPT_PKCS1_PADDING_INFO {
    /// `pszAlgId`: the hash whose DigestInfo to use; NULL for none.
    pub pszAlgId: LPCWSTR,
}

/// `BCRYPT_PSS_PADDING_INFO`.
#[repr(C)]
#[derive(Debug)]
pub struct BCRYPT_PSS_PADDING_INFO {
    /// `pszAlgId`: the hash (and MGF1 hash).
    pub pszAlgId: LPCWSTR,
    /// `cbSalt`.
    pub cbSalt: ULONG,
}

/// `BCRYPT_OAEP_PADDING_INFO`.
#[repr(C)]
#[derive(Debug)]
pub struct BCRYPT_OAEP_PADDING_INFO {
    /// `pszAlgId`: the hash (and MGF1 hash).
    pub pszAlgId: LPCWSTR,
    /// `pbLabel`.
    pub pbLabel: *mut u8,
    /// `cbLabel`.
    pub cbLabel: ULONG,
}

/// `BCRYPT_RSAKEY_BLOB`: the header of the RSA blobs; big-endian integers follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BCRYPT_RSAKEY_BLOB {
    /// `Magic`.
    pub Magic: ULONG,
    /// `BitLength`.
    pub BitLength: ULONG,
    /// `cbPublicExp`.
    pub cbPublicExp: ULONG,
    /// `cbModulus`.
    pub cbModulus: ULONG,
    /// `cbPrime1`.
    pub cbPrime1: ULONG,
    /// `cbPrime2`.
    pub cbPrime2: ULONG,
}

/// `BCRYPT_ECCKEY_BLOB`: the header of the ECC blobs; X, Y (and d) follow, `cbKey` each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BCRYPT_ECCKEY_BLOB {
    /// `dwMagic`.
    pub dwMagic: ULONG,
    /// `cbKey`.
    pub cbKey: ULONG,
}

/// `BCRYPT_PKCS11_RSA_AES_WRAP_BLOB`: the BYOK header; the PKCS#11 `CKM_RSA_AES_KEY_WRAP`
/// output, the OAEP hash name (UTF-16) and the OAEP label follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BCRYPT_PKCS11_RSA_AES_WRAP_BLOB {
    /// `dwMagic`.
    pub dwMagic: ULONG,
    /// `cbKey`.
    pub cbKey: ULONG,
    /// `cbPaddingAlgId`.
    pub cbPaddingAlgId: ULONG,
    /// `cbPaddingLabel`.
    pub cbPaddingLabel: ULONG,
}

/// `NCRYPT_SUPPORTED_LENGTHS`: the `Lengths` key property.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NCRYPT_SUPPORTED_LENGTHS {
    /// `dwMinLength`.
    pub dwMinLength: DWORD,
    /// `dwMaxLength`.
    pub dwMaxLength: DWORD,
    /// `dwIncrement`.
    pub dwIncrement: DWORD,
    /// `dwDefaultLength`.
    pub dwDefaultLength: DWORD,
}

// ---- the function table (ncrypt_provider.h) ---------------------------------------------

/// `NCryptOpenStorageProviderFn`.
pub type NCryptOpenStorageProviderFn = Option<
    unsafe extern "C" fn(
        phProvider: *mut NCRYPT_PROV_HANDLE,
        pszProviderName: LPCWSTR,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptOpenKeyFn`.
pub type NCryptOpenKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        phKey: *mut NCRYPT_KEY_HANDLE,
        pszKeyName: LPCWSTR,
        dwLegacyKeySpec: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptCreatePersistedKeyFn`.
pub type NCryptCreatePersistedKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        phKey: *mut NCRYPT_KEY_HANDLE,
        pszAlgId: LPCWSTR,
        pszKeyName: LPCWSTR,
        dwLegacyKeySpec: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptGetProviderPropertyFn`.
pub type NCryptGetProviderPropertyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        pszProperty: LPCWSTR,
        pbOutput: *mut u8,
        cbOutput: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptGetKeyPropertyFn`.
pub type NCryptGetKeyPropertyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pszProperty: LPCWSTR,
        pbOutput: *mut u8,
        cbOutput: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptSetProviderPropertyFn`.
pub type NCryptSetProviderPropertyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        pszProperty: LPCWSTR,
        pbInput: *mut u8,
        cbInput: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptSetKeyPropertyFn`.
pub type NCryptSetKeyPropertyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pszProperty: LPCWSTR,
        pbInput: *mut u8,
        cbInput: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptFinalizeKeyFn`.
pub type NCryptFinalizeKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptDeleteKeyFn`.
pub type NCryptDeleteKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptFreeProviderFn`.
pub type NCryptFreeProviderFn =
    Option<unsafe extern "C" fn(hProvider: NCRYPT_PROV_HANDLE) -> SECURITY_STATUS>;
/// `NCryptFreeKeyFn`.
pub type NCryptFreeKeyFn = Option<
    unsafe extern "C" fn(hProvider: NCRYPT_PROV_HANDLE, hKey: NCRYPT_KEY_HANDLE) -> SECURITY_STATUS,
>;
/// `NCryptFreeBufferFn`.
pub type NCryptFreeBufferFn = Option<unsafe extern "C" fn(pvInput: *mut c_void) -> SECURITY_STATUS>;
/// `NCryptEncryptFn` (also `NCryptDecryptFn`).
pub type NCryptEncryptFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pbInput: *mut u8,
        cbInput: DWORD,
        pPaddingInfo: *mut c_void,
        pbOutput: *mut u8,
        cbOutput: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptDecryptFn`.
pub type NCryptDecryptFn = NCryptEncryptFn;
/// `NCryptIsAlgSupportedFn`.
pub type NCryptIsAlgSupportedFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        pszAlgId: LPCWSTR,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptEnumAlgorithmsFn`.
pub type NCryptEnumAlgorithmsFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        dwAlgClass: DWORD,
        pdwAlgCount: *mut DWORD,
        ppAlgList: *mut *mut NCryptAlgorithmName,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptEnumKeysFn`.
pub type NCryptEnumKeysFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        pszScope: LPCWSTR,
        ppKeyName: *mut *mut NCryptKeyName,
        ppEnumState: *mut *mut c_void,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptImportKeyFn`.
pub type NCryptImportKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hImportKey: NCRYPT_KEY_HANDLE,
        pszBlobType: LPCWSTR,
        pParameterList: *mut NCryptBufferDesc,
        phKey: *mut NCRYPT_KEY_HANDLE,
        pbData: *mut u8,
        cbData: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptExportKeyFn`.
pub type NCryptExportKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        hExportKey: NCRYPT_KEY_HANDLE,
        pszBlobType: LPCWSTR,
        pParameterList: *mut NCryptBufferDesc,
        pbOutput: *mut u8,
        cbOutput: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptSignHashFn`.
pub type NCryptSignHashFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pPaddingInfo: *mut c_void,
        pbHashValue: *mut u8,
        cbHashValue: DWORD,
        pbSignature: *mut u8,
        cbSignature: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptVerifySignatureFn`.
pub type NCryptVerifySignatureFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pPaddingInfo: *mut c_void,
        pbHashValue: *mut u8,
        cbHashValue: DWORD,
        pbSignature: *mut u8,
        cbSignature: DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptPromptUserFn`.
pub type NCryptPromptUserFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pszOperation: LPCWSTR,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptNotifyChangeKeyFn`.
pub type NCryptNotifyChangeKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        phEvent: *mut HANDLE,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptSecretAgreementFn`.
pub type NCryptSecretAgreementFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hPrivKey: NCRYPT_KEY_HANDLE,
        hPubKey: NCRYPT_KEY_HANDLE,
        phAgreedSecret: *mut NCRYPT_SECRET_HANDLE,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptDeriveKeyFn`.
pub type NCryptDeriveKeyFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hSharedSecret: NCRYPT_SECRET_HANDLE,
        pwszKDF: LPCWSTR,
        pParameterList: *mut NCryptBufferDesc,
        pbDerivedKey: *mut u8,
        cbDerivedKey: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: ULONG,
    ) -> SECURITY_STATUS,
>;
/// `NCryptFreeSecretFn`.
pub type NCryptFreeSecretFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hSharedSecret: NCRYPT_SECRET_HANDLE,
    ) -> SECURITY_STATUS,
>;
/// `NCryptKeyDerivationFn` (interface version 2).
pub type NCryptKeyDerivationFn = Option<
    unsafe extern "C" fn(
        hProvider: NCRYPT_PROV_HANDLE,
        hKey: NCRYPT_KEY_HANDLE,
        pParameterList: *mut NCryptBufferDesc,
        pbDerivedKey: *mut u8,
        cbDerivedKey: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: ULONG,
    ) -> SECURITY_STATUS,
>;
/// `NCryptCreateClaimFn` (interface version 3).
pub type NCryptCreateClaimFn = Option<
    unsafe extern "C" fn(
        hProv: NCRYPT_PROV_HANDLE,
        hSubjectKey: NCRYPT_KEY_HANDLE,
        hAuthorityKey: NCRYPT_KEY_HANDLE,
        dwClaimType: DWORD,
        pParameterList: *mut NCryptBufferDesc,
        pbClaimBlob: *mut u8,
        cbClaimBlob: DWORD,
        pcbResult: *mut DWORD,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;
/// `NCryptVerifyClaimFn` (interface version 3).
pub type NCryptVerifyClaimFn = Option<
    unsafe extern "C" fn(
        hProv: NCRYPT_PROV_HANDLE,
        hSubjectKey: NCRYPT_KEY_HANDLE,
        hAuthorityKey: NCRYPT_KEY_HANDLE,
        dwClaimType: DWORD,
        pParameterList: *mut NCryptBufferDesc,
        pbClaimBlob: *mut u8,
        cbClaimBlob: DWORD,
        pOutput: *mut NCryptBufferDesc,
        dwFlags: DWORD,
    ) -> SECURITY_STATUS,
>;

/// `NCRYPT_KEY_STORAGE_FUNCTION_TABLE`: the interface version and 29 entry points, in the
/// SDK's order (`ncrypt_provider.h`, interface version 3).
#[repr(C)]
#[derive(Debug)]
pub struct NCRYPT_KEY_STORAGE_FUNCTION_TABLE {
    /// `Version`.
    pub Version: BCRYPT_INTERFACE_VERSION,
    /// `OpenProvider`.
    pub OpenProvider: NCryptOpenStorageProviderFn,
    /// `OpenKey`.
    pub OpenKey: NCryptOpenKeyFn,
    /// `CreatePersistedKey`.
    pub CreatePersistedKey: NCryptCreatePersistedKeyFn,
    /// `GetProviderProperty`.
    pub GetProviderProperty: NCryptGetProviderPropertyFn,
    /// `GetKeyProperty`.
    pub GetKeyProperty: NCryptGetKeyPropertyFn,
    /// `SetProviderProperty`.
    pub SetProviderProperty: NCryptSetProviderPropertyFn,
    /// `SetKeyProperty`.
    pub SetKeyProperty: NCryptSetKeyPropertyFn,
    /// `FinalizeKey`.
    pub FinalizeKey: NCryptFinalizeKeyFn,
    /// `DeleteKey`.
    pub DeleteKey: NCryptDeleteKeyFn,
    /// `FreeProvider`.
    pub FreeProvider: NCryptFreeProviderFn,
    /// `FreeKey`.
    pub FreeKey: NCryptFreeKeyFn,
    /// `FreeBuffer`.
    pub FreeBuffer: NCryptFreeBufferFn,
    /// `Encrypt`.
    pub Encrypt: NCryptEncryptFn,
    /// `Decrypt`.
    pub Decrypt: NCryptDecryptFn,
    /// `IsAlgSupported`.
    pub IsAlgSupported: NCryptIsAlgSupportedFn,
    /// `EnumAlgorithms`.
    pub EnumAlgorithms: NCryptEnumAlgorithmsFn,
    /// `EnumKeys`.
    pub EnumKeys: NCryptEnumKeysFn,
    /// `ImportKey`.
    pub ImportKey: NCryptImportKeyFn,
    /// `ExportKey`.
    pub ExportKey: NCryptExportKeyFn,
    /// `SignHash`.
    pub SignHash: NCryptSignHashFn,
    /// `VerifySignature`.
    pub VerifySignature: NCryptVerifySignatureFn,
    /// `PromptUser`.
    pub PromptUser: NCryptPromptUserFn,
    /// `NotifyChangeKey`.
    pub NotifyChangeKey: NCryptNotifyChangeKeyFn,
    /// `SecretAgreement`.
    pub SecretAgreement: NCryptSecretAgreementFn,
    /// `DeriveKey`.
    pub DeriveKey: NCryptDeriveKeyFn,
    /// `FreeSecret`.
    pub FreeSecret: NCryptFreeSecretFn,
    /// `KeyDerivation`.
    pub KeyDerivation: NCryptKeyDerivationFn,
    /// `CreateClaim`.
    pub CreateClaim: NCryptCreateClaimFn,
    /// `VerifyClaim`.
    pub VerifyClaim: NCryptVerifyClaimFn,
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use super::*;

    // Sizes and offsets of the Windows x64 ABI (LLP64: 4-byte ULONG, 8-byte pointers).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn layouts_match_windows_x64() {
        assert_eq!(size_of::<BCRYPT_INTERFACE_VERSION>(), 4);
        assert_eq!(size_of::<NCryptAlgorithmName>(), 24);
        assert_eq!(offset_of!(NCryptAlgorithmName, dwClass), 8);
        assert_eq!(offset_of!(NCryptAlgorithmName, dwFlags), 16);
        assert_eq!(size_of::<NCryptKeyName>(), 24);
        assert_eq!(offset_of!(NCryptKeyName, pszAlgid), 8);
        assert_eq!(offset_of!(NCryptKeyName, dwLegacyKeySpec), 16);
        assert_eq!(offset_of!(NCryptKeyName, dwFlags), 20);
        assert_eq!(size_of::<NCryptBuffer>(), 16);
        assert_eq!(offset_of!(NCryptBuffer, BufferType), 4);
        assert_eq!(offset_of!(NCryptBuffer, pvBuffer), 8);
        assert_eq!(size_of::<NCryptBufferDesc>(), 16);
        assert_eq!(offset_of!(NCryptBufferDesc, cBuffers), 4);
        assert_eq!(offset_of!(NCryptBufferDesc, pBuffers), 8);
        assert_eq!(size_of::<BCRYPT_PKCS1_PADDING_INFO>(), 8);
        assert_eq!(size_of::<BCRYPT_PSS_PADDING_INFO>(), 16);
        assert_eq!(offset_of!(BCRYPT_PSS_PADDING_INFO, cbSalt), 8);
        assert_eq!(size_of::<BCRYPT_OAEP_PADDING_INFO>(), 24);
        assert_eq!(offset_of!(BCRYPT_OAEP_PADDING_INFO, pbLabel), 8);
        assert_eq!(offset_of!(BCRYPT_OAEP_PADDING_INFO, cbLabel), 16);
        assert_eq!(size_of::<BCRYPT_RSAKEY_BLOB>(), 24);
        assert_eq!(offset_of!(BCRYPT_RSAKEY_BLOB, cbPrime2), 20);
        assert_eq!(size_of::<BCRYPT_ECCKEY_BLOB>(), 8);
        assert_eq!(size_of::<BCRYPT_PKCS11_RSA_AES_WRAP_BLOB>(), 16);
        assert_eq!(size_of::<NCRYPT_SUPPORTED_LENGTHS>(), 16);
        // Version (padded to 8) and 29 function pointers.
        assert_eq!(size_of::<NCRYPT_KEY_STORAGE_FUNCTION_TABLE>(), 8 + 29 * 8);
        assert_eq!(align_of::<NCRYPT_KEY_STORAGE_FUNCTION_TABLE>(), 8);
        assert_eq!(
            offset_of!(NCRYPT_KEY_STORAGE_FUNCTION_TABLE, OpenProvider),
            8
        );
        assert_eq!(
            offset_of!(NCRYPT_KEY_STORAGE_FUNCTION_TABLE, FreeBuffer),
            8 + 11 * 8
        );
        assert_eq!(
            offset_of!(NCRYPT_KEY_STORAGE_FUNCTION_TABLE, SignHash),
            8 + 19 * 8
        );
        assert_eq!(
            offset_of!(NCRYPT_KEY_STORAGE_FUNCTION_TABLE, FreeSecret),
            8 + 25 * 8
        );
        assert_eq!(
            offset_of!(NCRYPT_KEY_STORAGE_FUNCTION_TABLE, VerifyClaim),
            8 + 28 * 8
        );
        assert_eq!(size_of::<NCRYPT_KEY_HANDLE>(), 8);
        assert_eq!(size_of::<SECURITY_STATUS>(), 4);
    }

    #[test]
    fn status_codes_are_the_sdk_values() {
        assert_eq!(NTE_INVALID_HANDLE, 0x8009_0026_u32 as i32);
        assert_eq!(NTE_NOT_SUPPORTED, 0x8009_0029_u32 as i32);
        assert_eq!(NTE_INTERNAL_ERROR, 0x8009_002D_u32 as i32);
        assert_eq!(NTE_BUFFER_TOO_SMALL, 0x8009_0028_u32 as i32);
        assert_eq!(NTE_PERM, 0x8009_0010_u32 as i32);
        assert_eq!(&BCRYPT_RSAPUBLIC_MAGIC.to_le_bytes(), b"RSA1");
        assert_eq!(&BCRYPT_ECDSA_PUBLIC_P256_MAGIC.to_le_bytes(), b"ECS1");
        assert_eq!(&BCRYPT_ECDH_PRIVATE_P521_MAGIC.to_le_bytes(), b"ECK6");
        assert_eq!(
            &BCRYPT_PKCS11_RSA_AES_WRAP_BLOB_MAGIC.to_le_bytes(),
            b"RAPW"
        );
    }
}
