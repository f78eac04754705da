//! The attribute policy as data: per object class (and key or certificate type), one row per
//! attribute saying its value kind, its default, and how it may be set, changed and read.
//! The flags are the specification's Table 13 footnotes (common_attributes.md), named.

use cryptoki_sys::*;

/// The value kind of an attribute, for length checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `CK_BBOOL`: one byte.
    Bool,
    /// `CK_ULONG` (and the `CK_*_TYPE` aliases).
    Ulong,
    /// A byte string of any length.
    Bytes,
    /// A big integer (non-empty byte string when given).
    BigInt,
    /// `CK_DATE`: empty or 8 bytes.
    Date,
    /// An attribute array.
    Template,
    /// An array of `CK_MECHANISM_TYPE`.
    Mechanisms,
}

/// Footnote flags.
pub(crate) mod f {
    /// ^1^ Must be given to `C_CreateObject`.
    pub(crate) const MUST_CREATE: u32 = 1 << 1;
    /// ^2^ Must not be given to `C_CreateObject`.
    pub(crate) const NO_CREATE: u32 = 1 << 2;
    /// ^3^ Must be given to `C_GenerateKey(Pair)`.
    pub(crate) const MUST_GENERATE: u32 = 1 << 3;
    /// ^4^ Must not be given to `C_GenerateKey(Pair)` (nor `C_DeriveKey`).
    pub(crate) const NO_GENERATE: u32 = 1 << 4;
    /// ^5^ Must be given to `C_UnwrapKey`.
    pub(crate) const MUST_UNWRAP: u32 = 1 << 5;
    /// ^6^ Must not be given to `C_UnwrapKey`.
    pub(crate) const NO_UNWRAP: u32 = 1 << 6;
    /// ^7^ Never revealed if the object is sensitive or unextractable; sealed at rest.
    pub(crate) const SECRET: u32 = 1 << 7;
    /// ^8^ May be changed by `C_SetAttributeValue` and `C_CopyObject`.
    pub(crate) const CHANGE: u32 = 1 << 8;
    /// ^10^ Only the SO may set it to TRUE.
    pub(crate) const SO_TRUE: u32 = 1 << 10;
    /// ^11^ Read-only once TRUE.
    pub(crate) const STICKY_TRUE: u32 = 1 << 11;
    /// ^12^ Read-only once FALSE.
    pub(crate) const STICKY_FALSE: u32 = 1 << 12;
    /// May be changed by `C_CopyObject` only (`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_MODIFIABLE`, ...).
    pub(crate) const COPY: u32 = 1 << 13;
    /// Maintained by the token; never given by the application (^2,4,6^).
    pub(crate) const COMPUTED: u32 = NO_CREATE | NO_GENERATE | NO_UNWRAP;
    /// Sealed at rest although not ^7^ (the value of a private data object).
    pub(crate) const SEALED: u32 = 1 << 14;
}

/// The default of an attribute the template does not give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Def {
    /// Absent: the object has no such attribute unless given or computed.
    Absent,
    /// `CK_FALSE`.
    False,
    /// `CK_TRUE`.
    True,
    /// Empty byte string.
    Empty,
    /// A `CK_ULONG`.
    Ulong(CK_ULONG),
    /// Filled in by the token (unique id, provenance, lengths, ...).
    Computed,
}

/// How one attribute of one object class behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttrRule {
    pub(crate) ty: CK_ATTRIBUTE_TYPE,
    pub(crate) kind: Kind,
    pub(crate) flags: u32,
    pub(crate) default: Def,
}

const fn r(ty: CK_ATTRIBUTE_TYPE, kind: Kind, flags: u32, default: Def) -> AttrRule {
    AttrRule {
        ty,
        kind,
        flags,
        default,
    }
}

use Def as D;
use Kind as K;
use f::*;

static COMMON: &[AttrRule] = &[
    r(CKA_CLASS, K::Ulong, MUST_CREATE, D::Absent),
    r(CKA_UNIQUE_ID, K::Bytes, COMPUTED, D::Computed),
];

static STORAGE: &[AttrRule] = &[
    r(CKA_TOKEN, K::Bool, COPY, D::False),
    // The default depends on the class; see `default_private`.
    r(CKA_PRIVATE, K::Bool, COPY, D::Computed),
    r(CKA_MODIFIABLE, K::Bool, COPY, D::True),
    r(CKA_LABEL, K::Bytes, CHANGE, D::Empty),
    r(CKA_COPYABLE, K::Bool, CHANGE | STICKY_FALSE, D::True),
    r(CKA_DESTROYABLE, K::Bool, COPY, D::True),
];

