//! The "sent" mark of a step that is not safe to repeat is written when its request
//! leaves, after the rate limiter's wait: a process stopped while requests queue behind
//! the limiter leaves those runs to resume, not in doubt.

mod common;

use common::*;
use engine::{AccountInfo, Engine, Metrics};
use sandbox::Seed;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::{NewRun, RunStatus, StepStatus};

const TASK_FLOW: &str = r#"
name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

fn engine_on(sb: &sandbox::Sandbox, store: Arc<dyn store::Store>, rate_limit: ghl::RateLimit) -> Arc<Engine> {
    let metrics = Arc::new(Metrics::new());
    let config = ghl::ClientConfig { rate_limit, ..ghl::ClientConfig::default() };
    let client = ghl::Client::builder().config(config).observer(metrics.clone()).build().expect("client");
    let account = ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
        .expect("account")
        .with_base_url(&sb.base_url())
        .expect("base url")
        .with_resource(sb.location_id());
    client.add_account(account);
    let catalog = Arc::new(catalog::Catalog::builtin().expect("catalog"));
    let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
    let engine = Engine::new(catalog, client, store, accounts, BTreeMap::new(), fast_retries(), metrics);
    engine.set_flows(vec![compile(TASK_FLOW)]).expect("flow loads");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_on_the_rate_limiter_are_not_marked_sent() {
    let sb = sandbox(Seed::Contacts(4)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::create_or_open(dir.path().join("store"), store::Backend::FOR_NEW_STORES).expect("store");
    // One request a minute: the first run's POST leaves at once, the others queue.
    let slow = ghl::RateLimit {
        burst: Some(1),
        max_wait: Duration::from_secs(600),
        adapt_to_headers: false,
        ..ghl::RateLimit::per(1, Duration::from_secs(60))
    };
    let engine = engine_on(&sb, store.clone(), slow);
    let contacts = sb.records("contacts");
    let ids: Vec<_> =
        contacts.iter().map(|c| store.create_run(&NewRun::new("tasks", c.clone())).expect("run")).collect();
    assert_eq!(ids.len(), 4);
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let e = engine.clone();
            tokio::spawn(async move { e.execute(id).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while requests_for(&sb, "contacts.create_task") < 1 || sb.records("tasks").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first POST never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Time for the queued runs to write whatever they write before sending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The process stops: every execution is cut off where it is.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(requests_for(&sb, "contacts.create_task"), 1, "only one POST left");

    let runs: Vec<_> = ids.iter().map(|&id| store.get_run(id).expect("store").expect("run")).collect();
    let done = runs.iter().filter(|r| r.status == RunStatus::Succeeded).count();
    assert_eq!(done, 1, "the run whose request left finished: {runs:#?}");
    let sent = runs.iter().filter(|r| r.steps.iter().any(|s| s.status == StepStatus::Sent)).count();
    assert_eq!(sent, 0, "no queued run is marked sent: {runs:#?}");
    let untouched = runs.iter().filter(|r| r.status == RunStatus::Pending && r.steps.is_empty()).count();
    assert_eq!(untouched, 3, "the queued runs are still pending, with no step started");

    // After a restart (no limit now), the queued runs are sent, once each.
    let restarted = engine_on(&sb, store.clone(), ghl::RateLimit::default());
    let statuses = restarted.resume().await.expect("resume");
    assert_eq!(statuses, [RunStatus::Succeeded; 3]);
    assert_eq!(sb.records("tasks").len(), 4, "one task per contact");
}
