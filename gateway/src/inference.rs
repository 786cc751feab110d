//! The path of every inference call, as small named steps:
//!
//! validate → limit → shed → hold → admit → dispatch → relay (stream) or capture (whole answer)
//!
//! - **validate**: read the body (bounded size and time), parse, check the fields, know the
//!   model.
//! - **limit**: the key's requests and tokens per minute.
//! - **shed**: the in-flight limit, before the ledger is touched, so an overload costs no
//!   ledger write.
//! - **hold**: reserve the worst case (prompt estimate + the generation cap the engine is sent).
//! - **admit**: the router answers at once: a free slot, a place in the model's queue, or 503.
//! - **dispatch**: wait for a slot and the worker's first event. For a stream this happens
//!   inside the response body, after the headers went out, with SSE keep-alives meanwhile.
//! - **relay / capture**: a stream is relayed and captured before `[DONE]`; a whole answer is
//!   captured before the client gets it. A capture that cannot be made durable withholds the
//!   answer: no answer is free.
//!
//! Each step owns what it needs and returns what the next needs; [`Call`] keeps only what
//! every response carries (job id, rate-limit headers, model label) and the request's span.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::{Endpoint, Job, JobEvent};
use router::{DispatchOptions, Ticket};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::Principal;
use crate::billing::{Bill, HoldRequest, MeterError, UsageBounds};
use crate::error::ApiError;
use crate::metrics::{ModelLabel, INFLIGHT_REQUESTS};
use crate::ratelimit::Decision;
use crate::relay::{record_usage, SseRelay, TokenSettle};
use crate::state::AppState;
use crate::validate::{self, ValidRequest};

/// The highest worker price multiplier (thousandths) there is: a hold at it covers any worker.
pub const MAX_PRICE_COEFFICIENT: u32 = 4000;

/// Set to `simulated` on every answer from a worker in the insecure simulated TEE.
pub const TEE_HEADER: &str = "x-cocoon-tee";

/// Runs one inference call and answers it; every answer (error or not) carries `x-request-id`
/// (the job id) and, once the key was checked, the rate-limit headers.
pub(crate) async fn run(state: AppState, principal: Principal, endpoint: Endpoint, req: Request) -> Response {
    let job_id = Uuid::now_v7();
    let span = tracing::info_span!(
        "inference",
        %job_id,
        endpoint = endpoint.label(),
        account = %principal.account,
        client_request_id = tracing::field::Empty,
        model = tracing::field::Empty,
        worker = tracing::field::Empty,
    );
    if let Some(id) = crate::app::client_request_id(req.headers()).and_then(|v| v.to_str().ok()) {
        span.record("client_request_id", id);
        tracing::info!(parent: &span, client_request_id = id, "request");
    }
    let mut call = Call {
        state,
        principal,
        endpoint,
        job_id,
        started: Instant::now(),
        decision: None,
        model: None,
    };
    async move {
        let result = call.execute(req).await;
        call.respond(result)
    }
    .instrument(span)
    .await
}

/// One inference call: what every response needs, filled in as the steps learn it.
struct Call {
    state: AppState,
    principal: Principal,
    endpoint: Endpoint,
    job_id: Uuid,
    started: Instant,
    /// The rate-limit verdict, for the `x-ratelimit-*` headers (errors included).
    decision: Option<Decision>,
    /// The model, for the metrics label.
    model: Option<String>,
}

/// A request that passed validation: its parsed fields and the bytes to forward.
struct Validated {
    valid: ValidRequest,
    raw: Bytes,
    obj: serde_json::Map<String, serde_json::Value>,
    /// A Responses request with `store: true`: what its answer is stored with.
    store: Option<crate::stored::Intent>,
    /// What it needs of the engine (tools, json_schema, logprobs, several choices).
    needs: protocol::Needs,
}

/// What a request asks of the network, whatever its form (clear JSON, or sealed end to end
/// with declared bounds): every step after validation works from this.
pub(crate) struct Demand {
    pub model: String,
    pub stream: bool,
    /// Prompt tokens: the estimate, or the client's declared bound.
    pub prompt_tokens: u64,
    /// Generated tokens at most (the cap the engine gets, times the choices).
    pub completion_tokens: u64,
    pub max_price_coefficient: Option<u32>,
    /// Sealed to this worker alone.
    pub worker: Option<String>,
    /// What the serving worker may report at most.
    pub bounds: UsageBounds,
    /// Engine capabilities the request needs (not known for a sealed request).
    pub needs: protocol::Needs,
}

