//! Every request flowd sends, validated against GHL's official OpenAPI specs
//! (`../shared/ghl-api/openapi`): for each of the 126 catalog operations, the request the
//! engine renders from the catalog's example inputs (what a dry run shows and the client
//! sends; for triggers, the first page with the paginator's parameters) must fit the spec's
//! path, query and body declarations: types, required fields and enums, `$ref`s resolved,
//! bodies checked by a JSON Schema validator. Where the catalog deliberately departs from
//! the spec, the amendment (with its reason, `amended:`) replaces the spec's declaration of
//! that one field, and nothing else is excused.

#[path = "../../catalog/tests/common/spec.rs"]
mod spec;

use catalog::{Catalog, Operation, Pagination, Param, ParamIn, ParamType};
use serde_json::{json, Map, Value};
use spec::{type_of, SpecOp, SpecParam, Specs, BODY_ROOT};

/// The JSON Schema of a parameter as the catalog declares it (for amended fields).
fn schema_of(p: &Param) -> Value {
    let mut s = Map::new();
    if p.ty != ParamType::Any {
        s.insert("type".into(), json!(p.ty.as_str()));
    }
    if let Some(items) = p.items.filter(|t| *t != ParamType::Any) {
        s.insert("items".into(), json!({"type": items.as_str()}));
    }
    if let Some(e) = &p.enum_values {
        if p.ty == ParamType::Array {
            s.insert("items".into(), json!({"enum": e}));
        } else {
            s.insert("enum".into(), json!(e));
        }
    }
    Value::Object(s)
}

/// The spec's declarations with the catalog's amendments applied: an amended parameter is
/// declared as the catalog declares it. Returns the amendments applied, with their reasons.
fn amended_params(op: &Operation, mut params: Vec<SpecParam>) -> (Vec<SpecParam>, Vec<(String, String)>) {
    let mut applied = Vec::new();
    for c in op.params.iter().filter(|c| c.amended.is_some()) {
        let location = match c.location {
            ParamIn::Path => "path",
            ParamIn::Query => "query",
            ParamIn::Body => "body",
        };
        params.retain(|s| !(s.name == c.name && s.location == location));
        params.push(SpecParam { name: c.name.clone(), location, required: c.required, schema: schema_of(c) });
        applied.push((c.name.clone(), c.amended.clone().unwrap_or_default()));
    }
    (params, applied)
}

fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    // OpenAPI 3.0 schemas are JSON Schema draft 4 with extra keywords (ignored here).
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(schema)
        .map_err(|e| format!("the spec's schema does not compile: {e}"))
}

fn validate(schema: &Value, value: &Value, what: &str, out: &mut Vec<String>) {
    match validator(schema) {
        Ok(v) => {
            for e in v.iter_errors(value) {
                out.push(format!("{what}{}: {e}", e.instance_path()));
            }
        }
        Err(e) => out.push(format!("{what}: {e}")),
    }
}

