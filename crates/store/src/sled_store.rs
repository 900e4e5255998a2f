//! [`Store`] on sled 0.34.
//!
//! # Trees
//!
//! | tree             | key                                   | value                     |
//! |------------------|---------------------------------------|---------------------------|
//! | `meta`           | `format`, `store_id`, `created_at`    | text                      |
//! | `seen`           | `len(trigger) ++ trigger ++ key`      | first-seen ms (u64 BE)    |
//! | `triggers`       | trigger                               | state (JSON)              |
//! | `runs`           | run id (u64 BE)                       | [`Run`] (JSON, with steps, item `null`) |
//! | `run_items`      | run id (u64 BE)                       | the run's trigger item (JSON) |
//! | `run_status`     | status tag (1 byte; one for pending and running) ++ run id | empty |
//! | `run_flow`       | `len(flow) ++ flow ++ run id`         | empty                     |
//! | `run_retry`      | retry ms (u64 BE) ++ run id           | empty                     |
//! | `tokens`         | account                               | JSON                      |
//! | `webhooks`       | webhook id                            | [`WebhookEvent`] (JSON)   |
//! | `webhook_queue`  | received ms (u64 BE) ++ webhook id    | empty (unprocessed only)  |
//!
//! Separate trees rather than one prefixed tree: each index is a plain
//! ordered scan, `sled` transactions span several trees of one database
//! atomically (one log batch), and a `Tree::len` or a corrupt record names the
//! tree it is in. The `run_*` trees are indexes over `runs` and are only
//! written in the same transaction as the run record, so they cannot drift.
//!
//! A run's steps live inside its record: runs have a handful of steps, and
//! rewriting the record keeps a run and its steps consistent for free. Its
//! trigger item does not: the item never changes and is most of the record, so
//! it is written once to `run_items` and each of the run's several updates
//! decodes and rewrites only the small rest. (Format 1 kept the item inside the
//! record; such records are still read as they are.)
//!
//! # Durability
//!
//! sled acknowledges writes before they reach disk (its background flush runs
//! every 500 ms), so a SIGKILL can lose acknowledged writes. Every changing
//! method therefore ends with `Db::flush` (one fsync'd log write; all trees
//! share one log). Batching is by grouping changes into one call:
//! [`Store::commit_poll`] for a poll, [`Store::update_run`] with several
//! [`RunChange`]s for a run, [`Store::complete_webhook_event`] for an event.
//!
//! Concurrent callers also share flushes (group commit, see [`GroupFlush`]):
//! a caller whose transaction has committed waits for a flush that *started*
//! after its commit; one caller at a time runs `Db::flush` for everyone
//! waiting, so N runs finishing together cost one fsync'd write, not N, and
//! each call still returns only once its own change is on disk.
//!
//! All writes go through transactions, including pruning: sled does not
//! isolate transactions from plain writes to the same trees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree};
use sled::{Transactional, Tree};

use crate::clock::Clock;
use crate::commit::{GroupFlush, TransactionTime, TxTime};
use crate::error::{Result, StoreError};
use crate::keys::{self, decode_json, encode_json};
use crate::layout::{self, Backend, Marker, FORMAT, FORMAT_1, FORMAT_2, META_CREATED_AT, META_FORMAT, META_STORE_ID};
use crate::model::*;
use crate::open_runs::OpenRuns;
use crate::retention;
use crate::transitions;
use crate::Store;

const T_META: &str = "meta";
const T_SEEN: &str = "seen";
const T_TRIGGERS: &str = "triggers";
const T_RUNS: &str = "runs";
const T_RUN_ITEMS: &str = "run_items";
const T_RUN_STATUS: &str = "run_status";
const T_RUN_FLOW: &str = "run_flow";
const T_RUN_RETRY: &str = "run_retry";
const T_TOKENS: &str = "tokens";
const T_WEBHOOKS: &str = "webhooks";
const T_WEBHOOK_QUEUE: &str = "webhook_queue";

/// Deletions per transaction when pruning: bounds the transaction's memory
/// and how long it holds sled's write lock.
const PRUNE_CHUNK: usize = 512;

/// sled's default page cache is 1 GiB; flowd's working set (recent seen keys,
/// open runs) is far smaller and shares the machine with the engine.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

struct Trees {
    seen: Tree,
    triggers: Tree,
    runs: Tree,
    run_items: Tree,
    run_status: Tree,
    run_flow: Tree,
    run_retry: Tree,
    tokens: Tree,
    webhooks: Tree,
    webhook_queue: Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Trees> {
        Ok(Trees {
            seen: db.open_tree(T_SEEN)?,
            triggers: db.open_tree(T_TRIGGERS)?,
            runs: db.open_tree(T_RUNS)?,
            run_items: db.open_tree(T_RUN_ITEMS)?,
            run_status: db.open_tree(T_RUN_STATUS)?,
            run_flow: db.open_tree(T_RUN_FLOW)?,
            run_retry: db.open_tree(T_RUN_RETRY)?,
            tokens: db.open_tree(T_TOKENS)?,
            webhooks: db.open_tree(T_WEBHOOKS)?,
            webhook_queue: db.open_tree(T_WEBHOOK_QUEUE)?,
        })
    }
}

