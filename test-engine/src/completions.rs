//! `POST /v1/completions` (legacy text completions).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::chat::{Usage, UsageField, FINGERPRINT};
use crate::choice::{collect, Choice, LegacyLogprobs, Piece, Source};
use crate::error::ApiError;
use crate::gen::{choice_seed, count_words, Fnv, Lp, WordGen};
use crate::params::{self, Common, MAX_N};
use crate::sse::{self, Pacer, RequestGuard};
use crate::{new_id, unix_now, TestEngine};

/// Legacy `logprobs` is an integer; OpenAI allows up to 5, we allow what chat allows.
const MAX_LEGACY_LOGPROBS: u64 = params::MAX_TOP_LOGPROBS;

/// Each prompt of `prompt` (string | [string] | [int] | [[int]]): token count and seed hash.
fn prompts(body: &Map<String, Value>) -> Result<Vec<(u64, u64)>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of strings, or token arrays.",
        )
    };
    let one_str = |s: &str| {
        let mut h = Fnv::default();
        h.write(s.as_bytes());
        (count_words(s), h.finish())
    };
    let one_tokens = |a: &[Value]| -> Result<(u64, u64), ApiError> {
        let mut h = Fnv::default();
        for t in a {
            h.write(&t.as_u64().ok_or_else(bad)?.to_le_bytes());
        }
        Ok((a.len() as u64, h.finish()))
    };
    match body.get("prompt") {
        None | Some(Value::Null) => Err(ApiError::missing("prompt")),
        Some(Value::String(s)) => Ok(vec![one_str(s)]),
        Some(Value::Array(a)) if a.is_empty() => {
            Err(ApiError::invalid("prompt", "'prompt' must not be empty."))
        }
        Some(Value::Array(a)) if a.len() > MAX_N as usize => Err(ApiError::invalid(
            "prompt",
            format!("'prompt' allows at most {MAX_N} prompts."),
        )),
        Some(Value::Array(a)) => match a.first() {
            Some(Value::Number(_)) => Ok(vec![one_tokens(a)?]),
            _ => a
                .iter()
                .map(|p| match p {
                    Value::String(s) => Ok(one_str(s)),
                    Value::Array(t) => one_tokens(t),
                    _ => Err(bad()),
                })
                .collect(),
        },
        Some(_) => Err(bad()),
    }
}

struct Plan {
    common: Common,
    prompt_tokens: u64,
    top: Option<u8>,
    choices: Vec<Choice>,
}

