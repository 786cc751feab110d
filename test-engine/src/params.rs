//! Request parameters shared by the generation routes, read straight from the JSON value so every
//! type error names its `param` (a derived deserialiser would not).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::EngineConfig;

/// Hard caps keeping any request bounded in memory and time.
pub const MAX_N: u64 = 128;
pub const MAX_TOKENS_CAP: u32 = 100_000;
pub const MAX_TOP_LOGPROBS: u64 = 20;
const MAX_STOPS: usize = 16;
/// Longer stops would make the per-token stop check (and its tail buffer) expensive.
const MAX_STOP_LEN: usize = 1024;
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Non-stream answers are built in memory: n x tokens x (1 + logprob entries) must stay below this.
pub const NON_STREAM_BUDGET: u64 = 2_000_000;

/// Pacing of one request (config, or the per-request `test_engine` override).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub ttft: Duration,
    /// `None` = unlimited tokens per second: never sleep between tokens.
    pub interval: Option<Duration>,
}

/// What `/v1/chat/completions` and `/v1/completions` have in common.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: String,
    pub n: u32,
    pub limit: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub seed: Option<u64>,
    pub stops: Arc<[String]>,
    pub timing: Timing,
    pub completion_tokens: Option<u32>,
}

pub fn as_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::other(
            axum::http::StatusCode::BAD_REQUEST,
            "The request body must be a JSON object.",
            None,
        )
    })
}

/// The `model`, checked against the served models.
pub fn model(body: &Map<String, Value>, cfg: &EngineConfig) -> Result<String, ApiError> {
    match body.get("model") {
        None | Some(Value::Null) => Err(ApiError::missing("model")),
        Some(Value::String(m)) if cfg.models.iter().any(|x| x == m) => Ok(m.clone()),
        Some(Value::String(m)) => Err(ApiError::model_not_found(m)),
        Some(_) => Err(ApiError::invalid("model", "'model' must be a string.")),
    }
}

fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

pub fn opt_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match present(body, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be a boolean."),
        )),
    }
}

/// An unsigned integer within `0..=max` (out of range is an error).
pub fn opt_uint(
    body: &Map<String, Value>,
    key: &str,
    param: &str,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match body.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if x <= max => Ok(Some(x)),
            Some(_) => Err(ApiError::invalid(
                param,
                format!("'{param}' must be at most {max}."),
            )),
            None => Err(ApiError::invalid(
                param,
                format!("'{param}' must be a non-negative integer."),
            )),
        },
    }
}

/// A token limit: a non-negative integer, clamped to the engine cap.
fn opt_limit(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, ApiError> {
    Ok(opt_uint(body, key, key, u64::MAX)?.map(|x| x.min(u64::from(MAX_TOKENS_CAP)) as u32))
}

pub fn common(body: &Map<String, Value>, cfg: &EngineConfig) -> Result<Common, ApiError> {
    let model = model(body, cfg)?;
    let n = match opt_uint(body, "n", "n", u64::MAX)? {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as u32,
        Some(_) => {
            return Err(ApiError::invalid(
                "n",
                format!("'n' must be between 1 and {MAX_N}."),
            ))
        }
    };
    let limit = match (
        opt_limit(body, "max_tokens")?,
        opt_limit(body, "max_completion_tokens")?,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let stream = opt_bool(body, "stream")?.unwrap_or(false);
    let include_usage = match present(body, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|_| {
                ApiError::invalid(
                    "stream_options.include_usage",
                    "'include_usage' must be a boolean.",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "'stream_options' must be an object.",
            ))
        }
    };
    let seed = match present(body, "seed") {
        None => None,
        // Negative seeds are valid for OpenAI: any 64-bit pattern will do.
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "'seed' must be an integer."))?,
        ),
    };
    let stops = stops(body)?;
    let (timing, completion_tokens) = overrides(body, cfg)?;
    Ok(Common {
        model,
        n,
        limit,
        stream,
        include_usage,
        seed,
        stops,
        timing,
        completion_tokens,
    })
}

fn stops(body: &Map<String, Value>) -> Result<Arc<[String]>, ApiError> {
    let err = || ApiError::invalid("stop", "'stop' must be a string or an array of strings.");
    let list: Vec<String> = match present(body, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOPS {
                return Err(ApiError::invalid(
                    "stop",
                    format!("'stop' allows at most {MAX_STOPS} sequences."),
                ));
            }
            a.iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(err))
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(err()),
    };
    if list.iter().any(|s| s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid(
            "stop",
            format!("Each stop sequence must be at most {MAX_STOP_LEN} bytes."),
        ));
    }
    // An empty stop string would match everywhere; OpenAI ignores it.
    Ok(list
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .into())
}

