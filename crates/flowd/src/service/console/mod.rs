//! The web console, served by `flowd run` on the admin listener under `/`: runs (filters,
//! search by GHL record, each step's request and response), replays, the flood guard's
//! held runs, in-doubt decisions, flows and health.
//!
//! Behind the admin token: a login form trades it for a session cookie (HttpOnly,
//! SameSite=Strict, see [`session`]); every form that changes something carries the
//! session's CSRF token and is refused without it. No CORS headers are sent, so no other
//! origin can read a page; every page forbids framing and loads scripts and styles only
//! from the console itself (both are compiled into the binary). Pages are rendered on the
//! server ([`pages`]); the little JavaScript there is only asks before a destructive
//! action.
//!
//! What runs hold is shown as the store keeps it: the engine redacts credentials before a
//! step's request is recorded, as for `/api/runs`.

pub mod actions;
mod metrics_text;
mod pages;
pub mod session;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use engine::{Engine, EngineError};
use maud::Markup;
use serde::Deserialize;
use store::{Run, RunFilter, RunId, RunStatus};

use pages::{FilterForm, Nav};
use session::{Session, Sessions};

/// Runs per page of the list.
pub const PAGE: usize = 50;

#[derive(Clone)]
struct Console {
    engine: Arc<Engine>,
    token: Option<Arc<str>>,
    sessions: Arc<Sessions>,
    options: Options,
}

/// What the console shows besides the engine's state.
#[derive(Clone, Default)]
pub struct Options {
    /// The flow files the last reload rejected (`reload::FlowSet::errors`).
    pub load_errors: super::reload::LoadErrors,
}

/// The console's routes, for the admin listener's router.
pub fn router<S: Clone + Send + Sync + 'static>(
    engine: Arc<Engine>,
    admin_token: Option<String>,
    options: Options,
) -> Router<S> {
    let console =
        Console { engine, token: admin_token.map(Arc::from), sessions: Arc::new(Sessions::default()), options };
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/runs", get(runs))
        .route("/runs/replay", post(bulk_replay))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/replay", post(replay))
        .route("/runs/{id}/resolve", post(resolve))
        .route("/runs/{id}/discard", post(discard))
        .route("/flows", get(flows))
        .route("/flows/{name}/release", post(release))
        .route("/health", get(health))
        .route("/static/console.css", get(|| async { asset("text/css; charset=utf-8", pages::CSS) }))
        .route("/static/console.js", get(|| async { asset("text/javascript; charset=utf-8", pages::JS) }))
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn page(status: StatusCode, title: &str, nav: Nav, session: &Session, body: Markup) -> Response {
    html(status, pages::layout(title, nav, &session.csrf, body))
}

fn message(status: StatusCode, nav: Nav, session: &Session, title: &str, text: &str, back: &str) -> Response {
    page(status, title, nav, session, pages::message(title, text, back))
}

fn no_token() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::login(Some("The console is off: set `admin_token` in flowd.yaml and restart flowd.")),
    )
}

/// Why a request gets no page.
enum Refused {
    /// No `admin_token`: the console is off.
    NoToken,
    /// A page load without a session: to the login form.
    ToLogin,
    /// A form posted without a session (it expired, or the service restarted).
    SessionEnded,
    /// A form posted without its session's CSRF token.
    Csrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoToken => no_token(),
            Refused::ToLogin => Redirect::to("/login").into_response(),
            Refused::SessionEnded => {
                html(StatusCode::UNAUTHORIZED, pages::login(Some("Your session has ended: log in again.")))
            }
            Refused::Csrf => {
                (StatusCode::FORBIDDEN, "the form's CSRF token is missing or wrong: reload the page\n").into_response()
            }
        }
    }
}

/// The request's session; a page load without one goes to the login form.
fn session_for_page(c: &Console, headers: &HeaderMap) -> Result<Session, Refused> {
    if c.token.is_none() {
        return Err(Refused::NoToken);
    }
    c.sessions.lookup(headers).map(|(_, s)| s).ok_or(Refused::ToLogin)
}

