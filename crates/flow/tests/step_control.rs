//! `if:`, `for_each:`, `max_items:` and `on_error:` on steps: load-time errors at their
//! positions, what `flowd schema` says, and what inline tests see.

use std::collections::BTreeMap;

use catalog::Catalog;
use flow::{load, render_all, CompileEnv, OnError};

fn env() -> CompileEnv {
    CompileEnv { env: BTreeMap::new(), accounts: vec!["main".to_string()] }
}

const HEAD: &str =
    "name: f\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: { locationId: loc1 }\nsteps:\n";

/// The rendered diagnostics of a flow whose steps are `steps` (from line 7 on).
fn errors_of(steps: &str) -> String {
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", &format!("{HEAD}{steps}"), &cat, &env());
    let out = render_all(&diags);
    assert!(flow.is_none(), "expected errors, it compiled:\n{out}");
    out
}

const TAG: &str = "    uses: contacts.add_tags\n    with: { contactId: c1, tags: [x] }\n";

#[test]
fn unknown_step_key_is_reported_with_a_suggestion() {
    let out = errors_of(&format!("  - id: a\n    for_eahc: \"{{{{ trigger.tags }}}}\"\n{TAG}"));
    assert!(out.contains("f.yaml:8:5: error: unknown key `for_eahc` in a step"), "{out}");
    assert!(out.contains("for_each"), "{out}");
}

#[test]
fn if_referring_to_a_later_or_unknown_step_is_an_error_at_its_position() {
    let later = errors_of(&format!("  - id: a\n    if: \"{{{{ steps.b.id }}}}\"\n{TAG}  - id: b\n{TAG}"));
    assert!(later.contains("f.yaml:8:9: error: `steps.b` refers to a step that has not run yet"), "{later}");
    let unknown = errors_of(&format!("  - id: a\n{TAG}  - id: b\n    if: \"{{{{ steps.z.id }}}}\"\n{TAG}"));
    assert!(unknown.contains("f.yaml:11:9: error: `steps.z` refers to an unknown step"), "{unknown}");
    let own = errors_of(&format!("  - id: a\n    if: \"{{{{ steps.a }}}}\"\n{TAG}"));
    assert!(own.contains("f.yaml:8:9: error: `steps.a` refers to a step that has not run yet"), "{own}");
}

#[test]
fn for_each_must_be_a_template() {
    let literal = errors_of(&format!("  - id: a\n    for_each: tags\n{TAG}"));
    assert!(literal.contains("f.yaml:8:15: error: `for_each: tags` is not a template"), "{literal}");
    let list = errors_of(&format!("  - id: a\n    for_each: [a, b]\n{TAG}"));
    assert!(
        list.contains("f.yaml:8:15: error: `for_each` must be a template that yields a list, found a list"),
        "{list}"
    );
    let field = errors_of(&format!("  - id: a\n    for_each: \"{{{{ trigger.tagz }}}}\"\n{TAG}"));
    assert!(field.contains("f.yaml:8:15: error: `trigger.tagz`: the trigger's items have no field `tagz`"), "{field}");
}

#[test]
fn max_items_out_of_range_or_without_for_each() {
    let each = "  - id: a\n    for_each: \"{{ trigger.tags }}\"\n";
    for bad in ["0", "1001", "-3", "many"] {
        let out = errors_of(&format!("{each}    max_items: {bad}\n{TAG}"));
        assert!(out.contains("f.yaml:9:16: error: `max_items` must be an integer from 1 to 1000"), "{bad}: {out}");
    }
    let alone = errors_of(&format!("  - id: a\n    max_items: 5\n{TAG}"));
    assert!(alone.contains("f.yaml:8:16: error: `max_items` bounds a `for_each` step"), "{alone}");
}

#[test]
fn item_only_inside_for_each_and_not_in_its_if() {
    let outside =
        errors_of("  - id: a\n    uses: contacts.add_tags\n    with: { contactId: \"{{ item }}\", tags: [x] }\n");
    assert!(
        outside.contains("f.yaml:9:24: error: `item` is only set in the `with` of a step with `for_each`"),
        "{outside}"
    );
    let in_if =
        errors_of(&format!("  - id: a\n    for_each: \"{{{{ trigger.tags }}}}\"\n    if: \"{{{{ index }}}}\"\n{TAG}"));
    assert!(in_if.contains("f.yaml:9:9: error: `index` is only set in the `with`"), "{in_if}");
}

