//! The worker-agent against vLLM as it really behaves: the real supervisor starts
//! `tests/fake-vllm/fake_vllm.py` (a stdlib-Python fake following vLLM v0.11.0's source; see
//! its header for the file behind each behaviour) with the command line the worker builds for
//! vLLM, and the real `WorkerAgent` runs jobs against it over its router link (in-process
//! channels, plain payloads). Each test names the #22 item it covers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use protocol::{Endpoint, JobEnvelope, JobEvent, Load, Payload, RouterToWorker, WorkerInfo, WorkerToRouter};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker_agent::config::EngineProcessConfig;
use worker_agent::engine_policy::VllmOptions;
use worker_agent::metrics::WorkerMetrics;
use worker_agent::supervisor::EngineSupervisor;
use worker_agent::{LinkIdentity, WorkerAgent, WorkerConfig, WorkerTee};

const MODEL: &str = "qwen";

fn fake_vllm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fake-vllm/fake_vllm.py")
}

fn opts(max_num_seqs: u32) -> VllmOptions {
    VllmOptions {
        max_num_seqs,
        tool_call_parser: None,
        progress_timeout: None,
    }
}

struct Worker {
    sup: EngineSupervisor,
    agent: Arc<WorkerAgent>,
    info: WorkerInfo,
    to_worker: mpsc::Sender<RouterToWorker>,
    events: Arc<Mutex<HashMap<Uuid, Vec<JobEvent>>>>,
    loads: Arc<Mutex<Vec<Load>>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Worker {
    async fn start(o: VllmOptions, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let slots = o.max_num_seqs;
        let mut cfg = EngineProcessConfig::vllm(
            fake_vllm().display().to_string(),
            "Qwen/Qwen2.5-0.5B-Instruct",
            MODEL,
            &o,
            &extra,
        )
        .unwrap();
        cfg.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        cfg.health_interval = Duration::from_millis(100);
        cfg.restart_initial = Duration::from_millis(100);
        cfg.stop_grace = Duration::from_secs(2);
        cfg.startup_timeout = Duration::from_secs(30);
        cfg.log_file = Some(dir.path().join("engine.log"));
        let sup = EngineSupervisor::start(cfg, WorkerMetrics::new()).unwrap();
        sup.wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("fake vLLM not ready: {e}\n{}", sup.output_tail(20).join("\n")));
        let wcfg = WorkerConfig {
            slots,
            health_interval_ms: 100,
            ..Default::default()
        };
        let agent = WorkerAgent::supervised(wcfg, WorkerTee::simulated().unwrap(), &sup).unwrap();
        let info = agent.info(Duration::from_secs(10)).await.unwrap();
        let (to_worker, from_router) = mpsc::channel(64);
        let (to_router, mut from_worker) = mpsc::channel::<WorkerToRouter>(1024);
        let stop = CancellationToken::new();
        let link = LinkIdentity {
            info: info.clone(),
            link_id: 1,
            tls_spki_der: Arc::new(Vec::new()),
        };
        tokio::spawn(agent.clone().run(link, from_router, to_router, stop.clone()));
        let events: Arc<Mutex<HashMap<Uuid, Vec<JobEvent>>>> = Arc::default();
        let loads: Arc<Mutex<Vec<Load>>> = Arc::default();
        let (ev, ld) = (events.clone(), loads.clone());
        tokio::spawn(async move {
            while let Some(msg) = from_worker.recv().await {
                match msg {
                    WorkerToRouter::Event { job_id, event } => ev.lock().unwrap().entry(job_id).or_default().push(event),
                    WorkerToRouter::Load(l) => ld.lock().unwrap().push(l),
                    _ => {}
                }
            }
        });
        Self {
            sup,
            agent,
            info,
            to_worker,
            events,
            loads,
            stop,
            _dir: dir,
        }
    }

    fn engine(&self) -> String {
        self.sup.url().to_string()
    }

    async fn send(&self, endpoint: Endpoint, body: Value) -> Uuid {
        let id = Uuid::new_v4();
        let stream = body["stream"].as_bool().unwrap_or(false);
        self.to_worker
            .send(RouterToWorker::Job(JobEnvelope {
                id,
                endpoint,
                model: MODEL.into(),
                stream,
                payload: Payload::Plain {
                    body: Bytes::from(body.to_string()),
                },
                e2e: None,
            }))
            .await
            .unwrap();
        id
    }

