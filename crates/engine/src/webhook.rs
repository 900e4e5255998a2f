//! Webhook events to runs. The receiver (crate `webhooks`) only fills the store's inbox;
//! this turns each unprocessed event into runs of the flows whose `webhook:` matches it.
//!
//! Per event and flow, the run is created by [`store::Store::commit_poll`] under the
//! flow's trigger id and a dedupe key, and only then is the event marked processed. A
//! crash in between leaves the event unprocessed; processing it again finds the key
//! seen and creates nothing, so an event fires each flow at most once. The key is the
//! `webhookId` for a plain webhook flow, and for a reconciled flow the very key its poll
//! computes for the same record — so the poll skips what a webhook already fired, and
//! a webhook skips what the poll already fired.

use crate::dedupe::dedupe_key;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::runtime::FlowRuntime;
use crate::services::blocking;
use chrono::Utc;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use store::{NewRun, PollCommit, PollItem, RunId, StoreError, WebhookEvent};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Events read from the inbox per pass.
const BATCH: usize = 512;
/// How often the inbox is scanned without a wake-up (events stored by a previous
/// process, or a wake-up that came while a pass was running).
const IDLE_SCAN: Duration = Duration::from_secs(1);

/// What one pass over the inbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookReport {
    /// Events marked processed.
    pub events: usize,
    /// Runs created, ready to execute.
    pub runs: Vec<RunId>,
    /// Events left for a later pass: a matching flow coalesces and the window is open.
    pub deferred: usize,
    /// (flow, event) pairs a flow's `if` left out, or its key had been seen.
    pub skipped: usize,
}

impl Engine {
    /// One pass over the webhook inbox; the runs it creates are returned, not executed.
    pub async fn process_webhooks(&self) -> Result<WebhookReport, EngineError> {
        let store = self.store().clone();
        let events = blocking(move || Ok(store.list_unprocessed_webhooks(BATCH)?)).await?;
        let mut report = WebhookReport::default();
        if events.is_empty() {
            return Ok(report);
        }
        let mut flows = self.runtimes();
        flows.retain(|rt| rt.trigger.webhook.is_some());
        flows.sort_by(|a, b| a.name.cmp(&b.name));
        let now = Utc::now();
        for (i, ev) in events.iter().enumerate() {
            let event_type = ev.payload.get("type").and_then(Value::as_str).unwrap_or_default();
            let matching: Vec<&Arc<FlowRuntime>> =
                flows.iter().filter(|rt| matches(rt, event_type, &ev.payload)).collect();
            let window = matching.iter().filter_map(|rt| coalesce(rt)).max().unwrap_or_default();
            let age = (now - ev.received_at).to_std().unwrap_or_default();
            if age < window {
                report.deferred += 1;
                continue;
            }
            let mut commits = Vec::with_capacity(matching.len());
            for rt in matching {
                if coalesce(rt).is_some() && superseded(ev, &events[i + 1..]) {
                    report.skipped += 1;
                    continue;
                }
                match self.commit_for(rt, ev)? {
                    Some(c) => commits.push(c),
                    None => report.skipped += 1,
                }
            }
            let store = self.store().clone();
            let id = ev.id.clone();
            let (runs, seen) = blocking(move || {
                let mut runs = Vec::new();
                let mut seen = 0;
                for c in &commits {
                    let out = store.commit_poll(c)?;
                    seen += out.already_seen.len();
                    runs.extend(out.created.into_iter().map(|(_, id)| id));
                }
                match store.complete_webhook_event(&id) {
                    // Another pass finished it first: its runs exist, ours were deduped.
                    Ok(_) | Err(StoreError::Conflict(_)) => Ok((runs, seen)),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
            report.events += 1;
            report.skipped += seen;
            report.runs.extend(runs);
        }
        Ok(report)
    }

    /// The commit that fires `rt` for `ev`, or `None` when its `if` leaves the event out.
    fn commit_for(&self, rt: &FlowRuntime, ev: &WebhookEvent) -> Result<Option<PollCommit>, EngineError> {
        let flow = rt;
        let mut ctx = self.context(rt, ev.payload.clone(), Utc::now());
        if let Some(filter) = &flow.filter {
            match filter.matches(&ctx) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    tracing::warn!(flow = %flow.name, webhook = %ev.id, error = %e, "`if` failed on a webhook event; skipped");
                    return Ok(None);
                }
            }
        }
        let key = if rt.webhook_only() { ev.id.clone() } else { reconcile_key(rt, &mut ctx, ev) };
        let mut run = NewRun::new(flow.name.clone(), ev.payload.clone());
        run.trigger = Some(rt.trigger_id.clone());
        run.touched = match &rt.source {
            crate::runtime::Source::Poll(p) => crate::touched::of_item(&p.op, &run.item),
            crate::runtime::Source::Webhook { event } => crate::touched::of_event(event, &run.item),
            crate::runtime::Source::Inbound { .. } => Vec::new(),
        };
        Ok(Some(PollCommit {
            lease: None,
            trigger: rt.trigger_id.clone(),
            state: None,
            items: vec![PollItem { key, run: Some(run) }],
        }))
    }

    /// Processes the inbox whenever `wake` is notified (the receiver stored an event)
    /// and every second, executing the runs it creates, until `shutdown` turns true.
    pub fn start_webhooks(self: &Arc<Self>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
                wait = IDLE_SCAN;
                match engine.process_webhooks().await {
                    Ok(report) => {
                        if report.deferred > 0 {
                            wait = Duration::from_millis(100);
                        }
                        if !report.runs.is_empty() {
                            tracing::info!(events = report.events, runs = report.runs.len(), "webhook events");
                        }
                        for id in report.runs {
                            drop(engine.dispatch(id));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "processing webhook events failed"),
                }
            }
        })
    }
}

