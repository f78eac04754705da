//! The 3.0 message-based functions: encryption and decryption per message (AES-GCM), and
//! signatures and MACs per message.

use bridge::call::*;
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl MessageFunctions for Device {
    // ---- message-based encryption (3.0) -------------------------------------------------

    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_encrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(
                token,
                &obj,
                mech,
                CKF_MESSAGE_ENCRYPT,
                CKA_ENCRYPT,
                |m, k| m.message_encrypt_init(k, &mech.params),
            )?;
            s.msg_encrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_one_shot(&mut s.msg_encrypt, params, aad, data, out)
        })
    }

    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            message_begin(&mut s.msg_encrypt, params, aad)
        })
    }

    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_next(&mut s.msg_encrypt, params, data, out, last)
        })
    }

    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_encrypt
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_decrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(
                token,
                &obj,
                mech,
                CKF_MESSAGE_DECRYPT,
                CKA_DECRYPT,
                |m, k| m.message_decrypt_init(k, &mech.params),
            )?;
            s.msg_decrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_one_shot(&mut s.msg_decrypt, params, aad, data, out)
        })
    }

    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            message_begin(&mut s.msg_decrypt, params, aad)
        })
    }

    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_next(&mut s.msg_decrypt, params, data, out, last)
        })
    }

    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_decrypt
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    // ---- message-based signatures and MACs (3.0) -------------------------------------------

    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_sign.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            // The checks of C_SignInit, once; each message gets a fresh operation.
            Self::key_op(token, &obj, mech, CKF_MESSAGE_SIGN, CKA_SIGN, |m, k| {
                m.sign_init(k, &mech.params)
            })?;
            s.msg_sign = Some(MessageMac::new(mech.clone(), obj));
            Ok(())
        })
    }

    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, token| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            // The exact length is known before signing, so a length query or a short buffer
            // spends no (randomized) signature and leaves nothing pending.
            let r = no_message_params(params).and_then(|()| {
                let mut op = Self::message_sign_op(token, a)?;
                let needed = op.len();
                let Some(buf) = out else {
                    return Ok((needed, false));
                };
                let dst = buf
                    .get_mut(..needed)
                    .ok_or(Error::BufferTooSmall { needed })?;
                let sig = op.one_shot(data)?;
                let dst = dst
                    .get_mut(..sig.len())
                    .ok_or(Error::Internal("signature length"))?;
                dst.copy_from_slice(&sig);
                Ok((sig.len(), true))
            });
            // The message ends unless this was a length query or the buffer was short.
            match &r {
                Ok((_, false)) | Err(Error::BufferTooSmall { .. }) => {}
                Ok((_, true)) | Err(_) => a.end_message(),
            }
            r.map(|(n, _)| n)
        })
    }

    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            no_message_params(params)?;
            let op = Self::message_sign_op(token, a)?;
            if !op.multi_part() {
                return Err(Error::FunctionNotSupported);
            }
            a.current = Some(op);
            Ok(())
        })
    }

    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let op = a.current.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = no_message_params(params).and_then(|()| {
                if !last {
                    return op.update(data).map(|()| (0, false));
                }
                let needed = op.len();
                let Some(buf) = out else {
                    return Ok((needed, false));
                };
                let dst = buf
                    .get_mut(..needed)
                    .ok_or(Error::BufferTooSmall { needed })?;
                op.update(data)?;
                let sig = op.finish()?;
                let dst = dst
                    .get_mut(..sig.len())
                    .ok_or(Error::Internal("signature length"))?;
                dst.copy_from_slice(&sig);
                Ok((sig.len(), true))
            });
            // The last part ends the message unless it was a length query or the buffer was
            // short; an earlier part ends it only by failing.
            match &r {
                Ok((_, false)) | Err(Error::BufferTooSmall { .. }) => {}
                Ok((_, true)) | Err(_) => a.end_message(),
            }
            r.map(|(n, _)| n)
        })
    }

    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_sign
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_verify.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            Self::key_op(token, &obj, mech, CKF_MESSAGE_VERIFY, CKA_VERIFY, |m, k| {
                m.verify_init(k, &mech.params)
            })?;
            s.msg_verify = Some(MessageMac::new(mech.clone(), obj));
            Ok(())
        })
    }

    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            let r = no_message_params(params)
                .and_then(|()| Self::message_verify_op(token, a)?.one_shot(data, signature));
            a.end_message();
            r
        })
    }

    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            no_message_params(params)?;
            let op = Self::message_verify_op(token, a)?;
            if !op.multi_part() {
                return Err(Error::FunctionNotSupported);
            }
            a.current = Some(op);
            Ok(())
        })
    }

    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            let op = a.current.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = no_message_params(params).and_then(|()| {
                op.update(data)?;
                match signature {
                    Some(sig) => op.finish(sig),
                    None => Ok(()),
                }
            });
            // The last part ends the message whatever the outcome; an earlier failure too.
            if signature.is_some() || r.is_err() {
                a.end_message();
            }
            r
        })
    }

    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_verify
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }
}

