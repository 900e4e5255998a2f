//! Runs index the GHL records they touched: `NewRun::touched`, `RunChange::Touched` and
//! `RunFilter::touched` / `since` / `until`, on both backends.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use store::{
    NewRun, OpenStore, PollCommit, PollItem, Retention, RunChange, RunFilter, RunId, RunStatus, Store, StoreError,
};

fn touched(records: &[&str]) -> RunChange {
    RunChange::Touched { records: records.iter().map(|r| r.to_string()).collect() }
}

fn new_run(flow: &str, records: &[&str]) -> NewRun {
    NewRun { touched: records.iter().map(|r| r.to_string()).collect(), ..NewRun::new(flow, json!({})) }
}

fn ids(runs: Vec<store::Run>) -> Vec<RunId> {
    runs.iter().map(|r| r.id).collect()
}

fn runs_record_the_records_they_touched_and_are_listed_by_them<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    let t0 = clock.now();
    let a = s.create_run(&new_run("f", &["contact:1"])).unwrap();
    clock.advance_secs(10);
    let commit = PollCommit {
        lease: None,
        trigger: "t".into(),
        state: None,
        items: vec![PollItem { key: "k".into(), run: Some(new_run("g", &["contact:2", "contact:2"])) }],
    };
    let b = s.commit_poll(&commit).unwrap().created[0].1;
    clock.advance_secs(10);
    let c = s.create_run(&new_run("f", &["contact:10"])).unwrap();
    assert_eq!(s.get_run(b).unwrap().unwrap().touched, ["contact:2"], "deduplicated");

    // Through the cached record (apply_runs) and through update_run; duplicates dropped.
    s.apply_runs(&[(b, vec![touched(&["contact:1", "opportunity:9"])])]).unwrap().into_iter().for_each(|r| r.unwrap());
    let run = s.update_run(b, &[touched(&["contact:1", "note:3"])]).unwrap();
    assert_eq!(run.touched, ["contact:2", "contact:1", "opportunity:9", "note:3"]);
    // Final runs still take refs (a step's result lands with the run's end).
    s.update_run(a, &[RunChange::Status { status: RunStatus::Running, error: None }]).unwrap();
    s.update_run(a, &[RunChange::Status { status: RunStatus::Succeeded, error: None }, touched(&["task:7"])]).unwrap();

    let by = |f: RunFilter| ids(s.list_runs(&f).unwrap());
    let on = |r: &str| RunFilter { touched: Some(r.to_string()), ..RunFilter::default() };
    assert_eq!(by(on("contact:1")), [b, a], "newest first");
    assert_eq!(by(on("contact:10")), [c]);
    assert_eq!(by(on("task:7")), [a]);
    assert_eq!(by(on("contact:")), [] as [RunId; 0], "a ref is not a prefix of another");
    assert_eq!(by(RunFilter { limit: 1, ..on("contact:1") }), [b]);
    assert_eq!(by(RunFilter { before: Some(b), ..on("contact:1") }), [a]);
    assert_eq!(by(RunFilter { flow: Some("f".into()), ..on("contact:1") }), [a]);
    assert_eq!(by(RunFilter { status: Some(RunStatus::Succeeded), ..on("contact:1") }), [a]);
    assert_eq!(by(RunFilter { status: Some(RunStatus::Pending), ..on("contact:1") }), [b]);

    // since / until: on the created time, alone or with the other conditions.
    let t = |s: i64| t0 + chrono::Duration::seconds(s);
    assert_eq!(by(RunFilter { since: Some(t(10)), ..RunFilter::default() }), [c, b]);
    assert_eq!(by(RunFilter { until: Some(t(10)), ..RunFilter::default() }), [a]);
    assert_eq!(by(RunFilter { since: Some(t(5)), until: Some(t(15)), ..RunFilter::default() }), [b]);
    assert_eq!(by(RunFilter { since: Some(t(5)), ..on("contact:1") }), [b]);
    assert_eq!(by(RunFilter { until: Some(t(5)), flow: Some("f".into()), ..RunFilter::default() }), [a]);
    assert_eq!(by(RunFilter { since: Some(t(1)), status: Some(RunStatus::Pending), ..RunFilter::default() }), [c, b]);

    // A ref the index cannot keep apart is refused, and nothing of the change is written.
    assert!(matches!(s.update_run(c, &[touched(&["ok:1", ""])]), Err(StoreError::Invalid(_))));
    assert!(matches!(s.create_run(&new_run("f", &["a\0b"])), Err(StoreError::Invalid(_))));
    assert!(s.get_run(c).unwrap().unwrap().touched == ["contact:10"]);
    assert_eq!(by(on("ok:1")), [] as [RunId; 0]);

    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    assert_eq!(ids(s.list_runs(&on("contact:1")).unwrap()), [b, a]);
    assert_eq!(s.get_run(b).unwrap().unwrap().touched, ["contact:2", "contact:1", "opportunity:9", "note:3"]);
}

