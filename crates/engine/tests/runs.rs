//! Run execution: retries on a backoff, dead letters and replay, in-doubt steps after a
//! crash, and the built-in http.request step — against the sandbox and a real store.

mod common;

use common::*;
use engine::EngineConfig;
use sandbox::{FaultRule, FaultSettings, Seed};
use serde_json::json;
use store::{NewRun, RunChange, RunStatus, StepStatus};

const TASK_FLOW: &str = r#"
name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

fn fault_on(op: &str, rule: FaultRule) -> FaultSettings {
    let mut f = FaultSettings::default();
    f.operations.insert(op.into(), rule);
    f
}

fn tasks_of(h: &Harness, contact: &str) -> usize {
    h.sandbox.records("tasks").iter().filter(|t| t["contactId"] == contact).count()
}

/// A request that is safe to repeat (a PUT) and failed with 5xx until the client gave up
/// is tried again by the run's next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_retried_on_backoff_and_succeeds_once() {
    let h = harness(Seed::Contacts(2), &[UPDATE_FLOW], fast_retries()).await;
    h.engine.poll_and_run("mark").await.expect("baseline");
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id");
    // As many 503s as the client's own attempts (5): the run's attempt fails.
    h.sandbox.set_faults(
        fault_on(
            "contacts.update_contact",
            FaultRule { error_rate: 1.0, error_status: Some(503), times: Some(5), ..FaultRule::default() },
        ),
        Some(7),
    );
    let (_, statuses) = h.engine.poll_and_run("mark").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Failed]);
    assert_ne!(h.sandbox.record("contacts", id).expect("contact")["city"], "Marked");

    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let retried = h.engine.retry_due().await.expect("retry");
    assert_eq!(retried, [RunStatus::Succeeded]);
    assert_eq!(h.sandbox.record("contacts", id).expect("contact")["city"], "Marked");
    assert_eq!(requests_for(&h.sandbox, "contacts.update_contact"), 6, "5 refused, then 1 served");
    assert!(h.engine.retry_due().await.expect("nothing due").is_empty());
}

/// A failed run waits for its retry even when it is dispatched again at once (a cluster
/// node's claimer and a webhook can both hand it to the engine): the second task sends
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_executed_again_before_its_retry_is_due_sends_nothing() {
    let slow = EngineConfig { retry_base: std::time::Duration::from_secs(60), ..fast_retries() };
    let h = harness(Seed::Contacts(1), &[UPDATE_FLOW], slow).await;
    h.sandbox.set_faults(
        fault_on(
            "contacts.update_contact",
            FaultRule { error_rate: 1.0, error_status: Some(503), ..FaultRule::default() },
        ),
        Some(7),
    );
    let contact = h.sandbox.records("contacts").pop().expect("a contact");
    let id = h.engine.store().create_run(&NewRun::new("mark", json!({ "id": contact["id"] }))).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Failed);
    let sent = requests_for(&h.sandbox, "contacts.update_contact");
    assert!(sent > 0);
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Failed);
    assert_eq!(requests_for(&h.sandbox, "contacts.update_contact"), sent, "nothing sent before the retry is due");
    assert_eq!(h.engine.store().get_run(id).expect("store").expect("run").attempts, 1);
}

