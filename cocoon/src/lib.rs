//! Wiring of the Cocoon-rs crates into runnable roles. The binary in `main.rs` is a thin CLI
//! over this; end-to-end tests start the same [`dev::DevNetwork`] in-process.

pub mod attest;
pub mod client_proxy;
pub mod config;
pub mod dev;
pub mod engine;
pub mod link;
pub mod metering;
pub mod registry;
pub mod roles;
pub mod routing;
pub mod settlement;
pub mod verify;

pub use config::Config;