#[test]
fn on_error_takes_fail_or_continue() {
    let out = errors_of(&format!("  - id: a\n    on_error: ignore\n{TAG}"));
    assert!(out.contains("f.yaml:8:15: error: unknown `on_error: ignore`"), "{out}");
    assert!(out.contains("`fail` (the default) or `continue`"), "{out}");
}

#[test]
fn control_keys_compile_into_the_step() {
    let text = format!(
        "{HEAD}  - id: a\n    for_each: \"{{{{ trigger.tags }}}}\"\n    max_items: 7\n    on_error: continue\n    if: \"{{{{ trigger.email }}}}\"\n    uses: contacts.add_tags\n    with: {{ contactId: \"{{{{ trigger.id }}}}\", tags: [\"{{{{ item }}}}\"] }}\n  - id: b\n{TAG}"
    );
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", &text, &cat, &env());
    let flow = flow.unwrap_or_else(|| panic!("{}", render_all(&diags)));
    let a = &flow.steps[0].control;
    assert_eq!(a.for_each.as_ref().map(|f| f.max_items), Some(7));
    assert_eq!(a.on_error, OnError::Continue);
    assert!(a.when.is_some() && !a.is_plain());
    assert!(flow.steps[1].control.is_plain());
    let default = flow::DEFAULT_MAX_ITEMS as usize;
    let (flow, _) = load("f.yaml", &text.replace("    max_items: 7\n", ""), &cat, &env());
    assert_eq!(flow.and_then(|f| f.steps[0].control.for_each.as_ref().map(|f| f.max_items)), Some(default));
}

#[test]
fn schema_describes_the_control_keys() {
    let s = flow::json_schema();
    let step = &s["properties"]["steps"]["items"]["properties"];
    assert_eq!(step["on_error"]["enum"], serde_json::json!(["fail", "continue"]));
    assert_eq!(step["max_items"]["maximum"], 1000);
    assert!(step["if"]["description"].as_str().is_some_and(|d| d.contains("skipped")));
    assert!(step["for_each"]["description"].as_str().is_some_and(|d| d.contains("item")));
}

/// An inline test sees a skipped step as `{skipped: true}` and a `for_each` step as the
/// list of its elements' inputs; expecting otherwise fails with what happened.
#[test]
fn inline_tests_show_skipped_steps_and_elements() {
    let text = format!(
        "{HEAD}  - id: find\n    uses: contacts.find_contact\n    with: {{ locationId: loc1, email: \"{{{{ trigger.email }}}}\" }}\n  - id: create\n    if: \"{{{{ not steps.find.contact }}}}\"\n    uses: contacts.create_contact\n    with: {{ locationId: loc1, email: \"{{{{ trigger.email }}}}\" }}\n  - id: tag\n    for_each: \"{{{{ trigger.tags }}}}\"\n{TAG}tests:\n  - item: {{ email: a@b.c, tags: [x, y] }}\n    results: {{ find: {{ contact: {{ id: c1 }} }} }}\n    expect:\n      create: {{ email: a@b.c }}\n      tag: [{{ contactId: c1 }}]\n"
    );
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", &text, &cat, &env());
    let flow = flow.unwrap_or_else(|| panic!("{}", render_all(&diags)));
    let now = chrono::Utc::now();
    let outcome = flow.run_test(&flow.tests[0], serde_json::json!({"name": "main"}), &BTreeMap::new(), now);
    assert_eq!(
        outcome.failures,
        vec!["step `create` was skipped by its `if:`".to_string(), "tag: expected 1 element(s), got 2".to_string()]
    );
    assert_eq!(outcome.rendered[1], ("create".to_string(), flow::skipped_result()));
    assert_eq!(outcome.rendered[2].1.as_array().map(Vec::len), Some(2));
}