static DATA: &[AttrRule] = &[
    r(CKA_APPLICATION, K::Bytes, 0, D::Empty),
    r(CKA_OBJECT_ID, K::Bytes, 0, D::Empty),
    r(CKA_VALUE, K::Bytes, SEALED, D::Empty),
];

static CERTIFICATE: &[AttrRule] = &[
    r(CKA_CERTIFICATE_TYPE, K::Ulong, MUST_CREATE, D::Absent),
    r(CKA_TRUSTED, K::Bool, SO_TRUE, D::False),
    r(
        CKA_CERTIFICATE_CATEGORY,
        K::Ulong,
        0,
        D::Ulong(CK_CERTIFICATE_CATEGORY_UNSPECIFIED),
    ),
    r(CKA_CHECK_VALUE, K::Bytes, 0, D::Computed),
    r(CKA_START_DATE, K::Date, 0, D::Empty),
    r(CKA_END_DATE, K::Date, 0, D::Empty),
    r(CKA_PUBLIC_KEY_INFO, K::Bytes, 0, D::Empty),
];

static X509: &[AttrRule] = &[
    r(CKA_SUBJECT, K::Bytes, MUST_CREATE, D::Absent),
    r(CKA_ID, K::Bytes, CHANGE, D::Empty),
    r(CKA_ISSUER, K::Bytes, CHANGE, D::Empty),
    r(CKA_SERIAL_NUMBER, K::Bytes, CHANGE, D::Empty),
    r(CKA_VALUE, K::Bytes, MUST_CREATE, D::Absent),
    r(CKA_URL, K::Bytes, 0, D::Empty),
    r(CKA_HASH_OF_SUBJECT_PUBLIC_KEY, K::Bytes, 0, D::Empty),
    r(CKA_HASH_OF_ISSUER_PUBLIC_KEY, K::Bytes, 0, D::Empty),
    r(
        CKA_JAVA_MIDP_SECURITY_DOMAIN,
        K::Ulong,
        0,
        D::Ulong(CK_SECURITY_DOMAIN_UNSPECIFIED),
    ),
    r(CKA_NAME_HASH_ALGORITHM, K::Ulong, 0, D::Absent),
];

static KEY: &[AttrRule] = &[
    r(CKA_KEY_TYPE, K::Ulong, MUST_CREATE | MUST_UNWRAP, D::Absent),
    r(CKA_ID, K::Bytes, CHANGE, D::Empty),
    r(CKA_START_DATE, K::Date, CHANGE, D::Empty),
    r(CKA_END_DATE, K::Date, CHANGE, D::Empty),
    r(CKA_DERIVE, K::Bool, CHANGE, D::False),
    r(CKA_LOCAL, K::Bool, COMPUTED, D::Computed),
    r(CKA_KEY_GEN_MECHANISM, K::Ulong, COMPUTED, D::Computed),
    r(CKA_ALLOWED_MECHANISMS, K::Mechanisms, 0, D::Empty),
];

static PUBLIC_KEY: &[AttrRule] = &[
    r(CKA_SUBJECT, K::Bytes, CHANGE, D::Empty),
    r(CKA_ENCRYPT, K::Bool, CHANGE, D::True),
    r(CKA_VERIFY, K::Bool, CHANGE, D::True),
    r(CKA_VERIFY_RECOVER, K::Bool, CHANGE, D::True),
    r(CKA_WRAP, K::Bool, CHANGE, D::True),
    r(CKA_TRUSTED, K::Bool, SO_TRUE, D::False),
    r(CKA_WRAP_TEMPLATE, K::Template, 0, D::Absent),
    r(CKA_PUBLIC_KEY_INFO, K::Bytes, 0, D::Computed),
];

static PRIVATE_KEY: &[AttrRule] = &[
    r(CKA_SUBJECT, K::Bytes, CHANGE, D::Empty),
    r(CKA_SENSITIVE, K::Bool, CHANGE | STICKY_TRUE, D::Computed),
    r(CKA_DECRYPT, K::Bool, CHANGE, D::True),
    r(CKA_SIGN, K::Bool, CHANGE, D::True),
    r(CKA_SIGN_RECOVER, K::Bool, CHANGE, D::True),
    r(CKA_UNWRAP, K::Bool, CHANGE, D::True),
    r(CKA_EXTRACTABLE, K::Bool, CHANGE | STICKY_FALSE, D::Computed),
    r(CKA_ALWAYS_SENSITIVE, K::Bool, COMPUTED, D::Computed),
    r(CKA_NEVER_EXTRACTABLE, K::Bool, COMPUTED, D::Computed),
    r(
        CKA_WRAP_WITH_TRUSTED,
        K::Bool,
        CHANGE | STICKY_TRUE,
        D::False,
    ),
    r(CKA_UNWRAP_TEMPLATE, K::Template, 0, D::Absent),
    r(CKA_DERIVE_TEMPLATE, K::Template, 0, D::Absent),
    r(CKA_ALWAYS_AUTHENTICATE, K::Bool, 0, D::False),
    r(CKA_PUBLIC_KEY_INFO, K::Bytes, CHANGE, D::Computed),
];

