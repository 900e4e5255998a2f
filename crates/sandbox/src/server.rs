//! Start/stop, and the request pipeline every API call goes through:
//! route → fault → auth → rate limit → Version → token kind/scope → parse → location
//! binding → validation → handler → log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method as HttpMethod, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use catalog::{Catalog, Method, Operation, ParamIn};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin;
use crate::auth::{Principal, PrincipalKind};
use crate::config::{OAuthClient, RateLimitConfig, SandboxConfig};
use crate::conn::{ConnHandle, KillableListener};
use crate::error::{ApiError, SandboxError};
use crate::faults::{Fault, FaultSettings};
use crate::handlers::{self, Ctx, Reply};
use crate::ratelimit::Quota;
use crate::routes::RouteTable;
use crate::seed::{self, Seed};
use crate::state::{AppState, LogEntry};
use crate::store::kinds;

/// Largest request body accepted (GHL rejects bigger ones too).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        Sandbox::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on a given address (the CLI's `--listen`).
    pub async fn bind(addr: SocketAddr, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let catalog = Catalog::builtin()?;
        let routes = RouteTable::build(&catalog)?;
        let mut handlers = Vec::with_capacity(routes.operations.len());
        for op in &routes.operations {
            let h = handlers::handler_for(&op.key)
                .ok_or_else(|| SandboxError::Routes(format!("no handler for operation {}", op.key)))?;
            handlers.push(h);
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr: addr.to_string(), source })?;
        let local = listener.local_addr().map_err(|source| SandboxError::Bind { addr: addr.to_string(), source })?;
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let state = Arc::new(AppState::new(routes, handlers, &config, stopping_rx));
        reseed(&state, config.seed);

        let app = Router::new().fallback(dispatch).with_state(state.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
            // Release hanging requests so the graceful shutdown can finish.
            let _ = stopping_tx.send(true);
        };
        let service = app.into_make_service_with_connect_info::<ConnHandle>();
        let task = tokio::spawn(async move {
            let server = axum::serve(KillableListener::new(listener), service).with_graceful_shutdown(shutdown);
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "sandbox server stopped with an error");
            }
        });
        tracing::info!(addr = %local, "sandbox listening");
        Ok(Sandbox { addr: local, state, stop: Some(stop_tx), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The location the default tokens are bound to.
    pub fn location_id(&self) -> &str {
        &self.state.location_id
    }

    pub fn company_id(&self) -> &str {
        &self.state.company_id
    }

    /// Stops and waits for open connections to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Replaces all data with a fresh seed (also clears the request log and rate windows).
    pub fn reset(&self, seed: Seed) {
        reseed(&self.state, seed);
        self.state.log.clear();
        self.state.limiter.reset();
    }

    /// Where and how the sandbox sends webhooks; `Err` for a bad signing key.
    pub fn set_webhooks(&self, settings: crate::webhooks::WebhookSettings) -> Result<(), SandboxError> {
        Ok(self.state.webhooks.set(settings)?)
    }

    pub fn webhook_stats(&self) -> crate::webhooks::WebhookStats {
        self.state.webhooks.stats()
    }

    pub fn set_faults(&self, faults: FaultSettings, rng_seed: Option<u64>) {
        self.state.faults.set(faults, rng_seed);
    }

    pub fn set_rate_limit(&self, config: RateLimitConfig) {
        self.state.limiter.set_config(config);
    }

    pub fn register_oauth_client(&self, client: OAuthClient) {
        self.state.auth.register_client(client);
    }

    /// A fresh refresh token for a registered client (`user_type`: `Location` or `Company`).
    pub fn mint_refresh_token(&self, client_id: &str, user_type: &str, location_id: Option<&str>) -> Option<String> {
        self.state.auth.mint_refresh_token(client_id, user_type, location_id).ok()
    }

    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.state.auth.set_access_ttl(ttl);
    }

    /// Stores a record directly, "as a user would" in the GHL UI. Returns it with its id.
    pub fn insert_record(&self, kind: &str, record: Value) -> Option<Value> {
        admin::insert_record(&self.state, kind, record).ok()
    }

    pub fn record(&self, kind: &str, id: &str) -> Option<Value> {
        self.state.store.get(kind, id).map(Value::Object)
    }

    /// Records of a kind, in insertion order.
    pub fn records(&self, kind: &str) -> Vec<Value> {
        match self.state.store.kind(kind) {
            Some(kind) => self.state.store.read(kind).iter().cloned().map(Value::Object).collect(),
            None => Vec::new(),
        }
    }

    /// Requests served so far (oldest first, bounded by the log capacity).
    pub fn requests(&self) -> Vec<Value> {
        self.state.log.entries(0, usize::MAX).into_iter().filter_map(|e| serde_json::to_value(e).ok()).collect()
    }

    /// Kinds of records the store holds.
    pub fn resource_kinds() -> &'static [&'static str] {
        kinds::ALL
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn reseed(state: &AppState, seed: Seed) {
    state.store.clear();
    let now = state.store.clock.now_ms();
    seed::apply(&state.store, seed, &state.location_id, &state.company_id, now);
}

async fn dispatch(
    State(st): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sandbox/") || path == "/_sandbox" {
        return admin::handle(st, req).await;
    }
    if req.method() == HttpMethod::POST && (path == "/oauth/token" || path == "/oauth/locationToken") {
        return oauth(st, req).await;
    }
    api(st, conn, req).await
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    json_bytes_response(status, serde_json::to_vec(body).unwrap_or_default())
}

fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

fn error_response(e: &ApiError, trace: &str) -> Response {
    json_response(e.status, &e.body(trace))
}

fn form_of(bytes: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(bytes);
    let uri = format!("/?{text}");
    match uri.parse::<axum::http::Uri>() {
        Ok(uri) => Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default(),
        Err(_) => HashMap::new(),
    }
}

async fn oauth(st: Arc<AppState>, req: Request) -> Response {
    let trace = st.trace_id();
    let path = req.uri().path().to_string();
    let auth_header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error_response(&ApiError::bad_request("request body too large"), &trace),
    };
    let form = form_of(&bytes);
    let (status, body) = if path == "/oauth/token" {
        match st.auth.exchange(&form) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => (e.status, e.body()),
        }
    } else {
        let result =
            st.auth.authenticate(auth_header.as_deref()).and_then(|agency| st.auth.location_token(&agency, &form));
        match result {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => (e.status, e.body(&trace)),
        }
    };
    st.log.record(LogEntry {
        seq: 0,
        method: "POST".into(),
        path,
        op: None,
        status: status.as_u16(),
        fault: None,
        trace_id: trace,
    });
    json_response(status, &body)
}

fn catalog_method(m: &HttpMethod) -> Option<Method> {
    Some(match *m {
        HttpMethod::GET => Method::Get,
        HttpMethod::POST => Method::Post,
        HttpMethod::PUT => Method::Put,
        HttpMethod::PATCH => Method::Patch,
        HttpMethod::DELETE => Method::Delete,
        _ => return None,
    })
}

/// Query pairs as JSON: repeated keys (and `key[]`) become arrays.
fn query_map(uri: &axum::http::Uri) -> Map<String, Value> {
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let mut out = Map::new();
    for (k, v) in pairs {
        let k = k.strip_suffix("[]").map(String::from).unwrap_or(k);
        match out.get_mut(&k) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v)]);
            }
            None => {
                out.insert(k, Value::String(v));
            }
        }
    }
    out
}

/// The location a request names in a `locationId`/`location_id` parameter must be the
/// token's (GHL answers 403 otherwise); an agency token may name its company's locations.
fn check_location(
    st: &AppState,
    who: &Principal,
    op: &Operation,
    path: &[(String, String)],
    query: &Map<String, Value>,
    body: &Value,
) -> Result<(), ApiError> {
    for p in &op.params {
        if p.name != "locationId" && p.name != "location_id" {
            continue;
        }
        let value = match p.location {
            ParamIn::Path => path.iter().find(|(n, _)| *n == p.name).map(|(_, v)| v.as_str()),
            ParamIn::Query => query.get(&p.name).and_then(Value::as_str),
            ParamIn::Body => body.get(&p.name).and_then(Value::as_str),
        };
        let Some(value) = value else { continue };
        let allowed = match who.kind {
            PrincipalKind::Location => who.location_id.as_deref() == Some(value),
            PrincipalKind::Company => st
                .store
                .get(kinds::LOCATIONS, value)
                .is_none_or(|l| l.get("companyId").and_then(Value::as_str) == Some(who.company_id.as_str())),
        };
        if !allowed {
            return Err(ApiError::forbidden("The token does not have access to this location"));
        }
    }
    Ok(())
}

