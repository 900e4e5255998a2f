//! The HTTP side: one POST route. Durability comes before the answer: the event is in
//! the store, flushed, before a 2xx leaves; if the store fails the answer is 429, the
//! one status GHL retries on.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use std::sync::Arc;
use store::Store;
use tokio::sync::Notify;

use crate::metrics::{Outcome, WebhookMetrics};
use crate::verify::{Rejection, Verifier};

pub const DEFAULT_PATH: &str = "/hooks/ghl";
/// GHL signs bodies of a few KB; anything far larger is not a GHL delivery.
const MAX_BODY: usize = 1024 * 1024;

/// What the route needs: the verifier, the inbox, the counters, and a way to wake the
/// engine so an event fires at once rather than at the next scan.
#[derive(Clone)]
pub struct Receiver {
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<WebhookMetrics>,
    pub wake: Arc<Notify>,
}

/// A router serving `path` (e.g. [`DEFAULT_PATH`]); mount it on its own listener.
pub fn router(receiver: Receiver, path: &str) -> Router {
    Router::new().route(path, post(receive)).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)).with_state(receiver)
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    // A body too large (or cut off) is a delivery too: counted, not just refused.
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            r.metrics.record(Outcome::Malformed);
            tracing::warn!(reason = Outcome::Malformed.as_str(), error = %e, "webhook delivery rejected");
            return (e.status(), format!("{e}\n")).into_response();
        }
    };
    let outcome = handle(&r, &headers, &body).await;
    let o = match &outcome {
        Ok(()) => Outcome::Accepted,
        Err(Failure::Rejected(rej)) => rej.outcome(),
        Err(Failure::Store(_)) => Outcome::StoreFailed,
    };
    r.metrics.record(o);
    match outcome {
        Ok(()) => {
            r.wake.notify_one();
            (StatusCode::OK, "ok\n").into_response()
        }
        Err(Failure::Rejected(rej)) => {
            tracing::warn!(reason = o.as_str(), error = %rej, "webhook delivery rejected");
            let status = match rej {
                Rejection::Unsigned | Rejection::BadSignature => StatusCode::UNAUTHORIZED,
                Rejection::Replayed(_) => StatusCode::CONFLICT,
                Rejection::Malformed(_) | Rejection::Stale(_) => StatusCode::BAD_REQUEST,
            };
            (status, format!("{rej}\n")).into_response()
        }
        Err(Failure::Store(e)) => {
            tracing::error!(error = %e, "webhook event could not be stored; answered 429 so GHL retries");
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "60")], "try again later\n").into_response()
        }
    }
}

enum Failure {
    Rejected(Rejection),
    Store(String),
}

async fn handle(r: &Receiver, headers: &HeaderMap, body: &Bytes) -> Result<(), Failure> {
    let verified = r.verifier.verify(headers, body, Utc::now()).map_err(Failure::Rejected)?;
    let store = r.store.clone();
    let id = verified.id.clone();
    let payload = verified.payload;
    // Only stored events count as seen: a delivery answered 429 was not stored, so
    // GHL's retry of it (same webhookId) is accepted.
    let stored = tokio::task::spawn_blocking(move || store.put_webhook_event(&id, &payload))
        .await
        .map_err(|e| Failure::Store(e.to_string()))?
        .map_err(|e| Failure::Store(e.to_string()))?;
    if stored {
        Ok(())
    } else {
        Err(Failure::Rejected(Rejection::Replayed(verified.id)))
    }
}
