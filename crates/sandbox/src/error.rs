//! Errors: [`SandboxError`] for the library API, [`ApiError`] for HTTP responses in GHL's
//! shapes (`{statusCode, message, error?, traceId}`).

use axum::http::StatusCode;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot bind the sandbox to {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the built-in catalog does not load: {0}")]
    Catalog(#[from] catalog::CatalogError),
    #[error("the route table is inconsistent: {0}")]
    Routes(String),
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::KeyError),
}

/// An error answer. `message` is a list for 422 (GHL's `UnprocessableDTO`), text otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Value,
    pub error: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: Value::String(message.into()), error: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { error: Some("Bad Request"), ..ApiError::new(StatusCode::BAD_REQUEST, message) }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { error: Some("Not Found"), ..ApiError::new(StatusCode::NOT_FOUND, message) }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError { error: Some("Unauthorized"), ..ApiError::new(StatusCode::UNAUTHORIZED, message) }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError { error: Some("Forbidden"), ..ApiError::new(StatusCode::FORBIDDEN, message) }
    }

    pub fn unprocessable(messages: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: Value::Array(messages.into_iter().map(Value::String).collect()),
            error: Some("Unprocessable Entity"),
        }
    }

    pub fn too_many_requests() -> Self {
        ApiError {
            error: Some("Too Many Requests"),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests: rate limit exceeded")
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { error: Some("Internal Server Error"), ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message) }
    }

    /// The body GHL sends, with the request's trace id.
    pub fn body(&self, trace_id: &str) -> Value {
        let mut body = json!({ "statusCode": self.status.as_u16(), "message": self.message });
        if let (Some(error), Some(map)) = (self.error, body.as_object_mut()) {
            map.insert("error".into(), Value::String(error.into()));
        }
        if let Some(map) = body.as_object_mut() {
            map.insert("traceId".into(), Value::String(trace_id.into()));
        }
        body
    }
}
