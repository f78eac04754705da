#![doc = include_str!("../README.md")]

// The one module where `unsafe` is allowed: the C ABI boundary.
#[allow(unsafe_code)]
mod abi;
pub mod blob;
mod error;
mod handles;
mod provider;
pub mod types;
#[cfg(windows)]
#[allow(unsafe_code)]
mod windows;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("ferrohsm-ksp encodes handles in 64 bits: build it for a 64-bit target");

pub use abi::GetKeyStorageInterface;
pub use error::Status;
pub use provider::{PIN_ENV, PROVIDER_NAME, TOKEN_ENV};
