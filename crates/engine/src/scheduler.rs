//! When polls happen: each flow's schedule plus a stable per-flow jitter, so a thousand
//! flows on `every: 5m` do not all hit GHL in the same second.

use crate::engine::Engine;
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) fn spawn_flow(engine: Arc<Engine>, name: String, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
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
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
                previous = None;
                continue;
            }
            let schedule = &rt.flow.trigger.schedule;
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
            match engine.poll(&name).await {
                Ok(report) => {
                    if report.new > 0 || report.held > 0 {
                        tracing::info!(flow = %name, items = report.items, new = report.new, runs = report.runs.len(),
                            held = report.held, baseline = report.baseline, "poll");
                    }
                    for id in report.runs {
                        // Runs outlive a shutdown signal only until the deadline flowd enforces.
                        drop(engine.dispatch(id));
                    }
                }
                Err(e) => tracing::warn!(flow = %name, error = %e, "poll failed"),
            }
        }
    })
}

pub(crate) fn spawn_retries(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
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
