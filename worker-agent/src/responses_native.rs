//! OpenAI's Responses API passed through to an engine that serves `POST /v1/responses` itself.
//!
//! Which way a Responses job goes is decided by [`route`], from the engine kind first:
//! - vLLM (`EngineProcessKind::Vllm`) serves `/v1/responses` (v0.11.0:
//!   `vllm/entrypoints/openai/serving_responses.py` `OpenAIServingResponses`, the route in
//!   `api_server.py` `create_responses`): its requests go to that endpoint;
//! - llama-server, a custom command (the test engine) and an engine someone else runs do not:
//!   the worker translates to chat completions and back ([`crate::responses`]).
//!
//! Then, on vLLM only, from what the request holds: v0.11.0 serves natively only what its path
//! for models other than gpt-oss (no Harmony) handles, and [`vllm_serves`] sends the rest to the
//! translation, which serves it through vLLM's chat completions as before. From its source:
//! any function tool is refused (`_make_request`: "Tool use is not supported in Responses API
//! without Harmony", 400); `text.format` `json_object` fails (`ResponsesRequest.
//! to_sampling_params` raises NotImplementedError, 500); input items are handed to the chat
//! parser as chat messages (`_construct_input_messages`), so a `function_call` or
//! `function_call_output` item fails (no `role`: 500), an `output_text` part is refused
//! (chat_utils.py: "Unknown part type", 400) and a `developer` message reaches the chat template
//! under that role (the translation makes it `system`). What passes through is therefore a
//! conversation of user, system and assistant messages of text, without tools or json_object
//! (an assistant message of `output_text` parts, an earlier answer sent back, goes as its text).
//!
//! What vLLM is sent ([`to_engine`]): the fields it acts on as OpenAI defines them, and no
//! other. `store` is `false`: the gateway stores answers itself, sealed (gateway `stored.rs`),
//! while vLLM's store (VLLM_ENABLE_RESPONSES_API_STORE) would keep them in plain text in the
//! engine's memory. `previous_response_id` is not sent: the gateway already expanded it into
//! `input`, and vLLM would look it up in its own store (404). Cocoon's fields
//! (`max_price_coefficient`, `test_engine`), what the gateway refuses or serves itself
//! (`background`, `include`, `conversation`, `stream_options`, ...) and vLLM's own extras
//! (`request_id`, `priority`, `cache_salt`, ..., which a sealed end-to-end body could carry past
//! the gateway) stay out. The generation cap `max_output_tokens` goes as the gateway set it.
//!
//! What the client gets: vLLM's Response object, or its stream events relayed one for one in
//! its order, with what v0.11.0 gets wrong about OpenAI's shapes corrected (the objects are
//! checked against OpenAI's OpenAPI document by the e2e tests):
//! - `store` and `previous_response_id` say what the gateway asked (vLLM, sent `false` and
//!   nothing, would say so), and `text` is the request's (vLLM dumps `text.format.schema` under
//!   openai-python's field name `schema_`, and `null` when unset);
//! - `error: null` added and `user: null`, `usage: null` and vLLM's `input_messages` /
//!   `output_messages` removed (not nullable or not OpenAI's); `created_at` an integer (the
//!   events re-validate vLLM's dict as openai-python's `Response`, whose `created_at` is a
//!   float); `output_text` parts' `logprobs: null` become `[]`; message items lose vLLM's
//!   `summary`;
//! - `usage` in OpenAI's shape (`cache_write_tokens` included) from the numbers metered;
//! - in streams, `content_index` is 0 (vLLM counts it up across an item's events, which breaks
//!   clients that index the item's parts with it) and `sequence_number` is renumbered from 0;
//!   `response.completed` carries the items the stream's `response.output_item.done` events
//!   carried: vLLM builds it from a context that keeps only the last delta
//!   (context.py `SimpleContext`, `RequestOutputKind.DELTA`), so its text is the last token's;
//! - `status` `incomplete` (`incomplete_details.reason` `max_output_tokens`, event
//!   `response.incomplete`) when the output reached the response's `max_output_tokens` (vLLM's
//!   effective cap): vLLM v0.11.0 reports `completed` for every answer of this path
//!   ("completed" is its catch-all in `responses_full_generator`). An answer whose last allowed
//!   token was its end-of-sequence token is reported incomplete too.
//!
//! Usage billed is vLLM's own: `input_tokens`, `output_tokens`, `input_tokens_details.
//! cached_tokens` and `output_tokens_details.reasoning_tokens` become the router's
//! [`protocol::Usage`] as the translation's chat usage would (details only when non-zero), from
//! the Response object or from the stream's terminal event's `response.usage`, and the client
//! sees the same numbers. A vLLM stream has no `[DONE]`: it ends after `response.completed`; one
//! that ends before (vLLM does not catch an engine error in a Responses stream: the connection
//! drops) is a failed job.
//!
//! Not covered: gpt-oss (Harmony) models, where vLLM serves tools in this endpoint but the
//! worker cannot tell the model family, so tools are translated there too; reasoning-parser
//! streams, whose reasoning-to-text transition vLLM v0.11.0 numbers inconsistently (passed on
//! as they are, but for `content_index`).

