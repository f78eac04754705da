//! The attribute table: every attribute `migrate` carries, per class, with its shape and what
//! the destination gets when the source is silent (the module documentation's table).

use cryptoki_sys::*;

/// Object kinds, as bits: which objects an attribute belongs to.
const SECRET: u8 = 1;
const PRIV: u8 = 2;
const PUBLIC: u8 = 4;
const CERT: u8 = 8;
const DATA: u8 = 16;
const KEYS: u8 = SECRET | PRIV | PUBLIC;
const ALL: u8 = KEYS | CERT | DATA;

fn kind_of(class: CK_OBJECT_CLASS) -> u8 {
    match class {
        CKO_SECRET_KEY => SECRET,
        CKO_PRIVATE_KEY => PRIV,
        CKO_PUBLIC_KEY => PUBLIC,
        CKO_CERTIFICATE => CERT,
        CKO_DATA => DATA,
        _ => 0,
    }
}

/// The value shape of an attribute, checked before a value is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// `CK_BBOOL`: one byte, 0 or 1.
    Bool,
    /// `CK_ULONG`.
    Ulong,
    /// Any bytes.
    Bytes,
    /// `CK_DATE`: empty, or eight ASCII digits.
    Date,
    /// An array of `CK_MECHANISM_TYPE`.
    Mechanisms,
    /// An attribute array.
    Array,
}

/// What the destination gets when the source does not answer for an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IfSilent {
    /// The more protected value of a flag.
    Set(bool),
    /// A restriction whose absence means "unrestricted" (a mechanism list, an attribute
    /// template): no value is both more protected and usable, so the object is held back
    /// unless `--allow-loss`. `Some(usage)`: only while that usage flag is on in the copy.
    HoldBack(Option<CK_ATTRIBUTE_TYPE>),
    /// Descriptive: left out.
    Omit,
}

/// One attribute `migrate` carries.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rule {
    pub(super) ty: CK_ATTRIBUTE_TYPE,
    pub(super) name: &'static str,
    pub(super) shape: Shape,
    pub(super) if_silent: IfSilent,
    /// The object kinds it belongs to.
    on: u8,
    /// With `--allow-loss`, may be left out when the destination refuses it.
    pub(super) droppable: bool,
}

/// A row of [`RULES`]; the name is the constant's.
macro_rules! rule {
    ($ty:ident, $shape:expr, $if_silent:expr, $on:expr, $droppable:expr) => {
        Rule {
            ty: $ty,
            name: stringify!($ty),
            shape: $shape,
            if_silent: $if_silent,
            on: $on,
            droppable: $droppable,
        }
    };
}

/// `Rule::droppable`.
const DROP: bool = true;
const KEEP: bool = false;

pub(super) use IfSilent::{HoldBack, Omit, Set};
pub(super) use Shape::{Array, Bool, Bytes, Date, Mechanisms, Ulong};

