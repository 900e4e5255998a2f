//! The one HTTP client every GHL poll and action goes through.
//!
//! A [`Client`] holds accounts (Private Integration token or OAuth), one rate limiter per
//! location shared by all callers, and a connection pool. [`Client::send`] takes a
//! [`Request`] (method, path template, values, `Version` header) and returns the decoded
//! [`Body`] or a typed [`Error`]; [`Client::paginate`] streams a list endpoint's items
//! following a catalog [`catalog::Pagination`] style.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ghl::Error> {
//! use ghl::{Account, Client, Credentials, Request, Secret};
//! let client = Client::builder().build()?;
//! client.add_account(Account::new("loc_1", Credentials::PrivateToken(Secret::new("pit-...")))?);
//! let contact = client
//!     .json("loc_1", &Request::get("/contacts/{contactId}").path_param("contactId", "abc"))
//!     .await?;
//! # let _ = contact; Ok(()) }
//! ```

mod auth;
mod client;
mod error;
mod health;
mod metrics;
mod paginate;
mod ratelimit;
mod redact;
mod request;
mod retry;
mod shared_budget;
mod token_store;

pub use auth::{Account, Credentials, OAuthApp};
pub use client::{Client, ClientBuilder, ClientConfig};
pub use error::{ApiError, ApiMessage, Error};
pub use health::{AccountHealth, TokenState};
pub use metrics::{Counters, CountersSnapshot, Observer, Sending};
pub use paginate::{ItemStream, JsonPath, PageOptions, Pager, StopWhen};
pub use ratelimit::{parse_retry_after, LocationLimiter, RateHeaders, RateLimit};
pub use redact::Secret;
pub use request::{render_path, Body, Origin, Purpose, Request, DEFAULT_BASE_URL, DEFAULT_VERSION};
pub use retry::{decide, verdict, Decision, Outcome, RetryPolicy, Verdict};
pub use shared_budget::{Grant, SharedBudget, WINDOWS_PER_INTERVAL};
pub use token_store::{MemoryTokenStore, TokenSet, TokenStore, TokenStoreError};

pub use catalog::{Method, Pagination, ParamIn};
