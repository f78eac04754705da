//! Personalities: what a vendor's HSM offers and refuses, as data (`bridge/personalities/*.toml`,
//! one file per vendor, each rule citing the public page it comes from).
//!
//! The same [`Profile`] serves twice: the simulated firmware enforces it on every call of a
//! slot configured with that personality (so an application can be rehearsed against a target
//! HSM), and `ferrohsm check` replays a recorded trace against it (so a team learns what would
//! break before it moves). Every rule answers with a [`Finding`]: the `CKR_*` code the firmware
//! returns, one line on what differs, one on what to do, and the source.
//!
//! What a vendor does not document is not guessed: the file says so, and the firmware keeps its
//! own behaviour there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use cryptoki_sys::*;
use serde::Deserialize;

use crate::config::Personality;
use crate::error::{Error, Result};
use crate::names;
pub use crate::names::curve_name;

/// The function flags of `CK_MECHANISM_INFO` a personality can allow or withhold; the others
/// (`CKF_HW`, `CKF_EC_*` ...) describe the mechanism and are kept.
pub const FUNCTION_FLAGS: CK_FLAGS = CKF_ENCRYPT
    | CKF_DECRYPT
    | CKF_DIGEST
    | CKF_SIGN
    | CKF_SIGN_RECOVER
    | CKF_VERIFY
    | CKF_VERIFY_RECOVER
    | CKF_GENERATE
    | CKF_GENERATE_KEY_PAIR
    | CKF_WRAP
    | CKF_UNWRAP
    | CKF_DERIVE
    | CKF_MESSAGE_ENCRYPT
    | CKF_MESSAGE_DECRYPT
    | CKF_MESSAGE_SIGN
    | CKF_MESSAGE_VERIFY
    | CKF_ENCAPSULATE
    | CKF_DECAPSULATE;

/// The functions a mechanism entry may name, and their `CKF_*` flags.
const FUNCTIONS: &[(&str, CK_FLAGS)] = &[
    ("encrypt", CKF_ENCRYPT),
    ("decrypt", CKF_DECRYPT),
    ("digest", CKF_DIGEST),
    ("sign", CKF_SIGN),
    ("verify", CKF_VERIFY),
    ("sign_recover", CKF_SIGN_RECOVER),
    ("verify_recover", CKF_VERIFY_RECOVER),
    ("generate", CKF_GENERATE | CKF_GENERATE_KEY_PAIR),
    ("wrap", CKF_WRAP),
    ("unwrap", CKF_UNWRAP),
    ("derive", CKF_DERIVE),
    ("message_encrypt", CKF_MESSAGE_ENCRYPT),
    ("message_decrypt", CKF_MESSAGE_DECRYPT),
    ("message_sign", CKF_MESSAGE_SIGN),
    ("message_verify", CKF_MESSAGE_VERIFY),
];

/// The function named by a `CKF_*` flag, for messages.
pub fn function_name(flag: CK_FLAGS) -> &'static str {
    FUNCTIONS
        .iter()
        .find(|(_, f)| f & flag != 0)
        .map_or("this function", |(n, _)| n)
}

// ---- the files ----------------------------------------------------------------------------

