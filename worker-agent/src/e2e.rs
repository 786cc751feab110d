//! The worker's side of an end-to-end sealed request (docs/e2e.md, section 4): open the
//! client's body inside the TEE only for exactly the clear facts, check the opened JSON
//! against them before the engine sees anything, and prepare the body for the engine.

use attestation::e2e::{E2eFacts, ResponseWriter, SealedRequest};
use attestation::{HpkePublicKey, JobOpener};
use bytes::Bytes;
use protocol::{Job, JobError};
use serde_json::{Map, Value};

/// An opened, checked request: the job as the engine must run it, the sealer of the
/// answer, and whether the client asked for the usage chunk.
pub(crate) struct Opened {
    pub job: Job,
    pub writer: ResponseWriter,
    pub client_wants_usage: bool,
    pub request_id: uuid::Uuid,
}

fn refuse(status: u16, message: String) -> JobError {
    // Never retryable: the request was sealed to this worker alone.
    JobError::new(status, message, false)
}

/// Tokens a body may hold at most by the rule the client declares its bound with: one per
/// four bytes of the whole JSON body, rounded up.
pub fn prompt_bound(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(4)
}

/// Opens `job` (its body is the client's ciphertext) with one of this worker's keys.
pub(crate) fn open(job: Job, worker_id: &str, keys: &[&JobOpener]) -> Result<Opened, JobError> {
    let Some(route) = job.e2e.clone() else {
        return Err(refuse(500, "not an end-to-end job".into()));
    };
    if route.worker_id != worker_id {
        return Err(refuse(409, format!("sealed for worker {:?}, this is {worker_id:?}", route.worker_id)));
    }
    let worker_key: [u8; 32] = route
        .worker_key
        .as_ref()
        .try_into()
        .map_err(|_| refuse(400, "the worker key must be 32 bytes".into()))?;
    let enc: [u8; 32] = route.enc.as_ref().try_into().map_err(|_| refuse(400, "the encapsulated key must be 32 bytes".into()))?;
    let key = HpkePublicKey(worker_key);
    let Some(opener) = keys.iter().find(|k| k.public_key() == key) else {
        // A key of a link that is gone (the worker reconnected): the client fetches a fresh
        // report and seals again.
        return Err(refuse(409, format!("stale_key: {} is not a current key of this worker", key.fingerprint())));
    };
    let facts = E2eFacts {
        request_id: route.request_id,
        model: job.model.clone(),
        endpoint: job.endpoint.path().to_string(),
        stream: job.stream,
        max_prompt_tokens: route.max_prompt_tokens,
        max_output_tokens: route.max_output_tokens,
        worker_id: route.worker_id.clone(),
        worker_key: key,
        pad_to: route.pad_to,
    };
    let sealed = SealedRequest { enc, ciphertext: job.body.to_vec() };
    let (body, writer) = opener.open_request(&facts, &sealed).map_err(|e| refuse(400, e.to_string()))?;
    let (body, client_wants_usage) = check_body(&body, &facts)?;
    let job = Job { body, e2e: None, ..job };
    Ok(Opened { job, writer, client_wants_usage, request_id: route.request_id })
}

