//! What a GPU owner sees of a worker: the router's live view, plus when it was last seen once
//! it has gone (the router forgets a worker the moment its link drops).
//!
//! A tracker samples `Router::snapshot()` every second and remembers each worker's last
//! snapshot and when it was last connected. It knows the workers linked to this replica
//! (with several replicas a worker links to each of them, `worker.router_urls`).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use router::{Router, WorkerSnapshot};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How often the tracker samples the router.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Seen {
    snapshot: WorkerSnapshot,
    last_seen_ms: i64,
}

#[derive(Default)]
pub struct WorkerTracker {
    seen: RwLock<HashMap<String, Seen>>,
}

/// A worker's state as the dashboard shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerHealth {
    /// Linked, attested, its engine healthy and its circuit closed: it takes jobs.
    Up,
    /// Linked but not taking jobs: engine unhealthy, circuit open after failures, or its
    /// attestation past expiry.
    Degraded,
    /// Was linked, is not now.
    Down,
    /// Never linked to this gateway since it started.
    Unknown,
}

/// One worker, live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerStatus {
    pub worker_id: String,
    pub health: WorkerHealth,
    /// Linked now and its evidence verified and unexpired.
    pub attested: bool,
    /// `tdx`, `sev-snp` or `simulated` (last known).
    pub tee: Option<String>,
    /// The simulated TEE: no hardware protects its jobs (dev only).
    pub insecure_simulated: bool,
    /// MRTD (TDX, simulated) or SEV-SNP measurement, hex (last known).
    pub measurement: Option<String>,
    /// Unix seconds when its attestation must be renewed.
    pub attestation_expires_at: Option<u64>,
    pub models: Vec<String>,
    /// Jobs it runs at once at most.
    pub slots: u32,
    /// Jobs running now (from every gateway replica).
    pub running: u32,
    /// Requests waiting in the engine's own queue, where it reports them.
    pub queued: u32,
    /// `running / slots` in percent.
    pub load_percent: u32,
    pub engine_slots_busy: Option<u32>,
    pub engine_slots_total: Option<u32>,
    pub kv_cache_permille: Option<u16>,
    /// Opened after consecutive failures: no jobs until a probe succeeds.
    pub circuit_open: bool,
    /// Time to first token, exponentially averaged, milliseconds.
    pub ttft_ms: Option<u64>,
    /// Unix milliseconds when it was last seen linked (now, when it is).
    pub last_seen_ms: Option<i64>,
}

impl WorkerTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Samples `router` every [`SAMPLE_EVERY`] until `stop`.
    pub fn spawn(self: &Arc<Self>, router: Router, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.sample(&router.snapshot()),
                    () = stop.cancelled() => return,
                }
            }
        })
    }

    /// Records the workers linked now.
    pub fn sample(&self, snapshot: &[WorkerSnapshot]) {
        self.record(snapshot, now_ms());
    }

    fn record(&self, snapshot: &[WorkerSnapshot], now: i64) {
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for w in snapshot {
            seen.insert(
                w.worker_id.clone(),
                Seen {
                    snapshot: w.clone(),
                    last_seen_ms: now,
                },
            );
        }
    }

    /// The status of `worker_id` given the router's current `live` snapshot.
    pub fn status(&self, worker_id: &str, live: &[WorkerSnapshot]) -> WorkerStatus {
        if let Some(w) = live.iter().find(|w| w.worker_id == worker_id) {
            // One clock reading: the time shown is the time kept, so a worker that goes
            // down later shows the same last-seen time it showed while up.
            let now = now_ms();
            self.record(std::slice::from_ref(w), now);
            return view(w, true, Some(now));
        }
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        match seen.get(worker_id) {
            Some(s) => view(&s.snapshot, false, Some(s.last_seen_ms)),
            None => WorkerStatus {
                worker_id: worker_id.to_owned(),
                health: WorkerHealth::Unknown,
                attested: false,
                tee: None,
                insecure_simulated: false,
                measurement: None,
                attestation_expires_at: None,
                models: Vec::new(),
                slots: 0,
                running: 0,
                queued: 0,
                load_percent: 0,
                engine_slots_busy: None,
                engine_slots_total: None,
                kv_cache_permille: None,
                circuit_open: false,
                ttft_ms: None,
                last_seen_ms: None,
            },
        }
    }
}

fn view(w: &WorkerSnapshot, linked: bool, last_seen_ms: Option<i64>) -> WorkerStatus {
    let now_secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let attested = linked && w.attestation_expires_at > now_secs;
    let health = if !linked {
        WorkerHealth::Down
    } else if w.available && !w.circuit_open && attested {
        WorkerHealth::Up
    } else {
        WorkerHealth::Degraded
    };
    let running = if linked { w.running.saturating_add(w.remote_running) } else { 0 };
    let load_percent = running.saturating_mul(100).checked_div(w.slots).unwrap_or(0);
    WorkerStatus {
        worker_id: w.worker_id.clone(),
        health,
        attested,
        tee: Some(w.tee.clone()),
        insecure_simulated: w.insecure_simulated,
        measurement: (!w.measurement.is_empty()).then(|| w.measurement.clone()),
        attestation_expires_at: Some(w.attestation_expires_at),
        models: w.models.clone(),
        slots: w.slots,
        running,
        queued: if linked { w.last_load.queued } else { 0 },
        load_percent,
        engine_slots_busy: w.last_load.engine_slots_busy.filter(|_| linked),
        engine_slots_total: w.last_load.engine_slots_total,
        kv_cache_permille: w.last_load.kv_cache_permille.filter(|_| linked),
        circuit_open: w.circuit_open,
        ttft_ms: (w.ewma_ttft_us > 0).then_some(w.ewma_ttft_us / 1000),
        last_seen_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str) -> WorkerSnapshot {
        WorkerSnapshot {
            model_weights: Vec::new(),
            worker_id: id.into(),
            models: vec!["m".into()],
            running: 1,
            remote_running: 1,
            slots: 4,
            available: true,
            circuit_open: false,
            ewma_ttft_us: 12_000,
            tee: "simulated".into(),
            insecure_simulated: true,
            attestation_expires_at: u64::MAX,
            measurement: "ab".repeat(48),
            last_load: protocol::Load::default(),
        }
    }

    #[test]
    fn up_then_down_with_last_seen() {
        let t = WorkerTracker::new();
        assert_eq!(t.status("w", &[]).health, WorkerHealth::Unknown);
        let up = t.status("w", &[snap("w")]);
        assert_eq!((up.health, up.attested, up.running, up.load_percent, up.ttft_ms), (WorkerHealth::Up, true, 2, 50, Some(12)));
        let down = t.status("w", &[]);
        assert_eq!(down.health, WorkerHealth::Down);
        assert!(!down.attested);
        assert_eq!(down.running, 0);
        assert_eq!(down.last_seen_ms, up.last_seen_ms.map(|t| t.max(down.last_seen_ms.unwrap_or(0))));
        assert_eq!(down.measurement, up.measurement);
        let mut sick = snap("w");
        sick.circuit_open = true;
        assert_eq!(t.status("w", &[sick]).health, WorkerHealth::Degraded);
    }
}
