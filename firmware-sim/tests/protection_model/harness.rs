// The reference model of protection, shared by `firmware-sim/tests/protection_model.rs` (a
// property-based test) and `fuzz/fuzz_targets/protection.rs` (the fuzz target): one language
// of operations an attacker with the user PIN can send, one executor that runs them against
// two simulated devices in lockstep, and one set of invariants checked after every step.
//
// Included with `#[path]` by both; it depends only on the workspace crates and `tempfile`.
//
// The attacker. Logged in as the user, it makes keys with any attributes it likes and uses
// every function the firmware offers on them. Among the keys it makes, the *victims* are the
// ones generated sensitive and never extractable (`CKA_ALWAYS_SENSITIVE` and
// `CKA_NEVER_EXTRACTABLE` read back TRUE): nobody knows their values. Keys it created with
// chosen bytes, or generated readable and read back, are *known*. Every object the sequence
// makes carries the set of victims its value is a function of (its *dependencies*):
// - a victim depends on itself, a copy on what its source depends on;
// - a derived key on its base key and (HKDF with extraction) its salt key, except for ECDH's
//   exception below;
// - an unwrapped key, where the blob was made (by `C_WrapKey` or by the attacker) under this
//   very key value with this very mechanism, on what the blob holds; otherwise (the unwrap of
//   a ciphertext the attacker chose) on the unwrapping key's victims if that key may not
//   decrypt and its unwrap template keeps the output sensitive and unextractable
//   (`oracle_protected`); else the output is what `C_Decrypt` would give anyway, or what the
//   key's creator chose to let out, and depends on nothing.
//
// The invariants, checked on every object after every step, in each world:
//   (a) no secret attribute (`CKA_VALUE`, the RSA private components) of a dependent object is
//       readable; a dependent secret key publishes `CKA_CHECK_VALUE` only if it is at least 16
//       bytes long and was not derived (`bridge::protection::check_value_public`); no data
//       object (readable by anyone who sees it) depends on a victim; `C_DigestKey` digests
//       only keys that may be read, and a search by `CKA_VALUE` matches only those;
//   (b) no wrap output the attacker receives holds a dependent key (whatever the wrapping key:
//       one it knows, one it can decrypt with, or any other);
//   (c) every dependent key is sensitive, private, and not extractable (under the strict
//       personality an extractable key leaves only under a key the SO marked trusted, which
//       this attacker cannot make: there `CKA_EXTRACTABLE` may stay TRUE);
//   (d) no dependent secret key is shorter than 16 bytes;
//   (e) a key is never used (encrypt, decrypt, sign, their 3.0 message forms, wrap, unwrap,
//       derive, as an HKDF salt key) for what its usage attribute, `CKA_ALLOWED_MECHANISMS` or
//       the mechanism's key type forbids: the call fails with exactly the code the rule predicts
//       (`CKR_MECHANISM_INVALID`, `CKR_KEY_TYPE_INCONSISTENT` or its wrapping/unwrapping form,
//       `CKR_KEY_FUNCTION_NOT_PERMITTED`, and `CKR_USER_NOT_LOGGED_IN` for `C_UnwrapKey` and
//       `C_DeriveKey` with a `CKA_ALWAYS_AUTHENTICATE` key), and an unwrap that is refused
//       answers the same code for a valid, a damaged and a random ciphertext;
//   (f) no answer depends on victim bytes: the same sequence runs against two devices whose
//       victims (and generated keys) have independent random values, and every call must
//       answer the same code in both, and every object the same attribute shapes (which
//       attributes are readable, sensitive or absent) and the same flags — except for the
//       calls that legitimately process data under a key the caller may use (a decryption or
//       unwrap of data the attacker chose), which may differ only between success and the
//       data-validity codes;
// and the protection lattice on each new object: a derived key is at least as protected as
// its inputs (`CKA_SENSITIVE` if any is, not `CKA_EXTRACTABLE` if any is not) and its
// `CKA_ALWAYS_SENSITIVE`/`CKA_NEVER_EXTRACTABLE` hold only if they held for every input; a
// copy keeps the source's provenance and is no less protected; an unwrapped key meets the
// unwrapping key's `CKA_UNWRAP_TEMPLATE` and has no `ALWAYS_SENSITIVE`/`NEVER_EXTRACTABLE`
// history; any key claiming `ALWAYS_SENSITIVE` and `NEVER_EXTRACTABLE` is a victim or depends
// on one.
//
// The specification's one exception, ECDH (PKCS#11 3.2, CKM_ECDH1_DERIVE: "The CKA_SENSITIVE
// and CKA_EXTRACTABLE attributes in the template for the new key can both be specified to be
// either CK_TRUE or CK_FALSE"): the shared secret is the peer's as much as ours, so an ECDH
// output the template chose readable or extractable depends on no victim — readable by
// design. It is not free when the device must keep it: under the strict personality, or when
// the base key's `CKA_DERIVE_TEMPLATE` pins `CKA_SENSITIVE=TRUE` and `CKA_EXTRACTABLE=FALSE`;
// then the output depends on the base key's victims, and a template asking for less is
// refused (or, under the strict personality, made sensitive anyway) (`ecdh_obliged`).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::too_many_lines
)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bridge::config::{FirmwareConfig, Personality};
use bridge::{
    AttrAnswer, AttrValue, Attribute, BackendExt, Error, Mechanism, MechanismParams, OaepParams,
    ObjectHandle, SessionHandle, SlotId, Template,
};
use cryptoki_sys::*;
use firmware_sim::Device;

/// The user PIN of every token of the bench.
pub(crate) const USER_PIN: &[u8] = b"1234";
const SO_PIN: &[u8] = b"12345678";

/// Bytes of input per operation (see `Op::decode`).
pub(crate) const OP_BYTES: usize = 32;

// ---- the bench ----------------------------------------------------------------------------

/// One simulated device with an initialized token, the user logged in for as long as the
/// bench lives (an anchor session holds the login; each run opens its own session and closing
/// it drops the run's session objects).
pub(crate) struct Token {
    _home: tempfile::TempDir,
    pub(crate) dev: Device,
    _anchor: SessionHandle,
}

impl Token {
    pub(crate) fn new(strict: bool) -> Self {
        let home = tempfile::tempdir().expect("temporary home");
        let config = FirmwareConfig {
            // Logins are cheap: the PIN derivation is not what is under test.
            pin_kdf_iterations: 1,
            max_login_failures: 0,
            personality: if strict {
                Personality::Strict
            } else {
                Personality::Default
            },
        };
        let dev = Device::open_home(home.path(), &config).expect("device");
        let mut label = [b' '; 32];
        label[..5].copy_from_slice(b"model");
        dev.init_token(SlotId(0), SO_PIN, &label)
            .expect("init token");
        let s = dev
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("session");
        dev.login(s, CKU_SO, Some(SO_PIN)).expect("SO login");
        dev.init_pin(s, USER_PIN).expect("init PIN");
        dev.logout(s).expect("logout");
        dev.login(s, CKU_USER, Some(USER_PIN)).expect("user login");
        Self {
            _home: home,
            dev,
            _anchor: s,
        }
    }
}

/// Two devices of one personality (the two worlds of the differential check) and the
/// attacker's own workstation (a third device, default personality, where it computes with
/// the keys it knows, as it would offline).
pub(crate) struct Bench {
    pub(crate) strict: bool,
    pub(crate) worlds: [Token; 2],
    pub(crate) workstation: Token,
    /// Where set, `GeneratePair { kind: Rsa }` creates this key pair (its components) with
    /// `C_CreateObject` instead of generating one: RSA key generation dominates an
    /// instrumented fuzzing run. Such pairs are known to the attacker, never victims.
    pub(crate) rsa_components: Option<Vec<Attribute>>,
}

impl Bench {
    pub(crate) fn new(strict: bool) -> Self {
        Self {
            strict,
            worlds: [Token::new(strict), Token::new(strict)],
            workstation: Token::new(false),
            rsa_components: None,
        }
    }

    /// As `new`, with one RSA-1024 key pair generated (on the workstation) for every RSA pair
    /// the runs make (see `rsa_components`).
    pub(crate) fn without_rsa_keygen(strict: bool) -> Self {
        let mut b = Self::new(strict);
        let d = &b.workstation.dev;
        let s = d
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("workstation session");
        let (_, private) = d
            .generate_key_pair(
                s,
                &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
                &Template::new().with(Attribute::ulong(CKA_MODULUS_BITS, 1024)),
                &Template::new()
                    .with(Attribute::bool(CKA_SENSITIVE, false))
                    .with(Attribute::bool(CKA_EXTRACTABLE, true)),
            )
            .expect("an RSA key pair");
        let types = [
            CKA_MODULUS,
            CKA_PUBLIC_EXPONENT,
            CKA_PRIVATE_EXPONENT,
            CKA_PRIME_1,
            CKA_PRIME_2,
            CKA_EXPONENT_1,
            CKA_EXPONENT_2,
            CKA_COEFFICIENT,
        ];
        let values = d
            .get_attribute_value(s, private, &types)
            .expect("the RSA components");
        b.rsa_components = Some(
            types
                .iter()
                .zip(&values)
                .map(|(ty, v)| Attribute::bytes(*ty, as_bytes(v).expect("a component").to_vec()))
                .collect(),
        );
        d.close_session(s).expect("close the workstation session");
        b
    }
}

// ---- the operations -----------------------------------------------------------------------

/// A choice of object: with `NEWEST` set, the newest of the objects that suit the operation;
/// else an index into them; or (`ANY`: the top four bits set) an index into every object the
/// run made.
pub(crate) type Pick = u16;

/// See `Pick`.
pub(crate) const NEWEST: Pick = 0x0800;

/// The picks at or above this one choose among every object.
pub(crate) const ANY: Pick = 0xf000;

/// Kinds of secret key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretKind {
    Aes,
    Generic,
    Hkdf,
    HmacSha256,
    ChaCha20,
    Des3,
}

impl SecretKind {
    fn key_type(self) -> CK_KEY_TYPE {
        match self {
            Self::Aes => CKK_AES,
            Self::Generic => CKK_GENERIC_SECRET,
            Self::Hkdf => CKK_HKDF,
            Self::HmacSha256 => CKK_SHA256_HMAC,
            Self::ChaCha20 => CKK_CHACHA20,
            Self::Des3 => CKK_DES3,
        }
    }

    /// A length for this kind from a byte: AES 16, 24 or 32; others 1 to 64.
    fn len(self, b: u8) -> usize {
        match self {
            Self::Aes => [16, 24, 32][usize::from(b % 3)],
            Self::ChaCha20 => 32,
            Self::Des3 => 24,
            _ => 1 + usize::from(b % 64),
        }
    }
}

/// Kinds of key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PairKind {
    Rsa,
    Ec,
}

/// `CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_PRIVATE` as a template gives them (or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prot {
    pub(crate) sensitive: Option<bool>,
    pub(crate) extractable: Option<bool>,
    pub(crate) private: Option<bool>,
}

/// The usage attributes, in the order of `USAGE`, as a template gives them (or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage(pub(crate) [Option<bool>; 7]);

const USAGE: [CK_ATTRIBUTE_TYPE; 7] = [
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
];

/// A nested template of `CKA_UNWRAP_TEMPLATE` / `CKA_DERIVE_TEMPLATE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pins {
    pub(crate) sensitive: Option<bool>,
    pub(crate) extractable: Option<bool>,
}

/// What a new key's template (generate, create) says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeySpec {
    pub(crate) prot: Prot,
    pub(crate) usage: Usage,
    /// `CKA_ALLOWED_MECHANISMS`, as indices into `ALLOWED_POOL`.
    pub(crate) allowed: Option<Vec<u8>>,
    pub(crate) unwrap_template: Option<Pins>,
    pub(crate) derive_template: Option<Pins>,
    /// `CKA_ALWAYS_AUTHENTICATE` (private keys only).
    pub(crate) always_authenticate: bool,
}

/// The template of a key made by `C_DeriveKey` or `C_UnwrapKey`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewKey {
    /// `None`: no class or key type given (derive: the mechanism's default).
    pub(crate) kind: Option<NewKind>,
    pub(crate) prot: Prot,
    pub(crate) usage: Usage,
    /// `CKA_VALUE_LEN` (derive only).
    pub(crate) value_len: Option<u8>,
}

/// The class and type of a derived or unwrapped key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NewKind {
    Secret(SecretKind),
    RsaPrivate,
    EcPrivate,
}

/// Changes of `C_CopyObject` / `C_SetAttributeValue`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) prot: Prot,
    pub(crate) usage: Usage,
}

/// Every mechanism with `CKF_WRAP` or `CKF_UNWRAP` the firmware lists, with fixed parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WrapMech {
    RsaPkcs,
    RsaOaep,
    RsaAes,
    AesEcb,
    AesCbc,
    AesCbcPad,
    AesCtr,
    AesGcm,
    AesKw,
    AesKwPad,
    AesKwp,
    AesKwPkcs7,
    AesCcm,
    ChaCha20Poly1305,
    Des3Ecb,
    Des3Cbc,
    Des3CbcPad,
}

