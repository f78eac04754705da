//! Sessions and their operation state.
//!
//! A session has at most one active operation of each kind. The output rules of PKCS#11
//! (length query, `CKR_BUFFER_TOO_SMALL`, termination) are implemented once, in `deliver`.

use std::sync::Arc;

use bridge::personality::{Profile, enforce};
use bridge::{Error, Result};
use cryptoki_sys::*;

use crate::mechanism::{CipherOp, DigestOp, MessageCipherOp, Output, SignOp, VerifyOp};
use crate::object::Object;

/// Whether a key's use still needs the `CKU_CONTEXT_SPECIFIC` login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// The key does not ask for it.
    NotNeeded,
    /// `CKA_ALWAYS_AUTHENTICATE` and no login yet.
    Needed,
    /// Re-authenticated for this operation.
    Done,
}

/// An active operation.
pub(crate) struct Active<T: ?Sized> {
    pub(crate) op: Box<T>,
    /// The key, kept alive for the operation.
    #[allow(dead_code)] // held, never read
    pub(crate) key: Option<Arc<Object>>,
    pub(crate) auth: Auth,
    /// Output produced for a call whose buffer was too short, handed out on the retry.
    pub(crate) pending: Option<Output>,
    /// A multi-part call has been made (single-part calls are then refused).
    pub(crate) multi: bool,
    /// The personality whose per-mechanism rules (single-part only, data limits) apply, and
    /// the mechanism; `None` where the personality has none for it.
    pub(crate) rules: Option<(&'static Profile, CK_MECHANISM_TYPE)>,
}

impl<T: ?Sized> Active<T> {
    pub(crate) fn new(op: Box<T>, key: Option<Arc<Object>>) -> Self {
        let auth = match &key {
            Some(k) if k.is(CKA_ALWAYS_AUTHENTICATE) => Auth::Needed,
            _ => Auth::NotNeeded,
        };
        Self {
            op,
            key,
            auth,
            pending: None,
            multi: false,
            rules: None,
        }
    }

    /// Puts the operation under `profile`'s rules for `mech`, if it has any.
    pub(crate) fn under(mut self, profile: &'static Profile, mech: CK_MECHANISM_TYPE) -> Self {
        if profile.mechanism(mech).is_some() {
            self.rules = Some((profile, mech));
        }
        self
    }

    /// The personality's word on a multi-part call.
    pub(crate) fn may_continue(&self) -> Result<()> {
        match self.rules {
            Some((profile, mech)) => enforce(profile.judge_multi_part(mech)),
            None => Ok(()),
        }
    }

    /// The personality's word on a single-part call carrying `len` bytes.
    pub(crate) fn may_take(&self, len: usize, decrypt: bool) -> Result<()> {
        match self.rules {
            Some((profile, mech)) => enforce(profile.judge_data_len(mech, len, decrypt)),
            None => Ok(()),
        }
    }

    /// `CKR_USER_NOT_LOGGED_IN` while a re-authentication is owed.
    pub(crate) fn check_auth(&self) -> Result<()> {
        if self.auth == Auth::Needed {
            Err(Error::UserNotLoggedIn)
        } else {
            Ok(())
        }
    }
}

/// A message-based signing or verification process (`C_MessageSignInit` ..
/// `C_MessageSignFinal`): the mechanism and key it was initialized with, and the message in
/// progress, whose operation is made afresh for each message.
pub(crate) struct MessageMac<T: ?Sized> {
    pub(crate) mech: bridge::Mechanism,
    pub(crate) key: Arc<Object>,
    pub(crate) auth: Auth,
    pub(crate) current: Option<Box<T>>,
}

impl<T: ?Sized> MessageMac<T> {
    pub(crate) fn new(mech: bridge::Mechanism, key: Arc<Object>) -> Self {
        let auth = if key.is(CKA_ALWAYS_AUTHENTICATE) {
            Auth::Needed
        } else {
            Auth::NotNeeded
        };
        Self {
            mech,
            key,
            auth,
            current: None,
        }
    }

    /// `CKR_USER_NOT_LOGGED_IN` while a re-authentication is owed.
    pub(crate) fn check_auth(&self) -> Result<()> {
        if self.auth == Auth::Needed {
            Err(Error::UserNotLoggedIn)
        } else {
            Ok(())
        }
    }

