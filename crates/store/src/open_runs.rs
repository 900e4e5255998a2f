//! Decoded records of open runs, kept so that an update does not decode the record it
//! wrote a moment before.
//!
//! A one-step run is written three times (created, started, finished); decoding its JSON
//! record back each time was a tenth of the engine's work at a few thousand runs a second.
//! An entry is used only while the bytes stored for its run are exactly the bytes it was
//! made from, so a write by any other path, or a transaction that was rolled back, makes
//! it miss and the record is decoded as before: the cache can be stale, never wrong.

use std::collections::HashMap;
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
pub(crate) struct OpenRuns<B = sled::IVec> {
    entries: Mutex<HashMap<RunId, Entry<B>, foldhash::fast::RandomState>>,
}

impl<B> Default for OpenRuns<B> {
    fn default() -> Self {
        OpenRuns { entries: Mutex::new(HashMap::default()) }
    }
}

impl<B: AsRef<[u8]>> OpenRuns<B> {
    /// The decoded record of `id` if `stored` is what it was made from; the entry leaves
    /// the cache either way (an update puts the new version back).
    pub(crate) fn take(&self, id: RunId, stored: &[u8]) -> Option<Run> {
        let entry = self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&id)?;
        (entry.bytes.as_ref() == stored).then_some(entry.run)
    }

    /// The entry of `id` and the bytes it was made from, whatever is stored now: for work
    /// done before a transaction, which checks the bytes once inside it.
    pub(crate) fn take_any(&self, id: RunId) -> Option<(B, Run)> {
        let entry = self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&id)?;
        Some((entry.bytes, entry.run))
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
        let open: OpenRuns = OpenRuns::default();
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
        let open: OpenRuns = OpenRuns::default();
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
