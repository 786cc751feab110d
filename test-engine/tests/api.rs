//! End-to-end checks of the HTTP contract (docs/test-engine-spec.md) over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_engine::{serve, EngineConfig, StatsSnapshot, TestEngine};

struct Server {
    base: String,
    engine: Arc<TestEngine>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(cfg: EngineConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = TestEngine::new(cfg);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, engine.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://{addr}"),
        engine,
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// A whole SSE body as its `data:` payloads (`[DONE]` kept as a string).
    async fn stream(&self, path: &str, body: Value) -> Vec<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let d = e.strip_prefix("data: ").expect("data event");
                if d == "[DONE]" {
                    Value::String(d.into())
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    async fn stats(&self) -> StatsSnapshot {
        let (_, v) = self.get("/debug/stats").await;
        serde_json::from_value(v).unwrap()
    }
}

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hello there engine"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[tokio::test]
async fn health_models_and_errors() {
    let s = start(EngineConfig::default()).await;
    assert_eq!(s.get("/health").await, (200, json!({"status": "ok"})));
    let (st, m) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "cocoon-test");
    assert_eq!(m["data"][0]["owned_by"], "cocoon-test-engine");

    let (st, e) = s
        .post(
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");

    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"].get("param").is_some() && e["error"].get("code").is_some());

    let (st, e) = s
        .post("/v1/chat/completions", json!({"model": "cocoon-test"}))
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("messages")));
    let (st, e) = s
        .post("/v1/completions", json!({"model": "cocoon-test"}))
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("prompt")));
    let (st, e) = s
        .post("/v1/embeddings", json!({"model": "cocoon-test"}))
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("input")));
    let (st, e) = s
        .post("/v1/chat/completions", chat(json!({"n": 1000})))
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("n")));
    let (st, _) = s.get("/nope").await;
    assert_eq!(st, 404);
    // Errors are not requests: nothing was started.
    assert_eq!(s.stats().await.requests_started, 0);
}

#[tokio::test]
async fn last_request_echoes_unknown_fields() {
    let s = start(EngineConfig::default()).await;
    assert_eq!(s.get("/debug/last-request").await, (200, Value::Null));
    let body = chat(json!({"test_engine": {"completion_tokens": 3}, "x_unknown": {"a": [1, 2]}}));
    let (st, _) = s.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(s.get("/debug/last-request").await, (200, body));
}

