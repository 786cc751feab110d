//! vLLM as it really behaves, through the whole network: OpenAI clients → `cocoon gateway` →
//! `cocoon worker` processes supervising `tests/fake-vllm/fake_vllm.py`, a stdlib-Python fake
//! that follows vLLM v0.11.0's source (its header names the file behind each behaviour). The
//! worker starts it with the command line it builds for `engine.kind = "vllm"`. Worker-level
//! detail is in `worker-agent/tests/vllm.rs`; here each #22 item is checked end to end.
//!
//! The `cocoon` binary must be built (`cargo build -p cocoon`) or named by `COCOON_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionToolArgs, ChatCompletionToolType, CreateChatCompletionRequestArgs,
    FunctionObjectArgs,
};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const MODEL: &str = "qwen";

fn fake_vllm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fake-vllm/fake_vllm.py")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

struct Gateway {
    dir: tempfile::TempDir,
    _child: Child,
    base: String,
    key: String,
    worker_url: String,
    pin: String,
}

impl Gateway {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (gw_port, wk_port) = (common::free_port(), common::free_port());
        let env = [
            ("COCOON__DATA_DIR", dir.path().display().to_string()),
            ("COCOON__LOG", "warn".into()),
            ("COCOON__ENVIRONMENT", "development".into()),
            ("COCOON__GATEWAY__LISTEN", format!("127.0.0.1:{gw_port}")),
            ("COCOON__GATEWAY__METRICS_LISTEN", "127.0.0.1:0".into()),
            ("COCOON__ROUTER__WORKER_LISTEN", format!("127.0.0.1:{wk_port}")),
            // Longer than the workers' progress watchdog, so a hung engine's job is failed
            // (and retried) by its worker, not timed out by the router.
            ("COCOON__ROUTER__FIRST_TOKEN_TIMEOUT_MS", "30000".into()),
            ("COCOON__ROUTER__WORKER_LIVENESS_MS", "3000".into()),
            ("COCOON__BILLING__ENABLED", "false".into()),
            ("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE", "true".into()),
        ];
        let out = Command::new(common::cocoon_bin())
            .args(["keys", "create", "--name", "e2e", "--account", "e2e"])
            .envs(env.iter().cloned())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut child = Command::new(common::cocoon_bin())
            .arg("gateway")
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let pin = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, pin)) = line.split_once("worker.router_cert_sha256): ") {
                    return pin.trim().to_string();
                }
            }
            panic!("cocoon gateway exited:\n{}", tail(&dir.path().join("gateway.log")));
        })
        .await
        .expect("cocoon gateway printed no router certificate");
        Self {
            base: format!("http://127.0.0.1:{gw_port}/v1"),
            key,
            worker_url: format!("wss://127.0.0.1:{wk_port}/v1/worker"),
            pin,
            _child: child,
            dir,
        }
    }

    async fn available_workers(&self) -> u64 {
        let url = self.base.trim_end_matches("/v1").to_string() + "/readyz";
        match http().get(url).send().await {
            Ok(r) if r.status() == 200 => r.json::<Value>().await.map(|v| v["workers"].as_u64().unwrap_or(0)).unwrap_or(0),
            _ => 0,
        }
    }

    async fn wait_workers(&self, n: u64, workers: &[&Worker]) {
        let start = Instant::now();
        while self.available_workers().await != n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "expected {n} available workers\n--- gateway ---\n{}\n{}",
                tail(&self.dir.path().join("gateway.log")),
                workers.iter().map(|w| w.log()).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        http()
            .post(format!("{}/{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn openai(&self) -> async_openai::Client<async_openai::config::OpenAIConfig> {
        async_openai::Client::with_config(
            async_openai::config::OpenAIConfig::new().with_api_base(self.base.clone()).with_api_key(self.key.clone()),
        )
    }
}

/// `cocoon worker` supervising the fake vLLM.
struct Worker {
    id: String,
    dir: PathBuf,
    _child: Child,
    metrics: String,
    engine: String,
}

impl Worker {
    async fn start(gw: &Gateway, id: &str, tool_call_parser: Option<&str>) -> Self {
        let dir = gw.dir.path().join(format!("worker-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (metrics_port, engine_port) = (common::free_port(), common::free_port());
        let log = std::fs::File::create(dir.join("worker.log")).unwrap();
        let mut cmd = Command::new(common::cocoon_bin());
        cmd.arg("worker")
            .env("COCOON__DATA_DIR", &dir)
            .env("COCOON__LOG", "warn")
            .env("COCOON__ENVIRONMENT", "development")
            .env("COCOON__WORKER__WORKER_ID", id)
            .env("COCOON__WORKER__ROUTER_URL", &gw.worker_url)
            .env("COCOON__WORKER__ROUTER_CERT_SHA256", &gw.pin)
            .env("COCOON__WORKER__HEALTH_INTERVAL_MS", "200")
            .env("COCOON__WORKER__SLOTS", "16")
            .env("COCOON__WORKER__METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("COCOON__ENGINE__KIND", "vllm")
            .env("COCOON__ENGINE__COMMAND", fake_vllm())
            .env("COCOON__ENGINE__MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
            .env("COCOON__ENGINE__MODEL_ID", MODEL)
            .env("COCOON__ENGINE__PORT", engine_port.to_string())
            .env("COCOON__ENGINE__PROGRESS_TIMEOUT_MS", "5000")
            .env("COCOON__ENGINE__RESTART_INITIAL_MS", "200")
            .env("COCOON__ENGINE__STOP_GRACE_MS", "3000")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(p) = tool_call_parser {
            cmd.env("COCOON__ENGINE__TOOL_CALL_PARSER", p);
        }
        Self {
            id: id.into(),
            dir,
            _child: cmd.spawn().unwrap(),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            engine: format!("http://127.0.0.1:{engine_port}"),
        }
    }

    fn log(&self) -> String {
        format!(
            "--- worker {} ---\n{}\n--- engine ---\n{}",
            self.id,
            tail(&self.dir.join("worker.log")),
            tail(&self.dir.join("engine.log"))
        )
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = http().get(&self.metrics).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    async fn behave(&self, b: Value) {
        let r = http().post(format!("{}/fake/behaviour", self.engine)).json(&b).send().await.unwrap();
        assert!(r.status().is_success());
    }

    async fn fake_state(&self) -> Value {
        http().get(format!("{}/fake/state", self.engine)).send().await.unwrap().json().await.unwrap()
    }
}

fn sse_chunks(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// Items 1, 4, 5 and 7 end to end on one gateway and one vLLM worker with a tool-call parser.
#[tokio::test]
async fn vllm_through_the_gateway() {
    let gw = Gateway::start().await;
    let w = Worker::start(&gw, "v", Some("hermes")).await;
    gw.wait_workers(1, &[&w]).await;

    // 1. Tools (no tool_choice: vLLM's "auto") work with the parser the worker passed.
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .max_tokens(5u32)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("What is the weather in Paris?")
            .build()
            .unwrap()
            .into()])
        .tools([ChatCompletionToolArgs::default()
            .r#type(ChatCompletionToolType::Function)
            .function(
                FunctionObjectArgs::default()
                    .name("get_weather")
                    .parameters(json!({"type": "object", "properties": {"city": {"type": "string"}}}))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let answer = gw.openai().chat().create(req).await.unwrap_or_else(|e| panic!("{e}\n{}", w.log()));
    let calls = answer.choices[0].message.tool_calls.clone().unwrap_or_default();
    assert_eq!(calls.len(), 1, "{answer:?}");
    assert_eq!(calls[0].function.name, "get_weather");

    // 4. continuous_usage_stats: usage on every chunk reaches the client unsplit.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true, "continuous_usage_stats": true}});
    let text = gw.post("chat/completions", &body).await.text().await.unwrap();
    let cs = sse_chunks(&text);
    assert_eq!(cs.len(), 6, "role + 4 tokens + usage chunk:\n{text}");
    assert!(cs.iter().all(|c| c["usage"].is_object()), "{text}");
    assert_eq!(cs[4]["usage"]["completion_tokens"], 4);
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // 5. A client that did not ask for usage gets none; one that did gets OpenAI's shape.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true});
    let text = gw.post("chat/completions", &body).await.text().await.unwrap();
    let cs = sse_chunks(&text);
    assert!(cs.iter().all(|c| c["usage"].is_null() && !c["choices"].as_array().unwrap().is_empty()), "{text}");
    let mut body = body;
    body["stream_options"] = json!({"include_usage": true});
    let text = gw.post("chat/completions", &body).await.text().await.unwrap();
    let cs = sse_chunks(&text);
    let (last, rest) = cs.split_last().unwrap();
    assert!(rest.iter().all(|c| c.as_object().unwrap().contains_key("usage") && c["usage"].is_null()), "{text}");
    assert_eq!((last["choices"].clone(), last["usage"]["completion_tokens"].clone()), (json!([]), json!(4)));
    // Whatever the gateway sends, the engine is asked for usage (the network meters it).
    let state = w.fake_state().await;
    let seen = state["seen"].as_array().unwrap();
    assert!(seen.iter().filter(|s| s["stream"] == true).all(|s| s["stream_options"]["include_usage"] == true), "{state}");

    // 7. best_of > 1 is refused with a 400 naming the parameter, before the engine.
    let r = gw
        .post("completions", &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3, "best_of": 3}))
        .await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "best_of", "{err}");

    // 7. The context length the worker read from vLLM's /v1/models (the fake's default
    // --max-model-len 4096) bounds a client's cap at the gateway, before any hold or routing.
    let seen_before = w.fake_state().await["seen"].as_array().map_or(0, Vec::len);
    let r = gw
        .post("chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096}))
        .await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "max_tokens", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("context length (4096 tokens)"), "{err}");
    assert_eq!(w.fake_state().await["seen"].as_array().map_or(0, Vec::len), seen_before, "the engine never saw it");

    // 7. Mid-stream errors: vLLM reports an exception as code 400 (then [DONE]); before any
    // chunk the client gets the engine's message, not a retried 500. A stream's headers go
    // out when it is admitted (so a queued client is never left in silence), so the error
    // arrives as the stream's one error event, without [DONE].
    w.behave(json!({"error_after": 0})).await;
    let r = gw.post("chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": true})).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events = sse_chunks(&text);
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["error"]["message"], "CUDA error: an illegal memory access was encountered", "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    w.behave(json!({"error_after": null})).await;

    // 7. The worker reports the engine's version.
    assert_eq!(w.metric("cocoon_worker_engine_parallelism").await, Some(16.0), "{}", w.log());
    let text = http().get(&w.metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("version=\"0.11.0\""), "{text}");
}

/// Item 3 end to end: one of two workers' engines hangs (health still 200); requests keep
/// succeeding, the hung one's job is failed before its first token and retried on the other
/// worker, and the hung engine is restarted.
#[tokio::test]
async fn a_hung_vllm_is_restarted_and_its_requests_move() {
    let gw = Gateway::start().await;
    let a = Worker::start(&gw, "a", None).await;
    let b = Worker::start(&gw, "b", None).await;
    gw.wait_workers(2, &[&a, &b]).await;
    // Item 1 without a parser: the worker reports that this vLLM cannot call tools, and the
    // gateway refuses the request before routing it (it names the missing vLLM flag).
    let tools = json!({"model": MODEL, "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
    let r = gw.post("chat/completions", &tools).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("--enable-auto-tool-choice"), "{err}");
    a.behave(json!({"hang": true})).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let mut sent = 0;
    while a.metric("cocoon_worker_engine_hangs_total").await.unwrap_or(0.0) < 1.0 {
        assert!(sent < 12, "the router never sent a request to the hung worker\n{}\n{}", a.log(), b.log());
        let t = Instant::now();
        let r = gw.post("chat/completions", &body).await;
        assert_eq!(r.status(), 200, "request {sent} failed: {}\n{}\n{}", r.text().await.unwrap(), a.log(), b.log());
        assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
        sent += 1;
    }
    // The hung engine was replaced; both workers serve again.
    gw.wait_workers(2, &[&a, &b]).await;
    let start = Instant::now();
    while a.metric("cocoon_worker_engine_up").await != Some(1.0) {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.metric("cocoon_worker_engine_restarts_total").await, Some(1.0), "{}", a.log());
    let r = gw.post("chat/completions", &body).await;
    assert_eq!(r.status(), 200);
}

/// Item 6: production refuses the engine settings that log prompts or lock the worker out,
/// in engine.args, engine.env and the environment the engine would inherit.
#[tokio::test]
async fn production_refuses_prompt_logging_settings() {
    let dir = tempfile::tempdir().unwrap();
    // engine.env in a file: environment overrides lower-case their keys.
    let config = dir.path().join("cocoon.toml");
    std::fs::write(&config, "[engine.env]\nVLLM_DEBUG_LOG_API_SERVER_RESPONSE = \"true\"\n").unwrap();
    let out = Command::new(common::cocoon_bin())
        .arg("config-check")
        .env("COCOON_CONFIG", &config)
        .env("COCOON__DATA_DIR", dir.path())
        .env("COCOON__ENVIRONMENT", "production")
        .env("COCOON__ENGINE__KIND", "vllm")
        .env("COCOON__ENGINE__MODEL", "Qwen/Qwen2.5-7B-Instruct")
        .env("COCOON__ENGINE__ARGS", r#"["--enable-log-requests", "--enable-log-outputs"]"#)
        .env("VLLM_API_KEY", "secret")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    for needle in [
        "\"--enable-log-requests\"",
        "\"--enable-log-outputs\"",
        "engine.env sets VLLM_DEBUG_LOG_API_SERVER_RESPONSE",
        "the worker's environment sets VLLM_API_KEY",
    ] {
        assert!(text.contains(needle), "{needle} not refused:\n{text}");
    }
}

/// The usage a signed receipt (header or stream comment) carries: what the worker metered.
fn receipt_usage(value: &str) -> Value {
    let signed = attestation::receipt::SignedReceipt::from_header(value.trim()).unwrap();
    serde_json::from_slice::<Value>(&signed.receipt).unwrap()["usage"].clone()
}

/// The last request the fake vLLM saw.
async fn last_seen(w: &Worker) -> Value {
    let state = w.fake_state().await;
    state["seen"].as_array().and_then(|s| s.last().cloned()).unwrap_or_else(|| panic!("the fake saw nothing: {state}"))
}

/// Issue #15 end to end: a Responses request goes to vLLM's own `/v1/responses` (whole, and
/// streamed as a continuation of a stored answer), with `store: false` and without
/// `previous_response_id`; the client's Response says what it asked, the events arrive in
/// order and numbered, the receipt's usage is what the fake reported, and everything validates
/// against OpenAI's schema. A function tool (which vLLM v0.11.0 refuses in /v1/responses for
/// models other than gpt-oss) is translated to its chat completions.
#[tokio::test]
async fn responses_pass_through_to_vllm() {
    let gw = Gateway::start().await;
    let w = Worker::start(&gw, "r", Some("hermes")).await;
    gw.wait_workers(1, &[&w]).await;
    let mut samples: Vec<(&str, Value)> = Vec::new();

    // Whole, stored by the gateway.
    let body = json!({"model": MODEL, "input": "Say hello", "instructions": "Be brief.", "max_output_tokens": 4,
        "metadata": {"k": "v"}, "store": true});
    let r = gw.post("responses", &body).await;
    assert_eq!(r.status(), 200, "{}", w.log());
    let billed = receipt_usage(r.headers()["x-cocoon-receipt"].to_str().unwrap());
    let first: Value = r.json().await.unwrap();
    let seen = last_seen(&w).await;
    assert_eq!(seen["path"], "/v1/responses", "{seen}");
    assert_eq!((seen["store"].clone(), seen["previous_response_id"].clone()), (json!(false), Value::Null), "{seen}");
    assert_eq!(first["object"], "response");
    assert_eq!((first["store"].clone(), first["previous_response_id"].clone()), (json!(true), Value::Null));
    assert_eq!(first["instructions"], "Be brief.");
    assert_eq!(first["metadata"], json!({"k": "v"}));
    assert_eq!(first["output"][0]["content"][0]["text"], "Hello from the fake");
    assert_eq!(first["status"], "incomplete", "4 of 4 tokens");
    let u = &first["usage"];
    assert_eq!(u["output_tokens"], 4);
    assert_eq!((billed["prompt_tokens"].clone(), billed["completion_tokens"].clone()), (u["input_tokens"].clone(), u["output_tokens"].clone()));
    samples.push(("Response", first.clone()));

    // Streamed, continuing the first: the gateway expands previous_response_id into `input`;
    // vLLM is sent neither it nor `store`.
    let body = json!({"model": MODEL, "input": "And again", "previous_response_id": first["id"], "max_output_tokens": 3, "stream": true});
    let r = gw.post("responses", &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let comment = text.lines().find_map(|l| l.strip_prefix(": cocoon-receipt ")).unwrap_or_else(|| panic!("no receipt: {text}"));
    let billed = receipt_usage(comment);
    let (evs, _) = common::events(&text);
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "response.incomplete",
        ],
        "{text}"
    );
    for (n, (k, d)) in evs.iter().enumerate() {
        assert_eq!((d["type"].as_str(), d["sequence_number"].as_u64()), (Some(k.as_str()), Some(n as u64)), "{d}");
    }
    let done = &evs.last().unwrap().1["response"];
    assert_eq!((done["store"].clone(), done["previous_response_id"].clone()), (json!(false), first["id"].clone()));
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello from the");
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert!(done["usage"]["input_tokens"].as_u64() > first["usage"]["input_tokens"].as_u64(), "the earlier turn is in the prompt");
    assert_eq!((billed["prompt_tokens"].clone(), billed["completion_tokens"].clone()), (done["usage"]["input_tokens"].clone(), json!(3)));
    let seen = last_seen(&w).await;
    assert_eq!(seen["path"], "/v1/responses", "{seen}");
    assert_eq!((seen["store"].clone(), seen["previous_response_id"].clone()), (json!(false), Value::Null), "{seen}");
    assert!(!seen["keys"].as_array().unwrap().contains(&json!("previous_response_id")), "{seen}");
    samples.extend(evs.iter().map(|(k, d)| (common::event_component(k), d.clone())));

    // A function tool: translated to vLLM's chat completions (its tool-call parser answers).
    let body = json!({"model": MODEL, "input": "What is the weather in Paris?", "max_output_tokens": 5,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
    let r = gw.post("responses", &body).await;
    assert_eq!(r.status(), 200);
    let called: Value = r.json().await.unwrap();
    assert_eq!(last_seen(&w).await["path"], "/v1/chat/completions");
    assert_eq!((called["output"][0]["type"].clone(), called["output"][0]["name"].clone()), (json!("function_call"), json!("get_weather")), "{called}");
    samples.push(("Response", called));

    // Only the two passthrough requests reached /v1/responses.
    let state = w.fake_state().await;
    let to_responses = state["seen"].as_array().unwrap().iter().filter(|s| s["path"] == "/v1/responses").count();
    assert_eq!(to_responses, 2, "{state}");
    common::validate(&samples);
}
