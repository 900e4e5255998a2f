//! flowd's durable state: which trigger items were seen, each trigger's cursor,
//! the runs created for new items and the result of each of their steps, OAuth
//! tokens and the webhook inbox.
//!
//! [`Store`] is what the product calls. [`KvStore`] implements it once over a narrow
//! key-value layer ([`kv::Kv`]) with two adapters: fjall ([`FjallStore`], the default for
//! new stores) and sled ([`SledStore`]). [`open`] and [`create_or_open`] pick the backend a
//! store was created with; `temporary()` gives a throw-away store for other crates' tests.
//! [`PgStore`] implements it in PostgreSQL, for several nodes on one database ([`pg`]).

pub mod clock;
pub mod cluster;
mod commit;
pub mod error;
mod keys;
pub mod kv;
mod kv_store;
pub mod layout;
pub mod migrate;
pub mod model;
mod open_runs;
mod payload;
pub mod pg;
mod retention;
mod time_format;
mod transitions;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use clock::Clock;
pub use cluster::{BudgetGrant, ClaimScope, ClaimedRun, Cluster, Heartbeat, NodeInfo};
pub use commit::{LockTime, TransactionTime};
pub use error::{Result, StoreError};
pub use kv_store::KvStore;
pub use layout::Backend;
pub use model::{
    NewRun, NewRunFields, Payload, PollCommit, PollItem, PollOutcome, PruneStats, Retention, Run, RunChange, RunFilter,
    RunId, RunStatus, StepRecord, StepStatus, WebhookEvent,
};
pub use pg::{NodeOptions, PgOptions, PgStore};

/// The store on fjall 2 (an LSM tree with a journal): what new stores are created with.
pub type FjallStore = KvStore<kv::fjall::FjallKv>;
/// The store on sled 0.34, the original backend.
pub type SledStore = KvStore<kv::sled::SledKv>;

/// Opens the store at `path` with the backend that created it (its marker says which).
/// A missing store is an error: see [`create_or_open`].
pub fn open(path: impl AsRef<Path>) -> Result<Arc<dyn Store>> {
    let path = path.as_ref();
    Ok(match layout::existing_backend(path)?.unwrap_or(Backend::FOR_NEW_STORES) {
        Backend::Sled => Arc::new(SledStore::open(path)?),
        Backend::Fjall => Arc::new(FjallStore::open(path)?),
        Backend::Postgres => return Err(not_a_directory()),
    })
}

/// Opens the store at `path` with the backend that created it, or creates one with
/// `backend` if there is none yet. The backend of an existing store never changes.
pub fn create_or_open(path: impl AsRef<Path>, backend: Backend) -> Result<Arc<dyn Store>> {
    let path = path.as_ref();
    Ok(match layout::existing_backend(path)?.unwrap_or(backend) {
        Backend::Sled => Arc::new(SledStore::create_or_open(path)?),
        Backend::Fjall => Arc::new(FjallStore::create_or_open(path)?),
        Backend::Postgres => return Err(not_a_directory()),
    })
}

fn not_a_directory() -> StoreError {
    StoreError::Invalid("a PostgreSQL store is opened by its URL (PgStore::connect), not in a directory".into())
}

/// The constructors every backend has, and reads the product does not need, for code
/// (tests, benches, tools) that runs against each backend.
pub trait OpenStore: Store + Sized + 'static {
    const BACKEND: Backend;
    fn open(path: &Path) -> Result<Self>;
    fn create_or_open(path: &Path) -> Result<Self>;
    /// A throw-away store, deleted on drop.
    fn temporary() -> Result<Self>;
    fn with_clock(self, clock: Clock) -> Self;
    /// `None` for a temporary store.
    fn path(&self) -> Option<&Path>;
    /// When `key` was first recorded for `trigger`.
    fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>>;
    /// The webhook event stored under `id`, processed or not.
    fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>>;
    /// Forgets a trigger's seen keys and state; returns the number of keys removed.
    fn reset_trigger(&self, trigger: &str) -> Result<u64>;
}

