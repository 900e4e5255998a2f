//! What one poll asks the trigger's endpoint for, from the catalog's read strategy, the
//! flow's dedupe mode, lookback and sweep, and the trigger's stored state.
//!
//! An incremental poll asks only for records whose time field is at or after a cutoff:
//! the trigger's watermark (the newest time it has seen) minus the lookback. The overlap
//! is deduped by the seen keys. A poll that stops at `max_items` on an ascending read keeps
//! a resume point, and the next poll goes on from it, so no count of records is a ceiling.
//! Pure: no IO, so every case is tested as a table.

use catalog::{Operation, Pagination, ParamType, ReadSpec, TriggerSpec};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use flow::{CompiledTrigger, Start};
use serde_json::{json, Map, Value};

/// The trigger state's fields this module reads and writes (beside the poll's own).
pub(crate) mod state_keys {
    /// Newest time (epoch ms) of the strategy's field among the items seen.
    pub const WATERMARK: &str = "watermark";
    /// Where a capped ascending read goes on (a cursor value or epoch ms).
    pub const RESUME: &str = "resume";
    /// The strategy the state was written under; another one reads in full once.
    pub const READ: &str = "read";
    /// When the last full read (sweep) was.
    pub const SWEPT_AT: &str = "swept_at";
    /// A sweep stopped at `max_items` and goes on from `resume`.
    pub const SWEEPING: &str = "sweeping";
}

/// How a poll reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadPlan {
    /// The strategy's name, stored with the state.
    pub strategy: &'static str,
    /// Parameters set over the flow's `with` (sort order, cutoff, cursor).
    pub set: Vec<(String, Value)>,
    /// Parameters the plan removes from the flow's `with` (page numbers on a cursor read).
    pub unset: Vec<String>,
    /// A filter appended to the array parameter `.0` (the search's time range).
    pub filter: Option<(String, Value)>,
    /// The pagination to follow.
    pub pagination: Pagination,
    /// The item's time field the watermark follows, on an incremental read.
    pub field: Option<String>,
    /// Newest first: stop at the first item older than this (epoch ms).
    pub stop_before: Option<i64>,
    /// Whether records arrive oldest first, so a capped read can resume after the last.
    pub ascending: bool,
    /// This is a full read of an incremental trigger (sweep, first poll of a new strategy,
    /// or `start: all`); its time is recorded as `swept_at`.
    pub sweep: bool,
    /// What the read is, for logs: `incremental`, `resume`, `sweep`, `full`.
    pub kind: &'static str,
}

