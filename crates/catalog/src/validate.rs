//! Checks over operations that serde cannot express. Every check adds to one list of
//! problems, so a user sees everything wrong with their files at once.

use crate::load::Category;
use crate::model::{
    DedupeMode, IdSource, Kind, Method, Operation, Pagination, ParamIn, ParamType, ReadSpec, Shape, TriggerSpec,
};
use crate::problem::{Place, Problem};
use crate::suggest::{did_you_mean, nearest};
use std::collections::{HashMap, HashSet};

pub(crate) fn check_operation(op: &Operation, place: &Place, categories: &[Category], out: &mut Vec<Problem>) {
    let mut problem = |message: String| {
        out.push(Problem { place: place.clone(), message: format!("operation `{}`: {message}", op.key) })
    };

    if !is_key(&op.key) {
        problem("key must look like `module.snake_case_name` (lowercase letters, digits, `_`)".into());
    }
    if !categories.iter().any(|c| c.name == op.category) {
        let names: Vec<&str> = categories.iter().map(|c| c.name.as_str()).collect();
        problem(format!("unknown category `{}`{}", op.category, did_you_mean(&nearest(&op.category, names, 2))));
    }
    if !op.path.starts_with('/') {
        problem(format!("path `{}` must start with `/`", op.path));
    }
    if !is_version(&op.version) {
        problem(format!("version `{}` is not a GHL API version (YYYY-MM-DD)", op.version));
    }
    if op.name.trim().is_empty() {
        problem("name is empty".into());
    }

    let placeholders = op.path_placeholders();
    let declared: Vec<&str> = op.params_in(ParamIn::Path).map(|p| p.name.as_str()).collect();
    for ph in &placeholders {
        if !declared.contains(ph) {
            problem(format!("path parameter `{{{ph}}}` is used in the path but not declared in `params`"));
        }
    }
    for d in &declared {
        if !placeholders.contains(d) {
            problem(format!("path parameter `{d}` is declared but the path has no `{{{d}}}`"));
        }
    }
    for p in op.params_in(ParamIn::Path) {
        if !p.required {
            problem(format!("path parameter `{}` must be required", p.name));
        }
    }

    let mut seen = HashSet::new();
    for p in &op.params {
        if !seen.insert((p.name.as_str(), p.location)) {
            problem(format!("parameter `{}` is declared twice in {}", p.name, p.location.as_str()));
        }
        if let Some(values) = &p.enum_values {
            let element = if p.ty == ParamType::Array { p.items.unwrap_or(ParamType::Any) } else { p.ty };
            if values.is_empty() {
                problem(format!("parameter `{}`: `enum` is empty", p.name));
            }
            let mut distinct = HashSet::new();
            for v in values {
                if !distinct.insert(v.to_string()) {
                    problem(format!("parameter `{}`: enum value {v} appears twice", p.name));
                }
                if !element.accepts_exactly(v) {
                    problem(format!("parameter `{}`: enum value {v} is not a {}", p.name, element.as_str()));
                }
            }
        }
        if p.amended.as_deref().is_some_and(|why| why.trim().is_empty()) {
            problem(format!("parameter `{}`: `amended` must say why it differs from the spec", p.name));
        }
        if p.items.is_some() && p.ty != ParamType::Array {
            problem(format!("parameter `{}`: `items` is only for arrays", p.name));
        }
    }

    if op.body_required && !matches!(op.method, Method::Post | Method::Put | Method::Patch | Method::Delete) {
        problem(format!("body_required: a {} request has no body", op.method.as_str()));
    }
    if let Some(root) = &op.body_root {
        if !op.params_in(ParamIn::Body).any(|p| &p.name == root) {
            problem(format!("body_root `{root}` is not a body parameter"));
        } else if op.params_in(ParamIn::Body).count() > 1 {
            problem(format!("with body_root `{root}`, no other body parameter can be sent"));
        }
    }

    match (op.kind, &op.trigger, &op.action) {
        (Kind::Trigger, Some(t), None) => {
            check_path(&t.items, "trigger.items", &mut problem);
            for path in t.pagination.json_paths() {
                check_path(path, "trigger.pagination", &mut problem);
            }
            if t.dedupe == DedupeMode::Updated && t.updated.is_none() {
                problem("dedupe `updated` needs the item's `updated` field".into());
            }
            if let IdSource::Param(name) = &t.id {
                if op.param(name).is_none() {
                    problem(format!("id comes from parameter `{name}`, which is not declared"));
                }
            }
            match (&t.pagination, t.shape) {
                (Pagination::SingleRecord | Pagination::SingleFile, Shape::List) => {
                    problem("a single-record trigger cannot have shape `list`".into())
                }
                (Pagination::SingleRecord | Pagination::SingleFile, _) => {}
                (_, Shape::Single) if !matches!(t.pagination, Pagination::None) => {
                    problem(format!("a paginated ({}) trigger must have shape `list`", t.pagination.style()))
                }
                _ => {}
            }
            if let Some(read) = &t.read {
                check_read(op, t, read, &mut problem);
            }
            let names: Vec<&str> = op.params.iter().map(|p| p.name.as_str()).collect();
            for param in t.pagination.params() {
                if !names.contains(&param) {
                    problem(format!(
                        "pagination parameter `{param}` is not declared in `params`{}",
                        did_you_mean(&nearest(param, names.iter().copied(), 2))
                    ));
                }
            }
        }
        (Kind::Action, None, Some(a)) => check_path(&a.result, "action.result", &mut problem),
        (Kind::Trigger, _, _) => problem("a trigger needs a `trigger` block and no `action` block".into()),
        (Kind::Action, _, _) => problem("an action needs an `action` block and no `trigger` block".into()),
    }
}