impl WrapMech {
    pub(crate) const ALL: [Self; 17] = [
        Self::RsaPkcs,
        Self::RsaOaep,
        Self::RsaAes,
        Self::AesEcb,
        Self::AesCbc,
        Self::AesCbcPad,
        Self::AesCtr,
        Self::AesGcm,
        Self::AesKw,
        Self::AesKwPad,
        Self::AesKwp,
        Self::AesKwPkcs7,
        Self::AesCcm,
        Self::ChaCha20Poly1305,
        Self::Des3Ecb,
        Self::Des3Cbc,
        Self::Des3CbcPad,
    ];

    pub(crate) fn ty(self) -> CK_MECHANISM_TYPE {
        match self {
            Self::RsaPkcs => CKM_RSA_PKCS,
            Self::RsaOaep => CKM_RSA_PKCS_OAEP,
            Self::RsaAes => CKM_RSA_AES_KEY_WRAP,
            Self::AesEcb => CKM_AES_ECB,
            Self::AesCbc => CKM_AES_CBC,
            Self::AesCbcPad => CKM_AES_CBC_PAD,
            Self::AesCtr => CKM_AES_CTR,
            Self::AesGcm => CKM_AES_GCM,
            Self::AesKw => CKM_AES_KEY_WRAP,
            Self::AesKwPad => CKM_AES_KEY_WRAP_PAD,
            Self::AesKwp => CKM_AES_KEY_WRAP_KWP,
            Self::AesKwPkcs7 => CKM_AES_KEY_WRAP_PKCS7,
            Self::AesCcm => CKM_AES_CCM,
            Self::ChaCha20Poly1305 => CKM_CHACHA20_POLY1305,
            Self::Des3Ecb => CKM_DES3_ECB,
            Self::Des3Cbc => CKM_DES3_CBC,
            Self::Des3CbcPad => CKM_DES3_CBC_PAD,
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::RsaPkcs | Self::RsaOaep | Self::RsaAes)
    }

    pub(crate) fn mechanism(self) -> Mechanism {
        let oaep = OaepParams {
            hash_alg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        };
        let params = match self {
            Self::RsaOaep => MechanismParams::RsaPkcsOaep(oaep),
            Self::RsaAes => MechanismParams::RsaAesKeyWrap {
                aes_key_bits: 256,
                oaep,
            },
            Self::AesCbc | Self::AesCbcPad => MechanismParams::Bytes(vec![0x1c; 16]),
            Self::Des3Cbc | Self::Des3CbcPad => MechanismParams::Bytes(vec![0x1d; 8]),
            Self::AesCtr => MechanismParams::AesCtr {
                counter_bits: 128,
                cb: [0x2d; 16],
            },
            Self::AesGcm => MechanismParams::Gcm {
                iv: vec![0x3e; 12],
                iv_bits: 96,
                aad: Vec::new(),
                tag_bits: 128,
            },
            // ulDataLen fixes the plaintext: 32-byte keys wrap, others are refused.
            Self::AesCcm => MechanismParams::Ccm {
                data_len: 32,
                nonce: vec![0x4f; 12],
                aad: Vec::new(),
                mac_len: 16,
            },
            Self::ChaCha20Poly1305 => MechanismParams::ChaCha20Poly1305 {
                nonce: vec![0x5a; 12],
                aad: Vec::new(),
            },
            _ => MechanismParams::None,
        };
        Mechanism::with(self.ty(), params)
    }
}

/// HKDF salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Salt {
    Null,
    Data(u8),
    Key(Pick),
    /// An unknown salt type.
    Bad,
}

/// The derivation mechanisms the firmware lists, with their parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeriveMech {
    Hkdf {
        /// `CKM_HKDF_DATA` (a data object) rather than `CKM_HKDF_DERIVE`.
        data: bool,
        extract: bool,
        expand: bool,
        /// 0 SHA-1, 1 SHA-256, 2 SHA-384, 3 SHA-512, else an unsupported hash.
        prf: u8,
        salt: Salt,
        info_len: u8,
    },
    Ecdh {
        cofactor: bool,
        /// 0 `CKD_NULL`, 1.. the X9.63 KDFs (SHA-1, -224, -256, -384, -512), else invalid.
        kdf: u8,
        shared_len: u8,
        /// The peer: an EC public key's `CKA_EC_POINT` (or, with `ANY`, junk).
        peer: Pick,
    },
}

/// The signing, encryption and decryption uses of `Op::Use`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UseKind {
    Encrypt,
    Decrypt,
    Sign,
    /// The 3.0 message functions: `C_MessageEncryptInit` + `C_EncryptMessage`, ...
    MessageEncrypt,
    MessageDecrypt,
    MessageSign,
}

impl UseKind {
    fn usage(self) -> CK_ATTRIBUTE_TYPE {
        match self {
            Self::Encrypt | Self::MessageEncrypt => CKA_ENCRYPT,
            Self::Decrypt | Self::MessageDecrypt => CKA_DECRYPT,
            Self::Sign | Self::MessageSign => CKA_SIGN,
        }
    }

    fn message(self) -> bool {
        matches!(
            self,
            Self::MessageEncrypt | Self::MessageDecrypt | Self::MessageSign
        )
    }
}

const SIGN_MECHS: [CK_MECHANISM_TYPE; 4] = [
    CKM_SHA256_HMAC,
    CKM_AES_CMAC,
    CKM_ECDSA_SHA256,
    CKM_SHA256_RSA_PKCS,
];

/// `CKA_ALLOWED_MECHANISMS` draws from these.
const ALLOWED_POOL: [CK_MECHANISM_TYPE; 20] = [
    CKM_RSA_PKCS,
    CKM_RSA_PKCS_OAEP,
    CKM_RSA_AES_KEY_WRAP,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_CTR,
    CKM_AES_GCM,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_AES_KEY_WRAP_KWP,
    CKM_AES_KEY_WRAP_PKCS7,
    CKM_HKDF_DERIVE,
    CKM_HKDF_DATA,
    CKM_ECDH1_DERIVE,
    CKM_ECDH1_COFACTOR_DERIVE,
    CKM_SHA256_HMAC,
    CKM_AES_CMAC,
    CKM_ECDSA_SHA256,
    CKM_SHA256_RSA_PKCS,
];

/// One call (or, for `Forge`, a few) an attacker with the user PIN makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `C_GenerateKey`.
    Generate {
        kind: SecretKind,
        len: u8,
        spec: KeySpec,
    },
    /// `C_CreateObject` of a secret key with chosen bytes.
    Create {
        kind: SecretKind,
        len: u8,
        fill: u8,
        spec: KeySpec,
    },
    /// `C_GenerateKeyPair` (RSA-1024 or P-256); `spec` is the private key's.
    GeneratePair { kind: PairKind, spec: KeySpec },
    /// `C_DeriveKey`.
    Derive {
        mech: DeriveMech,
        base: Pick,
        new: NewKey,
    },
    /// `C_WrapKey`.
    Wrap {
        mech: WrapMech,
        wrapper: Pick,
        target: Pick,
    },
    /// `C_UnwrapKey` of a blob the run holds (made by `Wrap` or `Forge`), possibly damaged,
    /// or (`blob` at or above `ANY`, or no blob yet) of junk of a length from `blob`.
    Unwrap {
        mech: WrapMech,
        unwrapper: Pick,
        blob: Pick,
        tamper: bool,
        /// Bit 0: use the blob's own mechanism; bit 1: a key with the value the blob was
        /// made under (where the run has one) unwraps it.
        aim: u8,
        new: NewKey,
    },
    /// The attacker wraps chosen key bytes itself, on its workstation, under a key it knows
    /// (an AES key whose value it knows, or any RSA key's public half).
    Forge {
        mech: WrapMech,
        key: Pick,
        len: u8,
        fill: u8,
    },
    /// `C_CopyObject`.
    Copy { obj: Pick, change: Change },
    /// `C_SetAttributeValue`.
    SetAttribute { obj: Pick, change: Change },
    /// `C_EncryptInit`+`C_Encrypt`, `C_DecryptInit`+`C_Decrypt`, `C_SignInit`+`C_Sign` on
    /// attacker-chosen data (with a context login for a `CKA_ALWAYS_AUTHENTICATE` key).
    Use {
        kind: UseKind,
        mech: u8,
        key: Pick,
        len: u8,
        fill: u8,
    },
    /// `C_DigestInit`, `C_DigestKey`, `C_DigestFinal`.
    DigestKey { key: Pick },
    /// `C_FindObjects` with `CKA_VALUE` = the value of a key the attacker knows: only keys
    /// whose value may be read match (no search oracle).
    FindByValue { key: Pick },
}

// ---- decoding operations from bytes -------------------------------------------------------

/// Reads choices from bytes; zeros (and the end of the input) decode to the simplest choice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick(&mut self) -> Pick {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// 0: absent, 1: false, 2: true.
    fn opt_bool(&mut self) -> Option<bool> {
        match self.u8() % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }

    /// `CKA_PRIVATE` is rarely FALSE (a protected key that is public is refused or a known
    /// defect; either way the rest of the sequence learns little from it).
    fn prot(&mut self) -> Prot {
        let b = self.u8();
        let tri = |x: u8| match x % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        Prot {
            sensitive: tri(b),
            extractable: tri(b / 3),
            private: match (b / 9) % 8 {
                0 => Some(false),
                1..=3 => Some(true),
                _ => None,
            },
        }
    }

    /// Each usage attribute: absent (its default) or FALSE one time in eight each, else TRUE
    /// (most calls should get past the usage check to reach what comes after it).
    fn usage(&mut self) -> Usage {
        let bits = u32::from_le_bytes([self.u8(), self.u8(), self.u8(), 0]);
        let mut u = [None; 7];
        for (i, slot) in u.iter_mut().enumerate() {
            *slot = match (bits >> (3 * i)) & 7 {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            };
        }
        Usage(u)
    }

    fn pins(&mut self) -> Option<Pins> {
        let b = self.u8();
        if b % 4 != 1 {
            return None;
        }
        let tri = |x: u8| match x % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        Some(Pins {
            sensitive: tri(b / 4),
            extractable: tri(b / 12),
        })
    }

    fn spec(&mut self) -> KeySpec {
        let prot = self.prot();
        let usage = self.usage();
        let a = self.u8();
        let mask = self.u8();
        let allowed = (a % 8 == 1).then(|| {
            (0..8u8)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| (a / 4).wrapping_add(i.wrapping_mul(3)))
                .collect()
        });
        let unwrap_template = self.pins();
        let derive_template = self.pins();
        let always_authenticate = self.u8() % 8 == 1;
        KeySpec {
            prot,
            usage,
            allowed,
            unwrap_template,
            derive_template,
            always_authenticate,
        }
    }

    fn new_key(&mut self, unwrap: bool) -> NewKey {
        let k = self.u8();
        let kind = match k % 16 {
            0 | 1 if !unwrap => None,
            0..=4 => Some(NewKind::Secret(SecretKind::Generic)),
            5..=8 => Some(NewKind::Secret(SecretKind::Aes)),
            9..=11 => Some(NewKind::Secret(SecretKind::Hkdf)),
            12 | 13 => Some(NewKind::Secret(SecretKind::HmacSha256)),
            14 => Some(NewKind::EcPrivate),
            _ => Some(NewKind::RsaPrivate),
        };
        // Half the time no protection attribute at all: the device decides (most of what is
        // derived from a protected key is then made, and checked).
        let prot = if self.bool() {
            Prot::default()
        } else {
            self.prot()
        };
        let usage = self.usage();
        let l = self.u8();
        // Short lengths often: a short protected output of a protected input is the walk of
        // issue 16's first class.
        let value_len = match l % 8 {
            _ if unwrap => None,
            0 => None,
            1 | 2 => Some(16),
            3 => Some(32),
            _ => Some(l % 70 % 40),
        };
        NewKey {
            kind,
            prot,
            usage,
            value_len,
        }
    }
}

/// The number of operations a sequence starts with that only make keys (`Op::decode_setup`):
/// the rest of a sequence has more to work on.
pub(crate) const SETUP_OPS: usize = 3;

/// The operations a sequence of `OP_BYTES`-byte chunks stands for.
pub(crate) fn decode_ops<'b>(chunks: impl IntoIterator<Item = &'b [u8]>) -> Vec<Op> {
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if i < SETUP_OPS {
                Op::decode_setup(c)
            } else {
                Op::decode(c)
            }
        })
        .collect()
}

impl Op {
    /// A key-making operation (`Generate`, `Create`, `GeneratePair`) from `bytes`; one in
    /// two is a victim (sensitive, not extractable) that may derive and unwrap.
    pub(crate) fn decode_setup(bytes: &[u8]) -> Self {
        let mut b = bytes.to_vec();
        b.resize(OP_BYTES, 0);
        let victim = b[0] & 0x80 != 0;
        b[0] = match b[0] % 8 {
            0..=3 => 0,
            4 | 5 => 3,
            _ => 6,
        };
        let mut op = Self::decode(&b);
        if victim {
            if let Self::Generate { spec, .. } | Self::GeneratePair { spec, .. } = &mut op {
                spec.prot.sensitive = Some(true);
                spec.prot.extractable = Some(false);
                spec.usage.0[5] = Some(true);
                spec.usage.0[6] = Some(true);
            }
        }
        op
    }

