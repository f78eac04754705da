//! Policy and audit as a decorator on any `Backend` (docs/architecture.md §7): a slot's
//! `[slot.policy]` and `audit_log` wrap whatever serves it — a real HSM's module or the
//! simulated firmware — in an `Overlay`.
//!
//! Policy (`non_exportable`): templates that would create an extractable or non-sensitive key
//! are refused with `CKR_TEMPLATE_INCONSISTENT`, and keys made without saying get
//! `CKA_SENSITIVE=TRUE`, `CKA_EXTRACTABLE=FALSE`; changing either towards exposure
//! (`C_SetAttributeValue`, `C_CopyObject`) is refused the same way; a key's secret values
//! (`CKA_VALUE`, the RSA private components) are never returned (`CKR_ATTRIBUTE_SENSITIVE`),
//! whatever the key's own attributes say; `C_WrapKey` is refused (`CKR_KEY_UNEXTRACTABLE`).
//! Policy (`allowed_mechanisms`): other mechanisms are absent from `C_GetMechanismList` and
//! refused with `CKR_MECHANISM_INVALID`.
//!
//! Audit: the functions that change or use keys and the login state are recorded in the
//! slot's audit log ([`crate::audit`]), with the mechanism, the key (handle, label, id) and the
//! result code.

use std::collections::BTreeSet;
use std::sync::Arc;

use cryptoki_sys::*;

use crate::audit::{AuditLog, Entry};
use crate::call::{Backend, BackendExt, Call, Reply, Target};
use crate::config::PolicyConfig;
use crate::error::{Error, Result, rv_name};
use crate::protection::{self, Protection};
use crate::types::*;

/// Attributes that hold key material.
pub(crate) const SECRET_VALUES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// A slot's policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    non_exportable: bool,
    allowed: Option<BTreeSet<CK_MECHANISM_TYPE>>,
}

impl Policy {
    /// The policy a `[slot.policy]` table describes; an unknown mechanism name is an error.
    pub fn from_config(c: &PolicyConfig) -> Result<Self> {
        let allowed = match &c.allowed_mechanisms {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        crate::names::parse_mechanism(n).ok_or_else(|| {
                            Error::Config(format!("allowed_mechanisms: unknown mechanism {n:?}"))
                        })
                    })
                    .collect::<Result<BTreeSet<_>>>()?,
            ),
        };
        Ok(Self {
            non_exportable: c.non_exportable,
            allowed,
        })
    }
}

/// A backend under a policy and/or an audit log, and (in front of a real HSM's module) the
/// protection rule.
pub struct Overlay {
    inner: Arc<dyn Backend>,
    policy: Policy,
    audit: Option<AuditLog>,
    protect: bool,
    who: Option<String>,
    /// A record that cannot be written fails the call (`CKR_DEVICE_ERROR`).
    fail_closed: bool,
}

/// The attributes of one object the protection checks read, `None` where the module has no
/// value (or the object is gone).
#[derive(Clone, Copy, Debug, Default)]
struct Facts {
    class: Option<CK_OBJECT_CLASS>,
    private: Option<bool>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    always_sensitive: Option<bool>,
    never_extractable: Option<bool>,
    value_len: Option<CK_ULONG>,
}

impl Facts {
    const TYPES: [CK_ATTRIBUTE_TYPE; 7] = [
        CKA_CLASS,
        CKA_PRIVATE,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_VALUE_LEN,
    ];

    fn protection(&self) -> Protection {
        if !matches!(self.class, Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY)) {
            return Protection::NONE;
        }
        // What a module does not say counts as protected: never less than it may be.
        Protection {
            sensitive: self.sensitive != Some(false),
            extractable: self.extractable == Some(true),
            always_sensitive: self.always_sensitive == Some(true),
            never_extractable: self.never_extractable == Some(true),
        }
    }
}

/// A `CK_BBOOL` answer, `None` where the module gave no single byte.
pub(crate) fn answer_bool(a: Option<&AttrAnswer>) -> Option<bool> {
    match a {
        Some(AttrAnswer::Value(AttrValue::Bytes(b))) if b.len() == 1 => b.first().map(|v| *v != 0),
        _ => None,
    }
}

pub(crate) fn answer_ulong(a: Option<&AttrAnswer>) -> Option<CK_ULONG> {
    match a {
        Some(AttrAnswer::Value(AttrValue::Bytes(b))) => <[u8; ULONG_SIZE]>::try_from(b.as_slice())
            .ok()
            .map(CK_ULONG::from_ne_bytes),
        _ => None,
    }
}

