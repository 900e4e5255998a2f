//! What the console's tests share: the sandbox, a stand-in for the user's own app (an
//! `http.request` target that refuses pushes until told not to), and `flowd run` with
//! flows that touch contacts, as a real process on loopback.

#![allow(dead_code)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use sandbox::{FaultSettings, OAuthClient, RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "pit-console-test";
pub const ADMIN: &str = "console-admin-secret";
/// The credential the flow sends to the user's app: it must never appear on a page.
pub const APP_SECRET: &str = "app-secret-7f3a91";
/// The OAuth app of the `lost` account, whose refresh token GHL (the sandbox) does not
/// accept: the health page must say it needs reconnecting.
const LOST_CLIENT: &str = "console-oauth-app";
const LOST_SECRET: &str = "console-oauth-app-secret";
const LOST_REFRESH: &str = "a-refresh-token-that-was-revoked";
/// A contact's first name that is markup: it must show as text.
pub const XSS: &str = "<script>alert('xss')</script><img src=x onerror=alert(1)>";

/// The user's app: `POST /hook` answers 400 while `failing`, `POST /ok` always 200.
pub struct App {
    pub url: String,
    pub failing: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct AppState {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn hook(State(s): State<AppState>) -> (StatusCode, &'static str) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        (StatusCode::BAD_REQUEST, "{\"error\":\"the app is being deployed\"}")
    } else {
        (StatusCode::OK, "{\"ok\":true}")
    }
}

pub async fn app() -> App {
    let failing = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let state = AppState { failing: failing.clone(), hits: hits.clone() };
    let router = Router::new()
        .route("/hook", post(hook))
        .route("/ok", post(|| async { (StatusCode::OK, "{\"ok\":true}") }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    App { url, failing, hits }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `push-contacts`: a task per contact, then a push to the app (which fails at first:
/// the runs end `dead` on the push, with the task done). `guarded`: trips the flood
/// guard (`max_new: 5`), so all its runs are held.
fn flows(app: &App) -> Vec<(&'static str, String)> {
    let push = format!(
        r#"name: push-contacts
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
  every: 1s
  start: all
steps:
  - id: task
    uses: contacts.create_task
    with: {{ contactId: "{{{{ trigger.id }}}}", title: "Call {{{{ trigger.firstName }}}}", dueDate: "2030-01-01T10:00:00Z", completed: false }}
  - id: push
    uses: http.request
    with:
      method: POST
      url: "{}/hook"
      headers: {{ Authorization: "Bearer {APP_SECRET}" }}
      json: {{ contact: "{{{{ trigger.id }}}}", name: "{{{{ trigger.firstName }}}}" }}
"#,
        app.url
    );
    let guarded = format!(
        r#"name: guarded
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
  every: 1s
  start: all
  max_new: 5
steps:
  - id: push
    uses: http.request
    with: {{ method: POST, url: "{}/ok", json: {{ contact: "{{{{ trigger.id }}}}" }} }}
"#,
        app.url
    );
    // Polls with the `lost` account, whose refresh token is refused.
    let lost = r#"name: lost-account
account: lost
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1h
steps:
  - id: push
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [never] }
"#;
    vec![("push-contacts.yaml", push), ("guarded.yaml", guarded), ("lost-account.yaml", lost.to_string())]
}

pub struct Service {
    pub dir: tempfile::TempDir,
    pub base: String,
    child: Option<Child>,
}

impl Service {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("flowd.log")).unwrap_or_default()
    }

    /// `flowd ARGS --config flowd.yaml` in the service's directory: (exit code, output).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args(args)
            .args(["--config", "flowd.yaml"])
            .current_dir(self.dir.path())
            .env("CONSOLE_TEST_TOKEN", TOKEN)
            .env("CONSOLE_TEST_OAUTH_SECRET", LOST_SECRET)
            .env("CONSOLE_TEST_REFRESH", LOST_REFRESH)
            .output()
            .expect("flowd runs");
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Rig {
    pub sb: Sandbox,
    pub app: App,
    pub svc: Service,
}

/// The sandbox with `contacts` contacts plus one whose name is [`XSS`], the app, and
/// `flowd run` serving the console; `admin_token` off when `with_token` is false.
pub async fn start(contacts: usize, faults: Option<FaultSettings>, with_token: bool) -> Rig {
    let mut config =
        SandboxConfig::default().with_seed(Seed::Contacts(contacts)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    config.oauth_clients =
        vec![OAuthClient { client_id: LOST_CLIENT.into(), client_secret: LOST_SECRET.into(), scopes: vec![] }];
    let sb = Sandbox::start(config).await.expect("sandbox");
    sb.insert_record("contacts", serde_json::json!({ "firstName": XSS, "email": "xss@example.com" }))
        .expect("the xss contact");
    if let Some(f) = faults {
        sb.set_faults(f, Some(7));
    }
    let app = app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    for (name, text) in flows(&app) {
        std::fs::write(dir.path().join("flows").join(name), text).expect("flow");
    }
    let token = if with_token { format!("admin_token: {ADMIN}\n") } else { String::new() };
    let config = format!(
        "store: ./data\nflows: ./flows\nlisten: {listen}\n{token}shutdown_timeout: 5s\nhttp_allow_private: true\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{CONSOLE_TEST_TOKEN}}\n  lost:\n    location_id: {}\n    base_url: {}\n    oauth:\n      client_id: {LOST_CLIENT}\n      client_secret: ${{CONSOLE_TEST_OAUTH_SECRET}}\n      refresh_token: ${{CONSOLE_TEST_REFRESH}}\n",
        sb.location_id(),
        sb.base_url(),
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), config).expect("config");
    let log = std::fs::File::create(dir.path().join("flowd.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["run", "--config", "flowd.yaml"])
        .current_dir(dir.path())
        .env("CONSOLE_TEST_TOKEN", TOKEN)
        .env("CONSOLE_TEST_OAUTH_SECRET", LOST_SECRET)
        .env("CONSOLE_TEST_REFRESH", LOST_REFRESH)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("flowd starts");
    let svc = Service { dir, base: format!("http://{listen}"), child: Some(child) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{}/readyz", svc.base)).await.map(|r| r.status().as_u16() == 200);
        if ready.unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "flowd never became ready; log:\n{}", svc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Rig { sb, app, svc }
}

/// Waits until `check` holds, up to `within`; panics with `what` and the log otherwise.
pub async fn eventually<F, Fut>(svc: &Service, what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {within:?}; log:\n{}", svc.log());
}

/// The runs the service's API lists for `query` (`flow=...&status=...`).
pub async fn api_runs(svc: &Service, query: &str) -> Vec<serde_json::Value> {
    let res = reqwest::Client::new()
        .get(format!("{}/api/runs?limit=1000&{query}", svc.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("api");
    let body: serde_json::Value = res.json().await.expect("json");
    body["runs"].as_array().cloned().unwrap_or_default()
}
