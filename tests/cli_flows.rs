//! `flowd validate`, `flowd test`, `flowd schema` and `flowd demo --once`, run as a user
//! runs them.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn flowd(args: &[&str], dir: &Path) -> Output {
    Command::new(support::flowd_bin()).args(args).current_dir(dir).output().expect("flowd runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn repo() -> &'static Path {
    support::repo()
}

#[test]
fn the_example_flows_validate_and_pass_their_tests() {
    let out = flowd(&["validate", "flows"], repo());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("9 file(s), 9 flow(s) valid, 0 error(s)"), "{}", text(&out));
    let out = flowd(&["test", "flows"], repo());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("13 passed, 0 failed"), "{}", text(&out));
}

#[test]
fn validate_reports_every_problem_with_its_place_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("broken.yaml"),
        "name: broken\ntrigger:\n  uses: contacts.serch_contacts\n  every: 5x\nsteps:\n  - id: t\n    uses: contacts.create_task\n    with: { contactId: \"{{ steps.later.id }}\" }\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("bad-yaml.yaml"), "name: [unclosed\n").expect("write");
    let out = flowd(&["validate", "."], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("./broken.yaml:3:9: error: unknown trigger `contacts.serch_contacts`"), "{t}");
    assert!(t.contains("contacts.search_contacts"), "suggests the nearest key: {t}");
    assert!(t.contains("./broken.yaml:4:10: error"), "bad interval: {t}");
    assert!(t.contains("./bad-yaml.yaml:1:"), "{t}");
    assert!(t.contains("error(s)") && !t.contains("panicked"), "{t}");
}

