//! One thread writes the bookkeeping of every run, many runs per transaction.
//!
//! Each run must have its step's start on disk before the step is sent, so every run
//! waits for a durable write several times. Written one run at a time, each of those
//! writes would cost a transaction, a flush and a hop through the blocking pool, and at a
//! few thousand runs a second that bookkeeping would dwarf the runs' own work. So runs
//! hand their changes to a writer thread instead: it takes everything queued since its
//! last write, applies it with [`store::Store::update_runs`] (one transaction, one flush)
//! and answers each run. While it writes, the next batch gathers, so the batch grows with
//! the load and a lone run still waits for one flush only.
//!
//! On sled, two such threads share the queue: while one waits for its flush (the disk),
//! the other applies the next batch, whose flush then starts as soon as the first one ends
//! (the store's group commit), so the CPU does not idle during every flush. On fjall one
//! thread is enough (see [`threads`]).
//!
//! A write is either durable (a step's start: on disk before `write` returns Ok) or only
//! committed (a run's final status: when `write` returns, every read sees it and a killed
//! process keeps it, see [`store::Store::apply_runs`]; the `fdatasync` that keeps it
//! through a power cut comes with the next flush). Nothing waits on the second kind, so a
//! batch of only those is not flushed on its own: the next durable write's flush carries
//! it, as the store's log is written in commit order. When no write comes within
//! [`MAX_UNFLUSHED`], the writer flushes anyway. A refused change is that run's error
//! alone. On a database server a flush cannot vouch for commits made before the server
//! restarted ([`store::Store::flush_covers_applied`]), so a batch with a durable write is
//! committed durably itself there.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use store::{RunChange, RunId, Store, StoreError};
use tokio::sync::oneshot;

use crate::error::EngineError;

/// Runs per transaction at most: bounds one transaction's memory and how long the
/// first caller in a batch waits behind the others.
const MAX_BATCH: usize = 512;

/// How long a committed write waits for a flush at most: if no durable write has come to
/// carry it by then, the writer flushes for it.
const MAX_UNFLUSHED: Duration = Duration::from_millis(5);

/// Writer threads. sled: two, one applying a batch while the other waits for its flush.
/// fjall: one. Its flush holds the journal's lock, so a second writer's commit only waits
/// behind it, and two writers flush twice as often with half-size batches, which is slower
/// (BENCHMARKS.md, "One writer thread on fjall").
fn threads(backend: store::Backend) -> usize {
    match backend {
        store::Backend::Sled => 2,
        store::Backend::Fjall => 1,
        // PostgreSQL: a batch's transaction is round trips to the server, not a lock on a
        // local journal, so a second writer's batch overlaps the first's.
        store::Backend::Postgres => 2,
    }
}

struct Job {
    id: RunId,
    changes: Vec<RunChange>,
    /// Whether the caller needs the changes on disk before it goes on.
    durable: bool,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A caller waiting for its answer.
struct Waiting {
    durable: bool,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle runs write through; the thread stops when the last handle is dropped.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(crate) fn start(store: Arc<dyn Store>) -> Writer {
        let (jobs, queue) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads(store.backend()) {
            let (store, queue) = (store.clone(), queue.clone());
            let spawned =
                std::thread::Builder::new().name(format!("flowd-run-writer-{n}")).spawn(move || run(&*store, &queue));
            if let Err(e) = spawned {
                // Without any thread every write fails with a clear error instead of hanging.
                tracing::error!(error = %e, "cannot start a run writer thread");
            }
        }
        Writer { jobs }
    }

    /// Writes `changes` to run `id`, batched with other runs' writes: on disk when it
    /// returns Ok if `durable`, else committed (see the module docs).
    pub(crate) async fn write(&self, id: RunId, changes: Vec<RunChange>, durable: bool) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { id, changes, durable, reply })
            .map_err(|_| EngineError::Join("the run writer thread has stopped".into()))?;
        match answer.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(EngineError::Join("the run writer thread stopped before answering".into())),
        }
    }
}