/// The session (and its id) of a form post whose CSRF token matches it.
fn session_for_post(c: &Console, headers: &HeaderMap, csrf: Option<&str>) -> Result<(String, Session), Refused> {
    if c.token.is_none() {
        return Err(Refused::NoToken);
    }
    let (id, s) = c.sessions.lookup(headers).ok_or(Refused::SessionEnded)?;
    match csrf {
        Some(given) if session::same_secret(given, &s.csrf) => Ok((id, s)),
        _ => Err(Refused::Csrf),
    }
}

async fn login_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    if c.token.is_none() {
        return no_token();
    }
    if c.sessions.lookup(&headers).is_some() {
        return Redirect::to("/runs").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(c): State<Console>, Form(f): Form<LoginForm>) -> Response {
    let Some(expected) = &c.token else {
        return no_token();
    };
    if !session::same_secret(&f.token, expected) {
        // Slows a guessing loop down; the token is the only secret between the page and
        // every replay.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return html(StatusCode::UNAUTHORIZED, pages::login(Some("Wrong admin token.")));
    }
    let (id, _) = c.sessions.create();
    let mut response = Redirect::to("/runs").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
    decision: Option<String>,
}

async fn logout(State(c): State<Console>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let (id, _) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    c.sessions.remove(&id);
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `2h` (that long ago), an RFC 3339 time, or `YYYY-MM-DDTHH:MM[:SS]` in UTC.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|_| format!("`{s}` is too long ago"))?;
        return Ok(Some(now - d));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(format!("`{s}` is not a time: give a duration ago (2h, 30m, 1day) or a time like 2026-01-31T08:00:00Z"))
}

/// A record as searched for: `kind:id`, or a bare id taken as a contact's.
pub fn record_ref(s: &str) -> Option<String> {
    let s = s.trim();
    match s {
        "" => None,
        s if s.contains(':') => Some(s.to_string()),
        s => Some(format!("contact:{s}")),
    }
}

fn parse_status(s: &str) -> Result<Option<RunStatus>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    RunStatus::ALL.into_iter().find(|st| st.as_str() == s).map(Some).ok_or_else(|| format!("unknown status `{s}`"))
}

/// The store filter a form asks for.
fn filter_of(form: &FilterForm, before: Option<RunId>, limit: usize) -> Result<RunFilter, String> {
    let now = Utc::now();
    Ok(RunFilter {
        flow: Some(form.flow.trim().to_string()).filter(|f| !f.is_empty()),
        status: parse_status(form.status.trim())?,
        before,
        limit,
        touched: record_ref(&form.touched),
        since: parse_time(&form.since, now)?,
        until: parse_time(&form.until, now)?,
    })
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> store::Result<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Deserialize, Default)]
struct RunsQuery {
    #[serde(default)]
    flow: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    touched: String,
    #[serde(default)]
    before: String,
}

/// The first page of the run list for `form`, as HTML, and the id to page on from.
pub async fn render_runs(
    engine: &Arc<Engine>,
    form: &FilterForm,
    before: Option<RunId>,
    csrf: &str,
) -> Result<String, String> {
    // One more than a page: whether there are older runs to link to.
    let filter = filter_of(form, before, PAGE + 1)?;
    let store = engine.store().clone();
    let mut list: Vec<Run> = blocking(move || store.list_runs(&filter)).await?;
    let older = (list.len() > PAGE).then(|| {
        list.truncate(PAGE);
        list.last().map(|r| r.id.0)
    });
    let mut flows = engine.flow_names();
    flows.sort();
    let body = pages::runs(form, &flows, &list, older.flatten(), csrf);
    Ok(pages::layout("Runs", Nav::Runs, csrf, body).into_string())
}

