//! AES: the block modes, GCM and the key-wrap constructions, over aws-lc-rs.
//!
//! One [`AesKey`] holds every expanded form of a key (ECB, CBC, CTR and GCM schedules) and is
//! cached per object (`Material::parsed`), so no operation expands a key again.
//!
//! Where aws-lc-rs offers the whole construction it is used directly: ECB, CBC, CTR, and
//! AES-GCM with a 96-bit IV. Two constructions are assembled here from aws-lc-rs' AES and one
//! RustCrypto primitive, because no provider offers them whole:
//! - AES-GCM with an IV of another length, or a check of a truncated tag: aws-lc-rs seals and
//!   opens only 96-bit nonces with full tags, and RustCrypto `aes-gcm` fixes the nonce size at
//!   compile time. GHASH comes from RustCrypto `ghash`, the counter mode from aws-lc-rs, exactly
//!   as SP 800-38D §7 composes them (J0 from GHASH of the IV, `inc32` counters).
//! - AES key wrap (RFC 3394 W / W⁻¹) with a caller-chosen IV and with AES-192: aws-lc-rs'
//!   `key_wrap` has AES-128/256 and the default IVs only; RustCrypto `aes-kw` has no IV choice.
//!
//! Both are cross-checked against aws-lc-rs, RustCrypto and Wycheproof in the tests.

use aws_lc_rs::aead;
use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, Algorithm, DecryptingKey, DecryptionContext, EncryptingKey,
    EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use bridge::{Error, Result};
use ghash::GHash;
use ghash::universal_hash::{KeyInit, UniversalHash};
use zeroize::{Zeroize, Zeroizing};

use super::ct_eq;

/// The AES block size.
pub(crate) const BLOCK: usize = 16;

/// The RFC 3394 default initial value.
pub(crate) const KW_DEFAULT_IV: [u8; 8] = [0xa6; 8];

/// The RFC 5649 alternative initial value prefix.
pub(crate) const KWP_DEFAULT_PREFIX: [u8; 4] = [0xa6, 0x59, 0x59, 0xa6];

/// Every expanded form of one AES key. Built once per key object and cached.
pub(crate) struct AesKey {
    ecb_enc: EncryptingKey,
    ecb_dec: DecryptingKey,
    cbc_enc: EncryptingKey,
    cbc_dec: DecryptingKey,
    ctr: EncryptingKey,
    gcm: aead::LessSafeKey,
}

fn unbound(alg: &'static Algorithm, key: &[u8]) -> Result<UnboundCipherKey> {
    UnboundCipherKey::new(alg, key).map_err(|_| Error::KeySizeRange)
}

fn iv128(iv: &[u8; BLOCK]) -> FixedLength<BLOCK> {
    FixedLength::from(iv)
}

