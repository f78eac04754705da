//! Encryption, decryption and digests ("Encryption", "Decryption", "Message digesting"
//! functions).

use bridge::call::*;
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl CipherFunctions for Device {
    // ---- encryption ---------------------------------------------------------------------

    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.encrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            if let MechanismParams::Gcm { iv, .. } = &mech.params {
                enforce(
                    token
                        .profile()
                        .judge_iv(mech.ty, iv.iter().all(|b| *b == 0)),
                )?;
            }
            let op = Self::key_op(token, &obj, mech, CKF_ENCRYPT, CKA_ENCRYPT, |m, k| {
                m.encrypt_init(k, &mech.params)
            })?;
            s.encrypt = Some(Active::new(op, Some(obj)).under(token.profile(), mech.ty));
            Ok(())
        })
    }

    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            limit_one_shot(&mut s.encrypt, data.len(), false)?;
            cipher_one_shot(&mut s.encrypt, data, out)
        })
    }

    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_update(&mut s.encrypt, data, out))
    }

    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| cipher_final(&mut s.encrypt, out))
    }

    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.decrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_DECRYPT, CKA_DECRYPT, |m, k| {
                m.decrypt_init(k, &mech.params)
            })?;
            s.decrypt = Some(Active::new(op, Some(obj)).under(token.profile(), mech.ty));
            Ok(())
        })
    }

    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            limit_one_shot(&mut s.decrypt, data.len(), true)?;
            cipher_one_shot(&mut s.decrypt, data, out)
        })
    }

    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_update(&mut s.decrypt, data, out))
    }

    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| cipher_final(&mut s.decrypt, out))
    }
}

impl DigestFunctions for Device {
    // ---- digests ------------------------------------------------------------------------

    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.digest.is_some() {
                return Err(Error::OperationActive);
            }
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_DIGEST)?;
            s.digest = Some(Active::new(m.digest_init(&mech.params)?, None));
            Ok(())
        })
    }

    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let len = a.op.len();
            let r = deliver(
                &mut a.pending,
                out,
                || len,
                || {
                    a.op.update(data)?;
                    a.op.finish()
                },
            );
            settle(&mut s.digest, &r);
            r.map(|(n, _)| n)
        })
    }

    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            a.multi = true;
            let r = a.op.update(data);
            end_on_error(&mut s.digest, &r);
            r
        })
    }

    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = (|| {
                let obj = Self::key_object(token, key)?;
                // Only secret keys whose value could be read anyway: a digest of a sensitive
                // key would be an oracle on it.
                if obj.class() != CKO_SECRET_KEY || !obj.may_reveal(CKA_VALUE) {
                    return Err(Error::KeyIndigestible);
                }
                token.with_secrets(&obj, |sec| {
                    let v = sec.get(CKA_VALUE).ok_or(Error::KeyIndigestible)?;
                    a.op.update(v.expose())
                })
            })();
            a.multi = true;
            end_on_error(&mut s.digest, &r);
            r
        })
    }

    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            let len = a.op.len();
            let r = deliver(&mut a.pending, out, || len, || a.op.finish());
            settle(&mut s.digest, &r);
            r.map(|(n, _)| n)
        })
    }
}

impl DualFunctions for Device {}

/// `C_Encrypt`/`C_Decrypt`.
fn cipher_one_shot(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.multi {
        return Err(Error::OperationActive);
    }
    let r = a.check_auth().and_then(|()| {
        let bound = a.op.output_len(data.len(), true);
        deliver(&mut a.pending, out, || bound, || a.op.one_shot(data))
    });
    settle(slot, &r);
    r.map(|(n, _)| n)
}

/// `C_EncryptUpdate`/`C_DecryptUpdate`.
fn cipher_update(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    let r = a.check_auth().and_then(|()| {
        if !a.op.multi_part() {
            return Err(Error::FunctionNotSupported);
        }
        a.may_continue()?;
        a.multi = true;
        let bound = a.op.output_len(data.len(), false);
        deliver(&mut a.pending, out, || bound, || a.op.update(data))
    });
    // An update never ends the operation unless it failed.
    match &r {
        Ok(_) | Err(Error::BufferTooSmall { .. }) => {}
        Err(_) => *slot = None,
    }
    r.map(|(n, _)| n)
}

/// A single-part call's input under the personality's data limit; a refusal ends the
/// operation, as any failed single-part call does.
fn limit_one_shot(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    len: usize,
    decrypt: bool,
) -> Result<()> {
    let a = slot.as_ref().ok_or(Error::OperationNotInitialized)?;
    let r = a.may_take(len, decrypt);
    if r.is_err() {
        *slot = None;
    }
    r
}

/// `C_EncryptFinal`/`C_DecryptFinal`.
fn cipher_final(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    let r = a.check_auth().and_then(|()| {
        let bound = a.op.final_len();
        deliver(&mut a.pending, out, || bound, || a.op.finish())
    });
    settle(slot, &r);
    r.map(|(n, _)| n)
}
