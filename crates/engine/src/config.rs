//! The engine's settings, and the accounts it is given.

use std::time::Duration;

/// Tuning; the defaults suit a service.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Runs executing at once.
    pub concurrency: usize,
    /// Scheduled polls in progress at once per account; more wait their turn (in due
    /// order). GHL's rate limits are per location, so more polls at once would only wait
    /// in the rate limiter, each holding its request and items: this bounds the memory
    /// of a burst of polls (10,000 flows starting together) by accounts × this.
    pub poll_concurrency: usize,
    /// Executions of a run before it goes dead (dead runs can be replayed).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Bounds of one poll.
    pub max_pages: u32,
    pub max_items: usize,
    /// Hosts `http.request` may call; empty means any (public address).
    pub http_allow_hosts: Vec<String>,
    /// Whether `http.request` may call loopback, private and link-local addresses (an
    /// app on the same host or network); off, they are refused after DNS resolution.
    pub http_allow_private: bool,
    /// Redirects an `http.request` follows (each hop checked like the first URL); 0
    /// answers the step with the redirect itself.
    pub http_max_redirects: usize,
    /// Largest response body an `http.request` reads (decompressed).
    pub http_max_response_bytes: usize,
    pub http_timeout: Duration,
    /// How often due retries are looked for.
    pub retry_scan: Duration,
    /// Runs a poll may have created and handed over, queued or executing, before it waits to
    /// commit another page: a burst of 10,000 new items then holds about this many items in
    /// memory (plus a page or two), not all of them. The rest wait in GHL, unread.
    pub max_runs_in_memory: usize,
    /// Entries the read cache of `cache:` GET steps keeps at most.
    pub read_cache_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // A GHL call takes 100-300 ms, so runs in flight bound a process's rate: 64
            // keep up with what GHL's limits let an agency with a few dozen sub-accounts
            // send (10/s each). Writes are batched, so more in flight costs little.
            concurrency: 64,
            poll_concurrency: 8,
            max_attempts: 5,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            max_pages: 100,
            max_items: 10_000,
            http_allow_hosts: Vec::new(),
            http_allow_private: false,
            http_max_redirects: 0,
            http_max_response_bytes: 1024 * 1024,
            http_timeout: Duration::from_secs(30),
            retry_scan: Duration::from_secs(1),
            // 16 × the default concurrency: two GHL pages of 500 queued keep every
            // execution slot busy while the poll commits the next.
            max_runs_in_memory: 1024,
            read_cache_entries: crate::cache::DEFAULT_CAPACITY,
        }
    }
}

impl EngineConfig {
    /// When a failed run is tried again: the client's exponential backoff
    /// ([`ghl::RetryPolicy::ceiling`], `retry_base * 2^(attempt-1)` up to `retry_max`), ±20%.
    /// Not full jitter as within a request: a run's retry comes minutes later, and
    /// spreading retries that failed together needs only a little noise, not a zero delay.
    pub fn retry_delay(&self, attempt: u32) -> chrono::Duration {
        let policy = ghl::RetryPolicy { max_attempts: self.max_attempts, base: self.retry_base, cap: self.retry_max };
        let jitter = rand::random_range(0.8..1.2);
        chrono::Duration::from_std(policy.ceiling(attempt).mul_f64(jitter)).unwrap_or(chrono::Duration::seconds(60))
    }
}

/// An account as flows see it (`{{ account.location_id }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub name: String,
    pub location_id: String,
}
