//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::choice::{collect, ChatLogprobs, Choice, Piece, Source, ToolHead};
use crate::error::ApiError;
use crate::gen::{choice_seed, count_words, Finish, Fnv, Lp, Pieces, SplitMix64, WordGen};
use crate::params::{self, Common};
use crate::schema::{generate, to_spaced_json};
use crate::sse::{self, Pacer, RequestGuard};
use crate::{new_id, unix_now, TestEngine};

pub const FINGERPRINT: &str = "fp_cocoon_test";
const MAX_MESSAGES: usize = 100_000;

/// What the prompt contributes: its token count, its hash (the PRNG seed) and the last user text.
struct Prompt {
    tokens: u64,
    hash: u64,
    last_user: String,
}

fn prompt(body: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let msgs = match body.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid(
                "messages",
                "'messages' must contain at least one message.",
            ))
        }
        Some(Value::Array(a)) if a.len() > MAX_MESSAGES => {
            return Err(ApiError::invalid(
                "messages",
                format!("'messages' allows at most {MAX_MESSAGES} messages."),
            ))
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "'messages' must be an array.",
            ))
        }
    };
    let mut p = Prompt {
        tokens: 0,
        hash: 0,
        last_user: String::new(),
    };
    let mut h = Fnv::default();
    for (i, m) in msgs.iter().enumerate() {
        let m = m.as_object().ok_or_else(|| {
            ApiError::invalid(format!("messages[{i}]"), "Each message must be an object.")
        })?;
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let mut texts: Vec<&str> = Vec::new();
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => texts.push(s),
            Some(Value::Array(parts)) => {
                texts.extend(
                    parts
                        .iter()
                        .filter_map(|part| part.get("text").and_then(Value::as_str)),
                );
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "'content' must be a string or an array of content parts.",
                ))
            }
        }
        p.tokens += 3;
        h.write(role.as_bytes());
        h.write(b"\x1e");
        for t in &texts {
            p.tokens += count_words(t);
            h.write(t.as_bytes());
            h.write(b"\x1f");
        }
        if role == "user" {
            p.last_user = texts.join(" ");
        }
    }
    p.hash = h.finish();
    Ok(p)
}

struct Tool<'a> {
    name: &'a str,
    parameters: Option<&'a Value>,
}

fn tools(body: &Map<String, Value>) -> Result<Vec<Tool<'_>>, ApiError> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("tools", "'tools' must be an array.")),
    };
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        // Only function tools can be answered; other kinds (custom, ...) are accepted and ignored.
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            continue;
        }
        let f = t.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "Each function tool needs a 'function.name'.",
                )
            })?;
        out.push(Tool {
            name,
            parameters: f.and_then(|f| f.get("parameters")).filter(|p| !p.is_null()),
        });
    }
    Ok(out)
}

/// Which tool (index into `tools`) the answer calls, if any.
fn chosen_tool(
    body: &Map<String, Value>,
    tools: &[Tool<'_>],
    last_user: &str,
) -> Result<Option<usize>, ApiError> {
    if tools.is_empty() {
        return Ok(None);
    }
    let auto = || {
        Ok(tools
            .iter()
            .position(|t| !t.name.is_empty() && last_user.contains(t.name)))
    };
    match body.get("tool_choice") {
        None | Some(Value::Null) => auto(),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => auto(),
            "none" => Ok(None),
            "required" => Ok(Some(0)),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "'tool_choice' must be 'none', 'auto', 'required' or a named tool.",
            )),
        },
        Some(Value::Object(o)) => {
            let named = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), named) {
                (Some("function"), Some(name)) => match tools.iter().position(|t| t.name == name) {
                    Some(i) => Ok(Some(i)),
                    None => Err(ApiError::invalid(
                        "tool_choice",
                        format!("Tool '{name}' is not among 'tools'."),
                    )),
                },
                // allowed_tools and other newer shapes: behave like "auto".
                (Some(t), _) if t != "function" => auto(),
                _ => Err(ApiError::invalid(
                    "tool_choice.function.name",
                    "A named tool_choice needs 'function.name'.",
                )),
            }
        }
        Some(_) => Err(ApiError::invalid(
            "tool_choice",
            "'tool_choice' must be a string or an object.",
        )),
    }
}