fn check_version(op: &Operation, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("version").and_then(|v| v.to_str().ok()) {
        None => Err(ApiError::bad_request("Version header is missing")),
        Some(v) if v == op.version => Ok(()),
        Some(v) => {
            Err(ApiError::bad_request(format!("Invalid Version header `{v}`: this endpoint requires {}", op.version)))
        }
    }
}

struct Outcome {
    status: StatusCode,
    response: Response,
    fault: Option<&'static str>,
}

async fn api(st: Arc<AppState>, conn: ConnHandle, req: Request) -> Response {
    let trace = st.trace_id();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let found = catalog_method(&method).and_then(|m| st.routes.find(m, &path));
    let Some((op_index, path_params)) = found else {
        let e = ApiError::not_found(format!("Cannot {method} {path}"));
        let mut resp = error_response(&e, &trace);
        st.limiter.idle().write_headers(resp.headers_mut());
        log(&st, &method, &path, None, e.status.as_u16(), None, &trace);
        return resp;
    };
    let op = &st.routes.operations[op_index];
    let (fault, delay) = st.faults.roll(&op.key);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Fault::Drop => {
            log(&st, &method, &path, Some(&op.key), 0, Some("drop"), &trace);
            conn.kill();
            // The write of this response fails, so the client sees the connection close.
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Fault::Hang => {
            log(&st, &method, &path, Some(&op.key), 0, Some("hang"), &trace);
            let mut stopping = st.stopping.clone();
            let _ = stopping.wait_for(|s| *s).await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Fault::Error(code) => {
            let resp = fault_error(&st, code, &trace);
            log(&st, &method, &path, Some(&op.key), code, Some("error"), &trace);
            return resp;
        }
        Fault::Throttle => {
            let quota = Quota { allowed: false, burst_remaining: 0, retry_after_s: 1, ..st.limiter.idle() };
            let mut resp = error_response(&ApiError::too_many_requests(), &trace);
            quota.write_headers(resp.headers_mut());
            log(&st, &method, &path, Some(&op.key), 429, Some("throttle"), &trace);
            return resp;
        }
        Fault::None | Fault::Malformed | Fault::ErrorAfterProcessing(_) => {}
    }
    let out = serve_op(&st, op_index, path_params, req, &trace, fault == Fault::Malformed).await;
    if let Fault::ErrorAfterProcessing(code) = fault {
        // The work is done (and kept); only the answer is lost.
        log(&st, &method, &path, Some(&op.key), code, Some("error_after_processing"), &trace);
        return fault_error(&st, code, &trace);
    }
    log(&st, &method, &path, Some(&op.key), out.status.as_u16(), out.fault, &trace);
    out.response
}

/// The 5xx answer of an injected error.
fn fault_error(st: &AppState, code: u16, trace: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let e = ApiError { status, ..ApiError::internal("Internal server error") };
    let mut resp = error_response(&e, trace);
    st.limiter.idle().write_headers(resp.headers_mut());
    resp
}

async fn serve_op(
    st: &AppState,
    op_index: usize,
    path_params: Vec<(String, String)>,
    req: Request,
    trace: &str,
    malformed: bool,
) -> Outcome {
    let op = &st.routes.operations[op_index];
    let fail = |e: ApiError, quota: Quota| {
        let mut response = error_response(&e, trace);
        quota.write_headers(response.headers_mut());
        Outcome { status: e.status, response, fault: None }
    };
    let auth_header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let who = match st.auth.authenticate(auth_header) {
        Ok(p) => p,
        Err(e) => return fail(e, st.limiter.idle()),
    };
    let quota = st.limiter.hit(who.resource());
    if !quota.allowed {
        return fail(ApiError::too_many_requests(), quota);
    }
    if let Err(e) = check_version(op, req.headers()).and_then(|_| st.auth.authorize(&who, op)) {
        return fail(e, quota);
    }
    let query = query_map(req.uri());
    let bytes: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return fail(ApiError::bad_request("request entity too large"), quota),
    };
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return fail(ApiError::bad_request(format!("Unexpected token in JSON: {e}")), quota),
        }
    };
    if let Err(e) = check_body_shape(op, &bytes, &body) {
        return fail(e, quota);
    }
    // A `body_root` operation sends one parameter's value (a bare array) as the body.
    let rooted;
    let params_body = match &op.body_root {
        Some(root) if !body.is_null() => {
            let mut m = Map::new();
            m.insert(root.clone(), body.clone());
            rooted = Value::Object(m);
            &rooted
        }
        _ => &body,
    };
    if let Err(e) = check_location(st, &who, op, &path_params, &query, params_body) {
        return fail(e, quota);
    }
    if let Err(e) = crate::validate::check(op, &query, params_body) {
        return fail(e, quota);
    }
    let ctx = Ctx { st, op, path: &path_params, query: &query, body: &body, who: &who };
    let reply = (st.handlers[op_index])(&ctx);
    match &reply {
        Ok(Reply::Json(status, value)) if status.is_success() => {
            emit_webhook(st, &op.key, &path_params, || crate::webhooks::reply_record_id(value))
        }
        Ok(Reply::Stored { status, id, .. }) if status.is_success() => {
            emit_webhook(st, &op.key, &path_params, || Some(id.clone()))
        }
        _ => {}
    }
    let malformed = malformed && matches!(reply, Ok(Reply::Json(..) | Reply::Serialized(..) | Reply::Stored { .. }));
    let (status, mut response) = match reply {
        Ok(Reply::Json(status, value)) if malformed => {
            (status, malformed_response(status, serde_json::to_vec(&value).unwrap_or_default()))
        }
        Ok(Reply::Serialized(status, text) | Reply::Stored { status, bytes: text, .. }) if malformed => {
            (status, malformed_response(status, text))
        }
        Ok(Reply::Json(status, value)) => (status, json_response(status, &value)),
        Ok(Reply::Serialized(status, bytes) | Reply::Stored { status, bytes, .. }) => {
            (status, json_bytes_response(status, bytes))
        }
        Ok(Reply::File(content_type, bytes)) => {
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            (StatusCode::OK, r)
        }
        Err(e) => (e.status, error_response(&e, trace)),
    };
    quota.write_headers(response.headers_mut());
    Outcome { status, response, fault: malformed.then_some("malformed") }
}