use bytes::Bytes;
use protocol::openai::{CompletionTokensDetails, PromptTokensDetails};
use protocol::Usage;
use serde_json::{json, Map, Value};

use crate::config::EngineProcessKind;
use crate::responses::Untranslatable;

/// How a Responses job reaches the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To the engine's own `/v1/responses` ([`to_engine`]).
    Native,
    /// Translated to the engine's chat completions ([`crate::responses`]).
    Translate,
}

/// Passthrough for vLLM when its endpoint serves the request ([`vllm_serves`]); translation
/// for every other engine kind, and for an engine of unknown make (`None`).
pub(crate) fn route(kind: Option<EngineProcessKind>, body: &[u8]) -> Route {
    match kind {
        Some(EngineProcessKind::Vllm) => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) if vllm_serves(&o).is_ok() => Route::Native,
            _ => Route::Translate,
        },
        Some(EngineProcessKind::LlamaServer | EngineProcessKind::Command) | None => Route::Translate,
    }
}

/// Whether vLLM v0.11.0's own endpoint serves this request as the client means it; if not,
/// what it would refuse or mishandle (see the module doc).
pub(crate) fn vllm_serves(o: &Map<String, Value>) -> Result<(), &'static str> {
    if o.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) {
        return Err("function tools");
    }
    let format = o.get("text").and_then(|t| t.get("format")).and_then(|f| f.get("type")).and_then(Value::as_str);
    if format == Some("json_object") {
        return Err("text.format json_object");
    }
    match o.get("input") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) => items.iter().try_for_each(plain_message),
        _ => Err("an input that is neither a string nor a list of items"),
    }
}

fn plain_message(item: &Value) -> Result<(), &'static str> {
    if !matches!(item.get("type").and_then(Value::as_str), None | Some("message")) {
        return Err("an input item that is not a message");
    }
    match item.get("role").and_then(Value::as_str) {
        Some("user" | "system" | "assistant") => {}
        Some("developer") => return Err("a developer message"),
        _ => return Err("a message without a known role"),
    }
    match item.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) if parts.iter().all(|p| p.get("type").and_then(Value::as_str) == Some("input_text")) => Ok(()),
        // An earlier answer sent back as input (what the gateway's `previous_response_id`
        // expansion and the SDKs send): [`to_engine`] makes it a text message, as vLLM itself
        // does with a stored response's output (`_construct_input_messages`).
        Some(Value::Array(_)) if assistant_text(item).is_some() => Ok(()),
        _ => Err("content other than text or input_text parts"),
    }
}

