//! `store::migrate::sled_to_fjall`: everything a sled store holds reads the same from the
//! fjall store it was copied to, and the copy goes on as a store of its own.

#[macro_use]
#[allow(unused)]
mod common;

use chrono::Duration;
use common::RunHelpers;
use serde_json::json;
use store::{
    Backend, FjallStore, NewRun, OpenStore, PollCommit, PollItem, RunChange, RunFilter, RunStatus, SledStore,
    StepStatus, Store,
};

fn everything<S: OpenStore>(s: &S) -> serde_json::Value {
    let all = RunFilter { limit: 0, ..Default::default() };
    let ids = |runs: Vec<store::Run>| runs.iter().map(|r| r.id.0).collect::<Vec<_>>();
    json!({
        "runs": serde_json::to_value(s.list_runs(&all).unwrap()).unwrap(),
        "resumable": ids(s.list_resumable().unwrap()),
        "retries": ids(s.list_due_retries(chrono::Utc::now() + Duration::days(2), 0).unwrap()),
        "held": ids(s.list_held("f").unwrap()),
        "by_flow": ids(s.list_runs(&RunFilter { flow: Some("g".into()), limit: 0, ..Default::default() }).unwrap()),
        "succeeded": ids(s.list_runs(&RunFilter { status: Some(RunStatus::Succeeded), limit: 0, ..Default::default() }).unwrap()),
        "state": s.trigger_state("t").unwrap(),
        "unseen": s.filter_unseen("t", &["k0".into(), "k7".into(), "new".into()]).unwrap(),
        "seen_at": s.seen_at("t", "k3").unwrap(),
        "tokens": s.get_tokens("loc").unwrap(),
        "inbox": serde_json::to_value(s.list_unprocessed_webhooks(0).unwrap()).unwrap(),
        "done_event": serde_json::to_value(s.webhook_event("wh-1").unwrap()).unwrap(),
    })
}

/// A store at `from` with one of everything: seen keys with and without runs, runs in every
/// status, a step sent, tokens, webhook events processed and not. Returns [`everything`].
fn filled<S: OpenStore>(from: &std::path::Path) -> serde_json::Value {
    let s = S::create_or_open(from).unwrap();
    let items = (0..8)
        .map(|i| PollItem {
            key: format!("k{i}"),
            run: (i < 6).then(|| NewRun::new(if i < 3 { "f" } else { "g" }, json!({ "i": i }))),
        })
        .collect();
    let out = s
        .commit_poll(&PollCommit { lease: None, trigger: "t".into(), state: Some(json!({"cursor": 8})), items })
        .unwrap();
    let ids: Vec<_> = out.created.iter().map(|(_, id)| *id).collect();
    // One of each: succeeded, failed with a retry, held, running with a step sent, pending.
    s.update_run(ids[0], &[RunChange::Status { status: RunStatus::Running, error: None }]).unwrap();
    s.mark_step_started(ids[0], "task", &json!({"title": "x"})).unwrap();
    s.record_step_result(ids[0], "task", StepStatus::Succeeded, Some(&json!({"id": "t1"})), None).unwrap();
    s.set_run_status(ids[0], RunStatus::Succeeded, None).unwrap();
    s.set_run_status(ids[1], RunStatus::Running, None).unwrap();
    s.schedule_retry(ids[1], chrono::Utc::now() + Duration::hours(1), "503").unwrap();
    s.set_run_status(ids[2], RunStatus::Held, None).unwrap();
    s.set_run_status(ids[3], RunStatus::Running, None).unwrap();
    s.mark_step_started(ids[3], "task", &json!({"title": "y"})).unwrap();
    s.put_tokens("loc", &json!({"refresh_token": "r1"})).unwrap();
    assert!(s.put_webhook_event("wh-1", &json!({"type": "ContactCreate"})).unwrap());
    assert!(s.put_webhook_event("wh-2", &json!({"type": "TaskCreate"})).unwrap());
    s.create_run(&NewRun::new("g", json!({"hook": 1}))).unwrap();
    s.complete_webhook_event("wh-1").unwrap();
    everything(&s)
}

