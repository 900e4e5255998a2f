//! One poll of a fan-out trigger (`for_each_record:`): the per-record trigger (the tasks of
//! one contact) read for each of a bounded number of parent records (contacts), and the
//! children that were never seen fired.
//!
//! Which parents a poll reads, within `max_per_poll`:
//! 1. the parents changed since the last poll, by the parent's updated-at field, from the
//!    watermark minus the lookback, at most half of `max_per_poll` (one request; a full
//!    page goes on from its cursor next poll, so no count of changed parents stalls the
//!    read, and none starves the round);
//! 2. with the room left, the next parents of a round-robin through all of them, in
//!    created-at order by the search's cursor (one request); the round starts over when a
//!    read comes back short.
//!
//! Creating a task or a note does not change its contact's `dateUpdated` in GHL (nothing
//! documents that it does, and the sandbox does not), so (1) only brings forward parents
//! whose own record changed; (2) is what guarantees a child of any parent is seen within
//! one round ([`catalog::FanOutCost::polls_per_round`]).
//!
//! Dedupe keys are `<parent id>/<child key>`: the same task never fires twice, and two
//! contacts' children never collide. A parent's first visit is its baseline: under
//! `start: now` a child fires only when its own created-at, or else its parent's, is after
//! the flow's baseline. The parents' cursors and watermark, the first-visit markers and the
//! children's keys and runs are one poll commit: a poll killed before it re-reads the same
//! parents, and one killed after it has nothing left to do.

use crate::dedupe::dedupe_key;
use crate::error::EngineError;
use crate::poll::{Created, OnRuns, PollReport, Poller};
use crate::read_plan::{iso, time_ms};
use crate::request;
use crate::runtime::{FlowRuntime, Polled};
use crate::services::blocking;
use catalog::{ParentRead, SharedOperation};
use chrono::{DateTime, Utc};
use flow::{FanOut, Start};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use ghl::JsonPath;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use store::{NewRun, PollItem};

/// The parent trigger of a fan-out, resolved when the flow is loaded.
#[derive(Debug)]
pub struct Parent {
    pub op: SharedOperation,
    /// The parent's `items` JSONPath, parsed.
    pub items: Arc<JsonPath>,
}

/// Child reads in flight at once; the rate limiter still spaces them.
const CHILD_READS_IN_FLIGHT: usize = 4;

/// The trigger state's fields of a fan-out (beside the poll's own).
mod keys {
    /// Newest updated-at (epoch ms) among the changed parents read.
    pub const WATERMARK: &str = "watermark";
    /// Where the read of changed parents goes on after a full page (the search's cursor).
    pub const CHANGED_AFTER: &str = "changed_after";
    /// Where the round-robin goes on (the search's cursor); null at the start of a round.
    pub const ROUND_AFTER: &str = "round_after";
    /// Rounds through all parents completed, when the current one started and how long
    /// the last one took (ms).
    pub const ROUNDS: &str = "rounds";
    pub const ROUND_STARTED_AT: &str = "round_started_at";
    pub const LAST_ROUND_MS: &str = "last_round_ms";
}

/// The dedupe key of a parent's first-visit marker. Child keys start with the parent's id,
/// never with `@`.
fn visited_key(parent: &str) -> String {
    format!("@visited/{parent}")
}

/// The key of a changed parent already read at this updated-at: the lookback's overlap
/// reads it again, and it is not visited again for that.
fn changed_key(parent: &str, updated: &Value) -> String {
    format!("@changed/{parent}@{updated}")
}

