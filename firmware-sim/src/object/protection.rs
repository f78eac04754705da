//! The protection rule (`bridge::protection`, written once over attribute values) applied to
//! the firmware's own objects: the protection of an object, the attributes every new or
//! changed key keeps, and the provenance of a derived key.

use std::collections::BTreeMap;

use bridge::protection::{self as rule, Protection};
use bridge::{AttrValue, Result};
use cryptoki_sys::*;

use super::{NewObject, Object, as_bool, as_ulong, bool_value};

/// The protection of an object (a public key or a data object protects nothing).
pub(crate) fn of(obj: &Object) -> Protection {
    if !matches!(obj.class(), CKO_PRIVATE_KEY | CKO_SECRET_KEY) {
        return Protection::NONE;
    }
    Protection {
        sensitive: obj.is(CKA_SENSITIVE),
        extractable: obj.flag(CKA_EXTRACTABLE).unwrap_or(false),
        always_sensitive: obj.is(CKA_ALWAYS_SENSITIVE),
        never_extractable: obj.is(CKA_NEVER_EXTRACTABLE),
    }
}

/// The meet of the protection of several objects.
pub(crate) fn meet<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Protection {
    Protection::meet(objects.into_iter().map(of))
}

/// The unwrap template that applies to `unwrapping_key`: its own, or for a key that may unwrap
/// but not decrypt, the rule's default.
pub(crate) fn unwrap_template(unwrapping_key: &Object) -> Option<bridge::Template> {
    if let Some(t) = unwrapping_key.template(CKA_UNWRAP_TEMPLATE) {
        return Some(t.clone());
    }
    rule::unwrap_only(
        unwrapping_key.flag(CKA_UNWRAP),
        unwrapping_key.flag(CKA_DECRYPT),
    )
    .then(rule::default_unwrap_template)
}

/// What every new key gets, whatever made it: a key that may unwrap but not decrypt gets the
/// default unwrap template if its creator gave none.
pub(crate) fn settle_new(attrs: &mut BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>) {
    let flag = |attrs: &BTreeMap<_, AttrValue>, ty| attrs.get(&ty).and_then(as_bool);
    let class = attrs.get(&CKA_CLASS).and_then(as_ulong);
    if matches!(class, Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY))
        && rule::unwrap_only(flag(attrs, CKA_UNWRAP), flag(attrs, CKA_DECRYPT))
        && !attrs.contains_key(&CKA_UNWRAP_TEMPLATE)
    {
        attrs.insert(
            CKA_UNWRAP_TEMPLATE,
            AttrValue::Template(rule::default_unwrap_template()),
        );
    }
}

/// A protected key must be private: `CKR_TEMPLATE_INCONSISTENT` otherwise.
pub(crate) fn check_private(attrs: &BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>) -> Result<()> {
    let flag = |ty| attrs.get(&ty).and_then(as_bool);
    rule::check_private(
        attrs.get(&CKA_CLASS).and_then(as_ulong),
        flag(CKA_SENSITIVE),
        flag(CKA_EXTRACTABLE),
        flag(CKA_PRIVATE),
    )
}

/// The provenance and length rule of a derived secret key, once assembled (see
/// `bridge::protection::derived_provenance`).
pub(crate) fn finish_derived(new: &mut NewObject, meet: Protection) -> Result<()> {
    if new.attrs.get(&CKA_CLASS).and_then(as_ulong) != Some(CKO_SECRET_KEY) {
        return Ok(());
    }
    let len = new
        .secrets
        .get(CKA_VALUE)
        .map_or(0, crate::crypto::Secret::len);
    let (always, never) = rule::derived_provenance(
        meet,
        new.flag(CKA_SENSITIVE),
        new.flag(CKA_EXTRACTABLE),
        len,
    )?;
    new.attrs.insert(CKA_ALWAYS_SENSITIVE, bool_value(always));
    new.attrs.insert(CKA_NEVER_EXTRACTABLE, bool_value(never));
    Ok(())
}

/// Whether a new object's attributes make a protected key.
pub(crate) fn new_is_protected(attrs: &BTreeMap<CK_ATTRIBUTE_TYPE, AttrValue>) -> bool {
    let flag = |ty| attrs.get(&ty).and_then(as_bool);
    matches!(
        attrs.get(&CKA_CLASS).and_then(as_ulong),
        Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY)
    ) && (flag(CKA_SENSITIVE) == Some(true) || flag(CKA_EXTRACTABLE) != Some(true))
}