/// The text of an assistant message whose content is `output_text` parts.
fn assistant_text(item: &Value) -> Option<String> {
    if item.get("role").and_then(Value::as_str) != Some("assistant") {
        return None;
    }
    let parts = item.get("content")?.as_array()?;
    parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some("output_text") => p.get("text").and_then(Value::as_str),
            _ => None,
        })
        .collect::<Option<Vec<&str>>>()
        .map(|t| t.concat())
}

/// The fields vLLM is sent as the client (or the gateway) set them.
const FORWARDED: [&str; 14] = [
    "model", "input", "instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "temperature", "top_p", "text",
    "tool_choice", "truncation", "service_tier", "user", "stream",
];

/// What the answer says as the gateway asked, whatever vLLM was sent.
#[derive(Clone, Debug)]
pub(crate) struct Echo {
    store: bool,
    previous_response_id: Value,
    text: Value,
}

/// The body for vLLM's `/v1/responses`, and what its answer must say of the request.
pub(crate) fn to_engine(body: &[u8]) -> Result<(Bytes, Echo), Untranslatable> {
    let obj: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        _ => return Err(Untranslatable("the body is not a JSON object".into())),
    };
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let mut out = Map::new();
    for k in FORWARDED {
        if let Some(v) = get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Array(items)) = out.get_mut("input") {
        for item in items.iter_mut() {
            if let Some(text) = assistant_text(item) {
                *item = json!({"type": "message", "role": "assistant", "content": text});
            }
        }
    }
    out.insert("store".into(), Value::Bool(false));
    let echo = Echo {
        store: get("store").and_then(Value::as_bool).unwrap_or(false),
        previous_response_id: get("previous_response_id").cloned().unwrap_or(Value::Null),
        text: get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
    };
    let body = serde_json::to_vec(&out).map_err(|e| Untranslatable(format!("encoding the request: {e}")))?;
    Ok((Bytes::from(body), echo))
}

/// vLLM's `ResponseUsage` as the router's usage, as the translation's chat usage would be.
fn usage_of(v: &Value) -> Option<Usage> {
    let input = v.get("input_tokens")?.as_u64()?;
    let output = v.get("output_tokens")?.as_u64()?;
    let cached = v.pointer("/input_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0);
    let reasoning = v.pointer("/output_tokens_details/reasoning_tokens").and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: input,
        completion_tokens: output,
        total_tokens: input.saturating_add(output),
        prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails { cached_tokens: cached }),
        completion_tokens_details: (reasoning > 0).then_some(CompletionTokensDetails { reasoning_tokens: reasoning }),
    })
}

/// An output item in OpenAI's shape.
fn fix_item(item: &mut Value) {
    let Some(it) = item.as_object_mut() else { return };
    if it.get("type").and_then(Value::as_str) != Some("message") {
        return;
    }
    it.remove("summary");
    if let Some(parts) = it.get_mut("content").and_then(Value::as_array_mut) {
        parts.iter_mut().for_each(fix_part);
    }
}

fn fix_part(part: &mut Value) {
    if part.get("type").and_then(Value::as_str) == Some("output_text") && part.get("logprobs").is_some_and(Value::is_null) {
        part["logprobs"] = json!([]);
    }
}

