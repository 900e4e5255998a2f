//! Checks of a step's or trigger's `with` block against what it calls, and of the
//! context paths its templates read.

use catalog::{Operation, ParamType};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::compile::CompileEnv;
use crate::diagnostic::{Pos, Sink};
use crate::helpers::Helper;
use crate::parse::{pos, At, Entries, Node};
use crate::template::{TemplateError, ValueTemplate};

/// Variables a template may start with.
pub(crate) const ROOTS: &[&str] = &["trigger", "steps", "account", "env", "flow", "run", "now"];

/// What a template can see where it is written.
pub(crate) struct Scope<'a> {
    /// `None` where there is no trigger item yet (the trigger's own `with`).
    pub trigger_fields: Option<&'a [String]>,
    /// `Some` in a fan-out trigger's `with`: the parent's item fields, seen as `parent.*`.
    pub parent_fields: Option<&'a [String]>,
    /// Steps that ran before this point.
    pub earlier_steps: &'a [String],
    /// Every step of the flow, to tell "later" from "unknown".
    pub all_steps: &'a [String],
    pub env: &'a CompileEnv,
    /// Inside a `for_each` step: `item` and `index` are set.
    pub item: bool,
}

/// Parameters the built-in `http.request` step takes.
pub(crate) const HTTP_PARAMS: &[(&str, ParamType, bool)] = &[
    ("method", ParamType::String, false),
    ("url", ParamType::String, true),
    ("headers", ParamType::Object, false),
    ("query", ParamType::Object, false),
    ("json", ParamType::Any, false),
    ("body", ParamType::String, false),
];
pub(crate) const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Compiles a whole YAML value into a template, checking every string in it.
pub(crate) fn template_of(node: &Spanned<Node>, scope: &Scope<'_>, sink: &mut Sink) -> Option<ValueTemplate> {
    match &node.value {
        Node::Str(s) => {
            let t = match ValueTemplate::compile_str(s) {
                Ok(t) => t,
                Err(e) => {
                    report_template_error(&e, pos(node), sink);
                    return None;
                }
            };
            check_paths(&t, pos(node), scope, sink);
            Some(t)
        }
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for i in items {
                match template_of(i, scope, sink) {
                    Some(t) => out.push(t),
                    None => ok = false,
                }
            }
            ok.then(|| ValueTemplate::array(out))
        }
        Node::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            let mut ok = true;
            for (k, v) in entries {
                match template_of(v, scope, sink) {
                    Some(t) => out.push((k.value.0.clone(), t)),
                    None => ok = false,
                }
            }
            ok.then(|| ValueTemplate::object(out))
        }
        other => Some(ValueTemplate::literal(other.to_json())),
    }
}

fn report_template_error(e: &TemplateError, at: Pos, sink: &mut Sink) {
    let d = sink.error(at, e.to_string());
    match e {
        TemplateError::UnknownHelper(name) => {
            let names: Vec<&str> = Helper::ALL.iter().map(|h| h.name()).collect();
            d.suggest(&catalog::nearest(name, names.iter().copied(), 2));
        }
        TemplateError::UnknownHashKey { helper: "date_add", .. } => {
            d.help("date_add takes weeks=, days=, hours=, minutes= and seconds=");
        }
        _ => {}
    }
}

pub(crate) fn check_paths(t: &ValueTemplate, at: Pos, scope: &Scope<'_>, sink: &mut Sink) {
    let mut paths: Vec<Vec<String>> = Vec::new();
    t.visit_paths(&mut |p| paths.push(p.to_vec()));
    for p in paths {
        let root = p[0].as_str();
        match root {
            "trigger" => match scope.trigger_fields {
                None => {
                    sink.error(at, "`trigger` is not available here: the trigger's own parameters are rendered before there is an item")
                        .help("use `account`, `env`, `flow`, `run` or `now`");
                }
                Some(fields) if !fields.is_empty() && p.len() > 1 && !fields.iter().any(|f| f == &p[1]) => {
                    let d = sink.error(at, format!("`trigger.{}`: the trigger's items have no field `{}`", p[1], p[1]));
                    d.suggest(&catalog::nearest(&p[1], fields.iter().map(String::as_str), 3));
                }
                _ => {}
            },
            "steps" => {
                let Some(id) = p.get(1) else { continue };
                if scope.earlier_steps.contains(id) {
                    continue;
                }
                if scope.all_steps.contains(id) {
                    sink.error(at, format!("`steps.{id}` refers to a step that has not run yet at this point"))
                        .help("a step can only use the results of the steps before it");
                } else {
                    let d = sink.error(at, format!("`steps.{id}` refers to an unknown step"));
                    d.suggest(&catalog::nearest(id, scope.earlier_steps.iter().map(String::as_str), 3));
                }
            }
            "env" => {
                if let Some(name) = p.get(1) {
                    if !scope.env.env.contains_key(name) {
                        let d = sink.warning(at, format!("environment variable `{name}` is not set"));
                        d.suggest(&catalog::nearest(name, scope.env.env.keys().map(String::as_str), 2));
                    }
                }
            }
            "parent" => match scope.parent_fields {
                None => {
                    sink.error(at, "`parent` is only available in the `with` of a trigger with `for_each_record`")
                        .help("`parent` is the parent record a fan-out trigger is polled for");
                }
                Some(fields) if !fields.is_empty() && p.len() > 1 && !fields.iter().any(|f| f == &p[1]) => {
                    let d = sink.error(at, format!("`parent.{}`: the parent's items have no field `{}`", p[1], p[1]));
                    d.suggest(&catalog::nearest(&p[1], fields.iter().map(String::as_str), 3));
                }
                Some(_) => {}
            },
            r if ROOTS.contains(&r) => {}
            "item" | "index" if scope.item => {}
            "item" | "index" => {
                sink.error(at, format!("`{root}` is only set in the `with` of a step with `for_each`"))
                    .help("`if:` and `for_each:` are rendered once for the step, before its elements");
            }
            other => {
                let d = sink.error(at, format!("unknown variable `{other}` in template"));
                let s = catalog::nearest(other, ROOTS.iter().copied(), 2);
                if s.is_empty() {
                    d.help("templates can use trigger, steps, account, env, flow, run and now");
                } else {
                    d.suggest(&s);
                }
            }
        }
    }
}

