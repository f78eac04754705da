//! The object model: attributes, the sealed key material, the parsed-key cache, and the rules
//! that build, copy, change and reveal objects.
//!
//! An `Object` is immutable once built; a change (`C_SetAttributeValue`) builds a new version
//! that shares the key material (and its parsed form) with the old one.

pub(crate) mod policy;
pub(crate) mod protection;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bridge::personality::{KeyShape, Profile, curve_name};
use bridge::{AttrAnswer, AttrValue, Attribute, Error, Result, Template, ULONG_SIZE};
use cryptoki_sys::*;
use parking_lot::RwLock;

use crate::crypto::Secret;
use crate::storage::codec;
use policy::{AttrRule, Def, Kind, f};

/// The key material of an object: its secret attributes, in clear once known, and the parsed
/// forms mechanisms cached.
pub(crate) struct Material {
    /// The secret attributes, once unsealed (or from the start for a new object).
    plain: OnceLock<SecretAttrs>,
    /// The sealed secret attributes as read from the store (until unsealed).
    sealed: Option<Sealed>,
    /// Parsed keys by type (an `RsaKeyPair`, an `EcdsaKeyPair`, an AES key schedule, ...).
    parsed: RwLock<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>,
}

/// What the store read: the sealed bytes and what they are bound to.
pub(crate) struct Sealed {
    pub(crate) bytes: Vec<u8>,
    pub(crate) aad: Vec<u8>,
    /// Sealed under the token key (a private object, or a protected key whatever its
    /// `CKA_PRIVATE`) rather than the device key.
    pub(crate) under_token_key: bool,
    /// A public object: a protected public key written before protected keys were always
    /// sealed under the token key may still be under the device key.
    pub(crate) public: bool,
}

/// Secret attribute values.
#[derive(Default)]
pub(crate) struct SecretAttrs(pub(crate) Vec<(CK_ATTRIBUTE_TYPE, Secret)>);

impl SecretAttrs {
    pub(crate) fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&Secret> {
        self.0.iter().find(|(t, _)| *t == ty).map(|(_, s)| s)
    }
}

impl Material {
    /// Material known in clear (a new object).
    pub(crate) fn plain(secrets: SecretAttrs) -> Arc<Self> {
        let plain = OnceLock::new();
        let _ = plain.set(secrets);
        Arc::new(Self {
            plain,
            sealed: None,
            parsed: RwLock::new(Vec::new()),
        })
    }

    /// Material read from the store, to be unsealed on first use.
    pub(crate) fn sealed(sealed: Sealed) -> Arc<Self> {
        Arc::new(Self {
            plain: OnceLock::new(),
            sealed: Some(sealed),
            parsed: RwLock::new(Vec::new()),
        })
    }

    /// The secret attributes, unsealing with `open` on first use.
    pub(crate) fn secrets(
        &self,
        open: impl FnOnce(&Sealed) -> Result<SecretAttrs>,
    ) -> Result<&SecretAttrs> {
        if let Some(s) = self.plain.get() {
            return Ok(s);
        }
        let sealed = self
            .sealed
            .as_ref()
            .ok_or(Error::Internal("material without secrets"))?;
        let opened = open(sealed)?;
        let _ = self.plain.set(opened);
        self.plain.get().ok_or(Error::Internal("material unsealed"))
    }

    /// Whether the secrets are known in clear.
    pub(crate) fn is_open(&self) -> bool {
        self.plain.get().is_some()
    }

    /// The length of the sealed part of the object's record: as read from the store, or as
    /// sealing the secrets known in clear would make it (the same number either way).
    pub(crate) fn sealed_len(&self) -> usize {
        match (self.plain.get(), &self.sealed) {
            (Some(plain), _) => {
                crate::crypto::SEAL_NONCE_LEN
                    + codec::secret_len(plain.0.iter().map(|(_, s)| s.expose().len()))
                    + crate::crypto::SEAL_TAG_LEN
            }
            (None, Some(sealed)) => sealed.bytes.len(),
            (None, None) => 0,
        }
    }

