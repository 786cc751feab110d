//! Request validation. Bodies stay raw JSON (so every field reaches the engine unchanged);
//! this module reads only what the network needs and rejects what no engine should receive,
//! with a message that names the parameter, the rule and the value given.

use protocol::Endpoint;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Cocoon's own body field: the highest worker price coefficient (thousandths) the client accepts.
/// Read by the router and removed before the body reaches an engine.
pub const MAX_PRICE_FIELD: &str = "max_price_coefficient";

/// What the network needs to know about a valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Rough prompt size, for token rate limits before the engine has counted.
    pub prompt_tokens_estimate: u64,
    /// The client's own per-choice cap (`max_completion_tokens`, else `max_tokens`).
    pub max_tokens: Option<u64>,
    /// Choices generated per request (`n`, or `best_of` when larger): each may use the cap.
    pub choices: u64,
    /// Whether the endpoint generates tokens (embeddings do not).
    pub generates: bool,
    pub max_price_coefficient: Option<u32>,
}

impl ValidRequest {
    /// The per-choice cap the engine gets: the client's, or `default_cap` when it set none.
    /// Forwarded explicitly either way, so no generation can run past what the hold covers.
    pub fn cap_per_choice(&self, default_cap: u64) -> u64 {
        self.max_tokens.unwrap_or(default_cap)
    }

    /// Worst-case completion tokens: the cap for every choice (0 for embeddings).
    pub fn max_completion_tokens(&self, default_cap: u64) -> u64 {
        if self.generates {
            self.cap_per_choice(default_cap).saturating_mul(self.choices)
        } else {
            0
        }
    }

    /// Tokens charged against the per-minute budget up front; corrected when usage arrives.
    pub fn token_estimate(&self, default_cap: u64) -> u64 {
        self.prompt_tokens_estimate.saturating_add(self.max_completion_tokens(default_cap))
    }

    /// Whether the body must be rewritten before forwarding (otherwise it goes byte for byte).
    pub fn needs_rewrite(&self) -> bool {
        self.max_price_coefficient.is_some() || (self.generates && self.max_tokens.is_none())
    }
}

/// Parses a request body into a JSON object, with OpenAI's message for broken JSON.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
            code: Some("invalid_json"),
        }),
        Err(e) => Err(ApiError::InvalidRequest {
            message: format!(
                "We could not parse the JSON body of your request: {e}. (HINT: the body must be valid JSON with Content-Type: application/json.)"
            ),
            param: None,
            code: Some("invalid_json"),
        }),
    }
}

/// Gives the body to forward: the original bytes, or a rewrite that sets the generation cap
/// the hold covers when the client set none (`max_tokens`, which every engine reads) and
/// drops Cocoon's own routing field. (Usage for a stream is asked of the engine by the
/// worker, which keeps the client's own `include_usage` choice.)
pub fn forward_body(original: bytes::Bytes, mut obj: Map<String, Value>, req: &ValidRequest, default_cap: u64) -> bytes::Bytes {
    if !req.needs_rewrite() {
        return original;
    }
    obj.remove(MAX_PRICE_FIELD);
    if req.generates && req.max_tokens.is_none() {
        obj.insert(cap_field(req.endpoint).into(), Value::from(default_cap));
    }
    serde_json::to_vec(&obj).map(bytes::Bytes::from).unwrap_or(original)
}

