//! Collateral the verifier fetches, caches and refreshes by itself: Intel TDX collateral (PCK
//! CRL, root CA CRL, TCB info, QE identity and their issuer chains) per platform FMSPC, from
//! Intel PCS (v4) or a PCCS through `dcap-qvl`'s own client, and AMD SEV-SNP VCEKs per chip
//! per TCB from AMD KDS.
//!
//! * **Every candidate is checked the same way**, whether fetched, read from the replicas'
//!   shared cache or attached by the worker: TDX collateral must name the quote's FMSPC, be
//!   within its dates and verify the quote that asked for it (Intel root → signing chains →
//!   TCB info / QE identity signatures → CRLs → PCK → quote); a platform verdict (Revoked, or
//!   below every TCB level) still proves the collateral authentic. A VCEK must sign the
//!   report, chain to the built-in AMD ARK/ASK and match the chip and TCB. A candidate that
//!   fails is refused with its reason and never replaces a good cached copy.
//! * **Refresh** (TDX): at `refresh_interval_secs` after the fetch, and no later than
//!   `refresh_before_secs` before the earliest `nextUpdate` of the PCK CRL, root CA CRL, TCB
//!   info and QE identity, re-fetched with the last quote the collateral verified. A VCEK is
//!   issued per TCB and valid for years: it is fetched once per chip per TCB.
//! * **Source down**: the cached copy is used until its own earliest expiry, with a warning
//!   and [`CollateralStatus::state`] = `Stale`; after that admission is refused with
//!   [`AttestationError::CollateralStale`], naming the item that expired.
//! * **Replicas** share one fetch per FMSPC or chip through a [`SharedCollateral`] (Redis in
//!   the router): a lock elects one fetcher, the others wait for its result and check it.
//! * **Time** is always passed in (`now`, unix seconds), so tests drive the clock.

pub mod http;
pub mod kds;
#[cfg(feature = "replay")]
pub mod replay;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcap_qvl::collateral::CollateralClient;
use dcap_qvl::configs::DefaultConfig;
use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};

use crate::claims::SnpProduct;
use crate::error::AttestationError;
use crate::evidence::{Evidence, SnpEvidence, TdxEvidence, TeeKind};
use crate::serde_bytes::b64;
use crate::tdx::{check_validity, collateral_validity, CollateralItemValidity, INTEL_SGX_ROOT_CA_DER};
use crate::{snp, tdx};
use self::http::BoundedHttp;

/// Intel's Provisioning Certification Service (the v4 API is appended by `dcap-qvl`).
pub const INTEL_PCS_URL: &str = dcap_qvl::collateral::INTEL_PCS_URL;
pub use kds::AMD_KDS_URL;

/// `[attestation.collateral]`: where collateral comes from and how it is kept fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollateralConfig {
    /// Fetch collateral at all. Off: TDX evidence needs collateral attached or loaded from
    /// `collateral_file`, SEV-SNP evidence needs the VCEK from the host.
    pub enabled: bool,
    /// Intel PCS (`https://api.trustedservices.intel.com`) or a PCCS base URL.
    pub pccs_url: String,
    /// AMD KDS base URL.
    pub kds_url: String,
    /// Disk cache (one JSON file per FMSPC or chip+TCB); unset = memory only.
    pub cache_dir: Option<PathBuf>,
    /// Limit for each HTTP request (connect to last body byte).
    pub fetch_timeout_ms: u64,
    /// Largest response body accepted.
    pub max_body_bytes: usize,
    /// Re-fetch TDX collateral this long after fetching it (picks up new TCB evaluation
    /// data numbers Intel publishes before the old collateral expires).
    pub refresh_interval_secs: u64,
    /// ... and no later than this long before its earliest `nextUpdate`.
    pub refresh_before_secs: u64,
    /// After a failed fetch, wait this long before trying that FMSPC or chip again.
    pub retry_secs: u64,
    /// How often the background task looks for collateral due for refresh.
    pub check_interval_secs: u64,
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pccs_url: INTEL_PCS_URL.into(),
            kds_url: AMD_KDS_URL.into(),
            cache_dir: None,
            fetch_timeout_ms: 10_000,
            max_body_bytes: 1 << 20,
            refresh_interval_secs: 86_400,
            refresh_before_secs: 7 * 86_400,
            retry_secs: 60,
            check_interval_secs: 60,
        }
    }
}

impl CollateralConfig {
    /// One message per mistake, naming the key under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        for (key, url) in [("pccs_url", &self.pccs_url), ("kds_url", &self.kds_url)] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                errs.push(format!("{prefix}.{key} must be an http(s) URL, got {url:?}"));
            }
        }
        if !(100..=120_000).contains(&self.fetch_timeout_ms) {
            errs.push(format!(
                "{prefix}.fetch_timeout_ms must be in 100..=120000, got {}",
                self.fetch_timeout_ms
            ));
        }
        if self.max_body_bytes < 16 * 1024 {
            errs.push(format!("{prefix}.max_body_bytes must be >= 16384, got {}", self.max_body_bytes));
        }
        if self.refresh_interval_secs < 60 {
            errs.push(format!(
                "{prefix}.refresh_interval_secs must be >= 60, got {}",
                self.refresh_interval_secs
            ));
        }
        if self.retry_secs == 0 || self.check_interval_secs == 0 {
            errs.push(format!("{prefix}.retry_secs and {prefix}.check_interval_secs must be > 0"));
        }
        errs
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.fetch_timeout_ms)
    }
}

