//! [`Store`] on fjall 2, an LSM tree with a write-ahead journal.
//!
//! The data layout is [`crate::sled_store`]'s, one fjall partition per sled tree (same
//! names, keys and values), plus one `meta` key: `next_run_id`, the lowest run id never
//! handed out (sled keeps its id generator itself).
//!
//! # Why a second backend
//!
//! sled 0.34 copies a B-tree node on every insert and runs every transaction under one
//! process-wide lock that its reads wait for too: at 9 inserts per one-step run that is
//! ≈ 107 µs of store per item, more than half of what 10,000 items/s leaves on two cores.
//! fjall appends a batch to its journal and to in-memory tables (≈ 1 µs an insert), and its
//! reads never wait for a writer.
//!
//! # Transactions
//!
//! fjall's write batches are atomic across partitions (one journal entry) but have no
//! reads. A write here is therefore: take the store's writer lock, read what the change
//! depends on (reads see the keyspace plus this transaction's own staged writes, see
//! [`Txn`]), stage the writes in one batch, commit the batch, release the lock. Every write
//! goes through that lock, so a transaction's reads cannot change before its commit.
//!
//! Reads outside a transaction that look at more than one key (a run and its item, an
//! index and the runs it names) read one snapshot, so a batch being applied is seen
//! whole or not at all.
//!
//! # Durability
//!
//! A committed batch is in the journal's OS buffers (a SIGKILL keeps it); every changing
//! method then waits for `fdatasync` of the journal, shared by every caller waiting (the
//! same group commit as sled's, [`GroupFlush`]), before it returns.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use fjall::{Batch, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode, Slice};
use serde_json::Value;

use crate::clock::Clock;
use crate::commit::{GroupFlush, TransactionTime, TxCounter, TxTime};
use crate::error::{Result, StoreError};
use crate::keys::{self, decode_json, encode_json};
use crate::layout::{self, Backend, Marker, FORMAT, META_CREATED_AT, META_FORMAT, META_STORE_ID};
use crate::model::*;
use crate::open_runs::OpenRuns;
use crate::retention;
use crate::transitions;
use crate::Store;

const META_NEXT_RUN_ID: &[u8] = b"next_run_id";
/// The store's commit generation (see [`FjallStore::checkpoint`]), big-endian u64.
const META_GENERATION: &[u8] = b"generation";

/// How often, at most, a store that is being written moves its commit generation on and
/// records it in its marker: a journal that loses more than the last interval's writes is
/// caught at the next open. Each checkpoint costs a journal sync and a marker rewrite.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Deletions per batch when pruning or resetting: bounds how long one batch holds the
/// writer lock.
const CHUNK: usize = 512;

/// Records per batch when importing a store.
const IMPORT_CHUNK: usize = 10_000;

/// Block cache: flowd's working set (recent seen keys, open runs) is small, and the runs
/// being executed are read from the in-memory tables or the engine's own records, not
/// from blocks. Filled only as data is read back from disk (polls' seen checks on old
/// keys, `/api/runs`).
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// In-memory tables across all partitions before the largest is written out. A run is
/// written a few times (created, started, each step, ended), so most of a burst's writes
/// replace each other in memory; the journal keeps them durable meanwhile.
const WRITE_BUFFER_BYTES: u64 = 12 * 1024 * 1024;
/// One partition's in-memory table before it is sealed and written out.
const MEMTABLE_BYTES: u32 = 4 * 1024 * 1024;
/// Journals kept before the oldest one's tables are forced out: fjall's minimum is 24 MiB.
/// On disk; it bounds how much a restart replays, not memory.
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The partitions, in the order of [`T`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum T {
    Meta,
    Seen,
    Triggers,
    Runs,
    RunItems,
    RunStatus,
    RunFlow,
    RunRetry,
    Tokens,
    Webhooks,
    WebhookQueue,
}

const TABLES: [T; 11] = [
    T::Meta,
    T::Seen,
    T::Triggers,
    T::Runs,
    T::RunItems,
    T::RunStatus,
    T::RunFlow,
    T::RunRetry,
    T::Tokens,
    T::Webhooks,
    T::WebhookQueue,
];

impl T {
    /// The sled tree's name: the same in error messages whichever backend holds the data.
    fn name(self) -> &'static str {
        match self {
            T::Meta => "meta",
            T::Seen => "seen",
            T::Triggers => "triggers",
            T::Runs => "runs",
            T::RunItems => "run_items",
            T::RunStatus => "run_status",
            T::RunFlow => "run_flow",
            T::RunRetry => "run_retry",
            T::Tokens => "tokens",
            T::Webhooks => "webhooks",
            T::WebhookQueue => "webhook_queue",
        }
    }
}

struct Parts([PartitionHandle; 11]);

struct Checkpoint {
    marker: Marker,
    at: std::time::Instant,
}

impl Parts {
    fn open(ks: &Keyspace) -> Result<Parts> {
        let mut handles = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            handles.push(
                ks.open_partition(t.name(), PartitionCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))?,
            );
        }
        let handles: [PartitionHandle; 11] =
            handles.try_into().map_err(|_| StoreError::Invalid("partition count".into()))?;
        Ok(Parts(handles))
    }

    fn get(&self, t: T) -> &PartitionHandle {
        &self.0[t as usize]
    }
}

/// A write transaction (see the module docs): run by [`FjallStore::write`] under the
/// writer lock; its batch is committed only if the closure returns `Ok`.
struct Txn<'a> {
    parts: &'a Parts,
    batch: Batch,
    /// This transaction's writes to the partitions it also reads (`None`: removed).
    staged: [HashMap<Slice, Option<Slice>, foldhash::fast::RandomState>; 11],
}

