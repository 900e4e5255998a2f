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

/// Every built-in trigger says how it reads, so its cost is a decision, not a default.
#[test]
fn every_builtin_trigger_declares_its_read_strategy() {
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let mut by_strategy = std::collections::BTreeMap::<&str, usize>::new();
    for op in cat.operations().iter().filter(|o| o.kind == Kind::Trigger) {
        let Some(spec) = op.trigger.as_ref() else { panic!("{} has no trigger block", op.key) };
        let Some(read) = spec.read.as_ref() else { panic!("{} declares no `read` strategy", op.key) };
        *by_strategy.entry(read.strategy()).or_default() += 1;
    }
    assert_eq!(by_strategy.values().sum::<usize>(), 55);
    // Single records and windows cost a fixed number of requests; the rest are the lists.
    assert_eq!(by_strategy.get("single"), Some(&21));
    assert_eq!(by_strategy.get("window"), Some(&3));
}

/// The big collections read incrementally: contacts (new and updated), opportunities,
/// conversations and messages.
#[test]
fn the_big_collections_read_incrementally() {
    use catalog::DedupeMode::{New, Updated};
    let cat = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let read = |key: &str| {
        cat.get(key).and_then(|o| o.trigger.as_ref()).map(|t| t.read_spec().into_owned()).unwrap_or_else(|| {
            panic!("{key} is not a trigger");
        })
    };
    let contacts = read("contacts.search_contacts");
    assert_eq!(contacts.strategy(), "search");
    assert_eq!(contacts.mode(New).map(|m| m.field.as_str()), Some("dateAdded"));
    assert_eq!(contacts.mode(Updated).map(|m| m.field.as_str()), Some("dateUpdated"));
    assert_eq!(read("contacts.list_contacts_deprecated").modes(), vec![New]);
    assert_eq!(read("opportunities.search_opportunities").modes(), vec![New]);
    assert_eq!(read("conversations.search_conversations").modes(), vec![Updated]);
    assert_eq!(read("conversations.get_messages").strategy(), "sorted");
}
