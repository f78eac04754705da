//! `CKM_*` names and numbers, for configuration files (`allowed_mechanisms`) and audit logs;
//! the names of the other enumerations (`CKO_*`, `CKK_*`, `CKC_*`, `CKG_*`, `CKU_*`, `CKD_*`) and
//! of the named elliptic curves, for the recorder (`trace.rs`).

use cryptoki_sys::*;

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), $name)),*]
    };
}

/// Mechanisms known by name.
static MECHANISMS: &[(&str, CK_MECHANISM_TYPE)] = table!(
    CKM_RSA_PKCS_KEY_PAIR_GEN,
    CKM_RSA_PKCS,
    CKM_RSA_9796,
    CKM_RSA_X_509,
    CKM_MD5_RSA_PKCS,
    CKM_SHA1_RSA_PKCS,
    CKM_RSA_PKCS_OAEP,
    CKM_RSA_X9_31_KEY_PAIR_GEN,
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_SHA512_224,
    CKM_SHA512_224_HMAC,
    CKM_SHA512_224_HMAC_GENERAL,
    CKM_SHA512_256,
    CKM_SHA512_256_HMAC,
    CKM_SHA512_256_HMAC_GENERAL,
    CKM_SHA3_256_RSA_PKCS,
    CKM_SHA3_384_RSA_PKCS,
    CKM_SHA3_512_RSA_PKCS,
    CKM_DES2_KEY_GEN,
    CKM_DES3_KEY_GEN,
    CKM_DES3_ECB,
    CKM_DES3_CBC,
    CKM_DES3_CBC_PAD,
    CKM_MD5,
    CKM_MD5_HMAC,
    CKM_MD5_HMAC_GENERAL,
    CKM_SHA_1,
    CKM_SHA_1_HMAC,
    CKM_SHA_1_HMAC_GENERAL,
    CKM_SHA224,
    CKM_SHA224_HMAC,
    CKM_SHA224_HMAC_GENERAL,
    CKM_SHA256,
    CKM_SHA256_HMAC,
    CKM_SHA256_HMAC_GENERAL,
    CKM_SHA384,
    CKM_SHA384_HMAC,
    CKM_SHA384_HMAC_GENERAL,
    CKM_SHA512,
    CKM_SHA512_HMAC,
    CKM_SHA512_HMAC_GENERAL,
    CKM_SHA3_256,
    CKM_SHA3_256_HMAC,
    CKM_SHA3_256_HMAC_GENERAL,
    CKM_SHA3_224,
    CKM_SHA3_224_HMAC,
    CKM_SHA3_224_HMAC_GENERAL,
    CKM_SHA3_384,
    CKM_SHA3_384_HMAC,
    CKM_SHA3_384_HMAC_GENERAL,
    CKM_SHA3_512,
    CKM_SHA3_512_HMAC,
    CKM_SHA3_512_HMAC_GENERAL,
    CKM_GENERIC_SECRET_KEY_GEN,
    CKM_PKCS5_PBKD2,
    CKM_EC_KEY_PAIR_GEN,
    CKM_ECDSA,
    CKM_ECDSA_SHA1,
    CKM_ECDSA_SHA224,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
    CKM_ECDH1_DERIVE,
    CKM_ECDH1_COFACTOR_DERIVE,
    CKM_RSA_AES_KEY_WRAP,
    CKM_EC_EDWARDS_KEY_PAIR_GEN,
    CKM_EDDSA,
    CKM_AES_KEY_GEN,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_MAC,
    CKM_AES_MAC_GENERAL,
    CKM_AES_CBC_PAD,
    CKM_AES_CTR,
    CKM_AES_GCM,
    CKM_AES_CCM,
    CKM_AES_CMAC,
    CKM_AES_CMAC_GENERAL,
    CKM_CHACHA20_KEY_GEN,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_AES_KEY_WRAP_KWP,
    CKM_CHACHA20_POLY1305,
    CKM_HKDF_DERIVE,
    CKM_HKDF_DATA,
    CKM_HKDF_KEY_GEN,
    CKM_SP800_108_COUNTER_KDF,
);

/// Object classes known by name.
static CLASSES: &[(&str, CK_ULONG)] = table!(
    CKO_DATA,
    CKO_CERTIFICATE,
    CKO_PUBLIC_KEY,
    CKO_PRIVATE_KEY,
    CKO_SECRET_KEY,
    CKO_HW_FEATURE,
    CKO_DOMAIN_PARAMETERS,
    CKO_MECHANISM,
    CKO_OTP_KEY,
    CKO_PROFILE,
);

