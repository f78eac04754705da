//! `EnumAlgorithms` and `EnumKeys`, and the memory they hand out until `FreeBuffer`.

use std::ffi::c_void;

use bridge::{Attribute, Template};
use cryptoki_sys::*;

use super::alg::Alg;
use super::keys::describe;
use super::properties::utf16z;
use super::state::{Buffer, Provider, STATE, check_flags, provider};
use crate::error::{INVALID_PARAMETER, KResult, Status};
use crate::types::*;

/// Lays out `n` records of 24 bytes followed by NUL-terminated UTF-16 strings in one 8-aligned
/// block; `record(i, strings_addr)` writes record `i` given the addresses of its strings.
fn block(
    records: usize,
    strings: &[Vec<&str>],
    mut record: impl FnMut(usize, &[usize], &mut Vec<u8>),
) -> KResult<(usize, Vec<u64>)> {
    const RECORD: usize = 24;
    let encoded: Vec<Vec<Vec<u8>>> = strings
        .iter()
        .map(|ss| ss.iter().map(|s| utf16z(s)).collect())
        .collect();
    let strings_len: usize = encoded.iter().flatten().map(Vec::len).sum();
    let total = records * RECORD + strings_len;
    let mut words = vec![0u64; total.div_ceil(8).max(1)];
    let base = words.as_ptr().addr();
    let mut image = Vec::with_capacity(words.len() * 8);
    let mut cursor = base + records * RECORD;
    let mut addrs = Vec::new();
    for ss in &encoded {
        let mut a = Vec::new();
        for s in ss {
            a.push(cursor);
            cursor += s.len();
        }
        addrs.push(a);
    }
    for i in 0..records {
        let start = image.len();
        record(
            i,
            addrs.get(i).map(Vec::as_slice).unwrap_or_default(),
            &mut image,
        );
        if image.len() != start + RECORD {
            return Err(Status(NTE_INTERNAL_ERROR));
        }
    }
    for s in encoded.iter().flatten() {
        image.extend_from_slice(s);
    }
    image.resize(words.len() * 8, 0);
    for (w, chunk) in words.iter_mut().zip(image.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    Ok((base, words))
}

fn push_ptr(image: &mut Vec<u8>, addr: usize) {
    image.extend_from_slice(&addr.to_ne_bytes());
}

fn register(words: Vec<u64>) -> *mut c_void {
    let mut words = words;
    let ptr = words.as_mut_ptr().cast::<c_void>();
    STATE
        .lock()
        .buffers
        .insert(ptr.addr(), Buffer::Block(words));
    ptr
}

/// `EnumAlgorithms`: the algorithms of the operation classes in `class` (0: all).
pub(crate) fn enum_algorithms(
    hp: usize,
    class: u32,
    flags: u32,
) -> KResult<(u32, *mut NCryptAlgorithmName)> {
    check_flags(flags, 0)?;
    let known = NCRYPT_CIPHER_OPERATION
        | NCRYPT_HASH_OPERATION
        | NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION
        | NCRYPT_SECRET_AGREEMENT_OPERATION
        | NCRYPT_SIGNATURE_OPERATION
        | NCRYPT_RNG_OPERATION;
    if class & !known != 0 {
        return Err(INVALID_PARAMETER);
    }
    let _ = provider(hp)?;
    let algs: Vec<Alg> = Alg::all()
        .into_iter()
        .filter(|a| class == 0 || a.class_and_operations().1 & class != 0)
        .collect();
    let names: Vec<Vec<&str>> = algs.iter().map(|a| vec![a.name()]).collect();
    let (_, words) = block(algs.len(), &names, |i, s, image| {
        let (cls, ops) = algs
            .get(i)
            .map(|a| a.class_and_operations())
            .unwrap_or_default();
        push_ptr(image, s.first().copied().unwrap_or(0));
        image.extend_from_slice(&cls.to_ne_bytes());
        image.extend_from_slice(&ops.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
    })?;
    let count = u32::try_from(algs.len()).map_err(|_| Status(NTE_INTERNAL_ERROR))?;
    Ok((count, register(words).cast()))
}

/// `FreeBuffer`: only memory this provider handed out, each block once.
pub(crate) fn free_buffer(addr: usize) -> KResult<()> {
    STATE
        .lock()
        .buffers
        .remove(&addr)
        .map(|_| ())
        .ok_or(INVALID_PARAMETER)
}

/// `EnumKeys`: one key per call; the cursor is a buffer of ours, freed with `FreeBuffer`.
pub(crate) fn enum_keys(
    hp: usize,
    state: Option<usize>,
    flags: u32,
) -> KResult<(*mut NCryptKeyName, Option<*mut c_void>)> {
    check_flags(flags, NCRYPT_MACHINE_KEY_FLAG)?;
    let p = provider(hp)?;
    let mut new_state = None;
    let addr = match state {
        Some(a) => a,
        None => {
            let keys = list_keys(&p)?;
            let mut anchor = vec![0u64; 1];
            let ptr = anchor.as_mut_ptr().cast::<c_void>();
            STATE.lock().buffers.insert(
                ptr.addr(),
                Buffer::EnumState {
                    anchor,
                    provider: hp,
                    keys,
                    next: 0,
                },
            );
            new_state = Some(ptr);
            ptr.addr()
        }
    };
    let next = {
        let mut st = STATE.lock();
        match st.buffers.get_mut(&addr) {
            Some(Buffer::EnumState {
                provider,
                keys,
                next,
                ..
            }) if *provider == hp => {
                let item = keys.get(*next).cloned();
                if item.is_some() {
                    *next += 1;
                }
                item
            }
            _ => return Err(INVALID_PARAMETER),
        }
    };
    let Some((name, alg)) = next else {
        // A cursor the caller holds stays theirs to free; a brand-new one over no keys is
        // never handed out, so it is dropped here.
        if let Some(s) = new_state {
            let _ = free_buffer(s.addr());
        }
        return Err(Status(NTE_NO_MORE_ITEMS));
    };
    let (_, words) = block(1, &[vec![name.as_str(), alg]], |_, s, image| {
        push_ptr(image, s.first().copied().unwrap_or(0));
        push_ptr(image, s.get(1).copied().unwrap_or(0));
        image.extend_from_slice(&0u32.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
    })?;
    Ok((register(words).cast(), new_state))
}

fn list_keys(p: &Provider) -> KResult<Vec<(String, &'static str)>> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for class in [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY] {
        for obj in p.find(&Template::new().with(Attribute::ulong(CKA_CLASS, class)))? {
            let Some(label) = p.attr(obj, CKA_LABEL)? else {
                continue;
            };
            let Ok(name) = String::from_utf8(label.to_vec()) else {
                continue;
            };
            if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let (private, public) = if class == CKO_PRIVATE_KEY {
                (Some(obj), None)
            } else {
                (None, Some(obj))
            };
            if let Ok(r) = describe(p, Some(name.clone()), private, public) {
                out.push((name, r.alg.name()));
            }
        }
    }
    Ok(out)
}
