//! The backend is chosen when a store is created and followed on every open.

#[macro_use]
#[allow(unused)]
mod common;

use common::RunHelpers;

use serde_json::json;
use store::{Backend, FjallStore, NewRun, OpenStore, Retention, RunFilter, RunStatus, SledStore, Store};

#[test]
fn open_follows_the_backend_that_created_the_store() {
    let dir = tempfile::tempdir().unwrap();
    for backend in [Backend::Sled, Backend::Fjall] {
        let path = dir.path().join(backend.name());
        assert!(matches!(store::open(&path), Err(store::StoreError::NotFound { .. })));
        let s = store::create_or_open(&path, backend).unwrap();
        assert_eq!(s.backend(), backend);
        let id = s.store_id().to_string();
        s.put_tokens("loc", &json!({"t": backend.name()})).unwrap();
        drop(s);
        assert!(path.join(backend.dir_name()).is_dir());
        let marker = std::fs::read_to_string(path.join("STORE")).unwrap();
        assert!(marker.contains(&format!("\"engine\": \"{backend}\"")), "{marker}");

        // Asking for the other backend does not change an existing store.
        let other = if backend == Backend::Sled { Backend::Fjall } else { Backend::Sled };
        let s = store::create_or_open(&path, other).unwrap();
        assert_eq!((s.backend(), s.store_id()), (backend, id.as_str()));
        assert_eq!(s.get_tokens("loc").unwrap(), Some(json!({"t": backend.name()})));
        drop(s);
        let s = store::open(&path).unwrap();
        assert_eq!(s.backend(), backend);
    }
}

#[test]
fn a_marker_from_before_backends_means_sled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    drop(SledStore::create_or_open(&path).unwrap());
    let marker = std::fs::read_to_string(path.join("STORE")).unwrap();
    let old: serde_json::Value = serde_json::from_str(&marker).unwrap();
    let mut old = old.as_object().unwrap().clone();
    old.remove("engine");
    std::fs::write(path.join("STORE"), serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(store::open(&path).unwrap().backend(), Backend::Sled);
    // The typed constructor of the other backend refuses it rather than misreading it.
    assert!(FjallStore::open(&path).is_err());
}

/// fjall has no id generator of its own: ids come from a floor kept in `meta`, so a run id
/// is never handed out twice, even after the newest runs were pruned and the store reopened.
#[test]
fn fjall_run_ids_are_never_reused_across_prune_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = FjallStore::create_or_open(&path).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = s.create_run(&NewRun::new("f", json!(1))).unwrap();
        s.set_run_status(id, RunStatus::Running, None).unwrap();
        s.set_run_status(id, RunStatus::Succeeded, None).unwrap();
        ids.push(id);
    }
    let pruned = s.prune(&Retention { runs_keep: Some(0), ..Retention::default() }).unwrap();
    assert_eq!(pruned.runs_removed, 3);
    assert!(s.list_runs(&RunFilter::default()).unwrap().is_empty());
    drop(s);
    let s = FjallStore::open(&path).unwrap();
    let next = s.create_run(&NewRun::new("f", json!(2))).unwrap();
    assert!(ids.iter().all(|id| next > *id), "{next} reuses one of {ids:?}");
}

fn a_poll_and_its_runs_survive_a_reopen<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = S::create_or_open(&path).unwrap();
    let commit = store::PollCommit {
        lease: None,
        trigger: "t".into(),
        state: Some(json!({"cursor": 7})),
        items: (0..600)
            .map(|i| store::PollItem { key: format!("k{i}"), run: Some(NewRun::new("f", json!({"i": i}))) })
            .collect(),
    };
    let out = s.commit_poll(&commit).unwrap();
    assert_eq!(out.created.len(), 600);
    drop(s);
    let s = S::open(&path).unwrap();
    assert_eq!(s.trigger_state("t").unwrap(), Some(json!({"cursor": 7})));
    let resumable = s.list_resumable().unwrap();
    assert_eq!(resumable.len(), 600);
    assert_eq!(resumable[599].item, json!({"i": 599}));
    assert!(s.filter_unseen("t", &["k0".into(), "k599".into(), "k600".into()]).unwrap() == [false, false, true]);
}

#[test]
fn a_poll_and_its_runs_survive_a_reopen_sled() {
    a_poll_and_its_runs_survive_a_reopen::<SledStore>();
}

#[test]
fn a_poll_and_its_runs_survive_a_reopen_fjall() {
    a_poll_and_its_runs_survive_a_reopen::<FjallStore>();
}

#[test]
fn a_poll_and_its_runs_survive_a_reopen_postgres() {
    if let Some(_schemas) = common::PgScope::enter() {
        a_poll_and_its_runs_survive_a_reopen::<common::Pg>();
    }
}
