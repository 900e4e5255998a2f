//! Load = parse + validate + compile: the engine only ever sees a [`CompiledFlow`].

use std::collections::BTreeMap;

use catalog::{Catalog, DedupeMode, Kind};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Pos, Sink};
use crate::helpers;
use crate::inbound::{self, HttpTrigger};
use crate::parse::{self, At, FlowDoc, StepDoc, TestDoc, TriggerDoc};
use crate::schedule::Schedule;
use crate::step_control::{self, Rehearsal, StepControl};
use crate::template::{Filter, RenderError, ValueTemplate};
use crate::validate::{self, Scope};
use crate::webhook_events::WEBHOOK_EVENTS;

/// The key of the built-in HTTP step.
pub const HTTP_STEP: &str = "http.request";
/// Held back when one poll finds more new items than this, unless the flow says otherwise.
pub const DEFAULT_MAX_NEW: u64 = 100;
/// How far behind its watermark an incremental poll re-reads by default: GHL's search
/// shows writes "a few seconds" late, and this leaves room for a slow index and clock skew.
pub const DEFAULT_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(120);
const MAX_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(86_400);
const MIN_SWEEP: std::time::Duration = std::time::Duration::from_secs(600);
/// Polling interval when a trigger gives neither `every` nor `cron`.
pub const DEFAULT_EVERY: &str = "5m";
/// Account used when a flow names none.
pub const DEFAULT_ACCOUNT: &str = "default";

/// What the service knows that a flow may refer to.
#[derive(Debug, Clone, Default)]
pub struct CompileEnv {
    /// Environment variables visible to templates as `env.NAME`.
    pub env: BTreeMap<String, String>,
    /// Configured account names; empty means "do not check".
    pub accounts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CompiledFlow {
    pub name: String,
    pub account: String,
    pub trigger: CompiledTrigger,
    pub filter: Option<Filter>,
    pub steps: Vec<CompiledStep>,
    pub tests: Vec<FlowTest>,
}

#[derive(Debug, Clone)]
pub struct CompiledTrigger {
    /// Catalog key of the trigger operation.
    pub op: String,
    /// Request parameters, as an object template (context: account, env, flow, run, now).
    pub with: ValueTemplate,
    pub schedule: Schedule,
    pub dedupe: DedupeMode,
    pub start: Start,
    /// Flood guard: more new items than this in one poll are held, not fired.
    pub max_new: u64,
    /// An incremental poll asks for records from the trigger's watermark minus this, and
    /// dedupes the overlap (search results lag behind writes).
    pub lookback: std::time::Duration,
    /// An incremental trigger re-reads everything this often, to catch what a watermark
    /// cannot (clock skew, indexing later than the lookback).
    pub sweep: Option<std::time::Duration>,
    /// Set for `webhook:` triggers. Without `reconcile`, `op` is empty and the flow is
    /// never polled; with it, the fields above describe the reconciling poll.
    pub webhook: Option<WebhookTrigger>,
    /// Set for `http:` triggers (the app calls flowd); `op` is then empty.
    pub http: Option<HttpTrigger>,
    /// Set for `for_each_record:`: `op` is polled once for each record of a parent trigger.
    pub fan_out: Option<crate::fanout::FanOut>,
}

/// A trigger fired by GHL webhook deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTrigger {
    /// The event `type`, e.g. `ContactCreate`.
    pub event: String,
    /// Paired with the polling trigger (`op`): both record the same dedupe key, so a
    /// change fires once whichever sees it first.
    pub reconcile: bool,
    /// Events for the same record closer together than this fire once, for the latest.
    pub coalesce: Option<std::time::Duration>,
}

impl CompiledTrigger {
    /// Whether the trigger has a catalog operation to poll.
    pub fn polls(&self) -> bool {
        !self.op.is_empty()
    }
}

/// What the first poll does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Record what exists as seen, fire nothing.
    Now,
    /// Fire for everything that exists (subject to `max_new`).
    All,
    /// Fire for items created or updated after this time; older ones are recorded as seen.
    Since(DateTime<Utc>),
}

