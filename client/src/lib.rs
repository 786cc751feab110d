//! The client's side of `cocoon-e2e/1` (docs/e2e.md), for any Rust program:
//!
//! 1. [`SealedClient::trusted_workers`] fetches `/v1/attestation/report` with a fresh nonce and
//!    keeps the workers whose evidence passes the client's own policy (not the network's).
//! 2. [`SealedClient::send`] seals a request body to one of them, with every routing fact
//!    bound into the seal, and sends it; if that worker is gone (409) it verifies afresh and
//!    tries another, before anything ran.
//! 3. [`SealedAnswer`] opens the answer frame by frame, failing on any dropped, reordered,
//!    replayed, tampered or truncated frame, and at the end checks the worker's receipt:
//!    signed by the identity key that worker attested, for this request, this body and this
//!    answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use attestation::e2e::{seal_request, E2eError, E2eFacts, Frame, ResponseReader};
use attestation::receipt::{IdentityPublicKey, Receipt, SignedReceipt};
use attestation::{verify_report, AttestationReport, HpkePublicKey, Nonce, Policy, Verifier};
use futures::StreamExt;
use rand::seq::SliceRandom;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the network answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("no worker serving {model:?} passed verification: {why}")]
    NoTrustedWorker { model: String, why: String },
    #[error("the attestation report is invalid: {0}")]
    Report(String),
    #[error("the request body is not usable: {0}")]
    Body(String),
    #[error("the sealed answer failed its checks: {0}")]
    Answer(#[from] E2eError),
    #[error("the receipt failed its checks: {0}")]
    Receipt(String),
}

/// How a [`SealedClient`] reaches and judges a network.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// e.g. `https://gateway.example/v1`
    pub base_url: String,
    pub api_key: String,
    /// The client's own policy: what evidence it accepts.
    pub policy: Policy,
    pub timeout: Duration,
    /// Cap declared for a request that sets none (per choice).
    pub default_max_tokens: u64,
    /// Pad the sealed body with JSON whitespace, and ask the worker to pad every answer
    /// frame, to a multiple of this many bytes (0: off; frames at most 65536).
    pub pad_to: usize,
    /// How long a verified worker list is reused before the report is fetched again.
    pub reverify_after: Duration,
}

/// A worker whose evidence passed the client's policy.
#[derive(Clone, Debug)]
pub struct TrustedWorker {
    pub worker_id: String,
    pub hpke_key: HpkePublicKey,
    pub identity_key: Option<IdentityPublicKey>,
    pub insecure_simulated: bool,
    /// Human-readable verdict (TEE, measurements, TCB, keys).
    pub verdict: String,
    pub running: u32,
    pub slots: u32,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    load: Option<Load>,
    /// The models and weight digests the worker says it serves; checked against the
    /// `models_digest` its evidence commits to.
    #[serde(default)]
    models: Option<Vec<ModelEntry>>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    digest: Option<String>,
}

