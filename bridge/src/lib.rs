#![doc = include_str!("../README.md")]

pub mod audit;
pub mod bytes;
pub mod call;
pub mod config;
pub mod error;
#[cfg(feature = "loaded")]
pub mod loaded;
pub mod names;
pub mod output;
pub mod overlay;
pub mod pem;
pub mod personality;
pub mod protection;
pub mod remote;
pub mod router;
pub mod tenant;
pub mod trace;
pub mod types;

pub use call::{Backend, BackendExt, Call, Reply, Request};
pub use error::{Error, Result, rv_name};
pub use router::{Mount, Router, SlotSelect};
pub use types::*;
