//! The AEADs besides AES-GCM: AES-CCM (RustCrypto `ccm` over RustCrypto `aes`: aws-lc-rs has
//! no CCM) and ChaCha20-Poly1305 (aws-lc-rs, RFC 8439).
//!
//! Both seal to `ciphertext ‖ tag`; opening answers `None` for anything that does not
//! authenticate, one outcome on one path, and leaves no plaintext behind when it fails.

use aes::cipher::{BlockCipher, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use aws_lc_rs::aead;
use bridge::{Error, Result};
use ccm::aead::AeadInPlace;
use ccm::aead::generic_array::{ArrayLength, GenericArray};
use ccm::consts::{U4, U6, U7, U8, U9, U10, U11, U12, U13, U14, U16};
use ccm::{Ccm, NonceSize, TagSize};
use zeroize::Zeroizing;

use super::Secret;

/// CCM nonce lengths in bytes (SP 800-38C: 7 to 13).
pub(crate) const CCM_NONCE_LENS: std::ops::RangeInclusive<usize> = 7..=13;

/// Whether `n` is a CCM tag length in bytes (SP 800-38C: 4, 6, ..., 16).
pub(crate) fn ccm_tag_len_ok(n: usize) -> bool {
    matches!(n, 4 | 6 | 8 | 10 | 12 | 14 | 16)
}

/// The longest CCM payload for a nonce of `nonce_len` bytes: the length field has
/// `15 - nonce_len` bytes.
pub(crate) fn ccm_max_len(nonce_len: usize) -> u64 {
    match 15usize.saturating_sub(nonce_len) {
        l @ 0..8 => (1u64 << (8 * l)) - 1,
        _ => u64::MAX,
    }
}

/// One CCM operation on `buf` in place: sealing returns the tag, opening checks `tag`.
#[derive(Clone, Copy)]
enum CcmIo<'a> {
    Seal,
    Open(&'a [u8]),
}

/// The AES block cipher CCM runs over.
trait CcmCipher: BlockCipher + BlockSizeUser<BlockSize = U16> + BlockEncrypt {}
impl<C: BlockCipher + BlockSizeUser<BlockSize = U16> + BlockEncrypt> CcmCipher for C {}

fn ccm_run<C, M, N>(
    cipher: C,
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    io: CcmIo<'_>,
) -> Option<Vec<u8>>
where
    C: CcmCipher,
    M: ArrayLength<u8> + TagSize,
    N: ArrayLength<u8> + NonceSize,
{
    let ccm = Ccm::<C, M, N>::from(cipher);
    let nonce = GenericArray::<u8, N>::from_exact_iter(nonce.iter().copied())?;
    match io {
        CcmIo::Seal => ccm
            .encrypt_in_place_detached(&nonce, aad, buf)
            .ok()
            .map(|t| t.to_vec()),
        CcmIo::Open(tag) => {
            let tag = GenericArray::<u8, M>::from_exact_iter(tag.iter().copied())?;
            ccm.decrypt_in_place_detached(&nonce, aad, buf, &tag)
                .ok()
                .map(|()| Vec::new())
        }
    }
}

fn ccm_by_nonce<C: CcmCipher, M: ArrayLength<u8> + TagSize>(
    cipher: C,
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    io: CcmIo<'_>,
) -> Option<Vec<u8>> {
    match nonce.len() {
        7 => ccm_run::<C, M, U7>(cipher, nonce, aad, buf, io),
        8 => ccm_run::<C, M, U8>(cipher, nonce, aad, buf, io),
        9 => ccm_run::<C, M, U9>(cipher, nonce, aad, buf, io),
        10 => ccm_run::<C, M, U10>(cipher, nonce, aad, buf, io),
        11 => ccm_run::<C, M, U11>(cipher, nonce, aad, buf, io),
        12 => ccm_run::<C, M, U12>(cipher, nonce, aad, buf, io),
        13 => ccm_run::<C, M, U13>(cipher, nonce, aad, buf, io),
        _ => None,
    }
}

fn ccm_by_tag<C: CcmCipher>(
    cipher: C,
    tag_len: usize,
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    io: CcmIo<'_>,
) -> Option<Vec<u8>> {
    match tag_len {
        4 => ccm_by_nonce::<C, U4>(cipher, nonce, aad, buf, io),
        6 => ccm_by_nonce::<C, U6>(cipher, nonce, aad, buf, io),
        8 => ccm_by_nonce::<C, U8>(cipher, nonce, aad, buf, io),
        10 => ccm_by_nonce::<C, U10>(cipher, nonce, aad, buf, io),
        12 => ccm_by_nonce::<C, U12>(cipher, nonce, aad, buf, io),
        14 => ccm_by_nonce::<C, U14>(cipher, nonce, aad, buf, io),
        16 => ccm_by_nonce::<C, U16>(cipher, nonce, aad, buf, io),
        _ => None,
    }
}

fn ccm(
    key: &Secret,
    tag_len: usize,
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    io: CcmIo<'_>,
) -> Result<Option<Vec<u8>>> {
    let k = key.expose();
    let bad = |_| Error::KeySizeRange;
    Ok(match k.len() {
        16 => ccm_by_tag(
            Aes128::new_from_slice(k).map_err(bad)?,
            tag_len,
            nonce,
            aad,
            buf,
            io,
        ),
        24 => ccm_by_tag(
            Aes192::new_from_slice(k).map_err(bad)?,
            tag_len,
            nonce,
            aad,
            buf,
            io,
        ),
        32 => ccm_by_tag(
            Aes256::new_from_slice(k).map_err(bad)?,
            tag_len,
            nonce,
            aad,
            buf,
            io,
        ),
        _ => return Err(Error::KeySizeRange),
    })
}

/// AES-CCM: `ciphertext ‖ tag`. The nonce and tag lengths must already be checked
/// ([`CCM_NONCE_LENS`], [`ccm_tag_len_ok`]) and the payload no longer than [`ccm_max_len`].
pub(crate) fn ccm_seal(
    key: &Secret,
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    tag_len: usize,
) -> Result<Vec<u8>> {
    let mut buf = plaintext.to_vec();
    let tag = ccm(key, tag_len, nonce, aad, &mut buf, CcmIo::Seal)?
        .ok_or(Error::Internal("ccm parameters"))?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

/// Opens AES-CCM `ciphertext` with `tag`; `None` if it does not authenticate.
pub(crate) fn ccm_open(
    key: &Secret,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    Ok(ccm(key, tag.len(), nonce, aad, &mut buf, CcmIo::Open(tag))?.map(|_| buf))
}

/// The ChaCha20-Poly1305 key, nonce and tag sizes in bytes (RFC 8439).
pub(crate) const CHACHA20_KEY_LEN: usize = 32;
/// See [`CHACHA20_KEY_LEN`].
pub(crate) const CHACHA20_POLY1305_NONCE_LEN: usize = 12;
/// See [`CHACHA20_KEY_LEN`].
pub(crate) const POLY1305_TAG_LEN: usize = 16;

fn chacha_key(key: &Secret) -> Result<aead::LessSafeKey> {
    aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key.expose())
        .map(aead::LessSafeKey::new)
        .map_err(|_| Error::KeySizeRange)
}

fn chacha_nonce(nonce: &[u8]) -> Result<aead::Nonce> {
    aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::MechanismParamInvalid)
}

/// ChaCha20-Poly1305 (RFC 8439): `ciphertext ‖ tag`.
pub(crate) fn chacha20_poly1305_seal(
    key: &Secret,
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let mut buf = plaintext.to_vec();
    chacha_key(key)?
        .seal_in_place_append_tag(chacha_nonce(nonce)?, aead::Aad::from(aad), &mut buf)
        .map_err(|_| Error::DataLenRange)?;
    Ok(buf)
}

/// Opens ChaCha20-Poly1305 `ciphertext` with `tag`; `None` if it does not authenticate.
pub(crate) fn chacha20_poly1305_open(
    key: &Secret,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let key = chacha_key(key)?;
    let nonce = chacha_nonce(nonce)?;
    let mut buf = Zeroizing::new([ciphertext, tag].concat());
    let Ok(plain) = key.open_in_place(nonce, aead::Aad::from(aad), &mut buf) else {
        return Ok(None);
    };
    let n = plain.len();
    buf.truncate(n);
    Ok(Some(buf))
}
