//! Group commit: the holds and captures that arrive while a commit is in flight are written
//! together in the next database transaction, so durability costs one commit (one fsync)
//! per batch instead of one per call. The argument for why this keeps exactly-once and no
//! overdraft, also with several replicas on one Postgres, is in `docs/ledger.md`.
//!
//! - Each call keeps its own checks and its own key: [`Ledger::hold_in`] and
//!   [`Ledger::capture_in`] are the same bodies the unbatched path runs, executed one after
//!   the other inside the batch's transaction, so each sees the writes of those before it
//!   (two holds on one account cannot both spend the same money; a second capture of a job
//!   finds it captured). A refusal (insufficient funds, unknown hold, ...) is decided before
//!   that call's first write, so it fails only that call and the batch goes on.
//! - A caller is answered only after the commit that contains its call.
//! - A database error anywhere (or a failed commit) rolls the batch back and answers no
//!   one: each caller then runs its call alone on the unbatched path, with its retries.
//!   Every call is idempotent by its job id, so even a commit that failed ambiguously (it
//!   did land) is then answered correctly: `AlreadyExists`, or `AlreadyCaptured` with the
//!   receipt of the batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;
use uuid::Uuid;

use super::receipts::StoredReceipt;
use super::{Backend, Ledger};
use crate::error::{Error, Result};
use crate::money::Usage;
use crate::types::{AccountId, CaptureOutcome, HoldOutcome};

/// Most calls in one transaction: bounds the time row locks are held and the statement size
/// of the up-front locks.
pub(super) const MAX_BATCH: usize = 256;

/// Committers per Postgres ledger (each batch is one transaction on its own connection).
/// More than one keeps the pipe full while a commit waits for its fsync; batches lock in one
/// global order (see [`Ledger::lock_in_order`]), so they cannot deadlock each other. SQLite
/// has one writer connection, so one committer.
const POSTGRES_COMMITTERS: usize = 2;

/// One call waiting for its batch.
pub(super) enum Op {
    Hold {
        job_id: Uuid,
        client: AccountId,
        model: String,
        amount: crate::types::HoldAmount,
        ttl_ms: i64,
        budget: Option<crate::types::KeyBudget>,
        reply: oneshot::Sender<Result<HoldOutcome>>,
    },
    Capture {
        job_id: Uuid,
        worker: AccountId,
        usage: Usage,
        coefficient: u32,
        receipt: Option<StoredReceipt>,
        reply: oneshot::Sender<Result<CaptureOutcome>>,
    },
}

/// An executed call whose answer waits for the commit.
enum Done {
    Hold(oneshot::Sender<Result<HoldOutcome>>, Result<HoldOutcome>),
    Capture(oneshot::Sender<Result<CaptureOutcome>>, Result<CaptureOutcome>),
}

/// The queue in front of the committer tasks. When the last [`Ledger`] clone holding it is
/// dropped, the channel closes and the tasks end.
#[derive(Debug)]
pub(super) struct Committer {
    queue: mpsc::UnboundedSender<Op>,
    stats: Arc<Stats>,
    /// `Some`: only calls on a contended account are batched (see [`Contention`]).
    contention: Option<Contention>,
}

/// Calls in flight on one account (this one included) from which a call is batched. Two
/// already queue on the row lock; from three on batching paid (BENCHMARKS.md).
const CONTENDED_AT: u32 = 3;

/// Most jobs [`Contention`] remembers the client of; past it the map starts over (a job it
/// forgot is only sent down the unbatched path).
const MAX_REMEMBERED_JOBS: usize = 1 << 20;

/// Which client accounts have a hold or capture in flight through this ledger, for
/// `LedgerOptions::batch_only_contended`. On Postgres calls on different accounts run in
/// parallel on their own connections, while calls on one account queue on its row lock, each
/// holding it through its own commit: batching pays only there (measured, `docs/ledger.md`).
/// So a call joins a batch when [`CONTENDED_AT`] calls on its account (itself included) are in
/// flight here, and runs alone otherwise. Only where a call goes depends on this:
/// correctness is the batch's and the single call's own (`docs/ledger.md`), whichever is
/// taken.
#[derive(Debug, Default)]
struct Contention {
    in_flight: std::sync::Mutex<std::collections::HashMap<i64, u32>>,
    /// Client account of each job held through this ledger and not yet settled here: a
    /// capture names only its job.
    jobs: std::sync::Mutex<std::collections::HashMap<Uuid, i64>>,
}

