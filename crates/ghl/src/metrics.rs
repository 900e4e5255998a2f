//! Counters the service exports: responses by status, retries, rate-limit waits, refreshes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::Origin;

/// An attempt about to go out, after any rate-limit wait.
#[derive(Debug, Clone, Copy)]
pub struct Sending<'a> {
    /// The location (or company) whose budget it spends.
    pub location: &'a str,
    pub origin: &'a Origin,
    /// The location's requests today (this one included) and its daily budget.
    pub daily_used: u32,
    pub daily_max: u32,
}

/// Hooks the client calls; every method has a no-op default.
pub trait Observer: Send + Sync + 'static {
    /// An attempt is about to go out.
    fn sending(&self, _s: &Sending<'_>) {}
    /// A response arrived (any status, including errors and 429s).
    fn response(&self, _status: u16) {}
    /// An attempt failed without a response (timeout, connection error).
    fn transport_error(&self) {}
    /// An attempt is about to be repeated after `_delay`.
    fn retry(&self, _delay: Duration) {}
    /// A caller waited `_wait` for the rate limiter before sending.
    fn rate_limit_wait(&self, _wait: Duration) {}
    /// An OAuth refresh (or location-token exchange) for the account of `_resource` (its
    /// location or company) was sent to GHL. Token requests are not charged to a location's
    /// API budget.
    fn token_refresh(&self, _resource: &str) {}
}

/// An [`Observer`] made of atomic counters.
#[derive(Debug)]
pub struct Counters {
    /// Index = status / 100 (1xx..5xx); index 0 counts anything outside 100..600.
    by_class: [AtomicU64; 6],
    too_many: AtomicU64,
    transport_errors: AtomicU64,
    retries: AtomicU64,
    rate_limit_waits: AtomicU64,
    rate_limit_wait_micros: AtomicU64,
    refreshes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            by_class: Default::default(),
            too_many: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limit_waits: AtomicU64::new(0),
            rate_limit_wait_micros: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Responses per status class: `[other, 1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses_by_class: [u64; 6],
    pub responses_429: u64,
    pub transport_errors: u64,
    pub retries: u64,
    pub rate_limit_waits: u64,
    pub rate_limit_wait_total: Duration,
    pub token_refreshes: u64,
}

impl CountersSnapshot {
    pub fn responses(&self) -> u64 {
        self.responses_by_class.iter().sum()
    }
}

impl Counters {
    pub fn new() -> Self {
        Counters::default()
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut responses_by_class = [0; 6];
        for (out, a) in responses_by_class.iter_mut().zip(&self.by_class) {
            *out = get(a);
        }
        CountersSnapshot {
            responses_by_class,
            responses_429: get(&self.too_many),
            transport_errors: get(&self.transport_errors),
            retries: get(&self.retries),
            rate_limit_waits: get(&self.rate_limit_waits),
            rate_limit_wait_total: Duration::from_micros(get(&self.rate_limit_wait_micros)),
            token_refreshes: get(&self.refreshes),
        }
    }
}

impl Observer for Counters {
    fn response(&self, status: u16) {
        let class = usize::from(status / 100);
        let idx = if (1..=5).contains(&class) { class } else { 0 };
        self.by_class[idx].fetch_add(1, Ordering::Relaxed);
        if status == 429 {
            self.too_many.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn transport_error(&self) {
        self.transport_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn retry(&self, _delay: Duration) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    fn rate_limit_wait(&self, wait: Duration) {
        self.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.rate_limit_wait_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn token_refresh(&self, _resource: &str) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forwards to several observers (the service's exporter and a test's counters).
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn sending(&self, s: &Sending<'_>) {
        self.0.sending(s);
        self.1.sending(s);
    }
    fn response(&self, s: u16) {
        self.0.response(s);
        self.1.response(s);
    }
    fn transport_error(&self) {
        self.0.transport_error();
        self.1.transport_error();
    }
    fn retry(&self, d: Duration) {
        self.0.retry(d);
        self.1.retry(d);
    }
    fn rate_limit_wait(&self, d: Duration) {
        self.0.rate_limit_wait(d);
        self.1.rate_limit_wait(d);
    }
    fn token_refresh(&self, r: &str) {
        self.0.token_refresh(r);
        self.1.token_refresh(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class() {
        let c = Counters::new();
        for s in [200, 201, 404, 429, 500, 503, 0, 999] {
            c.response(s);
        }
        c.retry(Duration::from_millis(1));
        c.rate_limit_wait(Duration::from_millis(3));
        c.rate_limit_wait(Duration::from_millis(4));
        let s = c.snapshot();
        assert_eq!(s.responses_by_class, [2, 0, 2, 0, 2, 2]);
        assert_eq!(s.responses_429, 1);
        assert_eq!(s.retries, 1);
        assert_eq!(s.rate_limit_waits, 2);
        assert_eq!(s.rate_limit_wait_total, Duration::from_millis(7));
        assert_eq!(s.responses(), 8);
    }
}
