//! GHL's per-location limits: a fixed burst window (100 requests / 10 s) and a daily budget
//! (200,000 / UTC day), reported in five headers on every response.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::RateLimitConfig;

#[derive(Debug, Clone, Copy)]
struct Window {
    burst_start: Instant,
    burst_used: u32,
    day: i64,
    daily_used: u32,
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub allowed: bool,
    pub daily_max: u32,
    pub daily_remaining: u32,
    pub interval_ms: u64,
    pub burst_max: u32,
    pub burst_remaining: u32,
    /// Seconds until a refused request may be retried.
    pub retry_after_s: u64,
    /// Limits are enforced; when they are not, no `X-RateLimit-*` headers are sent, so a
    /// client that follows them does not slow down for limits that do not exist.
    pub enforced: bool,
}

#[derive(Debug)]
pub struct RateLimiter {
    config: RwLock<RateLimitConfig>,
    windows: Mutex<HashMap<String, Window>>,
}

pub const H_DAILY_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit-daily");
pub const H_DAILY_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-daily-remaining");
pub const H_INTERVAL: HeaderName = HeaderName::from_static("x-ratelimit-interval-milliseconds");
pub const H_MAX: HeaderName = HeaderName::from_static("x-ratelimit-max");
pub const H_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimiter { config: RwLock::new(config), windows: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> RateLimitConfig {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_config(&self, config: RateLimitConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.reset();
    }

    pub fn reset(&self) {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// What the headers say before anything is counted (requests without a known location).
    pub fn idle(&self) -> Quota {
        let c = self.config();
        Quota {
            allowed: true,
            daily_max: c.daily_max,
            daily_remaining: c.daily_max,
            interval_ms: c.burst_interval_ms,
            burst_max: c.burst_max,
            burst_remaining: c.burst_max,
            retry_after_s: 0,
            enforced: c.enabled,
        }
    }

    /// Counts one request against `resource` (a location or company id).
    pub fn hit(&self, resource: &str) -> Quota {
        let c = self.config();
        if !c.enabled {
            return self.idle();
        }
        let now = Instant::now();
        let day = chrono::Utc::now().timestamp().div_euclid(86_400);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = match windows.get_mut(resource) {
            Some(w) => w,
            None => windows.entry(resource.to_string()).or_insert(Window {
                burst_start: now,
                burst_used: 0,
                day,
                daily_used: 0,
            }),
        };
        let interval = std::time::Duration::from_millis(c.burst_interval_ms.max(1));
        if now.duration_since(w.burst_start) >= interval {
            w.burst_start = now;
            w.burst_used = 0;
        }
        if w.day != day {
            w.day = day;
            w.daily_used = 0;
        }
        let allowed = w.burst_used < c.burst_max && w.daily_used < c.daily_max;
        if allowed {
            w.burst_used += 1;
            w.daily_used += 1;
        }
        let retry_after_s = if allowed {
            0
        } else if w.daily_used >= c.daily_max {
            let next_day_s = (day + 1) * 86_400 - chrono::Utc::now().timestamp();
            next_day_s.max(1) as u64
        } else {
            let left = interval.saturating_sub(now.duration_since(w.burst_start));
            left.as_millis().div_ceil(1000).max(1) as u64
        };
        Quota {
            allowed,
            daily_max: c.daily_max,
            daily_remaining: c.daily_max.saturating_sub(w.daily_used),
            interval_ms: c.burst_interval_ms,
            burst_max: c.burst_max,
            burst_remaining: c.burst_max.saturating_sub(w.burst_used),
            retry_after_s,
            enforced: true,
        }
    }
}

impl Quota {
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if self.enforced {
            headers.insert(H_DAILY_LIMIT, HeaderValue::from(self.daily_max));
            headers.insert(H_DAILY_REMAINING, HeaderValue::from(self.daily_remaining));
            headers.insert(H_INTERVAL, HeaderValue::from(self.interval_ms));
            headers.insert(H_MAX, HeaderValue::from(self.burst_max));
            headers.insert(H_REMAINING, HeaderValue::from(self.burst_remaining));
        }
        if !self.allowed {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(self.retry_after_s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_refused_then_daily() {
        let rl =
            RateLimiter::new(RateLimitConfig { enabled: true, burst_max: 2, burst_interval_ms: 60_000, daily_max: 10 });
        assert!(rl.hit("a").allowed);
        let q = rl.hit("a");
        assert!(q.allowed);
        assert_eq!(q.burst_remaining, 0);
        let q = rl.hit("a");
        assert!(!q.allowed);
        assert!(q.retry_after_s >= 1);
        assert!(rl.hit("b").allowed, "limits are per location");
    }
}
