//! Which GHL records a run names ("contact:abc123"), so an operator can find every run
//! that touched a record (`flowd runs --touched`, the console's search).
//!
//! Pure: from the trigger item and the catalog's description of its operation, and from
//! each step's rendered inputs and response. A record is `kind:id`, the kind being the
//! singular of the catalog's resource name (`contacts` → `contact`), or for an id field
//! the name before `Id` (`contactId` → `contact`).

use catalog::{IdSource, Operation};
use serde_json::Value;
use std::borrow::Cow;

/// Id fields that name the account or a side detail rather than a record a run is about:
/// every run of a location names its location.
const NOT_RECORDS: &[&str] = &["location", "company", "alt", "trace", "version", "parent", "user", "assigned"];

/// The records a trigger item names: its own id (the operation's resource kind) and the
/// `xxxId` fields it carries (a task's `contactId`).
pub fn of_item(op: &Operation, item: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(kind) = resource_kind(op) {
        let field = match op.trigger.as_ref().map(|t| &t.id) {
            Some(IdSource::Field(f)) => Some(f.as_str()),
            Some(_) => None,
            // Webhook events carry their record's id in `id`.
            None => Some("id"),
        };
        if let Some(id) = field.and_then(|f| item.get(f)).and_then(id_text) {
            push(&mut out, &kind, &id);
        }
    }
    id_fields(item, &mut out);
    out
}

/// The records a webhook event names, for a flow fed by webhooks only: the event's own
/// record (`ContactCreate` → `contact`, its `id`) and the `xxxId` fields it carries.
pub fn of_event(event: &str, item: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(kind), Some(id)) = (event_kind(event), item.get("id").and_then(id_text)) {
        push(&mut out, &kind, &id);
    }
    id_fields(item, &mut out);
    out
}

/// The records a GHL step's rendered inputs name (its `xxxId` path and body parameters).
pub fn of_inputs(inputs: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in inputs {
        if let (Some(kind), Some(id)) = (field_kind(name), id_text(value)) {
            push(&mut out, &kind, &id);
        }
    }
    out
}

/// Adds the records a GHL step's response names: the id of the record it returns (the
/// operation's resource kind) and the `xxxId` fields of that record.
pub fn of_response(op: &Operation, response: &Value, out: &mut Vec<String>) {
    if let Some(kind) = resource_kind(op) {
        if let Some(id) = response.get("id").or_else(|| response.get("_id")).and_then(id_text) {
            push(out, &kind, &id);
        }
    }
    id_fields(response, out);
}

// Every item and step passes through these, so they borrow where they can: a record
// name is the one string built, and only when the run does not name it yet.
fn push(out: &mut Vec<String>, kind: &str, id: &str) {
    let named = |r: &String| {
        r.len() == kind.len() + 1 + id.len()
            && r.starts_with(kind)
            && r.ends_with(id)
            && r.as_bytes()[kind.len()] == b':'
    };
    if !out.iter().any(named) {
        let mut record = String::with_capacity(kind.len() + 1 + id.len());
        record.push_str(kind);
        record.push(':');
        record.push_str(id);
        out.push(record);
    }
}

fn id_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// The top-level `xxxId` fields of an object.
fn id_fields(v: &Value, out: &mut Vec<String>) {
    let Some(map) = v.as_object() else { return };
    for (name, value) in map {
        if let (Some(kind), Some(id)) = (field_kind(name), id_text(value)) {
            push(out, &kind, &id);
        }
    }
}

