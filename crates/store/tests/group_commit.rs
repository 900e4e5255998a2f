//! Concurrent callers share flushes (group commit): every call still returns with its own
//! change durable, and reopening the store shows all of them.

#[macro_use]
#[allow(unused)]
mod common;

use serde_json::json;
use std::sync::Arc;
use store::{NewRun, OpenStore, RunChange, RunStatus};

fn concurrent_updates_all_land_and_survive_a_reopen<S: OpenStore>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let ids = {
        let s = Arc::new(S::create_or_open(&path).expect("store"));
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| {
                            let id = s.create_run(&NewRun::new("f", json!({ "t": t, "i": i }))).expect("create");
                            let done = RunChange::Status { status: RunStatus::Succeeded, error: None };
                            let running = RunChange::Status { status: RunStatus::Running, error: None };
                            s.update_run(id, &[running, done]).expect("update");
                            id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect::<Vec<_>>()
    };
    let s = S::open(&path).expect("reopen");
    assert_eq!(ids.len(), 320);
    for id in ids {
        let run = s.get_run(id).expect("read").expect("run exists");
        assert_eq!(run.status, RunStatus::Succeeded);
    }
}

on_each_backend!(concurrent_updates_all_land_and_survive_a_reopen,);