#[tokio::test]
async fn non_stream_chat() {
    let s = start(EngineConfig::default()).await;
    let (st, r) = s
        .post("/v1/chat/completions", chat(json!({"seed": 7})))
        .await;
    assert_eq!(st, 200);
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["system_fingerprint"], "fp_cocoon_test");
    let c = &r["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["refusal"], Value::Null);
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(c["finish_reason"], "stop");
    let content = c["message"]["content"].as_str().unwrap();
    let words = content.split_whitespace().count() as u64;
    // Natural length 8..=24, capped by max_tokens_default (16) when the request gives no max.
    assert!((8..=16).contains(&words), "{words}");
    assert_eq!(r["usage"]["completion_tokens"], words);
    assert_eq!(r["usage"]["prompt_tokens"], 3 + 3);
    assert_eq!(r["usage"]["total_tokens"], 6 + words);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        r["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
    // Deterministic.
    let (_, again) = s
        .post("/v1/chat/completions", chat(json!({"seed": 7})))
        .await;
    assert_eq!(again["choices"][0]["message"]["content"], content);
    let st = s.stats().await;
    assert_eq!(
        (
            st.requests_started,
            st.requests_completed,
            st.active,
            st.requests_cancelled
        ),
        (2, 2, 0, 0)
    );
    assert_eq!(st.tokens_generated, 2 * words);
}

#[tokio::test]
async fn stream_chat_with_usage() {
    let s = start(EngineConfig::default()).await;
    let (_, plain) = s.post("/v1/chat/completions", chat(json!({}))).await;
    let events = s
        .stream(
            "/v1/chat/completions",
            chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = &events[..events.len() - 1];
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut text = String::new();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c.get("usage").is_some());
        if let Some(t) = c["choices"]
            .get(0)
            .and_then(|ch| ch["delta"]["content"].as_str())
        {
            text.push_str(t);
        }
    }
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    assert_eq!(fin["usage"], Value::Null);
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    let st = s.stats().await;
    assert_eq!(
        (st.requests_completed, st.requests_cancelled, st.active),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn n_choices() {
    let s = start(EngineConfig::default()).await;
    let (_, r) = s.post("/v1/chat/completions", chat(json!({"n": 2}))).await;
    let ch = r["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!(
        (ch[0]["index"].as_u64(), ch[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    assert_ne!(ch[0]["message"]["content"], ch[1]["message"]["content"]);
    let total: u64 = ch
        .iter()
        .map(|c| {
            c["message"]["content"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count() as u64
        })
        .sum();
    assert_eq!(r["usage"]["completion_tokens"], total);

    let events = s
        .stream(
            "/v1/chat/completions",
            chat(json!({"n": 2, "stream": true})),
        )
        .await;
    let mut texts = [String::new(), String::new()];
    let mut finished = 0;
    for e in &events[..events.len() - 1] {
        let c = &e["choices"][0];
        let i = c["index"].as_u64().unwrap() as usize;
        texts[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
        finished += usize::from(!c["finish_reason"].is_null());
    }
    assert_eq!(finished, 2);
    assert_eq!(texts[0], ch[0]["message"]["content"].as_str().unwrap());
    assert_eq!(texts[1], ch[1]["message"]["content"].as_str().unwrap());
}

#[tokio::test]
async fn logprobs() {
    let s = start(EngineConfig::default()).await;
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 2})),
        )
        .await;
    let c = &r["choices"][0];
    let content = c["logprobs"]["content"].as_array().unwrap();
    assert_eq!(c["logprobs"]["refusal"], Value::Null);
    let joined: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, c["message"]["content"].as_str().unwrap());
    for t in content {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, t["token"].as_str().unwrap().as_bytes());
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], t["token"]);
        assert!(top[1]["logprob"].as_f64().unwrap() < lp);
    }
    // Streaming carries one entry per token chunk.
    let events = s
        .stream(
            "/v1/chat/completions",
            chat(json!({"stream": true, "logprobs": true, "top_logprobs": 2})),
        )
        .await;
    let with_lp = events
        .iter()
        .filter(|e| e["choices"][0]["logprobs"]["content"].is_array())
        .count();
    assert_eq!(with_lp, content.len());
    // Legacy completions shape.
    let (_, r) = s
        .post(
            "/v1/completions",
            json!({"model": "cocoon-test", "prompt": "say it", "logprobs": 2}),
        )
        .await;
    let lp = &r["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!(n > 0);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"][0], 0);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn tools() {
    let s = start(EngineConfig::default()).await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["city"]}}},
        {"type": "function", "function": {"name": "other"}}
    ]);
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "required", "parallel_tool_calls": false})),
        )
        .await;
    let c = &r["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(c["message"]["content"], Value::Null);
    let call = &c["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    assert!(args["unit"] == "c" || args["unit"] == "f");
    assert!((1..=3).contains(&args["days"].as_i64().unwrap()));

    // Named choice, and auto triggered by the name in the last user message.
    let (_, r) = s
        .post("/v1/chat/completions", chat(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "other"}}})))
        .await;
    assert_eq!(
        r["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "other"
    );
    let auto = json!({"model": "cocoon-test", "tools": tools, "messages": [{"role": "user", "content": "please call get_weather"}]});
    let (_, r) = s.post("/v1/chat/completions", auto.clone()).await;
    assert_eq!(
        r["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let (_, r) = s
        .post("/v1/chat/completions", chat(json!({"tools": tools})))
        .await;
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"tools": tools, "tool_choice": "none"})),
        )
        .await;
    assert!(r["choices"][0]["message"]["content"].is_string());

    // Streamed tool call reassembles to the same arguments.
    let mut sb = auto;
    sb["stream"] = json!(true);
    let (_, whole) = s.post("/v1/chat/completions", json!({"model": "cocoon-test", "tools": tools, "messages": [{"role": "user", "content": "please call get_weather"}]})).await;
    let events = s.stream("/v1/chat/completions", sb).await;
    let mut args = String::new();
    let mut name = None;
    for e in &events[..events.len() - 1] {
        if let Some(tc) = e["choices"][0]["delta"]["tool_calls"].get(0) {
            assert_eq!(tc["index"], 0);
            if let Some(n) = tc["function"]["name"].as_str() {
                name = Some(n.to_string());
                assert!(tc["id"].as_str().unwrap().starts_with("call_"));
            }
            args.push_str(tc["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(
        args,
        whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
    );
    let fin = &events[events.len() - 2]["choices"][0];
    assert_eq!(fin["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn json_schema_pydantic() {
    let s = start(EngineConfig::default()).await;
    let schema = json!({
        "$defs": {
            "Pet": {"properties": {"name": {"title": "Name", "type": "string"}, "kind": {"enum": ["cat", "dog"], "title": "Kind", "type": "string"}},
                    "required": ["name", "kind"], "title": "Pet", "type": "object"}
        },
        "properties": {
            "owner": {"title": "Owner", "type": "string"},
            "age": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null, "title": "Age"},
            "pets": {"items": {"$ref": "#/$defs/Pet"}, "title": "Pets", "type": "array"},
            "best": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]}
        },
        "required": ["owner", "pets", "best"], "title": "Owner", "type": "object", "additionalProperties": false
    });
    let rf = json!({"type": "json_schema", "json_schema": {"name": "Owner", "schema": schema, "strict": true}});
    let (st, r) = s
        .post("/v1/chat/completions", chat(json!({"response_format": rf})))
        .await;
    assert_eq!(st, 200);
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).unwrap();
    assert!(v["owner"].is_string());
    assert!(v["age"].is_i64());
    assert!(v["pets"][0]["name"].is_string());
    assert!(v["pets"][0]["kind"] == "cat" || v["pets"][0]["kind"] == "dog");
    assert!(v["best"]["name"].is_string());
    assert_eq!(
        r["usage"]["completion_tokens"],
        content.split_whitespace().count() as u64
    );

    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "json_object"}})),
        )
        .await;
    let v: Value =
        serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(v["answer"].is_string());

    let bad = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/Missing"}}});
    let (st, e) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"response_format": bad})),
        )
        .await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("response_format.json_schema.schema"))
    );
}