/// GHL parses JSON bodies strictly (body-parser's `strict`): only an object or an array is a
/// body, anything else is a 400 before validation. An array where the operation declares an
/// object fails validation, and so does a missing body the spec requires.
fn check_body_shape(op: &catalog::Operation, bytes: &[u8], body: &Value) -> Result<(), ApiError> {
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        if !body.is_object() && !body.is_array() {
            return Err(ApiError::bad_request(format!(
                "Unexpected token {} in JSON at position 0",
                char::from(*first)
            )));
        }
    }
    let takes_body = op.params_in(ParamIn::Body).next().is_some();
    if takes_body && op.body_root.is_none() && body.is_array() {
        return Err(ApiError::unprocessable(vec!["an unknown value was passed to the validate function".into()]));
    }
    if body.is_null() && crate::schema::body_required(&op.key) {
        return Err(ApiError::unprocessable(vec!["request body should not be empty".into()]));
    }
    Ok(())
}

/// The real answer cut mid-way: valid HTTP, JSON that does not parse.
fn malformed_response(status: StatusCode, mut text: Vec<u8>) -> Response {
    let cut = (text.len() / 2).max(1).min(text.len());
    text.truncate(cut);
    text.extend_from_slice(b"\x00<html>");
    json_bytes_response(status, text)
}

/// Sends the event GHL would send for a successful change made through the API.
/// `reply_id` names the changed record (read from the reply only when a receiver is set).
fn emit_webhook(st: &AppState, op: &str, path_params: &[(String, String)], reply_id: impl FnOnce() -> Option<String>) {
    // Without a receiver, skip reading back and copying the changed record.
    if !st.webhooks.enabled() {
        return;
    }
    let Some((kind, change)) = crate::webhooks::api_change(op) else { return };
    let record = match change {
        crate::webhooks::Change::Delete => {
            let Some((_, id)) = path_params.last() else { return };
            let mut r = Map::new();
            r.insert("id".into(), Value::String(id.clone()));
            r
        }
        _ => {
            let Some(id) = reply_id() else { return };
            let Some(r) = st.store.get(kind, &id) else { return };
            r
        }
    };
    st.webhooks.record_changed(kind, change, &record, &st.location_id);
}

fn log(
    st: &AppState,
    method: &HttpMethod,
    path: &str,
    op: Option<&str>,
    status: u16,
    fault: Option<&'static str>,
    trace: &str,
) {
    st.log.record(LogEntry {
        seq: 0,
        method: method.to_string(),
        path: path.to_string(),
        op: op.map(String::from),
        status,
        fault,
        trace_id: trace.to_string(),
    });
}
