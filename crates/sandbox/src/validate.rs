//! Request checks from the catalog's parameter definitions, with GHL's 422 messages
//! (class-validator style: `locationId should not be empty`, `limit must be a number`).

use catalog::{Operation, Param, ParamIn, ParamType};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Checks required parameters, types and enums of the query and the body.
pub fn check(op: &Operation, query: &Map<String, Value>, body: &Value) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    let body_map = body.as_object();
    for p in &op.params {
        let value = match p.location {
            ParamIn::Path => continue,
            ParamIn::Query => query.get(&p.name),
            ParamIn::Body => body_map.and_then(|m| m.get(&p.name)),
        };
        match value {
            None | Some(Value::Null) => {
                if p.required && !over_declared(op, p) {
                    problems.push(format!("{} should not be empty", p.name));
                }
            }
            Some(Value::String(s)) if s.is_empty() && p.required && !over_declared(op, p) => {
                problems.push(format!("{} should not be empty", p.name));
            }
            Some(v) => {
                let before = problems.len();
                check_value(p, v, &mut problems);
                if problems.len() == before && effective_type(p) != ParamType::Any {
                    check_nested(op, p, v, &mut problems);
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(problems))
    }
}

/// Below the top level and bounds, from the spec's schemas (`crate::schema`).
fn check_nested(op: &Operation, p: &Param, v: &Value, problems: &mut Vec<String>) {
    match p.location {
        ParamIn::Path => {}
        ParamIn::Body => {
            let name = if op.body_root.as_deref() == Some(p.name.as_str()) { None } else { Some(p.name.as_str()) };
            if let Some(schema) = crate::schema::body_property(&op.key, name) {
                crate::schema::check(schema, v, &p.name, false, problems);
            }
        }
        ParamIn::Query => {
            let Some(schema) = crate::schema::query_param(&op.key, &p.name) else { return };
            // Query values arrive as text; bounds apply to the number they carry.
            let n = match v {
                Value::String(s) => s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64),
                Value::Number(n) => Some(n.clone()),
                _ => None,
            };
            let v = n.map(Value::Number).unwrap_or_else(|| v.clone());
            crate::schema::check(schema, &v, &p.name, false, problems);
        }
    }
}

fn check_value(p: &Param, v: &Value, problems: &mut Vec<String>) {
    let ty = effective_type(p);
    let ok = match (p.location, ty) {
        // Query strings carry arrays as repeated keys or comma lists.
        (ParamIn::Query, ParamType::Array) => true,
        (ParamIn::Body, _) => accepts_json(ty, v),
        _ => ty.accepts(v),
    };
    if !ok {
        problems.push(format!("{} must be {}", p.name, article(ty)));
        return;
    }
    if let Some(values) = &p.enum_values {
        let matches = |x: &Value| values.iter().any(|e| e == x || e.as_str().is_some_and(|s| Some(s) == x.as_str()));
        let ok = match v {
            Value::Array(items) => items.iter().all(matches),
            // Query lists like `type=TYPE_SMS,TYPE_CALL`.
            Value::String(s) if p.location == ParamIn::Query && s.contains(',') => {
                s.split(',').all(|part| matches(&Value::String(part.trim().to_string())))
            }
            other => matches(other) || !matches!(other, Value::String(_)),
        };
        if !ok {
            let list: Vec<String> =
                values.iter().map(|e| e.as_str().map(String::from).unwrap_or_else(|| e.to_string())).collect();
            problems.push(format!("{} must be one of the following values: {}", p.name, list.join(", ")));
        }
    }
}

/// Spec declarations GHL does not follow, by parameter name: these are typed `object` in the
/// spec while GHL takes (and answers with) a scalar, so the sandbox checks the scalar.
/// `dateOfBirth`: a date string (`1990-09-25`); `monetaryValue`: a number, as in
/// create/update opportunity; association labels and keys: strings; `subType` of Send
/// Message: a string such as `SMS`.
fn amended_type(p: &Param) -> Option<ParamType> {
    if p.location != ParamIn::Body || p.ty != ParamType::Object {
        return None;
    }
    match p.name.as_str() {
        "dateOfBirth" | "firstObjectLabel" | "firstObjectKey" | "secondObjectLabel" | "secondObjectKey" | "subType" => {
            Some(ParamType::String)
        }
        "monetaryValue" => Some(ParamType::Number),
        _ => None,
    }
}