/// Every attribute carried, with its "more protected" value. The README's migration section
/// repeats this table; keep the two in step.
#[rustfmt::skip]
pub(super) static RULES: &[Rule] = &[
    rule!(CKA_PRIVATE, Bool, Set(true), ALL, KEEP),
    rule!(CKA_SENSITIVE, Bool, Set(true), SECRET | PRIV, KEEP),
    rule!(CKA_EXTRACTABLE, Bool, Set(false), SECRET | PRIV, KEEP),
    rule!(CKA_ALWAYS_AUTHENTICATE, Bool, Set(true), PRIV, DROP),
    rule!(CKA_WRAP_WITH_TRUSTED, Bool, Set(true), SECRET | PRIV, DROP),
    rule!(CKA_MODIFIABLE, Bool, Set(false), ALL, DROP),
    rule!(CKA_COPYABLE, Bool, Set(false), ALL, DROP),
    rule!(CKA_DESTROYABLE, Bool, Set(false), ALL, DROP),
    // Only the SO may set it TRUE: a TRUE is reported, never given (see `plan`).
    rule!(CKA_TRUSTED, Bool, Set(false), SECRET | PUBLIC | CERT, DROP),
    rule!(CKA_ENCRYPT, Bool, Set(false), SECRET | PUBLIC, KEEP),
    rule!(CKA_DECRYPT, Bool, Set(false), SECRET | PRIV, KEEP),
    rule!(CKA_SIGN, Bool, Set(false), SECRET | PRIV, KEEP),
    rule!(CKA_SIGN_RECOVER, Bool, Set(false), PRIV, KEEP),
    rule!(CKA_VERIFY, Bool, Set(false), SECRET | PUBLIC, KEEP),
    rule!(CKA_VERIFY_RECOVER, Bool, Set(false), PUBLIC, KEEP),
    rule!(CKA_WRAP, Bool, Set(false), SECRET | PUBLIC, KEEP),
    rule!(CKA_UNWRAP, Bool, Set(false), SECRET | PRIV, KEEP),
    rule!(CKA_DERIVE, Bool, Set(false), KEYS, KEEP),
    rule!(CKA_ALLOWED_MECHANISMS, Mechanisms, HoldBack(None), KEYS, DROP),
    rule!(CKA_WRAP_TEMPLATE, Array, HoldBack(Some(CKA_WRAP)), SECRET | PUBLIC, DROP),
    rule!(CKA_UNWRAP_TEMPLATE, Array, HoldBack(Some(CKA_UNWRAP)), SECRET | PRIV, DROP),
    rule!(CKA_DERIVE_TEMPLATE, Array, HoldBack(Some(CKA_DERIVE)), SECRET | PRIV, DROP),
    rule!(CKA_LABEL, Bytes, Omit, ALL, KEEP),
    rule!(CKA_ID, Bytes, Omit, KEYS | CERT, KEEP),
    rule!(CKA_SUBJECT, Bytes, Omit, PRIV | PUBLIC, DROP),
    rule!(CKA_START_DATE, Date, Omit, KEYS | CERT, DROP),
    rule!(CKA_END_DATE, Date, Omit, KEYS | CERT, DROP),
    rule!(CKA_ISSUER, Bytes, Omit, CERT, DROP),
    rule!(CKA_SERIAL_NUMBER, Bytes, Omit, CERT, DROP),
    rule!(CKA_CERTIFICATE_CATEGORY, Ulong, Omit, CERT, DROP),
    rule!(CKA_APPLICATION, Bytes, Omit, DATA, KEEP),
    rule!(CKA_OBJECT_ID, Bytes, Omit, DATA, DROP),
];

pub(super) fn rules_for(class: CK_OBJECT_CLASS) -> Vec<&'static Rule> {
    let k = kind_of(class);
    RULES.iter().filter(|r| r.on & k != 0).collect()
}

pub(super) fn rule_of(ty: CK_ATTRIBUTE_TYPE) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.ty == ty)
}

/// An attribute's name for the report.
pub(super) fn name(ty: CK_ATTRIBUTE_TYPE) -> String {
    rule_of(ty).map_or_else(|| bridge::attr_name(ty), |r| r.name.to_owned())
}

/// Attribute types whose values are `CK_BBOOL` / `CK_ULONG`, for checking the elements of an
/// attribute template.
pub(super) fn element_shape(ty: CK_ATTRIBUTE_TYPE) -> Shape {
    match ty {
        CKA_TOKEN | CKA_LOCAL | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE => Bool,
        CKA_CLASS
        | CKA_KEY_TYPE
        | CKA_VALUE_LEN
        | CKA_MODULUS_BITS
        | CKA_CERTIFICATE_TYPE
        | CKA_KEY_GEN_MECHANISM => Ulong,
        CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE => Array,
        ty => rule_of(ty).map_or(Bytes, |r| r.shape),
    }
}
