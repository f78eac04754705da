#![doc = include_str!("../README.md")]

// The one module where `unsafe` is allowed (style.md §3.3): the C ABI boundary.
#[allow(unsafe_code)]
mod abi;
/// The composition root, shared with the KSP and the CLI (crate `ferrohsm-wiring`).
pub use ferrohsm_wiring as wiring;
use ferrohsm_wiring::logger;

/// Entry points for the fuzz targets (`fuzz/`): never built into the shipped module.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use abi::fuzzing;
