//! Per-key rate limiting: requests/min and tokens/min token buckets, kept in
//! process memory or shared between gateway replicas through Redis.
//!
//! Each (key, dimension) bucket holds `limit` units, starts full and refills
//! continuously at `limit / 60` per second. Levels are stored as integers in
//! "unit-milliseconds" (1 unit = [`SCALE`] = 60 000), so a bucket with a
//! per-minute limit `L` refills by exactly `L` per elapsed millisecond: integer
//! maths, no rounding drift. Levels may dip below zero (down to `-capacity`)
//! when [`RateLimiter::adjust_tokens`] charges more than was estimated.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Milliseconds per minute; one unit of budget is stored as `SCALE` so that a
/// limit of `L`/min refills by exactly `L` stored units per millisecond.
const SCALE: i64 = 60_000;

/// Limits above this are treated as this value. Keeps every stored level
/// (at most `2 * MAX_LIMIT * SCALE` = 1.2e15) exactly representable in the
/// Lua doubles Redis scripts compute with (< 2^53). 1e10/min is unlimited in practice.
const MAX_LIMIT: u64 = 10_000_000_000;

/// Reported when a request can never fit (asks more tokens than capacity).
const NEVER_RETRY: Duration = Duration::from_secs(60);

/// Full buckets untouched for this long are dropped from the memory map.
const IDLE_EVICT_MS: u64 = 120_000;

/// Memory-map shards, to keep lock contention low under many concurrent keys.
const SHARDS: usize = 16;

/// Per-shard size at which the first idle purge runs.
const PURGE_MIN_LEN: usize = 1024;

/// Per-key limits. 0 means unlimited for that dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

/// Which dimension denied a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// Outcome of [`RateLimiter::check`]. Fields of a dimension whose limit is 0
/// (unlimited) are all zero.
#[derive(Clone, Debug)]
pub struct Decision {
    pub allowed: bool,
    pub exceeded: Option<LimitKind>,
    pub limit_requests: u64,
    pub remaining_requests: u64,
    /// Time until the requests bucket is full again.
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Time until the tokens bucket is full again.
    pub reset_tokens: Duration,
    /// Some when denied: when this same request would fit.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Adds x-ratelimit-limit-requests, x-ratelimit-remaining-requests,
    /// x-ratelimit-reset-requests and the -tokens trio (reset formatted like
    /// OpenAI: "1s", "6m0s", "20ms"), and Retry-After (whole seconds, rounded
    /// up, >= 1) when denied. Dimensions with limit 0 (unlimited) are omitted.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        if self.limit_requests > 0 {
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from(self.limit_requests),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(self.remaining_requests),
            );
            insert_str(
                headers,
                HeaderName::from_static("x-ratelimit-reset-requests"),
                &format_reset(self.reset_requests),
            );
        }
        if self.limit_tokens > 0 {
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderValue::from(self.limit_tokens),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderValue::from(self.remaining_tokens),
            );
            insert_str(
                headers,
                HeaderName::from_static("x-ratelimit-reset-tokens"),
                &format_reset(self.reset_tokens),
            );
        }
        if !self.allowed {
            let d = self.retry_after.unwrap_or(NEVER_RETRY);
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
    }

    fn unlimited() -> Self {
        Decision {
            allowed: true,
            exceeded: None,
            limit_requests: 0,
            remaining_requests: 0,
            reset_requests: Duration::ZERO,
            limit_tokens: 0,
            remaining_tokens: 0,
            reset_tokens: Duration::ZERO,
            retry_after: None,
        }
    }
}

fn insert_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Our values are plain ASCII; skipping on error keeps this panic-free.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Formats like Go's `time.Duration::String` at millisecond precision, which
/// is what OpenAI's reset headers use: "0s", "20ms", "1s", "1.5s", "6m0s", "1h0m0s".
fn format_reset(d: Duration) -> String {
    // Round sub-millisecond remainders up so "almost reset" never shows 0s.
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms / 1000) % 60;
    let frac = ms % 1000;
    let secs = if frac == 0 {
        format!("{s}")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit store unavailable: {0}")]
    Store(String),
}

