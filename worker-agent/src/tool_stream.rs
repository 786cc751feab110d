//! Streamed tool calls in OpenAI's exact delta shape, whatever the engine.
//!
//! OpenAI streams a tool call as chat chunk deltas: the first delta of each call carries
//! `{"index": i, "id": "call_…", "type": "function", "function": {"name": "…", "arguments": ""}}`,
//! later ones only `{"index": i, "function": {"arguments": "<piece>"}}`, and the choice ends
//! with `finish_reason: "tool_calls"`. SDKs accumulate by `index`, and they disagree on what a
//! repeated field means: openai-python's `ChatCompletionStreamState` (`accumulate_delta` in
//! `src/openai/lib/streaming/_deltas.py`) concatenates every string but `index` and `type`, so
//! a repeated `id` or `name` doubles, and takes a stream's first `tool_calls` list as it is;
//! openai-node's `ChatCompletionStream` overwrites `id`, `type` and `name`, appends
//! `arguments`, and throws at the end when `id`, `type` or `name` never came. Only OpenAI's
//! shape reads the same everywhere.
//!
//! What the engines send instead (read from their source; the recorded streams under
//! `tests/fixtures/tool_streams/` name the lines):
//!
//! - llama-server (ggml-org/llama.cpp; `tools/server/server-task.cpp`
//!   `server_task_result_cmpl_partial::to_json_oaicompat_chat` turns each
//!   `common_chat_msg_diff` into one chunk with `server_chat_msg_diff_to_json_oaicompat`,
//!   `tools/server/server-chat.cpp`; the diffs come from `common_chat_msg_diff::compute_diffs`,
//!   `common/chat.cpp`): `index` always; `id` (32 random alphanumerics, `gen_tool_call_id`,
//!   no `call_` prefix) and `type` only with the name; the first delta of a call carries
//!   whatever arguments were parsed so far (`"{"` in a real capture, so never `""`);
//!   `function` and `arguments` are left out when empty (the older
//!   `common_chat_msg_diff_to_json_oaicompat` always wrote `arguments`). When the partial
//!   parse grows a call's name (empty, or a prefix, first), `compute_diffs` sends `id`, `type`
//!   and the whole `name` again on a later delta.
//! - vLLM (vllm-project/vllm, v0.10/v0.11 layout; `vllm/entrypoints/openai/serving_chat.py`
//!   `chat_completion_stream_generator`, `protocol.py` `DeltaToolCall`/`DeltaFunctionCall`,
//!   chunks written with `model_dump_json(exclude_unset=True)`): with a tool parser
//!   (`hermes_tool_parser.py` `extract_tool_calls_streaming`) the first delta is
//!   `{"id": "chatcmpl-tool-…", "type": "function", "index": i, "function": {"name": "…"}}`,
//!   without `arguments` (`model_dump(exclude_none=True)`); with a named `tool_choice` it
//!   carries the first argument text. `DeltaToolCall.id` is optional, so a parser may leave
//!   it out or null. At the end of a stream whose last token carried arguments, the
//!   generator replaces that delta with `expected_call.replace(actual_call, "", 1)`, where
//!   `expected_call` is `json.dumps` of the parsed arguments: when the model's own spacing
//!   differs from `json.dumps`' (or a parser does not track what it streamed, vLLM #51697),
//!   `actual_call` is not found and the whole arguments are sent again after what the client
//!   already has.
//!
//! What this module does, per stream, only to chunks that contain `"tool_calls"` (and, while
//! a call's first delta is held back, to the chunks that may release it): it remembers each
//! call by choice and `index` and
//! - sends `id`, `type: "function"`, `function.name` and `arguments: ""` once, on the call's
//!   first delta, in a chunk of their own; arguments that came with them follow in the
//!   engine's chunk (held-back ones in a chunk of their own: one entry per call and chunk).
//!   A first delta without a name, or without `arguments`, is held back
//!   until arguments start (the name is then whole: llama-server's own
//!   `task_result_state::update_chat_msg` holds names back the same way when asked to), another
//!   call starts, the choice finishes, or the stream ends;
//! - gives a call without `id` (missing or null) one, `call_` and 32 hex digits;
//! - fills in a missing `index` (by `id`, else the call in progress);
//! - removes `id`, `type` and `name` from later deltas, and deltas left without arguments;
//! - on the chunk that finishes the choice, sends of a piece that is a whole JSON document
//!   repeating arguments already sent (same text, or the same tokens with other spacing)
//!   only what is missing, or nothing when the client's arguments were already whole.
//!
//! A stream already in OpenAI's shape (the test engine's) passes byte for byte: only chunks
//! that change are parsed into a tree and written again. Remaining limits: a first delta that
//! does carry `arguments` with a partial name (llama-server's `compute_diffs` with the older
//! encoder) cannot be told from a whole one, so the name sent is the partial one; a re-sent
//! whole document that does not line up with incomplete arguments already sent (a string
//! escaped differently) is relayed as the engine sent it.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

