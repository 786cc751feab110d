//! Validation of `POST /v1/responses` (OpenAI's Responses API).
//!
//! The worker translates a Responses request to chat completions inside the TEE
//! (worker-agent `responses`; vLLM gets what its own endpoint serves passed through,
//! worker-agent `responses_native`), so a field it does not translate would be lost without a
//! word: every field is therefore either checked and supported here, or refused with a 400
//! that says why (stored responses, built-in tools, reasoning, …). Unknown fields get
//! OpenAI's own answer to them (`Unknown parameter`).

use protocol::Endpoint;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate::{ValidRequest, MAX_PRICE_FIELD};

/// Fields accepted with no effect on the answer (OpenAI uses them for abuse monitoring and
/// cache routing, not for generation).
const NO_EFFECT: [&str; 3] = ["user", "safety_identifier", "prompt_cache_key"];

const MESSAGE_ROLES: [&str; 4] = ["user", "system", "developer", "assistant"];

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

fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_string()),
        code: Some("unsupported_parameter"),
    }
}

/// Words/4-ish estimate without a tokenizer, as for chat (see `validate`).
fn estimate_text(s: &str) -> u64 {
    let by_bytes = (s.len() as u64).div_ceil(4);
    let words = s.split_whitespace().count() as u64;
    by_bytes.max(words)
}

fn get<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn string<'a>(o: &'a Map<String, Value>, k: &str, param: &str) -> Result<Option<&'a str>, ApiError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ApiError::invalid(param, format!("`{param}` must be a string, got {}.", type_name(v)))),
    }
}

fn required_string<'a>(o: &'a Map<String, Value>, k: &str, param: &str) -> Result<&'a str, ApiError> {
    string(o, k, param)?.ok_or_else(|| ApiError::invalid(param, format!("Missing required parameter: '{param}'.")))
}

fn bool_field(o: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(k, format!("`{k}` must be a boolean, got {}.", type_name(v)))),
    }
}

fn number(o: &Map<String, Value>, k: &str, min: f64, max: f64) -> Result<(), ApiError> {
    match get(o, k) {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x >= min && x <= max) => Ok(()),
        Some(Value::Number(n)) => Err(ApiError::invalid(k, format!("`{k}` must be a number between {min} and {max}, got {n}."))),
        Some(v) => Err(ApiError::invalid(k, format!("`{k}` must be a number, got {}.", type_name(v)))),
    }
}

fn int(o: &Map<String, Value>, k: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
            _ => Err(ApiError::invalid(k, format!("`{k}` must be an integer between {min} and {max}, got {n}."))),
        },
        Some(v) => Err(ApiError::invalid(k, format!("`{k}` must be an integer, got {}.", type_name(v)))),
    }
}

/// Text of a message's content: a string or a list of text parts. Returns the token estimate.
fn content(v: &Value, role: &str, param: &str) -> Result<u64, ApiError> {
    let parts = match v {
        Value::String(s) => return Ok(estimate_text(s)),
        Value::Array(a) => a,
        other => {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be a string or an array of content parts, got {}.", type_name(other)),
            ))
        }
    };
    let mut tokens = 0u64;
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        let Value::Object(p) = p else {
            return Err(ApiError::invalid(&pp, format!("`{pp}` must be an object, got {}.", type_name(p))));
        };
        let kind = required_string(p, "type", &format!("{pp}.type"))?;
        match kind {
            "input_text" => {}
            // Earlier answers sent back as input (what the SDKs do with `response.output`).
            "output_text" if role == "assistant" => {}
            "input_image" | "input_file" | "input_audio" => {
                return Err(unsupported(
                    &format!("{pp}.type"),
                    format!("`{pp}.type` {kind:?} is not supported: the models of this network take text only (`input_text`)."),
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    format!("{pp}.type"),
                    format!("Invalid value for '{pp}.type': {other:?}. Supported values are: input_text (and output_text in assistant messages)."),
                ))
            }
        }
        tokens = tokens.saturating_add(estimate_text(required_string(p, "text", &format!("{pp}.text"))?));
    }
    Ok(tokens)
}