    /// The job's events once it ended (bounded wait).
    async fn finished(&self, id: Uuid, within: Duration) -> Vec<JobEvent> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(evs) = self.events.lock().unwrap().get(&id) {
                if evs.last().is_some_and(JobEvent::is_terminal) {
                    return evs.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < until,
                "job {id} did not end within {within:?}; engine output:\n{}",
                self.sup.output_tail(30).join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(&self, endpoint: Endpoint, body: Value) -> Vec<JobEvent> {
        let id = self.send(endpoint, body).await;
        self.finished(id, Duration::from_secs(30)).await
    }

    async fn fake_state(&self) -> Value {
        reqwest::get(format!("{}/fake/state", self.engine()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn behave(&self, b: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/fake/behaviour", self.engine()))
            .json(&b)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    async fn stop(self) {
        self.stop.cancel();
        self.sup.shutdown().await;
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 5, "stream": stream})
}

/// `data` of every chunk, as JSON.
fn chunks(events: &[JobEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Chunk { data } => Some(serde_json::from_slice(data).unwrap()),
            _ => None,
        })
        .collect()
}

fn failure(events: &[JobEvent]) -> &protocol::JobError {
    match events.last() {
        Some(JobEvent::Failed { error, .. }) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn done_usage(events: &[JobEvent]) -> protocol::Usage {
    match events.last() {
        Some(JobEvent::Done { usage: Some(u) }) => *u,
        other => panic!("expected Done with usage, got {other:?}"),
    }
}

fn argv(state: &Value) -> String {
    state["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect::<Vec<_>>().join(" ")
}

/// Items 2 and 7 (smaller): the worker passes --max-num-seqs (= worker.slots) and
/// --enable-prompt-tokens-details itself, advertises those slots, the context length from
/// /v1/models, the version from GET /version, and "no tools" without a parser.
#[tokio::test]
async fn the_worker_sets_its_vllm_flags_and_advertises_what_the_engine_is() {
    let w = Worker::start(opts(8), &["--max-model-len", "2048"], &[]).await;
    let argv = argv(&w.fake_state().await);
    assert!(argv.contains("--max-num-seqs 8") && argv.contains("--enable-prompt-tokens-details"), "{argv}");
    assert!(!argv.contains("--enable-auto-tool-choice"), "{argv}");
    assert_eq!(w.info.slots, 8);
    assert_eq!(w.info.models[0].id, MODEL);
    assert_eq!(w.info.models[0].max_model_len, Some(2048));
    assert_eq!(w.info.models[0].tool_calls, Some(false));
    assert_eq!(w.sup.facts().version.as_deref(), Some("0.11.0"));
    let rendered = w.agent.engine().metrics().render("w");
    assert!(rendered.contains("cocoon_worker_engine_info{worker_id=\"w\",kind=\"vllm\",version=\"0.11.0\"} 1"), "{rendered}");
    assert!(rendered.contains("cocoon_worker_engine_parallelism{worker_id=\"w\"} 8"), "{rendered}");
    w.stop().await;
}

/// Item 1: `tools` without `tool_choice` is "auto" on vLLM, which needs both tool flags.
#[tokio::test]
async fn tools_fail_without_a_parser_and_work_with_one() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut body = chat(false);
    body["tools"] = tools;
    let w = Worker::start(opts(4), &[], &[]).await;
    let evs = w.run(Endpoint::ChatCompletions, body.clone()).await;
    let err = failure(&evs);
    assert_eq!((err.status, err.retryable), (400, false));
    let engine_body: Value = serde_json::from_slice(err.body.as_ref().unwrap()).unwrap();
    assert!(engine_body["error"]["message"].as_str().unwrap().contains("--enable-auto-tool-choice"), "{engine_body}");
    w.stop().await;

    let mut o = opts(4);
    o.tool_call_parser = Some("hermes".into());
    let w = Worker::start(o, &[], &[]).await;
    let argv = argv(&w.fake_state().await);
    assert!(argv.contains("--enable-auto-tool-choice --tool-call-parser hermes"), "{argv}");
    assert_eq!(w.info.models[0].tool_calls, Some(true));
    let evs = w.run(Endpoint::ChatCompletions, body).await;
    let JobEvent::Response { body, .. } = evs.last().unwrap() else { panic!("{evs:?}") };
    let answer: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls", "{answer}");
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    w.stop().await;
}

/// Item 2: busy slots come from vllm:num_requests_running, out of --max-num-seqs; the worker
/// never asks vLLM for llama-server's /slots.
#[tokio::test]
async fn busy_slots_come_from_vllm_metrics_and_slots_is_never_polled() {
    let w = Worker::start(opts(8), &[], &[]).await;
    w.behave(json!({"token_delay_ms": 300})).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut body = chat(true);
        body["max_tokens"] = json!(20);
        ids.push(w.send(Endpoint::ChatCompletions, body).await);
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let busy = w.loads.lock().unwrap().iter().any(|l| l.engine_slots_busy == Some(3) && l.engine_slots_total == Some(8));
        if busy {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "no heartbeat with 3 of 8 slots busy: {:?}", w.loads.lock().unwrap().last());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = w.fake_state().await;
    assert!(state["gets"]["/metrics"].as_u64().unwrap() > 0, "{state}");
    assert!(state["gets"].get("/slots").is_none(), "polled /slots on vLLM: {state}");
    w.behave(json!({"token_delay_ms": 1})).await;
    for id in ids {
        w.finished(id, Duration::from_secs(30)).await;
    }
    w.stop().await;
}

/// Item 3: a hung engine (/health still 200, requests running, token counters flat) is
/// restarted by the progress watchdog; a job that had sent nothing fails retryable, one that
/// had streamed fails for good.
#[tokio::test]
async fn a_hung_engine_is_restarted_and_its_jobs_fail() {
    let mut o = opts(4);
    o.progress_timeout = Some(Duration::from_secs(2));
    let w = Worker::start(o, &[], &[]).await;
    let first = w.sup.pgid().unwrap();
    // One stream gets two tokens out, then the engine hangs (hang_after); the next request
    // is admitted and waits for its first token.
    w.behave(json!({"hang_after": 2, "token_delay_ms": 20})).await;
    let mut long = chat(true);
    long["max_tokens"] = json!(50);
    let streamed = w.send(Endpoint::ChatCompletions, long).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = w.send(Endpoint::ChatCompletions, chat(true)).await;
    // /health keeps answering 200 while hung: only the watchdog can tell.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(format!("{}/health", w.engine())).await.unwrap().status();
    assert_eq!(health, 200);
    let evs = w.finished(waiting, Duration::from_secs(20)).await;
    let err = failure(&evs);
    assert_eq!((err.status, err.retryable), (503, true), "{err:?}");
    assert!(chunks(&evs).is_empty());
    let evs = w.finished(streamed, Duration::from_secs(5)).await;
    assert!(!chunks(&evs).is_empty());
    assert!(!failure(&evs).retryable, "a job that streamed cannot move");
    assert_eq!(w.agent.engine().metrics().engine_hangs(), 1);
    // A fresh engine serves again.
    w.sup.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_ne!(w.sup.pgid(), Some(first));
    let evs = w.run(Endpoint::ChatCompletions, chat(true)).await;
    assert!(matches!(evs.last(), Some(JobEvent::Done { .. })), "{evs:?}");
    w.stop().await;
}

/// Item 4: with continuous_usage_stats vLLM puts usage on every chunk; the worker relays
/// those chunks as they are (not split, usage not nulled).
#[tokio::test]
async fn continuous_usage_stats_pass_through() {
    let w = Worker::start(opts(4), &[], &[]).await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
    let evs = w.run(Endpoint::ChatCompletions, body).await;
    let cs = chunks(&evs);
    // Role chunk, 5 token chunks, the usage chunk: none split.
    assert_eq!(cs.len(), 7, "{cs:#?}");
    for (i, c) in cs.iter().enumerate() {
        assert!(c["usage"].is_object(), "chunk {i} lost its usage: {c}");
    }
    assert_eq!(cs[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(cs[5]["usage"]["completion_tokens"], 5);
    assert_eq!(cs[6]["choices"], json!([]));
    assert_eq!(done_usage(&evs).completion_tokens, 5);
    w.stop().await;
}

/// Item 5: the client's own include_usage choice decides what it gets; the worker asks the
/// engine for usage itself, so every stream is metered, and passes chunks through.
#[tokio::test]
async fn the_clients_include_usage_choice_is_kept() {
    let w = Worker::start(opts(4), &[], &[]).await;
    // Not asked: the engine is asked anyway; no usage key, no usage chunk for the client.
    let evs = w.run(Endpoint::ChatCompletions, chat(true)).await;
    let cs = chunks(&evs);
    assert!(cs.iter().all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty()), "{cs:#?}");
    assert_eq!(done_usage(&evs).completion_tokens, 5);
    let state = w.fake_state().await;
    let seen = state["seen"].as_array().unwrap();
    assert_eq!(seen.last().unwrap()["stream_options"], json!({"include_usage": true}), "{state}");
    // Asked: "usage": null on every chunk, then the usage chunk, as OpenAI sends it.
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let evs = w.run(Endpoint::ChatCompletions, body).await;
    let cs = chunks(&evs);
    let (last, rest) = cs.split_last().unwrap();
    assert!(rest.iter().all(|c| c.as_object().unwrap().contains_key("usage") && c["usage"].is_null()), "{cs:#?}");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5);
    // Text completions: vLLM writes "usage": null itself (exclude_unset=False).
    let evs = w
        .run(Endpoint::Completions, json!({"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": true}))
        .await;
    let cs = chunks(&evs);
    assert_eq!(cs.len(), 3, "no usage chunk for a client that did not ask: {cs:#?}");
    assert_eq!(done_usage(&evs).completion_tokens, 3);
    w.stop().await;
}

/// Item 7: an error object mid-stream maps its `error.code` to the status; retryable only
/// before the first chunk and only for what another worker may not hit. vLLM v0.11 reports
/// any mid-stream exception as code 400, except that its dead-engine error means 503 here.
#[tokio::test]
async fn mid_stream_errors_map_their_code() {
    let w = Worker::start(opts(4), &[], &[]).await;
    w.behave(json!({"error_after": 0})).await;
    let evs = w.run(Endpoint::ChatCompletions, chat(true)).await;
    let err = failure(&evs);
    assert_eq!((err.status, err.retryable), (400, false), "{err:?}");
    let body: Value = serde_json::from_slice(err.body.as_ref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], 400);
    let dead = "EngineCore encountered an issue. See stack trace (above) for the root cause.";
    w.behave(json!({"error_after": 0, "error_message": dead})).await;
    let err = failure(&w.run(Endpoint::ChatCompletions, chat(true)).await).clone();
    assert_eq!((err.status, err.retryable), (503, true), "{err:?}");
    w.behave(json!({"error_after": 2})).await;
    let evs = w.run(Endpoint::ChatCompletions, chat(true)).await;
    assert!(!chunks(&evs).is_empty());
    let err = failure(&evs);
    assert_eq!((err.status, err.retryable), (503, false), "after the first chunk: {err:?}");
    w.stop().await;
}

/// Item 7: best_of > 1 is refused at the worker (vLLM v1 refuses it), before the engine.
#[tokio::test]
async fn best_of_is_refused_before_the_engine() {
    let w = Worker::start(opts(4), &[], &[]).await;
    for stream in [false, true] {
        let evs = w
            .run(Endpoint::Completions, json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3, "best_of": 2, "stream": stream}))
            .await;
        let err = failure(&evs);
        assert_eq!((err.status, err.retryable), (400, false));
        let body: Value = serde_json::from_slice(err.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["error"]["param"], "best_of", "{body}");
    }
    let state = w.fake_state().await;
    assert!(state["seen"].as_array().unwrap().is_empty(), "reached the engine: {state}");
    let evs = w
        .run(Endpoint::Completions, json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3, "best_of": 1}))
        .await;
    assert!(matches!(evs.last(), Some(JobEvent::Response { .. })));
    w.stop().await;
}

/// Item 7: --enable-prompt-tokens-details makes usage carry cached tokens.
#[tokio::test]
async fn usage_carries_cached_prompt_tokens() {
    let w = Worker::start(opts(4), &[], &[]).await;
    w.behave(json!({"cached_tokens": 3})).await;
    let evs = w.run(Endpoint::ChatCompletions, chat(true)).await;
    assert_eq!(done_usage(&evs).prompt_tokens_details.map(|d| d.cached_tokens), Some(3));
    let evs = w.run(Endpoint::ChatCompletions, chat(false)).await;
    let Some(JobEvent::Response { usage: Some(u), .. }) = evs.last() else { panic!("{evs:?}") };
    assert_eq!(u.prompt_tokens_details.map(|d| d.cached_tokens), Some(3));
    w.stop().await;
}

/// Item 7 (engine log): outside production the flags are allowed, but the worker's bounded
/// engine log still withholds vLLM's request-logger lines.
#[tokio::test]
async fn the_engine_log_never_holds_request_contents() {
    let w = Worker::start(opts(4), &["--enable-log-requests", "--enable-log-outputs"], &[]).await;
    let mut body = chat(false);
    body["messages"][0]["content"] = json!("the secret prompt kumquat");
    w.run(Endpoint::ChatCompletions, body).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tail = w.sup.output_tail(200).join("\n");
    assert!(tail.contains("vLLM API server version 0.11.0"), "{tail}");
    assert!(tail.contains("request/response logging was withheld"), "{tail}");
    assert!(!tail.contains("kumquat") && !tail.contains("Hello from"), "{tail}");
    let file = std::fs::read_to_string(w._dir.path().join("engine.log")).unwrap();
    assert!(!file.contains("kumquat") && file.contains("withheld"), "{file}");
    w.stop().await;
}

/// Issue #15: the Responses API goes to vLLM's own `/v1/responses` (whole and streamed), with
/// `store: false` and no `previous_response_id`; the answer says what the gateway asked, the
/// stream's events arrive numbered and corrected, and usage is what vLLM reported. What vLLM
/// v0.11.0 does not serve natively (a function tool) goes through the chat translation; a
/// stream vLLM drops mid-way fails the job.
#[tokio::test]
async fn responses_pass_through_to_vllm_and_tools_are_translated() {
    // VLLM_ENABLE_RESPONSES_API_STORE on: were `store` forwarded, vLLM would keep the answer.
    let w = Worker::start(opts(4), &[], &[("VLLM_ENABLE_RESPONSES_API_STORE", "1")]).await;
    w.behave(json!({"cached_tokens": 2})).await;
    let req = |stream: bool| {
        json!({"model": MODEL, "input": "Say hello.", "instructions": "Be brief.", "max_output_tokens": 4, "stream": stream,
            "store": true, "previous_response_id": "resp_earlier", "metadata": {"k": "v"}, "max_price_coefficient": 1500})
    };
    let evs = w.run(Endpoint::Responses, req(false)).await;
    let Some(JobEvent::Response { body, usage: Some(u) }) = evs.last() else { panic!("{evs:?}") };
    let r: Value = serde_json::from_slice(body).unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens()), (r["usage"]["input_tokens"].as_u64().unwrap(), 4, 2));
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 2);
    assert_eq!((r["store"].clone(), r["previous_response_id"].clone()), (json!(true), json!("resp_earlier")));
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello from the fake");
    assert_eq!(r["status"], "incomplete", "4 of 4 tokens");

    let evs = w.run(Endpoint::Responses, req(true)).await;
    let cs = chunks(&evs);
    let kinds: Vec<&str> = cs.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.incomplete"));
    assert_eq!(kinds.iter().filter(|k| **k == "response.output_text.delta").count(), 4);
    for (n, c) in cs.iter().enumerate() {
        assert_eq!(c["sequence_number"], n as u64, "{c}");
    }
    let last = &cs.last().unwrap()["response"];
    assert_eq!(last["output"][0]["content"][0]["text"], "Hello from the fake", "the whole text, not vLLM's last delta");
    assert_eq!((last["store"].clone(), last["previous_response_id"].clone()), (json!(true), json!("resp_earlier")));
    let u = done_usage(&evs);
    assert_eq!((u.completion_tokens, u.cached_prompt_tokens()), (4, 2));
    assert_eq!(last["usage"]["output_tokens"], 4);

    let state = w.fake_state().await;
    let seen: Vec<&Value> = state["seen"].as_array().unwrap().iter().collect();
    assert_eq!(seen.len(), 2, "{state}");
    for s in &seen {
        assert_eq!(s["path"], "/v1/responses");
        assert_eq!(s["store"], false, "{s}");
        assert!(s["previous_response_id"].is_null(), "{s}");
        assert!(!s["keys"].as_array().unwrap().contains(&json!("max_price_coefficient")), "{s}");
    }
    assert_eq!(state["stored"], json!([]), "vLLM kept nothing");

    // A function tool: vLLM v0.11.0 refuses it in /v1/responses; the worker translates (and
    // this vLLM, without a tool-call parser, answers chat's 400 for "auto").
    let mut tools = req(false);
    tools["tools"] = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    tools["tool_choice"] = json!("none");
    let evs = w.run(Endpoint::Responses, tools).await;
    assert!(matches!(evs.last(), Some(JobEvent::Response { .. })), "{evs:?}");
    let state = w.fake_state().await;
    assert_eq!(state["seen"].as_array().unwrap().last().unwrap()["path"], "/v1/chat/completions", "{state}");

    // vLLM drops the connection when a Responses stream fails: the job fails, not retried
    // once events went out.
    w.behave(json!({"error_after": 1})).await;
    let evs = w.run(Endpoint::Responses, req(true)).await;
    assert!(!chunks(&evs).is_empty());
    let err = failure(&evs);
    assert_eq!((err.status, err.retryable), (502, false), "{err:?}");
    // vLLM's refusals are relayed with their status.
    w.behave(json!({"error_after": null})).await;
    let mut unknown = req(false);
    unknown["model"] = json!("other");
    let err = failure(&w.run(Endpoint::Responses, unknown).await).clone();
    assert_eq!((err.status, err.retryable), (404, false), "{err:?}");
    w.stop().await;
}
