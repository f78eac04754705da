//! The mechanism registry: one sorted table of everything the firmware implements.
//! `C_GetMechanismList` and `C_GetMechanismInfo` *are* this table; there is no second list.
//!
//! Adding a mechanism is one file (or one static in a family file) plus one table line. A
//! mechanism overrides only the operations it supports; the defaults say "not this one".

mod aead;
mod aes;
mod aes_gcm;
mod aes_kw;
mod des;
mod digest;
mod ec;
mod eddsa;
mod generic;
mod hkdf;
mod hmac;
mod rsa;

use std::sync::Arc;

use bridge::personality::Profile;
use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use der::{Decode, Header, Reader, SliceReader, Tag};
use zeroize::Zeroizing;

use crate::object::{Object, SecretAttrs};

/// The flags of a signature or MAC mechanism: the regular functions and the 3.0 message-based
/// ones (`C_MessageSignInit` ..), which run the same operation once per message.
pub(crate) const SIGN_VERIFY: CK_FLAGS =
    CKF_SIGN | CKF_VERIFY | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY;

/// Output bytes that may be secret (plaintext, key material).
pub(crate) type Output = Zeroizing<Vec<u8>>;

/// A key as a mechanism sees it: the object (attributes, cached parsed forms) and its
/// unsealed secret attributes.
pub(crate) struct Key<'a> {
    pub(crate) obj: &'a Arc<Object>,
    pub(crate) secrets: &'a SecretAttrs,
}

/// A running digest.
pub(crate) trait DigestOp: Send {
    /// Output length.
    fn len(&self) -> usize;
    /// Absorbs data.
    fn update(&mut self, data: &[u8]) -> Result<()>;
    /// The digest.
    fn finish(&mut self) -> Result<Output>;
}

/// A running signature or MAC.
pub(crate) trait SignOp: Send {
    /// The exact signature length.
    fn len(&self) -> usize;
    /// Absorbs data (multi-part).
    fn update(&mut self, data: &[u8]) -> Result<()>;
    /// The signature over everything absorbed.
    fn finish(&mut self) -> Result<Output>;
    /// Single-part signing; mechanisms that only sign whole inputs override this.
    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        self.update(data)?;
        self.finish()
    }
    /// Whether multi-part signing is possible (`CKM_RSA_PKCS` and raw ECDSA are single-part).
    fn multi_part(&self) -> bool {
        true
    }
}

/// A running verification.
pub(crate) trait VerifyOp: Send {
    /// Absorbs data (multi-part).
    fn update(&mut self, data: &[u8]) -> Result<()>;
    /// Checks `signature` over everything absorbed.
    fn finish(&mut self, signature: &[u8]) -> Result<()>;
    /// Single-part verification.
    fn one_shot(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        self.update(data)?;
        self.finish(signature)
    }
    /// Whether multi-part verification is possible.
    fn multi_part(&self) -> bool {
        true
    }
}

/// A running encryption or decryption.
pub(crate) trait CipherOp: Send {
    /// An upper bound of what `update(len)` (or `one_shot` when `whole`) produces.
    fn output_len(&self, input_len: usize, whole: bool) -> usize;
    /// Processes a part.
    fn update(&mut self, data: &[u8]) -> Result<Output>;
    /// Ends a multi-part operation.
    fn finish(&mut self) -> Result<Output>;
    /// An upper bound of what `finish` produces.
    fn final_len(&self) -> usize;
    /// Single-part processing.
    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        let mut out = self.update(data)?;
        out.extend_from_slice(&self.finish()?);
        Ok(out)
    }
    /// Whether multi-part processing is possible.
    fn multi_part(&self) -> bool {
        true
    }
}

