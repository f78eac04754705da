#![doc = include_str!("../README.md")]

// The one module where `unsafe` is allowed (style.md §3.3): the C ABI boundary.
#[allow(unsafe_code)]
mod abi;
mod logger;
pub mod wiring;

/// Entry points for the fuzz targets (`fuzz/`): never built into the shipped module.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use abi::fuzzing;
