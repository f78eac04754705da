//! The protection rule: what any object made from other objects may be.
//!
//! One rule decides the protection of every object that `C_DeriveKey`, `C_UnwrapKey` or
//! `C_CopyObject` makes, and the invariants `C_CreateObject`, `C_GenerateKey(Pair)` and
//! `C_SetAttributeValue` keep. It is written here once, over attribute values, and applied in
//! two places: by the simulated firmware to its own objects (`firmware-sim`'s
//! `object::protection`), and by the overlay in front of a real HSM's module
//! ([`crate::overlay`]), which sees only attributes. The README's security section states it
//! as a table.
//!
//! Protection is a lattice. A value is *protected* when it may not be read in clear
//! (`CKA_SENSITIVE`) or may not leave wrapped (`CKA_EXTRACTABLE` false). The protection of a
//! derived value is at least the meet of its inputs' (the base key and every key a parameter
//! names, such as an HKDF salt key): sensitive if any input is sensitive, not extractable if
//! any input is not; `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` hold only if they held
//! for every input. A template may raise protection, never lower it below the meet — except
//! where the mechanism's text in the specification gives the choice to the template
//! ([`template_chooses`]).
//!
//! Around the lattice, the rules that close the oracles a caller with the user PIN could
//! build:
//! - usage, allowed mechanisms and always-authenticate are checked before any cryptographic
//!   work, so no error code depends on a secret the caller may not use;
//! - a protected key is always private ([`check_private`]): it is never sealed under a key
//!   anyone who can read the store can open, nor usable without a login;
//! - a key that may unwrap but not decrypt gets an unwrap template that keeps what it unwraps
//!   protected ([`default_unwrap_template`]), or `C_UnwrapKey` would be `C_Decrypt`;
//! - a protected key derived from a protected input is at least [`MIN_DERIVED_LEN`] bytes, so
//!   no caller walks a secret byte by byte through truncated outputs (HKDF, the X9.63 KDF and
//!   ECDH with `CKD_NULL` give outputs that are prefixes or suffixes of longer ones);
//! - `CKA_CHECK_VALUE` is published only where it is no dictionary ([`check_value_public`]).

use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::types::{Attribute, Template};

/// The shortest key (in bytes) that may be derived, protected, from a protected input: 128
/// bits, so that a prefix or suffix of a secret is never short enough to guess.
pub const MIN_DERIVED_LEN: usize = 16;

/// The shortest secret key whose check value may be published when its value may not be
/// read: below 128 bits, three bytes of a check value narrow a guess too much.
pub const MIN_CHECK_VALUE_LEN: usize = 16;

/// The protection of a key value, or of what is made from several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
}

impl Protection {
    /// The meet of no inputs: nothing to protect, and nothing that ever was exposed.
    pub const NO_INPUT: Self = Self {
        sensitive: false,
        extractable: true,
        always_sensitive: true,
        never_extractable: true,
    };

    /// What protects a public key or a data object: nothing.
    pub const NONE: Self = Self {
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
    };

    /// The meet: the strongest protection, the weakest history.
    pub fn and(self, other: Self) -> Self {
        Self {
            sensitive: self.sensitive || other.sensitive,
            extractable: self.extractable && other.extractable,
            always_sensitive: self.always_sensitive && other.always_sensitive,
            never_extractable: self.never_extractable && other.never_extractable,
        }
    }

    /// The meet of several inputs.
    pub fn meet(inputs: impl IntoIterator<Item = Self>) -> Self {
        inputs.into_iter().fold(Self::NO_INPUT, Self::and)
    }

    /// Whether the value may neither be read nor leave.
    pub fn is_protected(self) -> bool {
        self.sensitive || !self.extractable
    }
}

/// Whether the specification's text for the derivation mechanism `mech` lets the template
/// choose the new key's `CKA_SENSITIVE` and `CKA_EXTRACTABLE` regardless of the base key:
/// the Diffie-Hellman family ("The CKA_SENSITIVE and CKA_EXTRACTABLE attributes in the
/// template for the new key can both be specified to be either CK_TRUE or CK_FALSE"; PKCS#11
/// 3.2, "Elliptic Curve Diffie-Hellman Key Derivation", CKM_ECDH1_DERIVE). The secret is the
/// peer's as much as ours. `CKA_ALWAYS_SENSITIVE` / `CKA_NEVER_EXTRACTABLE` still record the
/// choice, and a salt key the text does not name still counts.
pub fn template_chooses(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(mech, CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE)
}