/// The worker serves `model`, as its evidence commits to: the listed models hash to the
/// attested `models_digest`, include `model`, and meet the client policy's weight pins.
/// Evidence without a models digest (the older layout) passes only under a policy that
/// accepts the insecure simulated TEE, as at the router.
fn check_models(w: &attestation::VerifiedWorker, entry: &Entry, model: &str, policy: &Policy) -> Result<(), String> {
    let Some(attested) = w.models_digest else {
        return if policy.allow_insecure_simulated_tee && w.is_insecure_simulated() {
            Ok(())
        } else {
            Err("(models) the evidence commits to no models".into())
        };
    };
    let listed = entry.models.as_deref().ok_or("(models) the report lists no models for this worker")?;
    let pairs = || listed.iter().map(|m| (m.id.as_str(), m.digest.as_deref()));
    if attestation::models_digest(pairs()) != attested {
        return Err("(models_digest) the models the report lists are not the ones the evidence commits to".into());
    }
    if !listed.iter().any(|m| m.id == model) {
        return Err(format!("(models) the worker's attested models do not include {model:?}"));
    }
    policy.check_models(pairs()).map_err(|e| format!("(model_digest) {e}"))
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Load {
    #[serde(default)]
    running: u32,
    #[serde(default)]
    slots: u32,
}

pub struct SealedClient {
    cfg: ClientConfig,
    http: reqwest::Client,
    trusted: Mutex<HashMap<String, (std::time::Instant, Vec<TrustedWorker>)>>,
}

/// The report URL for a base URL given with or without its `/v1`.
pub fn report_url(base_url: &str, model: &str, nonce: &Nonce) -> String {
    let base = api_base(base_url);
    let model: String = model
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{base}/attestation/report?model={model}&nonce={}", nonce.to_hex())
}

/// `…/v1`, whether the base URL was given with it or not.
fn api_base(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/v1")
}

/// The facts a client declares for a JSON body: model, stream, and the bounds the hold
/// covers (docs/e2e.md, section 4).
pub fn declared_facts(body: &serde_json::Value, endpoint: &str, body_len: usize, default_max_tokens: u64) -> Result<(String, bool, u64, u64), ClientError> {
    let model = body.get("model").and_then(|m| m.as_str()).ok_or_else(|| ClientError::Body("`model` is missing or not a string".into()))?;
    let stream = body.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    let int = |k: &str| body.get(k).and_then(|v| v.as_u64());
    let choices = int("n").unwrap_or(1).max(int("best_of").unwrap_or(1)).max(1);
    let output = if endpoint.ends_with("/embeddings") {
        0
    } else if endpoint.ends_with("/responses") {
        // One output; its cap is `max_output_tokens`.
        int("max_output_tokens").unwrap_or(default_max_tokens)
    } else {
        int("max_completion_tokens").or_else(|| int("max_tokens")).unwrap_or(default_max_tokens).saturating_mul(choices)
    };
    Ok((model.to_string(), stream, (body_len as u64).div_ceil(4), output))
}

impl SealedClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self { cfg, http, trusted: Mutex::new(HashMap::new()) })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The workers serving `model` whose fresh evidence passes the client's policy
    /// (verified again after `reverify_after`, or when `force`).
    pub async fn trusted_workers(&self, model: &str, force: bool) -> Result<Vec<TrustedWorker>, ClientError> {
        if !force {
            let cached = self.trusted.lock().unwrap_or_else(|p| p.into_inner()).get(model).cloned();
            if let Some((at, list)) = cached {
                if at.elapsed() < self.cfg.reverify_after && !list.is_empty() {
                    return Ok(list);
                }
            }
        }
        let list = self.verify(model).await?;
        self.trusted.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_string(), (std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    async fn verify(&self, model: &str) -> Result<Vec<TrustedWorker>, ClientError> {
        let nonce = Nonce::random().map_err(|e| ClientError::Report(e.to_string()))?;
        let created = attestation::unix_now();
        let url = report_url(&self.cfg.base_url, model, &nonce);
        let resp = self.http.get(&url).timeout(self.cfg.timeout).send().await.map_err(|e| ClientError::Http(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| ClientError::Http(e.to_string()))?;
        if status != 200 {
            return Err(ClientError::Status { status, body: String::from_utf8_lossy(&body).into_owned() });
        }
        let raw: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ClientError::Report(e.to_string()))?;
        let entries: Vec<Entry> = serde_json::from_value(raw.get("workers").cloned().unwrap_or_default())
            .map_err(|e| ClientError::Report(format!("workers: {e}")))?;
        let report: AttestationReport = serde_json::from_value(raw).map_err(|e| ClientError::Report(e.to_string()))?;
        let verifier = Verifier::new(self.cfg.policy.clone());
        let verdict = verify_report(&verifier, &report, &nonce, created, attestation::unix_now())
            .map_err(|e| ClientError::Report(format!("({}) {e}", e.rule())))?;
        if entries.len() != verdict.workers.len() {
            return Err(ClientError::Report("the report's worker entries do not line up".into()));
        }
        let mut trusted = Vec::new();
        let mut refused = Vec::new();
        for (v, e) in verdict.workers.iter().zip(entries) {
            let id = e.worker_id.clone().unwrap_or_default();
            match &v.result {
                Ok(w) if !id.is_empty() => match check_models(w, &e, model, &self.cfg.policy) {
                    Ok(()) => trusted.push(TrustedWorker {
                        worker_id: id,
                        hpke_key: w.hpke_public_key,
                        identity_key: w.identity_key,
                        insecure_simulated: w.is_insecure_simulated(),
                        verdict: w.describe(),
                        running: e.load.unwrap_or_default().running,
                        slots: e.load.unwrap_or_default().slots,
                    }),
                    Err(why) => refused.push(format!("{id}: {why}")),
                },
                Ok(_) => refused.push("an entry without a worker id".to_string()),
                Err(err) => refused.push(format!("{id}: ({}) {err}", err.rule())),
            }
        }
        if trusted.is_empty() {
            return Err(ClientError::NoTrustedWorker { model: model.to_string(), why: refused.join("; ") });
        }
        Ok(trusted)
    }

    /// Seals `body` (JSON) for `endpoint` (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/embeddings` or `/v1/responses`) to a trusted worker and sends it. A worker that turns out to be gone
    /// (409, before anything ran) is replaced by another after a fresh verification.
    pub async fn send(&self, endpoint: &str, body: &[u8]) -> Result<SealedAnswer, ClientError> {
        let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| ClientError::Body(e.to_string()))?;
        let body = pad(body, self.cfg.pad_to);
        let (model, stream, max_prompt, max_output) = declared_facts(&json, endpoint, body.len(), self.cfg.default_max_tokens)?;
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        for attempt in 0..3 {
            let workers = self.trusted_workers(&model, attempt > 0).await?;
            let Some(w) = choose(&workers, &tried) else { break };
            tried.push(w.worker_id.clone());
            let facts = E2eFacts {
                request_id: Uuid::new_v4(),
                model: model.clone(),
                endpoint: endpoint.to_string(),
                stream,
                max_prompt_tokens: max_prompt,
                max_output_tokens: max_output,
                worker_id: w.worker_id.clone(),
                worker_key: w.hpke_key,
                pad_to: response_pad(self.cfg.pad_to),
            };
            let (sealed, reader) = seal_request(&facts, &body)?;
            let url = format!("{}{}", api_base(&self.cfg.base_url), endpoint.strip_prefix("/v1").unwrap_or(endpoint));
            let mut req = self.http.post(&url);
            if facts.pad_to > 0 {
                req = req.header("cocoon-e2e-pad-to", facts.pad_to.to_string());
            }
            let resp = req
                .bearer_auth(&self.cfg.api_key)
                .header("content-type", "application/cocoon-e2e")
                .header("cocoon-e2e", attestation::e2e::E2E_VERSION)
                .header("cocoon-e2e-request-id", facts.request_id.to_string())
                .header("cocoon-e2e-model", &facts.model)
                .header("cocoon-e2e-stream", if stream { "true" } else { "false" })
                .header("cocoon-e2e-max-prompt-tokens", max_prompt.to_string())
                .header("cocoon-e2e-max-output-tokens", max_output.to_string())
                .header("cocoon-e2e-worker", &facts.worker_id)
                .header("cocoon-e2e-key", facts.worker_key.to_hex())
                .header("cocoon-e2e-enc", hex::encode(sealed.enc))
                .body(sealed.ciphertext.clone())
                .send()
                .await
                .map_err(|e| ClientError::Http(format!("POST {url}: {e}")))?;
            let status = resp.status().as_u16();
            if status == 409 {
                last = Some(ClientError::Status { status, body: resp.text().await.unwrap_or_default() });
                continue;
            }
            if status != 200 {
                return Err(ClientError::Status { status, body: resp.text().await.unwrap_or_default() });
            }
            let headers = resp.headers().clone();
            return Ok(SealedAnswer {
                reader,
                body: Box::pin(resp.bytes_stream()),
                facts,
                request_sha256: Sha256::digest(&sealed.ciphertext).into(),
                worker: w.clone(),
                pending: Vec::new(),
                receipt: None,
                ended: false,
                headers,
            });
        }
        Err(last.unwrap_or_else(|| ClientError::NoTrustedWorker { model, why: "every trusted worker refused".into() }))
    }
}

