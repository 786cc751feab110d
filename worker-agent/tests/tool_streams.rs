//! Tool-call streams of llama-server and vLLM, recorded under `tests/fixtures/tool_streams/`
//! (see its README for where each comes from), relayed by the real worker: an engine on
//! loopback answers every chat request with one recorded stream, and a `WorkerAgent` runs jobs
//! against it over its router link (in-process channels, plain payloads), exactly as in
//! production. Checked on what the worker sends on: (a) each call's deltas have OpenAI's
//! shape, (b) each call's arguments add up to the engine's, once, and (c) the Responses
//! translation of the same stream gives one `function_call` per call, with its arguments'
//! deltas adding up to them. The test engine's own tool-call stream must come out byte for
//! byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use protocol::{Endpoint, JobEnvelope, JobEvent, Payload, RouterToWorker, WorkerToRouter};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker_agent::{LinkIdentity, WorkerAgent, WorkerConfig, WorkerTee};

const MODEL: &str = "m";

fn fixture(name: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/tool_streams/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// An engine that answers every chat request with `stream` (then `[DONE]`), whatever it asks.
async fn replay_engine(stream: Vec<String>) -> (String, tokio::task::JoinHandle<()>) {
    async fn models() -> axum::Json<Value> {
        axum::Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "replay"}]}))
    }
    async fn chat(State(stream): State<Arc<Vec<String>>>) -> impl axum::response::IntoResponse {
        let mut body = String::new();
        for line in stream.iter() {
            body.push_str("data: ");
            body.push_str(line);
            body.push_str("\n\n");
        }
        body.push_str("data: [DONE]\n\n");
        ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body)
    }
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(Arc::new(stream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

/// A worker on `engine_url` (an engine it does not supervise), fed jobs over its router link.
struct Worker {
    to_worker: mpsc::Sender<RouterToWorker>,
    events: Arc<Mutex<HashMap<Uuid, Vec<JobEvent>>>>,
    stop: CancellationToken,
}

impl Worker {
    async fn start(engine_url: &str) -> Self {
        let cfg = WorkerConfig {
            engine_url: engine_url.to_string(),
            health_interval_ms: 100,
            ..Default::default()
        };
        let agent = WorkerAgent::new(cfg, WorkerTee::simulated().unwrap()).unwrap();
        let info = agent.info(Duration::from_secs(10)).await.unwrap();
        let (to_worker, from_router) = mpsc::channel(64);
        let (to_router, mut from_worker) = mpsc::channel::<WorkerToRouter>(1024);
        let stop = CancellationToken::new();
        let link = LinkIdentity { info, link_id: 1, tls_spki_der: Arc::new(Vec::new()) };
        tokio::spawn(agent.run(link, from_router, to_router, stop.clone()));
        let events: Arc<Mutex<HashMap<Uuid, Vec<JobEvent>>>> = Arc::default();
        let ev = events.clone();
        tokio::spawn(async move {
            while let Some(msg) = from_worker.recv().await {
                if let WorkerToRouter::Event { job_id, event } = msg {
                    ev.lock().unwrap().entry(job_id).or_default().push(event);
                }
            }
        });
        Self { to_worker, events, stop }
    }

    /// The job's events once it ended.
    async fn run(&self, endpoint: Endpoint, body: Value) -> Vec<JobEvent> {
        let id = Uuid::new_v4();
        let job = JobEnvelope {
            id,
            endpoint,
            model: MODEL.into(),
            stream: true,
            payload: Payload::Plain { body: Bytes::from(body.to_string()) },
            e2e: None,
        };
        self.to_worker.send(RouterToWorker::Job(job)).await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(evs) = self.events.lock().unwrap().get(&id) {
                if evs.last().is_some_and(JobEvent::is_terminal) {
                    return evs.clone();
                }
            }
            assert!(tokio::time::Instant::now() < until, "job {id} did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn chunks(events: &[JobEvent]) -> Vec<Bytes> {
    assert!(matches!(events.last(), Some(JobEvent::Done { .. })), "{events:?}");
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Chunk { data } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn chat_request() -> Value {
    json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "Weather?"}], "tools": weather_tools()})
}

/// One call as the client reassembles it.
#[derive(Debug, PartialEq, Eq)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// (a): every tool-call delta in OpenAI's shape; gives the calls reassembled by index, and
/// the finish reason.
fn openai_calls(out: &[Bytes]) -> (Vec<Call>, String) {
    let mut calls: Vec<Call> = Vec::new();
    let mut finish = None;
    for raw in out {
        let c: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        let Some(choice) = c["choices"].as_array().and_then(|a| a.first()) else { continue };
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "one finish reason: {c}");
            finish = Some(f.to_string());
        }
        let Some(entries) = choice["delta"].get("tool_calls") else { continue };
        let entries = entries.as_array().expect("tool_calls is an array");
        assert!(!entries.is_empty(), "no empty tool_calls: {c}");
        for e in entries {
            let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            let index = e["index"].as_u64().expect("index on every delta") as usize;
            let f = e["function"].as_object().expect("function on every delta");
            let mut fkeys: Vec<&str> = f.keys().map(String::as_str).collect();
            fkeys.sort_unstable();
            if index == calls.len() {
                assert_eq!(keys, ["function", "id", "index", "type"], "first delta: {e}");
                assert_eq!(fkeys, ["arguments", "name"], "first delta: {e}");
                assert_eq!(e["type"], "function");
                assert_eq!(f["arguments"], "", "first delta: {e}");
                let id = e["id"].as_str().expect("id is a string");
                let name = f["name"].as_str().expect("name is a string");
                assert!(!id.is_empty() && !name.is_empty(), "{e}");
                calls.push(Call { id: id.into(), name: name.into(), arguments: String::new() });
            } else {
                assert!(index < calls.len(), "index {index} skipped one: {e}");
                assert_eq!(keys, ["function", "index"], "later delta: {e}");
                assert_eq!(fkeys, ["arguments"], "later delta: {e}");
                let piece = f["arguments"].as_str().expect("arguments is a string");
                assert!(!piece.is_empty(), "{e}");
                calls[index].arguments.push_str(piece);
            }
        }
    }
    (calls, finish.expect("a finish reason"))
}