impl Demand {
    fn from_valid(v: &Validated, default_cap: u64) -> Self {
        Demand {
            model: v.valid.model.clone(),
            stream: v.valid.stream,
            prompt_tokens: v.valid.prompt_tokens_estimate,
            completion_tokens: v.valid.max_completion_tokens(default_cap),
            max_price_coefficient: v.valid.max_price_coefficient,
            worker: None,
            needs: v.needs,
            bounds: UsageBounds {
                completion_tokens: v.valid.max_completion_tokens(default_cap),
                // No tokenizer makes more tokens than the prompt has bytes; the chat
                // template adds its own, bounded here generously.
                prompt_tokens: (v.raw.len() as u64).saturating_add(PROMPT_TEMPLATE_TOKENS),
            },
        }
    }

    /// Tokens charged against the per-minute budget up front; settled when usage arrives.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl Call {
    async fn execute(&mut self, req: Request) -> Result<Response, ApiError> {
        if self.principal.worker().is_some() {
            return Err(ApiError::PermissionDenied(
                "This key belongs to a worker operator (account `worker:…`): it reads earnings and buys no inference. Use a client key.".into(),
            ));
        }
        if let Some(sealed) = crate::e2e::SealedCall::from_headers(req.headers(), self.endpoint, &self.state.cfg)? {
            return self.execute_sealed(sealed, req).await;
        }
        if self.state.cfg.e2e == crate::config::E2eMode::Require {
            return Err(crate::e2e::required());
        }
        let v = self.validate(req).await?;
        let cap = self.default_cap(&v.valid)?;
        let mut demand = Demand::from_valid(&v, cap);
        self.apply_key_controls(&mut demand);
        self.limit(&demand).await?;
        let permit = self.shed()?;
        let bill = self.hold(&demand).await?;
        let ticket = self.admit(&demand)?;
        let job = self.job(v.raw, v.obj, &v.valid, cap);
        let settle = self.token_settle(&demand);
        if v.valid.stream {
            Ok(self.stream(ticket, job, v.valid, bill, demand.bounds, settle, permit, v.store))
        } else {
            self.answer(ticket, job, &v.valid, bill, demand.bounds, settle, permit, v.store).await
        }
    }

    /// An end-to-end sealed request: the same steps from the declared facts, never reading
    /// the body; the answer is the worker's sealed frames, billed only from its receipt.
    async fn execute_sealed(&mut self, mut sealed: crate::e2e::SealedCall, req: Request) -> Result<Response, ApiError> {
        if !self.state.router.knows_model(&sealed.demand.model) || !self.principal.may_use(&sealed.demand.model) {
            return Err(ApiError::ModelNotFound(sealed.demand.model));
        }
        self.apply_key_controls(&mut sealed.demand);
        tracing::Span::current().record("model", sealed.demand.model.as_str());
        self.model = Some(sealed.demand.model.clone());
        let body = read_body(&self.state, req).await?;
        self.limit(&sealed.demand).await?;
        let permit = self.shed()?;
        let bill = self.hold(&sealed.demand).await?;
        let ticket = self.admit(&sealed.demand)?;
        let settle = self.token_settle(&sealed.demand);
        let job = Job {
            id: self.job_id,
            endpoint: self.endpoint,
            model: sealed.demand.model.clone(),
            stream: sealed.demand.stream,
            body,
            e2e: Some(sealed.route),
        };
        crate::e2e::relay(ticket, job, bill, sealed.demand.bounds, settle, permit).await
    }

    /// The key's price-coefficient cap, for a request that sets none.
    fn apply_key_controls(&self, demand: &mut Demand) {
        if demand.max_price_coefficient.is_none() {
            demand.max_price_coefficient = self.principal.max_price_coefficient;
        }
    }