/// The least loaded trusted worker not tried yet; ties broken at random.
fn choose<'a>(workers: &'a [TrustedWorker], tried: &[String]) -> Option<&'a TrustedWorker> {
    let mut left: Vec<&TrustedWorker> = workers.iter().filter(|w| !tried.contains(&w.worker_id)).collect();
    left.shuffle(&mut rand::thread_rng());
    left.into_iter().min_by_key(|w| (u64::from(w.running) * 1000).checked_div(u64::from(w.slots.max(1))).unwrap_or(0))
}

/// The response padding a request asks for: the same granule as the request's, capped.
fn response_pad(pad_to: usize) -> u32 {
    if pad_to > 1 {
        u32::try_from(pad_to).unwrap_or(u32::MAX).min(attestation::e2e::MAX_PAD_TO)
    } else {
        0
    }
}

/// JSON allows whitespace after the value: padding hides the body's exact size.
fn pad(body: &[u8], to: usize) -> Vec<u8> {
    let mut out = body.to_vec();
    if to > 1 {
        let want = body.len().div_ceil(to) * to;
        out.resize(want, b' ');
    }
    out
}

type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A sealed answer being read.
pub struct SealedAnswer {
    reader: ResponseReader,
    body: ByteStream,
    facts: E2eFacts,
    request_sha256: [u8; 32],
    worker: TrustedWorker,
    pending: Vec<Frame>,
    receipt: Option<(SignedReceipt, Receipt)>,
    ended: bool,
    pub headers: reqwest::header::HeaderMap,
}

