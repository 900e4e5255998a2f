//! [`Store`] in PostgreSQL: [`PgStore`], for several flowd nodes on one database.
//!
//! The domain is implemented in SQL directly (not over the key-value layer the embedded
//! backends share): real tables and indexes (`migrations/`), and PostgreSQL's transactions
//! and row locks for what the embedded store does under its writer lock. The rules of a
//! run's changes are [`crate::transitions`], as for every backend: a change is worked out
//! on the record read `FOR UPDATE` inside the transaction, so two nodes never apply changes
//! to one run from the same stale copy.
//!
//! A poll commit is one transaction: the trigger's state, its seen keys
//! (`INSERT ... ON CONFLICT DO NOTHING RETURNING key`: of two writers committing one key,
//! the second waits for the first and learns it was seen) and a run for each key it
//! inserted. So two nodes can never both fire an item.
//!
//! Durability: every changing call returns after its commit, with PostgreSQL's
//! `synchronous_commit` (on by default: the commit is flushed to the server's WAL).
//! [`Store::apply_runs`] commits with `synchronous_commit = off`: visible at once and kept
//! when flowd is killed (the server has it), flushed by the server within moments or by the
//! next [`Store::flush`] or durable commit (the WAL is written in order), as the embedded
//! store's buffered writes wait for the next fsync. A server that crashes first loses them,
//! and a flush after its restart succeeds without them, so what must be durable is never
//! left to a flush here ([`Store::flush_covers_applied`] is false): it is committed
//! synchronously.

mod cluster;
mod pool;

pub use cluster::{NodeOptions, DEFAULT_LEASE_TTL};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, NoTls};
use serde_json::Value;

use crate::clock::Clock;
use crate::commit::{TransactionTime, TxTime};
use crate::error::{Result, StoreError};
use crate::keys::{decode_json, encode_json};
use crate::layout::Backend;
use crate::model::*;
use crate::retention;
use crate::transitions;
use crate::Store;

use pool::Pool;

refinery::embed_migrations!("src/pg/migrations");

/// Connections (and threads) a store opens unless told otherwise: the engine's run writers,
/// pollers and the HTTP API's reads each hold one for the length of a call.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Key of the advisory lock migrations run under, so nodes starting together migrate once.
const MIGRATION_LOCK: i64 = 0x666c_6f77_6400_0001;

/// Where a [`PgStore`] connects. The password is given apart from the URL, so that a URL
/// can be shown (in logs, in `flowd store info`) without it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/database` (a password in it is used too, but flowd's
    /// config refuses one there: passwords come by reference).
    pub url: String,
    pub password: Option<String>,
    /// The schema the store's tables live in (created if absent); `None`: the database's
    /// default (`public`, as its `search_path` says).
    pub schema: Option<String>,
    /// How many connections (each on its own thread) the store keeps.
    pub connections: usize,
    /// The name the connections show in `pg_stat_activity` (e.g. the node's name).
    pub application_name: String,
    /// Set to open the store as a cluster node ([`Store::cluster`]): the service, and the
    /// commands that execute runs. Without it, the handle reads and writes as told, with no
    /// lease or claim of its own (tools, read-only commands).
    pub node: Option<NodeOptions>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redacted_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("connections", &self.connections)
            .field("application_name", &self.application_name)
            .field("node", &self.node)
            .finish()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            schema: None,
            connections: DEFAULT_CONNECTIONS,
            application_name: "flowd".into(),
            node: None,
        }
    }

    fn config(&self) -> Result<postgres::Config> {
        let mut config: postgres::Config =
            self.url.parse().map_err(|e| StoreError::Invalid(format!("store URL {}: {e}", redacted_url(&self.url))))?;
        if let Some(p) = &self.password {
            config.password(p);
        }
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
            config.options(&format!("-c search_path={schema}"));
        }
        config.application_name(&self.application_name);
        config.connect_timeout(std::time::Duration::from_secs(10));
        Ok(config)
    }
}

/// `url` with any password in it replaced, for messages.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

/// A schema name is put into SQL and into a connection option as it is: only
/// lower-case letters, digits and `_` (not first a digit), at most 63 bytes.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema name {schema:?}: use lower-case letters, digits and _ (at most 63, not starting with a digit)"
        )))
    }
}

/// Whether to create the schema's tables when they are absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create (or migrate) the tables: the service, and `flowd store migrate --to`.
    Yes,
    /// A database without flowd's tables is [`StoreError::NotFound`]: commands that read
    /// what a service recorded. An older schema is still migrated.
    No,
}

pub struct PgStore {
    pool: Pool,
    store_id: String,
    clock: Clock,
    tx_time: TxTime,
    /// Durable commits made (each one a WAL flush on the server).
    flushes: Arc<AtomicU64>,
    /// An [`Store::apply_runs`] commit may not be flushed yet.
    unflushed: Arc<AtomicBool>,
    /// Set for a schema made by [`PgStore::temporary_schema`]: dropped with the store.
    drop_schema: Option<(postgres::Config, String)>,
    url: String,
    schema: Option<String>,
    /// Set when the store was opened as a cluster node.
    node: Option<cluster::Node>,
    config: postgres::Config,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &Backend::Postgres)
            .field("url", &self.url)
            .field("store_id", &self.store_id)
            .finish()
    }
}

