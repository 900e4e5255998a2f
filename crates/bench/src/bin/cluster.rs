//! Items per second of `flowd run` on the embedded store and on PostgreSQL with 1, 2 and 3
//! nodes, each in one run on this machine; the database's transactions per item; and how
//! long after a SIGKILL another node holds the killed node's trigger.
//!
//! ```text
//! cargo build --release -p flowd -p bench
//! FLOWD_TEST_POSTGRES=postgres://… target/release/cluster [--nodes 0,1,2,3] [--contacts 10000]
//!     [--lease-ms 3000] [--flowd PATH]
//! ```
//!
//! `--nodes 0` is one `flowd run` on the embedded store (fjall). Every configuration gets a
//! new sandbox (no rate limit: the figure is flowd's, not GHL's budget) and a schema of its
//! own; the nodes share one flow (new contacts → a task each, polled every second). The
//! clock starts when the contacts are added and stops when the sandbox holds a task for
//! each. `.ci/with-postgres` gives a throw-away database.

use anyhow::{bail, Context, Result};
use bench::{free_port, locate_flowd};
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store::{Cluster, PgOptions, PgStore};

const TOKEN: &str = "pit-cluster-bench";

const FLOW: &str = r#"name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1s
  start: now
  max_new: 100000
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

struct Args {
    nodes: Vec<usize>,
    contacts: usize,
    lease_ms: u64,
    flowd: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { nodes: vec![0, 1, 2, 3], contacts: 10_000, lease_ms: 3_000, flowd: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nodes" => {
                a.nodes = value.split(',').map(|n| n.trim().parse()).collect::<Result<_, _>>().context("--nodes")?
            }
            "--contacts" => a.contacts = value.parse().context("--contacts")?,
            "--lease-ms" => a.lease_ms = value.parse().context("--lease-ms")?,
            "--flowd" => a.flowd = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Child processes, stopped however the bench ends.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

struct Dropped(String, String);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = PgStore::drop_schema(&self.0, &self.1);
    }
}

/// Transactions the database has committed or rolled back, all sessions.
fn transactions(url: &str) -> Result<i64> {
    let url = url.to_string();
    std::thread::spawn(move || -> Result<i64> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        let row = c.query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )?;
        // The statistics collector reports with a delay; this call's own snapshot is fresh.
        Ok(row.try_get(0)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("stats thread panicked"))?
}

fn tasks(sb: &Sandbox) -> usize {
    sb.records("tasks").len()
}