/// The first id each index had in the engine's stream (`None`: the engine gave none).
fn engine_ids(stream: &[String]) -> Vec<Option<String>> {
    let mut ids: Vec<Option<String>> = Vec::new();
    for line in stream {
        let c: Value = serde_json::from_str(line).unwrap();
        for e in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = e["index"].as_u64().unwrap() as usize;
            if ids.len() <= i {
                ids.resize(i + 1, None);
            }
            if ids[i].is_none() {
                ids[i] = e["id"].as_str().map(str::to_string);
            }
        }
    }
    ids
}

/// What a client that simply appends every `arguments` piece gets from the engine itself.
fn naive_arguments(stream: &[String]) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for line in stream {
        let c: Value = serde_json::from_str(line).unwrap();
        for e in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = e["index"].as_u64().unwrap() as usize;
            if args.len() <= i {
                args.resize(i + 1, String::new());
            }
            args[i].push_str(e["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    args
}

struct Case {
    fixture: &'static str,
    finish: &'static str,
    /// (name, arguments) per call: what the engine meant, once.
    calls: &'static [(&'static str, &'static str)],
    /// The engine's own pieces do not add up to it (arguments sent twice).
    engine_duplicates: bool,
}

const CASES: &[Case] = &[
    Case {
        fixture: "llama_server_single",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "llama_server_parallel",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris"}"#), ("get_weather", r#"{"city": "London"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "llama_server_length",
        finish: "length",
        calls: &[
            ("get_weather", r#"{"city": "Paris"}"#),
            ("get_weather", r#"{"city": "London"}"#),
            ("get_weather", r#"{"city": "Berlin"}"#),
            ("get_weather", r#"{"city": "Rome""#),
        ],
        engine_duplicates: false,
    },
    Case {
        fixture: "llama_server_name_late",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris"}"#), ("get_weather", r#"{"city": "London"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "vllm_hermes_single",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "vllm_hermes_parallel",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#), ("get_weather", r#"{"city": "London", "unit": "celsius"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "vllm_named_choice",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris"}"#)],
        engine_duplicates: false,
    },
    Case {
        fixture: "vllm_flush_reformatted",
        finish: "tool_calls",
        calls: &[("get_weather", r#"{"city": "Paris","unit":"cel"}"#)],
        engine_duplicates: true,
    },
    Case {
        fixture: "vllm_flush_duplicate",
        finish: "tool_calls",
        calls: &[("get_current_weather", r#"{"city": "Seattle", "unit": "celsius"}"#)],
        engine_duplicates: true,
    },
];

#[tokio::test]
async fn recorded_engine_streams_come_out_in_openais_shape_with_each_argument_once() {
    for case in CASES {
        let stream = fixture(case.fixture);
        let (url, engine) = replay_engine(stream.clone()).await;
        let w = Worker::start(&url).await;
        let out = chunks(&w.run(Endpoint::ChatCompletions, chat_request()).await);
        let (calls, finish) = openai_calls(&out);
        assert_eq!(finish, case.finish, "{}", case.fixture);
        let ids = engine_ids(&stream);
        assert_eq!(calls.len(), case.calls.len(), "{}: {calls:?}", case.fixture);
        for (i, (call, (name, args))) in calls.iter().zip(case.calls).enumerate() {
            assert_eq!((call.name.as_str(), call.arguments.as_str()), (*name, *args), "{} call {i}", case.fixture);
            // The engine's id is kept; a call without one gets OpenAI's kind.
            match &ids[i] {
                Some(id) => assert_eq!(&call.id, id, "{} call {i}", case.fixture),
                None => assert!(call.id.starts_with("call_"), "{} call {i}", case.fixture),
            }
        }
        let naive = naive_arguments(&stream);
        let naive_ok = naive.iter().zip(case.calls).all(|(a, (_, want))| a == want);
        assert_eq!(!naive_ok, case.engine_duplicates, "{}: the engine's own pieces {naive:?}", case.fixture);
        // Nothing but tool calls, the usage chunk withheld (the client did not ask for it).
        for raw in &out {
            let c: Value = serde_json::from_slice(raw).unwrap();
            assert!(c.get("usage").is_none() && c.get("timings").is_none(), "{c}");
        }
        drop(w);
        engine.abort();
    }
}

#[tokio::test]
async fn recorded_engine_streams_become_one_function_call_item_per_call() {
    for case in CASES {
        let stream = fixture(case.fixture);
        let (url, engine) = replay_engine(stream.clone()).await;
        let w = Worker::start(&url).await;
        let body = json!({"model": MODEL, "input": "Weather?", "stream": true, "tools": [{"type": "function",
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
        let out = chunks(&w.run(Endpoint::Responses, body).await);
        let evs: Vec<Value> = out.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
        for (n, e) in evs.iter().enumerate() {
            assert_eq!(e["sequence_number"], n as u64, "{}", case.fixture);
        }
        let ids = engine_ids(&stream);
        let done: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call")
            .map(|e| &e["item"])
            .collect();
        assert_eq!(done.len(), case.calls.len(), "{}: one function_call item per call", case.fixture);
        for (i, (item, (name, args))) in done.iter().zip(case.calls).enumerate() {
            assert_eq!(item["name"], *name, "{} call {i}", case.fixture);
            assert_eq!(item["arguments"], *args, "{} call {i}", case.fixture);
            match &ids[i] {
                Some(id) => assert_eq!(item["call_id"], id.as_str(), "{} call {i}", case.fixture),
                None => assert!(item["call_id"].as_str().unwrap().starts_with("call_")),
            }
            let deltas: String = evs
                .iter()
                .filter(|e| e["type"] == "response.function_call_arguments.delta" && e["item_id"] == item["id"])
                .map(|e| e["delta"].as_str().unwrap())
                .collect();
            assert_eq!(deltas, *args, "{} call {i}: deltas add up to the arguments", case.fixture);
            let added = evs
                .iter()
                .find(|e| e["type"] == "response.output_item.added" && e["item"]["id"] == item["id"])
                .unwrap();
            assert_eq!(added["item"]["name"], *name, "{} call {i}: named when added", case.fixture);
            assert_eq!(added["item"]["call_id"], item["call_id"]);
        }
        let last = evs.last().unwrap();
        let want = if case.finish == "length" { "response.incomplete" } else { "response.completed" };
        assert_eq!(last["type"], want, "{}", case.fixture);
        let calls_in_response = last["response"]["output"].as_array().unwrap().iter().filter(|o| o["type"] == "function_call").count();
        assert_eq!(calls_in_response, case.calls.len(), "{}", case.fixture);
        drop(w);
        engine.abort();
    }
}

async fn test_engine() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = test_engine::EngineConfig { models: vec![MODEL.into()], ..Default::default() };
    let task = tokio::spawn(async move {
        test_engine::serve(listener, test_engine::TestEngine::new(cfg), std::future::pending()).await.unwrap();
    });
    (url, task)
}

#[tokio::test]
async fn the_test_engines_tool_call_stream_passes_byte_for_byte() {
    let (url, engine) = test_engine().await;
    let mut req = chat_request();
    req["tool_choice"] = json!("required");
    req["stream_options"] = json!({"include_usage": true});
    // The engine's own stream, for the request the worker sends it (the client's, here).
    let text = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let recorded: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(str::to_string)
        .collect();
    assert!(recorded.iter().any(|l| l.contains("\"tool_calls\"")), "{text}");

    // Live: the worker against the test engine.
    let w = Worker::start(&url).await;
    let live = chunks(&w.run(Endpoint::ChatCompletions, req.clone()).await);
    let (calls, finish) = openai_calls(&live);
    assert_eq!(finish, "tool_calls");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].id.starts_with("call_") && calls[0].name == "get_weather");
    assert!(serde_json::from_str::<Value>(&calls[0].arguments).unwrap()["city"].is_string(), "{calls:?}");
    drop(w);
    engine.abort();

    // Replayed: every chunk the worker sends is the engine's, byte for byte.
    let (url, engine) = replay_engine(recorded.clone()).await;
    let w = Worker::start(&url).await;
    let out = chunks(&w.run(Endpoint::ChatCompletions, req).await);
    let out: Vec<String> = out.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
    assert_eq!(out, recorded);
    drop(w);
    engine.abort();
}