/// One input item; returns its token estimate.
fn input_item(i: usize, item: &Value) -> Result<u64, ApiError> {
    let param = format!("input[{i}]");
    let Value::Object(o) = item else {
        return Err(ApiError::invalid(&param, format!("`{param}` must be an object, got {}.", type_name(item))));
    };
    let kind = string(o, "type", &format!("{param}.type"))?;
    match kind {
        None | Some("message") => {
            let role = required_string(o, "role", &format!("{param}.role"))?;
            if !MESSAGE_ROLES.contains(&role) {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    format!("Invalid value for '{param}.role': {role:?}. Supported values are: {}.", MESSAGE_ROLES.join(", ")),
                ));
            }
            let c = get(o, "content").ok_or_else(|| ApiError::invalid(format!("{param}.content"), format!("Missing required parameter: '{param}.content'.")))?;
            Ok(content(c, role, &format!("{param}.content"))?.saturating_add(4))
        }
        Some("function_call") => {
            required_string(o, "call_id", &format!("{param}.call_id"))?;
            let name = required_string(o, "name", &format!("{param}.name"))?;
            let args = required_string(o, "arguments", &format!("{param}.arguments"))?;
            Ok(estimate_text(name).saturating_add(estimate_text(args)).saturating_add(4))
        }
        Some("function_call_output") => {
            required_string(o, "call_id", &format!("{param}.call_id"))?;
            let out = get(o, "output").ok_or_else(|| ApiError::invalid(format!("{param}.output"), format!("Missing required parameter: '{param}.output'.")))?;
            Ok(content(out, "tool", &format!("{param}.output"))?.saturating_add(4))
        }
        Some("item_reference") => Err(unsupported(
            &format!("{param}.type"),
            format!("`{param}` is an item_reference: stored responses are not supported yet, so there is no item to refer to. Send the item itself."),
        )),
        Some(other) => Err(unsupported(
            &format!("{param}.type"),
            format!("Input items of type {other:?} are not supported. Supported: message, function_call, function_call_output."),
        )),
    }
}

fn input(o: &Map<String, Value>) -> Result<u64, ApiError> {
    match get(o, "input") {
        Some(Value::String(s)) => Ok(estimate_text(s).saturating_add(4)),
        Some(Value::Array(a)) if !a.is_empty() => a.iter().enumerate().try_fold(0u64, |acc, (i, it)| Ok(acc.saturating_add(input_item(i, it)?))),
        Some(Value::Array(_)) => Err(ApiError::invalid("input", "`input` must contain at least one item.")),
        Some(v) => Err(ApiError::invalid("input", format!("`input` must be a string or an array of items, got {}.", type_name(v)))),
        None => Err(ApiError::invalid("input", "Missing required parameter: 'input'.")),
    }
}

/// Function tools only; returns their names and a token estimate of their definitions.
fn tools(o: &Map<String, Value>) -> Result<(Vec<String>, u64), ApiError> {
    let Some(tools) = get(o, "tools") else { return Ok((Vec::new(), 0)) };
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools", format!("`tools` must be an array, got {}.", type_name(tools))));
    };
    let mut names = Vec::new();
    let mut tokens = 0u64;
    for (i, t) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(ApiError::invalid(&param, format!("`{param}` must be an object, got {}.", type_name(t))));
        };
        match required_string(t, "type", &format!("{param}.type"))? {
            "function" => {}
            other => {
                return Err(unsupported(
                    &format!("{param}.type"),
                    format!("Tool type {other:?} is not supported: this network runs no built-in tools (web search, file search, code interpreter, …). Only `function` tools are supported."),
                ))
            }
        }
        let name = required_string(t, "name", &format!("{param}.name"))?;
        if name.is_empty() {
            return Err(ApiError::invalid(format!("{param}.name"), format!("`{param}.name` must not be empty.")));
        }
        string(t, "description", &format!("{param}.description"))?;
        if let Some(p) = get(t, "parameters") {
            if !p.is_object() {
                return Err(ApiError::invalid(format!("{param}.parameters"), format!("`{param}.parameters` must be a JSON Schema object.")));
            }
        }
        bool_field(t, "strict").map_err(|_| ApiError::invalid(format!("{param}.strict"), format!("`{param}.strict` must be a boolean.")))?;
        names.push(name.to_string());
        tokens = tokens.saturating_add(estimate_text(&Value::Object(t.clone()).to_string()));
    }
    Ok((names, tokens))
}

