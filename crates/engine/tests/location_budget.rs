//! One location's budget shared by its flows: a backfill cannot starve another flow's runs;
//! when the daily budget is spent, runs wait for it to renew without spending their
//! attempts, and flows stop polling and say until when. Against the sandbox (enforcing a
//! small daily budget where that is the point) and a real store.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::time::Duration;
use store::RunStatus;

const TASK_FLOW: &str = r#"
name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1s
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

/// A sandbox that allows `daily` requests a day and says so in its headers, as GHL does.
async fn budget_sandbox(daily: u32) -> Sandbox {
    let limit = RateLimitConfig { enabled: true, burst_max: 100, burst_interval_ms: 10_000, daily_max: daily };
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(2)).with_rate_limit(limit);
    config.tokens = vec![TOKEN.into()];
    Sandbox::start(config).await.expect("sandbox starts")
}

fn next_utc_midnight() -> DateTime<Utc> {
    let tomorrow = Utc::now().date_naive().succ_opt().expect("a next day");
    tomorrow.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

fn near(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_seconds().abs() <= 5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_defers_runs_without_spending_their_attempts() {
    let sb = budget_sandbox(6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(TASK_FLOW)]).expect("flows load");
    engine.poll_and_run("tasks").await.expect("baseline");
    for n in 0..8 {
        new_contact(&sb, n);
    }
    // Two requests so far (baseline and this poll); four tasks fit in the rest of the day.
    let (report, statuses) = engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(report.runs.len(), 8);
    assert_eq!(statuses.iter().filter(|s| **s == RunStatus::Succeeded).count(), 4, "{statuses:?}");
    assert_eq!(sb.records("tasks").len(), 4);
    assert_eq!(sb.requests().len(), 6, "nothing is sent past the budget");
    let renews = next_utc_midnight();
    for id in &report.runs {
        let run = engine.store().get_run(*id).expect("store").expect("run");
        if run.status == RunStatus::Succeeded {
            continue;
        }
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.attempts, 0, "an attempt that sent nothing is not counted");
        let at = run.next_retry_at.expect("scheduled");
        assert!(near(at, renews), "retried when the budget renews ({renews}), not {at}");
        assert!(run.steps.is_empty(), "a step refused before it left has no record of being sent: {:?}", run.steps);
        assert!(run.error.as_deref().is_some_and(|e| e.contains("daily budget of 6 requests")), "{:?}", run.error);
    }
    // The requests, by flow and purpose, and the budget they spent.
    let metrics = engine.metrics().encode();
    let loc = sb.location_id();
    for line in [
        format!("flowd_ghl_requests_total{{location=\"{loc}\",flow=\"tasks\",purpose=\"poll\"}} 2"),
        format!("flowd_ghl_requests_total{{location=\"{loc}\",flow=\"tasks\",purpose=\"step\"}} 4"),
        format!("flowd_ghl_daily_budget_used{{location=\"{loc}\"}} 6"),
        format!("flowd_ghl_daily_budget_limit{{location=\"{loc}\"}} 6"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    // Nothing is due before midnight: the runs are not hammered into dead letters.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(engine.retry_due().await.expect("retry scan").is_empty());
    assert_eq!(sb.requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_pauses_until_the_budget_renews_and_says_so() {
    let sb = budget_sandbox(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(TASK_FLOW)]).expect("flows load");
    assert!(engine.flow_states()[0].paused.is_none());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tasks = engine.start(shutdown);
    // Polls every second: two fit in the day's budget, the third pauses the flow.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let paused = loop {
        if let Some(p) = engine.flow_states()[0].paused.clone() {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "the flow never paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(near(paused.until, next_utc_midnight()), "{}", paused.until);
    assert!(paused.reason.contains("daily budget of 2 requests"), "{}", paused.reason);
    let polls = || {
        engine
            .metrics()
            .encode()
            .lines()
            .filter(|l| l.starts_with("flowd_polls_total"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = polls();
    assert!(engine.metrics().encode().contains("flowd_flow_paused{flow=\"tasks\"} 1"));
    // Paused, it does not try again at every tick.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(polls(), before, "no poll while paused");
    assert_eq!(sb.requests().len(), 2);
    let json = serde_json::to_value(engine.flow_states()).expect("serialises");
    assert_eq!(json[0]["name"], "tasks");
    assert!(json[0]["paused"]["until"].is_string(), "{json}");
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), tasks.join()).await.expect("tasks stop");
}

const BACKFILL_FLOW: &str = r#"
name: backfill
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1h
  start: all
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Welcome {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_does_not_starve_another_flows_runs() {
    // GHL's limits in the client (100 per 10 s, paced): the backfill's 40 runs take 4 s.
    let config = engine::EngineConfig { concurrency: 2, ..fast_retries() };
    let h = harness(Seed::Contacts(40), &[BACKFILL_FLOW, TASK_FLOW], config).await;
    h.engine.poll("tasks").await.expect("baseline");
    let (report, backfill) = h.engine.poll_and_dispatch("backfill").await.expect("backfill poll");
    assert_eq!(report.runs.len(), 40);
    let contact = new_contact(&h.sandbox, 1);
    let (report, runs) = h.engine.poll_and_dispatch("tasks").await.expect("poll");
    assert_eq!(report.runs.len(), 1);
    let statuses = engine::Engine::wait_for(runs).await.expect("run");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    // The new contact's task is there while most of the backfill still waits its turns.
    let done = backfill.iter().filter(|h| h.is_finished()).count();
    eprintln!("the other flow's run succeeded with {done} of 40 backfill runs finished");
    assert!(done < 20, "{done} of 40 backfill runs finished before the other flow's one run");
    let tasks = h.sandbox.records("tasks");
    assert!(tasks.iter().any(|t| t["contactId"] == contact["id"]));
    let statuses = engine::Engine::wait_for(backfill).await.expect("backfill");
    assert!(statuses.iter().all(|s| *s == RunStatus::Succeeded));
    assert_eq!(h.sandbox.records("tasks").len(), 41);
}
