#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use store::{Clock, NewRun, PollCommit, PollItem, SledStore};

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

pub fn store_in(dir: &tempfile::TempDir) -> SledStore {
    SledStore::create_or_open(dir.path().join("store")).expect("create store")
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