fn tool_choice(o: &Map<String, Value>, names: &[String]) -> Result<(), ApiError> {
    match get(o, "tool_choice") {
        None => Ok(()),
        Some(Value::String(s)) if ["none", "auto", "required"].contains(&s.as_str()) => {
            if s == "required" && names.is_empty() {
                return Err(ApiError::invalid("tool_choice", "`tool_choice` is \"required\" but `tools` is empty."));
            }
            Ok(())
        }
        Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let name = required_string(c, "name", "tool_choice.name")?;
            if !names.iter().any(|n| n == name) {
                return Err(ApiError::invalid("tool_choice.name", format!("Tool {name:?} in `tool_choice` is not among `tools`.")));
            }
            Ok(())
        }
        Some(Value::Object(c)) => Err(unsupported(
            "tool_choice.type",
            format!(
                "`tool_choice` of type {} is not supported: use \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"name\": …}}.",
                c.get("type").map_or_else(|| "(none)".to_string(), Value::to_string)
            ),
        )),
        Some(v) => Err(ApiError::invalid(
            "tool_choice",
            format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a function choice object, got {v}."),
        )),
    }
}

fn text(o: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(t) = get(o, "text") else { return Ok(()) };
    let Value::Object(t) = t else {
        return Err(ApiError::invalid("text", format!("`text` must be an object, got {}.", type_name(t))));
    };
    for k in t.keys() {
        match k.as_str() {
            "format" => {}
            "verbosity" if get(t, k).is_none() => {}
            other => return Err(unsupported(&format!("text.{other}"), format!("`text.{other}` is not supported; only `text.format` is."))),
        }
    }
    let Some(f) = get(t, "format") else { return Ok(()) };
    let Value::Object(f) = f else {
        return Err(ApiError::invalid("text.format", format!("`text.format` must be an object, got {}.", type_name(f))));
    };
    match required_string(f, "type", "text.format.type")? {
        "text" | "json_object" => Ok(()),
        "json_schema" => {
            required_string(f, "name", "text.format.name")?;
            match get(f, "schema") {
                Some(Value::Object(_)) => {}
                _ => return Err(ApiError::invalid("text.format.schema", "`text.format.schema` must be a JSON Schema object.")),
            }
            string(f, "description", "text.format.description")?;
            bool_field(f, "strict").map_err(|_| ApiError::invalid("text.format.strict", "`text.format.strict` must be a boolean."))?;
            Ok(())
        }
        other => Err(ApiError::invalid(
            "text.format.type",
            format!("Invalid value for 'text.format.type': {other:?}. Supported values are: text, json_object, json_schema."),
        )),
    }
}

fn metadata(o: &Map<String, Value>) -> Result<(), ApiError> {
    match get(o, "metadata") {
        None => Ok(()),
        Some(Value::Object(m)) if m.len() <= 16 && m.iter().all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512)) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "metadata",
            "`metadata` must be an object of at most 16 string values (keys up to 64 characters, values up to 512).",
        )),
    }
}