impl From<redis::RedisError> for RateLimitError {
    fn from(e: redis::RedisError) -> Self {
        RateLimitError::Store(e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Bucket maths shared by both backends (the Lua script mirrors it exactly).

fn clamp_limit(limit: u64) -> i64 {
    // MAX_LIMIT fits in i64, so the cast is lossless.
    limit.min(MAX_LIMIT) as i64
}

/// Current level of a bucket last written as `stored` = (level, at_ms).
/// Missing state means a full bucket.
fn refill(stored: Option<Bucket>, limit: i64, now_ms: u64) -> i64 {
    let cap = limit * SCALE;
    match stored {
        None => cap,
        Some(b) => {
            // Limits can change between calls: clamp into the current range.
            let level = b.level.clamp(-cap, cap);
            let elapsed = i64::try_from(now_ms.saturating_sub(b.at_ms)).unwrap_or(i64::MAX);
            level.saturating_add(elapsed.saturating_mul(limit)).min(cap)
        }
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    // Callers pass a >= 0, b > 0.
    (a + b - 1) / b
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

/// Time until `level` refills to `target`.
fn wait_ms(level: i64, target: i64, limit: i64) -> i64 {
    if level >= target {
        0
    } else {
        ceil_div(target - level, limit)
    }
}

fn remaining(level: i64) -> u64 {
    u64::try_from(level / SCALE).unwrap_or(0)
}

/// Result of evaluating a request against the current levels.
struct Outcome {
    decision: Decision,
    /// Levels to store (after consumption when allowed).
    req_after: i64,
    tok_after: i64,
}

/// Pure decision given the refilled levels. `req_level`/`tok_level` are
/// ignored for unlimited dimensions.
fn evaluate(limits: Limits, tokens: u64, req_level: i64, tok_level: i64) -> Outcome {
    let rl = clamp_limit(limits.requests_per_minute);
    let tl = clamp_limit(limits.tokens_per_minute);

    let wait_req = if rl > 0 {
        Some(wait_ms(req_level, SCALE, rl))
    } else {
        Some(0)
    };
    let (wait_tok, tok_need) = if tl > 0 {
        match i64::try_from(tokens) {
            Ok(t) if t <= tl => (Some(wait_ms(tok_level, t * SCALE, tl)), t * SCALE),
            // More than capacity: no amount of waiting helps.
            _ => (None, 0),
        }
    } else {
        (Some(0), 0)
    };

    let allowed = wait_req == Some(0) && wait_tok == Some(0);
    let (req_after, tok_after) = if allowed {
        (
            if rl > 0 { req_level - SCALE } else { req_level },
            if tl > 0 {
                tok_level - tok_need
            } else {
                tok_level
            },
        )
    } else {
        (req_level, tok_level)
    };

    let (exceeded, retry_after) = if allowed {
        (None, None)
    } else {
        match (wait_req, wait_tok) {
            (_, None) => (Some(LimitKind::Tokens), Some(NEVER_RETRY)),
            (Some(r), Some(t)) => {
                // Report the binding constraint; the request fits once both do.
                let kind = if r >= t {
                    LimitKind::Requests
                } else {
                    LimitKind::Tokens
                };
                (Some(kind), Some(ms(r.max(t))))
            }
            (None, Some(_)) => (Some(LimitKind::Requests), Some(NEVER_RETRY)),
        }
    };

    let mut d = Decision::unlimited();
    d.allowed = allowed;
    d.exceeded = exceeded;
    d.retry_after = retry_after;
    if rl > 0 {
        d.limit_requests = limits.requests_per_minute;
        d.remaining_requests = remaining(req_after);
        d.reset_requests = ms(wait_ms(req_after, rl * SCALE, rl));
    }
    if tl > 0 {
        d.limit_tokens = limits.tokens_per_minute;
        d.remaining_tokens = remaining(tok_after);
        d.reset_tokens = ms(wait_ms(tok_after, tl * SCALE, tl));
    }
    Outcome {
        decision: d,
        req_after,
        tok_after,
    }
}

/// Clamps an adjustment so `delta * SCALE` cannot overflow; anything past
/// two capacities saturates the bucket either way.
fn clamp_delta(delta: i64, tl: i64) -> i64 {
    delta.clamp(-2 * tl, 2 * tl)
}

// ---------------------------------------------------------------------------
// Clock (injectable so tests of the memory backend need not sleep).

/// Millisecond clock used by the memory backend. Only differences matter.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Monotonic wall clock: immune to system time jumps.
struct MonotonicClock(Instant);

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Hand-driven clock for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// Memory backend.

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: i64,
    at_ms: u64,
}

#[derive(Debug)]
struct Entry {
    req: Option<Bucket>,
    tok: Option<Bucket>,
    /// When both buckets are full again (as of the last write).
    full_at_ms: u64,
}

struct Shard {
    map: HashMap<String, Entry>,
    /// Purge idle entries when the map reaches this size; doubles with the
    /// live set so purging stays amortised O(1) per insert.
    purge_at_len: usize,
}

struct MemoryBackend {
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl MemoryBackend {
    fn new(clock: Arc<dyn Clock>) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    purge_at_len: PURGE_MIN_LEN,
                })
            })
            .collect();
        MemoryBackend {
            clock,
            hasher: RandomState::new(),
            shards,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let idx = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // Critical sections are plain arithmetic; a poisoned lock still holds
        // consistent data, so keep serving rather than panicking.
        self.shards[idx]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// When a stored bucket is full again (a bucket of an unlimited
    /// dimension counts as full).
    fn full_at(b: Option<Bucket>, limit: i64) -> u64 {
        match b {
            Some(b) if limit > 0 => {
                let w = wait_ms(b.level, limit * SCALE, limit);
                b.at_ms.saturating_add(u64::try_from(w).unwrap_or(0))
            }
            _ => 0,
        }
    }

    /// Writes the given buckets (None leaves that bucket as it was).
    fn store(
        &self,
        shard: &mut Shard,
        key: &str,
        req: Option<Bucket>,
        tok: Option<Bucket>,
        limits: Limits,
        now: u64,
    ) {
        let (rl, tl) = (
            clamp_limit(limits.requests_per_minute),
            clamp_limit(limits.tokens_per_minute),
        );
        if let Some(e) = shard.map.get_mut(key) {
            e.req = req.or(e.req);
            e.tok = tok.or(e.tok);
            e.full_at_ms = Self::full_at(e.req, rl).max(Self::full_at(e.tok, tl));
            return;
        }
        if shard.map.len() >= shard.purge_at_len {
            // A bucket full for a while is indistinguishable from a missing one.
            shard
                .map
                .retain(|_, e| now < e.full_at_ms.saturating_add(IDLE_EVICT_MS));
            shard.purge_at_len = (shard.map.len() * 2).max(PURGE_MIN_LEN);
        }
        let full_at_ms = Self::full_at(req, rl).max(Self::full_at(tok, tl));
        shard.map.insert(
            key.to_owned(),
            Entry {
                req,
                tok,
                full_at_ms,
            },
        );
    }

    fn check(&self, key: &str, limits: Limits, tokens: u64) -> Decision {
        let now = self.clock.now_ms();
        let rl = clamp_limit(limits.requests_per_minute);
        let tl = clamp_limit(limits.tokens_per_minute);
        let mut shard = self.shard(key);
        let (req, tok) = shard.map.get(key).map_or((None, None), |e| (e.req, e.tok));
        let req_level = if rl > 0 { refill(req, rl, now) } else { 0 };
        let tok_level = if tl > 0 { refill(tok, tl, now) } else { 0 };
        let out = evaluate(limits, tokens, req_level, tok_level);
        if out.decision.allowed {
            let req = (rl > 0).then_some(Bucket {
                level: out.req_after,
                at_ms: now,
            });
            let tok = (tl > 0).then_some(Bucket {
                level: out.tok_after,
                at_ms: now,
            });
            self.store(&mut shard, key, req, tok, limits, now);
        }
        out.decision
    }

    fn adjust_tokens(&self, key: &str, limits: Limits, delta: i64) {
        let tl = clamp_limit(limits.tokens_per_minute);
        if tl == 0 || delta == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let cap = tl * SCALE;
        let mut shard = self.shard(key);
        let tok = shard.map.get(key).and_then(|e| e.tok);
        let level = refill(tok, tl, now);
        let new_level = (level - clamp_delta(delta, tl) * SCALE).clamp(-cap, cap);
        if tok.is_none() && new_level == cap {
            return; // still full: nothing worth remembering
        }
        self.store(
            &mut shard,
            key,
            None,
            Some(Bucket {
                level: new_level,
                at_ms: now,
            }),
            limits,
            now,
        );
    }
}

// ---------------------------------------------------------------------------
// Redis backend.

/// Bucket maths shared by both scripts; mirrors `refill` above. Levels are
/// written with "%.0f" because Lua's default number-to-string keeps only 14
/// significant digits.
macro_rules! lua_prelude {
    () => {
        r#"
local SCALE = 60000
-- Redis < 5 must replicate effects, not the script, once it has read TIME.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function load(key, limit)
  local cap = limit * SCALE
  local v = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(v[1])
  local at = tonumber(v[2])
  if level == nil or at == nil then return cap end
  if level > cap then level = cap end
  if level < -cap then level = -cap end
  local elapsed = now - at
  if elapsed < 0 then elapsed = 0 end
  -- from -cap a bucket is full after 2 * SCALE ms; also keeps products < 2^53
  if elapsed >= 2 * SCALE then return cap end
  level = level + elapsed * limit
  if level > cap then level = cap end
  return level
end

local function ceil_div(a, b) return math.floor((a + b - 1) / b) end

local function save(key, level, limit)
  local cap = limit * SCALE
  local ttl = 1000
  if level < cap then ttl = ttl + ceil_div(cap - level, limit) end
  redis.call('HSET', key, 'l', string.format('%.0f', level), 't', string.format('%.0f', now))
  redis.call('PEXPIRE', key, ttl)
end
"#
    };
}

/// KEYS: requests bucket, tokens bucket. ARGV: rpm, tpm, tokens.
/// Returns {allowed, requests level, tokens level} with levels as they were
/// before consumption; the caller derives remaining/reset from them.
const CHECK_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local rl, tl = 0, 0
local ok = true
if rpm > 0 then
  rl = load(KEYS[1], rpm)
  if rl < SCALE then ok = false end
end
if tpm > 0 then
  tl = load(KEYS[2], tpm)
  if need > tpm or tl < need * SCALE then ok = false end
end
if ok then
  if rpm > 0 then save(KEYS[1], rl - SCALE, rpm) end
  if tpm > 0 then save(KEYS[2], tl - need * SCALE, tpm) end
  return {1, rl, tl}
end
return {0, rl, tl}
"#
);

/// KEYS: tokens bucket. ARGV: tpm, delta (already clamped). Returns new level.
const ADJUST_LUA: &str = concat!(
    lua_prelude!(),
    r#"
local tpm = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
local cap = tpm * SCALE
local level = load(KEYS[1], tpm) - delta * SCALE
if level > cap then level = cap end
if level < -cap then level = -cap end
save(KEYS[1], level, tpm)
return level
"#
);

struct RedisBackend {
    conn: redis::aio::ConnectionManager,
    namespace: String,
    check: Arc<redis::Script>,
    adjust: Arc<redis::Script>,
}

/// The most one limiter call may take. The connection manager's own timeouts bound each
/// attempt, not a call made while it reconnects (it retries with backoff): without this,
/// requests waited out a whole Redis outage (3.7 s in tests/tests/chaos.rs) instead of
/// failing closed (or open) at once.
const STORE_DEADLINE: Duration = Duration::from_secs(1);

async fn within_deadline<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, RateLimitError> {
    match tokio::time::timeout(STORE_DEADLINE, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RateLimitError::Store(format!("no answer from Redis within {STORE_DEADLINE:?}"))),
    }
}

