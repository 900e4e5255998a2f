//! `flowd auth oauth` (connect an account through GHL's OAuth authorization-code flow)
//! and `flowd auth check` (one cheap call per account: do its credentials work, and does
//! it have the scopes its flows need).
//!
//! Tokens are never printed: only what they are for (location, scopes, expiry).

use crate::cli::{AuthCheckArgs, AuthCommand, AuthOAuthArgs};
use crate::config::{Account, Config, Credentials};
use crate::exit::{Failed, UserError};
use crate::service::wiring::{self, Open, Opened};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where the loopback listener receives GHL's redirect.
const CALLBACK_PATH: &str = "/oauth/callback";
/// The cheap authenticated read `auth check` makes.
const PROBE_OP: &str = "locations.get_location";
/// The scope of that read; `auth oauth` asks for it too so that `auth check` works.
const PROBE_SCOPE: &str = "locations.readonly";

pub async fn run(
    config: &Config,
    catalog: &catalog::Catalog,
    command: &AuthCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        AuthCommand::Oauth(args) => oauth(config, catalog, args, out).await,
        AuthCommand::Check(args) => check(config, catalog, args, out).await,
    }
}

/// The config file a subcommand reads.
pub fn config_path(command: &AuthCommand) -> &Path {
    match command {
        AuthCommand::Oauth(a) => &a.config.config,
        AuthCommand::Check(a) => &a.config.config,
    }
}

fn find_account<'a>(config: &'a Config, name: &str) -> Result<&'a Account, UserError> {
    config.accounts.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.accounts.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        UserError::new(format!("{}: no account `{name}` (accounts: {known})", config.path.display()))
    })
}

/// Scopes the flows need, per account: account → scope → the flows that need it. The
/// second value explains what could not be counted (flows missing or invalid).
type Needs = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn flow_scopes(config: &Config, catalog: &catalog::Catalog) -> (Needs, Option<String>) {
    let mut needs = Needs::new();
    let files = match crate::flows::discover(std::slice::from_ref(&config.flows)) {
        Ok(f) => f,
        Err(e) => return (needs, Some(format!("flows not read ({e}); scopes of flows are not known"))),
    };
    let env = crate::flows::compile_env(config.accounts.keys().cloned().collect());
    let loaded = crate::flows::load_files(&files, catalog, &env);
    for (_, f) in &loaded.flows {
        let mut ops = vec![f.trigger.op.as_str()];
        for step in &f.steps {
            if let flow::StepTarget::Ghl(key) = &step.uses {
                ops.push(key);
            }
        }
        let scopes = needs.entry(f.account.clone()).or_default();
        for op in ops.into_iter().filter_map(|k| catalog.get(k)) {
            for s in &op.scopes {
                scopes.entry(s.clone()).or_default().insert(f.name.clone());
            }
        }
    }
    let note = (loaded.errors() > 0).then(|| {
        format!(
            "{} problem(s) in the flow files; flows that do not compile are not counted (see `flowd validate`)",
            loaded.errors()
        )
    });
    (needs, note)
}