static SECRET_KEY: &[AttrRule] = &[
    r(CKA_SENSITIVE, K::Bool, CHANGE | STICKY_TRUE, D::Computed),
    r(CKA_ENCRYPT, K::Bool, CHANGE, D::True),
    r(CKA_DECRYPT, K::Bool, CHANGE, D::True),
    r(CKA_SIGN, K::Bool, CHANGE, D::True),
    r(CKA_VERIFY, K::Bool, CHANGE, D::True),
    r(CKA_WRAP, K::Bool, CHANGE, D::True),
    r(CKA_UNWRAP, K::Bool, CHANGE, D::True),
    r(CKA_EXTRACTABLE, K::Bool, CHANGE | STICKY_FALSE, D::Computed),
    r(CKA_ALWAYS_SENSITIVE, K::Bool, COMPUTED, D::Computed),
    r(CKA_NEVER_EXTRACTABLE, K::Bool, COMPUTED, D::Computed),
    r(CKA_CHECK_VALUE, K::Bytes, 0, D::Computed),
    r(
        CKA_WRAP_WITH_TRUSTED,
        K::Bool,
        CHANGE | STICKY_TRUE,
        D::False,
    ),
    r(CKA_TRUSTED, K::Bool, SO_TRUE, D::False),
    r(CKA_WRAP_TEMPLATE, K::Template, 0, D::Absent),
    r(CKA_UNWRAP_TEMPLATE, K::Template, 0, D::Absent),
    r(CKA_DERIVE_TEMPLATE, K::Template, 0, D::Absent),
];

static RSA_PUBLIC: &[AttrRule] = &[
    r(CKA_MODULUS, K::BigInt, MUST_CREATE | NO_GENERATE, D::Absent),
    r(
        CKA_MODULUS_BITS,
        K::Ulong,
        NO_CREATE | MUST_GENERATE,
        D::Computed,
    ),
    r(CKA_PUBLIC_EXPONENT, K::BigInt, MUST_CREATE, D::Absent),
];

