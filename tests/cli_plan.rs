//! `flowd plan`: a location's flows against GHL's request budget, before deployment.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn flowd(args: &[&str], dir: &Path) -> Output {
    Command::new(support::flowd_bin()).args(args).current_dir(dir).env_remove("GHL_TOKEN").output().expect("flowd runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `n` flows on one location, each polling `uses` every `every` and making a task.
fn setup(n: usize, uses: &str, with: &str, every: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        "store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: loc_1\n    token: ${GHL_TOKEN}\n",
    )
    .expect("config");
    for i in 0..n {
        std::fs::write(
            dir.path().join("flows").join(format!("f{i}.yaml")),
            format!(
                "name: f{i}\naccount: main\ntrigger:\n  uses: {uses}\n  with: {with}\n  every: {every}\nsteps:\n  - id: t\n    uses: contacts.create_task\n    with: {{ contactId: \"{{{{ trigger.id }}}}\", title: x, dueDate: \"2030-01-01T00:00:00Z\", completed: false }}\n"
            ),
        )
        .expect("flow");
    }
    dir
}

#[test]
fn twenty_incremental_flows_at_one_minute_fit_in_a_quarter_of_the_budget() {
    let dir = setup(20, "contacts.search_contacts", "{ locationId: loc_1 }", "1m");
    let out = flowd(&["plan", "--records", "50000", "--changes", "10", "--json"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let loc = &plan[0];
    assert_eq!(loc["location"], "loc_1");
    assert_eq!(loc["flows"].as_array().map(Vec::len), Some(20));
    // 20 flows × 60 polls × 1 request + 20 × 10 changes × 1 step = 1,400 an hour.
    assert_eq!(loc["requests_per_hour"], 1400.0);
    let share = loc["share_of_daily_budget"].as_f64().expect("share");
    assert!(share < 0.25, "{share}");
}

#[test]
fn flows_that_cannot_fit_are_refused_before_deployment() {
    // A full read of 20,000 businesses every minute: far past 200,000 a day.
    let dir = setup(2, "businesses.list_businesses", "{ locationId: loc_1 }", "1m");
    let out = flowd(&["plan", "--records", "20000"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("businesses.list_businesses"), "{t}");
    assert!(t.contains("do not fit GHL's budget"), "{t}");
    assert!(t.contains("warning: over 80%"), "{t}");
}

#[test]
fn a_fan_out_costs_max_per_poll_plus_one_and_a_long_round_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        "store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: loc_1\n    token: ${GHL_TOKEN}\n",
    )
    .expect("config");
    std::fs::write(
        dir.path().join("flows").join("tasks.yaml"),
        "name: tasks\naccount: main\ntrigger:\n  uses: contacts.get_contact_tasks\n  for_each_record:\n    of: contacts.search_contacts\n    with: { locationId: loc_1 }\n    max_per_poll: 50\n  with: { contactId: \"{{ parent.id }}\" }\n  every: 2m\n  dedupe: changed\nsteps:\n  - id: n\n    uses: contacts.create_note\n    with: { contactId: \"{{ trigger.contactId }}\", body: x }\n",
    )
    .expect("flow");
    let out = flowd(&["plan", "--records", "1000", "--changes", "0", "--json"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let f = &plan[0]["flows"][0];
    assert_eq!(f["read"], "fan-out");
    assert_eq!(f["fans_out_over"], "contacts.search_contacts");
    // 1 read of the changed contacts + 1 of the round's next 49 + 49 children's tasks.
    assert_eq!(f["requests_per_poll"], 51);
    assert_eq!(f["requests_per_hour"], 51.0 * 30.0);
    // ⌈1,001 / 49⌉ = 21 polls of 2 minutes.
    assert_eq!(f["round_seconds"], 21.0 * 120.0);
    // While 25 contacts change before every poll: ⌈1,001 / 24⌉ = 42 polls.
    assert_eq!(f["busy_round_seconds"], 42.0 * 120.0);

    let out = flowd(&["plan", "--records", "1000"], dir.path());
    let t = text(&out);
    assert!(t.contains("a round through 1000 records takes 42m (1h 24m while many change)"), "{t}");
    assert!(!t.contains("takes over an hour"), "{t}");
    let out = flowd(&["plan", "--records", "10000"], dir.path());
    let t = text(&out);
    assert!(t.contains("the round of tasks takes over an hour"), "{t}");
}