fn split_scopes(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------
// flowd auth oauth

async fn oauth(
    config: &Config,
    catalog: &catalog::Catalog,
    args: &AuthOAuthArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = args.account.as_str();
    let account = find_account(config, name)?;
    let client_id = match &account.credentials {
        Credentials::OAuth { client_id, .. } => client_id.clone(),
        Credentials::PrivateToken(_) => {
            return Err(UserError::new(format!(
                "account `{name}` uses a Private Integration token; `flowd auth oauth` connects accounts configured \
                 with `oauth: {{ client_id, client_secret }}` (a marketplace app)"
            ))
            .into())
        }
    };
    if args.redirect_uri.is_some() && !(args.no_wait || args.code.is_some()) {
        return Err(UserError::new(
            "with --redirect-uri, GoHighLevel redirects elsewhere and flowd cannot receive the code: add --no-wait, \
             then finish with --code CODE",
        )
        .into());
    }
    if args.no_wait && args.redirect_uri.is_none() && args.redirect_port.is_none() {
        return Err(UserError::new(
            "--no-wait needs a fixed redirect URI (the one registered in the app): give --redirect-port PORT or \
             --redirect-uri URI",
        )
        .into());
    }
    if let Some(uri) = &args.redirect_uri {
        reqwest::Url::parse(uri).map_err(|e| UserError::new(format!("--redirect-uri `{uri}`: {e}")))?;
    }
    let (needs, note) = flow_scopes(config, catalog);
    let needed = needs.get(name).cloned().unwrap_or_default();
    let scopes: BTreeSet<String> = if args.scopes.is_empty() {
        needed.keys().cloned().chain([PROBE_SCOPE.to_string()]).collect()
    } else {
        args.scopes.iter().flat_map(|s| split_scopes(s)).map(str::to_string).collect()
    };

    let store = wiring::open_store(config, Open::CreateIfMissing)?
        .or_in_use("stop it, connect the account, and start it again")?;
    let client = ghl::Client::builder().token_store(Arc::new(engine::StoreTokens(store.clone()))).build()?;
    wiring::add_account(&client, None, config, name, account)?;

    if let Some(code) = &args.code {
        let redirect_uri = args.redirect_uri.clone().or_else(|| args.redirect_port.map(loopback_uri));
        let tokens = exchange(&client, name, code, redirect_uri.as_deref()).await?;
        store.flush()?;
        return connected(config, name, account, &tokens, &needed, out);
    }

    let listener = if args.no_wait {
        None
    } else {
        let port = args.redirect_port.unwrap_or(0);
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| Failed::new(format!("cannot listen on 127.0.0.1:{port} for the redirect: {e}")))?;
        Some(l)
    };
    let redirect_uri = match (&listener, &args.redirect_uri, args.redirect_port) {
        (Some(l), _, _) => loopback_uri(l.local_addr()?.port()),
        (None, Some(uri), _) => uri.clone(),
        (None, None, Some(port)) => loopback_uri(port),
        (None, None, None) => unreachable_redirect()?,
    };
    let state = random_state();
    let url = authorize_url(&args.authorize_url, &client_id, &redirect_uri, &scopes, &state)?;
    if let Some(note) = &note {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out, "Connect account `{name}` (location {}) to GoHighLevel:", account.location_id)?;
    writeln!(out, "open this URL in a browser, sign in, and choose the location:")?;
    writeln!(out)?;
    writeln!(out, "  {url}")?;
    writeln!(out)?;
    let Some(listener) = listener else {
        writeln!(out, "GoHighLevel then redirects to {redirect_uri}?code=...; finish with")?;
        writeln!(out, "  flowd auth oauth --account {name} --code CODE --redirect-uri {redirect_uri}")?;
        writeln!(out, "(an authorization code is single-use and expires within minutes)")?;
        return Ok(());
    };
    writeln!(
        out,
        "Waiting up to {} for GoHighLevel to redirect to {redirect_uri} ...",
        humantime::format_duration(args.timeout)
    )?;
    out.flush()?;

    let (tx, mut rx) = mpsc::channel::<Callback>(8);
    let app = axum::Router::new().route(CALLBACK_PATH, axum::routing::get(callback)).with_state(tx);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });

    let deadline = tokio::time::Instant::now() + args.timeout;
    let result = loop {
        let cb = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                break Err(Failed::new(format!(
                    "no redirect from GoHighLevel within {}; run the command again (--timeout to wait longer)",
                    humantime::format_duration(args.timeout)
                ))
                .into())
            }
            Ok(None) => break Err(Failed::new("the redirect listener stopped").into()),
            Ok(Some(cb)) => cb,
        };
        let mut cb = cb;
        let params = std::mem::take(&mut cb.params);
        let param = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        // GHL may not echo `state`; when it does, it must be ours (a forged redirect is ignored).
        if param("state").is_some_and(|s| s != state) {
            cb.reply(StatusCode::BAD_REQUEST, "This redirect was not started by this flowd command; ignored.");
            continue;
        }
        if let Some(err) = param("error") {
            let why = param("error_description").unwrap_or("");
            cb.reply(StatusCode::BAD_REQUEST, &format!("GoHighLevel did not authorize flowd: {err} {why}"));
            break Err(
                Failed::new(format!("GoHighLevel did not authorize the app: {err} {why}").trim().to_string()).into()
            );
        }
        let Some(code) = param("code") else {
            cb.reply(StatusCode::BAD_REQUEST, "No authorization code in this request (expected ?code=...).");
            continue;
        };
        match exchange(&client, name, code, Some(&redirect_uri)).await {
            Ok(tokens) => {
                cb.reply(StatusCode::OK, &format!("flowd: account `{name}` is connected. You can close this tab."));
                break Ok(tokens);
            }
            Err(e) => {
                cb.reply(StatusCode::BAD_GATEWAY, &format!("flowd could not connect account `{name}`: {e}"));
                break Err(e);
            }
        }
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let tokens = result?;
    store.flush()?;
    connected(config, name, account, &tokens, &needed, out)
}

