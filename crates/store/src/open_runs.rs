//! Decoded records of open runs, kept so that an update does not decode the record it
//! wrote a moment before.
//!
//! A one-step run is written three times (created, started, finished), each time from the
//! record the previous write produced: the cache spares decoding that JSON again. An entry is used only while the bytes stored for its run are exactly the bytes it was
//! made from, so a write by any other path, or a transaction that was rolled back, makes
//! it miss and the record is decoded as before: the cache can be stale, never wrong.
//!
//! Comparing the stored bytes costs a read of the record inside the transaction. The
//! [`generation`](OpenRuns::generation) spares it: every other path that rewrites a run
//! reads it through [`take`](OpenRuns::take), which moves the generation on. An entry taken
//! with [`take_any`](OpenRuns::take_any) belongs to its taker alone, so if the generation
//! has not moved by the time the taker's transaction holds the writer lock, no other write
//! came between, and the record is still the entry's bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::model::{Run, RunId, RunStatus};

/// Entries at most (≈ 1 KB each): a backlog of more open runs than this decodes the rest
/// on update instead of holding them all in memory.
const MAX_ENTRIES: usize = 16_384;

struct Entry<B> {
    bytes: B,
    run: Run,
}

/// `B` is the backend's own byte container (cheap to clone: both are reference counted).
pub(crate) struct OpenRuns<B> {
    entries: Mutex<HashMap<RunId, Entry<B>, foldhash::fast::RandomState>>,
    /// Calls of `take` so far (see the module docs).
    rewrites: AtomicU64,
}

impl<B> Default for OpenRuns<B> {
    fn default() -> Self {
        OpenRuns { entries: Mutex::new(HashMap::default()), rewrites: AtomicU64::new(0) }
    }
}

impl<B: AsRef<[u8]>> OpenRuns<B> {
    /// The decoded record of `id` if `stored` is what it was made from; the entry leaves
    /// the cache either way (an update puts the new version back). For a caller about to
    /// rewrite the record inside its transaction: it moves the generation on, hit or miss.
    pub(crate) fn take(&self, id: RunId, stored: &[u8]) -> Option<Run> {
        self.rewrites.fetch_add(1, Ordering::SeqCst);
        let entry = self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&id)?;
        (entry.bytes.as_ref() == stored).then_some(entry.run)
    }

    /// The entry of `id` and the bytes it was made from, whatever is stored now: for work
    /// done before a transaction, which checks the bytes once inside it.
    pub(crate) fn take_any(&self, id: RunId) -> Option<(B, Run)> {
        let entry = self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&id)?;
        Some((entry.bytes, entry.run))
    }

    /// Moves on each time a run is rewritten through [`take`](OpenRuns::take). Read before
    /// taking entries with `take_any` and again under the writer lock: unchanged, the
    /// entries' bytes are still what is stored.
    pub(crate) fn generation(&self) -> u64 {
        self.rewrites.load(Ordering::SeqCst)
    }

    /// Keeps `run`, stored as `bytes`, while it is open (pending or running); a run that
    /// reached any other status is dropped, since only the engine's next write needs it.
    pub(crate) fn keep(&self, bytes: B, run: Run) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(run.status, RunStatus::Pending | RunStatus::Running) {
            entries.remove(&run.id);
        } else if entries.len() < MAX_ENTRIES || entries.contains_key(&run.id) {
            entries.insert(run.id, Entry { bytes, run });
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewRun;
    use crate::transitions;
    use chrono::Utc;

    fn run(id: u64, status: RunStatus) -> Run {
        let mut r = transitions::new_run(RunId(id), &NewRun::new("f", serde_json::Value::Null), None, None, Utc::now());
        r.status = status;
        r
    }

    #[test]
    fn an_entry_serves_only_the_bytes_it_was_made_from() {
        let open: OpenRuns<sled::IVec> = OpenRuns::default();
        open.keep(sled::IVec::from(&b"v1"[..]), run(1, RunStatus::Pending));
        // Someone else wrote v2: the entry misses and is gone.
        assert!(open.take(RunId(1), b"v2").is_none());
        assert!(open.take(RunId(1), b"v1").is_none());
        open.keep(sled::IVec::from(&b"v1"[..]), run(1, RunStatus::Running));
        assert_eq!(open.take(RunId(1), b"v1").map(|r| r.status), Some(RunStatus::Running));
        assert_eq!(open.len(), 0);
    }

    #[test]
    fn finished_runs_leave_and_the_cache_is_bounded() {
        let open: OpenRuns<sled::IVec> = OpenRuns::default();
        open.keep(sled::IVec::from(&b"a"[..]), run(1, RunStatus::Running));
        open.keep(sled::IVec::from(&b"b"[..]), run(1, RunStatus::Succeeded));
        assert_eq!(open.len(), 0);
        for id in 0..(MAX_ENTRIES as u64 + 10) {
            open.keep(sled::IVec::from(&b"p"[..]), run(id, RunStatus::Pending));
        }
        assert_eq!(open.len(), MAX_ENTRIES);
        // A run already cached is still updated when the cache is full.
        open.keep(sled::IVec::from(&b"q"[..]), run(5, RunStatus::Running));
        assert_eq!(open.take(RunId(5), b"q").map(|r| r.status), Some(RunStatus::Running));
    }
}