    /// Reads (bounded in size and time), parses and validates the body.
    async fn validate(&mut self, req: Request) -> Result<Validated, ApiError> {
        let mut raw = read_json_body(&self.state, req).await?;
        let mut obj = validate::parse_object(&raw)?;
        // Stored responses: `previous_response_id` becomes the earlier turns in `input`
        // (before validation, so that limits and holds count them).
        let store = match self.endpoint {
            Endpoint::Responses => {
                let intent = crate::stored::prepare(&self.state, &self.principal.account, &mut obj).await?;
                raw = serde_json::to_vec(&obj).map(Bytes::from).map_err(|e| ApiError::Internal(e.to_string()))?;
                intent
            }
            _ => None,
        };
        let valid = match self.endpoint {
            Endpoint::ChatCompletions => validate::chat(&obj)?,
            Endpoint::Completions => validate::completion(&obj)?,
            Endpoint::Embeddings => validate::embeddings(&obj)?,
            Endpoint::Responses => crate::validate_responses::responses(&obj)?,
        };
        // A model outside the key's allow-list is answered as one that does not exist.
        if !self.state.router.knows_model(&valid.model) || !self.principal.may_use(&valid.model) {
            return Err(ApiError::ModelNotFound(valid.model));
        }
        // What the request needs of the engine: refused here when no worker of the model
        // has it (instead of a silently wrong answer), else steered to the workers that do.
        let mut needs = protocol::Needs::default();
        for (c, param) in needed_capabilities(self.endpoint, &obj) {
            if self.state.router.capability(&valid.model, c) == Some(false) {
                return Err(ApiError::InvalidRequest {
                    message: format!("The model `{}` cannot {} on this network (`{param}`): {}", valid.model, capability_refusal(c).0, capability_refusal(c).1),
                    param: Some(param.into()),
                    code: Some("unsupported_parameter"),
                });
            }
            needs = needs.with(c);
        }
        tracing::Span::current().record("model", valid.model.as_str());
        self.model = Some(valid.model.clone());
        Ok(Validated { valid, raw, obj, store, needs })
    }

    /// The key's per-minute budgets. With the limiter's store down, refuse (503) unless
    /// `gateway.rate_limit_fail_open`.
    async fn limit(&mut self, demand: &Demand) -> Result<(), ApiError> {
        let estimated = demand.tokens();
        let p = &self.principal;
        match self.state.limiter.check(&p.rate_key, p.limits, estimated).await {
            Ok(d) if d.allowed => {
                self.decision = Some(d);
                Ok(())
            }
            Ok(d) => {
                let what = match d.exceeded {
                    Some(crate::ratelimit::LimitKind::Tokens) => format!(
                        "Rate limit reached for tokens per minute: limit {}, remaining {}, requested {}.",
                        d.limit_tokens, d.remaining_tokens, estimated
                    ),
                    _ => format!(
                        "Rate limit reached for requests per minute: limit {}, remaining {}.",
                        d.limit_requests, d.remaining_requests
                    ),
                };
                let retry = d.retry_after.map_or(1, |r| r.as_millis().div_ceil(1000).max(1));
                Err(ApiError::RateLimited {
                    message: format!("{what} Please try again in {retry}s."),
                    decision: Box::new(d),
                })
            }
            Err(e) if self.state.cfg.rate_limit_fail_open => {
                metrics::counter!("cocoon_gateway_ratelimit_unavailable_total", "policy" => "open").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; serving without it (rate_limit_fail_open)");
                Ok(())
            }
            Err(e) => {
                metrics::counter!("cocoon_gateway_ratelimit_unavailable_total", "policy" => "closed").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; refusing (fail closed)");
                Err(ApiError::LimiterUnavailable)
            }
        }
    }

    /// The in-flight limit: an immediate 503 rather than a queue without bound. Before the
    /// hold, so shedding costs no ledger write. The permit lives until the last byte.
    fn shed(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.state.inflight.clone().try_acquire_owned().map_err(|_| ApiError::Overloaded)
    }