fn unreachable_redirect() -> anyhow::Result<String> {
    Err(UserError::new("no redirect URI: give --redirect-port or --redirect-uri").into())
}

fn loopback_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}{CALLBACK_PATH}")
}

fn authorize_url(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    scopes: &BTreeSet<String>,
    state: &str,
) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).map_err(|e| UserError::new(format!("--authorize-url `{base}`: {e}")))?;
    let scope: Vec<&str> = scopes.iter().map(String::as_str).collect();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("client_id", client_id)
        .append_pair("scope", &scope.join(" "))
        .append_pair("state", state);
    Ok(url)
}

/// An unguessable value tying the redirect to this command (std's randomly keyed hasher
/// avoids a dependency for it).
fn random_state() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (0..2u64)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            format!("{:016x}", h.finish())
        })
        .collect()
}

struct Callback {
    params: HashMap<String, String>,
    reply: oneshot::Sender<(StatusCode, String)>,
}

impl Callback {
    fn reply(self, status: StatusCode, message: &str) {
        let _ = self.reply.send((status, message.to_string()));
    }
}

async fn callback(
    State(tx): State<mpsc::Sender<Callback>>,
    Query(params): Query<HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    let (reply, answer) = oneshot::channel();
    if tx.send(Callback { params, reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, page("flowd is no longer waiting for this redirect."));
    }
    match answer.await {
        Ok((status, message)) => (status, page(&message)),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, page("flowd stopped before answering.")),
    }
}

fn page(message: &str) -> Html<String> {
    let escaped = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    Html(format!("<!doctype html><title>flowd</title><p>{escaped}</p>\n"))
}

async fn exchange(
    client: &ghl::Client,
    name: &str,
    code: &str,
    redirect_uri: Option<&str>,
) -> anyhow::Result<ghl::TokenSet> {
    client.connect_oauth(name, code, redirect_uri).await.map_err(|e| {
        let hint = match e.status() {
            Some(400) => " (the code is single-use and short-lived: run the command again for a new one)",
            Some(401) => " (check the account's oauth client_id and client_secret)",
            _ => "",
        };
        Failed::new(format!("exchanging the authorization code for account `{name}` failed: {e}{hint}")).into()
    })
}

/// What was connected: location, scopes, expiry; never the tokens.
fn connected(
    config: &Config,
    name: &str,
    account: &Account,
    tokens: &ghl::TokenSet,
    needed: &BTreeMap<String, BTreeSet<String>>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(out, "Connected account `{name}`; tokens saved in the store {}.", config.store_name())?;
    let location = tokens.location_id.as_deref();
    writeln!(
        out,
        "  location:   {}{}",
        location.unwrap_or("(none: an agency-level grant)"),
        tokens.user_type.as_deref().map(|u| format!(" (userType {u})")).unwrap_or_default()
    )?;
    let granted: BTreeSet<&str> = tokens.scope.as_deref().map(|s| split_scopes(s).collect()).unwrap_or_default();
    if granted.is_empty() {
        writeln!(out, "  scopes:     (not reported by GoHighLevel)")?;
    } else {
        writeln!(out, "  scopes:     {}", granted.iter().copied().collect::<Vec<_>>().join(" "))?;
    }
    writeln!(out, "  expires:    {} (flowd refreshes it)", tokens.expires_at.to_rfc3339())?;
    writeln!(
        out,
        "  refresh:    {}",
        if tokens.refresh_token.is_some() {
            "stored"
        } else {
            "none (the account must be reconnected when it expires)"
        }
    )?;
    if !granted.is_empty() {
        for (scope, flows) in needed.iter().filter(|(s, _)| !granted.contains(s.as_str())) {
            writeln!(out, "warning: missing scope {scope}, needed by {}", flow_list(flows))?;
        }
    }
    if location != Some(account.location_id.as_str()) {
        return Err(UserError::new(format!(
            "GoHighLevel connected location {}, but accounts.{name}.location_id is {}: set location_id to the \
             connected location, or run `flowd auth oauth` again and choose {}",
            location.unwrap_or("(none)"),
            account.location_id,
            account.location_id
        ))
        .into());
    }
    Ok(())
}

