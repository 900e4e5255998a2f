//! [`Kv`] on fjall 2, an LSM tree with a write-ahead journal: one partition per [`Table`].
//!
//! # Transactions
//!
//! fjall's write batches are atomic across partitions (one journal entry) but have no
//! reads. A write here is therefore: take the store's writer lock, read what the change
//! depends on (reads see the keyspace plus this transaction's own staged writes), stage
//! the writes in one batch, commit the batch, release the lock. Every write goes through
//! that lock, so a transaction's reads cannot change before its commit. A [`View`] reads
//! every partition at one sequence number, so a batch being applied is seen whole or not
//! at all.
//!
//! # Durability
//!
//! A committed batch is in the journal's OS buffers (a SIGKILL keeps it); [`Kv::durable`]
//! waits for `fdatasync` of the journal, shared by every caller waiting.
//!
//! # Run ids and generations
//!
//! fjall has no id generator: `meta`'s `next_run_id` is the lowest id never handed out,
//! written with the first commit after it moved. `meta`'s `generation` moves on at most
//! once a second while the store is written, and the marker names it once it is durable
//! (see [`layout::check_generation`]): a journal that lost durable writes is caught at the
//! next open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use fjall::{Batch, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode, Slice};

use super::{Kv, Scan, Table, Txn, View};
use crate::commit::{GroupFlush, TxCounter};
use crate::error::{Result, StoreError};
use crate::keys;
use crate::layout::{self, Backend, Marker, FORMAT};

const META_NEXT_RUN_ID: &[u8] = b"next_run_id";
/// The store's commit generation (see the module docs), big-endian u64.
const META_GENERATION: &[u8] = b"generation";

/// How often, at most, a store that is being written moves its commit generation on and
/// records it in its marker: a journal that loses more than the last interval's writes is
/// caught at the next open. Each checkpoint costs a journal sync and a marker rewrite.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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

struct Parts([PartitionHandle; Table::COUNT]);

impl Parts {
    fn open(ks: &Keyspace) -> Result<Parts> {
        let mut handles = Vec::with_capacity(Table::COUNT);
        for t in Table::ALL {
            handles.push(
                ks.open_partition(t.name(), PartitionCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))?,
            );
        }
        let handles: [PartitionHandle; Table::COUNT] =
            handles.try_into().map_err(|_| StoreError::Invalid("partition count".into()))?;
        Ok(Parts(handles))
    }

    fn get(&self, t: Table) -> &PartitionHandle {
        &self.0[t.index()]
    }
}

struct Checkpoint {
    marker: Marker,
    at: std::time::Instant,
}

/// Removes a temporary store's directory once everything else is dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct FjallKv {
    ks: Keyspace,
    p: Parts,
    /// Held by every write transaction, from its first read to its commit.
    writer: Mutex<()>,
    group: GroupFlush,
    next_id: AtomicU64,
    /// The `next_run_id` last committed to `meta` (0: none since open).
    recorded_floor: AtomicU64,
    root: Option<PathBuf>,
    store_id: String,
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

impl Drop for FjallKv {
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

/// Whether [`FjallKv::open_at`] may create the store, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    No,
    /// See [`create_keyspace`]. Costs a quarter of a second once (closing a fjall keyspace
    /// waits for its monitor thread's 250 ms sleep).
    Staged,
    /// For a temporary store, which no crash can leave behind for a later start.
    InPlace,
}

impl FjallKv {
    fn open_at(root: &Path, create: Create) -> Result<FjallKv> {
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

        let meta = p.get(Table::Meta);
        let marker = match super::read_meta(Backend::Fjall, |k| meta.get(k)).map_err(|r| layout::damaged(root, r))? {
            Some(mut m) => {
                m.generation = read_generation(meta).map_err(|r| layout::damaged(root, r))?;
                layout::check_meta(root, &found, &m, &[FORMAT])?;
                layout::check_generation(root, &found, m.generation)?;
                m
            }
            None => {
                layout::check_no_meta(root, &found, !data_is_empty(&p)?)?;
                let m = init_meta(&ks, meta)?;
                layout::write_marker(root, &m)?;
                layout::restrict_permissions(root)?;
                m
            }
        };
        let next_id = first_free_run_id(&p)?;
        Ok(FjallKv {
            ks,
            p,
            writer: Mutex::new(()),
            group: GroupFlush::default(),
            next_id: AtomicU64::new(next_id),
            recorded_floor: AtomicU64::new(0),
            root: Some(root.to_path_buf()),
            store_id: marker.store_id.clone(),
            dir: root.to_path_buf(),
            checkpoint: Mutex::new(Checkpoint { marker, at: std::time::Instant::now() }),
            dirty: AtomicBool::new(false),
            _lock: lock,
            _temp: None,
        })
    }

