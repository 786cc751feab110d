//! `GET /v1/attestation/report?model=M&nonce=N`: fresh evidence from every worker serving M,
//! bound to the client's nonce, with the workers' public keys and the policy in force, so a
//! client (`cocoon verify`) can check everything itself before it sends a prompt.
//!
//! Public (no API key): evidence is not secret, and a client should be able to verify a
//! network before it trusts it with a key. A fresh report makes every worker of the model
//! produce evidence (tens of milliseconds on TDX), so nobody may monopolise it:
//! - fresh reports (the client sends its own `nonce`) are limited per client address
//!   (`gateway.attestation_reports_per_minute`, 429 beyond it) and at most a few run at once
//!   (503 beyond that);
//! - without a nonce, the answer is the model's most recent report, bound to a nonce the
//!   gateway chose, at most `gateway.attestation_cache_secs` old (its `generated_at` says
//!   when): enough for a client that only wants to see which workers serve and what they
//!   run, and it costs the workers nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::state::AppState;

static REPORT_SLOTS: Semaphore = Semaphore::const_new(4);
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, IntoParams)]
pub struct ReportQuery {
    /// The model whose serving workers must attest.
    pub model: Option<String>,
    /// 32 random bytes as 64 hex digits, chosen by the client; every evidence in the
    /// answer binds it (limited per client per minute). Without it: the model's most recent
    /// report, bound to a nonce the gateway chose, at most `gateway.attestation_cache_secs`
    /// old.
    pub nonce: Option<String>,
}

/// Documentation of the report (the body is `attestation::AttestationReport` as JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AttestationReportDoc {
    /// The client's nonce (or, for a cached report, the gateway's), hex.
    nonce: String,
    model: Option<String>,
    /// Unix seconds when the evidence was gathered.
    generated_at: u64,
    /// The attestation policy this network applies (informational: verify against your own).
    #[schema(value_type = Object)]
    policy: serde_json::Value,
    /// `{"source": "file"}`, or `{"source": "chain", "address": "0:…", "version": n}` when the
    /// policy's rules come from the on-chain registry (`cocoon verify --registry` checks it).
    #[schema(value_type = Object)]
    policy_origin: serde_json::Value,
    /// The highest price coefficient (thousandths) a worker may declare here.
    max_price_coefficient: u32,
    /// One entry per worker serving the model.
    workers: Vec<WorkerAttestationDoc>,
}

/// A worker's evidence and the keys it binds:
/// `report_data = SHA-512("cocoon-rs/attestation/v1" tag ‖ hpke_public_key ‖ tls_spki_sha256 ‖ nonce)`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkerAttestationDoc {
    /// `{"kind": "tdx", "data": {"quote": base64, "collateral": …}}`,
    /// `{"kind": "sev_snp", "data": {"report": base64, "vcek": base64}}` or
    /// `{"kind": "simulated", "data": {"insecure_simulated": true, "report": …, "public_key", "signature"}}`.
    #[schema(value_type = Object)]
    evidence: serde_json::Value,
    /// X25519 key jobs are sealed to (HPKE, RFC 9180), hex.
    hpke_public_key: String,
    /// SHA-256 of the worker's TLS SubjectPublicKeyInfo, hex.
    tls_spki_sha256: String,
    /// The nonce, hex.
    nonce: String,
    /// The worker's id, to name in an end-to-end sealed request (a routing hint: not
    /// attested; a wrong one only makes the worker refuse).
    worker_id: String,
    /// Jobs running on the worker and its slots, when the report was made.
    #[schema(value_type = Object)]
    load: serde_json::Value,
    /// What this gateway's router verified about the worker's NVIDIA GPU (informational: a
    /// client verifies `gpu` itself): `architecture`, `driver_version`, `vbios_version`,
    /// `cc_mode` ("on", implied by the report's existence, or "ppcie"), `protection_mode`
    /// (signed FEATURE_FLAG, or null), `device_subject`, `measurement_blocks`, `valid_until`,
    /// `insecure_simulated`. `null`: the worker sent no GPU evidence.
    #[schema(value_type = Option<Object>)]
    gpu_verdict: Option<serde_json::Value>,
}

#[utoipa::path(
    get, path = "/v1/attestation/report", tag = "attestation",
    params(ReportQuery),
    responses(
        (status = 200, body = AttestationReportDoc, description = "Fresh evidence of the workers serving the model, bound to the nonce"),
        (status = 400, body = protocol::ErrorBody),
        (status = 404, body = protocol::ErrorBody),
        (status = 429, body = protocol::ErrorBody, description = "Too many fresh reports from this client; omit `nonce` for the cached one"),
        (status = 503, body = protocol::ErrorBody)
    )
)]
pub async fn report(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let model = q
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("model", "Missing required parameter: 'model'."))?;
    if !state.router.knows_model(&model) {
        return Err(ApiError::ModelNotFound(model));
    }
    let Some(nonce_hex) = q.nonce else {
        return cached_report(&state, &model).await;
    };
    let nonce: [u8; 32] = hex::decode(nonce_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::invalid("nonce", "'nonce' must be 32 bytes as 64 hex digits."))?;
    limit_per_client(&state, peer.map(|axum::Extension(ConnectInfo(a))| a)).await?;
    Ok(Json(fresh_report(&state, &model, nonce).await?).into_response())
}

