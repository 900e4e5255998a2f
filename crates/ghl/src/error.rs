//! What can go wrong talking to GHL, in terms a caller can act on.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// Every failure the client reports. None of them carries a token: request headers and form
/// bodies are never copied into an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// GHL answered with an error status.
    #[error("{0}")]
    Api(ApiError),

    /// The OAuth grant is dead (refresh token rotated away, revoked or app uninstalled): a
    /// person has to reconnect the account. Retrying will not help.
    #[error("account {account} must be reconnected to GoHighLevel: {reason}")]
    ReconnectNeeded { account: String, reason: String },

    /// The local limiter would make the caller wait longer than allowed (daily budget spent,
    /// or a long 429 pause).
    #[error("rate limit for {location}: {why}; retry in {}s", retry_after.as_secs())]
    RateLimited { location: String, why: String, retry_after: Duration },

    /// The location's daily budget is spent: nothing more is sent for it until the budget
    /// renews at 00:00 UTC.
    #[error("the daily budget of {limit} requests for {location} is spent; it renews in {}s (00:00 UTC)", retry_after.as_secs())]
    BudgetSpent { location: String, limit: u32, retry_after: Duration },

    #[error("request to GHL timed out")]
    Timeout,

    #[error("could not connect to GHL: {0}")]
    Connect(String),

    /// The connection failed after the request may have been sent.
    #[error("transport error talking to GHL: {0}")]
    Transport(String),

    /// The caller's request description cannot be turned into an HTTP request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// GHL said 2xx but the body is not what its content type claims.
    #[error("cannot decode GHL response: {0}")]
    Decode(String),

    #[error("pagination stopped: {0}")]
    Pagination(String),

    #[error("token store: {0}")]
    TokenStore(String),
}

impl Error {
    /// The HTTP status GHL answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// How long until the location's daily budget renews, when that is why this failed.
    pub fn budget_spent(&self) -> Option<Duration> {
        match self {
            Error::BudgetSpent { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn is_reconnect_needed(&self) -> bool {
        matches!(self, Error::ReconnectNeeded { .. })
    }

    /// Whether trying the same thing later may succeed (for the engine's own scheduling).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api(e) => e.status == 429 || e.status >= 500,
            Error::RateLimited { .. }
            | Error::BudgetSpent { .. }
            | Error::Timeout
            | Error::Connect(_)
            | Error::Transport(_) => true,
            _ => false,
        }
    }
}

/// GHL's error envelope: `{statusCode, message, error, traceId}`; `message` is a list of
/// strings on 422 validation errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: u16,
    /// `statusCode` from the body, when present (it normally equals `status`).
    pub status_code: Option<u16>,
    pub message: ApiMessage,
    /// `error` from the body (`"Bad Request"`, `"invalid_grant"`, ...).
    pub error: Option<String>,
    pub trace_id: Option<String>,
    /// `Retry-After` (or the interval header) on a 429.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiMessage {
    Text(String),
    List(Vec<String>),
}

impl fmt::Display for ApiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiMessage::Text(s) => f.write_str(s),
            ApiMessage::List(items) => f.write_str(&items.join("; ")),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GHL answered {}: {}", self.status, self.message)?;
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        if let Some(t) = &self.trace_id {
            write!(f, " [traceId {t}]")?;
        }
        Ok(())
    }
}

/// Longest body excerpt kept when the body is not GHL's JSON envelope.
const EXCERPT: usize = 300;

impl ApiError {
    /// Reads GHL's envelope from an error response body; anything else becomes a text
    /// message with a short excerpt of the body.
    pub fn from_body(status: u16, body: &[u8], retry_after: Option<Duration>) -> ApiError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let obj = parsed.as_ref().and_then(Value::as_object);
        let Some(obj) = obj else {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() { status_text(status).to_owned() } else { excerpt(text) };
            return ApiError {
                status,
                status_code: None,
                message: ApiMessage::Text(message),
                error: None,
                trace_id: None,
                retry_after,
            };
        };
        let message = match obj.get("message").or_else(|| obj.get("error_description")) {
            Some(Value::String(s)) => ApiMessage::Text(excerpt(s)),
            Some(Value::Array(items)) => ApiMessage::List(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => excerpt(s),
                        other => excerpt(&other.to_string()),
                    })
                    .collect(),
            ),
            Some(other) => ApiMessage::Text(excerpt(&other.to_string())),
            None => ApiMessage::Text(status_text(status).to_owned()),
        };
        let status_code = obj.get("statusCode").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
        let string_field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        ApiError {
            status,
            status_code,
            message,
            error: string_field("error"),
            trace_id: string_field("traceId"),
            retry_after,
        }
    }
}

fn excerpt(s: &str) -> String {
    if s.chars().count() <= EXCERPT {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(EXCERPT).collect();
    out.push('…');
    out
}

fn status_text(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ghl_envelope() {
        let body = br#"{"statusCode":400,"message":"Bad things","error":"Bad Request","traceId":"t-1"}"#;
        let e = ApiError::from_body(400, body, None);
        assert_eq!(e.status_code, Some(400));
        assert_eq!(e.message, ApiMessage::Text("Bad things".into()));
        assert_eq!(e.error.as_deref(), Some("Bad Request"));
        assert_eq!(e.trace_id.as_deref(), Some("t-1"));
        let shown = Error::Api(e).to_string();
        assert!(shown.contains("400") && shown.contains("Bad things") && shown.contains("t-1"));
    }

    #[test]
    fn parses_422_message_list() {
        let body = br#"{"statusCode":422,"message":["email must be an email","name should not be empty"]}"#;
        let e = ApiError::from_body(422, body, None);
        assert_eq!(
            e.message,
            ApiMessage::List(vec!["email must be an email".into(), "name should not be empty".into()])
        );
        assert!(e.to_string().contains("email must be an email; name should not be empty"));
    }

    #[test]
    fn oauth_error_uses_description() {
        let body = br#"{"error":"invalid_grant","error_description":"Invalid grant: refresh token is invalid"}"#;
        let e = ApiError::from_body(400, body, None);
        assert_eq!(e.error.as_deref(), Some("invalid_grant"));
        assert!(e.message.to_string().contains("refresh token is invalid"));
    }

    #[test]
    fn non_json_and_empty_bodies() {
        let e = ApiError::from_body(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.message, ApiMessage::Text("<html>bad gateway</html>".into()));
        let e = ApiError::from_body(503, b"", None);
        assert_eq!(e.message, ApiMessage::Text("Service Unavailable".into()));
        let long = "x".repeat(5000);
        let e = ApiError::from_body(500, long.as_bytes(), None);
        assert!(e.message.to_string().chars().count() <= EXCERPT + 1);
    }

    #[test]
    fn transient_classification() {
        let api = |s| Error::Api(ApiError::from_body(s, b"", None));
        assert!(api(429).is_transient());
        assert!(api(503).is_transient());
        assert!(!api(404).is_transient());
        assert!(Error::Timeout.is_transient());
        assert!(!Error::ReconnectNeeded { account: "a".into(), reason: "r".into() }.is_transient());
    }
}