impl Echo {
    /// A Response object of vLLM's in OpenAI's shape. `output`: the items to carry instead of
    /// vLLM's. Returns whether it is (now) `incomplete`.
    fn fix_response(&self, r: &mut Map<String, Value>, usage: Option<&Usage>, output: Option<Vec<Value>>) -> bool {
        r.insert("store".into(), Value::Bool(self.store));
        r.insert("previous_response_id".into(), self.previous_response_id.clone());
        r.insert("text".into(), self.text.clone());
        r.entry("error").or_insert(Value::Null);
        r.remove("input_messages");
        r.remove("output_messages");
        if r.get("user").is_some_and(Value::is_null) {
            r.remove("user");
        }
        if let Some(t) = r.get("created_at").and_then(Value::as_f64).filter(|t| t.fract() == 0.0 && *t >= 0.0) {
            r.insert("created_at".into(), Value::from(t as u64));
        }
        match usage {
            Some(u) => {
                r.insert("usage".into(), crate::responses::usage(u));
            }
            None => {
                if r.get("usage").is_some_and(Value::is_null) {
                    r.remove("usage");
                }
            }
        }
        if let Some(out) = output {
            r.insert("output".into(), Value::Array(out));
        }
        if let Some(items) = r.get_mut("output").and_then(Value::as_array_mut) {
            items.iter_mut().for_each(fix_item);
        }
        let cap = r.get("max_output_tokens").and_then(Value::as_u64);
        let capped = matches!((usage, cap), (Some(u), Some(c)) if u.completion_tokens >= c);
        if capped && r.get("status").and_then(Value::as_str) == Some("completed") {
            r.insert("status".into(), Value::from("incomplete"));
            r.insert("incomplete_details".into(), json!({"reason": "max_output_tokens"}));
        }
        r.get("status").and_then(Value::as_str) == Some("incomplete")
    }
}

/// vLLM's whole Response object for the client, and its usage.
pub(crate) fn whole(echo: &Echo, body: &[u8]) -> Result<(Bytes, Option<Usage>), Untranslatable> {
    let mut r: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) if o.get("object").and_then(Value::as_str) == Some("response") => o,
        _ => return Err(Untranslatable("the engine's answer is not a Response object".into())),
    };
    let usage = r.get("usage").and_then(usage_of);
    echo.fix_response(&mut r, usage.as_ref(), None);
    let body = serde_json::to_vec(&r).map_err(|e| Untranslatable(format!("encoding the response: {e}")))?;
    Ok((Bytes::from(body), usage))
}

/// What to do with one event of vLLM's stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Relay it.
    Relay(Bytes),
    /// Relay it: the terminal event (`response.completed` or `response.incomplete`).
    End(Bytes),
    /// The engine reported a failure (`error` or `response.failed`): an OpenAI error body.
    Failed(Bytes),
}

/// vLLM's Responses stream on its way to the client.
pub(crate) struct NativeStream {
    echo: Echo,
    seq: u64,
    /// The `response.output_item.done` items so far, by `output_index`.
    done: Vec<(u64, Value)>,
    usage: Option<Usage>,
}

impl NativeStream {
    pub(crate) fn new(echo: Echo) -> Self {
        Self { echo, seq: 0, done: Vec::new(), usage: None }
    }