/// GHL created the task, then its gateway answered 502: the run is in doubt after the
/// first attempt, and no later attempt creates a second task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_5xx_after_it_was_processed_is_in_doubt_not_retried() {
    let h = harness(Seed::Contacts(2), &[TASK_FLOW], fast_retries()).await;
    h.engine.poll_and_run("tasks").await.expect("baseline");
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id");
    h.sandbox.set_faults(
        fault_on(
            "contacts.create_task",
            FaultRule {
                error_rate: 1.0,
                error_status: Some(502),
                error_after_processing: true,
                ..FaultRule::default()
            },
        ),
        Some(7),
    );
    let (report, statuses) = h.engine.poll_and_run("tasks").await.expect("poll");
    assert_eq!(statuses, [RunStatus::InDoubt]);
    // Every later attempt the engine would make (attempts: 3).
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        h.engine.retry_due().await.expect("retry");
        h.engine.resume().await.expect("resume");
    }
    assert_eq!(tasks_of(&h, id), 1, "GHL acted once, so exactly one task exists");
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 1, "the POST left once");
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    assert_eq!(run.status, RunStatus::InDoubt);
    assert_eq!(run.steps[0].status, StepStatus::InDoubt);
    assert!(run.error.as_deref().is_some_and(|e| e.contains("502")), "{:?}", run.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_step_goes_dead_and_replays() {
    let h = harness(Seed::Contacts(2), &[TASK_FLOW], fast_retries()).await;
    h.engine.poll_and_run("tasks").await.expect("baseline");
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id");
    let report = h.engine.poll("tasks").await.expect("poll");
    // The contact is deleted in GHL before the run executes: GHL answers 4xx, which is
    // not retried: the run is dead at once, with the step's error recorded.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/contacts/{id}", h.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Version", "2021-07-28")
        .send()
        .await
        .expect("delete");
    assert!(deleted.status().is_success());
    let statuses = h.engine.execute_all(report.runs.clone()).await.expect("execute");
    assert_eq!(statuses, [RunStatus::Dead]);
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    assert_eq!(run.steps[0].status, StepStatus::Failed);
    assert!(run.error.as_deref().is_some_and(|e| e.contains("step `task`")), "{:?}", run.error);

    // Once the contact is back, the dead run replays: a new series of attempts of the same run.
    h.sandbox.insert_record("contacts", c.clone()).expect("restored");
    let status = h.engine.replay(report.runs[0], false).await.expect("replay");
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(tasks_of(&h, id), 1);
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    assert_eq!((run.status, run.replays, run.attempts, run.steps[0].tries), (RunStatus::Succeeded, 1, 1, 2));
    // Asked again, the replay is refused: the run is no longer dead, and nothing is sent.
    let again = h.engine.replay(report.runs[0], false).await;
    assert!(matches!(&again, Err(engine::EngineError::NotReplayable(m)) if m.contains("succeeded")), "{again:?}");
    assert_eq!(tasks_of(&h, id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_may_have_been_sent_before_a_crash_is_in_doubt_not_resent() {
    let h = harness(Seed::Contacts(2), &[TASK_FLOW], fast_retries()).await;
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id").to_string();
    // What a crash between "step started" and "step recorded" leaves behind.
    let store = h.engine.store().clone();
    let mut new = NewRun::new("tasks", c.clone());
    new.trigger = Some("tasks/contacts.search_contacts/new".into());
    let run = store.create_run(&new).expect("run");
    store
        .update_run(
            run,
            &[
                RunChange::Status { status: RunStatus::Running, error: None },
                RunChange::StepStarted { step: "task".into(), request: json!({"op": "contacts.create_task"}).into() },
            ],
        )
        .expect("crash state");

    let resumed = h.engine.resume().await.expect("resume");
    assert_eq!(resumed, [RunStatus::InDoubt]);
    assert_eq!(tasks_of(&h, &id), 0, "an in-doubt POST is never sent again by itself");
    let record = store.get_run(run).expect("store").expect("run");
    assert_eq!(record.steps[0].status, StepStatus::InDoubt);

    // A replay sends it again only when the operator says it did not reach GHL.
    let refused = h.engine.replay(run, false).await;
    assert!(matches!(&refused, Err(engine::EngineError::NotReplayable(m)) if m.contains("--include-in-doubt")));
    assert_eq!(tasks_of(&h, &id), 0);
    assert_eq!(h.engine.replay(run, true).await.expect("replay"), RunStatus::Succeeded);
    assert_eq!(tasks_of(&h, &id), 1);
}

const UPDATE_FLOW: &str = r#"
name: mark
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
steps:
  - id: mark
    uses: contacts.update_contact
    with: { contactId: "{{ trigger.id }}", city: "Marked" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_step_interrupted_by_a_crash_is_sent_again() {
    let h = harness(Seed::Contacts(2), &[UPDATE_FLOW], fast_retries()).await;
    let c = new_contact(&h.sandbox, 1);
    let store = h.engine.store().clone();
    let run = store.create_run(&NewRun::new("mark", c.clone())).expect("run");
    store
        .update_run(
            run,
            &[
                RunChange::Status { status: RunStatus::Running, error: None },
                RunChange::StepStarted {
                    step: "mark".into(),
                    request: json!({"op": "contacts.update_contact"}).into(),
                },
            ],
        )
        .expect("crash state");
    assert_eq!(h.engine.resume().await.expect("resume"), [RunStatus::Succeeded]);
    let id = c["id"].as_str().expect("id");
    assert_eq!(h.sandbox.record("contacts", id).expect("contact")["city"], "Marked");
    let run = store.get_run(run).expect("store").expect("run");
    assert_eq!((run.steps[0].status, run.steps[0].tries), (StepStatus::Succeeded, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_pushes_to_the_users_app_and_respects_the_allow_list() {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(v);
                axum::Json(json!({"stored": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let flow_text = format!(
        r#"
name: push
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
steps:
  - id: push
    uses: http.request
    with: {{ method: POST, url: "{url}", headers: {{ x-flowd: "1" }}, json: {{ contact: "{{{{ trigger }}}}", tags: "{{{{ trigger.tags }}}}" }} }}
"#
    );
    // The app is on 127.0.0.1: a local target, allowed explicitly.
    let h =
        harness(Seed::Contacts(1), &[&flow_text], engine::EngineConfig { http_allow_private: true, ..fast_retries() })
            .await;
    h.engine.poll_and_run("push").await.expect("baseline");
    let c = new_contact(&h.sandbox, 7);
    let (report, statuses) = h.engine.poll_and_run("push").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    let pushed = got.lock().expect("lock").clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0]["contact"]["id"], c["id"]);
    assert!(pushed[0]["tags"].is_array(), "a single expression keeps its JSON type: {}", pushed[0]);
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    assert_eq!(run.steps[0].response.as_ref().map(|r| r["body"]["stored"].clone()), Some(json!(true)));

    // The same flow with an allow-list that does not name the host: dead, nothing sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = engine::EngineConfig {
        http_allow_hosts: vec!["hooks.example.com".into()],
        http_allow_private: true,
        ..fast_retries()
    };
    let strict = engine_for(&h.sandbox, &dir.path().join("s"), config);
    strict.set_flows(vec![compile(&flow_text)]).expect("flows");
    let id = strict.store().create_run(&NewRun::new("push", c.clone())).expect("run");
    assert_eq!(strict.execute(id).await.expect("execute"), RunStatus::Dead);
    assert_eq!(got.lock().expect("lock").len(), 1);
    server.abort();
}

/// A template that loads but cannot render for one item (a helper refuses the value) ends
/// that run `dead` with the reason, without sending anything; the engine carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_template_fails_to_render_is_dead_with_the_reason() {
    const FLOW: &str = r#"
name: dates
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call", dueDate: "{{ date_add trigger.firstName days=1 }}", completed: false }
"#;
    let h = harness(Seed::Contacts(2), &[FLOW], fast_retries()).await;
    h.engine.poll_and_run("dates").await.expect("baseline");
    new_contact(&h.sandbox, 1);
    let (report, statuses) = h.engine.poll_and_run("dates").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Dead]);
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    let error = run.error.as_deref().unwrap_or_default();
    assert!(error.contains("step `task`") && error.contains("cannot render") && error.contains("date_add"), "{error}");
    assert_eq!(requests_for(&h.sandbox, "contacts.create_task"), 0, "nothing was sent");
    // The engine is still serving: the next poll works.
    h.engine.poll_and_run("dates").await.expect("next poll");
}

/// A header value rendered with a line break can never be sent: the run is dead (not in
/// doubt), nothing reaches the app, and no step is recorded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_with_a_line_break_is_dead_not_in_doubt() {
    use axum::routing::post;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let flow_text = format!(
        r#"
name: push
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
steps:
  - id: push
    uses: http.request
    with: {{ method: POST, url: "{url}", headers: {{ x-name: "{{{{ trigger.firstName }}}}" }}, json: {{ id: "{{{{ trigger.id }}}}" }} }}
"#
    );
    // The app is on 127.0.0.1: a local target, allowed explicitly.
    let h =
        harness(Seed::Contacts(1), &[&flow_text], engine::EngineConfig { http_allow_private: true, ..fast_retries() })
            .await;
    let contact = h
        .sandbox
        .insert_record(
            "contacts",
            json!({"locationId": h.sandbox.location_id(), "firstName": "Eve\r\nX-Injected: 1", "email": "eve@example.com"}),
        )
        .expect("contact");
    let id = h.engine.store().create_run(&NewRun::new("push", contact)).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Dead);
    let run = h.engine.store().get_run(id).expect("store").expect("run");
    assert!(run.error.as_deref().is_some_and(|e| e.contains("x-name")), "{:?}", run.error);
    assert!(run.steps.iter().all(|s| s.status != StepStatus::Sent && s.status != StepStatus::InDoubt), "{run:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the app");
    server.abort();
}

/// YAML users write `zip: 12345` and `title: 5`; GHL refuses numbers and booleans in string
/// fields with a 422, so flowd sends the declared type: the values' text.
const SCALARS_FLOW: &str = r#"
name: scalars
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: 5, dueDate: "2030-01-01T10:00:00Z", completed: "true" }
  - id: business
    uses: businesses.create_business
    with: { locationId: "{{ account.location_id }}", name: 12345, city: false, postalCode: 90210 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalars_written_for_string_parameters_reach_ghl_as_strings() {
    let h = harness(Seed::Contacts(2), &[SCALARS_FLOW], fast_retries()).await;
    h.engine.poll_and_run("scalars").await.expect("baseline");
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id");
    let (_, statuses) = h.engine.poll_and_run("scalars").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    let tasks: Vec<_> = h.sandbox.records("tasks").into_iter().filter(|t| t["contactId"] == id).collect();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["title"], "5");
    assert_eq!(tasks[0]["completed"], true);
    let biz: Vec<_> = h.sandbox.records("businesses").into_iter().filter(|b| b["name"] == "12345").collect();
    assert_eq!(biz.len(), 1, "{:?}", h.sandbox.records("businesses"));
    assert_eq!(biz[0]["city"], "false");
    assert_eq!(biz[0]["postalCode"], "90210");
}

/// The dry run (`flowd test --item`) shows the same converted values the wire carries.
#[test]
fn the_dry_run_shows_scalars_in_the_declared_type() {
    let flow = compile(SCALARS_FLOW);
    let catalog = catalog::Catalog::builtin().expect("catalog");
    let dry = engine::dry_run(
        &flow,
        &catalog,
        json!({"id": "c1", "firstName": "Ann"}),
        json!({"name": "main", "location_id": "loc1"}),
        &std::collections::BTreeMap::new(),
        &serde_json::Map::new(),
        chrono::Utc::now(),
    )
    .expect("dry run");
    assert_eq!(
        dry.steps[0].request["body"],
        json!({"title": "5", "dueDate": "2030-01-01T10:00:00Z", "completed": true})
    );
    assert_eq!(
        dry.steps[1].request["body"],
        json!({"locationId": "loc1", "name": "12345", "city": "false", "postalCode": "90210"})
    );
}

/// One request shape: what `flowd test --item` shows for a step is exactly what a real
/// run of the same item records for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_shows_the_request_a_run_records() {
    let h = harness(Seed::Contacts(2), &[SCALARS_FLOW], fast_retries()).await;
    h.engine.poll_and_run("scalars").await.expect("baseline");
    let contact = new_contact(&h.sandbox, 1);
    let (report, statuses) = h.engine.poll_and_run("scalars").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    let run = h.engine.store().get_run(report.runs[0]).expect("store").expect("run");
    let account = json!({"name": "main", "location_id": h.sandbox.location_id()});
    let catalog = catalog::Catalog::builtin().expect("catalog");
    let dry = engine::dry_run(
        &compile(SCALARS_FLOW),
        &catalog,
        contact,
        account,
        &std::collections::BTreeMap::new(),
        &serde_json::Map::new(),
        chrono::Utc::now(),
    )
    .expect("dry run");
    assert_eq!(dry.steps.len(), run.steps.len());
    for (d, r) in dry.steps.iter().zip(&run.steps) {
        assert_eq!(d.id, r.step);
        assert_eq!(&d.request, &*r.request, "step {}", d.id);
    }
    assert_eq!(dry.steps[0].uses, "contacts.create_task");
    assert_eq!(dry.steps[0].request["method"], "POST");
    assert_eq!(dry.steps[0].request["version"], "2021-07-28");
}

/// The most used action, as users write an SMS: GHL takes it without `status` or `subType`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_is_sent_as_users_write_it() {
    const SMS_FLOW: &str = r#"
name: sms
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: sms
    uses: conversations.send_message
    with: { type: SMS, contactId: "{{ trigger.id }}", message: "Hi {{ trigger.firstName }}" }
"#;
    let h = harness(Seed::Contacts(2), &[SMS_FLOW], fast_retries()).await;
    h.engine.poll_and_run("sms").await.expect("baseline");
    let c = new_contact(&h.sandbox, 1);
    let id = c["id"].as_str().expect("id");
    let (_, statuses) = h.engine.poll_and_run("sms").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    let sent: Vec<_> = h.sandbox.records("messages").into_iter().filter(|m| m["contactId"] == id).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["body"], format!("Hi {}", c["firstName"].as_str().unwrap_or_default()));
}