/// Whether `payload` is an event for `rt`: its `webhook:` type, and its location. One
/// receiver serves every account, so an event belongs to the flows of its location.
fn matches(rt: &FlowRuntime, event_type: &str, payload: &Value) -> bool {
    let Some(hook) = &rt.trigger.webhook else { return false };
    if hook.event != event_type {
        return false;
    }
    match (payload.get("locationId").and_then(Value::as_str), rt.location_id.as_deref()) {
        (Some(event_loc), Some(flow_loc)) => event_loc == flow_loc,
        _ => true,
    }
}

fn coalesce(rt: &FlowRuntime) -> Option<Duration> {
    rt.trigger.webhook.as_ref().and_then(|h| h.coalesce)
}

/// Whether a later event of the same type is about the same record: the flow then
/// fires once, for the latest.
fn superseded(ev: &WebhookEvent, later: &[WebhookEvent]) -> bool {
    let record = |e: &WebhookEvent| {
        let p = &e.payload;
        (p.get("type").cloned(), p.get("id").or_else(|| p.get("contactId")).cloned())
    };
    let mine = record(ev);
    mine.1.is_some() && later.iter().any(|e| record(e) == mine)
}

/// The key the reconciling poll would record for this record.
fn reconcile_key(rt: &FlowRuntime, ctx: &mut Value, ev: &WebhookEvent) -> String {
    ctx["trigger"] = Value::Null;
    let inputs = match rt.trigger.with.render(ctx) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let key =
        rt.polled().and_then(|p| p.spec()).and_then(|spec| dedupe_key(spec, rt.trigger.dedupe, &ev.payload, &inputs));
    key.unwrap_or_else(|| {
        // Never drop a delivery for want of a key: fire it, at the risk of the poll
        // firing the same record again.
        tracing::warn!(flow = %rt.name, webhook = %ev.id, "webhook payload has no id the poll would use");
        format!("webhook:{}", ev.id)
    })
}
