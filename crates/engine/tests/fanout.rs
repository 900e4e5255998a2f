//! Fan-out triggers (`for_each_record:`) against the sandbox with the real client and a
//! real store: the tasks of every contact, each task firing once (and once more when it
//! changes), requests per poll bounded by `max_per_poll + 1`, a round through 1,000
//! contacts in the polls the catalog's cost model says, and a poll cut off between its
//! reads and its commit neither losing nor duplicating a task.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sandbox::{FaultRule, FaultSettings, Seed};
use serde_json::{json, Value};

const TASKS: &str = "contacts.get_contact_tasks";

fn task_flow(max_per_poll: u32) -> String {
    format!(
        r#"
name: tasks
account: main
trigger:
  uses: contacts.get_contact_tasks
  for_each_record:
    of: contacts.search_contacts
    with: {{ locationId: "{{{{ account.location_id }}}}" }}
    max_per_poll: {max_per_poll}
  with: {{ contactId: "{{{{ parent.id }}}}" }}
  every: 1m
  dedupe: changed
  lookback: 1s
steps:
  - id: mark
    uses: contacts.create_note
    with:
      contactId: "{{{{ trigger.contactId }}}}"
      body: "fired {{{{ trigger.id }}}} {{{{ trigger.title }}}}"
"#
    )
}

fn contact_ids(h: &Harness) -> Vec<String> {
    let mut ids: Vec<String> =
        h.sandbox.records("contacts").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    ids.sort();
    ids
}