/// Polls `rt`'s fan-out trigger once; see the module's documentation.
pub(crate) async fn poll(
    poller: &Poller<'_>,
    rt: &Arc<FlowRuntime>,
    polled: &Polled,
    fan: &FanOut,
    on_runs: &mut OnRuns<'_>,
) -> Result<PollReport, EngineError> {
    let svc = poller.svc;
    let flow = &**rt;
    let flow_err = |message: String| EngineError::Flow { flow: flow.name.clone(), message };
    let (Some(parent), Some(spec)) = (polled.parent.as_ref(), polled.spec()) else {
        return Err(flow_err("a fan-out trigger without its parent".into()));
    };
    let Some(read) = parent.op.parent_read() else {
        return Err(flow_err(format!("`{}` cannot be read as a fan-out parent", parent.op.key)));
    };
    let now = Utc::now();
    let mut ctx = rt.context(Value::Null, &svc.env, "", now);
    let parent_inputs = render_object(flow, &fan.with, &ctx, "trigger.for_each_record.with")?;
    let store = svc.store.clone();
    let trigger_id = rt.trigger_id.clone();
    let state = blocking(move || Ok(store.trigger_state(&trigger_id)?)).await?;
    let baseline = state.is_none();
    let get = |k: &str| state.as_ref().and_then(|s| s.get(k)).filter(|v| !v.is_null());
    let baseline_at = get("baseline_at").cloned().unwrap_or_else(|| json!(now));
    let baseline_ms = baseline_at
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now.timestamp_millis(), |t| t.timestamp_millis());
    let lookback = i64::try_from(flow.trigger.lookback.as_millis()).unwrap_or(i64::MAX);
    let max = fan.max_per_poll as usize;
    // Changed parents take at most half a poll, so the round goes on however busy the
    // location is.
    let changed_limit = catalog::FanOutCost { max_per_poll: fan.max_per_poll }.changed_limit() as usize;

    // 1. The parents changed since the last poll.
    let watermark = get(keys::WATERMARK).and_then(Value::as_i64).unwrap_or(baseline_ms);
    let changed_after = get(keys::CHANGED_AFTER).cloned();
    let changed_req = parent_request(
        &parent_inputs,
        &read,
        read.changed_field,
        changed_limit,
        changed_after.as_ref(),
        |f| {
            f.push(json!({"field": read.changed_field, "operator": "range", "value": {"gte": iso(watermark.saturating_sub(lookback))}}))
        },
    );
    let changed = read_parents(poller, rt, parent, changed_req).await?;
    let mut commit_keys: HashSet<String> = HashSet::new();
    let mut items: Vec<PollItem> = Vec::new();
    let mut newest = watermark;
    let mut changed_keys = Vec::new();
    let mut changed_ids = Vec::new();
    for p in &changed {
        let (Some(id), Some(updated)) = (parent_id(p), p.get(read.changed_field)) else { continue };
        newest = newest.max(time_ms(p, read.changed_field).unwrap_or(newest));
        changed_keys.push(changed_key(&id, updated));
        changed_ids.push(id);
    }
    let changed_unseen = unseen(poller, rt, changed_keys.clone()).await?;
    let mut visit: Vec<(String, Value)> = Vec::new();
    for (((key, id), p), new) in changed_keys.into_iter().zip(changed_ids).zip(&changed).zip(changed_unseen) {
        if new && commit_keys.insert(key.clone()) {
            items.push(PollItem { key, run: None });
            if !visit.iter().any(|(v, _)| *v == id) {
                visit.push((id, p.clone()));
            }
        }
    }
    let next_changed_after = if changed.len() >= changed_limit {
        changed.last().and_then(|p| p.get(read.cursor_field)).cloned()
    } else {
        None
    };

    // 2. The next parents of the round-robin, with the room left (its own request included).
    let room = max.saturating_sub(visit.len()).saturating_sub(1);
    let mut round_after = get(keys::ROUND_AFTER).cloned();
    let mut rounds = get(keys::ROUNDS).and_then(Value::as_u64).unwrap_or(0);
    let mut round_started_at = get(keys::ROUND_STARTED_AT).and_then(Value::as_i64).unwrap_or(now.timestamp_millis());
    let mut last_round_ms = get(keys::LAST_ROUND_MS).cloned();
    let mut room = room;
    while room > 0 {
        let req = parent_request(&parent_inputs, &read, read.sweep_field, room, round_after.as_ref(), |_| {});
        let next = read_parents(poller, rt, parent, req).await?;
        let resumed = round_after.is_some();
        round_after =
            if next.len() < room { None } else { next.last().and_then(|p| p.get(read.cursor_field)).cloned() };
        if round_after.is_none() {
            rounds += 1;
            last_round_ms = Some(json!(now.timestamp_millis().saturating_sub(round_started_at)));
            round_started_at = now.timestamp_millis();
        }
        // The last round ended on a full page, so this read found nothing past it: the
        // next round starts now, one parent fewer paying for the second read.
        room = if next.is_empty() && resumed { room - 1 } else { 0 };
        for p in next {
            let Some(id) = parent_id(&p) else { continue };
            if !visit.iter().any(|(v, _)| *v == id) {
                visit.push((id, p));
            }
        }
    }

    // 3. Each parent's children, one request each.
    // Boxed, so the poll's future stays `Send` for every lifetime the scheduler asks.
    let mut reads: Vec<BoxFuture<'_, ChildRead>> = Vec::with_capacity(visit.len());
    for (id, p) in &visit {
        let mut ctx = ctx.clone();
        ctx["parent"] = p.clone();
        reads.push(async move { read_children(poller, rt, polled, &ctx, id).await }.boxed());
    }
    let children = futures::stream::iter(reads)
        .buffered(CHILD_READS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    let first_visits = unseen(poller, rt, visit.iter().map(|(id, _)| visited_key(id)).collect()).await?;
    let mut report = PollReport { baseline, ..PollReport::default() };
    let mut keyed = Vec::new();
    for (((pid, p), (inputs, kids)), first) in visit.iter().zip(children).zip(&first_visits) {
        if *first {
            let key = visited_key(pid);
            if commit_keys.insert(key.clone()) {
                items.push(PollItem { key, run: None });
            }
        }
        report.items += kids.len();
        for kid in kids {
            let Some(k) = dedupe_key(spec, flow.trigger.dedupe, &kid, &inputs) else {
                tracing::debug!(flow = %flow.name, parent = %pid, "child without an id skipped");
                continue;
            };
            keyed.push((format!("{pid}/{k}"), kid, *first, p));
        }
    }
    let child_unseen = unseen(poller, rt, keyed.iter().map(|(k, ..)| k.clone()).collect()).await?;
    for ((key, kid, first, p), new) in keyed.into_iter().zip(child_unseen) {
        if !new || !commit_keys.insert(key.clone()) {
            continue;
        }
        report.new += 1;
        // A known parent's unseen key is a child added or changed since its last visit;
        // on a parent's first visit, only what was born after the start fires.
        let fire = !first
            || match flow.trigger.start {
                Start::All => true,
                Start::Now => born_since(spec, &read, &kid, p, baseline_ms),
                Start::Since(t) => born_since(spec, &read, &kid, p, t.timestamp_millis()),
            };
        let fire = fire && crate::poll::passes_filter(rt, &mut ctx, &kid, &mut report)?;
        let run = fire.then(|| {
            let touched = crate::touched::of_item(&polled.op, &kid);
            let mut run = NewRun::new(flow.name.clone(), kid);
            run.trigger = Some(rt.trigger_id.clone());
            run.touched = touched;
            run
        });
        items.push(PollItem { key, run });
    }
    let firing = items.iter().filter(|i| i.run.is_some()).count();
    let held = firing as u64 > flow.trigger.max_new;
    if held {
        for r in items.iter_mut().filter_map(|i| i.run.as_mut()) {
            r.held = true;
        }
        tracing::warn!(flow = %flow.name, new = firing, max_new = flow.trigger.max_new,
            "flood guard: runs held until `flowd release {}`", flow.name);
    }

    let polls = get("polls").and_then(Value::as_u64).unwrap_or(0);
    let mut next = Map::new();
    next.insert("baseline_at".into(), baseline_at);
    next.insert("last_poll_at".into(), json!(now));
    next.insert("polls".into(), json!(polls + 1));
    next.insert("read".into(), json!("fan_out"));
    next.insert(keys::WATERMARK.into(), json!(newest));
    next.insert(keys::CHANGED_AFTER.into(), next_changed_after.unwrap_or(Value::Null));
    next.insert(keys::ROUND_AFTER.into(), round_after.unwrap_or(Value::Null));
    next.insert(keys::ROUNDS.into(), json!(rounds));
    next.insert(keys::ROUND_STARTED_AT.into(), json!(round_started_at));
    next.insert(keys::LAST_ROUND_MS.into(), last_round_ms.unwrap_or(Value::Null));
    svc.metrics.record_watermark(&rt.name, now.timestamp_millis().saturating_sub(newest));
    tracing::debug!(flow = %flow.name, parents = visit.len(), children = report.items, rounds, "fan-out poll");

    let (created, seen_before) = poller.commit(rt, Some(Value::Object(next)), items).await?;
    report.new = report.new.saturating_sub(seen_before);
    hand_over(poller, created, held, &mut report, on_runs).await;
    Ok(report)
}

