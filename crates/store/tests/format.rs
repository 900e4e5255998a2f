//! Format 2 keeps run items apart from run records; format 3 indexes pending and running
//! runs under one tag. A format 1 store (items inside the records) or a format 2 store
//! (running runs under their own tag) opens, reads and updates as before and is marked
//! format 3.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::{NewRun, RunChange, RunFilter, RunStatus, SledStore, Store};

/// Opens sled directly, waiting for the store's lock to be released by a dropped store.
fn raw(path: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::open(path.join("db")) {
            Ok(db) => return db,
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open sled: {e}"),
        }
    }
}

/// Writes format number `n` where a store of that format keeps it: meta and the marker file.
fn mark_format(db: &sled::Db, path: &Path, n: u32) {
    db.open_tree("meta").unwrap().insert("format", n.to_string().as_bytes()).unwrap();
    db.flush().unwrap();
    let marker_path = path.join("STORE");
    let mut marker: Value = serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
    marker["format"] = json!(n);
    std::fs::write(&marker_path, serde_json::to_vec(&marker).unwrap()).unwrap();
}

#[test]
fn items_are_kept_apart_and_come_back_with_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let item = json!({ "id": "c1", "firstName": "Ada", "tags": ["a", "b"] });
    let id = {
        let s = SledStore::create_or_open(&path).unwrap();
        let id = s.create_run(&NewRun::new("welcome", item.clone())).unwrap();
        let run = s.update_run(id, &[RunChange::Status { status: RunStatus::Running, error: None }]).unwrap();
        assert_eq!(run.item, item, "update_run returns the run with its item");
        s.update_runs(&[(id, vec![RunChange::StepStarted { step: "a".into(), request: json!({"x": 1}).into() }])])
            .unwrap()
            .into_iter()
            .for_each(|r| r.unwrap());
        assert_eq!(s.get_run(id).unwrap().unwrap().item, item);
        let listed = s.list_runs(&RunFilter::default()).unwrap();
        assert_eq!(listed[0].item, item);
        assert_eq!(s.list_resumable().unwrap()[0].item, item);
        id
    };
    let db = raw(&path);
    let record: Value =
        serde_json::from_slice(&db.open_tree("runs").unwrap().get(id.0.to_be_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(record["item"], Value::Null, "the run record does not repeat the item");
    let stored: Value =
        serde_json::from_slice(&db.open_tree("run_items").unwrap().get(id.0.to_be_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(stored, item);
}

#[test]
fn a_format_1_store_opens_reads_updates_and_is_marked_format_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let item = json!({ "id": "c7", "email": "old@example.com" });
    let id = {
        let s = SledStore::create_or_open(&path).unwrap();
        s.create_run(&NewRun::new("welcome", item.clone())).unwrap()
    };
    // Rewrite it as format 1 wrote it: the item inside the record, format 1 in meta and marker.
    {
        let db = raw(&path);
        let runs = db.open_tree("runs").unwrap();
        let items = db.open_tree("run_items").unwrap();
        let key = id.0.to_be_bytes();
        let mut record: Value = serde_json::from_slice(&runs.get(key).unwrap().unwrap()).unwrap();
        record["item"] = item.clone();
        runs.insert(key, serde_json::to_vec(&record).unwrap()).unwrap();
        items.remove(key).unwrap();
        mark_format(&db, &path, 1);
    }

    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.get_run(id).unwrap().unwrap().item, item);
    let run = s.update_run(id, &[RunChange::Status { status: RunStatus::Running, error: None }]).unwrap();
    assert_eq!((run.status, &run.item), (RunStatus::Running, &item));
    let run = s.update_run(id, &[RunChange::Status { status: RunStatus::Succeeded, error: None }]).unwrap();
    assert_eq!(run.item, item, "a format 1 record keeps its item through updates");
    drop(s);

    let marker: Value = serde_json::from_slice(&std::fs::read(path.join("STORE")).unwrap()).unwrap();
    assert_eq!(marker["format"], json!(3));
    let db = raw(&path);
    assert_eq!(db.open_tree("meta").unwrap().get("format").unwrap().unwrap().as_ref(), b"3");
}

/// Format 2 indexed running runs under `r`: after the upgrade they are found as before,
/// and their next status change leaves no entry behind.
#[test]
fn a_format_2_store_keeps_its_running_runs_and_is_marked_format_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (pending, running) = {
        let s = SledStore::create_or_open(&path).unwrap();
        let pending = s.create_run(&NewRun::new("welcome", json!({"id": "p"}))).unwrap();
        let running = s.create_run(&NewRun::new("welcome", json!({"id": "r"}))).unwrap();
        s.update_run(running, &[RunChange::Status { status: RunStatus::Running, error: None }]).unwrap();
        (pending, running)
    };
    // Rewrite the index as format 2 kept it, and the format number.
    {
        let db = raw(&path);
        let status = db.open_tree("run_status").unwrap();
        let mut key = vec![b'p'];
        key.extend_from_slice(&running.0.to_be_bytes());
        assert!(status.remove(&key).unwrap().is_some());
        key[0] = b'r';
        status.insert(key, &[]).unwrap();
        mark_format(&db, &path, 2);
    }

    let s = SledStore::open(&path).unwrap();
    let ids = |runs: Vec<store::Run>| runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_resumable().unwrap()), [pending, running]);
    let by = |status| ids(s.list_runs(&RunFilter { status: Some(status), ..RunFilter::default() }).unwrap());
    assert_eq!(by(RunStatus::Running), [running]);
    assert_eq!(by(RunStatus::Pending), [pending]);
    s.update_run(running, &[RunChange::Status { status: RunStatus::Succeeded, error: None }]).unwrap();
    assert_eq!(by(RunStatus::Running), []);
    assert_eq!(by(RunStatus::Succeeded), [running]);
    assert_eq!(ids(s.list_resumable().unwrap()), [pending]);
    drop(s);

    let marker: Value = serde_json::from_slice(&std::fs::read(path.join("STORE")).unwrap()).unwrap();
    assert_eq!(marker["format"], json!(3));
    let db = raw(&path);
    assert_eq!(db.open_tree("meta").unwrap().get("format").unwrap().unwrap().as_ref(), b"3");
    let status = db.open_tree("run_status").unwrap();
    assert_eq!(status.scan_prefix(b"r").count(), 0, "no entry left under the old tag");
    assert_eq!(status.len(), 2);
}
