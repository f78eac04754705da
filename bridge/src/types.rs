//! The owned vocabulary every backend speaks: handles, attributes, templates, mechanisms and
//! the information structures. No raw pointers: the C ABI shim decodes into these, the loaded
//! back end encodes from them.

use std::fmt;

use cryptoki_sys::*;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// A slot identifier as the application sees it (or as a backend sees it, behind the router).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub CK_SLOT_ID);

/// A session handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle(pub CK_SESSION_HANDLE);

/// An object handle. Object handles pass through the router unchanged: every call that carries
/// one also carries the session that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectHandle(pub CK_OBJECT_HANDLE);

/// The attribute types whose value is itself an array of attributes (`CK_ATTRIBUTE[]`).
pub const TEMPLATE_ATTRIBUTES: [CK_ATTRIBUTE_TYPE; 5] = [
    CKA_WRAP_TEMPLATE,
    CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE,
    CKA_ENCAPSULATE_TEMPLATE,
    CKA_DECAPSULATE_TEMPLATE,
];

/// Whether `ty`'s value is an attribute array rather than bytes.
pub fn is_template_attribute(ty: CK_ATTRIBUTE_TYPE) -> bool {
    TEMPLATE_ATTRIBUTES.contains(&ty)
}

/// Size of a `CK_ULONG` on this platform, in bytes.
pub const ULONG_SIZE: usize = size_of::<CK_ULONG>();

/// The value of one attribute: bytes in the C layout of the platform (a `CK_ULONG` is its
/// native-endian bytes, a `CK_BBOOL` one byte), or a nested template for the attribute-array
/// attributes (`CKA_WRAP_TEMPLATE`, ...).
///
/// Byte values are zeroized on drop, and `Debug` never prints them: a value may be key material.
#[derive(Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// A plain value.
    Bytes(Vec<u8>),
    /// An attribute array.
    Template(Template),
}

impl Drop for AttrValue {
    fn drop(&mut self) {
        if let Self::Bytes(b) = self {
            b.zeroize();
        }
    }
}

impl fmt::Debug for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Self::Template(t) => f.debug_list().entries(t.iter()).finish(),
        }
    }
}

/// One attribute of a template.
#[derive(Clone, PartialEq, Eq)]
pub struct Attribute {
    /// `CKA_*`.
    pub ty: CK_ATTRIBUTE_TYPE,
    /// The value.
    pub value: AttrValue,
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}", attr_name(self.ty), self.value)
    }
}

impl Attribute {
    /// A byte-valued attribute.
    pub fn bytes(ty: CK_ATTRIBUTE_TYPE, value: impl Into<Vec<u8>>) -> Self {
        Self {
            ty,
            value: AttrValue::Bytes(value.into()),
        }
    }

