//! flowd's exit codes, one test per class, through the real binary: 0 success, 1 a
//! runtime failure, 2 bad input (argument, config, flow file, unknown run id), as the
//! README and `flowd --help` document them.

mod support;

use support::{run as flowd, text};

const FLOW: &str = r#"name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

/// A config with one account and one valid flow; `extra` is appended to the config.
fn setup(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/tasks.yaml"), FLOW).expect("flow");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        format!("store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: loc_1\n    token: pit-x\n{extra}"),
    )
    .expect("config");
    dir
}

#[test]
fn success_exits_0() {
    let dir = setup("");
    let out = flowd(dir.path(), &["validate", "--config", "flowd.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_bad_argument_exits_2() {
    let dir = setup("");
    let out = flowd(dir.path(), &["runs", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = flowd(dir.path(), &["runs", "--config", "flowd.yaml", "show", "not-a-number"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_bad_config_exits_2_with_its_place() {
    let dir = setup("");
    std::fs::write(dir.path().join("broken.yaml"), "store: ./data\nflows: [unclosed\n").expect("config");
    for args in [
        &["runs", "--config", "broken.yaml"][..],
        &["validate", "--config", "broken.yaml"],
        &["run", "--once", "--config", "broken.yaml"],
    ] {
        let out = flowd(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("broken.yaml:"), "{args:?}: {}", text(&out));
    }
    let out = flowd(dir.path(), &["runs", "--config", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot read missing.yaml"), "{}", text(&out));
}

#[test]
fn a_bad_flow_file_exits_2() {
    let dir = setup("");
    std::fs::write(dir.path().join("flows/bad.yaml"), "name: bad\ntrigger:\n  uses: contacts.nope\n").expect("flow");
    for args in [&["validate", "flows"][..], &["test", "flows"], &["plan", "--config", "flowd.yaml"]] {
        let out = flowd(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("bad.yaml:3:"), "{args:?}: {}", text(&out));
    }
}

#[test]
fn an_unknown_run_id_or_flow_exits_2() {
    let dir = setup("");
    drop(store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store"));
    let out = flowd(dir.path(), &["runs", "--config", "flowd.yaml", "show", "999"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("run 999 not found"), "{}", text(&out));
    let out = flowd(dir.path(), &["replay", "--config", "flowd.yaml", "999"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("run 999 not found"), "{}", text(&out));
    let out = flowd(dir.path(), &["release", "--config", "flowd.yaml", "no-such-flow"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("flow `no-such-flow` is not among the valid flows"), "{}", text(&out));
}

#[test]
fn a_config_whose_store_is_not_there_exits_2() {
    let dir = setup("");
    let out = flowd(dir.path(), &["runs", "--config", "flowd.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no store at"), "{}", text(&out));
}

#[test]
fn a_runtime_failure_exits_1() {
    // The store is held (as by a running service) and the service it points to does not
    // answer: nothing wrong with the input, the command could not do its work.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let dir = setup(&format!("listen: 127.0.0.1:{port}\nadmin_token: secret\n"));
    let held = store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store");
    let out = flowd(dir.path(), &["runs", "--config", "flowd.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot be reached"), "{}", text(&out));
    drop(held);

    // A flow's inline test that fails: the flows are valid, their behaviour is not.
    std::fs::write(
        dir.path().join("flows/tasks.yaml"),
        format!(
            "{FLOW}tests:\n  - item: {{ id: c1, firstName: Ann }}\n    expect: {{ task: {{ title: \"Call Bob\" }} }}\n"
        ),
    )
    .expect("flow");
    let out = flowd(dir.path(), &["test", "flows"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("1 flow test(s) failed"), "{}", text(&out));
}
