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
/// `name::sled` and `name::fjall`.
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
