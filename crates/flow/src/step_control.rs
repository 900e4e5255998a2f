//! Step control: `if:` (skip a step), `for_each:` (run it once per element of a list) and
//! `on_error:` (let the run go on past a failed step), read, validated and compiled here so
//! the step's own parsing and compiling stay as they are.
//!
//! What later steps see as `steps.<id>`:
//! - a step skipped by its `if:`: `{"skipped": true}` ([`skipped_result`]);
//! - a `for_each` step: the list of its elements' results, in order (an element that failed
//!   with `on_error: continue` is its `{"error": ...}` object);
//! - a step that failed with `on_error: continue`: `{"error": "<message>"}`.

use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::compile::CompiledStep;
use crate::diagnostic::Sink;
use crate::parse::{self, pos, At, Node};
use crate::template::{Filter, RenderError, ValueTemplate};
use crate::validate::{self, Scope};

/// Elements a `for_each` step runs at most, unless it sets `max_items`.
pub const DEFAULT_MAX_ITEMS: u64 = 100;
/// The largest `max_items` a flow may set: each element is a request and a record in
/// the run, and a run's record is read and written whole.
pub const MAX_ITEMS_LIMIT: u64 = 1000;

/// The step keys this module reads.
pub(crate) const KEYS: &[&str] = &["if", "for_each", "max_items", "on_error"];

/// The step-control keys of one step, as written.
#[derive(Debug, Default)]
pub(crate) struct ControlDoc {
    pub when: Option<At<String>>,
    pub for_each: Option<At<String>>,
    pub max_items: Option<At<u64>>,
    pub on_error: Option<At<String>>,
}

/// Reads one of [`KEYS`] into `doc`.
pub(crate) fn read_key(doc: &mut ControlDoc, key: &str, value: &Spanned<Node>, sink: &mut Sink) {
    match key {
        "if" => doc.when = parse::string(value, "step if", sink),
        "on_error" => doc.on_error = parse::string(value, "step on_error", sink),
        "for_each" => match &value.value {
            Node::Str(s) => doc.for_each = Some(At { value: s.clone(), pos: pos(value) }),
            other => {
                sink.error(
                    pos(value),
                    format!("`for_each` must be a template that yields a list, found {}", other.kind()),
                )
                .help("write e.g. `for_each: \"{{ trigger.tags }}\"`");
            }
        },
        "max_items" => match &value.value {
            Node::UInt(n) if (1..=MAX_ITEMS_LIMIT).contains(n) => {
                doc.max_items = Some(At { value: *n, pos: pos(value) })
            }
            Node::Int(n) if (1..=MAX_ITEMS_LIMIT as i64).contains(n) => {
                doc.max_items = Some(At { value: n.unsigned_abs(), pos: pos(value) })
            }
            other => {
                sink.error(
                    pos(value),
                    format!(
                        "`max_items` must be an integer from 1 to {MAX_ITEMS_LIMIT}, found {}",
                        parse::describe(other)
                    ),
                )
                .help("a run that needs more elements should be split, e.g. by a paginated trigger");
            }
        },
        _ => {}
    }
}

/// What a step's failure does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The run stops (and is retried, dead-lettered or in doubt as the failure says).
    #[default]
    Fail,
    /// The failure is recorded and the run goes on; later steps see `steps.<id>.error`.
    /// A failure that will be retried is retried first: only the run's last attempt, or a
    /// failure that no retry can fix, continues. An in-doubt request never continues.
    Continue,
}

/// A `for_each:` list and its bound.
#[derive(Debug, Clone)]
pub struct ForEach {
    /// Renders to the list (context: trigger, steps, env, ...; no `item`).
    pub items: ValueTemplate,
    /// More elements than this fail the run; nothing is cut off silently.
    pub max_items: usize,
}

/// The control keys of a compiled step; the default is a plain step.
#[derive(Debug, Clone, Default)]
pub struct StepControl {
    /// `if:`: the step runs only when this renders truthy (evaluated once, before
    /// `for_each`, without `item`).
    pub when: Option<Filter>,
    pub for_each: Option<ForEach>,
    pub on_error: OnError,
}

impl StepControl {
    /// Whether the step is a plain one: no `if:`, no `for_each:`, `on_error: fail`.
    pub fn is_plain(&self) -> bool {
        self.when.is_none() && self.for_each.is_none() && self.on_error == OnError::Fail
    }
}