#[tokio::test]
async fn embeddings() {
    let s = start(EngineConfig::default()).await;
    let (st, r) = s
        .post(
            "/v1/embeddings",
            json!({"model": "cocoon-test", "input": ["a b", "c"]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(r["object"], "list");
    assert_eq!(r["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let e0: Vec<f64> = r["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e0.len(), 64);
    assert!((e0.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    assert_eq!(r["data"][1]["index"], 1);
    assert_eq!(r["data"][0]["object"], "embedding");

    let (_, b) =
        s.post("/v1/embeddings", json!({"model": "cocoon-test", "input": "a b", "encoding_format": "base64", "dimensions": 8})).await;
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len(), 32);
    let floats: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (_, f) = s
        .post(
            "/v1/embeddings",
            json!({"model": "cocoon-test", "input": "a b", "dimensions": 8}),
        )
        .await;
    let ff: Vec<f32> = f["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, ff);
    let (st, _) = s
        .post(
            "/v1/embeddings",
            json!({"model": "cocoon-test", "input": [[1, 2], [3]]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, e) = s
        .post(
            "/v1/embeddings",
            json!({"model": "cocoon-test", "input": "x", "dimensions": 5000}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["param"].as_str()),
        (400, Some("dimensions"))
    );
}

#[tokio::test]
async fn stop_and_length() {
    let s = start(EngineConfig::default()).await;
    let (_, full) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"test_engine": {"completion_tokens": 50}})),
        )
        .await;
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let words: Vec<&str> = text.split(' ').collect();
    assert_eq!(words.len(), 50);

    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"test_engine": {"completion_tokens": 50}, "max_tokens": 5})),
        )
        .await;
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["choices"][0]["message"]["content"], words[..5].join(" "));
    assert_eq!(r["usage"]["completion_tokens"], 5);
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"test_engine": {"completion_tokens": 50}, "max_completion_tokens": 4})),
        )
        .await;
    assert_eq!(r["usage"]["completion_tokens"], 4);

    let stop = format!("{} {}", words[10], words[11]);
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            chat(json!({"test_engine": {"completion_tokens": 50}, "stop": [stop.clone(), "zzz"]})),
        )
        .await;
    let got = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(!got.contains(&stop));
    assert!(text.starts_with(got) && got.split(' ').count() <= 11);

    // Legacy completions: same rules, stream too.
    let (_, r) = s
        .post(
            "/v1/completions",
            json!({"model": "cocoon-test", "prompt": ["a", "b c"], "max_tokens": 2}),
        )
        .await;
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert_eq!(r["choices"][1]["finish_reason"], "length");
    assert_eq!(r["usage"]["prompt_tokens"], 3);
    let events =
        s.stream("/v1/completions", json!({"model": "cocoon-test", "prompt": "a", "stream": true, "stream_options": {"include_usage": true}})).await;
    let chunks = &events[..events.len() - 1];
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|x| x["text"].as_str()))
        .collect();
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        text.split_whitespace().count() as u64
    );
}