const KEY: &[u8] = b"\"tool_calls\"";

/// The tool calls of one stream.
#[derive(Debug, Default)]
pub(crate) struct ToolStream {
    calls: Vec<Call>,
    /// Calls whose first delta is held back.
    held: usize,
    /// The last chunk that left a call held back: its envelope (`id`, `model`, …) serves a
    /// first delta released when the stream ends.
    held_chunk: Option<Bytes>,
}

#[derive(Debug)]
struct Call {
    choice: u32,
    index: u32,
    id: Option<String>,
    name: String,
    /// Its first delta went out.
    announced: bool,
    /// Arguments relayed so far.
    sent: String,
    /// Arguments received while the first delta was held back.
    held: String,
}

/// A call's first delta, released.
#[derive(Debug)]
struct Header {
    index: u32,
    id: String,
    name: String,
    /// Arguments that were held back with it.
    args: String,
}

/// What becomes of one `tool_calls` entry of the engine's chunk.
#[derive(Debug, PartialEq, Eq)]
enum Edit {
    Keep,
    Remove,
    /// `{"index": i, "function": {"arguments": …}}` instead.
    Args(u32, String),
}

/// The changes to one choice of a chunk.
#[derive(Debug)]
struct Plan {
    /// Position in `choices`.
    pos: usize,
    choice: u32,
    headers: Vec<Header>,
    edits: Vec<Edit>,
}

// A light look at a chunk: borrowed where the text has no escapes, tool fields only.
#[derive(Deserialize)]
struct LChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<LChoice<'a>>>,
}

#[derive(Deserialize)]
struct LChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<LDelta<'a>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct LDelta<'a> {
    #[serde(default, borrow)]
    tool_calls: Option<Vec<LCall<'a>>>,
}

#[derive(Deserialize)]
struct LCall<'a> {
    #[serde(default)]
    index: Option<u32>,
    /// `Some(None)`: present as `null`.
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<String>>,
    #[serde(default, rename = "type", deserialize_with = "present")]
    kind: Option<Option<String>>,
    #[serde(default, borrow)]
    function: Option<LFunction<'a>>,
}

#[derive(Deserialize)]
struct LFunction<'a> {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, borrow)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn new_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

impl ToolStream {
    /// Whether this chunk must be looked at: it has tool calls, or a held-back first delta
    /// may be released by it.
    pub(crate) fn wants(&self, data: &[u8]) -> bool {
        self.held > 0 || memchr::memmem::find(data, KEY).is_some()
    }

