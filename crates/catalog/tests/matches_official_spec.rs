//! Every built-in operation checked against the official GHL OpenAPI specs in
//! `../shared/ghl-api/openapi`: method, path, `Version` header and declared parameters.
//! A catalog entry that drifts from the spec fails here.

use catalog::{Catalog, Kind, Operation, ParamIn};
use serde_json::Value;
use std::path::PathBuf;

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/ghl-api/openapi")
}

fn load_specs() -> Vec<(String, Value)> {
    let dir = spec_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut specs = Vec::new();
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("spec readable");
            let json: Value = serde_json::from_str(&text).expect("spec is JSON");
            specs.push((path.file_name().unwrap().to_string_lossy().into_owned(), json));
        }
    }
    assert!(specs.len() > 10, "expected the GHL specs in {}", dir.display());
    specs
}

/// The spec operations with this exact method and path (there must be exactly one).
fn find<'a>(specs: &'a [(String, Value)], op: &Operation) -> Vec<(&'a str, &'a Value)> {
    specs
        .iter()
        .filter_map(|(file, spec)| {
            spec.get("paths")?.get(&op.path)?.get(op.method.as_str().to_ascii_lowercase()).map(|o| (file.as_str(), o))
        })
        .collect()
}

fn specs_of(file: &str) -> &'static Value {
    use std::sync::OnceLock;
    static SPECS: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    let specs = SPECS.get_or_init(load_specs);
    specs.iter().find(|(f, _)| f == file).map(|(_, v)| v).unwrap_or(&Value::Null)
}

fn spec_components<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    spec.get("components")?.get("schemas")?.get(name)
}

#[test]
fn method_path_and_version_match_the_official_spec() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let specs = load_specs();
    let mut problems = Vec::new();
    for op in cat.operations() {
        let found = find(&specs, op);
        let [(file, spec_op)] = found.as_slice() else {
            problems.push(format!(
                "{}: {} {} found {} times in the specs",
                op.key,
                op.method.as_str(),
                op.path,
                found.len()
            ));
            continue;
        };
        let params = spec_op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        let version = params.iter().find(|p| p["in"] == "header" && p["name"] == "Version");
        match version.and_then(|v| v["schema"]["enum"].as_array()) {
            Some(values) if !values.iter().any(|v| v == op.version.as_str()) => {
                problems.push(format!("{}: Version {} but {file} declares {values:?}", op.key, op.version))
            }
            // Two conversations endpoints declare no Version; the module's value is assumed.
            None if op.version != "2021-04-15" => {
                problems.push(format!("{}: {file} declares no Version header", op.key))
            }
            _ => {}
        }
        for p in params.iter().filter(|p| p["in"] == "path" || p["in"] == "query") {
            let name = p["name"].as_str().unwrap_or_default();
            let location = if p["in"] == "path" { ParamIn::Path } else { ParamIn::Query };
            match op.params.iter().find(|c| c.name == name && c.location == location) {
                None => problems.push(format!("{}: spec parameter `{name}` ({}) missing", op.key, p["in"])),
                Some(c) if p["required"] == true && !c.required => {
                    problems.push(format!("{}: `{name}` is required by the spec", op.key))
                }
                _ => {}
            }
        }
        if let Some(body) = spec_op.pointer("/requestBody/content") {
            // Some bodies are declared as empty objects (delete event, add to campaign).
            let declared = body.as_object().into_iter().flat_map(|m| m.values()).any(|media| {
                let schema = &media["schema"];
                let schema = match schema.get("$ref").and_then(Value::as_str) {
                    Some(r) => r.rsplit('/').next().and_then(|n| spec_components(specs_of(file), n)).unwrap_or(schema),
                    None => schema,
                };
                schema["type"] == "array" || schema["properties"].as_object().is_some_and(|p| !p.is_empty())
            });
            let ours = op.params_in(ParamIn::Body).count();
            if declared && ours == 0 && op.key != "contacts.search_contacts" {
                problems.push(format!("{}: the spec has a request body, the catalog no body params", op.key));
            }
        }
    }
    assert!(problems.is_empty(), "{} drift(s) from the spec:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn names_come_from_the_product_page() {
    let page = std::fs::read_to_string(spec_dir().join("../../seed/000_dfd7fe464afe7916.txt")).expect("seed page");
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let extras = ["conversations.send_message", "locations.update_custom_value"];
    for op in cat.operations().iter().filter(|o| !extras.contains(&o.key.as_str())) {
        let line = format!("{} - {}", op.name, op.description);
        assert!(page.contains(&op.name), "{}: name `{}` is not on the product page", op.key, op.name);
        assert!(page.contains(&op.description), "{}: `{line}` is not on the product page", op.key);
    }
}

#[test]
fn counts_per_kind_and_category() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let count =
        |kind, category: &str| cat.operations().iter().filter(|o| o.kind == kind && o.category == category).count();
    // From ../shared/ghl-api/operations-notes.md, section 1.
    let expected = [
        ("Contacts", 10, 20),
        ("Calendars & Appointments", 12, 22),
        ("Opportunities", 3, 7),
        ("Users", 4, 3),
        ("Conversations & Messages", 8, 3),
        ("Businesses", 2, 4),
        ("Workflows", 1, 2),
        ("Campaigns", 1, 0),
        ("Snapshots", 1, 0),
        ("Locations", 1, 3),
        ("Custom Fields", 1, 0),
        ("Companies", 1, 0),
        ("Associations & Relations", 5, 5),
        ("Blogs", 5, 2),
    ];
    for (category, triggers, actions) in expected {
        assert_eq!(count(Kind::Trigger, category), triggers, "triggers in {category}");
        assert_eq!(count(Kind::Action, category), actions, "actions in {category}");
    }
}