    /// Reserves the worst case: the prompt estimate plus the generation cap the engine will
    /// be sent, at the highest coefficient the client accepts. 402 when it does not fit.
    async fn hold(&self, demand: &Demand) -> Result<Option<Bill>, ApiError> {
        let Some(meter) = &self.state.meter else { return Ok(None) };
        let hold = HoldRequest {
            job_id: self.job_id,
            account: self.principal.account.clone(),
            model: demand.model.clone(),
            prompt_tokens: demand.prompt_tokens,
            completion_tokens: demand.completion_tokens,
            max_coefficient: demand.max_price_coefficient.unwrap_or(MAX_PRICE_COEFFICIENT),
            budget: self.principal.budget.clone(),
        };
        meter.hold(&hold).await.map_err(|e| match e {
            MeterError::InsufficientFunds { .. } => {
                ApiError::InsufficientQuota(format!("You exceeded your current quota: {e}. Top up the account's balance."))
            }
            MeterError::BudgetExceeded { resets_in_secs, .. } => ApiError::BudgetExceeded { message: e.to_string(), resets_in_secs },
            MeterError::Unpriced(_) => ApiError::Upstream {
                status: 503,
                message: e.to_string(),
                body: None,
            },
            MeterError::Unavailable(m) | MeterError::CaptureDeferred(m) => {
                tracing::error!(job_id = %self.job_id, error = %m, "cannot place the hold: the ledger is unavailable");
                metrics::counter!("cocoon_gateway_ledger_unavailable_total", "step" => "hold").increment(1);
                ApiError::LedgerUnavailable(m)
            }
        })?;
        Ok(Some(Bill::new(meter.clone(), self.job_id, demand.prompt_tokens)))
    }

    /// The router's answer, at once: a slot or a place in the queue, or 503 with
    /// `Retry-After` (queue full, no worker could take it).
    fn admit(&self, demand: &Demand) -> Result<Ticket, ApiError> {
        let opts = DispatchOptions {
            max_price_coefficient: demand.max_price_coefficient,
            account: self.principal.account.clone(),
            worker: demand.worker.clone(),
            needs: demand.needs,
        };
        Ok(self.state.router.admit(&demand.model, opts)?)
    }

    /// The cap a request without one gets: the configured default, within what the model's
    /// context leaves after the prompt. A client's own cap the context cannot hold is refused
    /// here, before any hold or routing.
    fn default_cap(&self, valid: &ValidRequest) -> Result<u64, ApiError> {
        let configured = self.state.cfg.default_cap(self.endpoint);
        let Some(ctx) = self.state.router.context_len(&valid.model).map(u64::from) else { return Ok(configured) };
        if let Some(m) = valid.max_tokens {
            if m >= ctx {
                let param = validate::cap_field(valid.endpoint);
                return Err(ApiError::invalid(
                    param,
                    format!("`{param}` ({m}) must be below the model's context length ({ctx} tokens), which also holds the prompt."),
                ));
            }
        }
        Ok(configured.min(ctx.saturating_sub(valid.prompt_tokens_estimate)).max(1))
    }

    fn job(&self, raw: Bytes, obj: serde_json::Map<String, serde_json::Value>, valid: &ValidRequest, cap: u64) -> Job {
        Job {
            id: self.job_id,
            endpoint: self.endpoint,
            model: valid.model.clone(),
            stream: valid.stream,
            body: validate::forward_body(raw, obj, valid, cap),
            e2e: None,
        }
    }

    fn token_settle(&self, demand: &Demand) -> TokenSettle {
        TokenSettle {
            limiter: self.state.limiter.clone(),
            rate_key: self.principal.rate_key.clone(),
            limits: self.principal.limits,
            estimated: demand.tokens(),
        }
    }

