//! The Responses API (`POST /v1/responses`) through the real network (gateway → router →
//! worker-agent → test engine): whole answers and streams, function tools, `text.format`
//! json_schema, usage equal to the billed charge's tokens, every object and event valid
//! against OpenAI's OpenAPI document, and a clear 400/404 for what is not served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{event_component, events, validate};
use serde_json::{json, Value};

const MODEL: &str = "cocoon-test";

async fn post(net: &common::Net, body: &Value) -> reqwest::Response {
    common::http().post(format!("{}/responses", net.base_url)).bearer_auth(&net.api_key).json(body).send().await.unwrap()
}

fn job_id(r: &reqwest::Response) -> uuid::Uuid {
    r.headers()["x-request-id"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_whole_response_is_valid_and_billed_for_its_usage() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let r = post(&net, &json!({"model": MODEL, "input": "Say hello", "instructions": "Be brief.", "max_output_tokens": 64, "metadata": {"k": "v"}})).await;
    assert_eq!(r.status(), 200);
    let id = job_id(&r);
    let cost: i64 = r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse().unwrap();
    assert!(r.headers().contains_key("x-cocoon-receipt"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert!(body["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["instructions"], "Be brief.");
    assert_eq!(body["metadata"], json!({"k": "v"}));
    assert_eq!(body["store"], false);
    let out = body["output"].as_array().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "message");
    assert_eq!(out[0]["role"], "assistant");
    let text = out[0]["content"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    let receipt = l.receipt(id).await.unwrap().expect("charged before the answer was sent");
    assert_eq!(receipt.billed.charge, cost);
    let u = &body["usage"];
    assert_eq!(u["input_tokens"].as_u64().unwrap(), receipt.usage.prompt_tokens);
    assert_eq!(u["output_tokens"].as_u64().unwrap(), receipt.usage.completion_tokens);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), receipt.usage.prompt_tokens + receipt.usage.completion_tokens);
    // The test engine makes one token per word.
    assert_eq!(u["output_tokens"].as_u64().unwrap(), text.split_whitespace().count() as u64);

    // Cut by the output cap: `incomplete`, with OpenAI's reason.
    let r = post(&net, &json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "go on"}]}], "max_output_tokens": 3, "test_engine": {"completion_tokens": 20}})).await;
    assert_eq!(r.status(), 200);
    let cut: Value = r.json().await.unwrap();
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(cut["usage"]["output_tokens"], 3);
    validate(&[("Response", body), ("Response", cut)]);
    net.net.shutdown().await;
}

#[tokio::test]
async fn a_stream_sends_openais_events_in_order_and_ends_billed() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let r = post(&net, &json!({"model": MODEL, "input": "Tell me a story", "stream": true, "max_output_tokens": 64, "test_engine": {"completion_tokens": 6}})).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let id = job_id(&r);
    let text = r.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "a Responses stream ends with response.completed, as OpenAI's");
    let (evs, receipt) = events(&text);
    assert!(receipt, "the receipt comment precedes response.completed");
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected = vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(std::iter::repeat_n("response.output_text.delta", 6));
    expected.extend(["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]);
    assert_eq!(kinds, expected);
    for (n, (kind, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], kind.as_str(), "the event line names the data's type");
        assert_eq!(data["sequence_number"], n as u64, "sequence numbers count from 0 without gaps");
    }
    let deltas: String = evs.iter().filter(|(k, _)| k == "response.output_text.delta").map(|(_, d)| d["delta"].as_str().unwrap()).collect();
    let done = &evs.iter().find(|(k, _)| k == "response.output_text.done").unwrap().1;
    assert_eq!(done["text"], deltas.as_str());
    let completed = &evs.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["id"], evs[0].1["response"]["id"]);
    assert_eq!(completed["output"][0]["content"][0]["text"], deltas.as_str());
    let item_id = &evs[2].1["item"]["id"];
    assert!(evs[3..evs.len() - 1].iter().all(|(_, d)| d.get("item_id").is_none_or(|i| i == item_id)));
    let receipt = l.receipt(id).await.unwrap().expect("charged before response.completed");
    assert_eq!(completed["usage"]["output_tokens"].as_u64().unwrap(), receipt.usage.completion_tokens);
    assert_eq!(completed["usage"]["input_tokens"].as_u64().unwrap(), receipt.usage.prompt_tokens);
    assert_eq!(receipt.usage.completion_tokens, 6);
    validate(&evs.iter().map(|(k, d)| (event_component(k), d.clone())).collect::<Vec<_>>());
    net.net.shutdown().await;
}

fn weather_tool() -> Value {
    json!([{
        "type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
        "strict": true
    }])
}

