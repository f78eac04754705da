//! Provider and key properties (`Get`/`SetProviderProperty`, `Get`/`SetKeyProperty`,
//! `IsAlgSupported`), and the encodings of the values CNG passes as bytes.

use bridge::BackendExt as _;
use cryptoki_sys::*;

use super::alg::Alg;
use super::keys::key_id;
use super::session::PROVIDER_NAME;
use super::state::{KeyState, check_flags, key, provider};
use crate::blob::{self, Curve};
use crate::error::{INVALID_PARAMETER, KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// `GetProviderProperty`.
pub(crate) fn get_provider_property(hp: usize, prop: &str, flags: u32) -> KResult<Vec<u8>> {
    check_flags(flags, NCRYPT_PERSIST_ONLY_FLAG)?;
    let _ = provider(hp)?;
    Ok(match prop {
        "Name" => utf16z(PROVIDER_NAME),
        "Impl Type" => dword(NCRYPT_IMPL_HARDWARE_FLAG),
        "Version" => dword(0x0001_0000),
        "Max Name Length" => dword(MAX_NAME_CHARS),
        _ => return Err(NOT_SUPPORTED),
    })
}

/// The longest key name, in UTF-16 units (a CKA_LABEL has no limit; this keeps names sane).
pub(super) const MAX_NAME_CHARS: u32 = 255;

/// `SetProviderProperty`: the caller-context properties are accepted and ignored.
pub(crate) fn set_provider_property(
    hp: usize,
    prop: &str,
    _value: &[u8],
    flags: u32,
) -> KResult<()> {
    check_flags(flags, NCRYPT_PERSIST_FLAG | NCRYPT_PERSIST_ONLY_FLAG)?;
    let _ = provider(hp)?;
    match prop {
        "Use Context" | "HWND Handle" => Ok(()),
        _ => Err(NOT_SUPPORTED),
    }
}

/// `IsAlgSupported`.
pub(crate) fn is_alg_supported(hp: usize, alg: &str, flags: u32) -> KResult<()> {
    check_flags(flags, 0)?;
    let _ = provider(hp)?;
    Alg::from_name(alg).map(|_| ()).ok_or(NOT_SUPPORTED)
}

/// `SetKeyProperty`: Length, Export Policy and Key Usage before `FinalizeKey`.
pub(crate) fn set_key_property(
    hp: usize,
    hk: usize,
    prop: &str,
    value: &[u8],
    flags: u32,
) -> KResult<()> {
    check_flags(flags, NCRYPT_PERSIST_FLAG | NCRYPT_PERSIST_ONLY_FLAG)?;
    let (_, k) = key(hp, hk)?;
    let mut st = k.state.lock();
    if matches!(prop, "Use Context" | "HWND Handle") {
        return Ok(());
    }
    let KeyState::Pending(pending) = &mut *st else {
        return match prop {
            "Length" | "Export Policy" | "Key Usage" => Err(Status(NTE_PERM)),
            _ => Err(NOT_SUPPORTED),
        };
    };
    match prop {
        "Length" => {
            let len = read_dword(value)?;
            let ok = match pending.alg.curve() {
                Some(c) => len == c.bits(),
                None => (1024..=16384).contains(&len) && len % 8 == 0,
            };
            if !ok {
                return Err(INVALID_PARAMETER);
            }
            pending.length = Some(len);
        }
        "Export Policy" => {
            let v = read_dword(value)?;
            if v & !(NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG | 0xc) != 0 {
                return Err(INVALID_PARAMETER);
            }
            pending.export_policy = v;
        }
        "Key Usage" => {
            let v = read_dword(value)?;
            if v & !NCRYPT_ALLOW_ALL_USAGES != 0 {
                return Err(INVALID_PARAMETER);
            }
            pending.usage = Some(v);
        }
        _ => return Err(NOT_SUPPORTED),
    }
    Ok(())
}

/// `GetKeyProperty`.
pub(crate) fn get_key_property(hp: usize, hk: usize, prop: &str, flags: u32) -> KResult<Vec<u8>> {
    check_flags(flags, NCRYPT_PERSIST_ONLY_FLAG)?;
    let (p, k) = key(hp, hk)?;
    let st = k.state.lock().clone();
    let (alg, name, bits, usage, policy, id) = match &st {
        KeyState::Pending(pk) => (
            pk.alg,
            pk.name.clone(),
            pk.length
                .or(pk.alg.curve().map(Curve::bits))
                .unwrap_or(2048),
            pk.usage.unwrap_or_else(|| pk.alg.default_usage()),
            pk.export_policy,
            pk.name.as_deref().map(key_id),
        ),
        KeyState::Ready(r) => (
            r.alg,
            r.name.clone(),
            r.bits,
            r.usage,
            r.export_policy,
            Some(r.id.clone()),
        ),
    };
    Ok(match prop {
        "Name" => utf16z(name.as_deref().ok_or(NOT_SUPPORTED)?),
        "Algorithm Name" => utf16z(alg.name()),
        "Algorithm Group" => utf16z(alg.group()),
        "Length" => dword(bits),
        "Lengths" => {
            let (min, max, inc, default) = match alg.curve() {
                Some(c) => (c.bits(), c.bits(), 0, c.bits()),
                // What the firmware's key-pair generator takes.
                None => {
                    let info = p
                        .backend
                        .mechanism_info(p.slot, CKM_RSA_PKCS_KEY_PAIR_GEN)?;
                    let bits = |v: CK_ULONG| u32::try_from(v).unwrap_or(u32::MAX);
                    (bits(info.min_key_size), bits(info.max_key_size), 8, 2048)
                }
            };
            [min, max, inc, default]
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .collect()
        }
        "Key Usage" => dword(usage),
        "Export Policy" => dword(policy),
        "Key Type" => dword(0),
        "Unique Name" => {
            let id = id.filter(|_| name.is_some()).ok_or(NOT_SUPPORTED)?;
            utf16z(&format!("ferrohsm-{}", base16ct::lower::encode_string(&id)))
        }
        "ECCCurveName" => utf16z(alg.curve().ok_or(NOT_SUPPORTED)?.cng_name()),
        _ => return Err(NOT_SUPPORTED),
    })
}

// ---- the values CNG passes as bytes ------------------------------------------------------

/// A string property's value: NUL-terminated UTF-16LE.
pub(super) fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// A DWORD property's value: little-endian.
pub(super) fn dword(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A DWORD property's value, which must be exactly four bytes.
fn read_dword(value: &[u8]) -> KResult<u32> {
    let b: [u8; 4] = value.try_into().map_err(|_| INVALID_PARAMETER)?;
    Ok(u32::from_le_bytes(b))
}

/// A UTF-16LE string in a buffer, up to its NUL if it has one.
pub(super) fn utf16_bytes(v: &[u8]) -> KResult<String> {
    blob::utf16le(v).ok_or(INVALID_PARAMETER)
}

/// The value of the buffer of type `t` in a parameter list (`NCryptBufferDesc`, decoded by
/// `abi`): the first of that type.
pub(super) fn param(params: &[(u32, Vec<u8>)], t: u32) -> Option<&[u8]> {
    params
        .iter()
        .find(|(ty, _)| *ty == t)
        .map(|(_, v)| v.as_slice())
}
