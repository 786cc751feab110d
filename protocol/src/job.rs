//! Router <-> worker-agent messages. Transport-agnostic: carried over an in-process channel in
//! the embedded network, and over the worker's outbound connection when it runs elsewhere.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::openai::Usage;

/// Which OpenAI endpoint a job targets on the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// OpenAI's Responses API. The worker translates it to and from chat completions inside
    /// the TEE (worker-agent `responses`), so the engine needs only chat completions.
    Responses,
}

impl Endpoint {
    /// The API path, relative to the base URL: the engine's, except for
    /// [`Endpoint::Responses`], which the worker serves from the engine's chat completions.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }
}

/// One inference request, as the worker must run it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The request body exactly as the engine must receive it (JSON), or for an
    /// end-to-end sealed request the client's HPKE ciphertext.
    pub body: Bytes,
    /// Set for an end-to-end sealed request (docs/e2e.md): its clear facts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2eRoute>,
}

/// The clear facts of an end-to-end sealed request (`cocoon-e2e/1`, docs/e2e.md) besides
/// model, endpoint and stream: the client bound all of them into the seal, so the worker
/// opens the body only if they are exactly what the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2eRoute {
    /// The client's id for the request (in its receipt).
    pub request_id: Uuid,
    pub max_prompt_tokens: u64,
    pub max_output_tokens: u64,
    /// The worker the client sealed the body for.
    pub worker_id: String,
    /// That worker's HPKE key (32 bytes).
    pub worker_key: Bytes,
    /// The HPKE encapsulated key (32 bytes).
    pub enc: Bytes,
    /// Pad every response frame to a multiple of this many bytes (0: no padding). A sealed
    /// fact: the body opens only with the value the client chose.
    #[serde(default)]
    pub pad_to: u32,
}

/// How a job's body travels to the worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// Sealed with keys exported (per job: random salt, job id, model) from the link's HPKE
    /// context to the worker's attested key, set up once per link by
    /// `RouterToWorker::Session`. The only form a production router sends.
    LinkSealed { salt: Bytes, ciphertext: Bytes },
    /// In clear, for measuring what sealing itself costs (`attestation.seal_jobs = false`,
    /// which production config refuses).
    Plain { body: Bytes },
}

/// A job as sent to a worker: routing facts in clear, the body as a [`Payload`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub id: Uuid,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub payload: Payload,
    /// An end-to-end sealed request's facts; the payload then holds the client's
    /// ciphertext (itself sealed again on the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2eRoute>,
}

/// Events a worker may send for one job before the router grants more with
/// [`RouterToWorker::Credit`]. The terminal event is always allowed (it ends the window).
pub const JOB_EVENT_WINDOW: u32 = 256;

/// What a worker reports back for a job, in order. A job ends with exactly one of
/// `Response`, `Done` or `Failed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// Non-streaming: the engine's whole answer.
    Response {
        body: Bytes,
        usage: Option<Usage>,
    },
    /// Streaming: one SSE `data:` payload (a JSON chunk, without the `data: ` framing).
    Chunk { data: Bytes },
    /// Streaming finished normally (the engine sent `[DONE]`).
    Done { usage: Option<Usage> },
    /// The job failed. `usage` holds what was produced before the failure, for billing.
    Failed {
        error: JobError,
        usage: Option<Usage>,
    },
    /// Just before the terminal event: the worker's signed receipt for the job (JSON of
    /// `attestation::receipt::SignedReceipt`), covering the usage the terminal event reports.
    Receipt { receipt: Bytes },
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, JobEvent::Chunk { .. } | JobEvent::Receipt { .. })
    }
}

/// Why a job failed, with enough to answer the client and decide on a retry.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// HTTP status to show the client.
    pub status: u16,
    pub message: String,
    /// Whether another worker may succeed where this one failed (never used after the first token).
    pub retryable: bool,
    /// The engine's own error body (OpenAI-shaped JSON), relayed as-is when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Bytes>,
}

impl JobError {
    pub fn new(status: u16, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            status,
            message: message.into(),
            retryable,
            body: None,
        }
    }
}

/// A model a worker serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    /// Unix seconds the engine reports for it (0 if unknown).
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    /// SHA-256 (hex) of the weights the worker serves under this id (of the file, or of a
    /// directory's manifest), measured by the worker and committed to by its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Context length in tokens (prompt + completion), where the engine reports it (vLLM's
    /// `max_model_len` in `/v1/models`, llama-server's per-request context): a request longer
    /// than this cannot be served by this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// Whether requests with `tools` (`tool_choice` "auto") can be served: `Some(false)` for a
    /// vLLM engine started without a tool-call parser (it answers 400 to them); `None` where
    /// the worker does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<bool>,
    /// Whether structured output is honoured (`response_format` / `text.format` with a
    /// `json_schema`); `None` where the worker does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<bool>,
    /// Whether `logprobs` / `top_logprobs` are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Whether more than one choice per request (`n` > 1, `best_of`) is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiple_choices: Option<bool>,
}

/// A capability a request may need of the engine that serves it ([`ModelInfo`]'s flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    ToolCalls,
    JsonSchema,
    Logprobs,
    MultipleChoices,
}

impl Capability {
    pub const ALL: [Capability; 4] = [Capability::ToolCalls, Capability::JsonSchema, Capability::Logprobs, Capability::MultipleChoices];

