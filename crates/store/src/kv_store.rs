//! [`Store`] on any [`Kv`]: every record, index and query of the store, written once.
//!
//! Each changing call works out what it can before its transaction (ids, keys, encodings:
//! the transaction holds the database's writer lock), then in the transaction reads what
//! the change depends on, checks it and stages the writes, commits, and returns once the
//! commit is durable (group commit: concurrent callers share one flush). The runs a call
//! wrote and that are still open stay decoded in [`OpenRuns`], so the engine's next write
//! to them skips decoding their record.

use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::clock::Clock;
use crate::commit::{TransactionTime, TxTime};
use crate::error::{Result, StoreError};
use crate::keys::{self, decode_json, encode_json};
use crate::kv::{Kv, Scan, Table, Txn, View};
use crate::layout::Backend;
use crate::model::*;
use crate::open_runs::OpenRuns;
use crate::retention;
use crate::transitions;
use crate::Store;

/// Deletions per transaction when pruning or resetting: bounds how long one transaction
/// holds the writer lock.
const CHUNK: usize = 512;

/// Records per transaction when importing a store.
const IMPORT_CHUNK: usize = 10_000;

/// The tables a new run is written to.
const NEW_RUN: [Table; 4] = [Table::Runs, Table::RunItems, Table::RunStatus, Table::RunFlow];
/// The tables an update of a run writes.
const RUN_UPDATE: [Table; 3] = [Table::Runs, Table::RunStatus, Table::RunRetry];

/// sled transactions lock the trees they name, so a write names `touched` only when it
/// writes to it.
fn with_touched(tables: &[Table], touched: bool) -> Vec<Table> {
    let mut all = tables.to_vec();
    if touched {
        all.push(Table::Touched);
    }
    all
}

pub struct KvStore<K: Kv> {
    kv: K,
    open: OpenRuns<K::Bytes>,
    tx_time: TxTime,
    clock: Clock,
}

impl<K: Kv> std::fmt::Debug for KvStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &K::BACKEND)
            .field("root", &self.kv.path())
            .field("store_id", &self.kv.store_id())
            .finish()
    }
}

impl<K: Kv> KvStore<K> {
    fn new(kv: K) -> Self {
        KvStore { kv, open: OpenRuns::default(), tx_time: TxTime::default(), clock: Clock::system() }
    }

