//! The remote protocol: the call vocabulary (`crate::call`) spoken over a Unix stream socket,
//! or over TCP inside TLS 1.3 with mutual authentication (`docs/architecture.md` §8).
//!
//! - [`proto`]: frames, the hello exchange, the [`Response`] (a [`Reply`] or the `CK_RV`);
//!   requests are [`crate::Call`]s, encoded and decoded by the call table; from version 3,
//!   daemon requests ([`DaemonRequest`]: a tenant's usage log for its auditor), answered by
//!   the daemon itself ([`Server::daemon_requests`]), never by a backend.
//! - [`wire`]: the strict binary codec underneath.
//! - [`tls`]: the network transport (rustls): configurations, peer identities, endpoints.
//! - [`RemoteBackend`]: the client, a `Backend` the module mounts for `kind = "remote"`.
//! - [`Server`] / [`serve`]: serves any `Backend` (the simulated firmware, or a loaded real
//!   HSM) to the clients of a socket; `ferrohsm serve` runs it.
//!
//! Everything is blocking `std` I/O: the module starts no runtime and no thread for it.

mod client;
pub mod proto;
mod server;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod app_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

pub use crate::call::{Reply, Request};
pub use client::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS, DEFAULT_TIMEOUT, LogReadError, RemoteBackend,
};
pub use proto::{
    AUDIT_PAGE, AppKey, DAEMON_VERSION, DaemonReply, DaemonRequest, MAX_FRAME, MIN_VERSION,
    MODULE_VERSION, Response, VERSION,
};
pub use server::{
    BackendFactory, DaemonHandler, Identity, JoinCheck, Limits, Listener, Server, bind,
    bind_socket, bind_tcp, bind_with_mode, descriptor_limit, open_descriptors, respond, serve,
};