    /// The usage the terminal event reported, once it came.
    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn event(&mut self, data: &[u8]) -> Step {
        let Ok(Value::Object(mut ev)) = serde_json::from_slice::<Value>(data) else {
            // Not an event vLLM makes: passed on rather than lost (the gateway relays it as data).
            return Step::Relay(Bytes::copy_from_slice(data));
        };
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut end = false;
        match kind.as_str() {
            "response.created" | "response.in_progress" => {
                if let Some(Value::Object(r)) = ev.get_mut("response") {
                    self.echo.fix_response(r, None, None);
                }
            }
            "response.completed" | "response.incomplete" => {
                end = true;
                if let Some(Value::Object(r)) = ev.get_mut("response") {
                    self.usage = r.get("usage").and_then(usage_of);
                    let output = (!self.done.is_empty()).then(|| {
                        self.done.sort_by_key(|(i, _)| *i);
                        self.done.iter().map(|(_, it)| it.clone()).collect()
                    });
                    if self.echo.fix_response(r, self.usage.as_ref(), output) {
                        ev.insert("type".into(), Value::from("response.incomplete"));
                    }
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(item) = ev.get_mut("item") {
                    fix_item(item);
                }
                if kind == "response.output_item.done" {
                    let at = ev.get("output_index").and_then(Value::as_u64).unwrap_or(self.done.len() as u64);
                    let item = ev.get("item").cloned().unwrap_or_default();
                    self.done.retain(|(i, _)| *i != at);
                    self.done.push((at, item));
                }
            }
            "response.content_part.added" | "response.content_part.done" => {
                ev.insert("content_index".into(), Value::from(0));
                if let Some(part) = ev.get_mut("part") {
                    fix_part(part);
                }
            }
            "response.output_text.delta" | "response.output_text.done" | "response.reasoning_text.delta" | "response.reasoning_text.done" => {
                ev.insert("content_index".into(), Value::from(0));
            }
            "error" | "response.failed" => {
                let e = if kind == "error" { Value::Object(ev.clone()) } else { ev.get("response").and_then(|r| r.get("error")).cloned().unwrap_or_default() };
                let body = json!({"error": {
                    "message": e.get("message").and_then(Value::as_str).unwrap_or("the engine failed"),
                    "type": "server_error",
                    "param": e.get("param").cloned().unwrap_or_default(),
                    "code": e.get("code").cloned().unwrap_or_default(),
                }});
                return Step::Failed(Bytes::from(body.to_string()));
            }
            _ => {}
        }
        ev.insert("sequence_number".into(), Value::from(self.seq));
        self.seq += 1;
        let out = Bytes::from(serde_json::to_vec(&ev).unwrap_or_default());
        if end {
            Step::End(out)
        } else {
            Step::Relay(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_engine_kind_decides_and_vllm_gets_what_it_serves() {
        let plain = serde_json::to_vec(&json!({"model": "m", "input": "hi", "max_output_tokens": 5})).unwrap();
        assert_eq!(route(Some(EngineProcessKind::Vllm), &plain), Route::Native);
        for other in [Some(EngineProcessKind::LlamaServer), Some(EngineProcessKind::Command), None] {
            assert_eq!(route(other, &plain), Route::Translate, "{other:?}");
        }
        let messages = json!({"model": "m", "input": [
            {"role": "system", "content": "s"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"role": "assistant", "content": "b"}
        ]});
        assert_eq!(vllm_serves(&obj(messages)), Ok(()));
        // What vLLM v0.11.0 refuses or mishandles goes through the translation.
        for (body, why) in [
            (json!({"input": "hi", "tools": [{"type": "function", "name": "f"}]}), "function tools"),
            (json!({"input": "hi", "text": {"format": {"type": "json_object"}}}), "text.format json_object"),
            (json!({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}), "an input item that is not a message"),
            (json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}), "an input item that is not a message"),
            (json!({"input": [{"role": "developer", "content": "d"}]}), "a developer message"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "content other than text or input_text parts",
            ),
        ] {
            assert_eq!(vllm_serves(&obj(body.clone())), Err(why), "{body}");
            assert_eq!(route(Some(EngineProcessKind::Vllm), &serde_json::to_vec(&body).unwrap()), Route::Translate);
        }
        // An earlier answer sent back (the gateway's previous_response_id expansion) goes as text.
        let earlier = json!({"model": "m", "input": [
            {"type": "message", "role": "user", "content": "q"},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "an", "annotations": []}, {"type": "output_text", "text": "swer", "annotations": []}]},
            {"type": "message", "role": "user", "content": "more"}
        ]});
        assert_eq!(route(Some(EngineProcessKind::Vllm), &serde_json::to_vec(&earlier).unwrap()), Route::Native);
        let (sent, _) = to_engine(&serde_json::to_vec(&earlier).unwrap()).unwrap();
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["input"][1], json!({"type": "message", "role": "assistant", "content": "answer"}));
        assert_eq!(sent["input"][2], earlier["input"][2]);
        // No tools at all is not a tool: an empty list passes through.
        assert_eq!(vllm_serves(&obj(json!({"input": "hi", "tools": [], "text": {"format": {"type": "json_schema"}}}))), Ok(()));
    }

    #[test]
    fn vllm_is_sent_store_false_and_neither_the_gateways_nor_its_own_extras() {
        let (body, echo) = to_engine(
            &serde_json::to_vec(&json!({
                "model": "m", "input": "hi", "max_output_tokens": 7, "stream": true, "store": true, "previous_response_id": "resp_1",
                "metadata": {"k": "v"}, "temperature": 0.2, "top_p": 0.9, "user": "u", "tool_choice": "none", "tools": [],
                "max_price_coefficient": 1500, "test_engine": {"x": 1}, "stream_options": {"include_obfuscation": false},
                "request_id": "mine", "priority": -5, "cache_salt": "s", "background": false, "include": [], "safety_identifier": "x"
            }))
            .unwrap(),
        )
        .unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            sent,
            json!({"model": "m", "input": "hi", "max_output_tokens": 7, "stream": true, "store": false, "metadata": {"k": "v"},
                "temperature": 0.2, "top_p": 0.9, "user": "u", "tool_choice": "none"})
        );
        assert!(echo.store);
        assert_eq!(echo.previous_response_id, "resp_1");
        assert_eq!(echo.text, json!({"format": {"type": "text"}}));
    }

    /// vLLM v0.11.0's whole answer, as `tests/fake-vllm` sends it (protocol.py ResponsesResponse).
    fn vllm_whole(output_tokens: u64, cap: u64) -> Value {
        json!({"id": "resp_a", "created_at": 1_700_000_000, "incomplete_details": null, "instructions": null, "metadata": null,
            "model": "m", "object": "response",
            "output": [{"id": "msg_1", "content": [{"annotations": [], "text": "Hello from", "type": "output_text", "logprobs": null}],
                "role": "assistant", "status": "completed", "type": "message"}],
            "input_messages": null, "output_messages": null, "parallel_tool_calls": true, "temperature": 1.0, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "background": false, "max_output_tokens": cap, "max_tool_calls": null,
            "previous_response_id": null, "prompt": null, "reasoning": null, "service_tier": "auto", "status": "completed",
            "text": {"format": {"name": "s", "schema_": {"type": "object"}, "type": "json_schema", "description": null, "strict": true}, "verbosity": null},
            "top_logprobs": null, "truncation": "disabled",
            "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0}, "total_tokens": 9 + output_tokens},
            "user": null})
    }

    fn echo(store: bool, prev: Value) -> Echo {
        Echo { store, previous_response_id: prev, text: json!({"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}) }
    }

    #[test]
    fn a_whole_answer_is_metered_and_says_what_the_gateway_asked() {
        let e = echo(true, json!("resp_0"));
        let (body, usage) = whole(&e, &serde_json::to_vec(&vllm_whole(2, 16)).unwrap()).unwrap();
        let u = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_prompt_tokens(), u.reasoning_tokens()), (9, 2, 11, 4, 0));
        assert!(u.completion_tokens_details.is_none(), "details only when non-zero, as chat usage");
        let r: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(r["store"], true);
        assert_eq!(r["previous_response_id"], "resp_0");
        assert_eq!(r["text"]["format"]["schema"], json!({"type": "object"}));
        assert!(r["error"].is_null() && r.get("error").is_some());
        for gone in ["user", "input_messages", "output_messages"] {
            assert!(r.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r["output"][0]["content"][0]["logprobs"], json!([]));
        assert_eq!(r["usage"], crate::responses::usage(&u));
        assert_eq!(r["status"], "completed");
        // The cap reached: OpenAI's `incomplete`, which vLLM never says on this path.
        let (body, _) = whole(&e, &serde_json::to_vec(&vllm_whole(16, 16)).unwrap()).unwrap();
        let r: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((r["status"].clone(), r["incomplete_details"].clone()), (json!("incomplete"), json!({"reason": "max_output_tokens"})));
        assert!(whole(&e, br#"{"error": {"message": "x"}}"#).is_err());
    }

    fn step_json(s: Step) -> (bool, Value) {
        match s {
            Step::Relay(b) => (false, serde_json::from_slice(&b).unwrap()),
            Step::End(b) => (true, serde_json::from_slice(&b).unwrap()),
            Step::Failed(b) => panic!("failed: {b:?}"),
        }
    }

    #[test]
    fn a_stream_is_relayed_in_order_corrected_and_metered() {
        let mut s = NativeStream::new(echo(false, json!("resp_0")));
        let mut initial = vllm_whole(0, 3);
        initial["status"] = json!("in_progress");
        initial["output"] = json!([]);
        initial["usage"] = Value::Null;
        initial["created_at"] = json!(1_700_000_000.0);
        let mut last = vllm_whole(3, 3);
        last["output"][0]["content"][0]["text"] = json!(" the");
        let part = |t: &str, lp: Value| json!({"annotations": [], "text": t, "type": "output_text", "logprobs": lp});
        let events = [
            json!({"response": initial, "sequence_number": 0, "type": "response.created"}),
            json!({"response": initial, "sequence_number": 1, "type": "response.in_progress"}),
            json!({"item": {"id": "u1", "content": [], "role": "assistant", "status": "in_progress", "type": "message"}, "output_index": 0, "sequence_number": 2, "type": "response.output_item.added"}),
            json!({"content_index": 0, "item_id": "u1", "output_index": 0, "part": part("", json!([])), "sequence_number": 3, "type": "response.content_part.added"}),
            json!({"content_index": 1, "delta": "Hello", "item_id": "u1", "logprobs": [], "output_index": 0, "sequence_number": 4, "type": "response.output_text.delta"}),
            json!({"content_index": 2, "delta": " from", "item_id": "u1", "logprobs": [], "output_index": 0, "sequence_number": 5, "type": "response.output_text.delta"}),
            json!({"content_index": 3, "delta": " the", "item_id": "u1", "logprobs": [], "output_index": 0, "sequence_number": 6, "type": "response.output_text.delta"}),
            json!({"content_index": 4, "item_id": "u1", "logprobs": [], "output_index": 0, "sequence_number": 7, "text": "Hello from the", "type": "response.output_text.done"}),
            json!({"content_index": 5, "item_id": "u1", "output_index": 0, "part": part("Hello from the", Value::Null), "sequence_number": 8, "type": "response.content_part.done"}),
            json!({"item": {"id": "u1", "content": [part("Hello from the", Value::Null)], "role": "assistant", "status": "completed", "type": "message", "summary": []}, "output_index": 0, "sequence_number": 9, "type": "response.output_item.done"}),
            json!({"response": last, "sequence_number": 10, "type": "response.completed"}),
        ];
        let out: Vec<(bool, Value)> = events.iter().map(|e| step_json(s.event(&serde_json::to_vec(e).unwrap()))).collect();
        for (n, (end, ev)) in out.iter().enumerate() {
            assert_eq!(ev["sequence_number"], n as u64);
            assert_eq!(*end, n == 10);
            if ev.get("content_index").is_some() {
                assert_eq!(ev["content_index"], 0, "{ev}");
            }
        }
        let created = &out[0].1["response"];
        assert_eq!((created["store"].clone(), created["previous_response_id"].clone()), (json!(false), json!("resp_0")));
        assert!(created.get("usage").is_none() && created["created_at"].is_u64(), "{created}");
        assert_eq!(out[8].1["part"]["logprobs"], json!([]));
        assert!(out[9].1["item"].get("summary").is_none());
        let (_, done) = &out[10];
        assert_eq!(done["type"], "response.incomplete", "3 of 3 tokens: the cap cut it");
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Hello from the", "the whole text, not the last delta");
        assert_eq!(done["response"]["output"][0]["id"], "u1");
        assert_eq!(done["response"]["usage"]["output_tokens"], 3);
        assert_eq!(s.usage().unwrap().completion_tokens, 3);
        assert_eq!(s.usage().unwrap().prompt_tokens, 9);
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let mut s = NativeStream::new(echo(false, Value::Null));
        match s.event(br#"{"type":"error","code":"server_error","message":"boom","param":null,"sequence_number":3}"#) {
            Step::Failed(b) => assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["error"]["message"], "boom"),
            other => panic!("{other:?}"),
        }
    }
}