/// A value as a server reads it from a path or query string: text, parsed as the schema's
/// type when it parses.
fn from_text(schema: &Value, v: &Value) -> Value {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let parsed = match type_of(schema) {
        "integer" => text.parse::<i64>().ok().map(Value::from),
        "number" => text.parse::<serde_json::Number>().ok().map(Value::Number),
        "boolean" => match text.as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or(Value::String(text))
}

/// Everything in `req` that the spec (with the listed amendments) does not allow.
fn problems(spec_op: &SpecOp<'_>, op: &Operation, req: &ghl::Request) -> Vec<String> {
    let (params, _) = amended_params(op, spec_op.params());
    let mut out = Vec::new();
    for p in params.iter().filter(|p| p.location == "path") {
        match req.path_params.get(&p.name) {
            None if p.required => out.push(format!("path parameter `{}` is required", p.name)),
            None => {}
            Some(v) => validate(&p.schema, &from_text(&p.schema, v), &format!("path `{}`", p.name), &mut out),
        }
    }
    for (name, value) in &req.query {
        let Some(p) = params.iter().find(|p| p.location == "query" && &p.name == name) else {
            out.push(format!("query parameter `{name}` is not declared by the spec"));
            continue;
        };
        let what = format!("query `{name}`");
        match (type_of(&p.schema), value) {
            ("array", Value::Array(items)) => {
                let item = p.schema.get("items").cloned().unwrap_or(json!({}));
                let items: Vec<Value> = items.iter().map(|v| from_text(&item, v)).collect();
                validate(&p.schema, &Value::Array(items), &what, &mut out);
            }
            ("array", v) => {
                let item = p.schema.get("items").cloned().unwrap_or(json!({}));
                validate(&p.schema, &json!([from_text(&item, v)]), &what, &mut out);
            }
            (_, v) => validate(&p.schema, &from_text(&p.schema, v), &what, &mut out),
        }
    }
    for p in params.iter().filter(|p| p.location == "query" && p.required) {
        if !req.query.iter().any(|(k, _)| k == &p.name) {
            out.push(format!("query parameter `{}` is required", p.name));
        }
    }
    let body_fields: Vec<&SpecParam> = params.iter().filter(|p| p.location == "body").collect();
    let declared = spec_op.body();
    match (&req.body, &declared) {
        (None, Some((_, true))) => out.push("the spec requires a request body; none is sent".into()),
        (None, _) => {}
        (Some(_), None) => out.push("a body is sent; the spec declares none".into()),
        (Some(body), Some((schema, _))) => match body_fields.iter().find(|p| p.name == BODY_ROOT) {
            Some(root) => validate(&root.schema, body, "body", &mut out),
            None => {
                // The spec's object schema with the amended fields declared the catalog's way.
                let mut schema = schema.clone();
                let props: Map<String, Value> =
                    body_fields.iter().map(|p| (p.name.clone(), p.schema.clone())).collect();
                let required: Vec<&str> = body_fields.iter().filter(|p| p.required).map(|p| p.name.as_str()).collect();
                if let Value::Object(s) = &mut schema {
                    s.insert("type".into(), json!("object"));
                    s.insert("properties".into(), Value::Object(props.clone()));
                    s.insert("required".into(), json!(required));
                    if required.is_empty() {
                        s.remove("required");
                    }
                }
                if let Value::Object(fields) = body {
                    for k in fields.keys().filter(|k| !props.contains_key(*k)) {
                        out.push(format!("body field `{k}` is not declared by the spec"));
                    }
                }
                validate(&schema, body, "body", &mut out);
            }
        },
    }
    out
}

/// A value for a parameter: its example, else its default, else its first enum value,
/// else (for a required parameter without any) a plain value of its type.
fn value_for(p: &Param, required_only: bool) -> Option<Value> {
    if required_only && !p.required {
        return None;
    }
    let given = p.example.clone().or_else(|| p.default.clone()).or_else(|| {
        let first = p.enum_values.as_ref().and_then(|e| e.first().cloned())?;
        Some(if p.ty == ParamType::Array { json!([first]) } else { first })
    });
    given.or_else(|| {
        p.required.then(|| match p.ty {
            ParamType::String | ParamType::Any => json!("x1"),
            ParamType::Integer | ParamType::Number => json!(1),
            ParamType::Boolean => json!(true),
            ParamType::Array => match p.items {
                Some(ParamType::Integer | ParamType::Number) => json!([1]),
                Some(ParamType::Object) => json!([{}]),
                _ => json!(["x1"]),
            },
            ParamType::Object => json!({}),
        })
    })
}

/// The request the engine sends for these inputs; for a trigger, its first page.
fn rendered(op: &Operation, inputs: &Map<String, Value>) -> Result<ghl::Request, String> {
    let req = engine::build_request(op, inputs).map_err(|e| e.to_string())?;
    let Some(t) = op.trigger.as_ref() else { return Ok(req) };
    let mut opts = ghl::PageOptions::default();
    if matches!(t.pagination, Pagination::TimeWindow { .. }) {
        let now = chrono::Utc::now();
        opts.window = Some((now, now + chrono::Duration::days(7)));
    }
    let pager = ghl::Pager::new(&t.pagination, &t.items, &opts).map_err(|e| e.to_string())?;
    pager.next_request(&req).map_err(|e| e.to_string())?.ok_or_else(|| "no first page".to_string())
}

#[test]
fn every_request_flowd_renders_fits_the_official_spec() {
    let cat = Catalog::builtin().expect("catalog");
    let specs = Specs::load(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut amendments = Vec::new();
    let mut checked = 0;
    for op in cat.operations() {
        let found = specs.find(op.method.as_str(), &op.path);
        let [spec_op] = found.as_slice() else {
            failures.push(format!("{}: found {} times in the specs", op.key, found.len()));
            continue;
        };
        let (_, applied) = amended_params(op, spec_op.params());
        for (field, why) in applied {
            amendments.push(format!("{}.{field}: {why}", op.key));
        }
        // Once with every parameter the catalog has an example for, once with only the
        // required ones (a body the spec requires must still go out).
        for required_only in [false, true] {
            let inputs: Map<String, Value> =
                op.params.iter().filter_map(|p| value_for(p, required_only).map(|v| (p.name.clone(), v))).collect();
            let what = if required_only { "required inputs" } else { "example inputs" };
            match rendered(op, &inputs) {
                Err(e) => failures.push(format!("{} ({what}): cannot render: {e}", op.key)),
                Ok(req) => {
                    for p in problems(spec_op, op, &req) {
                        failures.push(format!("{} ({what}): {p}", op.key));
                    }
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 126, "{}", failures.join("\n"));
    assert!(failures.is_empty(), "{} request(s) the spec does not allow:\n{}", failures.len(), failures.join("\n"));
    // The amendments that excuse a difference, each with its reason.
    assert!(amendments.iter().all(|a| a.split_once(": ").is_some_and(|(_, why)| why.len() > 20)), "{amendments:#?}");
    assert_eq!(amendments.len(), 25, "{amendments:#?}");
}

fn spec_and_op<'a>(specs: &'a Specs, cat: &'a Catalog, key: &str) -> (SpecOp<'a>, &'a Operation) {
    let op = cat.get(key).expect("operation");
    let mut found = specs.find(op.method.as_str(), &op.path);
    (found.pop().expect("in the spec"), op)
}

/// The check itself catches what GHL refuses: wrong types, missing required fields and
/// bodies, values outside an enum, undeclared fields.
#[test]
fn a_request_the_spec_refuses_is_reported() {
    let cat = Catalog::builtin().expect("catalog");
    let specs = Specs::load(env!("CARGO_MANIFEST_DIR"));

    let (spec_op, op) = spec_and_op(&specs, &cat, "contacts.create_task");
    let good = ghl::Request::for_operation(op)
        .path_param("contactId", "c1")
        .body(json!({"title": "Call", "dueDate": "2030-01-01T10:00:00Z", "completed": false}));
    assert_eq!(problems(&spec_op, op, &good), Vec::<String>::new());

    let wrong_type = good.clone().body(json!({"title": 5, "dueDate": "2030-01-01T10:00:00Z", "completed": false}));
    let p = problems(&spec_op, op, &wrong_type);
    assert!(p.len() == 1 && p[0].starts_with("body/title") && p[0].contains("\"string\""), "{p:?}");

    let missing = good.clone().body(json!({"title": "Call", "completed": false}));
    let p = problems(&spec_op, op, &missing);
    assert!(p.len() == 1 && p[0].contains("\"dueDate\" is a required property"), "{p:?}");

    let undeclared = good.clone().body(json!({"title": "Call", "dueDate": "x", "completed": false, "colour": 1}));
    assert_eq!(problems(&spec_op, op, &undeclared), ["body field `colour` is not declared by the spec"]);

    let (spec_op, op) = spec_and_op(&specs, &cat, "calendars.delete_event");
    let no_body = ghl::Request::for_operation(op).path_param("eventId", "e1");
    assert_eq!(problems(&spec_op, op, &no_body), ["the spec requires a request body; none is sent"]);

    let (spec_op, op) = spec_and_op(&specs, &cat, "opportunities.create_opportunity");
    let body = json!({"pipelineId": "p", "locationId": "l", "name": "n", "status": "all", "contactId": "c"});
    let p = problems(&spec_op, op, &ghl::Request::for_operation(op).body(body));
    assert!(p.len() == 1 && p[0].starts_with("body/status") && p[0].contains("all"), "amended enum: {p:?}");

    let (spec_op, op) = spec_and_op(&specs, &cat, "users.filter_users_by_email");
    let numbers = json!({"companyId": "c", "emails": "a@b.c", "skip": 0, "limit": 25});
    let p = problems(&spec_op, op, &ghl::Request::for_operation(op).body(numbers));
    assert_eq!(p.len(), 2, "skip and limit are strings in the spec: {p:?}");

    let (spec_op, op) = spec_and_op(&specs, &cat, "conversations.get_messages");
    let req = ghl::Request::for_operation(op).path_param("conversationId", "c").query("limit", "many");
    let p = problems(&spec_op, op, &req);
    assert!(p.len() == 1 && p[0].starts_with("query `limit`") && p[0].contains("\"number\""), "{p:?}");
    let req = ghl::Request::for_operation(op).path_param("conversationId", "c").query("limit", 20);
    assert_eq!(problems(&spec_op, op, &req), Vec::<String>::new(), "a number in a query string is text");

    let (spec_op, op) = spec_and_op(&specs, &cat, "businesses.list_businesses");
    let p = problems(&spec_op, op, &ghl::Request::for_operation(op).query("since", 1));
    assert_eq!(p, ["query parameter `since` is not declared by the spec", "query parameter `locationId` is required"]);
}
