//! OpenAI's Responses API, served from the engine's chat completions, inside the TEE.
//!
//! Used for every engine that does not serve `/v1/responses` itself (llama-server, the test
//! engine, an engine of unknown make) and for the requests vLLM's own endpoint does not serve;
//! the rest goes to vLLM as it is ([`crate::responses_native`], whose `route` decides).
//!
//! The gateway validated the request (gateway `validate_responses`: every field is either
//! served here or refused there); this module turns it into a chat completions request, and
//! the engine's answer back into a Response object or, for a stream, into Responses events
//! numbered by `sequence_number`, in the order OpenAI sends them (the shapes follow the
//! `Response*Event` components of OpenAI's OpenAPI document, which the e2e and SDK tests
//! validate against):
//!
//! `response.created`, `response.in_progress`, then per output item `response.output_item.added`
//! (+ `response.content_part.added` for text), its deltas (`response.output_text.delta` or
//! `response.function_call_arguments.delta`), its closing events (`response.output_text.done`,
//! `response.content_part.done` or `response.function_call_arguments.done`) and
//! `response.output_item.done`; finally `response.completed` (or `response.incomplete` when
//! the output cap cut the answer) with the usage.
//!
//! Usage reported to the router stays the engine's own chat usage: billing reads the same
//! numbers the client sees as `input_tokens`/`output_tokens`.

use bytes::Bytes;
use protocol::Usage;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A request this module cannot translate (the gateway refuses these first; a worker
/// behind an older gateway answers the same way).
#[derive(Debug)]
pub(crate) struct Untranslatable(pub String);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// What the Response object echoes of the request.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    id: String,
    created_at: u64,
    model: String,
    instructions: Value,
    max_output_tokens: Value,
    temperature: Value,
    top_p: Value,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Value,
    user: Value,
    /// Echoed as the gateway sent them: it stores the answer and expands
    /// `previous_response_id` into `input` itself (gateway/src/stored.rs).
    store: bool,
    previous_response_id: Value,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

/// `input` as chat messages. Consecutive `function_call` items become one assistant message
/// with several `tool_calls`, as chat templates expect.
fn messages(instructions: Option<&str>, input: &Value) -> Result<Vec<Value>, Untranslatable> {
    let mut out = Vec::new();
    if let Some(i) = instructions {
        out.push(json!({"role": "system", "content": i}));
    }
    let items = match input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(out);
        }
        Value::Array(a) => a,
        _ => return Err(Untranslatable("`input` must be a string or an array of items".into())),
    };
    for item in items {
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                // Chat templates of open models know `system`, not OpenAI's `developer`,
                // which plays the same part.
                let role = if role == "developer" { "system" } else { role };
                out.push(json!({"role": role, "content": text_of(item.get("content").unwrap_or(&Value::Null))}));
            }
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": {"name": item.get("name").cloned().unwrap_or_default(), "arguments": item.get("arguments").cloned().unwrap_or_default()},
                });
                let merged = out.last_mut().and_then(|m: &mut Value| {
                    let is_calls = m.get("role").and_then(Value::as_str) == Some("assistant") && m.get("tool_calls").is_some();
                    if is_calls { m.get_mut("tool_calls").and_then(Value::as_array_mut) } else { None }
                });
                match merged {
                    Some(calls) => calls.push(call),
                    None => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => out.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or_default(),
                "content": text_of(item.get("output").unwrap_or(&Value::Null)),
            })),
            other => return Err(Untranslatable(format!("input items of type {other:?} are not supported"))),
        }
    }
    Ok(out)
}

/// A Responses function tool, as the Response object echoes it.
fn echo_tool(t: &Value) -> Value {
    json!({
        "type": "function",
        "name": t.get("name").cloned().unwrap_or_default(),
        "description": t.get("description").cloned().unwrap_or(Value::Null),
        "parameters": t.get("parameters").cloned().unwrap_or(Value::Null),
        "strict": t.get("strict").cloned().unwrap_or(Value::Bool(false)),
    })
}