/// The embedded personality files, by name.
const FILES: &[(Personality, &str)] = &[
    (
        Personality::Default,
        include_str!("../personalities/default.toml"),
    ),
    (
        Personality::Strict,
        include_str!("../personalities/strict.toml"),
    ),
    (
        Personality::Softhsm,
        include_str!("../personalities/softhsm.toml"),
    ),
    (
        Personality::AwsCloudhsm,
        include_str!("../personalities/aws-cloudhsm.toml"),
    ),
    (
        Personality::AzureCloudhsm,
        include_str!("../personalities/azure-cloudhsm.toml"),
    ),
    (
        Personality::Luna,
        include_str!("../personalities/luna.toml"),
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    title: String,
    #[serde(default)]
    about: String,
    #[serde(default)]
    strict: bool,
    #[serde(default = "yes")]
    legacy: bool,
    #[serde(default)]
    sources: BTreeMap<String, String>,
    #[serde(default)]
    undocumented: Vec<String>,
    #[serde(default)]
    pin: Option<PinFile>,
    #[serde(default)]
    limits: Option<LimitsFile>,
    #[serde(default)]
    sessions: Option<SessionsFile>,
    #[serde(default)]
    defaults: Option<DefaultsFile>,
    #[serde(default)]
    functions: Option<FunctionsFile>,
    #[serde(default)]
    keys: Option<KeysFile>,
    #[serde(default)]
    token: Option<TokenFile>,
    #[serde(default)]
    wrap: Option<WrapFile>,
    #[serde(default)]
    mechanism: Vec<MechanismFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrapFile {
    private_keys: bool,
    code: String,
    source: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    form: String,
    #[serde(default)]
    min: Option<usize>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    user_max: Option<usize>,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    sessions: Option<u64>,
    #[serde(default)]
    key_handles: Option<u64>,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionsFile {
    read_only: String,
    source: String,
}

/// Attribute defaults where the personality's differ from FerroHSM's own (absent: FerroHSM's).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// `CKA_EXTRACTABLE` of a new private or secret key the template is silent about.
    #[serde(default)]
    pub extractable: Option<bool>,
    /// `CKA_SENSITIVE` of a new private or secret key the template is silent about.
    #[serde(default)]
    pub sensitive: Option<bool>,
    /// Where the defaults come from.
    #[serde(default, skip)]
    pub source: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    #[serde(default)]
    extractable: Option<bool>,
    #[serde(default)]
    sensitive: Option<bool>,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionsFile {
    unsupported: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    rsa: Option<RangeFile>,
    #[serde(default)]
    ec: Option<Vec<String>>,
    #[serde(default)]
    aes: Option<Vec<u64>>,
    #[serde(default)]
    des3: Option<Vec<u64>>,
    #[serde(default)]
    generic: Option<RangeFile>,
    source: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RangeFile {
    min: u64,
    max: u64,
    #[serde(default)]
    step: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    label_max: Option<usize>,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MechanismFile {
    names: Vec<String>,
    functions: Vec<String>,
    #[serde(default)]
    single_part: bool,
    #[serde(default)]
    max_data: Option<usize>,
    #[serde(default)]
    generated_iv: bool,
    source: String,
}

// ---- the rules ----------------------------------------------------------------------------

/// How `C_Login` PINs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinForm {
    /// Any bytes.
    Plain,
    /// `USER:PASSWORD` (AWS CloudHSM, Azure Cloud HSM): the crypto user's name and password.
    UserPassword,
}

/// The PIN rule.
#[derive(Clone, Debug)]
pub struct PinRule {
    /// The form.
    pub form: PinForm,
    /// Shortest PIN (of the password part for `user:password`).
    pub min: usize,
    /// Longest PIN (of the password part).
    pub max: usize,
    /// Longest user name.
    pub user_max: Option<usize>,
    /// Where it comes from.
    pub source: String,
}

/// A key-size range in bits.
#[derive(Clone, Copy, Debug)]
pub struct BitRange {
    /// Smallest.
    pub min: u64,
    /// Largest.
    pub max: u64,
    /// Sizes come in steps of this many bits from `min`.
    pub step: Option<u64>,
}

impl BitRange {
    fn holds(&self, bits: u64) -> bool {
        bits >= self.min
            && bits <= self.max
            && self
                .step
                .is_none_or(|s| s == 0 || (bits - self.min) % s == 0)
    }

    fn describe(&self) -> String {
        match self.step {
            Some(s) if s > 0 => format!("{}–{} bits in steps of {s}", self.min, self.max),
            _ => format!("{}–{} bits", self.min, self.max),
        }
    }
}

/// One mechanism as the personality offers it.
#[derive(Clone, Debug)]
pub struct MechanismRule {
    /// The `CKF_*` function flags allowed.
    pub flags: CK_FLAGS,
    /// Single-part operations only (`C_*Update` refused with `CKR_MECHANISM_INVALID`).
    pub single_part: bool,
    /// The most bytes one call may carry.
    pub max_data: Option<usize>,
    /// The HSM generates the IV; one given by the application is refused.
    pub generated_iv: bool,
    /// Where it comes from.
    pub source: String,
}

/// The size and shape of a key, as a personality judges it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyShape {
    /// `CKK_*`.
    pub key_type: Option<CK_KEY_TYPE>,
    /// Modulus bits (RSA) or value bits (secret keys).
    pub bits: Option<u64>,
    /// The curve's name ([`curve_name`]) for EC and Edwards keys.
    pub curve: Option<String>,
}

impl KeyShape {
    /// The shape of the key a generation mechanism `mech` is asked to make, from what its
    /// template says (`CKA_MODULUS_BITS`, `CKA_VALUE_LEN` in bytes, the curve of
    /// `CKA_EC_PARAMS`); unknown mechanisms give an empty shape.
    pub fn generated(
        mech: CK_MECHANISM_TYPE,
        modulus_bits: Option<u64>,
        value_len: Option<u64>,
        curve: Option<String>,
    ) -> Self {
        let (key_type, bits) = match mech {
            CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN => (CKK_RSA, modulus_bits),
            CKM_EC_KEY_PAIR_GEN => (CKK_EC, None),
            CKM_EC_EDWARDS_KEY_PAIR_GEN => (CKK_EC_EDWARDS, None),
            CKM_EC_MONTGOMERY_KEY_PAIR_GEN => (CKK_EC_MONTGOMERY, None),
            CKM_AES_KEY_GEN => (CKK_AES, value_len.map(|l| l.saturating_mul(8))),
            CKM_DES3_KEY_GEN => (CKK_DES3, Some(192)),
            CKM_DES2_KEY_GEN => (CKK_DES2, Some(128)),
            CKM_GENERIC_SECRET_KEY_GEN => {
                (CKK_GENERIC_SECRET, value_len.map(|l| l.saturating_mul(8)))
            }
            _ => return Self::default(),
        };
        Self {
            key_type: Some(key_type),
            bits,
            curve,
        }
    }
}

/// What a personality says about one call: the code the firmware answers, what differs, what
/// to do, and where the rule comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The code the firmware returns under this personality (`None`: the call succeeds, but
    /// differently).
    pub code: Option<Error>,
    /// Whether it only needs configuration (a PIN format, a label): a warning.
    pub warning: bool,
    /// One line: what the target does differently.
    pub what: String,
    /// One line: what to do about it.
    pub hint: String,
    /// The page it comes from.
    pub source: String,
}

impl Finding {
    fn error(code: Error, what: String, hint: String, source: &str) -> Self {
        Self {
            code: Some(code),
            warning: false,
            what,
            hint,
            source: source.to_owned(),
        }
    }
}

/// The outcome of a rule: `Ok` where the personality has nothing to say.
pub type Judged = std::result::Result<(), Box<Finding>>;

/// A rule's outcome as the firmware answers it: the finding's code.
pub fn enforce(j: Judged) -> Result<()> {
    j.map_err(|f| f.code.unwrap_or(Error::FunctionFailed))
}

fn refuse(code: Error, what: String, hint: String, source: &str) -> Judged {
    Err(Box::new(Finding::error(code, what, hint, source)))
}

/// A personality, read from its file.
#[derive(Debug)]
pub struct Profile {
    /// The name in configurations (`aws-cloudhsm`).
    pub name: String,
    /// What it models.
    pub title: String,
    /// A paragraph on what it is and is not.
    pub about: String,
    /// FerroHSM's strict rules: keys always sensitive, never extractable in clear, wrap only
    /// under trusted keys, PKCS#11 v2.40's `CKM_AES_KEY_WRAP_PAD`.
    pub strict: bool,
    /// Whether the legacy mechanisms (DES, MD5 ...) are offered at all.
    pub legacy: bool,
    /// The pages the rules come from, by topic.
    pub sources: BTreeMap<String, String>,
    /// Behaviours the vendor does not document (FerroHSM keeps its own there).
    pub undocumented: Vec<String>,
    /// The PIN rule (`None`: FerroHSM's).
    pub pin: Option<PinRule>,
    /// Sessions one application may have open at once.
    pub max_sessions: Option<u64>,
    /// Key handles a token may hold (a key pair is two).
    pub max_key_handles: Option<u64>,
    limits_source: String,
    /// The code a read-only `C_OpenSession` gets, if refused.
    pub read_only_sessions: Option<Error>,
    sessions_source: String,
    /// Attribute defaults.
    pub defaults: Defaults,
    /// Functions the vendor does not offer (`CKR_FUNCTION_NOT_SUPPORTED`).
    pub unsupported: BTreeSet<String>,
    /// Functions the vendor does not offer through PKCS#11 but FerroHSM keeps, so that a
    /// rehearsal can be set up (token and PIN administration).
    pub admin: BTreeSet<String>,
    functions_source: String,
    rsa: Option<BitRange>,
    ec: Option<Vec<String>>,
    aes: Option<Vec<u64>>,
    des3: Option<Vec<u64>>,
    generic: Option<BitRange>,
    keys_source: String,
    /// The longest token label.
    pub label_max: Option<usize>,
    /// The mechanisms offered (`None`: every one FerroHSM has).
    pub mechanisms: Option<BTreeMap<CK_MECHANISM_TYPE, MechanismRule>>,
    /// The code `C_WrapKey` of a private key gets, where private keys may not be wrapped.
    wrap_private: Option<(Error, String)>,
}

fn parse_code(text: &str) -> std::result::Result<Error, String> {
    let code = crate::error::rv_from_name(text).ok_or_else(|| format!("unknown code {text}"))?;
    Ok(Error::from_rv(code))
}

impl Profile {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let pin = f
            .pin
            .map(|p| {
                let form = match p.form.as_str() {
                    "plain" => PinForm::Plain,
                    "user:password" => PinForm::UserPassword,
                    other => return Err(format!("pin.form: unknown form {other:?}")),
                };
                Ok(PinRule {
                    form,
                    min: p.min.unwrap_or(0),
                    max: p.max.unwrap_or(usize::MAX),
                    user_max: p.user_max,
                    source: p.source,
                })
            })
            .transpose()?;
        let mut mechanisms = None;
        if !f.mechanism.is_empty() {
            let mut map = BTreeMap::new();
            for m in f.mechanism {
                let mut flags = 0;
                for func in &m.functions {
                    if func == "any" {
                        flags |= FUNCTION_FLAGS;
                        continue;
                    }
                    let (_, flag) = FUNCTIONS
                        .iter()
                        .find(|(n, _)| n == func)
                        .ok_or_else(|| format!("mechanism: unknown function {func:?}"))?;
                    flags |= flag;
                }
                for name in &m.names {
                    let ty = names::parse_mechanism(name)
                        .ok_or_else(|| format!("mechanism: unknown name {name:?}"))?;
                    let rule = MechanismRule {
                        flags,
                        single_part: m.single_part,
                        max_data: m.max_data,
                        generated_iv: m.generated_iv,
                        source: m.source.clone(),
                    };
                    if map.insert(ty, rule).is_some() {
                        return Err(format!("mechanism {name} is listed twice"));
                    }
                }
            }
            mechanisms = Some(map);
        }
        let (max_sessions, max_key_handles, limits_source) = match f.limits {
            Some(l) => (l.sessions, l.key_handles, l.source),
            None => (None, None, String::new()),
        };
        let (read_only_sessions, sessions_source) = match f.sessions {
            Some(s) => (Some(parse_code(&s.read_only)?), s.source),
            None => (None, String::new()),
        };
        let defaults = f
            .defaults
            .map_or_else(Defaults::default, |d: DefaultsFile| Defaults {
                extractable: d.extractable,
                sensitive: d.sensitive,
                source: Some(Box::leak(d.source.into_boxed_str())),
            });
        let (unsupported, admin, functions_source) = match f.functions {
            Some(fs) => (
                fs.unsupported.into_iter().collect(),
                fs.admin.into_iter().collect(),
                fs.source,
            ),
            None => (BTreeSet::new(), BTreeSet::new(), String::new()),
        };
        let (rsa, ec, aes, des3, generic, keys_source) = match f.keys {
            Some(k) => {
                let range = |r: Option<RangeFile>| {
                    r.map(|r| BitRange {
                        min: r.min,
                        max: r.max,
                        step: r.step,
                    })
                };
                (
                    range(k.rsa),
                    k.ec,
                    k.aes,
                    k.des3,
                    range(k.generic),
                    k.source,
                )
            }
            None => (None, None, None, None, None, String::new()),
        };
        let wrap_private = match f.wrap {
            Some(w) if !w.private_keys => Some((parse_code(&w.code)?, w.source)),
            _ => None,
        };
        let (label_max, _) = f
            .token
            .map_or((None, String::new()), |t| (t.label_max, t.source));
        Ok(Self {
            name: f.name,
            title: f.title,
            about: f.about,
            strict: f.strict,
            legacy: f.legacy,
            sources: f.sources,
            undocumented: f.undocumented,
            pin,
            max_sessions,
            max_key_handles,
            limits_source,
            read_only_sessions,
            sessions_source,
            defaults,
            unsupported,
            admin,
            functions_source,
            rsa,
            ec,
            aes,
            des3,
            generic,
            keys_source,
            label_max,
            mechanisms,
            wrap_private,
        })
    }

    /// The profile of `p`.
    pub fn of(p: Personality) -> &'static Profile {
        static ALL: OnceLock<Vec<(Personality, Profile)>> = OnceLock::new();
        let all = ALL.get_or_init(|| {
            FILES
                .iter()
                .map(|(p, text)| {
                    // The files are part of the build; a test parses every one.
                    let profile = Profile::parse(text).unwrap_or_else(|e| {
                        panic!("personalities/{}.toml: {e}", p.name());
                    });
                    (*p, profile)
                })
                .collect()
        });
        all.iter()
            .find(|(q, _)| *q == p)
            .map(|(_, profile)| profile)
            .unwrap_or_else(|| unreachable!("every personality has a file"))
    }

    /// Every personality.
    pub fn all() -> impl Iterator<Item = &'static Profile> {
        FILES.iter().map(|(p, _)| Self::of(*p))
    }

    /// The personality named `name`, or an error listing the names.
    pub fn named(name: &str) -> Result<&'static Profile> {
        Personality::from_name(name)
            .map(Self::of)
            .ok_or_else(|| Error::Config(format!("unknown personality {name:?}; {}", known())))
    }

    // ---- mechanisms ---------------------------------------------------------------------

    /// Whether the mechanism `ty` is offered at all.
    pub fn offers(&self, ty: CK_MECHANISM_TYPE) -> bool {
        (self.legacy || !LEGACY.contains(&ty))
            && self.mechanisms.as_ref().is_none_or(|m| m.contains_key(&ty))
    }

    /// The rule of `ty`, where the personality lists mechanisms.
    pub fn mechanism(&self, ty: CK_MECHANISM_TYPE) -> Option<&MechanismRule> {
        self.mechanisms.as_ref().and_then(|m| m.get(&ty))
    }

    /// The `CKF_*` flags of FerroHSM's `flags` for `ty` this personality keeps.
    pub fn mechanism_flags(&self, ty: CK_MECHANISM_TYPE, flags: CK_FLAGS) -> CK_FLAGS {
        match self.mechanism(ty) {
            Some(rule) => flags & (!FUNCTION_FLAGS | rule.flags),
            None => flags,
        }
    }

    /// Whether `ty` may be used for the function `flag` (`CKR_MECHANISM_INVALID`).
    pub fn judge_mechanism(&self, ty: CK_MECHANISM_TYPE, flag: CK_FLAGS) -> Judged {
        let name = mech_name(ty);
        if !self.legacy && LEGACY.contains(&ty) {
            return refuse(
                Error::MechanismInvalid,
                format!("{} has no legacy mechanisms: no {name}", self.title),
                "use a current mechanism (AES instead of Triple DES, SHA-2 instead of MD5)".into(),
                "",
            );
        }
        let Some(map) = &self.mechanisms else {
            return Ok(());
        };
        match map.get(&ty) {
            None => refuse(
                Error::MechanismInvalid,
                format!("{} does not offer {name}", self.title),
                format!(
                    "use a mechanism {} lists ({})",
                    self.name,
                    alternatives(map, flag)
                ),
                self.sources.get("mechanisms").map_or("", String::as_str),
            ),
            Some(rule) if rule.flags & flag == 0 => refuse(
                Error::MechanismInvalid,
                format!(
                    "{} offers {name}, but not for {}",
                    self.title,
                    function_name(flag)
                ),
                format!(
                    "use a mechanism {} lists for {} ({})",
                    self.name,
                    function_name(flag),
                    alternatives(map, flag)
                ),
                &rule.source,
            ),
            Some(_) => Ok(()),
        }
    }

    /// Whether a multi-part call (`C_*Update`) may run with `ty`.
    pub fn judge_multi_part(&self, ty: CK_MECHANISM_TYPE) -> Judged {
        match self.mechanism(ty) {
            Some(rule) if rule.single_part => refuse(
                Error::MechanismInvalid,
                format!(
                    "{} runs {} in single-part calls only",
                    self.title,
                    mech_name(ty)
                ),
                "pass the whole input to one C_Encrypt/C_Decrypt/C_Sign/C_Verify call".into(),
                &rule.source,
            ),
            _ => Ok(()),
        }
    }

    /// Whether one call may carry `len` bytes of input for `ty`.
    pub fn judge_data_len(&self, ty: CK_MECHANISM_TYPE, len: usize, decrypt: bool) -> Judged {
        match self.mechanism(ty) {
            Some(rule) if rule.max_data.is_some_and(|max| len > max) => refuse(
                if decrypt {
                    Error::EncryptedDataLenRange
                } else {
                    Error::DataLenRange
                },
                format!(
                    "{} takes at most {} bytes per call with {} ({len} given)",
                    self.title,
                    rule.max_data.unwrap_or(0),
                    mech_name(ty)
                ),
                "split the data, or use a mechanism without this limit (e.g. CKM_AES_CBC_PAD)"
                    .into(),
                &rule.source,
            ),
            _ => Ok(()),
        }
    }

    /// Whether an encryption with `ty` may take the IV the application gives (`iv_zero`: the
    /// buffer is all zero bytes, the form in which the HSM is asked to generate one).
    pub fn judge_iv(&self, ty: CK_MECHANISM_TYPE, iv_zero: bool) -> Judged {
        match self.mechanism(ty) {
            Some(rule) if rule.generated_iv => refuse(
                Error::MechanismParamInvalid,
                if iv_zero {
                    format!(
                        "{} generates the IV of {} and writes it back into the parameters; \
                         FerroHSM cannot write it back through C_EncryptInit",
                        self.title,
                        mech_name(ty)
                    )
                } else {
                    format!(
                        "{} generates the IV of {} itself and refuses one given by the application",
                        self.title,
                        mech_name(ty)
                    )
                },
                "pass a zeroed IV buffer and read the IV the HSM generated back from \
                 CK_GCM_PARAMS.pIv, or use the message-based functions"
                    .into(),
                &rule.source,
            ),
            _ => Ok(()),
        }
    }

    // ---- keys ---------------------------------------------------------------------------

    /// Whether the personality has any key-size or curve rule (so that callers on a hot path,
    /// every `C_SignInit`, need not work out a key's shape when it has none).
    pub fn judges_keys(&self) -> bool {
        self.rsa.is_some()
            || self.ec.is_some()
            || self.aes.is_some()
            || self.des3.is_some()
            || self.generic.is_some()
    }

    /// Whether a key of this shape may be made or used (`CKR_KEY_SIZE_RANGE`,
    /// `CKR_CURVE_NOT_SUPPORTED`).
    pub fn judge_key(&self, shape: &KeyShape) -> Judged {
        let src = self.keys_source.as_str();
        let Some(kt) = shape.key_type else {
            return Ok(());
        };
        let set = |sizes: &Option<Vec<u64>>, what: &str| -> Judged {
            match (sizes, shape.bits) {
                (Some(sizes), Some(bits)) if !sizes.contains(&bits) => refuse(
                    Error::KeySizeRange,
                    format!(
                        "{} makes {what} keys of {} bits only ({bits} asked)",
                        self.title,
                        list(sizes)
                    ),
                    format!("use {what} keys of {} bits", list(sizes)),
                    src,
                ),
                _ => Ok(()),
            }
        };
        let range = |r: &Option<BitRange>, what: &str| -> Judged {
            match (r, shape.bits) {
                (Some(r), Some(bits)) if !r.holds(bits) => refuse(
                    Error::KeySizeRange,
                    format!(
                        "{} takes {what} keys of {} ({bits} bits here)",
                        self.title,
                        r.describe()
                    ),
                    format!("use {what} keys of {}", r.describe()),
                    src,
                ),
                _ => Ok(()),
            }
        };
        match kt {
            CKK_RSA => range(&self.rsa, "RSA"),
            CKK_AES => set(&self.aes, "AES"),
            CKK_DES3 | CKK_DES2 => set(&self.des3, "triple-DES"),
            CKK_GENERIC_SECRET => range(&self.generic, "generic secret"),
            CKK_EC | CKK_EC_EDWARDS | CKK_EC_MONTGOMERY => match (&self.ec, &shape.curve) {
                (Some(curves), Some(curve)) if !curves.iter().any(|c| c == curve) => refuse(
                    Error::CurveNotSupported,
                    format!(
                        "{} does not offer the curve {curve} (it offers {})",
                        self.title,
                        curves.join(", ")
                    ),
                    format!("use one of {}", curves.join(", ")),
                    src,
                ),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Whether a key of class `class` may be wrapped.
    pub fn judge_wrap(&self, class: CK_OBJECT_CLASS) -> Judged {
        match &self.wrap_private {
            Some((code, source)) if class == CKO_PRIVATE_KEY => refuse(
                code.clone(),
                format!("{} does not wrap private keys off the HSM", self.title),
                "keep the private key where it is and move its certificate, or make a new key \
                 pair on the target"
                    .into(),
                source,
            ),
            _ => Ok(()),
        }
    }

    // ---- sessions, functions, PINs ------------------------------------------------------

    /// Whether `C_OpenSession` with these flags is accepted.
    pub fn judge_open_session(&self, rw: bool) -> Judged {
        match &self.read_only_sessions {
            Some(code) if !rw => refuse(
                code.clone(),
                format!("{} refuses read-only sessions", self.title),
                "open sessions with CKF_SERIAL_SESSION | CKF_RW_SESSION".into(),
                &self.sessions_source,
            ),
            _ => Ok(()),
        }
    }

    /// Whether one more session may open, with `open` already open.
    pub fn judge_session_count(&self, open: u64) -> Judged {
        match self.max_sessions {
            Some(max) if open >= max => refuse(
                Error::SessionCount,
                format!("{} allows {max} sessions per application", self.title),
                "close sessions you no longer use, or share them between threads in turn".into(),
                &self.limits_source,
            ),
            _ => Ok(()),
        }
    }

    /// Whether a token holding `handles` key handles may take `more`.
    pub fn judge_key_handles(&self, handles: u64, more: u64) -> Judged {
        match self.max_key_handles {
            Some(max) if handles.saturating_add(more) > max => refuse(
                Error::DeviceMemory,
                format!(
                    "{} holds at most {max} key handles (a key pair takes two)",
                    self.title
                ),
                "destroy keys you no longer use, or keep fewer keys on the HSM (wrap them out)"
                    .into(),
                &self.limits_source,
            ),
            _ => Ok(()),
        }
    }

    /// Whether the function `c_name` is offered (`CKR_FUNCTION_NOT_SUPPORTED`). Token and
    /// PIN administration stay available so that a rehearsal can be set up.
    pub fn judge_function(&self, c_name: &str) -> Judged {
        if self.unsupported.contains(c_name) && !self.admin.contains(c_name) {
            return refuse(
                Error::FunctionNotSupported,
                format!("{} does not offer {c_name}", self.title),
                format!("do without {c_name} ({} lists its functions)", self.name),
                &self.functions_source,
            );
        }
        Ok(())
    }

    /// A warning for a function the vendor does not offer through PKCS#11 but FerroHSM keeps
    /// (token and PIN administration).
    pub fn admin_only(&self, c_name: &str) -> Option<Finding> {
        (self.unsupported.contains(c_name) && self.admin.contains(c_name)).then(|| Finding {
            code: None,
            warning: true,
            what: format!(
                "{} has no {c_name}: tokens and users are managed with the vendor's tools",
                self.title
            ),
            hint: "do this step with the vendor's administration tool, not the application".into(),
            source: self.functions_source.clone(),
        })
    }

    /// Whether `pin` has the form and length this personality's PINs have
    /// (`CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`).
    pub fn judge_pin(&self, pin: &[u8]) -> Judged {
        let Some(rule) = &self.pin else {
            return Ok(());
        };
        let password = match rule.form {
            PinForm::Plain => pin,
            PinForm::UserPassword => {
                let Some(at) = pin.iter().position(|b| *b == b':') else {
                    return refuse(
                        Error::PinInvalid,
                        format!("{} PINs are USER:PASSWORD", self.title),
                        "give the crypto user's name, a colon, and the password".into(),
                        &rule.source,
                    );
                };
                let (user, rest) = pin.split_at(at);
                let too_long = rule.user_max.is_some_and(|m| user.len() > m);
                if user.is_empty() || too_long {
                    return refuse(
                        Error::PinInvalid,
                        format!(
                            "{} user names are 1–{} characters",
                            self.title,
                            rule.user_max.unwrap_or(usize::MAX)
                        ),
                        "use a shorter crypto user name".into(),
                        &rule.source,
                    );
                }
                rest.get(1..).unwrap_or_default()
            }
        };
        if password.len() < rule.min || password.len() > rule.max {
            return refuse(
                Error::PinLenRange,
                format!(
                    "{} passwords are {}–{} characters",
                    self.title, rule.min, rule.max
                ),
                format!("use a password of {}–{} characters", rule.min, rule.max),
                &rule.source,
            );
        }
        Ok(())
    }

    /// The form a PIN is written in, as a trace records it (never the PIN).
    pub fn pin_form(pin: &[u8]) -> &'static str {
        if pin.is_empty() {
            "empty"
        } else if pin.contains(&b':') {
            "user:password"
        } else {
            "plain"
        }
    }

    /// The attribute defaults of a generated key of `class` (`CKO_SECRET_KEY`, or
    /// `CKO_PRIVATE_KEY` for a pair) that differ from `other`'s, as (attribute, ours, theirs).
    pub fn default_differences(
        &self,
        other: &Profile,
        class: CK_OBJECT_CLASS,
    ) -> Vec<(&'static str, bool, bool)> {
        let mine = self.effective_defaults(class);
        let theirs = other.effective_defaults(class);
        let mut out = Vec::new();
        if mine.0 != theirs.0 {
            out.push(("CKA_EXTRACTABLE", theirs.0, mine.0));
        }
        if mine.1 != theirs.1 {
            out.push(("CKA_SENSITIVE", theirs.1, mine.1));
        }
        out
    }

    /// (extractable, sensitive) of a generated key of `class` a template is silent about, as
    /// the firmware's `key_protection` gives them: a private key is sensitive unless the
    /// personality's defaults say otherwise.
    fn effective_defaults(&self, class: CK_OBJECT_CLASS) -> (bool, bool) {
        let extractable = self.defaults.extractable.unwrap_or(false);
        let sensitive = self.strict || self.defaults.sensitive.unwrap_or(class == CKO_PRIVATE_KEY);
        (extractable && !self.strict, sensitive)
    }

    /// What this personality does, where `from` does not, with what a key-making template
    /// (create, generate, unwrap, derive) says of a private or secret key: the strict
    /// personality keeps every such key sensitive whatever `CKA_SENSITIVE` says, and a
    /// sensitive key is private, so `CKA_PRIVATE=FALSE` is `CKR_TEMPLATE_INCONSISTENT`.
    pub fn template_differences(
        &self,
        from: &Profile,
        sensitive: Option<bool>,
        private: Option<bool>,
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        if !self.strict || from.strict {
            return out;
        }
        if private == Some(false) {
            out.push(Finding::error(
                Error::TemplateInconsistent,
                format!(
                    "{} keeps every key sensitive, and a sensitive key is private: CKA_PRIVATE=FALSE is refused",
                    self.title
                ),
                "leave CKA_PRIVATE out (or TRUE) and log in to use the key".into(),
                "",
            ));
        }
        if sensitive == Some(false) {
            out.push(Finding {
                code: None,
                warning: true,
                what: format!(
                    "{} makes the key sensitive although the template says CKA_SENSITIVE=FALSE: its value cannot be read",
                    self.title
                ),
                hint: "do not read key values; wrap the key under a trusted key instead".into(),
                source: String::new(),
            });
        }
        out
    }

    /// Where the attribute defaults come from.
    pub fn defaults_source(&self) -> &str {
        self.defaults.source.unwrap_or("")
    }
}

fn known() -> String {
    format!(
        "known: {}",
        Personality::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn mech_name(ty: CK_MECHANISM_TYPE) -> String {
    names::mechanism_name(ty).map_or_else(|| format!("mechanism {ty:#x}"), str::to_owned)
}

fn list(sizes: &[u64]) -> String {
    sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// A few mechanisms of `map` that serve `flag`, for a hint.
fn alternatives(map: &BTreeMap<CK_MECHANISM_TYPE, MechanismRule>, flag: CK_FLAGS) -> String {
    let names: Vec<String> = map
        .iter()
        .filter(|(_, r)| r.flags & flag != 0)
        .take(4)
        .map(|(ty, _)| mech_name(*ty))
        .collect();
    if names.is_empty() {
        "none for this function".into()
    } else {
        names.join(", ")
    }
}

/// Legacy mechanisms: listed and working by default for the workloads that still need them
/// (payment and older banking code, MD5-based signatures), absent from the strict
/// personality, which answers `CKR_MECHANISM_INVALID` for them. Triple DES has a 64-bit block
/// (SP 800-67 Rev. 2 limits a key to 2^20 blocks; NIST disallows it for encryption after
/// 2023); MD5 has practical collisions (RFC 6151). (`CKM_MD5_RSA_PKCS` is not implemented.)
pub const LEGACY: &[CK_MECHANISM_TYPE] = &[
    CKM_DES2_KEY_GEN,
    CKM_DES3_KEY_GEN,
    CKM_DES3_ECB,
    CKM_DES3_CBC,
    CKM_DES3_CBC_PAD,
    CKM_MD5,
    CKM_MD5_HMAC,
    CKM_MD5_HMAC_GENERAL,
];

/// The operation kind (`encrypt`, `sign` ...) and the `CKF_*` function flag of a function that
/// takes a mechanism (an `*Init`, a key generation, wrap, unwrap, derive), by its C name.
pub fn init_kind(function: &str) -> Option<(&'static str, CK_FLAGS)> {
    Some(match function {
        "C_EncryptInit" => ("encrypt", CKF_ENCRYPT),
        "C_DecryptInit" => ("decrypt", CKF_DECRYPT),
        "C_SignInit" => ("sign", CKF_SIGN),
        "C_VerifyInit" => ("verify", CKF_VERIFY),
        "C_DigestInit" => ("digest", CKF_DIGEST),
        "C_SignRecoverInit" => ("sign_recover", CKF_SIGN_RECOVER),
        "C_VerifyRecoverInit" => ("verify_recover", CKF_VERIFY_RECOVER),
        "C_MessageEncryptInit" => ("message_encrypt", CKF_MESSAGE_ENCRYPT),
        "C_MessageDecryptInit" => ("message_decrypt", CKF_MESSAGE_DECRYPT),
        "C_MessageSignInit" => ("message_sign", CKF_MESSAGE_SIGN),
        "C_MessageVerifyInit" => ("message_verify", CKF_MESSAGE_VERIFY),
        "C_GenerateKey" => ("generate", CKF_GENERATE),
        "C_GenerateKeyPair" => ("generate", CKF_GENERATE_KEY_PAIR),
        "C_WrapKey" => ("wrap", CKF_WRAP),
        "C_UnwrapKey" => ("unwrap", CKF_UNWRAP),
        "C_DeriveKey" => ("derive", CKF_DERIVE),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_knows_what_the_strict_personality_refuses() {
        let strict = Profile::of(Personality::Strict);
        let default = Profile::of(Personality::Default);
        // Legacy mechanisms: not offered, and judged so (the firmware asks `offers`).
        assert!(!strict.offers(CKM_MD5) && default.offers(CKM_MD5));
        let f = strict.judge_mechanism(CKM_MD5, CKF_DIGEST).unwrap_err();
        assert_eq!(f.code, Some(Error::MechanismInvalid));
        assert!(default.judge_mechanism(CKM_MD5, CKF_DIGEST).is_ok());
        // A key-making template: CKA_PRIVATE=FALSE refused, CKA_SENSITIVE=FALSE overridden.
        let found = strict.template_differences(default, Some(false), Some(false));
        let codes: Vec<Option<Error>> = found.iter().map(|f| f.code.clone()).collect();
        assert_eq!(codes, [Some(Error::TemplateInconsistent), None]);
        assert!(
            strict
                .template_differences(strict, Some(false), Some(false))
                .is_empty()
        );
        assert!(
            default
                .template_differences(strict, Some(false), Some(false))
                .is_empty()
        );
    }

    #[test]
    fn private_key_defaults_differ_where_the_firmware_makes_them_differ() {
        let softhsm = Profile::of(Personality::Softhsm);
        let default = Profile::of(Personality::Default);
        // FerroHSM makes a private key sensitive by default, SoftHSM does not.
        assert_eq!(
            softhsm.default_differences(default, CKO_PRIVATE_KEY),
            [("CKA_SENSITIVE", true, false)]
        );
        assert!(
            softhsm
                .default_differences(default, CKO_SECRET_KEY)
                .is_empty()
        );
    }

    #[test]
    fn every_file_parses_and_names_itself() {
        for p in Personality::ALL {
            let profile = Profile::of(*p);
            assert_eq!(profile.name, p.name());
            assert!(!profile.title.is_empty());
        }
    }

    #[test]
    fn aws_cloudhsm_rules() {
        let aws = Profile::of(Personality::AwsCloudhsm);
        assert!(aws.judge_mechanism(CKM_SHA256_RSA_PKCS, CKF_SIGN).is_ok());
        let f = aws
            .judge_mechanism(CKM_SHA3_256, CKF_DIGEST)
            .expect_err("SHA-3 is not offered");
        assert_eq!(f.code, Some(Error::MechanismInvalid));
        assert!(aws.judge_multi_part(CKM_AES_GCM).is_err());
        assert!(aws.judge_multi_part(CKM_AES_CBC_PAD).is_ok());
        let rsa = |bits| KeyShape {
            key_type: Some(CKK_RSA),
            bits: Some(bits),
            curve: None,
        };
        assert!(aws.judge_key(&rsa(2048)).is_ok());
        assert!(aws.judge_key(&rsa(2304)).is_ok());
        assert_eq!(
            aws.judge_key(&rsa(1024)).unwrap_err().code,
            Some(Error::KeySizeRange)
        );
        assert_eq!(
            aws.judge_key(&rsa(2100)).unwrap_err().code,
            Some(Error::KeySizeRange)
        );
        assert_eq!(
            aws.judge_open_session(false).unwrap_err().code,
            Some(Error::FunctionFailed)
        );
        assert!(aws.judge_pin(b"cu1:password1").is_ok());
        assert_eq!(
            aws.judge_pin(b"password1").unwrap_err().code,
            Some(Error::PinInvalid)
        );
        assert_eq!(
            aws.judge_pin(b"cu1:short").unwrap_err().code,
            Some(Error::PinLenRange)
        );
        assert!(aws.judge_function("C_CopyObject").is_err());
        assert!(aws.judge_function("C_InitToken").is_ok());
        assert!(aws.admin_only("C_InitToken").is_some());
    }

    #[test]
    fn absurd_lengths_do_not_overflow() {
        // Found by the `template` fuzz target: CKA_VALUE_LEN near 2^64 on a key generation.
        let s = KeyShape::generated(CKM_AES_KEY_GEN, None, Some(u64::MAX / 2), None);
        assert_eq!(s.bits, Some(u64::MAX));
        let aws = Profile::of(Personality::AwsCloudhsm);
        assert_eq!(
            aws.judge_key(&s).unwrap_err().code,
            Some(Error::KeySizeRange)
        );
        assert!(Profile::of(Personality::Default).judge_key(&s).is_ok());
    }

    #[test]
    fn default_offers_everything() {
        let d = Profile::of(Personality::Default);
        assert!(d.offers(CKM_SHA3_256));
        assert!(d.judge_mechanism(CKM_SHA3_256, CKF_DIGEST).is_ok());
        assert!(d.judge_open_session(false).is_ok());
        assert!(d.judge_pin(b"1").is_ok());
    }

    #[test]
    fn curves_by_oid_and_name() {
        assert_eq!(
            curve_name(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]).as_deref(),
            Some("P-256")
        );
        let mut ed = vec![0x13, 12];
        ed.extend_from_slice(b"edwards25519");
        assert_eq!(curve_name(&ed).as_deref(), Some("Ed25519"));
        assert_eq!(curve_name(b"junk"), None);
    }
}