    /// A `CK_BBOOL` attribute.
    pub fn bool(ty: CK_ATTRIBUTE_TYPE, value: bool) -> Self {
        Self::bytes(ty, vec![u8::from(value)])
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(ty: CK_ATTRIBUTE_TYPE, value: CK_ULONG) -> Self {
        Self::bytes(ty, value.to_ne_bytes().to_vec())
    }

    /// A nested attribute array.
    pub fn template(ty: CK_ATTRIBUTE_TYPE, value: Template) -> Self {
        Self {
            ty,
            value: AttrValue::Template(value),
        }
    }

    /// The value's bytes, or `CKR_ATTRIBUTE_VALUE_INVALID` for a nested template.
    pub fn as_bytes(&self) -> Result<&[u8]> {
        match &self.value {
            AttrValue::Bytes(b) => Ok(b),
            AttrValue::Template(_) => Err(Error::AttributeValueInvalid),
        }
    }

    /// The value as `CK_BBOOL`: exactly one byte, else `CKR_ATTRIBUTE_VALUE_INVALID`.
    pub fn as_bool(&self) -> Result<bool> {
        match self.as_bytes()? {
            [b] => Ok(*b != 0),
            _ => Err(Error::AttributeValueInvalid),
        }
    }

    /// The value as `CK_ULONG`: exactly `sizeof(CK_ULONG)` bytes, else
    /// `CKR_ATTRIBUTE_VALUE_INVALID`.
    pub fn as_ulong(&self) -> Result<CK_ULONG> {
        let b: [u8; ULONG_SIZE] = self
            .as_bytes()?
            .try_into()
            .map_err(|_| Error::AttributeValueInvalid)?;
        Ok(CK_ULONG::from_ne_bytes(b))
    }

    /// The value as an array of `CK_ULONG` (e.g. `CKA_ALLOWED_MECHANISMS`).
    pub fn as_ulongs(&self) -> Result<Vec<CK_ULONG>> {
        let b = self.as_bytes()?;
        if b.len() % ULONG_SIZE != 0 {
            return Err(Error::AttributeValueInvalid);
        }
        Ok(b.chunks_exact(ULONG_SIZE)
            .map(|c| {
                let mut a = [0u8; ULONG_SIZE];
                a.copy_from_slice(c);
                CK_ULONG::from_ne_bytes(a)
            })
            .collect())
    }

    /// The nested template, or `CKR_ATTRIBUTE_VALUE_INVALID` for a byte value.
    pub fn as_template(&self) -> Result<&Template> {
        match &self.value {
            AttrValue::Template(t) => Ok(t),
            AttrValue::Bytes(_) => Err(Error::AttributeValueInvalid),
        }
    }
}

/// An ordered list of attributes, as a PKCS#11 template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Attribute>);

impl Template {
    /// An empty template.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds an attribute (builder style).
    pub fn with(mut self, attr: Attribute) -> Self {
        self.0.push(attr);
        self
    }

    /// The first attribute of type `ty`.
    pub fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&Attribute> {
        self.0.iter().find(|a| a.ty == ty)
    }