#[test]
fn a_sled_store_copied_to_fjall_reads_the_same_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("sled"), dir.path().join("fjall"));
    let before = filled::<SledStore>(&from);

    let migrated = store::migrate::sled_to_fjall(&from, &to).unwrap();
    assert_eq!(migrated.trees.iter().find(|(t, _)| *t == "seen").map(|(_, n)| *n), Some(8));
    assert_eq!(migrated.trees.iter().find(|(t, _)| *t == "runs").map(|(_, n)| *n), Some(7));
    assert!(migrated.total() > 20, "{migrated:?}");

    assert_eq!(store::open(&to).unwrap().backend(), Backend::Fjall);
    let s = FjallStore::open(&to).unwrap();
    assert_eq!(everything(&s), before);
    // The copy is a store of its own: new ids above every old one, new keys recorded.
    let max_old =
        s.list_runs(&RunFilter { limit: 0, ..Default::default() }).unwrap().iter().map(|r| r.id).max().unwrap();
    let new = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    assert!(new > max_old, "{new} <= {max_old}");
    let out = s
        .commit_poll(&PollCommit {
            lease: None,
            trigger: "t".into(),
            state: None,
            items: vec![PollItem { key: "k1".into(), run: None }, PollItem { key: "new".into(), run: None }],
        })
        .unwrap();
    assert_eq!(out.already_seen, vec!["k1".to_string()]);
    drop(s);
    // The sled store is left as it was.
    assert_eq!(everything(&SledStore::open(&from).unwrap()), before);
    // A second migration into the now non-empty store is refused.
    assert!(store::migrate::sled_to_fjall(&from, &to).is_err());
    assert_eq!(FjallStore::open(&to).unwrap().backend(), Backend::Fjall);
}

/// PostgreSQL keeps times to the microsecond: a webhook's `received_at` from an embedded
/// store (nanoseconds) reads back truncated.
fn to_micros(mut v: serde_json::Value) -> serde_json::Value {
    let truncate = |t: &mut serde_json::Value| {
        if let Some(s) = t.as_str() {
            let at: chrono::DateTime<chrono::Utc> = s.parse().unwrap();
            let at = chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap();
            *t = serde_json::to_value(at).unwrap();
        }
    };
    let mut events: Vec<serde_json::Value> = v["inbox"].as_array().cloned().unwrap_or_default();
    events.push(v["done_event"].clone());
    for ev in &mut events {
        for field in ["received_at", "processed_at"] {
            if let Some(t) = ev.get_mut(field) {
                truncate(t);
            }
        }
    }
    v["done_event"] = events.pop().unwrap();
    v["inbox"] = serde_json::Value::Array(events);
    v
}

#[test]
fn a_fjall_store_copied_to_postgres_reads_the_same_and_goes_on() {
    let Some(_schemas) = common::PgScope::enter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("fjall"), dir.path().join("pg"));
    let before = to_micros(filled::<FjallStore>(&from));
    // The schema the test harness names after `to`, made empty.
    let target = common::Pg::create_or_open(&to).unwrap();
    let options = target.options();
    drop(target);

    let migrated = store::migrate::embedded_to_postgres(&from, &options).unwrap();
    assert_eq!(migrated.trees.iter().find(|(t, _)| *t == "seen").map(|(_, n)| *n), Some(8));
    assert_eq!(migrated.trees.iter().find(|(t, _)| *t == "runs").map(|(_, n)| *n), Some(7));

    let s = common::Pg::open(&to).unwrap();
    assert_eq!(s.backend(), Backend::Postgres);
    assert_eq!(to_micros(everything(&s)), before);
    let max_old =
        s.list_runs(&RunFilter { limit: 0, ..Default::default() }).unwrap().iter().map(|r| r.id).max().unwrap();
    let new = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    assert!(new > max_old, "{new} <= {max_old}");
    let out = s
        .commit_poll(&PollCommit {
            lease: None,
            trigger: "t".into(),
            state: None,
            items: vec![PollItem { key: "k1".into(), run: None }, PollItem { key: "new".into(), run: None }],
        })
        .unwrap();
    assert_eq!(out.already_seen, vec!["k1".to_string()]);
    drop(s);
    assert_eq!(to_micros(everything(&FjallStore::open(&from).unwrap())), before);
    // A second migration into the now non-empty database is refused.
    let err = store::migrate::embedded_to_postgres(&from, &options).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}

/// A store that never made a run (sled's id generator is at 0) copies too, and the first
/// run made in PostgreSQL gets an id.
#[test]
fn an_empty_sled_store_copies_into_postgres() {
    let Some(_schemas) = common::PgScope::enter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("sled"), dir.path().join("pg"));
    let s = SledStore::create_or_open(&from).unwrap();
    s.put_tokens("loc", &json!({"refresh_token": "r"})).unwrap();
    drop(s);
    let options = common::Pg::create_or_open(&to).unwrap().options();
    let migrated = store::migrate::embedded_to_postgres(&from, &options).unwrap();
    assert_eq!(migrated.total(), 1, "{migrated:?}");
    let s = common::Pg::open(&to).unwrap();
    assert_eq!(s.get_tokens("loc").unwrap(), Some(json!({"refresh_token": "r"})));
    let id = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    assert!(id.0 >= 1, "{id}");
}
