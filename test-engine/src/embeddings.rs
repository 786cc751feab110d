//! `POST /v1/embeddings`: deterministic unit vectors, float or base64 (little-endian f32).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::gen::{count_words, mix, Fnv, SplitMix64};
use crate::params;
use crate::sse::RequestGuard;
use crate::TestEngine;

pub const MAX_DIM: u64 = 4096;
/// OpenAI's own limit on inputs per request.
pub const MAX_INPUTS: usize = 2048;
/// Cap on inputs x dimensions, so one request cannot build a huge answer.
const MAX_FLOATS: usize = 4 * 1024 * 1024;

/// Each input: (tokens, hash of its content).
fn inputs(body: &Map<String, Value>) -> Result<Vec<(u64, u64)>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "input",
            "'input' must be a string, an array of strings, or token arrays.",
        )
    };
    let text = |s: &str| {
        let mut h = Fnv::default();
        h.write(s.as_bytes());
        (count_words(s), h.finish())
    };
    let tokens = |a: &[Value]| -> Result<(u64, u64), ApiError> {
        let mut h = Fnv::default();
        h.write(b"tokens:");
        for t in a {
            h.write(&t.as_u64().ok_or_else(bad)?.to_le_bytes());
        }
        Ok((a.len() as u64, h.finish()))
    };
    let list = match body.get("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(Value::String(s)) => return Ok(vec![text(s)]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad()),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("input", "'input' must not be empty."));
    }
    if list.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("'input' allows at most {MAX_INPUTS} items."),
        ));
    }
    if let Some(Value::Number(_)) = list.first() {
        return Ok(vec![tokens(list)?]);
    }
    list.iter()
        .map(|v| match v {
            Value::String(s) => Ok(text(s)),
            Value::Array(t) => tokens(t),
            _ => Err(bad()),
        })
        .collect()
}

/// Deterministic unit-length vector for a content hash.
pub fn vector(hash: u64, dim: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(mix(hash ^ 0xE3B));
    let mut v: Vec<f32> = (0..dim)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 1e-12 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    } else if let Some(first) = v.first_mut() {
        *first = 1.0;
    }
    v
}

enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

struct Item {
    index: usize,
    embedding: Embedding,
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("object", "embedding")?;
        m.serialize_entry("index", &self.index)?;
        match &self.embedding {
            Embedding::Float(v) => m.serialize_entry("embedding", v)?,
            Embedding::Base64(b) => m.serialize_entry("embedding", b)?,
        }
        m.end()
    }
}

#[derive(Serialize)]
struct EmbUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct EmbResponse<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: EmbUsage,
}

pub fn handle(engine: Arc<TestEngine>, body: &Value) -> Response {
    match build(&engine, body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn build(engine: &Arc<TestEngine>, body: &Value) -> Result<Response, ApiError> {
    let body = params::as_object(body)?;
    let model = params::model(body, engine.config())?;
    let inputs = inputs(body)?;
    let dim = match params::opt_uint(body, "dimensions", "dimensions", MAX_DIM)? {
        Some(0) => {
            return Err(ApiError::invalid(
                "dimensions",
                "'dimensions' must be at least 1.",
            ))
        }
        Some(d) => d as usize,
        None => engine.config().embedding_dim.clamp(1, MAX_DIM as usize),
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'.",
            ))
        }
    };
    if inputs.len().saturating_mul(dim) > MAX_FLOATS {
        return Err(ApiError::invalid(
            "input",
            "Too many inputs for this many dimensions.",
        ));
    }
    let mut guard = RequestGuard::start(engine.clone());
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, (_, hash))| {
            let v = vector(*hash, dim);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Float(v)
            };
            Item { index, embedding }
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|i| i.0).sum();
    let resp = EmbResponse {
        object: "list",
        data,
        model: &model,
        usage: EmbUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    let out = Json(&resp).into_response();
    guard.complete();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_length_and_deterministic() {
        for dim in [1, 2, 64, 4096] {
            let v = vector(99, dim);
            assert_eq!(v.len(), dim);
            let n: f64 = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
            assert_eq!(v, vector(99, dim));
        }
        assert_ne!(vector(1, 8), vector(2, 8));
    }
}
