//! `flowd demo`: the embedded sandbox with demo data, the example flows, and changes made
//! as a user would, with the runs printed as they happen. Nothing to configure.

mod instant;

use crate::cli::DemoArgs;
use crate::exit::Failed;
use axum::routing::post;
use axum::{Json, Router};
use engine::{AccountInfo, Engine, EngineConfig, Metrics};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::RunStatus;

/// The example flows of the repository, built into the binary.
const EXAMPLES: &[(&str, &str)] = &[
    ("welcome-new-contacts.yaml", include_str!("../../../../flows/welcome-new-contacts.yaml")),
    ("direct-read-contact.yaml", include_str!("../../../../flows/direct-read-contact.yaml")),
    ("task-sync.yaml", include_str!("../../../../flows/task-sync.yaml")),
    ("notes-to-feed.yaml", include_str!("../../../../flows/notes-to-feed.yaml")),
    ("appointments-to-feed.yaml", include_str!("../../../../flows/appointments-to-feed.yaml")),
    ("instant-welcome.yaml", include_str!("../../../../flows/instant-welcome.yaml")),
    ("app-create-task.yaml", include_str!("../../../../flows/app-create-task.yaml")),
    ("app-complete-task.yaml", include_str!("../../../../flows/app-complete-task.yaml")),
];

#[derive(Default)]
struct Totals {
    runs: usize,
    steps: usize,
    failures: usize,
}