/// Checks a `with` block against a catalog operation; returns it compiled.
pub(crate) fn check_ghl_with(
    op: &Operation,
    with: Option<&At<Entries>>,
    uses_pos: Pos,
    scope: &Scope<'_>,
    sink: &mut Sink,
) -> Option<ValueTemplate> {
    let paginated: Vec<&str> = op.trigger.as_ref().map(|t| t.pagination.params()).unwrap_or_default();
    let entries: &[(At<String>, Spanned<Node>)] = with.map(|w| w.value.as_slice()).unwrap_or_default();
    let mut fields = Vec::with_capacity(entries.len());
    let mut ok = true;
    for (key, value) in entries {
        let Some(param) = op.param(&key.value) else {
            let names = op.params.iter().map(|p| p.name.as_str());
            let d = sink.error(key.pos, format!("`{}` has no parameter `{}`", op.key, key.value));
            let s = catalog::nearest(&key.value, names, 3);
            if s.is_empty() {
                let all: Vec<String> = op.params.iter().map(|p| format!("`{}`", p.name)).collect();
                if all.is_empty() {
                    d.help("this operation takes no parameters");
                } else {
                    d.help(format!("parameters are {}", all.join(", ")));
                }
            } else {
                d.suggest(&s);
            }
            ok = false;
            continue;
        };
        if paginated.contains(&key.value.as_str()) {
            sink.warning(
                key.pos,
                format!("`{}` is set by the paginator; this value is replaced on every page", key.value),
            );
        }
        let Some(t) = template_of(value, scope, sink) else {
            ok = false;
            continue;
        };
        if let Some(lit) = t.as_literal() {
            let expected = Expected {
                ty: param.ty,
                items: param.items,
                enum_values: param.enum_values.as_deref(),
                comma_list: param.location == catalog::ParamIn::Query,
            };
            if !check_literal(lit, &expected, &key.value, pos(value), sink) {
                ok = false;
            }
        }
        fields.push((key.value.clone(), t));
    }
    let mut missing: Vec<&str> = op
        .params
        .iter()
        .filter(|p| p.required && !paginated.contains(&p.name.as_str()))
        .filter(|p| !entries.iter().any(|(k, _)| k.value == p.name))
        .map(|p| p.name.as_str())
        .collect();
    missing.dedup();
    for name in missing {
        let at = with.map(|w| w.pos).unwrap_or(uses_pos);
        let param = op.param(name);
        let ty = param.map(|p| format!(" ({} {})", p.location.as_str(), p.ty.as_str())).unwrap_or_default();
        sink.error(at, format!("`{}` needs parameter `{name}`{ty}", op.key));
        ok = false;
    }
    ok.then(|| ValueTemplate::object(fields))
}

/// What a parameter's value must be.
struct Expected<'a> {
    ty: ParamType,
    /// The type of a list's items.
    items: Option<ParamType>,
    enum_values: Option<&'a [Value]>,
    /// The value goes in a query string, where GHL reads `a,b` as two values.
    comma_list: bool,
}

