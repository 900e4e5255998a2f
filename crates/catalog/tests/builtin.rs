use catalog::{Catalog, Kind};
use std::collections::BTreeSet;

#[test]
fn builtin_catalog_is_valid_and_complete() {
    let cat = match Catalog::builtin() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let triggers = cat.operations().iter().filter(|o| o.kind == Kind::Trigger).count();
    let actions = cat.operations().iter().filter(|o| o.kind == Kind::Action).count();
    assert_eq!((triggers, actions), (55, 71));
    let cats: BTreeSet<&str> = cat.operations().iter().map(|o| o.category.as_str()).collect();
    assert_eq!(cats.len(), 14);
    assert_eq!(cat.categories().len(), 14);
}