/// The opened JSON must agree with the clear facts; the engine gets the cap the client
/// declared and, for a stream, usage (the receipt needs it).
fn check_body(body: &[u8], facts: &E2eFacts) -> Result<(Bytes, bool), JobError> {
    let bad = |m: String| refuse(400, format!("sealed body does not match the declared facts: {m}"));
    let mut obj: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        _ => return Err(bad("it is not a JSON object".into())),
    };
    match obj.get("model") {
        Some(Value::String(m)) if *m == facts.model => {}
        other => return Err(bad(format!("model {other:?} is not the declared {:?}", facts.model))),
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(bad(format!("stream must be a boolean, got {v}"))),
    };
    if stream != facts.stream {
        return Err(bad(format!("stream is {stream}, declared {}", facts.stream)));
    }
    let bound = prompt_bound(body.len());
    if bound > facts.max_prompt_tokens {
        return Err(bad(format!(
            "the body ({} bytes, up to {bound} prompt tokens) exceeds the declared max_prompt_tokens {}",
            body.len(),
            facts.max_prompt_tokens
        )));
    }
    let generates = facts.endpoint != protocol::Endpoint::Embeddings.path();
    let responses = facts.endpoint == protocol::Endpoint::Responses.path();
    let int = |k: &str| obj.get(k).and_then(Value::as_u64);
    if responses {
        // The Responses API (passed through to vLLM or translated to the engine's chat completions
        // inside this TEE, after this check): its cap is `max_output_tokens`, one output. What needs a stored
        // response cannot be honoured: nothing is kept in end-to-end mode.
        for (k, stateful) in [
            ("previous_response_id", obj.get("previous_response_id").is_some_and(|v| !v.is_null())),
            ("conversation", obj.get("conversation").is_some_and(|v| !v.is_null())),
            ("store", obj.get("store") == Some(&Value::Bool(true))),
            ("background", obj.get("background") == Some(&Value::Bool(true))),
        ] {
            if stateful {
                return Err(refuse(400, format!("`{k}` needs a stored response, and nothing is stored in end-to-end mode")));
            }
        }
        match int("max_output_tokens") {
            Some(cap) if cap > facts.max_output_tokens => {
                return Err(bad(format!("max_output_tokens {cap} exceeds the declared max_output_tokens {}", facts.max_output_tokens)));
            }
            Some(_) => {}
            None if facts.max_output_tokens == 0 => return Err(bad("max_output_tokens 0 leaves nothing to generate".into())),
            None => {
                obj.insert("max_output_tokens".into(), Value::from(facts.max_output_tokens));
            }
        }
        let out = serde_json::to_vec(&obj).map_err(|e| refuse(500, format!("re-encoding the body: {e}")))?;
        // Responses events are never usage-only chunks: nothing to drop.
        return Ok((Bytes::from(out), false));
    }
    let choices = int("n").unwrap_or(1).max(int("best_of").unwrap_or(1)).max(1);
    if generates {
        match int("max_completion_tokens").or_else(|| int("max_tokens")) {
            Some(cap) => {
                let total = cap.saturating_mul(choices);
                if total > facts.max_output_tokens {
                    return Err(bad(format!(
                        "max_tokens {cap} x {choices} choices = {total} exceeds the declared max_output_tokens {}",
                        facts.max_output_tokens
                    )));
                }
            }
            None => {
                let cap = facts.max_output_tokens / choices;
                if cap == 0 {
                    return Err(bad(format!("max_output_tokens {} is less than one token per choice", facts.max_output_tokens)));
                }
                obj.insert("max_tokens".into(), Value::from(cap));
            }
        }
    }
    let mut wants_usage = false;
    if stream {
        let opts = obj.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            wants_usage = o.get("include_usage").and_then(Value::as_bool).unwrap_or(false);
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let out = serde_json::to_vec(&obj).map_err(|e| refuse(500, format!("re-encoding the body: {e}")))?;
    Ok((Bytes::from(out), wants_usage))
}