/// A cache the gateway replicas share (Redis in the router), so that one of them fetches per
/// FMSPC or chip and the others take its result (after checking it like any other).
#[async_trait]
pub trait SharedCollateral: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn put(&self, key: &str, value: &[u8], ttl_secs: u64) -> Result<(), String>;
    /// Becomes the one fetcher of `key` for at most `ttl_ms`: `Some(token)` when acquired.
    async fn try_lock(&self, key: &str, ttl_ms: u64) -> Result<Option<String>, String>;
    async fn unlock(&self, key: &str, token: &str) -> Result<(), String>;
}

/// Cached TDX collateral for one FMSPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxEntry {
    /// Upper-case hex.
    pub fmspc: String,
    /// The URL it came from.
    pub source: String,
    /// Unix seconds.
    pub fetched_at: u64,
    /// Without a PCK chain: the PCK chain is per platform and travels in each quote.
    pub collateral: QuoteCollateralV3,
    /// The last quote this collateral verified: refreshes are checked against it.
    #[serde(with = "b64")]
    pub probe_quote: Vec<u8>,
}

/// A cached VCEK for one chip at one TCB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpEntry {
    /// `{product}-{chip id hex, first 8 bytes}-{bl}.{tee}.{snp}.{ucode}`.
    pub key: String,
    pub product: SnpProduct,
    pub source: String,
    pub fetched_at: u64,
    #[serde(with = "b64")]
    pub vcek: Vec<u8>,
    pub not_after: u64,
}

/// Where a collateral entry stands at a given time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Freshness {
    /// Valid, not yet due for refresh.
    Fresh,
    /// Valid, due for refresh (the background task will fetch it).
    RefreshDue,
    /// Valid, but the last refresh failed: used until `expires_at`, with a warning.
    Stale,
    /// Past its own expiry (`what` expired first).
    Expired { what: String },
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freshness::Fresh => f.write_str("fresh"),
            Freshness::RefreshDue => f.write_str("refresh due"),
            Freshness::Stale => f.write_str("STALE (source failing, cached copy in use)"),
            Freshness::Expired { what } => write!(f, "EXPIRED ({what})"),
        }
    }
}

/// One cached item, for `cocoon attest collateral show`, `/metrics` and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralStatus {
    pub kind: TeeKind,
    /// FMSPC (TDX) or chip and TCB (SEV-SNP).
    pub id: String,
    pub source: String,
    pub fetched_at: u64,
    /// TDX: earliest `nextUpdate` of PCK CRL, root CA CRL, TCB info, QE identity. SEV-SNP:
    /// the VCEK's notAfter.
    pub next_update: u64,
    /// Earliest expiry of anything in it (certificates included).
    pub expires_at: u64,
    /// When the background task refreshes it (TDX); `expires_at` for a VCEK.
    pub refresh_at: u64,
    pub tcb_evaluation_data_number: Option<u32>,
    pub state: Freshness,
    pub last_error: Option<String>,
    /// Failed fetches since the last success.
    pub failures: u64,
}

/// The collateral a verification used, reported with the verdict (`cocoon verify`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralUsed {
    pub kind: TeeKind,
    pub id: String,
    /// A URL, or "attached by the worker".
    pub source: String,
    pub fetched_at: Option<u64>,
    pub next_update: u64,
    pub expires_at: u64,
    pub tcb_evaluation_data_number: Option<u32>,
    pub state: Freshness,
}

impl CollateralUsed {
    /// One line for people.
    pub fn describe(&self, now: u64) -> String {
        let age = self
            .fetched_at
            .map(|f| format!(", fetched {} s ago", now.saturating_sub(f)))
            .unwrap_or_default();
        let eval = self
            .tcb_evaluation_data_number
            .map(|n| format!(", TCB evaluation data number {n}"))
            .unwrap_or_default();
        format!(
            "{} collateral for {} from {}{age}{eval}; next update {} (in {} s), expires {}: {}",
            self.kind,
            self.id,
            self.source,
            self.next_update,
            self.next_update.saturating_sub(now),
            self.expires_at,
            self.state
        )
    }
}

pub(crate) const ATTACHED: &str = "attached by the worker";

#[derive(Clone, Copy, Debug)]
struct Facts {
    not_before: u64,
    next_update: u64,
    expires_at: u64,
    eval: u32,
}

