//! Stored responses: `store: true`, `GET`/`DELETE /v1/responses/{id}`, `…/input_items` and
//! `previous_response_id`.
//!
//! A response is stored only when the request says `store: true` (or the operator sets
//! `gateway.responses.store_by_default`): OpenAI stores by default, a confidential network
//! keeps nothing it was not asked to keep. What is kept is the Response object and the
//! input it answered (the whole conversation so far, so that a `previous_response_id`
//! chain needs one row), sealed with ChaCha20-Poly1305 under the gateway's responses key
//! and bound to the response id and the account: the database holds ciphertext only, and
//! one account's row cannot be opened as another's. Rows expire after `ttl_secs`.
//!
//! Who can read them: the gateway (it holds the key and, outside end-to-end mode, sees
//! every prompt anyway). End-to-end sealed requests are never stored: the gateway cannot
//! read them, and the worker refuses `store: true` in them.
//!
//! `previous_response_id` is expanded here, before validation: the new request's `input`
//! becomes the stored input, then the stored response's output items (assistant messages,
//! function calls), then the new input. `instructions` are not carried over, as in
//! OpenAI's API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// `[gateway.responses]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Serve `store: true` and `previous_response_id`; off: both are refused (400).
    pub enabled: bool,
    /// Store a response whose request does not say `store` (OpenAI's default is true;
    /// this network's is false).
    pub store_by_default: bool,
    /// How long a stored response is kept.
    pub ttl_secs: u64,
    /// 32 random bytes (64 hex digits) that seal stored responses. Default
    /// `<data_dir>/responses.key`, made on first start; replicas sharing a database must
    /// share it.
    pub key_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store_by_default: false,
            ttl_secs: 30 * 24 * 3600,
            key_file: None,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.ttl_secs < 60 {
            errs.push(format!("gateway.responses.ttl_secs must be at least 60, got {}", self.ttl_secs));
        }
        errs
    }
}

/// What a stored response holds once opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub response: Value,
    /// The input items the response answered (after any `previous_response_id` expansion).
    pub input: Vec<Value>,
}

/// The store: the database and the sealing key.
pub struct ResponseStore {
    ledger: billing::Ledger,
    cipher: ChaCha20Poly1305,
    ttl: Duration,
    store_by_default: bool,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Domain separation of the sealing's associated data.
const AAD_TAG: &[u8] = b"cocoon-rs/stored-response/v1";

/// Reads the key file, or makes it (mode 0600) when it does not exist.
pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut key = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not 64 hex digits", path.display()))
            })?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            std::io::Write::write_all(&mut opts.open(path)?, hex::encode(key).as_bytes())?;
            tracing::info!(path = %path.display(), "made a new key for stored responses");
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ResponseStore {
    pub fn new(ledger: billing::Ledger, key: [u8; 32], cfg: &StoreConfig) -> Self {
        Self {
            ledger,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            ttl: Duration::from_secs(cfg.ttl_secs),
            store_by_default: cfg.store_by_default,
        }
    }

    fn aad(id: &str, account: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(AAD_TAG.len() + id.len() + account.len() + 2);
        a.extend_from_slice(AAD_TAG);
        a.push(0);
        a.extend_from_slice(id.as_bytes());
        a.push(0);
        a.extend_from_slice(account.as_bytes());
        a
    }

    fn seal(&self, id: &str, account: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &Self::aad(id, account) })
            .map_err(|_| "sealing failed".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn open(&self, id: &str, account: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &Self::aad(id, account) }).ok()
    }

    /// Keeps `response` (which must carry its `id`) and the `input` it answered for `account`.
    pub async fn save(&self, account: &str, input: Vec<Value>, response: Value) -> Result<(), String> {
        let id = response.get("id").and_then(Value::as_str).ok_or("the response has no id")?.to_owned();
        let plain = serde_json::to_vec(&Stored { response, input }).map_err(|e| e.to_string())?;
        let sealed = self.seal(&id, account, &plain)?;
        let now = now_ms();
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        self.ledger
            .put_stored_response(&id, account, now, now.saturating_add(ttl), &sealed)
            .await
            .map_err(|e| e.to_string())
    }

    /// `account`'s response `id`, if stored and not expired.
    pub async fn load(&self, id: &str, account: &str) -> Result<Option<Stored>, ApiError> {
        let sealed = self
            .ledger
            .stored_response(id, account, now_ms())
            .await
            .map_err(|e| ApiError::LedgerUnavailable(format!("reading a stored response: {e}")))?;
        let Some(sealed) = sealed else { return Ok(None) };
        match self.open(id, account, &sealed).and_then(|p| serde_json::from_slice::<Stored>(&p).ok()) {
            Some(s) => Ok(Some(s)),
            None => {
                // Another key (a replica configured differently) or a damaged row.
                tracing::error!(id, "a stored response does not open with this gateway's key");
                Ok(None)
            }
        }
    }

    pub async fn delete(&self, id: &str, account: &str) -> Result<bool, ApiError> {
        self.ledger
            .delete_stored_response(id, account)
            .await
            .map_err(|e| ApiError::LedgerUnavailable(format!("deleting a stored response: {e}")))
    }

    /// Purges expired rows every `every`, until `stop`.
    pub fn spawn_purger(self: &Arc<Self>, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match me.ledger.purge_stored_responses(now_ms()).await {
                    Ok(n) if n > 0 => tracing::debug!(purged = n, "expired stored responses deleted"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging expired stored responses failed"),
                }
            }
        });
    }
}

