//! The C ABI: every exported `C_*` function, grouped by the specification's function groups,
//! and the helpers they all use.
//!
//! Every entry point has the same shape: `guard(name, || { ... })`, which refuses work after a
//! caught panic, catches panics and maps `bridge::Error` to `CK_RV`; inside it, pointers are
//! decoded into owned or borrowed Rust values with the helpers of [`ptr`], [`template`] and
//! [`mechanism`], and the call goes to the router returned by [`router`].
//!
//! Each entry point's documentation cites the PKCS #11 v3.2 specification by section and
//! function name (the section headings of the OASIS document, e.g. "Signing and MACing
//! functions, C_Sign"), and quotes it where a line of code implements a specific rule.

// Parameter names are the specification's (`hSession`, `pulSignatureLen`), so they can be
// grepped against it.
#![allow(non_snake_case)]
// The entry points are reached by symbol name, not by Rust path.
#![allow(unreachable_pub)]

mod entry;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod interface;
mod mechanism;
mod ptr;
mod state;
mod template;

mod decrypt;
mod digest;
mod dual;
mod encrypt;
mod general;
mod key_mgmt;
mod message;
mod object;
mod parallel;
mod random;
mod session;
mod sign;
mod slot_token;
mod verify;

use state::router;