fn plan(body: &Value, engine: &TestEngine) -> Result<Plan, ApiError> {
    let body = params::as_object(body)?;
    let common = params::common(body, engine.config())?;
    let prompts = prompts(body)?;
    let top = params::opt_uint(body, "logprobs", "logprobs", MAX_LEGACY_LOGPROBS)?.map(|k| k as u8);
    // OpenAI: n choices per prompt.
    let total = prompts.len() as u64 * u64::from(common.n);
    if total > MAX_N {
        return Err(ApiError::invalid(
            "n",
            format!("prompts x n must be at most {MAX_N}."),
        ));
    }
    if !common.stream {
        let planned = u64::from(
            common
                .completion_tokens
                .unwrap_or(24)
                .min(common.limit.unwrap_or(u32::MAX)),
        );
        params::check_budget(total, planned, top)?;
    }
    let mut choices = Vec::with_capacity(total as usize);
    let mut index = 0u32;
    for (_, hash) in &prompts {
        for i in 0..common.n {
            let seed = choice_seed(*hash, common.seed, i);
            let words = WordGen::new(
                seed,
                common.completion_tokens,
                common.limit,
                common.stops.clone(),
                engine.config().max_tokens_default,
            );
            choices.push(Choice::new(
                index,
                Source::Words(words),
                None,
                seed,
                top.is_some(),
            ));
            index += 1;
        }
    }
    let prompt_tokens = prompts.iter().map(|p| p.0).sum();
    Ok(Plan {
        common,
        prompt_tokens,
        top,
        choices,
    })
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<LegacyLogprobs<'a>>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct TextResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

pub async fn handle(engine: Arc<TestEngine>, body: &Value) -> Response {
    let plan = match plan(body, &engine) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if plan.common.stream {
        stream(engine, plan)
    } else {
        answer(engine, plan).await
    }
}

async fn answer(engine: Arc<TestEngine>, plan: Plan) -> Response {
    let mut guard = RequestGuard::start(engine.clone());
    let Plan {
        common,
        prompt_tokens,
        top,
        choices,
    } = plan;
    let done: Vec<_> = choices.into_iter().map(collect).collect();
    let completion: u64 = done.iter().map(|c| c.tokens).sum();
    let longest = done.iter().map(|c| c.tokens).max().unwrap_or(0);
    if !Pacer::new(common.timing, &engine)
        .before_answer(u32::try_from(longest).unwrap_or(u32::MAX))
        .await
    {
        return ApiError::other(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The engine is shutting down.",
            None,
        )
        .into_response();
    }
    let id = new_id("cmpl-");
    let choices: Vec<TextChoice<'_>> = done
        .iter()
        .map(|c| TextChoice {
            text: &c.text,
            index: c.index,
            logprobs: top.map(|top| LegacyLogprobs {
                text: &c.text,
                entries: &c.entries,
                first_pos: 0,
                top,
                offset_base: 0,
            }),
            finish_reason: Some(c.finish.as_str()),
        })
        .collect();
    let resp = TextResponse {
        id: &id,
        object: "text_completion",
        created: unix_now(),
        model: &common.model,
        system_fingerprint: FINGERPRINT,
        choices: &choices,
        usage: UsageField::Set(Usage::new(prompt_tokens, completion)),
    };
    let out = Json(&resp).into_response();
    guard.add_tokens(completion);
    guard.complete();
    out
}

struct ChoiceState {
    choice: Choice,
    pending: Option<Piece>,
    pos: u32,
    offset: usize,
    started: bool,
    finished: bool,
}

struct StreamState {
    guard: RequestGuard,
    pacer: Pacer,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    top: Option<u8>,
    prompt_tokens: u64,
    completion_tokens: u64,
    choices: Vec<ChoiceState>,
    done: bool,
}

impl StreamState {
    fn push(&self, buf: &mut Vec<u8>, choices: &[TextChoice<'_>], usage: UsageField) {
        let chunk = TextResponse {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: FINGERPRINT,
            choices,
            usage,
        };
        sse::push_event(buf, &chunk);
    }

    fn usage_null(&self) -> UsageField {
        if self.include_usage {
            UsageField::Null
        } else {
            UsageField::Absent
        }
    }

    async fn step(mut self) -> Option<(Bytes, Self)> {
        if self.done {
            return None;
        }
        if !self.pacer.before_token().await {
            return None;
        }
        let mut buf = Vec::with_capacity(256 * self.choices.len());
        let mut emitted = 0u64;
        let mut all_done = true;
        let mut states = std::mem::take(&mut self.choices);
        for st in states.iter_mut().filter(|s| !s.finished) {
            if !st.started {
                st.started = true;
                st.pending = st.choice.next_piece();
            }
            if let Some(p) = st.pending {
                emitted += 1;
                let lp = st.choice.next_lp();
                let text = st.choice.text(p);
                let entry: [(usize, usize, Lp); 1];
                let logprobs = match (self.top, lp) {
                    (Some(top), Some(lp)) => {
                        entry = [(0, text.len(), lp)];
                        Some(LegacyLogprobs {
                            text,
                            entries: &entry,
                            first_pos: st.pos,
                            top,
                            offset_base: st.offset,
                        })
                    }
                    _ => None,
                };
                let c = TextChoice {
                    text,
                    index: st.choice.index,
                    logprobs,
                    finish_reason: None,
                };
                self.push(&mut buf, std::slice::from_ref(&c), self.usage_null());
                st.offset += text.len();
                st.pos = st.pos.saturating_add(1);
                st.pending = st.choice.next_piece();
            }
            if st.pending.is_none() {
                st.finished = true;
                let c = TextChoice {
                    text: "",
                    index: st.choice.index,
                    logprobs: None,
                    finish_reason: Some(st.choice.finish().as_str()),
                };
                self.push(&mut buf, std::slice::from_ref(&c), self.usage_null());
            } else {
                all_done = false;
            }
        }
        self.choices = states;
        self.completion_tokens += emitted;
        self.guard.add_tokens(emitted);
        if all_done {
            if self.include_usage {
                self.push(
                    &mut buf,
                    &[],
                    UsageField::Set(Usage::new(self.prompt_tokens, self.completion_tokens)),
                );
            }
            sse::push_done(&mut buf);
            self.guard.complete();
            self.done = true;
        }
        Some((Bytes::from(buf), self))
    }
}

fn stream(engine: Arc<TestEngine>, plan: Plan) -> Response {
    let Plan {
        common,
        prompt_tokens,
        top,
        choices,
    } = plan;
    let state = StreamState {
        guard: RequestGuard::start(engine.clone()),
        pacer: Pacer::new(common.timing, &engine),
        id: new_id("cmpl-"),
        created: unix_now(),
        model: common.model,
        include_usage: common.include_usage,
        top,
        prompt_tokens,
        completion_tokens: 0,
        choices: choices
            .into_iter()
            .map(|choice| ChoiceState {
                choice,
                pending: None,
                pos: 0,
                offset: 0,
                started: false,
                finished: false,
            })
            .collect(),
        done: false,
    };
    sse::drive(state, StreamState::step)
}
