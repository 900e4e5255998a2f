//! `cargo bench -p store`: the store's hot paths with their durable flush.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use store::{NewRun, PollCommit, PollItem, RunChange, RunStatus, SledStore, StepStatus, Store};

fn open(dir: &tempfile::TempDir) -> SledStore {
    SledStore::create_or_open(dir.path().join("store")).expect("store")
}

/// One poll of 100 items of which 10 are new: check all 100, commit the 10
/// (seen keys, cursor, 10 pending runs) and flush.
fn poll_dedupe(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir);
    let mut next = 0u64;
    // A window of 90 already-seen keys that slides with each poll.
    let seed: Vec<PollItem> = (0..90).map(|i| PollItem { key: format!("c{i}@2024"), run: None }).collect();
    s.commit_poll(&PollCommit { trigger: "bench".into(), state: None, items: seed }).expect("seed");
    next += 90;
    c.bench_function("poll 100 items, 10 new: filter_unseen + commit_poll (flushed)", |b| {
        b.iter(|| {
            let keys: Vec<String> = (next - 90..next + 10).map(|i| format!("c{i}@2024")).collect();
            let unseen = s.filter_unseen("bench", &keys).expect("filter");
            let items = keys
                .iter()
                .zip(unseen)
                .filter(|(_, u)| *u)
                .map(|(k, _)| PollItem {
                    key: k.clone(),
                    run: Some(NewRun::new("bench-flow", json!({ "id": k, "name": "Jane" }))),
                })
                .collect::<Vec<_>>();
            assert_eq!(items.len(), 10);
            s.commit_poll(&PollCommit { trigger: "bench".into(), state: Some(json!({ "cursor": next })), items })
                .expect("commit");
            next += 10;
        })
    });
    c.bench_function("filter_unseen 100 keys (read only)", |b| {
        let keys: Vec<String> = (0..100).map(|i| format!("c{i}@2024")).collect();
        b.iter(|| s.filter_unseen("bench", &keys).expect("filter"))
    });
}

/// A one-step run's bookkeeping: create, start (running + step sent, one
/// flush), record the result and finish (one flush).
fn run_bookkeeping(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir);
    let request = json!({ "method": "POST", "path": "/contacts/", "body": { "email": "a@b.c" } });
    c.bench_function("run: create + start step + record result (3 flushes)", |b| {
        b.iter(|| {
            let id = s.create_run(&NewRun::new("f", json!({ "id": "x" }))).expect("create");
            s.update_run(
                id,
                &[
                    RunChange::Status { status: RunStatus::Running, error: None },
                    RunChange::StepStarted { step: "create".into(), request: request.clone() },
                ],
            )
            .expect("start");
            s.update_run(
                id,
                &[
                    RunChange::StepFinished {
                        step: "create".into(),
                        status: StepStatus::Succeeded,
                        response: Some(json!({ "contact": { "id": "c1" } })),
                        error: None,
                    },
                    RunChange::Status { status: RunStatus::Succeeded, error: None },
                ],
            )
            .expect("finish");
        })
    });
}

/// sled's flush alone: after one small write, and with nothing to write.
fn flush_cost(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir);
    let mut i = 0u64;
    c.bench_function("flush after one small write (put_tokens)", |b| {
        b.iter_batched(
            || {
                i += 1;
                json!({ "access_token": i })
            },
            |v| s.put_tokens("acct", &v).expect("put"),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("flush with nothing dirty", |b| b.iter(|| s.flush().expect("flush")));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = poll_dedupe, run_bookkeeping, flush_cost
}
criterion_main!(benches);
