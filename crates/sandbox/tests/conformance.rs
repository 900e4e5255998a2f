//! Calls every catalog operation against a demo-seeded sandbox with valid inputs and checks
//! the status the spec declares and that the response holds what the catalog says.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use catalog::{Catalog, IdSource, Kind, Operation, Pagination, Shape};
use common::inputs::{request, text, value_for, wanted, Ids};
use common::*;
use jsonpath_rust::JsonPath;
use sandbox::{Sandbox, Seed};
use serde_json::{json, Value};

/// The first 2xx status each spec operation declares, keyed by "METHOD path".
fn spec_statuses() -> HashMap<String, u16> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/ghl-api/openapi");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("the shared specs are readable") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("spec text");
        let spec: Value = serde_json::from_str(&text).expect("spec json");
        let Some(paths) = spec["paths"].as_object() else { continue };
        for (p, ops) in paths {
            for (m, op) in ops.as_object().into_iter().flatten() {
                let codes =
                    op["responses"].as_object().map(|r| r.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
                if let Some(code) =
                    codes.iter().filter_map(|c| c.parse::<u16>().ok()).filter(|c| (200..300).contains(c)).min()
                {
                    out.insert(format!("{} {p}", m.to_uppercase()), code);
                }
            }
        }
    }
    out
}

async fn call(c: &reqwest::Client, sb: &Sandbox, op: &Operation, ids: &Ids) -> (u16, Option<String>, Vec<u8>) {
    let resp = request(c, sb, op, ids, &[]).send().await.expect("response");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
    let bytes = resp.bytes().await.expect("body").to_vec();
    (status, ct, bytes)
}

fn check_trigger(op: &Operation, body: &Value) -> Result<(), String> {
    let t = op.trigger.as_ref().ok_or("no trigger spec")?;
    // Catalog defect: list-shaped triggers whose items path is `$` over a bare array.
    let items_path =
        if t.shape == Shape::List && t.items == "$" && body.is_array() { "$[*]" } else { t.items.as_str() };
    let items: Vec<&Value> = body.query(items_path).map_err(|e| format!("bad items path {items_path}: {e}"))?;
    if items.is_empty() {
        return Err(format!("items path {items_path} selects nothing in {body}"));
    }
    if t.shape == Shape::Single && items.len() != 1 {
        return Err(format!("single-record trigger selected {} items", items.len()));
    }
    if let IdSource::Field(f) = &t.id {
        for item in &items {
            if item.get(f).is_none_or(Value::is_null) {
                return Err(format!("an item lacks its id field `{f}`: {item}"));
            }
        }
    }
    if let Some(updated) = &t.updated {
        if items.iter().any(|i| i.get(updated).is_none()) {
            return Err(format!("an item lacks its change marker `{updated}`"));
        }
    }
    Ok(())
}

