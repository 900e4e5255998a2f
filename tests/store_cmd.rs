//! `flowd store info` and `flowd store migrate`, as a user runs them.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

fn flowd(dir: &Path, args: &[&str]) -> Output {
    Command::new(support::flowd_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOWD_CONFIG")
        .output()
        .expect("flowd runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn migrate_moves_a_sled_store_to_fjall_and_keeps_the_sled_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows");
    std::fs::write(dir.path().join("flowd.yaml"), "store: ./data\nflows: ./flows\n").expect("config");
    let data = dir.path().join("data");

    let out = flowd(dir.path(), &["store", "migrate", "--config", "flowd.yaml"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no store at"), "{}", text(&out));

    let id = {
        let s = store::create_or_open(&data, store::Backend::Sled).expect("sled store");
        s.put_tokens("loc", &json!({"refresh_token": "r1"})).expect("tokens");
        let commit = store::PollCommit {
            lease: None,
            trigger: "t".into(),
            state: Some(json!({"cursor": 2})),
            items: vec![store::PollItem { key: "c1".into(), run: Some(store::NewRun::new("f", json!({"id": "c1"}))) }],
        };
        s.commit_poll(&commit).expect("poll").created[0].1
    };
    let info = flowd(dir.path(), &["store", "info", "--config", "flowd.yaml"]);
    assert!(info.status.success() && text(&info).contains("database: sled"), "{}", text(&info));

    // While another process holds it, nothing moves.
    {
        let _held = store::open(&data).expect("open");
        let out = flowd(dir.path(), &["store", "migrate", "--config", "flowd.yaml"]);
        assert!(!out.status.success() && text(&out).contains("in use"), "{}", text(&out));
        assert!(!dir.path().join("data.fjall-migrating").exists());
    }

    let out = flowd(dir.path(), &["store", "migrate", "--config", "flowd.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is now the fjall store"), "{}", text(&out));
    let s = store::open(&data).expect("migrated store");
    assert_eq!(s.backend(), store::Backend::Fjall);
    assert_eq!(s.get_tokens("loc").expect("tokens"), Some(json!({"refresh_token": "r1"})));
    assert_eq!(s.trigger_state("t").expect("state"), Some(json!({"cursor": 2})));
    assert_eq!(s.filter_unseen("t", &["c1".into()]).expect("seen"), vec![false]);
    assert_eq!(s.get_run(id).expect("run").map(|r| r.item), Some(json!({"id": "c1"})));
    drop(s);
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.sled-"))
        .collect();
    assert_eq!(kept.len(), 1, "the sled store is kept beside it");
    assert_eq!(store::open(kept[0].path()).expect("sled copy").backend(), store::Backend::Sled);

    let info = flowd(dir.path(), &["store", "info", "--config", "flowd.yaml"]);
    assert!(info.status.success() && text(&info).contains("database: fjall"), "{}", text(&info));
    let again = flowd(dir.path(), &["store", "migrate", "--config", "flowd.yaml"]);
    assert!(again.status.success() && text(&again).contains("fjall store already"), "{}", text(&again));

    // What a migration killed right after its swap leaves: the fjall store in place, the
    // sled store still under the staging name. Running it again finishes the job.
    let staging = dir.path().join("data.fjall-migrating");
    drop(store::create_or_open(&staging, store::Backend::Sled).expect("sled store"));
    let out = flowd(dir.path(), &["store", "migrate", "--config", "flowd.yaml"]);
    assert!(out.status.success() && text(&out).contains("finished an interrupted migration"), "{}", text(&out));
    assert!(!staging.exists());
    let kept = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.sled-"))
        .count();
    assert_eq!(kept, 2, "both sled stores kept, under different names");
    assert_eq!(store::open(&data).expect("store").backend(), store::Backend::Fjall);
}