/// Waits until every node answers `/readyz` and one of them (the trigger's lease holder)
/// has polled: past the baseline (the seeded contacts), new contacts fire.
async fn ready(listens: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for listen in listens {
        while !reqwest::get(format!("http://{listen}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
            if Instant::now() > deadline {
                bail!("flowd on {listen} not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while Instant::now() < deadline {
        for listen in listens {
            if let Ok(r) = reqwest::get(format!("http://{listen}/metrics")).await {
                let text = r.text().await.unwrap_or_default();
                if text.lines().any(|l| l.starts_with("flowd_polls_total") && !l.ends_with(" 0")) {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no node polled within 60 s")
}

async fn one(args: &Args, flowd: &Path, url: Option<&str>, n: usize) -> Result<()> {
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(3)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("flows"))?;
    std::fs::write(dir.path().join("flows/tasks.yaml"), FLOW)?;
    let schema = format!("flowd_bench_{}_{n}", std::process::id());
    let (store, _drop) = match url {
        Some(url) => {
            let options = PgOptions { schema: Some(schema.clone()), ..PgOptions::new(url) };
            drop(PgStore::connect(&options, store::pg::Create::Yes)?);
            (
                format!(
                    "store: \"{url}?options=-c%20search_path%3D{schema}\"\ncluster:\n  node: NODE\n  lease: {}ms\n",
                    args.lease_ms
                ),
                Some(Dropped(url.to_string(), schema.clone())),
            )
        }
        None => ("store: ./data\n".to_string(), None),
    };
    let mut nodes = Nodes(Vec::new());
    let mut listens = Vec::new();
    for i in 0..n.max(1) {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let name = format!("node{i}");
        let text = format!(
            "{}flows: ./flows\nlisten: {listen}\nrate_limit: {{ requests: 100000, per: 10s }}\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{BENCH_TOKEN}}\n",
            store.replace("NODE", &name),
            sb.location_id(),
            sb.base_url()
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), text)?;
        let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
        nodes.0.push(
            Command::new(flowd)
                .args(["run", "--config", &format!("{name}.yaml")])
                .current_dir(dir.path())
                .env("BENCH_TOKEN", TOKEN)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        listens.push(listen);
    }
    ready(&listens).await?;
    // PostgreSQL publishes a backend's counters up to 10 s late: wait them out around
    // the burst, and once more to learn what the idle nodes (heartbeats, claims, polls)
    // cost per second, which is taken off the burst's count.
    const STATS_LAG: Duration = Duration::from_secs(11);
    let before = match url {
        Some(url) => {
            tokio::time::sleep(STATS_LAG).await;
            Some((transactions(url)?, Instant::now()))
        }
        None => None,
    };
    let started = Instant::now();
    for i in 0..args.contacts {
        sb.insert_record("contacts", serde_json::json!({"locationId": sb.location_id(), "firstName": format!("C{i}")}))
            .context("contact")?;
    }
    let deadline = started + Duration::from_secs(900);
    while tasks(&sb) < args.contacts {
        if Instant::now() > deadline {
            bail!("{} of {} tasks after 900 s", tasks(&sb), args.contacts);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let per_item = match (url, before) {
        (Some(url), Some((t0, at0))) => {
            tokio::time::sleep(STATS_LAG).await;
            let (t1, at1) = (transactions(url)?, Instant::now());
            tokio::time::sleep(STATS_LAG).await;
            let (t2, at2) = (transactions(url)?, Instant::now());
            let idle_per_s = (t2 - t1) as f64 / (at2 - at1).as_secs_f64();
            let burst = (t1 - t0) as f64 - idle_per_s * (at1 - at0).as_secs_f64();
            format!(
                ", {:.2} database transactions per item ({:.1}/s while idle, taken off)",
                burst / args.contacts as f64,
                idle_per_s
            )
        }
        _ => String::new(),
    };
    let what = if url.is_none() { "embedded store, 1 process".to_string() } else { format!("PostgreSQL, {n} node(s)") };
    println!("{what}: {} items in {took:.1} s = {:.0} items/s{per_item}", args.contacts, args.contacts as f64 / took);

    if let (Some(url), true) = (url, n >= 2) {
        let db = PgStore::connect(&PgOptions { schema: Some(schema), ..PgOptions::new(url) }, store::pg::Create::No)?;
        let holder = |db: &PgStore| -> Option<String> {
            db.nodes().ok()?.into_iter().find(|n| n.alive && !n.leases.is_empty()).map(|n| n.name)
        };
        let victim = holder(&db).context("no node holds the trigger")?;
        let i: usize = victim.trim_start_matches("node").parse()?;
        Command::new("kill").args(["-KILL", &nodes.0[i].id().to_string()]).status()?;
        let killed = Instant::now();
        loop {
            match holder(&db) {
                Some(h) if h != victim => break,
                _ if killed.elapsed() > Duration::from_secs(60) => bail!("no takeover within 60 s"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        println!(
            "  lease takeover {:.2} s after SIGKILL of the holder (lease {} ms, heartbeat every {} ms)",
            killed.elapsed().as_secs_f64(),
            args.lease_ms,
            args.lease_ms / 3
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let flowd = locate_flowd(args.flowd.clone())?;
    let url = std::env::var("FLOWD_TEST_POSTGRES").ok().filter(|u| !u.is_empty());
    for &n in &args.nodes {
        match (n, &url) {
            (0, _) => one(&args, &flowd, None, 0).await?,
            (_, Some(url)) => one(&args, &flowd, Some(url), n).await?,
            (_, None) => bail!("--nodes {n} needs FLOWD_TEST_POSTGRES (a database to share)"),
        }
    }
    Ok(())
}