/// The plan for a poll. `state` is the trigger's stored state (`None` before the baseline).
pub(crate) fn plan(
    op: &Operation,
    spec: &TriggerSpec,
    trigger: &CompiledTrigger,
    state: Option<&Value>,
    now: DateTime<Utc>,
) -> ReadPlan {
    let read = spec.read_spec();
    let read = read.as_ref();
    let full = |pagination: Pagination| ReadPlan {
        strategy: read.strategy(),
        set: Vec::new(),
        unset: Vec::new(),
        filter: None,
        pagination,
        field: None,
        stop_before: None,
        ascending: false,
        sweep: false,
        kind: "full",
    };
    let Some(mode) = read.mode(trigger.dedupe) else {
        return match read {
            // Page numbers stop at 10,000 records: even a full read of the search goes by
            // its cursor, in the order of the first mode's field.
            ReadSpec::Search { sort_param, pagination, modes, .. } => {
                let mut p = full(pagination.clone());
                if let Some(m) = modes.values().next() {
                    p.set.push((sort_param.clone(), sort_asc(&m.field)));
                }
                p.unset = page_params(&spec.pagination);
                p
            }
            _ => full(spec.pagination.clone()),
        };
    };
    let get = |key: &str| state.and_then(|s| s.get(key));
    let watermark = get(state_keys::WATERMARK).and_then(Value::as_i64);
    let resume = get(state_keys::RESUME).filter(|v| !v.is_null()).cloned();
    let same_strategy = get(state_keys::READ).and_then(Value::as_str) == Some(read.strategy());
    let lookback = i64::try_from(trigger.lookback.as_millis()).unwrap_or(i64::MAX);
    let now_ms = now.timestamp_millis();
    let sweep_due = trigger.sweep.is_some_and(|every| {
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let last = get(state_keys::SWEPT_AT).and_then(Value::as_i64).unwrap_or(i64::MIN);
        now_ms.saturating_sub(last) >= every
    });

    // (cutoff, resume point, kind)
    let (cutoff, resume, kind) = match state {
        None => match trigger.start {
            Start::Now => (Some(now_ms.saturating_sub(lookback)), None, "incremental"),
            Start::Since(t) => (Some(t.timestamp_millis().saturating_sub(lookback)), None, "incremental"),
            Start::All => (None, None, "sweep"),
        },
        // A capped read goes on where it stopped, before anything else.
        Some(_) if same_strategy && resume.is_some() => (None, resume, "resume"),
        // State from before this strategy (or another one): its seen keys cover a full
        // read, not a window, so read everything once and start the watermark from it.
        Some(_) if !same_strategy || sweep_due => (None, None, "sweep"),
        Some(_) => match watermark {
            Some(w) => (Some(w.saturating_sub(lookback)), None, "incremental"),
            // Nothing seen yet under `start: all`: everything is still "since the start".
            None => (None, None, "incremental"),
        },
    };
    let mut p = ReadPlan {
        strategy: read.strategy(),
        set: Vec::new(),
        unset: Vec::new(),
        filter: None,
        pagination: spec.pagination.clone(),
        field: Some(mode.field.clone()),
        stop_before: None,
        ascending: false,
        sweep: kind == "sweep",
        kind,
    };
    p.set.extend(mode.set.iter().map(|(k, v)| (k.clone(), v.clone())));
    match read {
        ReadSpec::Search { filters_param, sort_param, pagination, .. } => {
            p.pagination = pagination.clone();
            p.unset = page_params(&spec.pagination);
            p.ascending = true;
            p.set.push((sort_param.clone(), sort_asc(&mode.field)));
            if let Some(c) = cutoff {
                p.filter = Some((
                    filters_param.clone(),
                    json!({"field": mode.field, "operator": "range", "value": {"gte": iso(c)}}),
                ));
            }
            if let (Some(r), Pagination::LastItem { param, .. }) = (resume, pagination) {
                p.set.push((param.clone(), r));
            }
        }
        ReadSpec::Since { .. } => {
            p.ascending = true;
            let start = resume.as_ref().and_then(Value::as_i64).or(cutoff);
            if let (Some(param), Some(ms)) = (mode.param.as_ref(), start) {
                p.set.push((param.clone(), since_value(op.param(param).map(|p| p.ty), ms)));
            }
        }
        ReadSpec::Sorted { .. } => p.stop_before = cutoff,
        _ => {}
    }
    p
}

/// Epoch ms as the parameter's type: text where the catalog declares a string.
fn since_value(ty: Option<ParamType>, ms: i64) -> Value {
    match ty {
        Some(ParamType::String) => Value::from(ms.to_string()),
        _ => Value::from(ms),
    }
}

fn sort_asc(field: &str) -> Value {
    json!([{"field": field, "direction": "asc"}])
}

/// The page-number parameter of a trigger's own pagination, which a cursor read must not send.
fn page_params(p: &Pagination) -> Vec<String> {
    match p {
        Pagination::Page { page_param, .. } => vec![page_param.clone()],
        Pagination::Offset { offset_param, .. } => vec![offset_param.clone()],
        _ => Vec::new(),
    }
}

/// Applies the plan's parameters to the flow's rendered `with`.
pub(crate) fn apply(plan: &ReadPlan, inputs: &mut Map<String, Value>) {
    for name in &plan.unset {
        inputs.remove(name);
    }
    for (k, v) in &plan.set {
        inputs.insert(k.clone(), v.clone());
    }
    if let Some((param, filter)) = &plan.filter {
        let mut filters = match inputs.remove(param) {
            Some(Value::Array(f)) => f,
            Some(Value::Null) | None => Vec::new(),
            // Not an array: GHL refuses it, and so does the request as the user wrote it.
            Some(other) => vec![other],
        };
        filters.push(filter.clone());
        inputs.insert(param.clone(), Value::Array(filters));
    }
}

