#[macro_use]
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use store::{NewRun, OpenStore, Retention, RunFilter, RunStatus};

const DAY: i64 = 24 * 3600;

fn none() -> Retention {
    Retention {
        seen_max_age: None,
        seen_keep_per_trigger: 0,
        runs_max_age: None,
        runs_keep: None,
        webhooks_max_age: None,
    }
}

fn old_seen_keys_go_but_the_most_recent_per_trigger_stay<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    for i in 0..5 {
        s.commit_poll(&poll("t", "f", &[&format!("old{i}")], None)).unwrap();
        s.commit_poll(&poll("u", "f", &[&format!("old{i}")], None)).unwrap();
        clock.advance_secs(1);
    }
    clock.advance_secs(40 * DAY);
    s.commit_poll(&poll("t", "f", &["new"], None)).unwrap();

    let policy =
        Retention { seen_max_age: Some(Duration::from_secs(30 * DAY as u64)), seen_keep_per_trigger: 3, ..none() };
    let stats = s.prune(&policy).unwrap();
    // t: keeps new + old4 + old3; u: keeps old4, old3, old2.
    assert_eq!(stats.seen_removed, 3 + 2);
    let all = keys(&["old0", "old1", "old2", "old3", "old4", "new"]);
    assert_eq!(s.filter_unseen("t", &all).unwrap(), vec![true, true, true, false, false, false]);
    assert_eq!(s.filter_unseen("u", &all).unwrap(), vec![true, true, false, false, false, true]);
    // Nothing young enough is removed, whatever the count.
    let stats = s.prune(&Retention { seen_keep_per_trigger: 0, ..policy.clone() }).unwrap();
    assert_eq!(stats.seen_removed, 5);
    assert_eq!(s.filter_unseen("t", &keys(&["new"])).unwrap(), vec![false]);
    // No age limit: nothing goes.
    assert_eq!(s.prune(&none()).unwrap().seen_removed, 0);
}

fn finished_runs_are_pruned_by_age_and_count_others_never<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    let mut finished = vec![];
    for i in 0..6 {
        let id = s.create_run(&NewRun::new("f", json!(i))).unwrap();
        s.set_run_status(id, RunStatus::Running, None).unwrap();
        s.set_run_status(id, if i % 2 == 0 { RunStatus::Succeeded } else { RunStatus::Dead }, None).unwrap();
        finished.push(id);
        clock.advance_secs(DAY);
    }
    let open_old = s.create_run(&NewRun::new("f", json!("pending"))).unwrap();
    let doubt = s.create_run(&NewRun::new("f", json!("doubt"))).unwrap();
    s.set_run_status(doubt, RunStatus::InDoubt, None).unwrap();
    clock.advance_secs(100 * DAY);

    // Count: keep the 4 newest finished runs.
    let stats = s.prune(&Retention { runs_keep: Some(4), ..none() }).unwrap();
    assert_eq!(stats.runs_removed, 2);
    assert!(s.get_run(finished[0]).unwrap().is_none());
    assert!(s.get_run(finished[1]).unwrap().is_none());
    assert!(s.get_run(finished[2]).unwrap().is_some());
    // Indexes went with the records.
    assert_eq!(s.list_runs(&RunFilter { flow: Some("f".into()), ..Default::default() }).unwrap().len(), 6);
    assert_eq!(s.list_runs(&RunFilter { status: Some(RunStatus::Succeeded), ..Default::default() }).unwrap().len(), 2);

    // Age: all finished runs are > 30 days old now; unfinished ones stay.
    let stats = s.prune(&Retention { runs_max_age: Some(Duration::from_secs(30 * DAY as u64)), ..none() }).unwrap();
    assert_eq!(stats.runs_removed, 4);
    let left: Vec<_> = s.list_runs(&RunFilter::default()).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left, vec![doubt, open_old]);
}

fn processed_webhook_events_are_pruned_by_age<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    s.put_webhook_event("done", &json!(1)).unwrap();
    s.put_webhook_event("waiting", &json!(2)).unwrap();
    s.complete_webhook_event("done").unwrap();
    clock.advance_secs(10 * DAY);
    s.put_webhook_event("recent", &json!(3)).unwrap();
    s.complete_webhook_event("recent").unwrap();
    let stats = s.prune(&Retention { webhooks_max_age: Some(Duration::from_secs(7 * DAY as u64)), ..none() }).unwrap();
    assert_eq!(stats.webhooks_removed, 1);
    assert!(!webhook_seen(&s, "done"));
    assert!(webhook_seen(&s, "waiting"), "unprocessed events are never dropped");
    assert!(webhook_seen(&s, "recent"));
}

on_each_backend!(
    old_seen_keys_go_but_the_most_recent_per_trigger_stay,
    finished_runs_are_pruned_by_age_and_count_others_never,
    processed_webhook_events_are_pruned_by_age,
);
