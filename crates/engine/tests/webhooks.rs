//! Instant triggers end to end over loopback: the sandbox sends signed webhooks, the
//! receiver stores them, the engine turns them into runs. Real sled store, seeded
//! fault injection.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use sandbox::{Seed, WebhookSettings};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{RunFilter, RunStatus};
use tokio::sync::{watch, Notify};

const SEED: [u8; 32] = [9; 32];

const INSTANT: &str = r#"
name: instant
account: main
trigger:
  webhook: ContactCreate
if: "{{ trigger.email }}"
steps:
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [instant] }
"#;

const RECONCILED: &str = r#"
name: reconciled
account: main
trigger:
  webhook: ContactCreate
  reconcile:
    uses: contacts.search_contacts
    with: { locationId: "{{ account.location_id }}" }
    every: 1h
    dedupe: new
    max_new: 1000
steps:
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: [reconciled] }
"#;

struct Live {
    h: Harness,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
}

/// A harness whose sandbox sends webhooks to a receiver on the engine's store, with the
/// engine's webhook processor running.
async fn live(flows: &[&str], sandbox_hooks: WebhookSettings) -> Live {
    let h = harness(Seed::Contacts(5), flows, fast_retries()).await;
    let key = SigningKey::from_bytes(&SEED);
    let verifier = webhooks::Verifier::new(vec![key.verifying_key()], vec![], Duration::from_secs(300));
    let wake = Arc::new(Notify::new());
    let receiver = webhooks::Receiver {
        verifier: Arc::new(verifier),
        store: h.engine.store().clone(),
        metrics: Arc::new(webhooks::WebhookMetrics::default()),
        wake: wake.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}{}", listener.local_addr().expect("addr"), webhooks::DEFAULT_PATH);
    let app = webhooks::router(receiver, webhooks::DEFAULT_PATH);
    tokio::spawn(async move { axum::serve(listener, app).await });
    use base64::Engine as _;
    let signing_key = base64::engine::general_purpose::STANDARD.encode(SEED);
    h.sandbox
        .set_webhooks(WebhookSettings { url: Some(url), signing_key: Some(signing_key), ..sandbox_hooks })
        .expect("webhook settings");
    let (stop, rx) = watch::channel(false);
    drop(h.engine.start_webhooks(wake.clone(), rx));
    Live { h, wake, stop }
}