/// A message-based encryption or decryption context (PKCS#11 3.0 `C_MessageEncryptInit` ...):
/// one key, many messages, each with its own parameters (IV, tag).
pub(crate) trait MessageCipherOp: Send {
    /// Starts a message: checks `params`, fills in what the token generates (the IV on
    /// encryption) and takes the associated data.
    fn begin(&mut self, params: &mut MechanismParams, aad: &[u8]) -> Result<()>;
    /// The exact output length of `next(input_len, last)`.
    fn next_len(&self, input_len: usize, last: bool) -> usize;
    /// Processes a part of the message; `last` ends it (on encryption the tag is written into
    /// `params`; on decryption the tag in `params` is checked).
    fn next(&mut self, params: &mut MechanismParams, data: &[u8], last: bool) -> Result<Output>;
    /// Whether a message has begun and not ended.
    fn in_message(&self) -> bool;
    /// Drops the message in progress (after an error).
    fn abort(&mut self);
}

/// Generated key material: the attributes the mechanism supplies for the new object (secret
/// ones are sealed by the object layer).
pub(crate) struct Generated {
    pub(crate) class: CK_OBJECT_CLASS,
    pub(crate) key_type: CK_KEY_TYPE,
    pub(crate) attrs: Vec<Attribute>,
}

