//! Step control against the sandbox and a real store: `if:` skips are recorded, `for_each`
//! sends once per element with a record (and a "sent" mark) each, `on_error: continue`
//! goes on past a failure (after the retries it is due), and lookup-then-write creates a
//! contact once and finds it after.

mod common;

use common::*;
use sandbox::{FaultRule, FaultSettings, Seed};
use serde_json::{json, Value};
use store::{NewRun, RunChange, RunStatus, StepStatus};

/// A webhook-only trigger: runs are created directly, and items are not field-checked.
const HEAD: &str = "account: main\ntrigger: { webhook: ContactCreate }\nsteps:\n";

fn flow_text(name: &str, steps: &str) -> String {
    format!("name: {name}\n{HEAD}{steps}")
}

fn run_of(h: &Harness, id: store::RunId) -> store::Run {
    h.engine.store().get_run(id).expect("store").expect("run")
}

fn tasks_of(h: &Harness, contact: &str) -> usize {
    h.sandbox.records("tasks").iter().filter(|t| t["contactId"] == contact).count()
}

fn tags_of(h: &Harness, contact: &str) -> Vec<String> {
    let c = h.sandbox.record("contacts", contact).expect("contact");
    c["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect()
}

fn contact_ids(h: &Harness) -> Vec<String> {
    h.sandbox.records("contacts").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect()
}

async fn delete_contact(h: &Harness, id: &str) {
    let deleted = reqwest::Client::new()
        .delete(format!("{}/contacts/{id}", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .send()
        .await
        .expect("delete");
    assert!(deleted.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_if_is_false_is_recorded_skipped_and_later_steps_see_it() {
    let text = flow_text(
        "skip",
        r#"  - id: vip
    if: "{{ trigger.vip }}"
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [vip] }
  - id: note
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: ["vip-skipped-{{ steps.vip.skipped }}"] }
"#,
    );
    let h = harness(Seed::Contacts(1), &[&text], fast_retries()).await;
    let contact = contact_ids(&h).pop().expect("a contact");
    let id = h.engine.store().create_run(&NewRun::new("skip", json!({"id": contact, "vip": false}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), 1, "only `note` was sent");
    let run = run_of(&h, id);
    let vip = run.step("vip").expect("a record of the skip");
    assert_eq!(vip.status, StepStatus::Skipped);
    assert!(tags_of(&h, &contact).contains(&"vip-skipped-true".to_string()));
    assert!(!tags_of(&h, &contact).contains(&"vip".to_string()));
    // Executed again (a replay, a resume), the recorded skip holds and nothing is re-sent.
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), 1);
}

const EACH: &str = r#"  - id: task
    for_each: "{{ trigger.contacts }}"
    uses: contacts.create_task
    with: { contactId: "{{ item }}", title: "Task {{ index }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
  - id: count
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.contacts.0 }}", tags: ["tasks-{{ len steps.task }}", "first-{{ steps.task.0.title }}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_sends_once_per_element_each_with_its_own_record() {
    let h = harness(Seed::Contacts(3), &[&flow_text("each", EACH)], fast_retries()).await;
    let contacts = contact_ids(&h);
    let id = h.engine.store().create_run(&NewRun::new("each", json!({"contacts": contacts}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 3);
    for c in &contacts {
        assert_eq!(tasks_of(&h, c), 1, "{c}");
    }
    let run = run_of(&h, id);
    for (i, contact) in contacts.iter().enumerate() {
        let r = run.step(&format!("task[{i}]")).unwrap_or_else(|| panic!("record of element {i}"));
        assert_eq!((r.status, r.tries), (StepStatus::Succeeded, 1));
        let path = r.request["path"].as_str().unwrap_or_default();
        assert!(path.contains(contact.as_str()), "{path}");
    }
    let tags = tags_of(&h, &contacts[0]);
    assert!(tags.contains(&"tasks-3".into()) && tags.contains(&"first-Task 0".into()), "{tags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_more_elements_than_max_items_fails_the_run_and_sends_nothing() {
    let text = flow_text(
        "each",
        &EACH.replace("    uses: contacts.create_task", "    max_items: 2\n    uses: contacts.create_task"),
    );
    let h = harness(Seed::Contacts(3), &[&text], fast_retries()).await;
    let id = h.engine.store().create_run(&NewRun::new("each", json!({"contacts": contact_ids(&h)}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Dead);
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 0);
    let error = run_of(&h, id).error.unwrap_or_default();
    assert!(error.contains("yielded 3 elements, more than `max_items` (2)"), "{error}");
}

/// Elements 0 and 1 succeed, element 2 is refused (its contact is gone); once the contact
/// is back the replay sends element 2 only: every contact gets exactly one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_two_elements_succeeded_sends_only_the_third() {
    let h = harness(Seed::Contacts(3), &[&flow_text("each", EACH)], fast_retries()).await;
    let contacts = contact_ids(&h);
    let third = h.sandbox.record("contacts", &contacts[2]).expect("third");
    delete_contact(&h, &contacts[2]).await;
    let id = h.engine.store().create_run(&NewRun::new("each", json!({"contacts": contacts}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Dead);
    let run = run_of(&h, id);
    let statuses: Vec<_> = (0..3).map(|i| run.step(&format!("task[{i}]")).map(|r| r.status)).collect();
    assert_eq!(statuses, [Some(StepStatus::Succeeded), Some(StepStatus::Succeeded), Some(StepStatus::Failed)]);
    assert!(run.error.as_deref().is_some_and(|e| e.contains("step `task[2]`")), "{:?}", run.error);

    h.sandbox.insert_record("contacts", third).expect("restored");
    assert_eq!(h.engine.replay(id, false).await.expect("replay"), RunStatus::Succeeded);
    for c in &contacts {
        assert_eq!(tasks_of(&h, c), 1, "{c}: each element sent once");
    }
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 4, "3 served, 1 refused");
    let run = run_of(&h, id);
    let tries: Vec<_> = (0..3).filter_map(|i| run.step(&format!("task[{i}]")).map(|r| r.tries)).collect();
    assert_eq!(tries, [1, 1, 2]);
}

/// A crash after element 0 succeeded and while element 1 was being sent: the resumed run
/// does not send element 0 again, and element 1 (a POST) is in doubt, not re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_for_each_resends_nothing_that_succeeded_or_may_have() {
    let h = harness(Seed::Contacts(3), &[&flow_text("each", EACH)], fast_retries()).await;
    let contacts = contact_ids(&h);
    let store = h.engine.store().clone();
    let id = store.create_run(&NewRun::new("each", json!({"contacts": contacts}))).expect("run");
    let started = |step: &str| RunChange::StepStarted { step: step.into(), request: store::Payload::new(json!({})) };
    store
        .update_run(
            id,
            &[
                RunChange::Status { status: RunStatus::Running, error: None },
                started("task[0]"),
                RunChange::StepFinished {
                    step: "task[0]".into(),
                    status: StepStatus::Succeeded,
                    response: Some(store::Payload::new(json!({"id": "t0", "title": "Task 0"}))),
                    error: None,
                },
                started("task[1]"),
            ],
        )
        .expect("the crashed run's record");
    assert_eq!(h.engine.execute(id).await.expect("resume"), RunStatus::InDoubt);
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 0);
    let run = run_of(&h, id);
    assert_eq!(run.step("task[1]").map(|r| r.status), Some(StepStatus::InDoubt));
    assert!(run.step("task[2]").is_none());
}

fn fault_on(op: &str, rule: FaultRule) -> FaultSettings {
    let mut f = FaultSettings::default();
    f.operations.insert(op.into(), rule);
    f
}

const CONTINUE: &str = r#"  - id: task
    on_error: continue
    uses: contacts.create_task
    with: { contactId: "{{ trigger.missing }}", title: "T", dueDate: "2030-01-01T10:00:00Z", completed: false }
  - id: flag
    if: "{{ steps.task.error }}"
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [task-failed] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_continue_records_the_failure_and_goes_on() {
    let h = harness(Seed::Contacts(1), &[&flow_text("cont", CONTINUE)], fast_retries()).await;
    let contact = contact_ids(&h).pop().expect("a contact");
    let item = json!({"id": contact, "missing": "no-such-contact"});
    let id = h.engine.store().create_run(&NewRun::new("cont", item)).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    let run = run_of(&h, id);
    let task = run.step("task").expect("record");
    assert_eq!(task.status, StepStatus::Failed);
    let error = task.response.as_deref().and_then(|r| r["error"].as_str()).unwrap_or_default().to_string();
    assert!(error.contains("404"), "{error}");
    assert!(tags_of(&h, &contact).contains(&"task-failed".to_string()));
    // The continued failure holds: executed again, nothing is sent again.
    let (tasks, tags) =
        (requests_for(&h.sandbox, "contacts.create_task"), requests_for(&h.sandbox, "contacts.add_tags"));
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), tasks);
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), tags);
}