/// A usage-only chunk (`"choices": []` with `usage`), which a client that did not ask for
/// usage must not get.
pub(crate) fn is_usage_only(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Peek>(data).is_ok_and(|p| p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use attestation::e2e::seal_request;
    use protocol::{E2eRoute, Endpoint};
    use serde_json::json;

    fn sealed_job(key: &JobOpener, facts: &E2eFacts, body: &Value) -> Job {
        let (sealed, _) = seal_request(facts, &serde_json::to_vec(body).unwrap()).unwrap();
        Job {
            id: uuid::Uuid::new_v4(),
            endpoint: Endpoint::ChatCompletions,
            model: facts.model.clone(),
            stream: facts.stream,
            body: Bytes::from(sealed.ciphertext),
            e2e: Some(E2eRoute {
                request_id: facts.request_id,
                max_prompt_tokens: facts.max_prompt_tokens,
                max_output_tokens: facts.max_output_tokens,
                worker_id: facts.worker_id.clone(),
                worker_key: Bytes::copy_from_slice(&key.public_key().0),
                pad_to: 0,
                enc: Bytes::copy_from_slice(&sealed.enc),
            }),
        }
    }

    fn facts(key: &JobOpener) -> E2eFacts {
        E2eFacts {
            request_id: uuid::Uuid::new_v4(),
            model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            stream: true,
            max_prompt_tokens: 1000,
            max_output_tokens: 100,
            worker_id: "w1".into(),
            worker_key: key.public_key(),
            pad_to: 0,
        }
    }

    fn msg(extra: Value) -> Value {
        let mut b = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn opens_and_caps_what_the_client_declared() {
        let key = JobOpener::generate().unwrap();
        let f = facts(&key);
        let o = open(sealed_job(&key, &f, &msg(json!({"n": 2}))), "w1", &[&key]).map_err(|e| e.message).unwrap();
        let body: Value = serde_json::from_slice(&o.job.body).unwrap();
        assert_eq!(body["max_tokens"], 50, "the declared bound split over the choices");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(!o.client_wants_usage);
        assert!(o.job.e2e.is_none());
    }

    #[test]
    fn refuses_a_body_that_exceeds_or_contradicts_the_clear_facts() {
        let key = JobOpener::generate().unwrap();
        let f = facts(&key);
        let reason = |body: Value, worker: &str, keys: &[&JobOpener]| open(sealed_job(&key, &f, &body), worker, keys).err().unwrap().message;
        assert!(reason(msg(json!({"max_tokens": 101})), "w1", &[&key]).contains("exceeds the declared max_output_tokens"));
        assert!(reason(msg(json!({"max_tokens": 60, "n": 2})), "w1", &[&key]).contains("2 choices"));
        assert!(reason(msg(json!({"model": "other"})), "w1", &[&key]).contains("model"));
        assert!(reason(msg(json!({"stream": false})), "w1", &[&key]).contains("stream is false"));
        let long = "x".repeat(5000);
        assert!(reason(msg(json!({"messages": [{"role": "user", "content": long}]})), "w1", &[&key]).contains("max_prompt_tokens"));
        assert!(reason(msg(json!({})), "w2", &[&key]).contains("sealed for worker"));
        let other = JobOpener::generate().unwrap();
        assert!(reason(msg(json!({})), "w1", &[&other]).contains("stale_key"));
    }

    #[test]
    fn a_sealed_responses_request_is_capped_by_max_output_tokens_and_needs_nothing_stored() {
        let key = JobOpener::generate().unwrap();
        let mut f = facts(&key);
        f.endpoint = "/v1/responses".into();
        let job = |body: Value| {
            let mut j = sealed_job(&key, &f, &body);
            j.endpoint = Endpoint::Responses;
            j
        };
        let req = |extra: Value| {
            let mut b = json!({"model": "m", "stream": true, "input": "hi"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        // No cap: the declared bound becomes max_output_tokens; no chat stream_options added.
        let o = open(job(req(json!({}))), "w1", &[&key]).map_err(|e| e.message).unwrap();
        let body: Value = serde_json::from_slice(&o.job.body).unwrap();
        assert_eq!(body["max_output_tokens"], 100);
        assert!(body.get("stream_options").is_none() && body.get("max_tokens").is_none(), "{body}");
        assert_eq!(o.job.endpoint, Endpoint::Responses, "passed through or translated after this, inside the TEE");
        let reason = |b: Value| open(job(b), "w1", &[&key]).err().unwrap().message;
        assert!(reason(req(json!({"max_output_tokens": 101}))).contains("exceeds the declared max_output_tokens 100"));
        for stateful in [json!({"previous_response_id": "resp_1"}), json!({"store": true}), json!({"background": true}), json!({"conversation": "c"})] {
            let why = reason(req(stateful.clone()));
            assert!(why.contains("nothing is stored in end-to-end mode"), "{stateful}: {why}");
        }
        // `store: false` (what SDKs send to opt out) is fine.
        assert!(open(job(req(json!({"store": false}))), "w1", &[&key]).is_ok());
    }
}