impl SealedAnswer {
    pub fn worker(&self) -> &TrustedWorker {
        &self.worker
    }

    pub fn request_id(&self) -> Uuid {
        self.facts.request_id
    }

    /// The next data or error frame, in order; `None` after the final frame, whose
    /// receipt has then been checked ([`Self::receipt`]).
    pub async fn next_frame(&mut self) -> Option<Result<Frame, ClientError>> {
        loop {
            if !self.pending.is_empty() {
                let f = self.pending.remove(0);
                if let Frame::Final { transcript, receipt, .. } = &f {
                    self.ended = true;
                    return match self.check_receipt(receipt.as_ref(), transcript) {
                        Ok(()) => None,
                        Err(e) => Some(Err(e)),
                    };
                }
                return Some(Ok(f));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => match self.reader.push(&bytes) {
                    Ok(frames) => self.pending.extend(frames),
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(e.into()));
                    }
                },
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(ClientError::Http(e.to_string())));
                }
                None => {
                    self.ended = true;
                    return self.reader.finish().err().map(|e| Err(e.into()));
                }
            }
        }
    }

    /// The checked receipt, once the final frame was read.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref().map(|(_, r)| r)
    }

    /// The checked receipt as the worker signed it (to keep, or to verify again offline
    /// with `cocoon receipt verify`).
    pub fn signed_receipt(&self) -> Option<&SignedReceipt> {
        self.receipt.as_ref().map(|(s, _)| s)
    }

    fn check_receipt(&mut self, signed: Option<&SignedReceipt>, transcript: &[u8]) -> Result<(), ClientError> {
        let signed = signed.ok_or_else(|| ClientError::Receipt("the answer carries no receipt".into()))?;
        let key = self
            .worker
            .identity_key
            .ok_or_else(|| ClientError::Receipt("the worker attested no identity key".into()))?;
        let r = signed.verify(&key).map_err(|e| ClientError::Receipt(e.to_string()))?;
        let expect = |ok: bool, what: &str| if ok { Ok(()) } else { Err(ClientError::Receipt(what.to_string())) };
        expect(r.request_id == Some(self.facts.request_id), "the receipt is for another request")?;
        expect(r.worker_id == self.facts.worker_id, "the receipt names another worker")?;
        expect(r.model == self.facts.model, "the receipt names another model")?;
        expect(r.request_sha256 == hex::encode(self.request_sha256), "the receipt's request digest is not of the body sent")?;
        expect(r.response_sha256 == hex::encode(transcript), "the receipt's response digest is not of the frames received")?;
        self.receipt = Some((signed.clone(), r));
        Ok(())
    }
}