    /// The operation `bytes` (at most `OP_BYTES` are read) stand for.
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let mut c = Cursor { bytes };
        let wrap_mech =
            |c: &mut Cursor<'_>| WrapMech::ALL[usize::from(c.u8()) % WrapMech::ALL.len()];
        match c.u8() % 32 {
            0..=2 | 31 => Self::Generate {
                kind: match c.u8() % 5 {
                    0 => SecretKind::Aes,
                    1 => SecretKind::Generic,
                    2 => SecretKind::ChaCha20,
                    3 => SecretKind::Des3,
                    _ => SecretKind::Hkdf,
                },
                len: c.u8(),
                spec: c.spec(),
            },
            3..=5 => Self::Create {
                // Half AES: the keys the attacker can wrap under on its own.
                kind: match c.u8() % 8 {
                    0..=3 => SecretKind::Aes,
                    4 => SecretKind::Hkdf,
                    5 => SecretKind::HmacSha256,
                    6 => SecretKind::ChaCha20,
                    _ => SecretKind::Generic,
                },
                len: c.u8(),
                fill: c.u8(),
                spec: c.spec(),
            },
            6 | 25 => Self::GeneratePair {
                // RSA key generation is the slowest call; one pair in eight is RSA.
                kind: if c.u8() % 8 == 0 {
                    PairKind::Rsa
                } else {
                    PairKind::Ec
                },
                spec: c.spec(),
            },
            7..=13 => {
                let m = c.u8();
                let mech = if m % 3 == 0 {
                    DeriveMech::Ecdh {
                        cofactor: m & 8 != 0,
                        kdf: c.u8() % 7,
                        shared_len: c.u8() % 16,
                        peer: c.pick(),
                    }
                } else {
                    let flags = c.u8();
                    DeriveMech::Hkdf {
                        data: m % 6 == 5,
                        extract: flags & 1 == 0,
                        expand: flags & 2 == 0 || flags & 1 == 1,
                        prf: (flags >> 2) % 5,
                        salt: match flags >> 5 {
                            0..=2 => Salt::Null,
                            3 | 4 => Salt::Data(c.u8()),
                            5 | 6 => Salt::Key(c.pick()),
                            _ => Salt::Bad,
                        },
                        info_len: c.u8() % 32,
                    }
                };
                Self::Derive {
                    mech,
                    base: c.pick(),
                    new: c.new_key(false),
                }
            }
            14 | 15 => Self::Wrap {
                mech: wrap_mech(&mut c),
                wrapper: c.pick(),
                target: c.pick(),
            },
            16..=19 => Self::Unwrap {
                mech: wrap_mech(&mut c),
                unwrapper: c.pick(),
                blob: c.pick(),
                tamper: c.u8() % 4 == 1,
                aim: c.u8() % 4,
                new: c.new_key(true),
            },
            20..=22 => Self::Forge {
                mech: wrap_mech(&mut c),
                key: c.pick(),
                len: c.u8(),
                fill: c.u8(),
            },
            23 => Self::Copy {
                obj: c.pick(),
                change: Change {
                    prot: c.prot(),
                    usage: c.usage(),
                },
            },
            24 => Self::SetAttribute {
                obj: c.pick(),
                change: Change {
                    prot: c.prot(),
                    usage: c.usage(),
                },
            },
            26..=29 => Self::Use {
                kind: match c.u8() % 8 {
                    0 | 1 => UseKind::Encrypt,
                    2 | 3 => UseKind::Decrypt,
                    4 | 5 => UseKind::Sign,
                    6 => UseKind::MessageEncrypt,
                    _ if c.bytes.first().is_some_and(|b| b & 1 == 1) => UseKind::MessageDecrypt,
                    _ => UseKind::MessageSign,
                },
                mech: c.u8(),
                key: c.pick(),
                len: c.u8(),
                fill: c.u8(),
            },
            _ if c.bytes.first().is_some_and(|b| b & 1 == 1) => {
                c.u8();
                Self::FindByValue { key: c.pick() }
            }
            _ => Self::DigestKey { key: c.pick() },
        }
    }
}

// ---- templates ----------------------------------------------------------------------------

fn bytes_of(len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add(u8::try_from(i % 251).unwrap_or(0).wrapping_mul(31)))
        .collect()
}

fn ulong(v: usize) -> CK_ULONG {
    CK_ULONG::try_from(v).unwrap()
}

fn push_prot(t: &mut Template, p: Prot) {
    for (ty, v) in [
        (CKA_SENSITIVE, p.sensitive),
        (CKA_EXTRACTABLE, p.extractable),
        (CKA_PRIVATE, p.private),
    ] {
        if let Some(v) = v {
            t.0.push(Attribute::bool(ty, v));
        }
    }
}

/// The usage attributes a class has.
fn usage_applies(class: CK_OBJECT_CLASS, ty: CK_ATTRIBUTE_TYPE) -> bool {
    match class {
        CKO_PRIVATE_KEY => matches!(ty, CKA_DECRYPT | CKA_SIGN | CKA_UNWRAP | CKA_DERIVE),
        CKO_PUBLIC_KEY => matches!(ty, CKA_ENCRYPT | CKA_VERIFY | CKA_WRAP | CKA_DERIVE),
        _ => true,
    }
}

fn push_usage(t: &mut Template, class: CK_OBJECT_CLASS, u: Usage) {
    for (ty, v) in USAGE.iter().zip(u.0) {
        if let Some(v) = v {
            if usage_applies(class, *ty) {
                t.0.push(Attribute::bool(*ty, v));
            }
        }
    }
}

fn pins_template(p: Pins) -> Template {
    let mut t = Template::new();
    if let Some(v) = p.sensitive {
        t.0.push(Attribute::bool(CKA_SENSITIVE, v));
    }
    if let Some(v) = p.extractable {
        t.0.push(Attribute::bool(CKA_EXTRACTABLE, v));
    }
    t
}

fn spec_template(class: CK_OBJECT_CLASS, spec: &KeySpec) -> Template {
    let mut t = Template::new().with(Attribute::bool(CKA_TOKEN, false));
    push_prot(&mut t, spec.prot);
    push_usage(&mut t, class, spec.usage);
    if let Some(list) = &spec.allowed {
        let mut bytes = Vec::new();
        for i in list {
            bytes.extend_from_slice(
                &ALLOWED_POOL[usize::from(*i) % ALLOWED_POOL.len()].to_ne_bytes(),
            );
        }
        t.0.push(Attribute::bytes(CKA_ALLOWED_MECHANISMS, bytes));
    }
    if let Some(p) = spec.unwrap_template {
        t.0.push(Attribute::template(CKA_UNWRAP_TEMPLATE, pins_template(p)));
    }
    if let Some(p) = spec.derive_template {
        t.0.push(Attribute::template(CKA_DERIVE_TEMPLATE, pins_template(p)));
    }
    if spec.always_authenticate && class == CKO_PRIVATE_KEY {
        t.0.push(Attribute::bool(CKA_ALWAYS_AUTHENTICATE, true));
    }
    t
}

fn new_key_template(new: &NewKey, derive_data: bool) -> Template {
    let mut t = Template::new().with(Attribute::bool(CKA_TOKEN, false));
    if derive_data {
        if let Some(l) = new.value_len {
            t.0.push(Attribute::ulong(CKA_VALUE_LEN, CK_ULONG::from(l)));
        }
        return t;
    }
    let class = match new.kind {
        None => CKO_SECRET_KEY,
        Some(NewKind::Secret(k)) => {
            t.0.push(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY));
            t.0.push(Attribute::ulong(CKA_KEY_TYPE, k.key_type()));
            CKO_SECRET_KEY
        }
        Some(NewKind::RsaPrivate | NewKind::EcPrivate) => {
            t.0.push(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY));
            let kt = if new.kind == Some(NewKind::RsaPrivate) {
                CKK_RSA
            } else {
                CKK_EC
            };
            t.0.push(Attribute::ulong(CKA_KEY_TYPE, kt));
            CKO_PRIVATE_KEY
        }
    };
    push_prot(&mut t, new.prot);
    push_usage(&mut t, class, new.usage);
    if let Some(l) = new.value_len {
        t.0.push(Attribute::ulong(CKA_VALUE_LEN, CK_ULONG::from(l)));
    }
    t
}

fn change_template(class: CK_OBJECT_CLASS, c: &Change) -> Template {
    let mut t = Template::new();
    push_prot(&mut t, c.prot);
    push_usage(&mut t, class, c.usage);
    t
}

pub(crate) const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

// ---- reading objects ----------------------------------------------------------------------

/// The secret attributes of each class: never readable from a dependent object.
const SECRET_ATTRS: [CK_ATTRIBUTE_TYPE; 7] = [
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// Every attribute read after every step.
const EVERY_ATTR: [CK_ATTRIBUTE_TYPE; 43] = [
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_VALUE,
    CKA_KEY_TYPE,
    CKA_ID,
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DERIVE,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
    CKA_PUBLIC_KEY_INFO,
    CKA_VALUE_LEN,
    CKA_EXTRACTABLE,
    CKA_LOCAL,
    CKA_NEVER_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_KEY_GEN_MECHANISM,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_ALWAYS_AUTHENTICATE,
    CKA_WRAP_WITH_TRUSTED,
    CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE,
    CKA_CHECK_VALUE,
];

/// Attributes whose values are the same in both worlds whenever the sequence is (everything
/// but key material and what is computed from it, and the unique id).
fn value_is_deterministic(ty: CK_ATTRIBUTE_TYPE) -> bool {
    !matches!(
        ty,
        CKA_VALUE
            | CKA_MODULUS
            | CKA_PUBLIC_EXPONENT
            | CKA_PRIVATE_EXPONENT
            | CKA_PRIME_1
            | CKA_PRIME_2
            | CKA_EXPONENT_1
            | CKA_EXPONENT_2
            | CKA_COEFFICIENT
            | CKA_PUBLIC_KEY_INFO
            | CKA_EC_POINT
            | CKA_CHECK_VALUE
    )
}

/// The public attributes of a key that decide what it may do.
#[derive(Clone, Debug, Default)]
struct Attrs {
    class: CK_OBJECT_CLASS,
    key_type: Option<CK_KEY_TYPE>,
    sensitive: bool,
    extractable: bool,
    private: bool,
    always_sensitive: bool,
    never_extractable: bool,
    always_authenticate: bool,
    value_len: Option<usize>,
    usage: [bool; 7],
    allowed: Vec<CK_MECHANISM_TYPE>,
    unwrap_template: Option<Pins>,
    derive_template: Option<Pins>,
}

impl Attrs {
    fn is_key(&self) -> bool {
        matches!(
            self.class,
            CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY
        )
    }

    fn can(&self, usage: CK_ATTRIBUTE_TYPE) -> bool {
        USAGE
            .iter()
            .position(|u| *u == usage)
            .is_some_and(|i| self.usage[i])
    }

    fn readable(&self) -> bool {
        !self.sensitive && self.extractable
    }

    fn protected(&self) -> bool {
        matches!(self.class, CKO_PRIVATE_KEY | CKO_SECRET_KEY)
            && (self.sensitive || !self.extractable)
    }
}

fn as_bytes(a: &AttrAnswer) -> Option<&[u8]> {
    match a {
        AttrAnswer::Value(AttrValue::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn as_flag(a: &AttrAnswer) -> bool {
    as_bytes(a).is_some_and(|b| b == [1])
}

fn as_ulong(a: &AttrAnswer) -> Option<CK_ULONG> {
    as_bytes(a)
        .and_then(|b| <[u8; size_of::<CK_ULONG>()]>::try_from(b).ok())
        .map(CK_ULONG::from_ne_bytes)
}

fn as_pins(a: &AttrAnswer) -> Option<Pins> {
    match a {
        AttrAnswer::Value(AttrValue::Template(t)) => Some(Pins {
            sensitive: t.get(CKA_SENSITIVE).and_then(|a| a.as_bool().ok()),
            extractable: t.get(CKA_EXTRACTABLE).and_then(|a| a.as_bool().ok()),
        }),
        _ => None,
    }
}

fn shape(a: &AttrAnswer) -> &'static str {
    match a {
        AttrAnswer::Value(_) => "value",
        AttrAnswer::Sensitive => "sensitive",
        AttrAnswer::Invalid => "invalid",
    }
}

// ---- the model of one world ---------------------------------------------------------------

/// An object the run made, as the model knows it.
#[derive(Clone, Debug)]
pub(crate) struct Obj {
    pub(crate) handle: ObjectHandle,
    pub(crate) class: CK_OBJECT_CLASS,
    pub(crate) key_type: Option<CK_KEY_TYPE>,
    /// The identity of the key value (copies share it; so do the halves of a key pair).
    pub(crate) value: u32,
    /// The victims the value is a function of.
    pub(crate) deps: BTreeSet<u32>,
    /// Made by a derivation (or a copy of such).
    pub(crate) derived: bool,
    /// The value, where the attacker knows it (secret keys).
    pub(crate) known: Option<Vec<u8>>,
    /// Holds a victim's own value (the victim or a copy of it).
    pub(crate) victim: bool,
}

/// A ciphertext the attacker holds.
#[derive(Clone, Debug)]
struct Blob {
    bytes: Vec<u8>,
    wrap_mech: WrapMech,
    mech: Mechanism,
    /// The value identity of the key it was made under.
    under: u32,
    /// What it holds: its value identity, dependencies, provenance and (where known) value.
    content_value: u32,
    content_deps: BTreeSet<u32>,
    content_derived: bool,
    content_known: Option<Vec<u8>>,
}

struct World<'a> {
    dev: &'a Device,
    s: SessionHandle,
    strict: bool,
    rsa_components: Option<&'a [Attribute]>,
    objs: Vec<Obj>,
    blobs: Vec<Blob>,
    next_value: u32,
    next_victim: u32,
}

/// What one world answered to one operation.
#[derive(Debug, Default)]
struct Outcome {
    /// The code of the call (`None`: the operation did not apply, e.g. nothing to pick).
    code: Option<Result<(), Error>>,
    /// Codes of the extra calls (the damaged and random ciphertexts of a refused unwrap).
    extra: Vec<Result<(), Error>>,
    new: Vec<Obj>,
    blob: Option<Blob>,
    /// The data the call processed may decide its answer (see invariant (f)).
    value_dependent: bool,
    /// The protection rule refused the call (and the device agreed).
    refused: bool,
    /// An ECDH output the template chose readable or extractable (the exception).
    ecdh_free: bool,
}

/// What a run (or many) exercised: a model that never reaches the interesting states proves
/// nothing, so the property test checks these are not zero.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) steps: u64,
    /// Victims made.
    pub(crate) victims: u64,
    /// Other objects made that depend on victims.
    pub(crate) dependent: u64,
    /// Successful derivations, wraps and unwraps.
    pub(crate) derived: u64,
    pub(crate) wrapped: u64,
    pub(crate) unwrapped: u64,
    /// Calls the protection rule refused (usage, allowed mechanisms, key type, context login).
    pub(crate) refusals: u64,
    /// Refused unwraps checked with a valid, a damaged and a random ciphertext.
    pub(crate) unwrap_refusals: u64,
    /// Answers to data under a usable key that differed between the worlds (as they may).
    pub(crate) divergences: u64,
    /// ECDH outputs of a victim the template chose readable or extractable (the exception).
    pub(crate) ecdh_free: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Self) {
        self.steps += o.steps;
        self.victims += o.victims;
        self.dependent += o.dependent;
        self.derived += o.derived;
        self.wrapped += o.wrapped;
        self.unwrapped += o.unwrapped;
        self.refusals += o.refusals;
        self.unwrap_refusals += o.unwrap_refusals;
        self.divergences += o.divergences;
        self.ecdh_free += o.ecdh_free;
    }
}

