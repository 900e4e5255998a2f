//! `cargo bench -p bench --bench hot_path`: the per-item hot path without the network:
//! template rendering, JSONPath extraction, dedupe keys, catalog lookup, and the store's
//! durable bookkeeping alone and with concurrent runs sharing flushes (group commit).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use store::{NewRun, RunChange, RunStatus, SledStore, StepStatus, Store};

fn contact(i: usize) -> Value {
    json!({
        "id": format!("c{i:08}"), "locationId": "loc1", "firstName": format!("New{i}"), "lastName": "Person",
        "email": format!("new{i}@example.com"), "phone": "+15550100", "tags": ["a", "b"],
        "dateAdded": "2024-05-01T10:00:00Z", "customFields": [{"id": "f1", "value": "x"}]
    })
}

fn templates(c: &mut Criterion) {
    let Ok(flow) = bench::compile(bench::THREE_STEPS) else { panic!("bench flow compiles") };
    let ctx = flow::context(
        "welcome",
        contact(1),
        json!({"name": "main", "location_id": "loc1"}),
        &BTreeMap::new(),
        "1",
        chrono::Utc::now(),
    );
    let task = &flow.steps[0].with;
    c.bench_function("template: render create_task `with` (4 fields, helper)", |b| {
        b.iter(|| task.render(&ctx).map(drop))
    });
    let tag = &flow.steps[1].with;
    c.bench_function("template: render add_tags `with` (2 fields)", |b| b.iter(|| tag.render(&ctx).map(drop)));
    c.bench_function("context: build a run's template context", |b| {
        b.iter_batched(
            || contact(1),
            |item| flow::context("welcome", item, json!({"name": "main"}), &BTreeMap::new(), "1", chrono::Utc::now()),
            BatchSize::SmallInput,
        )
    });
}

fn jsonpath_and_dedupe(c: &mut Criterion) {
    let Ok(catalog) = catalog::Catalog::builtin() else { panic!("catalog") };
    let page = json!({ "contacts": (0..500).map(contact).collect::<Vec<_>>(), "total": 500 });
    let Ok(items) = ghl::JsonPath::parse("$.contacts[*]") else { panic!("path") };
    let mut g = c.benchmark_group("jsonpath");
    g.throughput(Throughput::Elements(500));
    g.bench_function("select $.contacts[*] from a 500-item page", |b| b.iter(|| items.select(&page).len()));
    g.finish();
    let Ok(result) = ghl::JsonPath::parse("$.task") else { panic!("path") };
    let resp = json!({ "task": { "id": "t1", "title": "x" } });
    c.bench_function("jsonpath: first $.task of an action result", |b| b.iter(|| result.first(&resp).is_some()));
    let Some(spec) = catalog.get("contacts.search_contacts").and_then(|o| o.trigger.clone()) else { panic!("trigger") };
    let item = contact(7);
    let inputs = serde_json::Map::new();
    for mode in [flow::DedupeMode::New, flow::DedupeMode::Updated, flow::DedupeMode::Changed] {
        c.bench_function(&format!("dedupe key ({})", mode.as_str()), |b| {
            b.iter(|| engine::dedupe_key(&spec, mode, &item, &inputs))
        });
    }
    c.bench_function("catalog: lookup an operation by key", |b| {
        b.iter(|| catalog.get("contacts.create_task").is_some())
    });
}

/// One run's durable bookkeeping as the engine now writes it: create (the poll's
/// commit), running + step started (one flush), step result + succeeded (one flush).
fn bookkeeping(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(SledStore::create_or_open(dir.path().join("store")).expect("store"));
    let request = json!({ "method": "POST", "path": "/contacts/c1/tasks", "body": { "title": "x" } });
    let one = |s: &SledStore| {
        let id = s.create_run(&NewRun::new("f", contact(1))).expect("create");
        s.update_run(
            id,
            &[
                RunChange::Status { status: RunStatus::Running, error: None },
                RunChange::StepStarted { step: "task".into(), request: request.clone().into() },
            ],
        )
        .expect("start");
        s.update_run(
            id,
            &[
                RunChange::StepFinished {
                    step: "task".into(),
                    status: StepStatus::Succeeded,
                    response: Some(json!({ "id": "t1" }).into()),
                    error: None,
                },
                RunChange::Status { status: RunStatus::Succeeded, error: None },
            ],
        )
        .expect("finish");
    };
    c.bench_function("store: one run's bookkeeping, alone (3 flushes)", |b| b.iter(|| one(&s)));
    c.bench_function("store: flush alone (nothing written)", |b| b.iter(|| s.flush().expect("flush")));
    for threads in [8usize, 64] {
        let mut g = c.benchmark_group("store: concurrent runs' bookkeeping (group commit)");
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("{threads} threads × 1 run"), |b| {
            b.iter(|| {
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        scope.spawn(|| one(&s));
                    }
                })
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = templates, jsonpath_and_dedupe, bookkeeping
}
criterion_main!(benches);