async fn hand_over(
    poller: &Poller<'_>,
    created: Vec<Created>,
    held: bool,
    report: &mut PollReport,
    on_runs: &mut OnRuns<'_>,
) {
    if held {
        report.held = created.len();
    } else {
        report.runs.extend(created.iter().map(|c| c.id));
        let room = poller.room_for(created.len()).await;
        on_runs(created, room);
    }
}

fn render_object(
    flow: &FlowRuntime,
    t: &flow::ValueTemplate,
    ctx: &Value,
    what: &str,
) -> Result<Map<String, Value>, EngineError> {
    match t.render(ctx) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(EngineError::Flow { flow: flow.name.clone(), message: format!("{what} rendered to {other}") }),
        Err(source) => {
            Err(EngineError::Render { flow: flow.name.clone(), what: what.into(), source: Box::new(source) })
        }
    }
}

/// One page of the parent's search: sorted ascending on `field`, at most `limit` records,
/// after `cursor`, with filters `filter` adds.
fn parent_request(
    inputs: &Map<String, Value>,
    read: &ParentRead<'_>,
    field: &str,
    limit: usize,
    cursor: Option<&Value>,
    filter: impl FnOnce(&mut Vec<Value>),
) -> Map<String, Value> {
    let mut m = inputs.clone();
    // The search takes a page number or a cursor, never both.
    m.remove("page");
    m.insert(read.sort_param.into(), json!([{"field": field, "direction": "asc"}]));
    m.insert(read.limit_param.into(), json!(limit));
    let mut filters = match m.remove(read.filters_param) {
        Some(Value::Array(f)) => f,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    };
    filter(&mut filters);
    if !filters.is_empty() {
        m.insert(read.filters_param.into(), Value::Array(filters));
    }
    match cursor {
        Some(c) => m.insert(read.cursor_param.into(), c.clone()),
        None => m.remove(read.cursor_param),
    };
    m
}

