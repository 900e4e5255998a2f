//! Everything a request handler can reach, shared behind one `Arc`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::SandboxConfig;
use crate::faults::Faults;
use crate::handlers::HandlerFn;
use crate::ratelimit::RateLimiter;
use crate::routes::RouteTable;
use crate::store::Store;
use crate::webhooks::Emitter;

pub struct AppState {
    pub routes: RouteTable,
    /// Handler of each operation, indexed like `routes.operations`.
    pub handlers: Vec<HandlerFn>,
    pub store: Store,
    pub auth: Auth,
    pub limiter: RateLimiter,
    pub faults: Faults,
    pub log: RequestLog,
    pub webhooks: Emitter,
    pub location_id: String,
    pub company_id: String,
    /// Turns true when the sandbox stops; hanging requests wait for it.
    pub stopping: watch::Receiver<bool>,
    /// How long a write takes to show in search results (see [`SandboxConfig::index_lag`]).
    pub index_lag_ms: i64,
    trace: AtomicU64,
}

impl AppState {
    pub fn new(
        routes: RouteTable,
        handlers: Vec<HandlerFn>,
        config: &SandboxConfig,
        stopping: watch::Receiver<bool>,
    ) -> AppState {
        AppState {
            routes,
            handlers,
            store: Store::default(),
            auth: Auth::new(config),
            limiter: RateLimiter::new(config.rate_limit),
            faults: Faults::new(config.faults.clone(), config.rng_seed),
            log: RequestLog::new(config.request_log_capacity),
            webhooks: Emitter::new(config.webhooks.clone(), config.rng_seed),
            location_id: config.location_id.clone(),
            company_id: config.company_id.clone(),
            stopping,
            index_lag_ms: i64::try_from(config.index_lag.as_millis()).unwrap_or(i64::MAX),
            trace: AtomicU64::new(1),
        }
    }

    pub fn trace_id(&self) -> String {
        trace_text(self.trace.fetch_add(1, Ordering::Relaxed))
    }
}

/// `format!("trace-{n:012x}")`, written by hand: it runs once per request, and the
/// formatting machinery costs several times more than the digits.
fn trace_text(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let width = (64 - n.leading_zeros() as usize).div_ceil(4).max(12);
    let mut out = String::with_capacity(6 + width);
    out.push_str("trace-");
    for i in (0..width).rev() {
        out.push(HEX[((n >> (4 * i)) & 0xf) as usize] as char);
    }
    out
}

/// One served request, as the admin log shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub op: Option<String>,
    pub status: u16,
    /// The fault injected, if any (`drop`, `hang`, `error`, `throttle`, `malformed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    pub trace_id: String,
}

#[derive(Debug, Default)]
struct LogInner {
    entries: VecDeque<LogEntry>,
    next_seq: u64,
    counters: BTreeMap<String, BTreeMap<u16, u64>>,
}

#[derive(Debug)]
pub struct RequestLog {
    capacity: usize,
    inner: Mutex<LogInner>,
}

impl RequestLog {
    pub fn new(capacity: usize) -> Self {
        RequestLog { capacity, inner: Mutex::new(LogInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, mut entry: LogEntry) {
        let mut inner = self.lock();
        entry.seq = inner.next_seq;
        inner.next_seq += 1;
        // Look the operation up before copying its name: the key exists after its first request.
        let key = entry.op.as_deref().unwrap_or("(unrouted)");
        let per_status = match inner.counters.get_mut(key) {
            Some(m) => m,
            None => inner.counters.entry(key.to_string()).or_default(),
        };
        *per_status.entry(entry.status).or_default() += 1;
        if self.capacity > 0 {
            if inner.entries.len() >= self.capacity {
                inner.entries.pop_front();
            }
            inner.entries.push_back(entry);
        }
    }

    pub fn entries(&self, since: u64, limit: usize) -> Vec<LogEntry> {
        self.lock().entries.iter().filter(|e| e.seq >= since).take(limit).cloned().collect()
    }

    pub fn counters(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.lock().counters.clone()
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.counters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_read_like_the_format_string() {
        for n in [0, 1, 0xabc, (1 << 48) - 1, 1 << 48, u64::MAX] {
            assert_eq!(trace_text(n), format!("trace-{n:012x}"));
        }
    }
}
