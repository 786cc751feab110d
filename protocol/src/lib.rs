//! Wire types shared by every Cocoon-rs role.
//!
//! * [`job`]: messages between the router and a worker-agent (jobs, cancels, streamed events, load).
//! * [`openai`]: the OpenAI-compatible API surface: error body, usage, and documentation-only
//!   schemas for the OpenAPI spec. Request bodies travel as raw JSON so that every field a client
//!   sends reaches the engine unchanged; only the fields the network itself needs are read.

pub mod job;
pub mod openai;
pub mod wire;

pub use job::{
    Capability, E2eRoute, Endpoint, Job, JobEnvelope, JobError, JobEvent, Load, ModelInfo, Needs, Payload, RouterToWorker, WorkerInfo, JOB_EVENT_WINDOW,
    WorkerToRouter,
};
pub use openai::{ErrorBody, ErrorObject, Usage};