fn has_tag(h: &Harness, id: &str, tag: &str) -> bool {
    h.sandbox.record("contacts", id).is_some_and(|c| c["tags"].as_array().is_some_and(|t| t.contains(&json!(tag))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_fires_its_flow_within_a_second() {
    let l = live(&[INSTANT], WebhookSettings::default()).await;
    let started = Instant::now();
    let c = new_contact(&l.h.sandbox, 1);
    let id = c["id"].as_str().expect("id").to_string();
    while !has_tag(&l.h, &id, "instant") {
        assert!(started.elapsed() < Duration::from_secs(1), "no run within a second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    eprintln!("change to action: {took:?}");
    // A contact without an email is left out by `if`.
    let bare = l.h.sandbox.insert_record("contacts", json!({"firstName": "NoMail"})).expect("insert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = l.h.engine.store().list_runs(&RunFilter::default()).expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].item["id"], json!(id));
    assert!(!has_tag(&l.h, bare["id"].as_str().unwrap_or_default(), "instant"));
    let _ = l.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_processed_once_even_when_processing_repeats() {
    let h = harness(Seed::Contacts(1), &[INSTANT], fast_retries()).await;
    let store = h.engine.store().clone();
    let contact = h.sandbox.records("contacts").remove(0);
    let payload = json!({"type": "ContactCreate", "locationId": h.sandbox.location_id(), "id": contact["id"],
        "email": "x@y.z", "webhookId": "w-1", "timestamp": chrono::Utc::now().to_rfc3339()});
    assert!(store.put_webhook_event("w-1", &payload).expect("stored"));
    let first = h.engine.process_webhooks().await.expect("pass");
    assert_eq!((first.events, first.runs.len()), (1, 1));
    // A crash after the run was committed but before the event was marked processed
    // leaves this state; processing the event again fires nothing more.
    let again = json!({"type": "ContactCreate", "locationId": h.sandbox.location_id(), "id": contact["id"],
        "email": "x@y.z", "webhookId": "w-2", "timestamp": chrono::Utc::now().to_rfc3339()});
    store.put_webhook_event("w-2", &again).expect("stored");
    let mut run = store::NewRun::new("instant", again.clone());
    run.trigger = Some("instant/webhook.ContactCreate".into());
    let item = store::PollItem { key: "w-2".into(), run: Some(run) };
    let commit = store::PollCommit {
        lease: None,
        trigger: "instant/webhook.ContactCreate".into(),
        state: None,
        items: vec![item],
    };
    assert_eq!(store.commit_poll(&commit).expect("commit").created.len(), 1);
    let second = h.engine.process_webhooks().await.expect("pass");
    assert_eq!((second.events, second.runs.len()), (1, 0), "{second:?}");
    let third = h.engine.process_webhooks().await.expect("pass");
    assert_eq!(third, engine::WebhookReport::default());
    let statuses = h.engine.execute_all(first.runs).await.expect("run");
    assert_eq!(store.list_runs(&RunFilter::default()).expect("runs").len(), 2);
    assert_eq!(statuses, vec![RunStatus::Succeeded]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_flow_fires_every_change_once_despite_lost_and_duplicated_webhooks() {
    let hooks = WebhookSettings {
        drop_rate: 0.3,
        duplicate_rate: 0.2,
        max_delay_ms: 30,
        reorder_rate: 0.1,
        rng_seed: Some(7),
        ..WebhookSettings::default()
    };
    let l = live(&[RECONCILED], hooks).await;
    let (baseline, runs) = l.h.engine.poll_and_run("reconciled").await.expect("baseline");
    assert!(baseline.baseline && runs.is_empty());

    const N: usize = 40;
    let ids: Vec<String> =
        (0..N).map(|n| new_contact(&l.h.sandbox, n)["id"].as_str().unwrap_or_default().to_string()).collect();
    // Let every delivery that is going to arrive arrive (delays, reorders, duplicates).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = l.h.sandbox.webhook_stats();
        if s.delivered + s.failed + s.dropped >= s.events + s.duplicated || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    l.wake.notify_one();
    let store = l.h.engine.store().clone();
    while !store.list_unprocessed_webhooks(1).expect("inbox").is_empty() {
        assert!(Instant::now() < deadline + Duration::from_secs(5), "inbox not drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let by_webhook = l.h.engine.store().list_runs(&RunFilter::default()).expect("runs").len();
    // The reconciling poll picks up what the webhooks lost, and nothing they delivered.
    let (poll, _) = l.h.engine.poll_and_run("reconciled").await.expect("poll");
    let stats = l.h.sandbox.webhook_stats();
    eprintln!("{stats:?}; runs from webhooks: {by_webhook}, from the poll: {}", poll.runs.len());
    assert_eq!(stats.events, N as u64);
    assert!(stats.dropped > 0 && stats.duplicated > 0, "{stats:?}");
    assert_eq!(by_webhook + poll.runs.len(), N);
    assert_eq!(by_webhook as u64, N as u64 - stats.dropped);

    assert!(l.h.engine.drain(Duration::from_secs(10)).await);
    let runs = l.h.engine.store().list_runs(&RunFilter::default()).expect("runs");
    let mut per_contact: BTreeMap<String, usize> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        *per_contact.entry(r.item["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_contact.get(id), Some(&1), "contact {id} fired {:?} times", per_contact.get(id));
        assert!(has_tag(&l.h, id, "reconciled"));
    }
    assert_eq!(per_contact.len(), N);
    // A later poll and late duplicates change nothing.
    let (later, _) = l.h.engine.poll_and_run("reconciled").await.expect("poll");
    assert!(later.runs.is_empty());
    let _ = l.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_for_one_record_coalesce_into_one_run_for_the_latest() {
    const COALESCED: &str = r#"
name: edits
account: main
trigger:
  webhook: ContactUpdate
  coalesce: 300ms
steps:
  - id: tag
    uses: contacts.add_tags
    with: { contactId: "{{ trigger.id }}", tags: ["{{ trigger.city }}"] }
"#;
    let h = harness(Seed::Contacts(2), &[COALESCED], fast_retries()).await;
    let store = h.engine.store().clone();
    let contacts = h.sandbox.records("contacts");
    let (a, b) = (contacts[0]["id"].clone(), contacts[1]["id"].clone());
    let loc = h.sandbox.location_id().to_string();
    for (n, (id, city)) in [(&a, "one"), (&a, "two"), (&b, "solo"), (&a, "three")].into_iter().enumerate() {
        let ev = json!({"type": "ContactUpdate", "locationId": loc, "id": id, "city": city,
            "webhookId": format!("w{n}"), "timestamp": chrono::Utc::now().to_rfc3339()});
        store.put_webhook_event(&format!("w{n}"), &ev).expect("stored");
    }
    let early = h.engine.process_webhooks().await.expect("pass");
    assert_eq!((early.deferred, early.runs.len()), (4, 0), "inside the window nothing fires");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = h.engine.process_webhooks().await.expect("pass");
    assert_eq!((report.events, report.runs.len(), report.skipped), (4, 2, 2), "{report:?}");
    let statuses = h.engine.execute_all(report.runs.clone()).await.expect("runs");
    assert!(statuses.iter().all(|s| *s == RunStatus::Succeeded));
    let a_id = a.as_str().unwrap_or_default();
    assert!(has_tag(&h, a_id, "three") && !has_tag(&h, a_id, "one") && !has_tag(&h, a_id, "two"));
    assert!(has_tag(&h, b.as_str().unwrap_or_default(), "solo"));
}
