//! User extension files: valid ones join the catalog; each broken one yields errors that
//! name the file, line and column. Each fixture lists the messages it must produce in
//! `# expect:` lines, and the full rendering is snapshot-tested.

use catalog::{Catalog, CatalogError, Kind};
use std::path::Path;

fn load_alone(fixture: &Path) -> Result<Catalog, CatalogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fixture.file_name().expect("file name");
    std::fs::copy(fixture, dir.path().join(name)).expect("copy fixture");
    let result = Catalog::with_extensions(dir.path());
    // Problems name the temp file; show them relative to the fixture directory instead.
    result.map_err(|e| match e {
        CatalogError::Invalid(mut problems) => {
            for p in &mut problems {
                p.place.file = p.place.file.replace(&format!("{}/", dir.path().display()), "");
            }
            CatalogError::Invalid(problems)
        }
        other => other,
    })
}

#[test]
fn broken_extension_files_are_reported_with_places() {
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        let text = std::fs::read_to_string(path).expect("fixture");
        let rendered = match load_alone(path) {
            Ok(_) => panic!("{} should not load", path.display()),
            Err(e) => e.to_string(),
        };
        for expected in text.lines().filter_map(|l| l.strip_prefix("# expect: ")) {
            assert!(rendered.contains(expected), "{}: missing `{expected}` in:\n{rendered}", path.display());
        }
        for line in rendered.lines().skip(1) {
            let place = line.trim().split(": ").next().unwrap_or_default();
            assert!(place.matches(':').count() == 2, "no line:column in `{line}`");
        }
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn valid_extension_files_join_the_catalog() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let cat = Catalog::with_extensions(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cat.len(), 127);
    let op = cat.get("acme.list_widgets").expect("extension operation present");
    assert_eq!(op.kind, Kind::Trigger);
    assert_eq!(cat.place("acme.list_widgets").map(|p| p.line), Some(3));
}

#[test]
fn a_missing_extension_dir_is_an_io_error() {
    let err = Catalog::with_extensions(Path::new("/nonexistent/flowd-catalog")).unwrap_err();
    assert!(matches!(err, CatalogError::Io { .. }), "{err}");
}

#[test]
fn unknown_keys_get_suggestions() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cat.suggest("contacts.get_contcat").first(), Some(&"contacts.get_contact"));
    assert!(cat.suggest_kind("create_task", Kind::Action).contains(&"contacts.create_task"));
}