async fn runs(State(c): State<Console>, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Response {
    let s = match session_for_page(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let form = FilterForm { flow: q.flow, status: q.status, since: q.since, until: q.until, touched: q.touched };
    let before = match q.before.trim() {
        "" => None,
        b => match b.parse::<u64>() {
            Ok(id) => Some(RunId(id)),
            Err(_) => {
                return message(StatusCode::BAD_REQUEST, Nav::Runs, &s, "Bad page", "`before` is not a run id", "/runs")
            }
        },
    };
    match render_runs(&c.engine, &form, before, &s.csrf).await {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, Nav::Runs, &s, "Cannot list runs", &e, "/runs"),
    }
}

async fn run(State(c): State<Console>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    let s = match session_for_page(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let store = c.engine.store().clone();
    match blocking(move || store.get_run(RunId(id))).await {
        Ok(Some(run)) => page(StatusCode::OK, &format!("Run {id}"), Nav::Runs, &s, pages::run(&run, &s.csrf)),
        Ok(None) => {
            message(StatusCode::NOT_FOUND, Nav::Runs, &s, "Not found", &format!("There is no run {id}."), "/runs")
        }
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Runs, &s, "Store error", &e, "/runs"),
    }
}

/// The page for an engine's answer to a replay of one run.
fn replay_outcome(result: Result<RunStatus, EngineError>, id: u64, s: &Session) -> Response {
    let back = format!("/runs/{id}");
    match result {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(EngineError::UnknownRun(_)) => {
            message(StatusCode::NOT_FOUND, Nav::Runs, s, "Not found", &format!("There is no run {id}."), "/runs")
        }
        Err(EngineError::NotReplayable(why)) => {
            message(StatusCode::CONFLICT, Nav::Runs, s, "Not replayed", &why, &back)
        }
        Err(e) => message(StatusCode::CONFLICT, Nav::Runs, s, "Not replayed", &e.to_string(), &back),
    }
}

async fn replay(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (_, s) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    replay_outcome(detached_replay(&c.engine, RunId(id), false).await, id, &s)
}

/// `Engine::replay` in a task of its own: a client that goes away (or the request's
/// timeout) must not stop a replay half way.
async fn detached_replay(engine: &Arc<Engine>, id: RunId, in_doubt: bool) -> Result<RunStatus, EngineError> {
    let engine = engine.clone();
    match tokio::spawn(async move { engine.replay(id, in_doubt).await }).await {
        Ok(result) => result,
        Err(e) => Err(EngineError::Join(e.to_string())),
    }
}

async fn resolve(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (_, s) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match f.decision.as_deref() {
        Some("send_again") => replay_outcome(detached_replay(&c.engine, RunId(id), true).await, id, &s),
        Some("done") => decide(&c, &s, id, actions::mark_done).await,
        _ => message(
            StatusCode::BAD_REQUEST,
            Nav::Runs,
            &s,
            "No decision",
            "decide `done` or `send_again`",
            &format!("/runs/{id}"),
        ),
    }
}

async fn discard(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (_, s) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    decide(&c, &s, id, actions::discard_held).await
}

/// Applies an operator's decision to one run, then shows the run.
async fn decide(
    c: &Console,
    s: &Session,
    id: u64,
    decision: fn(&dyn store::Store, RunId) -> store::Result<Run>,
) -> Response {
    let store = c.engine.store().clone();
    let back = format!("/runs/{id}");
    match tokio::task::spawn_blocking(move || decision(store.as_ref(), RunId(id))).await {
        Ok(Ok(_)) => Redirect::to(&back).into_response(),
        Ok(Err(store::StoreError::RunNotFound(_))) => {
            message(StatusCode::NOT_FOUND, Nav::Runs, s, "Not found", &format!("There is no run {id}."), "/runs")
        }
        Ok(Err(e)) => match actions::refusal(&e) {
            Some(why) => message(StatusCode::CONFLICT, Nav::Runs, s, "Refused", &why, &back),
            None => message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Runs, s, "Store error", &e.to_string(), &back),
        },
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Runs, s, "Store error", &e.to_string(), &back),
    }
}