impl RedisBackend {
    /// Both keys share the `{ns:key}` hash tag, so they hash to one cluster
    /// slot and a single script may touch both.
    fn keys(&self, key: &str) -> (String, String) {
        let tag = format!("{{{}:{}}}", self.namespace, key);
        (format!("{tag}:rq"), format!("{tag}:tk"))
    }

    async fn check(
        &self,
        key: &str,
        limits: Limits,
        tokens: u64,
    ) -> Result<Decision, RateLimitError> {
        let (kr, kt) = self.keys(key);
        let rl = clamp_limit(limits.requests_per_minute);
        let tl = clamp_limit(limits.tokens_per_minute);
        let mut conn = self.conn.clone();
        // EVALSHA, falling back to SCRIPT LOAD on NOSCRIPT (e.g. after a restart).
        let mut invocation = self.check.key(kr);
        invocation.key(kt).arg(rl).arg(tl).arg(tokens);
        let (ok, req_level, tok_level): (i64, i64, i64) = within_deadline(invocation.invoke_async(&mut conn)).await?;
        let out = evaluate(limits, tokens, req_level, tok_level);
        if out.decision.allowed != (ok == 1) {
            // Unreachable unless the two implementations diverge; Redis is authoritative.
            tracing::warn!("rate limit script and local evaluation disagree");
            let mut d = out.decision;
            d.allowed = ok == 1;
            if d.allowed {
                d.exceeded = None;
                d.retry_after = None;
            } else if d.retry_after.is_none() {
                d.retry_after = Some(Duration::from_secs(1));
            }
            return Ok(d);
        }
        Ok(out.decision)
    }

