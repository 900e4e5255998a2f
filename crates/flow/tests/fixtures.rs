//! Data-driven tests: every file under fixtures/invalid renders to a snapshot of its
//! diagnostics; every file under fixtures/valid compiles cleanly and passes its own tests.

use std::collections::BTreeMap;

use catalog::Catalog;
use chrono::TimeZone;
use flow::{load, render_all, CompileEnv};

fn env() -> CompileEnv {
    CompileEnv {
        env: BTreeMap::from([("APP_HOOK_URL".to_string(), "https://app.example/hook".to_string())]),
        accounts: vec!["main".to_string(), "default".to_string()],
    }
}

fn check(path: &std::path::Path) -> String {
    let cat = Catalog::builtin().expect("builtin catalog");
    let text = std::fs::read_to_string(path).expect("fixture");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (flow, diags) = load(name, &text, &cat, &env());
    let mut out = render_all(&diags);
    if flow.is_some() {
        out.push_str("(compiled)\n");
    }
    out
}

#[test]
fn invalid_fixtures() {
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        let out = check(path);
        assert!(out.contains(": error: "), "{} produced no error:\n{out}", path.display());
        insta::assert_snapshot!(out);
    });
}

#[test]
fn valid_fixtures() {
    let cat = Catalog::builtin().expect("builtin catalog");
    let now = chrono::Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    insta::glob!("fixtures/valid/*.yaml", |path| {
        let text = std::fs::read_to_string(path).expect("fixture");
        let (flow, diags) = load("valid.yaml", &text, &cat, &env());
        assert!(diags.is_empty(), "{}:\n{}", path.display(), render_all(&diags));
        let flow = flow.expect("compiles");
        for test in &flow.tests {
            let account = serde_json::json!({"name": "main", "location_id": "loc1"});
            let outcome = flow.run_test(test, account, &env().env, now);
            assert!(outcome.passed(), "{}: {}: {:?}", path.display(), outcome.name, outcome.failures);
        }
    });
}

/// `lookback` on a trigger that reads in full would silently do nothing: it is a warning.
#[test]
fn lookback_on_a_full_read_is_a_warning() {
    let text = "name: f\naccount: main\ntrigger:\n  uses: contacts.get_contact_notes\n  with: { contactId: c1 }\n  lookback: 30s\nsteps:\n  - id: tag\n    uses: contacts.add_tags\n    with: { contactId: c1, tags: [noted] }\n";
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", text, &cat, &env());
    let out = render_all(&diags);
    assert!(flow.is_some(), "{out}");
    assert!(out.contains("f.yaml:6:13: warning: `lookback` has no effect"), "{out}");
    assert!(out.contains("strategy `full`"), "{out}");
}

/// YAML reads `zip: 12345` as a number: numbers and booleans for string parameters, and
/// numeric text for number parameters, are valid (the engine sends them converted).
#[test]
fn scalars_that_convert_losslessly_are_valid() {
    let text = "name: f\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: { locationId: loc1 }\nsteps:\n  - id: biz\n    uses: businesses.create_business\n    with: { name: 12345, city: false, postalCode: 90210, locationId: loc1 }\n  - id: task\n    uses: contacts.create_task\n    with: { contactId: c1, title: 5, dueDate: \"2030-01-01\", completed: \"true\" }\n  - id: deal\n    uses: opportunities.create_opportunity\n    with: { pipelineId: p1, locationId: loc1, name: 7, status: open, contactId: c1, monetaryValue: \"1200.5\" }\n";
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", text, &cat, &env());
    assert!(diags.is_empty(), "{}", render_all(&diags));
    assert!(flow.is_some());
}

/// Send Message as users write an SMS: the spec's required `status` and object-typed
/// `subType` are amended in the catalog, so this is valid.
#[test]
fn an_sms_as_users_write_it_is_valid() {
    let text = "name: f\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: { locationId: loc1 }\nsteps:\n  - id: sms\n    uses: conversations.send_message\n    with: { type: SMS, contactId: \"{{ trigger.id }}\", message: \"Hi {{ trigger.firstName }}\" }\n  - id: email\n    uses: conversations.send_message\n    with: { type: Email, subType: Email, contactId: c1, html: \"<p>Hi</p>\", subject: Hello }\n";
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", text, &cat, &env());
    assert!(diags.is_empty(), "{}", render_all(&diags));
    assert!(flow.is_some());
}

/// A query parameter GHL reads as a comma-separated list (`type=TYPE_SMS,TYPE_CALL`) takes
/// several enum values that way; each one must still be valid.
#[test]
fn comma_lists_of_enum_values_in_a_query_parameter() {
    let flow = |ty: &str| {
        format!("name: f\naccount: main\ntrigger:\n  uses: conversations.get_messages\n  with: {{ conversationId: c1, type: \"{ty}\" }}\nsteps:\n  - id: tag\n    uses: contacts.add_tags\n    with: {{ contactId: c1, tags: [x] }}\n")
    };
    let cat = Catalog::builtin().expect("builtin catalog");
    let (_, diags) = load("f.yaml", &flow("TYPE_SMS,TYPE_CALL"), &cat, &env());
    assert!(diags.is_empty(), "{}", render_all(&diags));
    let (_, diags) = load("f.yaml", &flow("TYPE_SMS,TYPE_SMOKE"), &cat, &env());
    let out = render_all(&diags);
    assert!(out.contains("f.yaml:5:37: error: `TYPE_SMOKE` is not a valid value for `type`"), "{out}");
}

/// The walk behind inline tests and dry runs: each step rendered in order, what the caller
/// returns for a step visible to later steps as `steps.<id>`, and a failure named by its step.
#[test]
fn rehearse_renders_steps_in_order_with_stand_ins() {
    let text = "name: f\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: { locationId: loc1 }\nsteps:\n  - id: task\n    uses: contacts.create_task\n    with: { contactId: \"{{ trigger.id }}\", title: Hi, dueDate: \"2030-01-01\", completed: false }\n  - id: tag\n    uses: contacts.add_tags\n    with: { contactId: \"{{ steps.task.id }}\", tags: [done] }\n";
    let cat = Catalog::builtin().expect("builtin catalog");
    let (flow, diags) = load("f.yaml", text, &cat, &env());
    let flow = flow.unwrap_or_else(|| panic!("{}", render_all(&diags)));
    let now = chrono::Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let account = serde_json::json!({"name": "main", "location_id": "loc1"});
    let mut ctx = flow::context(&flow.name, serde_json::json!({"id": "c1"}), account, &env().env, "t", now);
    let mut seen = Vec::new();
    flow::rehearse(&flow.steps, &mut ctx, |step, inputs| {
        seen.push((step.id.clone(), inputs["contactId"].clone()));
        Ok(serde_json::json!({"id": format!("{}-out", step.id)}))
    })
    .expect("renders");
    assert_eq!(seen, vec![("task".into(), serde_json::json!("c1")), ("tag".into(), serde_json::json!("task-out"))]);
    assert_eq!(ctx["steps"]["tag"]["id"], "tag-out");

    let failed = flow::rehearse(&flow.steps, &mut ctx, |step, _| match step.id.as_str() {
        "tag" => Err("refused".into()),
        _ => Ok(serde_json::json!({"id": "t1"})),
    });
    assert_eq!(failed, Err("step `tag`: refused".to_string()));
}