/// The body field that caps generation: `max_output_tokens` in the Responses API,
/// `max_tokens` (which every engine reads) elsewhere.
pub fn cap_field(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Responses => "max_output_tokens",
        _ => "max_tokens",
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// Present and not null.
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn model(&self) -> Result<String, ApiError> {
        match self.get("model") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(ApiError::invalid("model", "`model` must not be empty.")),
            Some(v) => Err(ApiError::invalid(
                "model",
                format!("`model` must be a string, got {}.", type_name(v)),
            )),
            None => Err(ApiError::invalid("model", "Missing required parameter: 'model'.")),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                k,
                format!("`{k}` must be a boolean, got {}.", type_name(v)),
            )),
        }
    }

    fn int(&self, k: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
                _ => Err(ApiError::invalid(
                    k,
                    format!("`{k}` must be an integer between {min} and {max}, got {n}."),
                )),
            },
            Some(v) => Err(ApiError::invalid(
                k,
                format!("`{k}` must be an integer, got {}.", type_name(v)),
            )),
        }
    }

    fn number(&self, k: &str, min: f64, max: f64) -> Result<(), ApiError> {
        match self.get(k) {
            None => Ok(()),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x >= min && x <= max => Ok(()),
                _ => Err(ApiError::invalid(
                    k,
                    format!("`{k}` must be a number between {min} and {max}, got {n}."),
                )),
            },
            Some(v) => Err(ApiError::invalid(
                k,
                format!("`{k}` must be a number, got {}.", type_name(v)),
            )),
        }
    }

    fn string(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(
                k,
                format!("`{k}` must be a string, got {}.", type_name(v)),
            )),
        }
    }

    fn stop(&self) -> Result<(), ApiError> {
        match self.get("stop") {
            None | Some(Value::String(_)) => Ok(()),
            Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => Ok(()),
            Some(Value::Array(a)) if a.len() > 4 => Err(ApiError::invalid(
                "stop",
                format!("`stop` accepts at most 4 sequences, got {}.", a.len()),
            )),
            Some(_) => Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or an array of strings.",
            )),
        }
    }

    fn common_sampling(&self) -> Result<(), ApiError> {
        self.number("temperature", 0.0, 2.0)?;
        self.number("top_p", 0.0, 1.0)?;
        self.number("presence_penalty", -2.0, 2.0)?;
        self.number("frequency_penalty", -2.0, 2.0)?;
        self.int("seed", i64::MIN, i64::MAX)?;
        self.string("user")?;
        self.stop()
    }

    fn stream(&self) -> Result<(bool, bool), ApiError> {
        let stream = self.bool("stream")?.unwrap_or(false);
        let include_usage = match self.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        format!("`stream_options.include_usage` must be a boolean, got {}.", type_name(v)),
                    ))
                }
            },
            Some(v) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    format!("`stream_options` must be an object, got {}.", type_name(v)),
                ))
            }
        };
        if include_usage && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            ));
        }
        Ok((stream, include_usage))
    }

    fn max_price(&self) -> Result<Option<u32>, ApiError> {
        Ok(self
            .int(MAX_PRICE_FIELD, 1000, 1_000_000)?
            .and_then(|v| u32::try_from(v).ok()))
    }
}

/// Words/4-ish estimate without a tokenizer: one token per 4 bytes, at least one per word.
fn estimate_text(s: &str) -> u64 {
    let by_bytes = (s.len() as u64).div_ceil(4);
    let words = s.split_whitespace().count() as u64;
    by_bytes.max(words)
}

fn estimate_content(v: &Value) -> u64 {
    match v {
        Value::String(s) => estimate_text(s),
        Value::Array(parts) => parts.iter().map(estimate_content).sum(),
        Value::Object(o) => o.get("text").map_or(0, estimate_content),
        _ => 0,
    }
}

/// `prompt` / `input`: a string, or a non-empty array of strings or token arrays.
fn estimate_inputs(f: &Fields<'_>, key: &str, shape: &str) -> Result<u64, ApiError> {
    match f.get(key) {
        Some(Value::String(s)) => Ok(estimate_text(s)),
        Some(Value::Array(a)) if !a.is_empty() => Ok(a
            .iter()
            .map(|p| match p {
                Value::String(s) => estimate_text(s),
                Value::Array(toks) => toks.len() as u64,
                _ => 1,
            })
            .sum()),
        Some(Value::Array(_)) => Err(ApiError::invalid(key, format!("`{key}` must not be empty."))),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be {shape}."))),
        None => Err(ApiError::invalid(key, format!("Missing required parameter: '{key}'."))),
    }
}

const ROLES: [&str; 6] = ["system", "developer", "user", "assistant", "tool", "function"];