fn chat_tool(t: &Value) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), t.get("name").cloned().unwrap_or_default());
    for k in ["description", "parameters", "strict"] {
        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
            f.insert(k.into(), v.clone());
        }
    }
    json!({"type": "function", "function": f})
}

fn chat_tool_choice(c: &Value) -> Value {
    match c.get("type").and_then(Value::as_str) {
        Some("function") => json!({"type": "function", "function": {"name": c.get("name").cloned().unwrap_or_default()}}),
        _ => c.clone(),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(text: &Value) -> Option<Value> {
    let f = text.get("format")?;
    match f.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let mut js = Map::new();
            for k in ["name", "schema", "description", "strict"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    js.insert(k.into(), v.clone());
                }
            }
            Some(json!({"type": "json_schema", "json_schema": js}))
        }
        _ => None,
    }
}

/// The chat completions body for a Responses request, and what its answer must echo.
pub(crate) fn to_chat(body: &[u8]) -> Result<(Bytes, Ctx), Untranslatable> {
    let obj: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        _ => return Err(Untranslatable("the body is not a JSON object".into())),
    };
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let model = get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let instructions = get("instructions").and_then(Value::as_str);
    let input = get("input").ok_or_else(|| Untranslatable("`input` is missing".into()))?;
    let mut chat = Map::new();
    chat.insert("model".into(), Value::from(model.clone()));
    chat.insert("messages".into(), Value::Array(messages(instructions, input)?));
    if let Some(m) = get("max_output_tokens") {
        chat.insert("max_tokens".into(), m.clone());
    }
    for k in ["temperature", "top_p", "user", "parallel_tool_calls", "test_engine"] {
        if let Some(v) = get(k) {
            chat.insert(k.into(), v.clone());
        }
    }
    let tools: Vec<Value> = get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools.iter().map(chat_tool).collect()));
    }
    if let Some(c) = get("tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(c));
    }
    let text = get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}}));
    if let Some(rf) = response_format(&text) {
        chat.insert("response_format".into(), rf);
    }
    let stream = get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
    }
    let ctx = Ctx {
        id: new_id("resp_"),
        created_at: unix_now(),
        model,
        instructions: instructions.map_or(Value::Null, Value::from),
        max_output_tokens: get("max_output_tokens").cloned().unwrap_or(Value::Null),
        temperature: get("temperature").cloned().unwrap_or(Value::Null),
        top_p: get("top_p").cloned().unwrap_or(Value::Null),
        tools: Value::Array(tools.iter().map(echo_tool).collect()),
        tool_choice: get("tool_choice").cloned().unwrap_or_else(|| Value::from("auto")),
        parallel_tool_calls: get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true),
        text,
        metadata: get("metadata").cloned().unwrap_or_else(|| json!({})),
        user: get("user").cloned().unwrap_or(Value::Null),
        store: get("store").and_then(Value::as_bool).unwrap_or(false),
        previous_response_id: get("previous_response_id").cloned().unwrap_or(Value::Null),
    };
    let body = serde_json::to_vec(&chat).map_err(|e| Untranslatable(format!("encoding the chat request: {e}")))?;
    Ok((Bytes::from(body), ctx))
}

