//! Random number generation functions: `C_SeedRandom`, `C_GenerateRandom`.

use bridge::{BackendExt as _, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::ptr::{in_bytes, out_bytes};
use super::router;

/// `C_SeedRandom`: mixes seed material into the token's generator.
///
/// Spec: [PKCS #11 v3.2], Random number generation functions, C_SeedRandom.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pSeed` must be NULL or valid for reads of `ulSeedLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SeedRandom(
    hSession: CK_SESSION_HANDLE,
    pSeed: CK_BYTE_PTR,
    ulSeedLen: CK_ULONG,
) -> CK_RV {
    guard("C_SeedRandom", || {
        let router = router()?;
        // SAFETY: `pSeed` is NULL or readable for `ulSeedLen` bytes per the contract.
        let seed = unsafe { in_bytes(pSeed, ulSeedLen) }?;
        router.seed_random(SessionHandle(hSession), seed)
    })
}

/// `C_GenerateRandom`: fills the caller's buffer with random bytes, directly. At most 256 MiB
/// per call (`CKR_ARGUMENTS_BAD` beyond).
///
/// Spec: [PKCS #11 v3.2], Random number generation functions, C_GenerateRandom.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pRandomData` must be NULL or valid for writes of `ulRandomLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateRandom(
    hSession: CK_SESSION_HANDLE,
    pRandomData: CK_BYTE_PTR,
    ulRandomLen: CK_ULONG,
) -> CK_RV {
    guard("C_GenerateRandom", || {
        let router = router()?;
        // SAFETY: `pRandomData` is NULL or writable for `ulRandomLen` bytes per the contract.
        let out = unsafe { out_bytes(pRandomData, ulRandomLen) }?;
        router.generate_random(SessionHandle(hSession), out)
    })
}