/// Type and enum check of a value written without templates.
fn check_literal(v: &Value, expected: &Expected<'_>, name: &str, at: Pos, sink: &mut Sink) -> bool {
    let Expected { ty, items, enum_values, comma_list } = *expected;
    // What the engine converts losslessly at render time is accepted (`zip: 12345` is sent
    // as "12345", `limit: "25"` as 25); anything else would be refused by GHL with a 422.
    if ty.convert(v).is_none() {
        sink.error(at, format!("parameter `{name}` must be {}, found {}", article(ty), json_kind(v))).help(hint(ty));
        return false;
    }
    if let (Some(item_ty), Value::Array(list)) = (items, v) {
        if let Some(bad) = list.iter().find(|i| item_ty.convert(i).is_none()) {
            sink.error(at, format!("items of `{name}` must be {}, found {}", article(item_ty), json_kind(bad)))
                .help(hint(item_ty));
            return false;
        }
    }
    if let Some(allowed) = enum_values {
        let matches = |x: &Value| allowed.iter().any(|a| a == x || a.as_str().is_some_and(|s| Some(s) == x.as_str()));
        let values: Vec<Value> = match v {
            Value::Array(list) => list.clone(),
            Value::String(s) if comma_list && s.contains(',') => {
                s.split(',').map(|part| Value::String(part.trim().to_string())).collect()
            }
            other => vec![other.clone()],
        };
        if let Some(bad) = values.iter().find(|x| !matches(x)) {
            let texts: Vec<String> = allowed.iter().map(|a| crate::helpers::text(a).into_owned()).collect();
            let shown = crate::helpers::text(bad);
            let d = sink.error(at, format!("`{shown}` is not a valid value for `{name}`"));
            let s = catalog::nearest(&shown, texts.iter().map(String::as_str), 1);
            if s.is_empty() {
                d.help(format!(
                    "expected one of {}",
                    texts.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
                ));
            } else {
                d.suggest(&s);
            }
            return false;
        }
    }
    true
}

/// How to write a value of a type; says which conversions flowd makes.
fn hint(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "write the text itself; a number or `true`/`false` is sent as its text",
        ParamType::Integer => "write a whole number such as `25`, or its digits in quotes (`\"25\"`)",
        ParamType::Number => "write a plain number such as `1200.5` (no thousands separators, leading zeros or units)",
        ParamType::Boolean => "write `true` or `false`",
        ParamType::Array => "write a list, such as `[a, b]`",
        ParamType::Object => "write a mapping, such as `{ key: value }`",
        ParamType::Any => "any value is accepted",
    }
}

fn article(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Number => "a number",
        ParamType::Boolean => "a boolean",
        ParamType::Array => "a list",
        ParamType::Object => "a mapping",
        ParamType::Any => "any value",
    }
}

fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean `{b}`"),
        Value::Number(n) => format!("a number `{n}`"),
        Value::String(s) => format!("a string `{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Checks the `with` of an `http.request` step.
pub(crate) fn check_http_with(
    with: Option<&At<Entries>>,
    uses_pos: Pos,
    scope: &Scope<'_>,
    sink: &mut Sink,
) -> Option<ValueTemplate> {
    let entries: &[(At<String>, Spanned<Node>)] = with.map(|w| w.value.as_slice()).unwrap_or_default();
    let mut fields = Vec::with_capacity(entries.len());
    let mut ok = true;
    for (key, value) in entries {
        let Some(&(_, ty, _)) = HTTP_PARAMS.iter().find(|(n, _, _)| *n == key.value) else {
            let d = sink.error(key.pos, format!("`http.request` has no parameter `{}`", key.value));
            let s = catalog::nearest(&key.value, HTTP_PARAMS.iter().map(|p| p.0), 2);
            if s.is_empty() {
                d.help("parameters are `method`, `url`, `headers`, `query`, `json`, `body`");
            } else {
                d.suggest(&s);
            }
            ok = false;
            continue;
        };
        let Some(t) = template_of(value, scope, sink) else {
            ok = false;
            continue;
        };
        if let Some(lit) = t.as_literal() {
            let methods: Vec<Value> = HTTP_METHODS.iter().map(|m| Value::from(*m)).collect();
            let allowed = (key.value == "method").then_some(methods.as_slice());
            let expected = Expected { ty, items: None, enum_values: allowed, comma_list: false };
            if !check_literal(lit, &expected, &key.value, pos(value), sink) {
                ok = false;
            } else if key.value == "url" {
                let u = lit.as_str().unwrap_or_default();
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    sink.error(pos(value), format!("`url` must start with http:// or https://, found `{u}`"));
                    ok = false;
                }
            }
        }
        fields.push((key.value.clone(), t));
    }
    if !entries.iter().any(|(k, _)| k.value == "url") {
        sink.error(with.map(|w| w.pos).unwrap_or(uses_pos), "`http.request` needs parameter `url`");
        ok = false;
    }
    if let (Some(_), Some((b, _))) =
        (entries.iter().find(|(k, _)| k.value == "json"), entries.iter().find(|(k, _)| k.value == "body"))
    {
        sink.error(b.pos, "`http.request` takes `json` or `body`, not both");
        ok = false;
    }
    ok.then(|| ValueTemplate::object(fields))
}
