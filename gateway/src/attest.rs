//! `GET /v1/attestation/report?model=M&nonce=N`: fresh evidence from every worker serving M,
//! bound to the client's nonce, with the workers' public keys and the policy in force, so a
//! client (`cocoon verify`) can check everything itself before it sends a prompt.
//!
//! Public (no API key): evidence is not secret, and a client should be able to verify a
//! network before it trusts it with a key. Each request makes every worker of the model
//! produce evidence (tens of milliseconds on TDX), so at most a few run at once; the rest
//! get 503 at once.

use std::time::Duration;

use axum::extract::{Query, State};
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
    /// answer binds it.
    pub nonce: Option<String>,
}

/// Documentation of the report (the body is `attestation::AttestationReport` as JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AttestationReportDoc {
    /// The client's nonce, hex.
    nonce: String,
    model: Option<String>,
    /// The attestation policy this network applies (informational: verify against your own).
    #[schema(value_type = Object)]
    policy: serde_json::Value,
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
}

#[utoipa::path(
    get, path = "/v1/attestation/report", tag = "attestation",
    params(ReportQuery),
    responses(
        (status = 200, body = AttestationReportDoc, description = "Fresh evidence of the workers serving the model, bound to the nonce"),
        (status = 400, body = protocol::ErrorBody),
        (status = 404, body = protocol::ErrorBody),
        (status = 503, body = protocol::ErrorBody)
    )
)]
pub async fn report(State(state): State<AppState>, Query(q): Query<ReportQuery>) -> Result<Response, ApiError> {
    let model = q
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("model", "Missing required parameter: 'model'."))?;
    let nonce_hex = q
        .nonce
        .ok_or_else(|| ApiError::invalid("nonce", "Missing required parameter: 'nonce' (64 hex digits)."))?;
    let nonce: [u8; 32] = hex::decode(nonce_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::invalid("nonce", "'nonce' must be 32 bytes as 64 hex digits."))?;
    if !state.router.knows_model(&model) {
        return Err(ApiError::ModelNotFound(model));
    }
    let _slot = REPORT_SLOTS.try_acquire().map_err(|_| ApiError::Overloaded)?;
    let answers = state.router.attest_workers(&model, nonce, WORKER_TIMEOUT).await;
    let mut workers: Vec<serde_json::Value> = Vec::with_capacity(answers.len());
    for (worker, answer) in answers {
        match answer.and_then(|att| serde_json::to_value(att).map_err(|e| e.to_string())) {
            Ok(v) => workers.push(v),
            Err(e) => tracing::warn!(%worker, error = %e, "worker gave no evidence for a report"),
        }
    }
    if workers.is_empty() {
        return Err(ApiError::NoCapacity(model));
    }
    let body = serde_json::json!({
        "nonce": hex::encode(nonce),
        "model": model,
        "policy": state.router.attestor().policy(),
        "workers": workers,
    });
    Ok(Json(body).into_response())
}
