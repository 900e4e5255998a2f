//! `FLOWD_TEST_POSTGRES=postgres://… cargo bench -p store --bench postgres`: the PostgreSQL
//! store's hot paths against fjall's, with the same workload, one caller at a time and with
//! 8 callers at once (nodes or the engine's concurrent runs), and what each costs the server
//! (transactions and rows, from `pg_stat_database`). Prints one line per measurement.
//!
//! A plain timing loop rather than criterion: each figure is a mean over a fixed number of
//! durable operations, and the server-side counters are read around exactly those.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use store::{NewRun, PgStore, PollCommit, PollItem, RunChange, RunStatus, StepStatus, Store};

const POLLS: usize = 100;
const RUNS: usize = 300;

fn poll(trigger: &str, from: usize, n: usize) -> PollCommit {
    PollCommit {
        lease: None,
        trigger: trigger.into(),
        state: Some(json!({ "cursor": from + n })),
        items: (from..from + n)
            .map(|i| PollItem {
                key: format!("c{i}@2024"),
                run: Some(NewRun::new(
                    "bench-flow",
                    json!({ "id": format!("c{i}"), "name": "Jane", "email": "j@x.io" }),
                )),
            })
            .collect(),
    }
}

/// A one-step run as the engine writes it: created by a poll elsewhere, then started
/// (running + step sent, durable), then finished (result + succeeded, durable).
fn run_once(s: &dyn Store) {
    let id = s.create_run(&NewRun::new("f", json!({ "id": "x" }))).expect("create");
    let request = json!({ "method": "POST", "path": "/contacts/x/tasks", "body": { "title": "Call" } });
    let start = vec![
        RunChange::Status { status: RunStatus::Running, error: None },
        RunChange::StepStarted { step: "task".into(), request: request.into() },
    ];
    s.update_runs(&[(id, start)]).expect("start").into_iter().for_each(|r| r.expect("start"));
    let finish = vec![
        RunChange::StepFinished {
            step: "task".into(),
            status: StepStatus::Succeeded,
            response: Some(json!({ "task": { "id": "t1" } }).into()),
            error: None,
        },
        RunChange::Status { status: RunStatus::Succeeded, error: None },
    ];
    s.update_runs(&[(id, finish)]).expect("finish").into_iter().for_each(|r| r.expect("finish"));
}

fn per(d: Duration, n: usize) -> String {
    format!("{:>8.3} ms", d.as_secs_f64() * 1000.0 / n as f64)
}

/// (transactions committed, rows inserted + updated + deleted) of the database so far.
fn server_counters(url: &str) -> (i64, i64) {
    let url = url.to_string();
    std::thread::spawn(move || {
        // A backend publishes its counters at most once a second and, once idle, within
        // 10 s (PostgreSQL 15's shared statistics): wait them out.
        std::thread::sleep(Duration::from_secs(11));
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("stats connection");
        c.batch_execute("SELECT pg_stat_clear_snapshot()").expect("snapshot");
        let r = c
            .query_one(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .expect("stats");
        (r.get(0), r.get(1))
    })
    .join()
    .expect("stats thread")
}

fn bench(label: &str, s: Arc<dyn Store>, url: Option<&str>) {
    let counters = || url.map(server_counters);
    let cost = |before: Option<(i64, i64)>, items: usize| match (before, counters()) {
        (Some(b), Some(a)) => format!(
            "  server: {:.2} transactions, {:.2} rows written per item",
            (a.0 - b.0) as f64 / items as f64,
            (a.1 - b.1) as f64 / items as f64
        ),
        _ => String::new(),
    };

    // commit_poll of 100 new items, each with a run.
    let before = counters();
    let t = Instant::now();
    for p in 0..POLLS {
        s.commit_poll(&poll("t100", p * 100, 100)).expect("commit");
    }
    println!(
        "{label:<9} commit_poll, 100 new items each   {} per commit{}",
        per(t.elapsed(), POLLS),
        cost(before, POLLS * 100)
    );

    // A poll of 100 items, 10 new: filter_unseen + commit_poll of the 10.
    s.commit_poll(&PollCommit { lease: None, trigger: "t10".into(), state: None, items: poll("t10", 0, 90).items })
        .expect("seed");
    let t = Instant::now();
    for p in 0..POLLS {
        let from = p * 10;
        let keys: Vec<String> = (from..from + 100).map(|i| format!("c{i}@2024")).collect();
        let unseen = s.filter_unseen("t10", &keys).expect("filter");
        assert_eq!(unseen.iter().filter(|u| **u).count(), 10);
        s.commit_poll(&poll("t10", from + 90, 10)).expect("commit");
    }
    println!("{label:<9} poll 100 items, 10 new           {} per poll", per(t.elapsed(), POLLS));

    // Runs' bookkeeping, one caller.
    let before = counters();
    let t = Instant::now();
    for _ in 0..RUNS {
        run_once(&*s);
    }
    println!("{label:<9} run create+start+finish, 1 caller {} per run{}", per(t.elapsed(), RUNS), cost(before, RUNS));

    // The same with 8 callers at once.
    let t = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || (0..RUNS / 8).for_each(|_| run_once(&*s)))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("caller"));
    let n = RUNS / 8 * 8;
    println!(
        "{label:<9} run create+start+finish, 8 callers {} per run ({:.0} runs/s)",
        per(t.elapsed(), n),
        n as f64 / t.elapsed().as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let dir = tempfile::tempdir().expect("tempdir");
    let fjall = store::create_or_open(dir.path().join("store"), store::Backend::Fjall).expect("fjall");
    bench("fjall", fjall, None);

    let Ok(url) = std::env::var("FLOWD_TEST_POSTGRES") else {
        println!("postgres  not measured: set FLOWD_TEST_POSTGRES=postgres://… (.ci/with-postgres runs a server)");
        return;
    };
    let pg = PgStore::temporary_schema(&url).expect("postgres");
    bench("postgres", Arc::new(pg), Some(&url));
}