fn tdx_facts(c: &QuoteCollateralV3) -> Result<(Facts, Vec<CollateralItemValidity>), String> {
    let items = collateral_validity(c)?;
    let not_before = items.iter().map(|i| i.not_before).max().unwrap_or(0);
    let expires_at = items.iter().map(|i| i.not_after).min().unwrap_or(0);
    let next_update = items
        .iter()
        .filter(|i| matches!(i.what.as_str(), "TCB info" | "QE identity" | "root CA CRL" | "PCK CRL"))
        .map(|i| i.not_after)
        .min()
        .unwrap_or(expires_at);
    #[derive(Deserialize)]
    struct Eval {
        #[serde(rename = "tcbEvaluationDataNumber", default)]
        n: u32,
    }
    let tcb: Eval = serde_json::from_str(&c.tcb_info).map_err(|e| format!("TCB info: {e}"))?;
    let qe: Eval = serde_json::from_str(&c.qe_identity).map_err(|e| format!("QE identity: {e}"))?;
    Ok((
        Facts {
            not_before,
            next_update,
            expires_at,
            eval: tcb.n.min(qe.n),
        },
        items,
    ))
}

/// Checks TDX collateral for `fmspc` against `quote` at `now` (see the module docs). The
/// reason names the failed rule.
fn validate_tdx(
    c: &QuoteCollateralV3,
    fmspc: &str,
    raw_quote: &[u8],
    root_ca: &[u8],
    now: u64,
) -> Result<Facts, String> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        fmspc: Option<String>,
    }
    let head: Head =
        serde_json::from_str(&c.tcb_info).map_err(|e| format!("its TCB info is not valid JSON: {e}"))?;
    let got = head.fmspc.unwrap_or_default().to_ascii_uppercase();
    if got != fmspc {
        return Err(format!(
            "FMSPC mismatch: its TCB info is for FMSPC {got:?}, the quote's platform is {fmspc}"
        ));
    }
    if let Some(id) = head.id.filter(|id| id != "TDX") {
        return Err(format!("its TCB info is for {id:?}, not TDX"));
    }
    let (facts, items) = tdx_facts(c).map_err(|e| format!("malformed: {e}"))?;
    check_validity(&items, now).map_err(|e| format!("{e} ({})", e.rule()))?;
    let quote = tdx::parse_quote(raw_quote).map_err(|e| format!("{e}"))?;
    match tdx::verify_with(raw_quote, &quote, c, root_ca, now) {
        // The platform's verdict is the policy's business: the collateral itself verified.
        Ok(_) | Err(AttestationError::TcbRevoked { .. }) | Err(AttestationError::TcbOutdated { .. }) => {
            Ok(facts)
        }
        Err(e) => Err(format!("{e} ({})", e.rule())),
    }
}

fn snp_key(product: SnpProduct, report: &sev::firmware::guest::AttestationReport) -> String {
    let t = &report.reported_tcb;
    format!(
        "{product}-{}-{}.{}.{}.{}",
        hex::encode(&report.chip_id[..8]),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    )
}

struct TdxSlot {
    entry: TdxEntry,
    facts: Facts,
    /// Since the last success: (when, why).
    last_error: Option<(u64, String)>,
    failures: u64,
}

#[derive(Default)]
struct State {
    tdx: HashMap<String, TdxSlot>,
    snp: HashMap<String, SnpEntry>,
    /// Failed first fetches (no entry yet): (when, why), for the retry pause.
    missing: HashMap<String, (u64, String)>,
}

/// Fetches, checks, caches and refreshes collateral. Share one per process (`Arc`).
pub struct CollateralService {
    cfg: CollateralConfig,
    http: BoundedHttp,
    root_ca: Vec<u8>,
    state: std::sync::Mutex<State>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    shared: Option<Arc<dyn SharedCollateral>>,
}

impl std::fmt::Debug for CollateralService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralService").field("cfg", &self.cfg).finish()
    }
}

impl CollateralService {
    /// Loads the disk cache (entries that do not parse are skipped with a warning).
    pub fn new(cfg: CollateralConfig) -> Result<Self, String> {
        let http = BoundedHttp::new(cfg.timeout(), cfg.max_body_bytes)?;
        let svc = Self {
            cfg,
            http,
            root_ca: INTEL_SGX_ROOT_CA_DER.to_vec(),
            state: std::sync::Mutex::new(State::default()),
            locks: std::sync::Mutex::new(HashMap::new()),
            shared: None,
        };
        svc.load_disk()?;
        Ok(svc)
    }

    /// Replaces the Intel root CA that TDX collateral must chain to.
    pub fn with_intel_root_ca(mut self, der: Vec<u8>) -> Self {
        self.root_ca = der;
        self
    }