/// Operations whose spec requires a body with no field in it: flowd sends `{}`, a DELETE
/// included, and GHL (here the sandbox) carries them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_empty_bodies_go_out_and_are_accepted() {
    const FLOW: &str = r#"
name: empties
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: campaign
    uses: contacts.add_to_campaign
    with: { contactId: "{{ trigger.id }}", campaignId: "{{ env.CAMPAIGN }}" }
  - id: unenrol
    uses: workflows.remove_contact_from_workflow
    with: { contactId: "{{ trigger.id }}", workflowId: "{{ env.WORKFLOW }}" }
  - id: cancel
    uses: calendars.delete_event
    with: { eventId: "{{ env.EVENT }}" }
"#;
    let sb = sandbox(Seed::Contacts(2)).await;
    let campaign =
        sb.insert_record("campaigns", json!({"locationId": sb.location_id(), "name": "Spring"})).expect("campaign");
    let workflow =
        sb.insert_record("workflows", json!({"locationId": sb.location_id(), "name": "Nurture"})).expect("workflow");
    let event = sb
        .insert_record("events", json!({"locationId": sb.location_id(), "calendarId": "cal_x", "title": "Call", "startTime": "2030-01-01T10:00:00Z", "endTime": "2030-01-01T10:30:00Z"}))
        .expect("event");
    let text = FLOW
        .replace("{{ env.CAMPAIGN }}", campaign["id"].as_str().expect("id"))
        .replace("{{ env.WORKFLOW }}", workflow["id"].as_str().expect("id"))
        .replace("{{ env.EVENT }}", event["id"].as_str().expect("id"));
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_for(&sb, &dir.path().join("store"), fast_retries());
    engine.set_flows(vec![compile(&text)]).expect("flows load");
    engine.poll_and_run("empties").await.expect("baseline");
    new_contact(&sb, 1);
    let (_, statuses) = engine.poll_and_run("empties").await.expect("poll");
    assert_eq!(statuses, [RunStatus::Succeeded]);
    assert!(sb.record("events", event["id"].as_str().expect("id")).is_none(), "the event is deleted");
}

