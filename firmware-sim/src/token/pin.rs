//! PINs: the token key wrapped under keys derived from the SO and user PINs.
//!
//! A PIN is never stored, not even hashed on its own: the store holds `salt ‖ seal(token key)`
//! under PBKDF2-HMAC-SHA256(PIN, salt, iterations). A PIN is right exactly when that opens.

use aws_lc_rs::hmac;
use bridge::{Error, Result};

use crate::crypto::{self, Secret};

/// Shortest PIN accepted.
pub(crate) const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted.
pub(crate) const MAX_PIN_LEN: usize = 64;
const SALT_LEN: usize = 16;

/// Which PIN a wrap belongs to; bound into the AAD so that one cannot stand in for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    So,
    User,
}

fn aad(role: Role, uuid: &[u8]) -> Vec<u8> {
    let mut a = b"ferrohsm-pin:".to_vec();
    a.extend_from_slice(match role {
        Role::So => b"so:",
        Role::User => b"user:",
    });
    a.extend_from_slice(uuid);
    a
}

/// Checks a new PIN's length: `CKR_PIN_LEN_RANGE` outside 4..=64 bytes.
pub(crate) fn check_new_pin(pin: &[u8]) -> Result<()> {
    if (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len()) {
        Ok(())
    } else {
        Err(Error::PinLenRange)
    }
}

/// `salt ‖ seal(token_key)` under a key derived from `pin`.
pub(crate) fn wrap(
    pin: &[u8],
    token_key: &Secret,
    iterations: u32,
    role: Role,
    uuid: &[u8],
) -> Result<Vec<u8>> {
    let salt = crypto::random_vec(SALT_LEN)?;
    let kek = crypto::pbkdf2_sha256(pin, &salt, iterations)?;
    let mut out = salt;
    out.extend_from_slice(&crypto::seal(&kek, &aad(role, uuid), token_key.expose())?);
    Ok(out)
}

/// The token key, if `pin` is right.
pub(crate) fn unwrap(
    pin: &[u8],
    wrapped: &[u8],
    iterations: u32,
    role: Role,
    uuid: &[u8],
) -> Result<Option<Secret>> {
    if !(MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len()) {
        return Ok(None);
    }
    let (salt, sealed) = wrapped
        .split_at_checked(SALT_LEN)
        .ok_or_else(|| Error::Store("corrupt PIN record".into()))?;
    let kek = crypto::pbkdf2_sha256(pin, salt, iterations)?;
    Ok(crypto::open(&kek, &aad(role, uuid), sealed))
}

/// Proof that a PIN opened a given wrap of the token key, kept only while that login lasts:
/// an HMAC-SHA-256 of the PIN under a random key of its own, and the wrap. The PIN itself is
/// not kept; whoever can read this can read the token key it sits beside.
pub(crate) struct Proof {
    key: hmac::Key,
    tag: Vec<u8>,
    wrap: Vec<u8>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proof")
    }
}

impl Proof {
    /// Proof that `pin` opened `wrap` (just checked by the caller).
    pub(crate) fn new(pin: &[u8], wrap: Vec<u8>) -> Result<Self> {
        let secret = crypto::random_vec(32)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let tag = hmac::sign(&key, pin).as_ref().to_vec();
        Ok(Self { key, tag, wrap })
    }

    /// Whether `pin` is the PIN proved, and `wrap` still the wrap it opened.
    pub(crate) fn proves(&self, pin: &[u8], wrap: &[u8]) -> bool {
        crypto::ct_eq(&self.wrap, wrap) && hmac::verify(&self.key, pin, &self.tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_pin_opens_wrong_pin_and_wrong_role_do_not() {
        let k = Secret::random(32).unwrap();
        let w = wrap(b"1234", &k, 10, Role::User, b"u").unwrap();
        assert_eq!(
            unwrap(b"1234", &w, 10, Role::User, b"u")
                .unwrap()
                .unwrap()
                .expose(),
            k.expose()
        );
        assert!(unwrap(b"1235", &w, 10, Role::User, b"u").unwrap().is_none());
        assert!(unwrap(b"1234", &w, 10, Role::So, b"u").unwrap().is_none());
        assert!(unwrap(b"1234", &w, 10, Role::User, b"v").unwrap().is_none());
        assert!(unwrap(b"12", &w, 10, Role::User, b"u").unwrap().is_none());
    }

    #[test]
    fn pin_length_limits() {
        assert_eq!(check_new_pin(b"123"), Err(Error::PinLenRange));
        assert!(check_new_pin(b"1234").is_ok());
        assert!(check_new_pin(&[b'a'; 64]).is_ok());
        assert_eq!(check_new_pin(&[b'a'; 65]), Err(Error::PinLenRange));
    }

    #[test]
    fn a_proof_holds_for_its_pin_and_wrap_only() {
        let p = Proof::new(b"1234", b"wrap".to_vec()).unwrap();
        assert!(p.proves(b"1234", b"wrap"));
        assert!(!p.proves(b"1235", b"wrap"));
        assert!(!p.proves(b"1234", b"wrap2"));
        assert!(!p.proves(b"12345", b"wrap"));
        assert_eq!(format!("{p:?}"), "Proof");
    }
}
