//! `cargo bench -p store`: the store's hot paths with their durable flush, on each backend
//! (bench names start with `sled/` or `fjall/`).

// flowd's allocator: sled allocates a copy of a B-tree node on every insert, so the
// allocator is a good part of what is measured here.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use store::{FjallStore, NewRun, OpenStore, PollCommit, PollItem, RunChange, RunId, RunStatus, SledStore, StepStatus};

fn open<S: OpenStore>(dir: &tempfile::TempDir) -> S {
    S::create_or_open(&dir.path().join("store")).expect("store")
}

fn name<S: OpenStore>(what: &str) -> String {
    format!("{}/{what}", S::BACKEND)
}

/// One poll of 100 items of which 10 are new: check all 100, commit the 10
/// (seen keys, cursor, 10 pending runs) and flush.
fn poll_dedupe<S: OpenStore>(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s: S = open(&dir);
    let mut next = 0u64;
    // A window of 90 already-seen keys that slides with each poll.
    let seed: Vec<PollItem> = (0..90).map(|i| PollItem { key: format!("c{i}@2024"), run: None }).collect();
    s.commit_poll(&PollCommit { lease: None, trigger: "bench".into(), state: None, items: seed }).expect("seed");
    next += 90;
    c.bench_function(&name::<S>("poll 100 items, 10 new: filter_unseen + commit_poll (flushed)"), |b| {
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
            s.commit_poll(&PollCommit {
                lease: None,
                trigger: "bench".into(),
                state: Some(json!({ "cursor": next })),
                items,
            })
            .expect("commit");
            next += 10;
        })
    });
    c.bench_function(&name::<S>("filter_unseen 100 keys (read only)"), |b| {
        let keys: Vec<String> = (0..100).map(|i| format!("c{i}@2024")).collect();
        b.iter(|| s.filter_unseen("bench", &keys).expect("filter"))
    });
}

/// A one-step run's bookkeeping: create, start (running + step sent, one
/// flush), record the result and finish (one flush).
fn run_bookkeeping<S: OpenStore>(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s: S = open(&dir);
    let request = json!({ "method": "POST", "path": "/contacts/", "body": { "email": "a@b.c" } });
    c.bench_function(&name::<S>("run: create + start step + record result (3 flushes)"), |b| {
        b.iter(|| {
            let id = s.create_run(&NewRun::new("f", json!({ "id": "x" }))).expect("create");
            s.update_run(
                id,
                &[
                    RunChange::Status { status: RunStatus::Running, error: None },
                    RunChange::StepStarted { step: "create".into(), request: request.clone().into() },
                ],
            )
            .expect("start");
            s.update_run(
                id,
                &[
                    RunChange::StepFinished {
                        step: "create".into(),
                        status: StepStatus::Succeeded,
                        response: Some(json!({ "contact": { "id": "c1" } }).into()),
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
fn flush_cost<S: OpenStore>(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s: S = open(&dir);
    let mut i = 0u64;
    c.bench_function(&name::<S>("flush after one small write (put_tokens)"), |b| {
        b.iter_batched(
            || {
                i += 1;
                json!({ "access_token": i })
            },
            |v| s.put_tokens("acct", &v).expect("put"),
            BatchSize::SmallInput,
        )
    });
    c.bench_function(&name::<S>("flush with nothing dirty"), |b| b.iter(|| s.flush().expect("flush")));
}

/// The store as the engine uses it under load: a 500-item page committed at once, and
/// 64 runs' writes in one `update_runs` batch (one transaction, one flush). Throughput is
/// per item or per run.
fn batched<S: OpenStore>(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s: S = open(&dir);
    let contact = |i: u64| {
        json!({ "id": format!("c{i}"), "firstName": format!("New{i}"), "lastName": "Person",
        "email": format!("new{i}@example.com"), "locationId": "loc", "dateAdded": "2026-11-27T08:00:00.000Z" })
    };
    let mut next = 0u64;
    let mut g = c.benchmark_group(name::<S>("batched"));
    g.throughput(criterion::Throughput::Elements(500));
    // Inputs are built outside the timed part: only the store's work is measured.
    let page = |next: &mut u64| -> Vec<PollItem> {
        let items = (*next..*next + 500)
            .map(|i| PollItem { key: format!("c{i}"), run: Some(NewRun::new("welcome", contact(i))) })
            .collect();
        *next += 500;
        items
    };
    g.bench_function("commit_poll: 500 new items (one page, flushed)", |b| {
        b.iter_batched(
            || {
                let items = page(&mut next);
                PollCommit { lease: None, trigger: "bench".into(), state: Some(json!({ "page": next })), items }
            },
            |commit| s.commit_poll(&commit).expect("commit"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(criterion::Throughput::Elements(64));
    let request = json!({ "op": "contacts.create_task", "method": "POST", "path": "/contacts/c1/tasks",
        "query": [], "body": { "title": "Welcome call with New1", "dueDate": "2026-11-29T08:00:00Z", "completed": false } });
    let response = json!({ "task": { "id": "t1", "title": "Welcome call with New1", "contactId": "c1",
        "dueDate": "2026-11-29T08:00:00Z", "completed": false } });
    let start = |id: RunId| {
        let changes = vec![
            RunChange::Expect { status: RunStatus::Pending },
            RunChange::Status { status: RunStatus::Running, error: None },
            RunChange::StepStarted { step: "task".into(), request: request.clone().into() },
        ];
        (id, changes)
    };
    let finish = |id: RunId| {
        let changes = vec![
            RunChange::StepFinished {
                step: "task".into(),
                status: StepStatus::Succeeded,
                response: Some(response.clone().into()),
                error: None,
            },
            RunChange::Status { status: RunStatus::Succeeded, error: None },
        ];
        (id, changes)
    };
    g.bench_function("update_runs: 64 runs start, then 64 finish (2 flushed batches)", |b| {
        b.iter_batched(
            || {
                let items = (next..next + 64)
                    .map(|i| PollItem { key: format!("c{i}"), run: Some(NewRun::new("welcome", contact(i))) })
                    .collect();
                next += 64;
                let out = s
                    .commit_poll(&PollCommit { lease: None, trigger: "bench".into(), state: None, items })
                    .expect("commit");
                let ids: Vec<RunId> = out.created.into_iter().map(|(_, id)| id).collect();
                (
                    ids.iter().map(|id| start(*id)).collect::<Vec<_>>(),
                    ids.iter().map(|id| finish(*id)).collect::<Vec<_>>(),
                )
            },
            |(start, finish)| {
                assert!(s.update_runs(&start).expect("start").iter().all(Result::is_ok));
                assert!(s.update_runs(&finish).expect("finish").iter().all(Result::is_ok));
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The floor under every store write: one sled insert (no transaction, no flush) of a
/// run-record-sized value at the next key, as new runs arrive.
fn sled_floor(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new().path(dir.path().join("sled")).cache_capacity(64 << 20).open().expect("sled");
    let tree = db.open_tree("runs").expect("tree");
    let value = vec![b'x'; 600];
    let mut next = 0u64;
    c.bench_function("sled 0.34: Tree::insert of a 600-byte value at the next key (no flush)", |b| {
        b.iter(|| {
            next += 1;
            tree.insert(next.to_be_bytes(), value.as_slice()).expect("insert")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = poll_dedupe::<SledStore>, run_bookkeeping::<SledStore>, flush_cost::<SledStore>, batched::<SledStore>,
        poll_dedupe::<FjallStore>, run_bookkeeping::<FjallStore>, flush_cost::<FjallStore>, batched::<FjallStore>,
        sled_floor
}
criterion_main!(benches);
