//! The remote protocol: the `Backend` trait spoken over a Unix stream socket (design.md §2).
//!
//! - [`proto`]: frames, the hello exchange, one [`Request`] variant per `Backend` method, the
//!   [`Response`] (a [`Reply`] or the `CK_RV`).
//! - [`wire`]: the strict binary codec underneath.
//! - [`RemoteBackend`]: the client, a `Backend` the module mounts for `kind = "remote"`.
//! - [`Server`] / [`serve`]: serves any `Backend` (the simulated firmware, or a loaded real
//!   HSM) to the clients of a socket; `ferrohsm serve` runs it.
//!
//! Everything is blocking `std` I/O: the module starts no runtime and no thread for it.

mod client;
pub mod proto;
mod server;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{DEFAULT_TIMEOUT, RemoteBackend};
pub use proto::{MAX_FRAME, Reply, Request, Response, VERSION};
pub use server::{
    BackendFactory, Limits, Server, bind, bind_with_mode, descriptor_limit, open_descriptors,
    respond, serve,
};
