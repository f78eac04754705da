//! Key management and random numbers: generate, wrap, unwrap and derive under the
//! protection rule (`bridge::protection`), and the generator.

use bridge::call::*;
use bridge::personality::{KeyShape, curve_name};
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl KeyFunctions for Device {
    // ---- key management -----------------------------------------------------------------

    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_GENERATE)?;
            enforce(
                token
                    .profile()
                    .judge_key(&generated_shape(mech.ty, template)?),
            )?;
            let is_token = Self::template_flag(template, CKA_TOKEN, false)?;
            let private = object::new_private(
                CKO_SECRET_KEY,
                Origin::Generate(mech.ty),
                template,
                token.profile(),
            )?;
            Self::may_create(s, token, is_token, private)?;
            let generated = m.generate_key(template, &mech.params)?;
            let new = self.store_generated(s, token, mech.ty, template, generated)?;
            self.store_new(s, token, new)
        })
    }

    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        self.with_session(session, |s, token| {
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_GENERATE_KEY_PAIR)?;
            enforce(
                token
                    .profile()
                    .judge_key(&generated_shape(mech.ty, public_template)?),
            )?;
            for (t, class) in [
                (public_template, CKO_PUBLIC_KEY),
                (private_template, CKO_PRIVATE_KEY),
            ] {
                let is_token = Self::template_flag(t, CKA_TOKEN, false)?;
                let private =
                    object::new_private(class, Origin::Generate(mech.ty), t, token.profile())?;
                Self::may_create(s, token, is_token, private)?;
            }
            let (pub_gen, priv_gen) =
                m.generate_key_pair(public_template, private_template, &mech.params)?;
            let pub_new = self.store_generated(s, token, mech.ty, public_template, pub_gen)?;
            let priv_new = self.store_generated(s, token, mech.ty, private_template, priv_gen)?;
            let public = self.store_new(s, token, pub_new)?;
            match self.store_new(s, token, priv_new) {
                Ok(private) => Ok((public, private)),
                Err(e) => {
                    // All or nothing: do not leave half a pair behind.
                    if let Ok(obj) = token.object(public.0) {
                        let _ = token.remove(&obj);
                    }
                    Err(e)
                }
            }
        })
    }

    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |_, token| {
            let wrapper = token.object(wrapping_key.0).map_err(|e| match e {
                Error::ObjectHandleInvalid => Error::WrappingKeyHandleInvalid,
                e => e,
            })?;
            let target = Self::key_object_now(token, key)?;
            if !target.is_key() {
                return Err(Error::KeyHandleInvalid);
            }
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_WRAP)?;
            // The wrapping key first: whether it may wrap at all, before the target is looked
            // at or any key material unsealed.
            Self::may_use(m, &wrapper, CKA_WRAP).map_err(|e| match e {
                Error::KeyTypeInconsistent => Error::WrappingKeyTypeInconsistent,
                e => e,
            })?;
            target.wrap_check(&wrapper)?;
            enforce(token.profile().judge_wrap(target.class()))?;
            enforce(token.profile().judge_key(&wrapper.shape()))?;
            if token.strict() && !wrapper.is(CKA_TRUSTED) {
                // Strict firmware: keys leave only under keys the SO marked trusted.
                return Err(Error::KeyNotWrappable);
            }
            if let Some(required) = wrapper.template(CKA_WRAP_TEMPLATE) {
                let ok =
                    token.with_secrets(&target, |sec| Ok(target.matches(required, Some(sec))))?;
                if !ok {
                    return Err(Error::KeyNotWrappable);
                }
            }
            let material =
                token.with_secrets(&target, |sec| mechanism::key_to_wrap(&target, sec))?;
            let wrapped = token
                .with_secrets(&wrapper, |secrets| {
                    m.wrap(
                        &Key {
                            obj: &wrapper,
                            secrets,
                        },
                        &material,
                        &mech.params,
                    )
                })
                .map_err(|e| match e {
                    Error::KeyTypeInconsistent => Error::WrappingKeyTypeInconsistent,
                    e => e,
                })?;
            let mut pending = Some(zeroize::Zeroizing::new(wrapped));
            deliver(
                &mut pending,
                out,
                || 0,
                || Err(Error::Internal("wrap output")),
            )
            .map(|(n, _)| n)
        })
    }

    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let unwrapper = token.object(unwrapping_key.0).map_err(|e| match e {
                Error::ObjectHandleInvalid => Error::UnwrappingKeyHandleInvalid,
                e => e,
            })?;
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_UNWRAP)?;
            // Usage before any work: an unwrapping key that may not unwrap must not answer
            // differently for well- and ill-formed ciphertexts (a padding oracle).
            Self::may_use(m, &unwrapper, CKA_UNWRAP).map_err(|e| match e {
                Error::KeyTypeInconsistent => Error::UnwrappingKeyTypeInconsistent,
                e => e,
            })?;
            let imposed = object::protection::unwrap_template(&unwrapper);
            let template = merge_templates(imposed.as_ref(), template)?;
            let class = template
                .get(CKA_CLASS)
                .ok_or(Error::TemplateIncomplete)?
                .as_ulong()?;
            let key_type = template
                .get(CKA_KEY_TYPE)
                .ok_or(Error::TemplateIncomplete)?
                .as_ulong()?;
            if policy::rules_for(class, Some(key_type)).is_none()
                || !matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY)
            {
                return Err(Error::TemplateInconsistent);
            }
            let is_token = Self::template_flag(&template, CKA_TOKEN, false)?;
            let private = object::new_private(class, Origin::Unwrap, &template, token.profile())?;
            Self::may_create(s, token, is_token, private)?;
            let material = token
                .with_secrets(&unwrapper, |secrets| {
                    m.unwrap(
                        &Key {
                            obj: &unwrapper,
                            secrets,
                        },
                        wrapped,
                        &mech.params,
                    )
                })
                .map_err(|e| match e {
                    Error::KeyTypeInconsistent => Error::UnwrappingKeyTypeInconsistent,
                    e => e,
                })?;
            let supplied = mechanism::key_from_unwrap(class, key_type, &material)?;
            let new = object::assemble(Assembly {
                origin: Origin::Unwrap,
                class,
                subtype: Some(key_type),
                template: &template,
                supplied,
                so: token.login_state() == Some(CKU_SO),
                profile: token.profile(),
            })?;
            // What the unwrapping key's template keeps protected is never public, and, like a
            // derived key, never shorter than 16 bytes: unwrapping a truncated ciphertext (CTR
            // unwraps any length) would otherwise let a caller walk the wrapped key, or the
            // key stream, a byte at a time through operations with the short key.
            if imposed.is_some() {
                object::protection::check_private(&new.attrs)?;
                let len = new
                    .secrets
                    .get(CKA_VALUE)
                    .map_or(usize::MAX, crate::crypto::Secret::len);
                if class == CKO_SECRET_KEY
                    && object::protection::new_is_protected(&new.attrs)
                    && len < protection::MIN_DERIVED_LEN
                {
                    return Err(Error::KeySizeRange);
                }
            }
            self.store_new(s, token, new)
        })
    }

    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let base = Self::key_object_now(token, base_key)?;
            let m = mechanism::for_use(mech.ty, token.profile(), CKF_DERIVE)?;
            Self::may_use(m, &base, CKA_DERIVE)?;
            // Every other key the parameters name (an HKDF salt key) is an input too: it must
            // be a secret key the caller may derive with, by this mechanism, and its
            // protection joins the base key's.
            let others = mech
                .params
                .key_handles()
                .into_iter()
                .map(|h| {
                    let k = Self::key_object_now(token, ObjectHandle(h))?;
                    if k.class() != CKO_SECRET_KEY || !k.is(CKA_DERIVE) {
                        return Err(Error::MechanismParamInvalid);
                    }
                    Self::may_use(m, &k, CKA_DERIVE).map_err(|_| Error::MechanismParamInvalid)?;
                    Ok(k)
                })
                .collect::<Result<Vec<_>>>()?;
            let unnamed = object::protection::meet(others.iter().map(|k| &**k));
            let meet = object::protection::of(&base).and(unnamed);
            let template = merge_templates(base.template(CKA_DERIVE_TEMPLATE), template)?;
            let default_class = if mech.ty == CKM_HKDF_DATA {
                CKO_DATA
            } else {
                CKO_SECRET_KEY
            };
            let class = template
                .get(CKA_CLASS)
                .map(Attribute::as_ulong)
                .transpose()?
                .unwrap_or(default_class);
            let key_type = match class {
                CKO_SECRET_KEY => Some(
                    template
                        .get(CKA_KEY_TYPE)
                        .map(Attribute::as_ulong)
                        .transpose()?
                        .unwrap_or(CKK_GENERIC_SECRET),
                ),
                CKO_DATA => None,
                _ => return Err(Error::TemplateInconsistent),
            };
            if policy::rules_for(class, key_type).is_none() {
                return Err(Error::TemplateInconsistent);
            }
            let value_len = template
                .get(CKA_VALUE_LEN)
                .map(|a| {
                    a.as_ulong()
                        .and_then(|v| usize::try_from(v).map_err(|_| Error::AttributeValueInvalid))
                })
                .transpose()?;
            // The protection rule decides the new object's template before any derivation
            // runs: never below the meet of the inputs, unless the mechanism's text lets the
            // template choose (bridge::protection::template_chooses).
            let user_template = protection::derived_template(
                meet,
                unnamed,
                mech.ty,
                class,
                &template,
                token.strict(),
            )?;
            let is_token = Self::template_flag(&user_template, CKA_TOKEN, false)?;
            let private =
                object::new_private(class, Origin::Derive, &user_template, token.profile())?;
            Self::may_create(s, token, is_token, private)?;
            let key_value = |h: CK_OBJECT_HANDLE| -> Result<mechanism::Output> {
                let k = others
                    .iter()
                    .find(|k| k.handle == h)
                    .ok_or(Error::MechanismParamInvalid)?;
                token.with_secrets(k, |sec| {
                    let v = sec.get(CKA_VALUE).ok_or(Error::MechanismParamInvalid)?;
                    Ok(zeroize::Zeroizing::new(v.expose().to_vec()))
                })
            };
            let ctx = mechanism::DeriveCtx {
                value_len,
                class,
                key_type,
                key_value: &key_value,
            };
            let value = token.with_secrets(&base, |secrets| {
                m.derive(
                    &Key {
                        obj: &base,
                        secrets,
                    },
                    &mech.params,
                    &ctx,
                )
            })?;
            if let Some(kt) = key_type {
                mechanism::check_import(
                    class,
                    Some(kt),
                    &Template::new().with(Attribute::bytes(CKA_VALUE, value.to_vec())),
                )
                .map_err(|_| Error::TemplateInconsistent)?;
            }
            let mut new = object::assemble(Assembly {
                origin: Origin::Derive,
                class,
                subtype: key_type,
                template: &user_template,
                supplied: vec![Attribute::bytes(CKA_VALUE, value.to_vec())],
                so: token.login_state() == Some(CKU_SO),
                profile: token.profile(),
            })?;
            object::protection::finish_derived(&mut new, meet)?;
            // A key made from a protected key is never public.
            if meet.is_protected() {
                object::protection::check_private(&new.attrs)?;
            }
            self.store_new(s, token, new)
        })
    }
}

impl RandomFunctions for Device {
    // ---- random -------------------------------------------------------------------------

    fn seed_random(&self, session: SessionHandle, _seed: &[u8]) -> Result<()> {
        // The generator (AWS-LC's) reseeds itself from the OS and takes no outside seed.
        self.session(session)?;
        Err(Error::RandomSeedNotSupported)
    }

    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.session(session)?;
        crate::crypto::fill_random(out)
    }
}

/// The shape of the key a generation mechanism is asked to make, from the template that
/// carries its size (the public template of a key pair): what a personality judges before any
/// key is generated.
fn generated_shape(mech: CK_MECHANISM_TYPE, template: &Template) -> Result<KeyShape> {
    let ulong = |ty| {
        template
            .get(ty)
            .map(Attribute::as_ulong)
            .transpose()
            .map(|v| v.map(u64::from))
    };
    let curve = template
        .get(CKA_EC_PARAMS)
        .and_then(|a| a.as_bytes().ok())
        .and_then(curve_name);
    Ok(KeyShape::generated(
        mech,
        ulong(CKA_MODULUS_BITS)?,
        ulong(CKA_VALUE_LEN)?,
        curve,
    ))
}