    /// The chunks to relay for this one: itself untouched, or a chunk with released first
    /// deltas followed by it rewritten (left out when nothing remains in it).
    pub(crate) fn chunk(&mut self, data: Bytes) -> Vec<Bytes> {
        let Ok(light) = serde_json::from_slice::<LChunk<'_>>(&data) else {
            return vec![data];
        };
        let mut plans = Vec::new();
        for (pos, ch) in light.choices.unwrap_or_default().into_iter().enumerate() {
            let choice = ch.index.unwrap_or(0);
            let finishing = ch.finish_reason.is_some();
            let mut plan = Plan { pos, choice, headers: Vec::new(), edits: Vec::new() };
            let entries = ch.delta.and_then(|d| d.tool_calls).unwrap_or_default();
            for e in entries {
                let edit = self.entry(choice, e, finishing, &mut plan.headers);
                plan.edits.push(edit);
            }
            if finishing {
                self.release(choice, None, &mut plan.headers);
            }
            if !plan.headers.is_empty() || plan.edits.iter().any(|e| *e != Edit::Keep) {
                plans.push(plan);
            }
        }
        self.held_chunk = (self.held > 0).then(|| data.clone());
        if plans.is_empty() {
            return vec![data];
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&data) else {
            return vec![data];
        };
        let mut out = Vec::with_capacity(2);
        for plan in &plans {
            let role = apply(&mut obj, plan);
            if !plan.headers.is_empty() {
                header_chunks(&obj, plan.choice, role, &plan.headers, &mut out);
            }
        }
        if !is_empty_chunk(&obj) {
            out.push(to_bytes(&Value::Object(obj), &data));
        }
        out
    }

    /// At the end of the stream: first deltas still held back, each choice's in a chunk.
    pub(crate) fn finish(&mut self) -> Vec<Bytes> {
        if self.held == 0 {
            return Vec::new();
        }
        let envelope = self
            .held_chunk
            .take()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| match v {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .unwrap_or_default();
        let mut choices: Vec<u32> = self.calls.iter().filter(|c| !c.announced).map(|c| c.choice).collect();
        choices.sort_unstable();
        choices.dedup();
        let mut out = Vec::new();
        for choice in choices {
            let mut headers = Vec::new();
            self.release(choice, None, &mut headers);
            if !headers.is_empty() {
                header_chunks(&envelope, choice, None, &headers, &mut out);
            }
        }
        out
    }

    fn find(&self, choice: u32, index: u32) -> Option<usize> {
        self.calls.iter().position(|c| c.choice == choice && c.index == index)
    }

    /// The entry's `index`, or the one it must have: its call's by `id`, a new one for a
    /// new call, else the call in progress.
    fn index_of(&self, choice: u32, e: &LCall<'_>, id: Option<&str>, name: Option<&str>) -> u32 {
        if let Some(i) = e.index {
            return i;
        }
        let mine = || self.calls.iter().filter(|c| c.choice == choice);
        if let Some(c) = id.and_then(|id| mine().find(|c| c.id.as_deref() == Some(id))) {
            return c.index;
        }
        let next = mine().map(|c| c.index + 1).max().unwrap_or(0);
        if id.is_some() || name.is_some() {
            return next;
        }
        mine().next_back().map_or(0, |c| c.index)
    }

    /// Releases the held-back first deltas of `choice` (but `except`'s), oldest first.
    fn release(&mut self, choice: u32, except: Option<u32>, headers: &mut Vec<Header>) {
        for c in self.calls.iter_mut().filter(|c| c.choice == choice && !c.announced && Some(c.index) != except) {
            let args = std::mem::take(&mut c.held);
            headers.push(announce(c, args));
            self.held -= 1;
        }
    }

    fn entry(&mut self, choice: u32, e: LCall<'_>, finishing: bool, headers: &mut Vec<Header>) -> Edit {
        let id = e.id.clone().flatten().filter(|s| !s.is_empty());
        let (name_field, args) = match &e.function {
            Some(f) => (f.name.clone(), f.arguments.as_ref().map(|t| t.0.as_ref())),
            None => (None, None),
        };
        let name = name_field.clone().flatten().filter(|s| !s.is_empty());
        let index = self.index_of(choice, &e, id.as_deref(), name.as_deref());
        // OpenAI sends one call after the other: a call starting means the ones before are
        // whole, names included.
        self.release(choice, Some(index), headers);
        let Some(at) = self.find(choice, index) else {
            let mut call = Call {
                choice,
                index,
                id,
                name: name.unwrap_or_default(),
                announced: false,
                sent: String::new(),
                held: String::new(),
            };
            let Some(args) = args.filter(|_| !call.name.is_empty()) else {
                // No name yet, or no `arguments`: wait for them.
                call.held.push_str(args.unwrap_or(""));
                self.calls.push(call);
                self.held += 1;
                return Edit::Remove;
            };
            let shaped = args.is_empty()
                && e.index.is_some()
                && call.id.is_some()
                && e.kind.as_ref().and_then(|k| k.as_deref()) == Some("function");
            if shaped {
                call.announced = true;
                self.calls.push(call);
                return Edit::Keep;
            }
            headers.push(announce(&mut call, String::new()));
            call.sent.push_str(args);
            self.calls.push(call);
            return if args.is_empty() { Edit::Remove } else { Edit::Args(index, args.to_owned()) };
        };
        let call = &mut self.calls[at];
        if !call.announced {
            if id.is_some() {
                call.id = id;
            }
            if let Some(n) = name {
                // llama-server sends the whole name again when it grew.
                call.name = n;
            }
            call.held.push_str(args.unwrap_or(""));
            if call.name.is_empty() || call.held.is_empty() {
                return Edit::Remove;
            }
            let held = std::mem::take(&mut call.held);
            headers.push(announce(call, String::new()));
            call.sent.push_str(&held);
            self.held -= 1;
            return Edit::Args(index, held);
        }
        let raw = args.unwrap_or("");
        let piece = if finishing { unsent(&call.sent, raw) } else { raw };
        call.sent.push_str(piece);
        let clean = e.index.is_some() && e.id.is_none() && e.kind.is_none() && name_field.is_none() && piece.len() == raw.len();
        if piece.is_empty() {
            Edit::Remove
        } else if clean {
            Edit::Keep
        } else {
            Edit::Args(index, piece.to_owned())
        }
    }
}

