//! Pattern (b), GHL side, end to end: the real `flowd run` with the repository's
//! flows/task-sync.yaml, the sandbox as GHL and a local HTTP server as the app. Tasks
//! added to several contacts (none of which changes itself) are pushed once each, a
//! completed task once more, and nothing twice across runs of the service.

mod support;

use axum::routing::post;
use axum::{Json, Router};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "pit-fanout-test";

/// The app: records every push.
async fn app() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let router = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                if let Ok(mut g) = sink.lock() {
                    g.push(body);
                }
                Json(json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, got)
}

fn run_once(dir: &Path, app_url: &str) -> String {
    let out = Command::new(support::flowd_bin())
        .args(["run", "--once", "--config", "flowd.yaml"])
        .current_dir(dir)
        .env("FANOUT_TEST_TOKEN", TOKEN)
        .env("APP_HOOK_URL", app_url)
        .output()
        .expect("flowd runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

async fn call(sb: &Sandbox, method: reqwest::Method, path: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .request(method, format!("{}{path}", sb.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&body)
        .send()
        .await
        .expect("sandbox answers");
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.json().await.expect("json")
}

/// (task id, completed) of every push so far.
fn pushed(got: &Mutex<Vec<Value>>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = got
        .lock()
        .map(|g| {
            g.iter()
                .filter(|p| p["event"] == "task_synced")
                .map(|p| (p["task"]["id"].as_str().unwrap_or_default().to_string(), p["task"]["completed"] == true))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_sync_pushes_the_tasks_of_every_contact_once() {
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(6)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let (app_url, got) = app().await;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    let flow = std::fs::read_to_string(support::repo().join("flows/task-sync.yaml")).expect("the example flow");
    std::fs::write(dir.path().join("flows/task-sync.yaml"), flow).expect("flow");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        format!(
            "store: ./data\nflows: ./flows\nhttp_allow_private: true\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{FANOUT_TEST_TOKEN}}\n",
            sb.location_id(),
            sb.base_url()
        ),
    )
    .expect("config");

    run_once(dir.path(), &app_url);
    assert!(pushed(&got).is_empty(), "the first poll is the baseline");

    let mut contacts: Vec<String> =
        sb.records("contacts").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    contacts.sort();
    let mut tasks = Vec::new();
    for c in &contacts[..3] {
        let t = call(
            &sb,
            reqwest::Method::POST,
            &format!("/contacts/{c}/tasks"),
            json!({"title": format!("Call {c}"), "dueDate": "2030-01-01T10:00:00.000Z", "completed": false}),
        )
        .await;
        tasks.push((c.clone(), t["task"]["id"].as_str().expect("task id").to_string()));
    }

    run_once(dir.path(), &app_url);
    let mut want: Vec<(String, bool)> = tasks.iter().map(|(_, t)| (t.clone(), false)).collect();
    want.sort();
    assert_eq!(pushed(&got), want, "each new task pushed once");

    run_once(dir.path(), &app_url);
    assert_eq!(pushed(&got), want, "nothing pushed twice");

    let (c, t) = &tasks[1];
    call(&sb, reqwest::Method::PUT, &format!("/contacts/{c}/tasks/{t}/completed"), json!({"completed": true})).await;
    run_once(dir.path(), &app_url);
    want.push((t.clone(), true));
    want.sort();
    assert_eq!(pushed(&got), want, "the completed task pushed once more");
    let last = got.lock().map(|g| g.last().cloned()).ok().flatten().expect("a push");
    assert_eq!(last["task"]["contactId"], c.as_str());
}
