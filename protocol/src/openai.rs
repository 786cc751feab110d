//! OpenAI API shapes the network itself reads or writes. Request and response bodies are
//! otherwise relayed as raw JSON; the `*Doc` types below exist to document them in the
//! generated OpenAPI spec and are never used to (re)serialize traffic.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {...}}`, the only error shape any Cocoon-rs endpoint returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Always present (null when no single parameter is at fault), as OpenAI sends it.
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Token usage as engines report it. Optional detail fields default to zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details.map_or(0, |d| d.reasoning_tokens)
    }
}

/// A chat message (documentation only).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ChatMessageDoc {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or an array of content parts; null for assistant tool calls.
    #[schema(value_type = Object, nullable)]
    pub content: Option<serde_json::Value>,
    pub name: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    pub tool_call_id: Option<String>,
}

/// `POST /v1/chat/completions` body. Every field OpenAI defines is accepted and forwarded to
/// the engine unchanged, as is any field not listed here.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequestDoc {
    pub model: String,
    pub messages: Vec<ChatMessageDoc>,
    pub stream: Option<bool>,
    #[schema(value_type = Object)]
    pub stream_options: Option<serde_json::Value>,
    /// 1..=128
    pub n: Option<u32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// 0..=2
    pub temperature: Option<f64>,
    /// 0..=1
    pub top_p: Option<f64>,
    pub logprobs: Option<bool>,
    /// 0..=20
    pub top_logprobs: Option<u32>,
    #[schema(value_type = Object)]
    pub stop: Option<serde_json::Value>,
    pub seed: Option<i64>,
    #[schema(value_type = Vec<Object>)]
    pub tools: Option<Vec<serde_json::Value>>,
    #[schema(value_type = Object)]
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    #[schema(value_type = Object)]
    pub response_format: Option<serde_json::Value>,
    pub user: Option<String>,
}

/// `POST /v1/completions` body (legacy); forwarded unchanged.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CompletionRequestDoc {
    pub model: String,
    /// A string or an array of strings.
    #[schema(value_type = Object)]
    pub prompt: serde_json::Value,
    pub stream: Option<bool>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub logprobs: Option<u32>,
    #[schema(value_type = Object)]
    pub stop: Option<serde_json::Value>,
    pub seed: Option<i64>,
}

/// `POST /v1/embeddings` body; forwarded unchanged.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EmbeddingRequestDoc {
    pub model: String,
    /// A string, an array of strings, or token arrays.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

/// The engine's OpenAI-shaped response, relayed as-is (`chat.completion`, `text_completion`,
/// or embedding `list`). With `"stream": true` the answer is `text/event-stream` of
/// `data: {chunk}` events ending with `data: [DONE]`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CompletionResponseDoc {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<serde_json::Value>,
    pub usage: Option<Usage>,
}

/// `POST /v1/responses` body (OpenAI's Responses API). Every field listed is served; any
/// other field is refused with 400 (`unknown_parameter`, or `unsupported_parameter` for
/// OpenAI fields this network does not serve: `store: true`, `previous_response_id`,
/// `conversation`, `background: true`, `include`, `reasoning`, `prompt`, `top_logprobs`,
/// `max_tool_calls`, `truncation: "auto"`, built-in tools).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ResponseRequestDoc {
    pub model: String,
    /// A string, or an array of items: messages (`role` user, system, developer or assistant;
    /// `content` a string or `input_text` parts, `output_text` parts in assistant messages),
    /// `function_call` and `function_call_output`.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// A system message before the input.
    pub instructions: Option<String>,
    pub stream: Option<bool>,
    pub max_output_tokens: Option<u32>,
    /// 0..=2
    pub temperature: Option<f64>,
    /// 0..=1
    pub top_p: Option<f64>,
    /// Function tools only (`{"type": "function", "name", "description", "parameters", "strict"}`).
    #[schema(value_type = Vec<Object>)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "name": …}`.
    #[schema(value_type = Object)]
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[schema(value_type = Object)]
    pub text: Option<serde_json::Value>,
    /// Echoed in the Response (up to 16 string values).
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
    /// Must be false or absent: responses are not stored.
    pub store: Option<bool>,
    pub user: Option<String>,
}

/// A Response object (`"object": "response"`, id `resp_…`), made by the worker from the
/// engine's chat completion. With `"stream": true` the answer is `text/event-stream` of
/// `event: <type>` / `data: {event}` pairs, each with its `sequence_number`, from
/// `response.created` to `response.completed` (or `response.incomplete`), without `[DONE]`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ResponseDoc {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    /// `completed` or `incomplete` (the output cap cut the answer).
    pub status: String,
    pub model: String,
    /// `message` items (with `output_text` parts) and `function_call` items.
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<serde_json::Value>,
    /// `input_tokens`, `output_tokens`, `total_tokens` and their details.
    #[schema(value_type = Object)]
    pub usage: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponseDoc {
    pub object: String,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Cocoon's extensions (SDKs ignore unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_cocoon: Option<ModelExtensions>,
}

/// What the network can say about a model right now: `GET /v1/models` `x_cocoon`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelExtensions {
    /// Attested workers serving it that can take a job now.
    pub workers: u32,
    /// Their TEE types: "tdx", "sev-snp", "simulated".
    pub tee: Vec<String>,
    /// Context length in tokens (prompt + completion) every such worker holds, where known.
    pub context_length: Option<u32>,
    /// The ledger's price, nanoTON per 1,000,000 tokens of each class, before the serving
    /// worker's coefficient (`None`: billing off, or no price set).
    pub pricing: Option<ModelPricing>,
    /// What the engines serving it honour: `true` some do (requests needing it go to
    /// them), `false` none does (such requests get 400), `null` unknown (not checked).
    pub capabilities: ModelCapabilities,
}

/// Per-capability verdicts of `x_cocoon.capabilities`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelCapabilities {
    /// `tools` with a `tool_choice` other than "none".
    pub tools: Option<bool>,
    /// `response_format` / `text.format` of type `json_schema`.
    pub json_schema: Option<bool>,
    /// `logprobs` / `top_logprobs`.
    pub logprobs: Option<bool>,
    /// `n` > 1 or `best_of` > 1.
    pub multiple_choices: Option<bool>,
}

/// nanoTON per 1,000,000 tokens of each class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelPricing {
    pub prompt: i64,
    pub cached_prompt: i64,
    pub completion: i64,
    pub reasoning: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}