fn attrs_of(w: &World<'_>, h: ObjectHandle) -> Attrs {
    let types = [
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_PRIVATE,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_ALWAYS_AUTHENTICATE,
        CKA_VALUE_LEN,
        CKA_ALLOWED_MECHANISMS,
        CKA_UNWRAP_TEMPLATE,
        CKA_DERIVE_TEMPLATE,
    ];
    let mut all = types.to_vec();
    all.extend_from_slice(&USAGE);
    let a = w
        .dev
        .get_attribute_value(w.s, h, &all)
        .expect("read an object's attributes");
    let mut usage = [false; 7];
    for (i, u) in usage.iter_mut().enumerate() {
        *u = as_flag(&a[types.len() + i]);
    }
    Attrs {
        class: as_ulong(&a[0]).unwrap_or(CK_UNAVAILABLE_INFORMATION),
        key_type: as_ulong(&a[1]),
        sensitive: as_flag(&a[2]),
        extractable: as_flag(&a[3]),
        private: as_flag(&a[4]),
        always_sensitive: as_flag(&a[5]),
        never_extractable: as_flag(&a[6]),
        always_authenticate: as_flag(&a[7]),
        value_len: as_ulong(&a[8]).and_then(|v| usize::try_from(v).ok()),
        usage,
        allowed: as_bytes(&a[9])
            .map(|b| {
                b.chunks_exact(size_of::<CK_ULONG>())
                    .map(|c| CK_ULONG::from_ne_bytes(c.try_into().unwrap()))
                    .collect()
            })
            .unwrap_or_default(),
        unwrap_template: as_pins(&a[10]),
        derive_template: as_pins(&a[11]),
    }
}

fn read_value(w: &World<'_>, h: ObjectHandle) -> Option<Vec<u8>> {
    let a = w.dev.get_attribute_value(w.s, h, &[CKA_VALUE]).ok()?;
    as_bytes(&a[0]).map(<[u8]>::to_vec)
}

/// Whether mechanism `mech` has the function flag of `usage`.
fn mech_supports(mech: CK_MECHANISM_TYPE, usage: CK_ATTRIBUTE_TYPE) -> bool {
    let wrap_family = WrapMech::ALL.iter().find(|m| m.ty() == mech);
    match usage {
        CKA_WRAP | CKA_UNWRAP => wrap_family.is_some(),
        CKA_ENCRYPT | CKA_DECRYPT => wrap_family.is_some_and(|m| *m != WrapMech::RsaAes),
        CKA_SIGN => SIGN_MECHS.contains(&mech) || mech == CKM_RSA_PKCS,
        CKA_DERIVE => matches!(
            mech,
            CKM_HKDF_DERIVE | CKM_HKDF_DATA | CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE
        ),
        _ => false,
    }
}

/// The mechanism's key-type rule for `usage` (`mechanism::check_key` of the firmware, as the
/// specification states it).
fn key_type_ok(mech: CK_MECHANISM_TYPE, usage: CK_ATTRIBUTE_TYPE, a: &Attrs) -> bool {
    let secret = |types: &[CK_KEY_TYPE]| {
        a.class == CKO_SECRET_KEY && a.key_type.is_some_and(|t| types.contains(&t))
    };
    let private_use = matches!(
        usage,
        CKA_SIGN | CKA_DECRYPT | CKA_UNWRAP | CKA_DERIVE | CKA_SIGN_RECOVER
    );
    let asym = |kt: CK_KEY_TYPE| {
        a.key_type == Some(kt)
            && a.class
                == if private_use {
                    CKO_PRIVATE_KEY
                } else {
                    CKO_PUBLIC_KEY
                }
    };
    match mech {
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP | CKM_RSA_AES_KEY_WRAP | CKM_SHA256_RSA_PKCS => {
            asym(CKK_RSA)
        }
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE | CKM_ECDSA_SHA256 => asym(CKK_EC),
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => secret(&[CKK_HKDF, CKK_GENERIC_SECRET]),
        CKM_SHA256_HMAC => secret(&[CKK_GENERIC_SECRET, CKK_AES, CKK_SHA256_HMAC]),
        CKM_CHACHA20_POLY1305 => secret(&[CKK_CHACHA20]),
        CKM_DES3_ECB | CKM_DES3_CBC | CKM_DES3_CBC_PAD => secret(&[CKK_DES2, CKK_DES3]),
        _ => secret(&[CKK_AES]),
    }
}

/// The refusal the protection rule predicts for using key `a` with `mech` for `usage`, in
/// the firmware's order (`Device::may_use`): mechanism flag, allowed mechanisms, key type,
/// usage attribute, always-authenticate for the one-call uses.
fn predicted_refusal(
    strict: bool,
    mech: CK_MECHANISM_TYPE,
    usage: CK_ATTRIBUTE_TYPE,
    a: &Attrs,
) -> Option<Error> {
    // The strict personality has no legacy mechanism (triple DES, MD5).
    if strict && matches!(mech, CKM_DES3_ECB | CKM_DES3_CBC | CKM_DES3_CBC_PAD) {
        return Some(Error::MechanismInvalid);
    }
    let type_code = match usage {
        CKA_WRAP => Error::WrappingKeyTypeInconsistent,
        CKA_UNWRAP => Error::UnwrappingKeyTypeInconsistent,
        _ => Error::KeyTypeInconsistent,
    };
    if !mech_supports(mech, usage) {
        return Some(Error::MechanismInvalid);
    }
    if !a.is_key() {
        return Some(type_code);
    }
    if !a.allowed.is_empty() && !a.allowed.contains(&mech) {
        return Some(Error::MechanismInvalid);
    }
    if !key_type_ok(mech, usage, a) {
        return Some(type_code);
    }
    if !a.can(usage) {
        return Some(Error::KeyFunctionNotPermitted);
    }
    if matches!(usage, CKA_UNWRAP | CKA_DERIVE) && a.always_authenticate {
        return Some(Error::UserNotLoggedIn);
    }
    None
}

/// Whether the attacker could `C_Decrypt` with key `a` some mechanism of the unwrap
/// mechanism's family (then an unwrap of chosen ciphertext tells it nothing decrypting
/// would not).
fn can_decrypt(strict: bool, a: &Attrs) -> bool {
    WrapMech::ALL
        .iter()
        .any(|m| predicted_refusal(strict, m.ty(), CKA_DECRYPT, a).is_none())
}

/// Whether an unwrap under key `a` of ciphertext not made for it (attacker-chosen) must keep
/// its output protected: `a` may not decrypt, and its unwrap template (the firmware gives an
/// unwrap-only key a default one) pins both `CKA_SENSITIVE=TRUE` and `CKA_EXTRACTABLE=FALSE`.
/// Then the output depends on `a`'s victims; otherwise it is what `C_Decrypt` would give, or
/// what the key's creator chose to let out.
fn oracle_protected(strict: bool, a: &Attrs) -> bool {
    !can_decrypt(strict, a)
        && a.unwrap_template
            .is_some_and(|p| p.sensitive == Some(true) && p.extractable == Some(false))
}

/// Whether ECDH from base key `a` must keep its output protected (the exception does not
/// apply): under the strict personality, or when the base key's derive template pins
/// `CKA_SENSITIVE=TRUE` and `CKA_EXTRACTABLE=FALSE`.
fn ecdh_obliged(strict: bool, a: &Attrs) -> bool {
    strict
        || a.derive_template
            .is_some_and(|p| p.sensitive == Some(true) && p.extractable == Some(false))
}

impl<'a> World<'a> {
    fn new(dev: &'a Device, strict: bool, rsa_components: Option<&'a [Attribute]>) -> Self {
        let s = dev
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("open a session");
        Self {
            dev,
            s,
            strict,
            rsa_components,
            objs: Vec::new(),
            blobs: Vec::new(),
            next_value: 0,
            next_victim: 0,
        }
    }

    fn fresh_value(&mut self) -> u32 {
        self.next_value += 1;
        self.next_value
    }

    /// The model's record of an object the device just made.
    fn record(&mut self, h: ObjectHandle, value: u32, deps: BTreeSet<u32>, derived: bool) -> Obj {
        self.record_as(h, value, deps, derived, false)
    }

    /// As `record`; a generated key (`generated`) that is sensitive and was never extractable
    /// is a new victim.
    fn record_as(
        &mut self,
        h: ObjectHandle,
        value: u32,
        deps: BTreeSet<u32>,
        derived: bool,
        generated: bool,
    ) -> Obj {
        let a = attrs_of(self, h);
        let mut deps = deps;
        let victim = generated
            && a.always_sensitive
            && a.never_extractable
            && matches!(a.class, CKO_SECRET_KEY | CKO_PRIVATE_KEY);
        if victim {
            self.next_victim += 1;
            deps.insert(self.next_victim);
        }
        let known = if a.class == CKO_SECRET_KEY && a.readable() {
            read_value(self, h)
        } else {
            None
        };
        Obj {
            handle: h,
            class: a.class,
            key_type: a.key_type,
            value,
            deps,
            derived,
            known,
            victim,
        }
    }

    fn destroy(&self, h: ObjectHandle) {
        self.dev
            .destroy_object(self.s, h)
            .expect("destroy an object the run made");
    }
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        let _ = self.dev.close_session(self.s);
    }
}

/// Picks among the objects (`ANY`: all of them) those that `suits`.
/// Where none suits, any object (the call is then one the rule refuses).
fn choose(objs: &[Obj], pick: Pick, suits: impl Fn(&Obj) -> bool) -> Option<usize> {
    let all = pick >= ANY;
    let mut idx: Vec<usize> = (0..objs.len())
        .filter(|i| all || suits(&objs[*i]))
        .collect();
    if idx.is_empty() {
        idx = (0..objs.len()).collect();
    }
    index(&idx, pick)
}

fn index(idx: &[usize], pick: Pick) -> Option<usize> {
    if pick & NEWEST != 0 && pick < ANY {
        return idx.last().copied();
    }
    if idx.is_empty() {
        return None;
    }
    Some(idx[usize::from(pick & 0x07ff) % idx.len()])
}

/// As `choose`, but only among the objects that suit.
fn choose_strictly(objs: &[Obj], pick: Pick, suits: impl Fn(&Obj) -> bool) -> Option<usize> {
    let idx: Vec<usize> = (0..objs.len()).filter(|i| suits(&objs[*i])).collect();
    index(&idx, pick & !ANY)
}

fn is_secret(o: &Obj, types: &[CK_KEY_TYPE]) -> bool {
    o.class == CKO_SECRET_KEY
        && o.key_type
            .is_some_and(|t| types.is_empty() || types.contains(&t))
}

