use std::fs;
use std::path::Path;

use serde_json::json;
use store::{Backend, OpenStore, Store, StoreError};

#[macro_use]
#[allow(unused)]
mod common;

/// The backend's directory inside the store, and the file whose absence means no database.
fn db<S: OpenStore>(path: &Path) -> std::path::PathBuf {
    path.join(S::BACKEND.dir_name())
}

fn data_file<S: OpenStore>(path: &Path) -> std::path::PathBuf {
    match S::BACKEND {
        Backend::Sled => db::<S>(path).join("db"),
        Backend::Fjall => db::<S>(path).join("version"),
        Backend::Postgres => unreachable!("these tests are of the embedded stores' files"),
    }
}

/// Changes the `meta` records of a closed store behind its back, through the backend itself.
enum Poke {
    Set(&'static str, &'static [u8]),
    Clear,
}

fn poke_meta<S: OpenStore>(path: &Path, poke: Poke) {
    match poke {
        Poke::Set(k, v) => common::raw_write::<S>(path, "meta", &[(k.as_bytes(), Some(v))]),
        Poke::Clear => {
            let keys: [&[u8]; 4] = [b"format", b"store_id", b"created_at", b"next_run_id"];
            let removes: Vec<(&[u8], Option<&[u8]>)> = keys.iter().map(|k| (*k, None)).collect();
            common::raw_write::<S>(path, "meta", &removes)
        }
    }
}

fn damaged<S>(r: Result<S, StoreError>) -> String {
    match r {
        Err(StoreError::Damaged { reason, .. }) => reason,
        Err(e) => panic!("expected Damaged, got {e}"),
        Ok(_) => panic!("expected Damaged, store opened"),
    }
}

fn created<S: OpenStore>(path: &Path) -> String {
    let s = S::create_or_open(path).unwrap();
    s.put_tokens("loc", &json!({"t": 1})).unwrap();
    s.store_id().to_string()
}

fn open_requires_a_store_and_create_or_open_makes_one<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store");
    assert!(matches!(S::open(&path), Err(StoreError::NotFound { .. })));
    assert!(!path.exists(), "open must not create anything");
    let id = created::<S>(&path);
    assert!(path.join("STORE").is_file());
    let s = S::open(&path).unwrap();
    assert_eq!(s.store_id(), id);
    assert_eq!(s.get_tokens("loc").unwrap(), Some(json!({"t": 1})));
    drop(s);
    let s = S::create_or_open(&path).unwrap();
    assert_eq!(s.store_id(), id, "create_or_open reopens, never recreates");

    // An existing empty directory is a fine place for a new store...
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(S::open(&empty), Err(StoreError::NotFound { .. })));
    S::create_or_open(&empty).unwrap();
    // ...a directory with other things in it is not.
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("notes.txt"), "x").unwrap();
    assert!(matches!(S::create_or_open(&busy), Err(StoreError::NotAStore { .. })));
}

fn a_second_handle_on_the_same_store_is_refused<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let _s = S::create_or_open(&path).unwrap();
    assert!(matches!(S::open(&path), Err(StoreError::Locked { .. })));
}

fn a_deleted_database_with_its_marker_left_is_damaged<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    created::<S>(&path);
    fs::remove_dir_all(db::<S>(&path)).unwrap();
    let reason = damaged(S::open(&path));
    assert!(reason.contains("missing or empty"), "{reason}");
    // create_or_open must not paper over it either, and must not recreate the database.
    damaged(S::create_or_open(&path));
    assert!(!data_file::<S>(&path).exists());

    // Same for a database truncated to nothing.
    let path2 = dir.path().join("store2");
    created::<S>(&path2);
    fs::write(data_file::<S>(&path2), b"").unwrap();
    damaged(S::create_or_open(&path2));
}

fn garbage_or_missing_meta_or_unknown_format_is_damaged<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    created::<S>(&path);
    poke_meta::<S>(&path, Poke::Set("format", b"\xff\xfe garbage"));
    let reason = damaged(S::open(&path));
    assert!(reason.contains("format"), "{reason}");

    poke_meta::<S>(&path, Poke::Set("format", b"99"));
    let reason = damaged(S::open(&path));
    assert!(reason.contains("99"), "{reason}");

    poke_meta::<S>(&path, Poke::Clear);
    let reason = damaged(S::create_or_open(&path));
    assert!(reason.contains("no meta"), "{reason}");
}

fn a_replaced_database_or_a_garbage_marker_is_damaged<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    created::<S>(&a);
    created::<S>(&b);
    fs::remove_dir_all(db::<S>(&a)).unwrap();
    fs::rename(db::<S>(&b), db::<S>(&a)).unwrap();
    let reason = damaged(S::open(&a));
    assert!(reason.contains("replaced"), "{reason}");

    let c = dir.path().join("c");
    created::<S>(&c);
    fs::write(c.join("STORE"), "{{{").unwrap();
    damaged(S::open(&c));
}

