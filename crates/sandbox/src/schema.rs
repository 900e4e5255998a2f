//! What the catalog's flat parameters do not say: the nested request schemas of the official
//! specs (objects inside the body, array items, enums below the top level, length and range
//! bounds, whether a body is required), built into the binary from `body_schemas.json`.
//! `tests/body_schemas.rs` derives that file from the specs again and fails on a difference.
//! Messages are class-validator's, with NestJS's nested paths (`customFields.0.id`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

const EMBEDDED: &str = include_str!("body_schemas.json");

/// One operation's entry: `bodyRequired`, `body` (a reduced JSON schema) and `query`
/// (parameter name → reduced schema, only for parameters with bounds).
fn table() -> &'static HashMap<String, Value> {
    static TABLE: OnceLock<HashMap<String, Value>> = OnceLock::new();
    TABLE.get_or_init(|| serde_json::from_str(EMBEDDED).unwrap_or_default())
}

pub fn body_required(op: &str) -> bool {
    table().get(op).and_then(|e| e.get("bodyRequired")).and_then(Value::as_bool).unwrap_or(false)
}

/// The schema of one top-level body property (or of the whole body for `None`).
pub fn body_property(op: &str, name: Option<&str>) -> Option<&'static Value> {
    let body = table().get(op)?.get("body")?;
    match name {
        None => Some(body),
        Some(n) => body.get("properties")?.get(n),
    }
}

pub fn query_param(op: &str, name: &str) -> Option<&'static Value> {
    table().get(op)?.get("query")?.get(name)
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn article(ty: &str) -> &'static str {
    match ty {
        "string" => "a string",
        "integer" => "an integer number",
        "number" => "a number conforming to the specified constraints",
        "boolean" => "a boolean value",
        "array" => "an array",
        "object" => "an object",
        _ => "a value",
    }
}

fn enum_list(values: &[Value]) -> String {
    values.iter().map(|e| e.as_str().map(String::from).unwrap_or_else(|| e.to_string())).collect::<Vec<_>>().join(", ")
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// Checks `v` against `schema` at `path`. With `own_type` false the node's own type and enum
/// are left to the caller (the catalog checks top-level parameters itself); bounds,
/// properties and items are always checked.
pub fn check(schema: &Value, v: &Value, path: &str, own_type: bool, problems: &mut Vec<String>) {
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        let mut first: Option<Vec<String>> = None;
        for b in branches {
            let mut p = Vec::new();
            check(b, v, path, own_type, &mut p);
            if p.is_empty() {
                return;
            }
            first.get_or_insert(p);
        }
        problems.extend(first.unwrap_or_default());
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    if own_type {
        if let Some(t) = ty {
            if !type_ok(t, v) {
                problems.push(format!("{path} must be {}", article(t)));
                return;
            }
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.contains(v) {
                problems.push(format!("{path} must be one of the following values: {}", enum_list(values)));
                return;
            }
        }
    } else if ty.is_some_and(|t| !type_ok(t, v)) {
        // The catalog declares another type here (an amendment): its check stands alone.
        return;
    }
    bounds(schema, v, path, problems);
    match v {
        Value::Object(m) => object(schema, m, path, problems),
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else { return };
            for (i, item) in items.iter().enumerate() {
                if item_schema.get("properties").is_some() || item_schema.get("anyOf").is_some() {
                    check(item_schema, item, &format!("{path}.{i}"), true, problems);
                    continue;
                }
                let mut p = Vec::new();
                check(item_schema, item, path, true, &mut p);
                // class-validator's `each: true` wording for scalar items.
                for msg in p {
                    let each = format!("each value in {msg}");
                    if !problems.contains(&each) {
                        problems.push(each);
                    }
                }
            }
        }
        _ => {}
    }
}

fn object(schema: &Value, m: &Map<String, Value>, path: &str, problems: &mut Vec<String>) {
    let prefix = if path.is_empty() { String::new() } else { format!("{path}.") };
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        match m.get(r) {
            None | Some(Value::Null) => problems.push(format!("{prefix}{r} should not be empty")),
            Some(Value::String(s)) if s.is_empty() => problems.push(format!("{prefix}{r} should not be empty")),
            _ => {}
        }
    }
    for (name, sub) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        match m.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => check(sub, v, &format!("{prefix}{name}"), true, problems),
        }
    }
}

fn bounds(schema: &Value, v: &Value, path: &str, problems: &mut Vec<String>) {
    let get = |k: &str| schema.get(k).filter(|b| b.is_number());
    if let Value::String(s) = v {
        let len = s.chars().count() as f64;
        if let Some(max) = get("maxLength").filter(|m| m.as_f64().is_some_and(|m| len > m)) {
            problems.push(format!("{path} must be shorter than or equal to {} characters", num(max)));
        }
        if let Some(min) = get("minLength").filter(|m| m.as_f64().is_some_and(|m| len < m)) {
            problems.push(format!("{path} must be longer than or equal to {} characters", num(min)));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = get("minimum").filter(|m| m.as_f64().is_some_and(|m| n < m)) {
            problems.push(format!("{path} must not be less than {}", num(min)));
        }
        if let Some(max) = get("maximum").filter(|m| m.as_f64().is_some_and(|m| n > m)) {
            problems.push(format!("{path} must not be greater than {}", num(max)));
        }
    }
    if let Value::Array(items) = v {
        let len = items.len() as f64;
        if let Some(max) = get("maxItems").filter(|m| m.as_f64().is_some_and(|m| len > m)) {
            problems.push(format!("{path} must contain no more than {} elements", num(max)));
        }
        if let Some(min) = get("minItems").filter(|m| m.as_f64().is_some_and(|m| len < m)) {
            problems.push(format!("{path} must contain at least {} elements", num(min)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_table_loads() {
        assert!(body_required("contacts.update_contact"));
        assert!(body_required("contacts.add_to_campaign"));
        assert!(!body_required("contacts.get_contact"));
        assert!(body_property("contacts.update_contact", Some("dndSettings")).is_some());
        assert!(query_param("calendars.list_appointment_notes", "offset").is_some());
    }

    #[test]
    fn nested_messages_have_nestjs_paths() {
        let s = body_property("contacts.update_contact", Some("customFields")).expect("schema");
        let mut p = Vec::new();
        check(s, &json!([{"id": "a", "field_value": "x"}, {"key": "k"}]), "customFields", false, &mut p);
        assert_eq!(p, vec!["customFields.1.id should not be empty".to_string()]);
        let s = body_property("contacts.update_contact", Some("tags")).expect("schema");
        let mut p = Vec::new();
        check(s, &json!([1, 2]), "tags", false, &mut p);
        assert_eq!(p, vec!["each value in tags must be a string".to_string()]);
    }
}
