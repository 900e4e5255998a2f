//! Several `flowd run` processes on one PostgreSQL database, against the sandbox over
//! loopback: the work is shared (every new contact gets exactly one task, and every node
//! executes some), a node killed while it owns the trigger and runs is replaced within one
//! lease period, a node paused past its lease cannot commit when it wakes, and the nodes
//! come through their connections being dropped (what a database restart does to them).
//!
//! Needs `FLOWD_TEST_POSTGRES` (README, "Tests"): fails without it under CI=true.

mod support;

use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store::{Cluster, PgOptions, PgStore, RunFilter, RunStatus, Store};

const TOKEN: &str = "pit-cluster-test";

/// The tests start several services each: one at a time, so that they do not starve one
/// another of the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FLOW: &str = r#"name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1s
  start: now
  max_new: 20000
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

/// A cluster under test: a sandbox, a schema of its own, and the nodes' configs in a
/// temporary directory.
struct Cluster3 {
    sb: Sandbox,
    dir: tempfile::TempDir,
    url: String,
    schema: String,
    nodes: Vec<Node>,
    lease: Duration,
    /// The `rate_limit:` line of every node's config.
    rate_limit: String,
}

struct Node {
    name: String,
    listen: String,
    child: Option<Child>,
}

impl Cluster3 {
    async fn start(url: &str, names: &[&str], lease: Duration) -> Cluster3 {
        Self::start_with(url, names, lease, false).await
    }