    /// Moves the commit generation on: records it in `meta`, makes everything up to it
    /// durable, then names it in the marker. The marker never names a generation the
    /// database may not have (a crash between the two leaves the database one ahead, which
    /// opens), so a database found behind its marker lost durable writes.
    fn checkpoint(&self, cp: &mut Checkpoint) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        let generation = cp.marker.generation + 1;
        let done = (|| {
            self.write(&[Table::Meta], None, |tx| {
                tx.insert(Table::Meta, META_GENERATION, Slice::from(&generation.to_be_bytes()[..]))
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

    /// Never hands out a run id below `floor` (the ids of an imported store); the caller
    /// makes it durable.
    pub(crate) fn raise_run_id_floor(&self, floor: u64) -> Result<()> {
        self.next_id.fetch_max(floor, Ordering::Relaxed);
        // A write with nothing else in it still records a floor that moved.
        self.write(&[Table::Meta], None, |_| Ok(()))
    }
}

impl Kv for FjallKv {
    const BACKEND: Backend = Backend::Fjall;
    type Bytes = Slice;
    type View<'a> = FjallView<'a>;
    type Txn<'a> = FjallTxn<'a>;

    fn open(root: &Path, create: bool) -> Result<FjallKv> {
        Self::open_at(root, if create { Create::Staged } else { Create::No })
    }

    fn temporary() -> Result<FjallKv> {
        let dir = std::env::temp_dir().join(format!("flowd-store-{}", uuid::Uuid::new_v4()));
        let mut kv = Self::open_at(&dir, Create::InPlace)?;
        kv._temp = Some(TempDir(dir));
        kv.root = None;
        Ok(kv)
    }

    fn path(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn view(&self) -> FjallView<'_> {
        FjallView { p: &self.p, at: Some(self.ks.instant()), snaps: Default::default() }
    }

    fn latest(&self) -> FjallView<'_> {
        FjallView { p: &self.p, at: None, snaps: Default::default() }
    }

    fn write<R>(
        &self,
        _tables: &[Table],
        timer: Option<&TxCounter>,
        mut f: impl FnMut(&mut FjallTxn<'_>) -> Result<R>,
    ) -> Result<R> {
        let timer = timer.map(TxCounter::start);
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = &timer {
            t.entered();
        }
        let mut txn = FjallTxn { p: &self.p, batch: self.ks.batch(), staged: Default::default() };
        let out = f(&mut txn)?;
        // Ids handed out so far are never reused, even if their runs are pruned: the floor
        // goes with the first commit after it moved (not with every batch).
        let floor = self.next_id.load(Ordering::Relaxed);
        let floor_moved = floor > self.recorded_floor.load(Ordering::Relaxed);
        if floor_moved {
            txn.batch.insert(self.p.get(Table::Meta), META_NEXT_RUN_ID, Slice::from(&floor.to_be_bytes()[..]));
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

    fn new_id(&self) -> Result<u64> {
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
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

    fn buffered(&self) -> Result<bool> {
        self.ks.persist(PersistMode::Buffer)?;
        Ok(true)
    }

    fn flushes(&self) -> u64 {
        self.group.count.load(Ordering::Relaxed)
    }

    fn fault(&self) -> Option<String> {
        self.group.fault.get().cloned()
    }
}

/// Reads of every partition at one instant (`at`), or of whatever is committed when each
/// read runs (`None`, [`Kv::latest`]).
pub struct FjallView<'a> {
    p: &'a Parts,
    at: Option<fjall::Instant>,
    /// Each partition's snapshot, taken at its first read: taking one registers it with
    /// fjall, which a read of 100 keys should pay once, not 100 times.
    snaps: [std::cell::OnceCell<fjall::Snapshot>; Table::COUNT],
}

impl FjallView<'_> {
    fn snap(&self, t: Table, at: fjall::Instant) -> &fjall::Snapshot {
        self.snaps[t.index()].get_or_init(|| self.p.get(t).snapshot_at(at))
    }
}

impl View for FjallView<'_> {
    type Bytes = Slice;

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Slice>> {
        match self.at {
            Some(at) => Ok(self.snap(t, at).get(key)?),
            None => Ok(self.p.get(t).get(key)?),
        }
    }

    fn contains(&self, t: Table, key: &[u8]) -> Result<bool> {
        match self.at {
            Some(at) => Ok(self.snap(t, at).contains_key(key)?),
            None => Ok(self.p.get(t).contains_key(key)?),
        }
    }

    fn range(&self, t: Table, lo: &[u8], hi: Option<&[u8]>, reverse: bool) -> Scan<'_, Slice> {
        let lo = std::ops::Bound::Included(lo.to_vec());
        let hi = hi.map_or(std::ops::Bound::Unbounded, |h| std::ops::Bound::Excluded(h.to_vec()));
        // The snapshot the scan reads stays alive in the view, which the scan borrows.
        let iter: Box<dyn DoubleEndedIterator<Item = Result<(Slice, Slice)>>> = match self.at {
            Some(at) => Box::new(self.snap(t, at).range((lo, hi)).map(|r| r.map_err(StoreError::from))),
            None => Box::new(self.p.get(t).range((lo, hi)).map(|r| r.map_err(StoreError::from))),
        };
        if reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        }
    }
}

/// A write transaction (see the module docs): run by [`FjallKv::write`] under the writer
/// lock; its batch is committed only if the closure returns `Ok`.
pub struct FjallTxn<'a> {
    p: &'a Parts,
    batch: Batch,
    /// This transaction's writes to the partitions it also reads (`None`: removed).
    staged: [HashMap<Slice, Option<Slice>, foldhash::fast::RandomState>; Table::COUNT],
}

impl FjallTxn<'_> {
    /// Index and item partitions are written, never read, inside a transaction: their
    /// writes skip the staging map. So do seen keys: the one transaction that reads them
    /// (a poll's commit) refuses a key twice in one commit before it starts, so it never
    /// reads a key it wrote.
    fn read_back(t: Table) -> bool {
        !matches!(
            t,
            Table::Seen
                | Table::RunItems
                | Table::RunStatus
                | Table::RunFlow
                | Table::RunRetry
                | Table::WebhookQueue
                | Table::Touched
        )
    }
}