    /// Shares fetches with other replicas through `shared`.
    pub fn with_shared(mut self, shared: Arc<dyn SharedCollateral>) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn config(&self) -> &CollateralConfig {
        &self.cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written (each update is
        // one insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    fn refresh_at(&self, fetched_at: u64, f: &Facts) -> u64 {
        let by_age = fetched_at.saturating_add(self.cfg.refresh_interval_secs);
        let by_expiry = f.next_update.saturating_sub(self.cfg.refresh_before_secs);
        by_age.min(by_expiry).max(fetched_at.saturating_add(self.cfg.retry_secs))
    }

    // ------------------------------------------------------------------ resolution

    /// The evidence to verify, with the collateral this verifier chose filled in (TDX
    /// collateral, SEV-SNP VCEK), and what was used. `products`: SEV-SNP product lines to ask
    /// KDS for when the report does not say (the policy's allowed products).
    pub async fn resolve(
        &self,
        evidence: &Evidence,
        products: &[SnpProduct],
        now: u64,
    ) -> Result<(Evidence, Option<CollateralUsed>), AttestationError> {
        match evidence {
            Evidence::Tdx(ev) => {
                let (collateral, used) = self.tdx_for_quote(&ev.quote, ev.collateral.as_ref(), now).await?;
                let ev = TdxEvidence {
                    quote: ev.quote.clone(),
                    collateral: Some(collateral),
                };
                Ok((Evidence::Tdx(ev), Some(used)))
            }
            Evidence::SevSnp(ev) => {
                let (vcek, used) = self.snp_vcek(&ev.report, &ev.vcek, products, now).await?;
                let ev = SnpEvidence {
                    report: ev.report.clone(),
                    vcek,
                };
                Ok((Evidence::SevSnp(ev), Some(used)))
            }
            Evidence::Simulated(_) => Ok((evidence.clone(), None)),
        }
    }

    /// TDX collateral for a quote: the cached copy while it is valid, else a fresh fetch,
    /// else the collateral the worker attached (checked like any other).
    pub async fn tdx_for_quote(
        &self,
        raw_quote: &[u8],
        attached: Option<&QuoteCollateralV3>,
        now: u64,
    ) -> Result<(QuoteCollateralV3, CollateralUsed), AttestationError> {
        let quote = tdx::parse_quote(raw_quote)?;
        let fmspc = hex::encode_upper(tdx::quote_fmspc(&quote)?);
        if let Some(found) = self.tdx_usable(&fmspc, now) {
            return Ok(found);
        }
        let fetched = match self.refresh_tdx(&fmspc, raw_quote, now, false).await {
            Ok(()) => match self.tdx_usable(&fmspc, now) {
                Some(found) => return Ok(found),
                None => "the fetched collateral is not valid at verification time".to_string(),
            },
            Err(e) => e,
        };
        let mut detail = fetched;
        if let Some(att) = attached {
            match validate_tdx(att, &fmspc, raw_quote, &self.root_ca, now) {
                Ok(f) => {
                    tracing::info!(%fmspc, "using the TDX collateral the worker attached (checked like fetched collateral)");
                    return Ok((
                        att.clone(),
                        CollateralUsed {
                            kind: TeeKind::Tdx,
                            id: format!("FMSPC {fmspc}"),
                            source: ATTACHED.into(),
                            fetched_at: None,
                            next_update: f.next_update,
                            expires_at: f.expires_at,
                            tcb_evaluation_data_number: Some(f.eval),
                            state: Freshness::Fresh,
                        },
                    ));
                }
                Err(e) => detail = format!("{detail}; the collateral the worker attached was refused: {e}"),
            }
        }
        let expired = {
            let state = self.state();
            state.tdx.get(&fmspc).map(|s| s.entry.collateral.clone())
        };
        if let Some(c) = expired {
            if let Ok(items) = collateral_validity(&c) {
                if let Err(AttestationError::CollateralExpired { what, not_after, now }) =
                    check_validity(&items, now)
                {
                    return Err(AttestationError::CollateralStale {
                        id: fmspc,
                        what,
                        not_after,
                        now,
                        detail,
                    });
                }
            }
        }
        Err(AttestationError::CollateralUnavailable {
            kind: TeeKind::Tdx,
            id: format!("FMSPC {fmspc}"),
            detail,
        })
    }

    /// The cached collateral for `fmspc` if it verifies at `now`.
    fn tdx_usable(&self, fmspc: &str, now: u64) -> Option<(QuoteCollateralV3, CollateralUsed)> {
        let state = self.state();
        let slot = state.tdx.get(fmspc)?;
        let f = slot.facts;
        if now < f.not_before || now >= f.expires_at {
            return None;
        }
        let status = self.slot_status(slot, now);
        if status.state == Freshness::Stale {
            tracing::warn!(%fmspc, expires_at = f.expires_at, error = ?status.last_error, "refreshing TDX collateral fails: using the cached copy until it expires");
        }
        Some((
            slot.entry.collateral.clone(),
            CollateralUsed {
                kind: TeeKind::Tdx,
                id: format!("FMSPC {fmspc}"),
                source: slot.entry.source.clone(),
                fetched_at: Some(slot.entry.fetched_at),
                next_update: f.next_update,
                expires_at: f.expires_at,
                tcb_evaluation_data_number: Some(f.eval),
                state: status.state,
            },
        ))
    }

    /// Fetches collateral for `fmspc`, checks it against `probe` and stores it. With
    /// `force = false` a copy that another task or replica refreshed meanwhile is taken
    /// instead of fetching again. A failure leaves the cached copy in place.
    async fn refresh_tdx(&self, fmspc: &str, probe: &[u8], now: u64, force: bool) -> Result<(), String> {
        let key = format!("tdx:{fmspc}");
        let lock = self.key_lock(&key);
        let _one_at_a_time = lock.lock().await;
        if !force {
            if let Some(why) = self.in_retry_pause(fmspc, now) {
                return Err(why);
            }
            if self.tdx_fresh(fmspc, now) {
                return Ok(());
            }
            if self.adopt_shared_tdx(&key, fmspc, probe, now).await {
                return Ok(());
            }
        }
        let token = match &self.shared {
            Some(shared) => match self.elect(shared.as_ref(), &key, fmspc, probe, now, force).await? {
                Election::Fetcher(token) => token,
                Election::Adopted => return Ok(()),
            },
            None => None,
        };
        let result = self.fetch_tdx(fmspc, probe, now).await;
        // Shared before the lock goes, so a waiting replica finds it rather than fetching.
        if let Ok(entry) = &result {
            self.put_shared(&key, entry, now).await;
        }
        if let (Some(shared), Some(token)) = (&self.shared, &token) {
            if let Err(e) = shared.unlock(&key, token).await {
                tracing::warn!(%key, error = %e, "could not release the shared collateral lock (it expires by itself)");
            }
        }
        match result {
            Ok(entry) => {
                self.store_tdx(entry);
                Ok(())
            }
            Err(e) => {
                self.record_tdx_failure(fmspc, now, &e);
                Err(e)
            }
        }
    }

    async fn fetch_tdx(&self, fmspc: &str, probe: &[u8], now: u64) -> Result<TdxEntry, String> {
        let url = &self.cfg.pccs_url;
        let client = CollateralClient::<DefaultConfig, BoundedHttp>::new(self.http.clone(), url.clone());
        let mut c = client
            .fetch(probe)
            .await
            .map_err(|e| format!("fetching TDX collateral from {url}: {e:#}"))?;
        // The PCK chain belongs to the one platform whose quote asked; other platforms with
        // this FMSPC bring their own in their quotes.
        c.pck_certificate_chain = None;
        validate_tdx(&c, fmspc, probe, &self.root_ca, now)
            .map_err(|e| format!("TDX collateral from {url} refused: {e}"))?;
        tracing::info!(%fmspc, source = %url, "fetched TDX collateral");
        Ok(TdxEntry {
            fmspc: fmspc.to_string(),
            source: url.clone(),
            fetched_at: now,
            collateral: c,
            probe_quote: probe.to_vec(),
        })
    }

    fn in_retry_pause(&self, fmspc: &str, now: u64) -> Option<String> {
        let state = self.state();
        let (at, why) = state
            .tdx
            .get(fmspc)
            .and_then(|s| s.last_error.as_ref())
            .or_else(|| state.missing.get(fmspc))?;
        let until = at.saturating_add(self.cfg.retry_secs);
        (now < until).then(|| format!("{why} (not retried before {until}, retry_secs = {})", self.cfg.retry_secs))
    }

    fn tdx_fresh(&self, fmspc: &str, now: u64) -> bool {
        let state = self.state();
        state.tdx.get(fmspc).is_some_and(|s| {
            now >= s.facts.not_before
                && now < s.facts.expires_at
                && now < self.refresh_at(s.entry.fetched_at, &s.facts)
        })
    }

    /// Takes the replicas' shared copy when it is newer than ours and checks out.
    async fn adopt_shared_tdx(&self, key: &str, fmspc: &str, probe: &[u8], now: u64) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let bytes = match shared.get(key).await {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(%key, error = %e, "shared collateral cache unreachable");
                return false;
            }
        };
        let Ok(entry) = serde_json::from_slice::<TdxEntry>(&bytes) else {
            tracing::warn!(%key, "shared collateral cache holds an unreadable entry; ignoring it");
            return false;
        };
        let ours = self.state().tdx.get(fmspc).map(|s| s.entry.fetched_at);
        if entry.fmspc != fmspc || ours.is_some_and(|t| t >= entry.fetched_at) {
            return false;
        }
        match validate_tdx(&entry.collateral, fmspc, probe, &self.root_ca, now) {
            Ok(f) if now < self.refresh_at(entry.fetched_at, &f) => {
                tracing::info!(%fmspc, source = %entry.source, "took TDX collateral another replica fetched");
                let entry = TdxEntry {
                    probe_quote: probe.to_vec(),
                    ..entry
                };
                self.store_tdx(entry);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(%fmspc, error = %e, "TDX collateral in the shared cache refused");
                false
            }
        }
    }

    async fn elect(
        &self,
        shared: &dyn SharedCollateral,
        key: &str,
        fmspc: &str,
        probe: &[u8],
        now: u64,
        force: bool,
    ) -> Result<Election, String> {
        // Four requests per fetch, each bounded by the timeout.
        let hold = self.cfg.timeout().saturating_mul(4) + Duration::from_secs(5);
        let ttl_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            match shared.try_lock(key, ttl_ms).await {
                Ok(Some(token)) => {
                    // The previous holder may have shared its result just before letting go.
                    if !force && self.adopt_shared_tdx(key, fmspc, probe, now).await {
                        let _ = shared.unlock(key, &token).await;
                        return Ok(Election::Adopted);
                    }
                    return Ok(Election::Fetcher(Some(token)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%key, error = %e, "shared collateral lock unavailable: fetching without it");
                    return Ok(Election::Fetcher(None));
                }
            }
            if !force && self.adopt_shared_tdx(key, fmspc, probe, now).await {
                return Ok(Election::Adopted);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "another replica holds the fetch of {key} and produced nothing within {hold:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn put_shared<T: Serialize>(&self, key: &str, entry: &T, _now: u64) {
        let Some(shared) = &self.shared else { return };
        let Ok(bytes) = serde_json::to_vec(entry) else { return };
        // Long enough to outlive the entry's use; every reader checks dates itself.
        if let Err(e) = shared.put(key, &bytes, 90 * 86_400).await {
            tracing::warn!(%key, error = %e, "could not share collateral with the other replicas");
        }
    }

    fn store_tdx(&self, entry: TdxEntry) {
        let facts = match tdx_facts(&entry.collateral) {
            Ok((f, _)) => f,
            Err(e) => {
                tracing::error!(fmspc = %entry.fmspc, error = %e, "collateral checked but its dates do not parse; not stored");
                return;
            }
        };
        self.save_disk(&format!("tdx-{}.json", entry.fmspc), &entry);
        let mut state = self.state();
        state.missing.remove(&entry.fmspc);
        state.tdx.insert(
            entry.fmspc.clone(),
            TdxSlot {
                entry,
                facts,
                last_error: None,
                failures: 0,
            },
        );
    }

    fn record_tdx_failure(&self, fmspc: &str, now: u64, why: &str) {
        let mut state = self.state();
        match state.tdx.get_mut(fmspc) {
            Some(slot) => {
                slot.failures += 1;
                slot.last_error = Some((now, why.to_string()));
                if now < slot.facts.expires_at {
                    tracing::warn!(%fmspc, expires_at = slot.facts.expires_at, error = %why, "refreshing TDX collateral failed: the cached copy stays in use until it expires");
                } else {
                    tracing::error!(%fmspc, error = %why, "refreshing TDX collateral failed and the cached copy has expired: TDX workers on this platform are refused");
                }
            }
            None => {
                state.missing.insert(fmspc.to_string(), (now, why.to_string()));
                tracing::warn!(%fmspc, error = %why, "fetching TDX collateral failed");
            }
        }
    }

    // ------------------------------------------------------------------ SEV-SNP

    /// The VCEK for an SEV-SNP report: the worker's (checked by the verifier like any other),
    /// else the cached one for this chip and TCB, else AMD KDS's.
    pub async fn snp_vcek(
        &self,
        raw_report: &[u8],
        attached: &[u8],
        products: &[SnpProduct],
        now: u64,
    ) -> Result<(Vec<u8>, CollateralUsed), AttestationError> {
        let report = snp::parse_report(raw_report)?;
        snp::check_signing_key(&report)?;
        let chip = format!("chip {}", hex::encode(&report.chip_id[..8]));
        if !attached.is_empty() {
            let not_after = vcek_not_after(attached).unwrap_or(0);
            return Ok((
                attached.to_vec(),
                CollateralUsed {
                    kind: TeeKind::SevSnp,
                    id: chip,
                    source: ATTACHED.into(),
                    fetched_at: None,
                    next_update: not_after,
                    expires_at: not_after,
                    tcb_evaluation_data_number: None,
                    state: Freshness::Fresh,
                },
            ));
        }
        let candidates: Vec<SnpProduct> = match snp::product_hint(&report) {
            Some(p) => vec![p],
            None => products.to_vec(),
        };
        let used = |e: &SnpEntry| CollateralUsed {
            kind: TeeKind::SevSnp,
            id: e.key.clone(),
            source: e.source.clone(),
            fetched_at: Some(e.fetched_at),
            next_update: e.not_after,
            expires_at: e.not_after,
            tcb_evaluation_data_number: None,
            state: if now < e.not_after {
                Freshness::Fresh
            } else {
                Freshness::Expired { what: "VCEK".into() }
            },
        };
        let keys: Vec<String> = candidates.iter().map(|p| snp_key(*p, &report)).collect();
        if let Some(e) = self.snp_cached(&keys) {
            return Ok((e.vcek.clone(), used(&e)));
        }
        let lock = self.key_lock(&format!("snp:{chip}"));
        let _one_at_a_time = lock.lock().await;
        if let Some(e) = self.snp_cached(&keys) {
            return Ok((e.vcek.clone(), used(&e)));
        }
        let mut errors = Vec::new();
        for (product, key) in candidates.iter().zip(&keys) {
            match self.snp_fetch(*product, key, raw_report, &report, now).await {
                Ok(Some(e)) => {
                    let u = used(&e);
                    return Ok((e.vcek, u));
                }
                Ok(None) => errors.push(format!("KDS has no {product} chip with this id")),
                Err(e) => errors.push(e),
            }
        }
        if candidates.is_empty() {
            errors.push("no SEV-SNP product line is allowed to ask KDS for".into());
        }
        Err(AttestationError::CollateralUnavailable {
            kind: TeeKind::SevSnp,
            id: chip,
            detail: errors.join("; "),
        })
    }

    fn snp_cached(&self, keys: &[String]) -> Option<SnpEntry> {
        let state = self.state();
        keys.iter().find_map(|k| state.snp.get(k).cloned())
    }

    /// One product line: shared cache, else KDS. `Ok(None)`: KDS does not know the chip.
    async fn snp_fetch(
        &self,
        product: SnpProduct,
        key: &str,
        raw_report: &[u8],
        report: &sev::firmware::guest::AttestationReport,
        now: u64,
    ) -> Result<Option<SnpEntry>, String> {
        let shared_key = format!("snp:{key}");
        let check = |vcek: &[u8]| {
            snp::verify(
                &SnpEvidence {
                    report: raw_report.to_vec(),
                    vcek: vcek.to_vec(),
                },
                now,
            )
            .map_err(|e| format!("{e} ({})", e.rule()))
        };
        let mut token = None;
        if let Some(shared) = &self.shared {
            let hold = self.cfg.timeout() + Duration::from_secs(5);
            let deadline = tokio::time::Instant::now() + hold;
            let adopt = || async {
                let bytes = shared.get(&shared_key).await.ok().flatten()?;
                let e = serde_json::from_slice::<SnpEntry>(&bytes).ok()?;
                check(&e.vcek).is_ok().then_some(e)
            };
            loop {
                if let Some(e) = adopt().await {
                    self.store_snp(e.clone());
                    return Ok(Some(e));
                }
                match shared.try_lock(&shared_key, u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)).await {
                    Ok(Some(t)) => {
                        // The previous holder may have shared its result just before letting go.
                        if let Some(e) = adopt().await {
                            let _ = shared.unlock(&shared_key, &t).await;
                            self.store_snp(e.clone());
                            return Ok(Some(e));
                        }
                        token = Some(t);
                        break;
                    }
                    Ok(None) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Ok(None) => return Err(format!("another replica holds the fetch of {shared_key} and produced nothing within {hold:?}")),
                    Err(_) => break,
                }
            }
        }
        let url = kds::vcek_url(&self.cfg.kds_url, product, report);
        let result = match kds::fetch_vcek(&self.http, &url).await {
            Ok(kds::VcekAnswer::NotFound) => Ok(None),
            Ok(kds::VcekAnswer::Der(der)) => match check(&der) {
                Ok(claims) => Ok(Some(SnpEntry {
                    key: key.to_string(),
                    product,
                    source: self.cfg.kds_url.clone(),
                    fetched_at: now,
                    vcek: der,
                    not_after: claims.valid_until,
                })),
                Err(e) => Err(format!("VCEK from {url} refused: {e}")),
            },
            Err(e) => Err(e),
        };
        if let (Some(shared), Some(t)) = (&self.shared, &token) {
            if let Ok(Some(e)) = &result {
                self.put_shared(&shared_key, e, now).await;
            }
            let _ = shared.unlock(&shared_key, t).await;
        }
        if let Ok(Some(e)) = &result {
            tracing::info!(key = %e.key, source = %e.source, "fetched SEV-SNP VCEK");
            self.store_snp(e.clone());
        }
        result
    }

    fn store_snp(&self, e: SnpEntry) {
        self.save_disk(&format!("snp-{}.json", e.key), &e);
        self.state().snp.insert(e.key.clone(), e);
    }

    // ------------------------------------------------------------------ refresh and status

    /// Refreshes every TDX entry that is due (and not in its retry pause). Returns, per FMSPC
    /// tried, the outcome. Call it every `check_interval_secs`.
    pub async fn refresh_due(&self, now: u64) -> Vec<(String, Result<(), String>)> {
        let due: Vec<(String, Vec<u8>)> = {
            let state = self.state();
            state
                .tdx
                .values()
                .filter(|s| now >= self.refresh_at(s.entry.fetched_at, &s.facts))
                .filter(|s| {
                    s.last_error
                        .as_ref()
                        .is_none_or(|(at, _)| now >= at.saturating_add(self.cfg.retry_secs))
                })
                .map(|s| (s.entry.fmspc.clone(), s.entry.probe_quote.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for (fmspc, probe) in due {
            let r = self.refresh_tdx(&fmspc, &probe, now, false).await;
            out.push((fmspc, r));
        }
        out
    }

    /// Refreshes every cached TDX entry now (`cocoon attest collateral refresh`).
    pub async fn refresh_all(&self, now: u64) -> Vec<(String, Result<(), String>)> {
        let all: Vec<(String, Vec<u8>)> = {
            let state = self.state();
            state
                .tdx
                .values()
                .map(|s| (s.entry.fmspc.clone(), s.entry.probe_quote.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for (fmspc, probe) in all {
            let r = self.refresh_tdx(&fmspc, &probe, now, true).await;
            out.push((fmspc, r));
        }
        out
    }

    fn slot_status(&self, s: &TdxSlot, now: u64) -> CollateralStatus {
        let f = s.facts;
        let refresh_at = self.refresh_at(s.entry.fetched_at, &f);
        let state = if now >= f.expires_at {
            let what = collateral_validity(&s.entry.collateral)
                .ok()
                .and_then(|items| items.into_iter().filter(|i| now >= i.not_after).min_by_key(|i| i.not_after))
                .map(|i| i.what)
                .unwrap_or_else(|| "collateral".into());
            Freshness::Expired { what }
        } else if s.last_error.is_some() {
            Freshness::Stale
        } else if now >= refresh_at {
            Freshness::RefreshDue
        } else {
            Freshness::Fresh
        };
        CollateralStatus {
            kind: TeeKind::Tdx,
            id: format!("FMSPC {}", s.entry.fmspc),
            source: s.entry.source.clone(),
            fetched_at: s.entry.fetched_at,
            next_update: f.next_update,
            expires_at: f.expires_at,
            refresh_at,
            tcb_evaluation_data_number: Some(f.eval),
            state,
            last_error: s.last_error.as_ref().map(|(_, e)| e.clone()),
            failures: s.failures,
        }
    }

    /// Every cached entry at `now`, TDX first.
    pub fn status(&self, now: u64) -> Vec<CollateralStatus> {
        let state = self.state();
        let mut out: Vec<CollateralStatus> = state.tdx.values().map(|s| self.slot_status(s, now)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let mut snp: Vec<CollateralStatus> = state
            .snp
            .values()
            .map(|e| CollateralStatus {
                kind: TeeKind::SevSnp,
                id: e.key.clone(),
                source: e.source.clone(),
                fetched_at: e.fetched_at,
                next_update: e.not_after,
                expires_at: e.not_after,
                refresh_at: e.not_after,
                tcb_evaluation_data_number: None,
                state: if now < e.not_after {
                    Freshness::Fresh
                } else {
                    Freshness::Expired { what: "VCEK".into() }
                },
                last_error: None,
                failures: 0,
            })
            .collect();
        snp.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(snp);
        out
    }

    /// Fetches collateral for this evidence now, even if cached (`cocoon attest collateral
    /// fetch`).
    pub async fn fetch_for(&self, evidence: &Evidence, products: &[SnpProduct], now: u64) -> Result<(), String> {
        match evidence {
            Evidence::Tdx(ev) => {
                let quote = tdx::parse_quote(&ev.quote).map_err(|e| e.to_string())?;
                let fmspc = hex::encode_upper(tdx::quote_fmspc(&quote).map_err(|e| e.to_string())?);
                self.refresh_tdx(&fmspc, &ev.quote, now, true).await
            }
            Evidence::SevSnp(ev) => self
                .snp_vcek(&ev.report, &[], products, now)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Evidence::Simulated(_) => Err("simulated evidence needs no collateral".into()),
        }
    }

    // ------------------------------------------------------------------ disk

    fn save_disk<T: Serialize>(&self, name: &str, value: &T) {
        let Some(dir) = &self.cfg.cache_dir else { return };
        if let Err(e) = write_atomic(dir, name, value) {
            tracing::warn!(dir = %dir.display(), %name, error = %e, "could not write the collateral disk cache");
        }
    }

    fn load_disk(&self) -> Result<(), String> {
        let Some(dir) = &self.cfg.cache_dir else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(|e| format!("creating the collateral cache {}: {e}", dir.display()))?;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("reading the collateral cache {}: {e}", dir.display()))?;
        for item in entries.flatten() {
            let path = item.path();
            let name = item.file_name().to_string_lossy().to_string();
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if name.starts_with("tdx-") && name.ends_with(".json") {
                match serde_json::from_slice::<TdxEntry>(&bytes) {
                    Ok(e) => match tdx_facts(&e.collateral) {
                        Ok((facts, _)) => {
                            self.state().tdx.insert(
                                e.fmspc.clone(),
                                TdxSlot {
                                    entry: e,
                                    facts,
                                    last_error: None,
                                    failures: 0,
                                },
                            );
                        }
                        Err(err) => tracing::warn!(path = %path.display(), error = %err, "skipping a collateral cache file"),
                    },
                    Err(err) => tracing::warn!(path = %path.display(), error = %err, "skipping a collateral cache file"),
                }
            } else if name.starts_with("snp-") && name.ends_with(".json") {
                match serde_json::from_slice::<SnpEntry>(&bytes) {
                    Ok(e) => {
                        self.state().snp.insert(e.key.clone(), e);
                    }
                    Err(err) => tracing::warn!(path = %path.display(), error = %err, "skipping a collateral cache file"),
                }
            }
        }
        Ok(())
    }
}

enum Election {
    /// We fetch; the token releases the shared lock (none without a shared lock).
    Fetcher(Option<String>),
    /// Another replica fetched meanwhile and its copy checked out.
    Adopted,
}

fn vcek_not_after(der: &[u8]) -> Option<u64> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
}

/// Writes `dir/name` through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, json).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// `2025-07-19T10:00:35Z` for a unix time (the number itself if out of range).
pub fn rfc3339(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix_secs.to_string())
}
