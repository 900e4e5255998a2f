//! `flowd catalog ...` as a user runs it: the built binary, its output and exit codes.

mod support;

use std::process::{Command, Output};

fn flowd(args: &[&str]) -> Output {
    Command::new(support::flowd_bin()).args(args).output().expect("flowd runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn list_json_has_126_operations_in_14_categories() {
    let out = flowd(&["catalog", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ops: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    assert_eq!(ops.len(), 126);
    let kind = |k: &str| ops.iter().filter(|o| o["kind"] == k).count();
    assert_eq!((kind("trigger"), kind("action")), (55, 71));
    let categories: std::collections::BTreeSet<&str> = ops.iter().filter_map(|o| o["category"].as_str()).collect();
    assert_eq!(categories.len(), 14);
    for o in &ops {
        for field in ["key", "name", "kind", "category", "method", "path"] {
            assert!(o[field].as_str().is_some_and(|s| !s.is_empty()), "{o} lacks {field}");
        }
    }
}

#[test]
fn list_filters_by_kind_and_category() {
    let out = flowd(&["catalog", "list", "--kind", "action", "--category", "blogs", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ops: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    let keys: Vec<&str> = ops.iter().filter_map(|o| o["key"].as_str()).collect();
    assert_eq!(keys, ["blogs.create_post", "blogs.update_post"]);

    let table = stdout(&flowd(&["catalog", "list", "--category", "Custom Fields"]));
    assert!(table.starts_with("KEY"), "{table}");
    assert!(table.contains("custom_fields.list_custom_fields"), "{table}");
    assert!(table.trim_end().ends_with("1 operations: 1 triggers, 0 actions"), "{table}");
}

#[test]
fn unknown_category_suggests_and_fails() {
    let out = flowd(&["catalog", "list", "--category", "Contcts"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown category `Contcts`; did you mean `Contacts`"), "{}", stderr(&out));
}

#[test]
fn show_prints_the_full_definition() {
    let out = flowd(&["catalog", "show", "contacts.create_task", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let op: catalog::Operation = serde_json::from_slice(&out.stdout).expect("an operation");
    let builtin = catalog::Catalog::builtin().expect("builtin");
    assert_eq!(Some(&op), builtin.get("contacts.create_task"));

    let yaml = stdout(&flowd(&["catalog", "show", "contacts.create_task"]));
    assert!(yaml.contains("path: /contacts/{contactId}/tasks"), "{yaml}");
    assert!(yaml.contains("result: $.task"), "{yaml}");
}

/// Where the catalog deliberately departs from GHL's spec, `show` says so and why.
#[test]
fn show_marks_amended_parameters_and_says_why() {
    let out = flowd(&["catalog", "show", "conversations.send_message"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    let marks: Vec<&str> = yaml.lines().filter(|l| l.starts_with("# amended: ")).collect();
    assert_eq!(marks.len(), 2, "{yaml}");
    assert!(
        marks[0].starts_with("# amended: `subType` (body string, differs from the spec): The spec types"),
        "{yaml}"
    );
    assert!(marks[1].starts_with("# amended: `status` (body string, differs from the spec): The spec lists"), "{yaml}");

    let plain = stdout(&flowd(&["catalog", "show", "contacts.create_task"]));
    assert!(!plain.contains("amended"), "{plain}");
}

#[test]
fn show_unknown_key_suggests_nearest_and_exits_non_zero() {
    let out = flowd(&["catalog", "show", "contacts.creat_task"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: unknown operation `contacts.creat_task`; did you mean `contacts.create_task`"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn catalog_dir_adds_operations_and_reports_broken_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("acme.yaml"),
        "operations:\n  - key: acme.ping\n    name: Ping\n    description: Ping my app\n    kind: action\n    category: Contacts\n    method: GET\n    path: /ping\n    version: '2021-07-28'\n    action: { result: $ }\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf-8 path");
    let out = flowd(&["--catalog-dir", d, "catalog", "show", "acme.ping", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::write(dir.path().join("broken.yaml"), "operations:\n  - key: acme.pong\n    nme: Pong\n").expect("write");
    let out = flowd(&["--catalog-dir", d, "catalog", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("broken.yaml:3:5: unknown field `nme`; did you mean `name`?"), "{err}");
}

/// `show` says which triggers can fan out over a parent, and which can be one.
#[test]
fn show_says_which_triggers_fan_out() {
    let tasks = stdout(&flowd(&["catalog", "show", "contacts.get_contact_tasks"]));
    assert!(tasks.contains("# fans out: `for_each_record: { of: <parent> }`"), "{tasks}");
    assert!(tasks.contains("`contactId: \"{{ parent.id }}\"`"), "{tasks}");
    assert!(tasks.contains("at most 51 requests"), "{tasks}");
    let search = stdout(&flowd(&["catalog", "show", "contacts.search_contacts"]));
    assert!(search.contains("# can be the parent of a fan-out"), "{search}");
    let one = stdout(&flowd(&["catalog", "show", "contacts.get_contact"]));
    assert!(!one.contains("fan"), "{one}");
}
