//! async-openai, a real OpenAI client, against the running network: non-stream, stream,
//! and errors surfacing as OpenAI API errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_openai::error::OpenAIError;
use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateEmbeddingRequestArgs, FinishReason,
};
use futures::StreamExt;

fn request(model: &str, stream: bool) -> CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Tell me about confidential computing")
            .build()
            .unwrap()
            .into()])
        .seed(7)
        .max_tokens(12u32);
    if stream {
        b.stream_options(ChatCompletionStreamOptions { include_usage: true });
    }
    b.build().unwrap()
}

#[tokio::test]
async fn non_stream_chat_and_models() {
    let net = common::start(|_| {}).await;
    let client = common::openai(&net, &net.api_key);
    let models = client.models().list().await.unwrap();
    assert!(models.data.iter().any(|m| m.id == "cocoon-test"));
    let resp = client.chat().create(request("cocoon-test", false)).await.unwrap();
    assert_eq!(resp.choices.len(), 1);
    let text = resp.choices[0].message.content.clone().unwrap();
    assert!(!text.is_empty());
    let usage = resp.usage.unwrap();
    assert!(usage.completion_tokens > 0 && usage.completion_tokens <= 12);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

    let emb = client
        .embeddings()
        .create(CreateEmbeddingRequestArgs::default().model("cocoon-test").input(["a", "b"]).build().unwrap())
        .await
        .unwrap();
    assert_eq!(emb.data.len(), 2);
    net.net.shutdown().await;
}

#[tokio::test]
async fn stream_matches_non_stream_and_ends_with_usage() {
    let net = common::start(|_| {}).await;
    let client = common::openai(&net, &net.api_key);
    let whole = client.chat().create(request("cocoon-test", false)).await.unwrap();
    let mut stream = client.chat().create_stream(request("cocoon-test", true)).await.unwrap();
    let mut text = String::new();
    let mut usage = None;
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            usage = Some(u);
            continue;
        }
        for c in chunk.choices {
            if let Some(t) = c.delta.content {
                text.push_str(&t);
            }
            if c.finish_reason.is_some() {
                finish = c.finish_reason;
            }
        }
    }
    assert_eq!(Some(text), whole.choices[0].message.content);
    assert_eq!(finish, whole.choices[0].finish_reason);
    assert!(matches!(finish, Some(FinishReason::Length) | Some(FinishReason::Stop)));
    assert_eq!(usage.unwrap().completion_tokens, whole.usage.unwrap().completion_tokens);
    net.net.shutdown().await;
}

fn api_error(e: OpenAIError) -> async_openai::error::ApiError {
    match e {
        OpenAIError::ApiError(a) => a,
        other => panic!("expected an OpenAI API error, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_arrive_as_openai_errors() {
    let net = common::start(|_| {}).await;
    let bad = common::openai(&net, "sk-cocoon-notarealkeynotarealkeynotarealkeynotarealkeynotareal");
    let e = api_error(bad.chat().create(request("cocoon-test", false)).await.unwrap_err());
    assert_eq!(e.code.as_deref(), Some("invalid_api_key"));

    let client = common::openai(&net, &net.api_key);
    let e = api_error(client.chat().create(request("no-such-model", false)).await.unwrap_err());
    assert_eq!(e.code.as_deref(), Some("model_not_found"));
    assert_eq!(e.param.as_deref(), Some("model"));

    let mut req = request("cocoon-test", false);
    req.temperature = Some(7.0);
    let e = api_error(client.chat().create(req).await.unwrap_err());
    assert_eq!(e.param.as_deref(), Some("temperature"));
    assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));

    // A stream that cannot start fails on its first item, with the error body intact.
    let first = match client.chat().create_stream(request("no-such-model", true)).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.expect("an error item").expect_err("stream to an unknown model must fail"),
    };
    let text = format!("{first:?}");
    assert!(text.contains("model_not_found") || text.contains("404"), "{text}");
    net.net.shutdown().await;
}