static RSA_PRIVATE: &[AttrRule] = &[
    r(
        CKA_MODULUS,
        K::BigInt,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP,
        D::Absent,
    ),
    r(
        CKA_PUBLIC_EXPONENT,
        K::BigInt,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP,
        D::Absent,
    ),
    r(
        CKA_PRIVATE_EXPONENT,
        K::BigInt,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(
        CKA_PRIME_1,
        K::BigInt,
        NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(
        CKA_PRIME_2,
        K::BigInt,
        NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(
        CKA_EXPONENT_1,
        K::BigInt,
        NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(
        CKA_EXPONENT_2,
        K::BigInt,
        NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(
        CKA_COEFFICIENT,
        K::BigInt,
        NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
];

static EC_PUBLIC: &[AttrRule] = &[
    r(
        CKA_EC_PARAMS,
        K::Bytes,
        MUST_CREATE | MUST_GENERATE,
        D::Absent,
    ),
    r(CKA_EC_POINT, K::Bytes, MUST_CREATE | NO_GENERATE, D::Absent),
];

static EC_PRIVATE: &[AttrRule] = &[
    r(
        CKA_EC_PARAMS,
        K::Bytes,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP,
        D::Absent,
    ),
    r(
        CKA_VALUE,
        K::BigInt,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
];

static SECRET_VALUE: &[AttrRule] = &[
    r(
        CKA_VALUE,
        K::Bytes,
        MUST_CREATE | NO_GENERATE | NO_UNWRAP | SECRET,
        D::Absent,
    ),
    r(CKA_VALUE_LEN, K::Ulong, NO_CREATE, D::Computed),
];

/// The key types whose objects the firmware holds, with their type-specific rules.
fn key_rules(class: CK_OBJECT_CLASS, key_type: CK_KEY_TYPE) -> Option<&'static [AttrRule]> {
    Some(match (class, key_type) {
        (CKO_PUBLIC_KEY, CKK_RSA) => RSA_PUBLIC,
        (CKO_PRIVATE_KEY, CKK_RSA) => RSA_PRIVATE,
        (CKO_PUBLIC_KEY, CKK_EC | CKK_EC_EDWARDS | CKK_EC_MONTGOMERY) => EC_PUBLIC,
        (CKO_PRIVATE_KEY, CKK_EC | CKK_EC_EDWARDS | CKK_EC_MONTGOMERY) => EC_PRIVATE,
        (CKO_SECRET_KEY, k) if is_secret_key_type(k) => SECRET_VALUE,
        _ => return None,
    })
}

/// Secret key types: AES, ChaCha20, triple DES, generic secrets and the HMAC key types.
pub(crate) fn is_secret_key_type(k: CK_KEY_TYPE) -> bool {
    matches!(
        k,
        CKK_AES
            | CKK_CHACHA20
            | CKK_DES2
            | CKK_DES3
            | CKK_GENERIC_SECRET
            | CKK_SHA_1_HMAC
            | CKK_SHA224_HMAC
            | CKK_SHA256_HMAC
            | CKK_SHA384_HMAC
            | CKK_SHA512_HMAC
            | CKK_SHA512_224_HMAC
            | CKK_SHA512_256_HMAC
            | CKK_MD5_HMAC
            | CKK_SHA3_224_HMAC
            | CKK_SHA3_256_HMAC
            | CKK_SHA3_384_HMAC
            | CKK_SHA3_512_HMAC
            | CKK_HKDF
    )
}

/// The rule tables that apply to an object, most general first. `None` when the class (or its
/// key or certificate type) is one the firmware does not hold.
pub(crate) fn rules_for(
    class: CK_OBJECT_CLASS,
    subtype: Option<CK_ULONG>,
) -> Option<Vec<&'static [AttrRule]>> {
    let mut v: Vec<&'static [AttrRule]> = vec![COMMON, STORAGE];
    match class {
        CKO_DATA => v.push(DATA),
        CKO_CERTIFICATE => {
            v.push(CERTIFICATE);
            match subtype? {
                CKC_X_509 => v.push(X509),
                _ => return None,
            }
        }
        CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY => {
            v.push(KEY);
            v.push(match class {
                CKO_PUBLIC_KEY => PUBLIC_KEY,
                CKO_PRIVATE_KEY => PRIVATE_KEY,
                _ => SECRET_KEY,
            });
            v.push(key_rules(class, subtype?)?);
        }
        _ => return None,
    }
    Some(v)
}

/// The rule for `ty` among `tables`; later (more specific) tables win.
pub(crate) fn find(tables: &[&'static [AttrRule]], ty: CK_ATTRIBUTE_TYPE) -> Option<AttrRule> {
    tables
        .iter()
        .rev()
        .find_map(|t| t.iter().find(|r| r.ty == ty).copied())
}

/// The default of `CKA_PRIVATE` per class: keys that hold secrets are private; data,
/// certificates and public keys are public.
pub(crate) fn default_private(class: CK_OBJECT_CLASS) -> bool {
    matches!(class, CKO_PRIVATE_KEY | CKO_SECRET_KEY)
}

/// Whether the value of `ty` is kept sealed at rest for an object of `class`.
pub(crate) fn is_sealed(tables: &[&'static [AttrRule]], ty: CK_ATTRIBUTE_TYPE) -> bool {
    find(tables, ty).is_some_and(|r| r.flags & (SECRET | SEALED) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_free_of_duplicates() {
        for t in [
            COMMON,
            STORAGE,
            DATA,
            CERTIFICATE,
            X509,
            KEY,
            PUBLIC_KEY,
            PRIVATE_KEY,
            SECRET_KEY,
            RSA_PUBLIC,
            RSA_PRIVATE,
            EC_PUBLIC,
            EC_PRIVATE,
            SECRET_VALUE,
        ] {
            for (i, a) in t.iter().enumerate() {
                assert!(
                    t[i + 1..].iter().all(|b| b.ty != a.ty),
                    "duplicate 0x{:x}",
                    a.ty
                );
            }
        }
    }

    #[test]
    fn key_material_is_secret_and_computed_attributes_are_read_only() {
        let t = rules_for(CKO_PRIVATE_KEY, Some(CKK_RSA)).unwrap();
        assert!(is_sealed(&t, CKA_PRIVATE_EXPONENT));
        assert!(!is_sealed(&t, CKA_MODULUS));
        for ty in [
            CKA_LOCAL,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_UNIQUE_ID,
        ] {
            assert_eq!(find(&t, ty).unwrap().flags & COMPUTED, COMPUTED);
        }
        assert!(rules_for(CKO_SECRET_KEY, Some(CKK_DES)).is_none());
        assert!(rules_for(CKO_CERTIFICATE, Some(CKC_WTLS)).is_none());
    }
}