/// What the fields this gateway does not serve mean, in the words of the refusal.
fn refuse_unserved(o: &Map<String, Value>) -> Result<(), ApiError> {
    // `store` and `previous_response_id` are served (gateway/src/stored.rs expands and
    // checks them before this runs); only their types are checked here.
    bool_field(o, "store")?;
    if get(o, "conversation").is_some() {
        return Err(unsupported("conversation", "Conversations are not supported yet: nothing is stored. Send the earlier turns in `input`."));
    }
    if bool_field(o, "background")? == Some(true) {
        return Err(unsupported("background", "Background responses are not supported: they need stored responses."));
    }
    match get(o, "include") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(unsupported("include", "`include` is not supported: none of its extra outputs is produced here.")),
    }
    match string(o, "truncation", "truncation")? {
        None | Some("disabled") => {}
        Some(other) => {
            return Err(unsupported("truncation", format!("`truncation` {other:?} is not supported; only \"disabled\" (a prompt over the context is refused).")))
        }
    }
    match string(o, "service_tier", "service_tier")? {
        None | Some("auto") | Some("default") => {}
        Some(other) => return Err(unsupported("service_tier", format!("`service_tier` {other:?} is not supported; only \"auto\" or \"default\"."))),
    }
    if let Some(so) = get(o, "stream_options") {
        let Value::Object(so) = so else {
            return Err(ApiError::invalid("stream_options", "`stream_options` must be an object."));
        };
        if so.get("include_obfuscation").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("stream_options.include_obfuscation", "Stream obfuscation is not supported: delta events carry no `obfuscation` field."));
        }
    }
    for (k, what) in [
        ("reasoning", "reasoning options; the models here expose no reasoning controls"),
        ("prompt", "prompt templates; they are stored objects"),
        ("top_logprobs", "log probabilities"),
        ("max_tool_calls", "a cap on built-in tool calls; there are no built-in tools"),
    ] {
        if get(o, k).is_some() {
            return Err(unsupported(k, format!("`{k}` is not supported ({what}).")));
        }
    }
    Ok(())
}

const KNOWN: [&str; 29] = [
    "model", "input", "instructions", "stream", "stream_options", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "text", "metadata", "store", "previous_response_id", "conversation", "background", "include", "truncation",
    "service_tier", "reasoning", "prompt", "top_logprobs", "max_tool_calls", "user", "safety_identifier", "prompt_cache_key",
    MAX_PRICE_FIELD, "test_engine",
];