    /// Iterates the attributes.
    pub fn iter(&self) -> std::slice::Iter<'_, Attribute> {
        self.0.iter()
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the template is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `CKR_TEMPLATE_INCONSISTENT` if an attribute type appears twice, at this level or inside
    /// an attribute-array attribute. Templates that make or change objects are refused with a
    /// duplicate before any layer reads them: a policy reading the first occurrence and a
    /// module applying the last would otherwise disagree about what was asked.
    pub fn refuse_duplicates(&self) -> Result<()> {
        for (i, a) in self.0.iter().enumerate() {
            if self
                .0
                .get(..i)
                .is_some_and(|b| b.iter().any(|b| b.ty == a.ty))
            {
                return Err(Error::TemplateInconsistent);
            }
            if let AttrValue::Template(inner) = &a.value {
                inner.refuse_duplicates()?;
            }
        }
        Ok(())
    }
}

impl FromIterator<Attribute> for Template {
    fn from_iter<I: IntoIterator<Item = Attribute>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Template {
    type Item = &'a Attribute;
    type IntoIter = std::slice::Iter<'a, Attribute>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One entry of a `C_GetAttributeValue` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrAnswer {
    /// The value.
    Value(AttrValue),
    /// The attribute is sensitive or unextractable (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

/// The code an application sees for a `C_GetAttributeValue` answered with `answers` (buffer
/// sizes aside): `CKR_ATTRIBUTE_SENSITIVE` before `CKR_ATTRIBUTE_TYPE_INVALID`, as the C door
/// chooses them.
pub fn answers_outcome(answers: &[AttrAnswer]) -> Result<()> {
    if answers.iter().any(|a| matches!(a, AttrAnswer::Sensitive)) {
        Err(Error::AttributeSensitive)
    } else if answers.iter().any(|a| matches!(a, AttrAnswer::Invalid)) {
        Err(Error::AttributeTypeInvalid)
    } else {
        Ok(())
    }
}

/// OAEP parameters (`CK_RSA_PKCS_OAEP_PARAMS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OaepParams {
    /// `hashAlg`.
    pub hash_alg: CK_MECHANISM_TYPE,
    /// `mgf` (`CKG_MGF1_*`).
    pub mgf: CK_RSA_PKCS_MGF_TYPE,
    /// `source` (`CKZ_DATA_SPECIFIED` or 0).
    pub source: CK_RSA_PKCS_OAEP_SOURCE_TYPE,
    /// The label (`pSourceData`).
    pub source_data: Vec<u8>,
}

/// Mechanism parameters, one variant per parameter structure. The C ABI shim chooses the
/// variant by mechanism type; the mechanism implementation checks that it got the one it needs
/// (`CKR_MECHANISM_PARAM_INVALID` otherwise).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum MechanismParams {
    /// No parameter (`pParameter` NULL, `ulParameterLen` 0).
    #[default]
    None,
    /// A plain byte string: an IV, ...
    Bytes(Vec<u8>),
    /// `CK_KEY_DERIVATION_STRING_DATA` (the data of `CKM_CONCATENATE_BASE_AND_DATA`,
    /// `CKM_AES_ECB_ENCRYPT_DATA` ...): a structure in C, so a distinct variant, never `Bytes`.
    StringData(Vec<u8>),
    /// A single `CK_ULONG` (`CK_MAC_GENERAL_PARAMS`, `CK_OBJECT_HANDLE` for key concatenation,
    /// ...).
    Ulong(CK_ULONG),
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    RsaPkcsPss {
        /// `hashAlg`.
        hash_alg: CK_MECHANISM_TYPE,
        /// `mgf`.
        mgf: CK_RSA_PKCS_MGF_TYPE,
        /// `sLen`.
        salt_len: CK_ULONG,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    RsaPkcsOaep(OaepParams),
    /// `CK_AES_CTR_PARAMS`.
    AesCtr {
        /// `ulCounterBits`.
        counter_bits: CK_ULONG,
        /// `cb`: the initial counter block.
        cb: [u8; 16],
    },
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// `pIv`.
        iv: Vec<u8>,
        /// `ulIvBits`.
        iv_bits: CK_ULONG,
        /// `pAAD`.
        aad: Vec<u8>,
        /// `ulTagBits`.
        tag_bits: CK_ULONG,
    },
    /// `CK_CCM_PARAMS`.
    Ccm {
        /// `ulDataLen`.
        data_len: CK_ULONG,
        /// `pNonce`.
        nonce: Vec<u8>,
        /// `pAAD`.
        aad: Vec<u8>,
        /// `ulMACLen`.
        mac_len: CK_ULONG,
    },
    /// `CK_SALSA20_CHACHA20_POLY1305_PARAMS` (`CKM_CHACHA20_POLY1305`).
    ChaCha20Poly1305 {
        /// `pNonce`.
        nonce: Vec<u8>,
        /// `pAAD`.
        aad: Vec<u8>,
    },
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1Derive {
        /// `kdf` (`CKD_*`).
        kdf: CK_EC_KDF_TYPE,
        /// `pSharedData`.
        shared_data: Vec<u8>,
        /// `pPublicData`.
        public_data: Vec<u8>,
    },
    /// `CK_HKDF_PARAMS`.
    Hkdf {
        /// `bExtract`.
        extract: bool,
        /// `bExpand`.
        expand: bool,
        /// `prfHashMechanism`.
        prf_hash: CK_MECHANISM_TYPE,
        /// `ulSaltType` (`CKF_HKDF_SALT_*`).
        salt_type: CK_ULONG,
        /// `pSalt`.
        salt: Vec<u8>,
        /// `hSaltKey`.
        salt_key: CK_OBJECT_HANDLE,
        /// `pInfo`.
        info: Vec<u8>,
    },
    /// `CK_RSA_AES_KEY_WRAP_PARAMS`.
    RsaAesKeyWrap {
        /// `ulAESKeyBits`.
        aes_key_bits: CK_ULONG,
        /// `pOAEPParams`.
        oaep: OaepParams,
    },
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS`.
    AesCbcEncryptData {
        /// `iv`.
        iv: [u8; 16],
        /// `pData`.
        data: Vec<u8>,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        /// `phFlag`.
        ph_flag: bool,
        /// `pContextData`.
        context: Vec<u8>,
    },
    /// `CK_PKCS5_PBKD2_PARAMS2`.
    Pbkdf2 {
        /// `saltSource`.
        salt_source: CK_ULONG,
        /// `pSaltSourceData`.
        salt: Vec<u8>,
        /// `iterations`.
        iterations: CK_ULONG,
        /// `prf`.
        prf: CK_ULONG,
        /// `pPrfData`.
        prf_data: Vec<u8>,
        /// `pPassword`.
        password: Vec<u8>,
    },
    /// `CK_GCM_MESSAGE_PARAMS` (the 3.0 message API; per message, not at init).
    GcmMessage {
        /// `pIv`: input, or output when the token generates it.
        iv: Vec<u8>,
        /// `ulIvFixedBits`.
        iv_fixed_bits: CK_ULONG,
        /// `ivGenerator` (`CKG_*`).
        iv_generator: CK_ULONG,
        /// `pTag`: output on encrypt, input on decrypt.
        tag: Vec<u8>,
        /// `ulTagBits`.
        tag_bits: CK_ULONG,
    },
    /// A parameter block for a mechanism this workspace has no structure for, copied byte for
    /// byte. Only sound for structures without pointers.
    Raw(Vec<u8>),
}

impl MechanismParams {
    /// The keys this parameter names besides the operation's own key (the salt key of HKDF):
    /// they take part in what a derivation makes, and so in its protection.
    pub fn key_handles(&self) -> Vec<CK_OBJECT_HANDLE> {
        match self {
            Self::Hkdf {
                extract: true,
                salt_type: CKF_HKDF_SALT_KEY,
                salt_key,
                ..
            } => vec![*salt_key],
            _ => Vec::new(),
        }
    }
}

impl Drop for MechanismParams {
    fn drop(&mut self) {
        // Parameters may carry secrets (a PBKDF2 password, derivation data).
        match self {
            Self::Bytes(b) | Self::Raw(b) | Self::StringData(b) => b.zeroize(),
            Self::Pbkdf2 { password, .. } => password.zeroize(),
            _ => {}
        }
    }
}

impl fmt::Debug for MechanismParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            Self::Raw(b) => write!(f, "Raw(<{} bytes>)", b.len()),
            Self::StringData(b) => write!(f, "StringData(<{} bytes>)", b.len()),
            Self::Ulong(v) => write!(f, "Ulong({v})"),
            Self::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => {
                write!(f, "Pss(hash=0x{hash_alg:x}, mgf={mgf}, sLen={salt_len})")
            }
            Self::RsaPkcsOaep(p) => write!(f, "Oaep(hash=0x{:x}, mgf={})", p.hash_alg, p.mgf),
            Self::AesCtr { counter_bits, .. } => write!(f, "Ctr(bits={counter_bits})"),
            Self::Gcm {
                iv, tag_bits, aad, ..
            } => {
                write!(
                    f,
                    "Gcm(iv={}, aad={}, tag_bits={tag_bits})",
                    iv.len(),
                    aad.len()
                )
            }
            Self::Ccm { nonce, mac_len, .. } => {
                write!(f, "Ccm(nonce={}, mac={mac_len})", nonce.len())
            }
            Self::ChaCha20Poly1305 { nonce, aad } => {
                write!(
                    f,
                    "ChaCha20Poly1305(nonce={}, aad={})",
                    nonce.len(),
                    aad.len()
                )
            }
            Self::Ecdh1Derive { kdf, .. } => write!(f, "Ecdh1Derive(kdf={kdf})"),
            Self::Hkdf {
                extract,
                expand,
                prf_hash,
                ..
            } => {
                write!(
                    f,
                    "Hkdf(extract={extract}, expand={expand}, prf=0x{prf_hash:x})"
                )
            }
            Self::RsaAesKeyWrap { aes_key_bits, .. } => write!(f, "RsaAesKeyWrap({aes_key_bits})"),
            Self::AesCbcEncryptData { data, .. } => write!(f, "AesCbcEncryptData({})", data.len()),
            Self::Eddsa { ph_flag, .. } => write!(f, "Eddsa(ph={ph_flag})"),
            Self::Pbkdf2 { iterations, .. } => write!(f, "Pbkdf2(iter={iterations})"),
            Self::GcmMessage {
                iv_generator,
                tag_bits,
                ..
            } => {
                write!(f, "GcmMessage(gen={iv_generator}, tag_bits={tag_bits})")
            }
        }
    }
}

/// A mechanism and its parameters (`CK_MECHANISM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mechanism {
    /// `CKM_*`.
    pub ty: CK_MECHANISM_TYPE,
    /// The decoded parameter.
    pub params: MechanismParams,
}

impl Mechanism {
    /// A mechanism without parameters.
    pub fn new(ty: CK_MECHANISM_TYPE) -> Self {
        Self {
            ty,
            params: MechanismParams::None,
        }
    }

