//! Signatures and MACs ("Signing and MACing", "Verifying signatures and MACs"
//! functions).

use bridge::call::*;
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl SignFunctions for Device {
    // ---- signatures ---------------------------------------------------------------------

    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.sign.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_SIGN, CKA_SIGN, |m, k| {
                m.sign_init(k, &mech.params)
            })?;
            s.sign = Some(Active::new(op, Some(obj)).under(token.profile(), mech.ty));
            Ok(())
        })
    }

    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let r = a.check_auth().and_then(|()| {
                let len = a.op.len();
                deliver(&mut a.pending, out, || len, || a.op.one_shot(data))
            });
            settle(&mut s.sign, &r);
            r.map(|(n, _)| n)
        })
    }

    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = a.check_auth().and_then(|()| {
                if !a.op.multi_part() {
                    return Err(Error::FunctionNotSupported);
                }
                a.may_continue()?;
                a.multi = true;
                a.op.update(data)
            });
            end_on_error(&mut s.sign, &r);
            r
        })
    }

    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = a.check_auth().and_then(|()| {
                // A signature left pending by CKR_BUFFER_TOO_SMALL is delivered whatever the
                // operation says now: producing it may have consumed the running hash.
                if a.pending.is_none() && !a.op.multi_part() {
                    return Err(Error::FunctionNotSupported);
                }
                let len = a.op.len();
                deliver(&mut a.pending, out, || len, || a.op.finish())
            });
            settle(&mut s.sign, &r);
            r.map(|(n, _)| n)
        })
    }

    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.verify.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_VERIFY, CKA_VERIFY, |m, k| {
                m.verify_init(k, &mech.params)
            })?;
            s.verify = Some(Active::new(op, Some(obj)).under(token.profile(), mech.ty));
            Ok(())
        })
    }

    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let r = a.op.one_shot(data, signature);
            s.verify = None;
            r
        })
    }

    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = if a.op.multi_part() {
                a.may_continue().and_then(|()| {
                    a.multi = true;
                    a.op.update(data)
                })
            } else {
                Err(Error::FunctionNotSupported)
            };
            end_on_error(&mut s.verify, &r);
            r
        })
    }

    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = if a.op.multi_part() {
                a.op.finish(signature)
            } else {
                Err(Error::FunctionNotSupported)
            };
            s.verify = None;
            r
        })
    }
}