    /// `ghl_limits`: the sandbox answers 429 past GHL's budget (100 requests per 10 s per
    /// location) and the nodes keep to GHL's budget; otherwise neither limits anything.
    async fn start_with(url: &str, names: &[&str], lease: Duration, ghl_limits: bool) -> Cluster3 {
        let limits = if ghl_limits { RateLimitConfig::default() } else { RateLimitConfig::disabled() };
        let mut config = SandboxConfig::default().with_seed(Seed::Contacts(3)).with_rate_limit(limits);
        config.tokens = vec![TOKEN.into()];
        let sb = Sandbox::start(config).await.expect("sandbox");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("flows")).expect("flows");
        std::fs::write(dir.path().join("flows/tasks.yaml"), FLOW).expect("flow");
        let schema = format!("flowd_cluster_{}_{}", std::process::id(), support::free_port());
        {
            let options = PgOptions { schema: Some(schema.clone()), ..PgOptions::new(url) };
            drop(PgStore::connect(&options, store::pg::Create::Yes).expect("schema"));
        }
        let rate_limit =
            if ghl_limits { String::new() } else { "rate_limit: { requests: 100000, per: 10s }\n".to_string() };
        let mut c = Cluster3 { sb, dir, url: url.into(), schema, nodes: Vec::new(), lease, rate_limit };
        // Held together while the ports are chosen, so that no two nodes get one port.
        let held: Vec<std::net::TcpListener> =
            names.iter().map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().map(|a| a.port()).expect("port")).collect();
        drop(held);
        for (name, port) in names.iter().zip(ports) {
            let listen = format!("127.0.0.1:{port}");
            c.write_config(name, &listen);
            c.nodes.push(Node { name: name.to_string(), listen, child: None });
        }
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    fn write_config(&self, name: &str, listen: &str) {
        let config = format!(
            "store: \"{}?options=-c%20search_path%3D{}\"\nflows: ./flows\nlisten: {listen}\nconcurrency: 16\nshutdown_timeout: 5s\n{}\
             cluster:\n  node: {name}\n  lease: {}ms\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{CLUSTER_TEST_TOKEN}}\n",
            self.url,
            self.schema,
            self.rate_limit,
            self.lease.as_millis(),
            self.sb.location_id(),
            self.sb.base_url()
        );
        std::fs::write(self.dir.path().join(format!("{name}.yaml")), config).expect("config");
    }

    fn spawn(&mut self, i: usize) {
        let d = self.dir.path();
        let name = self.nodes[i].name.clone();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(d.join(format!("{name}.log"))).expect("log");
        let child = Command::new(support::flowd_bin())
            .args(["run", "--config", &format!("{name}.yaml")])
            .current_dir(d)
            .env_remove("FLOWD_CONFIG")
            .env("CLUSTER_TEST_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("flowd starts");
        self.nodes[i].child = Some(child);
    }

    /// `flowd ARGS --config <node i's config>`.
    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(support::flowd_bin())
            .args(args)
            .args(["--config", &format!("{}.yaml", self.nodes[i].name)])
            .current_dir(self.dir.path())
            .env_remove("FLOWD_CONFIG")
            .env("CLUSTER_TEST_TOKEN", TOKEN)
            .output()
            .expect("flowd runs")
    }

    fn pid(&self, i: usize) -> String {
        self.nodes[i].child.as_ref().map(|c| c.id().to_string()).unwrap_or_default()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid(i)]).status().expect("kill");
        assert!(ok.success(), "kill {sig} node {i}");
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
                // What went wrong, then what the node did last.
                let notable: Vec<&str> =
                    log.lines().filter(|l| !l.contains(" INFO ") || l.contains("cluster:")).take(60).collect();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "--- {} ---\n{}\n[…]\n{}\n",
                    n.name,
                    notable.join("\n"),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name))).unwrap_or_default()
    }

    /// A handle on the cluster's schema, for what the test checks in the database.
    fn db(&self) -> PgStore {
        let options = PgOptions { schema: Some(self.schema.clone()), ..PgOptions::new(&self.url) };
        PgStore::connect(&options, store::pg::Create::No).expect("db")
    }

    async fn wait(&self, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen within {within:?}; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node answers `/readyz` and the trigger has its baseline.
    async fn ready(&self) {
        // Each node's own log says it serves (and not only something on its port).
        for i in 0..self.nodes.len() {
            let name = self.nodes[i].name.clone();
            self.wait(&format!("{name} serving"), Duration::from_secs(30), || self.log(i).contains("serving /healthz"))
                .await;
        }
        for n in &self.nodes {
            let url = format!("http://{}/readyz", n.listen);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false);
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "{} never ready; logs:\n{}", n.name, self.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let logs = || (0..self.nodes.len()).any(|i| self.log(i).contains("baseline=true"));
        self.wait("the baseline", Duration::from_secs(30), logs).await;
    }

    fn add_contacts(&self, n: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                let c = self
                    .sb
                    .insert_record(
                        "contacts",
                        serde_json::json!({"locationId": self.sb.location_id(), "firstName": format!("{tag}{i}")}),
                    )
                    .expect("contact");
                c["id"].as_str().expect("id").to_string()
            })
            .collect()
    }

    /// Tasks per contact id.
    fn tasks(&self) -> HashMap<String, usize> {
        let mut per = HashMap::new();
        for t in self.sb.records("tasks") {
            if let Some(id) = t["contactId"].as_str() {
                *per.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        per
    }

    /// A node's counter from `/metrics` (0 when absent or unreachable).
    async fn metric(&self, i: usize, name: &str) -> f64 {
        let Ok(res) = reqwest::get(format!("http://{}/metrics", self.nodes[i].listen)).await else { return 0.0 };
        let text = res.text().await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The node (by index) holding the trigger's lease now, as the database says.
    fn holder(&self, db: &PgStore) -> Option<usize> {
        let nodes = db.nodes().ok()?;
        let holder = nodes.iter().find(|n| n.alive && !n.leases.is_empty())?;
        self.nodes.iter().position(|n| n.name == holder.name)
    }

    fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(mut c) = self.nodes[i].child.take() {
                let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster3 {
    fn drop(&mut self) {
        self.stop_all();
        if let Err(e) = PgStore::drop_schema(&self.url, &self.schema) {
            eprintln!("dropping schema {}: {e}", self.schema);
        }
    }
}

/// Every contact has exactly one task, except those whose run is in doubt (killed between
/// recording "about to send" and the answer: an operator decides); none has two.
fn assert_exactly_once(c: &Cluster3, contacts: &[String], in_doubt: usize) {
    let tasks = c.tasks();
    let twice: Vec<(&String, &usize)> = tasks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} contact(s) got more than one task: {:?}; logs:\n{}",
        twice.len(),
        &twice[..twice.len().min(5)],
        c.logs()
    );
    let missing = contacts.iter().filter(|id| !tasks.contains_key(*id)).count();
    assert!(missing <= in_doubt, "{missing} contact(s) have no task and only {in_doubt} run(s) are in doubt");
}

async fn finished(c: &Cluster3, db: &PgStore, contacts: &[String], within: Duration) -> usize {
    let mut in_doubt = 0;
    let tasks_ok = |c: &Cluster3, in_doubt: usize| {
        let tasks = c.tasks();
        contacts.iter().filter(|id| !tasks.contains_key(*id)).count() <= in_doubt
    };
    let deadline = Instant::now() + within;
    // Cheap checks, once a second: the nodes, not the test, should have the machine.
    let any = |status| {
        db.list_runs(&RunFilter { status: Some(status), limit: 1, ..RunFilter::default() })
            .map(|r| r.len())
            .unwrap_or(1)
    };
    loop {
        let open = any(RunStatus::Pending) + any(RunStatus::Running);
        in_doubt = db
            .list_runs(&RunFilter { status: Some(RunStatus::InDoubt), ..RunFilter::default() })
            .map(|r| r.len())
            .unwrap_or(in_doubt);
        if open == 0 && tasks_ok(c, in_doubt) {
            return in_doubt;
        }
        assert!(
            Instant::now() < deadline,
            "not done within {within:?}: runs still open ({open}): {:?}, {} task(s) for {} contacts; logs:\n{}",
            [RunStatus::Pending, RunStatus::Running].map(|status| db
                .list_runs(&RunFilter { status: Some(status), limit: 5, ..RunFilter::default() })
                .map(|runs| runs.iter().map(|r| (r.id, r.status, r.attempts, r.steps.len())).collect::<Vec<_>>())),
            c.tasks().len(),
            contacts.len(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn shared_burst(nodes: &[&str]) {
    let Some(url) = support::pg_url() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster3::start(&url, nodes, Duration::from_secs(3)).await;
    c.ready().await;
    let db = c.db();
    let started = Instant::now();
    let contacts = c.add_contacts(10_000, "Burst");
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(240)).await;
    let took = started.elapsed();
    assert_eq!(in_doubt, 0, "nothing was killed: no run may be in doubt");
    assert_exactly_once(&c, &contacts, 0);
    let mut claimed = Vec::new();
    for i in 0..nodes.len() {
        claimed.push(c.metric(i, "flowd_cluster_runs_claimed_total").await);
    }
    eprintln!(
        "{} nodes: 10,000 contacts, 10,000 tasks in {:.1} s ({:.0} items/s); runs claimed per node: {claimed:?}",
        nodes.len(),
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64()
    );
    assert_eq!(claimed.iter().sum::<f64>(), 10_000.0, "every run claimed once: {claimed:?}");
    assert!(claimed.iter().all(|n| *n > 0.0), "every node executed some of the work: {claimed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_ten_thousand_new_contacts_each_getting_exactly_one_task() {
    shared_burst(&["n1", "n2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_ten_thousand_new_contacts_each_getting_exactly_one_task() {
    shared_burst(&["n1", "n2", "n3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_within_one_lease_period() {
    let Some(url) = support::pg_url() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let lease = Duration::from_secs(3);
    let mut c = Cluster3::start(&url, &["k1", "k2"], lease).await;
    c.ready().await;
    let db = c.db();
    let mut contacts = c.add_contacts(3_000, "Kill");
    c.wait("the burst under way", Duration::from_secs(60), || c.tasks().len() >= 300).await;
    let victim = c.holder(&db).expect("a node holds the trigger");
    let survivor = 1 - victim;
    c.signal(victim, "-KILL");
    let killed = Instant::now();
    if let Some(mut child) = c.nodes[victim].child.take() {
        let _ = child.wait();
    }
    // The survivor takes the trigger within one lease period (plus a heartbeat).
    let within = lease + lease / 3 + Duration::from_secs(1);
    c.wait("the trigger's takeover", within, || c.holder(&db) == Some(survivor)).await;
    let takeover = killed.elapsed();
    // And polls it: a contact added now gets its task.
    contacts.extend(c.add_contacts(1, "After"));
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(120)).await;
    assert_exactly_once(&c, &contacts, in_doubt);
    let moved = c.metric(survivor, "flowd_cluster_runs_taken_over_total").await;
    eprintln!(
        "lease takeover {:.2} s after SIGKILL (lease {lease:?}); {moved} run(s) taken over; {in_doubt} in doubt",
        takeover.as_secs_f64()
    );
    assert!(c.log(survivor).contains("took over the lease"), "{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_cannot_commit_when_it_wakes() {
    let Some(url) = support::pg_url() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let lease = Duration::from_secs(2);
    let c = Cluster3::start(&url, &["p1", "p2"], lease).await;
    c.ready().await;
    let db = c.db();
    let paused = c.holder(&db).expect("a node holds the trigger");
    let other = 1 - paused;
    let mut contacts = c.add_contacts(1_000, "Pause");
    c.wait("the burst under way", Duration::from_secs(60), || !c.tasks().is_empty()).await;
    c.signal(paused, "-STOP");
    c.wait("the other node's takeover", lease * 3, || c.holder(&db) == Some(other)).await;
    contacts.extend(c.add_contacts(200, "WhilePaused"));
    c.signal(paused, "-CONT");
    contacts.extend(c.add_contacts(200, "AfterWake"));
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(120)).await;
    // A few more heartbeats and polls: the woken node does not take the trigger back while
    // its holder lives, and nothing it had in hand is written twice.
    tokio::time::sleep(lease * 2).await;
    assert_exactly_once(&c, &contacts, in_doubt);
    assert_eq!(c.holder(&db), Some(other), "the lease stays with the node that took it; logs:\n{}", c.logs());
    let woke = c.log(paused);
    assert!(!woke.contains("superseded"), "a paused node is fenced by its lease, not superseded: {woke}");
    // `flowd nodes` shows both alive, and who holds the trigger.
    let out = c.cli(paused, &["nodes"]);
    let table = support::text(&out);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("2 node instance(s), 2 alive"), "{table}");
    let holder_line = table.lines().find(|l| l.starts_with(&c.nodes[other].name)).unwrap_or_default();
    assert!(holder_line.contains("alive") && holder_line.contains("tasks/"), "{table}");
    let json = c.cli(paused, &["nodes", "--json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&json.stdout).expect("nodes --json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_come_through_their_database_connections_being_dropped() {
    let Some(url) = support::pg_url() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster3::start(&url, &["r1", "r2"], Duration::from_secs(3)).await;
    c.ready().await;
    let db = c.db();
    let contacts = c.add_contacts(2_000, "Restart");
    c.wait("the burst under way", Duration::from_secs(60), || c.tasks().len() >= 200).await;
    // What a restart of the server does to every node: all their connections end, twice.
    for _ in 0..2 {
        let ended: u64 = ["flowd r1", "flowd r2"].iter().map(|n| db.terminate_connections(n).unwrap_or(0)).sum();
        assert!(ended > 0, "the nodes had connections to end");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(120)).await;
    assert_exactly_once(&c, &contacts, in_doubt);
    // Both nodes are still alive and serving.
    for i in 0..2 {
        let up = c.metric(i, "flowd_cluster_database_up").await;
        assert_eq!(up, 1.0, "node {i} reconnected; logs:\n{}", c.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_keep_to_one_locations_budget_together() {
    let Some(url) = support::pg_url() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster3::start_with(&url, &["b1", "b2"], Duration::from_secs(3), true).await;
    c.ready().await;
    let db = c.db();
    let started = Instant::now();
    let contacts = c.add_contacts(250, "Budget");
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(180)).await;
    let took = started.elapsed();
    assert_eq!(in_doubt, 0);
    assert_exactly_once(&c, &contacts, 0);
    let requests = c.sb.requests();
    let refused = requests.iter().filter(|r| r["status"] == 429).count();
    let mut claimed = Vec::new();
    for i in 0..2 {
        claimed.push(c.metric(i, "flowd_cluster_runs_claimed_total").await);
    }
    eprintln!(
        "budget: {} requests in {:.1} s ({:.1}/s for the location), {refused} answered 429; runs per node {claimed:?}",
        requests.len(),
        took.as_secs_f64(),
        requests.len() as f64 / took.as_secs_f64()
    );
    assert_eq!(refused, 0, "the nodes together stayed within 100 requests per 10 s");
    assert!(claimed.iter().all(|n| *n > 0.0), "both nodes sent some: {claimed:?}");
}

/// The command that restarts the test database (`FLOWD_TEST_POSTGRES_RESTART`, set by
/// `.ci/with-postgres`); required under CI=true.
fn pg_restart() -> Option<String> {
    match std::env::var("FLOWD_TEST_POSTGRES_RESTART") {
        Ok(cmd) if !cmd.is_empty() => Some(cmd),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FLOWD_TEST_POSTGRES_RESTART is not set: run the tests through .ci/with-postgres")
        }
        _ => {
            eprintln!("not run: needs FLOWD_TEST_POSTGRES_RESTART (`.ci/with-postgres cargo test` sets it)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_come_through_the_database_restarting_during_a_burst() {
    let Some(url) = support::pg_url() else { return };
    let Some(restart) = pg_restart() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster3::start(&url, &["d1", "d2"], Duration::from_secs(3)).await;
    c.ready().await;
    let db = c.db();
    let contacts = c.add_contacts(2_000, "Down");
    c.wait("the burst under way", Duration::from_secs(60), || c.tasks().len() >= 200).await;
    // The server stops (immediate: every connection cut) and is away for 4 s.
    let mut down = Command::new(&restart).arg("4").spawn().expect("restart");
    let mut unready = false;
    let deadline = Instant::now() + Duration::from_secs(8);
    while !unready && Instant::now() < deadline {
        for n in &c.nodes {
            let status = reqwest::get(format!("http://{}/readyz", n.listen)).await.map(|r| r.status().as_u16());
            unready |= status.is_ok_and(|s| s == 503);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(down.wait().expect("restart").success(), "the database restarted");
    assert!(unready, "a node said it was not ready while its database was away; logs:\n{}", c.logs());
    let in_doubt = finished(&c, &db, &contacts, Duration::from_secs(180)).await;
    assert_exactly_once(&c, &contacts, in_doubt);
    // Both nodes reconnected by themselves, and one of them polls the trigger again.
    for i in 0..2 {
        let up = c.metric(i, "flowd_cluster_database_up").await;
        assert_eq!(up, 1.0, "node {i} reconnected; logs:\n{}", c.logs());
    }
    let after = c.add_contacts(1, "AfterRestart");
    let mut all = contacts.clone();
    all.extend(after);
    let in_doubt = finished(&c, &db, &all, Duration::from_secs(60)).await;
    assert_exactly_once(&c, &all, in_doubt);
    eprintln!("database restarted mid-burst: {in_doubt} run(s) in doubt of {}", all.len());
}