/// A failure that a retry may fix (a PUT answered 503) is retried first; only the last
/// attempt's failure continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_continue_retries_first_and_continues_only_on_the_last_attempt() {
    let text = flow_text(
        "cont",
        r#"  - id: city
    on_error: continue
    uses: contacts.update_contact
    with: { contactId: "{{ trigger.id }}", city: Marked }
  - id: flag
    if: "{{ steps.city.error }}"
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [city-failed] }
"#,
    );
    let h = harness(Seed::Contacts(1), &[&text], fast_retries()).await;
    let contact = contact_ids(&h).pop().expect("a contact");
    h.sandbox.set_faults(
        fault_on(
            "contacts.update_contact",
            FaultRule { error_rate: 1.0, error_status: Some(503), ..FaultRule::default() },
        ),
        Some(7),
    );
    let id = h.engine.store().create_run(&NewRun::new("cont", json!({"id": contact}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Failed, "attempt 1 of 3 is retried");
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), 0);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        statuses.extend(h.engine.retry_due().await.expect("retry"));
    }
    assert_eq!(statuses, [RunStatus::Failed, RunStatus::Succeeded], "the third and last attempt continues");
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), 1);
    assert_eq!(run_of(&h, id).attempts, 3);
}

/// A POST answered 503 may have been carried out: with `on_error: continue` it is still in
/// doubt, never continued past silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_continue_does_not_continue_past_an_in_doubt_post() {
    let text = flow_text("cont", &CONTINUE.replace("{{ trigger.missing }}", "{{ trigger.id }}"));
    let h = harness(Seed::Contacts(1), &[&text], fast_retries()).await;
    let contact = contact_ids(&h).pop().expect("a contact");
    h.sandbox.set_faults(
        fault_on(
            "contacts.create_task",
            FaultRule { error_rate: 1.0, error_status: Some(503), ..FaultRule::default() },
        ),
        Some(7),
    );
    let id = h.engine.store().create_run(&NewRun::new("cont", json!({"id": contact}))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::InDoubt);
    assert_eq!(run_of(&h, id).step("task").map(|r| r.status), Some(StepStatus::InDoubt));
    assert_eq!(requests_for(&h.sandbox, "contacts.add_tags"), 0, "the run did not go on");
}