/// A read strategy must fit the trigger's pagination, and name only declared parameters,
/// values they accept, and fields the items carry.
fn check_read(op: &Operation, t: &TriggerSpec, read: &ReadSpec, problem: &mut impl FnMut(String)) {
    let single = matches!(t.pagination, Pagination::SingleRecord | Pagination::SingleFile);
    let window = matches!(t.pagination, Pagination::TimeWindow { .. });
    match read {
        ReadSpec::Single if !single => {
            problem(format!("read strategy `single` needs a single-record trigger, not `{}`", t.pagination.style()))
        }
        ReadSpec::Window if !window => {
            problem(format!("read strategy `window` needs `time_window` pagination, not `{}`", t.pagination.style()))
        }
        ReadSpec::Single | ReadSpec::Window => {}
        _ if single || window => problem(format!(
            "read strategy `{}` does not fit `{}` pagination (use `{}`)",
            read.strategy(),
            t.pagination.style(),
            if single { "single" } else { "window" }
        )),
        ReadSpec::Full { why } if why.trim().is_empty() => {
            problem("read strategy `full` must say why (`why`: what the endpoint lacks)".into())
        }
        _ => {}
    }
    let declared = |name: &str, what: &str, problem: &mut dyn FnMut(String)| {
        if op.param(name).is_none() {
            let names = op.params.iter().map(|p| p.name.as_str());
            problem(format!(
                "read: {what} `{name}` is not declared in `params`{}",
                did_you_mean(&nearest(name, names, 2))
            ));
        }
    };
    if let ReadSpec::Search { filters_param, sort_param, pagination, .. } = read {
        declared(filters_param, "filters parameter", problem);
        declared(sort_param, "sort parameter", problem);
        for param in pagination.params() {
            declared(param, "pagination parameter", problem);
        }
        for path in pagination.json_paths() {
            check_path(path, "read.pagination", problem);
        }
        if matches!(pagination, Pagination::Page { .. } | Pagination::Offset { .. }) {
            problem("read strategy `search` pages by cursor: page numbers and offsets stop at a limit".into());
        }
    }
    let modes = read.modes();
    if matches!(read, ReadSpec::Search { .. } | ReadSpec::Since { .. } | ReadSpec::Sorted { .. }) && modes.is_empty() {
        problem(format!("read strategy `{}` lists no dedupe mode under `modes`", read.strategy()));
    }
    for mode in modes {
        let Some(m) = read.mode(mode) else { continue };
        let what = format!("read.modes.{}", mode.as_str());
        match mode {
            DedupeMode::Changed => {
                problem(format!("{what}: `changed` compares whole items, so it cannot read incrementally"))
            }
            DedupeMode::Updated if t.updated.as_deref() != Some(m.field.as_str()) => problem(format!(
                "{what}: field `{}` must be the trigger's `updated` field ({})",
                m.field,
                t.updated.as_deref().unwrap_or("none")
            )),
            _ => {}
        }
        if !t.fields.is_empty() && !t.fields.contains(&m.field) {
            problem(format!("{what}: items do not carry field `{}` (not in `fields`)", m.field));
        }
        match (read, &m.param) {
            (ReadSpec::Since { .. }, None) => problem(format!("{what}: strategy `since` needs `param`")),
            (ReadSpec::Since { .. }, Some(p)) => declared(p, &format!("{what}.param"), problem),
            (_, Some(_)) => problem(format!("{what}: `param` is only for strategy `since`")),
            (_, None) => {}
        }
        for (name, value) in &m.set {
            match op.param(name) {
                None => declared(name, &format!("{what}.set parameter"), problem),
                Some(p) => {
                    if !p.ty.accepts(value) {
                        problem(format!("{what}.set: `{name}` is of type {}, not {value}", p.ty.as_str()));
                    }
                    if p.enum_values.as_ref().is_some_and(|e| !e.contains(value)) {
                        problem(format!("{what}.set: {value} is not one of `{name}`'s values"));
                    }
                }
            }
        }
    }
}

/// Keys defined more than once, reported at the second definition.
pub(crate) fn check_unique(ops: &[(Operation, Place)], out: &mut Vec<Problem>) {
    let mut first: HashMap<&str, &Place> = HashMap::new();
    for (op, place) in ops {
        if let Some(prev) = first.get(op.key.as_str()) {
            out.push(Problem {
                place: place.clone(),
                message: format!("operation `{}` is already defined at {prev}", op.key),
            });
        } else {
            first.insert(&op.key, place);
        }
    }
}

fn check_path(path: &str, what: &str, problem: &mut impl FnMut(String)) {
    if let Err(e) = jsonpath_rust::parser::parse_json_path(path) {
        let detail = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        problem(format!("{what}: `{path}` is not a valid JSONPath ({detail})"));
    }
}

fn is_key(key: &str) -> bool {
    let mut parts = key.split('.');
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && s.starts_with(|c: char| c.is_ascii_lowercase())
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a) && ok(b))
}

fn is_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_versions() {
        assert!(is_key("contacts.get_contact"));
        assert!(!is_key("Contacts.get"));
        assert!(!is_key("contacts"));
        assert!(!is_key("a.b.c"));
        assert!(is_version("2021-07-28"));
        assert!(!is_version("2021-7-28"));
    }
}
