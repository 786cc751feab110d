//! Per-worker circuit breaker: closed -> open after N consecutive failures -> half-open after a
//! cool-down, letting exactly one probe through -> closed on its success, open again on failure.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Circuit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// What the breaker allows for one new job.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Admission {
    Closed,
    /// The single half-open probe; its outcome decides the circuit.
    Probe,
    Rejected,
}

impl Circuit {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                consecutive_failures: 0,
                open_until: None,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peek without taking the probe slot (for candidate filtering).
    pub(crate) fn would_admit(&self, now: Instant) -> bool {
        let s = self.lock();
        match s.open_until {
            None => true,
            Some(t) => now >= t && !s.probe_in_flight,
        }
    }

    pub(crate) fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match s.open_until {
            None => Admission::Closed,
            Some(t) if now >= t && !s.probe_in_flight => {
                s.probe_in_flight = true;
                Admission::Probe
            }
            Some(_) => Admission::Rejected,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    pub(crate) fn on_success(&self) {
        let mut s = self.lock();
        s.consecutive_failures = 0;
        s.open_until = None;
        s.probe_in_flight = false;
    }

    /// Returns true when this failure opened (or re-opened) the circuit.
    pub(crate) fn on_failure(&self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        let mut s = self.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let was_probe = s.probe_in_flight;
        s.probe_in_flight = false;
        if was_probe || s.consecutive_failures >= threshold {
            s.open_until = Some(now + open_for);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let c = Circuit::new();
        let t0 = Instant::now();
        let open = Duration::from_secs(10);
        assert!(!c.on_failure(t0, 3, open));
        assert!(!c.on_failure(t0, 3, open));
        assert!(c.on_failure(t0, 3, open));
        assert_eq!(c.admit(t0), Admission::Rejected);
        assert!(!c.would_admit(t0 + Duration::from_secs(5)));
        let later = t0 + Duration::from_secs(11);
        assert!(c.would_admit(later));
        assert_eq!(c.admit(later), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(c.admit(later), Admission::Rejected);
        c.on_success();
        assert_eq!(c.admit(later), Admission::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let c = Circuit::new();
        let t0 = Instant::now();
        let open = Duration::from_secs(1);
        c.on_failure(t0, 1, open);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(c.admit(later), Admission::Probe);
        assert!(c.on_failure(later, 1, open));
        assert_eq!(c.admit(later), Admission::Rejected);
        assert!(c.is_open());
    }

    #[test]
    fn success_resets_the_count() {
        let c = Circuit::new();
        let t0 = Instant::now();
        let open = Duration::from_secs(1);
        c.on_failure(t0, 2, open);
        c.on_success();
        assert!(!c.on_failure(t0, 2, open));
        assert_eq!(c.admit(t0), Admission::Closed);
    }
}