fn to_i64(id: RunId) -> Result<i64> {
    i64::try_from(id.0).map_err(|_| StoreError::RunNotFound(id))
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    String::from_utf8(encode_json(v)?).map_err(|e| StoreError::Invalid(format!("record is not UTF-8: {e}")))
}

/// A run from its `record` and `item` columns.
fn decode_run(id: i64, record: &str, item: Option<&str>) -> Result<Run> {
    let key = id.to_string();
    let mut run: Run = decode_json("runs", key.as_bytes(), record.as_bytes())?;
    if let Some(item) = item {
        run.item = decode_json("runs.item", key.as_bytes(), item.as_bytes())?;
    }
    Ok(run)
}

const RUN_COLUMNS: &str = "id, record::text, item::text";

fn runs_from(rows: &[postgres::Row]) -> Result<Vec<Run>> {
    rows.iter().map(|r| decode_run(r.try_get(0)?, r.try_get(1)?, r.try_get::<_, Option<&str>>(2)?)).collect()
}

/// A run's row as an update writes it.
struct RunRow {
    id: i64,
    status: &'static str,
    updated_at: DateTime<Utc>,
    next_retry_at: Option<DateTime<Utc>>,
    record: String,
    /// Refs added to [`Run::touched`].
    touched: Vec<String>,
    /// The node instance executing it (see [`crate::Cluster`]).
    owner: Option<String>,
}

impl RunRow {
    fn of(run: &Run, touched_before: usize, owner: Option<String>) -> Result<RunRow> {
        Ok(RunRow {
            owner,
            id: to_i64(run.id)?,
            status: run.status.as_str(),
            updated_at: run.updated_at,
            next_retry_at: run.next_retry_at,
            record: json_text(&run)?,
            touched: run.touched.get(touched_before..).unwrap_or_default().to_vec(),
        })
    }
}

/// Writes updated runs and their new `touched` refs, in two statements whatever their number.
fn write_runs(tx: &mut impl GenericClient, rows: &[RunRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let updated: Vec<DateTime<Utc>> = rows.iter().map(|r| r.updated_at).collect();
    let retry: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_retry_at).collect();
    let records: Vec<&str> = rows.iter().map(|r| r.record.as_str()).collect();
    let owners: Vec<Option<&str>> = rows.iter().map(|r| r.owner.as_deref()).collect();
    tx.execute(
        "UPDATE runs AS r SET status = u.status, updated_at = u.updated_at, next_retry_at = u.next_retry_at, \
         record = u.record::json, owner = u.owner \
         FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[]) \
           AS u(id, status, updated_at, next_retry_at, record, owner) \
         WHERE r.id = u.id",
        &[&ids, &statuses, &updated, &retry, &records, &owners],
    )?;
    insert_touched(tx, rows.iter().flat_map(|r| r.touched.iter().map(move |t| (t.as_str(), r.id))))
}

fn insert_touched<'a>(tx: &mut impl GenericClient, refs: impl Iterator<Item = (&'a str, i64)>) -> Result<()> {
    let (records, ids): (Vec<&str>, Vec<i64>) = refs.unzip();
    if !records.is_empty() {
        tx.execute(
            "INSERT INTO run_touched (record, run_id) SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT DO NOTHING",
            &[&records, &ids],
        )?;
    }
    Ok(())
}

/// Inserts new runs (records made by [`transitions::new_run`]) with their items, claimed by
/// `owner` (`None`: for any node to claim).
fn insert_runs(tx: &mut impl GenericClient, runs: &[(Run, String)], owner: Option<&str>) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(runs.len());
    let mut flows = Vec::with_capacity(runs.len());
    let mut statuses = Vec::with_capacity(runs.len());
    let mut created = Vec::with_capacity(runs.len());
    let mut records = Vec::with_capacity(runs.len());
    let mut items = Vec::with_capacity(runs.len());
    for (run, item) in runs {
        ids.push(to_i64(run.id)?);
        flows.push(run.flow.as_str());
        statuses.push(run.status.as_str());
        created.push(run.created_at);
        records.push(json_text(run)?);
        items.push(item.as_str());
    }
    tx.execute(
        "INSERT INTO runs (id, flow, status, created_at, updated_at, record, item, owner) \
         SELECT id, flow, status, created, created, record::json, item::json, $7 \
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]) \
           AS u(id, flow, status, created, record, item)",
        &[&ids, &flows, &statuses, &created, &records, &items, &owner],
    )?;
    insert_touched(tx, runs.iter().flat_map(|(run, _)| run.touched.iter().map(|t| (t.as_str(), run.id.0 as i64))))
}

/// Hands out `n` run ids (outside any transaction: a sequence is not rolled back, and an
/// id left unused by a refused commit is a gap, as with the embedded store).
fn new_ids(c: &mut Client, n: usize) -> Result<Vec<RunId>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = c.query("SELECT nextval('run_ids') FROM generate_series(1, $1::bigint)", &[&(n as i64)])?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get(0)?;
            u64::try_from(id).map(RunId).map_err(|_| StoreError::Invalid(format!("the run id sequence gave {id}")))
        })
        .collect()
}

