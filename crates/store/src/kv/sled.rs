//! [`Kv`] on sled 0.34: one tree per [`Table`].
//!
//! A write is a sled transaction over the trees it names (one log batch, atomic across
//! them); sled runs every transaction under one process-wide lock that its reads wait for
//! too, and retries the closure when it meets a concurrent one. Plain reads are not
//! isolated from a transaction being applied, so every write, pruning included, goes
//! through transactions.
//!
//! sled acknowledges writes before they reach disk (its background flush runs every
//! 500 ms), so a SIGKILL can lose acknowledged writes: [`Kv::durable`] is `Db::flush`
//! (one fsync'd log write; all trees share one log), shared by every caller waiting, and
//! [`Kv::buffered`] cannot spare it.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionalTree, UnabortableTransactionError};
use sled::{IVec, Transactional, Tree};

use super::{Kv, Scan, Table, Txn, View};
use crate::commit::{GroupFlush, TxCounter};
use crate::error::{Result, StoreError};
use crate::layout::{self, Backend, Marker, FORMAT, FORMAT_1, FORMAT_2, META_FORMAT};
use crate::model::RunStatus;

/// Deletions per transaction when upgrading an index: bounds the transaction's memory and
/// how long it holds sled's write lock.
const CHUNK: usize = 512;

/// sled's default page cache is 1 GiB; flowd's working set (recent seen keys, open runs)
/// is far smaller and shares the machine with the engine.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

pub struct SledKv {
    db: sled::Db,
    trees: [Tree; Table::COUNT],
    group: GroupFlush,
    root: Option<PathBuf>,
    store_id: String,
}

impl SledKv {
    fn assemble(db: sled::Db, root: Option<PathBuf>, store_id: String) -> Result<SledKv> {
        let trees = Table::ALL.map(|t| db.open_tree(t.name()));
        let mut opened = Vec::with_capacity(Table::COUNT);
        for t in trees {
            opened.push(t?);
        }
        let trees: [Tree; Table::COUNT] = opened.try_into().map_err(|_| StoreError::Invalid("tree count".into()))?;
        Ok(SledKv { db, trees, group: GroupFlush::default(), root, store_id })
    }

    fn tree(&self, t: Table) -> &Tree {
        &self.trees[t.index()]
    }
}

impl Kv for SledKv {
    const BACKEND: Backend = Backend::Sled;
    type Bytes = IVec;
    type View<'a> = SledView<'a>;
    type Txn<'a> = SledTxn<'a>;

    fn open(root: &Path, create: bool) -> Result<SledKv> {
        let found = layout::prepare(root, create, Backend::Sled)?;
        let db = open_sled(root)?;
        layout::restrict_permissions(root)?;

        let meta = db.open_tree(Table::Meta.name())?;
        let marker = match super::read_meta(Backend::Sled, |k| meta.get(k)).map_err(|r| layout::damaged(root, r))? {
            Some(mut m) => {
                layout::check_meta(root, &found, &m, &[FORMAT, FORMAT_2, FORMAT_1])?;
                if m.format == FORMAT_1 || m.format == FORMAT_2 {
                    // Format 1 records are read as they are (items inside). Running runs'
                    // index entries move to the tag they share with pending ones; a crash
                    // half-way leaves the old format number and the move is finished on the
                    // next open. The new number keeps an older flowd out: it would miss the
                    // items of new runs and the running runs.
                    upgrade_running_index(&db.open_tree(Table::RunStatus.name())?)?;
                    meta.insert(META_FORMAT, FORMAT.to_string().as_bytes())?;
                    meta.flush()?;
                    m.format = FORMAT;
                    layout::write_marker(root, &m)?;
                }
                m
            }
            None => {
                layout::check_no_meta(root, &found, !db_is_empty(&db)?)?;
                let m = init_meta(&meta)?;
                layout::write_marker(root, &m)?;
                layout::restrict_permissions(root)?;
                m
            }
        };
        Self::assemble(db, Some(root.to_path_buf()), marker.store_id)
    }

