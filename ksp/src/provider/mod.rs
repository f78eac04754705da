//! The provider's behaviour: CNG calls translated onto the `Backend` trait, the same firmware
//! (or daemon, or real HSM) the PKCS#11 module serves, chosen by the same configuration.
//!
//! No raw pointers are read here: `abi` decodes them into owned values first. The buffers the
//! provider hands out are built here as plain memory (`Vec<u64>`, so 8-byte aligned) and kept
//! in a registry until `FreeBuffer` returns them.
//!
//! Where each family of calls lives:
//! - `session.rs`: the provider itself: the backend from the configuration, the token, the
//!   session and the user login (`OpenProvider`, `FreeProvider`), the unsupported entry points;
//! - `state.rs`: the handles the provider issues (providers, keys, secrets, buffers) and their
//!   lookups; `firmware.rs`: the object and attribute calls every family makes on the firmware;
//! - `alg.rs`: the algorithm and hash names CNG uses, and what each maps to in PKCS#11;
//! - `keys.rs`: key handles and names: `OpenKey`, `CreatePersistedKey`, `FinalizeKey`
//!   (generation), `DeleteKey`, `FreeKey`, and what a pair of firmware objects is as a key;
//! - `properties.rs`: `Get`/`SetProviderProperty`, `Get`/`SetKeyProperty`, `IsAlgSupported`,
//!   and the byte encodings of the values CNG passes (UTF-16 strings, DWORDs, parameter lists);
//! - `public.rs`: a key's public material and the EC point encodings;
//! - `export.rs` and `import.rs`: `ExportKey` and `ImportKey` (CNG blobs, PKCS#8, BYOK);
//! - `sign.rs`: `SignHash` and `VerifySignature`; `crypt.rs`: `Encrypt` and `Decrypt`;
//! - `agreement.rs`: `SecretAgreement`, `DeriveKey`, `FreeSecret` (ECDH);
//! - `enumerate.rs`: `EnumAlgorithms`, `EnumKeys` and the memory they hand out (`FreeBuffer`).

mod agreement;
mod alg;
mod crypt;
mod enumerate;
mod export;
mod firmware;
mod import;
mod keys;
mod properties;
mod public;
mod session;
mod sign;
mod state;

use zeroize::Zeroizing;

pub(crate) use agreement::{derive_key, free_secret, secret_agreement};
pub(crate) use crypt::{Direction, crypt};
pub(crate) use enumerate::{enum_algorithms, enum_keys, free_buffer};
pub(crate) use export::export_key;
pub(crate) use import::import_key;
pub(crate) use keys::{create_persisted_key, delete_key, finalize_key, free_key, open_key};
pub(crate) use properties::{
    get_key_property, get_provider_property, is_alg_supported, set_key_property,
    set_provider_property,
};
pub use session::{PIN_ENV, PROVIDER_NAME, TOKEN_ENV};
pub(crate) use session::{free_provider, open_provider, unsupported};
pub(crate) use sign::{sign_hash, verify_signature};

/// The output of a call that writes bytes: the size a probe asked for, or the bytes.
pub(crate) enum Out {
    /// Only the size (the caller passed no output buffer).
    Size(usize),
    /// The bytes.
    Data(Zeroizing<Vec<u8>>),
}

/// A padding request, decoded from `dwFlags` and `pPaddingInfo`.
#[derive(Debug)]
pub(crate) enum Padding {
    /// No padding (ECDSA, or `BCRYPT_PAD_NONE`).
    None,
    /// PKCS#1 v1.5; for signatures, the hash whose DigestInfo to prepend (`None`: raw).
    Pkcs1(Option<String>),
    /// PSS: hash and salt length.
    Pss(String, u32),
    /// OAEP: hash and label.
    Oaep(String, Vec<u8>),
}