impl Overlay {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, policy: Option<Policy>, audit: Option<AuditLog>) -> Self {
        Self {
            inner,
            policy: policy.unwrap_or_default(),
            audit,
            protect: false,
            who: None,
            fail_closed: false,
        }
    }

    /// A call whose record cannot be written fails with `CKR_DEVICE_ERROR` instead of
    /// answering (a daemon's usage log: no call answers before its record is on disk).
    #[must_use]
    pub fn failing_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }

    /// Names the authenticated caller in every audit record (a daemon's peer identity).
    #[must_use]
    pub fn recording_who(mut self, who: &str) -> Self {
        self.who = Some(who.to_owned());
        self
    }

    /// Also enforces the protection rule ([`crate::protection`]) in front of `inner`, as far
    /// as attributes let it: for a real HSM's module, whose own rules may be weaker than the
    /// firmware's. Usage, allowed mechanisms and always-authenticate are checked before an
    /// unwrap or a derivation is passed on; derived and unwrapped templates never ask for
    /// less than the rule allows; a key made from a protected key, or made public by a copy,
    /// is destroyed again and refused; a protected key is never public, whatever makes it
    /// (create, generate, unwrap, copy, set-attribute); short protected keys' check values
    /// are withheld.
    pub fn protecting(mut self) -> Self {
        self.protect = true;
        self
    }

    /// What the protection checks need to know about `object`.
    fn facts(&self, session: SessionHandle, object: ObjectHandle) -> Result<Facts> {
        let a = self
            .inner
            .get_attribute_value(session, object, &Facts::TYPES)?;
        Ok(Facts {
            class: answer_ulong(a.first()),
            private: answer_bool(a.get(1)),
            sensitive: answer_bool(a.get(2)),
            extractable: answer_bool(a.get(3)),
            always_sensitive: answer_bool(a.get(4)),
            never_extractable: answer_bool(a.get(5)),
            value_len: answer_ulong(a.get(6)),
        })
    }

    /// The checks that come before an unwrap or a derivation is passed on: the key's usage
    /// attribute, its allowed mechanisms, and always-authenticate (no context login can
    /// precede a one-call function). Returns whether the key may decrypt. A key the module
    /// does not know is left for the module to report with its own code; a key whose
    /// attributes cannot be read otherwise is refused ([`unread`]).
    fn may_use(
        &self,
        session: SessionHandle,
        key: ObjectHandle,
        mech: CK_MECHANISM_TYPE,
        usage: CK_ATTRIBUTE_TYPE,
    ) -> Result<Option<bool>> {
        let types = [
            usage,
            CKA_ALWAYS_AUTHENTICATE,
            CKA_DECRYPT,
            CKA_ALLOWED_MECHANISMS,
        ];
        let a = match self.inner.get_attribute_value(session, key, &types) {
            Ok(a) => a,
            Err(e) => {
                unread(e, Error::KeyFunctionNotPermitted)?;
                return Ok(None);
            }
        };
        if let Some(AttrAnswer::Value(AttrValue::Bytes(b))) = a.get(3) {
            let list = Attribute::bytes(CKA_ALLOWED_MECHANISMS, b.clone()).as_ulongs()?;
            if !list.is_empty() && !list.contains(&mech) {
                return Err(Error::MechanismInvalid);
            }
        }
        if answer_bool(a.first()) != Some(true) {
            return Err(Error::KeyFunctionNotPermitted);
        }
        if answer_bool(a.get(1)) == Some(true) {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(answer_bool(a.get(2)))
    }

    /// `C_GetAttributeValue` under the `non_exportable` policy: a key's secret values are never
    /// read through this slot, whatever the key says.
    fn exported_values(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>> {
        if !self.non_exportable() || !types.iter().any(|t| SECRET_VALUES.contains(t)) {
            return self.inner.get_attribute_value(session, object, types);
        }
        let class = match self
            .inner
            .get_attribute_value(session, object, &[CKA_CLASS])?
            .first()
        {
            Some(AttrAnswer::Value(AttrValue::Bytes(b))) => b.clone(),
            _ => Vec::new(),
        };
        let is_key = [CKO_SECRET_KEY, CKO_PRIVATE_KEY]
            .iter()
            .any(|c| c.to_ne_bytes().as_slice() == class.as_slice());
        if !is_key {
            return self.inner.get_attribute_value(session, object, types);
        }
        let asked: Vec<CK_ATTRIBUTE_TYPE> = types
            .iter()
            .copied()
            .filter(|t| !SECRET_VALUES.contains(t))
            .collect();
        let mut answers = self
            .inner
            .get_attribute_value(session, object, &asked)?
            .into_iter();
        let out: Vec<AttrAnswer> = types
            .iter()
            .map(|t| {
                if SECRET_VALUES.contains(t) {
                    AttrAnswer::Sensitive
                } else {
                    answers.next().unwrap_or(AttrAnswer::Invalid)
                }
            })
            .collect();
        let refused: Result<()> = Err(Error::AttributeSensitive);
        self.record(
            Some(session),
            "C_GetAttributeValue",
            None,
            Some(object),
            None,
            &refused,
        )?;
        Ok(out)
    }

    /// Before a template reaches the module: a private or secret key that the template makes
    /// (or leaves) sensitive or not extractable must not be public
    /// ([`protection::check_private`]: `CKR_TEMPLATE_INCONSISTENT`, the firmware's code). `base`
    /// is what the object says now (a copy, a change), [`Facts::default`] for a new object of
    /// `class`. What neither says is the module's default, judged on the object once made
    /// ([`Overlay::made`]).
    fn refuse_public_protected(
        &self,
        template: &Template,
        class: Option<CK_OBJECT_CLASS>,
        base: Facts,
    ) -> Result<()> {
        if !self.protect {
            return Ok(());
        }
        let flag = |ty| template.get(ty).map(Attribute::as_bool).transpose();
        let class = match template.get(CKA_CLASS) {
            Some(a) => Some(a.as_ulong()?),
            None => class.or(base.class),
        };
        let sensitive = flag(CKA_SENSITIVE)?.or(base.sensitive);
        let extractable = flag(CKA_EXTRACTABLE)?.or(base.extractable).or(Some(true));
        let private = flag(CKA_PRIVATE)?.or(base.private).or(Some(true));
        protection::check_private(class, sensitive, extractable, private)
    }

    /// [`Overlay::refuse_public_protected`] for `C_CopyObject` and `C_SetAttributeValue` of
    /// `object`, over what the object says now. A template that names none of
    /// `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE` changes nothing the rule reads, unless
    /// it makes a new object (`copying`). An object the module does not know is left for it
    /// to report; one whose attributes cannot be read is refused (`CKR_ACTION_PROHIBITED`).
    /// `C_SetAttributeValue` that would make a protected key public by changing `CKA_PRIVATE`
    /// is `CKR_ATTRIBUTE_READ_ONLY`, the firmware's code (the specification lets only a copy
    /// change it).
    fn refuse_public_protected_change(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
        copying: bool,
    ) -> Result<()> {
        let touches = [CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE]
            .iter()
            .any(|t| template.get(*t).is_some());
        if !self.protect || !(touches || copying) {
            return Ok(());
        }
        let f = match self.facts(session, object) {
            Ok(f) => f,
            Err(e) => return unread(e, Error::ActionProhibited),
        };
        // What the module does not say counts as protected and public: never less than it
        // may be.
        let p = f.protection();
        let base = Facts {
            class: f.class,
            sensitive: Some(p.sensitive),
            extractable: Some(p.extractable),
            private: Some(f.private == Some(true)),
            ..Facts::default()
        };
        let refused = self.refuse_public_protected(template, None, base);
        let to_public = template
            .get(CKA_PRIVATE)
            .map(Attribute::as_bool)
            .transpose()?
            == Some(false);
        match refused {
            Err(_) if !copying && to_public && base.private == Some(true) => {
                Err(Error::AttributeReadOnly)
            }
            r => r,
        }
    }

    /// An object the module made a moment ago (create, generate, unwrap, copy): a private or
    /// secret key that is protected must be private, whatever made it so (the template or
    /// the module's defaults). A real module may keep a public object's value in clear (SoftHSM
    /// writes public objects to disk unencrypted) and let anyone use it without a login. One
    /// that is not is destroyed again and refused (`CKR_TEMPLATE_INCONSISTENT`); one whose
    /// attributes cannot be read is destroyed and refused with that error.
    fn made(&self, session: SessionHandle, object: ObjectHandle) -> Result<ObjectHandle> {
        if !self.protect {
            return Ok(object);
        }
        let checked = self.facts(session, object).and_then(|f| {
            protection::check_private(f.class, f.sensitive, f.extractable, f.private)
        });
        match checked {
            Ok(()) => Ok(object),
            Err(e) => self.undo(session, object, e),
        }
    }

    /// `C_UnwrapKey` under the protection rule: the unwrapping key's usage first; a key that may
    /// unwrap but not decrypt and has no unwrap template of its own imposes the rule's default
    /// (the module may not know it); what an imposed template protects is never public.
    fn unwrap_protected(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        mut template: Template,
    ) -> Result<ObjectHandle> {
        if !self.protect {
            return self
                .inner
                .unwrap_key(session, mech, unwrapping_key, wrapped, &template);
        }
        let decrypt = self.may_use(session, unwrapping_key, mech.ty, CKA_UNWRAP)?;
        // An empty attribute array is no template (SoftHSM answers one for a key without).
        let own = match self.inner.get_attribute_value(
            session,
            unwrapping_key,
            &[CKA_UNWRAP_TEMPLATE],
        ) {
            Ok(a) => {
                matches!(a.as_slice(), [AttrAnswer::Value(AttrValue::Template(t))] if !t.is_empty())
            }
            Err(e) => {
                unread(e, Error::KeyFunctionNotPermitted)?;
                false
            }
        };
        let imposed = own || protection::unwrap_only(Some(true), decrypt);
        if imposed && !own {
            for a in protection::default_unwrap_template().iter() {
                match template.get(a.ty) {
                    Some(given) if given.value != a.value => {
                        return Err(Error::TemplateInconsistent);
                    }
                    Some(_) => {}
                    None => template.0.push(a.clone()),
                }
            }
        }
        let key = self
            .inner
            .unwrap_key(session, mech, unwrapping_key, wrapped, &template)?;
        if imposed {
            let f = match self.facts(session, key) {
                Ok(f) => f,
                Err(e) => return self.undo(session, key, e),
            };
            // Never shorter than a derived key may be (see the firmware's unwrap_key: a short
            // key would let a caller walk the wrapped one). A length of 0
            // is no length: SoftHSM leaves CKA_VALUE_LEN at 0 on the keys it unwraps.
            let short = f.class == Some(CKO_SECRET_KEY)
                && f.protection().is_protected()
                && f.value_len
                    .and_then(|l| usize::try_from(l).ok())
                    .is_some_and(|l| l > 0 && l < protection::MIN_DERIVED_LEN);
            // Never public: the caller's `made` checks every key an unwrap makes.
            if short {
                return self.undo(session, key, Error::KeySizeRange);
            }
        }
        Ok(key)
    }

    /// `C_DeriveKey` under the protection rule: the base key's (and every parameter key's)
    /// usage first; the template never asks for less than the meet of their protection; a
    /// protected key made from a protected input is at least
    /// [`protection::MIN_DERIVED_LEN`] bytes and never public.
    fn derive_protected(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base: ObjectHandle,
        template: Template,
    ) -> Result<ObjectHandle> {
        if !self.protect {
            return self.inner.derive_key(session, mech, base, &template);
        }
        self.may_use(session, base, mech.ty, CKA_DERIVE)?;
        let mut unnamed = Protection::NO_INPUT;
        for k in mech.params.key_handles() {
            self.may_use(session, ObjectHandle(k), mech.ty, CKA_DERIVE)
                .map_err(|_| Error::MechanismParamInvalid)?;
            let f = self
                .facts(session, ObjectHandle(k))
                .map_err(|_| Error::MechanismParamInvalid)?;
            unnamed = unnamed.and(f.protection());
        }
        let meet = match self.facts(session, base) {
            Ok(f) => f.protection().and(unnamed),
            // The module reports an unknown base key with its own code; a base key whose
            // protection cannot be read is refused: the rule cannot be applied to it.
            Err(e) => {
                unread(e, Error::KeyFunctionNotPermitted)?;
                return self.inner.derive_key(session, mech, base, &template);
            }
        };
        let class = template
            .get(CKA_CLASS)
            .map(Attribute::as_ulong)
            .transpose()?
            .unwrap_or(CKO_SECRET_KEY);
        let value_len = template.get(CKA_VALUE_LEN).cloned();
        let mut t = protection::derived_template(meet, unnamed, mech.ty, class, &template, false)?;
        // derived_template drops CKA_VALUE_LEN (the firmware takes it apart); the module needs it.
        if let Some(v) = value_len {
            t.0.push(v);
        }
        let key = self.inner.derive_key(session, mech, base, &t)?;
        let f = self.facts(session, key)?;
        let len = f
            .value_len
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        let checked = if f.class == Some(CKO_SECRET_KEY) {
            protection::derived_provenance(
                meet,
                f.sensitive != Some(false),
                f.extractable == Some(true),
                len,
            )
            .map(drop)
        } else {
            Ok(())
        };
        let checked = checked.and_then(|()| {
            if meet.is_protected() {
                protection::check_private(f.class, f.sensitive, f.extractable, f.private)
            } else {
                Ok(())
            }
        });
        match checked {
            Ok(()) => Ok(key),
            Err(e) => self.undo(session, key, e),
        }
    }

    /// A protected key is used only by the logged-in user, whatever its `CKA_PRIVATE` (the
    /// firmware's rule; a real module may let a public sensitive key work without a login):
    /// `CKR_USER_NOT_LOGGED_IN` before the module sees the call.
    fn protected_need_login(&self, session: SessionHandle, keys: &[ObjectHandle]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let user = matches!(
            self.inner.session_info(session).map(|i| i.state),
            Ok(CKS_RO_USER_FUNCTIONS | CKS_RW_USER_FUNCTIONS)
        );
        if user {
            return Ok(());
        }
        for k in keys {
            match self.facts(session, *k) {
                Ok(f) => {
                    if f.protection().is_protected() && f.private != Some(true) {
                        return Err(Error::UserNotLoggedIn);
                    }
                }
                // A key the module does not know is left for it to report with its own code;
                // one that cannot be shown to be unprotected needs the login a protected key
                // needs.
                Err(e) => unread(e, Error::UserNotLoggedIn)?,
            }
        }
        Ok(())
    }

    /// Destroys `object` (made by the module a moment ago) and fails with `err`.
    fn undo<T>(&self, session: SessionHandle, object: ObjectHandle, err: Error) -> Result<T> {
        if let Err(e) = self.inner.destroy_object(session, object) {
            log::error!("a refused object could not be destroyed again: {e}");
        }
        Err(err)
    }

    fn non_exportable(&self) -> bool {
        self.policy.non_exportable
    }

    fn allows(&self, ty: CK_MECHANISM_TYPE) -> bool {
        self.policy.allowed.as_ref().is_none_or(|a| a.contains(&ty))
    }

    fn check_mechanism(&self, ty: CK_MECHANISM_TYPE) -> Result<()> {
        if self.allows(ty) {
            Ok(())
        } else {
            Err(Error::MechanismInvalid)
        }
    }

    /// Refuses a template that asks for `CKA_EXTRACTABLE=TRUE` or `CKA_SENSITIVE=FALSE`.
    fn refuse_exposure(&self, template: &Template) -> Result<()> {
        if !self.non_exportable() {
            return Ok(());
        }
        let says = |ty, v: bool| -> Result<bool> {
            Ok(match template.get(ty) {
                Some(a) => a.as_bool()? == v,
                None => false,
            })
        };
        if says(CKA_EXTRACTABLE, true)? || says(CKA_SENSITIVE, false)? {
            return Err(Error::TemplateInconsistent);
        }
        Ok(())
    }

    /// The template a key is created with: refused if it asks for exposure, completed with
    /// `CKA_SENSITIVE=TRUE`, `CKA_EXTRACTABLE=FALSE` for private and secret keys. `class` is
    /// the class the function creates when the template does not name one.
    fn keep_keys_in(
        &self,
        template: &Template,
        class: Option<CK_OBJECT_CLASS>,
    ) -> Result<Template> {
        self.refuse_exposure(template)?;
        let mut t = template.clone();
        if !self.non_exportable() {
            return Ok(t);
        }
        let class = match template.get(CKA_CLASS) {
            Some(a) => Some(a.as_ulong()?),
            None => class,
        };
        let is_key = match class {
            Some(c) => c == CKO_PRIVATE_KEY || c == CKO_SECRET_KEY,
            // C_UnwrapKey without CKA_CLASS: whatever comes out is a key.
            None => true,
        };
        if is_key {
            if t.get(CKA_SENSITIVE).is_none() {
                t.0.push(Attribute::bool(CKA_SENSITIVE, true));
            }
            if t.get(CKA_EXTRACTABLE).is_none() {
                t.0.push(Attribute::bool(CKA_EXTRACTABLE, false));
            }
        }
        Ok(t)
    }

    /// Who is logged in on `session`, as the audit log names it.
    fn user_of(&self, session: SessionHandle) -> Option<&'static str> {
        let state = self.inner.session_info(session).ok()?.state;
        Some(match state {
            CKS_RO_USER_FUNCTIONS | CKS_RW_USER_FUNCTIONS => "user",
            CKS_RW_SO_FUNCTIONS => "so",
            _ => "public",
        })
    }

    /// The label and id of `object` (for the audit log), where they can be read.
    fn names_of(
        &self,
        session: Option<SessionHandle>,
        object: Option<ObjectHandle>,
    ) -> (Option<String>, Option<String>) {
        let (mut label, mut id) = (None, None);
        if let (Some(s), Some(o)) = (session, object)
            && let Ok(answers) = self.inner.get_attribute_value(s, o, &[CKA_LABEL, CKA_ID])
        {
            let mut it = answers.into_iter();
            if let Some(AttrAnswer::Value(AttrValue::Bytes(b))) = it.next().as_ref() {
                label = Some(capped(&String::from_utf8_lossy(b)));
            }
            if let Some(AttrAnswer::Value(AttrValue::Bytes(b))) = it.next().as_ref() {
                id = Some(capped(&base16ct::lower::encode_string(b)));
            }
        }
        (label, id)
    }

    /// Records one call in the audit log (if any), naming the object by `names` (read before
    /// the call, for a destroy or a rename) or as it is now. A log that cannot be written is
    /// reported through the logger, and is an error only when failing closed.
    fn record<T>(
        &self,
        session: Option<SessionHandle>,
        function: &'static str,
        mechanism: Option<CK_MECHANISM_TYPE>,
        object: Option<ObjectHandle>,
        names: Option<(Option<String>, Option<String>)>,
        result: &Result<T>,
    ) -> Result<()> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let (label, id) = names.unwrap_or_else(|| self.names_of(session, object));
        let rv = match result {
            Ok(_) => "CKR_OK",
            Err(e) => rv_name(e.rv()),
        };
        let entry = Entry {
            function,
            session: session.map(|s| s.0),
            user: session.and_then(|s| self.user_of(s)),
            mechanism,
            object: object.map(|o| o.0),
            label,
            id,
            rv: rv.to_owned(),
            who: self.who.clone(),
        };
        match log.append(&entry) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::error!("{e}");
                if self.fail_closed {
                    Err(Error::DeviceError)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `C_GetAttributeValue` under the policy (secret values masked, and the refusal
    /// recorded) and the protection rule (short protected keys' check values withheld).
    fn attribute_values(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>> {
        let mut answers = self.exported_values(session, object, types)?;
        if self.protect && types.contains(&CKA_CHECK_VALUE) {
            let f = self.facts(session, object)?;
            let readable = f.sensitive == Some(false) && f.extractable == Some(true);
            let len = f
                .value_len
                .and_then(|l| usize::try_from(l).ok())
                .unwrap_or(0);
            if f.class == Some(CKO_SECRET_KEY)
                && !protection::check_value_public(readable, len, false)
            {
                for (t, a) in types.iter().zip(answers.iter_mut()) {
                    if *t == CKA_CHECK_VALUE {
                        *a = AttrAnswer::Invalid;
                    }
                }
            }
        }
        Ok(answers)
    }

    /// The call under the policy and the protection rule: duplicate template attributes and
    /// mechanisms off the allow-list refused for every call that carries them; the calls that
    /// make, change, read or export keys inspected one by one; every other call passed on.
    fn policed(&self, mut call: Call<'_>) -> Result<Reply> {
        for t in call.templates() {
            t.refuse_duplicates()?;
        }
        if let Some(m) = call.mechanism() {
            self.check_mechanism(m.ty)?;
        }
        if self.protect && (call.mechanism().is_some() || matches!(call, Call::DigestKey { .. })) {
            if let Target::Session(s) = call.target() {
                let s = *s;
                self.protected_need_login(s, &call.objects())?;
            }
        }
        match call {
            Call::MechanismList { slot } => {
                let mut list = self.inner.mechanism_list(slot)?;
                list.retain(|m| self.allows(*m));
                Ok(Reply::Mechanisms(list))
            }
            Call::MechanismInfo { slot, ty } => {
                self.check_mechanism(ty)?;
                self.inner.call(Call::MechanismInfo { slot, ty })
            }
            Call::CreateObject { session, template } => {
                let t = self.keep_keys_in(template, None)?;
                self.refuse_public_protected(&t, None, Facts::default())?;
                let object = self.inner.create_object(session, &t)?;
                self.made(session, object).map(Reply::Object)
            }
            Call::CopyObject {
                session,
                object,
                template,
            } => {
                self.refuse_exposure(template)?;
                self.refuse_public_protected_change(session, object, template, true)?;
                let copy = self.inner.copy_object(session, object, template)?;
                self.made(session, copy).map(Reply::Object)
            }
            Call::SetAttributeValue {
                session,
                object,
                template,
            } => {
                self.refuse_exposure(template)?;
                self.refuse_public_protected_change(session, object, template, false)?;
                self.inner
                    .set_attribute_value(session, object, template)
                    .map(Reply::Unit)
            }
            Call::GetAttributeValue {
                session,
                object,
                types,
            } => self
                .attribute_values(session, object, types)
                .map(Reply::Answers),
            Call::GenerateKey {
                session,
                mech,
                template,
            } => {
                let t = self.keep_keys_in(template, Some(CKO_SECRET_KEY))?;
                self.refuse_public_protected(&t, Some(CKO_SECRET_KEY), Facts::default())?;
                let key = self.inner.generate_key(session, mech, &t)?;
                self.made(session, key).map(Reply::Object)
            }
            Call::GenerateKeyPair {
                session,
                mech,
                public_template,
                private_template,
            } => {
                let p = self.keep_keys_in(private_template, Some(CKO_PRIVATE_KEY))?;
                self.refuse_public_protected(&p, Some(CKO_PRIVATE_KEY), Facts::default())?;
                let (public, private) =
                    self.inner
                        .generate_key_pair(session, mech, public_template, &p)?;
                match self.made(session, private) {
                    Ok(private) => Ok(Reply::KeyPair((public, private))),
                    Err(e) => self.undo(session, public, e),
                }
            }
            // Wrapping is export: a non-exportable slot lets no key out, even encrypted.
            Call::WrapKey { .. } if self.non_exportable() => Err(Error::KeyUnextractable),
            Call::UnwrapKey {
                session,
                mech,
                unwrapping_key,
                wrapped,
                template,
            } => {
                let t = self.keep_keys_in(template, None)?;
                self.refuse_public_protected(&t, Some(CKO_SECRET_KEY), Facts::default())?;
                let key = self.unwrap_protected(session, mech, unwrapping_key, wrapped, t)?;
                self.made(session, key).map(Reply::Object)
            }
            Call::DeriveKey {
                session,
                mech,
                base_key,
                template,
            } => {
                let t = self.keep_keys_in(template, Some(CKO_SECRET_KEY))?;
                self.derive_protected(session, mech, base_key, t)
                    .map(Reply::Object)
            }
            other => self.inner.call(other),
        }
    }
}

/// A read of a key's attributes that a check before the call needed failed with `err`.
///
/// A handle the module does not know (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`)
/// is passed on: `Ok`, and the module reports it with the code its function has for it
/// (`CKR_UNWRAPPING_KEY_HANDLE_INVALID`, …). A session or device that fails is that failure.
/// Anything else fails closed with `refusal`: a key whose usage or protection cannot be read
/// cannot be shown to allow the call (`CKR_KEY_FUNCTION_NOT_PERMITTED`, "an attempt has been
/// made to use a key for a cryptographic purpose that the key's attributes are not set to
/// allow it to do"; for a key that may need a login, `CKR_USER_NOT_LOGGED_IN`).
fn unread(err: Error, refusal: Error) -> Result<()> {
    match err.rv() {
        CKR_OBJECT_HANDLE_INVALID | CKR_KEY_HANDLE_INVALID => Ok(()),
        CKR_SESSION_HANDLE_INVALID
        | CKR_SESSION_CLOSED
        | CKR_DEVICE_ERROR
        | CKR_DEVICE_MEMORY
        | CKR_DEVICE_REMOVED
        | CKR_HOST_MEMORY
        | CKR_CRYPTOKI_NOT_INITIALIZED => Err(err),
        _ => Err(refusal),
    }
}

/// Calls the audit log leaves out: lookups, the parts of an operation between its init and
/// its end (`*Update`, `*Begin`, `*Next`), digests and random numbers (no key), and session
/// bookkeeping. Every other call — including any function added to the vocabulary later — is
/// recorded.
/// A label or id as the audit log holds it: at most 256 bytes (a caller-chosen label must not
/// fill the log's disk).
pub(crate) fn capped(text: &str) -> String {
    const MAX: usize = 256;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

fn quiet(call: &Call<'_>) -> bool {
    matches!(
        call,
        Call::SlotList { .. }
            | Call::SlotInfo { .. }
            | Call::TokenInfo { .. }
            | Call::MechanismList { .. }
            | Call::MechanismInfo { .. }
            | Call::WaitForSlotEvent { .. }
            | Call::OpenSession { .. }
            | Call::CloseSession { .. }
            | Call::CloseAllSessions { .. }
            | Call::SessionInfo { .. }
            | Call::SessionCancel { .. }
            | Call::OperationState { .. }
            | Call::ObjectSize { .. }
            | Call::GetAttributeValue { .. }
            | Call::FindObjectsInit { .. }
            | Call::FindObjects { .. }
            | Call::FindObjectsFinal { .. }
            | Call::EncryptUpdate { .. }
            | Call::DecryptUpdate { .. }
            | Call::DigestInit { .. }
            | Call::Digest { .. }
            | Call::DigestUpdate { .. }
            | Call::DigestFinal { .. }
            | Call::SignUpdate { .. }
            | Call::VerifyUpdate { .. }
            | Call::SeedRandom { .. }
            | Call::GenerateRandom { .. }
            | Call::EncryptMessageBegin { .. }
            | Call::EncryptMessageNext { last: false, .. }
            | Call::MessageEncryptFinal { .. }
            | Call::DecryptMessageBegin { .. }
            | Call::DecryptMessageNext { last: false, .. }
            | Call::MessageDecryptFinal { .. }
            | Call::SignMessageBegin { .. }
            | Call::SignMessageNext { last: false, .. }
            | Call::MessageSignFinal { .. }
            | Call::VerifyMessageBegin { .. }
            | Call::VerifyMessageNext {
                signature: None,
                ..
            }
            | Call::MessageVerifyFinal { .. }
    )
}

impl Backend for Overlay {
    /// Policy and audit see every call: the policy through [`Overlay::policed`], the audit
    /// log records every call [`quiet`] does not leave out (length queries that succeed are
    /// not recorded), with its mechanism, its key or new object, and the result code.
    fn call(&self, mut call: Call<'_>) -> Result<Reply> {
        let name = call.name();
        // A read of a secret value is a use of the key, recorded like one.
        let reads_secret = matches!(&call, Call::GetAttributeValue { types, .. }
            if types.iter().any(|t| SECRET_VALUES.contains(t)));
        let audited = !quiet(&call) || reads_secret;
        let query = call.is_query();
        let mech = call.mechanism().map(|m| m.ty);
        let object = call.object();
        let session = match call.target() {
            Target::Session(s) => Some(*s),
            _ => None,
        };
        // What the object is called before a call that removes or renames it.
        let before = match (&call, &self.audit) {
            (Call::DestroyObject { .. } | Call::SetAttributeValue { .. }, Some(_)) => {
                Some(self.names_of(session, object))
            }
            _ => None,
        };
        let r = self.policed(call);
        // Refusals by policy, role or limits are recorded whatever the function.
        let refused = matches!(
            &r,
            Err(Error::ActionProhibited | Error::SessionCount | Error::DeviceMemory)
        );
        if (audited && (!query || r.is_err())) || refused {
            let object = match &r {
                Ok(Reply::Object(o)) => Some(*o),
                Ok(Reply::KeyPair((_, private))) => Some(*private),
                _ => object,
            };
            // A read answered without a value is what the application sees: the C door's code.
            let seen: Result<()> = match &r {
                Ok(Reply::Answers(a)) => answers_outcome(a),
                Ok(_) => Ok(()),
                Err(e) => Err(e.clone()),
            };
            self.record(session, name, mech, object, before, &seen)?;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    //! The protection rule in front of a module, against a fake module that answers what it is
    //! told to (or fails the attribute reads) and makes whatever it is asked.

    use std::collections::BTreeMap;

    use parking_lot::Mutex;

    use super::*;
    use crate::call::{
        CipherFunctions, DigestFunctions, DualFunctions, KeyFunctions, MessageFunctions,
        ObjectFunctions, RandomFunctions, SessionFunctions, SignFunctions, SlotFunctions,
    };

    /// A module: objects are templates; reads of the objects named in `failing` fail whole
    /// with `fail`.
    struct Fake {
        objects: Mutex<BTreeMap<u64, Template>>,
        failing: Vec<u64>,
        fail: Error,
    }

    impl Fake {
        fn new(objects: &[(u64, Template)], failing: &[u64], fail: Error) -> Arc<Self> {
            Arc::new(Self {
                objects: Mutex::new(objects.iter().cloned().collect()),
                failing: failing.to_vec(),
                fail,
            })
        }

        fn put(&self, t: &Template) -> ObjectHandle {
            let mut o = self.objects.lock();
            let id = o.keys().last().map_or(1, |k| k + 1);
            o.insert(id, t.clone());
            ObjectHandle(id)
        }

        fn count(&self) -> usize {
            self.objects.lock().len()
        }
    }

    impl Backend for Fake {
        fn call(&self, call: Call<'_>) -> Result<Reply> {
            call.dispatch(self)
        }
    }

    impl SlotFunctions for Fake {}
    impl CipherFunctions for Fake {}
    impl DigestFunctions for Fake {}
    impl SignFunctions for Fake {}
    impl DualFunctions for Fake {}
    impl RandomFunctions for Fake {}
    impl MessageFunctions for Fake {}

    impl SessionFunctions for Fake {
        fn session_info(&self, _: SessionHandle) -> Result<SessionInfo> {
            Ok(SessionInfo {
                slot: SlotId(0),
                state: CKS_RW_USER_FUNCTIONS,
                flags: CKF_RW_SESSION | CKF_SERIAL_SESSION,
                device_error: 0,
            })
        }
    }

    impl ObjectFunctions for Fake {
        fn create_object(&self, _: SessionHandle, t: &Template) -> Result<ObjectHandle> {
            Ok(self.put(t))
        }

        fn copy_object(
            &self,
            _: SessionHandle,
            o: ObjectHandle,
            t: &Template,
        ) -> Result<ObjectHandle> {
            let mut copy = self
                .objects
                .lock()
                .get(&o.0)
                .cloned()
                .ok_or(Error::ObjectHandleInvalid)?;
            copy.0.retain(|a| t.get(a.ty).is_none());
            copy.0.extend(t.iter().cloned());
            Ok(self.put(&copy))
        }

        fn destroy_object(&self, _: SessionHandle, o: ObjectHandle) -> Result<()> {
            self.objects
                .lock()
                .remove(&o.0)
                .map(drop)
                .ok_or(Error::ObjectHandleInvalid)
        }

        fn set_attribute_value(
            &self,
            _: SessionHandle,
            o: ObjectHandle,
            t: &Template,
        ) -> Result<()> {
            let mut objects = self.objects.lock();
            let obj = objects.get_mut(&o.0).ok_or(Error::ObjectHandleInvalid)?;
            obj.0.retain(|a| t.get(a.ty).is_none());
            obj.0.extend(t.iter().cloned());
            Ok(())
        }

        fn get_attribute_value(
            &self,
            _: SessionHandle,
            o: ObjectHandle,
            types: &[CK_ULONG],
        ) -> Result<Vec<AttrAnswer>> {
            if self.failing.contains(&o.0) {
                return Err(self.fail.clone());
            }
            let objects = self.objects.lock();
            let obj = objects.get(&o.0).ok_or(Error::ObjectHandleInvalid)?;
            Ok(types
                .iter()
                .map(|t| match obj.get(*t) {
                    Some(a) => AttrAnswer::Value(a.value.clone()),
                    None => AttrAnswer::Invalid,
                })
                .collect())
        }
    }

    impl KeyFunctions for Fake {
        fn generate_key(
            &self,
            _: SessionHandle,
            _: &Mechanism,
            t: &Template,
        ) -> Result<ObjectHandle> {
            Ok(self.put(&t.clone().with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))))
        }

        fn unwrap_key(
            &self,
            _: SessionHandle,
            _: &Mechanism,
            _: ObjectHandle,
            _: &[u8],
            t: &Template,
        ) -> Result<ObjectHandle> {
            Ok(self.put(t))
        }

        fn derive_key(
            &self,
            _: SessionHandle,
            _: &Mechanism,
            _: ObjectHandle,
            t: &Template,
        ) -> Result<ObjectHandle> {
            Ok(self.put(&t.clone().with(Attribute::ulong(CKA_VALUE_LEN, 32))))
        }
    }

    const S: SessionHandle = SessionHandle(1);

    fn key(attrs: &[Attribute]) -> Template {
        let mut t = Template::new().with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY));
        t.0.extend(attrs.iter().cloned());
        t
    }

    /// A sensitive AES key that may do everything (object 1).
    fn protected_key() -> Template {
        key(&[
            Attribute::bool(CKA_PRIVATE, true),
            Attribute::bool(CKA_SENSITIVE, true),
            Attribute::bool(CKA_EXTRACTABLE, false),
            Attribute::bool(CKA_DERIVE, true),
            Attribute::bool(CKA_UNWRAP, true),
            Attribute::bool(CKA_DECRYPT, true),
            Attribute::bool(CKA_ALWAYS_AUTHENTICATE, false),
        ])
    }

    fn overlay(fake: &Arc<Fake>) -> Overlay {
        Overlay::new(fake.clone(), None, None).protecting()
    }

    fn readable() -> Template {
        key(&[
            Attribute::bool(CKA_SENSITIVE, false),
            Attribute::bool(CKA_EXTRACTABLE, true),
        ])
    }

    #[test]
    fn unreadable_usage_or_protection_refuses_derive_and_unwrap() {
        let mech = Mechanism::new(CKM_AES_ECB_ENCRYPT_DATA);
        // The usage read fails whole (a module's CKR_DEVICE_ERROR, or any other code): the
        // call never reaches the module, and nothing is made.
        for fail in [
            Error::DeviceError,
            Error::GeneralError,
            Error::AttributeSensitive,
        ] {
            let fake = Fake::new(&[(1, protected_key())], &[1], fail.clone());
            let o = overlay(&fake);
            let want = match fail {
                Error::DeviceError => Error::DeviceError,
                _ => Error::KeyFunctionNotPermitted,
            };
            assert_eq!(
                o.derive_key(S, &mech, ObjectHandle(1), &readable()),
                Err(want.clone()),
                "derive, read failing with {fail:?}"
            );
            let wrap = Mechanism::new(CKM_AES_KEY_WRAP);
            assert_eq!(
                o.unwrap_key(S, &wrap, ObjectHandle(1), &[0; 40], &readable()),
                Err(want),
                "unwrap, read failing with {fail:?}"
            );
            assert_eq!(fake.count(), 1, "nothing made");
        }
        // An unknown key is the module's to report, with its own code for the function.
        let fake = Fake::new(&[], &[], Error::DeviceError);
        let o = overlay(&fake);
        assert!(o.derive_key(S, &mech, ObjectHandle(7), &readable()).is_ok());
    }

    #[test]
    fn protected_keys_are_never_made_public_through_a_module() {
        let fake = Fake::new(&[(1, protected_key())], &[], Error::DeviceError);
        let o = overlay(&fake);
        let public = |attrs: &[Attribute]| {
            let mut t = key(attrs);
            t.0.push(Attribute::bool(CKA_PRIVATE, false));
            t
        };
        let sensitive = Attribute::bool(CKA_SENSITIVE, true);
        let unextractable = Attribute::bool(CKA_EXTRACTABLE, false);
        let keygen = Mechanism::new(CKM_AES_KEY_GEN);
        let wrap = Mechanism::new(CKM_AES_KEY_WRAP);
        for t in [
            public(std::slice::from_ref(&sensitive)),
            public(std::slice::from_ref(&unextractable)),
        ] {
            assert_eq!(
                o.create_object(S, &t),
                Err(Error::TemplateInconsistent),
                "create"
            );
            assert_eq!(
                o.generate_key(S, &keygen, &t),
                Err(Error::TemplateInconsistent),
                "generate"
            );
            assert_eq!(
                o.unwrap_key(S, &wrap, ObjectHandle(1), &[0; 40], &t),
                Err(Error::TemplateInconsistent),
                "unwrap"
            );
        }
        // A public key the module's defaults make protected (nothing said about
        // CKA_EXTRACTABLE, and this module answers none): made, then destroyed again.
        assert_eq!(
            o.create_object(S, &public(&[])),
            Err(Error::TemplateInconsistent)
        );
        assert_eq!(fake.count(), 1, "nothing left behind");
        // Copies and changes: to public, or a public key to sensitive.
        assert_eq!(
            o.copy_object(
                S,
                ObjectHandle(1),
                &Template::new().with(Attribute::bool(CKA_PRIVATE, false))
            ),
            Err(Error::TemplateInconsistent),
            "copy"
        );
        let open = o.create_object(
            S,
            &public(&[
                Attribute::bool(CKA_SENSITIVE, false),
                Attribute::bool(CKA_EXTRACTABLE, true),
            ]),
        );
        let open = open.expect("an unprotected public key is fine");
        for change in [sensitive, unextractable] {
            assert_eq!(
                o.set_attribute_value(S, open, &Template::new().with(change)),
                Err(Error::TemplateInconsistent),
                "set"
            );
        }
        assert_eq!(
            o.set_attribute_value(
                S,
                ObjectHandle(1),
                &Template::new().with(Attribute::bool(CKA_PRIVATE, false))
            ),
            Err(Error::AttributeReadOnly),
            "set private key public"
        );
        // Private protected keys and public unprotected ones still work.
        let private = key(&[
            Attribute::bool(CKA_PRIVATE, true),
            Attribute::bool(CKA_SENSITIVE, true),
        ]);
        assert!(o.create_object(S, &private).is_ok());
        assert!(
            o.set_attribute_value(
                S,
                open,
                &Template::new().with(Attribute::bytes(CKA_LABEL, *b"x"))
            )
            .is_ok()
        );
    }
}