fn flow_list(flows: &BTreeSet<String>) -> String {
    let names: Vec<String> = flows.iter().map(|f| format!("`{f}`")).collect();
    format!("flow{} {}", if names.len() == 1 { "" } else { "s" }, names.join(", "))
}

// ---------------------------------------------------------------------------------------
// flowd auth check

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    MissingScopes,
    ReconnectNeeded,
    InvalidToken,
    Forbidden,
    Unreachable,
    Error,
    /// OAuth tokens live in a store a running service holds.
    Skipped,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::MissingScopes => "missing scopes",
            Status::ReconnectNeeded => "reconnect needed",
            Status::InvalidToken => "invalid token",
            Status::Forbidden => "forbidden",
            Status::Unreachable => "unreachable",
            Status::Error => "error",
            Status::Skipped => "not checked",
        }
    }

    fn fails(self) -> bool {
        !matches!(self, Status::Ok | Status::Skipped)
    }
}

#[derive(Debug, Serialize)]
struct AccountReport {
    account: String,
    /// `private_token` or `oauth`.
    credentials: &'static str,
    location_id: String,
    status: Status,
    /// GHL's or flowd's explanation of the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location_name: Option<String>,
    /// Scopes of the stored OAuth grant (`None`: unknown, as for Private Integration tokens).
    scopes_granted: Option<Vec<String>>,
    /// Scope → the flows that need it.
    scopes_needed: BTreeMap<String, BTreeSet<String>>,
    scopes_missing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

async fn check(
    config: &Config,
    catalog: &catalog::Catalog,
    args: &AuthCheckArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for a in &args.accounts {
        find_account(config, a)?;
    }
    let selected: Vec<(&String, &Account)> =
        config.accounts.iter().filter(|(n, _)| args.accounts.is_empty() || args.accounts.contains(n)).collect();
    let (needs, note) = flow_scopes(config, catalog);
    let any_oauth = selected.iter().any(|(_, a)| matches!(a.credentials, Credentials::OAuth { .. }));
    // The store holds the OAuth tokens; without it (a service holds it) refreshing here
    // would rotate the service's refresh token away, so OAuth accounts are not checked.
    let (store, in_use) = match any_oauth.then(|| wiring::open_store(config, Open::CreateIfMissing)).transpose()? {
        Some(Opened::Ready(s)) => (Some(s), None),
        Some(Opened::InUse(in_use)) => (None, Some(in_use)),
        None => (None, None),
    };
    let token_store: Arc<dyn ghl::TokenStore> = match &store {
        Some(s) => Arc::new(engine::StoreTokens(s.clone())),
        None => Arc::new(ghl::MemoryTokenStore::new()),
    };
    let client_config = ghl::ClientConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        retry: ghl::RetryPolicy { max_attempts: 2, ..ghl::RetryPolicy::default() },
        ..ghl::ClientConfig::default()
    };
    let client = ghl::Client::builder().config(client_config).token_store(token_store.clone()).build()?;
    let probe = catalog
        .get(PROBE_OP)
        .map(ghl::Request::for_operation)
        .unwrap_or_else(|| ghl::Request::get("/locations/{locationId}").version(ghl::DEFAULT_VERSION.to_string()));