/// Config timing, overridden by the request's `test_engine` object.
pub fn overrides(
    body: &Map<String, Value>,
    cfg: &EngineConfig,
) -> Result<(Timing, Option<u32>), ApiError> {
    let mut ttft = cfg.ttft;
    let mut tps = cfg.tokens_per_second;
    let mut completion_tokens = None;
    match present(body, "test_engine") {
        None => {}
        Some(Value::Object(o)) => {
            if let Some(ms) = opt_uint(o, "ttft_ms", "test_engine.ttft_ms", u64::MAX)? {
                ttft = Duration::from_millis(ms);
            }
            if let Some(v) = present(o, "tokens_per_second") {
                tps = v.as_f64().ok_or_else(|| {
                    ApiError::invalid(
                        "test_engine.tokens_per_second",
                        "'tokens_per_second' must be a number.",
                    )
                })?;
            }
            completion_tokens = opt_uint(
                o,
                "completion_tokens",
                "test_engine.completion_tokens",
                u64::MAX,
            )?
            .map(|x| x.min(u64::from(MAX_TOKENS_CAP)) as u32);
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "test_engine",
                "'test_engine' must be an object.",
            ))
        }
    }
    if !tps.is_finite() || tps < 0.0 {
        return Err(ApiError::invalid(
            "test_engine.tokens_per_second",
            "'tokens_per_second' must be >= 0.",
        ));
    }
    let interval = (tps > 0.0).then(|| {
        Duration::try_from_secs_f64(1.0 / tps)
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY)
    });
    Ok((
        Timing {
            ttft: ttft.min(MAX_DELAY),
            interval,
        },
        completion_tokens,
    ))
}

/// Logprob settings of a chat request: `None` when not asked, else the number of alternatives.
pub fn chat_logprobs(body: &Map<String, Value>) -> Result<Option<u8>, ApiError> {
    let top = opt_uint(body, "top_logprobs", "top_logprobs", MAX_TOP_LOGPROBS)?;
    Ok(opt_bool(body, "logprobs")?
        .unwrap_or(false)
        .then_some(top.unwrap_or(0) as u8))
}

/// Memory guard for answers assembled in memory.
pub fn check_budget(n: u64, tokens: u64, logprobs: Option<u8>) -> Result<(), ApiError> {
    let per_token = 1 + logprobs.map_or(0, |k| 1 + u64::from(k));
    if n.saturating_mul(tokens).saturating_mul(per_token) > NON_STREAM_BUDGET {
        return Err(ApiError::invalid(
            "n",
            "This non-streaming request would generate too much output for the test engine; use stream=true or fewer tokens.",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        let cfg = EngineConfig::default();
        let c = common(&obj(json!({"model": "cocoon-test"})), &cfg).unwrap();
        assert_eq!(
            (c.n, c.limit, c.stream, c.include_usage),
            (1, None, false, false)
        );
        assert_eq!(
            c.timing,
            Timing {
                ttft: Duration::ZERO,
                interval: None
            }
        );
        let c = common(
            &obj(json!({"model": "cocoon-test", "n": 3, "max_tokens": 9, "max_completion_tokens": 5, "seed": -1,
                 "stop": ["", "x"], "stream": true, "stream_options": {"include_usage": true},
                 "test_engine": {"ttft_ms": 5, "tokens_per_second": 4.0, "completion_tokens": 1_000_000}})),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (c.n, c.limit, c.seed, c.completion_tokens),
            (3, Some(5), Some(u64::MAX), Some(MAX_TOKENS_CAP))
        );
        assert_eq!(&*c.stops, &["x".to_string()]);
        assert_eq!(c.timing.interval, Some(Duration::from_millis(250)));
        assert_eq!(c.timing.ttft, Duration::from_millis(5));
        let tiny = common(
            &obj(json!({"model": "cocoon-test", "test_engine": {"tokens_per_second": 1e-300}})),
            &cfg,
        )
        .unwrap();
        assert_eq!(tiny.timing.interval, Some(MAX_DELAY));
    }

    #[test]
    fn errors_name_param() {
        let cfg = EngineConfig::default();
        for (body, param) in [
            (json!({}), "model"),
            (json!({"model": 1}), "model"),
            (json!({"model": "cocoon-test", "n": 0}), "n"),
            (json!({"model": "cocoon-test", "n": 129}), "n"),
            (json!({"model": "cocoon-test", "n": 1.5}), "n"),
            (
                json!({"model": "cocoon-test", "max_tokens": -1}),
                "max_tokens",
            ),
            (json!({"model": "cocoon-test", "stop": 5}), "stop"),
            (json!({"model": "cocoon-test", "stop": [1]}), "stop"),
            (json!({"model": "cocoon-test", "seed": "x"}), "seed"),
            (json!({"model": "cocoon-test", "stream": "yes"}), "stream"),
            (
                json!({"model": "cocoon-test", "test_engine": {"tokens_per_second": -1}}),
                "test_engine.tokens_per_second",
            ),
            (
                json!({"model": "cocoon-test", "test_engine": {"ttft_ms": -1}}),
                "test_engine.ttft_ms",
            ),
            (
                json!({"model": "cocoon-test", "test_engine": 3}),
                "test_engine",
            ),
        ] {
            let e = common(&obj(body.clone()), &cfg).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let e = common(&obj(json!({"model": "nope"})), &cfg).unwrap_err();
        assert_eq!(e.code, Some("model_not_found"));
    }

    #[test]
    fn budget() {
        assert!(check_budget(128, 24, Some(20)).is_ok());
        assert!(check_budget(128, 100_000, None).is_err());
    }
}