/// What a batch of changes does to the runs it names, worked out on the rows locked
/// `FOR UPDATE` in `tx`: each run's result in its slot, and the rows to write.
///
/// With `me` (a cluster node), a run another node claimed is refused
/// ([`StoreError::Fenced`]) unless the change is an operator's replay, which hands the run
/// to `me`; a run nobody claimed becomes `me`'s with its first change.
fn apply_changes(
    tx: &mut impl GenericClient,
    batch: &[(RunId, Vec<RunChange>)],
    now: DateTime<Utc>,
    with_item: bool,
    me: Option<&str>,
) -> Result<(Vec<Result<Run>>, Vec<RunRow>)> {
    let mut ids: Vec<i64> = batch.iter().map(|(id, _)| to_i64(*id)).collect::<Result<_>>()?;
    ids.sort_unstable();
    ids.dedup();
    // In id order, so two batches that share runs lock them in one order (no deadlock).
    let sql = if with_item {
        "SELECT id, record::text, item::text, owner FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    } else {
        "SELECT id, record::text, NULL::text, owner FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    };
    let rows = tx.query(sql, &[&ids])?;
    let mut current: HashMap<RunId, (Run, usize, Option<String>)> = HashMap::with_capacity(rows.len());
    for (run, row) in runs_from(&rows)?.into_iter().zip(&rows) {
        let touched = run.touched.len();
        current.insert(run.id, (run, touched, row.try_get(3)?));
    }
    let mut dirty: Vec<RunId> = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    for (id, changes) in batch {
        let Some((stored, _, owner)) = current.get(id) else {
            results.push(Err(StoreError::RunNotFound(*id)));
            continue;
        };
        let replay = changes.iter().any(|c| matches!(c, RunChange::Replay { .. }));
        if let (Some(me), Some(owner)) = (me, owner) {
            if owner != me && !replay {
                results.push(Err(StoreError::Fenced(format!(
                    "run {id} is executed by node {owner} now: this node's change is not written"
                ))));
                continue;
            }
        }
        let owner = if replay || owner.is_none() { me.map(str::to_string) } else { owner.clone() };
        let mut run = stored.clone();
        let applied = changes.iter().try_for_each(|c| transitions::apply(&mut run, c, now));
        results.push(applied.map(|()| run.clone()));
        if results.last().is_some_and(Result::is_ok) {
            if let Some(entry) = current.get_mut(id) {
                entry.0 = run;
                entry.2 = owner;
            }
            if !dirty.contains(id) {
                dirty.push(*id);
            }
        }
    }
    let mut out = Vec::with_capacity(dirty.len());
    for id in dirty {
        if let Some((run, touched_before, owner)) = current.get(&id) {
            let mut record = run.clone();
            record.item = Value::Null;
            out.push(RunRow::of(&record, *touched_before, owner.clone())?);
        }
    }
    Ok((results, out))
}

impl PgStore {
    /// Connects, creates or migrates the schema (see [`Create`]) and starts the store's
    /// connection threads.
    pub fn connect(options: &PgOptions, create: Create) -> Result<PgStore> {
        let config = options.config()?;
        let (client, store_id, node) = off_runtime(|| {
            let mut client = config.connect(NoTls)?;
            if let Some(schema) = &options.schema {
                client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))?;
            }
            let store_id = prepare_schema(&mut client, create, &redacted_url(&options.url))?;
            let node = options.node.as_ref().map(|n| cluster::Node::register(&config, &mut client, n)).transpose()?;
            Ok((client, store_id, node))
        })?;
        Ok(PgStore {
            pool: Pool::start(
                &config,
                options.connections,
                Some(client),
                "flowd-pg",
                &options.node.as_ref().map(|n| cluster::session_setup(n.lease_ttl)).unwrap_or_default(),
            )?,
            node,
            config: config.clone(),
            store_id,
            clock: Clock::system(),
            tx_time: TxTime::default(),
            flushes: Arc::default(),
            unflushed: Arc::default(),
            drop_schema: None,
            url: redacted_url(&options.url),
            schema: options.schema.clone(),
        })
    }

    /// A store in a new schema of the database at `url`, dropped with everything in it when
    /// the store is dropped: for tests, each in its own schema so that they run in parallel.
    pub fn temporary_schema(url: &str) -> Result<PgStore> {
        let schema = format!("flowd_tmp_{}", uuid::Uuid::new_v4().simple());
        let options = PgOptions { schema: Some(schema.clone()), ..PgOptions::new(url) };
        let mut store = PgStore::connect(&options, Create::Yes)?;
        store.drop_schema = Some((PgOptions::new(url).config()?, schema));
        Ok(store)
    }

    /// Drops a schema and everything in it (for tests that made one with
    /// [`PgOptions::schema`]).
    pub fn drop_schema(url: &str, schema: &str) -> Result<()> {
        check_schema_name(schema)?;
        let config = PgOptions::new(url).config()?;
        off_runtime(|| {
            let mut client = config.connect(NoTls)?;
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
            Ok(())
        })
    }

    /// Replaces the clock (tests age records with it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The schema the store's tables are in, when one was named.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The URL the store connected to, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// This handle's node instance, for the runs it creates and claims; refused once the
    /// node has left the cluster.
    fn me(&self) -> Result<Option<String>> {
        match &self.node {
            Some(n) if n.left.load(Ordering::Acquire) => {
                Err(StoreError::Fenced(format!("node {} has left the cluster: it writes nothing more", n.id)))
            }
            Some(n) => Ok(Some(n.id.clone())),
            None => Ok(None),
        }
    }

    /// A durable commit was made: counted as the server's WAL flush.
    fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// When `key` was first recorded for `trigger`.
    pub fn seen_at(&self, trigger: &str, key: &str) -> Result<Option<DateTime<Utc>>> {
        let (trigger, key) = (trigger.to_string(), key.to_string());
        self.pool.read(move |c| {
            let row = c.query_opt("SELECT seen_at FROM seen WHERE trigger = $1 AND key = $2", &[&trigger, &key])?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
    }

    /// The webhook event stored under `id`, processed or not.
    pub fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        let id = id.to_string();
        self.pool.read(move |c| {
            let row =
                c.query_opt("SELECT id, payload::text, received_at, processed_at FROM webhooks WHERE id = $1", &[&id])?;
            row.map(|r| webhook_from(&r)).transpose()
        })
    }

    /// Forgets a trigger's seen keys and state, so that it baselines again. Returns the
    /// number of keys removed.
    pub fn reset_trigger(&self, trigger: &str) -> Result<u64> {
        let trigger = trigger.to_string();
        let n = self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("DELETE FROM seen WHERE trigger = $1", &[&trigger])?;
            tx.execute("DELETE FROM triggers WHERE trigger = $1", &[&trigger])?;
            tx.commit()?;
            Ok(n)
        })?;
        self.flushed();
        Ok(n)
    }

    /// Ends the server side of every connection whose `application_name` is `name` (what a
    /// server restart does to a node); returns how many. For tests and operators.
    pub fn terminate_connections(&self, name: &str) -> Result<u64> {
        let name = name.to_string();
        self.pool.call(move |c| {
            let rows = c.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )?;
            Ok(rows.len() as u64)
        })
    }

    /// Whether the schema holds any data besides its meta records.
    pub fn holds_data(&self) -> Result<bool> {
        self.pool.read(|c| {
            let row = c.query_one(
                "SELECT EXISTS (SELECT 1 FROM seen) OR EXISTS (SELECT 1 FROM triggers) OR EXISTS (SELECT 1 FROM runs) \
                 OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM webhooks)",
                &[],
            )?;
            Ok(row.try_get(0)?)
        })
    }

    /// Imports records as they are (for [`crate::migrate`]): seen keys, trigger states,
    /// runs (ids kept; the id sequence is moved past them), tokens and webhook events, in
    /// one transaction.
    pub(crate) fn import(&self, data: Import) -> Result<()> {
        self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            for chunk in data.seen.chunks(10_000) {
                let triggers: Vec<&str> = chunk.iter().map(|s| s.0.as_str()).collect();
                let keys: Vec<&str> = chunk.iter().map(|s| s.1.as_str()).collect();
                let times: Vec<DateTime<Utc>> = chunk.iter().map(|s| s.2).collect();
                tx.execute(
                    "INSERT INTO seen (trigger, key, seen_at) SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])",
                    &[&triggers, &keys, &times],
                )?;
            }
            for (trigger, state) in &data.triggers {
                tx.execute(
                    "INSERT INTO triggers (trigger, state) VALUES ($1, $2::text::json)",
                    &[trigger, &json_text(state)?],
                )?;
            }
            for chunk in data.runs.chunks(2_000) {
                let runs = chunk
                    .iter()
                    .map(|run| {
                        let mut record = run.clone();
                        let item = json_text(&std::mem::take(&mut record.item))?;
                        Ok((record, item))
                    })
                    .collect::<Result<Vec<_>>>()?;
                insert_runs(&mut tx, &runs, None)?;
                let rows: Vec<RunRow> =
                    runs.iter().map(|(r, _)| RunRow::of(r, r.touched.len(), None)).collect::<Result<_>>()?;
                // insert_runs writes what a new run has; an imported run also has its
                // status, times and retry as they were.
                write_runs(&mut tx, &rows)?;
            }
            for (account, tokens) in &data.tokens {
                tx.execute(
                    "INSERT INTO tokens (account, tokens) VALUES ($1, $2::text::json)",
                    &[account, &json_text(tokens)?],
                )?;
            }
            for ev in &data.webhooks {
                tx.execute(
                    "INSERT INTO webhooks (id, payload, received_at, processed_at) VALUES ($1, $2::text::json, $3, $4)",
                    &[&ev.id, &json_text(&ev.payload)?, &ev.received_at, &ev.processed_at],
                )?;
            }
            tx.execute("SELECT setval('run_ids', GREATEST((SELECT last_value FROM run_ids), $1::bigint, 1))", &[&data.next_id])?;
            tx.commit()?;
            Ok(())
        })?;
        self.flushed();
        Ok(())
    }

    /// The transaction of [`Store::update_runs`] and [`Store::apply_runs`].
    fn apply_batch(&self, batch: &[(RunId, Vec<RunChange>)], durable: bool) -> Result<Vec<Result<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let me = self.me()?;
        let batch = batch.to_vec();
        // The whole call is timed: the transaction runs on a connection thread, and its
        // row locks are what other writers wait for.
        let timer = self.tx_time.updates.start();
        let results = self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            if !durable {
                tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            }
            let (results, rows) = apply_changes(&mut tx, &batch, now, false, me.as_deref())?;
            write_runs(&mut tx, &rows)?;
            tx.commit()?;
            Ok(results.into_iter().map(|r| r.map(drop)).collect())
        });
        drop(timer);
        let results = results?;
        if durable {
            self.flushed();
        } else {
            self.unflushed.store(true, Ordering::Release);
        }
        Ok(results)
    }
}

