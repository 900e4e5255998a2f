#[macro_use]
mod common;

use common::*;
use serde_json::json;
use store::{OpenStore, PollCommit, PollItem, RunFilter, RunStatus, Store, StoreError};

fn unseen_keys_are_reported_per_trigger_until_committed<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let ks = keys(&["a", "b@2024-01-01", "c#abc"]);
    assert_eq!(s.filter_unseen("t1", &ks).unwrap(), vec![true, true, true]);
    assert_eq!(s.filter_unseen("t1", &[]).unwrap(), Vec::<bool>::new());

    let out = s.commit_poll(&poll("t1", "f", &["a", "c#abc"], Some(json!({"cursor": 5})))).unwrap();
    assert_eq!(out.created.len(), 2);
    assert!(out.already_seen.is_empty());
    assert_eq!(s.filter_unseen("t1", &ks).unwrap(), vec![false, true, false]);
    // Another trigger, even one whose id extends this one, has its own keys.
    assert_eq!(s.filter_unseen("t1x", &ks).unwrap(), vec![true, true, true]);
    assert_eq!(s.filter_unseen("t", &keys(&["1a"])).unwrap(), vec![true]);
    assert_eq!(s.trigger_state("t1").unwrap(), Some(json!({"cursor": 5})));
    assert_eq!(s.trigger_state("t2").unwrap(), None);
    assert!(s.seen_at("t1", "a").unwrap().is_some());
    assert!(s.seen_at("t1", "b@2024-01-01").unwrap().is_none());
}

fn poll_commit_creates_pending_runs_with_item_key_and_trigger<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    let out = s.commit_poll(&poll("trig", "flow-a", &["k1", "k2"], None)).unwrap();
    let (key, id) = &out.created[1];
    assert_eq!(key, "k2");
    let run = s.get_run(*id).unwrap().unwrap();
    assert_eq!(run.flow, "flow-a");
    assert_eq!(run.trigger.as_deref(), Some("trig"));
    assert_eq!(run.dedupe_key.as_deref(), Some("k2"));
    assert_eq!(run.item, json!({"id": "k2"}));
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.created_at, clock.now());
    assert_eq!(s.seen_at("trig", "k1").unwrap(), Some(clock.now()));
    assert!(out.created[0].1 < out.created[1].1, "ids follow item order");
    // State untouched when the commit carries none.
    assert_eq!(s.trigger_state("trig").unwrap(), None);
}

fn baseline_items_are_recorded_without_runs<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let commit = PollCommit {
        lease: None,
        trigger: "t".into(),
        state: Some(json!({"baseline": true})),
        items: ["x", "y"].iter().map(|k| PollItem { key: k.to_string(), run: None }).collect(),
    };
    let out = s.commit_poll(&commit).unwrap();
    assert!(out.created.is_empty());
    assert_eq!(s.filter_unseen("t", &keys(&["x", "y"])).unwrap(), vec![false, false]);
    assert!(s.list_runs(&RunFilter::default()).unwrap().is_empty());
}

fn a_key_already_seen_never_gets_a_second_run<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    s.commit_poll(&poll("t", "f", &["a"], None)).unwrap();
    // A racing poller that saw "a" as unseen commits it again.
    let out = s.commit_poll(&poll("t", "f", &["a", "b"], None)).unwrap();
    assert_eq!(out.already_seen, vec!["a".to_string()]);
    assert_eq!(out.created.len(), 1);
    assert_eq!(out.created[0].0, "b");
    assert_eq!(s.list_runs(&RunFilter::default()).unwrap().len(), 2);
    // The embedded stores give back the item's JSON they wrote, for the created run only;
    // PostgreSQL encodes it in its own driver and gives nothing back.
    if s.backend() == store::Backend::Postgres {
        assert!(out.created_items.is_empty());
    } else {
        assert_eq!(out.created_items.len(), 1);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.created_items[0]).unwrap(), json!({"id": "b"}));
    }
}

fn a_failing_poll_commit_writes_nothing<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    s.commit_poll(&poll("t", "f", &["old"], Some(json!({"n": 1})))).unwrap();

    // The duplicate "a" is found after the state, "a", its run and "b" were
    // written inside the transaction: all of it must be rolled back.
    let bad = poll("t", "f", &["a", "b", "a"], Some(json!({"n": 2})));
    let err = s.commit_poll(&bad).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");

    assert_eq!(s.trigger_state("t").unwrap(), Some(json!({"n": 1})));
    assert_eq!(s.filter_unseen("t", &keys(&["a", "b"])).unwrap(), vec![true, true]);
    assert_eq!(s.list_runs(&RunFilter::default()).unwrap().len(), 1);
    assert_eq!(s.list_resumable().unwrap().len(), 1);

    // And nothing of it reappears after a reopen.
    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    assert_eq!(s.filter_unseen("t", &keys(&["a", "b", "old"])).unwrap(), vec![true, true, false]);
    assert_eq!(s.list_runs(&RunFilter::default()).unwrap().len(), 1);
}

fn a_run_without_flow_aborts_the_whole_poll<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let bad = poll("t", "", &["a"], Some(json!(1)));
    assert!(matches!(s.commit_poll(&bad), Err(StoreError::Invalid(_))));
    assert_eq!(s.trigger_state("t").unwrap(), None);
    assert_eq!(s.filter_unseen("t", &keys(&["a"])).unwrap(), vec![true]);
    assert!(matches!(s.commit_poll(&poll("", "f", &["a"], None)), Err(StoreError::Invalid(_))));
}

fn reset_trigger_forgets_only_that_trigger<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    s.commit_poll(&poll("t", "f", &["a", "b"], Some(json!(1)))).unwrap();
    s.commit_poll(&poll("t2", "f", &["a"], Some(json!(2)))).unwrap();
    assert_eq!(s.reset_trigger("t").unwrap(), 2);
    assert_eq!(s.filter_unseen("t", &keys(&["a", "b"])).unwrap(), vec![true, true]);
    assert_eq!(s.trigger_state("t").unwrap(), None);
    assert_eq!(s.filter_unseen("t2", &keys(&["a"])).unwrap(), vec![false]);
    assert_eq!(s.trigger_state("t2").unwrap(), Some(json!(2)));
}

fn store_is_usable_as_a_trait_object_across_threads<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(store_in::<S>(&dir));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let k = format!("{t}-{i}");
                    s.commit_poll(&poll("shared", "f", &[k.as_str()], None)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let runs = s.list_runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 40);
    let mut ids: Vec<_> = runs.iter().map(|r| r.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 40, "run ids are unique");
}

on_each_backend!(
    unseen_keys_are_reported_per_trigger_until_committed,
    poll_commit_creates_pending_runs_with_item_key_and_trigger,
    baseline_items_are_recorded_without_runs,
    a_key_already_seen_never_gets_a_second_run,
    a_failing_poll_commit_writes_nothing,
    a_run_without_flow_aborts_the_whole_poll,
    reset_trigger_forgets_only_that_trigger,
    store_is_usable_as_a_trait_object_across_threads,
);