impl<K: kv::Kv> OpenStore for KvStore<K> {
    const BACKEND: Backend = K::BACKEND;
    fn open(path: &Path) -> Result<Self> {
        KvStore::open(path)
    }
    fn create_or_open(path: &Path) -> Result<Self> {
        KvStore::create_or_open(path)
    }
    fn temporary() -> Result<Self> {
        KvStore::temporary()
    }
    fn with_clock(self, clock: Clock) -> Self {
        KvStore::with_clock(self, clock)
    }
    fn path(&self) -> Option<&Path> {
        KvStore::path(self)
    }
    fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>> {
        KvStore::seen_at(self, trigger, key)
    }
    fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        KvStore::webhook_event(self, id)
    }
    fn reset_trigger(&self, trigger: &str) -> Result<u64> {
        KvStore::reset_trigger(self, trigger)
    }
}

/// The engine's durable state: what the product (engine, service, CLI) calls. A backend
/// implements it over whatever it keeps data in ([`KvStore`] over a key-value database; a
/// SQL backend would implement it directly); nothing here names keys or tables.
///
/// Methods are synchronous: call them from async code through `spawn_blocking`, or
/// directly for the short reads.
///
/// # The write path
///
/// Every changing method is one atomic transaction: nothing of it is written if any part
/// is refused. Unless its doc says otherwise (only [`Store::apply_runs`]) it returns once
/// the change is durable (fsync'd); concurrent callers share one flush (group commit), so
/// N writers finishing together cost one disk write. The engine's promise, never lose an
/// item and never fire twice for one even across SIGKILL, rests on:
///
/// 1. [`Store::commit_poll`]: a poll's seen keys, the trigger's new state and a `pending`
///    run per new item, in one transaction, before any action is sent. A crash before it:
///    the items are polled again. After it: the runs are found by
///    [`Store::list_resumable`].
/// 2. [`Store::apply_runs`]: the engine's writer batches concurrent runs' changes into one
///    transaction, then calls [`Store::flush`] once for the callers that wait for the
///    disk. [`RunChange::StepStarted`] records the rendered request that way *before* it
///    is sent, so a step found `sent` after a crash is known to be in doubt;
///    [`RunChange::StepFinished`] records what came back; a run's final status waits for
///    the next flush. The rules for a change (a succeeded step is never started again,
///    finished runs stay finished) are checked inside the transaction.
/// 3. [`Store::put_webhook_event`] stores an event before GHL gets its 200; the runs it
///    makes go through [`Store::commit_poll`], then [`Store::complete_webhook_event`].
pub trait Store: Send + Sync {
    /// The id written at creation, in the database and in the marker file.
    fn store_id(&self) -> &str;

    // --- dedupe and triggers ---

    /// For each key, whether it has never been recorded for `trigger`.
    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> Result<Vec<bool>>;
    /// The state blob last committed for `trigger`.
    fn trigger_state(&self, trigger: &str) -> Result<Option<Value>>;
    /// Records a poll atomically and durably; see [`PollCommit`]. A key in the
    /// commit that is already recorded gets no run (see
    /// [`PollOutcome::already_seen`]); a key twice in one commit is refused and
    /// nothing is written.
    fn commit_poll(&self, commit: &PollCommit) -> Result<PollOutcome>;

    // --- runs ---

