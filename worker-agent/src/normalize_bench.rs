//! Per-chunk CPU cost of the worker's stream relay, before and after pass-through (#22 item 5).
//!
//! `cargo test --release -p worker-agent --lib -- --ignored per_chunk_cost --nocapture`
//!
//! Method: a 256-token chat stream as vLLM v0.11 writes it (role chunk, token chunks, final
//! chunk, usage chunk; `model_dump_json(exclude_unset=True)` in serving_chat.py), and the same
//! as llama-server 11434.0.0 writes it, run through the per-chunk code of each version many
//! times on one thread; the best of 5 rounds, in ns per chunk. "Before" is the code of commit
//! 7de551a verbatim (`before` below): a `Peek` parse of every chunk, then
//! `normalize::stream_chunk`, which re-encoded every chunk to add `"usage": null` because the
//! gateway always forces `include_usage`. SSE framing and the link are the same in both and
//! left out.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bytes::Bytes;

use super::{Chunk, Quirks, StreamRewriter};

/// Commit 7de551a's per-chunk path, verbatim but for names.
mod before {
    use bytes::Bytes;
    use protocol::Usage;
    use serde::Deserialize;
    use serde_json::{Map, Value};

    const PRIVATE_FIELDS: [&str; 3] = ["timings", "prompt_progress", "__verbose"];

    #[derive(Deserialize)]
    pub struct Peek {
        #[serde(default)]
        pub usage: Option<Usage>,
        #[serde(default)]
        pub error: Option<serde::de::IgnoredAny>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        #[serde(default)]
        object: Option<String>,
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default, deserialize_with = "keep_null")]
        usage: Option<Value>,
        #[serde(default)]
        timings: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        prompt_progress: Option<serde::de::IgnoredAny>,
        #[serde(default, rename = "__verbose")]
        verbose: Option<serde::de::IgnoredAny>,
    }

    fn keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Value::deserialize(d).map(Some)
    }

    impl Shape {
        fn has_private(&self) -> bool {
            self.timings.is_some() || self.prompt_progress.is_some() || self.verbose.is_some()
        }
        fn has_choices(&self) -> bool {
            self.choices.as_ref().is_some_and(|c| !c.is_empty())
        }
        fn usage_with_choices(&self) -> bool {
            self.usage.as_ref().is_some_and(|u| !u.is_null()) && self.has_choices()
        }
        fn lacks_usage_key(&self) -> bool {
            self.usage.is_none() && self.has_choices()
        }
    }

    fn strip_private(obj: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for f in PRIVATE_FIELDS {
            changed |= obj.remove(f).is_some();
        }
        changed
    }

    fn to_bytes(v: &Value, original: &Bytes) -> Bytes {
        serde_json::to_vec(v).map(Bytes::from).unwrap_or_else(|_| original.clone())
    }

    pub fn stream_chunk(data: Bytes, include_usage: bool) -> Vec<Bytes> {
        let Ok(shape) = serde_json::from_slice::<Shape>(&data) else {
            return vec![data];
        };
        let add_null_usage = include_usage && shape.lacks_usage_key();
        if !shape.has_private() && !shape.usage_with_choices() && !add_null_usage {
            return vec![data];
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&data) else {
            return vec![data];
        };
        strip_private(&mut obj);
        if add_null_usage {
            obj.insert("usage".into(), Value::Null);
        }
        if !shape.usage_with_choices() {
            return vec![to_bytes(&Value::Object(obj), &data)];
        }
        let usage = obj.insert("usage".into(), Value::Null).unwrap_or(Value::Null);
        if !include_usage {
            obj.remove("usage");
        }
        let mut usage_chunk = obj.clone();
        usage_chunk.insert("choices".into(), Value::Array(Vec::new()));
        usage_chunk.insert("usage".into(), usage);
        vec![to_bytes(&Value::Object(obj), &data), to_bytes(&Value::Object(usage_chunk), &data)]
    }

    /// What relay_stream did per chunk at 7de551a.
    pub fn per_chunk(data: Bytes, include_usage: bool) -> usize {
        let mut n = 0;
        if let Ok(peek) = serde_json::from_slice::<Peek>(&data) {
            n += usize::from(peek.error.is_some()) + usize::from(peek.usage.is_some());
        }
        for out in stream_chunk(data, include_usage) {
            n += out.len();
        }
        n
    }
}

const TOKENS: usize = 256;

