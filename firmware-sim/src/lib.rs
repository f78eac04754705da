#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The firmware's internal API is wider than its users so far (families land separately).
#![allow(dead_code)]
// `CK_ULONG` is `u64` here but `u32` on Windows: the `u64::from` calls are needed there.
#![allow(clippy::useless_conversion)]

mod crypto;
mod device;
pub mod domain;
mod mechanism;
mod object;
mod session;
pub mod softhsm;
mod storage;
mod token;

pub use device::{Device, Placed, StagedToken};
pub use storage::TenantSeal;

/// A cluster of nodes sharing their tokens through etcd (`docs/architecture.md` §6).
pub mod cluster {
    pub use crate::storage::{
        Cluster, Created, MemberState, NodeState, Status, TokenState, nodes, status,
    };
}

/// Entry points for the fuzz targets (`fuzz/`): never built into the shipped module.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::domain::backup;
    use crate::storage::codec;

    /// A backup file's header parser and (as if authentication had passed) its payload
    /// decoder, on arbitrary bytes: a value or an error, never a panic.
    pub fn backup(data: &[u8]) {
        let _ = backup::Header::parse(data);
        let _ = backup::decode_payload(data);
    }

    /// Decodes `data` as a stored object record; whatever decodes must re-encode to the same
    /// bytes (the codec is canonical), and the sealed part's plaintext format (an attribute
    /// list) must decode or fail without panicking.
    pub fn store_record(data: &[u8]) {
        if let Ok((rec, public)) = codec::decode_record(data) {
            let again = codec::encode_public(rec.public.iter().map(|a| (a.ty, &a.value)));
            assert_eq!(again, public, "public part re-encodes differently");
            assert_eq!(codec::encode_record(&again, &rec.sealed), data);
        }
        if let Ok(attrs) = codec::decode_attr_list(data) {
            let mut out = Vec::new();
            codec::encode_attrs(attrs.iter().map(|a| (a.ty, &a.value)), &mut out);
            assert_eq!(out, data, "attribute list re-encodes differently");
        }
    }
}
