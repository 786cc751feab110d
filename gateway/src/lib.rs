//! The OpenAI-compatible HTTP edge of Cocoon-rs.
//!
//! A request is authenticated ([`auth`]), validated without re-serialising its body
//! ([`validate`]), rate-limited per key ([`ratelimit`]), admitted under the in-flight limit,
//! dispatched through the [`router`] to a worker, and relayed back ([`relay`] for SSE).
//! Every error leaves as `{"error": {message, type, param, code}}` ([`error`]).

pub mod account;
pub mod app;
pub mod attest;
pub mod auth;
pub mod billing;
pub mod config;
pub mod e2e;
pub mod dashboard;
pub mod error;
pub mod handlers;
pub(crate) mod inference;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod state;
pub mod stored;
pub mod validate;
pub mod validate_responses;
pub mod responses;

pub use config::GatewayConfig;
pub use error::ApiError;
pub use state::AppState;
