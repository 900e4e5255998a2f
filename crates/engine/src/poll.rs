//! One poll of a flow's trigger: call GHL (following pagination), extract the items, find
//! the new ones by dedupe key, and commit — seen keys, trigger state and one run per new
//! item, in one durable transaction — before anything is sent.

use crate::dedupe::dedupe_key;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::request;
use crate::runtime::FlowRuntime;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use flow::Start;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use store::{NewRun, PollCommit, PollItem, RunId};

/// What one poll found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Items the trigger returned.
    pub items: usize,
    /// Items whose dedupe key was not seen before.
    pub new: usize,
    /// Runs created and ready to execute.
    pub runs: Vec<RunId>,
    /// Runs created but held by the flood guard.
    pub held: usize,
    /// New items the `if:` filter left out.
    pub filtered: usize,
    /// This was the first poll: keys were recorded as a baseline.
    pub baseline: bool,
}

impl Engine {
    /// Polls a flow's trigger once and commits what it found. The runs it creates are
    /// returned, not executed; see [`Engine::poll_and_run`].
    pub async fn poll(&self, name: &str) -> Result<PollReport, EngineError> {
        let rt = self.flow(name)?;
        if rt.webhook_only() {
            // Webhook deliveries feed it; there is nothing to poll.
            return Ok(PollReport::default());
        }
        let started = std::time::Instant::now();
        let result = self.poll_inner(&rt).await;
        self.metrics().record_poll(rt.name(), &rt.trigger_op.key, started.elapsed(), result.as_ref().ok());
        result
    }

    async fn poll_inner(&self, rt: &Arc<FlowRuntime>) -> Result<PollReport, EngineError> {
        let now = Utc::now();
        let flow = &rt.flow;
        let ctx = self.context(rt, Value::Null, "", now);
        let inputs = flow.render_trigger_with(&ctx).map_err(|source| EngineError::Render {
            flow: flow.name.clone(),
            what: "trigger.with".into(),
            source: Box::new(source),
        })?;
        let inputs = match inputs {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(EngineError::Flow {
                    flow: flow.name.clone(),
                    message: format!("trigger.with rendered to {other}"),
                })
            }
        };
        let items = self.fetch_items(rt, &inputs, now).await?;

        let Some(spec) = rt.trigger_op.trigger.as_ref() else {
            return Err(EngineError::Flow { flow: flow.name.clone(), message: "trigger has no trigger spec".into() });
        };
        let mode = flow.trigger.dedupe;
        let item_count = items.len();
        let mut keyed: Vec<(String, Value)> = Vec::with_capacity(item_count);
        let mut in_poll = HashSet::with_capacity(item_count);
        // Items move into the runs; nothing is cloned per item.
        for item in items {
            match dedupe_key(spec, mode, &item, &inputs) {
                Some(k) if in_poll.insert(k.clone()) => keyed.push((k, item)),
                Some(_) => {}
                None => tracing::debug!(flow = %flow.name, "item without an id skipped"),
            }
        }
        let store = self.store().clone();
        let trigger_id = rt.trigger_id.clone();
        let keys: Vec<String> = keyed.iter().map(|(k, _)| k.clone()).collect();
        let (unseen, state) = self
            .blocking(move || Ok((store.filter_unseen(&trigger_id, &keys)?, store.trigger_state(&trigger_id)?)))
            .await?;
        let baseline = state.is_none();