fn validate_messages(f: &Fields<'_>) -> Result<u64, ApiError> {
    let msgs = match f.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must contain at least one message.",
            ))
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages` must be an array, got {}.", type_name(v)),
            ))
        }
        None => return Err(ApiError::invalid("messages", "Missing required parameter: 'messages'.")),
    };
    let mut tokens = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                format!("`messages[{i}]` must be an object, got {}.", type_name(m)),
            ));
        };
        match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "Invalid value for 'messages[{i}].role': {r:?}. Supported values are: {}.",
                        ROLES.join(", ")
                    ),
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("Missing required parameter: 'messages[{i}].role'."),
                ))
            }
        }
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!(
                        "`messages[{i}].content` must be a string or an array of content parts, got {}.",
                        type_name(v)
                    ),
                ))
            }
        }
        tokens = tokens
            .saturating_add(m.get("content").map_or(0, estimate_content))
            .saturating_add(4);
    }
    Ok(tokens)
}

fn validate_tools(f: &Fields<'_>) -> Result<(), ApiError> {
    let Some(tools) = f.get("tools") else {
        return Ok(());
    };
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools", "`tools` must be an array."));
    };
    for (i, t) in tools.iter().enumerate() {
        let name = t.get("function").and_then(|fun| fun.get("name"));
        if !matches!(name, Some(Value::String(s)) if !s.is_empty()) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("Missing required parameter: 'tools[{i}].function.name'."),
            ));
        }
    }
    Ok(())
}

fn validate_response_format(f: &Fields<'_>) -> Result<(), ApiError> {
    let Some(rf) = f.get("response_format") else {
        return Ok(());
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") | Some("json_object") => Ok(()),
        Some("json_schema") => match rf.get("json_schema") {
            Some(Value::Object(js)) if js.get("name").is_some_and(Value::is_string) => Ok(()),
            _ => Err(ApiError::invalid(
                "response_format.json_schema",
                "`response_format.json_schema` must be an object with a `name` and a `schema`.",
            )),
        },
        _ => Err(ApiError::invalid(
            "response_format.type",
            "`response_format.type` must be one of text, json_object, json_schema.",
        )),
    }
}

/// The client's per-choice cap: `max_completion_tokens` wins over the older `max_tokens`.
fn max_tokens(f: &Fields<'_>) -> Result<Option<u64>, ApiError> {
    let a = f.int("max_tokens", 1, 10_000_000)?;
    let b = f.int("max_completion_tokens", 1, 10_000_000)?;
    Ok(b.or(a).map(|m| m as u64))
}

pub fn chat(obj: &Map<String, Value>) -> Result<ValidRequest, ApiError> {
    let f = Fields(obj);
    let model = f.model()?;
    let prompt = validate_messages(&f)?;
    let (stream, include_usage) = f.stream()?;
    let n = f.int("n", 1, 128)?.unwrap_or(1) as u64;
    f.common_sampling()?;
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    if f.int("top_logprobs", 0, 20)?.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` requires `logprobs` to be true.",
        ));
    }
    f.bool("parallel_tool_calls")?;
    validate_tools(&f)?;
    validate_response_format(&f)?;
    Ok(ValidRequest {
        endpoint: Endpoint::ChatCompletions,
        model,
        stream,
        include_usage,
        prompt_tokens_estimate: prompt,
        max_tokens: max_tokens(&f)?,
        choices: n,
        generates: true,
        max_price_coefficient: f.max_price()?,
    })
}

pub fn completion(obj: &Map<String, Value>) -> Result<ValidRequest, ApiError> {
    let f = Fields(obj);
    let model = f.model()?;
    let prompt = estimate_inputs(&f, "prompt", "a string, an array of strings or an array of token arrays")?;
    let (stream, include_usage) = f.stream()?;
    let n = f.int("n", 1, 128)?.unwrap_or(1) as u64;
    // The engine generates best_of candidates and returns n of them: all are paid for.
    let best_of = f.int("best_of", 1, 128)?.map_or(n, |b| b as u64);
    if best_of < n {
        return Err(ApiError::invalid("best_of", format!("`best_of` ({best_of}) must be at least `n` ({n}).")));
    }
    f.int("logprobs", 0, 5)?;
    f.bool("echo")?;
    f.common_sampling()?;
    Ok(ValidRequest {
        endpoint: Endpoint::Completions,
        model,
        stream,
        include_usage,
        prompt_tokens_estimate: prompt,
        max_tokens: max_tokens(&f)?,
        choices: best_of.max(n),
        generates: true,
        max_price_coefficient: f.max_price()?,
    })
}

