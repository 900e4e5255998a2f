//! The sandbox's request schemas (`src/body_schemas.json`, built into the binary) are the
//! official specs' request body and query schemas for the catalog's operations, reduced to
//! what validation uses. This test derives them again from /work/shared and fails on any
//! difference; `UPDATE_BODY_SCHEMAS=1 cargo test -p sandbox --test body_schemas` rewrites
//! the file.

mod common;

use std::path::PathBuf;

use catalog::Catalog;
use common::spec::{load, reduce, resolve};
use serde_json::{json, Map, Value};

/// What the catalog's flat parameters already say: a type (and enum) with nothing below it.
fn flat(schema: &Value) -> bool {
    schema.as_object().is_some_and(|m| m.keys().all(|k| k == "type" || k == "enum"))
}

fn derive() -> Value {
    let specs = load();
    let cat = Catalog::builtin().expect("catalog");
    let mut out = Map::new();
    for op in cat.operations() {
        let Some((spec_op, file)) = specs.ops.get(&format!("{} {}", op.method.as_str(), op.path)) else { continue };
        let mut entry = Map::new();
        if let Some(rb) = spec_op.get("requestBody") {
            if rb["required"].as_bool().unwrap_or(false) {
                entry.insert("bodyRequired".into(), json!(true));
            }
            if let Some(schema) = rb["content"]["application/json"].get("schema") {
                let mut body = reduce(&specs, *file, schema, 0);
                if let Some(Value::Object(props)) = body.get_mut("properties") {
                    props.retain(|_, s| !flat(s));
                }
                if let Some(m) = body.as_object_mut() {
                    m.remove("required");
                    if m.get("properties").and_then(Value::as_object).is_some_and(Map::is_empty) {
                        m.remove("properties");
                    }
                }
                if !flat(&body) {
                    entry.insert("body".into(), body);
                }
            }
        }
        let mut query = Map::new();
        for p in spec_op["parameters"].as_array().into_iter().flatten() {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(&specs, *file, r),
                None => p,
            };
            if p["in"] != "query" {
                continue;
            }
            let s = reduce(&specs, *file, &p["schema"], 0);
            if !flat(&s) {
                if let Some(name) = p["name"].as_str() {
                    query.insert(name.to_string(), s);
                }
            }
        }
        if !query.is_empty() {
            entry.insert("query".into(), Value::Object(query));
        }
        if !entry.is_empty() {
            out.insert(op.key.clone(), Value::Object(entry));
        }
    }
    Value::Object(out)
}

#[test]
fn embedded_schemas_are_the_specs() {
    let derived = derive();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/body_schemas.json");
    let text = serde_json::to_string_pretty(&derived).expect("json") + "\n";
    if std::env::var_os("UPDATE_BODY_SCHEMAS").is_some() {
        std::fs::write(&path, &text).expect("write");
    }
    let embedded = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(embedded == text, "src/body_schemas.json differs from the specs; rerun with UPDATE_BODY_SCHEMAS=1");
    // Where the sandbox refuses a missing body, flowd always sends one: a required body
    // field, or `{}` (`body_required`); and `body_required` is only where the spec requires it.
    let cat = Catalog::builtin().expect("catalog");
    for op in cat.operations() {
        let refused = derived.get(&op.key).and_then(|e| e.get("bodyRequired")).is_some();
        let always_sent =
            op.body_required || op.body_root.is_some() || op.params_in(catalog::ParamIn::Body).any(|p| p.required);
        assert!(!refused || always_sent, "{}: the sandbox requires a body flowd may not send", op.key);
        assert!(!op.body_required || refused, "{}: body_required where the spec requires none", op.key);
    }
}
