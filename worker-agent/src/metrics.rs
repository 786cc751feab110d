//! The worker's own Prometheus metrics, served on loopback (`worker.metrics_listen`).
//!
//! Plain atomics per worker rather than the global `metrics` recorder: `cocoon dev` runs the
//! gateway (which owns the global recorder) and a worker in one process, and tests run several
//! workers in one process; each worker's numbers must stay its own. Nothing here carries
//! request content: counts and states only.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// How a job ended, for the `cocoon_worker_jobs_total{outcome}` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Ended with the engine's full answer (`Response` or `Done`).
    Completed,
    /// Ended with `Failed` (engine error, unreachable engine, cut stream).
    Failed,
    /// Stopped before its end (client cancel, drain timeout, link loss).
    Cancelled,
}

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// 1 while the supervised engine is healthy and serving (an unsupervised engine reports 1).
    engine_up: AtomicI64,
    /// Engine processes spawned, the first included.
    engine_starts: AtomicU64,
    /// Restarts after the engine exited, hung or never became healthy.
    engine_restarts: AtomicU64,
    /// Engine starts that used a start-up fallback after a crash (e.g. `--no-repack`).
    engine_fallbacks: AtomicU64,
    /// Engines the progress watchdog found hung and restarted.
    engine_hangs: AtomicU64,
    /// Kind, version and parallelism of the engine, once known.
    engine_info: std::sync::Mutex<Option<(String, String, Option<u32>)>>,
    jobs_running: AtomicI64,
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    jobs_cancelled: AtomicU64,
}