    let mut reports = Vec::new();
    for (name, account) in selected {
        let oauth = matches!(account.credentials, Credentials::OAuth { .. });
        let mut report = AccountReport {
            account: name.clone(),
            credentials: if oauth { "oauth" } else { "private_token" },
            location_id: account.location_id.clone(),
            status: Status::Ok,
            detail: None,
            location_name: None,
            scopes_granted: None,
            scopes_needed: needs.get(name).cloned().unwrap_or_default(),
            scopes_missing: Vec::new(),
            notes: Vec::new(),
        };
        if oauth && store.is_none() {
            report.status = Status::Skipped;
            report.detail = Some(format!(
                "{}; its OAuth tokens cannot be checked from here",
                in_use.as_ref().map(ToString::to_string).unwrap_or_default()
            ));
            reports.push(report);
            continue;
        }
        wiring::add_account(&client, store.as_deref(), config, name, account)?;
        let req = probe.clone().path_param("locationId", account.location_id.clone());
        match client.json(name, &req).await {
            Ok(body) => {
                report.location_name =
                    body.pointer("/location/name").and_then(serde_json::Value::as_str).map(str::to_string);
            }
            Err(e) => classify(&mut report, &e),
        }
        if oauth {
            if let Ok(Some(tokens)) = token_store.load(name) {
                let granted: Vec<String> =
                    tokens.scope.as_deref().map(|s| split_scopes(s).map(str::to_string).collect()).unwrap_or_default();
                if !granted.is_empty() {
                    report.scopes_granted = Some(granted);
                }
            }
        }
        match &report.scopes_granted {
            Some(granted) => {
                report.scopes_missing = report.scopes_needed.keys().filter(|s| !granted.contains(s)).cloned().collect();
                if !report.scopes_missing.is_empty() && report.status == Status::Ok {
                    report.status = Status::MissingScopes;
                }
            }
            None if !report.scopes_needed.is_empty() && report.status == Status::Ok => {
                let what = if oauth {
                    "GoHighLevel did not report the grant's scopes"
                } else {
                    "a Private Integration token does not tell its scopes"
                };
                let list: Vec<&str> = report.scopes_needed.keys().map(String::as_str).collect();
                report.notes.push(format!("{what}; the flows need: {}", list.join(" ")));
            }
            None => {}
        }
        reports.push(report);
    }
    if let Some(store) = &store {
        store.flush()?;
    }

    if args.json {
        serde_json::to_writer_pretty(&mut *out, &reports)?;
        writeln!(out)?;
    } else {
        if let Some(note) = &note {
            writeln!(out, "note: {note}")?;
        }
        if reports.is_empty() {
            writeln!(out, "no accounts in {}", config.path.display())?;
        }
        for r in &reports {
            print_report(r, out)?;
        }
    }
    let failing = reports.iter().filter(|r| r.status.fails()).count();
    if failing > 0 {
        return Err(Failed::new(format!("{failing} of {} account(s) need attention", reports.len())).into());
    }
    Ok(())
}

fn classify(report: &mut AccountReport, e: &ghl::Error) {
    let (status, detail) = match e {
        ghl::Error::ReconnectNeeded { reason, .. } => {
            (Status::ReconnectNeeded, format!("{reason} (run `flowd auth oauth --account {}`)", report.account))
        }
        ghl::Error::Api(api) if api.status == 401 && api.message.to_string().to_lowercase().contains("scope") => {
            // The token authenticated; it only lacks the scope of this probe.
            report.notes.push(format!(
                "the credentials work, but lack {PROBE_SCOPE}, which this check's GET /locations/{{locationId}} needs"
            ));
            return;
        }
        ghl::Error::Api(api) if api.status == 401 => (Status::InvalidToken, api.to_string()),
        ghl::Error::Api(api) if api.status == 403 => {
            (Status::Forbidden, format!("{api} (is location_id {} the token's location?)", report.location_id))
        }
        ghl::Error::Connect(_) | ghl::Error::Timeout | ghl::Error::Transport(_) => (Status::Unreachable, e.to_string()),
        other => (Status::Error, other.to_string()),
    };
    report.status = status;
    report.detail = Some(detail);
}

fn print_report(r: &AccountReport, out: &mut dyn Write) -> std::io::Result<()> {
    let kind = if r.credentials == "oauth" { "OAuth" } else { "Private Integration token" };
    let name = r.location_name.as_deref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
    writeln!(out, "{}: {} ({kind}, location {}{name})", r.account, r.status.text(), r.location_id)?;
    if let Some(d) = &r.detail {
        writeln!(out, "  {d}")?;
    }
    if let Some(g) = &r.scopes_granted {
        writeln!(out, "  scopes granted: {}", g.join(" "))?;
    }
    for s in &r.scopes_missing {
        let flows = r.scopes_needed.get(s).map(flow_list).unwrap_or_default();
        writeln!(out, "  missing scope {s}, needed by {flows}")?;
    }
    for n in &r.notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(())
}
