use std::fs;
use std::path::Path;

use serde_json::json;
use store::{SledStore, Store, StoreError};

fn damaged(r: Result<SledStore, StoreError>) -> String {
    match r {
        Err(StoreError::Damaged { reason, .. }) => reason,
        Err(e) => panic!("expected Damaged, got {e}"),
        Ok(_) => panic!("expected Damaged, store opened"),
    }
}

fn created(path: &Path) -> String {
    let s = SledStore::create_or_open(path).unwrap();
    s.put_tokens("loc", &json!({"t": 1})).unwrap();
    s.store_id().to_string()
}

#[test]
fn open_requires_a_store_and_create_or_open_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store");
    assert!(matches!(SledStore::open(&path), Err(StoreError::NotFound { .. })));
    assert!(!path.exists(), "open must not create anything");
    let id = created(&path);
    assert!(path.join("STORE").is_file());
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.store_id(), id);
    assert_eq!(s.get_tokens("loc").unwrap(), Some(json!({"t": 1})));
    drop(s);
    let s = SledStore::create_or_open(&path).unwrap();
    assert_eq!(s.store_id(), id, "create_or_open reopens, never recreates");

    // An existing empty directory is a fine place for a new store...
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(SledStore::open(&empty), Err(StoreError::NotFound { .. })));
    SledStore::create_or_open(&empty).unwrap();
    // ...a directory with other things in it is not.
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("notes.txt"), "x").unwrap();
    assert!(matches!(SledStore::create_or_open(&busy), Err(StoreError::NotAStore { .. })));
}

#[test]
fn a_second_handle_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let _s = SledStore::create_or_open(&path).unwrap();
    assert!(matches!(SledStore::open(&path), Err(StoreError::Locked { .. })));
}

#[test]
fn a_deleted_database_with_its_marker_left_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    created(&path);
    fs::remove_dir_all(path.join("db")).unwrap();
    let reason = damaged(SledStore::open(&path));
    assert!(reason.contains("missing or empty"), "{reason}");
    // create_or_open must not paper over it either, and must not recreate db/.
    damaged(SledStore::create_or_open(&path));
    assert!(!path.join("db").join("db").exists());

    // Same for a database truncated to nothing.
    let path2 = dir.path().join("store2");
    created(&path2);
    fs::write(path2.join("db").join("db"), b"").unwrap();
    damaged(SledStore::create_or_open(&path2));
}

#[test]
fn garbage_or_missing_meta_or_unknown_format_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    created(&path);
    let poke = |f: &dyn Fn(&sled::Tree)| {
        let db = sled::open(path.join("db")).unwrap();
        f(&db.open_tree("meta").unwrap());
        db.flush().unwrap();
    };

    poke(&|m| {
        m.insert("format", &b"\xff\xfe garbage"[..]).unwrap();
    });
    let reason = damaged(SledStore::open(&path));
    assert!(reason.contains("format"), "{reason}");

    poke(&|m| {
        m.insert("format", &b"99"[..]).unwrap();
    });
    let reason = damaged(SledStore::open(&path));
    assert!(reason.contains("99"), "{reason}");

    poke(&|m| {
        m.clear().unwrap();
    });
    let reason = damaged(SledStore::create_or_open(&path));
    assert!(reason.contains("no meta"), "{reason}");
}

#[test]
fn a_replaced_database_or_a_garbage_marker_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    created(&a);
    created(&b);
    fs::remove_dir_all(a.join("db")).unwrap();
    fs::rename(b.join("db"), a.join("db")).unwrap();
    let reason = damaged(SledStore::open(&a));
    assert!(reason.contains("replaced"), "{reason}");

    let c = dir.path().join("c");
    created(&c);
    fs::write(c.join("STORE"), "{{{").unwrap();
    damaged(SledStore::open(&c));
}

#[test]
fn a_lost_marker_is_rewritten_from_meta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let id = created(&path);
    fs::remove_file(path.join("STORE")).unwrap();
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.store_id(), id);
    assert!(fs::read_to_string(path.join("STORE")).unwrap().contains(&id));
}

#[cfg(unix)]
#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = SledStore::create_or_open(&path).unwrap();
    s.put_tokens("loc", &json!({"refresh_token": "secret"})).unwrap();
    drop(s);
    let _s = SledStore::open(&path).unwrap();
    let mut files = 0;
    let mut stack = vec![path.clone()];
    while let Some(d) = stack.pop() {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
    }
    assert!(files >= 3, "marker, sled conf and db at least; saw {files}");
}