    /// The length of a sealed part holding no value: what the seal adds to any content.
    pub(crate) fn empty_sealed_len() -> usize {
        crate::crypto::SEAL_NONCE_LEN
            + codec::secret_len(std::iter::empty())
            + crate::crypto::SEAL_TAG_LEN
    }

    /// The cached parsed form of type `T`, building it with `build` on first use.
    pub(crate) fn parsed<T: Any + Send + Sync>(
        &self,
        build: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let id = TypeId::of::<T>();
        if let Some((_, v)) = self.parsed.read().iter().find(|(t, _)| *t == id) {
            return Arc::clone(v)
                .downcast::<T>()
                .map_err(|_| Error::Internal("parsed key type"));
        }
        let built: Arc<T> = Arc::new(build()?);
        let mut w = self.parsed.write();
        if !w.iter().any(|(t, _)| *t == id) {
            w.push((id, Arc::clone(&built) as Arc<dyn Any + Send + Sync>));
        }
        Ok(built)
    }
}

/// One object of a token or a session.
#[derive(Clone)]
pub(crate) struct Object {
    /// The handle (the store's row id for a token object).
    pub(crate) handle: CK_OBJECT_HANDLE,
    /// The store revision this version was read or written at (0 for session objects).
    pub(crate) rev: u64,
    /// The session that owns a session object.
    pub(crate) owner: Option<CK_SESSION_HANDLE>,
    /// Every attribute but the sealed ones (whose values live in `material`).
    pub(crate) attrs: BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>,
    /// The key material.
    pub(crate) material: Arc<Material>,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object(0x{:x}, class 0x{:x})", self.handle, self.class())
    }
}

/// The owned form of an attribute value for a `CK_ULONG`.
pub(crate) fn ulong_value(v: CK_ULONG) -> AttrValue {
    AttrValue::Bytes(v.to_ne_bytes().to_vec())
}

/// The owned form of a `CK_BBOOL`.
pub(crate) fn bool_value(v: bool) -> AttrValue {
    AttrValue::Bytes(vec![u8::from(v)])
}

fn as_ulong(v: &AttrValue) -> Option<CK_ULONG> {
    match v {
        AttrValue::Bytes(b) => <[u8; ULONG_SIZE]>::try_from(b.as_slice())
            .ok()
            .map(CK_ULONG::from_ne_bytes),
        AttrValue::Template(_) => None,
    }
}

fn as_bool(v: &AttrValue) -> Option<bool> {
    match v {
        AttrValue::Bytes(b) if b.len() == 1 => b.first().map(|x| *x != 0),
        _ => None,
    }
}

impl Object {
    /// `CKA_CLASS`.
    pub(crate) fn class(&self) -> CK_OBJECT_CLASS {
        self.ulong(CKA_CLASS).unwrap_or(CK_UNAVAILABLE_INFORMATION)
    }

    /// `CKA_KEY_TYPE` (or `CKA_CERTIFICATE_TYPE` for certificates).
    pub(crate) fn subtype(&self) -> Option<CK_ULONG> {
        match self.class() {
            CKO_CERTIFICATE => self.ulong(CKA_CERTIFICATE_TYPE),
            CKO_DATA => None,
            _ => self.ulong(CKA_KEY_TYPE),
        }
    }

    /// `CKA_KEY_TYPE`.
    pub(crate) fn key_type(&self) -> Option<CK_KEY_TYPE> {
        self.ulong(CKA_KEY_TYPE)
    }

    /// A `CK_ULONG` attribute.
    /// The key's type, size and curve, as a personality judges them.
    pub(crate) fn shape(&self) -> KeyShape {
        let bits = match self.key_type() {
            Some(CKK_RSA) => self
                .ulong(CKA_MODULUS_BITS)
                .map(u64::from)
                .or_else(|| self.bytes(CKA_MODULUS).map(significant_bits)),
            Some(_) => self
                .ulong(CKA_VALUE_LEN)
                .map(|l| u64::from(l).saturating_mul(8)),
            None => None,
        };
        KeyShape {
            key_type: self.key_type(),
            bits,
            curve: self.bytes(CKA_EC_PARAMS).and_then(curve_name),
        }
    }

