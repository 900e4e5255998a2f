//! One snapshot per built-in operation: editing `catalog/*.yaml` shows up as a reviewable diff.

use catalog::Catalog;

#[test]
fn every_builtin_definition_matches_its_snapshot() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots/definitions");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for op in cat.operations() {
            insta::assert_yaml_snapshot!(op.key.as_str(), op);
        }
    });
}
