//! The narrow key-value layer the store is written on: named tables of ordered byte keys,
//! atomic write transactions over several tables, and consistent reads. [`crate::KvStore`]
//! keeps every record, index and query once on top of it; `fjall` and `sled` are thin
//! adapters that also own their database's open, create and damage checks.
//!
//! # Tables
//!
//! | table            | key                                   | value                     |
//! |------------------|---------------------------------------|---------------------------|
//! | `meta`           | `format`, `store_id`, `created_at` (fjall also `next_run_id`, `generation`, u64 BE) | text |
//! | `seen`           | `len(trigger) ++ trigger ++ key`      | first-seen ms (u64 BE)    |
//! | `triggers`       | trigger                               | state (JSON)              |
//! | `runs`           | run id (u64 BE)                       | [`crate::Run`] (JSON, with steps, item `null`) |
//! | `run_items`      | run id (u64 BE)                       | the run's trigger item (JSON) |
//! | `run_status`     | status tag (1 byte; one for pending and running) ++ run id | empty |
//! | `run_flow`       | `len(flow) ++ flow ++ run id`         | empty                     |
//! | `run_retry`      | retry ms (u64 BE) ++ run id           | empty                     |
//! | `tokens`         | account                               | JSON                      |
//! | `webhooks`       | webhook id                            | [`crate::WebhookEvent`] (JSON) |
//! | `webhook_queue`  | received ms (u64 BE) ++ webhook id    | empty (unprocessed only)  |
//! | `touched`        | `len(record) ++ record ++ run id`     | empty                     |
//!
//! The names are the sled trees' and the fjall partitions': both backends keep the same
//! keys and values, so a store moves from one to the other record for record
//! ([`crate::migrate`]). The `run_*` and `touched` tables are indexes over `runs`, written
//! only in the transaction that writes the run record, so they cannot drift from it.
//!
//! A run's steps live inside its record (a handful per run, and rewriting the record keeps
//! a run and its steps consistent). Its trigger item does not: it never changes and is most
//! of the record, so it is written once to `run_items` and each update rewrites only the
//! small rest. Records of store format 1 (sled only) keep the item inside and are read as
//! they are.

pub mod fjall;
pub mod sled;

use std::path::Path;

pub use crate::commit::TxCounter;
use crate::error::Result;
use crate::layout::Backend;

/// The tables of a store, under the names they have on disk (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Table {
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
    Touched,
}

impl Table {
    pub const COUNT: usize = 12;

    pub const ALL: [Table; Table::COUNT] = [
        Table::Meta,
        Table::Seen,
        Table::Triggers,
        Table::Runs,
        Table::RunItems,
        Table::RunStatus,
        Table::RunFlow,
        Table::RunRetry,
        Table::Tokens,
        Table::Webhooks,
        Table::WebhookQueue,
        Table::Touched,
    ];

    /// The name on disk, also used in error messages whichever backend holds the data.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Seen => "seen",
            Table::Triggers => "triggers",
            Table::Runs => "runs",
            Table::RunItems => "run_items",
            Table::RunStatus => "run_status",
            Table::RunFlow => "run_flow",
            Table::RunRetry => "run_retry",
            Table::Tokens => "tokens",
            Table::Webhooks => "webhooks",
            Table::WebhookQueue => "webhook_queue",
            Table::Touched => "touched",
        }
    }

    /// Whether a store of format 3 always has this table, so that one found missing was
    /// lost. `touched` came later within format 3: a store made before it has none, which
    /// is opened as an empty index (its runs touched nothing that was recorded).
    pub fn always_present(self) -> bool {
        self != Table::Touched
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Entries of a scan, in key order (or reverse).
pub type Scan<'a, B> = Box<dyn Iterator<Item = Result<(B, B)>> + 'a>;

/// Reads at one point in time: a change committed by a write transaction is seen whole or
/// not at all across every table the view reads.
pub trait View {
    type Bytes: AsRef<[u8]>;

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Self::Bytes>>;

    fn contains(&self, t: Table, key: &[u8]) -> Result<bool> {
        Ok(self.get(t, key)?.is_some())
    }

    /// The entries with `lo <= key < hi` (`hi` `None`: to the end of the table).
    fn range(&self, t: Table, lo: &[u8], hi: Option<&[u8]>, reverse: bool) -> Scan<'_, Self::Bytes>;

    /// The entries whose key starts with `prefix`.
    fn prefix(&self, t: Table, prefix: &[u8], reverse: bool) -> Scan<'_, Self::Bytes> {
        let end = prefix_end(prefix);
        self.range(t, prefix, end.as_deref(), reverse)
    }
}

/// One write transaction: what it reads sees the tables as they are plus its own writes,
/// and no other write comes between its first read and its commit. Its writes are
/// committed together, or not at all if the transaction's closure fails.
pub trait Txn {
    type Bytes: AsRef<[u8]>;

    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Self::Bytes>>;
    fn insert(&mut self, t: Table, key: &[u8], value: Self::Bytes) -> Result<()>;
    fn remove(&mut self, t: Table, key: &[u8]) -> Result<()>;
}