#[derive(Deserialize)]
struct BulkForm {
    csrf: Option<String>,
    #[serde(default)]
    flow: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    touched: String,
    #[serde(default)]
    include_in_doubt: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

/// Bulk replay: the first post counts what the filter selects (nothing changes); the
/// confirmed one replays those runs in the background, through `Engine::replay` as
/// `flowd replay --failed` does, and shows what it started.
async fn bulk_replay(State(c): State<Console>, headers: HeaderMap, Form(f): Form<BulkForm>) -> Response {
    let (_, s) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let form = FilterForm { flow: f.flow, status: String::new(), since: f.since, until: f.until, touched: f.touched };
    let include_in_doubt = f.include_in_doubt.as_deref() == Some("true");
    let selection = match filter_of(&form, None, 0) {
        Ok(filter) => {
            actions::Selection { flow: filter.flow, since: filter.since, until: filter.until, touched: filter.touched }
        }
        Err(e) => return message(StatusCode::BAD_REQUEST, Nav::Runs, &s, "Bad filter", &e, "/runs"),
    };
    let store = c.engine.store().clone();
    let candidates = match blocking(move || actions::replay_candidates(store.as_ref(), &selection)).await {
        Ok(found) => found,
        Err(e) => return message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Runs, &s, "Store error", &e, "/runs"),
    };
    if f.confirm.as_deref() != Some("true") {
        let body =
            pages::bulk_confirm(&form, include_in_doubt, candidates.dead.len(), candidates.in_doubt.len(), &s.csrf);
        return page(StatusCode::OK, "Replay many", Nav::Runs, &s, body);
    }
    let mut ids = candidates.dead;
    if include_in_doubt {
        ids.extend(candidates.in_doubt);
        ids.sort();
    }
    let count = ids.len();
    let engine = c.engine.clone();
    tokio::spawn(async move {
        for id in ids {
            if let Err(e) = engine.replay(id, include_in_doubt).await {
                tracing::warn!(run = %id, error = %e, "console bulk replay: run not replayed");
            }
        }
    });
    let text = format!("{count} run(s) are being replayed, oldest first.");
    message(StatusCode::OK, Nav::Runs, &s, "Replaying", &text, &format!("/runs?{}", form.query()))
}

async fn release(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (_, s) = match session_for_post(&c, &headers, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let back = format!("/runs?flow={}", pages::url_part(&name));
    let (engine, flow) = (c.engine.clone(), name.clone());
    match tokio::spawn(async move { engine.release(&flow).await.map_err(|e| e.to_string()) })
        .await
        .map_err(|e| e.to_string())
    {
        Ok(Ok(statuses)) => {
            let ok = statuses.iter().filter(|st| **st == RunStatus::Succeeded).count();
            let text = format!("Released {} held run(s) of {name}: {ok} succeeded.", statuses.len());
            message(StatusCode::OK, Nav::Flows, &s, "Released", &text, &back)
        }
        Ok(Err(e)) | Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Flows, &s, "Not released", &e, &back),
    }
}

