//! Calls every catalog operation against a demo-seeded sandbox with valid inputs and checks
//! the status the spec declares and that the response holds what the catalog says.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use catalog::{Catalog, IdSource, Kind, Operation, Pagination, Shape};
use common::inputs::{request, Ids};
use common::*;
use jsonpath_rust::JsonPath;
use sandbox::{Sandbox, Seed};
use serde_json::Value;

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