    async fn adjust_tokens(
        &self,
        key: &str,
        limits: Limits,
        delta: i64,
    ) -> Result<(), RateLimitError> {
        let tl = clamp_limit(limits.tokens_per_minute);
        if tl == 0 || delta == 0 {
            return Ok(());
        }
        let (_, kt) = self.keys(key);
        let mut conn = self.conn.clone();
        let mut invocation = self.adjust.key(kt);
        invocation.arg(tl).arg(clamp_delta(delta, tl));
        let _: i64 = within_deadline(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryBackend>),
    Redis(Arc<RedisBackend>),
}

/// Per-key rate limiter. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct RateLimiter {
    backend: Backend,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("backend", &self.backend_name())
            .finish()
    }
}

impl RateLimiter {
    /// Process-local buckets.
    pub fn memory() -> Self {
        Self::memory_with_clock(Arc::new(MonotonicClock(Instant::now())))
    }

    /// Process-local buckets driven by `clock` (tests use [`ManualClock`]).
    pub fn memory_with_clock(clock: Arc<dyn Clock>) -> Self {
        RateLimiter {
            backend: Backend::Memory(Arc::new(MemoryBackend::new(clock))),
        }
    }

    /// Shares buckets between gateway replicas. `namespace` prefixes every
    /// Redis key (tests use a unique one).
    pub async fn redis(url: &str, namespace: &str) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url)?;
        // Bounded timeouts: a hung Redis must fail the check, not stall requests.
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(3)
            .set_max_delay(1000);
        let conn = redis::aio::ConnectionManager::new_with_config(client, cfg).await?;
        let check = Arc::new(redis::Script::new(CHECK_LUA));
        let adjust = Arc::new(redis::Script::new(ADJUST_LUA));
        Ok(RateLimiter {
            backend: Backend::Redis(Arc::new(RedisBackend {
                conn,
                namespace: namespace.to_owned(),
                check,
                adjust,
            })),
        })
    }

    /// "memory" | "redis"
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Atomically checks and, if allowed, consumes 1 request and `tokens`
    /// tokens from `key`'s buckets. A denied call consumes nothing.
    pub async fn check(
        &self,
        key: &str,
        limits: Limits,
        tokens: u64,
    ) -> Result<Decision, RateLimitError> {
        if limits.requests_per_minute == 0 && limits.tokens_per_minute == 0 {
            return Ok(Decision::unlimited()); // nothing to track; skip the store
        }
        match &self.backend {
            Backend::Memory(m) => Ok(m.check(key, limits, tokens)),
            Backend::Redis(r) => r.check(key, limits, tokens).await,
        }
    }

    /// Corrects the tokens bucket once the real count is known
    /// (delta = actual - estimated). Negative refunds, never above capacity;
    /// positive charges, down to at most one capacity of debt.
    pub async fn adjust_tokens(
        &self,
        key: &str,
        limits: Limits,
        delta: i64,
    ) -> Result<(), RateLimitError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.adjust_tokens(key, limits, delta);
                Ok(())
            }
            Backend::Redis(r) => r.adjust_tokens(key, limits, delta).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lim(r: u64, t: u64) -> Limits {
        Limits {
            requests_per_minute: r,
            tokens_per_minute: t,
        }
    }

    fn manual() -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::new());
        let rl = RateLimiter::memory_with_clock(clock.clone());
        (clock, rl)
    }

    #[tokio::test]
    async fn memory_allows_capacity_then_denies_requests() {
        let (_c, rl) = manual();
        let l = lim(5, 0);
        for i in 0..5 {
            let d = rl.check("k", l, 0).await.unwrap();
            assert!(d.allowed, "call {i}");
            assert_eq!(d.remaining_requests, 4 - i);
            assert_eq!(d.limit_requests, 5);
        }
        let d = rl.check("k", l, 0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.exceeded, Some(LimitKind::Requests));
        // 60 s / 5 = one request every 12 s.
        assert_eq!(d.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(d.reset_requests, Duration::from_secs(60));
        assert_eq!(d.remaining_requests, 0);
        // Other keys are independent.
        assert!(rl.check("other", l, 0).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn memory_tokens_exceed() {
        let (_c, rl) = manual();
        let l = lim(0, 100);
        let d = rl.check("k", l, 70).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_tokens, 30);
        assert_eq!(d.limit_requests, 0);
        // 70 tokens refill at 100/60 per s -> 42 s.
        assert_eq!(d.reset_tokens, Duration::from_secs(42));
        let d = rl.check("k", l, 40).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.exceeded, Some(LimitKind::Tokens));
        // Needs 10 more tokens: 10 * 600 ms.
        assert_eq!(d.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(d.remaining_tokens, 30);
        // More than capacity can never pass.
        let d = rl.check("k2", l, 101).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.exceeded, Some(LimitKind::Tokens));
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
        assert_eq!(d.remaining_tokens, 100);
    }

    #[tokio::test]
    async fn memory_refills_over_time() {
        let (c, rl) = manual();
        let l = lim(2, 0);
        assert!(rl.check("k", l, 0).await.unwrap().allowed);
        assert!(rl.check("k", l, 0).await.unwrap().allowed);
        let d = rl.check("k", l, 0).await.unwrap();
        assert_eq!(d.retry_after, Some(Duration::from_secs(30)));
        c.advance(Duration::from_millis(29_999));
        let d = rl.check("k", l, 0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
        c.advance(Duration::from_millis(1));
        let d = rl.check("k", l, 0).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_requests, 0);
        // Fully refilled after a long idle period, never above capacity.
        c.advance(Duration::from_secs(3600));
        let d = rl.check("k", l, 0).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_requests, 1);
    }

    #[tokio::test]
    async fn memory_no_drift_with_odd_limits() {
        // 7/min does not divide 60 s evenly; integer maths must still give
        // exactly 7 requests per minute over many minutes.
        let (c, rl) = manual();
        let l = lim(7, 0);
        let mut allowed = 0;
        for _ in 0..(10 * 60 * 10) {
            // poll every 100 ms for 10 minutes
            if rl.check("k", l, 0).await.unwrap().allowed {
                allowed += 1;
            }
            c.advance(Duration::from_millis(100));
        }
        // 7 initial burst + 70 refilled over 10 minutes (last refill lands at t=600 s, after the loop).
        assert!((76..=77).contains(&allowed), "{allowed}");
    }

    #[tokio::test]
    async fn memory_denied_consumes_nothing() {
        let (_c, rl) = manual();
        let l = lim(10, 100);
        assert!(rl.check("k", l, 90).await.unwrap().allowed);
        // Denied on tokens: the request must not be charged either.
        for _ in 0..5 {
            let d = rl.check("k", l, 50).await.unwrap();
            assert!(!d.allowed);
            assert_eq!(d.remaining_requests, 9);
            assert_eq!(d.remaining_tokens, 10);
        }
        let d = rl.check("k", l, 10).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_requests, 8);
        assert_eq!(d.remaining_tokens, 0);
    }

    #[tokio::test]
    async fn memory_both_dimensions_binding_constraint() {
        let (_c, rl) = manual();
        let l = lim(1, 1000);
        assert!(rl.check("k", l, 1000).await.unwrap().allowed);
        let d = rl.check("k", l, 10).await.unwrap();
        // requests: 60 s; tokens: 10 tokens * 60 ms = 600 ms.
        assert_eq!(d.exceeded, Some(LimitKind::Requests));
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn memory_adjust_refunds_and_charges() {
        let (_c, rl) = manual();
        let l = lim(0, 100);
        assert!(rl.check("k", l, 80).await.unwrap().allowed);
        rl.adjust_tokens("k", l, -50).await.unwrap(); // used 30, not 80
        let d = rl.check("k", l, 0).await.unwrap();
        assert_eq!(d.remaining_tokens, 70);
        // Refund never exceeds capacity.
        rl.adjust_tokens("k", l, -1000).await.unwrap();
        assert_eq!(rl.check("k", l, 0).await.unwrap().remaining_tokens, 100);
        // Undercharge is collected as debt, bounded by one capacity.
        rl.adjust_tokens("k", l, 150).await.unwrap();
        let d = rl.check("k", l, 1).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining_tokens, 0);
        // From -50 to 1 token takes 51 * 600 ms.
        assert_eq!(d.retry_after, Some(Duration::from_millis(30_600)));
        rl.adjust_tokens("k", l, i64::MAX).await.unwrap();
        let d = rl.check("k", l, 0).await.unwrap();
        assert_eq!(d.reset_tokens, Duration::from_secs(120));
        // Unknown key / unlimited: no-ops.
        rl.adjust_tokens("fresh", l, -10).await.unwrap();
        rl.adjust_tokens("k", lim(5, 0), 10).await.unwrap();
        assert_eq!(rl.check("fresh", l, 0).await.unwrap().remaining_tokens, 100);
    }

    #[tokio::test]
    async fn unlimited_is_always_allowed() {
        let rl = RateLimiter::memory();
        assert_eq!(rl.backend_name(), "memory");
        for _ in 0..100 {
            let d = rl.check("k", lim(0, 0), u64::MAX).await.unwrap();
            assert!(d.allowed);
        }
        let mut h = HeaderMap::new();
        rl.check("k", lim(0, 0), 1)
            .await
            .unwrap()
            .apply_headers(&mut h);
        assert!(h.is_empty());
    }

    #[tokio::test]
    async fn huge_limits_do_not_overflow() {
        let (c, rl) = manual();
        let l = lim(u64::MAX, u64::MAX);
        let d = rl.check("k", l, u64::MAX).await.unwrap();
        assert!(!d.allowed); // u64::MAX tokens exceeds the clamped capacity
        let d = rl.check("k", l, 1_000_000).await.unwrap();
        assert!(d.allowed);
        c.advance(Duration::from_secs(u64::MAX / 2_000));
        rl.adjust_tokens("k", l, i64::MIN).await.unwrap();
        rl.adjust_tokens("k", l, i64::MAX).await.unwrap();
        // Maximal debt: even a 0-token request waits, at most two minutes.
        let d = rl.check("k", l, 0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
        assert_eq!(d.reset_tokens, Duration::from_secs(120));
    }

    #[test]
    fn memory_evicts_idle_entries() {
        let clock = Arc::new(ManualClock::new());
        let m = MemoryBackend::new(clock.clone());
        let l = lim(1000, 0);
        for i in 0..(SHARDS * PURGE_MIN_LEN) {
            m.check(&format!("k{i}"), l, 0);
        }
        clock.advance(Duration::from_secs(300));
        for i in 0..(SHARDS * PURGE_MIN_LEN * 2) {
            m.check(&format!("n{i}"), l, 0);
        }
        let total: usize = m.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        // All of the first batch was idle and full, so purges dropped it.
        assert!(total < SHARDS * PURGE_MIN_LEN * 3, "{total}");
        let old: usize = m
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap()
                    .map
                    .keys()
                    .filter(|k| k.starts_with('k'))
                    .count()
            })
            .sum();
        assert!(old < SHARDS * PURGE_MIN_LEN / 4, "{old}");
    }

    #[test]
    fn concurrent_memory_checks_never_overshoot() {
        let rl = RateLimiter::memory_with_clock(Arc::new(ManualClock::new()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let allowed = rt.block_on(async {
            let mut handles = Vec::new();
            for _ in 0..200 {
                let rl = rl.clone();
                handles.push(tokio::spawn(async move {
                    rl.check("k", lim(50, 0), 0).await.unwrap().allowed
                }));
            }
            let mut n = 0;
            for h in handles {
                n += usize::from(h.await.unwrap());
            }
            n
        });
        assert_eq!(allowed, 50);
    }

    #[test]
    fn reset_formatting() {
        let f = |ms: u64| format_reset(Duration::from_millis(ms));
        assert_eq!(f(0), "0s");
        assert_eq!(f(20), "20ms");
        assert_eq!(f(999), "999ms");
        assert_eq!(f(1000), "1s");
        assert_eq!(f(1500), "1.5s");
        assert_eq!(f(1250), "1.25s");
        assert_eq!(f(12_345), "12.345s");
        assert_eq!(f(60_000), "1m0s");
        assert_eq!(f(360_000), "6m0s");
        assert_eq!(f(3_600_000), "1h0m0s");
        assert_eq!(f(3_723_400), "1h2m3.4s");
        assert_eq!(format_reset(Duration::from_micros(1)), "1ms");
    }

    #[test]
    fn headers() {
        let d = evaluate(lim(60, 1000), 100, SCALE * 60, SCALE * 1000).decision;
        let mut h = HeaderMap::new();
        d.apply_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "900");
        assert_eq!(h["x-ratelimit-reset-tokens"], "6s");
        assert!(h.get("retry-after").is_none());

        // Denied, tokens only: request headers omitted, Retry-After rounded up.
        let d = evaluate(lim(0, 100), 50, 0, 49 * SCALE + 1).decision;
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(600)));
        let mut h = HeaderMap::new();
        d.apply_headers(&mut h);
        assert!(h.get("x-ratelimit-limit-requests").is_none());
        assert_eq!(h["x-ratelimit-remaining-tokens"], "49");
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["x-ratelimit-reset-tokens"], "30.6s");

        let mut d = d;
        d.retry_after = Some(Duration::from_millis(12_001));
        let mut h = HeaderMap::new();
        d.apply_headers(&mut h);
        assert_eq!(h["retry-after"], "13");
    }

    // ---- Redis (real server; set COCOON_TEST_REDIS_URL to override) ----

    fn redis_url() -> String {
        std::env::var("COCOON_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    fn unique_ns() -> String {
        use rand::Rng;
        format!("cocoon-test-{:016x}", rand::thread_rng().gen::<u64>())
    }

    async fn replicas() -> (String, RateLimiter, RateLimiter) {
        let ns = unique_ns();
        let a = RateLimiter::redis(&redis_url(), &ns).await.unwrap();
        let b = RateLimiter::redis(&redis_url(), &ns).await.unwrap();
        assert_eq!(a.backend_name(), "redis");
        (ns, a, b)
    }

    #[tokio::test]
    async fn redis_replicas_share_request_budget() {
        let (_ns, a, b) = replicas().await;
        let l = lim(5, 0);
        for _ in 0..3 {
            assert!(a.check("key1", l, 0).await.unwrap().allowed);
        }
        for _ in 0..2 {
            assert!(b.check("key1", l, 0).await.unwrap().allowed);
        }
        for rl in [&a, &b] {
            let d = rl.check("key1", l, 0).await.unwrap();
            assert!(!d.allowed);
            assert_eq!(d.exceeded, Some(LimitKind::Requests));
            let ra = d.retry_after.unwrap();
            assert!(
                ra > Duration::from_secs(11) && ra <= Duration::from_secs(12),
                "{ra:?}"
            );
            assert_eq!(d.remaining_requests, 0);
        }
        assert!(a.check("key2", l, 0).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn redis_replicas_share_token_budget() {
        let (_ns, a, b) = replicas().await;
        let l = lim(100, 1000);
        assert!(a.check("k", l, 600).await.unwrap().allowed);
        let d = b.check("k", l, 300).await.unwrap();
        assert!(d.allowed);
        assert!(
            (99..=100).contains(&d.remaining_tokens),
            "{}",
            d.remaining_tokens
        );
        let d = a.check("k", l, 200).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.exceeded, Some(LimitKind::Tokens));
        // Denied consumed nothing (requests: 2 used of 100).
        assert_eq!(d.remaining_requests, 98);
        let d = b.check("k", l, 5000).await.unwrap();
        assert_eq!(d.exceeded, Some(LimitKind::Tokens));
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
        // Refund through one replica is visible through the other.
        a.adjust_tokens("k", l, -800).await.unwrap();
        let d = b.check("k", l, 200).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert!(d.remaining_tokens >= 700);
        // Refunds cap at capacity.
        b.adjust_tokens("k", l, -100_000).await.unwrap();
        assert_eq!(a.check("k", l, 0).await.unwrap().remaining_tokens, 1000);
    }

    #[tokio::test]
    async fn redis_matches_memory_precisely() {
        // Large limits exercise the Lua number formatting (levels ~6e14) and
        // debt exercises negative levels; both backends must agree exactly.
        let (_ns, a, b) = replicas().await;
        let l = lim(MAX_LIMIT, MAX_LIMIT);
        let d = a.check("big", l, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_tokens, MAX_LIMIT - 1);
        assert_eq!(d.remaining_requests, MAX_LIMIT - 1);
        let d = b.check("big", l, 3).await.unwrap();
        assert!(
            d.remaining_tokens >= MAX_LIMIT - 4,
            "{}",
            d.remaining_tokens
        );

        let l = lim(0, 100);
        assert!(a.check("debt", l, 100).await.unwrap().allowed);
        b.adjust_tokens("debt", l, 50).await.unwrap();
        let d = a.check("debt", l, 10).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining_tokens, 0);
        // -50 -> +10 tokens at 600 ms each: just under 36 s (time passed meanwhile).
        let ra = d.retry_after.unwrap();
        assert!(
            ra > Duration::from_secs(35) && ra <= Duration::from_secs(36),
            "{ra:?}"
        );
        assert!(
            d.reset_tokens > Duration::from_secs(89) && d.reset_tokens <= Duration::from_secs(90)
        );
    }

    #[tokio::test]
    async fn redis_keys_have_ttl() {
        let (ns, a, _b) = replicas().await;
        let l = lim(60, 3600);
        assert!(a.check("ttl", l, 60).await.unwrap().allowed);
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for suffix in ["rq", "tk"] {
            let key = format!("{{{ns}:ttl}}:{suffix}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            // 1 request / 60 tokens refill in 1 s (+1 s slack).
            assert!(ttl > 0 && ttl <= 2000, "{key}: {ttl}");
        }
        // Denied calls write nothing.
        let l2 = lim(60, 10);
        assert!(!a.check("ttl2", l2, 11).await.unwrap().allowed);
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{{{ns}:ttl2}}:rq"))
            .arg(format!("{{{ns}:ttl2}}:tk"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0);
    }

    #[tokio::test]
    async fn redis_concurrent_replicas_never_overshoot() {
        let (_ns, a, b) = replicas().await;
        let mut handles = Vec::new();
        for i in 0..60 {
            let rl = if i % 2 == 0 { a.clone() } else { b.clone() };
            handles.push(tokio::spawn(async move {
                rl.check("k", lim(25, 0), 0).await.unwrap().allowed
            }));
        }
        let mut n = 0;
        for h in handles {
            n += usize::from(h.await.unwrap());
        }
        assert_eq!(n, 25);
    }

    #[tokio::test]
    async fn redis_unreachable_is_an_error() {
        let r = RateLimiter::redis("redis://127.0.0.1:1", "x").await;
        assert!(matches!(r, Err(RateLimitError::Store(_))));
    }
}