pub async fn run(catalog: Arc<catalog::Catalog>, args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = SandboxConfig::default().with_seed(Seed::Demo).with_rate_limit(RateLimitConfig::disabled());
    let token = config.tokens.first().cloned().unwrap_or_default();
    let sb = Sandbox::start(config).await.map_err(|e| Failed::new(format!("cannot start the sandbox: {e}")))?;
    let (app_url, received) = start_app().await?;
    let watched = watched_contact(&sb).ok_or_else(|| Failed::new("the demo data has no contact with tasks"))?;
    let others = other_contacts(&sb, &watched);
    if others.len() < 3 {
        return Err(Failed::new("the demo data has fewer than four contacts").into());
    }

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("APP_HOOK_URL".into(), app_url.clone());
    // The app's credentials for the `trigger.http` flows; the demo's app calls the engine
    // in-process (no listener), so they are only there for the flows to load cleanly.
    env.insert("APP_TOKEN".into(), "demo-app-token".into());
    env.insert("APP_HMAC_SECRET".into(), "demo-app-secret".into());
    let compile_env = flow::CompileEnv { env: env.clone(), accounts: vec!["main".into()] };
    let mut flows = Vec::new();
    for (file, text) in EXAMPLES {
        let (compiled, diags) = flow::load(file, text, &catalog, &compile_env);
        match compiled {
            Some(f) if !diags.iter().any(|d| d.is_error()) => flows.push(f),
            _ => {
                return Err(Failed::new(format!("example flow {file} is invalid:\n{}", flow::render_all(&diags))).into())
            }
        }
    }

    let dir = tempfile::tempdir()?;
    let store = store::create_or_open(dir.path().join("store"), store::Backend::FOR_NEW_STORES)?;
    let metrics = Arc::new(Metrics::new());
    let client = ghl::Client::builder().observer(metrics.clone()).build()?;
    client.add_account(
        ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(token.clone())))?
            .with_base_url(&sb.base_url())?
            .with_resource(sb.location_id()),
    );
    let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
    // The demo's app listens on 127.0.0.1: a local target, refused unless allowed.
    let config = EngineConfig { http_allow_private: true, ..EngineConfig::default() };
    let engine = Engine::new(catalog, client, store, accounts, env, config, metrics);
    engine.set_flows(flows)?;
    let mut hooks = instant::Webhooks::start(&sb, &engine).await?;

    println!("flowd demo");
    println!("  GHL sandbox   {} (location {}, demo data)", sb.base_url(), sb.location_id());
    println!("  your app      {app_url} (receives the http.request pushes)");
    println!("  contacts      all of them: tasks, notes and appointments change on several below");
    println!("  webhooks      {} (the sandbox sends signed GHL webhooks here)", hooks.url());
    println!("  flows         {}", engine.flow_names().join(", "));
    println!();
    println!("1. first poll of every flow: record what exists, fire nothing");
    let mut totals = Totals::default();
    poll_all(&engine, &mut totals).await;

    let user = User {
        http: reqwest::Client::new(),
        base: sb.base_url(),
        token,
        location: sb.location_id().into(),
        watched,
        others,
    };
    let mut cycle = 0;
    loop {
        cycle += 1;
        println!("\n{}. in GHL, a user makes changes:", cycle + 1);
        for change in user.make_changes(cycle).await {
            println!("   - {change}");
        }
        println!("   webhooks fire instant flows at once:");
        hooks.report(&engine, &mut totals).await;
        println!("   your app calls flowd:");
        app_calls(&engine, &sb, &user.watched, cycle, &mut totals).await;
        println!("   flowd polls and acts:");
        poll_all(&engine, &mut totals).await;
        let pushes = received.lock().map(|r| r.len()).unwrap_or(0);
        println!("   your app has received {pushes} push(es) so far");
        if args.once {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!(
        "\nsummary: {} flows, {} runs, {} steps, {} failures, {:.1}s",
        engine.flow_names().len(),
        totals.runs,
        totals.steps,
        totals.failures,
        started.elapsed().as_secs_f64()
    );
    if totals.failures > 0 {
        return Err(Failed::new(format!("{} run(s) failed", totals.failures)).into());
    }
    Ok(())
}

/// The demo's app asks flowd, as it would over `trigger.http` (the request is handed to the
/// engine directly, past the listener's authentication): the contact card twice (the
/// second from the cache), and a task for the contact, sent twice with one idempotency key.
async fn app_calls(engine: &Arc<Engine>, sb: &Sandbox, contact: &str, cycle: usize, totals: &mut Totals) {
    let reads = || sb.requests().iter().filter(|e| e["op"] == "contacts.get_contact").count();
    let item = |body: Value| json!({ "body": body, "query": {}, "headers": {} });
    for attempt in 0..2 {
        let before = reads();
        let reply = app_request(engine, "/app/contact", None, item(json!({ "contactId": contact }))).await;
        let spent = reads() - before;
        match reply {
            Some(r) if r.status == 200 => println!(
                "   ok   POST /app/contact -> {} {} ({spent} GHL request{}{})",
                r.status,
                r.body["name"],
                if spent == 1 { "" } else { "s" },
                if attempt == 1 && spent == 0 { ": from the cache" } else { "" }
            ),
            other => {
                totals.failures += 1;
                println!("   FAIL POST /app/contact -> {other:?}");
            }
        }
    }
    let key = format!("demo-task-{cycle}");
    let task = item(json!({ "contactId": contact, "title": format!("Follow up (app, cycle {cycle})") }));
    for _ in 0..2 {
        match app_request(engine, "/app/tasks", Some(key.clone()), task.clone()).await {
            Some(r) if r.status == 201 => println!("   ok   POST /app/tasks -> 201 task {}", r.body["taskId"]),
            Some(r) if r.body == json!({"duplicate": true}) => {
                println!("   ok   POST /app/tasks again (Idempotency-Key {key}) -> 200 duplicate: no second task")
            }
            other => {
                totals.failures += 1;
                println!("   FAIL POST /app/tasks -> {other:?}");
            }
        }
    }
}

async fn app_request(
    engine: &Arc<Engine>,
    path: &str,
    key: Option<String>,
    item: Value,
) -> Option<engine::InboundReply> {
    let rt = engine.inbound_flow(path)?;
    let respond = rt.trigger.http.as_ref()?.respond.clone()?;
    match engine.accept_inbound(&rt, key, item).await.ok()? {
        engine::Accepted::Duplicate => {
            Some(engine::InboundReply { status: 200, body: json!({"duplicate": true}), headers: Vec::new() })
        }
        engine::Accepted::Run { id, handle } => Some(engine.inbound_reply(&rt, &respond, id, handle).await),
    }
}

async fn poll_all(engine: &Arc<Engine>, totals: &mut Totals) {
    let served = engine.inbound_paths();
    for name in engine.flow_names() {
        if !served.is_empty() && engine.inbound_flow_named(&name) {
            continue;
        }
        let t = Instant::now();
        match engine.poll_and_run(&name).await {
            Ok((report, statuses)) => {
                if report.baseline {
                    println!("   {name}: {} item(s) seen, baseline recorded", report.items);
                    continue;
                }
                for (id, status) in report.runs.iter().zip(&statuses) {
                    totals.runs += 1;
                    let run = engine.store().get_run(*id).ok().flatten();
                    let steps: Vec<String> = run.iter().flat_map(|r| r.steps.iter().map(|s| s.step.clone())).collect();
                    totals.steps += steps.len();
                    let mark = if *status == RunStatus::Succeeded { "ok  " } else { "FAIL" };
                    if *status != RunStatus::Succeeded {
                        totals.failures += 1;
                    }
                    let error = run.and_then(|r| r.error).map(|e| format!(" ({e})")).unwrap_or_default();
                    println!("   {mark} {name} run {id}: {} [{status}]{error}", steps.join(" -> "));
                }
                if report.runs.is_empty() {
                    println!("   {name}: nothing new ({} ms)", t.elapsed().as_millis());
                }
            }
            Err(e) => {
                totals.failures += 1;
                println!("   FAIL {name}: {e}");
            }
        }
    }
}

/// The demo's stand-in for "your app": it records what flows push to it.
async fn start_app() -> anyhow::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                if let Ok(mut r) = sink.lock() {
                    r.push(body);
                }
                Json(json!({ "ok": true }))
            }
        })
        .put(|| async { Json(json!({ "ok": true })) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, received))
}