impl Txn<'_> {
    fn get(&self, t: T, key: &[u8]) -> Result<Option<Slice>> {
        if let Some(v) = self.staged[t as usize].get(key) {
            return Ok(v.clone());
        }
        Ok(self.parts.get(t).get(key)?)
    }

    /// Index and item partitions are written, never read, inside a transaction: their
    /// writes skip the staging map. So do seen keys: the one transaction that reads them
    /// ([`Store::commit_poll`]) refuses a key twice in one commit before it starts, so it
    /// never reads a key it wrote (and staging 500 keys a page was a third of its cost).
    fn read_back(t: T) -> bool {
        !matches!(t, T::Seen | T::RunItems | T::RunStatus | T::RunFlow | T::RunRetry | T::WebhookQueue)
    }

    fn insert(&mut self, t: T, key: impl Into<Slice>, value: impl Into<Slice>) {
        let (key, value) = (key.into(), value.into());
        if Self::read_back(t) {
            self.staged[t as usize].insert(key.clone(), Some(value.clone()));
        }
        self.batch.insert(self.parts.get(t), key, value);
    }

    fn remove(&mut self, t: T, key: impl Into<Slice>) {
        let key = key.into();
        if Self::read_back(t) {
            self.staged[t as usize].insert(key.clone(), None);
        }
        self.batch.remove(self.parts.get(t), key);
    }
}

/// Removes a temporary store's directory once everything else is dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct FjallStore {
    ks: Keyspace,
    p: Parts,
    /// Held by every write transaction, from its first read to its commit.
    writer: Mutex<()>,
    group: GroupFlush,
    open: OpenRuns<Slice>,
    next_id: AtomicU64,
    /// The `next_run_id` last committed to `meta` (0: none since open).
    recorded_floor: AtomicU64,
    tx_time: TxTime,
    root: Option<PathBuf>,
    store_id: String,
    clock: Clock,
    /// The store's directory (also for a temporary store, whose `root` is `None`).
    dir: PathBuf,
    /// The marker as last written, with the generation it records.
    checkpoint: Mutex<Checkpoint>,
    /// Something was made durable since the last checkpoint.
    dirty: AtomicBool,
    /// The flock on `LOCK`, released after the keyspace has been dropped (fields drop in
    /// order).
    _lock: File,
    _temp: Option<TempDir>,
}

impl Drop for FjallStore {
    /// A store closed after writes records its last generation, so a journal cut after a
    /// clean stop is caught whole.
    fn drop(&mut self) {
        if self.dirty.load(Ordering::Acquire) {
            let cp = self.checkpoint.get_mut().unwrap_or_else(PoisonError::into_inner);
            let mut cp = std::mem::replace(cp, Checkpoint { marker: cp.marker.clone(), at: cp.at });
            let _ = self.checkpoint(&mut cp);
        }
    }
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("root", &self.root).field("store_id", &self.store_id).finish()
    }
}

impl FjallStore {
    /// Opens the fjall store at `path`, which must have been created before.
    pub fn open(path: impl AsRef<Path>) -> Result<FjallStore> {
        Self::open_at(path.as_ref(), Create::No)
    }

    /// Creates a fjall store at `path` if there is none (the directory is absent or empty),
    /// else opens it; damage is reported as by [`FjallStore::open`].
    pub fn create_or_open(path: impl AsRef<Path>) -> Result<FjallStore> {
        Self::open_at(path.as_ref(), Create::Staged)
    }

    /// A store in a fresh directory under the system's temporary directory, removed on
    /// drop: the real implementation, for tests.
    pub fn temporary() -> Result<FjallStore> {
        let dir = std::env::temp_dir().join(format!("flowd-store-{}", uuid::Uuid::new_v4()));
        let mut s = Self::open_at(&dir, Create::InPlace)?;
        s._temp = Some(TempDir(dir));
        s.root = None;
        Ok(s)
    }

    /// Replaces the clock (tests age records with it).
    pub fn with_clock(mut self, clock: Clock) -> FjallStore {
        self.clock = clock;
        self
    }

