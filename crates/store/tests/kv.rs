#[macro_use]
mod common;

use common::*;
use serde_json::json;
use store::{OpenStore, RunStatus, StoreError};

fn tokens_round_trip_per_account_and_survive_reopen<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    assert_eq!(s.get_tokens("loc1").unwrap(), None);
    let t1 = json!({"access_token": "a1", "refresh_token": "r1", "expires_at": 123});
    s.put_tokens("loc1", &t1).unwrap();
    s.put_tokens("loc2", &json!({"access_token": "b"})).unwrap();
    let t1b = json!({"access_token": "a2", "refresh_token": "r2"});
    s.put_tokens("loc1", &t1b).unwrap();
    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    assert_eq!(s.get_tokens("loc1").unwrap(), Some(t1b));
    assert!(s.delete_tokens("loc2").unwrap());
    assert!(!s.delete_tokens("loc2").unwrap());
    assert_eq!(s.get_tokens("loc2").unwrap(), None);
}

fn webhook_inbox_dedupes_lists_and_completes_atomically<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    assert!(!webhook_seen(&s, "w1"));
    assert!(s.put_webhook_event("w1", &json!({"type": "ContactCreate"})).unwrap());
    clock.advance_secs(1);
    assert!(s.put_webhook_event("w2", &json!({"type": "ContactUpdate"})).unwrap());
    // A redelivery changes nothing.
    assert!(!s.put_webhook_event("w1", &json!({"type": "other"})).unwrap());
    assert!(webhook_seen(&s, "w1"));
    let ev = s.webhook_event("w1").unwrap().unwrap();
    assert_eq!(ev.payload, json!({"type": "ContactCreate"}));
    assert_eq!(ev.processed_at, None);

    let pending = s.list_unprocessed_webhooks(0).unwrap();
    assert_eq!(pending.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["w1", "w2"]);
    assert_eq!(s.list_unprocessed_webhooks(1).unwrap().len(), 1);

    // The engine's order: the event's runs through a poll commit, then the event done.
    let out = s.commit_poll(&poll("webhook:w1", "on-contact", &["c1"], None)).unwrap();
    s.complete_webhook_event("w1").unwrap();
    assert_eq!(s.get_run(out.created[0].1).unwrap().unwrap().status, RunStatus::Pending);
    assert!(s.webhook_event("w1").unwrap().unwrap().processed_at.is_some());
    assert_eq!(s.list_unprocessed_webhooks(0).unwrap().len(), 1);
    // Twice would fire twice: refused.
    assert!(matches!(s.complete_webhook_event("w1"), Err(StoreError::Conflict(_))));
    assert_eq!(s.list_resumable().unwrap().len(), 1);
    assert!(matches!(s.complete_webhook_event("nope"), Err(StoreError::Invalid(_))));
    assert_eq!(s.list_unprocessed_webhooks(0).unwrap()[0].id, "w2");
    s.complete_webhook_event("w2").unwrap();
    assert!(s.list_unprocessed_webhooks(0).unwrap().is_empty());
    // Both stay readable after the reopen, processed.
    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    assert!(s.webhook_event("w2").unwrap().unwrap().processed_at.is_some());
    assert!(s.list_unprocessed_webhooks(0).unwrap().is_empty());
}

fn temporary_store_works_for_other_crates_tests<S: OpenStore>() {
    let s = S::temporary().unwrap();
    assert!(s.path().is_none());
    s.put_tokens("a", &json!(1)).unwrap();
    assert_eq!(s.get_tokens("a").unwrap(), Some(json!(1)));
    assert!(!s.store_id().is_empty());
}

on_each_backend!(
    tokens_round_trip_per_account_and_survive_reopen,
    webhook_inbox_dedupes_lists_and_completes_atomically,
    temporary_store_works_for_other_crates_tests,
);