/// Send Message's `status` and `subType` are declared required, but an SMS as GHL takes it is
/// `{type, contactId, message}`: GHL sets the status itself and the type says the channel.
fn over_declared(op: &Operation, p: &Param) -> bool {
    op.key == "conversations.send_message" && matches!(p.name.as_str(), "status" | "subType")
}

/// The declared type, unless the catalog's own example contradicts it: then the spec's
/// declaration is known to be wrong (e.g. an "object" whose example is a string) and GHL
/// evidently accepts the example's form, so nothing is enforced.
fn effective_type(p: &Param) -> ParamType {
    if let Some(ty) = amended_type(p) {
        return ty;
    }
    let fits = |e: &Value| if p.location == ParamIn::Body { accepts_json(p.ty, e) } else { p.ty.accepts(e) };
    match &p.example {
        Some(example) if !fits(example) => ParamType::Any,
        _ => p.ty,
    }
}

/// JSON bodies are typed, so class-validator refuses `"5"` for a number and `5` for a string.
fn accepts_json(ty: ParamType, v: &Value) -> bool {
    match (ty, v) {
        (ParamType::String, v) => v.is_string(),
        (ParamType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (ParamType::Number, v) => v.is_number(),
        (ParamType::Boolean, v) => v.is_boolean(),
        (ty, v) => ty.accepts(v),
    }
}

fn article(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Integer => "an integer number",
        ParamType::Number => "a number conforming to the specified constraints",
        ParamType::Boolean => "a boolean value",
        ParamType::Array => "an array",
        ParamType::Object => "an object",
        ParamType::Any => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn required_and_types() {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let op = cat.get("contacts.create_task").expect("op");
        let err = check(op, &Map::new(), &json!({"title": 5})).expect_err("invalid");
        let msgs = err.message.as_array().cloned().unwrap_or_default();
        assert!(msgs.contains(&json!("title must be a string")), "{msgs:?}");
        assert!(msgs.contains(&json!("dueDate should not be empty")), "{msgs:?}");
        assert!(check(op, &Map::new(), &json!({"title": "t", "dueDate": "2020-10-25T11:00:00Z", "completed": false}))
            .is_ok());
    }

    fn messages(op: &str, body: Value) -> Vec<Value> {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let op = cat.get(op).expect("op");
        check(op, &Map::new(), &body).err().and_then(|e| e.message.as_array().cloned()).unwrap_or_default()
    }

    #[test]
    fn amended_fields_take_the_scalar_ghl_takes_and_nothing_else() {
        let sms = json!({"type": "SMS", "contactId": "c1", "message": "hi"});
        assert_eq!(messages("conversations.send_message", sms), Vec::<Value>::new());
        let typed = json!({"type": "SMS", "contactId": "c1", "message": "hi", "subType": {"a": 1}});
        assert!(messages("conversations.send_message", typed).contains(&json!("subType must be a string")));
        let dob = json!({"locationId": "loc_demo", "dateOfBirth": "1990-09-25"});
        assert_eq!(messages("contacts.upsert_contact", dob), Vec::<Value>::new());
        let dob = json!({"locationId": "loc_demo", "dateOfBirth": {"y": 1990}});
        assert!(messages("contacts.upsert_contact", dob).contains(&json!("dateOfBirth must be a string")));
        let opp = json!({"pipelineId": "p", "locationId": "loc_demo", "monetaryValue": "220"});
        assert!(messages("opportunities.upsert_opportunity", opp)
            .contains(&json!("monetaryValue must be a number conforming to the specified constraints")));
    }
}
