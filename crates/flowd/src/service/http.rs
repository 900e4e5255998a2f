//! The service's HTTP endpoints (loopback by default): health, readiness, Prometheus
//! metrics, and a small JSON API over runs.
//!
//! Every `/api` route needs the admin token (`Authorization: Bearer ...`): runs hold
//! rendered requests and contact data. Without a configured token the API is off.
//! `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers: they hold
//! counts and flow names, no run data.
//!
//! Everything else under `/` is the web console (`console`), behind the same token
//! through a login form and a session cookie.
//!
//! Every request's `Host` must name this listener (a loopback name or address, the
//! configured address, or with an unspecified `listen` any IP address): a web page
//! whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name and is
//! refused with 421.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::Engine;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone)]
struct Api {
    engine: Arc<Engine>,
    admin_token: Option<String>,
    ready: Arc<AtomicBool>,
    listen: std::net::SocketAddr,
}

pub fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    admin_token: Option<String>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    console: super::console::Options,
) -> JoinHandle<()> {
    let listen = listener.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let api = Api { engine, admin_token, ready, listen };
    let admin = Router::new()
        .route("/api/flows", get(flows))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/replay", post(replay))
        .route("/api/flows/{name}/release", post(release))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin)
        .merge(super::console::router(api.engine.clone(), api.admin_token.clone(), console))
        .layer(middleware::from_fn_with_state(api.clone(), check_host))
        .with_state(api);
    // The admin listener answers probes and scrapes: a few connections at a time is what
    // it serves, and idle ones must not keep /healthz from answering.
    let limits = super::listener::Limits { max_connections: 128, ..super::listener::Limits::default() };
    tokio::spawn(super::listener::serve(listener, app, limits, shutdown, std::time::Duration::from_secs(5)))
}

/// Refuses a request whose `Host` does not name this listener (see the module's comment).
async fn check_host(State(api): State<Api>, request: Request, next: Next) -> Response {
    let host = request.headers().get("host").and_then(|v| v.to_str().ok());
    match host {
        Some(h) if host_names_listener(h, api.listen) => next.run(request).await,
        Some(h) => error(StatusCode::MISDIRECTED_REQUEST, format!("`Host: {h}` does not name this listener")),
        None => error(StatusCode::MISDIRECTED_REQUEST, "a `Host` header is required"),
    }
}

/// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) names the listener at
/// `listen`. An IP address cannot be re-pointed by DNS, so any address the listener
/// answers on is accepted; names are accepted only for loopback (`localhost`).
fn host_names_listener(host: &str, listen: std::net::SocketAddr) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(ip, _)| ip).unwrap_or(rest),
        None => host.rsplit_once(':').map(|(n, _)| n).unwrap_or(host),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == listen.ip() || listen.ip().is_unspecified(),
        Err(_) => false,
    }
}

/// Refuses an `/api` request without the admin token.
async fn require_token(State(api): State<Api>, request: Request, next: Next) -> Response {
    match unauthorized(&api, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// How long `/readyz` waits for the store's own check (a PostgreSQL round trip).
const STORE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(api): State<Api>) -> Response {
    let store = api.engine.store().clone();
    let check = tokio::time::timeout(STORE_CHECK, tokio::task::spawn_blocking(move || store.ready())).await;
    let unreachable = match check {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {STORE_CHECK:?}")),
    };
    if let Some(fault) = api.engine.store().fault() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("the store cannot write: {fault}\n")).into_response()
    } else if let Some(e) = unreachable {
        (StatusCode::SERVICE_UNAVAILABLE, format!("the store's database is unreachable: {e}\n")).into_response()
    } else if api.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n").into_response()
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let body = api.engine.metrics().encode();
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn flows(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(json!({ "flows": api.engine.flow_states() }))
}