/// Compiles the control keys of a step. `scope` is what the step's `if:` and `for_each:`
/// see: the steps before it, no `item`.
pub(crate) fn compile(doc: &ControlDoc, scope: &Scope<'_>, sink: &mut Sink) -> Option<StepControl> {
    let mut ok = true;
    let when = match &doc.when {
        None => None,
        Some(w) => match Filter::compile(&w.value) {
            Ok(f) => {
                validate::check_paths(f.template(), w.pos, scope, sink);
                Some(f)
            }
            Err(e) => {
                sink.error(w.pos, e.to_string());
                ok = false;
                None
            }
        },
    };
    let for_each = match &doc.for_each {
        None => {
            if let Some(m) = &doc.max_items {
                sink.error(m.pos, "`max_items` bounds a `for_each` step; this step has no `for_each`");
                ok = false;
            }
            None
        }
        Some(f) if !f.value.contains("{{") => {
            sink.error(f.pos, format!("`for_each: {}` is not a template", f.value))
                .help("write a template that yields a list, e.g. `for_each: \"{{ trigger.tags }}\"`");
            ok = false;
            None
        }
        Some(f) => match ValueTemplate::compile_str(&f.value) {
            Ok(t) => {
                validate::check_paths(&t, f.pos, scope, sink);
                let max = doc.max_items.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MAX_ITEMS);
                Some(ForEach { items: t, max_items: usize::try_from(max).unwrap_or(usize::MAX) })
            }
            Err(e) => {
                sink.error(f.pos, e.to_string());
                ok = false;
                None
            }
        },
    };
    let on_error = match &doc.on_error {
        None => OnError::Fail,
        Some(o) => match o.value.as_str() {
            "fail" => OnError::Fail,
            "continue" => OnError::Continue,
            other => {
                sink.error(o.pos, format!("unknown `on_error: {other}`"))
                    .help("use `fail` (the default) or `continue`");
                ok = false;
                OnError::Fail
            }
        },
    };
    ok.then_some(StepControl { when, for_each, on_error })
}

/// `steps.<id>` of a step its `if:` skipped.
pub fn skipped_result() -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("skipped".into(), Value::Bool(true));
    Value::Object(m)
}

/// `steps.<id>` of a step (or element) that failed with `on_error: continue`.
pub fn error_result(message: &str) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("error".into(), Value::String(message.to_string()));
    Value::Object(m)
}

/// The record key of element `index` of a `for_each` step: each element has its own
/// record, so its "sent" mark and result survive a crash or a retry on their own.
pub fn element_key(step: &str, index: usize) -> String {
    format!("{step}[{index}]")
}

/// The elements a `for_each` step runs over in `ctx`. A missing or null list is empty
/// (GHL leaves empty fields out of its records); anything else that is not a list, or a
/// list longer than `max_items`, is an error.
pub fn elements(for_each: &ForEach, ctx: &Value) -> Result<Vec<Value>, String> {
    let list = match for_each.items.render(ctx) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Null) | Err(RenderError::Missing { .. }) => Vec::new(),
        Ok(other) => return Err(format!("`for_each` rendered to {}, not a list", kind(&other))),
        Err(e) => return Err(format!("cannot render `for_each`: {e}")),
    };
    if list.len() > for_each.max_items {
        return Err(format!(
            "`for_each` yielded {} elements, more than `max_items` ({}); nothing was sent for this step",
            list.len(),
            for_each.max_items
        ));
    }
    Ok(list)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Sets `item` and `index` in `ctx` for one element of a `for_each` step.
pub fn enter_element(ctx: &mut Value, item: Value, index: usize) {
    if let Some(m) = ctx.as_object_mut() {
        m.insert("item".into(), item);
        m.insert("index".into(), Value::from(index));
    }
}

/// Removes what [`enter_element`] set, so later steps do not see it.
pub fn leave_element(ctx: &mut Value) {
    if let Some(m) = ctx.as_object_mut() {
        m.remove("item");
        m.remove("index");
    }
}

/// What a rehearsal (inline test, dry run) tells its caller about one step.
#[derive(Debug)]
pub enum Rehearsal {
    /// The step's `if:` is false; its `steps.<id>` is [`skipped_result`].
    Skipped,
    /// A `for_each` step runs over this many elements; their inputs follow.
    Elements { count: usize },
    /// The step's inputs, rendered; `index` is the element for a `for_each` step.
    Inputs { index: Option<usize>, inputs: Map<String, Value> },
}

/// [`crate::rehearse`] with the step control shown: `each` hears of skipped steps and of
/// every element of a `for_each` step; what it returns for an element (or a step) is its
/// stand-in result.
pub fn rehearse_controlled<S: AsRef<CompiledStep>>(
    steps: &[S],
    ctx: &mut Value,
    mut each: impl FnMut(&S, Rehearsal) -> Result<Value, String>,
) -> Result<(), String> {
    for s in steps {
        let step = s.as_ref();
        let result = rehearse_one(s, step, ctx, &mut each).map_err(|e| format!("step `{}`: {e}", step.id))?;
        if let Some(steps) = ctx.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(step.id.clone(), result);
        }
    }
    Ok(())
}

fn rehearse_one<S: AsRef<CompiledStep>>(
    s: &S,
    step: &CompiledStep,
    ctx: &mut Value,
    each: &mut impl FnMut(&S, Rehearsal) -> Result<Value, String>,
) -> Result<Value, String> {
    let c = &step.control;
    if let Some(when) = &c.when {
        if !when.matches(ctx).map_err(|e| format!("if: {e}"))? {
            each(s, Rehearsal::Skipped)?;
            return Ok(skipped_result());
        }
    }
    let Some(for_each) = &c.for_each else {
        return step.render_inputs(ctx).and_then(|inputs| each(s, Rehearsal::Inputs { index: None, inputs }));
    };
    let list = elements(for_each, ctx)?;
    each(s, Rehearsal::Elements { count: list.len() })?;
    let mut results = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        enter_element(ctx, item, i);
        let r = step.render_inputs(ctx).and_then(|inputs| each(s, Rehearsal::Inputs { index: Some(i), inputs }));
        leave_element(ctx);
        results.push(r.map_err(|e| format!("element {i}: {e}"))?);
    }
    Ok(Value::Array(results))
}