fn flag(template: &Template, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>> {
    template.get(ty).map(Attribute::as_bool).transpose()
}

/// Sets a boolean in a template, refusing a template that asks for the opposite.
fn require(template: &mut Template, ty: CK_ATTRIBUTE_TYPE, value: bool) -> Result<()> {
    match flag(template, ty)? {
        Some(v) if v != value => Err(Error::TemplateInconsistent),
        Some(_) => Ok(()),
        None => {
            template.0.push(Attribute::bool(ty, value));
            Ok(())
        }
    }
}

/// The template of a derived object, given the meet of its inputs' protection (`meet`, the
/// base key included) and of the inputs the mechanism's text does not name (`unnamed`: an
/// HKDF salt key, which even a mechanism whose template chooses cannot drop).
///
/// A data object (`CKM_HKDF_DATA`) is readable by anyone who sees it, so none may be derived
/// from a protected input: `CKR_KEY_FUNCTION_NOT_PERMITTED`. A template that asks for less
/// than the meet is `CKR_TEMPLATE_INCONSISTENT`. Where the template chooses, one silent about
/// `CKA_EXTRACTABLE` gets `TRUE` (SunPKCS11's `KeyAgreement` reads what it derives), except
/// under the strict personality.
pub fn derived_template(
    meet: Protection,
    unnamed: Protection,
    mech: CK_MECHANISM_TYPE,
    class: CK_OBJECT_CLASS,
    template: &Template,
    strict: bool,
) -> Result<Template> {
    let mut t = template.clone();
    t.0.retain(|a| a.ty != CKA_VALUE_LEN);
    if class != CKO_SECRET_KEY {
        return if meet.is_protected() {
            Err(Error::KeyFunctionNotPermitted)
        } else {
            Ok(t)
        };
    }
    let floor = if template_chooses(mech) {
        if t.get(CKA_EXTRACTABLE).is_none() && !strict && unnamed.extractable {
            t.0.push(Attribute::bool(CKA_EXTRACTABLE, true));
        }
        unnamed
    } else {
        meet
    };
    if floor.sensitive {
        require(&mut t, CKA_SENSITIVE, true)?;
    }
    if !floor.extractable {
        require(&mut t, CKA_EXTRACTABLE, false)?;
    }
    Ok(t)
}

/// The provenance of a derived secret key and its length rule: `(CKA_ALWAYS_SENSITIVE,
/// CKA_NEVER_EXTRACTABLE)` hold only if they held for every input and hold for the key; a
/// protected key derived from a protected input shorter than [`MIN_DERIVED_LEN`] bytes is
/// `CKR_KEY_SIZE_RANGE`.
pub fn derived_provenance(
    meet: Protection,
    sensitive: bool,
    extractable: bool,
    value_len: usize,
) -> Result<(bool, bool)> {
    if meet.is_protected() && (sensitive || !extractable) && value_len < MIN_DERIVED_LEN {
        return Err(Error::KeySizeRange);
    }
    Ok((
        meet.always_sensitive && sensitive,
        meet.never_extractable && !extractable,
    ))
}

/// Whether a key with these usage attributes may unwrap but not decrypt.
pub fn unwrap_only(unwrap: Option<bool>, decrypt: Option<bool>) -> bool {
    unwrap == Some(true) && decrypt != Some(true)
}

/// The `CKA_UNWRAP_TEMPLATE` of a key that may unwrap but not decrypt when its creator gave
/// none: what it unwraps is sensitive and not extractable. Without it, `C_UnwrapKey` with a
/// readable, extractable template would be `C_Decrypt` for a key that may not decrypt.
pub fn default_unwrap_template() -> Template {
    Template::new()
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
}

/// A protected private or secret key must be private: `CKR_TEMPLATE_INCONSISTENT` for one
/// that is not. (`None` for an attribute the object does not have.)
pub fn check_private(
    class: Option<CK_OBJECT_CLASS>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    private: Option<bool>,
) -> Result<()> {
    let key = matches!(class, Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY));
    let protected = sensitive == Some(true) || extractable != Some(true);
    if key && protected && private != Some(true) {
        return Err(Error::TemplateInconsistent);
    }
    Ok(())
}