    /// Opens the store at `path`, which must have been created before: a missing store is
    /// then a mistake (wrong path, lost volume), not a reason to start from nothing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        K::open(path.as_ref(), false).map(Self::new)
    }

    /// Creates a store at `path` if there is none (the directory is absent or empty), else
    /// opens it. Damage is reported as by [`KvStore::open`]: a marker without its database
    /// is never taken for "no store yet".
    pub fn create_or_open(path: impl AsRef<Path>) -> Result<Self> {
        K::open(path.as_ref(), true).map(Self::new)
    }

    /// A throw-away store, deleted on drop: the real implementation, for other crates' tests.
    pub fn temporary() -> Result<Self> {
        K::temporary().map(Self::new)
    }

    /// Replaces the clock (tests age records with it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `None` for a temporary store.
    pub fn path(&self) -> Option<&Path> {
        self.kv.path()
    }

    pub(crate) fn kv(&self) -> &K {
        &self.kv
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// When `key` was first recorded for `trigger` (for tests and inspection).
    pub fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>> {
        let k = keys::seen_key(trigger, key);
        match self.kv.view().get(Table::Seen, &k)? {
            Some(v) => Ok(Some(keys::time_from(Table::Seen.name(), &k, v.as_ref())?)),
            None => Ok(None),
        }
    }

    /// The webhook event stored under `id`, processed or not (for tests and inspection).
    pub fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        webhook_in(&self.kv.view(), id)
    }

    /// Forgets a trigger's seen keys and state, so that it baselines again. Returns the
    /// number of keys removed.
    pub fn reset_trigger(&self, trigger: &str) -> Result<u64> {
        let doomed: Vec<K::Bytes> = self
            .kv
            .view()
            .prefix(Table::Seen, &keys::str_prefix(trigger), false)
            .map(|e| e.map(|(k, _)| k))
            .collect::<Result<_>>()?;
        self.remove_all(Table::Seen, &doomed)?;
        self.kv.write(&[Table::Triggers], None, |tx| tx.remove(Table::Triggers, trigger.as_bytes()))?;
        self.kv.durable()?;
        Ok(doomed.len() as u64)
    }

    /// Whether the store holds any data (anything besides its meta records).
    pub(crate) fn holds_data(&self) -> Result<bool> {
        let view = self.kv.view();
        for t in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
            if view.range(t, b"", None, false).next().transpose()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes `entries` into `t` as they are, in chunks, for [`crate::migrate`]; returns how
    /// many. The caller makes them durable.
    pub(crate) fn import(&self, t: Table, entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Result<u64> {
        let mut n = 0u64;
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            chunk.clear();
            for entry in entries.by_ref().take(IMPORT_CHUNK) {
                chunk.push(entry?);
            }
            self.kv.write(&[t], None, |tx| {
                for (k, v) in &chunk {
                    tx.insert(t, k, K::Bytes::from(v.as_slice()))?;
                }
                Ok(())
            })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    fn remove_all(&self, t: Table, doomed: &[K::Bytes]) -> Result<()> {
        for chunk in doomed.chunks(CHUNK) {
            self.kv.write(&[t], None, |tx| {
                for k in chunk {
                    tx.remove(t, k.as_ref())?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn new_run(
        &self,
        new: &NewRun,
        trigger: Option<&str>,
        dedupe_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<NewRunPrepared<K::Bytes>> {
        if new.flow.is_empty() {
            return Err(StoreError::Invalid("a run needs a flow name".into()));
        }
        transitions::check_touched(&new.touched)?;
        let id = RunId(self.kv.new_id()?);
        let run = transitions::new_run(id, new, trigger, dedupe_key, now);
        Ok(NewRunPrepared {
            key: keys::run_key(id),
            record: K::Bytes::from(encode_json(&run)?),
            item: K::Bytes::from(encode_json(&new.item)?),
            run,
        })
    }

    /// The transaction of [`Store::apply_runs`] and [`Store::update_runs`]: each run's
    /// update worked out from its cached record before the lock is taken, and checked
    /// against the stored record under it.
    fn apply_batch(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        let now = self.now();
        // Read before any entry is taken (see `open_runs`).
        let generation = self.open.generation();
        let prepared: Vec<Option<Prepared<K::Bytes>>> =
            batch.iter().map(|(id, changes)| Prepared::new(&self.open, *id, changes, now)).collect();
        self.apply_prepared(batch, generation, prepared, now)
    }

    fn apply_prepared(
        &self,
        batch: &[(RunId, Vec<RunChange>)],
        generation: u64,
        mut prepared: Vec<Option<Prepared<K::Bytes>>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<()>>> {
        let touches = batch.iter().any(|(_, changes)| changes.iter().any(|c| matches!(c, RunChange::Touched { .. })));
        let tables = with_touched(&RUN_UPDATE, touches);
        let mut written: Vec<(K::Bytes, Run)> = Vec::new();
        let mut fast: Vec<usize> = Vec::new();
        let results = self.kv.write(&tables, Some(&self.tx_time.updates), |tx| {
            written.clear();
            fast.clear();
            // No run was rewritten by another path since the entries were taken: their
            // bytes are what is stored, and reading the records back would only confirm it.
            let undisturbed = self.open.generation() == generation;
            let mut out = Vec::with_capacity(batch.len());
            for (i, (id, changes)) in batch.iter().enumerate() {
                if let Some(p) = &prepared[i] {
                    let k = keys::run_key(*id);
                    if undisturbed || tx.get(Table::Runs, &k)?.is_some_and(|stored| stored.as_ref() == p.old.as_ref()) {
                        reindex(tx, &p.run, &p.before)?;
                        tx.insert(Table::Runs, &k, p.new.clone())?;
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
                    Err(e) if e.is_database() => return Err(e),
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
        Ok(results)
    }

    fn prune_seen(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        let view = self.kv.view();
        let entries = view.range(Table::Seen, b"", None, false);
        let doomed = retention::seen_keys_to_prune(Table::Seen.name(), entries, policy, now)?;
        drop(view);
        self.remove_all(Table::Seen, &doomed)?;
        Ok(doomed.len() as u64)
    }

    fn prune_runs(&self, policy: &Retention, now: DateTime<Utc>) -> Result<u64> {
        if policy.runs_max_age.is_none() && policy.runs_keep.is_none() {
            return Ok(0);
        }
        let mut finished: Vec<(RunId, u64)> = Vec::new();
        let view = self.kv.view();
        for status in [RunStatus::Succeeded, RunStatus::Dead] {
            for run in runs_with_status(&view, status)? {
                finished.push((run.id, keys::millis(run.updated_at)));
            }
        }
        drop(view);
        let doomed = retention::runs_to_prune(finished, policy, now);

        let tables = [Table::Runs, Table::RunItems, Table::RunStatus, Table::RunFlow, Table::RunRetry, Table::Touched];
        let mut removed = 0;
        for chunk in doomed.chunks(CHUNK) {
            removed += self.kv.write(&tables, None, |tx| {
                let mut n = 0u64;
                for id in chunk {
                    let k = keys::run_key(*id);
                    let Some(v) = tx.get(Table::Runs, &k)? else { continue };
                    let run: Run = decode_json(Table::Runs.name(), &k, v.as_ref())?;
                    // Re-checked inside the transaction: the run may have changed since
                    // the scan.
                    if !run.status.is_final() {
                        continue;
                    }
                    tx.remove(Table::Runs, &k)?;
                    tx.remove(Table::RunItems, &k)?;
                    unindex(tx, run.id, &Indexed::of(&run))?;
                    tx.remove(Table::RunFlow, &keys::flow_index_key(&run.flow, run.id))?;
                    for r in &run.touched {
                        tx.remove(Table::Touched, &keys::touched_key(r, run.id))?;
                    }
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
        for item in self.kv.view().range(Table::Webhooks, b"", None, false) {
            let (k, v) = item?;
            let ev: WebhookEvent = decode_json(Table::Webhooks.name(), k.as_ref(), v.as_ref())?;
            if ev.processed_at.is_some() && keys::millis(ev.received_at) < cutoff {
                doomed.push(k);
            }
        }
        self.remove_all(Table::Webhooks, &doomed)?;
        Ok(doomed.len() as u64)
    }
}

impl StoreError {
    /// An error of the database itself (not a refused change): a transaction stops at it.
    fn is_database(&self) -> bool {
        matches!(self, StoreError::Db(_) | StoreError::Fjall(_) | StoreError::Postgres(_) | StoreError::Io { .. })
    }
}

/// A new run worked out before its transaction: id, record and item encodings.
struct NewRunPrepared<B> {
    key: [u8; 8],
    record: B,
    item: B,
    run: Run,
}

impl<B: Clone + for<'a> From<&'a [u8]>> NewRunPrepared<B> {
    fn write(&self, tx: &mut impl Txn<Bytes = B>) -> Result<()> {
        let empty = || B::from(&[][..]);
        let id = self.run.id;
        tx.insert(Table::Runs, &self.key, self.record.clone())?;
        tx.insert(Table::RunItems, &self.key, self.item.clone())?;
        tx.insert(Table::RunStatus, &keys::status_index_key(self.run.status.tag(), id), empty())?;
        tx.insert(Table::RunFlow, &keys::flow_index_key(&self.run.flow, id), empty())?;
        for r in &self.run.touched {
            tx.insert(Table::Touched, &keys::touched_key(r, id), empty())?;
        }
        Ok(())
    }
}

/// What a run's entries in the status, retry and touched indexes were made from.
struct Indexed {
    tag: u8,
    retry: Option<DateTime<Utc>>,
    touched: usize,
}

impl Indexed {
    fn of(run: &Run) -> Indexed {
        Indexed { tag: run.status.tag(), retry: run.next_retry_at, touched: run.touched.len() }
    }
}

fn unindex<T: Txn>(tx: &mut T, id: RunId, old: &Indexed) -> Result<()> {
    tx.remove(Table::RunStatus, &keys::status_index_key(old.tag, id))?;
    if let Some(at) = old.retry {
        tx.remove(Table::RunRetry, &keys::time_key(at, &keys::run_key(id)))?;
    }
    Ok(())
}

/// Moves the run's index entries from what `before` made them to what `run` is now; the
/// `touched` index only grows. Pending → running keeps its status entry (one tag for both).
fn reindex<B: for<'a> From<&'a [u8]>>(tx: &mut impl Txn<Bytes = B>, run: &Run, before: &Indexed) -> Result<()> {
    let empty = || B::from(&[][..]);
    if (before.tag, before.retry) != (run.status.tag(), run.next_retry_at) {
        unindex(tx, run.id, before)?;
        tx.insert(Table::RunStatus, &keys::status_index_key(run.status.tag(), run.id), empty())?;
        if let (RunStatus::Failed, Some(at)) = (run.status, run.next_retry_at) {
            tx.insert(Table::RunRetry, &keys::time_key(at, &keys::run_key(run.id)), empty())?;
        }
    }
    for r in run.touched.get(before.touched..).unwrap_or_default() {
        tx.insert(Table::Touched, &keys::touched_key(r, run.id), empty())?;
    }
    Ok(())
}

/// One run's update worked out from its cached record before the transaction; used only
/// if the stored record is still `old` when the transaction runs.
struct Prepared<B> {
    old: B,
    new: B,
    run: Run,
    before: Indexed,
}

impl<B: AsRef<[u8]> + From<Vec<u8>>> Prepared<B> {
    /// `None` when the record is not cached or a change is refused: the transaction then
    /// takes the usual path, which reports the refusal.
    fn new(open: &OpenRuns<B>, id: RunId, changes: &[RunChange], now: DateTime<Utc>) -> Option<Prepared<B>> {
        let (old, mut run) = open.take_any(id)?;
        let before = Indexed::of(&run);
        for change in changes {
            transitions::apply(&mut run, change, now).ok()?;
        }
        let new = B::from(encode_json(&run).ok()?);
        Some(Prepared { old, new, run, before })
    }
}

/// Applies `changes` to the run `id` inside a transaction; returns the run as written and
/// its encoding. Nothing is written unless every change is accepted.
fn update_run_tx<T: Txn>(
    tx: &mut T,
    open: &OpenRuns<T::Bytes>,
    id: RunId,
    changes: &[RunChange],
    now: DateTime<Utc>,
) -> Result<(Run, T::Bytes)>
where
    T::Bytes: Clone + From<Vec<u8>> + for<'a> From<&'a [u8]>,
{
    let k = keys::run_key(id);
    let Some(v) = tx.get(Table::Runs, &k)? else {
        return Err(StoreError::RunNotFound(id));
    };
    let mut run: Run = match open.take(id, v.as_ref()) {
        Some(run) => run,
        None => decode_json(Table::Runs.name(), &k, v.as_ref())?,
    };
    // Only what the indexes key on is kept of the old record, not a copy of it.
    let before = Indexed::of(&run);
    for change in changes {
        transitions::apply(&mut run, change, now)?;
    }
    let bytes = T::Bytes::from(encode_json(&run)?);
    reindex(tx, &run, &before)?;
    tx.insert(Table::Runs, &k, bytes.clone())?;
    Ok((run, bytes))
}

fn load_run<V: View>(view: &V, id: RunId) -> Result<Option<Run>> {
    let k = keys::run_key(id);
    match view.get(Table::Runs, &k)? {
        Some(v) => Ok(Some(with_item(view, decode_json(Table::Runs.name(), &k, v.as_ref())?)?)),
        None => Ok(None),
    }
}

/// Puts the run's item (kept in `run_items`) back into a record read from `runs`.
fn with_item<V: View>(view: &V, mut run: Run) -> Result<Run> {
    if run.item.is_null() {
        let k = keys::run_key(run.id);
        if let Some(v) = view.get(Table::RunItems, &k)? {
            run.item = decode_json(Table::RunItems.name(), &k, v.as_ref())?;
        }
    }
    Ok(run)
}

/// The runs an index scan names that `keep` accepts, at most `limit` (0: all); a dangling
/// entry is corruption.
fn collect_runs<V: View>(
    view: &V,
    t: Table,
    scan: Scan<'_, V::Bytes>,
    keep: impl Fn(&Run) -> bool,
    limit: usize,
) -> Result<Vec<Run>> {
    let mut out = Vec::new();
    for item in scan {
        let (k, _) = item?;
        let id = keys::trailing_run_id(t.name(), k.as_ref())?;
        let run = load_run(view, id)?
            .ok_or_else(|| keys::corrupt_key(t.name(), k.as_ref(), &format!("points at missing run {id}")))?;
        if keep(&run) {
            out.push(run);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

fn runs_with_status<V: View>(view: &V, status: RunStatus) -> Result<Vec<Run>> {
    collect_runs(
        view,
        Table::RunStatus,
        view.prefix(Table::RunStatus, &[status.tag()], false),
        |r| r.status == status,
        0,
    )
}

fn webhook_in<V: View>(view: &V, id: &str) -> Result<Option<WebhookEvent>> {
    match view.get(Table::Webhooks, id.as_bytes())? {
        Some(v) => Ok(Some(decode_json(Table::Webhooks.name(), id.as_bytes(), v.as_ref())?)),
        None => Ok(None),
    }
}

/// Scans `index` newest first below `prefix ++ before` (all of `prefix` without `before`).
fn newest_first<'v, V: View>(view: &'v V, index: Table, prefix: &[u8], before: Option<RunId>) -> Scan<'v, V::Bytes> {
    match before {
        Some(b) => {
            let mut end = prefix.to_vec();
            end.extend_from_slice(&keys::run_key(b));
            view.range(index, prefix, Some(&end), true)
        }
        None => view.prefix(index, prefix, true),
    }
}

impl<K: Kv> Store for KvStore<K> {
    fn store_id(&self) -> &str {
        self.kv.store_id()
    }

    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> Result<Vec<bool>> {
        let prefix = keys::str_prefix(trigger);
        let mut k = prefix.clone();
        let view = self.kv.latest();
        keys.iter()
            .map(|key| {
                k.truncate(prefix.len());
                k.extend_from_slice(key.as_bytes());
                Ok(!view.contains(Table::Seen, &k)?)
            })
            .collect()
    }

    fn trigger_state(&self, trigger: &str) -> Result<Option<Value>> {
        match self.kv.latest().get(Table::Triggers, trigger.as_bytes())? {
            Some(v) => Ok(Some(decode_json(Table::Triggers.name(), trigger.as_bytes(), v.as_ref())?)),
            None => Ok(None),
        }
    }

    fn commit_poll(&self, commit: &PollCommit) -> Result<PollOutcome> {
        commit.check()?;
        let now = self.now();
        let state = commit.state.as_ref().map(encode_json).transpose()?.map(K::Bytes::from);
        let seen_value = K::Bytes::from(&keys::time_value(now)[..]);
        // Keys, ids and encodings are worked out before the transaction takes the lock.
        let mut prepared = Vec::with_capacity(commit.items.len());
        for item in &commit.items {
            let run = match &item.run {
                Some(new) => Some(self.new_run(new, Some(&commit.trigger), Some(&item.key), now)?),
                None => None,
            };
            prepared.push((keys::seen_key(&commit.trigger, &item.key), run));
        }
        let touches = prepared.iter().any(|(_, r)| r.as_ref().is_some_and(|r| !r.run.touched.is_empty()));
        let tables =
            with_touched(&[Table::Seen, Table::Triggers, NEW_RUN[0], NEW_RUN[1], NEW_RUN[2], NEW_RUN[3]], touches);
        let outcome = self.kv.write(&tables, Some(&self.tx_time.polls), |tx| {
            if let Some(state) = &state {
                tx.insert(Table::Triggers, commit.trigger.as_bytes(), state.clone())?;
            }
            let mut outcome = PollOutcome::default();
            for (item, (seen_key, run)) in commit.items.iter().zip(&prepared) {
                if tx.get(Table::Seen, seen_key)?.is_some() {
                    outcome.already_seen.push(item.key.clone());
                    continue;
                }
                tx.insert(Table::Seen, seen_key, seen_value.clone())?;
                if let Some(run) = run {
                    run.write(tx)?;
                    outcome.created.push((item.key.clone(), run.run.id));
                }
            }
            Ok(outcome)
        })?;
        // The engine's first write to each new run (usually within milliseconds) finds it
        // decoded. Runs of already-seen keys were never written; their ids stay unused.
        let created: HashSet<RunId> = outcome.created.iter().map(|(_, id)| *id).collect();
        let mut outcome = outcome;
        outcome.created_items.reserve_exact(created.len());
        for (_, run) in prepared {
            if let Some(p) = run.filter(|p| created.contains(&p.run.id)) {
                outcome.created_items.push(Box::from(p.item.as_ref()));
                self.open.keep(p.record, p.run);
            }
        }
        self.kv.durable()?;
        Ok(outcome)
    }

    fn create_run(&self, new: &NewRun) -> Result<RunId> {
        let p = self.new_run(new, None, None, self.now())?;
        self.kv.write(&with_touched(&NEW_RUN, !p.run.touched.is_empty()), None, |tx| p.write(tx))?;
        let id = p.run.id;
        self.open.keep(p.record, p.run);
        self.kv.durable()?;
        Ok(id)
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        load_run(&self.kv.view(), id)
    }

    fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        let view = self.kv.view();
        let keep = |r: &Run| {
            f.status.is_none_or(|s| r.status == s)
                && f.flow.as_ref().is_none_or(|fl| &r.flow == fl)
                && f.touched.as_ref().is_none_or(|t| r.touched.contains(t))
                && f.since.is_none_or(|t| r.created_at >= t)
                && f.until.is_none_or(|t| r.created_at < t)
        };
        // The narrowest index the filter names; `keep` checks the rest on the record.
        if let Some(record) = &f.touched {
            let scan = newest_first(&view, Table::Touched, &keys::touched_prefix(record), f.before);
            return collect_runs(&view, Table::Touched, scan, keep, f.limit);
        }
        if let Some(status) = f.status {
            let scan = newest_first(&view, Table::RunStatus, &[status.tag()], f.before);
            return collect_runs(&view, Table::RunStatus, scan, keep, f.limit);
        }
        if let Some(flow) = &f.flow {
            let scan = newest_first(&view, Table::RunFlow, &keys::str_prefix(flow), f.before);
            return collect_runs(&view, Table::RunFlow, scan, keep, f.limit);
        }
        let mut out = Vec::new();
        for item in newest_first(&view, Table::Runs, b"", f.before) {
            let (k, v) = item?;
            let run: Run = decode_json(Table::Runs.name(), k.as_ref(), v.as_ref())?;
            if keep(&run) {
                out.push(with_item(&view, run)?);
                if f.limit != 0 && out.len() >= f.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn update_run(&self, id: RunId, changes: &[RunChange]) -> Result<Run> {
        let now = self.now();
        let touches = changes.iter().any(|c| matches!(c, RunChange::Touched { .. }));
        let (run, bytes) = self
            .kv
            .write(&with_touched(&RUN_UPDATE, touches), None, |tx| update_run_tx(tx, &self.open, id, changes, now))?;
        self.open.keep(bytes, run.clone());
        self.kv.durable()?;
        with_item(&self.kv.view(), run)
    }

    fn update_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.apply_batch(batch)?;
        self.kv.durable()?;
        Ok(results)
    }

    fn apply_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.apply_batch(batch)?;
        // Handed to the OS at once, so a killed process loses nothing; the `fdatasync`
        // (for a power cut) waits for the next flush. A backend whose buffers do not
        // survive a kill flushes now.
        if !self.kv.buffered()? {
            self.kv.durable()?;
        }
        Ok(results)
    }

    fn list_resumable(&self) -> Result<Vec<Run>> {
        // One tag holds both; keys sort by run id within it.
        let view = self.kv.view();
        let scan = view.prefix(Table::RunStatus, &[RunStatus::Pending.tag()], false);
        collect_runs(&view, Table::RunStatus, scan, |r| matches!(r.status, RunStatus::Pending | RunStatus::Running), 0)
    }

    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Run>> {
        // Every key at or before `now` sorts below `now ms + 1`.
        let end = (keys::millis(now).saturating_add(1)).to_be_bytes();
        let view = self.kv.view();
        let scan = view.range(Table::RunRetry, b"", Some(&end), false);
        collect_runs(
            &view,
            Table::RunRetry,
            scan,
            |r| r.status == RunStatus::Failed && r.next_retry_at.is_some_and(|at| at <= now),
            limit,
        )
    }

    fn release_held(&self, flow: &str) -> Result<Vec<RunId>> {
        let held: Vec<RunId> = runs_with_status(&self.kv.view(), RunStatus::Held)?
            .iter()
            .filter(|r| r.flow == flow)
            .map(|r| r.id)
            .collect();
        if held.is_empty() {
            return Ok(held);
        }
        let now = self.now();
        let released = self.kv.write(&RUN_UPDATE, None, |tx| {
            let mut released = Vec::with_capacity(held.len());
            for id in &held {
                // Re-read inside the transaction: only runs still held move.
                let k = keys::run_key(*id);
                let Some(v) = tx.get(Table::Runs, &k)? else { continue };
                let run: Run = decode_json(Table::Runs.name(), &k, v.as_ref())?;
                if run.status != RunStatus::Held {
                    continue;
                }
                let change = RunChange::Status { status: RunStatus::Pending, error: None };
                update_run_tx(tx, &self.open, *id, &[change], now)?;
                released.push(*id);
            }
            Ok(released)
        })?;
        self.kv.durable()?;
        Ok(released)
    }

    fn get_tokens(&self, account: &str) -> Result<Option<Value>> {
        match self.kv.latest().get(Table::Tokens, account.as_bytes())? {
            Some(v) => Ok(Some(decode_json(Table::Tokens.name(), account.as_bytes(), v.as_ref())?)),
            None => Ok(None),
        }
    }

    fn put_tokens(&self, account: &str, tokens: &Value) -> Result<()> {
        let v = K::Bytes::from(encode_json(tokens)?);
        self.kv.write(&[Table::Tokens], None, |tx| tx.insert(Table::Tokens, account.as_bytes(), v.clone()))?;
        // A refreshed token pair replaces the old refresh token at GHL: losing it on a
        // crash would lock the account out.
        self.kv.durable()
    }

    fn delete_tokens(&self, account: &str) -> Result<bool> {
        let existed = self.kv.write(&[Table::Tokens], None, |tx| {
            let existed = tx.get(Table::Tokens, account.as_bytes())?.is_some();
            if existed {
                tx.remove(Table::Tokens, account.as_bytes())?;
            }
            Ok(existed)
        })?;
        self.kv.durable()?;
        Ok(existed)
    }

    fn put_webhook_event(&self, id: &str, payload: &Value) -> Result<bool> {
        if id.is_empty() {
            return Err(StoreError::Invalid("a webhook event needs an id".into()));
        }
        let ev =
            WebhookEvent { id: id.to_string(), payload: payload.clone(), received_at: self.now(), processed_at: None };
        let v = K::Bytes::from(encode_json(&ev)?);
        let queue_key = keys::time_key(ev.received_at, id.as_bytes());
        let inserted = self.kv.write(&[Table::Webhooks, Table::WebhookQueue], None, |tx| {
            if tx.get(Table::Webhooks, id.as_bytes())?.is_some() {
                return Ok(false);
            }
            tx.insert(Table::Webhooks, id.as_bytes(), v.clone())?;
            tx.insert(Table::WebhookQueue, &queue_key, K::Bytes::from(&[][..]))?;
            Ok(true)
        })?;
        if inserted {
            self.kv.durable()?;
        }
        Ok(inserted)
    }

    fn list_unprocessed_webhooks(&self, limit: usize) -> Result<Vec<WebhookEvent>> {
        let view = self.kv.view();
        let name = Table::WebhookQueue.name();
        let mut out = Vec::new();
        for item in view.range(Table::WebhookQueue, b"", None, false) {
            let (k, _) = item?;
            let k = k.as_ref();
            let id = k.get(8..).ok_or_else(|| keys::corrupt_key(name, k, "short key"))?;
            let id = std::str::from_utf8(id).map_err(|_| keys::corrupt_key(name, k, "id is not utf-8"))?;
            let ev = webhook_in(&view, id)?.ok_or_else(|| keys::corrupt_key(name, k, "points at a missing event"))?;
            out.push(ev);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn complete_webhook_event(&self, id: &str) -> Result<()> {
        let now = self.now();
        self.kv.write(&[Table::Webhooks, Table::WebhookQueue], None, |tx| {
            let Some(v) = tx.get(Table::Webhooks, id.as_bytes())? else {
                return Err(StoreError::Invalid(format!("webhook event {id:?} was never stored")));
            };
            let mut ev: WebhookEvent = decode_json(Table::Webhooks.name(), id.as_bytes(), v.as_ref())?;
            if ev.processed_at.is_some() {
                return Err(StoreError::Conflict(format!("webhook event {id:?} was already processed")));
            }
            ev.processed_at = Some(now);
            tx.insert(Table::Webhooks, id.as_bytes(), K::Bytes::from(encode_json(&ev)?))?;
            tx.remove(Table::WebhookQueue, &keys::time_key(ev.received_at, id.as_bytes()))
        })?;
        self.kv.durable()
    }

    fn prune(&self, policy: &Retention) -> Result<PruneStats> {
        let now = self.now();
        let stats = PruneStats {
            seen_removed: self.prune_seen(policy, now)?,
            runs_removed: self.prune_runs(policy, now)?,
            webhooks_removed: self.prune_webhooks(policy, now)?,
        };
        self.kv.durable()?;
        Ok(stats)
    }

    fn flush(&self) -> Result<()> {
        self.kv.durable()
    }

    fn transaction_time(&self) -> TransactionTime {
        self.tx_time.read(self.kv.flushes())
    }

    fn backend(&self) -> Backend {
        K::BACKEND
    }

    fn fault(&self) -> Option<String> {
        self.kv.fault()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::fjall::FjallKv;

    fn running() -> Vec<RunChange> {
        vec![RunChange::Status { status: RunStatus::Running, error: None }]
    }

    /// The cached record is taken, another path rewrites the run, then the batch commits:
    /// the batch must see the rewrite (here: refuse to revive a dead run), not overwrite it.
    #[test]
    fn a_rewrite_between_taking_a_cached_record_and_committing_is_not_overwritten() {
        let store = KvStore::<FjallKv>::temporary().unwrap();
        let id = store.create_run(&NewRun::new("f", serde_json::json!({"n": 1}))).unwrap();
        let batch = vec![(id, running())];
        let now = store.now();
        let generation = store.open.generation();
        let prepared: Vec<Option<Prepared<_>>> =
            batch.iter().map(|(id, changes)| Prepared::new(&store.open, *id, changes, now)).collect();
        assert!(prepared[0].is_some(), "the new run's record is cached");

        let dead = RunChange::Status { status: RunStatus::Dead, error: Some("discarded".into()) };
        store.update_run(id, &[dead]).unwrap();

        let results = store.apply_prepared(&batch, generation, prepared, now).unwrap();
        assert!(matches!(results[0], Err(StoreError::Conflict(_))), "{results:?}");
        let run = store.get_run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Dead);
        assert_eq!(runs_with_status(&store.kv.view(), RunStatus::Running).unwrap().len(), 0);
    }

    /// Undisturbed, the batch writes from the cache without reading the record back, and
    /// what it writes is what a read returns.
    #[test]
    fn an_undisturbed_batch_writes_from_the_cache() {
        let store = KvStore::<FjallKv>::temporary().unwrap();
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