    /// A stream: the headers go out now; the body waits for a slot and the first token
    /// (with keep-alives), then relays, and captures before `[DONE]`.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        ticket: Ticket,
        job: Job,
        valid: ValidRequest,
        bill: Option<Bill>,
        bounds: UsageBounds,
        settle: TokenSettle,
        permit: OwnedSemaphorePermit,
        store: Option<crate::stored::Intent>,
    ) -> Response {
        metrics::gauge!(INFLIGHT_REQUESTS).increment(1.0);
        let relay = SseRelay::new(crate::relay::RelayParts {
            store,
            dispatch: Box::pin(ticket.dispatch(job).in_current_span()),
            include_usage: valid.include_usage,
            responses: valid.endpoint == Endpoint::Responses,
            model: valid.model,
            started: self.started,
            keepalive: self.state.cfg.sse_keepalive(),
            settle,
            bill,
            bounds,
            permit,
        });
        let mut resp = Response::new(Body::from_stream(relay));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        // Whether the serving worker is simulated is known only once it is chosen: every
        // worker of a `cocoon dev` network is, so the flag is read from the fleet here.
        if self.state.router.serves_simulated(self.model.as_deref().unwrap_or_default()) {
            h.insert(TEE_HEADER, HeaderValue::from_static("simulated"));
        }
        resp
    }

    /// A whole answer: dispatched (queue wait included), captured, then given to the client.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        ticket: Ticket,
        job: Job,
        valid: &ValidRequest,
        mut bill: Option<Bill>,
        bounds: UsageBounds,
        settle: TokenSettle,
        permit: OwnedSemaphorePermit,
        store: Option<crate::stored::Intent>,
    ) -> Result<Response, ApiError> {
        metrics::gauge!(INFLIGHT_REQUESTS).increment(1.0);
        let _inflight = scopeguard(|| metrics::gauge!(INFLIGHT_REQUESTS).decrement(1.0));
        let _permit = permit;
        use futures::StreamExt;
        let mut events = ticket.dispatch(job).await?;
        tracing::Span::current().record("worker", events.worker_id());
        if let Some(b) = bill.as_mut() {
            b.set_worker(events.worker_id(), events.price_coefficient());
        }
        let simulated = events.insecure_simulated();
        match events.next().await {
            Some(JobEvent::Response { body, usage }) => {
                let usage = usage.map(|u| bounds.clamp(&u, events.worker_id()));
                record_usage(&valid.model, usage.as_ref());
                settle.settle(usage.as_ref());
                // Charged (or fsynced to the capture outbox, cocoon::metering) before the client has the answer: an
                // answer the ledger cannot account for is not released.
                let cost = match bill {
                    Some(mut b) => match {
                        b.set_receipt(events.receipt());
                        b.capture(usage.as_ref()).await
                    } {
                        Ok(c) => Some(c),
                        // Durable in the outbox, retried until it lands: the answer is paid for.
                        Err(MeterError::CaptureDeferred(_)) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "capture failed and could not be journalled; withholding the answer");
                            return Err(ApiError::LedgerUnavailable(format!("capture failed: {e}")));
                        }
                    },
                    None => None,
                };
                // Stored before the client has it, so a `GET` or a `previous_response_id`
                // right after finds it.
                if let Some(intent) = store {
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(v) => intent.save(v).await,
                        Err(e) => tracing::error!(error = %e, "the worker's Response object is not JSON; not stored"),
                    }
                }
                let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
                if let Some(c) = cost.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
                    resp.headers_mut().insert("x-cocoon-cost-nanoton", c);
                }
                if simulated {
                    resp.headers_mut().insert(TEE_HEADER, HeaderValue::from_static("simulated"));
                }
                if let Some(r) = crate::relay::receipt_header(events.receipt()) {
                    resp.headers_mut().insert(crate::relay::RECEIPT_HEADER, r);
                }
                Ok(resp)
            }
            Some(JobEvent::Failed { error, .. }) => Err(ApiError::upstream(error)),
            _ => Err(ApiError::Upstream {
                status: 502,
                message: "The worker answered a non-streaming request with a stream".into(),
                body: None,
            }),
        }
    }

    /// The response, with what every answer of this call carries.
    fn respond(self, result: Result<Response, ApiError>) -> Response {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let h = resp.headers_mut();
        h.insert("x-request-id", request_id_header(&self.job_id));
        if let Some(d) = &self.decision {
            d.apply_headers(h);
        }
        if let Some(m) = self.model {
            resp.extensions_mut().insert(ModelLabel(m));
        }
        resp
    }
}

/// Whether a chat or Responses request asks the model for tool calls: some `tools`, and a
/// `tool_choice` other than "none".
fn asks_for_tools(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    let has_tools = obj.get("tools").and_then(serde_json::Value::as_array).is_some_and(|t| !t.is_empty());
    has_tools && obj.get("tool_choice").and_then(serde_json::Value::as_str) != Some("none")
}