async fn create_task(c: &reqwest::Client, h: &Harness, contact: &str, title: &str) -> String {
    let resp = c
        .post(format!("{}/contacts/{contact}/tasks", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&json!({"title": title, "dueDate": "2030-01-01T00:00:00.000Z", "completed": false}))
        .send()
        .await
        .expect("create task");
    assert!(resp.status().is_success(), "{}", resp.status());
    let body: Value = resp.json().await.expect("json");
    body["task"]["id"].as_str().expect("task id").to_string()
}

async fn rename_task(c: &reqwest::Client, h: &Harness, contact: &str, task: &str, title: &str) {
    let resp = c
        .put(format!("{}/contacts/{contact}/tasks/{task}", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&json!({"title": title}))
        .send()
        .await
        .expect("update task");
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// The notes the flow wrote, "fired <task> <title>", counted.
fn fired(h: &Harness) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for n in h.sandbox.records("notes") {
        if let Some(body) = n["body"].as_str().and_then(|b| b.strip_prefix("fired ")) {
            *out.entry(body.to_string()).or_default() += 1;
        }
    }
    out
}

fn requests(h: &Harness) -> usize {
    h.sandbox.requests().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_of_every_contact_fire_once_each_and_again_when_changed() {
    let h = harness(Seed::Contacts(3), &[&task_flow(50)], fast_retries()).await;
    let c = reqwest::Client::new();
    let ids = contact_ids(&h);
    assert_eq!(ids.len(), 3);

    let (baseline, runs) = h.engine.poll_and_run("tasks").await.expect("baseline");
    assert!(baseline.baseline && runs.is_empty(), "{baseline:?}");

    let before = h.sandbox.record("contacts", &ids[0]).expect("contact");
    let a1 = create_task(&c, &h, &ids[0], "call").await;
    let a2 = create_task(&c, &h, &ids[0], "email").await;
    let b1 = create_task(&c, &h, &ids[1], "visit").await;
    // As in GHL: a task does not touch its contact, so only the round-robin finds it.
    let after = h.sandbox.record("contacts", &ids[0]).expect("contact");
    assert_eq!(before["dateUpdated"], after["dateUpdated"]);

    let (report, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(runs.len(), 3, "{report:?}");
    let want: HashMap<String, usize> =
        [(format!("{a1} call"), 1), (format!("{a2} email"), 1), (format!("{b1} visit"), 1)].into_iter().collect();
    assert_eq!(fired(&h), want);

    let (again, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert!(runs.is_empty(), "nothing new: {again:?}");

    rename_task(&c, &h, &ids[1], &b1, "visit-moved").await;
    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(runs.len(), 1, "a changed task fires once more");
    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert!(runs.is_empty());
    let mut want = want;
    want.insert(format!("{b1} visit-moved"), 1);
    assert_eq!(fired(&h), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_of_1000_contacts_costs_what_the_cost_model_says() {
    let max = 50;
    let h = harness(Seed::Contacts(1_000), &[&task_flow(max)], fast_retries()).await;
    let cost = catalog::FanOutCost { max_per_poll: max };
    let (baseline, _) = h.engine.poll_and_run("tasks").await.expect("baseline");
    assert!(baseline.baseline);
    // 1 read of the changed contacts + 1 of the round's next 49 + 49 children: 51.
    let round = poll_round(&h, 3, max, cost, 1_000, true).await;
    assert_eq!(round.fired, 0);
    assert_eq!(round.visited.len(), 3 * 49, "each poll read the next 49 contacts' tasks");
    assert_eq!(cost.requests(1_000, 0), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_any_contact_fires_once_within_one_round() {
    let (max, contacts) = (13, 120);
    let h = harness(Seed::Contacts(contacts), &[&task_flow(max)], fast_retries()).await;
    let c = reqwest::Client::new();
    let cost = catalog::FanOutCost { max_per_poll: max };
    let polls_per_round = cost.polls_per_round(contacts as u64);
    assert_eq!(polls_per_round, 11);

    // The first round is the baseline: it reads every contact's tasks once.
    let first = poll_round(&h, polls_per_round, max, cost, contacts as u64, false).await;
    assert_eq!(first.fired, 0);
    assert_eq!(first.visited.len(), contacts, "the first round read every contact's tasks");
    assert!(first.visited.values().all(|n| *n <= 2), "{:?}", first.visited);

    // A task on every 10th contact, none of which changes itself: each fires exactly once
    // within the next round.
    let ids = contact_ids(&h);
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate().step_by(10) {
        tasks.push(create_task(&c, &h, id, &format!("t{i}")).await);
    }
    let second = poll_round(&h, polls_per_round, max, cost, contacts as u64, false).await;
    assert_eq!(second.fired, tasks.len(), "every task fired once within one round");
    assert_eq!(fired(&h).len(), tasks.len());
    assert!(fired(&h).values().all(|n| *n == 1));
    assert_eq!(second.visited.len(), contacts);
}

struct Round {
    fired: usize,
    /// Child reads per contact path.
    visited: HashMap<String, usize>,
}

/// `polls` polls, each checked against the bound; with `exact` (no round ends among them),
/// an idle one costs exactly what the cost model (and so `flowd plan`) says.
async fn poll_round(h: &Harness, polls: u64, max: u32, cost: catalog::FanOutCost, contacts: u64, exact: bool) -> Round {
    let mut round = Round { fired: 0, visited: HashMap::new() };
    for n in 0..polls {
        let log_before = requests(h);
        let (report, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
        round.fired += runs.len();
        let log = h.sandbox.requests();
        let polled: Vec<&Value> = log[log_before..].iter().filter(|r| r["op"] != "contacts.create_note").collect();
        assert!(polled.len() as u64 <= u64::from(max) + 1, "poll {n}: {} requests", polled.len());
        // The poll that ends a round reads only what is left of it.
        if exact && runs.is_empty() {
            assert_eq!(polled.len() as u64, cost.requests(contacts, 0), "poll {n}: {report:?}");
        }
        for r in polled.iter().filter(|r| r["op"] == TASKS) {
            *round.visited.entry(r["path"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
    }
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cut_off_before_its_commit_neither_loses_nor_duplicates() {
    let h = harness(Seed::Contacts(5), &[&task_flow(50)], fast_retries()).await;
    let c = reqwest::Client::new();
    let ids = contact_ids(&h);
    h.engine.poll_and_run("tasks").await.expect("baseline");
    let mut want = HashMap::new();
    for (i, id) in ids.iter().enumerate().take(4) {
        let t = create_task(&c, &h, id, &format!("k{i}")).await;
        want.insert(format!("{t} k{i}"), 1);
    }

    // The fourth child read never answers: the poll has read the parents and most
    // children when it is cut off, and has committed nothing.
    let mut operations = std::collections::BTreeMap::new();
    operations.insert(TASKS.to_string(), FaultRule { hang_rate: 1.0, times: Some(1), ..FaultRule::default() });
    h.sandbox.set_faults(FaultSettings { global: FaultRule::default(), operations }, Some(7));
    let cut = tokio::time::timeout(Duration::from_millis(1_500), h.engine.poll_and_run("tasks")).await;
    assert!(cut.is_err(), "the poll was cut off mid-fan-out");
    assert!(fired(&h).is_empty(), "nothing ran before the commit");
    h.sandbox.set_faults(FaultSettings::default(), None);

    // A new engine on the same store, as after a restart.
    let Harness { sandbox, engine, dir } = h;
    drop(engine);
    let engine = engine_for(&sandbox, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(&task_flow(50))]).expect("flows");
    let h = Harness { sandbox, engine, dir };

    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll after the cut");
    assert_eq!(runs.len(), 4);
    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert!(runs.is_empty());
    assert_eq!(fired(&h), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_two_contacts_never_collide_and_a_contact_created_later_fires_its_tasks() {
    let h = harness(Seed::Contacts(2), &[&task_flow(10)], fast_retries()).await;
    let c = reqwest::Client::new();
    h.engine.poll_and_run("tasks").await.expect("baseline");
    let ids = contact_ids(&h);
    let late = new_contact(&h.sandbox, 1);
    let late = late["id"].as_str().expect("id").to_string();
    // The same task content on two contacts: two keys, two runs.
    let t1 = create_task(&c, &h, &ids[0], "same").await;
    let t2 = create_task(&c, &h, &late, "same").await;
    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(runs.len(), 2);
    let fired = fired(&h);
    assert_eq!(fired.get(&format!("{t1} same")), Some(&1));
    assert_eq!(fired.get(&format!("{t2} same")), Some(&1));
}

async fn edit_contact(c: &reqwest::Client, h: &Harness, contact: &str, city: &str) {
    let resp = c
        .put(format!("{}/contacts/{contact}", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .json(&json!({"city": city}))
        .send()
        .await
        .expect("update contact");
    assert!(resp.status().is_success(), "{}", resp.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_contacts_come_first_and_never_starve_the_round() {
    let (max, contacts) = (6, 30);
    let h = harness(Seed::Contacts(contacts), &[&task_flow(max)], fast_retries()).await;
    let c = reqwest::Client::new();
    let cost = catalog::FanOutCost { max_per_poll: max };
    let ids = contact_ids(&h);
    h.engine.poll_and_run("tasks").await.expect("baseline");
    // Let the first round finish, so every contact has been seen once.
    for _ in 0..cost.polls_per_round(contacts as u64) {
        h.engine.poll_and_run("tasks").await.expect("poll");
    }

    // A task on a contact whose record then changes: the next poll reads it first.
    let first = create_task(&c, &h, &ids[7], "edited").await;
    edit_contact(&c, &h, &ids[7], "Springfield").await;
    let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(runs.len(), 1, "the changed contact was read first");
    assert_eq!(fired(&h).get(&format!("{first} edited")), Some(&1));

    // A task on a contact that never changes, while more contacts change before every poll
    // than a poll reads: the round still reaches it within its busy bound.
    let quiet = create_task(&c, &h, &ids[29], "quiet").await;
    let bound = cost.busy_polls_per_round(contacts as u64);
    let mut found_after = None;
    for n in 0..bound {
        // Five of the first twenty contacts (never the quiet one), more than the three
        // changed ones a poll of six reads.
        for k in 0..5 {
            let i = (n as usize * 5 + k) % 20;
            edit_contact(&c, &h, &ids[i], &format!("City {n} {k}")).await;
        }
        let log_before = requests(&h);
        let (_, runs) = h.engine.poll_and_run("tasks").await.expect("poll");
        let polled = h.sandbox.requests()[log_before..].iter().filter(|r| r["op"] != "contacts.create_note").count();
        assert!(polled as u64 <= u64::from(max) + 1, "poll {n}: {polled} requests");
        if !runs.is_empty() && found_after.is_none() {
            found_after = Some(n);
        }
    }
    assert!(found_after.is_some(), "the quiet contact's task fired within {bound} busy polls");
    assert_eq!(fired(&h).get(&format!("{quiet} quiet")), Some(&1));
}
