//! Every built-in operation checked against the official GHL OpenAPI specs in
//! `../shared/ghl-api/openapi`: method, path, `Version` header, and every parameter and
//! body field with its type, whether it is required and its enum. A catalog entry that
//! drifts from the spec fails here, except for the deliberate amendments listed in
//! [`AMENDMENTS`], each of which the catalog marks with `amended: <why>`.

mod common;

use catalog::{Catalog, Kind, Operation, Param, ParamIn, ParamType};
use common::spec::{type_of, SpecOp, SpecParam, Specs, BODY_ROOT};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn spec_dir() -> PathBuf {
    common::spec::spec_dir(env!("CARGO_MANIFEST_DIR"))
}

/// Where the catalog deliberately differs from the spec: (operation, parameter, what
/// differs). The reasons are data, in the catalog (`amended:`), and `flowd catalog show`
/// prints them. This list is exactly the set of differences the test finds.
const AMENDMENTS: &[(&str, &str, &[Aspect])] = &[
    // Send Message: as the spec has it, an SMS cannot be written.
    ("conversations.send_message", "status", &[Aspect::Required]),
    ("conversations.send_message", "subType", &[Aspect::Type, Aspect::Required]),
    // Typed `object` where GHL takes a scalar (the spec's own examples are scalars).
    ("contacts.create_contact", "dateOfBirth", &[Aspect::Type]),
    ("contacts.update_contact", "dateOfBirth", &[Aspect::Type]),
    ("contacts.upsert_contact", "dateOfBirth", &[Aspect::Type]),
    ("opportunities.upsert_opportunity", "monetaryValue", &[Aspect::Type]),
    ("associations.create_association", "firstObjectLabel", &[Aspect::Type]),
    ("associations.create_association", "firstObjectKey", &[Aspect::Type]),
    ("associations.create_association", "secondObjectLabel", &[Aspect::Type]),
    ("associations.create_association", "secondObjectKey", &[Aspect::Type]),
    ("associations.update_association", "firstObjectLabel", &[Aspect::Type]),
    ("associations.update_association", "secondObjectLabel", &[Aspect::Type]),
    // `all` is a search filter; GHL refuses it on writes.
    ("opportunities.create_opportunity", "status", &[Aspect::Enum]),
    ("opportunities.update_opportunity", "status", &[Aspect::Enum]),
    ("opportunities.update_opportunity_status", "status", &[Aspect::Enum]),
    ("opportunities.upsert_opportunity", "status", &[Aspect::Enum]),
    // A path parameter the spec marks optional.
    ("associations.get_association_by_object_key", "objectKey", &[Aspect::Required]),
    // A path parameter the spec leaves undeclared; its description gives the values.
    ("contacts.bulk_update_tags", "type", &[Aspect::Enum]),
    // The search body is documented outside the spec (docs/contacts-search.md).
    ("contacts.search_contacts", "locationId", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "query", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "filters", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "sort", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "page", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "pageLimit", &[Aspect::NotInSpec]),
    ("contacts.search_contacts", "searchAfter", &[Aspect::NotInSpec]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Aspect {
    Type,
    Required,
    Enum,
    NotInSpec,
}

fn catalog_location(p: &SpecParam) -> ParamIn {
    match p.location {
        "path" => ParamIn::Path,
        "query" => ParamIn::Query,
        _ => ParamIn::Body,
    }
}

/// How a catalog parameter differs from the spec's declaration of it.
fn differences(c: &Param, s: &SpecParam) -> BTreeSet<Aspect> {
    let mut out = BTreeSet::new();
    let spec_ty = type_of(&s.schema);
    let item_ty = s.schema.get("items").map(type_of);
    let ours_items = c.items.map(ParamType::as_str);
    if spec_ty != c.ty.as_str() || (spec_ty == "array" && item_ty.unwrap_or("any") != ours_items.unwrap_or("any")) {
        out.insert(Aspect::Type);
    }
    if s.required != c.required {
        out.insert(Aspect::Required);
    }
    let spec_enum = s.schema.get("enum").or_else(|| s.schema.pointer("/items/enum")).and_then(Value::as_array);
    if spec_enum != c.enum_values.as_ref() {
        out.insert(Aspect::Enum);
    }
    out
}

/// The catalog parameter a spec parameter corresponds to (a bare-array body is the
/// catalog's `body_root` parameter).
fn counterpart<'a>(op: &'a Operation, s: &SpecParam) -> Option<&'a Param> {
    if s.name == BODY_ROOT {
        return op.body_root.as_deref().and_then(|r| op.param(r));
    }
    op.params.iter().find(|c| c.name == s.name && c.location == catalog_location(s))
}

