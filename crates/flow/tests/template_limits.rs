//! Templates that could take the service down are refused when the flow loads, with the
//! file, line and column of the value: partials and inline partials (a partial can call
//! itself), nesting deeper than the renderer's stack allows, and oversized templates.

use std::collections::BTreeMap;

use catalog::Catalog;
use flow::{load, render_all, CompileEnv, Severity};

fn diagnostics(title: &str) -> String {
    let text = format!(
        "name: f\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: {{ locationId: loc1 }}\nsteps:\n  - id: task\n    uses: contacts.create_task\n    with:\n      contactId: \"{{{{ trigger.id }}}}\"\n      title: '{title}'\n      dueDate: \"2030-01-01T10:00:00Z\"\n      completed: false\n"
    );
    let cat = Catalog::builtin().expect("builtin catalog");
    let env = CompileEnv { env: BTreeMap::new(), accounts: vec!["main".to_string()] };
    let (flow, diags) = load("f.yaml", &text, &cat, &env);
    let errors = diags.iter().any(|d| d.severity == Severity::Error);
    assert_eq!(flow.is_none(), errors, "{}", render_all(&diags));
    render_all(&diags)
}

#[test]
fn inline_partials_that_call_themselves_are_refused() {
    let out = diagnostics(r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#);
    assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("partials"), "{out}");
}

#[test]
fn partials_are_refused() {
    let out = diagnostics("Hi {{> missing}}");
    assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("partials"), "{out}");
    let out = diagnostics("{{#if trigger.id}}{{> missing}}{{/if}}");
    assert!(out.contains("partials"), "{out}");
    let out = diagnostics("{{#> layout}}x{{/layout}}");
    assert!(out.contains("partials"), "{out}");
}

fn nested_calls(depth: usize) -> String {
    format!("{{{{ upper {}trigger.firstName{} }}}}", "(upper ".repeat(depth), ")".repeat(depth))
}

#[test]
fn helpers_nested_thousands_deep_are_refused_not_a_crash() {
    for depth in [40, 100, 1000] {
        let out = diagnostics(&nested_calls(depth));
        assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("nests deeper than 32"), "{depth}: {out}");
    }
    // Thousands deep is also too long to be a template.
    let out = diagnostics(&nested_calls(5000));
    assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("16384"), "{out}");
    let blocks = format!("{}x{}", "{{#if trigger.id}}".repeat(100), "{{/if}}".repeat(100));
    let out = diagnostics(&blocks);
    assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("nests deeper than"), "{out}");
}

#[test]
fn moderate_nesting_still_loads() {
    assert_eq!(diagnostics(&nested_calls(8)), "");
    let blocks = format!("{}x{}", "{{#if trigger.id}}".repeat(8), "{{/if}}".repeat(8));
    assert_eq!(diagnostics(&blocks), "");
}

#[test]
fn oversized_templates_are_refused() {
    let big = format!("{{{{ trigger.firstName }}}}{}", "x".repeat(100_000));
    let out = diagnostics(&big);
    assert!(out.starts_with("f.yaml:11:14: error:") && out.contains("bytes"), "{out}");
}