fn watched_contact(sb: &Sandbox) -> Option<String> {
    let tasks = sb.records("tasks");
    let with_tasks = tasks.iter().filter_map(|t| t["contactId"].as_str());
    with_tasks.into_iter().next().map(str::to_string)
}

/// Contacts other than `watched`, in id order, so each cycle changes the same ones.
fn other_contacts(sb: &Sandbox, watched: &str) -> Vec<String> {
    let mut ids: Vec<String> = sb
        .records("contacts")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .filter(|id| id != watched)
        .collect();
    ids.sort();
    ids
}

/// Changes a person would make in GHL, through the API.
struct User {
    http: reqwest::Client,
    base: String,
    token: String,
    location: String,
    /// A contact with tasks: one is completed, and its record is edited.
    watched: String,
    /// Other contacts: tasks, notes and appointments are added to them.
    others: Vec<String>,
}

impl User {
    async fn call(&self, method: reqwest::Method, path: &str, version: &str, body: Value) -> Option<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Version", version);
        // A GET carries no body: GHL (and the sandbox) refuse a JSON `null` with a 400.
        if !body.is_null() {
            req = req.json(&body);
        }
        let res = req.send().await.ok()?;
        res.json().await.ok()
    }

    async fn make_changes(&self, cycle: usize) -> Vec<String> {
        let mut done = Vec::new();
        let post = reqwest::Method::POST;
        for n in 0..3 {
            let first = ["Maya", "Omar", "Lena", "Theo", "Iris", "Noah"][(cycle * 3 + n) % 6];
            let body = json!({ "locationId": self.location, "firstName": first, "lastName": format!("Demo{cycle}"),
                "email": format!("{}.demo{cycle}{n}@example.com", first.to_lowercase()) });
            if self.call(post.clone(), "/contacts/", "2021-07-28", body).await.is_some() {
                done.push(format!("added contact {first} Demo{cycle}"));
            }
        }
        let c = &self.watched;
        let tasks = self.call(reqwest::Method::GET, &format!("/contacts/{c}/tasks"), "2021-07-28", Value::Null).await;
        let open = tasks
            .as_ref()
            .and_then(|t| t["tasks"].as_array())
            .and_then(|ts| ts.iter().find(|t| t["completed"] != true))
            .and_then(|t| t["id"].as_str().map(str::to_string));
        if let Some(task) = open {
            let path = format!("/contacts/{c}/tasks/{task}/completed");
            if self.call(reqwest::Method::PUT, &path, "2021-07-28", json!({ "completed": true })).await.is_some() {
                done.push(format!("completed task {task}"));
            }
        }
        for contact in &self.others[..2] {
            let task = json!({ "title": format!("Follow up, cycle {cycle}"), "dueDate": "2030-01-01T10:00:00.000Z",
                "completed": false });
            if self.call(post.clone(), &format!("/contacts/{contact}/tasks"), "2021-07-28", task).await.is_some() {
                done.push(format!("added a task to contact {contact}"));
            }
        }
        for contact in [c, &self.others[2]] {
            let note = json!({ "body": format!("Called back, cycle {cycle}") });
            if self.call(post.clone(), &format!("/contacts/{contact}/notes"), "2021-07-28", note).await.is_some() {
                done.push(format!("added a note to contact {contact}"));
            }
        }
        let c = &self.others[1];
        let calendars = self
            .call(reqwest::Method::GET, &format!("/calendars/?locationId={}", self.location), "2021-04-15", Value::Null)
            .await;
        if let Some(calendar) = calendars.as_ref().and_then(|c| c["calendars"][0]["id"].as_str()) {
            let start = chrono::Utc::now() + chrono::Duration::days(2 + cycle as i64);
            let start = start.format("%Y-%m-%dT10:00:00Z").to_string();
            let appointment = json!({ "calendarId": calendar, "locationId": self.location, "contactId": c,
                "startTime": start, "title": format!("Demo call {cycle}"), "ignoreFreeSlotValidation": true });
            let made = self.call(post.clone(), "/calendars/events/appointments", "2021-04-15", appointment).await;
            if made.is_some_and(|m| m.get("id").is_some() || m.get("event").is_some()) {
                done.push(format!("booked an appointment for contact {c}"));
            }
        }
        let c = &self.watched;
        let update = json!({ "city": format!("Springfield {cycle}") });
        if self.call(reqwest::Method::PUT, &format!("/contacts/{c}"), "2021-07-28", update).await.is_some() {
            done.push(format!("edited contact {c}"));
        }
        done
    }
}