/// OpenAI's `ResponseUsage` from the engine's chat usage.
pub(crate) fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens(), "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens()},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// How the answer ended: `completed`, or `incomplete` with OpenAI's reason.
fn outcome(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

impl Ctx {
    /// The Response object. `status` `in_progress` has no usage yet.
    fn response(&self, status: &str, incomplete: Value, output: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": if status == "completed" { Value::from(unix_now()) } else { Value::Null },
            "background": false,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "metadata": self.metadata,
        });
        // Neither is nullable in OpenAI's schema: present only when there is one.
        if let Some(u) = usage {
            r["usage"] = self::usage(u);
        }
        if !self.user.is_null() {
            r["user"] = self.user.clone();
        }
        r
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = text.map_or_else(Vec::new, |t| vec![text_part(t)]);
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

#[derive(Deserialize)]
struct ChatAnswer {
    #[serde(default)]
    choices: Vec<AnswerChoice>,
}

#[derive(Deserialize)]
struct AnswerChoice {
    #[serde(default)]
    message: AnswerMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<AnswerCall>,
}

#[derive(Deserialize)]
struct AnswerCall {
    #[serde(default)]
    id: String,
    function: AnswerFunction,
}

#[derive(Deserialize)]
struct AnswerFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

/// The Response object for the engine's whole chat answer.
pub(crate) fn from_chat(ctx: &Ctx, body: &[u8], usage: Option<&Usage>) -> Result<Bytes, Untranslatable> {
    let answer: ChatAnswer = serde_json::from_slice(body).map_err(|e| Untranslatable(format!("the engine's answer is not a chat completion: {e}")))?;
    let choice = answer.choices.into_iter().next().ok_or_else(|| Untranslatable("the engine's answer has no choice".into()))?;
    let (status, incomplete) = outcome(choice.finish_reason.as_deref());
    let item_status = if status == "completed" { "completed" } else { "incomplete" };
    let mut output = Vec::new();
    let text = choice.message.content.unwrap_or_default();
    if !text.is_empty() || choice.message.tool_calls.is_empty() {
        output.push(message_item(&new_id("msg_"), item_status, Some(&text)));
    }
    for c in &choice.message.tool_calls {
        output.push(call_item(&new_id("fc_"), item_status, &c.id, &c.function.name, &c.function.arguments));
    }
    let r = ctx.response(status, incomplete, output, usage);
    serde_json::to_vec(&r).map(Bytes::from).map_err(|e| Untranslatable(format!("encoding the response: {e}")))
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallDelta>,
}

#[derive(Deserialize)]
struct CallDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

enum Item {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String, chat_index: u32 },
}

/// A chat completion stream turned into Responses events.
pub(crate) struct StreamTranslator {
    ctx: Ctx,
    seq: u64,
    items: Vec<Item>,
    /// The item receiving deltas (OpenAI closes an item before it opens the next).
    open: Option<usize>,
    finish_reason: Option<String>,
    /// `response.created` went out. Not before the engine's first chunk: until then a
    /// failure leaves the client with nothing, and the router may retry elsewhere.
    started: bool,
}

impl StreamTranslator {
    pub(crate) fn new(ctx: Ctx) -> Self {
        Self { ctx, seq: 0, items: Vec::new(), open: None, finish_reason: None, started: false }
    }

    fn event(&mut self, kind: &str, fields: Value) -> Bytes {
        let mut ev = Map::new();
        ev.insert("type".into(), Value::from(kind));
        if let Value::Object(f) = fields {
            ev.extend(f);
        }
        ev.insert("sequence_number".into(), Value::from(self.seq));
        self.seq += 1;
        Bytes::from(serde_json::to_vec(&ev).unwrap_or_default())
    }

    /// `response.created` and `response.in_progress`, before the first other event.
    fn start(&mut self, out: &mut Vec<Bytes>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let r = self.ctx.response("in_progress", Value::Null, Vec::new(), None);
        out.push(self.event("response.created", json!({"response": r.clone()})));
        out.push(self.event("response.in_progress", json!({"response": r})));
    }