/// flows/upsert-contact.yaml: the first business with an unknown email creates its contact;
/// the second with the same email finds it and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_then_write_creates_once_then_finds() {
    let text = include_str!("../../../flows/upsert-contact.yaml");
    let h = harness(Seed::Contacts(2), &[text], fast_retries()).await;
    let email = "ops@acme.test";
    let with_email = |h: &Harness| -> Vec<Value> {
        h.sandbox.records("contacts").into_iter().filter(|c| c["email"] == email).collect()
    };
    assert!(with_email(&h).is_empty());
    let flow = "upsert-business-contact";
    let mut ids = Vec::new();
    for (n, business) in ["b1", "b2"].iter().enumerate() {
        let item = json!({"id": business, "name": format!("Acme {n}"), "email": email});
        let id = h.engine.store().create_run(&NewRun::new(flow, item)).expect("run");
        assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
        ids.push(id);
    }
    let found = with_email(&h);
    assert_eq!(found.len(), 1, "created once: {found:?}");
    assert_eq!(requests_for(&h.sandbox, "contacts.create_contact"), 1);
    // The sandbox serves the lookup as the operation of the same path it lists first.
    let lookups =
        requests_for(&h.sandbox, "contacts.find_contact") + requests_for(&h.sandbox, "contacts.get_duplicate_contact");
    assert_eq!(lookups, 2);
    assert_eq!(found[0]["tags"], json!(["business:Acme 0", "business:Acme 1"]), "both runs tagged the one contact");
    assert_eq!(run_of(&h, ids[0]).step("create").map(|r| r.status), Some(StepStatus::Succeeded));
    assert_eq!(run_of(&h, ids[1]).step("create").map(|r| r.status), Some(StepStatus::Skipped));
}

/// The dry run (`flowd test --item`) lists a skipped step as skipped, with no request, and a
/// `for_each` step once per element.
#[test]
fn the_dry_run_shows_skipped_steps_and_each_element() {
    let text = flow_text(
        "dry",
        r#"  - id: vip
    if: "{{ trigger.vip }}"
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [vip] }
  - id: task
    for_each: "{{ trigger.contacts }}"
    uses: contacts.create_task
    with: { contactId: "{{ item }}", title: "Task {{ index }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#,
    );
    let flow = compile(&text);
    let catalog = catalog::Catalog::builtin().expect("catalog");
    let dry = engine::dry_run(
        &flow,
        &catalog,
        json!({"id": "c0", "contacts": ["c1", "c2"]}),
        json!({"name": "main", "location_id": "loc1"}),
        &std::collections::BTreeMap::new(),
        &serde_json::Map::new(),
        chrono::Utc::now(),
    )
    .expect("dry run");
    let shown: Vec<_> =
        dry.steps.iter().map(|s| (s.id.as_str(), s.skipped, s.index, s.request["path"].clone())).collect();
    assert_eq!(
        shown,
        [
            ("vip", true, None, Value::Null),
            ("task", false, Some(0), json!("/contacts/c1/tasks")),
            ("task", false, Some(1), json!("/contacts/c2/tasks")),
        ]
    );
}