/// A failure the writer logs when it first happens and then at most once per interval, with
/// how many it left out: a store that cannot write fails every flush (one every 5 ms or
/// sooner) until the service stops, and one line per failure would bury everything else.
#[derive(Debug, Default)]
struct Repeated {
    last: Option<Instant>,
    left_out: u64,
}

impl Repeated {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(n)` when this failure is to be logged, `n` being how many were left out since.
    fn log_now(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Self::INTERVAL => {
                self.left_out += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.left_out))
            }
        }
    }
}

fn run(store: &dyn Store, queue: &Mutex<mpsc::Receiver<Job>>) {
    // When the oldest committed write not yet flushed was committed.
    let mut unflushed_since: Option<Instant> = None;
    let mut flush_failures = Repeated::default();
    loop {
        // The queue is held only while a batch is taken, not while it is written.
        let jobs = {
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let first = match unflushed_since {
                None => queue.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(t) => queue.recv_timeout(MAX_UNFLUSHED.saturating_sub(t.elapsed())),
            };
            match first {
                Ok(first) => {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    Some(jobs)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        let durable = match jobs {
            Some(jobs) => {
                let needs_flush = jobs.iter().any(|j| j.durable);
                if needs_flush && !store.flush_covers_applied() {
                    if write_durably(store, jobs) {
                        // That commit flushed every earlier one as well.
                        unflushed_since = None;
                    }
                    continue;
                }
                let durable = write_batch(store, jobs);
                let since = *unflushed_since.get_or_insert_with(Instant::now);
                // Only committed writes: their flush waits for the next durable write's.
                if !needs_flush && since.elapsed() < MAX_UNFLUSHED {
                    continue;
                }
                durable
            }
            None => Vec::new(),
        };
        let mut flushed = store.flush();
        match &flushed {
            Ok(()) => unflushed_since = None,
            // Tried again with the next batch, or when the wait runs out again.
            Err(e) => {
                let now = Instant::now();
                if let Some(left_out) = flush_failures.log_now(now) {
                    tracing::error!(error = %e, repeats_not_logged = left_out, "flushing the runs' bookkeeping failed");
                }
                unflushed_since = Some(now);
            }
        }
        for job in durable {
            // After a failed flush, each caller after the first tries one of its own.
            let next = if flushed.is_ok() { Ok(()) } else { store.flush() };
            let _ = job.reply.send(std::mem::replace(&mut flushed, next));
        }
    }
    // The last committed writes of a stopping engine.
    if unflushed_since.is_some() {
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the runs' bookkeeping failed");
        }
    }
}

/// Commits a batch durably ([`Store::update_runs`]) and answers every caller: for a store
/// whose flush cannot vouch for earlier commits (see [`Store::flush_covers_applied`]).
/// Returns whether the batch's one transaction committed.
fn write_durably(store: &dyn Store, jobs: Vec<Job>) -> bool {
    let (batch, replies): (Vec<(RunId, Vec<RunChange>)>, Vec<_>) =
        jobs.into_iter().map(|j| ((j.id, j.changes), j.reply)).unzip();
    let (committed, results) = match store.update_runs(&batch) {
        Ok(results) => (true, results),
        Err(e) => {
            tracing::warn!(error = %e, runs = batch.len(), "batched run write failed; writing runs one by one");
            (false, batch.iter().map(|(id, changes)| store.update_run(*id, changes).map(drop)).collect())
        }
    };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
    committed
}

/// Commits a batch and answers the callers that do not wait for the disk; returns the
/// ones that do, to be answered after the flush. A refused change is answered at once.
fn write_batch(store: &dyn Store, jobs: Vec<Job>) -> Vec<Waiting> {
    let (batch, jobs): (Vec<(RunId, Vec<RunChange>)>, Vec<Waiting>) =
        jobs.into_iter().map(|j| ((j.id, j.changes), Waiting { durable: j.durable, reply: j.reply })).unzip();
    let results = match store.apply_runs(&batch) {
        Ok(results) => results,
        // The batch as a whole failed (nothing was written): write each run alone, so each
        // caller gets its own error, or success if only one run's write was the trouble.
        Err(e) => {
            tracing::warn!(error = %e, runs = batch.len(), "batched run write failed; writing runs one by one");
            batch.iter().map(|(id, changes)| store.update_run(*id, changes).map(drop)).collect()
        }
    };
    let mut waiting = Vec::new();
    for (job, result) in jobs.into_iter().zip(results) {
        if job.durable && result.is_ok() {
            waiting.push(job);
        } else {
            // A caller that went away (its task was cancelled) needs no answer.
            let _ = job.reply.send(result);
        }
    }
    waiting
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_repeating_every_5ms_is_logged_once_per_interval_with_the_count() {
        let mut r = super::Repeated::default();
        let t0 = Instant::now();
        let logged: Vec<(u64, u64)> = (0..6_000u64)
            .filter_map(|i| r.log_now(t0 + Duration::from_millis(5 * i)).map(|left_out| (i, left_out)))
            .collect();
        // 30 s of failures: the first, then one line per 10 s saying how many it left out.
        assert_eq!(logged, [(0, 0), (2_000, 1_999), (4_000, 1_999)]);
    }

    use super::*;
    use store::{NewRun, RunStatus, SledStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_durable_and_refusals_stay_with_their_run() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let ids: Vec<RunId> =
            (0..200).map(|i| store.create_run(&NewRun::new("f", serde_json::json!({ "i": i }))).unwrap()).collect();
        let writer = Arc::new(Writer::start(store.clone()));
        let mut tasks = Vec::new();
        for (n, id) in ids.iter().copied().enumerate() {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                // Every tenth run asks for something the store refuses: starting a step of a
                // run that is not running.
                let changes = if n % 10 == 0 {
                    vec![RunChange::StepStarted { step: "a".into(), request: serde_json::Value::Null.into() }]
                } else {
                    vec![RunChange::Status { status: RunStatus::Running, error: None }]
                };
                writer.write(id, changes, n % 3 != 0).await
            }));
        }
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => {}
                Err(EngineError::Store(StoreError::Conflict(_))) => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(refused, 20);
        for (n, id) in ids.iter().enumerate() {
            let run = store.get_run(*id).unwrap().unwrap();
            let want = if n % 10 == 0 { RunStatus::Pending } else { RunStatus::Running };
            assert_eq!(run.status, want, "run {n}");
        }
    }

    /// A durable write is flushed before it returns; a committed one is readable at once
    /// and flushed by the writer within `MAX_UNFLUSHED` even when nothing else comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_writes_are_readable_at_once_and_flushed_soon_after() {
        let store: Arc<dyn Store> = Arc::new(store::FjallStore::temporary().unwrap());
        let ids: Vec<RunId> =
            (0..2).map(|i| store.create_run(&NewRun::new("f", serde_json::json!({ "i": i }))).unwrap()).collect();
        let writer = Writer::start(store.clone());
        let running = || vec![RunChange::Status { status: RunStatus::Running, error: None }];

        let before = store.transaction_time().flushes;
        writer.write(ids[0], running(), true).await.unwrap();
        assert!(store.transaction_time().flushes > before, "a durable write returned before its flush");

        let before = store.transaction_time().flushes;
        writer.write(ids[1], running(), false).await.unwrap();
        assert_eq!(store.get_run(ids[1]).unwrap().unwrap().status, RunStatus::Running);
        let waited = std::time::Instant::now();
        while store.transaction_time().flushes == before {
            assert!(waited.elapsed() < Duration::from_secs(5), "a committed write was never flushed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn an_unknown_run_is_an_error_for_that_caller() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let writer = Writer::start(store);
        let err = writer
            .write(RunId(999_999), vec![RunChange::Status { status: RunStatus::Running, error: None }], true)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Store(StoreError::RunNotFound(_))), "{err}");
    }
}