/// A vLLM v0.11 chat stream (serving_chat.py, exclude_unset): role chunk, token chunks, the
/// finish chunk, and the usage chunk (include_usage).
fn vllm_stream() -> Vec<Bytes> {
    let head = r#"{"id":"chatcmpl-3f9a1c0e2b7d4e8f9a1c0e2b7d4e8f9a","object":"chat.completion.chunk","created":1760000000,"model":"Qwen/Qwen2.5-7B-Instruct""#;
    let mut out = vec![Bytes::from(format!(
        r#"{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"prompt_token_ids":null}}"#
    ))];
    for i in 0..TOKENS {
        out.push(Bytes::from(format!(
            r#"{head},"choices":[{{"index":0,"delta":{{"content":" word{i}"}},"logprobs":null,"finish_reason":null,"token_ids":null}}]}}"#
        )));
    }
    out.push(Bytes::from(format!(
        r#"{head},"choices":[{{"index":0,"delta":{{"content":""}},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}}]}}"#
    )));
    out.push(Bytes::from(format!(
        r#"{head},"choices":[],"usage":{{"prompt_tokens":24,"total_tokens":{},"completion_tokens":{TOKENS}}}}}"#,
        24 + TOKENS
    )));
    out
}

/// The same stream as llama-server 11434.0.0 writes it (timings on the last choice chunk).
fn llama_stream() -> Vec<Bytes> {
    let tail = r#""created":1760000000,"id":"chatcmpl-7FtsEamEt0RTVcUVhMPLd88sQGx4TZ4f","model":"smollm2-135m","system_fingerprint":"b0-unknown","object":"chat.completion.chunk""#;
    let mut out = vec![Bytes::from(format!(
        r#"{{"choices":[{{"finish_reason":null,"index":0,"delta":{{"role":"assistant","content":null}}}}],{tail}}}"#
    ))];
    for i in 0..TOKENS {
        out.push(Bytes::from(format!(
            r#"{{"choices":[{{"finish_reason":null,"index":0,"delta":{{"content":" word{i}"}}}}],{tail}}}"#
        )));
    }
    out.push(Bytes::from(format!(
        r#"{{"choices":[{{"finish_reason":"length","index":0,"delta":{{}}}}],{tail},"timings":{{"cache_n":0,"prompt_n":31,"prompt_ms":467.4,"predicted_n":256,"predicted_ms":6374.5}}}}"#
    )));
    out.push(Bytes::from(format!(
        r#"{{"choices":[],{tail},"usage":{{"completion_tokens":256,"prompt_tokens":31,"total_tokens":287,"prompt_tokens_details":{{"cached_tokens":0}}}},"timings":{{"cache_n":0}}}}"#
    )));
    out
}

/// Best of 5 rounds of `rounds` passes over `chunks`, in ns per chunk.
fn measure(chunks: &[Bytes], rounds: usize, mut f: impl FnMut(Bytes) -> usize) -> f64 {
    let mut best = f64::MAX;
    let mut sink = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            for c in chunks {
                sink = sink.wrapping_add(f(c.clone()));
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / (rounds * chunks.len()) as f64;
        best = best.min(ns);
    }
    assert!(sink > 0);
    best
}

fn after(mut r: StreamRewriter) -> impl FnMut(Bytes) -> usize {
    move |c| match r.chunk(c) {
        Chunk::Relay { out, usage } => out.iter().map(Bytes::len).sum::<usize>() + usize::from(usage.is_some()),
        Chunk::Error(_) => 1,
    }
}

#[test]
#[ignore = "benchmark: prints numbers; run with --release"]
fn per_chunk_cost() {
    let rounds = 400;
    let vllm = vllm_stream();
    let llama = llama_stream();
    let rows = [
        ("vLLM, before: gateway forces include_usage, every chunk re-encoded", measure(&vllm, rounds, |c| before::per_chunk(c, true))),
        (
            "vLLM, after: client without include_usage (usage chunk withheld)",
            measure(&vllm, rounds, after(StreamRewriter::new(Quirks::VLLM, false))),
        ),
        (
            "vLLM, after: client with include_usage (\"usage\":null spliced)",
            measure(&vllm, rounds, after(StreamRewriter::new(Quirks::VLLM, true))),
        ),
        ("llama-server, before (include_usage forced)", measure(&llama, rounds, |c| before::per_chunk(c, true))),
        (
            "llama-server, after: client without include_usage",
            measure(&llama, rounds, after(StreamRewriter::new(Quirks::LLAMA_SERVER, false))),
        ),
        (
            "llama-server, after: client with include_usage",
            measure(&llama, rounds, after(StreamRewriter::new(Quirks::LLAMA_SERVER, true))),
        ),
    ];
    println!("per-chunk relay cost, {} chunks per stream, best of 5 x {rounds} streams:", vllm.len());
    for (name, ns) in rows {
        println!("  {ns:8.0} ns/chunk  {name}");
    }
}
