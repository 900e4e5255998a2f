//! `flowd run` as a service, against the sandbox over loopback: health and metrics,
//! reloading edited flows (a broken edit keeps the running version), a clean SIGTERM,
//! and SIGKILLs at random moments during a 1,000-item run with nothing lost.

mod support;

use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-service-test";
const ADMIN: &str = "admin-secret";

struct Service {
    dir: tempfile::TempDir,
    listen: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Service {
    fn new(sb: &Sandbox, flows: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = format!("127.0.0.1:{}", free_port());
        std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
        for (name, text) in flows {
            std::fs::write(dir.path().join("flows").join(name), text).expect("flow");
        }
        let config = format!(
            "store: ./data\nflows: ./flows\nlisten: {listen}\nadmin_token: admin-secret\nshutdown_timeout: 5s\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{SERVICE_TEST_TOKEN}}\n",
            sb.location_id(),
            sb.base_url()
        );
        std::fs::write(dir.path().join("flowd.yaml"), config).expect("config");
        Service { dir, listen, child: None }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("flowd.log")).expect("log");
        let child = Command::new(support::flowd_bin())
            .args(["run", "--config", "flowd.yaml"])
            .current_dir(self.dir.path())
            .env("SERVICE_TEST_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("flowd starts");
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("flowd.log")).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").args([sig, &c.id().to_string()]).status().expect("kill runs");
            assert!(ok.success());
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("flowd did not exit within {within:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A GET with the admin token (every `/api` route needs it).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_with(path, &[("authorization", &format!("Bearer {ADMIN}"))]).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        let mut req = reqwest::Client::new().get(format!("http://{}{path}", self.listen));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.ok()?;
        let status = res.status().as_u16();
        Some((status, res.text().await.ok()?))
    }

    /// `flowd ARGS --config flowd.yaml` in the service's directory: (exit code, output).
    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(support::flowd_bin())
            .args(args)
            .args(["--config", "flowd.yaml"])
            .current_dir(self.dir.path())
            .env("SERVICE_TEST_TOKEN", TOKEN)
            .output()
            .expect("flowd runs");
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("flowd never became ready; log:\n{}", self.log());
    }