        let mut report = PollReport { items: item_count, baseline, ..PollReport::default() };
        let mut poll_items = Vec::new();
        let mut ctx = ctx;
        for ((key, item), is_new) in keyed.into_iter().zip(unseen) {
            if !is_new {
                continue;
            }
            report.new += 1;
            let fire = !baseline
                || match &flow.trigger.start {
                    Start::Now => false,
                    Start::All => true,
                    Start::Since(t) => item_time(spec, &item).is_some_and(|at| at >= *t),
                };
            let fire = fire && self.passes_filter(rt, &mut ctx, &item, &mut report)?;
            let run = fire.then(|| {
                let mut run = NewRun::new(flow.name.clone(), item);
                run.trigger = Some(rt.trigger_id.clone());
                run
            });
            poll_items.push(PollItem { key, run });
        }
        let firing = poll_items.iter().filter(|p| p.run.is_some()).count();
        let held = firing as u64 > flow.trigger.max_new;
        if held {
            for p in poll_items.iter_mut() {
                if let Some(r) = p.run.as_mut() {
                    r.held = true;
                }
            }
            tracing::warn!(flow = %flow.name, new = firing, max_new = flow.trigger.max_new,
                "flood guard: runs held until `flowd release {}`", flow.name);
        }
        let polls = state.as_ref().and_then(|s| s.get("polls")).and_then(Value::as_u64).unwrap_or(0);
        let baseline_at = state.as_ref().and_then(|s| s.get("baseline_at").cloned()).unwrap_or_else(|| json!(now));
        let commit = PollCommit {
            trigger: rt.trigger_id.clone(),
            state: Some(json!({ "baseline_at": baseline_at, "last_poll_at": now, "polls": polls + 1 })),
            items: poll_items,
        };
        let store = self.store().clone();
        let outcome = self.blocking(move || Ok(store.commit_poll(&commit)?)).await?;
        let created: Vec<RunId> = outcome.created.into_iter().map(|(_, id)| id).collect();
        if held {
            report.held = created.len();
        } else {
            report.runs = created;
        }
        Ok(report)
    }

    fn passes_filter(
        &self,
        rt: &FlowRuntime,
        ctx: &mut Value,
        item: &Value,
        report: &mut PollReport,
    ) -> Result<bool, EngineError> {
        let Some(filter) = &rt.flow.filter else { return Ok(true) };
        ctx["trigger"] = item.clone();
        let keep = filter.matches(ctx).map_err(|source| EngineError::Render {
            flow: rt.flow.name.clone(),
            what: "if".into(),
            source: Box::new(source),
        })?;
        if !keep {
            report.filtered += 1;
        }
        Ok(keep)
    }

    async fn fetch_items(
        &self,
        rt: &FlowRuntime,
        inputs: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Value>, EngineError> {
        let op = &rt.trigger_op;
        let err =
            |source| EngineError::Poll { flow: rt.flow.name.clone(), op: op.key.clone(), source: Box::new(source) };
        let req = request::build(op, inputs)?;
        let account = &rt.flow.account;
        if rt.is_single_record() {
            return match self.client().send(account, &req).await {
                Ok(ghl::Body::Json(body)) => {
                    Ok(rt.items_path.first(&body).filter(|v| !v.is_null()).cloned().into_iter().collect())
                }
                Ok(ghl::Body::Text { content_type, text }) => {
                    Ok(vec![json!({ "contentType": content_type, "size": text.len(), "text": text })])
                }
                Ok(ghl::Body::Bytes { content_type, bytes }) => {
                    Ok(vec![json!({ "contentType": content_type, "size": bytes.len() })])
                }
                // The record does not exist (yet): nothing to fire for.
                Err(ghl::Error::Api(e)) if e.status == 404 => Ok(Vec::new()),
                Err(e) => Err(err(e)),
            };
        }
        let Some(spec) = op.trigger.as_ref() else { return Ok(Vec::new()) };
        let mut opts = ghl::PageOptions {
            max_pages: self.config().max_pages,
            max_items: self.config().max_items,
            ..ghl::PageOptions::default()
        };
        if matches!(spec.pagination, catalog::Pagination::TimeWindow { .. }) {
            // Upcoming events and slots: from a day ago to four weeks ahead.
            opts.window = Some((now - ChronoDuration::days(1), now + ChronoDuration::days(28)));
        }
        let mut stream = self.client().paginate(account, req, &spec.pagination, &spec.items, opts).map_err(err)?;
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item.map_err(err)?);
        }
        Ok(items)
    }
}

/// When an item was created (or else last updated), for `start: <time>`.
fn item_time(spec: &catalog::TriggerSpec, item: &Value) -> Option<DateTime<Utc>> {
    let field = spec.created.as_deref().or(spec.updated.as_deref())?;
    match item.get(field)? {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}