    pub(crate) fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.attrs.get(&ty).and_then(as_ulong)
    }

    /// A `CK_BBOOL` attribute (`None` if absent).
    pub(crate) fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<bool> {
        self.attrs.get(&ty).and_then(as_bool)
    }

    /// A `CK_BBOOL` attribute, false if absent.
    pub(crate) fn is(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        self.flag(ty).unwrap_or(false)
    }

    /// A byte attribute.
    pub(crate) fn bytes(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        match self.attrs.get(&ty)? {
            AttrValue::Bytes(b) => Some(b),
            AttrValue::Template(_) => None,
        }
    }

    /// A template attribute.
    pub(crate) fn template(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&Template> {
        match self.attrs.get(&ty)? {
            AttrValue::Template(t) => Some(t),
            AttrValue::Bytes(_) => None,
        }
    }

    /// `CKA_TOKEN`.
    pub(crate) fn is_token(&self) -> bool {
        self.is(CKA_TOKEN)
    }

    /// `CKA_PRIVATE`.
    pub(crate) fn is_private(&self) -> bool {
        self.is(CKA_PRIVATE)
    }

    /// Whether this is a private or secret key whose value may not be read or may not leave:
    /// its material is sealed under the token key and used only after a user login, whatever
    /// its `CKA_PRIVATE` (see `Token::insert`).
    pub(crate) fn is_protected(&self) -> bool {
        protection::of(self).is_protected()
    }

    /// Whether the object's material is sealed under the token key (and so usable only after
    /// a user login): private objects, and protected keys whatever their `CKA_PRIVATE`.
    pub(crate) fn under_token_key(&self) -> bool {
        self.is_private() || self.is_protected()
    }

    /// Whether this is a key object.
    pub(crate) fn is_key(&self) -> bool {
        matches!(
            self.class(),
            CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY
        )
    }

    /// The rule tables of this object.
    pub(crate) fn rules(&self) -> Vec<&'static [AttrRule]> {
        policy::rules_for(self.class(), self.subtype()).unwrap_or_default()
    }

    /// The one choke point that decides whether the value of a secret attribute may leave the
    /// device in clear (`C_GetAttributeValue`, search by value). Wrapping has its own check,
    /// `wrap_check`, because a wrapped key is not clear text.
    pub(crate) fn may_reveal(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        let rules = self.rules();
        let is_fn7 = policy::find(&rules, ty).is_some_and(|r| r.flags & f::SECRET != 0);
        if !is_fn7 {
            // Not key material (or sealed at rest only, like a private data object's value):
            // readable by whoever can see the object.
            return true;
        }
        !self.is(CKA_SENSITIVE) && self.flag(CKA_EXTRACTABLE).unwrap_or(false)
    }

    /// Whether `ty` is one of the attributes this object keeps sealed.
    pub(crate) fn is_sealed_type(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        policy::is_sealed(&self.rules(), ty)
    }

    /// Whether the key may leave the device wrapped (`C_WrapKey`), given the wrapping key.
    pub(crate) fn wrap_check(&self, wrapping_key: &Object) -> Result<()> {
        if !self.flag(CKA_EXTRACTABLE).unwrap_or(false) {
            return Err(Error::KeyUnextractable);
        }
        if self.is(CKA_WRAP_WITH_TRUSTED) && !wrapping_key.is(CKA_TRUSTED) {
            return Err(Error::KeyNotWrappable);
        }
        Ok(())
    }

    /// One `C_GetAttributeValue` answer. Secret values come from `secrets` (already unsealed
    /// by the caller, who knows the keys).
    pub(crate) fn answer(
        &self,
        ty: CK_ATTRIBUTE_TYPE,
        secrets: Option<&SecretAttrs>,
    ) -> AttrAnswer {
        if self.is_sealed_type(ty) {
            if !self.may_reveal(ty) {
                return AttrAnswer::Sensitive;
            }
            return match secrets {
                Some(s) => match s.get(ty) {
                    Some(v) => AttrAnswer::Value(AttrValue::Bytes(v.expose().to_vec())),
                    None => AttrAnswer::Invalid,
                },
                None => AttrAnswer::Sensitive,
            };
        }
        if ty == CKA_CHECK_VALUE && !self.check_value_public() {
            return AttrAnswer::Invalid;
        }
        match self.attrs.get(&ty) {
            Some(v) => AttrAnswer::Value(v.clone()),
            None => AttrAnswer::Invalid,
        }
    }

    /// Whether this object's `CKA_CHECK_VALUE` may be read (`bridge::protection::
    /// check_value_public`, by length: whether a derivation made the key is not recorded,
    /// and a derived key got no check value when it was made); certificates' are public.
    fn check_value_public(&self) -> bool {
        if self.class() != CKO_SECRET_KEY {
            return true;
        }
        let len = self
            .ulong(CKA_VALUE_LEN)
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        bridge::protection::check_value_public(self.may_reveal(CKA_VALUE), len, false)
    }

    /// Whether the object matches a search template. Secret attributes match only where they
    /// could be read (no search oracle on sensitive values).
    pub(crate) fn matches(&self, template: &Template, secrets: Option<&SecretAttrs>) -> bool {
        template.iter().all(|a| match self.answer(a.ty, secrets) {
            AttrAnswer::Value(v) => v == a.value,
            _ => false,
        })
    }

    /// `C_GetObjectSize`: the bytes of the object's record in the store (its public attributes
    /// and its sealed secret attributes, with their framing, the seal's nonce and tag); for a
    /// session object, what that record would be. It grows with every value and is the same
    /// whether or not the secrets are unsealed in this process. A protected key's secret values
    /// are not counted (its sealed part counts as an empty one): their lengths are those of
    /// integers without leading zeros (RSA's CRT values, an EC scalar), so they would tell a
    /// little about the values; the key's size is public anyway (`CKA_MODULUS`,
    /// `CKA_VALUE_LEN`, `CKA_EC_PARAMS`).
    pub(crate) fn size(&self) -> CK_ULONG {
        let public = codec::public_len(self.attrs.iter().map(|(t, v)| (*t, v)));
        let sealed = if self.is_protected() {
            Material::empty_sealed_len()
        } else {
            self.material.sealed_len()
        };
        let total = codec::record_len(public, sealed);
        CK_ULONG::try_from(total).unwrap_or(CK_ULONG::MAX)
    }
}