/// `C_EncryptMessage`/`C_DecryptMessage`: one whole message. The output length is known
/// before any work (the tag travels in the parameters), so a length query or a short buffer
/// is answered without running, generating an IV or ending anything. A message that fails
/// ends; the message-based process stays initialized.
fn message_one_shot(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    aad: &[u8],
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.op.in_message() {
        return Err(Error::OperationActive);
    }
    a.check_auth()?;
    let needed = data.len();
    let Some(buf) = out else {
        return Ok(needed);
    };
    let dst = buf
        .get_mut(..needed)
        .ok_or(Error::BufferTooSmall { needed })?;
    let r =
        a.op.begin(params, aad)
            .and_then(|()| a.op.next(params, data, true));
    match r {
        Ok(produced) => {
            let dst = dst
                .get_mut(..produced.len())
                .ok_or(Error::Internal("message output length"))?;
            dst.copy_from_slice(&produced);
            Ok(produced.len())
        }
        Err(e) => {
            a.op.abort();
            Err(e)
        }
    }
}

/// `C_EncryptMessageBegin`/`C_DecryptMessageBegin`.
fn message_begin(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    aad: &[u8],
) -> Result<()> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.op.in_message() {
        return Err(Error::OperationActive);
    }
    a.check_auth()?;
    let r = a.op.begin(params, aad);
    if r.is_err() {
        a.op.abort();
    }
    r
}

/// `C_EncryptMessageNext`/`C_DecryptMessageNext`: the exact output length is known first, so
/// a length query or a short buffer changes nothing; any other failure ends the message.
fn message_next(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    data: &[u8],
    out: Option<&mut [u8]>,
    last: bool,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if !a.op.in_message() {
        return Err(Error::OperationNotInitialized);
    }
    a.check_auth()?;
    let needed = a.op.next_len(data.len(), last);
    // A NULL output buffer is a length query, even when the part produces nothing.
    let Some(buf) = out else {
        return Ok(needed);
    };
    let dst = buf
        .get_mut(..needed)
        .ok_or(Error::BufferTooSmall { needed })?;
    match a.op.next(params, data, last) {
        Ok(produced) => {
            let dst = dst
                .get_mut(..produced.len())
                .ok_or(Error::Internal("message output length"))?;
            dst.copy_from_slice(&produced);
            Ok(produced.len())
        }
        Err(e) => {
            a.op.abort();
            Err(e)
        }
    }
}

/// The MAC mechanisms take no per-message parameter.
fn no_message_params(params: &MechanismParams) -> Result<()> {
    match params {
        MechanismParams::None => Ok(()),
        MechanismParams::Raw(b) | MechanismParams::Bytes(b) if b.is_empty() => Ok(()),
        _ => Err(Error::MechanismParamInvalid),
    }
}
