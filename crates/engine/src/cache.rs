//! The read cache of GET steps (`cache: 5m` on a step): a result reused for the same
//! rendered request (account, operation, path, query) until its time is up or flowd
//! itself writes to a record it names.
//!
//! Invalidation is by record generation rather than by scanning entries: every record a
//! cached read names (`contact:abc`, from `crate::touched`) has a generation number, an
//! entry keeps the generations it was read under, and a write step (any flow) moves the
//! generations of the records it names once it has been sent. An entry whose records
//! moved is stale. The generations are taken *before* the read is sent, so a read that
//! was in flight while a write landed is never served afterwards: it carries the old
//! generation.
//!
//! Bounded: at most `capacity` entries (quick_cache: a small, well-kept concurrent cache
//! with CLOCK-Pro eviction, already in the dependency tree through fjall), and the
//! generation table is reset (everything stale) when it outgrows a few times that.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept when the engine's config gives no size.
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

struct Entry {
    value: Value,
    expires: Instant,
    /// The records the read named, with their generations when it was sent.
    records: Vec<(String, u64)>,
}

/// Generations of the records the cache's entries name; a snapshot of some of them.
pub(crate) type Generations = Vec<(String, u64)>;

pub(crate) struct ReadCache {
    entries: quick_cache::sync::Cache<String, Arc<Entry>>,
    gens: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
    capacity: usize,
    lookups: Family<CacheLabels, Counter>,
}

impl ReadCache {
    pub(crate) fn new(capacity: usize) -> ReadCache {
        let capacity = capacity.max(1);
        ReadCache {
            entries: quick_cache::sync::Cache::new(capacity),
            gens: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            capacity,
            lookups: Family::default(),
        }
    }

    /// Adds `flowd_step_cache_total{result="hit"|"miss"|"stale"}`.
    pub(crate) fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register("step_cache", "Lookups of cached GET steps, by result", self.lookups.clone());
    }

    /// The key of a rendered GHL request, as a step's record holds it.
    pub(crate) fn key(account: &str, record: &Value) -> String {
        format!("{account}\n{record}")
    }

    /// The current generations of `records`, to be handed to [`ReadCache::put`] with the
    /// result of a read sent after this call.
    pub(crate) fn generations(&self, records: &[String]) -> Generations {
        let Ok(mut gens) = self.gens.lock() else { return Vec::new() };
        if gens.len() > self.capacity.saturating_mul(4) {
            // Every entry naming a forgotten record becomes stale (see `get`).
            gens.clear();
            self.entries.clear();
        }
        records
            .iter()
            .map(|r| {
                let g = *gens.entry(r.clone()).or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed));
                (r.clone(), g)
            })
            .collect()
    }

    /// A fresh result for `key`, counted as a hit; `None` (a miss, or stale) otherwise.
    pub(crate) fn get(&self, key: &str) -> Option<Value> {
        let Some(e) = self.entries.get(key) else {
            self.count("miss");
            return None;
        };
        let current = e.expires > Instant::now()
            && self.gens.lock().map(|gens| e.records.iter().all(|(r, g)| gens.get(r) == Some(g))).unwrap_or(false);
        if current {
            self.count("hit");
            Some(e.value.clone())
        } else {
            self.entries.remove(key);
            self.count("stale");
            None
        }
    }

    /// Keeps `value` for `ttl`, under the generations taken before the read was sent.
    pub(crate) fn put(&self, key: String, value: Value, ttl: Duration, records: Generations) {
        let entry = Entry { value, expires: Instant::now() + ttl, records };
        self.entries.insert(key, Arc::new(entry));
    }

    /// flowd wrote to `records` (or may have): entries naming any of them are stale.
    pub(crate) fn invalidate(&self, records: &[String]) {
        if records.is_empty() {
            return;
        }
        if let Ok(mut gens) = self.gens.lock() {
            for r in records {
                if let Some(g) = gens.get_mut(r) {
                    *g = self.next.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.lookups.get_or_create(&CacheLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_write_to_a_named_record_makes_its_reads_stale() {
        let c = ReadCache::new(16);
        let records = vec!["contact:c1".to_string()];
        let g = c.generations(&records);
        c.put("k".into(), json!({"id": "c1"}), TTL, g);
        assert_eq!(c.get("k"), Some(json!({"id": "c1"})));
        c.invalidate(&["contact:other".to_string()]);
        assert!(c.get("k").is_some(), "a write elsewhere leaves it");
        c.invalidate(&records);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn a_read_in_flight_during_a_write_is_not_served() {
        let c = ReadCache::new(16);
        let records = vec!["contact:c1".to_string()];
        let before = c.generations(&records);
        // The write lands while the read is on the wire.
        c.invalidate(&records);
        c.put("k".into(), json!({"old": true}), TTL, before);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn expired_and_forgotten_entries_are_stale() {
        let c = ReadCache::new(1);
        let g = c.generations(&["contact:a".to_string()]);
        c.put("a".into(), json!(1), Duration::ZERO, g);
        assert_eq!(c.get("a"), None, "expired");
        let g = c.generations(&["contact:a".to_string()]);
        c.put("a".into(), json!(1), TTL, g);
        // Outgrowing the generation table resets it: nothing old can match again.
        for i in 0..8 {
            c.generations(&[format!("contact:x{i}")]);
        }
        c.generations(&["contact:a".to_string()]);
        assert_eq!(c.get("a"), None);
    }
}