    fn close_open(&mut self, status: &str, out: &mut Vec<Bytes>) {
        let Some(i) = self.open.take() else { return };
        let ev = match &self.items[i] {
            Item::Message { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
                ));
                out.push(self.event("response.content_part.done", json!({"item_id": id, "output_index": i, "content_index": 0, "part": text_part(&text)})));
                json!({"output_index": i, "item": message_item(&id, status, Some(&text))})
            }
            Item::Call { id, call_id, name, arguments, .. } => {
                let (id, call_id, name, arguments) = (id.clone(), call_id.clone(), name.clone(), arguments.clone());
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "name": name, "arguments": arguments}),
                ));
                json!({"output_index": i, "item": call_item(&id, status, &call_id, &name, &arguments)})
            }
        };
        out.push(self.event("response.output_item.done", ev));
    }

    fn text_delta(&mut self, delta: &str, out: &mut Vec<Bytes>) {
        let i = match self.open.filter(|&i| matches!(self.items[i], Item::Message { .. })) {
            Some(i) => i,
            None => {
                self.close_open("completed", out);
                let id = new_id("msg_");
                let i = self.items.len();
                self.items.push(Item::Message { id: id.clone(), text: String::new() });
                self.open = Some(i);
                out.push(self.event("response.output_item.added", json!({"output_index": i, "item": message_item(&id, "in_progress", None)})));
                out.push(self.event("response.content_part.added", json!({"item_id": id, "output_index": i, "content_index": 0, "part": text_part("")})));
                i
            }
        };
        let Item::Message { id, text } = &mut self.items[i] else { return };
        text.push_str(delta);
        let id = id.clone();
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": i, "content_index": 0, "delta": delta, "logprobs": []}),
        ));
    }

    fn call_delta(&mut self, d: CallDelta, out: &mut Vec<Bytes>) {
        let known = self.items.iter().position(|it| matches!(it, Item::Call { chat_index, .. } if *chat_index == d.index));
        let (name, args) = d.function.map_or((None, None), |f| (f.name, f.arguments));
        let i = match known {
            Some(i) => i,
            None => {
                self.close_open("completed", out);
                let id = new_id("fc_");
                let call_id = d.id.unwrap_or_else(|| new_id("call_"));
                let name = name.unwrap_or_default();
                let i = self.items.len();
                out.push(self.event("response.output_item.added", json!({"output_index": i, "item": call_item(&id, "in_progress", &call_id, &name, "")})));
                self.items.push(Item::Call { id, call_id, name, arguments: String::new(), chat_index: d.index });
                self.open = Some(i);
                i
            }
        };
        let Some(args) = args.filter(|a| !a.is_empty()) else { return };
        // A delta for a call already closed (engines send calls one after the other, so
        // this does not happen) is still relayed rather than lost.
        let Item::Call { id, arguments, .. } = &mut self.items[i] else { return };
        arguments.push_str(&args);
        let id = id.clone();
        out.push(self.event("response.function_call_arguments.delta", json!({"item_id": id, "output_index": i, "delta": args})));
    }

    /// The events for one chat chunk (usage-only chunks give none).
    pub(crate) fn chunk(&mut self, data: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let Ok(c) = serde_json::from_slice::<ChatChunk>(data) else { return out };
        self.start(&mut out);
        // Responses have one answer: only the first choice exists (the request asked n = 1).
        let Some(choice) = c.choices.into_iter().next() else { return out };
        if let Some(t) = choice.delta.content.filter(|t| !t.is_empty()) {
            self.text_delta(&t, &mut out);
        }
        for d in choice.delta.tool_calls {
            self.call_delta(d, &mut out);
        }
        if choice.finish_reason.is_some() {
            self.finish_reason = choice.finish_reason;
        }
        out
    }

    /// The closing events once the engine's stream ended, with its usage.
    pub(crate) fn finish(&mut self, usage: Option<&Usage>) -> Vec<Bytes> {
        let (status, incomplete) = outcome(self.finish_reason.as_deref());
        let item_status = if status == "completed" { "completed" } else { "incomplete" };
        let mut out = Vec::new();
        self.start(&mut out);
        self.close_open(item_status, &mut out);
        if self.items.is_empty() {
            // An empty answer is still one (empty) message, as in a whole answer.
            let id = new_id("msg_");
            self.items.push(Item::Message { id: id.clone(), text: String::new() });
            out.push(self.event("response.output_item.added", json!({"output_index": 0, "item": message_item(&id, "in_progress", None)})));
            out.push(self.event("response.content_part.added", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": text_part("")})));
            self.open = Some(0);
            self.close_open(item_status, &mut out);
        }
        let output = self
            .items
            .iter()
            .map(|it| match it {
                Item::Message { id, text } => message_item(id, item_status, Some(text)),
                Item::Call { id, call_id, name, arguments, .. } => call_item(id, item_status, call_id, name, arguments),
            })
            .collect();
        let r = self.ctx.response(status, incomplete, output, usage);
        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
        out.push(self.event(kind, json!({"response": r})));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chat_of(req: Value) -> (Value, Ctx) {
        let (b, ctx) = to_chat(&serde_json::to_vec(&req).unwrap()).unwrap();
        (serde_json::from_slice(&b).unwrap(), ctx)
    }

    #[test]
    fn translates_the_request() {
        let (chat, ctx) = chat_of(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 20, "temperature": 0.5, "stream": true,
            "input": [
                {"role": "developer", "content": "d"},
                {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"x\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "r1"}
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}
        }));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": "d"},
                {"role": "user", "content": "ab"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "r1"}
            ])
        );
        assert_eq!(chat["max_tokens"], 20);
        assert_eq!(chat["stream"], true);
        assert_eq!(chat["tools"], json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}]));
        assert_eq!(chat["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(chat["response_format"], json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}}));
        assert!(ctx.id.starts_with("resp_"));
        let (chat, _) = chat_of(json!({"model": "m", "input": "hello"}));
        assert_eq!(chat, json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]}));
    }

    #[test]
    fn whole_answer_becomes_a_response() {
        let (_, ctx) = chat_of(json!({"model": "m", "input": "hi", "max_output_tokens": 3}));
        let u = Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, ..Default::default() };
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"one two three"},"finish_reason":"length"}]}"#;
        let r: Value = serde_json::from_slice(&from_chat(&ctx, body, Some(&u)).unwrap()).unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["output"][0]["content"][0]["text"], "one two three");
        assert_eq!(r["usage"]["input_tokens"], 7);
        assert_eq!(r["usage"]["total_tokens"], 10);
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        let r: Value = serde_json::from_slice(&from_chat(&ctx, body, Some(&u)).unwrap()).unwrap();
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"].as_array().unwrap().len(), 1);
        assert_eq!(r["output"][0]["type"], "function_call");
        assert_eq!(r["output"][0]["call_id"], "call_1");
    }

    fn kinds(evs: &[Bytes]) -> Vec<String> {
        evs.iter().map(|e| serde_json::from_slice::<Value>(e).unwrap()["type"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_stream_becomes_numbered_events_in_openais_order() {
        let (_, ctx) = chat_of(json!({"model": "m", "input": "hi", "stream": true}));
        let mut t = StreamTranslator::new(ctx);
        let mut evs = Vec::new();
        for c in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#,
        ] {
            evs.extend(t.chunk(c.as_bytes()));
        }
        evs.extend(t.finish(Some(&Usage { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9, ..Default::default() })));
        assert_eq!(
            kinds(&evs),
            [
                "response.created", "response.in_progress",
                "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done",
                "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                "response.function_call_arguments.done", "response.output_item.done", "response.completed",
            ]
        );
        let vals: Vec<Value> = evs.iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
        for (n, v) in vals.iter().enumerate() {
            assert_eq!(v["sequence_number"], n as u64);
        }
        assert_eq!(vals[6]["text"], "Hello");
        assert_eq!(vals[12]["arguments"], "{\"a\":1}");
        assert_eq!(vals[12]["output_index"], 1);
        let done = &vals[14]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["output_tokens"], 4);
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["id"], vals[0]["response"]["id"]);
    }
}
