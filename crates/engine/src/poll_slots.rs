//! Poll slots per account: how many scheduled polls of one account may be in progress at once.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many scheduled polls of one account may be in progress at once
/// ([`crate::EngineConfig::poll_concurrency`]). GHL limits requests per location, so a
/// burst of polls on one account (every flow's first poll after a start, 100 flows on
/// one location) would otherwise all be in flight together, each waiting in the rate
/// limiter with its request, template context and items, and at 10,000 flows that burst
/// would hold most of the process's memory. Waiting for a slot holds nothing; slots are handed out
/// in request order (the semaphore is fair), so the earliest due poll goes first.
pub(crate) struct PollSlots {
    per_account: usize,
    accounts: HashMap<String, Arc<Semaphore>>,
}

impl PollSlots {
    pub(crate) fn new<'a>(accounts: impl Iterator<Item = &'a str>, per_account: usize) -> PollSlots {
        let per_account = per_account.max(1);
        let accounts = accounts.map(|a| (a.to_string(), Arc::new(Semaphore::new(per_account)))).collect();
        PollSlots { per_account, accounts }
    }

    /// Waits for a slot of `account`; the slot is free again when the permit is dropped.
    /// An account the engine was not given (flows naming one are refused at load) gets a
    /// slot of its own.
    pub(crate) async fn acquire(&self, account: &str) -> Option<OwnedSemaphorePermit> {
        let slots = match self.accounts.get(account) {
            Some(s) => s.clone(),
            None => Arc::new(Semaphore::new(self.per_account)),
        };
        slots.acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::PollSlots;
    use std::time::Duration;

    #[tokio::test]
    async fn poll_slots_bound_each_account_apart() {
        let slots = PollSlots::new(["a", "b"].into_iter(), 2);
        let a1 = slots.acquire("a").await.expect("slot");
        let _a2 = slots.acquire("a").await.expect("slot");
        // `a` is full; `b` is not.
        assert!(tokio::time::timeout(Duration::from_millis(50), slots.acquire("a")).await.is_err());
        let _b1 = slots.acquire("b").await.expect("slot");
        // A slot comes back when its poll ends.
        drop(a1);
        assert!(tokio::time::timeout(Duration::from_millis(50), slots.acquire("a")).await.is_ok());
    }
}