enum Format<'a> {
    Text,
    JsonObject,
    JsonSchema(&'a Value),
}

fn response_format(body: &Map<String, Value>) -> Result<Format<'_>, ApiError> {
    let Some(rf) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            static OBJECT: std::sync::LazyLock<Value> =
                std::sync::LazyLock::new(|| json!({"type": "object"}));
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| !s.is_null());
            Ok(Format::JsonSchema(schema.unwrap_or(&OBJECT)))
        }
        _ => Err(ApiError::invalid(
            "response_format.type",
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
        )),
    }
}

/// Everything needed to produce the answer, validated up front so errors come before any stream.
struct Plan {
    common: Common,
    prompt_tokens: u64,
    top: Option<u8>,
    choices: Vec<Choice>,
}

fn plan(body: &Value, engine: &TestEngine) -> Result<Plan, ApiError> {
    let body = params::as_object(body)?;
    let common = params::common(body, engine.config())?;
    let p = prompt(body)?;
    let top = params::chat_logprobs(body)?;
    let tools = tools(body)?;
    let tool = chosen_tool(body, &tools, &p.last_user)?;
    let format = response_format(body)?;
    opt_bool_ok(body, "parallel_tool_calls")?;

    let fixed = tool.is_some() || !matches!(format, Format::Text);
    let planned = u64::from(
        common
            .completion_tokens
            .unwrap_or(24)
            .min(common.limit.unwrap_or(u32::MAX)),
    );
    if fixed || !common.stream {
        params::check_budget(
            u64::from(common.n),
            planned.max(64),
            if common.stream { None } else { top },
        )?;
    }

    let mut choices = Vec::with_capacity(common.n as usize);
    for index in 0..common.n {
        let seed = choice_seed(p.hash, common.seed, index);
        let words = WordGen::new(
            seed,
            common.completion_tokens,
            common.limit,
            common.stops.clone(),
            engine.config().max_tokens_default,
        );
        let choice = if let Some(t) = tool.and_then(|i| tools.get(i)) {
            let mut rng = SplitMix64::new(seed ^ 0x7001);
            let id = format!("call_{:016x}{:08x}", rng.next_u64(), rng.next_u64() as u32);
            static EMPTY: std::sync::LazyLock<Value> =
                std::sync::LazyLock::new(|| json!({"type": "object", "properties": {}}));
            let args = generate(t.parameters.unwrap_or(&EMPTY), &mut rng).map_err(|e| {
                ApiError::invalid(
                    format!("tools[{}].function.parameters", tool.unwrap_or(0)),
                    e,
                )
            })?;
            let src = Source::Fixed {
                pieces: Pieces::new(to_spaced_json(&args)),
                finish: Finish::ToolCalls,
            };
            Choice::new(
                index,
                src,
                Some(ToolHead {
                    id,
                    name: t.name.to_owned(),
                }),
                seed,
                top.is_some(),
            )
        } else {
            let src = match &format {
                Format::Text => Source::Words(words),
                Format::JsonObject => {
                    let mut words = words;
                    let mut answer = String::new();
                    while let Some(w) = words.next_token() {
                        answer.push_str(w);
                    }
                    let text = to_spaced_json(&json!({ "answer": answer }));
                    Source::Fixed {
                        pieces: Pieces::new(text),
                        finish: words.finish(),
                    }
                }
                Format::JsonSchema(schema) => {
                    let mut rng = SplitMix64::new(seed ^ 0x5c4e);
                    let v = generate(schema, &mut rng)
                        .map_err(|e| ApiError::invalid("response_format.json_schema.schema", e))?;
                    Source::Fixed {
                        pieces: Pieces::new(to_spaced_json(&v)),
                        finish: Finish::Stop,
                    }
                }
            };
            Choice::new(index, src, None, seed, top.is_some())
        };
        choices.push(choice);
    }
    Ok(Plan {
        common,
        prompt_tokens: p.tokens,
        top,
        choices,
    })
}

fn opt_bool_ok(body: &Map<String, Value>, key: &str) -> Result<(), ApiError> {
    params::opt_bool(body, key).map(|_| ())
}