impl AesKey {
    /// Expands `key` (16, 24 or 32 bytes; `CKR_KEY_SIZE_RANGE` otherwise).
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        let (alg, gcm): (&'static Algorithm, &'static aead::Algorithm) = match key.len() {
            16 => (&AES_128, &aead::AES_128_GCM),
            24 => (&AES_192, &aead::AES_192_GCM),
            32 => (&AES_256, &aead::AES_256_GCM),
            _ => return Err(Error::KeySizeRange),
        };
        let bad = |_| Error::Internal("aes key schedule");
        Ok(Self {
            ecb_enc: EncryptingKey::ecb(unbound(alg, key)?).map_err(bad)?,
            ecb_dec: DecryptingKey::ecb(unbound(alg, key)?).map_err(bad)?,
            cbc_enc: EncryptingKey::cbc(unbound(alg, key)?).map_err(bad)?,
            cbc_dec: DecryptingKey::cbc(unbound(alg, key)?).map_err(bad)?,
            ctr: EncryptingKey::ctr(unbound(alg, key)?).map_err(bad)?,
            gcm: aead::LessSafeKey::new(
                aead::UnboundKey::new(gcm, key).map_err(|_| Error::KeySizeRange)?,
            ),
        })
    }

    /// ECB-encrypts whole blocks in place.
    pub(crate) fn ecb_encrypt(&self, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.ecb_enc
            .less_safe_encrypt(buf, EncryptionContext::None)
            .map(|_| ())
            .map_err(|_| Error::Internal("aes-ecb on a partial block"))
    }

    /// ECB-decrypts whole blocks in place.
    pub(crate) fn ecb_decrypt(&self, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.ecb_dec
            .decrypt(buf, DecryptionContext::None)
            .map(|_| ())
            .map_err(|_| Error::Internal("aes-ecb on a partial block"))
    }

    /// Encrypts one block in place.
    pub(crate) fn encrypt_block(&self, block: &mut [u8; BLOCK]) -> Result<()> {
        self.ecb_encrypt(block)
    }

    /// CBC-encrypts whole blocks in place, chaining from `iv`; `iv` becomes the last
    /// ciphertext block, so the next call continues the chain.
    pub(crate) fn cbc_encrypt(&self, iv: &mut [u8; BLOCK], buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.cbc_enc
            .less_safe_encrypt(buf, EncryptionContext::Iv128(iv128(iv)))
            .map_err(|_| Error::Internal("aes-cbc on a partial block"))?;
        copy_last_block(iv, buf);
        Ok(())
    }

    /// CBC-decrypts whole blocks in place, chaining from `iv`; `iv` becomes the last
    /// ciphertext block of the input.
    pub(crate) fn cbc_decrypt(&self, iv: &mut [u8; BLOCK], buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut next = [0u8; BLOCK];
        copy_last_block(&mut next, buf);
        self.cbc_dec
            .decrypt(buf, DecryptionContext::Iv128(iv128(iv)))
            .map_err(|_| Error::Internal("aes-cbc on a partial block"))?;
        *iv = next;
        Ok(())
    }

    /// XORs `buf` with the CTR key stream starting at counter block `counter`, incrementing
    /// the whole 128-bit block per block (callers keep the counter from wrapping).
    pub(crate) fn ctr_xor(&self, counter: &[u8; BLOCK], buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.ctr
            .less_safe_encrypt(buf, EncryptionContext::Iv128(iv128(counter)))
            .map(|_| ())
            .map_err(|_| Error::Internal("aes-ctr"))
    }

    // ---- GCM --------------------------------------------------------------------------------

    /// AES-GCM encryption: `ciphertext ‖ tag`, the tag truncated to `tag_len` bytes (4..=16).
    pub(crate) fn gcm_seal(
        &self,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        tag_len: usize,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + tag_len);
        out.extend_from_slice(plaintext);
        let tag = self.gcm_seal_in_place(iv, aad, &mut out)?;
        out.extend_from_slice(
            tag.get(..tag_len)
                .ok_or(Error::Internal("gcm tag length"))?,
        );
        Ok(out)
    }

    /// AES-GCM encryption in place; returns the full 16-byte tag.
    pub(crate) fn gcm_seal_in_place(
        &self,
        iv: &[u8],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; BLOCK]> {
        if let Ok(nonce) = aead::Nonce::try_assume_unique_for_key(iv) {
            let tag = self
                .gcm
                .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), buf)
                .map_err(|_| Error::Internal("gcm seal"))?;
            let mut t = [0u8; BLOCK];
            t.copy_from_slice(tag.as_ref());
            return Ok(t);
        }
        let g = self.gcm_parts(iv)?;
        self.gctr(&inc32(&g.j0), buf)?;
        self.gcm_tag(&g, aad, buf)
    }

    /// AES-GCM decryption of `ciphertext` with `tag` (4..=16 bytes, possibly truncated).
    /// `None` when the tag does not verify: the caller reports one code for every failure.
    pub(crate) fn gcm_open(
        &self,
        iv: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        if tag.len() == BLOCK {
            if let Ok(nonce) = aead::Nonce::try_assume_unique_for_key(iv) {
                let ok = self
                    .gcm
                    .open_in_place_separate_tag(nonce, aead::Aad::from(aad), tag, &mut buf)
                    .is_ok();
                return Ok(ok.then_some(buf));
            }
        }
        let g = self.gcm_parts(iv)?;
        let expected = self.gcm_tag(&g, aad, &buf)?;
        if !expected.get(..tag.len()).is_some_and(|t| ct_eq(t, tag)) {
            return Ok(None);
        }
        self.gctr(&inc32(&g.j0), &mut buf)?;
        Ok(Some(buf))
    }

    /// H and J0 for an IV of any length (SP 800-38D §7.1 steps 1-2).
    fn gcm_parts(&self, iv: &[u8]) -> Result<GcmParts> {
        if iv.is_empty() {
            return Err(Error::MechanismParamInvalid);
        }
        let mut h = [0u8; BLOCK];
        self.encrypt_block(&mut h)?;
        let mut j0 = [0u8; BLOCK];
        if iv.len() == 12 {
            j0[..12].copy_from_slice(iv);
            j0[15] = 1;
        } else {
            let mut g = GHash::new(&h.into());
            g.update_padded(iv);
            let bits = u64::try_from(iv.len())
                .ok()
                .and_then(|n| n.checked_mul(8))
                .ok_or(Error::MechanismParamInvalid)?;
            let mut len_block = [0u8; BLOCK];
            len_block[8..].copy_from_slice(&bits.to_be_bytes());
            g.update(&[len_block.into()]);
            j0.copy_from_slice(&g.finalize());
        }
        Ok(GcmParts { h, j0 })
    }

    /// The full tag over `aad` and `ciphertext` (SP 800-38D §7.1 steps 5-6).
    fn gcm_tag(&self, g: &GcmParts, aad: &[u8], ciphertext: &[u8]) -> Result<[u8; BLOCK]> {
        let mut gh = GHash::new(&g.h.into());
        gh.update_padded(aad);
        gh.update_padded(ciphertext);
        let bits = |n: usize| {
            u64::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(8))
                .ok_or(Error::DataLenRange)
        };
        let mut len_block = [0u8; BLOCK];
        len_block[..8].copy_from_slice(&bits(aad.len())?.to_be_bytes());
        len_block[8..].copy_from_slice(&bits(ciphertext.len())?.to_be_bytes());
        gh.update(&[len_block.into()]);
        let s = gh.finalize();
        let mut tag = g.j0;
        self.encrypt_block(&mut tag)?;
        for (t, x) in tag.iter_mut().zip(s.iter()) {
            *t ^= x;
        }
        Ok(tag)
    }

    /// GCTR with `inc32` (only the low 32 bits count), in runs that aws-lc-rs' 128-bit CTR
    /// computes identically because the low word does not wrap inside a run.
    fn gctr(&self, icb: &[u8; BLOCK], buf: &mut [u8]) -> Result<()> {
        let mut cb = *icb;
        let mut rest = buf;
        while !rest.is_empty() {
            let low = low32(&cb);
            let run_blocks = u64::from(u32::MAX - low) + 1;
            let run_bytes = usize::try_from(run_blocks * 16).unwrap_or(usize::MAX);
            let n = rest.len().min(run_bytes);
            let (now, later) = rest.split_at_mut(n);
            self.ctr_xor(&cb, now)?;
            let used = u32::try_from(n.div_ceil(BLOCK)).unwrap_or(u32::MAX);
            set_low32(&mut cb, low.wrapping_add(used));
            rest = later;
        }
        Ok(())
    }

    // ---- key wrap (RFC 3394 / RFC 5649) -------------------------------------------------------

    /// RFC 3394 W: wraps `data` (a multiple of 8 bytes, at least 16) under initial value `iv`.
    pub(crate) fn kw_wrap(&self, iv: &[u8; 8], data: &[u8]) -> Result<Vec<u8>> {
        if data.len() % 8 != 0 || data.len() < 16 {
            return Err(Error::DataLenRange);
        }
        let n = data.len() / 8;
        let mut out = Vec::with_capacity(data.len() + 8);
        out.extend_from_slice(iv);
        out.extend_from_slice(data);
        let mut block = [0u8; BLOCK];
        for j in 0..6u64 {
            for i in 1..=n {
                let (a, r) = out.split_at_mut(8);
                let ri = r
                    .get_mut((i - 1) * 8..i * 8)
                    .ok_or(Error::Internal("kw index"))?;
                block[..8].copy_from_slice(a);
                block[8..].copy_from_slice(ri);
                self.encrypt_block(&mut block)?;
                let t = (n as u64) * j + i as u64;
                a.copy_from_slice(&block[..8]);
                xor_t(a, t);
                ri.copy_from_slice(&block[8..]);
            }
        }
        block.zeroize();
        Ok(out)
    }

    /// RFC 3394 W⁻¹: the recovered initial value and data. The caller compares the initial
    /// value (in constant time) and reports one code for every failure.
    pub(crate) fn kw_unwrap(&self, wrapped: &[u8]) -> Result<([u8; 8], Zeroizing<Vec<u8>>)> {
        if wrapped.len() % 8 != 0 || wrapped.len() < 24 {
            return Err(Error::EncryptedDataLenRange);
        }
        let n = wrapped.len() / 8 - 1;
        let (first, rest) = wrapped
            .split_at_checked(8)
            .ok_or(Error::EncryptedDataLenRange)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(first);
        let mut r = Zeroizing::new(rest.to_vec());
        let mut block = Zeroizing::new([0u8; BLOCK]);
        let b: &mut [u8; BLOCK] = &mut block;
        for j in (0..6u64).rev() {
            for i in (1..=n).rev() {
                let ri = r
                    .get_mut((i - 1) * 8..i * 8)
                    .ok_or(Error::Internal("kw index"))?;
                let t = (n as u64) * j + i as u64;
                xor_t(&mut a, t);
                b[..8].copy_from_slice(&a);
                b[8..].copy_from_slice(ri);
                self.ecb_decrypt(b)?;
                a.copy_from_slice(&b[..8]);
                ri.copy_from_slice(&b[8..]);
            }
        }
        Ok((a, r))
    }

    /// RFC 5649 (KWP): wraps `data` (1 byte or more) under the 4-byte prefix `prefix`.
    pub(crate) fn kwp_wrap(&self, prefix: &[u8; 4], data: &[u8]) -> Result<Vec<u8>> {
        let mli = u32::try_from(data.len()).map_err(|_| Error::DataLenRange)?;
        if data.is_empty() {
            return Err(Error::DataLenRange);
        }
        let mut aiv = [0u8; 8];
        aiv[..4].copy_from_slice(prefix);
        aiv[4..].copy_from_slice(&mli.to_be_bytes());
        let mut padded = Zeroizing::new(data.to_vec());
        padded.resize(data.len().div_ceil(8) * 8, 0);
        if padded.len() == 8 {
            let mut block = [0u8; BLOCK];
            block[..8].copy_from_slice(&aiv);
            block[8..].copy_from_slice(&padded);
            self.encrypt_block(&mut block)?;
            return Ok(block.to_vec());
        }
        self.kw_wrap(&aiv, &padded)
    }

    /// RFC 5649 (KWP) unwrap under `prefix`: `None` for every integrity failure (initial
    /// value, length indicator, padding), decided on one path.
    pub(crate) fn kwp_unwrap(
        &self,
        prefix: &[u8; 4],
        wrapped: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if wrapped.len() % 8 != 0 || wrapped.len() < 16 {
            return Err(Error::EncryptedDataLenRange);
        }
        let (aiv, mut plain) = if wrapped.len() == 16 {
            let mut block = Zeroizing::new([0u8; BLOCK]);
            let b: &mut [u8; BLOCK] = &mut block;
            b.copy_from_slice(wrapped);
            self.ecb_decrypt(b)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            (a, Zeroizing::new(b[8..].to_vec()))
        } else {
            self.kw_unwrap(wrapped)?
        };
        let mli = u32::from_be_bytes([aiv[4], aiv[5], aiv[6], aiv[7]]);
        let mli = usize::try_from(mli).unwrap_or(usize::MAX);
        let len = plain.len();
        let length_ok = mli <= len && mli + 8 > len;
        let pad_ok = plain
            .get(mli.min(len)..)
            .is_some_and(|p| p.iter().fold(0u8, |acc, b| acc | b) == 0);
        let prefix_ok = ct_eq(&aiv[..4], prefix);
        if !(length_ok & pad_ok & prefix_ok) {
            return Ok(None);
        }
        plain.truncate(mli);
        Ok(Some(plain))
    }
}