fn the_spec_op<'a>(specs: &'a Specs, op: &Operation, problems: &mut Vec<String>) -> Option<SpecOp<'a>> {
    let mut found = specs.find(op.method.as_str(), &op.path);
    if found.len() != 1 {
        problems.push(format!(
            "{}: {} {} found {} times in the specs",
            op.key,
            op.method.as_str(),
            op.path,
            found.len()
        ));
        return None;
    }
    found.pop()
}

#[test]
fn method_path_and_version_match_the_official_spec() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let specs = Specs::load(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for op in cat.operations() {
        let Some(spec_op) = the_spec_op(&specs, op, &mut problems) else { continue };
        match spec_op.version_enum() {
            Some(values) if !values.iter().any(|v| v == op.version.as_str()) => {
                problems.push(format!("{}: Version {} but {} declares {values:?}", op.key, op.version, spec_op.file))
            }
            // Two conversations endpoints declare no Version; the module's value is assumed.
            None if op.version != "2021-04-15" => {
                problems.push(format!("{}: {} declares no Version header", op.key, spec_op.file))
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{} drift(s) from the spec:\n{}", problems.len(), problems.join("\n"));
}

/// Every parameter and body field, both ways: declared by the spec but missing here, here
/// but not in the spec, or with another type, required flag or enum. What differs must be
/// exactly what [`AMENDMENTS`] lists, and exactly the parameters the catalog marks `amended`.
#[test]
fn parameters_match_the_official_spec_except_the_listed_amendments() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let specs = Specs::load(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut found: BTreeMap<(String, String), BTreeSet<Aspect>> = BTreeMap::new();
    for op in cat.operations() {
        let Some(spec_op) = the_spec_op(&specs, op, &mut problems) else { continue };
        let spec_params = spec_op.params();
        for s in &spec_params {
            match counterpart(op, s) {
                None => problems.push(format!("{}: spec {} parameter `{}` is missing", op.key, s.location, s.name)),
                Some(c) => {
                    let d = differences(c, s);
                    if !d.is_empty() {
                        found.insert((op.key.clone(), c.name.clone()), d);
                    }
                }
            }
        }
        for c in &op.params {
            let in_spec = spec_params.iter().any(|s| counterpart(op, s).is_some_and(|x| std::ptr::eq(x, c)));
            if !in_spec {
                found.insert((op.key.clone(), c.name.clone()), BTreeSet::from([Aspect::NotInSpec]));
            }
        }
        // A body the spec requires goes out even with no field given (as `{}`).
        let body_required = spec_op.body().is_some_and(|(_, required)| required);
        let always_has_body = op.params_in(ParamIn::Body).any(|p| p.required);
        if body_required && !always_has_body && !op.body_required {
            problems.push(format!("{}: the spec requires a body; set `body_required: true`", op.key));
        }
        if op.body_required && !body_required {
            problems.push(format!("{}: `body_required` but the spec's body is optional", op.key));
        }
    }
    let listed: BTreeMap<(String, String), BTreeSet<Aspect>> = AMENDMENTS
        .iter()
        .map(|(op, field, aspects)| ((op.to_string(), field.to_string()), aspects.iter().copied().collect()))
        .collect();
    assert_eq!(listed.len(), AMENDMENTS.len(), "an amendment is listed twice");
    for (key, aspects) in &found {
        match listed.get(key) {
            None => problems
                .push(format!("{}.{}: differs from the spec ({aspects:?}) and is not an amendment", key.0, key.1)),
            Some(l) if l != aspects => {
                problems.push(format!("{}.{}: differs in {aspects:?}, the amendment lists {l:?}", key.0, key.1))
            }
            _ => {}
        }
    }
    for key in listed.keys().filter(|k| !found.contains_key(*k)) {
        problems.push(format!("{}.{}: listed as an amendment but matches the spec", key.0, key.1));
    }
    let marked: BTreeSet<(String, String)> = cat
        .operations()
        .iter()
        .flat_map(|op| op.amendments().into_iter().map(|(field, _)| (op.key.clone(), field.to_string())))
        .collect();
    let listed_keys: BTreeSet<(String, String)> = listed.keys().cloned().collect();
    for k in listed_keys.difference(&marked) {
        problems.push(format!("{}.{}: an amendment without `amended: <why>` in the catalog", k.0, k.1));
    }
    for k in marked.difference(&listed_keys) {
        problems.push(format!("{}.{}: marked `amended` in the catalog but not listed here", k.0, k.1));
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