pub fn responses(obj: &Map<String, Value>) -> Result<ValidRequest, ApiError> {
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::InvalidRequest {
            message: format!("Unknown parameter: '{k}'."),
            param: Some(k.clone()),
            code: Some("unknown_parameter"),
        });
    }
    let model = match get(obj, "model") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(ApiError::invalid("model", "`model` must not be empty.")),
        Some(v) => return Err(ApiError::invalid("model", format!("`model` must be a string, got {}.", type_name(v)))),
        None => return Err(ApiError::invalid("model", "Missing required parameter: 'model'.")),
    };
    refuse_unserved(obj)?;
    let mut prompt = input(obj)?;
    if let Some(i) = string(obj, "instructions", "instructions")? {
        prompt = prompt.saturating_add(estimate_text(i)).saturating_add(4);
    }
    let (names, tool_tokens) = tools(obj)?;
    prompt = prompt.saturating_add(tool_tokens);
    tool_choice(obj, &names)?;
    bool_field(obj, "parallel_tool_calls")?;
    text(obj)?;
    metadata(obj)?;
    number(obj, "temperature", 0.0, 2.0)?;
    number(obj, "top_p", 0.0, 1.0)?;
    for k in NO_EFFECT {
        string(obj, k, k)?;
    }
    let stream = bool_field(obj, "stream")?.unwrap_or(false);
    if get(obj, "stream_options").is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true."));
    }
    let max_output_tokens = int(obj, "max_output_tokens", 1, 10_000_000)?.map(|m| m as u64);
    let max_price_coefficient = int(obj, MAX_PRICE_FIELD, 1000, 1_000_000)?.and_then(|v| u32::try_from(v).ok());
    Ok(ValidRequest {
        endpoint: Endpoint::Responses,
        model,
        stream,
        // A Responses stream always ends with its usage (in `response.completed`).
        include_usage: true,
        prompt_tokens_estimate: prompt,
        max_tokens: max_output_tokens,
        choices: 1,
        generates: true,
        max_price_coefficient,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<ValidRequest, ApiError> {
        responses(v.as_object().unwrap())
    }

    fn refusal(v: Value) -> (String, Option<&'static str>, String) {
        match check(v) {
            Err(ApiError::InvalidRequest { param, code, message }) => (param.unwrap_or_default(), code, message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn with(k: &str, val: Value) -> Value {
        let mut b = json!({"model": "m", "input": "hi"});
        b[k] = val;
        b
    }

    #[test]
    fn accepts_the_supported_surface() {
        let r = check(json!({
            "model": "m", "instructions": "be brief", "stream": true, "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "input": [
                {"role": "developer", "content": "d"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is the weather"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "let me look", "annotations": []}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}},
            "metadata": {"k": "v"}, "store": false, "user": "u", "max_price_coefficient": 1500
        }))
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Responses);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.max_price_coefficient, Some(1500));
        assert!(r.prompt_tokens_estimate > 10);
    }

    #[test]
    fn refuses_what_is_not_served_and_says_why() {
        // Served now (gateway/src/stored.rs): only their types are checked here.
        assert!(check(with("store", json!(true))).is_ok());
        assert_eq!(refusal(with("store", json!("yes"))).0, "store");
        let (p, _, m) = refusal(with("tools", json!([{"type": "web_search"}])));
        assert_eq!(p, "tools[0].type");
        assert!(m.contains("web_search"), "{m}");
        assert_eq!(refusal(with("reasoning", json!({"effort": "low"}))).0, "reasoning");
        assert_eq!(refusal(with("background", json!(true))).0, "background");
        assert_eq!(refusal(with("truncation", json!("auto"))).0, "truncation");
        assert_eq!(refusal(with("include", json!(["reasoning.encrypted_content"]))).0, "include");
        let (p, code, m) = refusal(with("frequency_penalty", json!(1)));
        assert_eq!((p.as_str(), code, m.as_str()), ("frequency_penalty", Some("unknown_parameter"), "Unknown parameter: 'frequency_penalty'."));
        assert_eq!(
            refusal(with("input", json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]))).0,
            "input[0].content[0].type"
        );
        assert_eq!(refusal(with("input", json!([{"type": "item_reference", "id": "msg_1"}]))).0, "input[0].type");
    }

    #[test]
    fn names_the_offending_param() {
        assert_eq!(refusal(json!({"model": "m"})).0, "input");
        assert_eq!(refusal(with("input", json!([]))).0, "input");
        assert_eq!(refusal(with("input", json!([{"role": "tool", "content": "x"}]))).0, "input[0].role");
        assert_eq!(refusal(with("input", json!([{"type": "function_call", "name": "f", "arguments": "{}"}]))).0, "input[0].call_id");
        assert_eq!(refusal(with("max_output_tokens", json!(0))).0, "max_output_tokens");
        assert_eq!(refusal(with("temperature", json!(3))).0, "temperature");
        assert_eq!(refusal(with("tools", json!([{"type": "function"}]))).0, "tools[0].name");
        assert_eq!(refusal(with("tool_choice", json!("required"))).0, "tool_choice");
        let mut b = with("tools", json!([{"type": "function", "name": "f"}]));
        b["tool_choice"] = json!({"type": "function", "name": "g"});
        assert_eq!(refusal(b).0, "tool_choice.name");
        assert_eq!(refusal(with("text", json!({"format": {"type": "json_schema", "name": "x"}}))).0, "text.format.schema");
        assert_eq!(refusal(with("text", json!({"format": {"type": "xml"}}))).0, "text.format.type");
        assert_eq!(refusal(with("stream_options", json!({}))).0, "stream_options");
    }
}