    pub fn path(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn open_at(root: &Path, create: Create) -> Result<FjallStore> {
        let found = layout::prepare(root, create != Create::No, Backend::Fjall)?;
        let lock = lock(root)?;
        if create == Create::Staged && found.marker.is_none() && !layout::db_has_data_file(root, Backend::Fjall)? {
            create_keyspace(root)?;
        }
        if create != Create::InPlace {
            check_partitions(root)?;
        }
        let ks = open_keyspace(root)?;
        let p = Parts::open(&ks)?;
        layout::restrict_permissions(root)?;

        let marker = match read_meta(p.get(T::Meta)).map_err(|r| layout::damaged(root, r))? {
            Some(mut m) => {
                m.generation = read_generation(p.get(T::Meta)).map_err(|r| layout::damaged(root, r))?;
                layout::check_meta(root, &found, &m, &[FORMAT])?;
                layout::check_generation(root, &found, m.generation)?;
                m
            }
            None => {
                layout::check_no_meta(root, &found, !data_is_empty(&p)?)?;
                let m = init_meta(&ks, p.get(T::Meta), &Clock::system())?;
                layout::write_marker(root, &m)?;
                layout::restrict_permissions(root)?;
                m
            }
        };
        let next_id = first_free_run_id(&p)?;
        Ok(FjallStore {
            ks,
            p,
            writer: Mutex::new(()),
            group: GroupFlush::default(),
            open: OpenRuns::default(),
            next_id: AtomicU64::new(next_id),
            recorded_floor: AtomicU64::new(0),
            tx_time: TxTime::default(),
            root: Some(root.to_path_buf()),
            store_id: marker.store_id.clone(),
            clock: Clock::system(),
            dir: root.to_path_buf(),
            checkpoint: Mutex::new(Checkpoint { marker, at: std::time::Instant::now() }),
            dirty: AtomicBool::new(false),
            _lock: lock,
            _temp: None,
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn durable(&self) -> Result<()> {
        self.group.flush(|| Ok(self.ks.persist(PersistMode::SyncData)?))?;
        self.dirty.store(true, Ordering::Release);
        // One caller at a time moves the generation on; the others do not wait for it.
        if let Ok(mut cp) = self.checkpoint.try_lock() {
            if cp.at.elapsed() >= CHECKPOINT_EVERY {
                // What the caller asked for is durable already; the checkpoint is evidence for
                // the next open, and one that fails is tried again with the next write.
                let _ = self.checkpoint(&mut cp);
            }
        }
        Ok(())
    }

    /// Moves the commit generation on: records it in `meta`, makes everything up to it
    /// durable, then names it in the marker. The marker never names a generation the
    /// database may not have (a crash between the two leaves the database one ahead, which
    /// opens), so a database found behind its marker lost durable writes (see
    /// [`layout::check_generation`]).
    fn checkpoint(&self, cp: &mut Checkpoint) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        let generation = cp.marker.generation + 1;
        let done = (|| {
            self.write(None, |tx| {
                tx.batch.insert(tx.parts.get(T::Meta), META_GENERATION, Slice::from(&generation.to_be_bytes()[..]));
                Ok(())
            })?;
            self.ks.persist(PersistMode::SyncData)?;
            let marker = Marker { generation, ..cp.marker.clone() };
            layout::write_marker(&self.dir, &marker)?;
            cp.marker = marker;
            Ok(())
        })();
        cp.at = std::time::Instant::now();
        if done.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        done
    }

    fn new_run_id(&self) -> RunId {
        RunId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `f` as a write transaction (see the module docs) and commits what it staged
    /// if it returns `Ok`; the caller then makes it durable.
    fn write<R>(&self, timer: Option<&TxCounter>, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let timer = timer.map(TxCounter::start);
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = &timer {
            t.entered();
        }
        let mut txn = Txn { parts: &self.p, batch: self.ks.batch(), staged: Default::default() };
        let out = f(&mut txn)?;
        // Ids handed out so far are never reused, even if their runs are pruned: the floor
        // goes with the first commit after it moved (not with every batch).
        let floor = self.next_id.load(Ordering::Relaxed);
        let floor_moved = floor > self.recorded_floor.load(Ordering::Relaxed);
        if floor_moved {
            txn.batch.insert(self.p.get(T::Meta), META_NEXT_RUN_ID, Slice::from(&floor.to_be_bytes()[..]));
        }
        if !txn.batch.is_empty() {
            txn.batch.commit().map_err(|e| {
                let e = StoreError::from(e);
                self.group.record_fault(&e);
                e
            })?;
            if floor_moved {
                self.recorded_floor.store(floor, Ordering::Relaxed);
            }
        }
        Ok(out)
    }

    /// Writes `entries` into the partition named like the sled tree `tree`, in batches, for
    /// [`crate::migrate`]; returns how many. The caller makes them durable.
    pub(crate) fn import(&self, tree: &str, entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Result<u64> {
        let t = TABLES
            .into_iter()
            .find(|t| t.name() == tree && *t != T::Meta)
            .ok_or_else(|| StoreError::Invalid(format!("no partition for tree {tree:?}")))?;
        let mut n = 0u64;
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            chunk.clear();
            for entry in entries.by_ref().take(IMPORT_CHUNK) {
                chunk.push(entry?);
            }
            self.write(None, |tx| {
                for (k, v) in &chunk {
                    tx.batch.insert(tx.parts.get(t), k.as_slice(), v.as_slice());
                }
                Ok(())
            })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// Never hands out a run id below `floor` (the ids of an imported store).
    pub(crate) fn raise_run_id_floor(&self, floor: u64) -> Result<()> {
        self.next_id.fetch_max(floor, Ordering::Relaxed);
        // A write with nothing else in it still records a floor that moved.
        self.write(None, |_| Ok(()))?;
        self.durable()
    }

    /// Whether the store holds no data at all (only its meta records).
    pub(crate) fn is_empty(&self) -> Result<bool> {
        data_is_empty(&self.p)
    }

    /// One point in time to read several partitions at.
    fn view(&self) -> View<'_> {
        View { store: self, at: self.ks.instant() }
    }

    fn prune_seen(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        let entries = self.p.get(T::Seen).iter().map(|e| e.map_err(StoreError::from));
        let doomed = retention::seen_keys_to_prune(T::Seen.name(), entries, policy, now)?;
        self.remove_all(T::Seen, &doomed)?;
        Ok(doomed.len() as u64)
    }

    fn remove_all(&self, t: T, doomed: &[Slice]) -> Result<()> {
        for chunk in doomed.chunks(CHUNK) {
            self.write(None, |tx| {
                for k in chunk {
                    tx.remove(t, k.clone());
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn prune_runs(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        if policy.runs_max_age.is_none() && policy.runs_keep.is_none() {
            return Ok(0);
        }
        let mut finished: Vec<(RunId, u64)> = Vec::new();
        let view = self.view();
        for status in [RunStatus::Succeeded, RunStatus::Dead] {
            for run in view.runs_with_status(status)? {
                finished.push((run.id, keys::millis(run.updated_at)));
            }
        }
        let doomed = retention::runs_to_prune(finished, policy, now);

        let mut removed = 0;
        for chunk in doomed.chunks(CHUNK) {
            removed += self.write(None, |tx| {
                let mut n = 0u64;
                for id in chunk {
                    let k = keys::run_key(*id);
                    let Some(v) = tx.get(T::Runs, &k)? else { continue };
                    let run: Run = decode_json(T::Runs.name(), &k, &v)?;
                    // Re-checked inside the transaction: the run may have changed since
                    // the scan.
                    if !run.status.is_final() {
                        continue;
                    }
                    tx.remove(T::Runs, k);
                    tx.remove(T::RunItems, k);
                    unindex_run(tx, run.id, run.status, run.next_retry_at);
                    tx.remove(T::RunFlow, keys::flow_index_key(&run.flow, run.id));
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
        for item in self.p.get(T::Webhooks).iter() {
            let (k, v) = item?;
            let ev: WebhookEvent = decode_json(T::Webhooks.name(), &k, &v)?;
            if ev.processed_at.is_some() && keys::millis(ev.received_at) < cutoff {
                doomed.push(k);
            }
        }
        self.remove_all(T::Webhooks, &doomed)?;
        Ok(doomed.len() as u64)
    }

    fn get_webhook_in(&self, view: &View<'_>, id: &str) -> Result<Option<WebhookEvent>> {
        match view.get(T::Webhooks, id.as_bytes())? {
            Some(v) => Ok(Some(decode_json(T::Webhooks.name(), id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }
}

/// Reads of several partitions at one instant.
struct View<'a> {
    store: &'a FjallStore,
    at: fjall::Instant,
}

impl View<'_> {
    fn snap(&self, t: T) -> fjall::Snapshot {
        self.store.p.get(t).snapshot_at(self.at)
    }

    fn get(&self, t: T, key: &[u8]) -> Result<Option<Slice>> {
        Ok(self.snap(t).get(key)?)
    }

    fn load_run(&self, id: RunId) -> Result<Option<Run>> {
        let k = keys::run_key(id);
        match self.get(T::Runs, &k)? {
            Some(v) => Ok(Some(self.with_item(decode_json(T::Runs.name(), &k, &v)?)?)),
            None => Ok(None),
        }
    }

    /// Puts the run's item (kept in `run_items`) back into a record read from `runs`.
    fn with_item(&self, mut run: Run) -> Result<Run> {
        if run.item.is_null() {
            let k = keys::run_key(run.id);
            if let Some(v) = self.get(T::RunItems, &k)? {
                run.item = decode_json(T::RunItems.name(), &k, &v)?;
            }
        }
        Ok(run)
    }

    /// Loads the run an index entry points at; a dangling entry is corruption.
    fn run_from_index(&self, t: T, key: &[u8]) -> Result<Run> {
        let id = keys::trailing_run_id(t.name(), key)?;
        self.load_run(id)?.ok_or_else(|| keys::corrupt_key(t.name(), key, &format!("points at missing run {id}")))
    }

    fn collect_runs(
        &self,
        t: T,
        iter: impl Iterator<Item = std::result::Result<fjall::KvPair, fjall::LsmError>>,
        keep: impl Fn(&Run) -> bool,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        for item in iter {
            let (k, _) = item?;
            let run = self.run_from_index(t, &k)?;
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
        self.collect_runs(T::RunStatus, self.snap(T::RunStatus).prefix([status.tag()]), |r| r.status == status, 0)
    }
}

/// fjall has no lock of its own against a second process opening the same files.
fn lock(root: &Path) -> Result<File> {
    let path = root.join(layout::LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io { op: "open", path: path.clone(), source })?;
    // See `layout::LOCK_WAIT`.
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < layout::LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path: root.to_path_buf() }),
            Err(std::fs::TryLockError::Error(source)) => return Err(StoreError::Io { op: "lock", path, source }),
        }
    }
}

/// Whether [`FjallStore::open_at`] may create the store, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    No,
    /// See [`create_keyspace`]. Costs a quarter of a second once (closing a fjall keyspace
    /// waits for its monitor thread's 250 ms sleep).
    Staged,
    /// For a temporary store, which no crash can leave behind for a later start.
    InPlace,
}

/// Builds a new database beside its place and renames it there once its partitions and
/// meta record are on disk. fjall cannot open a keyspace whose creation was cut short (a
/// SIGKILL in the first moments of a first start left one that said "damaged" on every
/// later start); this way a crash leaves no database or a whole one.
fn create_keyspace(root: &Path) -> Result<()> {
    layout::clear_staging(root, Backend::Fjall)?;
    let staged = layout::staging_dir(root, Backend::Fjall);
    {
        let ks = keyspace_at(root, staged)?;
        let p = Parts::open(&ks)?;
        init_meta(&ks, p.get(T::Meta), &Clock::system())?;
    }
    layout::install_staged(root, Backend::Fjall)
}

fn open_keyspace(root: &Path) -> Result<Keyspace> {
    keyspace_at(root, layout::db_dir(root, Backend::Fjall))
}

/// Opens (or creates) the keyspace in `dir`, the database of the store at `root`.
fn keyspace_at(root: &Path, dir: PathBuf) -> Result<Keyspace> {
    fjall::Config::new(&dir)
        .cache_size(CACHE_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES)
        .max_journaling_size(JOURNAL_BYTES)
        // Background work stays off the engine's cores as far as possible.
        .flush_workers(1)
        .compaction_workers(1)
        .open()
        .map_err(|e| match e {
            fjall::Error::Io(source) => StoreError::Io { op: "open", path: dir, source },
            fjall::Error::Poisoned | fjall::Error::PartitionDeleted => StoreError::Fjall(e),
            other => layout::damaged(root, format!("fjall cannot read its database: {other}")),
        })
}

/// Every partition of a store that was created has its directory and, in it, the manifest
/// fjall writes when it creates the partition (a store is built whole before it is put in
/// place, see [`create_keyspace`]). fjall itself takes a partition without a manifest for
/// an unfinished creation and deletes it, and recreates a missing one empty: an empty
/// `seen` fires every item again, an empty `runs` forgets the history. Checked before
/// fjall opens the database, so what is left is not touched.
fn check_partitions(root: &Path) -> Result<()> {
    let dir = layout::db_dir(root, Backend::Fjall).join("partitions");
    for t in TABLES {
        let manifest = dir.join(t.name()).join("manifest");
        match std::fs::metadata(&manifest) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(layout::damaged(root, format!("its partition {:?} has no manifest file", t.name()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let what = if dir.join(t.name()).is_dir() { "has no manifest file" } else { "is missing" };
                return Err(layout::damaged(
                    root,
                    format!("its partition {:?} ({}) {what}", t.name(), manifest.parent().unwrap_or(&dir).display()),
                ));
            }
            Err(e) => return Err(StoreError::Io { op: "inspect", path: manifest, source: e }),
        }
    }
    Ok(())
}

/// The commit generation `meta` records (0: none yet).
fn read_generation(meta: &PartitionHandle) -> std::result::Result<u64, String> {
    match meta.get(META_GENERATION).map_err(|e| format!("cannot read meta: {e}"))? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v[..].try_into().map_err(|_| "its meta generation is not a number".to_string())?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

/// `Ok(None)`: no meta at all. `Err(reason)`: meta present but unreadable.
fn read_meta(meta: &PartitionHandle) -> std::result::Result<Option<Marker>, String> {
    let get = |k: &[u8]| meta.get(k).map_err(|e| format!("cannot read meta: {e}"));
    let (format, id, created) = (get(META_FORMAT)?, get(META_STORE_ID)?, get(META_CREATED_AT)?);
    layout::marker_from_meta(Backend::Fjall, format.as_deref(), id.as_deref(), created.as_deref())
}

fn init_meta(ks: &Keyspace, meta: &PartitionHandle, clock: &Clock) -> Result<Marker> {
    let m = Marker {
        engine: Backend::Fjall,
        format: FORMAT,
        store_id: uuid::Uuid::new_v4().to_string(),
        created_at: clock.now(),
        generation: 0,
    };
    let mut b = ks.batch();
    b.insert(meta, META_FORMAT, m.format.to_string().as_bytes());
    b.insert(meta, META_STORE_ID, m.store_id.as_bytes());
    b.insert(meta, META_CREATED_AT, m.created_at.to_rfc3339().as_bytes());
    b.commit()?;
    ks.persist(PersistMode::SyncAll)?;
    Ok(m)
}

fn data_is_empty(p: &Parts) -> Result<bool> {
    for t in TABLES {
        if t != T::Meta && !p.get(t).is_empty()? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The id after every id ever handed out: the recorded floor, or past the newest run.
fn first_free_run_id(p: &Parts) -> Result<u64> {
    let recorded = match p.get(T::Meta).get(META_NEXT_RUN_ID)? {
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| keys::corrupt_key(T::Meta.name(), META_NEXT_RUN_ID, "next run id is not 8 bytes"))?;
            u64::from_be_bytes(b)
        }
        None => 0,
    };
    let after_newest = match p.get(T::Runs).last_key_value()? {
        Some((k, _)) => keys::run_id_from(T::Runs.name(), &k)?.0 + 1,
        None => 0,
    };
    Ok(recorded.max(after_newest))
}

/// A new run worked out before its transaction: id, record, item and index keys.
struct NewRunPrepared {
    key: [u8; 8],
    record: Slice,
    item: Slice,
    status_key: [u8; 9],
    flow_key: Vec<u8>,
    run: Run,
}

impl NewRunPrepared {
    fn new(
        store: &FjallStore,
        new: &NewRun,
        trigger: Option<&str>,
        dedupe_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        if new.flow.is_empty() {
            return Err(StoreError::Invalid("a run needs a flow name".into()));
        }
        let id = store.new_run_id();
        let run = transitions::new_run(id, new, trigger, dedupe_key, now);
        Ok(NewRunPrepared {
            key: keys::run_key(id),
            record: Slice::from(encode_json(&run)?),
            item: Slice::from(encode_json(&new.item)?),
            status_key: keys::status_index_key(run.status.tag(), id),
            flow_key: keys::flow_index_key(&run.flow, id),
            run,
        })
    }

    fn write(&self, tx: &mut Txn<'_>) {
        tx.insert(T::Runs, &self.key[..], self.record.clone());
        tx.insert(T::RunItems, &self.key[..], self.item.clone());
        tx.insert(T::RunStatus, &self.status_key[..], &[][..]);
        tx.insert(T::RunFlow, self.flow_key.as_slice(), &[][..]);
    }
}

fn unindex_run(tx: &mut Txn<'_>, id: RunId, old_status: RunStatus, old_retry: Option<DateTime<Utc>>) {
    tx.remove(T::RunStatus, &keys::status_index_key(old_status.tag(), id)[..]);
    if let Some(at) = old_retry {
        tx.remove(T::RunRetry, keys::time_key(at, &keys::run_key(id)));
    }
}

fn index_run(tx: &mut Txn<'_>, run: &Run) {
    tx.insert(T::RunStatus, &keys::status_index_key(run.status.tag(), run.id)[..], &[][..]);
    if let (RunStatus::Failed, Some(at)) = (run.status, run.next_retry_at) {
        tx.insert(T::RunRetry, keys::time_key(at, &keys::run_key(run.id)), &[][..]);
    }
}

/// One run's update worked out from its cached record before the transaction; used only
/// if the stored record is still `old` when the transaction runs.
struct Prepared {
    old: Slice,
    new: Slice,
    run: Run,
    /// The status and retry time the index entries were made for, when they change.
    reindex: Option<(RunStatus, Option<DateTime<Utc>>)>,
}

impl Prepared {
    /// `None` when the record is not cached or a change is refused: the transaction then
    /// takes the usual path, which reports the refusal.
    fn new(open: &OpenRuns<Slice>, id: RunId, changes: &[RunChange], now: DateTime<Utc>) -> Option<Prepared> {
        let (old, mut run) = open.take_any(id)?;
        let (old_status, old_retry) = (run.status, run.next_retry_at);
        for change in changes {
            transitions::apply(&mut run, change, now).ok()?;
        }
        let new = Slice::from(encode_json(&run).ok()?);
        let reindex =
            ((old_status.tag(), old_retry) != (run.status.tag(), run.next_retry_at)).then_some((old_status, old_retry));
        Some(Prepared { old, new, run, reindex })
    }
}

/// Applies `changes` to the run `id` inside a transaction; returns the run as written and
/// its encoding. Nothing is staged unless every change is accepted.
fn update_run_tx(
    tx: &mut Txn<'_>,
    open: &OpenRuns<Slice>,
    id: RunId,
    changes: &[RunChange],
    now: DateTime<Utc>,
) -> Result<(Run, Slice)> {
    let k = keys::run_key(id);
    let Some(v) = tx.get(T::Runs, &k)? else {
        return Err(StoreError::RunNotFound(id));
    };
    let mut run: Run = match open.take(id, &v) {
        Some(run) => run,
        None => decode_json(T::Runs.name(), &k, &v)?,
    };
    let (old_status, old_retry) = (run.status, run.next_retry_at);
    for change in changes {
        transitions::apply(&mut run, change, now)?;
    }
    let bytes = Slice::from(encode_json(&run)?);
    // Pending → running keeps its index entry (one tag for both).
    if (old_status.tag(), old_retry) != (run.status.tag(), run.next_retry_at) {
        unindex_run(tx, run.id, old_status, old_retry);
        index_run(tx, &run);
    }
    tx.insert(T::Runs, &k[..], bytes.clone());
    Ok((run, bytes))
}

impl FjallStore {
    /// The transaction of [`Store::apply_runs`], given the updates worked out from cached
    /// records and the cache's generation read before they were taken.
    fn apply_prepared(
        &self,
        batch: &[(RunId, Vec<RunChange>)],
        generation: u64,
        mut prepared: Vec<Option<Prepared>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<()>>> {
        let mut written: Vec<(Slice, Run)> = Vec::new();
        let mut fast: Vec<usize> = Vec::new();
        let results = self.write(Some(&self.tx_time.updates), |tx| {
            // No run was rewritten by another path since the entries were taken: their
            // bytes are what is stored, and reading the records back would only confirm it.
            let undisturbed = self.open.generation() == generation;
            let mut out = Vec::with_capacity(batch.len());
            for (i, (id, changes)) in batch.iter().enumerate() {
                if let Some(p) = &prepared[i] {
                    let k = keys::run_key(*id);
                    if undisturbed || tx.get(T::Runs, &k)?.is_some_and(|stored| stored == p.old) {
                        if let Some((old_status, old_retry)) = p.reindex {
                            unindex_run(tx, *id, old_status, old_retry);
                            index_run(tx, &p.run);
                        }
                        tx.insert(T::Runs, &k[..], p.new.clone());
                        fast.push(i);
                        out.push(Ok(()));
                        continue;
                    }
                }
                // A refused change leaves its own run untouched and the others committed.
                out.push(match update_run_tx(tx, &self.open, *id, changes, now) {
                    Ok((run, bytes)) => {
                        written.push((bytes, run));
                        Ok(())
                    }
                    Err(e @ (StoreError::Fjall(_) | StoreError::Io { .. })) => return Err(e),
                    Err(e) => Err(e),
                });
            }
            Ok(out)
        })?;
        for (bytes, run) in written {
            self.open.keep(bytes, run);
        }
        for i in fast {
            if let Some(p) = prepared[i].take() {
                self.open.keep(p.new, p.run);
            }
        }
        // Handed to the OS at once, so a killed process loses nothing; the `fdatasync`
        // (for a power cut) waits for the next flush.
        self.ks.persist(PersistMode::Buffer)?;
        Ok(results)
    }
}

impl Store for FjallStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> Result<Vec<bool>> {
        let prefix = keys::str_prefix(trigger);
        let mut k = prefix.clone();
        let seen = self.p.get(T::Seen);
        keys.iter()
            .map(|key| {
                k.truncate(prefix.len());
                k.extend_from_slice(key.as_bytes());
                Ok(!seen.contains_key(&k)?)
            })
            .collect()
    }

    fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>> {
        let k = keys::seen_key(trigger, key);
        match self.p.get(T::Seen).get(&k)? {
            Some(v) => Ok(Some(keys::time_from(T::Seen.name(), &k, &v)?)),
            None => Ok(None),
        }
    }

    fn trigger_state(&self, trigger: &str) -> Result<Option<Value>> {
        match self.p.get(T::Triggers).get(trigger)? {
            Some(v) => Ok(Some(decode_json(T::Triggers.name(), trigger.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn commit_poll(&self, commit: &PollCommit) -> Result<PollOutcome> {
        commit.check()?;
        let now = self.now();
        let state = commit.state.as_ref().map(encode_json).transpose()?;
        let seen_value = Slice::from(&keys::time_value(now)[..]);
        // Keys, ids and encodings are worked out before taking the writer lock.
        let mut prepared = Vec::with_capacity(commit.items.len());
        for item in &commit.items {
            let run = match &item.run {
                Some(new) => Some(NewRunPrepared::new(self, new, Some(&commit.trigger), Some(&item.key), now)?),
                None => None,
            };
            prepared.push((Slice::from(keys::seen_key(&commit.trigger, &item.key)), run));
        }
        let outcome = self.write(Some(&self.tx_time.polls), |tx| {
            if let Some(state) = &state {
                tx.insert(T::Triggers, commit.trigger.as_bytes(), state.as_slice());
            }
            let mut outcome = PollOutcome::default();
            for (item, (seen_key, run)) in commit.items.iter().zip(&prepared) {
                if tx.get(T::Seen, seen_key)?.is_some() {
                    outcome.already_seen.push(item.key.clone());
                    continue;
                }
                tx.insert(T::Seen, seen_key.clone(), seen_value.clone());
                if let Some(run) = run {
                    run.write(tx);
                    outcome.created.push((item.key.clone(), run.run.id));
                }
            }
            Ok(outcome)
        })?;
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
        let doomed: Vec<Slice> = self
            .p
            .get(T::Seen)
            .prefix(keys::str_prefix(trigger))
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<std::result::Result<_, _>>()?;
        self.remove_all(T::Seen, &doomed)?;
        self.write(None, |tx| {
            tx.remove(T::Triggers, trigger.as_bytes());
            Ok(())
        })?;
        self.durable()?;
        Ok(doomed.len() as u64)
    }

    fn create_run(&self, new: &NewRun) -> Result<RunId> {
        let p = NewRunPrepared::new(self, new, None, None, self.now())?;
        self.write(None, |tx| {
            p.write(tx);
            Ok(())
        })?;
        let id = p.run.id;
        self.open.keep(p.record, p.run);
        self.durable()?;
        Ok(id)
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.view().load_run(id)
    }

    fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        if f.has_scan_conditions() {
            return f.scan(|page| self.list_runs(page));
        }
        let view = self.view();
        let before = f.before.map(keys::run_key);
        if let Some(status) = f.status {
            let tag = [status.tag()];
            let snap = view.snap(T::RunStatus);
            let flow = f.flow.as_deref();
            let keep = |r: &Run| r.status == status && flow.is_none_or(|fl| r.flow == fl);
            return match before {
                Some(b) => {
                    let end = keys::status_index_key(tag[0], RunId(u64::from_be_bytes(b)));
                    view.collect_runs(T::RunStatus, snap.range(tag.to_vec()..end.to_vec()).rev(), keep, f.limit)
                }
                None => view.collect_runs(T::RunStatus, snap.prefix(tag).rev(), keep, f.limit),
            };
        }
        if let Some(flow) = &f.flow {
            let prefix = keys::str_prefix(flow);
            let snap = view.snap(T::RunFlow);
            let keep = |r: &Run| &r.flow == flow;
            return match before {
                Some(b) => {
                    let mut end = prefix.clone();
                    end.extend_from_slice(&b);
                    view.collect_runs(T::RunFlow, snap.range(prefix..end).rev(), keep, f.limit)
                }
                None => view.collect_runs(T::RunFlow, snap.prefix(prefix).rev(), keep, f.limit),
            };
        }
        let snap = view.snap(T::Runs);
        let iter: Box<dyn Iterator<Item = std::result::Result<fjall::KvPair, fjall::LsmError>>> = match before {
            Some(b) => Box::new(snap.range(..b.to_vec()).rev()),
            None => Box::new(snap.iter().rev()),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            out.push(view.with_item(decode_json(T::Runs.name(), &k, &v)?)?);
            if f.limit != 0 && out.len() >= f.limit {
                break;
            }
        }
        Ok(out)
    }

    fn update_run(&self, id: RunId, changes: &[RunChange]) -> Result<Run> {
        let now = self.now();
        let (run, bytes) = self.write(None, |tx| update_run_tx(tx, &self.open, id, changes, now))?;
        self.open.keep(bytes, run.clone());
        self.durable()?;
        self.view().with_item(run)
    }

    fn update_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.apply_runs(batch)?;
        self.durable()?;
        Ok(results)
    }

    fn apply_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        // Read before any entry is taken (see `open_runs`).
        let generation = self.open.generation();
        // Worked out before the transaction where the run's record is cached: the
        // transaction only checks the stored bytes and writes.
        let prepared: Vec<Option<Prepared>> =
            batch.iter().map(|(id, changes)| Prepared::new(&self.open, *id, changes, now)).collect();
        self.apply_prepared(batch, generation, prepared, now)
    }

    fn list_resumable(&self) -> Result<Vec<Run>> {
        // One tag holds both; keys sort by run id within it.
        let view = self.view();
        view.collect_runs(
            T::RunStatus,
            view.snap(T::RunStatus).prefix([RunStatus::Pending.tag()]),
            |r| matches!(r.status, RunStatus::Pending | RunStatus::Running),
            0,
        )
    }

    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Run>> {
        // Every key at or before `now` sorts below `now ms + 1`.
        let end = (keys::millis(now).saturating_add(1)).to_be_bytes().to_vec();
        let view = self.view();
        view.collect_runs(
            T::RunRetry,
            view.snap(T::RunRetry).range(..end),
            |r| r.status == RunStatus::Failed && r.next_retry_at.is_some_and(|at| at <= now),
            limit,
        )
    }

    fn list_held(&self, flow: &str) -> Result<Vec<Run>> {
        let mut runs = self.view().runs_with_status(RunStatus::Held)?;
        runs.retain(|r| r.flow == flow);
        Ok(runs)
    }

    fn release_held(&self, flow: &str) -> Result<Vec<RunId>> {
        let held: Vec<RunId> = self.list_held(flow)?.iter().map(|r| r.id).collect();
        if held.is_empty() {
            return Ok(held);
        }
        let now = self.now();
        let released = self.write(None, |tx| {
            let mut released = Vec::with_capacity(held.len());
            for id in &held {
                // Re-read inside the transaction: only runs still held move.
                let k = keys::run_key(*id);
                let Some(v) = tx.get(T::Runs, &k)? else { continue };
                let run: Run = decode_json(T::Runs.name(), &k, &v)?;
                if run.status != RunStatus::Held {
                    continue;
                }
                let change = RunChange::Status { status: RunStatus::Pending, error: None };
                update_run_tx(tx, &self.open, *id, &[change], now)?;
                released.push(*id);
            }
            Ok(released)
        })?;
        self.durable()?;
        Ok(released)
    }

    fn get_tokens(&self, account: &str) -> Result<Option<Value>> {
        match self.p.get(T::Tokens).get(account)? {
            Some(v) => Ok(Some(decode_json(T::Tokens.name(), account.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn put_tokens(&self, account: &str, tokens: &Value) -> Result<()> {
        let v = encode_json(tokens)?;
        self.write(None, |tx| {
            tx.insert(T::Tokens, account.as_bytes(), v.as_slice());
            Ok(())
        })?;
        // A refreshed token pair replaces the old refresh token at GHL: losing it on a
        // crash would lock the account out.
        self.durable()
    }

    fn delete_tokens(&self, account: &str) -> Result<bool> {
        let existed = self.write(None, |tx| {
            let existed = tx.get(T::Tokens, account.as_bytes())?.is_some();
            if existed {
                tx.remove(T::Tokens, account.as_bytes());
            }
            Ok(existed)
        })?;
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
        let inserted = self.write(None, |tx| {
            if tx.get(T::Webhooks, id.as_bytes())?.is_some() {
                return Ok(false);
            }
            tx.insert(T::Webhooks, id.as_bytes(), v.as_slice());
            tx.insert(T::WebhookQueue, queue_key.as_slice(), &[][..]);
            Ok(true)
        })?;
        if inserted {
            self.durable()?;
        }
        Ok(inserted)
    }

    fn webhook_seen(&self, id: &str) -> Result<bool> {
        Ok(self.p.get(T::Webhooks).contains_key(id)?)
    }

    fn get_webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        self.get_webhook_in(&self.view(), id)
    }

    fn list_unprocessed_webhooks(&self, limit: usize) -> Result<Vec<WebhookEvent>> {
        let view = self.view();
        let mut out = Vec::new();
        for item in view.snap(T::WebhookQueue).iter() {
            let (k, _) = item?;
            let name = T::WebhookQueue.name();
            let id = k.get(8..).ok_or_else(|| keys::corrupt_key(name, &k, "short key"))?;
            let id = std::str::from_utf8(id).map_err(|_| keys::corrupt_key(name, &k, "id is not utf-8"))?;
            let ev = self
                .get_webhook_in(&view, id)?
                .ok_or_else(|| keys::corrupt_key(name, &k, "points at a missing event"))?;
            out.push(ev);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn complete_webhook_event(&self, id: &str, new_runs: &[NewRun]) -> Result<Vec<RunId>> {
        let now = self.now();
        let prepared =
            new_runs.iter().map(|new| NewRunPrepared::new(self, new, None, None, now)).collect::<Result<Vec<_>>>()?;
        self.write(None, |tx| {
            let Some(v) = tx.get(T::Webhooks, id.as_bytes())? else {
                return Err(StoreError::Invalid(format!("webhook event {id:?} was never stored")));
            };
            let mut ev: WebhookEvent = decode_json(T::Webhooks.name(), id.as_bytes(), &v)?;
            if ev.processed_at.is_some() {
                return Err(StoreError::Conflict(format!("webhook event {id:?} was already processed")));
            }
            ev.processed_at = Some(now);
            tx.insert(T::Webhooks, id.as_bytes(), encode_json(&ev)?);
            tx.remove(T::WebhookQueue, keys::time_key(ev.received_at, id.as_bytes()));
            for p in &prepared {
                p.write(tx);
            }
            Ok(())
        })?;
        let ids = prepared.iter().map(|p| p.run.id).collect();
        for p in prepared {
            self.open.keep(p.record, p.run);
        }
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

    /// Poll commits' and run-update batches' hold on the writer lock.
    fn transaction_time(&self) -> TransactionTime {
        self.tx_time.read(&self.group)
    }

    fn backend(&self) -> Backend {
        Backend::Fjall
    }

    fn fault(&self) -> Option<String> {
        self.group.fault.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewRun;

    fn running() -> Vec<RunChange> {
        vec![RunChange::Status { status: RunStatus::Running, error: None }]
    }

    /// The cached record is taken, another path rewrites the run, then the batch commits:
    /// the batch must see the rewrite (here: refuse to revive a dead run), not overwrite it.
    #[test]
    fn a_rewrite_between_taking_a_cached_record_and_committing_is_not_overwritten() {
        let store = FjallStore::temporary().unwrap();
        let id = store.create_run(&NewRun::new("f", serde_json::json!({"n": 1}))).unwrap();
        let batch = vec![(id, running())];
        let now = store.now();
        let generation = store.open.generation();
        let prepared: Vec<Option<Prepared>> =
            batch.iter().map(|(id, changes)| Prepared::new(&store.open, *id, changes, now)).collect();
        assert!(prepared[0].is_some(), "the new run's record is cached");

        let dead = RunChange::Status { status: RunStatus::Dead, error: Some("discarded".into()) };
        store.update_run(id, &[dead]).unwrap();

        let results = store.apply_prepared(&batch, generation, prepared, now).unwrap();
        assert!(matches!(results[0], Err(StoreError::Conflict(_))), "{results:?}");
        let run = store.get_run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Dead);
        assert_eq!(store.view().runs_with_status(RunStatus::Running).unwrap().len(), 0);
    }

    /// What a SIGKILL during a first start's creation leaves: the empty directory `prepare`
    /// made and a half-built keyspace beside it. Not a store (`open` says so), and the next
    /// start creates one in its place.
    #[test]
    fn a_creation_cut_short_leaves_no_store_and_the_next_start_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(layout::db_dir(&root, Backend::Fjall)).unwrap();
        std::fs::write(root.join(layout::LOCK_FILE), b"").unwrap();
        let staged = layout::staging_dir(&root, Backend::Fjall);
        std::fs::create_dir_all(staged.join("partitions/meta/segments")).unwrap();
        std::fs::write(staged.join("version"), b"FJL\x02").unwrap();

        match crate::open(&root) {
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => panic!("expected NotFound, got {e}"),
            Ok(_) => panic!("expected NotFound, got a store"),
        }
        let store = FjallStore::create_or_open(&root).unwrap();
        let id = store.create_run(&NewRun::new("f", serde_json::json!({"n": 1}))).unwrap();
        drop(store);
        assert!(!staged.exists(), "the unfinished keyspace is gone");
        let store = FjallStore::open(&root).unwrap();
        assert_eq!(store.get_run(id).unwrap().map(|r| r.flow), Some("f".to_string()));
        assert!(layout::read_marker(&root).unwrap().is_some());
    }

    /// Undisturbed, the batch writes from the cache without reading the record back, and
    /// what it writes is what a read returns.
    #[test]
    fn an_undisturbed_batch_writes_from_the_cache() {
        let store = FjallStore::temporary().unwrap();
        let id = store.create_run(&NewRun::new("f", serde_json::json!({"n": 1}))).unwrap();
        let generation = store.open.generation();
        store.apply_runs(&[(id, running())]).unwrap().into_iter().for_each(|r| r.unwrap());
        assert_eq!(store.open.generation(), generation, "no record was read back through the cache");
        let start = RunChange::StepStarted { step: "a".into(), request: serde_json::json!({"x": 1}).into() };
        store.apply_runs(&[(id, vec![start])]).unwrap().into_iter().for_each(|r| r.unwrap());
        assert_eq!(store.open.generation(), generation);
        let run = store.get_run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(*run.steps[0].request, serde_json::json!({"x": 1}));
    }
}