pub fn embeddings(obj: &Map<String, Value>) -> Result<ValidRequest, ApiError> {
    let f = Fields(obj);
    let model = f.model()?;
    let tokens = estimate_inputs(&f, "input", "a string, an array of strings, or token arrays")?;
    match f.string("encoding_format")? {
        None | Some("float") | Some("base64") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("`encoding_format` must be `float` or `base64`, got {other:?}."),
            ))
        }
    }
    f.int("dimensions", 1, 65_536)?;
    f.string("user")?;
    Ok(ValidRequest {
        endpoint: Endpoint::Embeddings,
        model,
        stream: false,
        include_usage: false,
        prompt_tokens_estimate: tokens,
        max_tokens: None,
        choices: 1,
        generates: false,
        max_price_coefficient: f.max_price()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn param_of(r: Result<ValidRequest, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected invalid request, got {other:?}"),
        }
    }

    fn base() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi there"}]})
    }

    fn with(k: &str, v: Value) -> Map<String, Value> {
        let mut b = obj(base());
        b.insert(k.into(), v);
        b
    }

    #[test]
    fn accepts_a_full_request() {
        let r = chat(&obj(json!({
            "model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
            "stream": true, "stream_options": {"include_usage": true}, "n": 2, "max_tokens": 10,
            "temperature": 0.5, "top_p": 1, "logprobs": true, "top_logprobs": 3, "stop": ["x"], "seed": 1,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "required",
            "parallel_tool_calls": false, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "user": "u", "some_unknown": {"a": 1}
        })))
        .unwrap();
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_completion_tokens(999), 20);
        assert!(!r.needs_rewrite());
    }

    #[test]
    fn names_the_offending_param() {
        assert_eq!(param_of(chat(&with("temperature", json!(5)))), "temperature");
        assert_eq!(param_of(chat(&with("n", json!(0)))), "n");
        assert_eq!(param_of(chat(&with("top_p", json!(2)))), "top_p");
        assert_eq!(param_of(chat(&with("max_tokens", json!(0)))), "max_tokens");
        assert_eq!(param_of(chat(&with("messages", json!([])))), "messages");
        assert_eq!(
            param_of(chat(&with("messages", json!([{"role": "wizard", "content": "x"}])))),
            "messages[0].role"
        );
        assert_eq!(param_of(chat(&with("model", json!(3)))), "model");
        assert_eq!(param_of(chat(&with("stop", json!([1])))), "stop");
        assert_eq!(param_of(chat(&with("top_logprobs", json!(2)))), "top_logprobs");
        assert_eq!(
            param_of(chat(&with("tools", json!([{"type": "function", "function": {}}])))),
            "tools[0].function.name"
        );
        assert_eq!(param_of(chat(&with("stream_options", json!({"include_usage": true})))), "stream_options");
        assert_eq!(param_of(completion(&obj(json!({"model": "m"})))), "prompt");
        assert_eq!(param_of(embeddings(&obj(json!({"model": "m", "input": 3})))), "input");
        assert_eq!(
            param_of(embeddings(&obj(json!({"model": "m", "input": "x", "encoding_format": "hex"})))),
            "encoding_format"
        );
    }

    #[test]
    fn broken_json_is_invalid_json() {
        match parse_object(b"{\"model\": ") {
            Err(ApiError::InvalidRequest { code, .. }) => assert_eq!(code, Some("invalid_json")),
            other => panic!("{other:?}"),
        }
        assert!(parse_object(b"[1]").is_err());
    }

    #[test]
    fn stream_body_keeps_the_clients_usage_choice_and_drops_cocoon_field() {
        let mut o = with("stream", json!(true));
        o.insert(MAX_PRICE_FIELD.into(), json!(1500));
        let r = chat(&o).unwrap();
        assert_eq!(r.max_price_coefficient, Some(1500));
        let out = forward_body(bytes::Bytes::from_static(b"orig"), o, &r, 64);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("stream_options").is_none(), "the worker asks its engine for usage itself");
        assert!(v.get(MAX_PRICE_FIELD).is_none());
        assert_eq!(v["messages"][0]["content"], "hi there");
    }

    #[test]
    fn untouched_bodies_are_forwarded_byte_for_byte() {
        let o = with("max_tokens", json!(5));
        let r = chat(&o).unwrap();
        let orig = bytes::Bytes::from_static(b"{ \"model\" : \"m\" }");
        assert_eq!(forward_body(orig.clone(), o, &r, 64), orig);
    }

    #[test]
    fn without_a_cap_the_engine_gets_the_one_the_hold_covers() {
        let o = with("n", json!(3));
        let r = chat(&o).unwrap();
        assert_eq!(r.max_completion_tokens(64), 192, "every choice may use the cap");
        let out = forward_body(bytes::Bytes::from_static(b"orig"), o, &r, 64);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], json!(64));
        // best_of candidates are generated (and paid for) too.
        let c = completion(&obj(json!({"model": "m", "prompt": "x", "n": 2, "best_of": 5, "max_tokens": 10}))).unwrap();
        assert_eq!(c.max_completion_tokens(64), 50);
        assert_eq!(param_of(completion(&obj(json!({"model": "m", "prompt": "x", "n": 3, "best_of": 2})))), "best_of");
        // Embeddings generate nothing and get no cap.
        let e = embeddings(&obj(json!({"model": "m", "input": "x"}))).unwrap();
        assert_eq!(e.max_completion_tokens(64), 0);
        assert!(!e.needs_rewrite());
    }
}
