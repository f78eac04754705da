//! Shamir secret sharing over GF(256) (the `blahaj` crate, a maintained fork of `sharks`) and
//! the holders' RSA-OAEP keys that shares are sealed to (aws-lc-rs).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use bridge::{Error, Result};
use zeroize::Zeroizing;

use super::{Hash, Secret};

/// Splits `secret` into `count` shares, any `threshold` of which recover it. Each share is
/// `x ‖ y` (one byte of abscissa, then one byte per secret byte), zeroized on drop.
pub(crate) fn split(secret: &Secret, threshold: u8, count: u8) -> Result<Vec<Secret>> {
    if threshold == 0 || count < threshold {
        return Err(Error::Internal("share threshold"));
    }
    let dealer = blahaj::Sharks(threshold).dealer(secret.expose());
    Ok(dealer
        .take(usize::from(count))
        .map(|share| Secret::new(Vec::from(&share)))
        .collect())
}

/// Recovers a secret from at least `threshold` distinct shares. Shamir shares carry no
/// integrity: a wrong share gives a wrong secret, which the caller must detect.
pub(crate) fn combine(threshold: u8, shares: &[Secret]) -> Result<Secret> {
    let parsed = shares
        .iter()
        .map(|s| blahaj::Share::try_from(s.expose()).map_err(|_| Error::Internal("share")))
        .collect::<Result<Vec<_>>>()?;
    blahaj::Sharks(threshold)
        .recover(&parsed)
        .map(Secret::new)
        .map_err(|_| Error::Internal("not enough shares"))
}

/// A holder's RSA public key (SubjectPublicKeyInfo).
pub(crate) struct HolderPublic {
    key: OaepPublicEncryptingKey,
    spki: Vec<u8>,
}

impl HolderPublic {
    /// Parses a DER SubjectPublicKeyInfo of an RSA key (2048 to 8192 bits).
    pub(crate) fn from_spki(der: &[u8]) -> Result<Self> {
        let public = PublicEncryptingKey::from_der(der).map_err(|_| Error::KeyTypeInconsistent)?;
        let spki = public
            .as_der()
            .map_err(|_| Error::Internal("spki"))?
            .as_ref()
            .to_vec();
        let key = OaepPublicEncryptingKey::new(public).map_err(|_| Error::KeyTypeInconsistent)?;
        Ok(Self { key, spki })
    }

    /// SHA-256 of the SubjectPublicKeyInfo.
    pub(crate) fn fingerprint(&self) -> Vec<u8> {
        Hash::Sha256.digest(&self.spki)
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256) of `plaintext` with `label`.
    pub(crate) fn seal(&self, plaintext: &[u8], label: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.key.ciphertext_size()];
        let n = self
            .key
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
            .map_err(|_| Error::Internal("oaep encrypt"))?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

/// A holder's RSA private key.
pub(crate) struct HolderPrivate {
    key: OaepPrivateDecryptingKey,
    fingerprint: Vec<u8>,
}

impl std::fmt::Debug for HolderPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HolderPrivate(..)")
    }
}

impl HolderPrivate {
    /// Parses a PKCS#8 RSA private key.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let private =
            PrivateDecryptingKey::from_pkcs8(der).map_err(|_| Error::KeyTypeInconsistent)?;
        let public = HolderPublic::from_spki(
            private
                .public_key()
                .as_der()
                .map_err(|_| Error::Internal("spki"))?
                .as_ref(),
        )?;
        let key = OaepPrivateDecryptingKey::new(private).map_err(|_| Error::KeyTypeInconsistent)?;
        Ok(Self {
            key,
            fingerprint: public.fingerprint(),
        })
    }

    /// Parses a traditional (PKCS#1 `RSAPrivateKey`) RSA private key: RustCrypto re-encodes it
    /// as PKCS#8 (in zeroized memory), aws-lc-rs does the rest.
    pub(crate) fn from_pkcs1(der: &[u8]) -> Result<Self> {
        use ::rsa::pkcs1::DecodeRsaPrivateKey;
        use ::rsa::pkcs8::EncodePrivateKey;
        let key =
            ::rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(|_| Error::KeyTypeInconsistent)?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|_| Error::Internal("pkcs8 encoding"))?;
        Self::from_pkcs8(pkcs8.as_bytes())
    }

    /// SHA-256 of the public key's SubjectPublicKeyInfo.
    pub(crate) fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// Opens what [`HolderPublic::seal`] produced for this key and `label`.
    pub(crate) fn open(&self, sealed: &[u8], label: &[u8]) -> Option<Secret> {
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let n = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, sealed, &mut out, Some(label))
            .ok()?
            .len();
        out.truncate(n);
        Some(Secret::new(std::mem::take(&mut *out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers_fewer_do_not() {
        let secret = Secret::random(32).unwrap();
        let shares = split(&secret, 2, 3).unwrap();
        assert_eq!(shares.len(), 3);
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let pair = [shares[a].duplicate(), shares[b].duplicate()];
            assert_eq!(combine(2, &pair).unwrap().expose(), secret.expose());
        }
        assert!(combine(2, &[shares[0].duplicate()]).is_err());
        // The same share twice is one share.
        assert!(combine(2, &[shares[1].duplicate(), shares[1].duplicate()]).is_err());
    }
}
