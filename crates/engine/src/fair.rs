//! Execution slots shared between flows in turn.
//!
//! A poll can queue thousands of runs at once (a backfill, a burst of changes). With one
//! first-come queue, every run another flow queues afterwards would wait for all of them.
//! Here each flow waits in its own queue, and a slot that comes free goes to the next flow
//! in a ring of flows with waiting runs (round-robin, one run per turn): a flow that queues
//! one run waits for at most one run of each other busy flow. Within a flow, runs start in
//! the order they were queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

/// `capacity` slots, handed out in turn between flows.
pub(crate) struct FairSlots {
    capacity: usize,
    state: Mutex<State>,
    /// Signalled whenever a slot goes back to the free pool.
    freed: Notify,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Flows with waiting runs, in turn order; each appears once.
    ring: VecDeque<Arc<str>>,
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Slot>>>,
}

impl State {
    /// The next waiter in turn; its flow moves to the back of the ring if it has more.
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Slot>> {
        while let Some(flow) = self.ring.pop_front() {
            let Some(queue) = self.waiting.get_mut(&flow) else { continue };
            let next = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&flow);
            } else {
                self.ring.push_back(flow);
            }
            if next.is_some() {
                return next;
            }
        }
        None
    }
}

/// One slot, given back when dropped.
pub(crate) struct Slot {
    slots: Arc<FairSlots>,
    /// False for a slot that came back from a waiter that had gone: it was never taken.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.slots.release();
        }
    }
}

impl FairSlots {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(FairSlots {
            capacity,
            state: Mutex::new(State { free: capacity, ..State::default() }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters and queues changed under the lock in one go: a panic elsewhere cannot
        // leave them half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot in `flow`'s turn.
    pub(crate) async fn acquire(self: &Arc<Self>, flow: &str) -> Slot {
        loop {
            let rx = {
                let mut st = self.lock();
                if st.free > 0 {
                    st.free -= 1;
                    return Slot { slots: self.clone(), armed: true };
                }
                let (tx, rx) = oneshot::channel();
                match st.waiting.get_mut(flow) {
                    Some(queue) => queue.push_back(tx),
                    None => {
                        let flow: Arc<str> = flow.into();
                        st.waiting.insert(flow.clone(), VecDeque::from([tx]));
                        st.ring.push_back(flow);
                    }
                }
                rx
            };
            // Senders are dropped only by `release`, which sends first; a waiter whose
            // sender vanished anyway must not run without a slot, so it queues again.
            if let Ok(slot) = rx.await {
                return slot;
            }
        }
    }

    fn release(self: &Arc<Self>) {
        let mut st = self.lock();
        loop {
            let Some(tx) = st.next_waiter() else {
                st.free += 1;
                drop(st);
                self.freed.notify_waiters();
                return;
            };
            match tx.send(Slot { slots: self.clone(), armed: true }) {
                Ok(()) => return,
                // That waiter was cancelled: the slot goes to the next one.
                Err(mut slot) => slot.armed = false,
            }
        }
    }

    /// Waits until no slot is taken and no run waits for one.
    pub(crate) async fn idle(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let st = self.lock();
                if st.free == self.capacity && st.ring.is_empty() {
                    return;
                }
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Queues `n` waiters of `flow`; each records its flow when it gets a slot, holds it until
    /// told to go, and gives it back.
    fn queue(
        slots: &Arc<FairSlots>,
        flow: &'static str,
        n: usize,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (slots, order) = (slots.clone(), order.clone());
                tokio::spawn(async move {
                    let _slot = slots.acquire(flow).await;
                    order.lock().unwrap().push(flow);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_flow_does_not_starve_the_others() {
        let slots = FairSlots::new(2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = queue(&slots, "backfill", 500, &order);
        tokio::task::yield_now().await;
        // Queued after 500 runs of the backfill, each of these starts within a turn or two.
        tasks.extend(queue(&slots, "contact-created", 3, &order));
        tasks.extend(queue(&slots, "task-sync", 2, &order));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 505);
        let last = |f: &str| order.iter().rposition(|o| *o == f).unwrap();
        assert!(last("contact-created") < 12, "{:?}", &order[..12]);
        assert!(last("task-sync") < 12, "{:?}", &order[..12]);
        // While all three have work, they alternate.
        assert_eq!(
            &order[2..8],
            ["backfill", "contact-created", "task-sync", "backfill", "contact-created", "task-sync"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_give_their_turn_away_and_idle_waits_for_all() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let cancelled = {
            let slots = slots.clone();
            tokio::spawn(async move { drop(slots.acquire("b").await) })
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        tokio::task::yield_now().await;
        let waiting = queue(&slots, "c", 1, &order);
        tokio::task::yield_now().await;
        cancelled.abort();
        let _ = cancelled.await;
        let idle = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "a slot is taken");
        drop(held);
        for t in waiting {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["c"]);
        tokio::time::timeout(Duration::from_secs(1), idle).await.expect("idle once all slots are back").unwrap();
        // Every slot is free again.
        let _a = slots.acquire("x").await;
        assert_eq!(slots.lock().free, 0);
    }
}