    /// Ends the message in progress (signed, verified or failed); the process stays. Each
    /// message is one use of the key: a `CKA_ALWAYS_AUTHENTICATE` key's authenticated state
    /// "lasts until the cryptographic operation has successfully or unsuccessfully been
    /// completed" (PKCS#11, "Private key objects"), so the next message needs the PIN again.
    pub(crate) fn end_message(&mut self) {
        self.current = None;
        if self.auth == Auth::Done {
            self.auth = Auth::Needed;
        }
    }
}

/// A search in progress.
pub(crate) struct Find {
    pub(crate) handles: Vec<CK_OBJECT_HANDLE>,
    pub(crate) pos: usize,
}

/// One session.
pub(crate) struct Session {
    pub(crate) handle: CK_SESSION_HANDLE,
    /// Index of the token (slot) in the device.
    pub(crate) slot: CK_SLOT_ID,
    pub(crate) rw: bool,
    pub(crate) find: Option<Find>,
    pub(crate) digest: Option<Active<dyn DigestOp>>,
    pub(crate) encrypt: Option<Active<dyn CipherOp>>,
    pub(crate) decrypt: Option<Active<dyn CipherOp>>,
    pub(crate) sign: Option<Active<dyn SignOp>>,
    pub(crate) verify: Option<Active<dyn VerifyOp>>,
    /// Message-based encryption (`C_MessageEncryptInit` .. `C_MessageEncryptFinal`).
    pub(crate) msg_encrypt: Option<Active<dyn MessageCipherOp>>,
    /// Message-based decryption.
    pub(crate) msg_decrypt: Option<Active<dyn MessageCipherOp>>,
    /// Message-based signing (`C_MessageSignInit` .. `C_MessageSignFinal`).
    pub(crate) msg_sign: Option<MessageMac<dyn SignOp>>,
    /// Message-based verification.
    pub(crate) msg_verify: Option<MessageMac<dyn VerifyOp>>,
}

impl Session {
    pub(crate) fn new(handle: CK_SESSION_HANDLE, slot: CK_SLOT_ID, rw: bool) -> Self {
        Self {
            handle,
            slot,
            rw,
            find: None,
            digest: None,
            encrypt: None,
            decrypt: None,
            sign: None,
            verify: None,
            msg_encrypt: None,
            msg_decrypt: None,
            msg_sign: None,
            msg_verify: None,
        }
    }

    /// Cancels every operation (`C_SessionCancel` with all flags, logout of a token).
    #[allow(dead_code)] // not used yet
    pub(crate) fn cancel_all(&mut self) {
        self.find = None;
        self.digest = None;
        self.encrypt = None;
        self.decrypt = None;
        self.sign = None;
        self.verify = None;
        self.msg_encrypt = None;
        self.msg_decrypt = None;
        self.msg_sign = None;
        self.msg_verify = None;
    }

    /// The operation waiting for a `CKU_CONTEXT_SPECIFIC` login, if any.
    pub(crate) fn auth_slot(&mut self) -> Option<&mut Auth> {
        let slots = [
            self.sign.as_mut().map(|a| &mut a.auth),
            self.decrypt.as_mut().map(|a| &mut a.auth),
            self.encrypt.as_mut().map(|a| &mut a.auth),
            self.verify.as_mut().map(|a| &mut a.auth),
            self.msg_encrypt.as_mut().map(|a| &mut a.auth),
            self.msg_decrypt.as_mut().map(|a| &mut a.auth),
            self.msg_sign.as_mut().map(|a| &mut a.auth),
            self.msg_verify.as_mut().map(|a| &mut a.auth),
        ];
        // One still waiting for its login first (a regular and a message-based operation on
        // such keys may both be active), else one already authenticated.
        let mut waiting = slots
            .into_iter()
            .flatten()
            .filter(|a| **a != Auth::NotNeeded);
        let first = waiting.next()?;
        if *first == Auth::Needed {
            return Some(first);
        }
        waiting.find(|a| **a == Auth::Needed).or(Some(first))
    }
}

/// Hands out an operation's output under the PKCS#11 buffer rules, running `produce` at most
/// once per call.
///
/// - a pending output (from a call whose buffer was short) is delivered first;
/// - `out == None` is a length query: `bound` is returned and nothing runs;
/// - otherwise `produce` runs; if its output does not fit, it is kept as pending and
///   `CKR_BUFFER_TOO_SMALL` carries its exact length.
///
/// Returns the length and whether the caller may consider the call "delivered" (which ends
/// single-part operations).
pub(crate) fn deliver(
    pending: &mut Option<Output>,
    out: Option<&mut [u8]>,
    bound: impl FnOnce() -> usize,
    produce: impl FnOnce() -> Result<Output>,
) -> Result<(usize, bool)> {
    let Some(buf) = out else {
        let n = match pending {
            Some(p) => p.len(),
            None => bound(),
        };
        return Ok((n, false));
    };
    let result = match pending.take() {
        Some(p) => p,
        None => produce()?,
    };
    match buf.get_mut(..result.len()) {
        Some(dst) => {
            dst.copy_from_slice(&result);
            Ok((result.len(), true))
        }
        None => {
            let needed = result.len();
            *pending = Some(result);
            Err(Error::BufferTooSmall { needed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn deliver_follows_the_buffer_rules() {
        let mut pending = None;
        let mut runs = 0;
        // Length query: nothing runs.
        assert_eq!(
            deliver(&mut pending, None, || 8, || unreachable!()).unwrap(),
            (8, false)
        );
        // Too small: runs once, keeps the output.
        let mut small = [0u8; 2];
        let e = deliver(
            &mut pending,
            Some(&mut small),
            || 8,
            || {
                runs += 1;
                Ok(Zeroizing::new(vec![1, 2, 3]))
            },
        );
        assert_eq!(e, Err(Error::BufferTooSmall { needed: 3 }));
        // Length query now reports the exact pending length.
        assert_eq!(
            deliver(&mut pending, None, || 8, || unreachable!()).unwrap(),
            (3, false)
        );
        // Retry: delivered without running again.
        let mut big = [0u8; 8];
        assert_eq!(
            deliver(&mut pending, Some(&mut big), || 8, || unreachable!()).unwrap(),
            (3, true)
        );
        assert_eq!(&big[..3], &[1, 2, 3]);
        assert_eq!(runs, 1);
        assert!(pending.is_none());
    }
}