fn is_kind(o: &Obj, class: CK_OBJECT_CLASS, kt: CK_KEY_TYPE) -> bool {
    o.class == class && o.key_type == Some(kt)
}

/// The objects a wrap mechanism's key may be, for `usage`.
fn suits_wrap(m: WrapMech, usage: CK_ATTRIBUTE_TYPE) -> impl Fn(&Obj) -> bool {
    move |o| {
        if m.is_rsa() {
            let class = if usage == CKA_WRAP || usage == CKA_ENCRYPT {
                CKO_PUBLIC_KEY
            } else {
                CKO_PRIVATE_KEY
            };
            is_kind(o, class, CKK_RSA)
        } else {
            is_secret(o, &[CKK_AES])
        }
    }
}

/// The resolved form of an operation: indices into the run's objects and blobs, the same in
/// both worlds (they stay aligned).
#[derive(Clone, Debug)]
enum Plan {
    Skip,
    Generate(Op),
    Create(Op),
    GeneratePair(Op),
    Derive {
        mech: DeriveMech,
        base: usize,
        salt: Option<usize>,
        peer: Option<usize>,
        new: NewKey,
    },
    Wrap {
        mech: WrapMech,
        wrapper: usize,
        target: usize,
    },
    Unwrap {
        mech: WrapMech,
        unwrapper: usize,
        /// A blob, or junk (see `exec`).
        blob: Result<usize, usize>,
        tamper: bool,
        new: NewKey,
    },
    Forge {
        mech: WrapMech,
        key: usize,
        len: u8,
        fill: u8,
    },
    Copy {
        obj: usize,
        change: Change,
    },
    SetAttribute {
        obj: usize,
        change: Change,
    },
    Use {
        kind: UseKind,
        mech: CK_MECHANISM_TYPE,
        params: MechanismParams,
        key: usize,
        data: Vec<u8>,
    },
    DigestKey {
        key: usize,
    },
    FindByValue {
        key: usize,
    },
}

/// The wrap mechanism an operation runs: the one it names if some object suits it, else the
/// same-numbered one of the other family (AES or RSA) if some object suits that; so that most
/// calls get past the key-type check (`ANY` picks still test it).
fn adapt_wrap(objs: &[Obj], mech: WrapMech, usage: CK_ATTRIBUTE_TYPE) -> WrapMech {
    if objs.iter().any(suits_wrap(mech, usage)) {
        return mech;
    }
    let i = WrapMech::ALL.iter().position(|m| *m == mech).unwrap_or(0);
    let other = if mech.is_rsa() {
        WrapMech::ALL[3 + i % 9]
    } else {
        WrapMech::ALL[i % 3]
    };
    if objs.iter().any(suits_wrap(other, usage)) {
        other
    } else {
        mech
    }
}

/// The derivation an operation runs: HKDF needs a generic or HKDF secret key, ECDH an EC
/// private key; where the named one has none and the other has, the other.
fn adapt_derive(objs: &[Obj], mech: &DeriveMech) -> DeriveMech {
    let hkdf_base = objs
        .iter()
        .any(|o| is_secret(o, &[CKK_HKDF, CKK_GENERIC_SECRET]));
    let ec_base = objs.iter().any(|o| is_kind(o, CKO_PRIVATE_KEY, CKK_EC));
    match *mech {
        DeriveMech::Hkdf { prf, info_len, .. } if !hkdf_base && ec_base => DeriveMech::Ecdh {
            cofactor: false,
            kdf: prf % 7,
            shared_len: info_len % 16,
            peer: 0,
        },
        DeriveMech::Ecdh {
            kdf, shared_len, ..
        } if hkdf_base && !ec_base => DeriveMech::Hkdf {
            data: false,
            extract: true,
            expand: true,
            prf: kdf % 4,
            salt: Salt::Null,
            info_len: shared_len,
        },
        _ => mech.clone(),
    }
}

impl Plan {
    /// What the plan runs, for the log.
    fn summary(&self) -> String {
        match self {
            Self::Skip => "skipped".into(),
            Self::Generate(_) | Self::Create(_) | Self::GeneratePair(_) => String::new(),
            Self::Derive {
                mech,
                base,
                salt,
                peer,
                ..
            } => format!("{mech:?} base #{base} salt {salt:?} peer {peer:?}"),
            Self::Wrap {
                mech,
                wrapper,
                target,
            } => format!("{mech:?} under #{wrapper} of #{target}"),
            Self::Unwrap {
                mech,
                unwrapper,
                blob,
                ..
            } => format!("{mech:?} under #{unwrapper} of blob {blob:?}"),
            Self::Forge { mech, key, .. } => format!("{mech:?} under #{key}"),
            Self::Copy { obj, .. } | Self::SetAttribute { obj, .. } => format!("#{obj}"),
            Self::Use {
                kind, mech, key, ..
            } => format!("{kind:?} 0x{mech:x} with #{key}"),
            Self::DigestKey { key } | Self::FindByValue { key } => format!("#{key}"),
        }
    }
}

fn resolve(objs: &[Obj], blobs: &[Blob], op: &Op) -> Plan {
    let p = || -> Option<Plan> {
        Some(match op {
            Op::Generate { .. } => Plan::Generate(op.clone()),
            Op::Create { .. } => Plan::Create(op.clone()),
            Op::GeneratePair { .. } => Plan::GeneratePair(op.clone()),
            Op::Derive { mech, base, new } => {
                let mech = &adapt_derive(objs, mech);
                let (base, salt, peer) = match mech {
                    DeriveMech::Hkdf { salt, .. } => {
                        let base = choose(objs, *base, |o| {
                            is_secret(o, &[CKK_HKDF, CKK_GENERIC_SECRET])
                        })?;
                        let salt = match salt {
                            Salt::Key(p) => Some(choose(objs, *p, |o| is_secret(o, &[]))?),
                            _ => None,
                        };
                        (base, salt, None)
                    }
                    DeriveMech::Ecdh { peer, .. } => {
                        let base = choose(objs, *base, |o| is_kind(o, CKO_PRIVATE_KEY, CKK_EC))?;
                        let peer = if *peer < ANY {
                            choose(objs, *peer, |o| is_kind(o, CKO_PUBLIC_KEY, CKK_EC))
                        } else {
                            None
                        };
                        (base, None, peer)
                    }
                };
                Plan::Derive {
                    mech: mech.clone(),
                    base,
                    salt,
                    peer,
                    new: new.clone(),
                }
            }
            Op::Wrap {
                mech,
                wrapper,
                target,
            } => Plan::Wrap {
                mech: adapt_wrap(objs, *mech, CKA_WRAP),
                wrapper: choose(
                    objs,
                    *wrapper,
                    suits_wrap(adapt_wrap(objs, *mech, CKA_WRAP), CKA_WRAP),
                )?,
                target: choose(objs, *target, |o| {
                    matches!(o.class, CKO_SECRET_KEY | CKO_PRIVATE_KEY)
                })?,
            },
            Op::Unwrap {
                mech,
                unwrapper,
                blob,
                tamper,
                aim,
                new,
            } => {
                let blob = if blobs.is_empty() || *blob >= ANY {
                    Err(usize::from(*blob & 0x1ff))
                } else {
                    Ok(usize::from(*blob) % blobs.len())
                };
                let b = blob.ok().map(|i| &blobs[i]);
                let mech = match b {
                    Some(b) if aim & 1 == 1 => b.wrap_mech,
                    _ => adapt_wrap(objs, *mech, CKA_UNWRAP),
                };
                let unwrapper = match b {
                    Some(b) if aim & 2 == 2 => choose_strictly(objs, *unwrapper, |o| {
                        o.value == b.under && suits_wrap(mech, CKA_UNWRAP)(o)
                    })
                    .or_else(|| choose(objs, *unwrapper, suits_wrap(mech, CKA_UNWRAP))),
                    _ => choose(objs, *unwrapper, suits_wrap(mech, CKA_UNWRAP)),
                };
                Plan::Unwrap {
                    mech,
                    unwrapper: unwrapper?,
                    blob,
                    tamper: *tamper,
                    new: new.clone(),
                }
            }
            Op::Forge {
                mech,
                key,
                len,
                fill,
            } => {
                // Only keys the attacker can wrap under on its own: an AES key whose value it
                // knows, or any RSA key (its public half); the other family if the named one
                // has none.
                let suits = |m: WrapMech| {
                    move |o: &Obj| {
                        if m.is_rsa() {
                            o.key_type == Some(CKK_RSA)
                        } else {
                            is_secret(o, &[CKK_AES]) && o.known.is_some()
                        }
                    }
                };
                let i = WrapMech::ALL.iter().position(|m| m == mech).unwrap_or(0);
                let other = if mech.is_rsa() {
                    WrapMech::ALL[3 + i % 9]
                } else {
                    WrapMech::ALL[i % 3]
                };
                let mech = if objs.iter().any(suits(*mech)) {
                    *mech
                } else {
                    other
                };
                Plan::Forge {
                    mech,
                    key: choose_strictly(objs, *key, suits(mech))?,
                    len: *len,
                    fill: *fill,
                }
            }
            Op::Copy { obj, change } => Plan::Copy {
                obj: choose(objs, *obj, |_| true)?,
                change: *change,
            },
            Op::SetAttribute { obj, change } => Plan::SetAttribute {
                obj: choose(objs, *obj, |_| true)?,
                change: *change,
            },
            Op::Use {
                kind,
                mech,
                key,
                len,
                fill,
            } => {
                let usage = kind.usage();
                let (ty, params) = match kind {
                    UseKind::Sign | UseKind::MessageSign => {
                        let m = if usize::from(*mech) % 8 == 7 {
                            // A mechanism that cannot sign.
                            CKM_AES_CBC_PAD
                        } else {
                            SIGN_MECHS[usize::from(*mech) % SIGN_MECHS.len()]
                        };
                        (m, MechanismParams::None)
                    }
                    UseKind::MessageEncrypt | UseKind::MessageDecrypt => {
                        // The parameters come with each message.
                        let m = if mech % 4 == 3 {
                            WrapMech::ALL[usize::from(*mech) % WrapMech::ALL.len()]
                        } else {
                            WrapMech::AesGcm
                        };
                        (m.ty(), MechanismParams::None)
                    }
                    UseKind::Encrypt | UseKind::Decrypt => {
                        let m = WrapMech::ALL[usize::from(*mech) % WrapMech::ALL.len()];
                        (m.ty(), m.mechanism().params.clone())
                    }
                };
                let key = choose(objs, *key, |o| {
                    let a = Attrs {
                        class: o.class,
                        key_type: o.key_type,
                        ..Attrs::default()
                    };
                    key_type_ok(ty, usage, &a)
                })?;
                Plan::Use {
                    kind: *kind,
                    mech: ty,
                    params,
                    key,
                    data: bytes_of(usize::from(*len) % 80, *fill),
                }
            }
            Op::DigestKey { key } => Plan::DigestKey {
                key: choose(objs, *key, |o| o.class == CKO_SECRET_KEY)?,
            },
            Op::FindByValue { key } => Plan::FindByValue {
                key: choose_strictly(objs, *key, |o| o.known.is_some())?,
            },
        })
    };
    p().unwrap_or(Plan::Skip)
}