pub struct SledStore {
    db: sled::Db,
    t: Trees,
    group: GroupFlush,
    open: OpenRuns,
    tx_time: TxTime,
    root: Option<PathBuf>,
    store_id: String,
    clock: Clock,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("root", &self.root).field("store_id", &self.store_id).finish()
    }
}

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Lifts a store error into a transaction abort.
fn tx<T>(r: Result<T>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

impl SledStore {
    /// Opens the store at `path`, which must have been created before (by
    /// [`SledStore::create_or_open`]). The engine's normal start-up uses this:
    /// a missing store is then a mistake (wrong path, lost volume), not a
    /// reason to start from nothing.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        Self::open_at(path.as_ref(), false)
    }

    /// Creates a store at `path` if there is none (the directory is absent or
    /// empty), else opens it. Used by `flowd init` and first runs. Damage is
    /// reported the same way as by [`SledStore::open`]: a marker without its
    /// database is never taken for "no store yet".
    pub fn create_or_open(path: impl AsRef<Path>) -> Result<SledStore> {
        Self::open_at(path.as_ref(), true)
    }

    /// A store in a temporary file that sled deletes on drop: the real
    /// implementation, for other crates' tests (there is no separate
    /// in-memory store to drift from this one).
    pub fn temporary() -> Result<SledStore> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open()?;
        let meta = db.open_tree(T_META)?;
        let marker = init_meta(&meta, &Clock::system())?;
        Self::assemble(db, None, marker.store_id)
    }

    /// Every data tree (all but `meta`) by name, for [`crate::migrate`]: the fjall store
    /// keeps the same keys and records under the same names.
    pub(crate) fn data_trees(&self) -> [(&'static str, &Tree); 10] {
        let t = &self.t;
        [
            (T_SEEN, &t.seen),
            (T_TRIGGERS, &t.triggers),
            (T_RUNS, &t.runs),
            (T_RUN_ITEMS, &t.run_items),
            (T_RUN_STATUS, &t.run_status),
            (T_RUN_FLOW, &t.run_flow),
            (T_RUN_RETRY, &t.run_retry),
            (T_TOKENS, &t.tokens),
            (T_WEBHOOKS, &t.webhooks),
            (T_WEBHOOK_QUEUE, &t.webhook_queue),
        ]
    }

    /// An id above every run id sled has handed out (it consumes one).
    pub(crate) fn run_id_ceiling(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// Replaces the clock (tests age records with it).
    pub fn with_clock(mut self, clock: Clock) -> SledStore {
        self.clock = clock;
        self
    }

    pub fn path(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn open_at(root: &Path, create: bool) -> Result<SledStore> {
        let found = layout::prepare(root, create, Backend::Sled)?;
        let db = open_sled(root)?;
        layout::restrict_permissions(root)?;

        let meta = db.open_tree(T_META)?;
        let marker = match read_meta(&meta).map_err(|r| layout::damaged(root, r))? {
            Some(mut m) => {
                layout::check_meta(root, &found, &m, &[FORMAT, FORMAT_2, FORMAT_1])?;
                if m.format == FORMAT_1 || m.format == FORMAT_2 {
                    // Format 1 records are read as they are (items inside). Running runs'
                    // index entries move to the tag they share with pending ones; a crash
                    // half-way leaves the old format number and the move is finished on the
                    // next open. The new number keeps an older flowd out: it would miss the
                    // items of new runs and the running runs.
                    upgrade_running_index(&db.open_tree(T_RUN_STATUS)?)?;
                    meta.insert(META_FORMAT, FORMAT.to_string().as_bytes())?;
                    meta.flush()?;
                    m.format = FORMAT;
                    layout::write_marker(root, &m)?;
                }
                m
            }
            None => {
                layout::check_no_meta(root, &found, !db_is_empty(&db)?)?;
                let m = init_meta(&meta, &Clock::system())?;
                layout::write_marker(root, &m)?;
                layout::restrict_permissions(root)?;
                m
            }
        };
        Self::assemble(db, Some(root.to_path_buf()), marker.store_id)
    }

    fn assemble(db: sled::Db, root: Option<PathBuf>, store_id: String) -> Result<SledStore> {
        let t = Trees::open(&db)?;
        Ok(SledStore {
            db,
            t,
            group: GroupFlush::default(),
            open: OpenRuns::default(),
            tx_time: TxTime::default(),
            root,
            store_id,
            clock: Clock::system(),
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn durable(&self) -> Result<()> {
        self.group.flush(|| {
            self.db.flush()?;
            Ok(())
        })
    }

    fn load_run(&self, id: RunId) -> Result<Option<Run>> {
        let k = keys::run_key(id);
        match self.t.runs.get(k)? {
            Some(v) => Ok(Some(self.with_item(decode_json(T_RUNS, &k, &v)?)?)),
            None => Ok(None),
        }
    }

    /// Puts the run's item (kept in `run_items`) back into a record read from `runs`.
    fn with_item(&self, mut run: Run) -> Result<Run> {
        if run.item.is_null() {
            let k = keys::run_key(run.id);
            if let Some(v) = self.t.run_items.get(k)? {
                run.item = decode_json(T_RUN_ITEMS, &k, &v)?;
            }
        }
        Ok(run)
    }

    /// Loads the run an index entry points at; a dangling entry is corruption.
    fn run_from_index(&self, tree: &'static str, key: &[u8]) -> Result<Run> {
        let id = keys::trailing_run_id(tree, key)?;
        self.load_run(id)?.ok_or_else(|| keys::corrupt_key(tree, key, &format!("points at missing run {id}")))
    }

    fn collect_runs(
        &self,
        tree: &'static str,
        iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        keep: impl Fn(&Run) -> bool,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        for item in iter {
            let (k, _) = item?;
            let run = self.run_from_index(tree, &k)?;
            if keep(&run) {
                out.push(run);
                if limit != 0 && out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn runs_with_status(&self, status: RunStatus) -> Result<Vec<Run>> {
        self.collect_runs(T_RUN_STATUS, self.t.run_status.scan_prefix([status.tag()]), |r| r.status == status, 0)
    }

    fn prune_seen(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        let entries = self.t.seen.iter().map(|e| e.map_err(StoreError::from));
        let doomed = retention::seen_keys_to_prune(T_SEEN, entries, policy, now)?;
        for chunk in doomed.chunks(PRUNE_CHUNK) {
            self.t.seen.transaction(|seen| {
                for k in chunk {
                    seen.remove(k.clone())?;
                }
                Ok(())
            })?;
        }
        Ok(doomed.len() as u64)
    }

    fn prune_runs(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        if policy.runs_max_age.is_none() && policy.runs_keep.is_none() {
            return Ok(0);
        }
        let mut finished: Vec<(RunId, u64)> = Vec::new();
        for status in [RunStatus::Succeeded, RunStatus::Dead] {
            for run in self.runs_with_status(status)? {
                finished.push((run.id, keys::millis(run.updated_at)));
            }
        }
        let doomed = retention::runs_to_prune(finished, policy, now);

        let trees = (&self.t.runs, &self.t.run_items, &self.t.run_status, &self.t.run_flow, &self.t.run_retry);
        let mut removed = 0;
        for chunk in doomed.chunks(PRUNE_CHUNK) {
            removed += trees.transaction(|(runs, items, status, flow, retry)| {
                let mut n = 0u64;
                for id in chunk {
                    let k = keys::run_key(*id);
                    let Some(v) = runs.get(k)? else { continue };
                    let run: Run = tx(decode_json(T_RUNS, &k, &v))?;
                    // Re-checked inside the transaction: the run may have
                    // changed since the scan.
                    if !run.status.is_final() {
                        continue;
                    }
                    runs.remove(&k)?;
                    items.remove(&k)?;
                    unindex_run(status, retry, run.id, run.status, run.next_retry_at)?;
                    flow.remove(keys::flow_index_key(&run.flow, run.id))?;
                    n += 1;
                }
                Ok(n)
            })?;
        }
        Ok(removed)
    }

    fn prune_webhooks(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        let Some(max_age) = policy.webhooks_max_age else {
            return Ok(0);
        };
        let cutoff = retention::cutoff_ms(now, max_age);
        let mut doomed = Vec::new();
        for item in self.t.webhooks.iter() {
            let (k, v) = item?;
            let ev: WebhookEvent = decode_json(T_WEBHOOKS, &k, &v)?;
            if ev.processed_at.is_some() && keys::millis(ev.received_at) < cutoff {
                doomed.push(k);
            }
        }
        for chunk in doomed.chunks(PRUNE_CHUNK) {
            self.t.webhooks.transaction(|w| {
                for k in chunk {
                    w.remove(k)?;
                }
                Ok(())
            })?;
        }
        Ok(doomed.len() as u64)
    }
}

fn open_sled(root: &Path) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(layout::db_dir(root, Backend::Sled))
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| map_open_error(root, e));
        match opened {
            Err(StoreError::Locked { .. }) if started.elapsed() < layout::LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn map_open_error(root: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked { path: root.to_path_buf() }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
            layout::damaged(root, format!("sled cannot read its database: {e}"))
        }
        other => StoreError::Db(other),
    }
}

/// Format 2 and before indexed `running` runs under `r`; format 3 under `p`, with `pending`.
fn upgrade_running_index(status: &Tree) -> Result<()> {
    let old: Vec<sled::IVec> = status.scan_prefix(b"r").keys().collect::<sled::Result<_>>()?;
    for chunk in old.chunks(PRUNE_CHUNK) {
        status.transaction(|t| {
            for k in chunk {
                let mut moved = k.to_vec();
                moved[0] = RunStatus::Running.tag();
                t.remove(k)?;
                t.insert(moved, &[])?;
            }
            Ok(())
        })?;
    }
    status.flush()?;
    Ok(())
}

/// `Ok(None)`: no meta at all. `Err(reason)`: meta present but unreadable.
fn read_meta(meta: &Tree) -> std::result::Result<Option<Marker>, String> {
    let get = |k: &[u8]| meta.get(k).map_err(|e| format!("cannot read meta: {e}"));
    let (format, id, created) = (get(META_FORMAT)?, get(META_STORE_ID)?, get(META_CREATED_AT)?);
    layout::marker_from_meta(Backend::Sled, format.as_deref(), id.as_deref(), created.as_deref())
}

fn init_meta(meta: &Tree, clock: &Clock) -> Result<Marker> {
    let m = Marker {
        engine: Backend::Sled,
        format: FORMAT,
        store_id: uuid::Uuid::new_v4().to_string(),
        created_at: clock.now(),
        generation: 0,
    };
    meta.transaction(|t| {
        t.insert(META_FORMAT, m.format.to_string().as_bytes())?;
        t.insert(META_STORE_ID, m.store_id.as_bytes())?;
        t.insert(META_CREATED_AT, m.created_at.to_rfc3339().as_bytes())?;
        Ok(())
    })
    .map_err(|e: sled::transaction::TransactionError<StoreError>| StoreError::from(e))?;
    meta.flush()?;
    Ok(m)
}

fn db_is_empty(db: &sled::Db) -> Result<bool> {
    for name in db.tree_names() {
        if !db.open_tree(&name)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The trees a new run is written to, inside a transaction.
#[derive(Clone, Copy)]
struct NewRunTrees<'a> {
    runs: &'a TransactionalTree,
    items: &'a TransactionalTree,
    status: &'a TransactionalTree,
    flow: &'a TransactionalTree,
    /// Records written by this transaction, for [`OpenRuns`] once it has committed.
    written: &'a Written,
}

/// Records a transaction wrote, kept for [`OpenRuns`] only once it commits (a retried
/// closure starts the list again), so that no entry names a run that was never written.
#[derive(Default)]
struct Written(std::cell::RefCell<Vec<(sled::IVec, Run)>>);

impl Written {
    fn restart(&self) {
        self.0.borrow_mut().clear();
    }
    fn push(&self, bytes: sled::IVec, run: Run) {
        self.0.borrow_mut().push((bytes, run));
    }
    fn keep_in(self, open: &OpenRuns) {
        for (bytes, run) in self.0.into_inner() {
            open.keep(bytes, run);
        }
    }
}

/// A poll's new run worked out before its transaction: id (from sled's generator, like
/// [`insert_new_run`]), record, item and index keys.
struct NewRunPrepared {
    key: [u8; 8],
    record: sled::IVec,
    item: sled::IVec,
    status_key: [u8; 9],
    flow_key: Vec<u8>,
    run: Run,
}

impl NewRunPrepared {
    fn new(db: &sled::Db, new: &NewRun, trigger: &str, dedupe_key: &str, now: DateTime<Utc>) -> Result<Self> {
        if new.flow.is_empty() {
            return Err(StoreError::Invalid("a run needs a flow name".into()));
        }
        let id = RunId(db.generate_id()?);
        let run = transitions::new_run(id, new, Some(trigger), Some(dedupe_key), now);
        Ok(NewRunPrepared {
            key: keys::run_key(id),
            record: sled::IVec::from(encode_json(&run)?),
            item: sled::IVec::from(encode_json(&new.item)?),
            status_key: keys::status_index_key(run.status.tag(), id),
            flow_key: keys::flow_index_key(&run.flow, id),
            run,
        })
    }

    fn write(
        &self,
        runs: &TransactionalTree,
        items: &TransactionalTree,
        status: &TransactionalTree,
        flow: &TransactionalTree,
    ) -> TxResult<()> {
        runs.insert(&self.key, self.record.clone())?;
        items.insert(&self.key, self.item.clone())?;
        status.insert(&self.status_key, &[])?;
        flow.insert(self.flow_key.as_slice(), &[])?;
        Ok(())
    }
}

/// Inserts a new run and its indexes; the id comes from sled's generator.
fn insert_new_run(
    t: NewRunTrees<'_>,
    new: &NewRun,
    trigger: Option<&str>,
    dedupe_key: Option<&str>,
    now: DateTime<Utc>,
) -> TxResult<RunId> {
    if new.flow.is_empty() {
        return abort(StoreError::Invalid("a run needs a flow name".into()));
    }
    let id = RunId(t.runs.generate_id().map_err(|e| ConflictableTransactionError::Abort(e.into()))?);
    let run = transitions::new_run(id, new, trigger, dedupe_key, now);
    let k = keys::run_key(id);
    let bytes = sled::IVec::from(tx(encode_json(&run))?);
    t.runs.insert(&k, bytes.clone())?;
    t.items.insert(&k, tx(encode_json(&new.item))?)?;
    t.status.insert(&keys::status_index_key(run.status.tag(), id), &[])?;
    t.flow.insert(keys::flow_index_key(&run.flow, id), &[])?;
    // The engine's first write to the run (usually within milliseconds) finds it decoded.
    t.written.push(bytes, run);
    Ok(id)
}

fn unindex_run(
    status: &TransactionalTree,
    retry: &TransactionalTree,
    id: RunId,
    old_status: RunStatus,
    old_retry: Option<DateTime<Utc>>,
) -> TxResult<()> {
    status.remove(&keys::status_index_key(old_status.tag(), id))?;
    if let Some(at) = old_retry {
        retry.remove(keys::time_key(at, &keys::run_key(id)))?;
    }
    Ok(())
}

fn index_run(status: &TransactionalTree, retry: &TransactionalTree, run: &Run) -> TxResult<()> {
    status.insert(&keys::status_index_key(run.status.tag(), run.id), &[])?;
    if let (RunStatus::Failed, Some(at)) = (run.status, run.next_retry_at) {
        retry.insert(keys::time_key(at, &keys::run_key(run.id)), &[])?;
    }
    Ok(())
}

/// One run's update worked out from its cached record outside the transaction; used only
/// if the stored record is still `old` when the transaction runs.
struct Prepared {
    old: sled::IVec,
    new: sled::IVec,
    run: Run,
    /// The status and retry time the index entries were made for, when they change.
    reindex: Option<(RunStatus, Option<DateTime<Utc>>)>,
}

impl Prepared {
    /// `None` when the record is not cached or a change is refused: the transaction then
    /// takes the usual path, which reports the refusal.
    fn new(open: &OpenRuns, id: RunId, changes: &[RunChange], now: DateTime<Utc>) -> Option<Prepared> {
        let (old, mut run) = open.take_any(id)?;
        let (old_status, old_retry) = (run.status, run.next_retry_at);
        for change in changes {
            transitions::apply(&mut run, change, now).ok()?;
        }
        let new = sled::IVec::from(encode_json(&run).ok()?);
        let reindex =
            ((old_status.tag(), old_retry) != (run.status.tag(), run.next_retry_at)).then_some((old_status, old_retry));
        Some(Prepared { old, new, run, reindex })
    }
}

/// Applies `changes` to the run `id` inside a transaction over
/// (runs, run_status, run_retry); returns the run as written and its encoding.
fn update_run_tx(
    runs: &TransactionalTree,
    status: &TransactionalTree,
    retry: &TransactionalTree,
    open: &OpenRuns,
    id: RunId,
    changes: &[RunChange],
    now: DateTime<Utc>,
) -> TxResult<(Run, sled::IVec)> {
    let k = keys::run_key(id);
    let Some(v) = runs.get(k)? else {
        return abort(StoreError::RunNotFound(id));
    };
    let mut run: Run = match open.take(id, &v) {
        Some(run) => run,
        None => tx(decode_json(T_RUNS, &k, &v))?,
    };
    // Only what the indexes key on is kept of the old record, not a copy of it.
    let (old_status, old_retry) = (run.status, run.next_retry_at);
    for change in changes {
        tx(transitions::apply(&mut run, change, now))?;
    }
    // Pending → running keeps its index entry (one tag for both).
    if (old_status.tag(), old_retry) != (run.status.tag(), run.next_retry_at) {
        unindex_run(status, retry, run.id, old_status, old_retry)?;
        index_run(status, retry, &run)?;
    }
    let bytes = sled::IVec::from(tx(encode_json(&run))?);
    runs.insert(&k, bytes.clone())?;
    Ok((run, bytes))
}

impl Store for SledStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> Result<Vec<bool>> {
        let prefix = keys::str_prefix(trigger);
        let mut k = prefix.clone();
        keys.iter()
            .map(|key| {
                k.truncate(prefix.len());
                k.extend_from_slice(key.as_bytes());
                Ok(!self.t.seen.contains_key(&k)?)
            })
            .collect()
    }

    fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>> {
        let k = keys::seen_key(trigger, key);
        match self.t.seen.get(&k)? {
            Some(v) => Ok(Some(keys::time_from(T_SEEN, &k, &v)?)),
            None => Ok(None),
        }
    }

    fn trigger_state(&self, trigger: &str) -> Result<Option<Value>> {
        match self.t.triggers.get(trigger)? {
            Some(v) => Ok(Some(decode_json(T_TRIGGERS, trigger.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn commit_poll(&self, commit: &PollCommit) -> Result<PollOutcome> {
        commit.check()?;
        let now = self.now();
        let state = commit.state.as_ref().map(encode_json).transpose()?;
        let seen_value = keys::time_value(now);
        // Keys, ids and encodings are worked out before the transaction: it holds sled's
        // global lock, which every other write and read waits for.
        let mut prepared = Vec::with_capacity(commit.items.len());
        for item in &commit.items {
            let run = match &item.run {
                Some(new) => Some(NewRunPrepared::new(&self.db, new, &commit.trigger, &item.key, now)?),
                None => None,
            };
            prepared.push((keys::seen_key(&commit.trigger, &item.key), run));
        }
        let trees =
            (&self.t.seen, &self.t.triggers, &self.t.runs, &self.t.run_items, &self.t.run_status, &self.t.run_flow);
        let timer = self.tx_time.polls.start();
        let outcome = trees.transaction(|(seen, triggers, runs, items, status, flow)| {
            timer.entered();
            if let Some(state) = &state {
                triggers.insert(commit.trigger.as_bytes(), state.as_slice())?;
            }
            let mut outcome = PollOutcome::default();
            for (item, (seen_key, run)) in commit.items.iter().zip(&prepared) {
                if seen.get(seen_key)?.is_some() {
                    outcome.already_seen.push(item.key.clone());
                    continue;
                }
                seen.insert(seen_key.as_slice(), &seen_value)?;
                if let Some(run) = run {
                    run.write(runs, items, status, flow)?;
                    outcome.created.push((item.key.clone(), run.run.id));
                }
            }
            Ok(outcome)
        })?;
        drop(timer);
        // The engine's first write to each new run (usually within milliseconds) finds it
        // decoded. Runs of already-seen keys were never written; their ids stay unused.
        let created: HashSet<RunId> = outcome.created.iter().map(|(_, id)| *id).collect();
        for (_, run) in prepared {
            if let Some(p) = run.filter(|p| created.contains(&p.run.id)) {
                self.open.keep(p.record, p.run);
            }
        }
        self.durable()?;
        Ok(outcome)
    }

    fn reset_trigger(&self, trigger: &str) -> Result<u64> {
        let doomed: Vec<sled::IVec> =
            self.t.seen.scan_prefix(keys::str_prefix(trigger)).keys().collect::<sled::Result<_>>()?;
        for chunk in doomed.chunks(PRUNE_CHUNK) {
            self.t.seen.transaction(|seen| {
                for k in chunk {
                    seen.remove(k)?;
                }
                Ok(())
            })?;
        }
        self.t.triggers.transaction(|t| {
            t.remove(trigger.as_bytes())?;
            Ok(())
        })?;
        self.durable()?;
        Ok(doomed.len() as u64)
    }

    fn create_run(&self, new: &NewRun) -> Result<RunId> {
        let now = self.now();
        let trees = (&self.t.runs, &self.t.run_items, &self.t.run_status, &self.t.run_flow);
        let written = Written::default();
        let id = trees.transaction(|(runs, items, status, flow)| {
            written.restart();
            insert_new_run(NewRunTrees { runs, items, status, flow, written: &written }, new, None, None, now)
        })?;
        written.keep_in(&self.open);
        self.durable()?;
        Ok(id)
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.load_run(id)
    }

    fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        if f.has_scan_conditions() {
            return f.scan(|page| self.list_runs(page));
        }
        let before = f.before.map(keys::run_key);
        if let Some(status) = f.status {
            let tag = [status.tag()];
            let iter = match before {
                Some(b) => self
                    .t
                    .run_status
                    .range(tag.to_vec()..keys::status_index_key(tag[0], RunId(u64::from_be_bytes(b))).to_vec()),
                None => self.t.run_status.scan_prefix(tag),
            };
            let flow = f.flow.as_deref();
            return self.collect_runs(
                T_RUN_STATUS,
                iter.rev(),
                |r| r.status == status && flow.is_none_or(|fl| r.flow == fl),
                f.limit,
            );
        }
        if let Some(flow) = &f.flow {
            let prefix = keys::str_prefix(flow);
            let iter = match before {
                Some(b) => {
                    let mut end = prefix.clone();
                    end.extend_from_slice(&b);
                    self.t.run_flow.range(prefix..end)
                }
                None => self.t.run_flow.scan_prefix(prefix),
            };
            return self.collect_runs(T_RUN_FLOW, iter.rev(), |r| &r.flow == flow, f.limit);
        }
        let iter = match before {
            Some(b) => self.t.runs.range(..b),
            None => self.t.runs.iter(),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            let (k, v) = item?;
            out.push(self.with_item(decode_json(T_RUNS, &k, &v)?)?);
            if f.limit != 0 && out.len() >= f.limit {
                break;
            }
        }
        Ok(out)
    }

    fn update_run(&self, id: RunId, changes: &[RunChange]) -> Result<Run> {
        let now = self.now();
        let trees = (&self.t.runs, &self.t.run_status, &self.t.run_retry);
        let (run, bytes) = trees
            .transaction(|(runs, status, retry)| update_run_tx(runs, status, retry, &self.open, id, changes, now))?;
        self.open.keep(bytes, run.clone());
        self.durable()?;
        self.with_item(run)
    }

    fn update_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let trees = (&self.t.runs, &self.t.run_status, &self.t.run_retry);
        // Worked out before the transaction where the run's record is cached: sled runs
        // transactions one at a time under a global lock (reads wait for it too), so only
        // the check and the writes are left inside.
        let mut prepared: Vec<Option<Prepared>> =
            batch.iter().map(|(id, changes)| Prepared::new(&self.open, *id, changes, now)).collect();
        let written = Written::default();
        let fast = std::cell::RefCell::new(Vec::new());
        let timer = self.tx_time.updates.start();
        let results = trees.transaction(|(runs, status, retry)| {
            timer.entered();
            written.restart();
            fast.borrow_mut().clear();
            let mut out = Vec::with_capacity(batch.len());
            for (i, (id, changes)) in batch.iter().enumerate() {
                if let Some(p) = &prepared[i] {
                    let k = keys::run_key(*id);
                    if runs.get(k)?.is_some_and(|stored| stored == p.old) {
                        if let Some((old_status, old_retry)) = p.reindex {
                            unindex_run(status, retry, *id, old_status, old_retry)?;
                            index_run(status, retry, &p.run)?;
                        }
                        runs.insert(&k, p.new.clone())?;
                        fast.borrow_mut().push(i);
                        out.push(Ok(()));
                        continue;
                    }
                }
                // A refused change leaves its own run untouched and the others committed.
                out.push(match update_run_tx(runs, status, retry, &self.open, *id, changes, now) {
                    Ok((run, bytes)) => {
                        written.push(bytes, run);
                        Ok(())
                    }
                    Err(ConflictableTransactionError::Abort(e)) => Err(e),
                    Err(other) => return Err(other),
                });
            }
            Ok(out)
        })?;
        drop(timer);
        written.keep_in(&self.open);
        for i in fast.into_inner() {
            if let Some(p) = prepared[i].take() {
                self.open.keep(p.new, p.run);
            }
        }
        self.durable()?;
        Ok(results)
    }

    fn list_resumable(&self) -> Result<Vec<Run>> {
        // One tag holds both; keys sort by run id within it.
        self.collect_runs(
            T_RUN_STATUS,
            self.t.run_status.scan_prefix([RunStatus::Pending.tag()]),
            |r| matches!(r.status, RunStatus::Pending | RunStatus::Running),
            0,
        )
    }

    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Run>> {
        // Every key at or before `now` sorts below `now ms + 1`.
        let end = (keys::millis(now).saturating_add(1)).to_be_bytes();
        self.collect_runs(
            T_RUN_RETRY,
            self.t.run_retry.range(..end),
            |r| r.status == RunStatus::Failed && r.next_retry_at.is_some_and(|at| at <= now),
            limit,
        )
    }

    fn list_held(&self, flow: &str) -> Result<Vec<Run>> {
        let mut runs = self.runs_with_status(RunStatus::Held)?;
        runs.retain(|r| r.flow == flow);
        Ok(runs)
    }

    fn release_held(&self, flow: &str) -> Result<Vec<RunId>> {
        let held: Vec<RunId> = self.list_held(flow)?.iter().map(|r| r.id).collect();
        if held.is_empty() {
            return Ok(held);
        }
        let now = self.now();
        let trees = (&self.t.runs, &self.t.run_status, &self.t.run_retry);
        let released = trees.transaction(|(runs, status, retry)| {
            let mut released = Vec::with_capacity(held.len());
            for id in &held {
                // Re-read inside the transaction: only runs still held move.
                let k = keys::run_key(*id);
                let Some(v) = runs.get(k)? else { continue };
                let run: Run = tx(decode_json(T_RUNS, &k, &v))?;
                if run.status != RunStatus::Held {
                    continue;
                }
                let change = RunChange::Status { status: RunStatus::Pending, error: None };
                update_run_tx(runs, status, retry, &self.open, *id, &[change], now)?;
                released.push(*id);
            }
            Ok(released)
        })?;
        self.durable()?;
        Ok(released)
    }

    fn get_tokens(&self, account: &str) -> Result<Option<Value>> {
        match self.t.tokens.get(account)? {
            Some(v) => Ok(Some(decode_json(T_TOKENS, account.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn put_tokens(&self, account: &str, tokens: &Value) -> Result<()> {
        let v = encode_json(tokens)?;
        self.t.tokens.transaction(|t| {
            t.insert(account.as_bytes(), v.as_slice())?;
            Ok(())
        })?;
        // A refreshed token pair replaces the old refresh token at GHL: losing
        // it on a crash would lock the account out.
        self.durable()
    }

    fn delete_tokens(&self, account: &str) -> Result<bool> {
        let existed = self.t.tokens.transaction(|t| Ok(t.remove(account.as_bytes())?.is_some()))?;
        self.durable()?;
        Ok(existed)
    }

    fn put_webhook_event(&self, id: &str, payload: &Value) -> Result<bool> {
        if id.is_empty() {
            return Err(StoreError::Invalid("a webhook event needs an id".into()));
        }
        let ev =
            WebhookEvent { id: id.to_string(), payload: payload.clone(), received_at: self.now(), processed_at: None };
        let v = encode_json(&ev)?;
        let queue_key = keys::time_key(ev.received_at, id.as_bytes());
        let trees = (&self.t.webhooks, &self.t.webhook_queue);
        let inserted = trees.transaction(|(hooks, queue)| {
            if hooks.get(id.as_bytes())?.is_some() {
                return Ok(false);
            }
            hooks.insert(id.as_bytes(), v.as_slice())?;
            queue.insert(queue_key.as_slice(), &[])?;
            Ok(true)
        })?;
        if inserted {
            self.durable()?;
        }
        Ok(inserted)
    }

    fn webhook_seen(&self, id: &str) -> Result<bool> {
        Ok(self.t.webhooks.contains_key(id)?)
    }

    fn get_webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        match self.t.webhooks.get(id)? {
            Some(v) => Ok(Some(decode_json(T_WEBHOOKS, id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn list_unprocessed_webhooks(&self, limit: usize) -> Result<Vec<WebhookEvent>> {
        let mut out = Vec::new();
        for item in self.t.webhook_queue.iter() {
            let (k, _) = item?;
            let id = k.get(8..).ok_or_else(|| keys::corrupt_key(T_WEBHOOK_QUEUE, &k, "short key"))?;
            let id = std::str::from_utf8(id).map_err(|_| keys::corrupt_key(T_WEBHOOK_QUEUE, &k, "id is not utf-8"))?;
            let ev = self
                .get_webhook_event(id)?
                .ok_or_else(|| keys::corrupt_key(T_WEBHOOK_QUEUE, &k, "points at a missing event"))?;
            out.push(ev);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn complete_webhook_event(&self, id: &str, new_runs: &[NewRun]) -> Result<Vec<RunId>> {
        let now = self.now();
        let trees = (
            &self.t.webhooks,
            &self.t.webhook_queue,
            &self.t.runs,
            &self.t.run_items,
            &self.t.run_status,
            &self.t.run_flow,
        );
        let written = Written::default();
        let ids = trees.transaction(|(hooks, queue, runs, items, status, flow)| {
            written.restart();
            let Some(v) = hooks.get(id.as_bytes())? else {
                return abort(StoreError::Invalid(format!("webhook event {id:?} was never stored")));
            };
            let mut ev: WebhookEvent = tx(decode_json(T_WEBHOOKS, id.as_bytes(), &v))?;
            if ev.processed_at.is_some() {
                return abort(StoreError::Conflict(format!("webhook event {id:?} was already processed")));
            }
            ev.processed_at = Some(now);
            hooks.insert(id.as_bytes(), tx(encode_json(&ev))?)?;
            queue.remove(keys::time_key(ev.received_at, id.as_bytes()))?;
            let mut ids = Vec::with_capacity(new_runs.len());
            for new in new_runs {
                ids.push(insert_new_run(
                    NewRunTrees { runs, items, status, flow, written: &written },
                    new,
                    None,
                    None,
                    now,
                )?);
            }
            Ok(ids)
        })?;
        written.keep_in(&self.open);
        self.durable()?;
        Ok(ids)
    }

    fn prune(&self, policy: &Retention) -> Result<PruneStats> {
        let now = self.now();
        let stats = PruneStats {
            seen_removed: self.prune_seen(policy, now)?,
            runs_removed: self.prune_runs(policy, now)?,
            webhooks_removed: self.prune_webhooks(policy, now)?,
        };
        self.durable()?;
        Ok(stats)
    }

    fn flush(&self) -> Result<()> {
        self.durable()
    }

    /// Poll commits' and run-update batches' hold on sled's global transaction lock.
    fn transaction_time(&self) -> TransactionTime {
        self.tx_time.read(&self.group)
    }

    fn backend(&self) -> Backend {
        Backend::Sled
    }

    /// sled keeps the first I/O error of its log writer and returns it from every later
    /// call, a transaction's or a flush's: a flush asks for it (and costs nothing when every
    /// change was flushed already, which every changing method does).
    fn fault(&self) -> Option<String> {
        if let Some(fault) = self.group.fault.get() {
            return Some(fault.clone());
        }
        let e = StoreError::from(self.db.flush().err()?);
        self.group.record_fault(&e);
        Some(e.to_string())
    }
}