    /// A store in a temporary file that sled deletes on drop.
    fn temporary() -> Result<SledKv> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open()?;
        let marker = init_meta(&db.open_tree(Table::Meta.name())?)?;
        Self::assemble(db, None, marker.store_id)
    }

    fn path(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    /// sled has no snapshots: its reads see each committed transaction whole, tree by tree.
    fn view(&self) -> SledView<'_> {
        SledView(self)
    }

    fn latest(&self) -> SledView<'_> {
        SledView(self)
    }

    fn write<R>(
        &self,
        tables: &[Table],
        timer: Option<&TxCounter>,
        f: impl FnMut(&mut SledTxn<'_>) -> Result<R>,
    ) -> Result<R> {
        let trees: Vec<&Tree> = tables.iter().map(|t| self.tree(*t)).collect();
        let f = std::cell::RefCell::new(f);
        let timer = timer.map(TxCounter::start);
        let out = trees.as_slice().transaction(|views: &Vec<TransactionalTree>| {
            if let Some(t) = &timer {
                t.entered();
            }
            let mut txn = SledTxn { tables, views, failure: Cell::new(None) };
            // sled calls the closure once at a time; the RefCell only lets it be `Fn`.
            let out = (f.borrow_mut())(&mut txn);
            if let Some(failure) = txn.failure.take() {
                // A conflict is retried by sled, a storage error returned as it is.
                return Err(ConflictableTransactionError::from(failure));
            }
            out.map_err(ConflictableTransactionError::Abort)
        });
        drop(timer);
        // A storage error here is also kept by sled's log writer: `fault` finds it.
        out.map_err(StoreError::from)
    }

    fn new_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    fn durable(&self) -> Result<()> {
        self.group.flush(|| {
            self.db.flush()?;
            Ok(())
        })
    }

    fn buffered(&self) -> Result<bool> {
        Ok(false)
    }

    fn flushes(&self) -> u64 {
        self.group.count.load(Ordering::Relaxed)
    }

    /// sled keeps the first I/O error of its log writer and returns it from every later
    /// call, a transaction's or a flush's: a flush asks for it (and costs nothing when every
    /// change was flushed already, which every changing call does).
    fn fault(&self) -> Option<String> {
        if let Some(fault) = self.group.fault.get() {
            return Some(fault.clone());
        }
        let e = StoreError::from(self.db.flush().err()?);
        self.group.record_fault(&e);
        Some(e.to_string())
    }
}

pub struct SledView<'a>(&'a SledKv);

impl View for SledView<'_> {
    type Bytes = IVec;

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<IVec>> {
        Ok(self.0.tree(t).get(key)?)
    }

    fn contains(&self, t: Table, key: &[u8]) -> Result<bool> {
        Ok(self.0.tree(t).contains_key(key)?)
    }

    fn range(&self, t: Table, lo: &[u8], hi: Option<&[u8]>, reverse: bool) -> Scan<'_, IVec> {
        let lo = std::ops::Bound::Included(lo.to_vec());
        let hi = hi.map_or(std::ops::Bound::Unbounded, |h| std::ops::Bound::Excluded(h.to_vec()));
        let iter = self.0.tree(t).range::<Vec<u8>, _>((lo, hi)).map(|r| r.map_err(StoreError::from));
        if reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        }
    }
}

/// A sled transaction over the trees of [`Kv::write`]'s `tables`, in that order.
pub struct SledTxn<'a> {
    tables: &'a [Table],
    views: &'a [TransactionalTree],
    /// What sled answered that the transaction must not go on after (a conflict to retry,
    /// a storage error): kept here, since the closure sees only [`StoreError`]s.
    failure: Cell<Option<UnabortableTransactionError>>,
}

impl SledTxn<'_> {
    fn tree(&self, t: Table) -> Result<&TransactionalTree> {
        let i = self
            .tables
            .iter()
            .position(|x| *x == t)
            .ok_or_else(|| StoreError::Invalid(format!("table {} is not part of this transaction", t.name())))?;
        Ok(&self.views[i])
    }

    fn failed<T>(&self, r: std::result::Result<T, UnabortableTransactionError>) -> Result<T> {
        r.map_err(|e| {
            let placeholder = StoreError::Db(sled::Error::ReportableBug(format!("transaction stopped: {e}")));
            self.failure.set(Some(e));
            placeholder
        })
    }
}

impl Txn for SledTxn<'_> {
    type Bytes = IVec;

    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<IVec>> {
        let r = self.tree(t)?.get(key);
        self.failed(r)
    }

    fn insert(&mut self, t: Table, key: &[u8], value: IVec) -> Result<()> {
        let r = self.tree(t)?.insert(key, value);
        self.failed(r).map(drop)
    }

    fn remove(&mut self, t: Table, key: &[u8]) -> Result<()> {
        let r = self.tree(t)?.remove(key);
        self.failed(r).map(drop)
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
    let old: Vec<IVec> = status.scan_prefix(b"r").keys().collect::<sled::Result<_>>()?;
    for chunk in old.chunks(CHUNK) {
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

fn init_meta(meta: &Tree) -> Result<Marker> {
    let m = super::new_marker(Backend::Sled);
    let entries = super::meta_entries(&m);
    meta.transaction(|t| {
        for (k, v) in &entries {
            t.insert(*k, v.as_slice())?;
        }
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