fn code<T>(r: &Result<T, Error>) -> Result<(), Error> {
    r.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Checks the answer to a call that the protection rule says must be refused.
fn expect_refusal(
    what: &str,
    predicted: Option<&Error>,
    got: &Result<(), Error>,
) -> Result<(), String> {
    match predicted {
        Some(p) if got.as_ref().err() != Some(p) => Err(format!(
            "(e) {what}: the rule refuses it with {p:?}; the device answered {got:?}"
        )),
        None if matches!(
            got,
            Err(Error::KeyFunctionNotPermitted | Error::UserNotLoggedIn)
        ) =>
        {
            Err(format!(
                "(e) {what}: the rule allows it; the device refused it with {got:?}"
            ))
        }
        _ => Ok(()),
    }
}

/// What unwrapping gives back of a key `known` wrapped with `mech`: the firmware pads the key
/// with zeros to whole blocks for the mechanisms without padding of their own
/// (`CKM_AES_KEY_WRAP` to semiblocks, ECB and CBC to blocks), and unwrapping keeps them.
fn unwrapped_known(mech: WrapMech, known: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut k = known?.to_vec();
    let block = match mech {
        WrapMech::AesKw => 8,
        WrapMech::AesEcb | WrapMech::AesCbc => 16,
        WrapMech::Des3Ecb | WrapMech::Des3Cbc => 8,
        _ => 1,
    };
    k.resize(k.len().div_ceil(block) * block, 0);
    Some(k)
}

/// A new private or secret key that may unwrap but not decrypt, made without an unwrap
/// template (`given`: its creator gave one), has the default one: what it unwraps is sensitive
/// and unextractable, or `C_UnwrapKey` would be `C_Decrypt` for a key that may not decrypt.
fn check_default_unwrap_template(
    w: &World<'_>,
    h: ObjectHandle,
    given: bool,
) -> Result<(), String> {
    let a = attrs_of(w, h);
    let unwrap_only = matches!(a.class, CKO_PRIVATE_KEY | CKO_SECRET_KEY)
        && a.can(CKA_UNWRAP)
        && !a.can(CKA_DECRYPT);
    let pinned = a
        .unwrap_template
        .is_some_and(|p| p.sensitive == Some(true) && p.extractable == Some(false));
    if unwrap_only && !given && !pinned {
        return Err(format!(
            "an unwrap-only key was made without the default unwrap template: {a:?}"
        ));
    }
    Ok(())
}

/// The protection-lattice checks on a new key made from `inputs`.
fn check_lattice_derived(
    what: &str,
    out: &Attrs,
    inputs: &[Attrs],
    template_chooses: bool,
) -> Result<(), String> {
    if out.class != CKO_SECRET_KEY {
        return Ok(());
    }
    let any_sensitive = inputs.iter().any(|a| a.protected() && a.sensitive);
    let any_unextractable = inputs.iter().any(|a| a.protected() && !a.extractable);
    let all_always = inputs.iter().all(|a| a.always_sensitive);
    let all_never = inputs.iter().all(|a| a.never_extractable);
    if !template_chooses && any_sensitive && !out.sensitive {
        return Err(format!(
            "lattice: {what} of a sensitive input is not sensitive"
        ));
    }
    if !template_chooses && any_unextractable && out.extractable {
        return Err(format!(
            "lattice: {what} of an unextractable input is extractable"
        ));
    }
    if out.always_sensitive && (!all_always || !out.sensitive) {
        return Err(format!(
            "lattice: {what} claims CKA_ALWAYS_SENSITIVE without it holding for every input"
        ));
    }
    if out.never_extractable && (!all_never || out.extractable) {
        return Err(format!(
            "lattice: {what} claims CKA_NEVER_EXTRACTABLE without it holding for every input"
        ));
    }
    Ok(())
}

/// Runs one planned operation in one world.
fn exec(w: &mut World<'_>, ws: &Token, plan: &Plan) -> Result<Outcome, String> {
    let dev = w.dev;
    let s = w.s;
    let mut out = Outcome::default();
    match plan {
        Plan::Skip => {}
        Plan::Generate(Op::Generate { kind, len, spec }) => {
            let (mech, len) = match kind {
                SecretKind::Aes => (CKM_AES_KEY_GEN, kind.len(*len)),
                SecretKind::Hkdf => (CKM_HKDF_KEY_GEN, kind.len(*len)),
                SecretKind::ChaCha20 => (CKM_CHACHA20_KEY_GEN, kind.len(*len)),
                SecretKind::Des3 => (CKM_DES3_KEY_GEN, kind.len(*len)),
                _ => (CKM_GENERIC_SECRET_KEY_GEN, kind.len(*len)),
            };
            let mut t = spec_template(CKO_SECRET_KEY, spec);
            t.0.push(Attribute::ulong(CKA_VALUE_LEN, ulong(len)));
            let r = dev.generate_key(s, &Mechanism::new(mech), &t);
            out.code = Some(code(&r));
            if let Ok(h) = r {
                let v = w.fresh_value();
                let o = w.record_as(h, v, BTreeSet::new(), false, true);
                out.new.push(o);
            }
        }
        Plan::Create(Op::Create {
            kind,
            len,
            fill,
            spec,
        }) => {
            let mut t = spec_template(CKO_SECRET_KEY, spec);
            t.0.push(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY));
            t.0.push(Attribute::ulong(CKA_KEY_TYPE, kind.key_type()));
            let value = bytes_of(kind.len(*len), *fill);
            t.0.push(Attribute::bytes(CKA_VALUE, value.clone()));
            let r = dev.create_object(s, &t);
            out.code = Some(code(&r));
            if let Ok(h) = r {
                let v = w.fresh_value();
                let mut o = w.record(h, v, BTreeSet::new(), false);
                o.known = Some(value);
                out.new.push(o);
            }
        }
        Plan::GeneratePair(Op::GeneratePair {
            kind: PairKind::Rsa,
            spec,
        }) if w.rsa_components.is_some() => {
            let comps = w.rsa_components.unwrap_or_default();
            let mut public = Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA));
            public.0.extend(
                comps
                    .iter()
                    .filter(|a| matches!(a.ty, CKA_MODULUS | CKA_PUBLIC_EXPONENT))
                    .cloned(),
            );
            let mut private = spec_template(CKO_PRIVATE_KEY, spec);
            private.0.push(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY));
            private.0.push(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA));
            private.0.extend(comps.iter().cloned());
            let r = dev.create_object(s, &public).and_then(|p| {
                dev.create_object(s, &private)
                    .inspect_err(|_| w.destroy(p))
                    .map(|k| (p, k))
            });
            out.code = Some(code(&r));
            if let Ok((pubh, privh)) = r {
                let v = w.fresh_value();
                let p = w.record(pubh, v, BTreeSet::new(), false);
                let k = w.record(privh, v, BTreeSet::new(), false);
                out.new.push(p);
                out.new.push(k);
            }
        }
        Plan::GeneratePair(Op::GeneratePair { kind, spec }) => {
            let (mech, public) = match kind {
                PairKind::Rsa => (
                    CKM_RSA_PKCS_KEY_PAIR_GEN,
                    Template::new()
                        .with(Attribute::bool(CKA_TOKEN, false))
                        .with(Attribute::ulong(CKA_MODULUS_BITS, 1024)),
                ),
                PairKind::Ec => (
                    CKM_EC_KEY_PAIR_GEN,
                    Template::new()
                        .with(Attribute::bool(CKA_TOKEN, false))
                        .with(Attribute::bytes(CKA_EC_PARAMS, P256.to_vec())),
                ),
            };
            let private = spec_template(CKO_PRIVATE_KEY, spec);
            let r = dev.generate_key_pair(s, &Mechanism::new(mech), &public, &private);
            out.code = Some(code(&r));
            if let Ok((pubh, privh)) = r {
                let v = w.fresh_value();
                let p = w.record(pubh, v, BTreeSet::new(), false);
                let k = w.record_as(privh, v, BTreeSet::new(), false, true);
                out.new.push(p);
                out.new.push(k);
            }
        }
        Plan::Generate(_) | Plan::Create(_) | Plan::GeneratePair(_) => unreachable!(),
        Plan::Derive {
            mech,
            base,
            salt,
            peer,
            new,
        } => {
            let base_o = w.objs[*base].clone();
            let base_a = attrs_of(w, base_o.handle);
            let salt_o = salt.map(|i| w.objs[i].clone());
            let salt_a = salt_o.as_ref().map(|o| attrs_of(w, o.handle));
            let (m, is_data, is_ecdh) = match mech {
                DeriveMech::Hkdf {
                    data,
                    extract,
                    expand,
                    prf,
                    salt,
                    info_len,
                } => {
                    let (salt_type, salt_bytes, salt_key) = match salt {
                        Salt::Null => (CKF_HKDF_SALT_NULL, Vec::new(), 0),
                        Salt::Data(n) => (CKF_HKDF_SALT_DATA, bytes_of(usize::from(*n % 40), 7), 0),
                        Salt::Key(_) => (
                            CKF_HKDF_SALT_KEY,
                            Vec::new(),
                            salt_o.as_ref().map_or(0, |o| o.handle.0),
                        ),
                        Salt::Bad => (0x80, Vec::new(), 0),
                    };
                    let prf_hash = [CKM_SHA_1, CKM_SHA256, CKM_SHA384, CKM_SHA512, CKM_MD5]
                        [usize::from(*prf) % 5];
                    let ty = if *data {
                        CKM_HKDF_DATA
                    } else {
                        CKM_HKDF_DERIVE
                    };
                    (
                        Mechanism::with(
                            ty,
                            MechanismParams::Hkdf {
                                extract: *extract,
                                expand: *expand,
                                prf_hash,
                                salt_type,
                                salt: salt_bytes,
                                salt_key,
                                info: bytes_of(usize::from(*info_len), 9),
                            },
                        ),
                        *data,
                        false,
                    )
                }
                DeriveMech::Ecdh {
                    cofactor,
                    kdf,
                    shared_len,
                    ..
                } => {
                    let kdf = [
                        CKD_NULL,
                        CKD_SHA1_KDF,
                        CKD_SHA224_KDF,
                        CKD_SHA256_KDF,
                        CKD_SHA384_KDF,
                        CKD_SHA512_KDF,
                        0x7777,
                    ][usize::from(*kdf) % 7];
                    let public_data = match peer {
                        Some(i) => {
                            let a = dev
                                .get_attribute_value(s, w.objs[*i].handle, &[CKA_EC_POINT])
                                .expect("read an EC point");
                            as_bytes(&a[0]).map(<[u8]>::to_vec).unwrap_or_default()
                        }
                        None => bytes_of(65, *shared_len),
                    };
                    let shared_data = if kdf == CKD_NULL {
                        Vec::new()
                    } else {
                        bytes_of(usize::from(*shared_len), 3)
                    };
                    let ty = if *cofactor {
                        CKM_ECDH1_COFACTOR_DERIVE
                    } else {
                        CKM_ECDH1_DERIVE
                    };
                    (
                        Mechanism::with(
                            ty,
                            MechanismParams::Ecdh1Derive {
                                kdf,
                                shared_data,
                                public_data,
                            },
                        ),
                        false,
                        true,
                    )
                }
            };
            let template = new_key_template(new, is_data);
            let predicted = predicted_refusal(w.strict, m.ty, CKA_DERIVE, &base_a);
            let r = dev.derive_key(s, &m, base_o.handle, &template);
            out.code = Some(code(&r));
            out.refused = predicted.is_some();
            if !is_data {
                expect_refusal("C_DeriveKey", predicted.as_ref(), &code(&r))?;
            } else if let Some(p) = &predicted {
                expect_refusal("C_DeriveKey", Some(p), &code(&r))?;
            }
            // The salt key is an input too: one the caller may not derive with (not a secret
            // key, no CKA_DERIVE, not allowed for the mechanism, not of its key type) is
            // CKR_MECHANISM_PARAM_INVALID.
            let salt_read = matches!(
                mech,
                DeriveMech::Hkdf {
                    extract: true,
                    salt: Salt::Key(_),
                    ..
                }
            );
            let salt_ok = !salt_read
                || salt_a.as_ref().is_some_and(|sa| {
                    sa.class == CKO_SECRET_KEY
                        && predicted_refusal(w.strict, m.ty, CKA_DERIVE, sa).is_none()
                });
            if predicted.is_none() && !salt_ok && code(&r) != Err(Error::MechanismParamInvalid) {
                return Err(format!(
                    "(e) C_DeriveKey with a salt key the caller may not derive with ({salt_a:?}) \
                     answered {:?}",
                    code(&r)
                ));
            }
            // A data object is readable by anyone who sees it: none is derived from a
            // protected input (CKR_KEY_FUNCTION_NOT_PERMITTED).
            let salt_protected = salt_read && salt_a.as_ref().is_some_and(Attrs::protected);
            if predicted.is_none()
                && salt_ok
                && is_data
                && (base_a.protected() || salt_protected)
                && code(&r) != Err(Error::KeyFunctionNotPermitted)
            {
                return Err(format!(
                    "(a) CKM_HKDF_DATA from a protected input answered {:?}",
                    code(&r)
                ));
            }
            // ECDH under an obligation: a template asking for a readable or extractable
            // output is refused (or, under the strict personality, overridden).
            let obliged = is_ecdh && ecdh_obliged(w.strict, &base_a);
            if let Ok(h) = r {
                let out_a = attrs_of(w, h);
                let mut inputs = vec![base_a.clone()];
                inputs.extend(salt_a.clone());
                let mut deps = BTreeSet::new();
                if is_ecdh {
                    // The exception: the template chooses, unless the device must protect.
                    if obliged || (out_a.sensitive && !out_a.extractable) {
                        deps.extend(base_o.deps.iter().copied());
                    } else {
                        out.ecdh_free = !base_o.deps.is_empty();
                    }
                    if obliged && !(out_a.sensitive && (!out_a.extractable || w.strict)) {
                        return Err(format!(
                            "ECDH from a base key whose derive template (or the strict \
                             personality) forces protection made a readable output: {out_a:?}"
                        ));
                    }
                    check_lattice_derived("ECDH", &out_a, std::slice::from_ref(&base_a), true)?;
                } else {
                    deps.extend(base_o.deps.iter().copied());
                    if let Some(so) = &salt_o {
                        // Only an extracting HKDF reads the salt key.
                        if matches!(mech, DeriveMech::Hkdf { extract: true, .. }) {
                            deps.extend(so.deps.iter().copied());
                        }
                    }
                    let ins: Vec<Attrs> = if matches!(mech, DeriveMech::Hkdf { extract: true, .. })
                    {
                        inputs
                    } else {
                        vec![base_a.clone()]
                    };
                    if is_data && ins.iter().any(Attrs::protected) {
                        return Err(
                            "(a) CKM_HKDF_DATA made a data object (readable) from a protected input"
                                .into(),
                        );
                    }
                    check_lattice_derived("HKDF", &out_a, &ins, false)?;
                }
                let v = w.fresh_value();
                let o = w.record(h, v, deps, true);
                out.new.push(o);
            }
        }
        Plan::Wrap {
            mech,
            wrapper,
            target,
        } => {
            let wo = w.objs[*wrapper].clone();
            let to = w.objs[*target].clone();
            let wa = attrs_of(w, wo.handle);
            let ta = attrs_of(w, to.handle);
            let predicted = predicted_refusal(w.strict, mech.ty(), CKA_WRAP, &wa).or_else(|| {
                if !ta.is_key() {
                    Some(Error::KeyHandleInvalid)
                } else if !ta.extractable {
                    Some(Error::KeyUnextractable)
                } else if w.strict {
                    // Only under keys the SO marked trusted; this attacker has none.
                    Some(Error::KeyNotWrappable)
                } else {
                    None
                }
            });
            let mut buf = vec![0u8; 8192];
            let r = dev.wrap_key(s, &mech.mechanism(), wo.handle, to.handle, Some(&mut buf));
            out.code = Some(code(&r));
            // A non-key target is refused before the wrapping key is looked at.
            let predicted = if ta.is_key() {
                predicted
            } else {
                Some(Error::KeyHandleInvalid)
            };
            expect_refusal("C_WrapKey", predicted.as_ref(), &code(&r))?;
            out.refused = predicted.is_some();
            // The PKCS#8 form of a generated private key may differ in length with its value
            // (an RSA integer a byte shorter).
            out.value_dependent = predicted.is_none() && to.class == CKO_PRIVATE_KEY;
            if let Ok(n) = r {
                if !to.deps.is_empty() {
                    let how = if wo.known.is_some() || wa.class == CKO_PUBLIC_KEY {
                        "under a key the attacker knows or can decrypt with"
                    } else {
                        "at all"
                    };
                    return Err(format!(
                        "(b) C_WrapKey gave out a key that depends on victims {:?} {how}",
                        to.deps
                    ));
                }
                buf.truncate(n);
                out.blob = Some(Blob {
                    bytes: buf,
                    wrap_mech: *mech,
                    mech: mech.mechanism(),
                    under: wo.value,
                    content_value: to.value,
                    content_deps: to.deps.clone(),
                    content_derived: to.derived,
                    content_known: unwrapped_known(*mech, to.known.as_deref()),
                });
            }
        }
        Plan::Unwrap {
            mech,
            unwrapper,
            blob,
            tamper,
            new,
        } => {
            let uo = w.objs[*unwrapper].clone();
            let ua = attrs_of(w, uo.handle);
            let b = match blob {
                Ok(i) => w.blobs[*i].clone(),
                Err(n) => Blob {
                    // Junk of a length the mechanism could take (one time in two).
                    bytes: bytes_of(
                        match (n & 0x100 != 0, mech) {
                            (true, _) => 1 + n % 0x100,
                            (false, WrapMech::RsaPkcs | WrapMech::RsaOaep) => 128,
                            (false, WrapMech::RsaAes) => 128 + 8 * (3 + n % 6),
                            (false, _) => 8 * (2 + n % 6),
                        },
                        u8::try_from(n % 0x100).unwrap_or(0),
                    ),
                    wrap_mech: *mech,
                    mech: Mechanism::new(CKM_VENDOR_DEFINED),
                    under: 0,
                    content_value: 0,
                    content_deps: BTreeSet::new(),
                    content_derived: false,
                    content_known: None,
                },
            };
            let mut bytes = b.bytes.clone();
            if *tamper {
                if let Some(x) = bytes.last_mut() {
                    *x ^= 0x01;
                }
                let mid = bytes.len() / 2;
                if let Some(x) = bytes.get_mut(mid) {
                    *x ^= 0x80;
                }
            }
            let m = mech.mechanism();
            let template = new_key_template(new, false);
            let predicted = predicted_refusal(w.strict, m.ty, CKA_UNWRAP, &ua);
            let r = dev.unwrap_key(s, &m, uo.handle, &bytes, &template);
            out.code = Some(code(&r));
            expect_refusal("C_UnwrapKey", predicted.as_ref(), &code(&r))?;
            out.refused = predicted.is_some();
            let exact = !*tamper && b.under == uo.value && b.mech == m;
            out.value_dependent = predicted.is_none();
            if predicted.is_some() {
                // (e) No padding or integrity oracle: a refused unwrap answers the same for a
                // valid, a damaged and a random ciphertext.
                let mut damaged = b.bytes.clone();
                if let Some(x) = damaged.first_mut() {
                    *x ^= 0x55;
                }
                for c in [
                    b.bytes.clone(),
                    damaged,
                    bytes_of(bytes.len().max(16), 0xa5),
                ] {
                    let r2 = dev.unwrap_key(s, &m, uo.handle, &c, &template);
                    if let Ok(h) = r2 {
                        w.destroy(h);
                    }
                    if code(&r2) != code(&r) {
                        return Err(format!(
                            "(e) a refused C_UnwrapKey answers {:?} for one ciphertext and {:?} \
                             for another",
                            code(&r),
                            code(&r2)
                        ));
                    }
                    out.extra.push(code(&r2));
                }
            }
            if let Ok(h) = r {
                let out_a = attrs_of(w, h);
                // The unwrapping key's template holds (the strict personality may only make
                // the key more protected than it asks), and an unwrapped key has no history.
                if let Some(p) = ua.unwrap_template {
                    let weaker = (p.sensitive == Some(true) && !out_a.sensitive)
                        || (p.extractable == Some(false) && out_a.extractable);
                    let other = !w.strict
                        && (p.sensitive.is_some_and(|v| v != out_a.sensitive)
                            || p.extractable.is_some_and(|v| v != out_a.extractable));
                    if weaker || other {
                        return Err(format!(
                            "C_UnwrapKey made {out_a:?} against the unwrap template {p:?}"
                        ));
                    }
                }
                if out_a.always_sensitive || out_a.never_extractable {
                    return Err(format!(
                        "lattice: an unwrapped key claims ALWAYS_SENSITIVE/NEVER_EXTRACTABLE: \
                         {out_a:?}"
                    ));
                }
                let o = if exact {
                    // What was wrapped under this very key: the same value.
                    let mut o = w.record(
                        h,
                        b.content_value,
                        b.content_deps.clone(),
                        b.content_derived,
                    );
                    if o.known.is_none() {
                        o.known.clone_from(&b.content_known);
                    }
                    o
                } else {
                    let deps = if oracle_protected(w.strict, &ua) {
                        uo.deps.clone()
                    } else {
                        BTreeSet::new()
                    };
                    let v = w.fresh_value();
                    w.record(h, v, deps, false)
                };
                out.new.push(o);
            }
        }
        Plan::Forge {
            mech,
            key,
            len,
            fill,
        } => {
            let ko = w.objs[*key].clone();
            let content = bytes_of(1 + usize::from(*len % 48), *fill);
            let wd = &ws.dev;
            let wsess = wd
                .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
                .expect("workstation session");
            // The wrapping key as the attacker knows it.
            let wrapper = if mech.is_rsa() {
                let a = dev
                    .get_attribute_value(s, ko.handle, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT])
                    .expect("read an RSA key's public half");
                let (Some(n), Some(e)) = (as_bytes(&a[0]), as_bytes(&a[1])) else {
                    let _ = wd.close_session(wsess);
                    return Ok(out);
                };
                Some(
                    wd.create_object(
                        wsess,
                        &Template::new()
                            .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                            .with(Attribute::bytes(CKA_MODULUS, n.to_vec()))
                            .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.to_vec()))
                            .with(Attribute::bool(CKA_WRAP, true)),
                    )
                    .expect("the attacker's copy of a public key"),
                )
            } else {
                ko.known.as_ref().map(|k| {
                    wd.create_object(
                        wsess,
                        &Template::new()
                            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                            .with(Attribute::bytes(CKA_VALUE, k.clone()))
                            .with(Attribute::bool(CKA_WRAP, true)),
                    )
                    .unwrap_or_else(|e| panic!("the attacker's copy of {ko:?}: {e:?}"))
                })
            };
            if let Some(wrapper) = wrapper {
                let c = wd
                    .create_object(
                        wsess,
                        &Template::new()
                            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
                            .with(Attribute::bytes(CKA_VALUE, content.clone()))
                            .with(Attribute::bool(CKA_EXTRACTABLE, true)),
                    )
                    .expect("chosen key bytes");
                let mut buf = vec![0u8; 8192];
                let r = wd.wrap_key(wsess, &mech.mechanism(), wrapper, c, Some(&mut buf));
                out.code = Some(code(&r));
                if let Ok(n) = r {
                    buf.truncate(n);
                    let v = w.fresh_value();
                    out.blob = Some(Blob {
                        bytes: buf,
                        wrap_mech: *mech,
                        mech: mech.mechanism(),
                        under: ko.value,
                        content_value: v,
                        content_deps: BTreeSet::new(),
                        content_derived: false,
                        content_known: unwrapped_known(*mech, Some(&content)),
                    });
                }
            }
            wd.close_session(wsess)
                .expect("close the workstation session");
        }
        Plan::Copy { obj, change } => {
            let so = w.objs[*obj].clone();
            let sa = attrs_of(w, so.handle);
            let t = change_template(so.class, change);
            let r = dev.copy_object(s, so.handle, &t);
            out.code = Some(code(&r));
            if let Ok(h) = r {
                let ca = attrs_of(w, h);
                if sa.is_key() && sa.class != CKO_PUBLIC_KEY {
                    if (sa.sensitive && !ca.sensitive)
                        || (!sa.extractable && ca.extractable)
                        || sa.always_sensitive != ca.always_sensitive
                        || sa.never_extractable != ca.never_extractable
                    {
                        return Err(format!(
                            "lattice: C_CopyObject lowered protection or changed provenance: \
                             {sa:?} -> {ca:?}"
                        ));
                    }
                    if sa.protected() && sa.private && !ca.private {
                        return Err("(c) C_CopyObject made a protected key public".into());
                    }
                }
                let mut o = w.record(h, so.value, so.deps.clone(), so.derived);
                o.victim = so.victim;
                if o.known.is_none() {
                    o.known.clone_from(&so.known);
                }
                out.new.push(o);
            }
        }
        Plan::SetAttribute { obj, change } => {
            let o = w.objs[*obj].clone();
            let before = attrs_of(w, o.handle);
            let t = change_template(o.class, change);
            let r = dev.set_attribute_value(s, o.handle, &t);
            out.code = Some(code(&r));
            let after = attrs_of(w, o.handle);
            if before.is_key()
                && ((before.sensitive && !after.sensitive)
                    || (!before.extractable && after.extractable)
                    || before.always_sensitive != after.always_sensitive
                    || before.never_extractable != after.never_extractable
                    || (before.private != after.private))
            {
                return Err(format!(
                    "lattice: C_SetAttributeValue lowered protection or changed provenance: \
                     {before:?} -> {after:?}"
                ));
            }
        }
        Plan::Use {
            kind,
            mech,
            params,
            key,
            data,
        } => {
            let ko = w.objs[*key].clone();
            let ka = attrs_of(w, ko.handle);
            let m = Mechanism::with(*mech, params.clone());
            let usage = kind.usage();
            // The message functions of 3.0: AES-GCM encrypts and decrypts, the signature and
            // MAC mechanisms sign.
            let message_ok = match kind {
                UseKind::MessageEncrypt | UseKind::MessageDecrypt => *mech == CKM_AES_GCM,
                UseKind::MessageSign => SIGN_MECHS.contains(mech),
                _ => true,
            };
            let predicted = if message_ok {
                predicted_refusal(w.strict, *mech, usage, &ka)
            } else {
                Some(Error::MechanismInvalid)
            };
            let init = match kind {
                UseKind::Encrypt => dev.encrypt_init(s, &m, ko.handle),
                UseKind::Decrypt => dev.decrypt_init(s, &m, ko.handle),
                UseKind::Sign => dev.sign_init(s, &m, ko.handle),
                UseKind::MessageEncrypt => dev.message_encrypt_init(s, &m, ko.handle),
                UseKind::MessageDecrypt => dev.message_decrypt_init(s, &m, ko.handle),
                UseKind::MessageSign => dev.message_sign_init(s, &m, ko.handle),
            };
            expect_refusal("C_*Init", predicted.as_ref(), &init)?;
            out.refused = predicted.is_some();
            out.value_dependent =
                matches!(kind, UseKind::Decrypt | UseKind::MessageDecrypt) && predicted.is_none();
            let r = init.and_then(|()| {
                if ka.always_authenticate {
                    dev.login(s, CKU_CONTEXT_SPECIFIC, Some(USER_PIN))?;
                }
                let mut buf = vec![0u8; 4096];
                let mut gcm = MechanismParams::GcmMessage {
                    iv: vec![0x4f; 12],
                    iv_fixed_bits: 0,
                    iv_generator: CKG_NO_GENERATE,
                    tag: vec![0; 16],
                    tag_bits: 128,
                };
                match kind {
                    UseKind::Encrypt => dev.encrypt(s, data, Some(&mut buf)),
                    UseKind::Decrypt => dev.decrypt(s, data, Some(&mut buf)),
                    UseKind::Sign => dev.sign(s, data, Some(&mut buf)),
                    UseKind::MessageEncrypt => {
                        dev.encrypt_message(s, &mut gcm, b"aad", data, Some(&mut buf))
                    }
                    UseKind::MessageDecrypt => {
                        dev.decrypt_message(s, &mut gcm, b"aad", data, Some(&mut buf))
                    }
                    UseKind::MessageSign => {
                        dev.sign_message(s, &mut MechanismParams::None, data, Some(&mut buf))
                    }
                }
                .map(|_| ())
            });
            // Whatever happened, no operation stays active.
            let _ = dev.session_cancel(
                s,
                CKF_ENCRYPT
                    | CKF_DECRYPT
                    | CKF_SIGN
                    | CKF_MESSAGE_ENCRYPT
                    | CKF_MESSAGE_DECRYPT
                    | CKF_MESSAGE_SIGN,
            );
            out.code = Some(r);
        }
        Plan::DigestKey { key } => {
            let ko = w.objs[*key].clone();
            let ka = attrs_of(w, ko.handle);
            dev.digest_init(s, &Mechanism::new(CKM_SHA256))
                .expect("digest init");
            let r = dev.digest_key(s, ko.handle);
            let mut buf = [0u8; 32];
            let _ = dev.digest_final(s, Some(&mut buf));
            let _ = dev.session_cancel(s, CKF_DIGEST);
            if (!ko.deps.is_empty() || !ka.readable()) && r.is_ok() {
                return Err(format!(
                    "(a) C_DigestKey digested a key that may not be read (deps {:?})",
                    ko.deps
                ));
            }
            out.code = Some(r);
        }
        Plan::FindByValue { key } => {
            let ko = w.objs[*key].clone();
            let value = ko.known.clone().unwrap_or_default();
            let t = Template::new().with(Attribute::bytes(CKA_VALUE, value));
            let r = dev.find_objects_init(s, &t).and_then(|()| {
                let found = dev.find_objects(s, 4096);
                dev.find_objects_final(s)?;
                found
            });
            out.code = Some(code(&r));
            let found = r.map_err(|e| format!("C_FindObjects: {e:?}"))?;
            for h in &found {
                if !attrs_of(w, *h).readable() {
                    return Err(format!(
                        "(a) a search by CKA_VALUE matched {h:?}, whose value may not be read"
                    ));
                }
            }
            if attrs_of(w, ko.handle).readable() && !found.contains(&ko.handle) {
                return Err(format!(
                    "a search by the CKA_VALUE of readable {:?} does not find it",
                    ko.handle
                ));
            }
        }
    }
    let given = match plan {
        Plan::Generate(Op::Generate { spec, .. })
        | Plan::Create(Op::Create { spec, .. })
        | Plan::GeneratePair(Op::GeneratePair { spec, .. }) => spec.unwrap_template.is_some(),
        // A copy keeps its source's template; derive and unwrap templates never give one.
        Plan::Copy { .. } => true,
        _ => false,
    };
    for o in &out.new {
        check_default_unwrap_template(w, o.handle, given)?;
    }
    // A protected key is always private, whatever made it (generate, create, a pair, derive,
    // unwrap, copy): CKA_PRIVATE=FALSE is refused for it.
    for o in &out.new {
        let a = attrs_of(w, o.handle);
        if a.protected() && !a.private {
            return Err(format!(
                "a protected key made public: {:?} by {}",
                o.handle,
                plan.summary()
            ));
        }
    }
    Ok(out)
}