async fn read_parents(
    poller: &Poller<'_>,
    rt: &FlowRuntime,
    parent: &Parent,
    inputs: Map<String, Value>,
) -> Result<Vec<Value>, EngineError> {
    let req = request::build(&parent.op, &inputs)?.origin(ghl::Origin::new(rt.name.as_str(), ghl::Purpose::Poll));
    match poller.svc.client.send(&rt.account, &req).await {
        Ok(ghl::Body::Json(body)) => Ok(parent.items.take_all(body)),
        Ok(_) => Ok(Vec::new()),
        Err(source) => {
            Err(EngineError::Poll { flow: rt.name.clone(), op: parent.op.key.clone(), source: Box::new(source) })
        }
    }
}

type ChildRead = Result<(Map<String, Value>, Vec<Value>), EngineError>;

/// One parent's children, with the inputs they were read with. A parent deleted since it
/// was listed has none.
async fn read_children(poller: &Poller<'_>, rt: &FlowRuntime, polled: &Polled, ctx: &Value, parent: &str) -> ChildRead {
    let inputs = render_object(rt, &rt.trigger.with, ctx, "trigger.with")?;
    let req = request::build(&polled.op, &inputs)?.origin(ghl::Origin::new(rt.name.as_str(), ghl::Purpose::Poll));
    match poller.svc.client.send(&rt.account, &req).await {
        Ok(ghl::Body::Json(body)) => Ok((inputs, polled.items.take_all(body))),
        Ok(_) => Ok((inputs, Vec::new())),
        Err(ghl::Error::Api(e)) if e.status == 404 => {
            tracing::debug!(flow = %rt.name, parent, "parent gone: no children");
            Ok((inputs, Vec::new()))
        }
        Err(source) => {
            Err(EngineError::Poll { flow: rt.name.clone(), op: polled.op.key.clone(), source: Box::new(source) })
        }
    }
}

/// Which of `keys` were never recorded for the flow's trigger.
async fn unseen(poller: &Poller<'_>, rt: &FlowRuntime, keys: Vec<String>) -> Result<Vec<bool>, EngineError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let store = poller.svc.store.clone();
    let trigger_id = rt.trigger_id.clone();
    blocking(move || Ok(store.filter_unseen(&trigger_id, &keys)?)).await
}

fn parent_id(p: &Value) -> Option<String> {
    match p.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a child seen on its parent's first visit came into being at or after `since`
/// (epoch ms): by its own created-at (or updated-at), else by its parent's created-at.
/// Without either it is taken as older: it existed when the parent was first visited.
fn born_since(spec: &catalog::TriggerSpec, read: &ParentRead<'_>, kid: &Value, parent: &Value, since: i64) -> bool {
    let own = spec.created.as_deref().or(spec.updated.as_deref()).and_then(|f| time_ms(kid, f));
    own.or_else(|| time_ms(parent, read.sweep_field)).is_some_and(|t| t >= since)
}
