#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod crypto;
mod device;
mod mechanism;
mod object;
mod session;
mod storage;
mod token;

pub use device::Device;
