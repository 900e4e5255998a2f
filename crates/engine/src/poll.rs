//! One poll of a flow's trigger: call GHL (following pagination), extract the items, find
//! the new ones by dedupe key, and commit — seen keys, trigger state and one run per new
//! item, in one durable transaction — before anything is sent.
//!
//! When the flood guard cannot trip (see [`Engine::poll_and_dispatch`]) each page is
//! committed on its own (seen keys and runs; the trigger's state with the last page) and
//! its runs start while the next page is fetched: a poll that finds thousands of items
//! does not hold them all back until the last page has arrived.

use crate::dedupe::dedupe_key;
use crate::error::EngineError;
use crate::read_plan::{self, ReadPlan, ReadProgress};
use crate::request;
use crate::runtime::{FlowRuntime, Polled};
use crate::services::{blocking, Services};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use flow::Start;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use store::{NewRun, PollCommit, PollItem, RunId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A run a commit created, with what it takes to start it without reading it back.
pub(crate) struct Created {
    pub(crate) id: RunId,
    pub(crate) rt: Arc<FlowRuntime>,
    pub(crate) item: HeldItem,
}

/// A created run's trigger item while the run waits for its slot. A poll hands over up to
/// `max_runs_in_memory` runs at once, and an item as a `Value` tree (a map entry and a
/// string per field) takes several times the memory of its JSON; so when the store gives
/// back the JSON it wrote (see [`store::PollOutcome::created_items`]), that is what waits,
/// decoded once when the run starts.
pub(crate) enum HeldItem {
    Json(Box<[u8]>),
    Tree(Value),
}

impl HeldItem {
    /// The item as the run's template context takes it.
    pub(crate) fn into_value(self) -> Result<Value, serde_json::Error> {
        match self {
            HeldItem::Json(bytes) => serde_json::from_slice(&bytes),
            HeldItem::Tree(v) => Ok(v),
        }
    }
}

/// Runs created by a commit, handed over as soon as they are durable, with the room they
/// take in memory (see [`Backlog`]) when they are to be executed.
pub(crate) type OnRuns<'a> = dyn FnMut(Vec<Created>, Option<OwnedSemaphorePermit>) + Send + 'a;

/// Room for the runs polls created and handed over, queued or executing
/// ([`crate::EngineConfig::max_runs_in_memory`]): one permit per run, held until it ends.
pub(crate) struct Backlog {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Backlog {
    pub(crate) fn new(max_runs_in_memory: usize) -> Backlog {
        let max = max_runs_in_memory.clamp(1, Semaphore::MAX_PERMITS);
        Backlog { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// Waits until `n` more runs may be held in memory; the permit holds as many slots,
    /// one per run, at most all of them.
    pub(crate) async fn room_for(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = n.min(self.max);
        if n == 0 {
            return None;
        }
        // The semaphore is never closed.
        self.permits.clone().acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX)).await.ok()
    }
}

/// One poll of one flow, with what it needs lent by the engine.
pub(crate) struct Poller<'a> {
    pub(crate) svc: &'a Services,
    /// Set when the runs are to be executed: each commit first waits for room for them.
    pub(crate) backlog: Option<&'a Backlog>,
}

impl Poller<'_> {
    /// Polls `rt`'s trigger once and commits what it found, handing each commit's runs to
    /// `on_runs` as soon as they are durable. A flow fed by webhooks only has nothing to poll.
    pub(crate) async fn poll(
        &self,
        rt: &Arc<FlowRuntime>,
        on_runs: &mut OnRuns<'_>,
    ) -> Result<PollReport, EngineError> {
        let Some(polled) = rt.polled() else {
            return Ok(PollReport::default());
        };
        let started = std::time::Instant::now();
        let result = match &rt.trigger.fan_out {
            Some(fan) => crate::fanout::poll(self, rt, polled, fan, on_runs).await,
            None => self.poll_inner(rt, polled, on_runs).await,
        };
        self.svc.metrics.record_poll(&rt.name, &polled.op.key, started.elapsed(), result.as_ref().ok());
        result
    }

    async fn poll_inner(
        &self,
        rt: &Arc<FlowRuntime>,
        polled: &Polled,
        on_runs: &mut OnRuns<'_>,
    ) -> Result<PollReport, EngineError> {
        let now = Utc::now();
        let flow = &**rt;
        let ctx = rt.context(Value::Null, &self.svc.env, "", now);
        let inputs = flow.trigger.with.render(&ctx).map_err(|source| EngineError::Render {
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
        let Some(spec) = polled.spec() else {
            return Err(EngineError::Flow { flow: flow.name.clone(), message: "trigger has no trigger spec".into() });
        };
        let store = self.svc.store.clone();
        let trigger_id = rt.trigger_id.clone();
        let state = blocking(move || Ok(store.trigger_state(&trigger_id)?)).await?;
        let baseline = state.is_none();
        let plan = read_plan::plan(&polled.op, spec, &flow.trigger, state.as_ref(), now);
        let mut inputs = inputs;
        read_plan::apply(&plan, &mut inputs);
        let baseline_at = state.as_ref().and_then(|s| s.get("baseline_at").cloned()).unwrap_or_else(|| json!(now));
        let baseline_ms =
            baseline_at.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis());
        // The flood guard holds every run of a poll that finds more than `max_new` new
        // items, so runs may only start before the last page when it cannot trip.
        let pipelined = flow.trigger.max_new >= self.svc.config.max_items as u64;
        // Then, without an `if:` filter (which counts what it leaves out), nothing needs to
        // know which items are new before the commit: it checks every key again anyway and
        // creates no run for one already seen. One pass over the keys instead of two.
        let commit_decides = pipelined && flow.filter.is_none();
        // Under `start: now`, an incremental read fires only for what was written after the
        // baseline: a record indexed late with an older time existed before it.
        let since_baseline =
            (flow.trigger.start == Start::Now && plan.field.is_some()).then_some(baseline_ms).flatten();

        let mut report = PollReport { baseline, ..PollReport::default() };
        let mut seen_in_poll = HashSet::new();
        let mut ctx = ctx;
        let mut held_back = Vec::new();
        let mut progress = ReadProgress::default();
        tracing::debug!(flow = %flow.name, read = plan.kind, strategy = plan.strategy, "poll");
        let mut pages = self.fetch_pages(rt, polled, &inputs, now, &plan)?;
        let mut current = pages.next().await;
        while let Some(page) = current {
            let page = page?;
            report.items += page.len();
            for item in &page {
                progress.see(&plan, item);
            }
            if plan.ascending {
                progress.last = page.last().cloned();
            }
            let scope = PollScope { spec, inputs: &inputs, baseline, commit_decides, since_baseline, plan: &plan };
            let work = async {
                let items = self.new_items(rt, &scope, page, &mut seen_in_poll, &mut ctx, &mut report).await?;
                if pipelined {
                    // The trigger's state moves only with the last commit, so a crash between
                    // pages polls again from the old state; the keys committed here are not
                    // new then, and a baseline stays a baseline.
                    let (created, seen_before) = self.commit(rt, None, items).await?;
                    report.new = report.new.saturating_sub(seen_before);
                    report.runs.extend(created.iter().map(|c| c.id));
                    // The runs are durable: waiting here for earlier runs to end holds the
                    // poll (and the pages after this one) back, not these runs.
                    let room = self.room_for(created.len()).await;
                    on_runs(created, room);
                } else {
                    held_back.extend(items);
                }
                Ok::<_, EngineError>(())
            };
            // The next page is fetched while this one is checked and committed.
            let (done, next) = tokio::join!(work, pages.next());
            done?;
            current = next;
        }
        let capped = plan.field.is_some() && progress.items >= self.svc.config.max_items;
        if capped && !plan.ascending {
            tracing::warn!(flow = %flow.name, max_items = self.svc.config.max_items,
                "more records changed since the last poll than one poll reads; the watermark stays until a poll reads them all (raise max_items)");
        }
        let firing = held_back.iter().filter(|p| p.run.is_some()).count();
        let held = firing as u64 > flow.trigger.max_new;
        if held {
            for p in held_back.iter_mut() {
                if let Some(r) = p.run.as_mut() {
                    r.held = true;
                }
            }
            tracing::warn!(flow = %flow.name, new = firing, max_new = flow.trigger.max_new,
                "flood guard: runs held until `flowd release {}`", flow.name);
        }
        let polls = state.as_ref().and_then(|s| s.get("polls")).and_then(Value::as_u64).unwrap_or(0);
        let mut next_state = Map::new();
        next_state.insert("baseline_at".into(), baseline_at);
        next_state.insert("last_poll_at".into(), json!(now));
        next_state.insert("polls".into(), json!(polls + 1));
        let fallback = baseline_ms.or(Some(now.timestamp_millis()));
        read_plan::record(&plan, &progress, capped, state.as_ref(), fallback, now, &mut next_state);
        if let Some(w) = next_state.get(read_plan::state_keys::WATERMARK).and_then(Value::as_i64) {
            self.svc.metrics.record_watermark(&rt.name, now.timestamp_millis().saturating_sub(w));
        }
        // The watermark commits with the seen keys and runs: a crash before it polls the
        // same span again, and the keys committed so far make that a no-op.
        let (created, seen_before) = self.commit(rt, Some(Value::Object(next_state)), held_back).await?;
        report.new = report.new.saturating_sub(seen_before);
        if held {
            report.held = created.len();
        } else {
            report.runs.extend(created.iter().map(|c| c.id));
            let room = self.room_for(created.len()).await;
            on_runs(created, room);
        }
        Ok(report)
    }

    pub(crate) async fn room_for(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        match self.backlog {
            Some(b) => b.room_for(n).await,
            None => None,
        }
    }

    /// The items of one page whose dedupe key was never recorded, each with the run it
    /// fires (none on a baseline or when the `if:` filter leaves it out).
    async fn new_items(
        &self,
        rt: &Arc<FlowRuntime>,
        scope: &PollScope<'_>,
        page: Vec<Value>,
        seen_in_poll: &mut HashSet<String>,
        ctx: &mut Value,
        report: &mut PollReport,
    ) -> Result<Vec<PollItem>, EngineError> {
        let flow = &**rt;
        let mode = flow.trigger.dedupe;
        let mut keyed: Vec<(String, Value)> = Vec::with_capacity(page.len());
        // Items move into the runs; nothing is cloned per item.
        for item in page {
            match dedupe_key(scope.spec, mode, &item, scope.inputs) {
                Some(k) if seen_in_poll.insert(k.clone()) => keyed.push((k, item)),
                Some(_) => {}
                None => tracing::debug!(flow = %flow.name, "item without an id skipped"),
            }
        }
        if keyed.is_empty() {
            return Ok(Vec::new());
        }
        let unseen = if scope.commit_decides {
            vec![true; keyed.len()]
        } else {
            let store = self.svc.store.clone();
            let trigger_id = rt.trigger_id.clone();
            let keys: Vec<String> = keyed.iter().map(|(k, _)| k.clone()).collect();
            blocking(move || Ok(store.filter_unseen(&trigger_id, &keys)?)).await?
        };
        let mut out = Vec::new();
        for ((key, item), is_new) in keyed.into_iter().zip(unseen) {
            if !is_new {
                continue;
            }
            report.new += 1;
            let fire = if scope.baseline {
                match &flow.trigger.start {
                    Start::Now => false,
                    Start::All => true,
                    Start::Since(t) => item_time(scope.spec, &item).is_some_and(|at| at >= *t),
                }
            } else {
                read_plan::after_baseline(scope.plan, &item, scope.since_baseline)
            };
            let fire = fire && passes_filter(rt, ctx, &item, report)?;
            let run = fire.then(|| {
                let mut run = NewRun::new(flow.name.clone(), item);
                run.trigger = Some(rt.trigger_id.clone());
                run.touched = rt.polled().map(|p| crate::touched::of_item(&p.op, &run.item)).unwrap_or_default();
                run
            });
            out.push(PollItem { key, run });
        }
        Ok(out)
    }

    /// Records seen keys, runs and (with the last commit of a poll) the trigger's state,
    /// durably; returns the runs created, each with its item, and how many keys were
    /// already recorded (no run for those).
    pub(crate) async fn commit(
        &self,
        rt: &Arc<FlowRuntime>,
        state: Option<Value>,
        items: Vec<PollItem>,
    ) -> Result<(Vec<Created>, usize), EngineError> {
        if items.is_empty() && state.is_none() {
            return Ok((Vec::new(), 0));
        }
        let lease = match &self.svc.cluster {
            Some(c) => Some(c.lease(&rt.trigger_id).ok_or_else(|| {
                EngineError::Store(store::StoreError::Fenced(format!(
                    "this node holds no lease on {}: another node polls it",
                    rt.trigger_id
                )))
            })?),
            None => None,
        };
        let commit = PollCommit { lease, trigger: rt.trigger_id.clone(), state, items };
        let store = self.svc.store.clone();
        let committed = blocking(move || {
            let outcome = store.commit_poll(&commit)?;
            Ok((outcome, commit))
        })
        .await;
        if let Some(c) = &self.svc.cluster {
            match &committed {
                Err(EngineError::Store(store::StoreError::Fenced(_))) => c.lost(&rt.trigger_id),
                Ok((outcome, _)) if !outcome.created.is_empty() => c.runs_committed(),
                _ => {}
            }
        }
        let (outcome, commit) = committed?;
        // `created` follows the items' order, skipping keys already seen.
        let jsons = (outcome.created_items.len() == outcome.created.len()).then_some(outcome.created_items);
        let mut jsons = jsons.into_iter().flatten();
        let mut created = outcome.created.into_iter().peekable();
        let mut out = Vec::with_capacity(created.len());
        for item in commit.items {
            let Some(run) = item.run else { continue };
            if let Some((_, id)) = created.next_if(|(key, _)| *key == item.key) {
                // The decoded tree goes with the rest of the page, when the JSON is given.
                let item = jsons.next().map_or(HeldItem::Tree(run.item), HeldItem::Json);
                out.push(Created { id, rt: rt.clone(), item });
            }
        }
        Ok((out, outcome.already_seen.len()))
    }

    /// The trigger's items, a page at a time (a single-record trigger is one page).
    fn fetch_pages<'a>(
        &'a self,
        rt: &'a FlowRuntime,
        polled: &'a Polled,
        inputs: &Map<String, Value>,
        now: DateTime<Utc>,
        plan: &ReadPlan,
    ) -> Result<BoxStream<'a, Result<Vec<Value>, EngineError>>, EngineError> {
        let op = &polled.op;
        let err = move |source| EngineError::Poll {
            flow: rt.name.clone(),
            op: polled.op.key.clone(),
            source: Box::new(source),
        };
        let req = request::build(op, inputs)?.origin(ghl::Origin::new(rt.name.as_str(), ghl::Purpose::Poll));
        let account = &rt.account;
        if polled.is_single_record() {
            let one = async move {
                match self.svc.client.send(account, &req).await {
                    Ok(ghl::Body::Json(body)) => {
                        Ok(polled.items.first(&body).filter(|v| !v.is_null()).cloned().into_iter().collect())
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
                }
            };
            return Ok(futures::stream::once(one).boxed());
        }
        let Some(spec) = op.trigger.as_ref() else { return Ok(futures::stream::empty().boxed()) };
        let mut opts = ghl::PageOptions {
            max_pages: self.svc.config.max_pages,
            max_items: self.svc.config.max_items,
            ..ghl::PageOptions::default()
        };
        if plan.field.is_some() {
            // An incremental read stops at `max_items` and the next poll resumes there;
            // pages are bounded by that, not by a page count.
            opts.max_pages = u32::MAX;
        } else {
            // A full read cannot resume: stopping early would leave the rest unseen for
            // good, so it reads to the end (bounded only against a server that never ends).
            opts.max_pages = FULL_READ_MAX_PAGES;
            opts.max_items = usize::MAX;
        }
        if let (Some(cutoff), Some(field)) = (plan.stop_before, plan.field.clone()) {
            opts.stop_when =
                Some(Arc::new(move |item: &Value| read_plan::time_ms(item, &field).is_some_and(|t| t < cutoff)));
        }
        // A page size the flow asks for (`pageLimit: 50`) is kept; the pager would otherwise
        // use the catalog's, and the flow's value would silently not apply.
        opts.page_size = requested_page_size(&plan.pagination, inputs);
        if matches!(plan.pagination, catalog::Pagination::TimeWindow { .. }) {
            // Upcoming events and slots: from a day ago to four weeks ahead.
            opts.window =
                Some((now - ChronoDuration::days(1), now + ChronoDuration::days(i64::from(catalog::WINDOW_DAYS) - 1)));
        }
        let items = self.svc.client.paginate(account, req, &plan.pagination, &spec.items, opts).map_err(err)?;
        // Items arrive a page at a time: what is ready together is one page (or less).
        Ok(items
            .ready_chunks(PAGE_CHUNK)
            .map(move |chunk| chunk.into_iter().collect::<Result<Vec<Value>, ghl::Error>>().map_err(err))
            .boxed())
    }
}