    /// A mechanism with parameters.
    pub fn with(ty: CK_MECHANISM_TYPE, params: MechanismParams) -> Self {
        Self { ty, params }
    }
}

/// `CK_VERSION`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
}

/// `CK_INFO`, owned. Strings are unpadded; the shim pads them with blanks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// `cryptokiVersion`.
    pub cryptoki_version: Version,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `flags`.
    pub flags: CK_FLAGS,
    /// `libraryDescription`.
    pub description: String,
    /// `libraryVersion`.
    pub library_version: Version,
}

/// `CK_SLOT_INFO`, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `slotDescription`.
    pub description: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `flags` (`CKF_TOKEN_PRESENT`, ...).
    pub flags: CK_FLAGS,
    /// `hardwareVersion`.
    pub hardware_version: Version,
    /// `firmwareVersion`.
    pub firmware_version: Version,
}

/// `CK_TOKEN_INFO`, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `label`.
    pub label: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial_number: String,
    /// `flags`.
    pub flags: CK_FLAGS,
    /// `ulMaxSessionCount` (`CK_EFFECTIVELY_INFINITE` is 0).
    pub max_session_count: CK_ULONG,
    /// `ulSessionCount`.
    pub session_count: CK_ULONG,
    /// `ulMaxRwSessionCount`.
    pub max_rw_session_count: CK_ULONG,
    /// `ulRwSessionCount`.
    pub rw_session_count: CK_ULONG,
    /// `ulMaxPinLen`.
    pub max_pin_len: CK_ULONG,
    /// `ulMinPinLen`.
    pub min_pin_len: CK_ULONG,
    /// `ulTotalPublicMemory`.
    pub total_public_memory: CK_ULONG,
    /// `ulFreePublicMemory`.
    pub free_public_memory: CK_ULONG,
    /// `ulTotalPrivateMemory`.
    pub total_private_memory: CK_ULONG,
    /// `ulFreePrivateMemory`.
    pub free_private_memory: CK_ULONG,
    /// `hardwareVersion`.
    pub hardware_version: Version,
    /// `firmwareVersion`.
    pub firmware_version: Version,
    /// `utcTime` (16 characters, or blanks when the token has no clock).
    pub utc_time: String,
}