/// The tables' contents [`PgStore::import`] writes.
#[derive(Default)]
pub(crate) struct Import {
    pub seen: Vec<(String, String, DateTime<Utc>)>,
    pub triggers: Vec<(String, Value)>,
    pub runs: Vec<Run>,
    pub tokens: Vec<(String, Value)>,
    pub webhooks: Vec<WebhookEvent>,
    /// The sequence's next id is at least this.
    pub next_id: i64,
}

/// Runs `f` on a thread of its own and waits for it: the synchronous client (connecting,
/// and dropping a connection) runs a runtime of its own, which panics on a thread that is
/// inside tokio's (a caller's `async fn`, a test's `#[tokio::test]`).
fn off_runtime<R: Send>(f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| Err(StoreError::Invalid("a database thread panicked".into())))
    })
}

/// Migrates the schema (under an advisory lock, so that nodes starting together migrate
/// once) and returns the store id, written the first time.
fn prepare_schema(client: &mut Client, create: Create, url: &str) -> Result<String> {
    client.query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| {
        let exists: bool = client.query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?.try_get(0)?;
        if !exists && create == Create::No {
            return Err(StoreError::NotFound {
                path: url.into(),
                reason: "the database holds no flowd store (no `meta` table in its schema)".into(),
            });
        }
        migrations::runner().run(client).map_err(|e| StoreError::Migration(e.to_string()))?;
        let new_id = uuid::Uuid::new_v4().to_string();
        let now = Utc::now().to_rfc3339();
        client.execute(
            "INSERT INTO meta (key, value) VALUES ('store_id', $1), ('created_at', $2) ON CONFLICT DO NOTHING",
            &[&new_id, &now],
        )?;
        Ok(client.query_one("SELECT value FROM meta WHERE key = 'store_id'", &[])?.try_get(0)?)
    })();
    let unlocked = client.query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let id = result?;
    unlocked?;
    Ok(id)
}