/// A receipt that [`verify_receipt_offline`] accepted.
#[derive(Clone, Debug)]
pub struct OfflineReceipt {
    pub receipt: Receipt,
    /// The report entry whose attested identity key signed it.
    pub worker_id: String,
    /// That worker's verdict under the given policy, at the time checked.
    pub verdict: String,
}

/// Reads receipts as saved by a client or exported by a worker: one per line, each either the
/// `x-cocoon-receipt` header value (base64url), an SSE comment `: cocoon-receipt <base64url>`,
/// or the JSON of a [`SignedReceipt`]. Blank lines are skipped.
pub fn parse_receipts(text: &str) -> Result<Vec<SignedReceipt>, ClientError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let line = line.strip_prefix(": cocoon-receipt").map(str::trim).unwrap_or(line);
        let parsed = if line.starts_with('{') {
            serde_json::from_str::<SignedReceipt>(line).map_err(|e| e.to_string())
        } else {
            SignedReceipt::from_header(line).map_err(|e| e.to_string())
        };
        out.push(parsed.map_err(|e| ClientError::Receipt(format!("line {}: {e}", i + 1)))?);
    }
    if out.is_empty() {
        return Err(ClientError::Receipt("no receipt found".into()));
    }
    Ok(out)
}

/// Checks `signed` offline against a saved `/v1/attestation/report` answer: some worker entry
/// of the report must pass `policy` at time `at` (unix seconds; default: when the receipt's
/// job finished, so the question is whether that worker was trustworthy when it did the job)
/// and have attested the identity key that signed the receipt, under the worker id the
/// receipt names. The report's nonce freshness is not rechecked: it was the saver's to check.
pub fn verify_receipt_offline(report_json: &[u8], signed: &SignedReceipt, policy: Policy, at: Option<u64>) -> Result<OfflineReceipt, ClientError> {
    let raw: serde_json::Value = serde_json::from_slice(report_json).map_err(|e| ClientError::Report(e.to_string()))?;
    let entries: Vec<Entry> = serde_json::from_value(raw.get("workers").cloned().unwrap_or_default())
        .map_err(|e| ClientError::Report(format!("workers: {e}")))?;
    let report: AttestationReport = serde_json::from_value(raw).map_err(|e| ClientError::Report(e.to_string()))?;
    // The signature first, against the key the receipt names: a receipt that does not even
    // verify under its own signer is refused before any evidence is looked at.
    let receipt = signed.verify(&signed.signer).map_err(|e| ClientError::Receipt(e.to_string()))?;
    let at = at.unwrap_or(receipt.finished_at_ms / 1000);
    let verifier = Verifier::new(policy);
    let mut why = Vec::new();
    for (att, e) in report.workers.iter().zip(entries) {
        let id = e.worker_id.unwrap_or_default();
        match verifier.verify_attestation(att, &report.nonce, at) {
            Ok(w) if w.identity_key == Some(signed.signer) => {
                if id != receipt.worker_id {
                    return Err(ClientError::Receipt(format!(
                        "signed by the key worker {id:?} attested, but the receipt names worker {:?}",
                        receipt.worker_id
                    )));
                }
                return Ok(OfflineReceipt { receipt, worker_id: id, verdict: w.describe() });
            }
            Ok(_) => {}
            Err(err) if att.identity_key == Some(signed.signer) => why.push(format!("{id}: ({}) {err}", err.rule())),
            Err(_) => {}
        }
    }
    Err(ClientError::Receipt(if why.is_empty() {
        format!("no worker in the report attested the signing key {}", signed.signer.fingerprint())
    } else {
        format!("the worker that attested the signing key fails the policy: {}", why.join("; "))
    }))
}