/// `CK_SESSION_INFO`, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// `slotID` (rewritten by the router into the application's slot id).
    pub slot: SlotId,
    /// `state` (`CKS_*`).
    pub state: CK_STATE,
    /// `flags` (`CKF_RW_SESSION`, `CKF_SERIAL_SESSION`).
    pub flags: CK_FLAGS,
    /// `ulDeviceError`.
    pub device_error: CK_ULONG,
}

/// `CK_MECHANISM_INFO`, owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechanismInfo {
    /// `ulMinKeySize`.
    pub min_key_size: CK_ULONG,
    /// `ulMaxKeySize`.
    pub max_key_size: CK_ULONG,
    /// `flags`.
    pub flags: CK_FLAGS,
}

/// `CK_USER_TYPE`.
pub type UserType = CK_USER_TYPE;

/// A readable name for an attribute type, for logs and tools.
pub fn attr_name(ty: CK_ATTRIBUTE_TYPE) -> String {
    let name = match ty {
        CKA_CLASS => "CKA_CLASS",
        CKA_TOKEN => "CKA_TOKEN",
        CKA_PRIVATE => "CKA_PRIVATE",
        CKA_LABEL => "CKA_LABEL",
        CKA_APPLICATION => "CKA_APPLICATION",
        CKA_VALUE => "CKA_VALUE",
        CKA_OBJECT_ID => "CKA_OBJECT_ID",
        CKA_CERTIFICATE_TYPE => "CKA_CERTIFICATE_TYPE",
        CKA_ISSUER => "CKA_ISSUER",
        CKA_SERIAL_NUMBER => "CKA_SERIAL_NUMBER",
        CKA_TRUSTED => "CKA_TRUSTED",
        CKA_KEY_TYPE => "CKA_KEY_TYPE",
        CKA_CERTIFICATE_CATEGORY => "CKA_CERTIFICATE_CATEGORY",
        CKA_START_DATE => "CKA_START_DATE",
        CKA_END_DATE => "CKA_END_DATE",
        CKA_URL => "CKA_URL",
        CKA_HASH_OF_SUBJECT_PUBLIC_KEY => "CKA_HASH_OF_SUBJECT_PUBLIC_KEY",
        CKA_HASH_OF_ISSUER_PUBLIC_KEY => "CKA_HASH_OF_ISSUER_PUBLIC_KEY",
        CKA_NAME_HASH_ALGORITHM => "CKA_NAME_HASH_ALGORITHM",
        CKA_SUBJECT => "CKA_SUBJECT",
        CKA_ID => "CKA_ID",
        CKA_SENSITIVE => "CKA_SENSITIVE",
        CKA_ENCRYPT => "CKA_ENCRYPT",
        CKA_DECRYPT => "CKA_DECRYPT",
        CKA_WRAP => "CKA_WRAP",
        CKA_UNWRAP => "CKA_UNWRAP",
        CKA_SIGN => "CKA_SIGN",
        CKA_SIGN_RECOVER => "CKA_SIGN_RECOVER",
        CKA_VERIFY => "CKA_VERIFY",
        CKA_VERIFY_RECOVER => "CKA_VERIFY_RECOVER",
        CKA_DERIVE => "CKA_DERIVE",
        CKA_MODULUS => "CKA_MODULUS",
        CKA_MODULUS_BITS => "CKA_MODULUS_BITS",
        CKA_PUBLIC_EXPONENT => "CKA_PUBLIC_EXPONENT",
        CKA_PRIVATE_EXPONENT => "CKA_PRIVATE_EXPONENT",
        CKA_PRIME_1 => "CKA_PRIME_1",
        CKA_PRIME_2 => "CKA_PRIME_2",
        CKA_EXPONENT_1 => "CKA_EXPONENT_1",
        CKA_EXPONENT_2 => "CKA_EXPONENT_2",
        CKA_COEFFICIENT => "CKA_COEFFICIENT",
        CKA_PRIME => "CKA_PRIME",
        CKA_SUBPRIME => "CKA_SUBPRIME",
        CKA_BASE => "CKA_BASE",
        CKA_VALUE_BITS => "CKA_VALUE_BITS",
        CKA_VALUE_LEN => "CKA_VALUE_LEN",
        CKA_EXTRACTABLE => "CKA_EXTRACTABLE",
        CKA_LOCAL => "CKA_LOCAL",
        CKA_NEVER_EXTRACTABLE => "CKA_NEVER_EXTRACTABLE",
        CKA_ALWAYS_SENSITIVE => "CKA_ALWAYS_SENSITIVE",
        CKA_KEY_GEN_MECHANISM => "CKA_KEY_GEN_MECHANISM",
        CKA_MODIFIABLE => "CKA_MODIFIABLE",
        CKA_COPYABLE => "CKA_COPYABLE",
        CKA_DESTROYABLE => "CKA_DESTROYABLE",
        CKA_EC_PARAMS => "CKA_EC_PARAMS",
        CKA_EC_POINT => "CKA_EC_POINT",
        CKA_ALWAYS_AUTHENTICATE => "CKA_ALWAYS_AUTHENTICATE",
        CKA_WRAP_WITH_TRUSTED => "CKA_WRAP_WITH_TRUSTED",
        CKA_WRAP_TEMPLATE => "CKA_WRAP_TEMPLATE",
        CKA_UNWRAP_TEMPLATE => "CKA_UNWRAP_TEMPLATE",
        CKA_DERIVE_TEMPLATE => "CKA_DERIVE_TEMPLATE",
        CKA_ALLOWED_MECHANISMS => "CKA_ALLOWED_MECHANISMS",
        CKA_UNIQUE_ID => "CKA_UNIQUE_ID",
        CKA_CHECK_VALUE => "CKA_CHECK_VALUE",
        CKA_PUBLIC_KEY_INFO => "CKA_PUBLIC_KEY_INFO",
        _ => return format!("CKA_0x{ty:x}"),
    };
    name.to_owned()
}
