//! The router: a registry of connected workers and the dispatch of one job to one of them.
//!
//! Selection (see [`registry`]): workers serving the model that are connected, available,
//! under their slot count, within the client's price cap and not circuit-broken; then
//! power-of-two-choices on (running jobs + 1) x time-to-first-token EWMA, price breaking ties.
//!
//! Dispatch (see [`dispatch`]): a job goes to the chosen worker; until its first event arrives
//! nothing has reached the client, so a failure, refusal or timeout there is retried on another
//! worker. After the first event the job is pinned: a later failure ends the stream with an error.
//! Dropping the [`JobStream`] before its end cancels the job at the worker.

pub mod attest;
mod circuit;
pub mod config;
mod dispatch;
mod queue;
mod receipts;
pub mod fleet;
pub mod identities;
pub mod net;
mod registry;
mod session;

pub use attest::{
    publish_metrics, spawn_collateral_refresher, AdmitError, Attestor, PolicyOrigin, RedisCollateralShare,
};
pub use config::RouterConfig;
pub use session::{LinkError, PreAuth};
pub use dispatch::{DispatchOptions, JobStream, RouteError, Ticket};
pub use receipts::ReceiptCheck;
pub use registry::{Router, WorkerSession, WorkerSnapshot};
