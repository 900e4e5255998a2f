//! What only the PostgreSQL store has: several handles (nodes) on one database, and a
//! connection the server drops.

#[macro_use]
#[allow(unused)]
mod common;

use std::sync::{Arc, Barrier};

use common::Pg;
use serde_json::json;
use store::{OpenStore, PgOptions, PgStore, PollCommit, PollItem, RunFilter, Store};

fn handle(options: &PgOptions, name: &str) -> PgStore {
    let options = PgOptions { application_name: name.into(), ..options.clone() };
    PgStore::connect(&options, store::pg::Create::Yes).expect("connect")
}

/// Four nodes commit polls of overlapping keys at once: every key gets exactly one run,
/// whichever node inserted it, and the others learn it was seen.
#[test]
fn two_nodes_never_both_fire_an_item() {
    let Some(_schemas) = common::PgScope::enter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = Pg::create_or_open(&dir.path().join("db")).unwrap();
    let options = first.options();
    let nodes: Vec<Arc<PgStore>> = (0..4).map(|n| Arc::new(handle(&options, &format!("node{n}")))).collect();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let start = Arc::new(Barrier::new(nodes.len()));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let (node, keys, start) = (node.clone(), keys.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut created = Vec::new();
                // Each node sees the keys in its own order and in pages of 50.
                let mut mine = keys;
                mine.rotate_left(n * 75);
                for page in mine.chunks(50) {
                    let items = page
                        .iter()
                        .map(|k| PollItem { key: k.clone(), run: Some(store::NewRun::new("f", json!({"k": k}))) })
                        .collect();
                    let out =
                        node.commit_poll(&PollCommit { lease: None, trigger: "t".into(), state: None, items }).unwrap();
                    assert_eq!(out.created.len() + out.already_seen.len(), page.len());
                    created.extend(out.created.into_iter().map(|(k, _)| k));
                }
                created
            })
        })
        .collect();
    let mut fired: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    fired.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(fired, expected, "each key fired exactly once across the nodes");
    let runs = first.list_runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), keys.len());
    assert!(first.filter_unseen("t", &keys).unwrap().iter().all(|unseen| !unseen));
}

/// The server drops every connection of a store (a restart, a failover): the call that
/// meets the break may fail, and the store reconnects by itself for the next one.
#[test]
fn a_dropped_connection_is_replaced_on_the_next_call() {
    let Some(_schemas) = common::PgScope::enter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = Pg::create_or_open(&dir.path().join("db")).unwrap().options();
    let name = format!("flowd-test-{}", uuid::Uuid::new_v4().simple());
    let s = handle(&PgOptions { connections: 2, ..options.clone() }, &name);
    s.put_tokens("loc", &json!({"n": 1})).unwrap();
    s.ready().unwrap();

    let admin = handle(&options, "admin");
    let killed = admin.terminate_connections(&name).unwrap();
    assert!(killed >= 1, "the store's connections were open");

    // Reads run again on a new connection: none fails.
    for _ in 0..4 {
        assert_eq!(s.get_tokens("loc").unwrap(), Some(json!({"n": 1})));
        s.ready().unwrap();
    }
    // A write that met a break fails (it may have reached its commit); each connection
    // meets its break at most once, so no more writes fail than there are connections.
    let killed = admin.terminate_connections(&name).unwrap();
    assert!(killed >= 1);
    let mut failures = 0;
    for n in 0..6 {
        match s.put_tokens("loc", &json!({"n": n})) {
            Ok(()) => {}
            Err(e) => {
                assert!(matches!(e, store::StoreError::Postgres(_)), "{e}");
                failures += 1;
            }
        }
    }
    assert!(failures <= 2, "{failures} writes failed on 2 connections");
    assert_eq!(admin.get_tokens("loc").unwrap(), Some(json!({"n": 5})));
    s.ready().unwrap();
    s.put_tokens("loc", &json!({"n": 2})).unwrap();
    assert_eq!(admin.get_tokens("loc").unwrap(), Some(json!({"n": 2})));
}

/// A database without flowd's tables is "no store" for commands that only read.
#[test]
fn opening_an_empty_schema_without_create_is_not_found() {
    let Some(_schemas) = common::PgScope::enter() else { return };
    let dir = tempfile::tempdir().unwrap();
    let err = Pg::open(&dir.path().join("none")).map(drop).unwrap_err();
    assert!(matches!(err, store::StoreError::NotFound { .. }), "{err}");
}

#[test]
fn a_password_in_the_url_never_shows() {
    assert_eq!(store::pg::redacted_url("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
    assert_eq!(store::pg::redacted_url("postgres://u@h/db"), "postgres://u@h/db");
    let o = PgOptions { password: Some("secret".into()), ..PgOptions::new("postgres://u:pw@h/db") };
    let shown = format!("{o:?}");
    assert!(!shown.contains("secret") && !shown.contains(":pw@"), "{shown}");
}

/// A server that does not answer is "unreachable" (worth trying again once it is back);
/// a refused change and the embedded store's errors are not.
#[test]
fn an_unanswering_server_is_unreachable_and_a_refusal_is_not() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let options = PgOptions::new(format!("postgres://flowd@127.0.0.1:{port}/flowd"));
    let Err(err) = PgStore::connect(&options, store::pg::Create::Yes) else { panic!("nothing listens there") };
    assert!(err.is_unreachable(), "{err}");
    assert!(!store::StoreError::Conflict("run 1 is succeeded".into()).is_unreachable());
    let dir = tempfile::tempdir().unwrap();
    let embedded = store::create_or_open(dir.path().join("s"), store::Backend::FOR_NEW_STORES).unwrap();
    let Err(missing) = embedded.update_run(store::RunId(999), &[]) else { panic!("no such run") };
    assert!(!missing.is_unreachable(), "{missing}");
}
