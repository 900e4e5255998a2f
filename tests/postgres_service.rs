//! `flowd run` on PostgreSQL, against the sandbox over loopback: an embedded store copied
//! with `flowd store migrate --to postgres://…` goes on in PostgreSQL without firing again
//! for what it had seen, new contacts get their task, `/readyz` answers from the database,
//! and the password is given by reference and never printed.
//!
//! Needs `FLOWD_TEST_POSTGRES` (README, "Tests"): fails without it under CI=true.

mod support;

use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pit-postgres-test";

fn flow() -> &'static str {
    r#"name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1s
  start: now
  max_new: 5000
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#
}

fn write_config(dir: &Path, store: &str, listen: &str, sb: &Sandbox) {
    let config = format!(
        "{store}flows: ./flows\nlisten: {listen}\nshutdown_timeout: 5s\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{PG_TEST_TOKEN}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.join("flowd.yaml"), config).expect("config");
}

fn start(dir: &Path, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log");
    Command::new(support::flowd_bin())
        .args(["run", "--config", "flowd.yaml"])
        .current_dir(dir)
        .env("PG_TEST_TOKEN", TOKEN)
        .env("PG_TEST_PASSWORD", "not-needed-with-trust")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("flowd starts")
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

async fn wait_until(what: &str, within: Duration, dir: &Path, logname: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen; log:\n{}", log(dir, logname));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(listen: &str) -> Option<u16> {
    let res = reqwest::Client::new().get(format!("http://{listen}/readyz")).send().await.ok()?;
    Some(res.status().as_u16())
}

fn stop(child: &mut Child) -> Option<i32> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait().ok().and_then(|s| s.code())
}

/// `flowd ARGS` in `dir` with the variables the config references.
fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(support::flowd_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOWD_CONFIG")
        .env("PG_TEST_TOKEN", TOKEN)
        .env("PG_TEST_PASSWORD", "not-needed-with-trust")
        .output()
        .expect("flowd runs")
}

/// Drops the test's schema however the test ends.
struct Schema<'a>(&'a str, String);

impl Drop for Schema<'_> {
    fn drop(&mut self) {
        if let Err(e) = store::PgStore::drop_schema(self.0, &self.1) {
            eprintln!("dropping schema {}: {e}", self.1);
        }
    }
}

fn tasks_for(sb: &Sandbox, id: &str) -> usize {
    sb.records("tasks").iter().filter(|t| t["contactId"] == id).count()
}

fn new_contact(sb: &Sandbox, name: &str) -> String {
    let c = sb
        .insert_record("contacts", serde_json::json!({"locationId": sb.location_id(), "firstName": name}))
        .expect("contact");
    c["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moved_to_postgres_goes_on_without_firing_again() {
    let Some(url) = support::pg_url() else { return };
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(3)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("flows")).expect("flows");
    std::fs::write(d.join("flows/tasks.yaml"), flow()).expect("flow");

    // 1. On the embedded store: a baseline, then one new contact fires.
    let listen = format!("127.0.0.1:{}", support::free_port());
    write_config(d, "store: ./data\n", &listen, &sb);
    let mut node = start(d, "embedded.log");
    wait_until("the baseline", Duration::from_secs(20), d, "embedded.log", || {
        log(d, "embedded.log").contains("baseline=true")
    })
    .await;
    let before = new_contact(&sb, "Before");
    wait_until("a task for the first contact", Duration::from_secs(20), d, "embedded.log", || {
        tasks_for(&sb, &before) == 1
    })
    .await;
    assert_eq!(stop(&mut node), Some(0), "{}", log(d, "embedded.log"));

    // 2. Copied into a schema of its own in the test database.
    let schema = format!("flowd_e2e_{}", std::process::id());
    let _cleanup = Schema(&url, schema.clone());
    let schema_url = format!("{url}?options=-c%20search_path%3D{schema}");
    {
        let options = store::PgOptions { schema: Some(schema.clone()), ..store::PgOptions::new(&url) };
        drop(store::PgStore::connect(&options, store::pg::Create::Yes).expect("schema"));
    }
    let out = cli(d, &["store", "migrate", "--config", "flowd.yaml", "--to", &schema_url]);
    let printed = support::text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("runs") && printed.contains("seen"), "{printed}");

    // 3. On PostgreSQL: nothing fires again; a new contact gets its task.
    write_config(d, &format!("store: \"{schema_url}\"\nstore_password: ${{PG_TEST_PASSWORD}}\n"), &listen, &sb);
    let mut node = start(d, "postgres.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&listen).await != Some(200) {
        assert!(Instant::now() < deadline, "never ready; log:\n{}", log(d, "postgres.log"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = new_contact(&sb, "After");
    wait_until("a task for the contact added on PostgreSQL", Duration::from_secs(20), d, "postgres.log", || {
        tasks_for(&sb, &after) == 1
    })
    .await;
    // A few more polls: the contact seen on the embedded store never fires again, and no
    // poll on PostgreSQL took the old contacts for new (no second baseline either).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tasks_for(&sb, &before), 1, "{}", log(d, "postgres.log"));
    assert_eq!(tasks_for(&sb, &after), 1);
    assert_eq!(sb.records("tasks").len(), 2, "only the two new contacts have tasks");
    let pg_log = log(d, "postgres.log");
    assert!(!pg_log.contains("baseline=true"), "the trigger kept its state: {pg_log}");
    assert!(pg_log.contains("store_backend=postgres"), "{pg_log}");
    assert!(!pg_log.contains("not-needed-with-trust"), "the password is never logged");
    assert_eq!(stop(&mut node), Some(0), "{pg_log}");

    // The runs of both stores are in PostgreSQL; `flowd runs` reads them there.
    let out = cli(d, &["runs", "--config", "flowd.yaml"]);
    let listing = support::text(&out);
    assert!(out.status.success(), "{listing}");
    assert!(listing.contains("2 run(s)"), "{listing}");
}
