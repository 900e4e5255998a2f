#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use store::{Backend, Clock, NewRun, OpenStore, PollCommit, PollItem};

/// A clock tests move by hand.
#[derive(Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Arc::new(AtomicI64::new(1_700_000_000_000)))
    }
    pub fn clock(&self) -> Clock {
        let ms = self.0.clone();
        Clock::from_fn(move || DateTime::from_timestamp_millis(ms.load(Ordering::SeqCst)).expect("test time"))
    }
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0.load(Ordering::SeqCst)).expect("test time")
    }
    pub fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * 1000, Ordering::SeqCst);
    }
}

pub fn store_in<S: OpenStore>(dir: &tempfile::TempDir) -> S {
    S::create_or_open(&dir.path().join("store")).expect("create store")
}

/// Turns generic tests `fn name<S: OpenStore>()` into one test per backend:
/// `name::sled`, `name::fjall` and `name::postgres` (see [`Pg`]).
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sled() {
                    super::$name::<store::SledStore>()
                }
                #[test]
                fn fjall() {
                    super::$name::<store::FjallStore>()
                }
                #[test]
                fn postgres() {
                    if let Some(_schemas) = $crate::common::PgScope::enter() {
                        super::$name::<$crate::common::Pg>()
                    }
                }
            }
        )*
    };
}

/// As [`on_each_backend`], for tests of what only the embedded stores have (their files).
#[allow(unused_macros)]
macro_rules! on_each_embedded_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sled() {
                    super::$name::<store::SledStore>()
                }
                #[test]
                fn fjall() {
                    super::$name::<store::FjallStore>()
                }
            }
        )*
    };
}

pub fn keys(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|s| s.to_string()).collect()
}

/// A poll where every key fires a run of `flow`.
pub fn poll(trigger: &str, flow: &str, ks: &[&str], state: Option<serde_json::Value>) -> PollCommit {
    PollCommit {
        lease: None,
        trigger: trigger.into(),
        state,
        items: ks
            .iter()
            .map(|k| PollItem { key: k.to_string(), run: Some(NewRun::new(flow, json!({ "id": k }))) })
            .collect(),
    }
}

/// Writes to one tree (partition) of a closed store behind its back, through the backend
/// itself: `None` removes the key. For tests of damaged records.
pub fn raw_write<S: OpenStore>(store: &std::path::Path, tree: &str, writes: &[(&[u8], Option<&[u8]>)]) {
    let dir = store.join(S::BACKEND.dir_name());
    match S::BACKEND {
        Backend::Postgres => panic!("raw_write is for the embedded stores' files"),
        Backend::Sled => {
            let db = sled::open(dir).expect("raw sled");
            let t = db.open_tree(tree).expect("tree");
            for (k, v) in writes {
                match v {
                    Some(v) => drop(t.insert(k, *v).expect("insert")),
                    None => drop(t.remove(k).expect("remove")),
                }
            }
            db.flush().expect("flush");
        }
        Backend::Fjall => {
            let ks = fjall::Config::new(dir).open().expect("raw fjall");
            let p = ks.open_partition(tree, Default::default()).expect("partition");
            for (k, v) in writes {
                match v {
                    Some(v) => p.insert(*k, *v).expect("insert"),
                    None => p.remove(*k).expect("remove"),
                }
            }
            ks.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
    }
}

/// The one-change calls tests write runs with, over [`store::Store::update_run`] (the
/// product batches its changes instead), and reads the product does not make.
pub trait RunHelpers: store::Store {
    fn mark_step_started(&self, id: store::RunId, step: &str, request: &serde_json::Value) -> store::Result<()> {
        let change = store::RunChange::StepStarted { step: step.to_string(), request: request.clone().into() };
        self.update_run(id, &[change]).map(drop)
    }

    fn record_step_result(
        &self,
        id: store::RunId,
        step: &str,
        status: store::StepStatus,
        response: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> store::Result<()> {
        let change = store::RunChange::StepFinished {
            step: step.to_string(),
            status,
            response: response.cloned().map(Into::into),
            error: error.map(str::to_string),
        };
        self.update_run(id, &[change]).map(drop)
    }

    fn set_run_status(&self, id: store::RunId, status: store::RunStatus, error: Option<&str>) -> store::Result<()> {
        self.update_run(id, &[store::RunChange::Status { status, error: error.map(str::to_string) }]).map(drop)
    }

    fn schedule_retry(&self, id: store::RunId, at: DateTime<Utc>, error: &str) -> store::Result<()> {
        self.update_run(id, &[store::RunChange::RetryAt { at, error: error.to_string() }]).map(drop)
    }

    /// `held` runs of `flow`, oldest first.
    fn list_held(&self, flow: &str) -> store::Result<Vec<store::Run>> {
        let filter = store::RunFilter {
            flow: Some(flow.to_string()),
            status: Some(store::RunStatus::Held),
            ..Default::default()
        };
        let mut runs = self.list_runs(&filter)?;
        runs.reverse();
        Ok(runs)
    }
}

impl<T: store::Store + ?Sized> RunHelpers for T {}

/// Whether an event with this id was ever stored.
pub fn webhook_seen<S: OpenStore>(s: &S, id: &str) -> bool {
    s.webhook_event(id).expect("read webhook").is_some()
}

/// The database the PostgreSQL tests use: `FLOWD_TEST_POSTGRES` (a `postgres://` URL; see
/// the README). Without it they fail under CI (`CI=true`), so that CI cannot pass without
/// running them, and elsewhere say that they need it and do nothing.
pub fn pg_url() -> Option<String> {
    match std::env::var("FLOWD_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FLOWD_TEST_POSTGRES is not set: the PostgreSQL store tests need a database (.ci/run starts one)")
        }
        _ => {
            eprintln!("not run: this PostgreSQL test needs FLOWD_TEST_POSTGRES=postgres://… (README: `.ci/with-postgres cargo test -p store`)");
            None
        }
    }
}