    async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{needle}` never appeared in the log:\n{}", self.log());
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

async fn sandbox(seed: Seed) -> Sandbox {
    let mut config = SandboxConfig::default().with_seed(seed).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    Sandbox::start(config).await.expect("sandbox")
}

fn task_flow(name: &str, every: &str, start: &str) -> String {
    format!(
        r#"name: {name}
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
  every: {every}
  start: {start}
  max_new: 5000
steps:
  - id: task
    uses: contacts.create_task
    with: {{ contactId: "{{{{ trigger.id }}}}", title: "Call {{{{ trigger.firstName }}}}", dueDate: "2030-01-01T10:00:00Z", completed: false }}
"#
    )
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_metrics_reloads_flows_and_stops_cleanly_on_sigterm() {
    let sb = sandbox(Seed::Contacts(3)).await;
    let mut svc = Service::new(&sb, &[("tasks.yaml", &task_flow("tasks", "1s", "now"))]);
    svc.start();
    svc.wait_ready().await;
    assert_eq!(svc.get("/healthz").await.map(|r| r.0), Some(200));

    // A new contact (after the first poll recorded its baseline) is picked up by the
    // next scheduled poll and acted on.
    svc.wait_for_log("baseline=true", Duration::from_secs(10)).await;
    let c = sb
        .insert_record("contacts", serde_json::json!({"locationId": sb.location_id(), "firstName": "Ann"}))
        .expect("contact");
    let id = c["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sb.records("tasks").iter().all(|t| t["contactId"] != id.as_str()) {
        assert!(Instant::now() < deadline, "no task for the new contact; log:\n{}", svc.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sandbox holds the task once the POST is processed; the run is counted as
    // succeeded only after flowd has read the answer and recorded it, a moment later.
    let succeeded = "flowd_runs_total{flow=\"tasks\",status=\"succeeded\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, metrics) = svc.get("/metrics").await.expect("metrics");
        assert_eq!(status, 200);
        if metrics.contains(succeeded) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the run was never counted as succeeded:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains("flowd_polls_total{flow=\"tasks\""), "{metrics}");
    assert!(metrics.contains("flowd_ghl_responses_total{status=\"201\"}"), "{metrics}");

    // A broken edit is rejected and the running version stays.
    std::fs::write(svc.path("flows/tasks.yaml"), "name: tasks\ntrigger:\n  uses: contacts.nope\n").expect("edit");
    svc.wait_for_log("flow file rejected (the running version stays)", Duration::from_secs(10)).await;
    // A new valid flow is loaded without a restart.
    std::fs::write(svc.path("flows/second.yaml"), task_flow("second", "1m", "now")).expect("add");
    svc.wait_for_log("flow=second", Duration::from_secs(10)).await;
    let (_, flows) = svc.get("/api/flows").await.expect("flows");
    assert!(flows.contains("\"second\"") && flows.contains("\"tasks\""), "{flows}");

    // Runs are listed through the API; replay needs the admin token.
    let (_, runs) = svc.get("/api/runs?flow=tasks").await.expect("runs");
    assert!(runs.contains("\"succeeded\""), "{runs}");
    let res =
        reqwest::Client::new().post(format!("http://{}/api/runs/1/replay", svc.listen)).send().await.expect("post");
    assert_eq!(res.status().as_u16(), 401);

    svc.signal("-TERM");
    assert_eq!(svc.wait_exit(Duration::from_secs(15)), Some(0), "log:\n{}", svc.log());
    assert!(svc.log().contains("stopped cleanly"), "{}", svc.log());
    // The store reopens: nothing is left half-written.
    let runs = {
        let store = store::open(store_path(svc.dir.path())).expect("store reopens after SIGTERM");
        store.list_runs(&store::RunFilter { limit: 100, ..Default::default() }).expect("runs")
    };
    assert!(runs.iter().all(|r| r.status == store::RunStatus::Succeeded), "{runs:?}");

    // With the service stopped, the CLI reads and acts on the store directly.
    let cli = |args: &[&str]| svc.cli(args);
    let (code, listing) = cli(&["runs", "--flow", "tasks"]);
    assert_eq!(code, Some(0), "{listing}");
    assert!(listing.contains("succeeded") && listing.contains("1 run(s)"), "{listing}");
    let id = runs[0].id.to_string();
    let (code, shown) = cli(&["runs", "show", &id]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("contacts.create_task")
            && shown.contains(&format!("/contacts/{}/tasks", c["id"].as_str().unwrap_or_default())),
        "{shown}"
    );
    let tasks_before = sb.records("tasks").len();
    let (code, refused) = cli(&["replay", &id]);
    assert_eq!(code, Some(2), "the flow file is broken, so its runs cannot replay: {refused}");
    assert!(refused.contains("flow `tasks` is not among the valid flows"), "{refused}");
    std::fs::write(svc.path("flows/tasks.yaml"), task_flow("tasks", "1s", "now")).expect("fix the flow");
    // Only dead (and in_doubt) runs replay: this one succeeded, so nothing is sent again
    // (tests/replay.rs replays dead runs).
    let (code, refused) = cli(&["replay", &id]);
    assert_eq!(code, Some(2), "{refused}");
    assert!(refused.contains("it is succeeded"), "{refused}");
    assert_eq!(sb.records("tasks").len(), tasks_before, "a succeeded run is not sent again");
    let (code, released) = cli(&["release", "tasks"]);
    assert_eq!(code, Some(0), "{released}");
    assert!(released.contains("released 0 run(s) of tasks"), "{released}");
    let (code, missing) = cli(&["runs", "show", "999999"]);
    assert_eq!(code, Some(2), "{missing}");
    assert!(missing.contains("run 999999 not found"), "{missing}");
}

/// Runs hold rendered requests and contact data: every `/api` route needs the admin
/// token, and a request whose `Host` is not this listener's (a page re-pointed at
/// 127.0.0.1 by DNS rebinding) is refused. Probes and scrapes stay open; the CLI sends
/// the token when it goes through the running service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_admin_token_and_this_listeners_host() {
    let sb = sandbox(Seed::Contacts(1)).await;
    let mut svc = Service::new(&sb, &[("tasks.yaml", &task_flow("tasks", "1m", "now"))]);
    svc.start();
    svc.wait_ready().await;
    for path in ["/api/runs", "/api/runs/1", "/api/flows"] {
        assert_eq!(svc.get_with(path, &[]).await.map(|r| r.0), Some(401), "{path} without a token");
        let wrong = svc.get_with(path, &[("authorization", "Bearer not-it")]).await.map(|r| r.0);
        assert_eq!(wrong, Some(401), "{path} with a wrong token");
    }
    assert_eq!(svc.get("/api/runs").await.map(|r| r.0), Some(200));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(svc.get_with(path, &[]).await.map(|r| r.0), Some(200), "{path} stays open");
    }
    let port = svc.listen.rsplit_once(':').map(|(_, p)| p).unwrap_or_default().to_string();
    let rebound = format!("rebound.example:{port}");
    let with_token = format!("Bearer {ADMIN}");
    for path in ["/api/runs", "/metrics"] {
        let res = svc.get_with(path, &[("host", &rebound), ("authorization", &with_token)]).await;
        assert_eq!(res.as_ref().map(|r| r.0), Some(421), "{path} with Host {rebound}: {res:?}");
    }
    let local = format!("localhost:{port}");
    assert_eq!(
        svc.get_with("/api/runs", &[("host", &local), ("authorization", &with_token)]).await.map(|r| r.0),
        Some(200)
    );

    // The store is the service's: the CLI goes through the API, with the token.
    let (code, listing) = svc.cli(&["runs"]);
    assert_eq!(code, Some(0), "{listing}");
    assert!(listing.contains("0 run(s)"), "{listing}");
    let (code, missing) = svc.cli(&["runs", "show", "999999"]);
    assert_eq!(code, Some(2), "{missing}");
    assert!(missing.contains("run 999999 not found"), "{missing}");
    svc.signal("-TERM");
    assert_eq!(svc.wait_exit(Duration::from_secs(15)), Some(0), "log:\n{}", svc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    const ITEMS: usize = 1000;
    let sb = sandbox(Seed::Contacts(ITEMS)).await;
    let mut svc = Service::new(&sb, &[("tasks.yaml", &task_flow("tasks", "1s", "all"))]);
    let contacts: Vec<String> =
        sb.records("contacts").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    assert_eq!(contacts.len(), ITEMS);

    let mut kills = 0;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while kills < 6 {
        svc.start();
        // Kill while runs execute: once this process has sent something (or, on the
        // first start, once the first poll has committed its 1,000 runs).
        let before = sb.records("tasks").len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sb.records("tasks").len() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(next() % 400)).await;
        let done = sb.records("tasks").len();
        svc.signal("-KILL");
        let _ = svc.wait_exit(Duration::from_secs(10));
        kills += 1;
        if done >= ITEMS {
            break;
        }
    }
    // A last, undisturbed start finishes the work.
    svc.start();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, body) = svc.get("/api/runs?status=pending&limit=1").await.unwrap_or((0, String::new()));
        let (_, running) = svc.get("/api/runs?status=running&limit=1").await.unwrap_or((0, String::new()));
        let (_, all) = svc.get("/api/runs?limit=1000").await.unwrap_or((0, String::new()));
        let total =
            serde_json::from_str::<serde_json::Value>(&all).ok().and_then(|v| v["runs"].as_array().map(Vec::len));
        if body.contains("\"runs\":[]") && running.contains("\"runs\":[]") && total == Some(ITEMS) {
            break;
        }
        assert!(Instant::now() < deadline, "work did not finish; log:\n{}", svc.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    svc.signal("-TERM");
    assert_eq!(svc.wait_exit(Duration::from_secs(15)), Some(0));

    let store = store::open(store_path(svc.dir.path())).expect("store reopens");
    let runs = store.list_runs(&store::RunFilter { limit: 10_000, ..Default::default() }).expect("runs");
    assert_eq!(runs.len(), ITEMS, "one run per item, none lost, none created twice");
    let in_doubt = runs.iter().filter(|r| r.status == store::RunStatus::InDoubt).count();
    let succeeded = runs.iter().filter(|r| r.status == store::RunStatus::Succeeded).count();
    assert_eq!(succeeded + in_doubt, ITEMS, "every run finished or was flagged for review");
    // Only steps in flight at a kill (at most `concurrency` per kill) can be in doubt.
    let concurrency = engine::EngineConfig::default().concurrency;
    assert!(in_doubt <= kills * concurrency, "{in_doubt} runs in doubt after {kills} kills");

    let tasks = sb.records("tasks");
    let mut per_contact = std::collections::HashMap::new();
    for t in &tasks {
        *per_contact.entry(t["contactId"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    let duplicates: usize = per_contact.values().map(|n| n - 1).sum();
    let missing = contacts.iter().filter(|c| !per_contact.contains_key(*c)).count();
    assert_eq!(duplicates, 0, "no item was acted on twice");
    assert!(missing <= in_doubt, "{missing} items without a task, only {in_doubt} in doubt");
    eprintln!("{kills} SIGKILLs, {ITEMS} items: {succeeded} succeeded, {in_doubt} in doubt, {missing} missing, {duplicates} duplicates");
}