/// An embedded database holding a store's tables, with its files, marker checks and
/// durability. See the module docs.
pub trait Kv: Send + Sync + Sized + 'static {
    const BACKEND: Backend;
    /// The database's own byte container, cheap to clone (reference counted): a record's
    /// bytes are shared between the write and the open-runs cache.
    type Bytes: AsRef<[u8]> + Clone + Send + Sync + From<Vec<u8>> + for<'a> From<&'a [u8]> + 'static;
    type View<'a>: View<Bytes = Self::Bytes>
    where
        Self: 'a;
    type Txn<'a>: Txn<Bytes = Self::Bytes>
    where
        Self: 'a;

    /// Opens the database of the store at `root`, checking it against its marker, or
    /// creates the store when `create` is set and there is none.
    fn open(root: &Path, create: bool) -> Result<Self>;
    /// A throw-away database, deleted on drop.
    fn temporary() -> Result<Self>;
    /// `None` for a temporary database.
    fn path(&self) -> Option<&Path>;
    /// The id written at creation, in the database and in the marker file.
    fn store_id(&self) -> &str;

    /// Reads at one point in time (see [`View`]).
    fn view(&self) -> Self::View<'_>;
    /// Reads of whatever is committed when each read runs, for single-key reads (and
    /// many independent ones, like a poll's seen checks) that need no common point in
    /// time: fjall then takes no snapshot.
    fn latest(&self) -> Self::View<'_>;

    /// Runs `f` as one write transaction over `tables` (every table it reads or writes)
    /// and commits what it wrote if it returns `Ok`. `f` may run more than once (sled
    /// retries a transaction that met a concurrent one): each run starts from nothing.
    /// `timer` counts how long the transaction waited for and held the writer lock.
    /// Committed is not durable: see [`Kv::durable`].
    fn write<R>(
        &self,
        tables: &[Table],
        timer: Option<&TxCounter>,
        f: impl FnMut(&mut Self::Txn<'_>) -> Result<R>,
    ) -> Result<R>;

    /// A run id never handed out before, also after the newest runs were pruned.
    fn new_id(&self) -> Result<u64>;

    /// Returns once every write committed before the call is on disk; concurrent callers
    /// share one flush (group commit, [`crate::commit::GroupFlush`]).
    fn durable(&self) -> Result<()>;

    /// Hands what was committed to the OS without waiting for the disk, and says whether
    /// that survives the process being killed (fjall: its journal is in the OS's buffers);
    /// `false` means only [`Kv::durable`] does (sled).
    fn buffered(&self) -> Result<bool>;

    /// Flushes to disk run so far.
    fn flushes(&self) -> u64;

    /// See [`crate::Store::fault`].
    fn fault(&self) -> Option<String>;
}

/// The first key after every key that starts with `prefix`, `None` if there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The `meta` entries a new store starts with (format, store id, creation time).
pub(crate) fn meta_entries(m: &crate::layout::Marker) -> [(&'static [u8], Vec<u8>); 3] {
    use crate::layout::{META_CREATED_AT, META_FORMAT, META_STORE_ID};
    [
        (META_FORMAT, m.format.to_string().into_bytes()),
        (META_STORE_ID, m.store_id.clone().into_bytes()),
        (META_CREATED_AT, m.created_at.to_rfc3339().into_bytes()),
    ]
}

/// The marker a new store of `engine` gets.
pub(crate) fn new_marker(engine: Backend) -> crate::layout::Marker {
    crate::layout::Marker {
        engine,
        format: crate::layout::FORMAT,
        store_id: uuid::Uuid::new_v4().to_string(),
        created_at: chrono::Utc::now(),
        generation: 0,
    }
}

/// The marker `meta` describes, read with `get`. `Ok(None)`: no meta at all. `Err(reason)`:
/// meta present but unreadable.
pub(crate) fn read_meta<B: AsRef<[u8]>, E: std::fmt::Display>(
    engine: Backend,
    get: impl Fn(&[u8]) -> std::result::Result<Option<B>, E>,
) -> std::result::Result<Option<crate::layout::Marker>, String> {
    use crate::layout::{META_CREATED_AT, META_FORMAT, META_STORE_ID};
    let get = |k: &[u8]| get(k).map_err(|e| format!("cannot read meta: {e}"));
    let (format, id, created) = (get(META_FORMAT)?, get(META_STORE_ID)?, get(META_CREATED_AT)?);
    let bytes = |v: &Option<B>| v.as_ref().map(|v| v.as_ref().to_vec());
    crate::layout::marker_from_meta(
        engine,
        bytes(&format).as_deref(),
        bytes(&id).as_deref(),
        bytes(&created).as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"p"), Some(b"q".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn every_table_has_its_own_name_and_index() {
        let names: std::collections::HashSet<_> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Table::COUNT);
        assert!(Table::ALL.iter().enumerate().all(|(i, t)| t.index() == i));
    }
}