fn check_action(op: &Operation, body: &Value) -> Result<(), String> {
    let a = op.action.as_ref().ok_or("no action spec")?;
    let found = body.query(&a.result).map_err(|e| format!("bad result path {}: {e}", a.result))?;
    if found.is_empty() || found.iter().all(|v| v.is_null()) {
        return Err(format!("result path {} resolves to nothing in {body}", a.result));
    }
    for key in &a.response_keys {
        if let Some(obj) = body.as_object() {
            if !obj.contains_key(key) {
                return Err(format!("response lacks key `{key}`: {body}"));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_catalog_operation_answers_as_documented() {
    let cat = Catalog::builtin().expect("catalog");
    let statuses = spec_statuses();
    let sb = start(Seed::Demo).await;
    let c = client();
    let mut failures = Vec::new();
    let mut served = std::collections::BTreeSet::new();
    // A fresh demo account per operation, so deletes cannot starve later calls.
    for op in cat.operations() {
        sb.reset(Seed::Demo);
        let ids = Ids::of(&sb);
        let (status, ct, bytes) = call(&c, &sb, op, &ids).await;
        served.extend(sb.requests().iter().filter_map(|r| r["op"].as_str().map(String::from)));
        let expected = statuses.get(&format!("{} {}", op.method.as_str(), op.path)).copied().unwrap_or(200);
        if status != expected {
            failures.push(format!(
                "{}: status {status}, spec says {expected}: {}",
                op.key,
                String::from_utf8_lossy(&bytes)
            ));
            continue;
        }
        let is_file = op.trigger.as_ref().is_some_and(|t| t.pagination == Pagination::SingleFile);
        if is_file || op.response_type.is_some() {
            let json = ct.as_deref().is_some_and(|c| c.starts_with("application/json"));
            let declared =
                op.response_type.as_deref().is_none_or(|rt| ct.as_deref().is_some_and(|c| c.starts_with(rt)));
            if json || !declared || bytes.is_empty() {
                failures.push(format!("{}: expected a file download, got {ct:?} ({} bytes)", op.key, bytes.len()));
            }
            continue;
        }
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: body is not JSON: {e}", op.key));
                continue;
            }
        };
        let check = match op.kind {
            Kind::Trigger => check_trigger(op, &body),
            Kind::Action => check_action(op, &body),
        };
        if let Err(e) = check {
            failures.push(format!("{}: {e}", op.key));
        }
    }
    assert!(failures.is_empty(), "{} of {} operations failed:\n{}", failures.len(), cat.len(), failures.join("\n"));
    // Two operations share `GET /contacts/search/duplicate`; the log names the first.
    assert!(served.len() >= cat.len() - 1, "served {} distinct operations", served.len());
}

async fn problems(rb: reqwest::RequestBuilder) -> (u16, Vec<String>, Value) {
    let (status, body) = send(rb).await;
    let msgs = body["message"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    (status, msgs, body)
}

/// Request bodies GHL refuses below the top level, and bounds it enforces, each answered
/// with class-validator's message and NestJS's nested path; nothing refused is stored.
#[tokio::test]
async fn nested_bodies_and_bounds_are_validated_as_ghl_does() {
    let cat = Catalog::builtin().expect("catalog");
    let sb = start(Seed::Demo).await;
    let c = client();
    let ids = Ids::of(&sb);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("contacts.update_contact", "tags", json!([1, 2]), "each value in tags must be a string"),
        (
            "contacts.update_contact",
            "dndSettings",
            json!({"Call": {"status": "bogus"}}),
            "dndSettings.Call.status must be one of the following values: active, inactive, permanent",
        ),
        ("contacts.update_contact", "dndSettings", json!({"SMS": {"message": "m"}}), "dndSettings.SMS.status should not be empty"),
        ("contacts.upsert_contact", "customFields", json!([{"key": "k", "field_value": "v"}]), "customFields.0.id should not be empty"),
        ("contacts.create_contact", "tags", json!(["ok", 3]), "each value in tags must be a string"),
        ("users.update_user", "permissions", json!({"contactsEnabled": "yes"}), "permissions.contactsEnabled must be a boolean value"),
        (
            "calendars.create_calendar_notification",
            "items",
            json!([{"receiverType": "bogus", "channel": "email", "notificationType": "booked"}]),
            "items.0.receiverType must be one of the following values: contact, guest, assignedUser, emails, phoneNumbers, business",
        ),
        (
            "calendars.create_calendar_notification",
            "items",
            json!([{"receiverType": "contact", "notificationType": "booked"}]),
            "items.0.channel should not be empty",
        ),
        (
            "calendars.update_calendar_notification",
            "receiverType",
            json!("bogus"),
            "receiverType must be one of the following values: contact, guest, assignedUser, emails, phoneNumbers, business",
        ),
        (
            "calendars.create_appointment_note",
            "body",
            json!("n".repeat(5001)),
            "body must be shorter than or equal to 5000 characters",
        ),
        ("calendars.list_appointment_notes", "offset", json!(-1), "offset must not be less than 0"),
        ("calendars.list_appointment_notes", "limit", json!(21), "limit must not be greater than 20"),
    ];
    let mut failures = Vec::new();
    for (key, name, value, expected) in cases {
        let op = cat.get(key).expect("op");
        let before = sb.requests().len();
        let (status, msgs, body) = problems(request(&c, &sb, op, &ids, &[(name.to_string(), value.clone())])).await;
        if status != 422 || !msgs.iter().any(|m| m == expected) {
            let shown: String = body.to_string().chars().take(300).collect();
            failures.push(format!("{key} {name}: {status} {shown}, wanted 422 with `{expected}`"));
        }
        assert!(sb.requests().len() > before);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let contact = ids.get("contact");
    let stored = sb.records("contacts").into_iter().find(|r| r["id"] == contact).expect("contact");
    assert!(stored["tags"].as_array().is_none_or(|t| t.iter().all(Value::is_string)), "{stored}");
}

/// The path of an operation with the demo ids filled in.
fn path_of(op: &Operation, ids: &Ids, sb: &Sandbox) -> String {
    let mut path = op.path.clone();
    for p in op.params.iter().filter(|p| p.location == catalog::ParamIn::Path && wanted(op, p)) {
        path = path.replace(&format!("{{{}}}", p.name), &text(&value_for(op, p, ids, sb)));
    }
    path
}

/// A body that is not a JSON object is refused before validation (body-parser's strict mode:
/// 400), an array where an object is declared fails validation (422), and an operation whose
/// spec requires a body is refused without one (422).
#[tokio::test]
async fn bodies_of_the_wrong_shape_or_missing_are_refused() {
    let cat = Catalog::builtin().expect("catalog");
    let specs = common::spec::load();
    let sb = start(Seed::Demo).await;
    let c = client();
    let ids = Ids::of(&sb);
    let update = cat.get("contacts.update_contact").expect("op");
    let url = format!("{}{}", sb.base_url(), path_of(update, &ids, &sb));
    let mut failures = Vec::new();
    for (raw, want) in
        [("5", 400), ("\"x\"", 400), ("null", 400), ("true", 400), ("[]", 422), ("[{\"firstName\": \"A\"}]", 422)]
    {
        let rb = c
            .put(&url)
            .bearer_auth(TOKEN)
            .header("Version", &update.version)
            .header("content-type", "application/json")
            .body(raw);
        let (status, body) = send(rb).await;
        if status != want || body["statusCode"] != want {
            failures.push(format!("PUT /contacts/{{id}} with {raw}: {status} {body}, wanted {want}"));
        }
    }
    let mut required = 0;
    for op in cat.operations() {
        let Some((spec_op, _)) = specs.ops.get(&format!("{} {}", op.method.as_str(), op.path)) else { continue };
        if spec_op["requestBody"]["required"] != true
            || ["calendars.delete_event", "contacts.add_to_campaign", "workflows.remove_contact_from_workflow"]
                .contains(&op.key.as_str())
        {
            continue;
        }
        required += 1;
        sb.reset(Seed::Demo);
        let ids = Ids::of(&sb);
        let method = reqwest::Method::from_bytes(op.method.as_str().as_bytes()).expect("method");
        let token = if op.tokens.is_empty() || op.tokens.contains(&catalog::TokenKind::Location) {
            TOKEN
        } else {
            AGENCY_TOKEN
        };
        let mut query: Vec<(String, String)> = Vec::new();
        for p in op.params.iter().filter(|p| p.location == catalog::ParamIn::Query && wanted(op, p)) {
            query.push((p.name.clone(), text(&value_for(op, p, &ids, &sb))));
        }
        let rb = c
            .request(method, format!("{}{}", sb.base_url(), path_of(op, &ids, &sb)))
            .bearer_auth(token)
            .header("Version", &op.version)
            .query(&query);
        let (status, body) = send(rb).await;
        if status != 422 {
            failures.push(format!("{} without a body: {status} {body}", op.key));
        }
    }
    assert!(required > 40, "{required} operations require a body");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Fields where the spec's response schema is known to be wrong, with the form GHL answers:
/// a user's `scopes` is declared as one scope string, while users are created and updated
/// with a list of scopes and answer with that list; pipeline stages are declared as arrays of
/// arrays, while each stage is an object (`{id, name, position}`).
const RESPONSE_AMENDMENTS: &[(&str, &str)] = &[("users.", ".scopes:"), ("opportunities.list_pipelines", ".stages[")];

fn amended(op: &str, problem: &str) -> bool {
    RESPONSE_AMENDMENTS.iter().any(|(o, p)| op.starts_with(o) && problem.contains(p))
}

/// The responses of the operations below, checked against the spec's response schemas
/// (types, enums and required fields at every depth), on demo data and after writes.
#[tokio::test]
async fn responses_have_the_specs_shapes() {
    let cat = Catalog::builtin().expect("catalog");
    let specs = common::spec::load();
    let sb = start(Seed::Demo).await;
    let c = client();
    let keys: Vec<&str> = match std::env::var("SHAPES_ALL") {
        Ok(_) => cat.operations().iter().map(|o| o.key.as_str()).collect(),
        Err(_) => vec![
            "conversations.get_conversation",
            "conversations.search_conversations",
            "opportunities.list_pipelines",
            "opportunities.upsert_opportunity",
            "opportunities.get_opportunity",
            "calendars.get_appointment",
            "calendars.list_calendar_events",
            "calendars.create_appointment",
            "calendars.update_appointment",
            "users.get_user",
            "users.list_users_by_location",
            "users.search_users",
            "users.create_user",
            "users.update_user",
        ],
    };
    let mut failures = Vec::new();
    for key in keys {
        let op = cat.get(key).expect("op");
        let Some(schema) = common::spec::response_schema(&specs, op) else { continue };
        sb.reset(Seed::Demo);
        let ids = Ids::of(&sb);
        let (status, body) = send(request(&c, &sb, op, &ids, &[])).await;
        if !(200..300).contains(&status) {
            failures.push(format!("{key}: status {status} {body}"));
            continue;
        }
        let mut out = Vec::new();
        common::spec::conform(&schema, &body, "$", &mut out);
        out.retain(|p| !amended(key, p));
        failures.extend(out.into_iter().map(|p| format!("{key}: {p}")));
        if key.starts_with("users.") && key != "users.delete_user" {
            let users = body.get("users").and_then(Value::as_array).cloned().unwrap_or_else(|| vec![body.clone()]);
            if users.iter().any(|u| !u["scopes"].is_array()) {
                failures.push(format!("{key}: scopes are not always a list: {body}"));
            }
        }
    }
    // An upserted value is answered in the type the spec declares, later reads included.
    sb.reset(Seed::Demo);
    let ids = Ids::of(&sb);
    let upsert = cat.get("opportunities.upsert_opportunity").expect("op");
    let (status, body) = send(request(&c, &sb, upsert, &ids, &[("monetaryValue".into(), json!("220"))])).await;
    assert_eq!(status, 422, "GHL takes monetaryValue as a number: {body}");
    let (status, body) = send(request(&c, &sb, upsert, &ids, &[("monetaryValue".into(), json!(220))])).await;
    assert!((200..300).contains(&status), "{body}");
    let id = body["opportunity"]["id"].as_str().expect("id").to_string();
    let (_, got) = get(&c, &sb, &format!("/opportunities/{id}"), V_CONTACTS).await;
    assert_eq!(got["opportunity"]["monetaryValue"], json!(220), "{got}");
    assert!(failures.is_empty(), "{} departures from the spec:\n{}", failures.len(), failures.join("\n"));
}