struct GcmParts {
    h: [u8; BLOCK],
    j0: [u8; BLOCK],
}

impl Drop for GcmParts {
    fn drop(&mut self) {
        self.h.zeroize();
    }
}

impl super::BlockCipher for AesKey {
    fn block_len(&self) -> usize {
        BLOCK
    }

    fn ecb_encrypt(&self, buf: &mut [u8]) -> Result<()> {
        AesKey::ecb_encrypt(self, buf)
    }

    fn ecb_decrypt(&self, buf: &mut [u8]) -> Result<()> {
        AesKey::ecb_decrypt(self, buf)
    }

    fn cbc_encrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()> {
        let chain: &mut [u8; BLOCK] = iv.try_into().map_err(|_| Error::Internal("iv"))?;
        AesKey::cbc_encrypt(self, chain, buf)
    }

    fn cbc_decrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()> {
        let chain: &mut [u8; BLOCK] = iv.try_into().map_err(|_| Error::Internal("iv"))?;
        AesKey::cbc_decrypt(self, chain, buf)
    }
}

fn copy_last_block(dst: &mut [u8; BLOCK], buf: &[u8]) {
    if let Some(last) = buf.len().checked_sub(BLOCK).and_then(|s| buf.get(s..)) {
        dst.copy_from_slice(last);
    }
}

