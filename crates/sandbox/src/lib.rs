//! A local, stateful simulator of the GoHighLevel (GHL) v2 API.
//!
//! The route table is built from the built-in catalog, so every catalog operation is
//! served. State lives in memory: actions change what triggers return. Auth (Private
//! Integration tokens and OAuth with rotating refresh tokens), per-location rate limits,
//! pagination, validation and fault injection behave like GHL does, so flowd's engine can
//! be tested end to end without a network or an account.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandbox::SandboxError> {
//! let sb = sandbox::Sandbox::start(sandbox::SandboxConfig::default()).await?;
//! let base = sb.base_url(); // http://127.0.0.1:PORT
//! # let _ = base; Ok(()) }
//! ```

mod admin;
mod auth;
mod clock;
mod config;
mod conn;
mod error;
mod faults;
mod handlers;
mod paginate;
mod ratelimit;
mod routes;
mod schema;
mod seed;
mod server;
mod state;
mod store;
mod validate;
mod webhooks;

pub use config::{
    OAuthClient, RateLimitConfig, SandboxConfig, DEFAULT_AGENCY_TOKEN, DEFAULT_COMPANY_ID, DEFAULT_LOCATION_ID,
    DEFAULT_TOKEN,
};
pub use error::SandboxError;
pub use faults::{FaultRule, FaultSettings};
pub use seed::{Seed, OTHER_LOCATION_ID};
pub use server::Sandbox;
pub use store::kinds as resource_kinds;
pub use webhooks::{WebhookSettings, WebhookStats};