/// How a new object comes to be; decides which footnotes apply and the provenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `C_CreateObject`.
    Create,
    /// `C_GenerateKey(Pair)` with this mechanism.
    Generate(CK_MECHANISM_TYPE),
    /// `C_UnwrapKey`.
    Unwrap,
    /// `C_DeriveKey`.
    Derive,
}

/// Everything `assemble` needs to build a new object.
pub(crate) struct Assembly<'a> {
    pub(crate) origin: Origin,
    pub(crate) class: CK_OBJECT_CLASS,
    pub(crate) subtype: Option<CK_ULONG>,
    /// The application's template.
    pub(crate) template: &'a Template,
    /// Token-supplied attributes (generated key material, computed public values); they win
    /// over the template. Values of secret attributes go into the sealed part.
    pub(crate) supplied: Vec<Attribute>,
    /// Whether the SO is the one creating (may set `CKA_TRUSTED`).
    pub(crate) so: bool,
    /// The token's personality (strict: keys always sensitive, never extractable; its
    /// attribute defaults).
    pub(crate) profile: &'static Profile,
}

/// A built object before it gets a handle.
pub(crate) struct NewObject {
    pub(crate) attrs: BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>,
    pub(crate) secrets: SecretAttrs,
}

impl NewObject {
    /// The object, with its handle.
    pub(crate) fn into_object(
        self,
        handle: CK_OBJECT_HANDLE,
        owner: Option<CK_SESSION_HANDLE>,
    ) -> Object {
        Object {
            handle,
            rev: 0,
            owner,
            attrs: self.attrs,
            material: Material::plain(self.secrets),
        }
    }

    pub(crate) fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        self.attrs.get(&ty).and_then(as_bool).unwrap_or(false)
    }

    /// Whether the new object is a key.
    pub(crate) fn is_key(&self) -> bool {
        matches!(
            self.attrs.get(&CKA_CLASS).and_then(|v| match v {
                AttrValue::Bytes(b) => <[u8; ULONG_SIZE]>::try_from(b.as_slice())
                    .ok()
                    .map(CK_ULONG::from_ne_bytes),
                AttrValue::Template(_) => None,
            }),
            Some(CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY)
        )
    }
}