fn a_lost_marker_is_rewritten_from_meta<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let id = created::<S>(&path);
    fs::remove_file(path.join("STORE")).unwrap();
    let s = S::open(&path).unwrap();
    assert_eq!(s.store_id(), id);
    assert!(fs::read_to_string(path.join("STORE")).unwrap().contains(&id));
}

/// Unix permissions; flowd runs on Unix.
fn files_are_private<S: OpenStore>() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = S::create_or_open(&path).unwrap();
    s.put_tokens("loc", &json!({"refresh_token": "secret"})).unwrap();
    drop(s);
    let _s = S::open(&path).unwrap();
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
    assert!(files >= 3, "marker and the database's files at least; saw {files}");
}

on_each_embedded_backend!(
    open_requires_a_store_and_create_or_open_makes_one,
    a_second_handle_on_the_same_store_is_refused,
    a_deleted_database_with_its_marker_left_is_damaged,
    garbage_or_missing_meta_or_unknown_format_is_damaged,
    a_replaced_database_or_a_garbage_marker_is_damaged,
    a_lost_marker_is_rewritten_from_meta,
    files_are_private,
);

fn set_marker_format(path: &Path, format: u64) {
    let text = fs::read_to_string(path.join("STORE")).unwrap();
    let mut marker: serde_json::Value = serde_json::from_str(&text).unwrap();
    marker["format"] = json!(format);
    fs::write(path.join("STORE"), serde_json::to_vec(&marker).unwrap()).unwrap();
}

fn an_unknown_format_in_the_marker_is_damaged<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    created::<S>(&path);
    set_marker_format(&path, 99);
    let reason = damaged(S::open(&path));
    assert!(reason.contains("99") && reason.contains("marker"), "{reason}");
    damaged(S::create_or_open(&path));
}

on_each_embedded_backend!(an_unknown_format_in_the_marker_is_damaged);

/// A fjall store with `n` token records written, closed.
fn fjall_store_with_data(path: &Path, n: usize) -> String {
    let s = store::FjallStore::create_or_open(path).unwrap();
    for i in 0..n {
        s.put_tokens(&format!("loc{i}"), &json!({"refresh_token": format!("r{i}"), "pad": "x".repeat(200)})).unwrap();
    }
    s.store_id().to_string()
}

fn partition(path: &Path, name: &str) -> std::path::PathBuf {
    path.join("fjall").join("partitions").join(name)
}

#[test]
fn fjall_a_deleted_partition_is_damaged_and_left_as_found() {
    for name in ["seen", "runs", "triggers", "meta"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        fjall_store_with_data(&path, 10);
        fs::remove_dir_all(partition(&path, name)).unwrap();
        let reason = damaged(store::FjallStore::open(&path));
        assert!(reason.contains(&format!("{name:?}")) || reason.contains(name), "{name}: {reason}");
        damaged(store::FjallStore::create_or_open(&path));
        assert!(!partition(&path, name).exists(), "{name}: opening must not recreate the partition");
    }
}

#[test]
fn fjall_a_partition_without_its_manifest_is_damaged_and_left_as_found() {
    for name in ["seen", "runs"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        fjall_store_with_data(&path, 10);
        fs::remove_file(partition(&path, name).join("manifest")).unwrap();
        let reason = damaged(store::FjallStore::open(&path));
        assert!(reason.contains(name), "{name}: {reason}");
        damaged(store::FjallStore::create_or_open(&path));
        assert!(partition(&path, name).is_dir(), "{name}: opening must not remove what is left of the partition");
    }
}

#[test]
fn fjall_a_journal_cut_in_half_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    fjall_store_with_data(&path, 2_000);
    let journals = path.join("fjall").join("journals");
    let mut cut = 0;
    for e in fs::read_dir(&journals).unwrap() {
        let p = e.unwrap().path();
        let len = fs::metadata(&p).unwrap().len();
        if p.is_file() && len > 1024 {
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len / 2).unwrap();
            cut += 1;
        }
    }
    assert!(cut > 0, "the writes are in a journal");
    let reason = damaged(store::FjallStore::open(&path));
    assert!(reason.contains("journal") || reason.contains("lost"), "{reason}");
    damaged(store::FjallStore::create_or_open(&path));
}

#[test]
fn fjall_reopened_many_times_keeps_opening_and_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let id = fjall_store_with_data(&path, 5);
    for round in 0..5 {
        let s = store::FjallStore::open(&path).unwrap();
        assert_eq!(s.store_id(), id);
        assert_eq!(s.get_tokens("loc4").unwrap().unwrap()["refresh_token"], "r4", "round {round}");
        s.put_tokens(&format!("round{round}"), &json!({"t": round})).unwrap();
        if round % 2 == 0 {
            // Opened and closed without a write.
            drop(s);
            drop(store::FjallStore::open(&path).unwrap());
        }
    }
    let s = store::FjallStore::open(&path).unwrap();
    assert_eq!(s.get_tokens("round4").unwrap(), Some(json!({"t": 4})));
}
