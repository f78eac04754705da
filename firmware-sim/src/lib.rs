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
mod storage;
mod token;

pub use device::Device;