/// A pruned run leaves no `touched` entry behind: one would point at a missing run, which
/// `list_runs` reports as corruption.
fn pruning_a_run_removes_its_touched_entries<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let old = s.create_run(&new_run("f", &["contact:1"])).unwrap();
    s.update_run(old, &[touched(&["contact:2"])]).unwrap();
    s.set_run_status(old, RunStatus::Running, None).unwrap();
    s.set_run_status(old, RunStatus::Succeeded, None).unwrap();
    let open = s.create_run(&new_run("f", &["contact:1"])).unwrap();
    let stats = s.prune(&Retention { runs_keep: Some(0), ..Retention::default() }).unwrap();
    assert_eq!(stats.runs_removed, 1);
    let on = |r: &str| RunFilter { touched: Some(r.to_string()), ..RunFilter::default() };
    assert_eq!(ids(s.list_runs(&on("contact:1")).unwrap()), [open]);
    assert!(s.list_runs(&on("contact:2")).unwrap().is_empty());
}

/// A run record written without the field (every run that touched nothing, and every run
/// of a store from before it) reads with an empty list.
fn runs_without_touched_records_read_with_an_empty_list<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let id = s.create_run(&NewRun::new("f", json!({"n": 1}))).unwrap();
    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let record = r#"{"id":ID,"flow":"f","trigger":null,"dedupe_key":null,"item":null,"status":"pending","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","attempts":0,"next_retry_at":null,"error":null,"steps":[]}"#
        .replace("ID", &id.0.to_string());
    raw_write::<S>(&path, "runs", &[(&id.0.to_be_bytes(), Some(record.as_bytes()))]);
    let s = S::open(&path).unwrap();
    let run = s.get_run(id).unwrap().unwrap();
    assert!(run.touched.is_empty());
    assert_eq!(run.item, json!({"n": 1}));
    let run = s.update_run(id, &[touched(&["contact:1"])]).unwrap();
    assert_eq!(run.touched, ["contact:1"]);
}

on_each_backend!(
    runs_record_the_records_they_touched_and_are_listed_by_them,
    pruning_a_run_removes_its_touched_entries,
);

// Writes a record without `touched` behind the store's back: the embedded stores' files.
on_each_embedded_backend!(runs_without_touched_records_read_with_an_empty_list);

/// A fjall store made before the `touched` partition existed has none: it opens, reads as
/// before, and gets the partition.
#[test]
fn fjall_a_store_without_the_touched_partition_opens_and_indexes_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = store::FjallStore::create_or_open(&path).unwrap();
    let id = s.create_run(&NewRun::new("f", json!({"n": 1}))).unwrap();
    drop(s);
    std::fs::remove_dir_all(path.join("fjall").join("partitions").join("touched")).unwrap();
    let s = store::FjallStore::open(&path).unwrap();
    assert_eq!(s.get_run(id).unwrap().unwrap().item, json!({"n": 1}));
    let b = s.create_run(&new_run("f", &["contact:1"])).unwrap();
    assert_eq!(ids(s.list_runs(&RunFilter { touched: Some("contact:1".into()), ..Default::default() }).unwrap()), [b]);
}