impl Txn for FjallTxn<'_> {
    type Bytes = Slice;

    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Slice>> {
        if let Some(v) = self.staged[t.index()].get(key) {
            return Ok(v.clone());
        }
        Ok(self.p.get(t).get(key)?)
    }

    fn insert(&mut self, t: Table, key: &[u8], value: Slice) -> Result<()> {
        let key = Slice::from(key);
        if Self::read_back(t) {
            self.staged[t.index()].insert(key.clone(), Some(value.clone()));
        }
        self.batch.insert(self.p.get(t), key, value);
        Ok(())
    }

    fn remove(&mut self, t: Table, key: &[u8]) -> Result<()> {
        let key = Slice::from(key);
        if Self::read_back(t) {
            self.staged[t.index()].insert(key.clone(), None);
        }
        self.batch.remove(self.p.get(t), key);
        Ok(())
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

/// Builds a new database beside its place and renames it there once its partitions and
/// meta record are on disk. fjall cannot open a keyspace whose creation was cut short (a
/// SIGKILL in the first moments of a first start would leave one that is damaged on every
/// later start); this way a crash leaves no database or a whole one.
fn create_keyspace(root: &Path) -> Result<()> {
    layout::clear_staging(root, Backend::Fjall)?;
    let staged = layout::staging_dir(root, Backend::Fjall);
    {
        let ks = keyspace_at(root, staged)?;
        let p = Parts::open(&ks)?;
        init_meta(&ks, p.get(Table::Meta))?;
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

/// Every partition a store always has ([`Table::always_present`]) has its directory and,
/// in it, the manifest fjall writes when it creates the partition (a store is built whole
/// before it is put in place, see [`create_keyspace`]). fjall itself takes a partition
/// without a manifest for an unfinished creation and deletes it, and recreates a missing
/// one empty: an empty `seen` fires every item again, an empty `runs` forgets the history.
/// Checked before fjall opens the database, so what is left is not touched.
fn check_partitions(root: &Path) -> Result<()> {
    let dir = layout::db_dir(root, Backend::Fjall).join("partitions");
    for t in Table::ALL.into_iter().filter(|t| t.always_present()) {
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

fn init_meta(ks: &Keyspace, meta: &PartitionHandle) -> Result<Marker> {
    let m = super::new_marker(Backend::Fjall);
    let mut b = ks.batch();
    for (k, v) in super::meta_entries(&m) {
        b.insert(meta, k, v);
    }
    b.commit()?;
    ks.persist(PersistMode::SyncAll)?;
    Ok(m)
}

fn data_is_empty(p: &Parts) -> Result<bool> {
    for t in Table::ALL {
        if t != Table::Meta && !p.get(t).is_empty()? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The id after every id ever handed out: the recorded floor, or past the newest run.
fn first_free_run_id(p: &Parts) -> Result<u64> {
    let recorded = match p.get(Table::Meta).get(META_NEXT_RUN_ID)? {
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| keys::corrupt_key(Table::Meta.name(), META_NEXT_RUN_ID, "next run id is not 8 bytes"))?;
            u64::from_be_bytes(b)
        }
        None => 0,
    };
    let after_newest = match p.get(Table::Runs).last_key_value()? {
        Some((k, _)) => keys::run_id_from(Table::Runs.name(), &k)?.0 + 1,
        None => 0,
    };
    Ok(recorded.max(after_newest))
}

#[cfg(test)]
mod tests {
    use super::*;

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

        match FjallKv::open(&root, false) {
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => panic!("expected NotFound, got {e}"),
            Ok(_) => panic!("expected NotFound, got a store"),
        }
        let kv = FjallKv::open(&root, true).unwrap();
        kv.write(&[Table::Tokens], None, |tx| tx.insert(Table::Tokens, b"a", Slice::from(&b"1"[..]))).unwrap();
        kv.durable().unwrap();
        drop(kv);
        assert!(!staged.exists(), "the unfinished keyspace is gone");
        let kv = FjallKv::open(&root, false).unwrap();
        assert_eq!(kv.view().get(Table::Tokens, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(layout::read_marker(&root).unwrap().is_some());
    }
}