async fn flows(State(c): State<Console>, headers: HeaderMap) -> Response {
    let s = match session_for_page(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let metrics = metrics_text::parse(&c.engine.metrics().encode());
    let states = c.engine.flow_states();
    let store = c.engine.store().clone();
    let names: Vec<String> = states.iter().map(|f| f.name.clone()).collect();
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let counts = blocking(move || {
        names
            .iter()
            .map(|name| {
                let recent = recent_runs(store.as_ref(), name, hour_ago)?;
                let failed = recent
                    .iter()
                    .filter(|st| matches!(st, RunStatus::Failed | RunStatus::Dead | RunStatus::InDoubt))
                    .count();
                let held =
                    store::RunFilter { flow: Some(name.clone()), status: Some(RunStatus::Held), ..Default::default() };
                Ok((recent.len(), failed, store.list_runs(&held)?.len()))
            })
            .collect::<store::Result<Vec<_>>>()
    })
    .await;
    let counts = match counts {
        Ok(c) => c,
        Err(e) => return message(StatusCode::INTERNAL_SERVER_ERROR, Nav::Flows, &s, "Store error", &e, "/flows"),
    };
    let rows: Vec<pages::FlowRow> = states
        .into_iter()
        .zip(counts)
        .map(|(f, (runs_last_hour, failed_last_hour, held))| {
            let polls = |ok: bool| {
                metrics.sum("flowd_polls_total", |l| {
                    l.get("flow") == Some(&f.name) && (l.get("result").map(String::as_str) == Some("ok")) == ok
                })
            };
            pages::FlowRow {
                account: f.account,
                trigger: f.trigger,
                paused: f.paused.map(|p| format!("{} until {}", p.reason, p.until.format("%Y-%m-%d %H:%M UTC"))),
                schedule: f.schedule,
                last_poll: f.last_poll,
                next_poll: f.next_poll,
                runs_last_hour,
                failed_last_hour,
                held,
                watermark_lag: metrics.first("flowd_trigger_watermark_lag_seconds", |l| l.get("flow") == Some(&f.name)),
                polls_ok: polls(true),
                polls_failed: polls(false),
                budget_share: metrics.request_share(&f.name),
                name: f.name,
            }
        })
        .collect();
    let rejected = c.options.load_errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    page(StatusCode::OK, "Flows", Nav::Flows, &s, pages::flows(&rows, &rejected, &s.csrf))
}

/// The statuses of `flow`'s runs created since `since`, newest first: the list is read
/// page by page and stops at the first older run (ids follow creation order).
fn recent_runs(store: &dyn store::Store, flow: &str, since: DateTime<Utc>) -> store::Result<Vec<RunStatus>> {
    const CHUNK: usize = 200;
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let filter = RunFilter { flow: Some(flow.to_string()), before, limit: CHUNK, ..RunFilter::default() };
        let page = store.list_runs(&filter)?;
        for r in &page {
            if r.created_at < since {
                return Ok(out);
            }
            out.push(r.status);
        }
        match page.last() {
            Some(last) if page.len() == CHUNK => before = Some(last.id),
            _ => return Ok(out),
        }
    }
}

async fn health(State(c): State<Console>, headers: HeaderMap) -> Response {
    let s = match session_for_page(&c, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let m = metrics_text::parse(&c.engine.metrics().encode());
    let accounts: Vec<pages::AccountRow> = c
        .engine
        .account_states()
        .into_iter()
        .map(|a| pages::AccountRow {
            budget_used: m.first("flowd_ghl_daily_budget_used", |l| l.get("location") == Some(&a.location_id)),
            budget_limit: m.first("flowd_ghl_daily_budget_limit", |l| l.get("location") == Some(&a.location_id)),
            name: a.name,
            location: a.location_id,
            token: a.token,
            checked_at: a.checked_at,
        })
        .collect();
    let deliveries: Vec<(String, f64)> = m
        .label_values("flowd_webhook_deliveries_total", "result")
        .into_iter()
        .map(|r| {
            let n = m.sum("flowd_webhook_deliveries_total", |l| l.get("result") == Some(&r));
            (r, n)
        })
        .collect();
    let fault = c.engine.store().fault();
    let h = pages::Health {
        store_fault: fault.as_deref(),
        accounts: &accounts,
        deliveries: &deliveries,
        refreshes: m.sum("flowd_token_refreshes_total", |_| true),
    };
    page(StatusCode::OK, "Health", Nav::Health, &s, pages::health(&h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_records() {
        let now = DateTime::parse_from_rfc3339("2026-01-31T10:00:00Z").expect("time").with_timezone(&Utc);
        assert_eq!(parse_time("2h", now), Ok(Some(now - chrono::Duration::hours(2))));
        assert_eq!(parse_time(" ", now), Ok(None));
        assert_eq!(parse_time("2026-01-31T08:00", now), Ok(Some(now - chrono::Duration::hours(2))));
        assert_eq!(parse_time("2026-01-31T09:00:00+01:00", now), Ok(Some(now - chrono::Duration::hours(2))));
        assert!(parse_time("yesterday-ish", now).is_err());
        assert_eq!(record_ref("abc").as_deref(), Some("contact:abc"));
        assert_eq!(record_ref("task:t1").as_deref(), Some("task:t1"));
        assert_eq!(record_ref(""), None);
    }
}