#[derive(Deserialize)]
struct RunsQuery {
    flow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    /// Runs older than this id (paging).
    before: Option<u64>,
    /// Runs that touched this record (`contact:ID`).
    touched: Option<String>,
    /// `2h` or an RFC 3339 time (see `console::parse_time`).
    since: Option<String>,
    until: Option<String>,
}

fn parse_status(s: &str) -> Option<store::RunStatus> {
    store::RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn list_runs(State(api): State<Api>, Query(q): Query<RunsQuery>) -> Response {
    let status = match q.status.as_deref().map(|s| (s, parse_status(s))) {
        Some((s, None)) => return error(StatusCode::BAD_REQUEST, format!("unknown status `{s}`")),
        Some((_, st)) => st,
        None => None,
    };
    let now = chrono::Utc::now();
    let (since, until) = match (
        super::console::parse_time(q.since.as_deref().unwrap_or(""), now),
        super::console::parse_time(q.until.as_deref().unwrap_or(""), now),
    ) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let filter = store::RunFilter {
        flow: q.flow,
        status,
        before: q.before.map(store::RunId),
        limit: q.limit.unwrap_or(50).min(1000),
        touched: q.touched.as_deref().and_then(super::console::record_ref),
        since,
        until,
    };
    let store = api.engine.store().clone();
    match tokio::task::spawn_blocking(move || store.list_runs(&filter)).await {
        Ok(Ok(runs)) => Json(json!({ "runs": runs })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_run(State(api): State<Api>, Path(id): Path<u64>) -> Response {
    let store = api.engine.store().clone();
    match tokio::task::spawn_blocking(move || store.get_run(store::RunId(id))).await {
        Ok(Ok(Some(run))) => Json(json!(run)).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The error response when the request lacks the admin token, or `None`.
fn unauthorized(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &api.admin_token else {
        return Some(error(StatusCode::FORBIDDEN, "set `admin_token` in the config to use the API"));
    };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token guards replays of real actions.
    let ok = given.is_some_and(|g| {
        g.len() == expected.len() && g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    (!ok).then(|| error(StatusCode::UNAUTHORIZED, "missing or wrong admin token"))
}

#[derive(Deserialize)]
struct ReplayQuery {
    /// Replay an `in_doubt` run too (it may have reached GHL).
    #[serde(default)]
    include_in_doubt: bool,
}

async fn replay(State(api): State<Api>, Path(id): Path<u64>, Query(q): Query<ReplayQuery>) -> Response {
    match api.engine.replay(store::RunId(id), q.include_in_doubt).await {
        Ok(status) => Json(json!({ "run": id, "status": status })).into_response(),
        Err(engine::EngineError::UnknownRun(_)) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(engine::EngineError::NotReplayable(why)) => error(StatusCode::CONFLICT, why),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn release(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.engine.release(&name).await {
        Ok(statuses) => Json(json!({ "released": statuses.len(), "statuses": statuses })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::host_names_listener;

    #[test]
    fn host_must_name_the_listener() {
        let loopback = "127.0.0.1:8686".parse().unwrap();
        for ok in ["127.0.0.1:8686", "127.0.0.1", "localhost:8686", "LOCALHOST", "app.localhost:1", "[::1]:8686"] {
            assert!(host_names_listener(ok, loopback), "{ok}");
        }
        for refused in ["evil.example:8686", "evil.example", "10.0.0.5:8686", "127.0.0.1.nip.io:8686", ""] {
            assert!(!host_names_listener(refused, loopback), "{refused}");
        }
        let lan = "10.0.0.5:8686".parse().unwrap();
        assert!(host_names_listener("10.0.0.5:8686", lan));
        assert!(!host_names_listener("10.0.0.6:8686", lan));
        assert!(!host_names_listener("flowd.example:8686", lan));
        let any = "0.0.0.0:8686".parse().unwrap();
        assert!(host_names_listener("192.168.1.9:8686", any));
        assert!(!host_names_listener("rebound.example:8686", any));
    }
}
