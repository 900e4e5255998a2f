//! Reading the official GHL OpenAPI specs (`../shared/ghl-api/openapi`): an operation by
//! method and path, its parameters and its request body, with `$ref`s resolved. Shared by
//! the catalog's drift test and the engine's request-conformance test.
#![allow(dead_code)]

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Every spec file, parsed.
pub struct Specs {
    pub files: Vec<(String, Value)>,
}

/// One operation of a spec file.
pub struct SpecOp<'a> {
    pub file: &'a str,
    doc: &'a Value,
    path: String,
    path_item: &'a Value,
    pub op: &'a Value,
}

/// A parameter as the spec declares it; body fields are parameters `in: body`, and a body
/// that is not an object (a bare array) is the one parameter named [`BODY_ROOT`].
#[derive(Debug, Clone)]
pub struct SpecParam {
    pub name: String,
    pub location: &'static str,
    pub required: bool,
    /// The schema with every `$ref` resolved.
    pub schema: Value,
}

pub const BODY_ROOT: &str = "(body)";

pub fn spec_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../../shared/ghl-api/openapi")
}

impl Specs {
    pub fn load(manifest_dir: &str) -> Specs {
        let dir = spec_dir(manifest_dir);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("spec readable");
                let json: Value = serde_json::from_str(&text).expect("spec is JSON");
                files.push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), json));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(files.len() > 10, "expected the GHL specs in {}", dir.display());
        Specs { files }
    }

    /// The spec operations with this exact method and path (a catalog entry needs exactly one).
    pub fn find(&self, method: &str, path: &str) -> Vec<SpecOp<'_>> {
        self.files
            .iter()
            .filter_map(|(file, doc)| {
                let item = doc.get("paths")?.get(path)?;
                let op = item.get(method.to_ascii_lowercase())?;
                Some(SpecOp { file, doc, path: path.to_string(), path_item: item, op })
            })
            .collect()
    }
}

impl SpecOp<'_> {
    /// Path and query parameters (the path item's and the operation's), then body fields.
    /// A `{placeholder}` of the path that the spec forgets to declare is a required string:
    /// the path cannot be called without it.
    pub fn params(&self) -> Vec<SpecParam> {
        let mut out: Vec<SpecParam> = Vec::new();
        let declared = [self.path_item.get("parameters"), self.op.get("parameters")];
        for p in declared.into_iter().flatten().filter_map(Value::as_array).flatten() {
            let p = resolve(self.doc, p);
            let location = match p["in"].as_str() {
                Some("path") => "path",
                Some("query") => "query",
                _ => continue,
            };
            let name = p["name"].as_str().unwrap_or_default().to_string();
            out.retain(|q| !(q.name == name && q.location == location));
            out.push(SpecParam {
                name,
                location,
                required: p["required"] == true,
                schema: p.get("schema").cloned().unwrap_or(Value::Object(Map::new())),
            });
        }
        for ph in catalog::path_placeholders(&self.path) {
            if !out.iter().any(|p| p.location == "path" && p.name == ph) {
                out.push(SpecParam {
                    name: ph.to_string(),
                    location: "path",
                    required: true,
                    schema: serde_json::json!({"type": "string"}),
                });
            }
        }
        if let Some((schema, required)) = self.body() {
            match schema.get("properties").and_then(Value::as_object) {
                Some(props) if type_of(&schema) == "object" => {
                    let req: Vec<&str> =
                        schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    for (name, s) in props {
                        out.push(SpecParam {
                            name: name.clone(),
                            location: "body",
                            required: req.contains(&name.as_str()),
                            schema: s.clone(),
                        });
                    }
                }
                _ if type_of(&schema) == "array" => {
                    out.push(SpecParam { name: BODY_ROOT.into(), location: "body", required, schema })
                }
                _ => {}
            }
        }
        out
    }

    /// The JSON request body's schema (resolved) and whether the body is required.
    pub fn body(&self) -> Option<(Value, bool)> {
        let rb = resolve(self.doc, self.op.get("requestBody")?);
        let content = rb.get("content")?.as_object()?;
        let media = content.get("application/json").or_else(|| content.values().next())?;
        Some((media.get("schema").cloned().unwrap_or(Value::Object(Map::new())), rb["required"] == true))
    }

    /// Whether the request body is JSON (not a form or file upload).
    pub fn body_is_json(&self) -> bool {
        self.op.pointer("/requestBody/content/application~1json").is_some()
    }

    pub fn version_enum(&self) -> Option<Vec<Value>> {
        let params = self.op.get("parameters")?.as_array()?;
        let v = params.iter().find(|p| p["in"] == "header" && p["name"] == "Version")?;
        v.pointer("/schema/enum")?.as_array().cloned()
    }
}

/// The schema's type as the catalog names types; `any` when the spec gives none.
pub fn type_of(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("any"),
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "any",
    }
}

/// Resolves every local `$ref` (12 references deep; a recursive schema then ends in `{}`),
/// folds a one-element `allOf` into its parent, and turns OpenAPI 3.0's `nullable: true`
/// into JSON Schema's `type: [t, "null"]`.
pub fn resolve(doc: &Value, v: &Value) -> Value {
    resolve_at(doc, v, 0)
}

fn resolve_at(doc: &Value, v: &Value, depth: usize) -> Value {
    if depth > 12 {
        return Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let target = r.strip_prefix('#').and_then(|p| doc.pointer(p)).cloned().unwrap_or(Value::Null);
                let mut out = resolve_at(doc, &target, depth + 1);
                if let Value::Object(o) = &mut out {
                    for (k, x) in m.iter().filter(|(k, _)| *k != "$ref") {
                        o.insert(k.clone(), resolve_at(doc, x, depth));
                    }
                }
                return out;
            }
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.clone(), resolve_at(doc, x, depth));
            }
            if let Some(Value::Array(all)) = out.get("allOf").cloned() {
                if all.len() == 1 {
                    out.remove("allOf");
                    if let Value::Object(inner) = &all[0] {
                        for (k, x) in inner {
                            out.entry(k.clone()).or_insert_with(|| x.clone());
                        }
                    }
                }
            }
            // `type: any` (startAfterDate) is not JSON Schema: it means no type.
            if out.get("type") == Some(&Value::String("any".into())) {
                out.remove("type");
            }
            if out.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), serde_json::json!([t, "null"]));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve_at(doc, x, depth)).collect()),
        other => other.clone(),
    }
}