/// Templates that would take the service down (a partial that renders itself, helpers
/// nested thousands deep) and a partial that does not exist are refused by `validate`,
/// with their place, instead of failing or crashing at run time.
#[test]
fn validate_refuses_partials_and_deep_templates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = |name: &str, title: &str| {
        format!("name: {name}\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: {{ locationId: loc1 }}\nsteps:\n  - id: t\n    uses: contacts.create_task\n    with: {{ contactId: \"{{{{ trigger.id }}}}\", title: '{title}', dueDate: \"2030-01-01T10:00:00Z\", completed: false }}\n")
    };
    std::fs::write(dir.path().join("loop.yaml"), flow("loop", r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#))
        .expect("write");
    std::fs::write(dir.path().join("missing.yaml"), flow("missing", "{{> missing}}")).expect("write");
    let deep = format!("{{{{ upper {}trigger.id{} }}}}", "(upper ".repeat(5000), ")".repeat(5000));
    std::fs::write(dir.path().join("deep.yaml"), flow("deep", &deep)).expect("write");
    let out = flowd(&["validate", "."], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("./loop.yaml:9:") && t.contains("partials"), "{t}");
    assert!(t.contains("./missing.yaml:9:") && !t.contains("already used"), "{t}");
    assert!(t.contains("./deep.yaml:9:") && !t.contains("overflow"), "{t}");
}

#[test]
fn test_item_prints_the_requests_without_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let item = dir.path().join("item.json");
    std::fs::write(&item, r#"{"id":"c9","firstName":"Zoe","email":"zoe@example.com"}"#).expect("write");
    let flow = repo().join("flows/welcome-new-contacts.yaml");
    let out = flowd(
        &[
            "test",
            flow.to_str().expect("utf-8"),
            "--item",
            item.to_str().expect("utf-8"),
            "--env",
            "APP_HOOK_URL=https://app.test/hook",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(dry["steps"][0]["request"]["path"], "/contacts/c9/tasks");
    assert_eq!(dry["steps"][0]["request"]["body"]["title"], "Welcome call with Zoe");
    assert_eq!(dry["steps"][2]["request"]["url"], "https://app.test/hook");

    std::fs::write(&item, "{not json").expect("write");
    let out = flowd(&["test", flow.to_str().expect("utf-8"), "--item", item.to_str().expect("utf-8")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("item.json:1:2: not JSON"), "{}", text(&out));
}

#[test]
fn schema_is_json_schema_listing_catalog_keys() {
    let out = flowd(&["schema"], repo());
    assert!(out.status.success(), "{}", text(&out));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(schema.to_string().contains("contacts.create_task"));
    let fan = &schema["properties"]["trigger"]["properties"]["for_each_record"];
    assert_eq!(fan["required"], serde_json::json!(["of"]), "{fan}");
    assert_eq!(fan["properties"]["max_per_poll"]["maximum"], 500);
}

#[test]
fn demo_once_runs_the_examples_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = flowd(&["demo", "--once"], dir.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("summary: 8 flows"), "{t}");
    assert!(t.contains("POST /app/contact -> 200"), "the app reads a contact through flowd: {t}");
    assert!(t.contains("(0 GHL requests: from the cache)"), "the second read is cached: {t}");
    assert!(t.contains("POST /app/tasks -> 201 task"), "{t}");
    assert!(t.contains("-> 200 duplicate: no second task"), "{t}");
    assert!(t.contains("instant-welcome run"), "webhooks fire the instant flow: {t}");
    assert!(t.contains("(webhook ContactCreate): tag [succeeded]"), "{t}");
    assert!(t.contains("instant-welcome: nothing new"), "the reconciling poll fires nothing twice: {t}");
    assert!(t.contains(", 0 failures"), "{t}");
    assert!(t.contains("welcome-new-contacts run"), "{t}");
    assert!(t.contains("task -> tag -> push [succeeded]"), "{t}");
    // Fan-out: tasks added to two contacts and one completed on a third, and the task the
    // app created through flowd, notes on two contacts, an appointment on another, each
    // pushed once.
    assert_eq!(t.matches("task-sync run").count(), 4, "{t}");
    assert_eq!(t.matches("notes-to-feed run").count(), 2, "{t}");
    assert_eq!(t.matches("appointments-to-feed run").count(), 1, "{t}");
}

#[test]
fn bad_config_gives_a_clear_message_not_a_backtrace() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        "store: ./data\naccounts:\n  main:\n    location_id: l\n    token: ${NOPE_NOT_SET}\n",
    )
    .expect("write");
    let out = flowd(&["run", "--once"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("accounts.main.token: environment variable `NOPE_NOT_SET` is not set"), "{t}");
    assert!(!t.contains("panicked") && !t.contains("backtrace"), "{t}");
    let out = flowd(&["run", "--config", "missing.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot read missing.yaml"), "{}", text(&out));
}

#[test]
fn completions_are_generated() {
    let out = flowd(&["completions", "bash"], repo());
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("_flowd()"), "a bash completion function");
    let out = flowd(&["completions", "nosuchshell"], repo());
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown shell: {}", text(&out));
}

#[test]
fn sandbox_serves_ghl_as_printed_and_rejects_bad_seeds() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(support::flowd_bin())
        .args(["sandbox", "--listen", &listen, "--seed", "5", "--token", "tok-cli"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sandbox starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut curl = None;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.trim_start().starts_with("curl ") {
            curl = Some(line);
            break;
        }
    }
    let curl = curl.expect("the sandbox prints a curl example");
    let url = curl.split_whitespace().last().expect("url").to_string();
    assert!(url.starts_with(&format!("http://{listen}/contacts/")), "{curl}");
    let client = reqwest::blocking::Client::new();
    let ok = client.get(&url).bearer_auth("tok-cli").header("Version", "2021-07-28").send().expect("GET");
    assert_eq!(ok.status().as_u16(), 200);
    let header = |name: &str| ok.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    assert_eq!(header("x-ratelimit-max").as_deref(), Some("100"), "GHL's burst limit is on by default");
    assert_eq!(header("x-ratelimit-interval-milliseconds").as_deref(), Some("10000"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("99"));
    assert_eq!(header("x-ratelimit-limit-daily").as_deref(), Some("200000"));
    let body: serde_json::Value = ok.json().expect("json");
    assert!(body["contact"]["id"].is_string(), "{body}");
    let denied = client.get(&url).bearer_auth("wrong").header("Version", "2021-07-28").send().expect("GET");
    assert_eq!(denied.status().as_u16(), 401);
    let _ = child.kill();
    let _ = child.wait();

    // --no-rate-limit: no limit, so no headers announcing one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(support::flowd_bin())
        .args(["sandbox", "--listen", &listen, "--seed", "5", "--token", "tok-cli", "--no-rate-limit"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sandbox starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let printed: Vec<String> = lines.by_ref().map_while(Result::ok).take_while(|l| !l.starts_with("Ctrl-C")).collect();
    assert!(printed.iter().any(|l| l.contains("rate limits: off")), "{printed:?}");
    let url = printed
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .and_then(|l| l.split_whitespace().last())
        .expect("the sandbox prints a curl example")
        .to_string();
    let free = client.get(&url).bearer_auth("tok-cli").header("Version", "2021-07-28").send().expect("GET");
    assert!(free.headers().get("x-ratelimit-max").is_none(), "{:?}", free.headers());
    let _ = child.kill();
    let _ = child.wait();

    let out = flowd(&["sandbox", "--seed", "lots"], repo());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--seed"), "{}", text(&out));
}

/// With stdout and stderr on one stream (a terminal, `2>&1`), every diagnostic and the
/// summary stay on lines of their own, whichever stream each goes to.
#[test]
fn validate_diagnostics_and_summary_each_end_their_line_on_a_shared_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("list.yaml"),
        "name: [a, b]\ntrigger:\n  uses: contacts.search_contacts\nsteps:\n  - id: t\n    uses: contacts.create_task\n    with: { title: [x] }\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("bad-yaml.yaml"), "name: [unclosed\n").expect("write");
    let shared = tempfile::tempfile().expect("tempfile");
    let status = Command::new(support::flowd_bin())
        .args(["validate", "."])
        .current_dir(dir.path())
        .stdout(shared.try_clone().expect("clone"))
        .stderr(shared.try_clone().expect("clone"))
        .status()
        .expect("flowd runs");
    assert_eq!(status.code(), Some(2));
    let mut shared = shared;
    use std::io::{Read, Seek};
    shared.rewind().expect("rewind");
    let mut t = String::new();
    shared.read_to_string(&mut t).expect("read");
    assert!(t.ends_with('\n'), "{t:?}");
    let lines: Vec<&str> = t.lines().collect();
    let summary = lines.iter().filter(|l| l.contains("file(s)")).collect::<Vec<_>>();
    assert_eq!(summary.len(), 1, "{t:?}");
    assert!(summary[0].starts_with("error: ") && summary[0].contains("error(s)"), "{t:?}");
    let diagnostics = lines.iter().filter(|l| l.starts_with("./")).count();
    assert!(diagnostics >= 2, "{t:?}");
    for l in &lines {
        assert!(
            l.starts_with("./") || l.starts_with("  = help: ") || *l == *summary[0],
            "a line that is neither a diagnostic, a help nor the summary: {l:?} in {t:?}"
        );
        // A diagnostic or the summary that does not end its line runs into the next one.
        assert!(
            !l[1..].contains("./") && !l[1..].contains("error: 2 file(s)"),
            "two messages on one line: {l:?} in {t:?}"
        );
    }
}