/// Key types known by name.
static KEY_TYPES: &[(&str, CK_ULONG)] = table!(
    CKK_RSA,
    CKK_DSA,
    CKK_DH,
    CKK_EC,
    CKK_X9_42_DH,
    CKK_GENERIC_SECRET,
    CKK_RC4,
    CKK_DES,
    CKK_DES2,
    CKK_DES3,
    CKK_AES,
    CKK_CHACHA20,
    CKK_POLY1305,
    CKK_EC_EDWARDS,
    CKK_EC_MONTGOMERY,
    CKK_HKDF,
    CKK_MD5_HMAC,
    CKK_SHA_1_HMAC,
    CKK_SHA224_HMAC,
    CKK_SHA256_HMAC,
    CKK_SHA384_HMAC,
    CKK_SHA512_HMAC,
    CKK_SHA512_224_HMAC,
    CKK_SHA512_256_HMAC,
    CKK_SHA3_224_HMAC,
    CKK_SHA3_256_HMAC,
    CKK_SHA3_384_HMAC,
    CKK_SHA3_512_HMAC,
);

/// Certificate types known by name.
static CERTIFICATE_TYPES: &[(&str, CK_ULONG)] = table!(CKC_X_509, CKC_X_509_ATTR_CERT, CKC_WTLS);

/// Mask generation functions known by name.
static MGFS: &[(&str, CK_ULONG)] = table!(
    CKG_MGF1_SHA1,
    CKG_MGF1_SHA224,
    CKG_MGF1_SHA256,
    CKG_MGF1_SHA384,
    CKG_MGF1_SHA512,
    CKG_MGF1_SHA3_224,
    CKG_MGF1_SHA3_256,
    CKG_MGF1_SHA3_384,
    CKG_MGF1_SHA3_512,
);

/// User types known by name.
static USERS: &[(&str, CK_ULONG)] = table!(CKU_SO, CKU_USER, CKU_CONTEXT_SPECIFIC);

/// Key derivation functions of ECDH known by name.
static KDFS: &[(&str, CK_ULONG)] = table!(
    CKD_NULL,
    CKD_SHA1_KDF,
    CKD_SHA224_KDF,
    CKD_SHA256_KDF,
    CKD_SHA384_KDF,
    CKD_SHA512_KDF,
    CKD_SHA3_224_KDF,
    CKD_SHA3_256_KDF,
    CKD_SHA3_384_KDF,
    CKD_SHA3_512_KDF,
);

/// The name of `v` in `table`, if known.
fn lookup(table: &[(&'static str, CK_ULONG)], v: CK_ULONG) -> Option<&'static str> {
    table.iter().find(|(_, x)| *x == v).map(|(n, _)| *n)
}

/// The `CKO_*` name of an object class, if known.
pub fn class_name(v: CK_OBJECT_CLASS) -> Option<&'static str> {
    lookup(CLASSES, v)
}

/// The `CKK_*` name of a key type, if known.
pub fn key_type_name(v: CK_KEY_TYPE) -> Option<&'static str> {
    lookup(KEY_TYPES, v)
}

/// The `CKC_*` name of a certificate type, if known.
pub fn certificate_type_name(v: CK_CERTIFICATE_TYPE) -> Option<&'static str> {
    lookup(CERTIFICATE_TYPES, v)
}

/// The `CKG_MGF1_*` name of a mask generation function, if known.
pub fn mgf_name(v: CK_RSA_PKCS_MGF_TYPE) -> Option<&'static str> {
    lookup(MGFS, v)
}

/// The `CKU_*` name of a user type, if known.
pub fn user_name(v: CK_USER_TYPE) -> Option<&'static str> {
    lookup(USERS, v)
}

/// The `CKD_*` name of an ECDH key derivation function, if known.
pub fn kdf_name(v: CK_EC_KDF_TYPE) -> Option<&'static str> {
    lookup(KDFS, v)
}

