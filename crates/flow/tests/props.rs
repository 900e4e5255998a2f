//! Whatever the input, loading and rendering return errors, never panic.

use catalog::Catalog;
use flow::{load, CompileEnv, Filter, Schedule, ValueTemplate};
use proptest::prelude::*;
use serde_json::json;

fn catalog() -> &'static Catalog {
    static CAT: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CAT.get_or_init(|| Catalog::builtin().unwrap())
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| json!(m)),
        ]
    })
}

const PIECES: &[&str] = &[
    "{{",
    "}}",
    "{{#if ",
    "{{/if}}",
    "{{#each ",
    "{{/each}}",
    "{{else}}",
    "trigger",
    ".",
    "steps.a",
    "now",
    " ",
    "(",
    ")",
    "\"",
    "json ",
    "default ",
    "date_add ",
    "days=",
    "date_format ",
    "\"%Y\"",
    "jsonpath ",
    "\"$.a\"",
    "upper ",
    "title ",
    "this",
    "../",
    "@index",
    "~",
    "!",
    "x",
    "1",
    "eq ",
    "len ",
    "lookup ",
    "{{{",
    "}}}",
    "[0]",
    "=",
];

fn arb_template() -> impl Strategy<Value = String> {
    prop_oneof![prop::collection::vec(prop::sample::select(PIECES), 0..12).prop_map(|v| v.concat()), ".{0,40}",]
}

const YAML_PIECES: &[&str] = &[
    "name: x\n",
    "trigger:\n",
    "  uses: contacts.search_contacts\n",
    "  with: { locationId: \"{{ account.location_id }}\" }\n",
    "  every: 5m\n",
    "  cron: \"*/5 * * * *\"\n",
    "steps:\n",
    "  - id: a\n",
    "    uses: contacts.add_tags\n",
    "    with: { contactId: \"{{ trigger.id }}\", tags: [a] }\n",
    "if: \"{{ trigger.email }}\"\n",
    "tests:\n",
    "  - item: {}\n",
    "    expect: { a: {} }\n",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "&a ",
    "*a ",
    "<<: ",
    "!!str ",
    "\t",
    "  ",
    "---\n",
    "? ",
    "|\n",
    ">\n",
    "#",
    "\u{feff}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn loader_never_panics(pieces in prop::collection::vec(prop::sample::select(YAML_PIECES), 0..24), noise in ".{0,30}") {
        let cat = catalog();
        let text = pieces.concat();
        let _ = load("p.yaml", &text, cat, &CompileEnv::default());
        let _ = load("p.yaml", &noise, cat, &CompileEnv::default());
    }

    #[test]
    fn rendering_never_panics(src in arb_template(), trigger in arb_json()) {
        let ctx = json!({"trigger": trigger, "steps": {"a": {"id": 1}}, "now": "2024-01-01T00:00:00Z", "env": {}});
        if let Ok(t) = ValueTemplate::compile_str(&src) {
            let _ = t.render(&ctx);
        }
        if let Ok(f) = Filter::compile(&src) {
            let _ = f.matches(&ctx);
        }
    }

    #[test]
    fn schedules_never_panic(expr in "[0-9*/,\\- LW#?]{0,24}") {
        if let Ok(s) = Schedule::cron(&expr) {
            let _ = s.next_after(chrono::Utc::now());
        }
        let _ = Schedule::every(&expr);
    }
}