#[derive(Debug, Clone)]
pub struct CompiledStep {
    pub id: String,
    pub uses: StepTarget,
    /// Parameters as an object template; for `Http`: method, url, headers, query, json, body.
    pub with: ValueTemplate,
    /// `if:`, `for_each:`, `on_error:`; the default for a step without them.
    pub control: StepControl,
    /// How long this GET step's result may be reused for the same rendered request.
    pub cache: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepTarget {
    /// A catalog action, by key.
    Ghl(String),
    /// The built-in `http.request`.
    Http,
}

/// An inline test: one trigger item in, the rendered step inputs out, no network.
#[derive(Debug, Clone)]
pub struct FlowTest {
    pub name: String,
    pub item: Value,
    /// Stand-in results of steps, visible to later steps as `steps.<id>`.
    pub results: Map<String, Value>,
    /// Step id -> subset the rendered `with` must contain.
    pub expect: Vec<(String, Value)>,
    /// Whether the `if:` filter is expected to drop the item.
    pub filtered: Option<bool>,
    /// Subset of the reply (`{status, body, headers}`) an `http` trigger's `respond` must render.
    pub respond: Option<Value>,
    /// Environment variables set for this test (over the process environment).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    pub failures: Vec<String>,
    /// Step id -> rendered `with`, for the steps that ran.
    pub rendered: Vec<(String, Value)>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Parses, validates and compiles one flow file. The flow is returned only when there
/// are no errors; warnings may come with it.
pub fn load(
    file_name: &str,
    text: &str,
    catalog: &Catalog,
    env: &CompileEnv,
) -> (Option<CompiledFlow>, Vec<Diagnostic>) {
    let mut sink = Sink::new(file_name);
    let Some(root) = parse::parse_yaml(text, &mut sink) else {
        return (None, sink.finish());
    };
    if matches!(root.value, parse::Node::Null) {
        sink.error(Pos::of(&root.referenced), "the flow file is empty");
        return (None, sink.finish());
    }
    let doc = parse::read_doc(&root, &mut sink);
    let flow = compile_doc(doc, Pos::of(&root.referenced), catalog, env, &mut sink);
    let flow = if sink.has_errors() { None } else { flow };
    (flow, sink.finish())
}

fn compile_doc(doc: FlowDoc, top: Pos, cat: &Catalog, env: &CompileEnv, sink: &mut Sink) -> Option<CompiledFlow> {
    let name = match &doc.name {
        Some(n) if !n.value.trim().is_empty() => Some(n.value.clone()),
        Some(n) => {
            sink.error(n.pos, "`name` must not be empty");
            None
        }
        None => {
            sink.error(top, "the flow needs a `name`");
            None
        }
    };
    let account = match &doc.account {
        Some(a) if !env.accounts.is_empty() && !env.accounts.contains(&a.value) => {
            let d = sink.error(a.pos, format!("unknown account `{}`", a.value));
            d.suggest(&catalog::nearest(&a.value, env.accounts.iter().map(String::as_str), 2));
            None
        }
        Some(a) => Some(a.value.clone()),
        None => Some(DEFAULT_ACCOUNT.to_string()),
    };
    let step_ids: Vec<String> = doc.steps.iter().filter_map(|s| s.id.as_ref().map(|i| i.value.clone())).collect();

    let (trigger, fields) = match &doc.trigger {
        Some(t) => compile_trigger(t, cat, env, &step_ids, sink),
        None => {
            sink.error(top, "the flow needs a `trigger`");
            (None, Vec::new())
        }
    };
    let filter = doc.filter.as_ref().and_then(|f| {
        let scope = Scope {
            trigger_fields: Some(&fields),
            parent_fields: None,
            earlier_steps: &[],
            all_steps: &step_ids,
            env,
            item: false,
        };
        match Filter::compile(&f.value) {
            Ok(filter) => {
                validate::check_paths(filter.template(), f.pos, &scope, sink);
                Some(filter)
            }
            Err(e) => {
                sink.error(f.pos, e.to_string());
                None
            }
        }
    });
    let filter_ok = doc.filter.is_none() || filter.is_some();

    if doc.steps.is_empty() {
        sink.error(top, "the flow needs at least one step in `steps`");
    }
    let mut steps = Vec::with_capacity(doc.steps.len());
    let mut earlier: Vec<String> = Vec::new();
    let mut steps_ok = true;
    for s in &doc.steps {
        match compile_step(s, cat, env, &fields, &earlier, &step_ids, sink) {
            Some(step) => steps.push(step),
            None => steps_ok = false,
        }
        if let Some(id) = &s.id {
            if earlier.contains(&id.value) {
                sink.error(id.pos, format!("duplicate step id `{}`", id.value))
                    .help("step ids must be unique within a flow");
                steps_ok = false;
            }
            earlier.push(id.value.clone());
        }
    }
    let tests: Vec<FlowTest> = doc.tests.iter().filter_map(|t| compile_test(t, &step_ids, sink)).collect();
    let tests_ok = tests.len() == doc.tests.len();

    match (name, account, trigger) {
        (Some(name), Some(account), Some(trigger)) if filter_ok && steps_ok && tests_ok => {
            Some(CompiledFlow { name, account, trigger, filter, steps, tests })
        }
        _ => None,
    }
}

fn compile_trigger(
    t: &TriggerDoc,
    cat: &Catalog,
    env: &CompileEnv,
    step_ids: &[String],
    sink: &mut Sink,
) -> (Option<CompiledTrigger>, Vec<String>) {
    if let Some(http) = &t.http {
        return inbound::compile_http_trigger(t, http, env, step_ids, sink);
    }
    let Some(event) = &t.webhook else {
        if let Some(r) = &t.reconcile {
            sink.error(r.pos, "`reconcile` pairs a polling trigger with a webhook one")
                .help("add `webhook: <EventType>`, or move the polling keys up into `trigger`");
        }
        if let Some(c) = &t.coalesce {
            sink.error(c.pos, "`coalesce` applies to `webhook` triggers only");
        }
        return compile_poll_trigger(t, cat, env, step_ids, sink);
    };
    let mut ok = true;
    if !WEBHOOK_EVENTS.contains(&event.value.as_str()) {
        sink.error(event.pos, format!("unknown webhook event `{}`", event.value)).suggest(&catalog::nearest(
            &event.value,
            WEBHOOK_EVENTS.iter().copied(),
            3,
        ));
        ok = false;
    }
    let polling_keys = [
        ("uses", t.uses.as_ref().map(|a| a.pos)),
        ("with", t.with.as_ref().map(|a| a.pos)),
        ("every", t.every.as_ref().map(|a| a.pos)),
        ("cron", t.cron.as_ref().map(|a| a.pos)),
        ("dedupe", t.dedupe.as_ref().map(|a| a.pos)),
        ("start", t.start.as_ref().map(|a| a.pos)),
        ("max_new", t.max_new.as_ref().map(|a| a.pos)),
        ("lookback", t.lookback.as_ref().map(|a| a.pos)),
        ("sweep", t.sweep.as_ref().map(|a| a.pos)),
    ];
    if let Some(f) = &t.for_each_record {
        sink.error(f.pos, "`for_each_record` is a polling trigger and cannot be paired with `webhook`")
            .help("use a separate flow for the webhook, or poll with `for_each_record` alone");
        ok = false;
    }
    for (key, at) in polling_keys {
        if let Some(at) = at {
            sink.error(at, format!("`{key}` belongs to polling; a `webhook` trigger takes it under `reconcile`"))
                .help("`reconcile: { uses: <catalog trigger>, every: 10m }` adds a poll that catches lost webhooks");
            ok = false;
        }
    }
    let coalesce = match &t.coalesce {
        None => None,
        Some(c) => match humantime::parse_duration(c.value.trim()) {
            Ok(d) if d <= std::time::Duration::from_secs(3600) => Some(d),
            Ok(_) => {
                sink.error(c.pos, format!("`coalesce: {}` is longer than an hour", c.value))
                    .help("coalescing waits this long before firing; keep it to seconds");
                ok = false;
                None
            }
            Err(e) => {
                sink.error(c.pos, format!("invalid duration `{}`: {e}", c.value))
                    .help("write a duration such as `2s` or `500ms`");
                ok = false;
                None
            }
        },
    };
    let webhook = WebhookTrigger { event: event.value.clone(), reconcile: t.reconcile.is_some(), coalesce };
    // Webhook payloads are not the poll's items: their fields are not checked.
    let compiled = match &t.reconcile {
        Some(r) => compile_poll_trigger(r, cat, env, step_ids, sink).0.map(|mut c| {
            c.webhook = Some(webhook);
            c
        }),
        None => Schedule::every(DEFAULT_EVERY).ok().map(|schedule| CompiledTrigger {
            op: String::new(),
            with: ValueTemplate::object(Vec::new()),
            schedule,
            dedupe: DedupeMode::New,
            start: Start::Now,
            max_new: DEFAULT_MAX_NEW,
            lookback: DEFAULT_LOOKBACK,
            sweep: None,
            webhook: Some(webhook),
            http: None,
            fan_out: None,
        }),
    };
    (compiled.filter(|_| ok), Vec::new())
}

fn compile_poll_trigger(
    t: &TriggerDoc,
    cat: &Catalog,
    env: &CompileEnv,
    step_ids: &[String],
    sink: &mut Sink,
) -> (Option<CompiledTrigger>, Vec<String>) {
    // Checked first, so they are reported even when `uses` is wrong.
    let schedule = match (&t.every, &t.cron) {
        (Some(_), Some(c)) => {
            sink.error(c.pos, "give `every` or `cron`, not both");
            None
        }
        (Some(e), None) => Schedule::every(&e.value)
            .map_err(|err| sink.error(e.pos, err.to_string()).help("write a duration such as `30s`, `5m` or `1h`"))
            .ok(),
        (None, Some(c)) => Schedule::cron(&c.value)
            .map_err(|err| {
                sink.error(c.pos, err.to_string())
                    .help("5 fields: minute hour day-of-month month day-of-week, e.g. `*/15 * * * *`")
            })
            .ok(),
        (None, None) => Schedule::every(DEFAULT_EVERY).ok(),
    };
    let start = match &t.start {
        None => Some(Start::Now),
        Some(s) => parse_start(&s.value).or_else(|| {
            sink.error(s.pos, format!("invalid start `{}`", s.value))
                .help("use `now`, `all` or an RFC 3339 time such as `2024-05-01T00:00:00Z`");
            None
        }),
    };
    let Some(uses) = &t.uses else {
        sink.error(t.pos, "the trigger needs `uses`: the catalog key of a trigger");
        return (None, Vec::new());
    };
    let op = match cat.get(&uses.value) {
        Some(op) if op.kind == Kind::Trigger => op,
        Some(op) => {
            sink.error(uses.pos, format!("`{}` is an action, not a trigger", op.key))
                .suggest(&cat.suggest_kind(&uses.value, Kind::Trigger));
            return (None, Vec::new());
        }
        None => {
            let mut d_sugg = cat.suggest_kind(&uses.value, Kind::Trigger);
            if d_sugg.is_empty() {
                d_sugg = cat.suggest(&uses.value);
            }
            sink.error(uses.pos, format!("unknown trigger `{}`", uses.value)).suggest(&d_sugg);
            return (None, Vec::new());
        }
    };
    let Some(spec) = op.trigger.as_ref() else {
        sink.error(uses.pos, format!("`{}` has no polling description in the catalog", op.key));
        return (None, Vec::new());
    };
    let fields = spec.fields.clone();
    let scope =
        Scope { trigger_fields: None, parent_fields: None, earlier_steps: &[], all_steps: step_ids, env, item: false };
    let (fan_out, parent_fields) = match &t.for_each_record {
        Some(f) => {
            let (c, fields) = crate::fanout::compile(f, op, uses.pos, cat, &scope, sink);
            (c.map(Some), fields)
        }
        None => (Some(None), Vec::new()),
    };
    if let (Some(w), true) = (&t.sweep, t.for_each_record.is_some()) {
        sink.error(
            w.pos,
            "`sweep` does not apply to `for_each_record`: its parents are read round-robin on every poll",
        )
        .help("`max_per_poll` sets how many parents a poll reads, and so how long a round takes");
    }
    let scope = Scope { parent_fields: t.for_each_record.as_ref().map(|_| parent_fields.as_slice()), ..scope };
    let with = validate::check_ghl_with(op, t.with.as_ref(), uses.pos, &scope, sink);

    let dedupe = match &t.dedupe {
        None => Some(spec.dedupe),
        Some(d) => match d.value.as_str() {
            "new" => Some(DedupeMode::New),
            "changed" => Some(DedupeMode::Changed),
            "updated" if spec.updated.is_some() => Some(DedupeMode::Updated),
            "updated" => {
                sink.error(
                    d.pos,
                    format!("`{}` items have no updated-at field, so `dedupe: updated` cannot work", op.key),
                )
                .help("use `changed` to fire whenever an item's content changes");
                None
            }
            other => {
                sink.error(d.pos, format!("unknown dedupe mode `{other}`")).help("use `new`, `updated` or `changed`");
                None
            }
        },
    };
    let max_new = t.max_new.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MAX_NEW);
    let lookback = match &t.lookback {
        None => Some(DEFAULT_LOOKBACK),
        Some(l) => {
            duration_within(l, MAX_LOOKBACK, "`lookback` re-reads this much on every poll; keep it to minutes", sink)
        }
    };
    let sweep = match &t.sweep {
        None => Some(None),
        Some(w) => match humantime::parse_duration(w.value.trim()) {
            Ok(d) if d >= MIN_SWEEP => Some(Some(d)),
            Ok(_) => {
                sink.error(
                    w.pos,
                    format!("`sweep: {}` is shorter than {}", w.value, humantime::format_duration(MIN_SWEEP)),
                )
                .help("a sweep re-reads the whole collection; once every few hours is typical (`sweep: 6h`)");
                None
            }
            Err(e) => {
                sink.error(w.pos, format!("invalid duration `{}`: {e}", w.value)).help("write a duration such as `6h`");
                None
            }
        },
    };
    if let (Some(d), Some(mode)) = (t.lookback.as_ref().or(t.sweep.as_ref()), dedupe) {
        if spec.read_spec().mode(mode).is_none() {
            let key = if t.lookback.is_some() { "lookback" } else { "sweep" };
            sink.warning(
                d.pos,
                format!(
                    "`{key}` has no effect: `{}` reads in full with `dedupe: {}` (strategy `{}`)",
                    op.key,
                    mode.as_str(),
                    spec.read_spec().strategy()
                ),
            );
        }
    }
    let compiled = match (with, schedule, dedupe, start, lookback, sweep, fan_out) {
        (Some(with), Some(schedule), Some(dedupe), Some(start), Some(lookback), Some(sweep), Some(fan_out)) => {
            Some(CompiledTrigger {
                op: op.key.clone(),
                with,
                schedule,
                dedupe,
                start,
                max_new,
                lookback,
                sweep,
                webhook: None,
                http: None,
                fan_out,
            })
        }
        _ => None,
    };
    (compiled, fields)
}

/// A duration no longer than `max`, else an error at its position.
fn duration_within(
    d: &At<String>,
    max: std::time::Duration,
    help: &str,
    sink: &mut Sink,
) -> Option<std::time::Duration> {
    match humantime::parse_duration(d.value.trim()) {
        Ok(v) if v <= max => Some(v),
        Ok(_) => {
            sink.error(d.pos, format!("`{}` is longer than {}", d.value, humantime::format_duration(max))).help(help);
            None
        }
        Err(e) => {
            sink.error(d.pos, format!("invalid duration `{}`: {e}", d.value)).help("write a duration such as `2m`");
            None
        }
    }
}

fn parse_start(s: &str) -> Option<Start> {
    match s.trim() {
        "now" => Some(Start::Now),
        "all" => Some(Start::All),
        t => DateTime::parse_from_rfc3339(t).ok().map(|t| Start::Since(t.with_timezone(&Utc))),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn compile_step(
    s: &StepDoc,
    cat: &Catalog,
    env: &CompileEnv,
    fields: &[String],
    earlier: &[String],
    all: &[String],
    sink: &mut Sink,
) -> Option<CompiledStep> {
    let id = match &s.id {
        Some(id) if is_identifier(&id.value) => Some(id.value.clone()),
        Some(id) => {
            sink.error(id.pos, format!("step id `{}` must be a name of letters, digits and `_`", id.value))
                .help("templates refer to it as `steps.<id>`");
            None
        }
        None => {
            sink.error(s.pos, "every step needs an `id`");
            None
        }
    };
    let Some(uses) = &s.uses else {
        sink.error(s.pos, "every step needs `uses`: a catalog action key or `http.request`");
        return None;
    };
    let mut scope = Scope {
        trigger_fields: Some(fields),
        parent_fields: None,
        earlier_steps: earlier,
        all_steps: all,
        env,
        item: false,
    };
    let control = crate::step_control::compile(&s.control, &scope, sink);
    scope.item = s.control.for_each.is_some();
    let (target, with) = if uses.value == HTTP_STEP {
        (StepTarget::Http, validate::check_http_with(s.with.as_ref(), uses.pos, &scope, sink))
    } else {
        match cat.get(&uses.value) {
            Some(op) if op.kind == Kind::Action || inbound::reads_one_record(op) => {
                (StepTarget::Ghl(op.key.clone()), validate::check_ghl_with(op, s.with.as_ref(), uses.pos, &scope, sink))
            }
            Some(op) => {
                sink.error(uses.pos, format!("`{}` is a trigger; steps call actions", op.key))
                    .suggest(&cat.suggest_kind(&uses.value, Kind::Action));
                return None;
            }
            None => {
                let mut keys: Vec<&str> =
                    cat.operations().iter().filter(|o| o.kind == Kind::Action).map(|o| o.key.as_str()).collect();
                keys.push(HTTP_STEP);
                sink.error(uses.pos, format!("unknown action `{}`", uses.value)).suggest(&catalog::nearest(
                    &uses.value,
                    keys,
                    3,
                ));
                return None;
            }
        }
    };
    let cache = match &s.cache {
        None => Some(None),
        Some(c) => {
            let get_step = match &target {
                StepTarget::Http => Err("`http.request` is not a GHL operation".to_string()),
                StepTarget::Ghl(key) => match cat.get(key) {
                    Some(op) if op.method == catalog::Method::Get => Ok(()),
                    Some(op) => Err(format!("`{key}` is a {} (it writes)", op.method.as_str())),
                    None => Err(format!("unknown action `{key}`")),
                },
            };
            inbound::compile_cache(c, get_step, sink).map(Some)
        }
    };
    Some(CompiledStep { id: id?, uses: target, with: with?, control: control?, cache: cache? })
}

fn compile_test(t: &TestDoc, step_ids: &[String], sink: &mut Sink) -> Option<FlowTest> {
    let mut ok = true;
    let Some(item) = &t.item else {
        sink.error(t.pos, "a test needs an `item`: the trigger item to run the flow with");
        return None;
    };
    let mut check_step = |k: &At<String>, what: &str, sink: &mut Sink| {
        if !step_ids.contains(&k.value) {
            sink.error(k.pos, format!("`{what}` names unknown step `{}`", k.value)).suggest(&catalog::nearest(
                &k.value,
                step_ids.iter().map(String::as_str),
                2,
            ));
            ok = false;
        }
    };
    for (k, _) in &t.results {
        check_step(k, "results", sink);
    }
    for (k, _) in &t.expect {
        if k.value == "respond" && !step_ids.contains(&k.value) {
            continue;
        }
        check_step(k, "expect", sink);
    }
    if !ok {
        return None;
    }
    Some(FlowTest {
        name: t.name.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| format!("test at line {}", t.pos.line)),
        item: item.value.clone(),
        results: t.results.iter().map(|(k, v)| (k.value.clone(), v.clone())).collect(),
        expect: t
            .expect
            .iter()
            .filter(|(k, _)| k.value != "respond" || step_ids.contains(&k.value))
            .map(|(k, v)| (k.value.clone(), v.value.clone()))
            .collect(),
        respond: t
            .expect
            .iter()
            .find(|(k, _)| k.value == "respond" && !step_ids.contains(&k.value))
            .map(|(_, v)| v.value.clone()),
        filtered: t.filtered.as_ref().map(|f| f.value),
        env: t
            .env
            .iter()
            .map(|(k, v)| (k.value.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect(),
    })
}

/// The context templates render against. `steps` starts empty; the engine adds each
/// step's result under its id as the run goes.
pub fn context(
    flow: &str,
    trigger: Value,
    account: Value,
    env: &BTreeMap<String, String>,
    run_id: &str,
    now: DateTime<Utc>,
) -> Value {
    let env: Map<String, Value> = env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    // Built by hand: `json!` would serialize `trigger` (the whole item) into a copy of
    // itself instead of moving it, once per run.
    let mut ctx = Map::with_capacity(7);
    ctx.insert("trigger".into(), trigger);
    ctx.insert("steps".into(), Value::Object(Map::new()));
    ctx.insert("account".into(), account);
    ctx.insert("env".into(), Value::Object(env));
    ctx.insert("flow".into(), serde_json::json!({ "name": flow }));
    ctx.insert("run".into(), serde_json::json!({ "id": run_id }));
    ctx.insert("now".into(), Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    Value::Object(ctx)
}

impl CompiledStep {
    /// The step's inputs for `ctx`: its `with` rendered, which must be a map (or nothing).
    /// Real runs, dry runs and inline tests all render a step through this.
    pub fn render_inputs(&self, ctx: &Value) -> Result<Map<String, Value>, String> {
        match self.with.render(ctx) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(Value::Null) => Ok(Map::new()),
            Ok(other) => Err(format!("`with` rendered to {other}, not a map")),
            Err(e) => Err(format!("cannot render `with`: {e}")),
        }
    }
}

/// Walks a flow's steps without running them, the way a run would: each step's inputs
/// rendered in order, and what `each` returns for a step (a stand-in for its result)
/// visible to later steps as `steps.<id>`; a step its `if:` skips is not passed to `each`,
/// a `for_each` step is passed once per element (see [`step_control::rehearse_controlled`],
/// the walk behind inline tests and the engine's dry run). A failure names its step.
pub fn rehearse<S: AsRef<CompiledStep>>(
    steps: &[S],
    ctx: &mut Value,
    mut each: impl FnMut(&S, Map<String, Value>) -> Result<Value, String>,
) -> Result<(), String> {
    step_control::rehearse_controlled(steps, ctx, |s, r| match r {
        Rehearsal::Skipped | Rehearsal::Elements { .. } => Ok(Value::Null),
        Rehearsal::Inputs { inputs, .. } => each(s, inputs),
    })
}

impl AsRef<CompiledStep> for CompiledStep {
    fn as_ref(&self) -> &CompiledStep {
        self
    }
}

impl CompiledFlow {
    /// Whether the `if:` filter keeps the item in `ctx` (no filter keeps everything).
    pub fn passes_filter(&self, ctx: &Value) -> Result<bool, RenderError> {
        match &self.filter {
            Some(f) => f.matches(ctx),
            None => Ok(true),
        }
    }

    /// Runs one inline test: filter, then each step's inputs rendered in order, with
    /// `results` standing in for what the steps would have returned.
    pub fn run_test(
        &self,
        test: &FlowTest,
        account: Value,
        env: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> TestOutcome {
        let mut out = TestOutcome { name: test.name.clone(), failures: Vec::new(), rendered: Vec::new() };
        let env: std::borrow::Cow<'_, BTreeMap<String, String>> = if test.env.is_empty() {
            std::borrow::Cow::Borrowed(env)
        } else {
            let mut merged = env.clone();
            merged.extend(test.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            std::borrow::Cow::Owned(merged)
        };
        let mut ctx = context(&self.name, test.item.clone(), account, &env, "test", now);
        let passes = match self.passes_filter(&ctx) {
            Ok(p) => p,
            Err(e) => {
                out.failures.push(format!("if: {e}"));
                return out;
            }
        };
        if let Some(expected) = test.filtered {
            if expected == passes {
                out.failures.push(if expected {
                    "expected the item to be filtered out, but it passed `if`".into()
                } else {
                    "expected the item to pass `if`, but it was filtered out".into()
                });
            }
        }
        if !passes {
            return out;
        }
        let rendered = &mut out.rendered;
        let walked = step_control::rehearse_controlled(&self.steps, &mut ctx, |step, r| {
            let stand_in = test.results.get(&step.id);
            match r {
                Rehearsal::Skipped => rendered.push((step.id.clone(), step_control::skipped_result())),
                Rehearsal::Elements { .. } => rendered.push((step.id.clone(), Value::Array(Vec::new()))),
                Rehearsal::Inputs { index: None, inputs } => rendered.push((step.id.clone(), Value::Object(inputs))),
                Rehearsal::Inputs { index: Some(i), inputs } => {
                    if let Some((_, Value::Array(list))) = rendered.last_mut() {
                        list.push(Value::Object(inputs));
                    }
                    // A list stands in for the elements' results one by one.
                    let element = match stand_in {
                        Some(Value::Array(list)) => list.get(i),
                        other => other,
                    };
                    return Ok(element.cloned().unwrap_or(Value::Object(Map::new())));
                }
            }
            Ok(stand_in.cloned().unwrap_or(Value::Object(Map::new())))
        });
        if let Err(e) = walked {
            out.failures.push(e);
            return out;
        }
        for (id, want) in &test.expect {
            match out.rendered.iter().find(|(s, _)| s == id) {
                Some((_, got)) if *got == step_control::skipped_result() && *want != *got => {
                    out.failures.push(format!("step `{id}` was skipped by its `if:`"))
                }
                Some((_, got)) => {
                    if let Some(diff) = subset_mismatch(want, got, id) {
                        out.failures.push(diff);
                    }
                }
                None => out.failures.push(format!("step `{id}` did not run")),
            }
        }
        if let Some(want) = &test.respond {
            let respond = self.trigger.http.as_ref().and_then(|h| h.respond.as_ref());
            if let Some(diff) = inbound::check_respond(respond, want, &ctx) {
                out.failures.push(diff);
            }
        }
        out
    }

    /// Renders the trigger's request parameters.
    pub fn render_trigger_with(&self, ctx: &Value) -> Result<Value, RenderError> {
        self.trigger.with.render(ctx)
    }
}

/// Whether `want` is contained in `got` (objects by subset, everything else equal);
/// the first difference, described, when it is not.
pub fn subset_mismatch(want: &Value, got: &Value, path: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().find_map(|(k, wv)| match g.get(k) {
            Some(gv) => subset_mismatch(wv, gv, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k}: expected {wv}, but it is not rendered")),
        }),
        (w, g) if w == g => None,
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            w.iter().zip(g).enumerate().find_map(|(i, (wv, gv))| subset_mismatch(wv, gv, &format!("{path}[{i}]")))
        }
        (Value::Array(w), Value::Array(g)) => Some(format!("{path}: expected {} element(s), got {}", w.len(), g.len())),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (w, g) => Some(format!("{path}: expected {w}, got {g} ({})", helpers::text(g))),
    }
}