#[tokio::test]
async fn cancellation_is_counted_once() {
    let s = start(EngineConfig::default()).await;
    let body = chat(
        json!({"stream": true, "test_engine": {"tokens_per_second": 20.0, "completion_tokens": 1000}}),
    );
    let mut r = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0;
    while got < 3 {
        let chunk = r.chunk().await.unwrap().expect("stream ended early");
        got += chunk.windows(6).filter(|w| w == b"data: ").count();
    }
    assert_eq!(s.engine.stats().snapshot().active, 1);
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let st = s.stats().await;
        if st.requests_cancelled == 1 {
            assert_eq!(
                (st.active, st.requests_completed, st.requests_started),
                (0, 0, 1)
            );
            assert!(st.tokens_generated < 50, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled in time: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Generation really stopped: no more tokens get counted.
    let t = s.stats().await.tokens_generated;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.stats().await.tokens_generated, t);
    assert_eq!(s.stats().await.requests_cancelled, 1);
}

#[tokio::test]
async fn pacing_follows_overrides() {
    let s = start(EngineConfig::default()).await;
    let t0 = Instant::now();
    let body = chat(
        json!({"stream": true, "test_engine": {"ttft_ms": 100, "tokens_per_second": 100.0, "completion_tokens": 10}}),
    );
    let events = s.stream("/v1/chat/completions", body).await;
    let el = t0.elapsed();
    // ttft 100 ms + 9 gaps of 10 ms.
    assert!(el >= Duration::from_millis(185), "{el:?}");
    assert!(el < Duration::from_secs(2), "{el:?}");
    assert_eq!(events.len(), 1 + 10 + 1 + 1);
    // Unlimited speed: a long stream is fast.
    let t0 = Instant::now();
    let events = s
        .stream(
            "/v1/chat/completions",
            chat(json!({"stream": true, "test_engine": {"completion_tokens": 20000}})),
        )
        .await;
    assert_eq!(events.len(), 20003);
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn shutdown_ends_paced_streams() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let engine = TestEngine::new(EngineConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, engine.clone(), async move {
        let _ = rx.await;
    }));
    let body = chat(
        json!({"stream": true, "test_engine": {"tokens_per_second": 5.0, "completion_tokens": 1000}}),
    );
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    r.chunk().await.unwrap();
    tx.send(()).unwrap();
    // The stream ends (without [DONE]) instead of holding graceful shutdown for 200 s.
    while r.chunk().await.ok().flatten().is_some() {}
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let st = engine.stats().snapshot();
    assert_eq!((st.requests_cancelled, st.active), (1, 0));
}

#[tokio::test]
async fn binary_prints_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-engine"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--model",
            "m1",
            "--model=m2",
            "--embedding-dim",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("test-engine listening on ")
        .unwrap()
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let http = reqwest::Client::new();
    let m: Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["data"][1]["id"], "m2");
    let e: Value = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "m1", "input": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(e["data"][0]["embedding"].as_array().unwrap().len(), 3);
    child.kill().await.unwrap();
}
