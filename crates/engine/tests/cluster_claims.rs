//! A cluster node executes every run it owns, including those it lost track of: a claim
//! the database committed but whose answer the connection dropped, or a run whose
//! execution failed on the database. No other node takes them while this one is alive.
//!
//! Needs `FLOWD_TEST_POSTGRES` (README, "Tests"): fails without it under CI=true.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sandbox::Seed;
use serde_json::json;
use store::{NewRun, NodeOptions, PgOptions, PgStore, RunStatus, Store};

const MARK_FLOW: &str = r#"
name: mark
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1h
steps:
  - id: mark
    uses: contacts.update_contact
    with: { contactId: "{{ trigger.id }}", city: "Marked" }
"#;

fn pg_url() -> Option<String> {
    match std::env::var("FLOWD_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FLOWD_TEST_POSTGRES is not set: this test needs a PostgreSQL database")
        }
        _ => {
            eprintln!("not run: needs FLOWD_TEST_POSTGRES=postgres://… (README: `.ci/with-postgres cargo test`)");
            None
        }
    }
}

struct Schema(String, String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = PgStore::drop_schema(&self.0, &self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_executes_its_own_runs_that_nothing_dispatched() {
    let Some(url) = pg_url() else { return };
    let schema = format!("flowd_claims_{}_{}", std::process::id(), chrono::Utc::now().timestamp_micros());
    let _cleanup = Schema(url.clone(), schema.clone());
    let options = PgOptions {
        schema: Some(schema.clone()),
        node: Some(NodeOptions { name: "solo".into(), lease_ttl: Duration::from_secs(3), polls: true }),
        ..PgOptions::new(&url)
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&options, store::pg::Create::Yes).expect("node"));
    let sb = sandbox(Seed::Contacts(2)).await;
    let contacts: Vec<String> =
        sb.records("contacts").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    let engine = engine_on(&sb, store.clone(), fast_retries());
    engine.set_flows(vec![compile(MARK_FLOW)]).expect("flows load");
    // A run this node owns (it created it) that no task holds: what a lost claim answer
    // leaves behind. `--once` executes it.
    engine.heartbeat_now().await.expect("heartbeat");
    let first = store.create_run(&NewRun::new("mark", json!({ "id": contacts[0] }))).expect("run");
    assert_eq!(engine.run_claimed().await.expect("claimed"), [RunStatus::Succeeded]);
    assert_eq!(store.get_run(first).expect("store").expect("run").status, RunStatus::Succeeded);
    // So does the service's claimer, without anything waking it.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tasks = engine.start(shutdown);
    let second = store.create_run(&NewRun::new("mark", json!({ "id": contacts[1] }))).expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = store.get_run(second).expect("store").expect("run").status;
        if status == RunStatus::Succeeded {
            break;
        }
        assert!(Instant::now() < deadline, "the run the node owns is still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marked = contacts.iter().filter(|id| sb.record("contacts", id).is_some_and(|c| c["city"] == "Marked")).count();
    assert_eq!(marked, 2);
    assert_eq!(requests_for(&sb, "contacts.update_contact"), 2, "each sent once");
    let _ = stop.send(true);
    tasks.join().await;
}