/// Checks a value's length against its kind.
pub(crate) fn check_kind(kind: Kind, value: &AttrValue) -> Result<()> {
    let ok = match (kind, value) {
        (Kind::Template, AttrValue::Template(_)) => true,
        (Kind::Template, AttrValue::Bytes(_)) | (_, AttrValue::Template(_)) => false,
        (Kind::Bool, AttrValue::Bytes(b)) => b.len() == 1,
        (Kind::Ulong, AttrValue::Bytes(b)) => b.len() == ULONG_SIZE,
        (Kind::Date, AttrValue::Bytes(b)) => b.is_empty() || b.len() == 8,
        // An empty list is refused: PKCS#11 gives it no meaning, some tokens read it as "every
        // mechanism" (SoftHSMv2), others could as "none"; one who writes it means a restriction
        // and must not silently get none. An absent value (the default) is no restriction.
        (Kind::Mechanisms, AttrValue::Bytes(b)) => !b.is_empty() && b.len() % ULONG_SIZE == 0,
        (Kind::BigInt, AttrValue::Bytes(b)) => !b.is_empty(),
        (Kind::Bytes, AttrValue::Bytes(_)) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::AttributeValueInvalid)
    }
}

/// Checks a template against a set of rules for the given origin: known types, value kinds,
/// read-only attributes, SO-only values, and conflicting duplicates.
fn check_template(
    tables: &[&'static [AttrRule]],
    template: &Template,
    forbidden: u32,
    so: bool,
) -> Result<()> {
    for (i, a) in template.iter().enumerate() {
        let rule = policy::find(tables, a.ty).ok_or(Error::AttributeTypeInvalid)?;
        check_kind(rule.kind, &a.value)?;
        if rule.flags & forbidden != 0 {
            return Err(Error::AttributeReadOnly);
        }
        if rule.flags & f::SO_TRUE != 0 && a.as_bool()? && !so {
            return Err(Error::AttributeReadOnly);
        }
        if template
            .0
            .get(..i)
            .is_some_and(|before| before.iter().any(|b| b.ty == a.ty))
        {
            // Every layer must read the same value: a duplicate is refused, not resolved
            // (a policy reading the first and a module applying the last disagree).
            return Err(Error::TemplateInconsistent);
        }
    }
    Ok(())
}

/// The `CKA_SENSITIVE` and `CKA_EXTRACTABLE` a new private or secret key gets from `template`
/// and the defaults: sensitive if the template says so, for a private key (or as the
/// personality's defaults say), and always under the strict personality; extractable if the
/// template says so, or by default for created and unwrapped keys (not under the strict
/// personality), or as the personality's defaults say.
fn key_protection(
    class: CK_OBJECT_CLASS,
    origin: Origin,
    template: &Template,
    profile: &Profile,
) -> Result<(bool, bool)> {
    let strict = profile.strict;
    let default_sensitive = profile
        .defaults
        .sensitive
        .unwrap_or(class == CKO_PRIVATE_KEY);
    let sensitive = strict
        || template
            .get(CKA_SENSITIVE)
            .map(Attribute::as_bool)
            .transpose()?
            .unwrap_or(default_sensitive);
    let default_extractable = !strict
        && profile
            .defaults
            .extractable
            .unwrap_or(matches!(origin, Origin::Unwrap | Origin::Create));
    let extractable = template
        .get(CKA_EXTRACTABLE)
        .map(Attribute::as_bool)
        .transpose()?
        .unwrap_or(default_extractable);
    Ok((sensitive, extractable))
}

/// The `CKA_PRIVATE` of a new object of `class` made from `template` by `origin`: what the
/// template says; else TRUE for keys that hold secrets, except a *session* key that is not
/// protected (not sensitive, extractable): its value is no secret from whoever sees it, a
/// session object is seen only by its application, and OpenSSL 3's pkcs11-provider makes such
/// keys (imported from files, ECDH and HKDF secrets) on sessions that are not logged in. A
/// protected key stays private whatever the session (the protection rule).
///
/// A template that asks for `CKA_PRIVATE=FALSE` on a private or secret key it makes (or leaves,
/// by default) sensitive or not extractable is `CKR_TEMPLATE_INCONSISTENT`, on every path that
/// makes a key (create, generate, unwrap, derive): a protected key is always private. Every
/// path asks here before any cryptography.
pub(crate) fn new_private(
    class: CK_OBJECT_CLASS,
    origin: Origin,
    template: &Template,
    profile: &Profile,
) -> Result<bool> {
    let is_key = matches!(class, CKO_PRIVATE_KEY | CKO_SECRET_KEY);
    if let Some(a) = template.get(CKA_PRIVATE) {
        let private = a.as_bool()?;
        if !private && is_key {
            let (sensitive, extractable) = key_protection(class, origin, template, profile)?;
            bridge::protection::check_private(
                Some(class),
                Some(sensitive),
                Some(extractable),
                Some(private),
            )?;
        }
        return Ok(private);
    }
    if !policy::default_private(class) {
        return Ok(false);
    }
    let token = template
        .get(CKA_TOKEN)
        .map(Attribute::as_bool)
        .transpose()?
        .unwrap_or(false);
    if token {
        return Ok(true);
    }
    let (sensitive, extractable) = key_protection(class, origin, template, profile)?;
    Ok(sensitive || !extractable)
}

/// Builds a new object from a template and what the token supplies, enforcing the policy
/// table. The caller has already chosen the class and subtype (from the template for
/// `C_CreateObject`, from the mechanism otherwise).
pub(crate) fn assemble(a: Assembly<'_>) -> Result<NewObject> {
    let tables = policy::rules_for(a.class, a.subtype).ok_or(Error::TemplateInconsistent)?;
    let (forbidden, required) = match a.origin {
        Origin::Create => (f::NO_CREATE, f::MUST_CREATE),
        Origin::Generate(_) => (f::NO_GENERATE, 0),
        Origin::Derive => (f::NO_GENERATE, 0),
        Origin::Unwrap => (f::NO_UNWRAP, 0),
    };
    check_template(&tables, a.template, forbidden, a.so)?;
    // The class and type the caller chose must agree with the template.
    for (ty, want) in [
        (CKA_CLASS, Some(a.class)),
        (CKA_KEY_TYPE, a.subtype),
        (CKA_CERTIFICATE_TYPE, a.subtype),
    ] {
        if let (Some(attr), Some(want)) = (a.template.get(ty), want) {
            if policy::find(&tables, ty).is_some() && attr.as_ulong()? != want {
                return Err(Error::TemplateInconsistent);
            }
        }
    }
    for rule in tables.iter().flat_map(|t| t.iter()) {
        if rule.flags & required != 0 && a.template.get(rule.ty).is_none() {
            return Err(Error::TemplateIncomplete);
        }
    }

    let mut attrs: BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue> = BTreeMap::new();
    let mut secrets = SecretAttrs::default();
    // Defaults first, then the template, then what the token supplies.
    for rule in tables.iter().flat_map(|t| t.iter()) {
        let v = match rule.default {
            Def::False => Some(bool_value(false)),
            Def::True => Some(bool_value(true)),
            Def::Empty => Some(AttrValue::Bytes(Vec::new())),
            Def::Ulong(u) => Some(ulong_value(u)),
            Def::Absent | Def::Computed => None,
        };
        if let Some(v) = v {
            attrs.insert(rule.ty, v);
        }
    }
    let mut put = |attr: &Attribute, attrs: &mut BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>| {
        if policy::is_sealed(&tables, attr.ty) {
            if let AttrValue::Bytes(b) = &attr.value {
                secrets.0.retain(|(t, _)| *t != attr.ty);
                secrets.0.push((attr.ty, Secret::copy_from(b)));
            }
        } else {
            attrs.insert(attr.ty, attr.value.clone());
        }
    };
    for attr in a.template.iter() {
        put(attr, &mut attrs);
    }
    for attr in &a.supplied {
        put(attr, &mut attrs);
    }
    attrs.insert(CKA_CLASS, ulong_value(a.class));
    if let Some(sub) = a.subtype {
        let ty = if a.class == CKO_CERTIFICATE {
            CKA_CERTIFICATE_TYPE
        } else {
            CKA_KEY_TYPE
        };
        attrs.insert(ty, ulong_value(sub));
    }
    if a.template.get(CKA_PRIVATE).is_none() {
        let private = new_private(a.class, a.origin, a.template, a.profile)?;
        attrs.insert(CKA_PRIVATE, bool_value(private));
    }
    // Token-maintained attributes.
    let mut unique = [0u8; 16];
    crate::crypto::fill_random(&mut unique)?;
    attrs.insert(
        CKA_UNIQUE_ID,
        AttrValue::Bytes(base16ct::lower::encode_string(&unique).into_bytes()),
    );
    if matches!(a.class, CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY) {
        let (local, mech) = match a.origin {
            Origin::Generate(m) => (true, m),
            _ => (false, CK_UNAVAILABLE_INFORMATION),
        };
        attrs.insert(CKA_LOCAL, bool_value(local));
        attrs.insert(CKA_KEY_GEN_MECHANISM, ulong_value(mech));
    }
    if matches!(a.class, CKO_PRIVATE_KEY | CKO_SECRET_KEY) {
        let (sensitive, extractable) = key_protection(a.class, a.origin, a.template, a.profile)?;
        attrs.insert(CKA_SENSITIVE, bool_value(sensitive));
        attrs.insert(CKA_EXTRACTABLE, bool_value(extractable));
        let generated = matches!(a.origin, Origin::Generate(_));
        attrs.insert(CKA_ALWAYS_SENSITIVE, bool_value(generated && sensitive));
        attrs.insert(CKA_NEVER_EXTRACTABLE, bool_value(generated && !extractable));
    }
    if a.class == CKO_SECRET_KEY {
        let len = secrets.get(CKA_VALUE).map_or(0, Secret::len);
        attrs.insert(
            CKA_VALUE_LEN,
            ulong_value(CK_ULONG::try_from(len).unwrap_or(0)),
        );
        // CKA_CHECK_VALUE: computed by the token where the protection rule lets it be
        // public; a supplied one must match (an empty one asks for none). A key whose check
        // value is withheld takes none from the template either, except from the caller who
        // supplies the value itself (C_CreateObject): comparing would be the same oracle.
        let readable = !attrs.get(&CKA_SENSITIVE).and_then(as_bool).unwrap_or(true)
            && attrs
                .get(&CKA_EXTRACTABLE)
                .and_then(as_bool)
                .unwrap_or(false);
        let public =
            bridge::protection::check_value_public(readable, len, a.origin == Origin::Derive);
        let kcv = match secrets.get(CKA_VALUE) {
            Some(v) => check_value(a.subtype, v.expose())?,
            None => None,
        };
        match (attrs.get(&CKA_CHECK_VALUE), kcv) {
            (Some(AttrValue::Bytes(given)), _) if given.is_empty() => {}
            (Some(_), _) if !public && a.origin != Origin::Create => {
                return Err(Error::TemplateInconsistent);
            }
            (Some(AttrValue::Bytes(given)), Some(k)) if *given != k => {
                return Err(Error::AttributeValueInvalid);
            }
            (Some(_), _) if !public => {
                attrs.remove(&CKA_CHECK_VALUE);
            }
            (None, Some(k)) if public => {
                attrs.insert(CKA_CHECK_VALUE, AttrValue::Bytes(k));
            }
            _ => {}
        }
    }
    protection::settle_new(&mut attrs);
    // Every caller asked new_private first; this holds whatever the origin's defaults were.
    protection::check_private(&attrs)?;
    if attrs
        .get(&CKA_ALWAYS_AUTHENTICATE)
        .and_then(as_bool)
        .unwrap_or(false)
        && !attrs.get(&CKA_PRIVATE).and_then(as_bool).unwrap_or(false)
    {
        return Err(Error::TemplateInconsistent);
    }
    Ok(NewObject { attrs, secrets })
}

/// The key check value of a secret key (PKCS#11 3.0): the first three bytes of the AES-ECB
/// encryption of a zero block for AES, of the SHA-1 hash of the value for generic secrets and
/// HMAC keys; none for other types.
fn check_value(key_type: Option<CK_KEY_TYPE>, value: &[u8]) -> Result<Option<Vec<u8>>> {
    let full = match key_type {
        Some(CKK_AES) => {
            // A value of the wrong length is refused elsewhere, with its own code.
            let Ok(key) = crate::crypto::aes::AesKey::new(value) else {
                return Ok(None);
            };
            let mut block = [0u8; 16];
            key.ecb_encrypt(&mut block)?;
            block.to_vec()
        }
        Some(
            CKK_GENERIC_SECRET | CKK_SHA_1_HMAC | CKK_SHA224_HMAC | CKK_SHA256_HMAC
            | CKK_SHA384_HMAC | CKK_SHA512_HMAC,
        ) => crate::crypto::Hash::Sha1.digest(value),
        _ => return Ok(None),
    };
    Ok(full.get(..3).map(<[u8]>::to_vec))
}

/// Applies a `C_SetAttributeValue` (or the template of `C_CopyObject`) to a copy of `obj`'s
/// attributes, all or nothing. `copying` allows the copy-only attributes.
pub(crate) fn apply_changes(
    obj: &Object,
    template: &Template,
    copying: bool,
    so: bool,
) -> Result<Object> {
    if !copying && !obj.flag(CKA_MODIFIABLE).unwrap_or(true) {
        return Err(Error::ActionProhibited);
    }
    let tables = obj.rules();
    let mut next = obj.clone();
    for (i, a) in template.iter().enumerate() {
        let rule = policy::find(&tables, a.ty).ok_or(Error::AttributeTypeInvalid)?;
        check_kind(rule.kind, &a.value)?;
        if template
            .0
            .get(..i)
            .is_some_and(|before| before.iter().any(|b| b.ty == a.ty))
        {
            return Err(Error::TemplateInconsistent);
        }
        let current = obj.attrs.get(&a.ty);
        let unchanged = current == Some(&a.value);
        let changeable = rule.flags & f::CHANGE != 0 || (copying && rule.flags & f::COPY != 0);
        if !changeable {
            if unchanged {
                continue;
            }
            return Err(Error::AttributeReadOnly);
        }
        if rule.kind == Kind::Bool {
            let new = a.as_bool()?;
            let old = current.and_then(as_bool);
            if rule.flags & f::STICKY_TRUE != 0 && old == Some(true) && !new {
                return Err(Error::AttributeReadOnly);
            }
            if rule.flags & f::STICKY_FALSE != 0 && old == Some(false) && new {
                return Err(Error::AttributeReadOnly);
            }
            if rule.flags & f::SO_TRUE != 0 && new && !so {
                return Err(Error::AttributeReadOnly);
            }
        }
        next.attrs.insert(a.ty, a.value.clone());
    }
    if next.is(CKA_ALWAYS_AUTHENTICATE) && !next.is_private() {
        return Err(Error::TemplateInconsistent);
    }
    // A protected key is always private: none becomes public (a copy or a change with
    // CKA_PRIVATE=FALSE), no public key becomes protected (CKA_SENSITIVE=TRUE or
    // CKA_EXTRACTABLE=FALSE set on it), and no copy is a public protected key. A change that
    // touches none of the three leaves an object as it is.
    let touches = [CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE]
        .iter()
        .any(|t| template.get(*t).is_some());
    if copying || touches {
        protection::check_private(&next.attrs)?;
    }
    Ok(next)
}

/// Lower-case hex (`base16ct`); the name stays for `device.rs`, which calls it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// The number of significant bits of a big-endian integer.
pub(crate) fn significant_bits(n: &[u8]) -> u64 {
    let skip = n.iter().take_while(|b| **b == 0).count();
    let rest = n.get(skip..).unwrap_or_default();
    match rest.first() {
        None => 0,
        Some(top) => (rest.len() as u64 - 1)
            .saturating_mul(8)
            .saturating_add(u64::from(8 - top.leading_zeros())),
    }
}