/// The invariants on every object of one world.
fn check_world(w: &World<'_>) -> Result<(), String> {
    for o in &w.objs {
        let answers = w
            .dev
            .get_attribute_value(w.s, o.handle, &EVERY_ATTR)
            .map_err(|e| format!("C_GetAttributeValue of a live object: {e:?}"))?;
        let get =
            |ty: CK_ATTRIBUTE_TYPE| &answers[EVERY_ATTR.iter().position(|t| *t == ty).unwrap()];
        let a = attrs_of(w, o.handle);
        if a.always_sensitive && a.never_extractable && a.is_key() && o.deps.is_empty() {
            return Err(format!(
                "provenance: {o:?} claims ALWAYS_SENSITIVE and NEVER_EXTRACTABLE but depends on \
                 no victim"
            ));
        }
        if o.deps.is_empty() {
            continue;
        }
        let who = format!("object {:?} depending on victims {:?}", o.handle, o.deps);
        if o.class == CKO_DATA {
            return Err(format!(
                "(a) a data object (readable) depends on victims: {who}"
            ));
        }
        for ty in SECRET_ATTRS {
            if matches!(get(ty), AttrAnswer::Value(_)) {
                return Err(format!(
                    "(a) {} of {who} is readable",
                    bridge::attr_name(ty)
                ));
            }
        }
        if !a.sensitive {
            return Err(format!("(c) {who} is not sensitive"));
        }
        if a.extractable && !w.strict {
            return Err(format!("(c) {who} is extractable"));
        }
        if !a.private {
            return Err(format!("(c) {who} is public (CKA_PRIVATE=FALSE)"));
        }
        if o.class == CKO_SECRET_KEY {
            let len = a.value_len.unwrap_or(0);
            // A victim may be as short as its owner made it; what is made from one may not.
            if len < 16 && !o.victim {
                return Err(format!("(d) {who} is {len} bytes long"));
            }
            if matches!(get(CKA_CHECK_VALUE), AttrAnswer::Value(_)) && (o.derived || len < 16) {
                return Err(format!(
                    "(a) {who} ({len} bytes, derived: {}) publishes CKA_CHECK_VALUE",
                    o.derived
                ));
            }
        }
    }
    Ok(())
}