/// What every page of one poll is checked with.
struct PollScope<'a> {
    spec: &'a catalog::TriggerSpec,
    inputs: &'a Map<String, Value>,
    /// This is the first poll: keys are recorded, and fire only as `start` says.
    baseline: bool,
    commit_decides: bool,
    /// `start: now` on an incremental read: items written before this (epoch ms) don't fire.
    since_baseline: Option<i64>,
    plan: &'a ReadPlan,
}

/// A full read stops after this many pages, with a warning: a server that always says
/// "more" must not keep a poll going for ever.
const FULL_READ_MAX_PAGES: u32 = 100_000;

/// At most this many items per commit when a poll commits page by page.
const PAGE_CHUNK: usize = 1000;

/// The page size a trigger's `with` sets through the operation's limit parameter.
fn requested_page_size(pagination: &catalog::Pagination, inputs: &Map<String, Value>) -> Option<u32> {
    use catalog::Pagination as P;
    let param = match pagination {
        P::Offset { limit_param, .. }
        | P::Page { limit_param, .. }
        | P::Cursor { limit_param, .. }
        | P::LastItem { limit_param, .. } => limit_param,
        _ => return None,
    };
    let value = inputs.get(param)?;
    let n = value.as_u64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))?;
    u32::try_from(n).ok().filter(|n| *n > 0)
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

/// Whether an item passes the flow's `if:` (counted in the report when it does not); the
/// template sees the item as `trigger`. Shared by plain and fan-out polls.
pub(crate) fn passes_filter(
    rt: &FlowRuntime,
    ctx: &mut Value,
    item: &Value,
    report: &mut PollReport,
) -> Result<bool, EngineError> {
    let Some(filter) = &rt.filter else { return Ok(true) };
    ctx["trigger"] = item.clone();
    let keep = filter.matches(ctx).map_err(|source| EngineError::Render {
        flow: rt.name.clone(),
        what: "if".into(),
        source: Box::new(source),
    })?;
    if !keep {
        report.filtered += 1;
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_held_as_json_decodes_to_the_item_with_its_key_order() {
        let item = json!({"id": "c1", "b": [1, 2.5, "x\"y\u{e9}\n"], "a": {"z": null, "y": true}, "n": -7});
        let held = HeldItem::Json(serde_json::to_vec(&item).unwrap().into_boxed_slice());
        let back = held.into_value().unwrap();
        assert_eq!(back, item);
        // The template context iterates maps in the item's order (`{{#each trigger}}`).
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "b", "a", "n"]);
    }
}