impl WorkerMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_engine_up(&self, up: bool) {
        self.engine_up.store(i64::from(up), Ordering::Relaxed);
    }
    pub fn engine_up(&self) -> bool {
        self.engine_up.load(Ordering::Relaxed) == 1
    }
    pub fn engine_started(&self) {
        self.engine_starts.fetch_add(1, Ordering::Relaxed);
    }
    pub fn engine_restarted(&self) {
        self.engine_restarts.fetch_add(1, Ordering::Relaxed);
    }
    pub fn engine_fallback_used(&self) {
        self.engine_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    pub fn engine_fallbacks(&self) -> u64 {
        self.engine_fallbacks.load(Ordering::Relaxed)
    }
    pub fn engine_hang_detected(&self) {
        self.engine_hangs.fetch_add(1, Ordering::Relaxed);
    }
    pub fn engine_hangs(&self) -> u64 {
        self.engine_hangs.load(Ordering::Relaxed)
    }
    /// What the engine reported about itself (vLLM `GET /version`, llama-server `/props`).
    pub fn set_engine_info(&self, kind: &str, version: &str, parallelism: Option<u32>) {
        *self.engine_info.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((kind.to_string(), version.to_string(), parallelism));
    }
    pub fn engine_starts(&self) -> u64 {
        self.engine_starts.load(Ordering::Relaxed)
    }
    pub fn engine_restarts(&self) -> u64 {
        self.engine_restarts.load(Ordering::Relaxed)
    }

    /// Counts a job as running until the returned guard is dropped; dropping it without
    /// [`JobGuard::finish`] (the job task was aborted) counts the job as cancelled.
    pub fn job_started(self: &Arc<Self>) -> JobGuard {
        self.jobs_running.fetch_add(1, Ordering::Relaxed);
        JobGuard {
            metrics: self.clone(),
            outcome: JobOutcome::Cancelled,
        }
    }

    pub fn jobs(&self, outcome: JobOutcome) -> u64 {
        match outcome {
            JobOutcome::Completed => &self.jobs_completed,
            JobOutcome::Failed => &self.jobs_failed,
            JobOutcome::Cancelled => &self.jobs_cancelled,
        }
        .load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, worker_id: &str) -> String {
        let id = escape_label(worker_id);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let sep = if labels.is_empty() { "" } else { "," };
                let _ = writeln!(out, "{name}{{worker_id=\"{id}\"{sep}{labels}}} {value}");
            }
        };
        let load_u = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "cocoon_worker_engine_up",
            "gauge",
            "1 while the inference engine is healthy and serving.",
            &[("", self.engine_up.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "cocoon_worker_engine_starts_total",
            "counter",
            "Engine processes started by the supervisor.",
            &[("", load_u(&self.engine_starts))],
        );
        metric(
            "cocoon_worker_engine_restarts_total",
            "counter",
            "Engine restarts after a crash, a hang or a failed start.",
            &[("", load_u(&self.engine_restarts))],
        );
        metric(
            "cocoon_worker_engine_fallbacks_total",
            "counter",
            "Engine starts with a start-up fallback (e.g. --no-repack) after a start-up crash.",
            &[("", load_u(&self.engine_fallbacks))],
        );
        metric(
            "cocoon_worker_engine_hangs_total",
            "counter",
            "Engines restarted because requests ran while their token counters stayed flat.",
            &[("", load_u(&self.engine_hangs))],
        );
        let info = self.engine_info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((kind, version, parallelism)) = info {
            metric(
                "cocoon_worker_engine_info",
                "gauge",
                "The engine's kind and version (vLLM GET /version, llama-server build).",
                &[(
                    &format!("kind=\"{}\",version=\"{}\"", escape_label(&kind), escape_label(&version)),
                    "1".to_string(),
                )],
            );
            if let Some(p) = parallelism {
                metric(
                    "cocoon_worker_engine_parallelism",
                    "gauge",
                    "Sequences the engine runs at once (vLLM --max-num-seqs, llama-server slots).",
                    &[("", p.to_string())],
                );
            }
        }
        metric(
            "cocoon_worker_jobs_running",
            "gauge",
            "Jobs running on the engine now.",
            &[("", self.jobs_running.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "cocoon_worker_jobs_total",
            "counter",
            "Jobs finished, by outcome.",
            &[
                ("outcome=\"completed\"", load_u(&self.jobs_completed)),
                ("outcome=\"failed\"", load_u(&self.jobs_failed)),
                ("outcome=\"cancelled\"", load_u(&self.jobs_cancelled)),
            ],
        );
        out
    }
}

/// See [`WorkerMetrics::job_started`].
pub struct JobGuard {
    metrics: Arc<WorkerMetrics>,
    outcome: JobOutcome,
}

impl JobGuard {
    pub fn finish(mut self, outcome: JobOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.jobs_running.fetch_sub(1, Ordering::Relaxed);
        match self.outcome {
            JobOutcome::Completed => &m.jobs_completed,
            JobOutcome::Failed => &m.jobs_failed,
            JobOutcome::Cancelled => &m.jobs_cancelled,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` until `shutdown`. Meant for loopback: the numbers say nothing about
/// requests' content, but the endpoint has no auth.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<WorkerMetrics>,
    worker_id: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let body = metrics.render(&worker_id);
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds `listen` (e.g. `127.0.0.1:9464`, port 0 picks one) and serves in the background.
pub async fn spawn(
    listen: &str,
    metrics: Arc<WorkerMetrics>,
    worker_id: String,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, metrics, worker_id, async move {
        shutdown.cancelled().await
    }));
    Ok((addr, task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn job_guard_counts_outcomes_and_aborts_as_cancelled() {
        let m = WorkerMetrics::new();
        let a = m.job_started();
        let b = m.job_started();
        let c = m.job_started();
        assert_eq!(m.jobs_running.load(Ordering::Relaxed), 3);
        a.finish(JobOutcome::Completed);
        b.finish(JobOutcome::Failed);
        drop(c); // an aborted job task drops its guard
        assert_eq!(m.jobs_running.load(Ordering::Relaxed), 0);
        assert_eq!(
            (
                m.jobs(JobOutcome::Completed),
                m.jobs(JobOutcome::Failed),
                m.jobs(JobOutcome::Cancelled)
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn serves_prometheus_text_on_loopback() {
        let m = WorkerMetrics::new();
        m.engine_started();
        m.engine_restarted();
        m.set_engine_up(true);
        m.job_started().finish(JobOutcome::Completed);
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, task) = spawn("127.0.0.1:0", m, "w\"1".into(), stop.clone()).await.unwrap();
        let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
        assert!(resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = resp.text().await.unwrap();
        for line in [
            "cocoon_worker_engine_up{worker_id=\"w\\\"1\"} 1",
            "cocoon_worker_engine_starts_total{worker_id=\"w\\\"1\"} 1",
            "cocoon_worker_engine_restarts_total{worker_id=\"w\\\"1\"} 1",
            "cocoon_worker_jobs_running{worker_id=\"w\\\"1\"} 0",
            "cocoon_worker_jobs_total{worker_id=\"w\\\"1\",outcome=\"completed\"} 1",
            "# TYPE cocoon_worker_jobs_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