/// Marks `c` announced and gives its first delta (an `id` made up when it has none).
fn announce(c: &mut Call, args: String) -> Header {
    c.announced = true;
    let id = c.id.get_or_insert_with(new_call_id).clone();
    c.sent.push_str(&args);
    Header { index: c.index, id, name: c.name.clone(), args }
}

/// Applies `plan`'s edits to the chunk; gives the choice's `role` when first deltas are
/// released before it (it moves to their chunk, which goes first).
fn apply(obj: &mut Map<String, Value>, plan: &Plan) -> Option<Value> {
    let choice = obj
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.get_mut(plan.pos))
        .and_then(Value::as_object_mut)?;
    let delta = choice.get_mut("delta").and_then(Value::as_object_mut)?;
    if let Some(Value::Array(entries)) = delta.get_mut("tool_calls") {
        let old = std::mem::take(entries);
        for (entry, edit) in old.into_iter().zip(plan.edits.iter().chain(std::iter::repeat(&Edit::Keep))) {
            match edit {
                Edit::Keep => entries.push(entry),
                Edit::Remove => {}
                Edit::Args(index, args) => entries.push(json!({"index": index, "function": {"arguments": args}})),
            }
        }
        if entries.is_empty() {
            delta.remove("tool_calls");
        }
    }
    if plan.headers.is_empty() {
        return None;
    }
    delta.remove("role")
}

/// The released first deltas of `choice` in a chunk with the envelope of `src`, then, in a
/// chunk of their own, arguments that were held back with them: one entry per call and chunk,
/// as openai-python's `accumulate_delta` takes a stream's first `tool_calls` list as it is.
fn header_chunks(src: &Map<String, Value>, choice: u32, role: Option<Value>, headers: &[Header], out: &mut Vec<Bytes>) {
    let mut envelope = Map::new();
    for k in ["id", "object", "created", "model", "system_fingerprint", "service_tier"] {
        if let Some(v) = src.get(k) {
            envelope.insert(k.into(), v.clone());
        }
    }
    envelope.entry("object").or_insert_with(|| Value::from("chat.completion.chunk"));
    let chunk = |role: Option<Value>, entries: Vec<Value>| {
        let mut delta = Map::new();
        if let Some(r) = role {
            delta.insert("role".into(), r);
        }
        delta.insert("tool_calls".into(), Value::Array(entries));
        let mut obj = envelope.clone();
        obj.insert(
            "choices".into(),
            json!([{"index": choice, "delta": delta, "logprobs": null, "finish_reason": null}]),
        );
        Bytes::from(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default())
    };
    let heads = headers
        .iter()
        .map(|h| json!({"index": h.index, "id": h.id, "type": "function", "function": {"name": h.name, "arguments": ""}}))
        .collect();
    out.push(chunk(role, heads));
    let held: Vec<Value> = headers
        .iter()
        .filter(|h| !h.args.is_empty())
        .map(|h| json!({"index": h.index, "function": {"arguments": h.args}}))
        .collect();
    if !held.is_empty() {
        out.push(chunk(None, held));
    }
}