/// Whether the check value of a secret key may be published: always where the value itself
/// may be read; otherwise only for keys of at least [`MIN_CHECK_VALUE_LEN`] bytes that no
/// derivation made (`derived`; unknown for an object that exists already, where only the
/// length rule can be judged). The derivations truncate: a derived key's check value would
/// be a dictionary on a prefix or suffix of another secret, and [`MIN_DERIVED_LEN`] is all
/// that stands between the two.
pub fn check_value_public(readable: bool, value_len: usize, derived: bool) -> bool {
    readable || (!derived && value_len >= MIN_CHECK_VALUE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sensitive: bool, extractable: bool, always: bool, never: bool) -> Protection {
        Protection {
            sensitive,
            extractable,
            always_sensitive: always,
            never_extractable: never,
        }
    }

    #[test]
    fn meet_is_the_strongest_protection_and_the_weakest_history() {
        let m = Protection::meet([p(true, true, true, false), p(false, false, false, true)]);
        assert_eq!(m, p(true, false, false, false));
        assert_eq!(Protection::meet([]), Protection::NO_INPUT);
        assert!(!Protection::NO_INPUT.is_protected());
    }

    #[test]
    fn derived_template_never_lowers_below_the_meet() {
        let m = p(true, false, true, true);
        let none = Protection::NO_INPUT;
        let hkdf = CKM_HKDF_DERIVE;
        for lower in [
            Attribute::bool(CKA_SENSITIVE, false),
            Attribute::bool(CKA_EXTRACTABLE, true),
        ] {
            let t = Template::new().with(lower);
            assert_eq!(
                derived_template(m, none, hkdf, CKO_SECRET_KEY, &t, false),
                Err(Error::TemplateInconsistent)
            );
        }
        let t = derived_template(m, none, hkdf, CKO_SECRET_KEY, &Template::new(), false).unwrap();
        assert_eq!(t.get(CKA_SENSITIVE).unwrap().as_bool(), Ok(true));
        assert_eq!(t.get(CKA_EXTRACTABLE).unwrap().as_bool(), Ok(false));
        assert_eq!(
            derived_template(m, none, CKM_HKDF_DATA, CKO_DATA, &Template::new(), false),
            Err(Error::KeyFunctionNotPermitted)
        );
    }

    #[test]
    fn ecdh_lets_the_template_choose_but_not_below_an_unnamed_input() {
        let base = p(true, false, true, true);
        let free = Template::new().with(Attribute::bool(CKA_SENSITIVE, false));
        let t = derived_template(
            base,
            Protection::NO_INPUT,
            CKM_ECDH1_DERIVE,
            CKO_SECRET_KEY,
            &free,
            false,
        )
        .unwrap();
        assert_eq!(t.get(CKA_EXTRACTABLE).unwrap().as_bool(), Ok(true));
        assert_eq!(
            derived_template(base, base, CKM_ECDH1_DERIVE, CKO_SECRET_KEY, &free, false),
            Err(Error::TemplateInconsistent)
        );
    }

    #[test]
    fn short_protected_outputs_of_protected_inputs_are_refused() {
        let m = p(true, false, true, true);
        assert_eq!(
            derived_provenance(m, true, false, 15),
            Err(Error::KeySizeRange)
        );
        assert_eq!(derived_provenance(m, true, false, 16), Ok((true, true)));
        // Readable output (a template's free choice) or unprotected inputs: no secret to walk.
        assert_eq!(derived_provenance(m, false, true, 1), Ok((false, false)));
        assert!(derived_provenance(Protection::NO_INPUT, true, false, 1).is_ok());
    }

    #[test]
    fn protected_keys_must_be_private() {
        let s = Some(CKO_SECRET_KEY);
        assert!(check_private(s, Some(true), Some(true), Some(false)).is_err());
        assert!(check_private(s, Some(false), Some(false), Some(false)).is_err());
        assert!(check_private(s, Some(false), Some(true), Some(false)).is_ok());
        assert!(check_private(s, Some(true), Some(false), Some(true)).is_ok());
        assert!(check_private(Some(CKO_PUBLIC_KEY), None, None, Some(false)).is_ok());
    }

    #[test]
    fn check_values_are_withheld_where_they_are_dictionaries() {
        assert!(check_value_public(true, 1, false));
        assert!(!check_value_public(false, 15, false));
        assert!(check_value_public(false, 16, false));
        assert!(!check_value_public(false, 32, true));
        assert!(check_value_public(true, 32, true));
    }

    #[test]
    fn only_keys_that_may_unwrap_but_not_decrypt_are_unwrap_only() {
        assert!(unwrap_only(Some(true), Some(false)));
        assert!(unwrap_only(Some(true), None));
        assert!(!unwrap_only(Some(true), Some(true)));
        assert!(!unwrap_only(Some(false), Some(false)));
    }
}