/// A request that asked for its response to be kept: what the answer is stored with.
pub struct Intent {
    pub store: Arc<ResponseStore>,
    pub account: String,
    pub input: Vec<Value>,
}

impl Intent {
    /// Stores the answer; a failure is logged and counted (the client has its answer, and
    /// a later `GET` answers 404).
    pub async fn save(self, response: Value) {
        if let Err(e) = self.store.save(&self.account, self.input, response).await {
            metrics::counter!("cocoon_responses_store_failures_total").increment(1);
            tracing::error!(error = %e, "the response could not be stored");
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "Response with id '{id}' not found. Only responses created with `store: true` are kept (this network does not store by default), for `gateway.responses.ttl_secs`, and only for the account that created them."
        ),
        code: "response_not_found",
    }
}

/// The input as a list of items (a string is one user message).
fn input_items(input: Option<&Value>) -> Vec<Value> {
    match input {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

/// The output items a next turn sees as input: assistant messages and function calls.
fn output_as_input(response: &Value) -> Vec<Value> {
    response
        .get("output")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|i| matches!(i.get("type").and_then(Value::as_str), Some("message" | "function_call")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// For a Responses request: refuses what the gateway cannot do, expands
/// `previous_response_id` into `input`, and says whether (and with what input) to store the
/// answer.
pub async fn prepare(state: &AppState, account: &str, obj: &mut Map<String, Value>) -> Result<Option<Intent>, ApiError> {
    let store_field = match obj.get("store") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::invalid("store", "`store` must be a boolean.")),
    };
    let previous = match obj.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("previous_response_id", "`previous_response_id` must be a response id (a string of 1 to 128 characters).")),
    };
    let Some(store) = state.responses.clone() else {
        return match (store_field, &previous) {
            (Some(true), _) => Err(unsupported("store", "Stored responses are off on this gateway (gateway.responses.enabled = false): set `store` to false.")),
            (_, Some(_)) => Err(unsupported(
                "previous_response_id",
                "Stored responses are off on this gateway (gateway.responses.enabled = false): send the earlier turns in `input` instead.",
            )),
            _ => Ok(None),
        };
    };
    if let Some(id) = &previous {
        let earlier = store.load(id, account).await?.ok_or_else(|| not_found(id))?;
        let mut items = earlier.input;
        items.extend(output_as_input(&earlier.response));
        items.extend(input_items(obj.get("input")));
        obj.insert("input".into(), Value::Array(items));
    }
    let keep = store_field.unwrap_or(store.store_by_default);
    // The worker echoes what it is sent: the Response object says whether it was stored.
    obj.insert("store".into(), Value::Bool(keep));
    if !keep {
        return Ok(None);
    }
    let input = input_items(obj.get("input"));
    Ok(Some(Intent { store, account: account.to_owned(), input }))
}

/// An end-to-end sealed request (`cocoon client-proxy`): the gateway cannot read it, so
/// nothing can be stored or continued; refused before sealing, naming the field.
pub fn refuse_sealed(obj: &Map<String, Value>) -> Result<(), ApiError> {
    if obj.get("store") == Some(&Value::Bool(true)) {
        return Err(unsupported("store", "End-to-end sealed responses are never stored: the gateway cannot read them. Set `store` to false (or leave it out)."));
    }
    if obj.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "previous_response_id",
            "End-to-end sealed responses are never stored, so none can be continued: send the earlier turns in `input` instead.",
        ));
    }
    Ok(())
}

fn unsupported(param: &str, message: &str) -> ApiError {
    ApiError::InvalidRequest { message: message.into(), param: Some(param.into()), code: Some("unsupported_parameter") }
}

async fn stored_or_404(state: &AppState, p: &Principal, id: &str) -> Result<Stored, ApiError> {
    let store = state.responses.as_ref().ok_or_else(|| not_found(id))?;
    store.load(id, &p.account).await?.ok_or_else(|| not_found(id))
}