fn webhook_from(r: &postgres::Row) -> Result<WebhookEvent> {
    let id: String = r.try_get(0)?;
    let payload: &str = r.try_get(1)?;
    Ok(WebhookEvent {
        payload: decode_json("webhooks", id.as_bytes(), payload.as_bytes())?,
        received_at: r.try_get(2)?,
        processed_at: r.try_get(3)?,
        id,
    })
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some((config, schema)) = self.drop_schema.take() {
            // Best effort: a test schema left behind holds nothing anyone reads.
            let _ = off_runtime(|| {
                let mut c = config.connect(NoTls)?;
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
                Ok(())
            });
        }
    }
}

impl Store for PgStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> Result<Vec<bool>> {
        let (trigger, keys) = (trigger.to_string(), keys.to_vec());
        self.pool.read(move |c| {
            let rows = c.query("SELECT key FROM seen WHERE trigger = $1 AND key = ANY($2)", &[&trigger, &keys])?;
            let seen: HashSet<&str> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
            Ok(keys.iter().map(|k| !seen.contains(k.as_str())).collect())
        })
    }

    fn trigger_state(&self, trigger: &str) -> Result<Option<Value>> {
        let trigger = trigger.to_string();
        self.pool.read(move |c| {
            let row = c.query_opt("SELECT state::text FROM triggers WHERE trigger = $1", &[&trigger])?;
            row.map(|r| decode_json("triggers", trigger.as_bytes(), r.try_get::<_, &str>(0)?.as_bytes())).transpose()
        })
    }

    fn commit_poll(&self, commit: &PollCommit) -> Result<PollOutcome> {
        commit.check()?;
        for new in commit.items.iter().filter_map(|i| i.run.as_ref()) {
            if new.flow.is_empty() {
                return Err(StoreError::Invalid("a run needs a flow name".into()));
            }
            transitions::check_touched(&new.touched)?;
        }
        let now = self.now();
        let state = commit.state.as_ref().map(json_text).transpose()?;
        let mut items: Vec<(String, Option<(NewRun, String)>)> = Vec::with_capacity(commit.items.len());
        for i in &commit.items {
            let run = match &i.run {
                Some(r) => Some((r.clone(), json_text(&r.item)?)),
                None => None,
            };
            items.push((i.key.clone(), run));
        }
        let trigger = commit.trigger.clone();
        let me = self.me()?;
        let lease = commit.lease;
        if lease.is_some() && me.is_none() {
            return Err(StoreError::Invalid("a commit under a lease needs a store opened as a cluster node".into()));
        }
        // Runs polled under a lease are for any node to claim; the others are the committer's.
        let owner = if lease.is_some() { None } else { me.clone() };
        let timer = self.tx_time.polls.start();
        let outcome = self.pool.call(move |c| {
            let ids = new_ids(c, items.iter().filter(|(_, r)| r.is_some()).count())?;
            let mut tx = c.transaction()?;
            if let (Some(epoch), Some(me)) = (lease, &me) {
                // FOR SHARE: a node taking the lease over waits for this commit to end, and
                // this commit sees the lease as it is, not as it was when the poll began.
                let held = tx.query_opt(
                    "SELECT 1 FROM trigger_leases WHERE trigger = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
                    &[&trigger, me, &epoch],
                )?;
                if held.is_none() {
                    return Err(StoreError::Fenced(format!(
                        "the lease on {trigger} (epoch {epoch}) is no longer this node's: the poll is not committed"
                    )));
                }
            }
            if let Some(state) = &state {
                tx.execute(
                    "INSERT INTO triggers (trigger, state) VALUES ($1, $2::text::json) \
                     ON CONFLICT (trigger) DO UPDATE SET state = excluded.state",
                    &[&trigger, state],
                )?;
            }
            let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
            let rows = tx.query(
                // In key order: two writers inserting overlapping keys take the rows' locks in
                // one order, so one waits for the other instead of both deadlocking.
                "INSERT INTO seen (trigger, key, seen_at) SELECT $1, k, $3 FROM unnest($2::text[]) AS k ORDER BY k \
                 ON CONFLICT DO NOTHING RETURNING key",
                &[&trigger, &keys, &now],
            )?;
            let inserted: HashSet<&str> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
            let mut outcome = PollOutcome::default();
            let mut runs = Vec::new();
            let mut ids = ids.into_iter();
            for (key, run) in &items {
                let id = run.as_ref().and_then(|_| ids.next());
                if !inserted.contains(key.as_str()) {
                    outcome.already_seen.push(key.clone());
                    continue;
                }
                if let (Some((new, item)), Some(id)) = (run, id) {
                    runs.push((transitions::new_run(id, new, Some(&trigger), Some(key), now), item.clone()));
                    outcome.created.push((key.clone(), id));
                }
            }
            insert_runs(&mut tx, &runs, owner.as_deref())?;
            tx.commit()?;
            Ok(outcome)
        });
        drop(timer);
        let outcome = outcome?;
        self.flushed();
        Ok(outcome)
    }

    fn create_run(&self, new: &NewRun) -> Result<RunId> {
        if new.flow.is_empty() {
            return Err(StoreError::Invalid("a run needs a flow name".into()));
        }
        transitions::check_touched(&new.touched)?;
        let now = self.now();
        let new = new.clone();
        let item = json_text(&new.item)?;
        let me = self.me()?;
        let id = self.pool.call(move |c| {
            let id = new_ids(c, 1)?.into_iter().next().ok_or_else(|| StoreError::Invalid("no run id".into()))?;
            let run = transitions::new_run(id, &new, None, None, now);
            let mut tx = c.transaction()?;
            insert_runs(&mut tx, &[(run, item)], me.as_deref())?;
            tx.commit()?;
            Ok(id)
        })?;
        self.flushed();
        Ok(id)
    }

    fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let id = to_i64(id)?;
        self.pool.read(move |c| {
            let rows = c.query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"), &[&id])?;
            Ok(runs_from(&rows)?.pop())
        })
    }

    fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        let f = f.clone();
        self.pool.read(move |c| {
            let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE true");
            let mut params: Vec<Box<dyn postgres::types::ToSql + Sync + Send>> = Vec::new();
            let mut cond = |sql: &mut String, what: &str, p: Box<dyn postgres::types::ToSql + Sync + Send>| {
                params.push(p);
                sql.push_str(&what.replace('?', &format!("${}", params.len())));
            };
            if let Some(flow) = f.flow.clone() {
                cond(&mut sql, " AND flow = ?", Box::new(flow));
            }
            if let Some(status) = f.status {
                cond(&mut sql, " AND status = ?", Box::new(status.as_str()));
            }
            if let Some(touched) = f.touched.clone() {
                cond(&mut sql, " AND id IN (SELECT run_id FROM run_touched WHERE record = ?)", Box::new(touched));
            }
            if let Some(since) = f.since {
                cond(&mut sql, " AND created_at >= ?", Box::new(since));
            }
            if let Some(until) = f.until {
                cond(&mut sql, " AND created_at < ?", Box::new(until));
            }
            if let Some(before) = f.before {
                cond(&mut sql, " AND id < ?", Box::new(to_i64(before)?));
            }
            sql.push_str(" ORDER BY id DESC");
            if f.limit != 0 {
                cond(&mut sql, " LIMIT ?", Box::new(i64::try_from(f.limit).unwrap_or(i64::MAX)));
            }
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as &(dyn postgres::types::ToSql + Sync)).collect();
            runs_from(&c.query(&sql, &refs)?)
        })
    }

    fn update_run(&self, id: RunId, changes: &[RunChange]) -> Result<Run> {
        let now = self.now();
        let batch = vec![(id, changes.to_vec())];
        let me = self.me()?;
        let run = self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            let (mut results, rows) = apply_changes(&mut tx, &batch, now, true, me.as_deref())?;
            let run = results.pop().ok_or(StoreError::RunNotFound(id))??;
            write_runs(&mut tx, &rows)?;
            tx.commit()?;
            Ok(run)
        })?;
        self.flushed();
        Ok(run)
    }

    fn update_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        self.apply_batch(batch, true)
    }

    fn apply_runs(&self, batch: &[(RunId, Vec<RunChange>)]) -> Result<Vec<Result<()>>> {
        self.apply_batch(batch, false)
    }

    fn list_resumable(&self) -> Result<Vec<Run>> {
        self.pool.read(|c| {
            runs_from(&c.query(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('pending', 'running') ORDER BY id"),
                &[],
            )?)
        })
    }

    /// For a cluster node, the runs listed are also claimed (`FOR UPDATE SKIP LOCKED`):
    /// its own, unclaimed ones and those of nodes that stopped renewing, never a run another
    /// live node holds, so two nodes never retry one run.
    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Run>> {
        let limit = (limit != 0).then(|| i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(me) = self.me()? {
            return self.pool.call(move |c| {
                runs_from(&c.query(
                    "WITH c AS ( \
                       SELECT r.id FROM runs r \
                       WHERE r.status = 'failed' AND r.next_retry_at IS NOT NULL AND r.next_retry_at <= $1 \
                         AND (r.owner IS NULL OR r.owner = $3 OR NOT EXISTS ( \
                           SELECT 1 FROM nodes n WHERE n.id = r.owner AND n.ended IS NULL AND n.heartbeat_at + n.ttl > now())) \
                       ORDER BY r.next_retry_at, r.id LIMIT $2 FOR UPDATE OF r SKIP LOCKED) \
                     UPDATE runs SET owner = $3 FROM c WHERE runs.id = c.id \
                     RETURNING runs.id, runs.record::text, runs.item::text",
                    &[&now, &limit, &me],
                )?)
                .map(|mut runs| {
                    runs.sort_by_key(|r| (r.next_retry_at, r.id));
                    runs
                })
            });
        }
        self.pool.read(move |c| {
            runs_from(&c.query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'failed' AND next_retry_at IS NOT NULL \
                     AND next_retry_at <= $1 ORDER BY next_retry_at, id LIMIT $2"
                ),
                &[&now, &limit],
            )?)
        })
    }

    fn release_held(&self, flow: &str) -> Result<Vec<RunId>> {
        let now = self.now();
        let flow = flow.to_string();
        let me = self.me()?;
        let released = self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            // Locked here, and the condition checked again on the locked rows: a run another
            // node released or changed meanwhile is not made pending again.
            let held =
                tx.query("SELECT id FROM runs WHERE status = 'held' AND flow = $1 ORDER BY id FOR UPDATE", &[&flow])?;
            let batch: Vec<(RunId, Vec<RunChange>)> = held
                .iter()
                .map(|r| {
                    let id: i64 = r.try_get(0)?;
                    Ok((RunId(id as u64), vec![RunChange::Status { status: RunStatus::Pending, error: None }]))
                })
                .collect::<Result<_>>()?;
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let (results, rows) = apply_changes(&mut tx, &batch, now, false, me.as_deref())?;
            let released: Vec<RunId> =
                batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|((id, _), _)| *id).collect();
            write_runs(&mut tx, &rows)?;
            tx.commit()?;
            Ok(released)
        })?;
        self.flushed();
        Ok(released)
    }

    fn get_tokens(&self, account: &str) -> Result<Option<Value>> {
        let account = account.to_string();
        self.pool.read(move |c| {
            let row = c.query_opt("SELECT tokens::text FROM tokens WHERE account = $1", &[&account])?;
            row.map(|r| decode_json("tokens", account.as_bytes(), r.try_get::<_, &str>(0)?.as_bytes())).transpose()
        })
    }

    fn put_tokens(&self, account: &str, tokens: &Value) -> Result<()> {
        let (account, tokens) = (account.to_string(), json_text(tokens)?);
        self.pool.call(move |c| {
            c.execute(
                "INSERT INTO tokens (account, tokens) VALUES ($1, $2::text::json) \
                 ON CONFLICT (account) DO UPDATE SET tokens = excluded.tokens",
                &[&account, &tokens],
            )?;
            Ok(())
        })?;
        self.flushed();
        Ok(())
    }

    fn delete_tokens(&self, account: &str) -> Result<bool> {
        let account = account.to_string();
        let n = self.pool.call(move |c| Ok(c.execute("DELETE FROM tokens WHERE account = $1", &[&account])?))?;
        self.flushed();
        Ok(n > 0)
    }

    fn put_webhook_event(&self, id: &str, payload: &Value) -> Result<bool> {
        if id.is_empty() {
            return Err(StoreError::Invalid("a webhook event needs an id".into()));
        }
        let (id, payload, now) = (id.to_string(), json_text(payload)?, self.now());
        let n = self.pool.call(move |c| {
            Ok(c.execute(
                "INSERT INTO webhooks (id, payload, received_at) VALUES ($1, $2::text::json, $3) ON CONFLICT DO NOTHING",
                &[&id, &payload, &now],
            )?)
        })?;
        self.flushed();
        Ok(n > 0)
    }

    fn list_unprocessed_webhooks(&self, limit: usize) -> Result<Vec<WebhookEvent>> {
        let limit = (limit != 0).then(|| i64::try_from(limit).unwrap_or(i64::MAX));
        self.pool.read(move |c| {
            let rows = c.query(
                "SELECT id, payload::text, received_at, processed_at FROM webhooks WHERE processed_at IS NULL \
                 ORDER BY received_at, id LIMIT $1",
                &[&limit],
            )?;
            rows.iter().map(webhook_from).collect()
        })
    }

    fn complete_webhook_event(&self, id: &str) -> Result<()> {
        let (id, now) = (id.to_string(), self.now());
        self.pool.call(move |c| {
            let mut tx = c.transaction()?;
            let row = tx.query_opt("SELECT processed_at FROM webhooks WHERE id = $1 FOR UPDATE", &[&id])?;
            let Some(row) = row else {
                return Err(StoreError::Invalid(format!("webhook event {id:?} was never stored")));
            };
            if row.try_get::<_, Option<DateTime<Utc>>>(0)?.is_some() {
                return Err(StoreError::Conflict(format!("webhook event {id:?} was already processed")));
            }
            tx.execute("UPDATE webhooks SET processed_at = $2 WHERE id = $1", &[&id, &now])?;
            tx.commit()?;
            Ok(())
        })?;
        self.flushed();
        Ok(())
    }

    fn prune(&self, policy: &Retention) -> Result<PruneStats> {
        let now = self.now();
        let policy = policy.clone();
        let ms = |age| DateTime::from_timestamp_millis(retention::cutoff_ms(now, age) as i64).unwrap_or_default();
        let seen_cutoff = policy.seen_max_age.map(ms);
        let webhook_cutoff = policy.webhooks_max_age.map(ms);
        let stats = self.pool.call(move |c| {
            let mut stats = PruneStats::default();
            if let Some(cutoff) = seen_cutoff {
                let keep = i64::try_from(policy.seen_keep_per_trigger).unwrap_or(i64::MAX);
                stats.seen_removed = c.execute(
                    "DELETE FROM seen AS s USING ( \
                       SELECT trigger, key, row_number() OVER (PARTITION BY trigger ORDER BY seen_at DESC) AS n FROM seen \
                     ) AS r \
                     WHERE s.trigger = r.trigger AND s.key = r.key AND r.n > $1 AND s.seen_at < $2",
                    &[&keep, &cutoff],
                )?;
            }
            if policy.runs_max_age.is_some() || policy.runs_keep.is_some() {
                let rows = c.query("SELECT id, updated_at FROM runs WHERE status IN ('succeeded', 'dead')", &[])?;
                let finished = rows
                    .iter()
                    .map(|r| {
                        let id: i64 = r.try_get(0)?;
                        let at: DateTime<Utc> = r.try_get(1)?;
                        Ok((RunId(id as u64), at.timestamp_millis().max(0) as u64))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let doomed: Vec<i64> =
                    retention::runs_to_prune(finished, &policy, now).into_iter().map(|id| id.0 as i64).collect();
                // Re-checked by the delete: a run that changed since the scan is not final.
                stats.runs_removed = c.execute(
                    "DELETE FROM runs WHERE id = ANY($1) AND status IN ('succeeded', 'dead')",
                    &[&doomed],
                )?;
            }
            if let Some(cutoff) = webhook_cutoff {
                stats.webhooks_removed = c.execute(
                    "DELETE FROM webhooks WHERE processed_at IS NOT NULL AND received_at < $1",
                    &[&cutoff],
                )?;
            }
            Ok(stats)
        })?;
        self.flushed();
        Ok(stats)
    }

    fn flush(&self) -> Result<()> {
        if !self.unflushed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // A transaction with an id writes a commit record, and a synchronous commit waits
        // for the WAL to be flushed up to it: every earlier asynchronous commit with it.
        let flushed = self.pool.call(|c| Ok(c.batch_execute("BEGIN; SELECT pg_current_xact_id(); COMMIT")?));
        match flushed {
            Ok(()) => {
                self.flushed();
                Ok(())
            }
            Err(e) => {
                self.unflushed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    fn flush_covers_applied(&self) -> bool {
        false
    }

    fn transaction_time(&self) -> TransactionTime {
        self.tx_time.read(self.flushes.load(Ordering::Relaxed))
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn ready(&self) -> Result<()> {
        self.pool.read(|c| Ok(c.batch_execute("SELECT 1")?))
    }

    fn cluster(&self) -> Option<&dyn crate::Cluster> {
        self.node.as_ref().map(|_| self as &dyn crate::Cluster)
    }
}
