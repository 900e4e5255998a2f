//! Inbound HTTP triggers through `flowd run`: the app calls flowd on the webhook listener.
//! Wrong tokens, bad signatures, stale timestamps and oversized bodies are refused and
//! counted; a repeated idempotency key fires once; request/reply answers with the GHL
//! contact, through the read cache (no GHL request the second time) until a flow's own
//! write to that contact; a request answered 2xx survives a SIGKILL of flowd.

mod support;

use sandbox::{FaultRule, FaultSettings, RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-inbound-test";
const APP_TOKEN: &str = "app-token-123";
const APP_SECRET: &str = "app-hmac-secret";

const CONTACT: &str = r#"
name: contact
account: main
trigger:
  http:
    path: /app/contact
    auth: { bearer: "${APP_TOKEN}" }
    respond:
      body: { id: "{{ steps.contact.id }}", name: "{{ steps.contact.firstName }} {{ steps.contact.lastName }}" }
steps:
  - id: contact
    uses: contacts.get_contact
    with: { contactId: "{{ trigger.body.contactId }}" }
    cache: 5m
"#;

const RENAME: &str = r#"
name: rename
account: main
trigger:
  http:
    path: /app/rename
    auth: { bearer: "${APP_TOKEN}" }
    respond: { body: { ok: true } }
steps:
  - id: update
    uses: contacts.update_contact
    with: { contactId: "{{ trigger.body.contactId }}", firstName: "{{ trigger.body.firstName }}" }
"#;

const TASKS: &str = r#"
name: tasks
account: main
trigger:
  http:
    path: /app/tasks
    auth: { hmac: { secret: "${APP_HMAC_SECRET}", tolerance: 5m } }
    idempotency: { header: Idempotency-Key }
    max_body: 1KiB
    headers: [X-Request-Id]
    respond:
      status: 201
      body: { taskId: "{{ steps.task.id }}", requestId: "{{ trigger.headers.x-request-id }}" }
steps:
  - id: task
    uses: contacts.create_task
    with:
      contactId: "{{ trigger.body.contactId }}"
      title: "{{ trigger.body.title }}"
      dueDate: "2030-01-01T00:00:00Z"
      completed: false
"#;

const SLOW: &str = r#"
name: slow
account: main
trigger:
  http:
    path: /app/slow
    auth: { bearer: "${APP_TOKEN}" }
    respond: { body: { id: "{{ steps.read.id }}" }, timeout: 1s }
steps:
  - id: read
    uses: contacts.get_contact
    with: { contactId: "{{ trigger.body.contactId }}" }
"#;

const TOUCH: &str = r#"
name: touch
account: main
trigger:
  http:
    path: /app/touch
    auth: { bearer: "${APP_TOKEN}" }
steps:
  - id: read
    uses: contacts.get_contact
    with: { contactId: "{{ trigger.body.contactId }}" }
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

struct Flowd {
    dir: tempfile::TempDir,
    admin: String,
    hooks: String,
    child: Option<Child>,
}

impl Drop for Flowd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Flowd {
    fn new(sb: &Sandbox, flows: &[(&str, &str)]) -> Flowd {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
        for (name, text) in flows {
            std::fs::write(dir.path().join(format!("flows/{name}.yaml")), text).expect("flow");
        }
        let admin = format!("127.0.0.1:{}", free_port());
        let hooks = format!("127.0.0.1:{}", free_port());
        let yaml = format!(
            "store: ./data\nflows: ./flows\nlisten: {admin}\nwebhooks:\n  listen: {hooks}\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{T}}\n",
            sb.location_id(),
            sb.base_url()
        );
        std::fs::write(dir.path().join("flowd.yaml"), yaml).expect("config");
        Flowd { dir, admin, hooks, child: None }
    }

    async fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("flowd.log")).expect("log");
        self.child = Some(
            Command::new(support::flowd_bin())
                .args(["run", "--config", "flowd.yaml"])
                .current_dir(self.dir.path())
                .env("T", TOKEN)
                .env("APP_TOKEN", APP_TOKEN)
                .env("APP_HMAC_SECRET", APP_SECRET)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("flowd starts"),
        );
        let http = client();
        let started = Instant::now();
        while http.get(format!("http://{}/readyz", self.admin)).send().await.map(|r| r.status() != 200).unwrap_or(true)
        {
            assert!(started.elapsed() < Duration::from_secs(20), "{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: nothing is flushed or drained on the way out.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.hooks)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("flowd.log")).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        let m = client().get(format!("http://{}/metrics", self.admin)).send().await.expect("metrics");
        m.text().await.expect("text")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..secret.len()].copy_from_slice(secret);
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(message.iter().copied()).collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
    hex::encode(Sha256::digest(&outer))
}

/// A request to `url` signed as the app signs it: `timestamp + "." + body`.
fn signed(url: &str, body: &str, at: i64, secret: &str) -> reqwest::RequestBuilder {
    let ts = at.to_string();
    let sig = hmac_hex(secret.as_bytes(), format!("{ts}.{body}").as_bytes());
    client()
        .post(url)
        .header("content-type", "application/json")
        .header("X-Flowd-Timestamp", ts)
        .header("X-Flowd-Signature", sig)
        .body(body.to_string())
}

fn ghl_requests(sb: &Sandbox, op: &str) -> usize {
    sb.requests().iter().filter(|e| e["op"] == op).count()
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn sandbox_config() -> SandboxConfig {
    let mut config = SandboxConfig::default().with_seed(Seed::Empty).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_requests_are_authenticated_deduplicated_and_answered_through_the_cache() {
    let sb = Sandbox::start(sandbox_config()).await.expect("sandbox");
    let contact = sb.insert_record("contacts", json!({"firstName": "Ann", "lastName": "Lee"})).expect("contact");
    let id = contact["id"].as_str().expect("id").to_string();
    let mut svc = Flowd::new(&sb, &[("contact", CONTACT), ("rename", RENAME), ("tasks", TASKS)]);
    svc.start().await;
    let http = client();
    let read = |token: &'static str| {
        http.post(svc.url("/app/contact")).bearer_auth(token).json(&json!({ "contactId": id })).send()
    };

    // Bearer: a wrong token and none at all are refused.
    assert_eq!(read("wrong").await.expect("answer").status(), 401);
    let none = http.post(svc.url("/app/contact")).json(&json!({ "contactId": id })).send().await.expect("answer");
    assert_eq!(none.status(), 401);
    assert_eq!(ghl_requests(&sb, "contacts.get_contact"), 0);

    // Request/reply: the contact from GHL, then the same from the cache.
    let (status, body) = json_of(read(APP_TOKEN).await.expect("answer")).await;
    assert_eq!((status, &body), (200, &json!({"id": id, "name": "Ann Lee"})), "{}", svc.log());
    assert_eq!(ghl_requests(&sb, "contacts.get_contact"), 1);
    let (status, body) = json_of(read(APP_TOKEN).await.expect("answer")).await;
    assert_eq!((status, &body), (200, &json!({"id": id, "name": "Ann Lee"})));
    assert_eq!(ghl_requests(&sb, "contacts.get_contact"), 1, "the second read spends no GHL request");

    // A flow's own write to the contact: the next read is fresh, not the cached copy.
    let renamed = http
        .post(svc.url("/app/rename"))
        .bearer_auth(APP_TOKEN)
        .json(&json!({ "contactId": id, "firstName": "Bea" }))
        .send()
        .await
        .expect("answer");
    assert_eq!(renamed.status(), 200, "{}", svc.log());
    let (_, body) = json_of(read(APP_TOKEN).await.expect("answer")).await;
    assert_eq!(body["name"], "Bea Lee");
    assert_eq!(ghl_requests(&sb, "contacts.get_contact"), 2);

    // A step that fails: 502 naming the step, and the run.
    let missing = http
        .post(svc.url("/app/contact"))
        .bearer_auth(APP_TOKEN)
        .json(&json!({ "contactId": "no-such-contact" }))
        .send()
        .await
        .expect("answer");
    let (status, body) = json_of(missing).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["step"], "contact", "{body}");
    assert!(body["run_id"].is_string() && body["error"].is_string(), "{body}");

    // Unknown route.
    assert_eq!(http.post(svc.url("/app/nothing")).send().await.expect("answer").status(), 404);

    // HMAC: signed, with an idempotency key; the app's retry fires the flow once.
    let now = chrono::Utc::now().timestamp();
    let task = json!({"contactId": id, "title": "Call back"}).to_string();
    let first = signed(&svc.url("/app/tasks"), &task, now, APP_SECRET)
        .header("Idempotency-Key", "k-1")
        .header("X-Request-Id", "req-7")
        .send()
        .await
        .expect("answer");
    let (status, body) = json_of(first).await;
    assert_eq!(status, 201, "{body} {}", svc.log());
    assert_eq!(body["requestId"], "req-7");
    let task_id = body["taskId"].as_str().expect("a task id").to_string();
    assert!(sb.records("tasks").iter().any(|t| t["id"] == task_id.as_str()));
    let again = signed(&svc.url("/app/tasks"), &task, now, APP_SECRET)
        .header("Idempotency-Key", "k-1")
        .send()
        .await
        .expect("answer");
    assert_eq!(json_of(again).await, (200, json!({"duplicate": true})));
    assert_eq!(ghl_requests(&sb, "contacts.create_task"), 1, "one task for one key");

    // Refused: a bad signature, a stale timestamp, an oversized body.
    let bad = signed(&svc.url("/app/tasks"), &task, now, "not-the-secret").send().await.expect("answer");
    assert_eq!(bad.status(), 401);
    let stale = signed(&svc.url("/app/tasks"), &task, now - 3600, APP_SECRET).send().await.expect("answer");
    assert_eq!(stale.status(), 401);
    let big = json!({"contactId": id, "title": "x".repeat(2048)}).to_string();
    let large = signed(&svc.url("/app/tasks"), &big, now, APP_SECRET).send().await.expect("answer");
    assert_eq!(large.status(), 413);
    assert_eq!(ghl_requests(&sb, "contacts.create_task"), 1);

    let m = svc.metrics().await;
    for line in [
        r#"flowd_inbound_requests_total{flow="contact",result="unauthorized"} 2"#,
        r#"flowd_inbound_requests_total{flow="contact",result="replied"} 3"#,
        r#"flowd_inbound_requests_total{flow="contact",result="run_failed"} 1"#,
        r#"flowd_inbound_requests_total{flow="tasks",result="replied"} 1"#,
        r#"flowd_inbound_requests_total{flow="tasks",result="duplicate"} 1"#,
        r#"flowd_inbound_requests_total{flow="tasks",result="unauthorized"} 1"#,
        r#"flowd_inbound_requests_total{flow="tasks",result="stale"} 1"#,
        r#"flowd_inbound_requests_total{flow="tasks",result="too_large"} 1"#,
        r#"flowd_inbound_requests_total{flow="",result="not_found"} 1"#,
        r#"flowd_step_cache_total{result="hit"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

/// A request answered 202 is a pending run on disk: flowd killed before the run could
/// finish runs it once after the restart. (And a reply slower than its timeout is a 504.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_2xx_survives_a_sigkill() {
    let sb = Sandbox::start(sandbox_config()).await.expect("sandbox");
    let contact = sb.insert_record("contacts", json!({"firstName": "Ann"})).expect("contact");
    let id = contact["id"].as_str().expect("id").to_string();
    // The read is slow, so the run is still going when flowd is killed.
    let slow = FaultRule { latency_ms: 3_000, ..FaultRule::default() };
    sb.set_faults(
        FaultSettings { operations: [("contacts.get_contact".into(), slow)].into(), ..Default::default() },
        None,
    );
    let mut svc = Flowd::new(&sb, &[("touch", TOUCH), ("slow", SLOW)]);
    svc.start().await;
    // A reply that takes longer than `respond.timeout`: 504 with the run id.
    let late = client()
        .post(svc.url("/app/slow"))
        .bearer_auth(APP_TOKEN)
        .json(&json!({ "contactId": id }))
        .send()
        .await
        .expect("answer");
    let (status, body) = json_of(late).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["run_id"].is_string(), "{body}");
    let answer = client()
        .post(svc.url("/app/touch"))
        .bearer_auth(APP_TOKEN)
        .json(&json!({ "contactId": id }))
        .send()
        .await
        .expect("answer");
    let (status, body) = json_of(answer).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().expect("run id").to_string();
    svc.kill();
    sb.set_faults(FaultSettings::default(), None);

    svc.start().await;
    let started = Instant::now();
    let done = r#"flowd_runs_total{flow="touch",status="succeeded"} 1"#;
    while !svc.metrics().await.contains(done) {
        assert!(started.elapsed() < Duration::from_secs(15), "not resumed; log:\n{}", svc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.kill();
    let runs = runs_of(svc.dir.path(), "touch");
    assert_eq!(runs.len(), 1, "one request, one run: {runs:?}");
    assert_eq!(runs[0].id.to_string(), run_id);
    assert_eq!(runs[0].status, store::RunStatus::Succeeded, "{}", svc.log());
}

fn runs_of(dir: &Path, flow: &str) -> Vec<store::Run> {
    let store = store::create_or_open(dir.join("data"), store::Backend::FOR_NEW_STORES).expect("store");
    let filter = store::RunFilter { flow: Some(flow.into()), limit: 100, ..store::RunFilter::default() };
    store.list_runs(&filter).expect("runs")
}
