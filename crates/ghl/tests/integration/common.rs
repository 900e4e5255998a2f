use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ghl::{Account, Client, ClientConfig, Counters, Credentials, Observer, RateLimit, RetryPolicy, Secret};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig};
use serde_json::Value;

pub const PIT: &str = "pit-sandbox-token";
pub const ACCOUNT: &str = "loc";

pub async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config).await.expect("sandbox starts")
}

/// A sandbox without rate limits (for tests about something else).
pub async fn start_unlimited(config: SandboxConfig) -> Sandbox {
    start(config.with_rate_limit(RateLimitConfig::disabled())).await
}

/// Records when each attempt went out, on top of the counters.
#[derive(Default)]
pub struct Recorder {
    pub counters: Counters,
    pub sent: Mutex<Vec<Instant>>,
}

impl Observer for Recorder {
    fn sending(&self, _s: &ghl::Sending<'_>) {
        self.sent.lock().unwrap().push(Instant::now());
    }
    fn response(&self, s: u16) {
        self.counters.response(s);
    }
    fn transport_error(&self) {
        self.counters.transport_error();
    }
    fn retry(&self, d: Duration) {
        self.counters.retry(d);
    }
    fn rate_limit_wait(&self, d: Duration) {
        self.counters.rate_limit_wait(d);
    }
    fn token_refresh(&self, r: &str) {
        self.counters.token_refresh(r);
    }
}

/// Fast retries and no client-side pacing to speak of. Header adaptation is off because the
/// sandbox announces its default limits (100 / 10 s) even when it does not enforce them.
pub fn quick_config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy { max_attempts: 8, base: Duration::from_millis(5), cap: Duration::from_millis(100) },
        rate_limit: RateLimit { adapt_to_headers: false, ..RateLimit::per(100_000, Duration::from_secs(1)) },
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

pub fn client(config: ClientConfig, observer: Arc<Recorder>) -> Client {
    Client::builder().config(config).observer(observer).build().expect("client builds")
}

pub fn pit_account(sb: &Sandbox, id: &str, token: &str) -> Account {
    Account::new(id, Credentials::PrivateToken(Secret::new(token)))
        .expect("account")
        .with_base_url(&sb.base_url())
        .expect("base url")
        .with_resource(sb.location_id())
}

/// Sandbox log entries (as JSON) whose path starts with `prefix`.
pub fn logged(sb: &Sandbox, prefix: &str) -> Vec<Value> {
    sb.requests()
        .into_iter()
        .filter(|e| e.get("path").and_then(Value::as_str).is_some_and(|p| p.starts_with(prefix)))
        .collect()
}

pub fn status_of(e: &Value) -> u64 {
    e.get("status").and_then(Value::as_u64).unwrap_or(0)
}
