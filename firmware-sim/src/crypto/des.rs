//! Triple DES (legacy), over RustCrypto `des`: EDE with three keys (`CKK_DES3`, 24 bytes) or
//! two (`CKK_DES2`, 16 bytes, run as K1 K2 K1), the ECB and CBC modes, and the key rules of
//! FIPS 46-3 / SP 800-67: odd parity per byte, no weak or semi-weak component.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use bridge::{Error, Result};
use des::TdesEde3;
use des::cipher::generic_array::GenericArray;
use zeroize::Zeroizing;

use super::BlockCipher;

/// The DES block size.
pub(crate) const DES_BLOCK: usize = 8;

/// The weak and semi-weak DES keys (SP 800-67 Rev. 2 §3.3.2), with odd parity.
const WEAK: [[u8; 8]; 16] = [
    [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
    [0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe],
    [0xe0, 0xe0, 0xe0, 0xe0, 0xf1, 0xf1, 0xf1, 0xf1],
    [0x1f, 0x1f, 0x1f, 0x1f, 0x0e, 0x0e, 0x0e, 0x0e],
    [0x01, 0xfe, 0x01, 0xfe, 0x01, 0xfe, 0x01, 0xfe],
    [0xfe, 0x01, 0xfe, 0x01, 0xfe, 0x01, 0xfe, 0x01],
    [0x1f, 0xe0, 0x1f, 0xe0, 0x0e, 0xf1, 0x0e, 0xf1],
    [0xe0, 0x1f, 0xe0, 0x1f, 0xf1, 0x0e, 0xf1, 0x0e],
    [0x01, 0xe0, 0x01, 0xe0, 0x01, 0xf1, 0x01, 0xf1],
    [0xe0, 0x01, 0xe0, 0x01, 0xf1, 0x01, 0xf1, 0x01],
    [0x1f, 0xfe, 0x1f, 0xfe, 0x0e, 0xfe, 0x0e, 0xfe],
    [0xfe, 0x1f, 0xfe, 0x1f, 0xfe, 0x0e, 0xfe, 0x0e],
    [0x01, 0x1f, 0x01, 0x1f, 0x01, 0x0e, 0x01, 0x0e],
    [0x1f, 0x01, 0x1f, 0x01, 0x0e, 0x01, 0x0e, 0x01],
    [0xe0, 0xfe, 0xe0, 0xfe, 0xf1, 0xfe, 0xf1, 0xfe],
    [0xfe, 0xe0, 0xfe, 0xe0, 0xfe, 0xf1, 0xfe, 0xf1],
];

/// Sets each byte's low bit so that it has an odd number of ones.
pub(crate) fn set_odd_parity(key: &mut [u8]) {
    for b in key {
        let high = *b & 0xfe;
        *b = high | u8::from(high.count_ones() % 2 == 0);
    }
}

/// Whether every byte has odd parity.
pub(crate) fn has_odd_parity(key: &[u8]) -> bool {
    key.iter().all(|b| b.count_ones() % 2 == 1)
}

/// Whether a triple-DES key (16 or 24 bytes, odd parity) is fit to use: no weak or semi-weak
/// component, and no two adjacent components equal (which would collapse EDE to single DES).
pub(crate) fn is_strong(key: &[u8]) -> bool {
    let parts: Vec<&[u8]> = key.chunks(DES_BLOCK).collect();
    let weak = parts.iter().any(|p| WEAK.iter().any(|w| w == p));
    let degenerate = parts.windows(2).any(|w| w.first() == w.get(1));
    !weak && !degenerate
}

/// An expanded triple-DES key. Built once per key object and cached.
pub(crate) struct Des3Key(TdesEde3);

impl Des3Key {
    /// Expands a 16-byte (K1 K2, run as K1 K2 K1) or 24-byte key; `CKR_KEY_SIZE_RANGE`
    /// otherwise.
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        let full = match key.len() {
            24 => Zeroizing::new(key.to_vec()),
            16 => Zeroizing::new([key, key.get(..8).unwrap_or_default()].concat()),
            _ => return Err(Error::KeySizeRange),
        };
        TdesEde3::new_from_slice(&full)
            .map(Self)
            .map_err(|_| Error::KeySizeRange)
    }
}

impl BlockCipher for Des3Key {
    fn block_len(&self) -> usize {
        DES_BLOCK
    }

    fn ecb_encrypt(&self, buf: &mut [u8]) -> Result<()> {
        whole_blocks(buf)?;
        for b in buf.chunks_exact_mut(DES_BLOCK) {
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
        }
        Ok(())
    }

    fn ecb_decrypt(&self, buf: &mut [u8]) -> Result<()> {
        whole_blocks(buf)?;
        for b in buf.chunks_exact_mut(DES_BLOCK) {
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
        }
        Ok(())
    }

    fn cbc_encrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()> {
        whole_blocks(buf)?;
        let mut chain = <[u8; DES_BLOCK]>::try_from(&*iv).map_err(|_| Error::Internal("iv"))?;
        for b in buf.chunks_exact_mut(DES_BLOCK) {
            b.iter_mut().zip(chain).for_each(|(x, c)| *x ^= c);
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
            chain.copy_from_slice(b);
        }
        iv.copy_from_slice(&chain);
        Ok(())
    }

    fn cbc_decrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()> {
        whole_blocks(buf)?;
        let mut chain = <[u8; DES_BLOCK]>::try_from(&*iv).map_err(|_| Error::Internal("iv"))?;
        for b in buf.chunks_exact_mut(DES_BLOCK) {
            let next = <[u8; DES_BLOCK]>::try_from(&*b).map_err(|_| Error::Internal("block"))?;
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
            b.iter_mut().zip(chain).for_each(|(x, c)| *x ^= c);
            chain = next;
        }
        iv.copy_from_slice(&chain);
        Ok(())
    }
}

fn whole_blocks(buf: &[u8]) -> Result<()> {
    if buf.len() % DES_BLOCK == 0 {
        Ok(())
    } else {
        Err(Error::Internal("des on a partial block"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_and_weak_keys() {
        let mut k = [0u8; 24];
        set_odd_parity(&mut k);
        assert!(has_odd_parity(&k));
        assert_eq!(k[0], 0x01);
        for w in WEAK {
            assert!(has_odd_parity(&w));
        }
        // 0x01.. is weak; K1 = K2 collapses to single DES.
        assert!(!is_strong(&k));
        let mut good: Vec<u8> = (0u8..24)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        set_odd_parity(&mut good);
        assert!(is_strong(&good));
        let same = [&good[..8], &good[..8], &good[16..]].concat();
        assert!(!is_strong(&same));
    }
}