/// The codes an answer may differ by between the worlds when the call processed
/// attacker-chosen data under a key the caller may use.
fn data_validity(c: &Result<(), Error>) -> bool {
    matches!(
        c,
        Ok(())
            | Err(Error::WrappedKeyInvalid
                | Error::WrappedKeyLenRange
                | Error::EncryptedDataInvalid
                | Error::EncryptedDataLenRange
                | Error::AeadDecryptFailed
                | Error::DataLenRange
                | Error::KeySizeRange)
    )
}

/// A run: the same operations in two worlds, in lockstep.
pub(crate) struct Run<'a> {
    worlds: [World<'a>; 2],
    ws: &'a Token,
    /// One line per step, for the report of a failure.
    pub(crate) log: String,
    pub(crate) stats: Stats,
}

impl<'a> Run<'a> {
    pub(crate) fn new(bench: &'a Bench) -> Self {
        Self {
            worlds: [
                World::new(
                    &bench.worlds[0].dev,
                    bench.strict,
                    bench.rsa_components.as_deref(),
                ),
                World::new(
                    &bench.worlds[1].dev,
                    bench.strict,
                    bench.rsa_components.as_deref(),
                ),
            ],
            ws: &bench.workstation,
            log: String::new(),
            stats: Stats::default(),
        }
    }

    /// Runs one operation in both worlds and checks every invariant.
    pub(crate) fn step(&mut self, op: &Op) -> Result<(), String> {
        let plan = resolve(&self.worlds[0].objs, &self.worlds[0].blobs, op);
        let n = self.log.lines().count();
        let mut outs = Vec::new();
        for (i, w) in self.worlds.iter_mut().enumerate() {
            let o = exec(w, self.ws, &plan).map_err(|e| format!("step {n}, world {i}: {e}"))?;
            outs.push(o);
        }
        let [a, b] = <[Outcome; 2]>::try_from(outs).unwrap();
        let _ = writeln!(
            self.log,
            "{n}: {op:?} [{}] -> {:?} / {:?}",
            plan.summary(),
            a.code,
            b.code
        );
        // (f) The same answers in both worlds, except where data legitimately decides.
        if a.code != b.code || a.extra != b.extra {
            let allowed = a.value_dependent
                && b.value_dependent
                && a.code.as_ref().is_some_and(data_validity)
                && b.code.as_ref().is_some_and(data_validity)
                && a.extra.is_empty();
            if !allowed {
                return Err(format!(
                    "step {n}: (f) the answer depends on secret values: {:?} {:?} in one world, \
                     {:?} {:?} in the other",
                    a.code, a.extra, b.code, b.extra
                ));
            }
        }
        let st = &mut self.stats;
        st.steps += 1;
        st.refusals += u64::from(a.refused);
        st.ecdh_free += u64::from(a.ecdh_free);
        if a.code != b.code {
            st.divergences += 1;
        }
        if a.refused && matches!(plan, Plan::Unwrap { .. }) {
            st.unwrap_refusals += 1;
        }
        if a.code == Some(Ok(())) && b.code == Some(Ok(())) {
            match plan {
                Plan::Derive { .. } => st.derived += 1,
                Plan::Wrap { .. } => st.wrapped += 1,
                Plan::Unwrap { .. } => st.unwrapped += 1,
                _ => {}
            }
        }
        // Keep the worlds aligned: what exists in one world only is dropped from both (and so
        // is what chosen data made of different lengths in the two worlds, as a junk
        // ciphertext whose padding happens to be valid in both).
        let (mut a, mut b) = (a, b);
        let lengths = |w: &World<'_>, o: &Outcome| -> Vec<Option<usize>> {
            o.new
                .iter()
                .map(|x| attrs_of(w, x.handle).value_len)
                .collect()
        };
        if a.new.len() != b.new.len()
            || (a.value_dependent && lengths(&self.worlds[0], &a) != lengths(&self.worlds[1], &b))
        {
            for o in a.new.drain(..) {
                self.worlds[0].destroy(o.handle);
            }
            for o in b.new.drain(..) {
                self.worlds[1].destroy(o.handle);
            }
        }
        if a.blob.is_some() != b.blob.is_some() {
            a.blob = None;
            b.blob = None;
        }
        if a.new.len() == b.new.len() {
            let generated = matches!(plan, Plan::Generate(_) | Plan::GeneratePair(_));
            for o in &a.new {
                if o.victim && generated {
                    self.stats.victims += 1;
                } else if !o.deps.is_empty() && !o.victim {
                    self.stats.dependent += 1;
                }
            }
        }
        for (w, o) in self.worlds.iter_mut().zip([a, b]) {
            w.objs.extend(o.new);
            w.blobs.extend(o.blob);
        }
        for (i, w) in self.worlds.iter().enumerate() {
            check_world(w).map_err(|e| format!("step {n}, world {i}: {e}"))?;
        }
        self.compare_worlds().map_err(|e| format!("step {n}: {e}"))
    }

    /// (f) Every object has the same attribute shapes and flags in both worlds, and the model
    /// the same view of it.
    fn compare_worlds(&self) -> Result<(), String> {
        let [x, y] = &self.worlds;
        for (i, (o, p)) in x.objs.iter().zip(&y.objs).enumerate() {
            if o.deps != p.deps || o.class != p.class || o.key_type != p.key_type {
                return Err(format!(
                    "(f) object {i}: the worlds disagree: {o:?} / {p:?}"
                ));
            }
            let ax = x
                .dev
                .get_attribute_value(x.s, o.handle, &EVERY_ATTR)
                .unwrap();
            let ay = y
                .dev
                .get_attribute_value(y.s, p.handle, &EVERY_ATTR)
                .unwrap();
            for ((ty, u), v) in EVERY_ATTR.iter().zip(&ax).zip(&ay) {
                let same = if value_is_deterministic(*ty) {
                    u == v
                } else {
                    shape(u) == shape(v)
                };
                if !same {
                    return Err(format!(
                        "(f) object {i}: {} is {} in one world and {} in the other",
                        bridge::attr_name(*ty),
                        shape(u),
                        shape(v)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs a whole sequence; the error names the failing step and carries the log.
pub(crate) fn run(bench: &Bench, ops: &[Op]) -> Result<Stats, String> {
    let mut r = Run::new(bench);
    for op in ops {
        // A panic (in the firmware, or a harness assertion) is a failure like any other, with
        // the steps that led to it.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.step(op)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                Err(format!("panic during {op:?}: {msg}"))
            });
        if let Err(e) = res {
            return Err(format!("{e}\nsteps:\n{}", r.log));
        }
    }
    if std::env::var_os("FERROHSM_MODEL_LOG").is_some() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{}", r.log);
        }
    }
    Ok(r.stats)
}

/// The input format of the fuzz target and of `FERROHSM_MODEL_REPLAY`: one byte whose low bit
/// picks the strict personality, then `OP_BYTES` bytes per operation.
pub(crate) fn decode_input(data: &[u8]) -> (bool, Vec<Op>) {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    (first & 1 == 1, decode_ops(rest.chunks(OP_BYTES)))
}

/// Every wrap, unwrap and derivation mechanism the firmware lists is one the model drives.
pub(crate) fn check_coverage(dev: &Device) -> Result<(), String> {
    for m in dev
        .mechanism_list(SlotId(0))
        .map_err(|e| format!("{e:?}"))?
    {
        let f = dev
            .mechanism_info(SlotId(0), m)
            .map_err(|e| format!("{e:?}"))?
            .flags;
        let modeled = if f & (CKF_WRAP | CKF_UNWRAP) != 0 {
            WrapMech::ALL.iter().any(|w| w.ty() == m)
        } else if f & CKF_DERIVE != 0 {
            mech_supports(m, CKA_DERIVE)
        } else {
            true
        };
        if !modeled {
            return Err(format!(
                "mechanism 0x{m:x} wraps, unwraps or derives, and the model does not drive it"
            ));
        }
    }
    Ok(())
}