/// What a mechanism can do. Defaults say "not this one".
#[allow(unused_variables)]
pub(crate) trait Mechanism: Sync {
    /// `CKM_*`.
    fn ty(&self) -> CK_MECHANISM_TYPE;
    /// Key sizes and flags, as `C_GetMechanismInfo` reports them.
    fn info(&self) -> MechanismInfo;
    /// `C_DigestInit`.
    fn digest_init(&self, params: &MechanismParams) -> Result<Box<dyn DigestOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_SignInit`.
    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_VerifyInit`.
    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_EncryptInit`.
    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_DecryptInit`.
    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_MessageEncryptInit`.
    fn message_encrypt_init(
        &self,
        key: &Key<'_>,
        params: &MechanismParams,
    ) -> Result<Box<dyn MessageCipherOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_MessageDecryptInit`.
    fn message_decrypt_init(
        &self,
        key: &Key<'_>,
        params: &MechanismParams,
    ) -> Result<Box<dyn MessageCipherOp>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_GenerateKey`.
    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        Err(Error::MechanismInvalid)
    }
    /// `C_GenerateKeyPair`: (public, private).
    fn generate_key_pair(
        &self,
        public: &Template,
        private: &Template,
        params: &MechanismParams,
    ) -> Result<(Generated, Generated)> {
        Err(Error::MechanismInvalid)
    }
    /// `C_WrapKey`: encrypts `material` (a secret key's value, or a private key as PKCS#8)
    /// under `wrapping_key`. The device has already decided the key may be wrapped.
    fn wrap(
        &self,
        wrapping_key: &Key<'_>,
        material: &[u8],
        params: &MechanismParams,
    ) -> Result<Vec<u8>> {
        Err(Error::MechanismInvalid)
    }
    /// `C_UnwrapKey`: decrypts wrapped key material under `unwrapping_key`. Every failure to
    /// authenticate or unpad is one code (`CKR_WRAPPED_KEY_INVALID`), on one path.
    fn unwrap(
        &self,
        unwrapping_key: &Key<'_>,
        wrapped: &[u8],
        params: &MechanismParams,
    ) -> Result<Output> {
        Err(Error::MechanismInvalid)
    }
    /// The mechanism's key-type rule for the use whose usage attribute is `usage`, judged from
    /// the key's class and type alone: no key material is unsealed and no caller data is
    /// looked at. The device checks it before the usage attribute, because the specification
    /// gives `CKR_KEY_TYPE_INCONSISTENT` precedence over `CKR_KEY_FUNCTION_NOT_PERMITTED`, and
    /// the usage attribute before any cryptographic work (see `object::protection`).
    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        Ok(())
    }
    /// `C_DeriveKey`: the derived value.
    fn derive(
        &self,
        base: &Key<'_>,
        params: &MechanismParams,
        ctx: &DeriveCtx<'_>,
    ) -> Result<Output> {
        Err(Error::MechanismInvalid)
    }
}

/// What a derivation needs besides the base key and the parameters.
#[allow(dead_code)] // read by the derive mechanisms, none registered yet
pub(crate) struct DeriveCtx<'a> {
    /// The requested length of the derived value (from `CKA_VALUE_LEN` or the key type), if
    /// known.
    pub(crate) value_len: Option<usize>,
    /// The class of the object being derived (`CKO_SECRET_KEY`, or `CKO_DATA` for
    /// `CKM_HKDF_DATA`).
    pub(crate) class: CK_OBJECT_CLASS,
    /// The key type of the object being derived (`None` for a data object), for mechanisms
    /// whose output length depends on it (ECDH without `CKA_VALUE_LEN`).
    pub(crate) key_type: Option<CK_KEY_TYPE>,
    /// The value of another key named in the parameters (an HKDF salt key), checked by the
    /// device for visibility and `CKA_DERIVE`.
    pub(crate) key_value: &'a dyn Fn(CK_OBJECT_HANDLE) -> Result<Output>,
}

/// Every mechanism the firmware implements, sorted by `CKM_*` value.
pub(crate) static MECHANISMS: &[&dyn Mechanism] = &[
    &rsa::RSA_PKCS_KEY_PAIR_GEN,      // 0x0000
    &rsa::RSA_PKCS,                   // 0x0001
    &rsa::RSA_X_509,                  // 0x0003
    &rsa::SHA1_RSA_PKCS,              // 0x0006
    &rsa::RSA_PKCS_OAEP,              // 0x0009
    &rsa::RSA_PKCS_PSS,               // 0x000d
    &rsa::SHA1_RSA_PKCS_PSS,          // 0x000e
    &rsa::SHA256_RSA_PKCS,            // 0x0040
    &rsa::SHA384_RSA_PKCS,            // 0x0041
    &rsa::SHA512_RSA_PKCS,            // 0x0042
    &rsa::SHA256_RSA_PKCS_PSS,        // 0x0043
    &rsa::SHA384_RSA_PKCS_PSS,        // 0x0044
    &rsa::SHA512_RSA_PKCS_PSS,        // 0x0045
    &rsa::SHA224_RSA_PKCS,            // 0x0046
    &rsa::SHA224_RSA_PKCS_PSS,        // 0x0047
    &digest::SHA512_224,              // 0x0048
    &hmac::SHA512_224_HMAC,           // 0x0049
    &hmac::SHA512_224_HMAC_GENERAL,   // 0x004a
    &digest::SHA512_256,              // 0x004c
    &hmac::SHA512_256_HMAC,           // 0x004d
    &hmac::SHA512_256_HMAC_GENERAL,   // 0x004e
    &des::DES2_KEY_GEN,               // 0x0130
    &des::DES3_KEY_GEN,               // 0x0131
    &des::DES3_ECB,                   // 0x0132
    &des::DES3_CBC,                   // 0x0133
    &des::DES3_CBC_PAD,               // 0x0136
    &digest::MD5,                     // 0x0210
    &hmac::MD5_HMAC,                  // 0x0211
    &hmac::MD5_HMAC_GENERAL,          // 0x0212
    &digest::SHA_1,                   // 0x0220
    &hmac::SHA_1_HMAC,                // 0x0221
    &hmac::SHA_1_HMAC_GENERAL,        // 0x0222
    &digest::SHA256,                  // 0x0250
    &hmac::SHA256_HMAC,               // 0x0251
    &hmac::SHA256_HMAC_GENERAL,       // 0x0252
    &digest::SHA224,                  // 0x0255
    &hmac::SHA224_HMAC,               // 0x0256
    &hmac::SHA224_HMAC_GENERAL,       // 0x0257
    &digest::SHA384,                  // 0x0260
    &hmac::SHA384_HMAC,               // 0x0261
    &hmac::SHA384_HMAC_GENERAL,       // 0x0262
    &digest::SHA512,                  // 0x0270
    &hmac::SHA512_HMAC,               // 0x0271
    &hmac::SHA512_HMAC_GENERAL,       // 0x0272
    &digest::SHA3_256,                // 0x02b0
    &hmac::SHA3_256_HMAC,             // 0x02b1
    &hmac::SHA3_256_HMAC_GENERAL,     // 0x02b2
    &digest::SHA3_224,                // 0x02b5
    &hmac::SHA3_224_HMAC,             // 0x02b6
    &hmac::SHA3_224_HMAC_GENERAL,     // 0x02b7
    &digest::SHA3_384,                // 0x02c0
    &hmac::SHA3_384_HMAC,             // 0x02c1
    &hmac::SHA3_384_HMAC_GENERAL,     // 0x02c2
    &digest::SHA3_512,                // 0x02d0
    &hmac::SHA3_512_HMAC,             // 0x02d1
    &hmac::SHA3_512_HMAC_GENERAL,     // 0x02d2
    &generic::GENERIC_SECRET_KEY_GEN, // 0x0350
    &generic::PKCS5_PBKD2,            // 0x03b0
    &ec::EC_KEY_PAIR_GEN,             // 0x1040
    &ec::ECDSA,                       // 0x1041
    &ec::ECDSA_SHA1,                  // 0x1042
    &ec::ECDSA_SHA224,                // 0x1043
    &ec::ECDSA_SHA256,                // 0x1044
    &ec::ECDSA_SHA384,                // 0x1045
    &ec::ECDSA_SHA512,                // 0x1046
    &ec::ECDH1_DERIVE,                // 0x1050
    &ec::ECDH1_COFACTOR_DERIVE,       // 0x1051
    &rsa::RSA_AES_KEY_WRAP,           // 0x1054
    &eddsa::EC_EDWARDS_KEY_PAIR_GEN,  // 0x1055
    &eddsa::EDDSA,                    // 0x1057
    &aes::AES_KEY_GEN,                // 0x1080
    &aes::AES_ECB,                    // 0x1081
    &aes::AES_CBC,                    // 0x1082
    &aes::AES_CBC_PAD,                // 0x1085
    &aes::AES_CTR,                    // 0x1086
    &aes_gcm::AES_GCM,                // 0x1087
    &aead::AES_CCM,                   // 0x1088
    &aes::AES_CMAC,                   // 0x108a
    &aes::AES_CMAC_GENERAL,           // 0x108b
    &aead::CHACHA20_KEY_GEN,          // 0x1225
    &aes_kw::AES_KEY_WRAP,            // 0x2109
    &aes_kw::AES_KEY_WRAP_PAD,        // 0x210a
    &aes_kw::AES_KEY_WRAP_KWP,        // 0x210b
    &aes_kw::AES_KEY_WRAP_PKCS7,      // 0x210c
    &aead::CHACHA20_POLY1305,         // 0x4021
    &hkdf::HKDF_DERIVE,               // 0x402a
    &hkdf::HKDF_DATA,                 // 0x402b
    &hkdf::HKDF_KEY_GEN,              // 0x402c
];

/// The mechanisms a token of personality `profile` lists: the whole table, less the legacy
/// ones where the personality has none, less what the personality does not offer.
pub(crate) fn list_for(profile: &Profile) -> impl Iterator<Item = CK_MECHANISM_TYPE> + '_ {
    MECHANISMS
        .iter()
        .map(|m| m.ty())
        .filter(move |ty| profile.offers(*ty))
}

/// The mechanism `ty` as a token of personality `profile` runs it: strict firmware keeps
/// PKCS#11 v2.40's reading of `CKM_AES_KEY_WRAP_PAD` (see `aes_kw`); a personality without
/// legacy mechanisms ([`bridge::personality::LEGACY`]) has none, and one that lists its
/// mechanisms has only those ([`Profile::offers`]).
pub(crate) fn lookup_for(
    ty: CK_MECHANISM_TYPE,
    profile: &Profile,
) -> Result<&'static dyn Mechanism> {
    if !profile.offers(ty) {
        return Err(Error::MechanismInvalid);
    }
    if profile.strict && ty == CKM_AES_KEY_WRAP_PAD {
        return Ok(&aes_kw::AES_KEY_WRAP_PAD_STRICT);
    }
    lookup(ty)
}

/// The mechanism `ty` for the function whose `CKF_*` flag is `flag`, as a token of personality
/// `profile` offers it: `CKR_MECHANISM_INVALID` where the firmware or the personality does not
/// offer it for that function.
pub(crate) fn for_use(
    ty: CK_MECHANISM_TYPE,
    profile: &Profile,
    flag: CK_FLAGS,
) -> Result<&'static dyn Mechanism> {
    let m = lookup_for(ty, profile)?;
    if m.info().flags & flag == 0 {
        return Err(Error::MechanismInvalid);
    }
    profile
        .judge_mechanism(ty, flag)
        .map_err(|f| f.code.unwrap_or(Error::MechanismInvalid))?;
    Ok(m)
}

/// The mechanism `ty`, or `CKR_MECHANISM_INVALID`.
pub(crate) fn lookup(ty: CK_MECHANISM_TYPE) -> Result<&'static dyn Mechanism> {
    MECHANISMS
        .binary_search_by_key(&ty, |m| m.ty())
        .ok()
        .and_then(|i| MECHANISMS.get(i).copied())
        .ok_or(Error::MechanismInvalid)
}

/// The key-type rule of the asymmetric mechanisms: the private key of `key_type` for the uses
/// of a private key (sign, decrypt, unwrap, derive), its public key for the others.
pub(crate) fn asymmetric_key(
    key: &Object,
    usage: CK_ATTRIBUTE_TYPE,
    key_type: CK_KEY_TYPE,
) -> Result<()> {
    let class = match usage {
        CKA_SIGN | CKA_SIGN_RECOVER | CKA_DECRYPT | CKA_UNWRAP | CKA_DERIVE => CKO_PRIVATE_KEY,
        _ => CKO_PUBLIC_KEY,
    };
    if key.class() == class && key.key_type() == Some(key_type) {
        Ok(())
    } else {
        Err(Error::KeyTypeInconsistent)
    }
}

/// The key-type rule of the symmetric mechanisms: a secret key of one of `types`.
pub(crate) fn secret_key(key: &Object, types: &[CK_KEY_TYPE]) -> Result<()> {
    match key.key_type() {
        Some(t) if key.class() == CKO_SECRET_KEY && types.contains(&t) => Ok(()),
        _ => Err(Error::KeyTypeInconsistent),
    }
}

/// `CKR_MECHANISM_PARAM_INVALID` unless the mechanism got no parameter.
pub(crate) fn no_params(params: &MechanismParams) -> Result<()> {
    match params {
        MechanismParams::None => Ok(()),
        _ => Err(Error::MechanismParamInvalid),
    }
}

/// The wrappable form of a key: a secret key's value, or a private key as PKCS#8.
pub(crate) fn key_to_wrap(obj: &Object, secrets: &SecretAttrs) -> Result<Output> {
    match (obj.class(), obj.key_type()) {
        (CKO_SECRET_KEY, _) => {
            let v = secrets.get(CKA_VALUE).ok_or(Error::KeyNotWrappable)?;
            Ok(Zeroizing::new(v.expose().to_vec()))
        }
        (CKO_PRIVATE_KEY, Some(CKK_RSA)) => rsa::key_to_wrap(obj, secrets),
        (CKO_PRIVATE_KEY, Some(CKK_EC)) => ec::to_pkcs8(obj, secrets),
        (CKO_PRIVATE_KEY, Some(CKK_EC_EDWARDS)) => eddsa::to_pkcs8(obj, secrets),
        _ => Err(Error::KeyNotWrappable),
    }
}

/// The attributes of an unwrapped key of `class`/`key_type` from its wrappable form.
pub(crate) fn key_from_unwrap(
    class: CK_OBJECT_CLASS,
    key_type: CK_KEY_TYPE,
    material: &[u8],
) -> Result<Vec<Attribute>> {
    match class {
        CKO_SECRET_KEY => {
            let t = Template::new().with(Attribute::bytes(CKA_VALUE, material.to_vec()));
            check_import(class, Some(key_type), &t).map_err(|_| Error::WrappedKeyInvalid)?;
            Ok(t.0)
        }
        CKO_PRIVATE_KEY if key_type == CKK_RSA => rsa::key_from_unwrap(without_padding(material)),
        CKO_PRIVATE_KEY if key_type == CKK_EC => ec::from_pkcs8(without_padding(material)),
        CKO_PRIVATE_KEY if key_type == CKK_EC_EDWARDS => {
            eddsa::from_pkcs8(without_padding(material))
        }
        _ => Err(Error::TemplateInconsistent),
    }
}

/// A PKCS#8 structure without the zero bytes some tokens append to reach a whole number of
/// cipher blocks before wrapping (SoftHSMv2 pads PKCS#8 to a multiple of 8 even under RFC 5649,
/// which pads by itself). Only zeros, fewer than a block, after one complete DER SEQUENCE are
/// dropped; anything else is left for the parser to refuse.
fn without_padding(der: &[u8]) -> &[u8] {
    // The length of the first element, from its DER header (minimal length encoding only).
    let len = (|| {
        let mut r = SliceReader::new(der).ok()?;
        let header = Header::decode(&mut r).ok()?;
        if header.tag != Tag::Sequence {
            return None;
        }
        usize::try_from((r.position() + header.length).ok()?).ok()
    })();
    match len.and_then(|n| der.split_at_checked(n)) {
        Some((body, rest))
            if !rest.is_empty() && rest.len() < 16 && rest.iter().all(|b| *b == 0) =>
        {
            body
        }
        _ => der,
    }
}

/// A PKCS#8 `PrivateKeyInfo` in strict DER (one structure, minimal lengths, nothing after
/// it), or `CKR_WRAPPED_KEY_INVALID`. The crypto provider parses the key again; this refuses
/// the encodings it would let through (it reads one element and ignores what follows).
pub(crate) fn strict_pkcs8(der: &[u8]) -> Result<pkcs8::PrivateKeyInfo<'_>> {
    pkcs8::PrivateKeyInfo::from_der(der).map_err(|_| Error::WrappedKeyInvalid)
}

/// Checks imported key material (`C_CreateObject`) for the key types whose value has a fixed
/// shape: `CKR_ATTRIBUTE_VALUE_INVALID` otherwise.
pub(crate) fn check_import(
    class: CK_OBJECT_CLASS,
    subtype: Option<CK_ULONG>,
    template: &Template,
) -> Result<()> {
    let value_len = || {
        template
            .get(CKA_VALUE)
            .map(|a| a.as_bytes().map(<[u8]>::len))
            .transpose()
    };
    match (class, subtype) {
        (CKO_SECRET_KEY, Some(CKK_AES)) => match value_len()? {
            Some(16 | 24 | 32) | None => Ok(()),
            Some(_) => Err(Error::AttributeValueInvalid),
        },
        (CKO_SECRET_KEY, Some(t @ (CKK_DES2 | CKK_DES3))) => {
            match template
                .get(CKA_VALUE)
                .map(Attribute::as_bytes)
                .transpose()?
            {
                Some(v) => des::check_value(t, v),
                None => Ok(()),
            }
        }
        (CKO_SECRET_KEY, Some(CKK_CHACHA20)) => match value_len()? {
            Some(32) | None => Ok(()),
            Some(_) => Err(Error::AttributeValueInvalid),
        },
        (CKO_SECRET_KEY, Some(_)) => match value_len()? {
            Some(0) => Err(Error::AttributeValueInvalid),
            _ => Ok(()),
        },
        (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY, Some(CKK_RSA)) => rsa::check_import(class, template),
        (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY, Some(CKK_EC)) => ec::check_import(class, template),
        (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY, Some(CKK_EC_EDWARDS)) => {
            eddsa::check_import(class, template)
        }
        _ => Ok(()),
    }
}

/// The attributes the token computes for key material given to `C_CreateObject` (after
/// `check_import`), such as `CKA_MODULUS_BITS` of an RSA public key.
pub(crate) fn computed_on_import(
    class: CK_OBJECT_CLASS,
    subtype: Option<CK_ULONG>,
    template: &Template,
) -> Result<Vec<Attribute>> {
    match (class, subtype) {
        (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY, Some(CKK_RSA)) => {
            rsa::computed_on_import(class, template)
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_strictly_sorted() {
        for w in MECHANISMS.windows(2) {
            assert!(
                w[0].ty() < w[1].ty(),
                "0x{:x} before 0x{:x}",
                w[0].ty(),
                w[1].ty()
            );
        }
    }

    #[test]
    fn every_entry_has_sane_info() {
        for m in MECHANISMS {
            let i = m.info();
            assert!(i.min_key_size <= i.max_key_size, "0x{:x}", m.ty());
            assert_ne!(i.flags, 0, "0x{:x} does nothing", m.ty());
            assert_eq!(lookup(m.ty()).unwrap().ty(), m.ty());
        }
        assert!(lookup(CKM_VENDOR_DEFINED).is_err());
    }

    /// SoftHSMv2's PKCS#8, zero-padded to a multiple of 8 bytes, unwraps; anything else after
    /// the structure, or a structure whose outer length is not minimal DER, does not.
    #[test]
    fn pkcs8_zero_padding_is_dropped_and_nothing_else() {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::from_slice(&[0x11; 32]).unwrap();
        let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let unwrap = |m: &[u8]| key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC, m).map(|_| ());
        assert_eq!(unwrap(&der), Ok(()));
        let pad = 8 - der.len() % 8;
        let padded = [&der[..], &vec![0u8; pad]].concat();
        assert_eq!(without_padding(&padded), &der[..]);
        assert_eq!(unwrap(&padded), Ok(()));
        // Not zeros, or a whole block of them: left for the parser, which refuses.
        let mut junk = padded.clone();
        *junk.last_mut().unwrap() = 1;
        assert_eq!(without_padding(&junk), &junk[..]);
        assert_eq!(unwrap(&junk), Err(Error::WrappedKeyInvalid));
        let block = [&der[..], &[0u8; 16]].concat();
        assert_eq!(unwrap(&block), Err(Error::WrappedKeyInvalid));
        // The outer SEQUENCE's length in a longer form than needed (30 81 xx cannot be
        // shortened here; 30 82 00 xx can): the hand-written reader measured it anyway and
        // stripped the padding; the DER header reader does not, and the key is refused.
        assert_eq!(der[1], 0x81);
        let body = &der[3..];
        let long = [&[0x30, 0x82, 0x00, der[2]][..], body, &vec![0u8; pad]].concat();
        assert_eq!(without_padding(&long), &long[..]);
        assert_eq!(unwrap(&long), Err(Error::WrappedKeyInvalid));
        // Bytes after the PKCS#8 that are not padding: the crypto provider read one element
        // and ignored the rest, so these were keys before; now they are refused.
        let ed = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            let k = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
            k.to_pkcs8_der().unwrap().as_bytes().to_vec()
        };
        let ed_unwrap = |m: &[u8]| key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC_EDWARDS, m).map(|_| ());
        assert_eq!(ed_unwrap(&ed), Ok(()));
        for (unwrap, good) in [
            (&unwrap as &dyn Fn(&[u8]) -> Result<()>, &der),
            (&ed_unwrap, &ed),
        ] {
            for tail in [&[1u8][..], &[0x05, 0x00], &[0u8; 16]] {
                let bad = [&good[..], tail].concat();
                assert_eq!(unwrap(&bad), Err(Error::WrappedKeyInvalid), "{tail:02x?}");
            }
        }
    }
}