    /// Creates a run outside a poll (manual or webhook-less runs).
    fn create_run(&self, run: &NewRun) -> Result<RunId>;
    fn get_run(&self, id: RunId) -> Result<Option<Run>>;
    /// Newest first.
    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    /// Applies `changes` in order, in one transaction and one flush; nothing is
    /// written if any change is refused. Returns the run as stored.
    fn update_run(&self, id: RunId, changes: &[RunChange]) -> Result<Run>;
    /// Applies each run's changes as [`Store::update_run`] would, for many runs in one
    /// transaction and one flush: the engine's writer batches concurrent runs' writes
    /// through it. A run whose change is refused gets its error in its slot and is left
    /// as it was; the others are written. The outer error means nothing was written.
    fn update_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        Ok(batch.iter().map(|(id, changes)| self.update_run(*id, changes).map(drop)).collect())
    }
    /// As [`Store::update_runs`], but may return before the changes are flushed to disk:
    /// they are committed (every read sees them) and survive the process being killed,
    /// but a power cut or OS crash keeps them only after the next flush (an explicit
    /// [`Store::flush`] or any later durable write: the log is written in commit order).
    /// The engine's writer uses it for writes nothing else waits on (a run's final
    /// status), so they share the next step start's flush. The default is
    /// [`Store::update_runs`] (sled has no cheaper way to survive a kill).
    fn apply_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        self.update_runs(batch)
    }
    /// Whether a [`Store::flush`] that succeeds makes every earlier [`Store::apply_runs`]
    /// durable. True of a store whose log is this process's own, written in order. False
    /// for a database server: one that crashed between the two loses the commits it had not
    /// flushed, and the flush then succeeds on the restarted server. The engine's writer
    /// then commits each batch a caller waits on with [`Store::update_runs`] instead.
    fn flush_covers_applied(&self) -> bool {
        true
    }
    /// Runs a restarted engine must pick up: `pending` and `running`, oldest
    /// first. A `running` run's steps show how far it got.
    fn list_resumable(&self) -> Result<Vec<Run>>;
    /// `failed` runs whose retry time is at or before `now`, earliest first.
    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Run>>;
    /// Makes every `held` run of `flow` `pending`, atomically; returns them.
    fn release_held(&self, flow: &str) -> Result<Vec<RunId>>;

    // --- OAuth tokens, per account (location or company id) ---

    fn get_tokens(&self, account: &str) -> Result<Option<Value>>;
    fn put_tokens(&self, account: &str, tokens: &Value) -> Result<()>;
    /// Returns whether there were tokens to delete.
    fn delete_tokens(&self, account: &str) -> Result<bool>;

    // --- webhook inbox, by GHL's webhookId ---

    /// Stores an event; `false` if an event with this id was already stored
    /// (a redelivery), in which case nothing changes.
    fn put_webhook_event(&self, id: &str, payload: &Value) -> Result<bool>;
    /// Unprocessed events, oldest first; `limit` 0 means all.
    fn list_unprocessed_webhooks(&self, limit: usize) -> Result<Vec<WebhookEvent>>;
    /// Marks the event processed (its runs were created by [`Store::commit_poll`]s
    /// before); a second call is a [`StoreError::Conflict`], an unknown id
    /// [`StoreError::Invalid`].
    fn complete_webhook_event(&self, id: &str) -> Result<()>;

    // --- maintenance ---

    fn prune(&self, policy: &Retention) -> Result<PruneStats>;
    /// Forces everything written so far to disk. Every changing method already
    /// does this; it is here for callers that want an explicit point.
    fn flush(&self) -> Result<()>;

    /// How long the engine's hot write transactions held the backend's writer lock, and
    /// waited for it, since the store was opened (see [`TransactionTime`]).
    fn transaction_time(&self) -> TransactionTime {
        TransactionTime::default()
    }

    /// The embedded database behind this store.
    fn backend(&self) -> Backend;

    /// Why this handle can no longer be trusted to write, once a write or a flush failed in
    /// the database (a full disk, a file size limit, an I/O error): fjall refuses every
    /// later write ("poisoned") even after space is freed, and sled's state after a failed
    /// flush is not known. What was made durable before is kept: reopening the store (a
    /// restart) recovers it. `None` while every write has succeeded.
    fn fault(&self) -> Option<String> {
        None
    }

    /// Whether the store can be used right now: `Ok` for an embedded store (its faults are
    /// [`Store::fault`]); a PostgreSQL store asks its server, so that `/readyz` says
    /// "not ready" while the database is unreachable.
    fn ready(&self) -> Result<()> {
        Ok(())
    }

    /// How this store shares triggers and runs between nodes, when it does (a PostgreSQL
    /// store opened as a node); `None` for a store one process owns.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
}
