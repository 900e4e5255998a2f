//! What a sandbox is started with. Every field has a public default so tests and the CLI
//! only set what they care about.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::FaultSettings;
use crate::seed::Seed;
use crate::webhooks::WebhookSettings;

/// Default sub-account (location) the sandbox serves.
pub const DEFAULT_LOCATION_ID: &str = "loc_demo";
/// Default agency (company) the location belongs to.
pub const DEFAULT_COMPANY_ID: &str = "comp_demo";
/// Default location Private Integration token.
pub const DEFAULT_TOKEN: &str = "pit-sandbox-token";
/// Default agency Private Integration token.
pub const DEFAULT_AGENCY_TOKEN: &str = "pit-sandbox-agency-token";

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub location_id: String,
    pub company_id: String,
    /// Location Private Integration tokens bound to `location_id`; they never expire.
    pub tokens: Vec<String>,
    /// Agency Private Integration tokens bound to `company_id`.
    pub agency_tokens: Vec<String>,
    /// OAuth apps known from the start (more can be added through the admin API).
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of access tokens issued by `/oauth/token` (GHL: one day).
    pub access_token_ttl: Duration,
    pub rate_limit: RateLimitConfig,
    pub faults: FaultSettings,
    /// Seed of the random generator behind fault injection, for reproducible runs.
    pub rng_seed: u64,
    pub seed: Seed,
    /// How many requests the admin request log keeps (oldest dropped first).
    pub request_log_capacity: usize,
    /// Webhooks sent when data changes (off until a URL is set).
    pub webhooks: WebhookSettings,
    /// How long a created or edited contact takes to show in `POST /contacts/search`
    /// (GHL: "a few seconds"); `GET /contacts/{id}` sees it at once.
    pub index_lag: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            location_id: DEFAULT_LOCATION_ID.into(),
            company_id: DEFAULT_COMPANY_ID.into(),
            tokens: vec![DEFAULT_TOKEN.into()],
            agency_tokens: vec![DEFAULT_AGENCY_TOKEN.into()],
            oauth_clients: Vec::new(),
            access_token_ttl: Duration::from_secs(86_399),
            rate_limit: RateLimitConfig::default(),
            faults: FaultSettings::default(),
            rng_seed: 42,
            seed: Seed::Demo,
            request_log_capacity: 10_000,
            webhooks: WebhookSettings::default(),
            index_lag: Duration::ZERO,
        }
    }
}

impl SandboxConfig {
    pub fn with_seed(mut self, seed: Seed) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_rate_limit(mut self, rate_limit: RateLimitConfig) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    pub fn with_index_lag(mut self, lag: Duration) -> Self {
        self.index_lag = lag;
        self
    }

    pub fn with_webhooks(mut self, webhooks: WebhookSettings) -> Self {
        self.webhooks = webhooks;
        self
    }

    pub fn with_faults(mut self, faults: FaultSettings) -> Self {
        self.faults = faults;
        self
    }
}

/// A registered OAuth app (marketplace client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    /// Scopes granted to tokens of this app; empty means every scope.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// GHL's limits: per app per location, a burst window and a daily budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Requests allowed per burst interval (GHL: 100).
    pub burst_max: u32,
    /// Burst interval in milliseconds (GHL: 10,000).
    pub burst_interval_ms: u64,
    /// Requests allowed per day (GHL: 200,000).
    pub daily_max: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, burst_max: 100, burst_interval_ms: 10_000, daily_max: 200_000 }
    }
}

impl RateLimitConfig {
    pub fn disabled() -> Self {
        RateLimitConfig { enabled: false, ..RateLimitConfig::default() }
    }
}