thread_local! {
    /// Schemas made by [`Pg`]'s path-based constructors on this thread, dropped by [`PgScope`].
    static SCHEMAS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One PostgreSQL test: the schemas its stores were made in are dropped when it ends, so
/// tests run in parallel (each in its own schemas) and leave nothing behind.
pub struct PgScope {
    url: String,
}

impl PgScope {
    pub fn enter() -> Option<PgScope> {
        pg_url().map(|url| PgScope { url })
    }
}

impl Drop for PgScope {
    fn drop(&mut self) {
        for schema in SCHEMAS.with(|s| std::mem::take(&mut *s.borrow_mut())) {
            if let Err(e) = store::PgStore::drop_schema(&self.url, &schema) {
                eprintln!("dropping test schema {schema}: {e}");
            }
        }
    }
}

/// [`store::PgStore`] under the constructors the generic tests call: a store "at a path" is
/// the schema named after that path, so a test reopens it by its path as it reopens an
/// embedded store.
pub struct Pg(store::PgStore, Option<std::path::PathBuf>, String);

impl Pg {
    fn at(path: &std::path::Path, create: store::pg::Create) -> store::Result<Pg> {
        use std::hash::{Hash, Hasher};
        let url = pg_url().expect("a PostgreSQL test runs inside PgScope");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        let schema = format!("flowd_test_{:016x}", h.finish());
        SCHEMAS.with(|s| {
            let mut s = s.borrow_mut();
            if !s.contains(&schema) {
                s.push(schema.clone());
            }
        });
        let options = store::PgOptions { schema: Some(schema.clone()), ..store::PgOptions::new(url) };
        store::PgStore::connect(&options, create).map(|s| Pg(s, Some(path.to_path_buf()), schema))
    }
}

impl Pg {
    /// How to connect to this store's schema.
    pub fn options(&self) -> store::PgOptions {
        let url = pg_url().expect("a PostgreSQL test runs inside PgScope");
        store::PgOptions { schema: Some(self.2.clone()), ..store::PgOptions::new(url) }
    }
}

impl OpenStore for Pg {
    const BACKEND: Backend = Backend::Postgres;
    fn open(path: &std::path::Path) -> store::Result<Self> {
        Pg::at(path, store::pg::Create::No)
    }
    fn create_or_open(path: &std::path::Path) -> store::Result<Self> {
        Pg::at(path, store::pg::Create::Yes)
    }
    fn temporary() -> store::Result<Self> {
        let url = pg_url().expect("a PostgreSQL test runs inside PgScope");
        store::PgStore::temporary_schema(&url).map(|s| {
            let schema = s.schema().unwrap_or_default().to_string();
            Pg(s, None, schema)
        })
    }
    fn with_clock(self, clock: Clock) -> Self {
        Pg(self.0.with_clock(clock), self.1, self.2)
    }
    fn path(&self) -> Option<&std::path::Path> {
        self.1.as_deref()
    }
    fn seen_at(&self, trigger: &str, key: &str) -> store::Result<Option<DateTime<Utc>>> {
        self.0.seen_at(trigger, key)
    }
    fn webhook_event(&self, id: &str) -> store::Result<Option<store::WebhookEvent>> {
        self.0.webhook_event(id)
    }
    fn reset_trigger(&self, trigger: &str) -> store::Result<u64> {
        self.0.reset_trigger(trigger)
    }
}

impl store::Store for Pg {
    fn store_id(&self) -> &str {
        self.0.store_id()
    }
    fn filter_unseen(&self, trigger: &str, keys: &[String]) -> store::Result<Vec<bool>> {
        self.0.filter_unseen(trigger, keys)
    }
    fn trigger_state(&self, trigger: &str) -> store::Result<Option<serde_json::Value>> {
        self.0.trigger_state(trigger)
    }
    fn commit_poll(&self, commit: &PollCommit) -> store::Result<store::PollOutcome> {
        self.0.commit_poll(commit)
    }
    fn create_run(&self, run: &NewRun) -> store::Result<store::RunId> {
        self.0.create_run(run)
    }
    fn get_run(&self, id: store::RunId) -> store::Result<Option<store::Run>> {
        self.0.get_run(id)
    }
    fn list_runs(&self, filter: &store::RunFilter) -> store::Result<Vec<store::Run>> {
        self.0.list_runs(filter)
    }
    fn update_run(&self, id: store::RunId, changes: &[store::RunChange]) -> store::Result<store::Run> {
        self.0.update_run(id, changes)
    }
    fn update_runs(&self, batch: &[(store::RunId, Vec<store::RunChange>)]) -> store::Result<Vec<store::Result<()>>> {
        self.0.update_runs(batch)
    }
    fn apply_runs(&self, batch: &[(store::RunId, Vec<store::RunChange>)]) -> store::Result<Vec<store::Result<()>>> {
        self.0.apply_runs(batch)
    }
    fn list_resumable(&self) -> store::Result<Vec<store::Run>> {
        self.0.list_resumable()
    }
    fn list_due_retries(&self, now: DateTime<Utc>, limit: usize) -> store::Result<Vec<store::Run>> {
        self.0.list_due_retries(now, limit)
    }
    fn release_held(&self, flow: &str) -> store::Result<Vec<store::RunId>> {
        self.0.release_held(flow)
    }
    fn get_tokens(&self, account: &str) -> store::Result<Option<serde_json::Value>> {
        self.0.get_tokens(account)
    }
    fn put_tokens(&self, account: &str, tokens: &serde_json::Value) -> store::Result<()> {
        self.0.put_tokens(account, tokens)
    }
    fn delete_tokens(&self, account: &str) -> store::Result<bool> {
        self.0.delete_tokens(account)
    }
    fn put_webhook_event(&self, id: &str, payload: &serde_json::Value) -> store::Result<bool> {
        self.0.put_webhook_event(id, payload)
    }
    fn list_unprocessed_webhooks(&self, limit: usize) -> store::Result<Vec<store::WebhookEvent>> {
        self.0.list_unprocessed_webhooks(limit)
    }
    fn complete_webhook_event(&self, id: &str) -> store::Result<()> {
        self.0.complete_webhook_event(id)
    }
    fn prune(&self, policy: &store::Retention) -> store::Result<store::PruneStats> {
        self.0.prune(policy)
    }
    fn flush(&self) -> store::Result<()> {
        self.0.flush()
    }
    fn transaction_time(&self) -> store::TransactionTime {
        self.0.transaction_time()
    }
    fn backend(&self) -> Backend {
        self.0.backend()
    }
    fn fault(&self) -> Option<String> {
        self.0.fault()
    }
    fn ready(&self) -> store::Result<()> {
        self.0.ready()
    }
}
