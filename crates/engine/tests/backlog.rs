//! A burst of new items does not put every run in memory at once: a poll waits to commit
//! its next page while `max_runs_in_memory` of its runs are queued or executing.

mod common;

use common::*;
use sandbox::Seed;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const FLOW: &str = r#"
name: burst
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}", pageLimit: 100 }
  every: 1m
  start: all
  max_new: 1000000
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_keeps_at_most_max_runs_in_memory_queued() {
    let config = engine::EngineConfig { concurrency: 2, max_runs_in_memory: 60, ..fast_retries() };
    let h = harness(Seed::Contacts(400), &[FLOW], config).await;
    let (peak, done) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (metrics, peak, done) = (h.engine.metrics().clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(metrics.queue_depth.get(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let (report, runs) = h.engine.poll_and_run("burst").await.expect("poll");
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    assert_eq!(report.runs.len(), 400);
    assert_eq!(runs.len(), 400);
    assert!(runs.iter().all(|s| *s == store::RunStatus::Succeeded), "{runs:?}");
    assert_eq!(h.sandbox.records("tasks").len(), 400);
    // Queued runs: at most the bound plus one page (100, the catalog's page limit for this
    // search): a page larger than the room left takes what there is.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 60 + 100, "{peak} runs queued at once");
    assert!(peak > 0, "the sampler saw the queue");
}