/// Fresh reports per client address and minute.
async fn limit_per_client(state: &AppState, peer: Option<SocketAddr>) -> Result<(), ApiError> {
    let per_minute = state.cfg.attestation_reports_per_minute;
    let Some(peer) = peer else { return Ok(()) };
    let limits = crate::ratelimit::Limits { requests_per_minute: per_minute, tokens_per_minute: 0 };
    match state.limiter.check(&format!("attest:{}", peer.ip()), limits, 0).await {
        Ok(d) if d.allowed => Ok(()),
        Ok(d) => {
            metrics::counter!("cocoon_gateway_attestation_reports_limited_total").increment(1);
            Err(ApiError::RateLimited {
                message: format!(
                    "Rate limit reached for fresh attestation reports: {per_minute} per minute per client. \
                     Omit `nonce` for the recent cached report, or retry later."
                ),
                decision: Box::new(d),
            })
        }
        Err(_) if state.cfg.rate_limit_fail_open => Ok(()),
        Err(_) => Err(ApiError::LimiterUnavailable),
    }
}

/// The model's most recent report, refreshed (with a gateway nonce) when older than
/// `gateway.attestation_cache_secs`; concurrent callers share one refresh.
async fn cached_report(state: &AppState, model: &str) -> Result<Response, ApiError> {
    let max_age = Duration::from_secs(state.cfg.attestation_cache_secs);
    let mut cache = state.report_cache.lock().await;
    if let Some((at, body)) = cache.get(model) {
        if at.elapsed() <= max_age {
            return Ok(Json(body.clone()).into_response());
        }
    }
    let nonce: [u8; 32] = rand::random();
    let body = fresh_report(state, model, nonce).await?;
    cache.insert(model.to_string(), (Instant::now(), body.clone()));
    Ok(Json(body).into_response())
}

/// The models' last reports served without a nonce, with when they were made.
pub type ReportCache = tokio::sync::Mutex<HashMap<String, (Instant, serde_json::Value)>>;

async fn fresh_report(state: &AppState, model: &str, nonce: [u8; 32]) -> Result<serde_json::Value, ApiError> {
    let _slot = REPORT_SLOTS.try_acquire().map_err(|_| ApiError::Overloaded)?;
    let answers = state.router.attest_workers(model, nonce, WORKER_TIMEOUT).await;
    let snapshot: HashMap<String, router::WorkerSnapshot> = state.router.snapshot().into_iter().map(|w| (w.worker_id.clone(), w)).collect();
    let gpu = state.router.gpu_verdicts();
    let mut workers: Vec<serde_json::Value> = Vec::with_capacity(answers.len());
    for (worker, answer) in answers {
        match answer.and_then(|att| serde_json::to_value(att).map_err(|e| e.to_string())) {
            Ok(mut v) => {
                // Routing hints next to the evidence: which worker to name in a sealed
                // request, and how busy it is (not attested; a client may ignore them).
                if let serde_json::Value::Object(o) = &mut v {
                    let w = snapshot.get(&worker);
                    let (running, slots) = w.map_or((0, 0), |w| (w.running + w.remote_running, w.slots));
                    o.insert("worker_id".into(), worker.clone().into());
                    o.insert("load".into(), serde_json::json!({"running": running, "slots": slots}));
                    // The models and weight digests the evidence's models_digest commits to:
                    // a client recomputes the digest to know what this worker serves.
                    let models: Vec<serde_json::Value> = w
                        .map(|w| w.model_weights.iter().map(|(id, d)| serde_json::json!({"id": id, "digest": d})).collect())
                        .unwrap_or_default();
                    o.insert("models".into(), models.into());
                    let verdict = gpu.get(&worker).and_then(|g| g.as_ref()).map(attestation::GpuClaims::verdict);
                    o.insert("gpu_verdict".into(), verdict.unwrap_or(serde_json::Value::Null));
                }
                workers.push(v)
            }
            Err(e) => tracing::warn!(%worker, error = %e, "worker gave no evidence for a report"),
        }
    }
    if workers.is_empty() {
        return Err(ApiError::no_capacity(model));
    }
    Ok(serde_json::json!({
        "nonce": hex::encode(nonce),
        "model": model,
        "generated_at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "policy": state.router.attestor().policy(),
        // Where the policy comes from: the config file, or the on-chain registry and the
        // version in force (`cocoon verify --registry` compares both with the chain).
        "policy_origin": state.router.attestor().policy_origin(),
        "max_price_coefficient": state.router.max_price_coefficient(),
        "workers": workers,
    }))
}