/// An item's time on `field`, in epoch ms: RFC 3339 text, or epoch ms as number or text.
pub(crate) fn time_ms(item: &Value, field: &str) -> Option<i64> {
    match item.get(field)? {
        Value::String(s) => {
            DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()).or_else(|| s.parse().ok())
        }
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// `2024-01-02T03:04:05.678Z`, the form GHL's dates take.
pub(crate) fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What a finished read leaves in the trigger's state, beside the poll's own fields.
#[derive(Debug, Default)]
pub(crate) struct ReadProgress {
    /// Newest time seen on the plan's field in this read.
    pub newest: Option<i64>,
    /// The last item, for a resume point.
    pub last: Option<Value>,
    pub items: usize,
}

impl ReadProgress {
    pub fn see(&mut self, plan: &ReadPlan, item: &Value) {
        self.items += 1;
        if let Some(t) = plan.field.as_deref().and_then(|f| time_ms(item, f)) {
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
    }
}

/// Writes the watermark, resume point, strategy and sweep time into `state`.
/// `capped`: the read stopped at `max_items` with more to come. `baseline_ms`: the
/// baseline's time, the watermark of a trigger that has seen nothing yet.
pub(crate) fn record(
    plan: &ReadPlan,
    progress: &ReadProgress,
    capped: bool,
    previous: Option<&Value>,
    baseline_ms: Option<i64>,
    now: DateTime<Utc>,
    state: &mut Map<String, Value>,
) {
    let Some(field) = plan.field.as_deref() else { return };
    let old = previous.and_then(|s| s.get(state_keys::WATERMARK)).and_then(Value::as_i64);
    let resume = if capped && plan.ascending {
        progress.last.as_ref().and_then(|last| match &plan.pagination {
            Pagination::LastItem { field: cursor, .. } if plan.strategy == "search" => last.get(cursor).cloned(),
            _ => time_ms(last, field).map(Value::from),
        })
    } else {
        None
    };
    // Newest first and stopped before the cutoff: what lies between is not read yet, so
    // the watermark stays and the next poll reads the same span again (and warns).
    let advance = !capped || plan.ascending;
    let watermark = if advance {
        match (old, progress.newest) {
            (Some(o), Some(n)) => Some(o.max(n)),
            (o, n) => o.or(n).or(baseline_ms),
        }
    } else {
        old
    };
    state.insert(state_keys::READ.into(), Value::from(plan.strategy));
    state.insert(state_keys::WATERMARK.into(), watermark.map_or(Value::Null, Value::from));
    state.insert(state_keys::RESUME.into(), resume.unwrap_or(Value::Null));
    // A sweep ends with the read that reaches the end, which may be a later poll's resume.
    let sweeping = plan.sweep
        || (plan.kind == "resume" && previous.and_then(|s| s.get(state_keys::SWEEPING)) == Some(&Value::Bool(true)));
    let swept = if sweeping && !capped {
        Some(Value::from(now.timestamp_millis()))
    } else {
        previous.and_then(|s| s.get(state_keys::SWEPT_AT)).cloned()
    };
    if let Some(s) = swept {
        state.insert(state_keys::SWEPT_AT.into(), s);
    }
    if sweeping && capped {
        state.insert(state_keys::SWEEPING.into(), Value::Bool(true));
    }
}

/// Whether an item of an incremental read may fire under `start: now`: it must have been
/// written at or after the baseline (a record indexed late with an older time existed
/// before the baseline). Items without a time on the field may fire.
pub(crate) fn after_baseline(plan: &ReadPlan, item: &Value, baseline_ms: Option<i64>) -> bool {
    match (plan.field.as_deref(), baseline_ms) {
        (Some(field), Some(b)) => time_ms(item, field).is_none_or(|t| t >= b),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(key: &str) -> Operation {
        let cat = catalog::Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        cat.get(key).cloned().unwrap_or_else(|| panic!("{key}"))
    }

    fn trigger(dedupe: catalog::DedupeMode, start: Start, sweep: Option<Duration>) -> CompiledTrigger {
        let text = format!(
            "name: t\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: {{ locationId: x }}\n  dedupe: {}\nsteps:\n  - id: s\n    uses: http.request\n    with: {{ method: GET, url: \"http://127.0.0.1:1/\" }}\n",
            dedupe.as_str()
        );
        let cat = catalog::Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let env = flow::CompileEnv { env: Default::default(), accounts: vec!["main".into()] };
        let (f, diags) = flow::load("t.yaml", &text, &cat, &env);
        let mut t = f.unwrap_or_else(|| panic!("{}", flow::render_all(&diags))).trigger;
        t.start = start;
        t.sweep = sweep;
        t.lookback = Duration::from_secs(60);
        t
    }

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_search_asks_for_the_watermark_minus_the_lookback_by_cursor() {
        let op = op("contacts.search_contacts");
        let spec = op.trigger.as_ref().unwrap_or_else(|| panic!("trigger"));
        let t = trigger(catalog::DedupeMode::New, Start::Now, None);
        let state = json!({"read": "search", "watermark": NOW - 5_000});
        let p = plan(&op, spec, &t, Some(&state), at(NOW));
        assert_eq!(p.kind, "incremental");
        assert_eq!(p.field.as_deref(), Some("dateAdded"));
        let mut inputs = Map::new();
        inputs.insert("page".into(), json!(3));
        inputs.insert("filters".into(), json!([{"field": "tags", "operator": "eq", "value": "vip"}]));
        apply(&p, &mut inputs);
        assert_eq!(inputs.get("page"), None, "page numbers never go with a cursor");
        assert_eq!(inputs["sort"], json!([{"field": "dateAdded", "direction": "asc"}]));
        assert_eq!(
            inputs["filters"],
            json!([
                {"field": "tags", "operator": "eq", "value": "vip"},
                {"field": "dateAdded", "operator": "range", "value": {"gte": iso(NOW - 65_000)}}
            ])
        );
        assert!(matches!(p.pagination, Pagination::LastItem { .. }));
    }

    #[test]
    fn updated_reads_the_update_time_and_changed_reads_everything_by_cursor() {
        let op = op("contacts.search_contacts");
        let spec = op.trigger.as_ref().unwrap_or_else(|| panic!("trigger"));
        let state = json!({"read": "search", "watermark": NOW});
        let p = plan(&op, spec, &trigger(catalog::DedupeMode::Updated, Start::Now, None), Some(&state), at(NOW));
        assert_eq!(p.field.as_deref(), Some("dateUpdated"));
        let p = plan(&op, spec, &trigger(catalog::DedupeMode::Changed, Start::Now, None), Some(&state), at(NOW));
        assert_eq!((p.kind, p.field.as_deref(), p.filter.is_none()), ("full", None, true));
        assert!(matches!(p.pagination, Pagination::LastItem { .. }), "past 10,000 by cursor");
    }

    #[test]
    fn baselines_resumes_sweeps_and_old_state() {
        let op = op("contacts.search_contacts");
        let spec = op.trigger.as_ref().unwrap_or_else(|| panic!("trigger"));
        let new = catalog::DedupeMode::New;
        let now = at(NOW);
        let p = plan(&op, spec, &trigger(new, Start::Now, None), None, now);
        assert_eq!(p.kind, "incremental", "a `start: now` baseline reads the lookback window only");
        let p = plan(&op, spec, &trigger(new, Start::All, None), None, now);
        assert_eq!((p.kind, p.filter.is_none()), ("sweep", true), "`start: all` reads everything");
        // State written before read strategies existed: a full read once.
        let old = json!({"polls": 4, "baseline_at": "2026-01-01T00:00:00Z"});
        assert_eq!(plan(&op, spec, &trigger(new, Start::Now, None), Some(&old), now).kind, "sweep");
        // A capped read resumes from its cursor, whatever the watermark says.
        let capped = json!({"read": "search", "watermark": NOW, "resume": [NOW - 9, "abc"]});
        let p = plan(&op, spec, &trigger(new, Start::Now, None), Some(&capped), now);
        assert_eq!(p.kind, "resume");
        assert!(p.set.contains(&("searchAfter".to_string(), json!([NOW - 9, "abc"]))));
        assert!(p.filter.is_none());
        // A sweep is due once its interval has passed since the last one.
        let t = trigger(new, Start::Now, Some(Duration::from_secs(3600)));
        let fresh = json!({"read": "search", "watermark": NOW, "swept_at": NOW - 1_000});
        assert_eq!(plan(&op, spec, &t, Some(&fresh), now).kind, "incremental");
        let stale = json!({"read": "search", "watermark": NOW, "swept_at": NOW - 3_600_000});
        assert_eq!(plan(&op, spec, &t, Some(&stale), now).kind, "sweep");
    }

    #[test]
    fn the_watermark_moves_forward_and_a_capped_read_leaves_a_resume_point() {
        let op = op("contacts.search_contacts");
        let spec = op.trigger.as_ref().unwrap_or_else(|| panic!("trigger"));
        let t = trigger(catalog::DedupeMode::New, Start::All, None);
        let p = plan(&op, spec, &t, None, at(NOW));
        let mut progress = ReadProgress::default();
        for (ms, id) in [(NOW - 30, "a"), (NOW - 10, "b"), (NOW - 20, "c")] {
            let item = json!({"id": id, "dateAdded": iso(ms), "searchAfter": [ms, id]});
            progress.see(&p, &item);
            progress.last = Some(item);
        }
        let mut state = Map::new();
        record(&p, &progress, true, None, Some(NOW), at(NOW), &mut state);
        assert_eq!(state["watermark"], json!(NOW - 10));
        assert_eq!(state["resume"], json!([NOW - 20, "c"]));
        assert_eq!(state["sweeping"], json!(true));
        assert!(state.get("swept_at").is_none(), "a sweep ends when it reaches the end");

        // The resume reaches the end: the sweep is done, the watermark never goes back.
        let previous = Value::Object(state);
        let p = plan(&op, spec, &t, Some(&previous), at(NOW + 5));
        assert_eq!(p.kind, "resume");
        let mut progress = ReadProgress::default();
        progress.see(&p, &json!({"id": "d", "dateAdded": iso(NOW - 50)}));
        let mut state = Map::new();
        record(&p, &progress, false, Some(&previous), Some(NOW), at(NOW + 5), &mut state);
        assert_eq!(state["watermark"], json!(NOW - 10));
        assert_eq!(state["resume"], Value::Null);
        assert_eq!(state["swept_at"], json!(NOW + 5));
    }

    #[test]
    fn since_sends_the_cutoff_in_the_declared_type_and_sorted_stops_at_it() {
        let opp = op("opportunities.search_opportunities");
        let text = "name: t\naccount: main\ntrigger:\n  uses: opportunities.search_opportunities\n  with: { location_id: x }\n  dedupe: new\nsteps:\n  - id: s\n    uses: http.request\n    with: { method: GET, url: \"http://127.0.0.1:1/\" }\n";
        let cat = catalog::Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let env = flow::CompileEnv { env: Default::default(), accounts: vec!["main".into()] };
        let (f, diags) = flow::load("t.yaml", text, &cat, &env);
        let t = f.unwrap_or_else(|| panic!("{}", flow::render_all(&diags))).trigger;
        let state = json!({"read": "since", "watermark": NOW});
        let p = plan(&opp, opp.trigger.as_ref().unwrap_or_else(|| panic!("t")), &t, Some(&state), at(NOW));
        let lookback = i64::try_from(t.lookback.as_millis()).unwrap_or(0);
        // `startAfter` is a string in the spec: epoch ms as text.
        assert!(p.set.contains(&("startAfter".to_string(), json!((NOW - lookback).to_string()))), "{:?}", p.set);
        assert!(p.set.contains(&("order".to_string(), json!("added_asc"))));

        let msgs = op("conversations.get_messages");
        let text = "name: t\naccount: main\ntrigger:\n  uses: conversations.get_messages\n  with: { conversationId: x }\n  dedupe: new\nsteps:\n  - id: s\n    uses: http.request\n    with: { method: GET, url: \"http://127.0.0.1:1/\" }\n";
        let (f, diags) = flow::load("t.yaml", text, &cat, &env);
        let t = f.unwrap_or_else(|| panic!("{}", flow::render_all(&diags))).trigger;
        let state = json!({"read": "sorted", "watermark": NOW});
        let p = plan(&msgs, msgs.trigger.as_ref().unwrap_or_else(|| panic!("t")), &t, Some(&state), at(NOW));
        assert_eq!(p.stop_before, Some(NOW - lookback));
        assert!(!p.ascending);
    }
}
