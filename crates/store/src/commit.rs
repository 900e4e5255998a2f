//! What both backends share around their write transactions: group commit (one flush for
//! every caller waiting) and the time spent holding the writer lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::Result;

/// Group commit: tickets taken after a transaction commits, and the highest
/// ticket known to be on disk.
#[derive(Default)]
pub(crate) struct GroupFlush {
    state: std::sync::Mutex<FlushState>,
    done: std::sync::Condvar,
    /// Flushes run (each one fsync or its backend's equivalent).
    pub(crate) count: AtomicU64,
    /// The first write or flush that failed (see [`crate::Store::fault`]).
    pub(crate) fault: std::sync::OnceLock<String>,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out so far (each after its caller's writes).
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A caller is running `Db::flush` right now.
    flushing: bool,
}

impl GroupFlush {
    /// Keeps the first failure: the one that says what went wrong (later ones are often
    /// fjall's "poisoned").
    pub(crate) fn record_fault(&self, e: &crate::error::StoreError) {
        let _ = self.fault.set(e.to_string());
    }

    /// Returns once every write made before the call is on disk, running
    /// `flush` (for everyone waiting) or waiting for a flush that started
    /// after the call.
    pub(crate) fn flush(&self, flush: impl Fn() -> Result<()>) -> Result<()> {
        let lock = || self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut st = lock();
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if !st.flushing {
                // Lead: this flush covers every ticket issued so far.
                st.flushing = true;
                let target = st.issued;
                drop(st);
                self.count.fetch_add(1, Ordering::Relaxed);
                let result = flush();
                st = lock();
                st.flushing = false;
                match &result {
                    Ok(()) => st.durable = st.durable.max(target),
                    Err(e) => self.record_fault(e),
                }
                self.done.notify_all();
                // On failure, waiters retry with a flush of their own.
                return result;
            }
            st = self.done.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Time spent in write transactions of one kind. sled 0.34 runs every transaction under one
/// process-wide lock that its reads take too, so there `held` summed over all kinds is time
/// in which nothing else reads or writes the store. The fjall backend serialises only its
/// writers (readers never wait), so there it is time in which no other write runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockTime {
    /// From the first run of the transaction's closure (the lock is held) to its commit.
    pub held: std::time::Duration,
    /// From the call to the closure's first run: waiting for the lock.
    pub waited: std::time::Duration,
    pub transactions: u64,
}

/// [`crate::Store::transaction_time`]: the engine's two hot transactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionTime {
    /// [`crate::Store::commit_poll`].
    pub polls: LockTime,
    /// [`crate::Store::update_runs`], the engine's writer batches.
    pub updates: LockTime,
    /// Flushes to disk run by any call (group commit shares one among all callers waiting).
    pub flushes: u64,
}

#[derive(Default)]
pub(crate) struct TxTime {
    pub(crate) polls: TxCounter,
    pub(crate) updates: TxCounter,
}

/// How long one kind of write transaction waited for and held the writer lock (see
/// [`crate::kv::Kv::write`]).
#[derive(Default)]
pub struct TxCounter {
    held_ns: AtomicU64,
    waited_ns: AtomicU64,
    count: AtomicU64,
}

impl TxCounter {
    pub(crate) fn start(&self) -> TxTimer<'_> {
        let now = Instant::now();
        TxTimer { counter: self, called: now, entered: std::cell::Cell::new(None) }
    }

    pub(crate) fn read(&self) -> LockTime {
        LockTime {
            held: std::time::Duration::from_nanos(self.held_ns.load(Ordering::Relaxed)),
            waited: std::time::Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
            transactions: self.count.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct TxTimer<'a> {
    counter: &'a TxCounter,
    called: Instant,
    entered: std::cell::Cell<Option<Instant>>,
}

impl TxTimer<'_> {
    /// At the top of the closure; a retry keeps the first entry.
    pub(crate) fn entered(&self) {
        if self.entered.get().is_none() {
            self.entered.set(Some(Instant::now()));
        }
    }
}

impl Drop for TxTimer<'_> {
    /// Right after the transaction returns: callers drop the timer there, or an error's `?` does.
    fn drop(&mut self) {
        let entered = self.entered.get().unwrap_or(self.called);
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counter.held_ns.fetch_add(ns(entered.elapsed()), Ordering::Relaxed);
        self.counter.waited_ns.fetch_add(ns(entered - self.called), Ordering::Relaxed);
        self.counter.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl TxTime {
    /// What [`crate::Store::transaction_time`] reports, with the backend's flush count.
    pub(crate) fn read(&self, flushes: u64) -> TransactionTime {
        TransactionTime { polls: self.polls.read(), updates: self.updates.read(), flushes }
    }
}