/// `contactId` → `contact`, `opportunity_id` → `opportunity`; `None` for other names and
/// for the ids in [`NOT_RECORDS`].
fn field_kind(name: &str) -> Option<Cow<'_, str>> {
    let stem = name.strip_suffix("Id").or_else(|| name.strip_suffix("_id"))?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    if NOT_RECORDS.iter().any(|n| n.eq_ignore_ascii_case(stem)) {
        return None;
    }
    Some(lowercase(stem))
}

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The kind of record an operation reads or writes: from the JSONPath of its items
/// (`$.contacts[*]`, `$.task`) or its result, else the last literal segment of its path,
/// or for a webhook event its first word (`ContactCreate` → `contact`).
fn resource_kind(op: &Operation) -> Option<Cow<'_, str>> {
    if op.category == "webhooks" {
        return event_kind(&op.name).map(Cow::Owned);
    }
    let jsonpath = op.trigger.as_ref().map(|t| t.items.as_str()).or(op.action.as_ref().map(|a| a.result.as_str()));
    let from_path = jsonpath.and_then(|p| {
        let name = p.trim_end_matches("[*]").rsplit('.').next()?;
        (name.len() > 1 && name != "data" && name.bytes().all(|b| b.is_ascii_alphabetic())).then_some(name)
    });
    let name = from_path.or_else(|| {
        op.path
            .split('/')
            .rev()
            .find(|seg| !seg.is_empty() && !seg.starts_with('{') && !matches!(*seg, "search" | "duplicate" | "list"))
    })?;
    Some(singular(name))
}

/// `ContactCreate` → `contact`: the first word of an event's name.
fn event_kind(event: &str) -> Option<String> {
    let word: String = event.chars().take(1).chain(event.chars().skip(1).take_while(|c| c.is_lowercase())).collect();
    (!word.is_empty()).then(|| word.to_ascii_lowercase())
}

fn singular(name: &str) -> Cow<'_, str> {
    let lower = lowercase(name);
    if let Some(stem) = lower.strip_suffix("ies") {
        Cow::Owned(format!("{stem}y"))
    } else if let Some(stem) = lower.strip_suffix("sses") {
        Cow::Owned(format!("{stem}ss"))
    } else if lower.ends_with('s') {
        match lower {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..b.len() - 1]),
            Cow::Owned(mut o) => {
                o.pop();
                Cow::Owned(o)
            }
        }
    } else {
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(key: &str) -> catalog::SharedOperation {
        catalog::Catalog::builtin().expect("catalog").get_shared(key).expect(key)
    }

    #[test]
    fn a_contact_trigger_names_its_contact_and_a_task_its_contact_too() {
        let contact = json!({"id": "c1", "locationId": "loc", "firstName": "Ann"});
        assert_eq!(of_item(&op("contacts.search_contacts"), &contact), vec!["contact:c1"]);
        let task = json!({"id": "t1", "contactId": "c9", "assignedTo": "u1", "title": "x"});
        let tasks = op("contacts.get_contact_tasks");
        assert_eq!(of_item(&tasks, &task), vec!["task:t1", "contact:c9"]);
    }

    #[test]
    fn names_and_plurals() {
        assert_eq!(field_kind("contactId").as_deref(), Some("contact"));
        assert_eq!(field_kind("opportunity_id").as_deref(), Some("opportunity"));
        assert_eq!(field_kind("locationId"), None, "every run names its location");
        assert_eq!(field_kind("Id"), None);
        assert_eq!(field_kind("title"), None);
        assert_eq!(singular("opportunities"), "opportunity");
        assert_eq!(singular("businesses"), "business");
        assert_eq!(singular("contacts"), "contact");
    }

    #[test]
    fn a_webhook_event_names_its_record_and_a_step_what_it_sent_and_got() {
        let ev = json!({"type": "TaskCreate", "id": "t1", "contactId": "c2", "locationId": "loc"});
        assert_eq!(of_event("TaskCreate", &ev), vec!["task:t1", "contact:c2"]);
        let inputs = json!({"contactId": "c3", "title": "x", "locationId": "loc"});
        let mut named = of_inputs(inputs.as_object().expect("object"));
        assert_eq!(named, vec!["contact:c3"]);
        of_response(&op("contacts.create_task"), &json!({"id": "t9", "contactId": "c3"}), &mut named);
        assert_eq!(named, vec!["contact:c3", "task:t9"]);
    }
}