/// The engine capabilities a clear request needs, each with the field that asks for it.
fn needed_capabilities(endpoint: Endpoint, obj: &serde_json::Map<String, serde_json::Value>) -> Vec<(protocol::Capability, &'static str)> {
    use protocol::Capability as C;
    use serde_json::Value;
    let mut out = Vec::new();
    let is_schema = |v: Option<&Value>| v.and_then(|f| f.get("type")).and_then(Value::as_str) == Some("json_schema");
    let more_than_one = |k: &str| obj.get(k).and_then(Value::as_u64).is_some_and(|n| n > 1);
    match endpoint {
        Endpoint::ChatCompletions => {
            if asks_for_tools(obj) {
                out.push((C::ToolCalls, "tools"));
            }
            if is_schema(obj.get("response_format")) {
                out.push((C::JsonSchema, "response_format"));
            }
            if obj.get("logprobs").and_then(Value::as_bool) == Some(true) || obj.get("top_logprobs").is_some_and(|v| !v.is_null()) {
                out.push((C::Logprobs, "logprobs"));
            }
            if more_than_one("n") {
                out.push((C::MultipleChoices, "n"));
            }
        }
        Endpoint::Completions => {
            if obj.get("logprobs").is_some_and(|v| v.is_u64()) {
                out.push((C::Logprobs, "logprobs"));
            }
            if more_than_one("n") {
                out.push((C::MultipleChoices, "n"));
            } else if more_than_one("best_of") {
                out.push((C::MultipleChoices, "best_of"));
            }
        }
        Endpoint::Responses => {
            if asks_for_tools(obj) {
                out.push((C::ToolCalls, "tools"));
            }
            if is_schema(obj.get("text").and_then(|t| t.get("format"))) {
                out.push((C::JsonSchema, "text.format"));
            }
        }
        Endpoint::Embeddings => {}
    }
    out
}

/// What a capability does, and why no worker has it and what to send instead.
fn capability_refusal(c: protocol::Capability) -> (&'static str, &'static str) {
    use protocol::Capability as C;
    let why = match c {
        C::ToolCalls => "no engine serving it can make tool calls (llama-server: the model's chat template has no tool support, so it would answer in plain text; vLLM: started without --enable-auto-tool-choice). Send the request without `tools`, or with `tool_choice: \"none\"`.",
        C::JsonSchema => "no engine serving it enforces a JSON schema. Send `json_object` or plain text and validate the answer yourself.",
        C::Logprobs => "no engine serving it returns log probabilities. Send the request without `logprobs`/`top_logprobs`.",
        C::MultipleChoices => "every engine serving it makes one choice per request (llama-server refuses `n` > 1 and `best_of`). Send several requests instead.",
    };
    let what = match c {
        C::ToolCalls => "call tools",
        C::JsonSchema => "follow a JSON schema",
        C::Logprobs => "return log probabilities",
        C::MultipleChoices => "make more than one choice per request",
    };
    (what, why)
}

/// Chat-template tokens a prompt may have beyond one per body byte.
const PROMPT_TEMPLATE_TOKENS: u64 = 4096;

/// Reads the body as JSON bytes: content type checked, size bounded (413) and time bounded
/// (408: a body that never finishes arriving does not hold a task forever).
async fn read_json_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "Invalid Content-Type header ({}), expected application/json.",
                if ct.is_empty() { "none" } else { ct }
            ),
            param: None,
            code: Some("invalid_content_type"),
        });
    }
    read_body(state, req).await
}

/// Reads a body of any type, bounded in size (413) and time (408).
pub(crate) async fn read_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limit = state.cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let wait = state.cfg.body_read_timeout();
    match tokio::time::timeout(wait, axum::body::to_bytes(req.into_body(), limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(ApiError::PayloadTooLarge { limit }),
        Err(_) => {
            metrics::counter!("cocoon_gateway_body_timeouts_total").increment(1);
            Err(ApiError::BodyTimeout(wait))
        }
    }
}

fn request_id_header(id: &Uuid) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Runs `f` on drop (a tiny scope guard, to keep gauges right on every exit path).
pub(crate) fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