/// Credentials in an http.request step reach the app, but the run record (what the store
/// keeps and the API lists) holds `<redacted>` in their place; other headers stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_credentials_are_sent_but_not_recorded() {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, axum::extract::RawQuery(q): axum::extract::RawQuery| {
            let sink = sink.clone();
            async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                sink.lock().expect("lock").push((
                    h("authorization"),
                    h("x-api-key"),
                    h("cookie"),
                    q.unwrap_or_default(),
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook?access_token=tok-in-url&page=2", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let flow_text = format!(
        r#"
name: push
account: main
trigger:
  uses: contacts.search_contacts
  with: {{ locationId: "{{{{ account.location_id }}}}" }}
steps:
  - id: push
    uses: http.request
    with:
      method: POST
      url: "{url}"
      headers: {{ Authorization: "Bearer app-secret-1", X-Api-Key: "app-key-2", Cookie: "sid=app-cookie-3", X-Trace: "visible" }}
      json: {{ id: "{{{{ trigger.id }}}}" }}
"#
    );
    // The app is on 127.0.0.1: a local target, allowed explicitly.
    let h =
        harness(Seed::Contacts(1), &[&flow_text], engine::EngineConfig { http_allow_private: true, ..fast_retries() })
            .await;
    let contact = h.sandbox.records("contacts").pop().expect("contact");
    let id = h.engine.store().create_run(&NewRun::new("push", contact)).expect("run");
    assert_eq!(h.engine.execute(id).await.expect("execute"), RunStatus::Succeeded);
    let got = seen.lock().expect("lock").clone();
    assert_eq!(
        got,
        [(
            "Bearer app-secret-1".to_string(),
            "app-key-2".to_string(),
            "sid=app-cookie-3".to_string(),
            "access_token=tok-in-url&page=2".to_string()
        )]
    );
    let run = h.engine.store().get_run(id).expect("store").expect("run");
    let record = serde_json::to_string(&run).expect("json");
    for secret in ["app-secret-1", "app-key-2", "app-cookie-3", "tok-in-url"] {
        assert!(!record.contains(secret), "{secret} is in the run record: {record}");
    }
    let headers = &run.steps[0].request["headers"];
    assert_eq!(headers["Authorization"], "<redacted>");
    assert_eq!(headers["X-Trace"], "visible");
    assert!(run.steps[0].request["url"].as_str().is_some_and(|u| u.contains("page=2")), "{record}");
    server.abort();
}