/// `CompletionUsage` with the detail objects OpenAI sends.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptDetails,
    pub completion_tokens_details: CompletionDetails,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptDetails {
    pub cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionDetails {
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails { cached_tokens: 0 },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
            },
        }
    }
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
}

#[derive(Serialize)]
struct ResponseChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<ChatLogprobs<'a>>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ResponseChoice<'a>>,
    usage: Usage,
}

pub async fn handle(engine: Arc<TestEngine>, body: &Value) -> Response {
    let plan = match plan(body, &engine) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if plan.common.stream {
        stream(engine, plan)
    } else {
        answer(engine, plan).await
    }
}

async fn answer(engine: Arc<TestEngine>, plan: Plan) -> Response {
    let mut guard = RequestGuard::start(engine.clone());
    let Plan {
        common,
        prompt_tokens,
        top,
        choices,
    } = plan;
    let done: Vec<_> = choices.into_iter().map(collect).collect();
    let completion: u64 = done.iter().map(|c| c.tokens).sum();
    let longest = done.iter().map(|c| c.tokens).max().unwrap_or(0);
    let mut pacer = Pacer::new(common.timing, &engine);
    if !pacer
        .before_answer(u32::try_from(longest).unwrap_or(u32::MAX))
        .await
    {
        return ApiError::other(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The engine is shutting down.",
            None,
        )
        .into_response();
    }
    let id = new_id("chatcmpl-");
    let resp = ChatResponse {
        id: &id,
        object: "chat.completion",
        created: unix_now(),
        model: &common.model,
        system_fingerprint: FINGERPRINT,
        choices: done
            .iter()
            .map(|c| {
                let tool_calls = c.tool.as_ref().map(|t| {
                    [ToolCall {
                        id: &t.id,
                        kind: "function",
                        function: FunctionCall {
                            name: &t.name,
                            arguments: &c.text,
                        },
                    }]
                });
                let content = if tool_calls.is_some() {
                    None
                } else {
                    Some(c.text.as_str())
                };
                let logprobs = top.map(|top| ChatLogprobs {
                    text: &c.text,
                    entries: &c.entries,
                    first_pos: 0,
                    top,
                });
                ResponseChoice {
                    index: c.index,
                    message: Message {
                        role: "assistant",
                        content,
                        refusal: None,
                        tool_calls,
                    },
                    logprobs,
                    finish_reason: c.finish.as_str(),
                }
            })
            .collect(),
        usage: Usage::new(prompt_tokens, completion),
    };
    let out = Json(&resp).into_response();
    guard.add_tokens(completion);
    guard.complete();
    out
}

// ---- streaming ----

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<ChatLogprobs<'a>>,
    finish_reason: Option<&'static str>,
}

/// `usage` of a chunk: absent unless include_usage; then null, except on the last chunk.
pub enum UsageField {
    Absent,
    Null,
    Set(Usage),
}

impl UsageField {
    pub fn is_absent(&self) -> bool {
        matches!(self, UsageField::Absent)
    }
}

