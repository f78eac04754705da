//! The C ABI: every exported `C_*` function, grouped by the specification's function groups,
//! and the helpers they all use.

// Parameter names are the specification's (`hSession`, `pulSignatureLen`), so they can be
// grepped against it.
#![allow(non_snake_case)]
// The entry points are reached by symbol name, not by Rust path.
#![allow(unreachable_pub)]

mod entry;
mod mechanism;
mod ptr;
mod state;
mod template;
