//! Incremental polling against a sandbox as strict as GHL (12,000+ contacts, page numbers
//! that stop at 10,000, search results a few seconds late): every change fires exactly
//! once, nothing from before the baseline fires, an idle poll is one request, and a
//! backfill reads past 10,000 records.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use sandbox::Seed;
use serde_json::{json, Value};

const SEARCH: &str = "contacts.search_contacts";
const LAG: Duration = Duration::from_secs(2);

fn flow(name: &str, dedupe: &str, start: &str) -> String {
    format!(
        r#"
name: {name}
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
  every: 1m
  dedupe: {dedupe}
  start: {start}
  lookback: 10s
  max_new: 10000
steps:
  - id: task
    uses: contacts.create_task
    with:
      contactId: "{{{{ trigger.id }}}}"
      title: "{name} {{{{ trigger.firstName }}}}"
      dueDate: "2030-01-01T00:00:00.000Z"
      completed: false
"#
    )
}

/// Tasks a flow made, per contact id.
fn tasks_by_contact(h: &Harness, flow: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for t in h.sandbox.records("tasks") {
        if t["title"].as_str().is_some_and(|title| title.starts_with(&format!("{flow} "))) {
            *out.entry(t["contactId"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
    }
    out
}

async fn create_contact(c: &reqwest::Client, h: &Harness, n: usize) -> String {
    let resp = c
        .post(format!("{}/contacts/", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&json!({"locationId": h.sandbox.location_id(), "firstName": format!("Late{n}"), "email": format!("late{n}@example.org")}))
        .send()
        .await
        .expect("create");
    let body: Value = resp.json().await.expect("json");
    body["contact"]["id"].as_str().expect("id").to_string()
}

async fn lagging_harness(seed: Seed, flows: &[&str]) -> Harness {
    let sb = lagging_sandbox(seed, LAG).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(flows.iter().map(|f| compile(f)).collect()).expect("flows load");
    Harness { sandbox: sb, engine, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contact_created_after_the_baseline_fires_once_among_12000() {
    let text = flow("welcome", "new", "now");
    let h = lagging_harness(Seed::Contacts(12_000), &[&text]).await;
    let c = reqwest::Client::new();

    let (baseline, runs) = h.engine.poll_and_run("welcome").await.expect("baseline");
    assert!(baseline.baseline && runs.is_empty());
    assert!(baseline.items < 100, "a baseline reads the lookback window, not 12,000 contacts: {baseline:?}");

    // Contacts arrive while polls run: some are created in the same instant as a poll, and
    // the index shows each of them two seconds late.
    let mut created = Vec::new();
    for round in 0..6 {
        let burst = async {
            let mut ids = Vec::new();
            for i in 0..8 {
                ids.push(create_contact(&c, &h, round * 100 + i).await);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            ids
        };
        let (ids, polled) = tokio::join!(burst, h.engine.poll_and_run("welcome"));
        polled.expect("poll");
        created.extend(ids);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Everything is indexed after the lag; two more polls see the rest.
    tokio::time::sleep(LAG + Duration::from_millis(200)).await;
    h.engine.poll_and_run("welcome").await.expect("poll");
    h.engine.poll_and_run("welcome").await.expect("poll");

    let tasks = tasks_by_contact(&h, "welcome");
    let created_set: HashSet<&String> = created.iter().collect();
    assert_eq!(created_set.len(), 48);
    for id in &created {
        assert_eq!(tasks.get(id), Some(&1), "contact {id} fires exactly once");
    }
    assert_eq!(tasks.len(), 48, "no contact from before the baseline fires");

    // Idle: one request, however many contacts the location holds.
    let before = requests_for(&h.sandbox, SEARCH);
    let (idle, runs) = h.engine.poll_and_run("welcome").await.expect("idle poll");
    assert_eq!(runs.len(), 0);
    assert_eq!(requests_for(&h.sandbox, SEARCH) - before, 1, "an idle poll costs one request: {idle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edit_fires_once_in_an_updated_flow() {
    let text = flow("touched", "updated", "now");
    let h = lagging_harness(Seed::Contacts(12_000), &[&text]).await;
    let c = reqwest::Client::new();
    h.engine.poll_and_run("touched").await.expect("baseline");

    // 40 contacts from all over the location (every 300th), edited once each, with polls
    // between the edits.
    let all = h.sandbox.records("contacts");
    let picked: Vec<String> =
        all.iter().step_by(300).filter_map(|r| r["id"].as_str().map(String::from)).take(40).collect();
    drop(all);
    assert_eq!(picked.len(), 40);
    for (n, id) in picked.iter().enumerate() {
        let resp = c
            .put(format!("{}/contacts/{id}", h.sandbox.base_url()))
            .bearer_auth(TOKEN)
            .header("Version", "2021-07-28")
            .json(&json!({"firstName": format!("Edited{n}")}))
            .send()
            .await
            .expect("edit");
        assert_eq!(resp.status().as_u16(), 200);
        if n % 5 == 4 {
            h.engine.poll_and_run("touched").await.expect("poll");
        }
    }
    tokio::time::sleep(LAG + Duration::from_millis(200)).await;
    h.engine.poll_and_run("touched").await.expect("poll");
    h.engine.poll_and_run("touched").await.expect("poll");
    let tasks = tasks_by_contact(&h, "touched");
    for id in &picked {
        assert_eq!(tasks.get(id), Some(&1), "the edit of {id} fires exactly once");
    }
    assert_eq!(tasks.len(), picked.len(), "unedited contacts do not fire");

    // A second edit of one contact is a second update: it fires again, once.
    let id = &picked[3];
    let resp = c
        .put(format!("{}/contacts/{id}", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&json!({"lastName": "Again"}))
        .send()
        .await
        .expect("edit");
    assert_eq!(resp.status().as_u16(), 200);
    tokio::time::sleep(LAG + Duration::from_millis(200)).await;
    h.engine.poll_and_run("touched").await.expect("poll");
    h.engine.poll_and_run("touched").await.expect("poll");
    assert_eq!(tasks_by_contact(&h, "touched").get(id), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_25000_contacts_fires_each_once() {
    let text = flow("backfill", "new", "all");
    let sb = lagging_sandbox(Seed::Contacts(25_000), Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(&text)]).expect("flows load");

    // Runs are created, not executed: what is counted is what fires.
    let mut runs = HashSet::new();
    let mut polls = 0;
    loop {
        let report = engine.poll("backfill").await.expect("poll");
        polls += 1;
        assert_eq!(report.held, 0, "{report:?}");
        for r in &report.runs {
            assert!(runs.insert(*r), "run {r:?} created twice");
        }
        if report.runs.is_empty() || polls > 10 {
            break;
        }
    }
    assert_eq!(runs.len(), 25_000, "after {polls} polls");
    // 25,000 at 100 a page is 250 pages, past the 100 pages (10,000 records) page numbers reach.
    let searches = requests_for(&sb, SEARCH);
    assert!((250..=260).contains(&searches), "{searches} search requests");
    let statuses: Vec<u16> = sb.requests().iter().filter_map(|r| r["status"].as_u64()).map(|s| s as u16).collect();
    assert!(statuses.iter().all(|s| *s == 200), "no request was refused");
}

/// A `since` strategy: opportunities are read from the watermark by `startAfter` in
/// creation order, so an idle poll is one request among 500 opportunities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_opportunities_are_read_from_the_watermark() {
    let sb = lagging_sandbox(Seed::Contacts(1), Duration::ZERO).await;
    let day = 86_400_000i64;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..500i64 {
        let created = chrono::DateTime::from_timestamp_millis(now - 30 * day + i * 60_000).expect("time");
        sb.insert_record(
            "opportunities",
            json!({"name": format!("Old {i}"), "status": "open", "createdAt": created.to_rfc3339()}),
        )
        .expect("opportunity");
    }
    let text = r#"
name: deals
account: main
trigger:
  uses: opportunities.search_opportunities
  with: { location_id: "{{ account.location_id }}" }
  dedupe: new
steps:
  - id: push
    uses: http.request
    with: { method: POST, url: "http://127.0.0.1:9/", json: { id: "{{ trigger.id }}" } }
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(text)]).expect("flows load");
    let op = "opportunities.search_opportunities";

    let baseline = engine.poll("deals").await.expect("baseline");
    assert!(baseline.baseline && baseline.runs.is_empty());
    assert_eq!(requests_for(&sb, op), 1, "the baseline reads the lookback window: {baseline:?}");
    let fresh: HashSet<String> = (0..3)
        .map(|i| {
            let o = sb.insert_record("opportunities", json!({"name": format!("New {i}"), "status": "open"}));
            o.and_then(|o| o["id"].as_str().map(String::from)).expect("id")
        })
        .collect();
    let report = engine.poll("deals").await.expect("poll");
    assert_eq!(report.runs.len(), 3, "{report:?}");
    let before = requests_for(&sb, op);
    let idle = engine.poll("deals").await.expect("idle");
    assert!(idle.runs.is_empty());
    assert_eq!(requests_for(&sb, op) - before, 1, "idle: one request");
    assert_eq!(fresh.len(), 3);
}