#[tokio::test]
async fn function_tools_round_trip_whole_and_streamed() {
    let net = common::start(|_| {}).await;
    let mut samples = Vec::new();
    // The model calls the named tool.
    let r = post(&net, &json!({"model": MODEL, "input": "Weather in Paris?", "tools": weather_tool(), "tool_choice": {"type": "function", "name": "get_weather"}})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let call = &body["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "arguments follow the parameters schema: {args}");
    assert_eq!(body["tools"][0]["name"], "get_weather");
    assert_eq!(body["tool_choice"], json!({"type": "function", "name": "get_weather"}));
    samples.push(("Response", body.clone()));

    // The client runs it and sends the result back with the call: a plain answer follows.
    let r = post(&net, &json!({"model": MODEL, "tools": weather_tool(), "tool_choice": "none", "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "{\"temp_c\": 21}"}
    ]})).await;
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["output"][0]["type"], "message");
    samples.push(("Response", second));

    // Streamed: the call's arguments arrive as deltas that add up to the done event's.
    let r = post(&net, &json!({"model": MODEL, "input": "Weather?", "stream": true, "tools": weather_tool(), "tool_choice": "required"})).await;
    let (evs, _) = events(&r.text().await.unwrap());
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "response.function_call_arguments.delta").collect();
    assert_eq!(
        kinds,
        [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.function_call_arguments.done", "response.output_item.done", "response.completed"
        ]
    );
    let deltas: String = evs
        .iter()
        .filter(|(k, _)| k == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert!(!deltas.is_empty());
    let done = &evs.iter().find(|(k, _)| k == "response.function_call_arguments.done").unwrap().1;
    assert_eq!(done["arguments"], deltas.as_str());
    assert_eq!(done["name"], "get_weather");
    let added = &evs[2].1["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["name"], "get_weather");
    assert!(added["call_id"].as_str().unwrap().starts_with("call_"));
    let completed = &evs.last().unwrap().1["response"];
    assert_eq!(completed["output"][0]["arguments"], deltas.as_str());
    for (n, (_, d)) in evs.iter().enumerate() {
        assert_eq!(d["sequence_number"], n as u64);
    }
    samples.extend(evs.iter().map(|(k, d)| (event_component(k), d.clone())));
    validate(&samples);
    net.net.shutdown().await;
}

#[tokio::test]
async fn text_format_json_schema_gives_json_that_follows_it() {
    let net = common::start(|_| {}).await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false});
    let r = post(&net, &json!({"model": MODEL, "input": "A person", "text": {"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": true}}})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let v: Value = serde_json::from_str(body["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    assert_eq!(body["text"]["format"]["name"], "person");
    validate(&[("Response", body)]);
    net.net.shutdown().await;
}

#[tokio::test]
async fn what_is_not_served_is_refused_clearly_and_costs_nothing() {
    let net = common::start(|_| {}).await;
    let l = net.ledger.clone().unwrap();
    let dev = l.find_account(billing::AccountKind::Client, "dev").await.unwrap().unwrap().id;
    let before = l.balance(dev).await.unwrap();
    let base = || json!({"model": MODEL, "input": "hi"});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    for (body, param, code, says) in [
        (with("background", json!(true)), "background", "unsupported_parameter", "not supported"),
        (with("tools", json!([{"type": "web_search"}])), "tools[0].type", "unsupported_parameter", "built-in tools"),
        (with("reasoning", json!({"effort": "high"})), "reasoning", "unsupported_parameter", "not supported"),
        (with("presence_penalty", json!(1)), "presence_penalty", "unknown_parameter", "Unknown parameter"),
        (with("input", json!([{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}])), "input[0].content[0].type", "unsupported_parameter", "text only"),
    ] {
        let r = post(&net, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{e}");
    }
    // An id nobody stored: 404, and so is a chain starting from it (before anything runs).
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = common::http().request(method, format!("{}/responses/resp_abc", net.base_url)).bearer_auth(&net.api_key).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "response_not_found");
        assert!(e["error"]["message"].as_str().unwrap().contains("store: true"), "{e}");
    }
    let r = post(&net, &with("previous_response_id", json!("resp_123"))).await;
    assert_eq!(r.status(), 404);
    // A sealed Responses request is served (tests/tests/client_proxy.rs); one whose clear
    // facts are missing is refused before anything runs, naming the header.
    let r = common::http()
        .post(format!("{}/responses", net.base_url))
        .bearer_auth(&net.api_key)
        .header("cocoon-e2e", "1")
        .header("content-type", "application/cocoon-e2e")
        .body("sealed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_e2e_header", "{e}");
    assert_eq!(e["error"]["param"], "cocoon-e2e-request-id", "{e}");
    let r = common::http().get(format!("{}/responses/resp_abc", net.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 401, "the stored-response routes need a key like every other");
    assert_eq!(l.balance(dev).await.unwrap(), before, "a refusal holds and charges nothing");
    net.net.shutdown().await;
}

/// `store: true` keeps the Response object (sealed at rest) for its account only;
/// `previous_response_id` continues from it (the earlier turns count as input and are
/// billed); a stream is stored before its `response.completed` reaches the client;
/// `input_items` lists what was answered; DELETE removes it. Not storing is the default.
#[tokio::test]
async fn stored_responses_chain_and_belong_to_their_account() {
    let net = common::start(|_| {}).await;
    let get = |id: &str, key: &str| common::http().get(format!("{}/responses/{id}", net.base_url)).bearer_auth(key).send();
    let r = post(&net, &json!({"model": MODEL, "input": "x", "store": "yes"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "store");
    // Not asked: not kept.
    let r: Value = post(&net, &json!({"model": MODEL, "input": "not kept"})).await.json().await.unwrap();
    assert_eq!(r["store"], false);
    assert_eq!(get(r["id"].as_str().unwrap(), &net.api_key).await.unwrap().status(), 404);

    let first: Value = post(&net, &json!({"model": MODEL, "input": "My name is Ada.", "store": true})).await.json().await.unwrap();
    assert_eq!(first["store"], true);
    let id1 = first["id"].as_str().unwrap().to_owned();
    let fetched: Value = get(&id1, &net.api_key).await.unwrap().json().await.unwrap();
    assert_eq!(fetched, first, "GET returns the stored object as it was answered");

    // The next turn carries the first one: more input tokens than the new text alone.
    let alone: Value = post(&net, &json!({"model": MODEL, "input": "What is my name?"})).await.json().await.unwrap();
    let r = post(&net, &json!({"model": MODEL, "input": "What is my name?", "previous_response_id": id1, "store": true, "stream": true})).await;
    assert_eq!(r.status(), 200);
    let (evs, _) = events(&r.text().await.unwrap());
    let (kind, done) = evs.last().unwrap();
    assert_eq!(kind, "response.completed");
    let second = done["response"].clone();
    assert_eq!(second["previous_response_id"], id1.as_str());
    assert!(
        second["usage"]["input_tokens"].as_u64().unwrap() > alone["usage"]["input_tokens"].as_u64().unwrap(),
        "{second} vs {alone}"
    );
    // Stored before `response.completed` went out: readable at once.
    let id2 = second["id"].as_str().unwrap().to_owned();
    let stored2: Value = get(&id2, &net.api_key).await.unwrap().json().await.unwrap();
    assert_eq!(stored2["id"], id2.as_str());
    let items: Value = common::http()
        .get(format!("{}/responses/{id2}/input_items?order=asc", net.base_url))
        .bearer_auth(&net.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = items["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "first question, first answer, second question: {items}");
    assert_eq!(data[0]["content"], "My name is Ada.");
    assert_eq!(data[1]["role"], "assistant");
    assert!(data.iter().all(|d| d["id"].is_string()));
    // OpenAI's paging: newest first by default, `limit` and `after`.
    let page = |q: &str| {
        let url = format!("{}/responses/{id2}/input_items?{q}", net.base_url);
        let key = net.api_key.clone();
        async move { common::http().get(url).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let newest = page("limit=1").await;
    assert_eq!((newest["data"][0]["content"].clone(), newest["has_more"].clone()), (json!("What is my name?"), json!(true)));
    for bad in ["limit=-1", "limit=x", "limit=0", "order=up", "after=nope"] {
        let e = page(bad).await;
        assert_eq!(e["error"]["type"], "invalid_request_error", "{bad}: {e}");
    }
    let rest = page(&format!("limit=5&after={}", newest["last_id"].as_str().unwrap())).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(rest["has_more"], false);
    validate(&[("Response", fetched), ("Response", stored2)]);

    // Another account's key finds nothing, and cannot continue or delete it.
    let other = net.keys.create("other", "someone-else", None).await.unwrap().key;
    assert_eq!(get(&id1, &other).await.unwrap().status(), 404);
    let r = common::http()
        .post(format!("{}/responses", net.base_url))
        .bearer_auth(&other)
        .json(&json!({"model": MODEL, "input": "x", "previous_response_id": id1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = common::http().delete(format!("{}/responses/{id1}", net.base_url)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Only ciphertext in the database.
    let l = net.ledger.clone().unwrap();
    let sealed = l.stored_response(&id1, "dev", 0).await.unwrap().expect("stored for the dev account");
    assert!(!String::from_utf8_lossy(&sealed).contains("Ada"));

    let r = common::http().delete(format!("{}/responses/{id1}", net.base_url)).bearer_auth(&net.api_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"id": id1, "object": "response", "deleted": true}));
    assert_eq!(get(&id1, &net.api_key).await.unwrap().status(), 404);
    net.net.shutdown().await;
}
