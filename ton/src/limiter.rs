//! One client-side pace for every call to the TON HTTP API. toncenter allows 1 request
//! per second without an API key (more with one, per plan) and answers 429 beyond it; the
//! deposit watcher and the payout sender share one budget, so they share one limiter
//! (a [`crate::TonApi`] and its clones hold the same one).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces calls at least `1 / requests_per_sec` apart, first come first served.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    interval: Duration,
    /// The earliest moment the next call may start.
    next: Arc<Mutex<Option<Instant>>>,
}

impl RateLimiter {
    /// `requests_per_sec` must be positive and finite (the config validates it).
    pub fn new(requests_per_sec: f64) -> RateLimiter {
        let secs = if requests_per_sec.is_finite() && requests_per_sec > 0.0 {
            1.0 / requests_per_sec
        } else {
            1.0
        };
        RateLimiter {
            interval: Duration::from_secs_f64(secs),
            next: Arc::new(Mutex::new(None)),
        }
    }

    /// The spacing between two calls.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits for this call's slot. The lock is held while waiting, so callers are served
    /// in the order they asked (tokio's mutex is fair).
    pub async fn acquire(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        let start = match *next {
            Some(at) if at > now => {
                tokio::time::sleep_until(at).await;
                at
            }
            _ => now,
        };
        *next = Some(start + self.interval);
    }

    /// After a 429: the server counted a call we did not; the next slot moves one
    /// interval later.
    pub async fn penalize(&self) {
        let mut next = self.next.lock().await;
        let base = next.unwrap_or_else(Instant::now).max(Instant::now());
        *next = Some(base + self.interval);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced() {
        let l = RateLimiter::new(2.0);
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..4 {
            l.acquire().await;
            at.push(Instant::now() - t0);
        }
        assert_eq!(at, [0, 500, 1000, 1500].map(Duration::from_millis).to_vec());
        // A pause longer than the interval gives no burst afterwards beyond one call.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t1 = Instant::now();
        l.acquire().await;
        l.acquire().await;
        assert_eq!(Instant::now() - t1, Duration::from_millis(500));
        l.penalize().await;
        let t2 = Instant::now();
        l.acquire().await;
        assert_eq!(Instant::now() - t2, Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn shared_between_tasks() {
        let l = RateLimiter::new(1.0);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now() - t0
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        assert_eq!(at, [0, 1, 2].map(Duration::from_secs).to_vec());
    }
}
