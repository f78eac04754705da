//! Objects: create, copy, destroy, attributes and searches ("Object management"
//! functions).

use bridge::call::*;
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl ObjectFunctions for Device {
    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let (class, subtype) = Self::class_of(template)?;
            let is_token = Self::template_flag(template, CKA_TOKEN, false)?;
            let private = object::new_private(class, Origin::Create, template, token.profile())?;
            Self::may_create(s, token, is_token, private)?;
            mechanism::check_import(class, subtype, template)?;
            let new = object::assemble(Assembly {
                origin: Origin::Create,
                class,
                subtype,
                template,
                supplied: mechanism::computed_on_import(class, subtype, template)?,
                so: token.login_state() == Some(CKU_SO),
                profile: token.profile(),
            })?;
            self.store_new(s, token, new)
        })
    }

    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let obj = token.object(object.0)?;
            if !obj.flag(CKA_COPYABLE).unwrap_or(true) {
                return Err(Error::ActionProhibited);
            }
            let changed =
                object::apply_changes(&obj, template, true, token.login_state() == Some(CKU_SO))?;
            let secrets = token.with_secrets(&obj, |sec| {
                Ok(SecretAttrs(
                    sec.0.iter().map(|(t, v)| (*t, v.duplicate())).collect(),
                ))
            })?;
            let mut attrs = changed.attrs;
            let mut unique = [0u8; 16];
            crate::crypto::fill_random(&mut unique)?;
            attrs.insert(
                CKA_UNIQUE_ID,
                AttrValue::Bytes(object::hex(&unique).into_bytes()),
            );
            self.store_new(s, token, NewObject { attrs, secrets })
        })
    }

    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            let obj = token.object(object.0)?;
            if obj.is_token() && !s.rw {
                return Err(Error::SessionReadOnly);
            }
            if !obj.flag(CKA_DESTROYABLE).unwrap_or(true) {
                return Err(Error::ActionProhibited);
            }
            token.remove(&obj)
        })
    }

    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        self.with_session(session, |_, token| Ok(token.object(object.0)?.size()))
    }

    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        self.with_session(session, |_, token| {
            let obj = token.object(object.0)?;
            let needs = types
                .iter()
                .any(|t| obj.is_sealed_type(*t) && obj.may_reveal(*t));
            if needs {
                token.with_secrets(&obj, |sec| {
                    Ok(types.iter().map(|t| obj.answer(*t, Some(sec))).collect())
                })
            } else {
                Ok(types.iter().map(|t| obj.answer(*t, None)).collect())
            }
        })
    }

    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            token.modify(object.0, |obj| {
                if obj.is_token() && !s.rw {
                    return Err(Error::SessionReadOnly);
                }
                object::apply_changes(obj, template, false, token.login_state() == Some(CKU_SO))
            })
        })
    }

    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.find.is_some() {
                return Err(Error::OperationActive);
            }
            let handles = token.find(template, |_| true)?;
            s.find = Some(Find { handles, pos: 0 });
            Ok(())
        })
    }

    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        self.with_session(session, |s, _| {
            let f = s.find.as_mut().ok_or(Error::OperationNotInitialized)?;
            let rest = f.handles.get(f.pos..).unwrap_or_default();
            let n = rest.len().min(max);
            let out = rest.iter().take(n).map(|h| ObjectHandle(*h)).collect();
            f.pos += n;
            Ok(out)
        })
    }

    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.find
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }
}