fn low32(b: &[u8; BLOCK]) -> u32 {
    u32::from_be_bytes([b[12], b[13], b[14], b[15]])
}

fn set_low32(b: &mut [u8; BLOCK], v: u32) {
    b[12..].copy_from_slice(&v.to_be_bytes());
}

/// `inc32` (SP 800-38D §6.2).
fn inc32(b: &[u8; BLOCK]) -> [u8; BLOCK] {
    let mut out = *b;
    set_low32(&mut out, low32(b).wrapping_add(1));
    out
}

fn xor_t(a: &mut [u8], t: u64) {
    for (x, y) in a.iter_mut().zip(t.to_be_bytes()) {
        *x ^= y;
    }
}

/// Adds `n` to a big-endian 128-bit counter block (wrapping).
pub(crate) fn add_to_block(b: &[u8; BLOCK], n: u128) -> [u8; BLOCK] {
    u128::from_be_bytes(*b).wrapping_add(n).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc3394_and_rfc5649_vectors() {
        // RFC 3394 §4.1: 128-bit KEK, 128-bit key data.
        let k = AesKey::new(&hex("000102030405060708090A0B0C0D0E0F")).unwrap();
        let w = k
            .kw_wrap(&KW_DEFAULT_IV, &hex("00112233445566778899AABBCCDDEEFF"))
            .unwrap();
        assert_eq!(w, hex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"));
        let (a, p) = k.kw_unwrap(&w).unwrap();
        assert_eq!(a, KW_DEFAULT_IV);
        assert_eq!(&p[..], &hex("00112233445566778899AABBCCDDEEFF")[..]);
        // RFC 5649 §6: 192-bit KEK, 20 and 7 bytes.
        let k = AesKey::new(&hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")).unwrap();
        let w = k
            .kwp_wrap(
                &KWP_DEFAULT_PREFIX,
                &hex("c37b7e6492584340bed12207808941155068f738"),
            )
            .unwrap();
        assert_eq!(
            w,
            hex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a")
        );
        let w = k
            .kwp_wrap(&KWP_DEFAULT_PREFIX, &hex("466f7250617369"))
            .unwrap();
        assert_eq!(w, hex("afbeb0f07dfbf5419200f2ccb50bb24f"));
        let p = k.kwp_unwrap(&KWP_DEFAULT_PREFIX, &w).unwrap().unwrap();
        assert_eq!(&p[..], &hex("466f7250617369")[..]);
        let mut bad = w.clone();
        bad[3] ^= 1;
        assert!(k.kwp_unwrap(&KWP_DEFAULT_PREFIX, &bad).unwrap().is_none());
    }

    #[test]
    fn own_key_wrap_equals_aws_lc_key_wrap() {
        use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrap, KeyWrapPadded};
        for (len, alg) in [(16, &AES_128), (32, &AES_256)] {
            let kek = vec![0x42u8; len];
            let k = AesKey::new(&kek).unwrap();
            for n in [1usize, 7, 8, 16, 20, 32, 45] {
                let data: Vec<u8> = (0..n).map(|i| u8::try_from(i & 0xff).unwrap()).collect();
                let lc = AesKek::new(alg, &kek).unwrap();
                let mut out = vec![0u8; n + 16];
                let want = lc.wrap_with_padding(&data, &mut out).unwrap().to_vec();
                assert_eq!(k.kwp_wrap(&KWP_DEFAULT_PREFIX, &data).unwrap(), want);
                if n % 8 == 0 && n >= 16 {
                    let lc = AesKek::new(alg, &kek).unwrap();
                    let mut out = vec![0u8; n + 8];
                    let want = lc.wrap(&data, &mut out).unwrap().to_vec();
                    assert_eq!(k.kw_wrap(&KW_DEFAULT_IV, &data).unwrap(), want);
                }
            }
        }
    }

    #[test]
    fn gcm_composed_path_equals_aws_lc_for_96_bit_ivs() {
        let k = AesKey::new(&[7u8; 32]).unwrap();
        let iv = [9u8; 12];
        for n in [0usize, 1, 15, 16, 17, 100] {
            let pt: Vec<u8> = (0..n)
                .map(|i| u8::try_from((i * 3) & 0xff).unwrap())
                .collect();
            let lc = k.gcm_seal(&iv, b"aad", &pt, 16).unwrap();
            let g = k.gcm_parts(&iv).unwrap();
            let mut buf = pt.clone();
            k.gctr(&inc32(&g.j0), &mut buf).unwrap();
            let tag = k.gcm_tag(&g, b"aad", &buf).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(buf, lc);
            // Truncated tags go through the composed check.
            let (ct, t) = lc.split_at(n);
            let p = k.gcm_open(&iv, b"aad", ct, &t[..12]).unwrap().unwrap();
            assert_eq!(&p[..], &pt[..]);
            assert!(k.gcm_open(&iv, b"aaD", ct, &t[..12]).unwrap().is_none());
        }
    }

    #[test]
    fn gctr_wraps_only_the_low_word() {
        let k = AesKey::new(&[1u8; 16]).unwrap();
        let mut icb = [0xffu8; 16];
        set_low32(&mut icb, u32::MAX - 1);
        let mut buf = vec![0u8; 64];
        k.gctr(&icb, &mut buf).unwrap();
        // Block by block with inc32.
        let mut cb = icb;
        let mut want = Vec::new();
        for _ in 0..4 {
            let mut b = cb;
            k.encrypt_block(&mut b).unwrap();
            want.extend_from_slice(&b);
            cb = inc32(&cb);
        }
        assert_eq!(buf, want);
    }
}