impl Serialize for UsageField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Set(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

struct ChoiceState {
    choice: Choice,
    /// Looked-ahead token, so the final chunk can follow the last token without an extra pause.
    pending: Option<Piece>,
    pos: u32,
    started: bool,
    finished: bool,
}

struct StreamState {
    guard: RequestGuard,
    pacer: Pacer,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    top: Option<u8>,
    prompt_tokens: u64,
    completion_tokens: u64,
    choices: Vec<ChoiceState>,
    role_sent: bool,
    /// The first token's slot was already waited for (with the role chunk).
    first_paced: bool,
    done: bool,
}

impl StreamState {
    fn push(&self, buf: &mut Vec<u8>, choice: ChunkChoice<'_>) {
        let usage = if self.include_usage {
            UsageField::Null
        } else {
            UsageField::Absent
        };
        self.push_chunk(buf, std::slice::from_ref(&choice), usage);
    }

    fn push_chunk(&self, buf: &mut Vec<u8>, choices: &[ChunkChoice<'_>], usage: UsageField) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: FINGERPRINT,
            choices,
            usage,
        };
        sse::push_event(buf, &chunk);
    }

    async fn step(mut self) -> Option<(Bytes, Self)> {
        if self.done {
            return None;
        }
        let mut buf = Vec::with_capacity(256 * self.choices.len());
        if !self.role_sent {
            // The role chunk comes after prefill, with the first token, as vLLM's does
            // (serving_chat.py sends it on the engine's first output): a worker that never
            // gets its first token sends nothing at all.
            if !self.pacer.before_token().await {
                return None;
            }
            self.first_paced = true;
            self.role_sent = true;
            for c in &self.choices {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                };
                self.push(
                    &mut buf,
                    ChunkChoice {
                        index: c.choice.index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    },
                );
            }
            return Some((Bytes::from(buf), self));
        }
        if std::mem::take(&mut self.first_paced) {
            // This token's slot was waited for before the role chunk.
        } else if !self.pacer.before_token().await {
            return None; // shutting down: end without [DONE]; the guard counts it cancelled
        }
        let mut emitted = 0u64;
        let mut all_done = true;
        let mut states = std::mem::take(&mut self.choices);
        for st in states.iter_mut().filter(|s| !s.finished) {
            if !st.started {
                st.started = true;
                st.pending = st.choice.next_piece();
                if let Some(t) = &st.choice.tool {
                    let head = ToolCallDelta {
                        index: 0,
                        id: Some(&t.id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&t.name),
                            arguments: "",
                        },
                    };
                    let delta = Delta {
                        tool_calls: Some([head]),
                        ..Delta::default()
                    };
                    self.push(
                        &mut buf,
                        ChunkChoice {
                            index: st.choice.index,
                            delta,
                            logprobs: None,
                            finish_reason: None,
                        },
                    );
                }
            }
            if let Some(p) = st.pending {
                emitted += 1;
                let lp = st.choice.next_lp();
                let text = st.choice.text(p);
                let entry: [(usize, usize, Lp); 1];
                let logprobs = match (self.top, lp) {
                    (Some(top), Some(lp)) => {
                        entry = [(0, text.len(), lp)];
                        Some(ChatLogprobs {
                            text,
                            entries: &entry,
                            first_pos: st.pos,
                            top,
                        })
                    }
                    _ => None,
                };
                let delta = if st.choice.tool.is_some() {
                    let frag = ToolCallDelta {
                        index: 0,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: text,
                        },
                    };
                    Delta {
                        tool_calls: Some([frag]),
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    }
                };
                self.push(
                    &mut buf,
                    ChunkChoice {
                        index: st.choice.index,
                        delta,
                        logprobs,
                        finish_reason: None,
                    },
                );
                st.pos = st.pos.saturating_add(1);
                st.pending = st.choice.next_piece();
            }
            if st.pending.is_none() {
                st.finished = true;
                let fin = ChunkChoice {
                    index: st.choice.index,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: Some(st.choice.finish().as_str()),
                };
                self.push(&mut buf, fin);
            } else {
                all_done = false;
            }
        }
        self.choices = states;
        self.completion_tokens += emitted;
        self.guard.add_tokens(emitted);
        if all_done {
            if self.include_usage {
                let usage = UsageField::Set(Usage::new(self.prompt_tokens, self.completion_tokens));
                self.push_chunk(&mut buf, &[], usage);
            }
            sse::push_done(&mut buf);
            self.guard.complete();
            self.done = true;
        }
        Some((Bytes::from(buf), self))
    }
}

fn stream(engine: Arc<TestEngine>, plan: Plan) -> Response {
    let Plan {
        common,
        prompt_tokens,
        top,
        choices,
    } = plan;
    let state = StreamState {
        guard: RequestGuard::start(engine.clone()),
        pacer: Pacer::new(common.timing, &engine),
        id: new_id("chatcmpl-"),
        created: unix_now(),
        model: common.model,
        include_usage: common.include_usage,
        top,
        prompt_tokens,
        completion_tokens: 0,
        choices: choices
            .into_iter()
            .map(|choice| ChoiceState {
                choice,
                pending: None,
                pos: 0,
                started: false,
                finished: false,
            })
            .collect(),
        role_sent: false,
        first_paced: false,
        done: false,
    };
    sse::drive(state, StreamState::step)
}
