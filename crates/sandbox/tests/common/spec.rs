//! The official specs (read-only, in /work/shared) as the tests read them: operations by
//! "METHOD path" and schemas reduced to the keywords validation uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/ghl-api/openapi")
}

pub struct Specs {
    /// "METHOD path" → (operation, its spec file).
    pub ops: BTreeMap<String, (Value, usize)>,
    pub files: Vec<Value>,
    pub common: Value,
}

pub fn load() -> Specs {
    let mut files = Vec::new();
    let mut ops = BTreeMap::new();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(shared()).expect("the shared specs are readable").map(|e| e.expect("entry").path()).collect();
    names.sort();
    let mut common = Value::Null;
    for path in names {
        let spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("spec")).expect("spec json");
        if path.file_name().is_some_and(|n| n == "common-schemas.json") {
            common = spec.clone();
        }
        for (p, methods) in spec["paths"].as_object().into_iter().flatten() {
            for (m, op) in methods.as_object().into_iter().flatten() {
                ops.insert(format!("{} {p}", m.to_uppercase()), (op.clone(), files.len()));
            }
        }
        files.push(spec);
    }
    Specs { ops, files, common }
}

pub fn resolve<'a>(specs: &'a Specs, file: usize, r: &str) -> &'a Value {
    let name = r.rsplit('/').next().unwrap_or_default();
    if r.starts_with('#') {
        &specs.files[file]["components"]["schemas"][name]
    } else {
        &specs.common["components"]["schemas"][name]
    }
}

pub fn fits(ty: &str, v: &Value) -> bool {
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

/// A schema with its references resolved and only the keywords validation uses. A type its
/// own example contradicts (an "object" whose example is 100) is dropped: the spec's
/// declaration is wrong there and GHL evidently takes the example's form.
pub fn reduce(specs: &Specs, file: usize, node: &Value, depth: usize) -> Value {
    if depth > 12 {
        return json!({});
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        return reduce(specs, file, resolve(specs, file, r), depth + 1);
    }
    let mut out = Map::new();
    if let Some(all) = node.get("allOf").and_then(Value::as_array) {
        for branch in all {
            if let Value::Object(m) = reduce(specs, file, branch, depth + 1) {
                for (k, v) in m {
                    match (out.get_mut(&k), v) {
                        (Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
                        (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
                        (_, v) => {
                            out.insert(k, v);
                        }
                    }
                }
            }
        }
    }
    let ty = node.get("type").and_then(Value::as_str);
    let contradicted = match (ty, node.get("example")) {
        (Some(t), Some(e)) => !fits(t, e),
        _ => false,
    };
    if let (Some(t), false) = (ty, contradicted) {
        out.insert("type".into(), json!(t));
    }
    for k in ["enum", "maxLength", "minLength", "minimum", "maximum", "maxItems", "minItems"] {
        if let Some(v) = node.get(k) {
            if !contradicted || k != "enum" {
                out.insert(k.into(), v.clone());
            }
        }
    }
    if let Some(req) = node.get("required").and_then(Value::as_array) {
        if !req.is_empty() {
            out.insert("required".into(), Value::Array(req.clone()));
        }
    }
    if !contradicted {
        if let Some(items) = node.get("items") {
            out.insert("items".into(), reduce(specs, file, items, depth + 1));
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            let reduced: Map<String, Value> =
                props.iter().map(|(k, v)| (k.clone(), reduce(specs, file, v, depth + 1))).collect();
            match out.get_mut("properties") {
                Some(Value::Object(m)) => m.extend(reduced),
                _ => {
                    out.insert("properties".into(), Value::Object(reduced));
                }
            }
        }
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(branches) = node.get(k).and_then(Value::as_array) {
            let mut reduced: Vec<Value> = Vec::new();
            for b in branches {
                let r = reduce(specs, file, b, depth + 1);
                if !reduced.contains(&r) {
                    reduced.push(r);
                }
            }
            if reduced.len() == 1 {
                if let Some(Value::Object(m)) = reduced.pop() {
                    out.extend(m);
                }
            } else {
                out.insert("anyOf".into(), Value::Array(reduced));
            }
        }
    }
    Value::Object(out)
}

/// The reduced schema of the first 2xx JSON response the spec declares for an operation.
pub fn response_schema(specs: &Specs, op: &catalog::Operation) -> Option<Value> {
    let (spec_op, file) = specs.ops.get(&format!("{} {}", op.method.as_str(), op.path))?;
    let responses = spec_op["responses"].as_object()?;
    let (_, resp) = responses.iter().filter(|(c, _)| c.starts_with('2')).min_by_key(|(c, _)| c.as_str())?;
    let resp = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(specs, *file, r),
        None => resp,
    };
    let schema = resp["content"]["application/json"].get("schema")?;
    Some(reduce(specs, *file, schema, 0))
}

/// Where `v` departs from a reduced schema: types, enums, required properties, nested
/// objects and array items, all the way down.
pub fn conform(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        let mut first = None;
        for b in branches {
            let mut p = Vec::new();
            conform(b, v, path, &mut p);
            if p.is_empty() {
                return;
            }
            first.get_or_insert(p);
        }
        out.extend(first.unwrap_or_default());
        return;
    }
    if v.is_null() {
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !fits(t, v) {
            out.push(format!("{path}: {v} is not {t}"));
            return;
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(v) {
            let shown: Vec<String> = values.iter().take(8).map(Value::to_string).collect();
            out.push(format!("{path}: {v} is not one of {}", shown.join(", ")));
        }
    }
    if let Value::Object(m) = v {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                out.push(format!("{path}.{r}: missing"));
            }
        }
        for (name, sub) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
            if let Some(x) = m.get(name) {
                conform(sub, x, &format!("{path}.{name}"), out);
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, schema.get("items")) {
        for (i, x) in items.iter().enumerate() {
            conform(item_schema, x, &format!("{path}[{i}]"), out);
        }
    }
}
