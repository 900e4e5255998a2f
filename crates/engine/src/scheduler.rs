//! When polls happen: each flow's schedule plus a stable per-flow jitter, so a thousand
//! flows on `every: 5m` do not all hit GHL in the same second.

use crate::engine::{Engine, EngineTasks};
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

impl Engine {
    /// Starts the background tasks: one scheduler per flow, and the retry scanner. They
    /// stop when `shutdown` turns true; `EngineTasks::join` waits for them.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> EngineTasks {
        let mut tasks = self.schedule_new_flows(&shutdown);
        tasks.extend(self.spawn_cluster(&shutdown));
        tasks.push(spawn_retries(self.clone(), shutdown));
        EngineTasks { tasks }
    }

    /// Starts a scheduler for each loaded flow that has none (after a reload). A flow
    /// that was replaced keeps its scheduler, which picks up the new definition; one that
    /// was removed stops its scheduler at its next wake-up.
    pub fn schedule_new_flows(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for name in self.flow_names() {
            let fresh = self.scheduled.lock().map(|mut s| s.insert(name.clone())).unwrap_or(false);
            if fresh {
                handles.push(spawn_flow(self.clone(), name, shutdown.clone()));
            }
        }
        handles
    }
}

fn spawn_flow(engine: Arc<Engine>, name: String, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Due time of the previous poll: intervals run at a fixed rate from it, so a slow
        // poll does not push every later poll back.
        let mut previous: Option<chrono::DateTime<Utc>> = None;
        // The first poll comes quickly (within 2 s); the second moves the flow to its full
        // stable offset, so many flows on one interval spread over the whole jitter bound
        // instead of polling in the same two seconds for ever.
        let mut spread_pending = true;
        loop {
            let Ok(rt) = engine.flow(&name) else {
                engine.unscheduled(&name);
                return;
            };
            if rt.webhook_only() {
                // Kept alive rather than ended: a reload may turn the flow into a polling one.
                drop(rt);
                engine.set_next_poll(&name, None);
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
                previous = None;
                continue;
            }
            let schedule = &rt.trigger.schedule;
            let now = Utc::now();
            let jitter =
                |bound: std::time::Duration| chrono::Duration::from_std(flow::jitter(&name, bound)).unwrap_or_default();
            let due = match (schedule, previous) {
                // First poll right after start (spread over up to 2 s), so a restart does
                // not leave a flow idle for a whole interval.
                (flow::Schedule::Every(_), None) => {
                    now + jitter(schedule.jitter_bound().min(std::time::Duration::from_secs(2)))
                }
                (flow::Schedule::Every(every), Some(prev)) => {
                    let every = chrono::Duration::from_std(*every).unwrap_or_default();
                    let mut next = prev + every;
                    if std::mem::take(&mut spread_pending) {
                        let bound = schedule.jitter_bound();
                        next += jitter(bound) - jitter(bound.min(std::time::Duration::from_secs(2)));
                    }
                    // Far behind (the machine slept, a poll took ages): start again from now.
                    if next + every < now {
                        now
                    } else {
                        next
                    }
                }
                (flow::Schedule::Cron(_), _) => match schedule.next_after(now) {
                    Some(next) => next + jitter(schedule.jitter_bound()),
                    None => {
                        tracing::warn!(flow = %name, "schedule has no next time; flow stops polling");
                        engine.unscheduled(&name);
                        return;
                    }
                },
            };
            previous = Some(due);
            engine.set_next_poll(&name, Some(due));
            let wait = (due - now).to_std().unwrap_or_default();
            drop(rt);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let drift = (Utc::now() - due).to_std().unwrap_or_default();
            engine.metrics().poll_drift.observe(drift.as_secs_f64());
            // A slot of the flow's account first (see `PollSlots`). Drift above is the
            // scheduler's lateness alone; the wait for a slot (the account's earlier polls,
            // mostly waiting for its rate limit) is counted apart.
            let Ok(rt) = engine.flow(&name) else { continue };
            // On a cluster node, the node holding the trigger's lease polls it.
            if !engine.may_poll(&rt.trigger_id) {
                continue;
            }
            let waiting = std::time::Instant::now();
            let slot = tokio::select! {
                slot = engine.poll_slots().acquire(&rt.account) => slot,
                _ = shutdown.changed() => return,
            };
            drop(rt);
            if *shutdown.borrow() {
                return;
            }
            engine.metrics().record_poll_slot_wait(waiting.elapsed());
            // Runs are dispatched as they are committed; they outlive a shutdown signal only
            // until the deadline flowd enforces. The poll's future is boxed: inline, its
            // size would be every sleeping scheduler task's size (10,000 flows, 10,000 tasks).
            let started = Utc::now();
            let polled = Box::pin(engine.poll_and_dispatch(&name)).await;
            drop(slot);
            engine.record_poll(&name, started, polled.as_ref().map(|(report, _)| report));
            match polled {
                Ok((report, _runs)) => {
                    if report.new > 0 || report.held > 0 {
                        tracing::info!(flow = %name, items = report.items, new = report.new, runs = report.runs.len(),
                            held = report.held, baseline = report.baseline, "poll");
                    }
                }
                Err(e) => match e.budget_spent() {
                    // Polling on would only be refused again: the flow pauses until the
                    // budget renews, and says so (`GET /api/flows`, `flowd_flow_paused`).
                    Some(renews_in) => {
                        let until = Utc::now() + chrono::Duration::from_std(renews_in).unwrap_or_default();
                        tracing::warn!(flow = %name, error = %e, until = %until.to_rfc3339(), "flow paused until its location's daily budget renews");
                        engine.pause(&name, until, e.to_string());
                        engine.set_next_poll(&name, Some(until));
                        tokio::select! {
                            _ = tokio::time::sleep(renews_in) => {}
                            _ = shutdown.changed() => return,
                        }
                        engine.unpause(&name);
                        tracing::info!(flow = %name, "flow resumed: its location's daily budget renewed");
                        previous = None;
                    }
                    None => tracing::warn!(flow = %name, error = %e, "poll failed"),
                },
            }
        }
    })
}

fn spawn_retries(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(engine.config().retry_scan);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = engine.retry_due().await {
                tracing::warn!(error = %e, "retrying due runs failed");
            }
        }
    })
}