/// The name of the curve `CKA_EC_PARAMS` names: `P-256` ..., `secp256k1`, `Ed25519`, `Ed448`,
/// `X25519`, `X448`, `brainpoolP256r1` ..., else `oid:1.2.…`; `None` if it is no OID or name.
pub fn curve_name(ec_params: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef};
    if let Ok(oid) = ObjectIdentifier::from_der(ec_params) {
        let known = [
            ("1.3.132.0.33", "P-224"),
            ("1.2.840.10045.3.1.7", "P-256"),
            ("1.3.132.0.34", "P-384"),
            ("1.3.132.0.35", "P-521"),
            ("1.2.840.10045.3.1.1", "P-192"),
            ("1.3.132.0.10", "secp256k1"),
            ("1.3.101.112", "Ed25519"),
            ("1.3.101.113", "Ed448"),
            ("1.3.101.110", "X25519"),
            ("1.3.101.111", "X448"),
            ("1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1"),
            ("1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1"),
            ("1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1"),
        ];
        let text = oid.to_string();
        return Some(
            known
                .iter()
                .find(|(o, _)| *o == text)
                .map_or_else(|| format!("oid:{text}"), |(_, n)| (*n).to_owned()),
        );
    }
    // RFC 8410 names as printable strings (PKCS#11 3.0 §2.3.5 allows them for Edwards curves).
    let name = PrintableStringRef::from_der(ec_params).ok()?;
    Some(match name.as_str() {
        "edwards25519" => "Ed25519".into(),
        "edwards448" => "Ed448".into(),
        "curve25519" => "X25519".into(),
        "curve448" => "X448".into(),
        other => other.to_owned(),
    })
}

/// The `CKM_*` name of `ty`, if known.
pub fn mechanism_name(ty: CK_MECHANISM_TYPE) -> Option<&'static str> {
    MECHANISMS.iter().find(|(_, v)| *v == ty).map(|(n, _)| *n)
}

/// A mechanism given by `CKM_*` name (with or without the prefix), hexadecimal `0x...` or
/// decimal number.
pub fn parse_mechanism(text: &str) -> Option<CK_MECHANISM_TYPE> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return CK_MECHANISM_TYPE::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = t.parse::<CK_MECHANISM_TYPE>() {
        return Some(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("CKM_") {
        upper
    } else {
        format!("CKM_{upper}")
    };
    MECHANISMS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        assert_eq!(parse_mechanism("CKM_ECDSA_SHA256"), Some(CKM_ECDSA_SHA256));
        assert_eq!(parse_mechanism("ecdsa_sha256"), Some(CKM_ECDSA_SHA256));
        assert_eq!(parse_mechanism("0x1044"), Some(CKM_ECDSA_SHA256));
        assert_eq!(parse_mechanism("4164"), Some(CKM_ECDSA_SHA256));
        assert_eq!(parse_mechanism("CKM_NO_SUCH"), None);
        assert_eq!(mechanism_name(CKM_AES_GCM), Some("CKM_AES_GCM"));
    }

    #[test]
    fn enumerations_and_curves_have_names() {
        assert_eq!(class_name(CKO_PRIVATE_KEY), Some("CKO_PRIVATE_KEY"));
        assert_eq!(key_type_name(CKK_EC), Some("CKK_EC"));
        assert_eq!(mgf_name(CKG_MGF1_SHA256), Some("CKG_MGF1_SHA256"));
        assert_eq!(
            user_name(CKU_CONTEXT_SPECIFIC),
            Some("CKU_CONTEXT_SPECIFIC")
        );
        assert_eq!(key_type_name(0x7fff_0000), None);
        let p256 = [6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7];
        assert_eq!(curve_name(&p256).as_deref(), Some("P-256"));
        assert_eq!(
            curve_name(b"\x13\x0cedwards25519").as_deref(),
            Some("Ed25519")
        );
        // brainpoolP256r1: 1.3.36.3.3.2.8.1.1.7, named; another OID as its dotted text.
        let brainpool = [6, 9, 0x2b, 0x24, 3, 3, 2, 8, 1, 1, 7];
        assert_eq!(curve_name(&brainpool).as_deref(), Some("brainpoolP256r1"));
        let other = [6, 9, 0x2b, 0x24, 3, 3, 2, 8, 1, 1, 9];
        assert_eq!(
            curve_name(&other).as_deref(),
            Some("oid:1.3.36.3.3.2.8.1.1.9")
        );
        // A multi-byte arc (840 = 0x86 0x48), and malformed or explicit parameters.
        assert_eq!(curve_name(&[6, 2, 0x2a, 0x86]), None);
        assert_eq!(curve_name(&[0x30, 0]), None);
    }
}
