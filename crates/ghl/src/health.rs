//! Whether each account's credentials still work, as the client last saw them: the
//! console's health page shows it per account instead of guessing from a global 401 count.

use chrono::{DateTime, Utc};

/// What the client last learnt about an account's token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenState {
    /// No request for it has been answered yet.
    Unknown,
    /// GHL accepted its token on the last answered request.
    Valid,
    /// It cannot authenticate until someone acts: the OAuth refresh token was refused
    /// (`invalid_grant`), no grant is stored, or GHL refused the Private Integration token
    /// (401).
    NeedsReconnect { reason: String },
}

/// One account's token state and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountHealth {
    pub account: String,
    #[serde(flatten)]
    pub token: TokenState,
    /// When the client last saw a request for it answered (or refused before it left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}