#[utoipa::path(
    get, path = "/v1/responses/{id}", tag = "inference",
    params(("id" = String, Path, description = "Response id")),
    responses(
        (status = 200, description = "The stored Response object (created with `store: true` by this account, not expired)", body = protocol::openai::ResponseDoc),
        (status = 404, description = "No such stored response for this account (`response_not_found`)", body = protocol::ErrorBody),
        (status = 401, body = protocol::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn get_response(State(state): State<AppState>, p: Principal, UrlPath(id): UrlPath<String>) -> Response {
    match stored_or_404(&state, &p, &id).await {
        Ok(s) => Json(s.response).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    delete, path = "/v1/responses/{id}", tag = "inference",
    params(("id" = String, Path, description = "Response id")),
    responses(
        (status = 200, description = "`{\"id\", \"object\": \"response\", \"deleted\": true}`"),
        (status = 404, description = "No such stored response for this account (`response_not_found`)", body = protocol::ErrorBody),
        (status = 401, body = protocol::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn delete_response(State(state): State<AppState>, p: Principal, UrlPath(id): UrlPath<String>) -> Response {
    let Some(store) = state.responses.as_ref() else { return not_found(&id).into_response() };
    match store.delete(&id, &p.account).await {
        Ok(true) => Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
        Ok(false) => not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/responses/{id}/input_items` query: OpenAI's paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    /// `asc` (oldest first) or `desc` (newest first, the default).
    pub order: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// An item id: the page starts after it.
    pub after: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/responses/{id}/input_items", tag = "inference",
    params(("id" = String, Path, description = "Response id"), ItemsQuery),
    responses(
        (status = 200, description = "The input items the stored response answered (`{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`)"),
        (status = 400, body = protocol::ErrorBody),
        (status = 404, description = "No such stored response for this account (`response_not_found`)", body = protocol::ErrorBody),
        (status = 401, body = protocol::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn input_items_of(
    State(state): State<AppState>,
    p: Principal,
    UrlPath(id): UrlPath<String>,
    query: Result<axum::extract::Query<ItemsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A malformed query is an OpenAI-style 400 like any other bad input, not axum's text.
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return ApiError::invalid("limit", format!("Invalid query string: {}", e.body_text())).into_response(),
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return ApiError::invalid("limit", "`limit` must be between 1 and 100.").into_response();
    }
    let desc = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return ApiError::invalid("order", "`order` must be \"asc\" or \"desc\".").into_response(),
    };
    let stored = match stored_or_404(&state, &p, &id).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // Listed items carry ids; input items sent without one get a stable one by position.
    let mut data: Vec<Value> = stored
        .input
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if let Some(o) = item.as_object_mut() {
                o.entry("type").or_insert_with(|| "message".into());
                o.entry("id").or_insert_with(|| format!("msg_{}_{i}", id.trim_start_matches("resp_")).into());
            }
            item
        })
        .collect();
    if desc {
        data.reverse();
    }
    if let Some(after) = &q.after {
        match data.iter().position(|d| d.get("id").and_then(Value::as_str) == Some(after)) {
            Some(at) => {
                data.drain(..=at);
            }
            None => return ApiError::invalid("after", format!("No input item with id '{after}' in this response.")).into_response(),
        }
    }
    let has_more = data.len() > limit;
    data.truncate(limit);
    let first = data.first().and_then(|d| d.get("id")).cloned().unwrap_or(Value::Null);
    let last = data.last().and_then(|d| d.get("id")).cloned().unwrap_or(Value::Null);
    Json(json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn store() -> (ResponseStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("stored_gw_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = billing::Ledger::connect(&format!("sqlite:{}", dir.join("l.db").display()), billing::LedgerOptions::default()).await.unwrap();
        let key = load_or_create_key(&dir.join("responses.key")).unwrap();
        assert_eq!(load_or_create_key(&dir.join("responses.key")).unwrap(), key, "made once, then read");
        (ResponseStore::new(l, key, &StoreConfig::default()), dir)
    }

    #[tokio::test]
    async fn sealed_at_rest_and_bound_to_id_and_account() {
        let (s, dir) = store().await;
        let response = json!({"id": "resp_a", "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "SECRET-ANSWER"}]}]});
        s.save("alice", vec![json!({"role": "user", "content": "SECRET-PROMPT"})], response.clone()).await.unwrap();
        let got = s.load("resp_a", "alice").await.unwrap().unwrap();
        assert_eq!(got.response, response);
        assert!(s.load("resp_a", "bob").await.unwrap().is_none());
        // Only ciphertext in the database file.
        let raw = s.ledger.stored_response("resp_a", "alice", 0).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("SECRET"));
        // A row moved to another id or account does not open.
        assert!(s.open("resp_b", "alice", &raw).is_none());
        assert!(s.open("resp_a", "bob", &raw).is_none());
        // Another key does not open it either.
        let other = ResponseStore::new(s.ledger.clone(), [7; 32], &StoreConfig::default());
        assert!(other.load("resp_a", "alice").await.unwrap().is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_next_turn_sees_the_assistants_messages_and_calls() {
        let r = json!({"output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "reasoning", "summary": []}
        ]});
        let items = output_as_input(&r);
        assert_eq!(items.len(), 2);
        assert_eq!(input_items(Some(&json!("q"))), vec![json!({"type": "message", "role": "user", "content": "q"})]);
    }
}
