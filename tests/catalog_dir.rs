//! The catalog a command uses: `--catalog-dir` (or `FLOWD_CATALOG_DIR`) wins, else the
//! config's `catalog_dir`, in every command that reads a config.

mod support;

use std::process::Command;
use support::{run as flowd, text};

/// A config whose `catalog_dir` adds `acme.ping`, and a flow whose step uses it: the
/// flow is valid only with the config's catalog.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["flows", "ops", "empty"] {
        std::fs::create_dir(dir.path().join(d)).expect("dir");
    }
    std::fs::write(
        dir.path().join("ops/acme.yaml"),
        "operations:\n  - key: acme.ping\n    name: Ping\n    description: Ping my app\n    kind: action\n    category: Contacts\n    method: GET\n    path: /ping\n    version: '2021-07-28'\n    action: { result: $ }\n",
    )
    .expect("catalog file");
    std::fs::write(
        dir.path().join("flows/ping.yaml"),
        "name: ping\naccount: main\ntrigger:\n  uses: contacts.search_contacts\n  with: { locationId: \"{{ account.location_id }}\" }\n  every: 1m\nsteps:\n  - id: ping\n    uses: acme.ping\ntests:\n  - item: { id: c1 }\n",
    )
    .expect("flow");
    std::fs::write(
        dir.path().join("flowd.yaml"),
        "store: ./data\nflows: ./flows\ncatalog_dir: ./ops\naccounts:\n  main:\n    location_id: loc_1\n    token: pit-x\n",
    )
    .expect("config");
    dir
}

#[test]
fn every_command_that_reads_a_config_uses_its_catalog_dir() {
    let dir = setup();
    drop(store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store"));
    for args in [
        &["validate", "--config", "flowd.yaml"][..],
        &["test", "--config", "flowd.yaml"],
        &["plan", "--config", "flowd.yaml"],
        &["release", "--config", "flowd.yaml", "ping"],
        &["replay", "--config", "flowd.yaml", "--failed"],
    ] {
        let out = flowd(dir.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    let out = flowd(dir.path(), &["release", "--config", "flowd.yaml", "ping"]);
    assert!(text(&out).contains("released 0 run(s) of ping"), "{}", text(&out));
}

#[test]
fn the_command_line_catalog_dir_wins_over_the_configs() {
    let dir = setup();
    drop(store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store"));
    let out = flowd(dir.path(), &["--catalog-dir", "empty", "validate", "--config", "flowd.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("acme.ping"), "{}", text(&out));
    let out = flowd(dir.path(), &["--catalog-dir", "empty", "release", "--config", "flowd.yaml", "ping"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = Command::new(support::flowd_bin())
        .args(["validate", "--config", "flowd.yaml"])
        .current_dir(dir.path())
        .env_remove("FLOWD_CONFIG")
        .env("FLOWD_CATALOG_DIR", "empty")
        .output()
        .expect("flowd runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