/// A call counted as in flight on its account until dropped.
pub(super) struct InFlight<'a> {
    contention: Option<(&'a Contention, i64)>,
    /// Send the call to the committer.
    pub(super) batch: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some((c, account)) = self.contention {
            let mut m = c.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&account) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&account);
                }
            }
        }
    }
}

/// Counters behind [`Ledger::group_commit_stats`].
#[derive(Debug, Default)]
pub(super) struct Stats {
    batches: AtomicU64,
    calls: AtomicU64,
    failed: AtomicU64,
}

/// What the group committer did so far (see [`Ledger::group_commit_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions committed by the committer.
    pub batches: u64,
    /// Holds and captures answered from those transactions.
    pub calls: u64,
    /// Batches rolled back on a database error, whose calls then ran alone.
    pub failed_batches: u64,
}

impl Committer {
    /// Starts the committer tasks on the current runtime. `ledger` must be a clone without
    /// a committer (the tasks would otherwise keep their own queue open forever).
    pub(super) fn start(ledger: Ledger, window: Duration) -> Committer {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(Stats::default());
        let n = match ledger.backend {
            Backend::Postgres => POSTGRES_COMMITTERS,
            Backend::Sqlite => 1,
        };
        for _ in 0..n {
            let (ledger, rx, stats) = (ledger.clone(), rx.clone(), stats.clone());
            tokio::spawn(async move {
                while let Some(batch) = gather(&rx, window).await {
                    ledger.commit_batch(batch, &stats).await;
                }
            });
        }
        Committer { queue, stats, contention: None }
    }

    /// Batch only calls on a contended account (see [`Contention`]).
    pub(super) fn batching_only_contended(mut self) -> Self {
        self.contention = Some(Contention::default());
        self
    }

    /// Counts a call on `client` (`None`: unknown, a capture of a job not held here) as in
    /// flight, and says whether it should be batched: always when every call is batched,
    /// otherwise when [`CONTENDED_AT`] calls on the same account (this one included) are in
    /// flight through this ledger.
    pub(super) fn enter(&self, client: Option<AccountId>) -> InFlight<'_> {
        let Some(c) = &self.contention else {
            return InFlight { contention: None, batch: true };
        };
        let Some(AccountId(account)) = client else {
            return InFlight { contention: None, batch: false };
        };
        let mut m = c.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(account).or_insert(0);
        *n += 1;
        InFlight { contention: Some((c, account)), batch: *n >= CONTENDED_AT }
    }

    /// The client of `job`, when its hold was placed through this ledger and is unsettled.
    pub(super) fn client_of(&self, job: Uuid) -> Option<AccountId> {
        let c = self.contention.as_ref()?;
        let jobs = c.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(&job).copied().map(AccountId)
    }

    /// Remembers the client of a placed hold (only when batching by contention).
    pub(super) fn placed(&self, job: Uuid, client: AccountId) {
        if let Some(c) = &self.contention {
            let mut jobs = c.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if jobs.len() >= MAX_REMEMBERED_JOBS {
                jobs.clear();
            }
            jobs.insert(job, client.0);
        }
    }

    /// Forgets a job once it is captured or released.
    pub(super) fn settled(&self, job: Uuid) {
        if let Some(c) = &self.contention {
            c.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
        }
    }

    /// Queues `op`; `false` when the committer is gone (runtime shut down), and the caller
    /// should run its call alone.
    pub(super) fn submit(&self, op: Op) -> bool {
        self.queue.send(op).is_ok()
    }

    pub(super) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            calls: self.stats.calls.load(Ordering::Relaxed),
            failed_batches: self.stats.failed.load(Ordering::Relaxed),
        }
    }
}

/// The next batch: the first call to arrive, everything queued behind it, and what arrives
/// within `window` of taking the first (none when `window` is zero: then a batch is what
/// queued while the previous commit was in flight). `None`: the queue is closed.
async fn gather(rx: &Mutex<mpsc::UnboundedReceiver<Op>>, window: Duration) -> Option<Vec<Op>> {
    // Holding the receiver while gathering makes a batch contiguous; another committer
    // takes the next one meanwhile.
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let deadline = Instant::now() + window;
    let mut batch = vec![first];
    loop {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_BATCH || window.is_zero() {
            break;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(op)) => batch.push(op),
            _ => break,
        }
    }
    Some(batch)
}

