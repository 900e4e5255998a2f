//! The engine against the sandbox over loopback, with a real sled store: new items fire
//! exactly once, baselines fire nothing, restarts fire nothing twice.

mod common;

use common::*;
use sandbox::Seed;
use store::RunStatus;

const WELCOME: &str = r#"
name: welcome
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
  dedupe: new
  max_new: 1000
steps:
  - id: task
    uses: contacts.create_task
    with:
      contactId: "{{ trigger.id }}"
      title: "Welcome call with {{ trigger.firstName }}"
      dueDate: "{{ date_add now days=2 }}"
      completed: false
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [welcomed] }
"#;

fn tasks_for(h: &Harness, contact: &str) -> Vec<serde_json::Value> {
    h.sandbox.records("tasks").into_iter().filter(|t| t["contactId"] == contact).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_new_contacts_make_exactly_n_tasks() {
    let h = harness(Seed::Contacts(30), &[WELCOME], fast_retries()).await;
    let tasks_before = h.sandbox.records("tasks").len();

    let (first, runs) = h.engine.poll_and_run("welcome").await.expect("baseline poll");
    assert!(first.baseline);
    assert_eq!(first.items, 30);
    assert!(runs.is_empty(), "the first poll records a baseline and fires nothing");

    let added: Vec<_> = (0..25).map(|n| new_contact(&h.sandbox, n)).collect();
    let (report, statuses) = h.engine.poll_and_run("welcome").await.expect("poll");
    assert_eq!(report.new, 25);
    assert_eq!(statuses.len(), 25);
    assert!(statuses.iter().all(|s| *s == RunStatus::Succeeded), "{statuses:?}");
    assert_eq!(h.sandbox.records("tasks").len(), tasks_before + 25);
    for c in &added {
        let id = c["id"].as_str().expect("id");
        let tasks = tasks_for(&h, id);
        assert_eq!(tasks.len(), 1, "one task for {id}");
        assert_eq!(tasks[0]["title"], format!("Welcome call with {}", c["firstName"].as_str().unwrap_or_default()));
        let contact = h.sandbox.record("contacts", id).expect("contact");
        assert!(contact["tags"].as_array().is_some_and(|t| t.contains(&serde_json::json!("welcomed"))), "{contact}");
    }

    let (again, runs) = h.engine.poll_and_run("welcome").await.expect("poll");
    assert_eq!((again.new, runs.len()), (0, 0), "nothing fires twice");
    assert_eq!(h.sandbox.records("tasks").len(), tasks_before + 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fires_nothing_twice() {
    let sb = sandbox(Seed::Contacts(5)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    {
        let engine = engine_for(&sb, &store_dir, fast_retries());
        engine.set_flows(vec![compile(WELCOME)]).expect("flows");
        engine.poll_and_run("welcome").await.expect("baseline");
        new_contact(&sb, 1);
        let (r, s) = engine.poll_and_run("welcome").await.expect("poll");
        assert_eq!((r.new, s.len()), (1, 1));
    }
    let tasks = sb.records("tasks").len();
    let engine = engine_for(&sb, &store_dir, fast_retries());
    engine.set_flows(vec![compile(WELCOME)]).expect("flows");
    let (r, s) = engine.poll_and_run("welcome").await.expect("poll after restart");
    assert!(!r.baseline, "the baseline survives the restart");
    assert_eq!((r.new, s.len()), (0, 0));
    assert_eq!(sb.records("tasks").len(), tasks);
}

const WATCH_CONTACT: &str = r#"
name: watch
account: main
trigger:
  uses: contacts.get_contact
  with: { contactId: "{{ env.CONTACT }}" }
  every: 1m
steps:
  - id: note
    uses: contacts.create_note
    with: { contactId: "{{ trigger.id }}", body: "changed: {{ trigger.email }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_mode_fires_on_each_change_and_not_otherwise() {
    let sb = sandbox(Seed::Contacts(3)).await;
    let contact = sb.records("contacts").into_iter().next().expect("a contact");
    let id = contact["id"].as_str().expect("id").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    let flow_text = WATCH_CONTACT.replace("{{ env.CONTACT }}", &id);
    engine.set_flows(vec![compile(&flow_text)]).expect("flows");

    let (r, s) = engine.poll_and_run("watch").await.expect("baseline");
    assert!(r.baseline && s.is_empty());
    let (_, s) = engine.poll_and_run("watch").await.expect("no change");
    assert!(s.is_empty(), "no change, no run");

    let http = reqwest::Client::new();
    for n in 0..2 {
        // GHL's dateUpdated has millisecond resolution; make sure it moves.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let res = http
            .put(format!("{}/contacts/{id}", sb.base_url()))
            .bearer_auth(TOKEN)
            .header("Version", "2021-07-28")
            .json(&serde_json::json!({ "email": format!("changed{n}@example.com") }))
            .send()
            .await
            .expect("update");
        assert!(res.status().is_success(), "{}", res.status());
        let (r, s) = engine.poll_and_run("watch").await.expect("poll");
        assert_eq!((r.new, s.as_slice()), (1, &[RunStatus::Succeeded][..]), "change {n} fires once");
        let (_, s) = engine.poll_and_run("watch").await.expect("poll");
        assert!(s.is_empty(), "and only once");
    }
    let notes: Vec<_> = sb.records("notes").into_iter().filter(|n| n["contactId"] == id.as_str()).collect();
    assert!(notes.iter().any(|n| n["body"] == "changed: changed1@example.com"), "{notes:?}");
}

/// `welcome` from `flow_text` on 2 contacts: baseline, 5 new contacts, one more poll.
/// Returns the harness, the tasks before that poll, and what the poll did.
async fn five_new_contacts_polled(flow_text: &str) -> (Harness, usize, engine::PollReport, Vec<RunStatus>) {
    let h = harness(Seed::Contacts(2), &[flow_text], fast_retries()).await;
    h.engine.poll_and_run("welcome").await.expect("baseline");
    for n in 0..5 {
        new_contact(&h.sandbox, n);
    }
    let tasks = h.sandbox.records("tasks").len();
    let (r, s) = h.engine.poll_and_run("welcome").await.expect("poll");
    (h, tasks, r, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flood_guard_holds_runs_until_released() {
    let flow_text = WELCOME.replace("max_new: 1000", "max_new: 3");
    let (h, tasks, r, s) = five_new_contacts_polled(&flow_text).await;
    assert_eq!((r.new, r.held, s.len()), (5, 5, 0));
    assert_eq!(h.sandbox.records("tasks").len(), tasks, "held runs send nothing");
    let released = h.engine.release("welcome").await.expect("release");
    assert_eq!(released.len(), 5);
    assert!(released.iter().all(|s| *s == RunStatus::Succeeded));
    assert_eq!(h.sandbox.records("tasks").len(), tasks + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flood_guard_holds_every_run_of_a_poll_across_pages() {
    // Pages of 2: the guard must see the whole poll before any run starts.
    let flow_text = WELCOME.replace("max_new: 1000", "max_new: 3").replace(
        r#"with: { locationId: "{{ account.location_id }}" }"#,
        r#"with: { locationId: "{{ account.location_id }}", pageLimit: 2 }"#,
    );
    let (h, tasks, r, s) = five_new_contacts_polled(&flow_text).await;
    assert_eq!((r.items, r.new, r.held, s.len()), (7, 5, 5, 0));
    assert_eq!(h.sandbox.records("tasks").len(), tasks, "held runs send nothing");
}

const BULK: &str = r#"
name: bulk
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}", pageLimit: 10 }
  every: 1m
  dedupe: new
  max_new: 100000
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Hello {{ trigger.firstName }}", dueDate: "{{ date_add now days=2 }}", completed: false }
"#;

fn tasks_per_contact(sb: &sandbox::Sandbox) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for t in sb.records("tasks") {
        *out.entry(t["contactId"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    out
}

/// With a flood guard that cannot trip, each page is committed and its runs start while
/// later pages are fetched; a poll that fails half-way keeps what it committed, and the
/// next poll picks up the rest without firing anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_poll_runs_each_page_as_it_arrives_and_survives_a_failure_half_way() {
    let h = harness(Seed::Contacts(5), &[BULK], fast_retries()).await;
    h.engine.poll_and_run("bulk").await.expect("baseline");
    let added: Vec<String> =
        (0..35).map(|n| new_contact(&h.sandbox, n)["id"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(h.sandbox.records("tasks").len(), 0);

    // Slow pages: the first page's tasks exist long before the last page could arrive.
    let slow = sandbox::FaultRule { latency_ms: 800, ..Default::default() };
    let mut faults = sandbox::FaultSettings::default();
    faults.operations.insert("contacts.search_contacts".into(), slow);
    h.sandbox.set_faults(faults, Some(1));
    let engine = h.engine.clone();
    let poll = tokio::spawn(async move { engine.poll_and_dispatch("bulk").await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while h.sandbox.records("tasks").len() < 10 {
        assert!(std::time::Instant::now() < deadline, "the first page's runs never ran");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(!poll.is_finished(), "runs started before the poll had fetched its last page");

    // Every further page fails (after the client's retries): the poll errs.
    let broken = sandbox::FaultRule { error_rate: 1.0, error_status: Some(500), ..Default::default() };
    let mut faults = sandbox::FaultSettings::default();
    faults.operations.insert("contacts.search_contacts".into(), broken);
    h.sandbox.set_faults(faults, Some(1));
    let result = poll.await.expect("poll task");
    assert!(result.is_err(), "the poll should fail: {result:?}");
    // Runs of committed pages went on and finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !h.engine.store().list_resumable().expect("resumable").is_empty() {
        assert!(std::time::Instant::now() < deadline, "runs of committed pages did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let done = tasks_per_contact(&h.sandbox);
    assert!((10..35).contains(&done.len()), "the committed pages' items, not all: {}", done.len());
    assert!(done.values().all(|n| *n == 1), "{done:?}");

    h.sandbox.set_faults(sandbox::FaultSettings::default(), Some(1));
    let (r, statuses) = h.engine.poll_and_run("bulk").await.expect("poll after the failure");
    assert!(!r.baseline);
    assert_eq!(r.new, 35 - done.len(), "only what the failed poll had not committed is new");
    assert!(statuses.iter().all(|s| *s == RunStatus::Succeeded), "{statuses:?}");
    let done = tasks_per_contact(&h.sandbox);
    for id in &added {
        assert_eq!(done.get(id), Some(&1), "one task for {id}");
    }
}

const EVERY_2S: &str = r#"
name: every2s
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 2s
steps:
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [seen] }
"#;

/// What `flow_states()` says about a flow's schedule, its last poll and its next one,
/// as the scheduler polls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_state_shows_the_schedule_the_last_poll_and_the_next_one() {
    let sb = sandbox(Seed::Contacts(3)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(EVERY_2S)]).expect("flows load");
    let state = engine.flow_states().remove(0);
    assert_eq!(state.schedule.as_deref(), Some("every 2s"));
    assert!(state.last_poll.is_none() && state.next_poll.is_none(), "{state:?}");

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tasks = engine.start(shutdown);
    // The first poll (a baseline of the 3 contacts) and the next one planned after it.
    let first = state_when(&engine, "a first poll and the next planned", |s| {
        s.last_poll.as_ref().zip(s.next_poll).is_some_and(|(l, next)| next > l.at)
    })
    .await;
    let last = first.last_poll.clone().expect("polled");
    assert!(last.ok && last.items == 3 && last.error.is_none(), "{last:?}");
    let next = first.next_poll.expect("planned");
    let gap = (next - last.at).num_milliseconds();
    assert!((0..=3_000).contains(&gap), "next poll {gap} ms after the last, on a 2s schedule");

    // The second poll happens when it was said to, and replaces the last poll.
    let second = state_when(&engine, "a second poll", |s| s.last_poll.as_ref().is_some_and(|l| l.at > last.at)).await;
    let at = second.last_poll.expect("polled").at;
    assert!(at >= next - chrono::Duration::milliseconds(50), "polled at {at}, planned for {next}");
    let json = serde_json::to_value(engine.flow_states()).expect("serialises");
    assert_eq!(json[0]["schedule"], "every 2s", "{json}");
    assert!(json[0]["last_poll"]["at"].is_string() && json[0]["last_poll"]["ok"] == true, "{json}");
    stop.send(true).expect("stop");
    tokio::time::timeout(std::time::Duration::from_secs(5), tasks.join()).await.expect("tasks stop");
}

/// The only flow's state once `check` holds (within 15 s).
async fn state_when(
    engine: &engine::Engine,
    what: &str,
    check: impl Fn(&engine::FlowState) -> bool,
) -> engine::FlowState {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let state = engine.flow_states().remove(0);
        if check(&state) {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {state:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
