//! The calls every family makes on the firmware: finding objects, reading their attributes,
//! creating them, reaching a key's private half.

use bridge::BackendExt as _;
use bridge::{AttrAnswer, AttrValue, Attribute, ObjectHandle, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::session::PIN_ENV;
use super::state::{Provider, Ready};
use crate::error::{KResult, NOT_SUPPORTED, Status};
use crate::types::*;

impl Provider {
    pub(super) fn find(&self, template: &Template) -> KResult<Vec<ObjectHandle>> {
        let _op = self.op.lock();
        self.backend.find_objects_init(self.session, template)?;
        let mut all = Vec::new();
        let result = loop {
            match self.backend.find_objects(self.session, 64) {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => all.extend(batch),
                Err(e) => break Err(e),
            }
        };
        let _ = self.backend.find_objects_final(self.session);
        result?;
        Ok(all)
    }

    pub(super) fn find_labelled(
        &self,
        class: CK_OBJECT_CLASS,
        name: &str,
    ) -> KResult<Vec<ObjectHandle>> {
        self.find(
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, class))
                .with(Attribute::bytes(CKA_LABEL, name.as_bytes().to_vec())),
        )
    }

    /// One attribute: `Ok(None)` if the object has none, `NTE_NOT_SUPPORTED` if the firmware's
    /// export check withholds it.
    pub(super) fn attr(
        &self,
        obj: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> KResult<Option<Zeroizing<Vec<u8>>>> {
        let answers = {
            let _op = self.op.lock();
            self.backend.get_attribute_value(self.session, obj, &[ty])?
        };
        match answers.first() {
            Some(AttrAnswer::Value(AttrValue::Bytes(b))) => Ok(Some(Zeroizing::new(b.clone()))),
            Some(AttrAnswer::Sensitive) => Err(NOT_SUPPORTED),
            _ => Ok(None),
        }
    }

    pub(super) fn need(
        &self,
        obj: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> KResult<Zeroizing<Vec<u8>>> {
        self.attr(obj, ty)?.ok_or(Status(NTE_BAD_KEY))
    }

    pub(super) fn flag(&self, obj: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> KResult<bool> {
        Ok(matches!(self.attr(obj, ty)?.as_deref().map(Vec::as_slice), Some([b]) if *b != 0))
    }

    pub(super) fn ulong(
        &self,
        obj: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> KResult<Option<CK_ULONG>> {
        Ok(self.attr(obj, ty)?.and_then(|b| {
            let a: [u8; size_of::<CK_ULONG>()] = b.as_slice().try_into().ok()?;
            Some(CK_ULONG::from_ne_bytes(a))
        }))
    }
}

/// The key's private object; without one, `NTE_PERM` when no user is logged in (the private
/// half may exist but is out of reach), else `NTE_BAD_KEY` (a public-only key).
pub(super) fn private_of(p: &Provider, r: &Ready) -> KResult<ObjectHandle> {
    match r.private {
        Some(h) => Ok(h),
        None if !p.logged_in => {
            log::warn!("ferrohsm-ksp: a private-key operation without {PIN_ENV}: NTE_PERM");
            Err(Status(NTE_PERM))
        }
        None => Err(Status(NTE_BAD_KEY)),
    }
}

pub(super) fn create(p: &Provider, t: &Template) -> KResult<ObjectHandle> {
    let _op = p.op.lock();
    Ok(p.backend.create_object(p.session, t)?)
}