/// A failure of the database rather than a refusal of the call: the batch's transaction is
/// then unusable (Postgres aborts it) and is rolled back whole.
fn is_database(e: &Error) -> bool {
    matches!(e, Error::Database(_) | Error::Migrate(_))
}

impl Ledger {
    /// The group committer's counters; `None` with group commit off.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.committer.as_ref().map(|c| c.stats())
    }

    /// Runs `batch` in one transaction and answers each call after the commit. On failure
    /// nobody is answered: the dropped reply tells each caller to run its call alone.
    async fn commit_batch(&self, mut batch: Vec<Op>, stats: &Stats) {
        // A hold whose caller is gone (request cancelled while queued) is not placed: no one
        // would settle it, and it would lock the client's money until the reaper.
        batch.retain(|op| !matches!(op, Op::Hold { reply, .. } if reply.is_closed()));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        match self.run_batch(batch).await {
            Ok(done) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.calls.fetch_add(n as u64, Ordering::Relaxed);
                for d in done {
                    // A caller gone meanwhile just misses its answer; its call is committed.
                    match d {
                        Done::Hold(reply, r) => drop(reply.send(r)),
                        Done::Capture(reply, r) => drop(reply.send(r)),
                    }
                }
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(calls = n, error = %e, "group commit failed; each call runs alone");
            }
        }
    }

    async fn run_batch(&self, batch: Vec<Op>) -> Result<Vec<Done>> {
        let mut tx = self.begin().await?;
        // A batch of one call takes its locks as that call alone does (hold before account),
        // so it needs no up-front locking (two round trips saved at low load).
        if self.backend == Backend::Postgres && batch.len() > 1 {
            self.lock_in_order(&mut tx, &batch).await?;
        }
        let mut done = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Hold { job_id, client, model, amount, ttl_ms, budget, reply } => {
                    let r = self
                        .hold_in(&mut tx, job_id, client, &model, amount, ttl_ms, budget.as_ref())
                        .await;
                    match r {
                        Err(e) if is_database(&e) => return Err(e),
                        r => done.push(Done::Hold(reply, r)),
                    }
                }
                Op::Capture { job_id, worker, usage, coefficient, receipt, reply } => {
                    let r = self
                        .capture_in(&mut tx, job_id, worker, usage, coefficient, receipt.as_ref())
                        .await;
                    match r {
                        Err(e) if is_database(&e) => return Err(e),
                        r => done.push(Done::Capture(reply, r)),
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Postgres: takes every row lock the batch will need before any call runs, in one
    /// global order — the holds being captured (by job id), then the client accounts (by
    /// id). Every unbatched write also locks a hold before its account, and several
    /// accounts in id order, so two batches (of this replica or another) and the unbatched
    /// calls never wait on each other in a cycle. The calls then re-lock rows they hold.
    async fn lock_in_order(&self, tx: &mut sqlx::AnyConnection, batch: &[Op]) -> Result<()> {
        use sqlx::Row;
        let mut jobs: Vec<String> = Vec::new();
        let mut accounts: Vec<i64> = Vec::new();
        for op in batch {
            match op {
                Op::Hold { client, .. } => accounts.push(client.0),
                Op::Capture { job_id, .. } => jobs.push(job_id.to_string()),
            }
        }
        if !jobs.is_empty() {
            jobs.sort();
            jobs.dedup();
            let sql = format!(
                "SELECT account_id FROM holds WHERE job_id IN ({}) ORDER BY job_id FOR UPDATE",
                placeholders(jobs.len())
            );
            let mut q = sqlx::query(&sql);
            for j in &jobs {
                q = q.bind(j);
            }
            for row in q.fetch_all(&mut *tx).await? {
                accounts.push(row.try_get(0)?);
            }
        }
        accounts.sort_unstable();
        accounts.dedup();
        if !accounts.is_empty() {
            let sql = format!(
                "SELECT id FROM accounts WHERE id IN ({}) ORDER BY id FOR UPDATE",
                placeholders(accounts.len())
            );
            let mut q = sqlx::query(&sql);
            for a in &accounts {
                q = q.bind(*a);
            }
            q.fetch_all(&mut *tx).await?;
        }
        Ok(())
    }
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}