    /// What `m` reports about this capability (`None`: unknown).
    pub fn of(self, m: &ModelInfo) -> Option<bool> {
        match self {
            Capability::ToolCalls => m.tool_calls,
            Capability::JsonSchema => m.json_schema,
            Capability::Logprobs => m.logprobs,
            Capability::MultipleChoices => m.multiple_choices,
        }
    }
}

/// The capabilities one request needs: a worker that reports one of them as absent is not
/// sent the request (unknown counts as able: the engine answers for itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs(u8);

impl Needs {
    pub fn with(self, c: Capability) -> Needs {
        Needs(self.0 | Self::bit(c))
    }

    pub fn contains(self, c: Capability) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn bit(c: Capability) -> u8 {
        1 << (c as u8)
    }

    /// Whether a worker serving `m` can take the request.
    pub fn met_by(self, m: &ModelInfo) -> bool {
        Capability::ALL.iter().all(|&c| !self.contains(c) || c.of(m) != Some(false))
    }
}

/// A worker's self-description at registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub models: Vec<ModelInfo>,
    /// e.g. "H100-80GB", "cpu".
    pub gpu: String,
    /// Concurrent jobs the worker accepts.
    pub slots: u32,
    /// Worker's price multiplier in thousandths (1000 = 1.0x).
    pub price_coefficient: u32,
    /// The worker's attestation (JSON of `attestation::WorkerAttestation`) answering the
    /// router's `Challenge`: TEE evidence binding its HPKE key, its TLS key and the nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Bytes>,
}

/// Load report sent with heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Jobs the worker runs (from every router link).
    pub running: u32,
    /// Requests waiting in the engine's own queue, where it reports them.
    pub queued: u32,
    /// Whether the engine is healthy and the worker takes new jobs.
    pub available: bool,
    /// Engine slots busy / total (llama-server), where reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_slots_busy: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_slots_total: Option<u32>,
    /// KV-cache use in thousandths (vLLM), where reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_permille: Option<u16>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RouterToWorker {
    /// The router's first message on a connection: attest to this 32-byte nonce in `Hello`.
    Challenge { nonce: Bytes },
    /// After admission: the encapsulated key of the link's HPKE context (to the worker's
    /// attested key); `Payload::LinkSealed` jobs on this link are sealed under it.
    Session { enc: Bytes },
    Job(JobEnvelope),
    /// Stop generating: the client went away or the job was given up.
    Cancel { job_id: Uuid },
    /// Flow control: the worker may send `events` more events of this job. Each job starts
    /// with [`JOB_EVENT_WINDOW`]; the router grants more as its client consumes them, so a
    /// client that stops reading stops its own job's engine stream (and only that one)
    /// instead of growing memory anywhere on the path.
    Credit { job_id: Uuid, events: u32 },
    /// Fresh evidence bound to a client's nonce (`GET /v1/attestation/report`); answered by
    /// `WorkerToRouter::Attestation` with the same `request_id`.
    Attest { request_id: u64, nonce: Bytes },
    /// The router will not admit this worker (e.g. its attestation failed); the connection
    /// closes after this message. The reason names the failed rule.
    Refused { reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerToRouter {
    Hello(WorkerInfo),
    Load(Load),
    /// A job event in clear (only for jobs that came as `Payload::Plain`).
    Event { job_id: Uuid, event: JobEvent },
    /// A job event (MessagePack of [`JobEvent`]) sealed with keys exported from the job's
    /// HPKE context; `seq` counts from 0 and `last` marks the terminal event, so dropped,
    /// reordered, replayed and truncated streams are detected.
    SealedEvent {
        job_id: Uuid,
        seq: u64,
        last: bool,
        ciphertext: Bytes,
    },
    /// Answer to `RouterToWorker::Attest`: the attestation JSON, or why none could be made.
    Attestation {
        request_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attestation: Option<Bytes>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json() {
        let ev = WorkerToRouter::Event {
            job_id: Uuid::nil(),
            event: JobEvent::Chunk {
                data: Bytes::from_static(b"{\"a\":1}"),
            },
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert!(s.contains("\"type\":\"event\""), "{s}");
        let back: WorkerToRouter = serde_json::from_str(&s).unwrap();
        match back {
            WorkerToRouter::Event {
                event: JobEvent::Chunk { data },
                ..
            } => assert_eq!(&data[..], b"{\"a\":1}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_chunks_are_not_terminal() {
        assert!(!JobEvent::Chunk { data: Bytes::new() }.is_terminal());
        assert!(JobEvent::Done { usage: None }.is_terminal());
    }
}

#[cfg(test)]
mod needs_tests {
    use super::*;

    #[test]
    fn needs_are_met_unless_a_capability_is_reported_missing() {
        let n = Needs::default().with(Capability::JsonSchema).with(Capability::MultipleChoices);
        assert!(n.contains(Capability::JsonSchema) && !n.contains(Capability::Logprobs));
        let unknown = ModelInfo::default();
        assert!(n.met_by(&unknown), "unknown counts as able");
        let lacking = ModelInfo { multiple_choices: Some(false), ..ModelInfo::default() };
        assert!(!n.met_by(&lacking));
        assert!(Needs::default().met_by(&lacking));
        let able = ModelInfo { json_schema: Some(true), multiple_choices: Some(true), ..ModelInfo::default() };
        assert!(n.met_by(&able));
    }
}