/// Nothing left for the client: no choice with a delta, logprobs or finish reason, no usage.
fn is_empty_chunk(obj: &Map<String, Value>) -> bool {
    let Some(Value::Array(choices)) = obj.get("choices") else {
        return false;
    };
    let blank = |v: Option<&Value>| v.is_none_or(Value::is_null);
    !choices.is_empty()
        && blank(obj.get("usage"))
        && choices.iter().all(|c| {
            c.get("delta").is_none_or(|d| d.as_object().is_some_and(Map::is_empty))
                && blank(c.get("finish_reason"))
                && blank(c.get("logprobs"))
        })
}

fn to_bytes(v: &Value, original: &Bytes) -> Bytes {
    serde_json::to_vec(v).map(Bytes::from).unwrap_or_else(|_| original.clone())
}

/// A whole JSON object or array (what an engine re-sends arguments as).
fn is_json_doc(s: &str) -> bool {
    let t = s.trim();
    (t.starts_with('{') || t.starts_with('[')) && serde_json::from_str::<IgnoredAny>(t).is_ok()
}

/// Where `sent` ends inside `piece` when `piece` starts with the same JSON tokens, spacing
/// outside strings aside.
fn align(sent: &str, piece: &str) -> Option<usize> {
    let (s, p) = (sent.as_bytes(), piece.as_bytes());
    let (mut i, mut j) = (0, 0);
    let (mut in_str, mut esc) = (false, false);
    loop {
        if !in_str {
            while i < s.len() && s[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        if i == s.len() {
            return Some(j);
        }
        if !in_str {
            while j < p.len() && p[j].is_ascii_whitespace() {
                j += 1;
            }
        }
        if j == p.len() || s[i] != p[j] {
            return None;
        }
        let b = s[i];
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        }
        i += 1;
        j += 1;
    }
}

/// What of `piece`, the last arguments of a call, the client still lacks, given it has
/// `sent`: a whole JSON document repeating `sent` (vLLM's end-of-stream re-send) gives only
/// its rest; one after arguments that were whole already gives nothing.
fn unsent<'p>(sent: &str, piece: &'p str) -> &'p str {
    if sent.is_empty() || !is_json_doc(piece) {
        return piece;
    }
    if let Some(at) = align(sent, piece) {
        return &piece[at..];
    }
    if is_json_doc(sent) {
        return "";
    }
    piece
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(serde_json::to_vec(&c).unwrap())
    }

    fn run(s: &mut ToolStream, chunks: &[Bytes]) -> Vec<Value> {
        let mut out = Vec::new();
        for c in chunks {
            if s.wants(c) {
                out.extend(s.chunk(c.clone()));
            } else {
                out.push(c.clone());
            }
        }
        out.extend(s.finish());
        out.iter().map(|b| serde_json::from_slice(b).unwrap()).collect()
    }

    fn entries(out: &[Value]) -> Vec<Value> {
        for c in out {
            let mut seen: Vec<u64> = c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten().map(|e| e["index"].as_u64().unwrap()).collect();
            let n = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), n, "one entry per call and chunk: {c}");
        }
        out.iter()
            .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Checks OpenAI's shape and gives (id, name, arguments) per index.
    fn calls(out: &[Value]) -> Vec<(String, String, String)> {
        let mut res: Vec<(String, String, String)> = Vec::new();
        for e in entries(out) {
            let i = e["index"].as_u64().expect("index") as usize;
            let f = e["function"].as_object().expect("function");
            if i == res.len() {
                assert_eq!(e["type"], "function", "{e}");
                assert!(e["id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
                assert_eq!(f["arguments"], "", "first delta: {e}");
                res.push((e["id"].as_str().unwrap().into(), f["name"].as_str().unwrap().into(), String::new()));
            } else {
                assert!(i < res.len(), "index {i} before its first delta");
                let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(keys, ["function", "index"], "{e}");
                assert_eq!(f.keys().collect::<Vec<_>>(), ["arguments"], "{e}");
                let a = f["arguments"].as_str().unwrap();
                assert!(!a.is_empty());
                res[i].2.push_str(a);
            }
        }
        res
    }

    #[test]
    fn an_openai_shaped_stream_passes_byte_for_byte() {
        let stream = [
            chunk(json!({"role": "assistant", "content": null}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), None),
            chunk(json!({}), Some("tool_calls")),
        ];
        let mut s = ToolStream::default();
        for c in &stream {
            let out = if s.wants(c) { s.chunk(c.clone()) } else { vec![c.clone()] };
            assert_eq!(out, vec![c.clone()]);
        }
        assert!(s.finish().is_empty());
    }

    #[test]
    fn llama_servers_first_delta_is_split_from_its_arguments() {
        // tools/server: the first diff of a call carries the arguments parsed so far.
        let mut s = ToolStream::default();
        let out = run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "id": "AbC", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}), None),
            chunk(json!({}), Some("tool_calls")),
        ]);
        assert_eq!(out.len(), 4, "header chunk, its arguments, the next piece, the end");
        assert_eq!(calls(&out), [("AbC".into(), "get_weather".into(), "{}".into())]);
        assert_eq!(out[0]["id"], "c1");
        assert_eq!(out[0]["object"], "chat.completion.chunk");
        assert!(out[0]["choices"][0]["finish_reason"].is_null());
    }

    #[test]
    fn vllms_header_without_arguments_waits_for_the_first_piece() {
        let mut s = ToolStream::default();
        let head = chunk(json!({"tool_calls": [{"id": "chatcmpl-tool-1", "type": "function", "index": 0, "function": {"name": "f"}}]}), None);
        assert!(s.chunk(head).is_empty(), "held, and nothing else was in that chunk");
        let out = run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": "}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), None),
        ]);
        assert_eq!(calls(&out), [("chatcmpl-tool-1".into(), "f".into(), "{\"a\": 1}".into())]);
    }

    #[test]
    fn a_call_without_id_gets_one_and_index_is_filled_in() {
        let later = chunk(json!({"tool_calls": [{"function": {"arguments": "{}"}}]}), None);
        for first in [
            json!({"index": 0, "id": null, "type": "function", "function": {"name": "f", "arguments": ""}}),
            json!({"type": "function", "function": {"name": "f", "arguments": ""}}),
        ] {
            let mut s = ToolStream::default();
            let out = run(&mut s, &[chunk(json!({"tool_calls": [first]}), None), later.clone()]);
            let c = calls(&out);
            assert!(c[0].0.starts_with("call_") && c[0].0.len() == 37, "{c:?}");
            assert_eq!(c[0].2, "{}");
        }
    }

    #[test]
    fn repeated_id_type_and_name_are_removed_from_later_deltas() {
        let mut s = ToolStream::default();
        let out = run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "id": "x", "type": "function", "function": {"name": "f", "arguments": ""}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": null, "type": null, "function": {"name": null, "arguments": ""}}]}), Some("tool_calls")),
        ]);
        assert_eq!(calls(&out), [("x".into(), "f".into(), "{}".into())]);
        assert_eq!(out.last().unwrap()["choices"][0]["delta"], json!({}), "the finishing chunk stays, emptied");
    }

    #[test]
    fn a_name_that_comes_late_or_grows_is_sent_whole_once() {
        // common_chat_msg_diff::compute_diffs: id first without a name, then id and the whole
        // name again with the arguments; a second call whose name grows from a prefix.
        let mut s = ToolStream::default();
        let out = run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "id": "A", "type": "function"}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": "A", "type": "function", "function": {"name": "get_weather", "arguments": "{\""}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "a\": 1}"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 1, "id": "B", "type": "function", "function": {"name": "get_w"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 1, "id": "B", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}), None),
            chunk(json!({}), Some("tool_calls")),
        ]);
        assert_eq!(
            calls(&out),
            [("A".into(), "get_weather".into(), "{\"a\": 1}".into()), ("B".into(), "get_weather".into(), "{}".into())]
        );
    }

    #[test]
    fn held_first_deltas_are_released_by_the_next_call_the_finish_or_the_end() {
        let head = |i: u32, name: &str| chunk(json!({"tool_calls": [{"index": i, "id": format!("id{i}"), "type": "function", "function": {"name": name}}]}), None);
        // Released by the next call and by the finish (a tool without parameters).
        let mut s = ToolStream::default();
        let out = run(&mut s, &[head(0, "a"), head(1, "b"), chunk(json!({}), Some("tool_calls"))]);
        assert_eq!(calls(&out), [("id0".into(), "a".into(), String::new()), ("id1".into(), "b".into(), String::new())]);
        assert_eq!(out.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
        // Released at the end of a stream that never finished its choice.
        let mut s = ToolStream::default();
        let out = run(&mut s, &[head(0, "a")]);
        assert_eq!(calls(&out), [("id0".into(), "a".into(), String::new())]);
        assert_eq!((out[0]["id"].clone(), out[0]["model"].clone()), (json!("c1"), json!("m")));
    }

    #[test]
    fn arguments_held_without_a_name_follow_their_first_delta() {
        let mut s = ToolStream::default();
        let out = run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "id": "x", "type": "function", "function": {"arguments": "{}"}}]}), None),
            chunk(json!({}), Some("tool_calls")),
        ]);
        assert_eq!(out.len(), 3, "first delta, the held arguments, the finish");
        assert_eq!(calls(&out), [("x".into(), String::new(), "{}".into())]);
    }

    #[test]
    fn the_role_goes_with_the_first_delta_it_came_with() {
        let mut s = ToolStream::default();
        let out = run(&mut s, &[chunk(
            json!({"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            None,
        )]);
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(out[1]["choices"][0]["delta"].get("role").is_none());
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "");
        assert_eq!(calls(&out)[0].2, "{}");
    }

    #[test]
    fn an_end_of_stream_resend_gives_only_what_is_missing() {
        let start = || {
            vec![
                chunk(json!({"tool_calls": [{"id": "v", "type": "function", "index": 0, "function": {"name": "f"}}]}), None),
                chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Paris"}}]}), None),
                chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\",\"unit\":\""}}]}), None),
            ]
        };
        let last = |args: &str| chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}), Some("tool_calls"));
        // json.dumps spacing differs from the model's: the whole arguments come again.
        let mut st = start();
        st.push(last("{\"city\": \"Paris\", \"unit\": \"cel\"}"));
        let mut s = ToolStream::default();
        let got = calls(&run(&mut s, &st));
        assert_eq!(got[0].2, "{\"city\": \"Paris\",\"unit\":\"cel\"}");
        // Same spacing: vLLM's own `replace` already sent only the rest; it passes.
        let mut st = start();
        st.push(last("cel\"}"));
        let mut s = ToolStream::default();
        assert_eq!(calls(&run(&mut s, &st))[0].2, "{\"city\": \"Paris\",\"unit\":\"cel\"}");
        // Whole arguments after whole arguments (vLLM #51697): nothing more.
        let mut st = start();
        st.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "c\"}"}}]}), None));
        st.push(last("{\"city\": \"Paris\",\"unit\":\"c\"}"));
        let mut s = ToolStream::default();
        assert_eq!(calls(&run(&mut s, &st))[0].2, "{\"city\": \"Paris\",\"unit\":\"c\"}");
        // Mid-stream, a piece is never second-guessed.
        let mut s = ToolStream::default();
        let got = calls(&run(&mut s, &[
            chunk(json!({"tool_calls": [{"index": 0, "id": "v", "type": "function", "function": {"name": "f", "arguments": ""}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": 1}"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}), Some("tool_calls")),
        ]));
        assert_eq!(got[0].2, "{\"a\":{\"a\": 1}}");
    }

    #[test]
    fn unsent_and_align() {
        assert_eq!(align("{\"a\":\"x y\"", "{ \"a\" : \"x y\", \"b\": 2}"), Some(13));
        assert_eq!(align("{\"a\":\"x  y", "{\"a\":\"x y\"}"), None, "spacing inside strings counts");
        assert_eq!(align("{\"a\\\"\":", "{\"a\\\"\": 1}"), Some(7));
        assert_eq!(unsent("", "{\"a\": 1}"), "{\"a\": 1}", "nothing sent: all of it");
        assert_eq!(unsent("{\"a\": ", "1}"), "1}", "not a whole document: a piece");
        assert_eq!(unsent("{\"a\": 1}", "{\"a\": 1}"), "");
        assert_eq!(unsent("{", "{\"a\": 1}"), "\"a\": 1}");
        assert_eq!(unsent("{\"a\": 1}", "{\"b\": 2}"), "", "the client's were whole");
        assert_eq!(unsent("{\"a\": \"\\u00e9", "{\"a\": \"é\"}"), "{\"a\": \"é\"}", "cannot align: relayed");
    }

    #[test]
    fn chunks_without_tool_calls_are_not_wanted() {
        let s = ToolStream::default();
        assert!(!s.wants(&chunk(json!({"content": "the \"tool_calls\" key"}), None)));
        assert!(s.wants(&chunk(json!({"tool_calls": []}), None)));
    }
}
