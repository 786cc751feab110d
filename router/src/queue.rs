//! Waiting for a free slot: one bounded queue per model, fair across accounts, each waiter
//! with a deadline.
//!
//! Fairness: waiters are grouped by account; accounts take turns round robin, and within an
//! account waiters go first in, first out. So one client that sends a thousand requests
//! delays another client's single request by at most one turn, not by a thousand.
//!
//! Only the waiter whose turn it is tries to take a slot, so a freed slot goes to it and not
//! to whichever waiter happens to wake first. It is woken when capacity may have appeared (a
//! job ended, a worker attached or became available, another replica's load changed) and
//! also polls every [`TURN_POLL`], because capacity freed on another gateway replica is only
//! seen through the periodic fleet sync. A new request joins the queue whenever the queue of
//! its model is not empty: it never overtakes a waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How often the waiter whose turn it is looks for a slot without being woken.
pub(crate) const TURN_POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(crate) struct Queues {
    models: Mutex<HashMap<String, ModelQueue>>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct ModelQueue {
    /// Accounts with waiters, in turn order; the front account's first waiter has the turn.
    turns: VecDeque<String>,
    by_account: HashMap<String, VecDeque<u64>>,
    wakers: HashMap<u64, Arc<Notify>>,
}

impl ModelQueue {
    fn len(&self) -> usize {
        self.wakers.len()
    }

    fn turn(&self) -> Option<u64> {
        let account = self.turns.front()?;
        self.by_account.get(account)?.front().copied()
    }

    /// Removes waiter `id` of `account`; when it was served, its account goes to the back of
    /// the turn order (it had its turn).
    fn remove(&mut self, account: &str, id: u64, served: bool) {
        self.wakers.remove(&id);
        let Some(q) = self.by_account.get_mut(account) else { return };
        q.retain(|w| *w != id);
        let empty = q.is_empty();
        if empty {
            self.by_account.remove(account);
        }
        let at_front = self.turns.front().is_some_and(|a| a == account);
        if empty {
            self.turns.retain(|a| a != account);
        } else if served && at_front {
            self.turns.rotate_left(1);
        }
    }

    fn wake_turn(&self) {
        if let Some(n) = self.turn().and_then(|id| self.wakers.get(&id)) {
            n.notify_one();
        }
    }
}

/// The queue is at its limit for this model.
#[derive(Debug)]
pub(crate) struct Full {
    pub(crate) limit: usize,
}

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelQueue>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests for `model` are waiting (a new one must then queue behind them).
    pub(crate) fn has_waiters(&self, model: &str) -> bool {
        self.lock().get(model).is_some_and(|q| q.len() > 0)
    }

    pub(crate) fn waiting(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, ModelQueue::len)
    }

    /// Joins `model`'s queue for `account`, or refuses at `limit` waiters.
    pub(crate) fn join(self: &Arc<Self>, model: &str, account: &str, limit: usize) -> Result<Waiter, Full> {
        let mut models = self.lock();
        let q = models.entry(model.to_string()).or_default();
        if q.len() >= limit {
            return Err(Full { limit });
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        if !q.by_account.contains_key(account) {
            q.turns.push_back(account.to_string());
        }
        q.by_account.entry(account.to_string()).or_default().push_back(id);
        q.wakers.insert(id, notify.clone());
        metrics::gauge!("cocoon_router_queued", "model" => model.to_string()).increment(1.0);
        Ok(Waiter {
            queues: self.clone(),
            model: model.to_string(),
            account: account.to_string(),
            id,
            notify,
            done: false,
        })
    }

    /// Capacity may have appeared for `model`: wake the waiter whose turn it is.
    pub(crate) fn wake(&self, model: &str) {
        if let Some(q) = self.lock().get(model) {
            q.wake_turn();
        }
    }

    /// Wakes the turn holder of every model (a change whose models are not known, e.g. the
    /// fleet's load from other replicas).
    pub(crate) fn wake_all(&self) {
        for q in self.lock().values() {
            q.wake_turn();
        }
    }
}

/// A place in a model's queue; dropping it leaves the queue (client gone, deadline passed).
pub(crate) struct Waiter {
    queues: Arc<Queues>,
    model: String,
    account: String,
    id: u64,
    notify: Arc<Notify>,
    done: bool,
}

impl Waiter {
    pub(crate) fn is_turn(&self) -> bool {
        self.queues.lock().get(&self.model).and_then(ModelQueue::turn) == Some(self.id)
    }

    /// Resolves when woken (capacity may have appeared) or after [`TURN_POLL`].
    pub(crate) async fn woken(&self) {
        let _ = tokio::time::timeout(TURN_POLL, self.notify.notified()).await;
    }

    /// Got a slot: leaves the queue, passes the turn on, and wakes the next waiter (more
    /// than one slot may have freed).
    pub(crate) fn served(mut self) {
        self.leave(true);
    }

    fn leave(&mut self, served: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut models = self.queues.lock();
        if let Some(q) = models.get_mut(&self.model) {
            q.remove(&self.account, self.id, served);
            q.wake_turn();
            if q.len() == 0 {
                models.remove(&self.model);
            }
        }
        metrics::gauge!("cocoon_router_queued", "model" => self.model.clone()).decrement(1.0);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.leave(false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn turns_rotate_across_accounts_and_stay_fifo_within_one() {
        let q = Arc::new(Queues::default());
        let a1 = q.join("m", "a", 10).unwrap();
        let a2 = q.join("m", "a", 10).unwrap();
        let a3 = q.join("m", "a", 10).unwrap();
        let b1 = q.join("m", "b", 10).unwrap();
        assert!(a1.is_turn());
        a1.served();
        // a had its turn: b goes next although a joined first with more requests.
        assert!(b1.is_turn());
        b1.served();
        assert!(a2.is_turn() && !a3.is_turn());
        a2.served();
        assert!(a3.is_turn());
        drop(a3);
        assert!(!q.has_waiters("m"));
    }

    #[test]
    fn a_full_queue_refuses_and_leaving_frees_a_place() {
        let q = Arc::new(Queues::default());
        let w1 = q.join("m", "a", 2).unwrap();
        let _w2 = q.join("m", "b", 2).unwrap();
        assert!(q.join("m", "c", 2).is_err());
        assert_eq!(q.waiting("m"), 2);
        drop(w1);
        assert!(q.join("m", "c", 2).is_ok());
        // Other models have their own queues.
        assert!(q.join("other", "a", 2).is_ok());
    }

    #[test]
    fn a_waiter_that_gives_up_passes_the_turn() {
        let q = Arc::new(Queues::default());
        let a = q.join("m", "a", 10).unwrap();
        let b = q.join("m", "b", 10).unwrap();
        assert!(a.is_turn());
        drop(a);
        assert!(b.is_turn());
    }

    #[tokio::test]
    async fn wake_reaches_the_turn_holder() {
        let q = Arc::new(Queues::default());
        let a = q.join("m", "a", 10).unwrap();
        q.wake("m");
        // The stored permit makes this return at once rather than after TURN_POLL.
        let t = tokio::time::Instant::now();
        a.woken().await;
        assert!(t.elapsed() < TURN_POLL);
    }
}
