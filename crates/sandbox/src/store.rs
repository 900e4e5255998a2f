//! The in-memory resource model: one collection per resource kind, each behind its own
//! lock, holding records as JSON objects in insertion order with an id index.

use std::collections::{BTreeMap, HashMap};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value};

use crate::clock::{Clock, IdGen};

pub type Record = Map<String, Value>;

/// Resource kinds the sandbox stores; admin endpoints take these names.
pub mod kinds {
    pub const LOCATIONS: &str = "locations";
    pub const COMPANIES: &str = "companies";
    pub const USERS: &str = "users";
    pub const CONTACTS: &str = "contacts";
    pub const TASKS: &str = "tasks";
    pub const NOTES: &str = "notes";
    pub const CALENDAR_GROUPS: &str = "calendarGroups";
    pub const CALENDARS: &str = "calendars";
    /// Appointments and blocked slots (the latter carry `isBlockSlot: true`).
    pub const EVENTS: &str = "events";
    pub const APPOINTMENT_NOTES: &str = "appointmentNotes";
    pub const CALENDAR_NOTIFICATIONS: &str = "calendarNotifications";
    pub const CALENDAR_RESOURCES: &str = "calendarResources";
    pub const PIPELINES: &str = "pipelines";
    pub const OPPORTUNITIES: &str = "opportunities";
    pub const CONVERSATIONS: &str = "conversations";
    pub const MESSAGES: &str = "messages";
    pub const BUSINESSES: &str = "businesses";
    pub const WORKFLOWS: &str = "workflows";
    pub const CAMPAIGNS: &str = "campaigns";
    pub const SNAPSHOTS: &str = "snapshots";
    pub const CUSTOM_FIELDS: &str = "customFields";
    pub const CUSTOM_VALUES: &str = "customValues";
    pub const ASSOCIATIONS: &str = "associations";
    pub const RELATIONS: &str = "relations";
    pub const BLOGS: &str = "blogs";
    pub const BLOG_POSTS: &str = "blogPosts";
    pub const BLOG_AUTHORS: &str = "blogAuthors";
    pub const BLOG_CATEGORIES: &str = "blogCategories";
    pub const EMAILS: &str = "emails";

    pub const ALL: &[&str] = &[
        LOCATIONS,
        COMPANIES,
        USERS,
        CONTACTS,
        TASKS,
        NOTES,
        CALENDAR_GROUPS,
        CALENDARS,
        EVENTS,
        APPOINTMENT_NOTES,
        CALENDAR_NOTIFICATIONS,
        CALENDAR_RESOURCES,
        PIPELINES,
        OPPORTUNITIES,
        CONVERSATIONS,
        MESSAGES,
        BUSINESSES,
        WORKFLOWS,
        CAMPAIGNS,
        SNAPSHOTS,
        CUSTOM_FIELDS,
        CUSTOM_VALUES,
        ASSOCIATIONS,
        RELATIONS,
        BLOGS,
        BLOG_POSTS,
        BLOG_AUTHORS,
        BLOG_CATEGORIES,
        EMAILS,
    ];

    /// The field holding a record's id (`_id` for blog items and calendar notifications).
    pub fn id_field(kind: &str) -> &'static str {
        match kind {
            BLOGS | BLOG_POSTS | BLOG_AUTHORS | BLOG_CATEGORIES | CALENDAR_NOTIFICATIONS => "_id",
            _ => "id",
        }
    }
}

/// Records of one kind, in insertion order.
#[derive(Debug, Default)]
pub struct Collection {
    rows: BTreeMap<u64, Record>,
    by_id: HashMap<String, u64, foldhash::fast::RandomState>,
    next_seq: u64,
}

impl Collection {
    pub fn insert(&mut self, id: String, record: Record) {
        if let Some(seq) = self.by_id.get(&id) {
            self.rows.insert(*seq, record);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(id, seq);
        self.rows.insert(seq, record);
    }

    pub fn get(&self, id: &str) -> Option<&Record> {
        self.by_id.get(id).and_then(|seq| self.rows.get(seq))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Record> {
        match self.by_id.get(id) {
            Some(seq) => self.rows.get_mut(seq),
            None => None,
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Record> {
        let seq = self.by_id.remove(id)?;
        self.rows.remove(&seq)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Record> {
        self.rows.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.rows.values_mut()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.by_id.clear();
    }
}

/// All collections. The set of kinds is fixed, so the map itself needs no lock.
#[derive(Debug)]
pub struct Store {
    collections: HashMap<&'static str, RwLock<Collection>, foldhash::fast::RandomState>,
    pub clock: Clock,
    pub ids: IdGen,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            collections: kinds::ALL.iter().map(|k| (*k, RwLock::new(Collection::default()))).collect(),
            clock: Clock::default(),
            ids: IdGen::default(),
        }
    }
}

impl Store {
    /// Whether `kind` names a collection (admin input is checked with this).
    pub fn kind(&self, kind: &str) -> Option<&'static str> {
        self.collections.get_key_value(kind).map(|(k, _)| *k)
    }

    /// A poisoned lock only means another request panicked mid-write; the data is still
    /// the best we have, so keep serving it rather than failing every later request.
    pub fn read(&self, kind: &str) -> RwLockReadGuard<'_, Collection> {
        let lock = self.lock(kind);
        lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self, kind: &str) -> RwLockWriteGuard<'_, Collection> {
        let lock = self.lock(kind);
        lock.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self, kind: &str) -> &RwLock<Collection> {
        match self.collections.get(kind) {
            Some(l) => l,
            // Kinds come from the constants in `kinds`; an unknown one is a bug in this crate,
            // and the contacts collection is a harmless place to send it.
            None => &self.collections[kinds::CONTACTS],
        }
    }

    pub fn get(&self, kind: &str, id: &str) -> Option<Record> {
        self.read(kind).get(id).cloned()
    }

    /// Stores a record under its id field, assigning a fresh id if it has none. Returns the id.
    pub fn insert(&self, kind: &str, mut record: Record) -> String {
        let id = self.assign_id(kind, &mut record);
        self.write(kind).insert(id.clone(), record);
        id
    }

    /// Like [`Store::insert`], returning a copy of the record as stored: one copy, and no
    /// second lock and lookup to read it back.
    pub fn insert_returning(&self, kind: &str, mut record: Record) -> Record {
        let id = self.assign_id(kind, &mut record);
        let copy = record.clone();
        self.write(kind).insert(id, record);
        copy
    }

    /// The record's id, after giving it a fresh one if it has none.
    pub(crate) fn assign_id(&self, kind: &str, record: &mut Record) -> String {
        let field = kinds::id_field(kind);
        match record.get(field).and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => {
                let id = self.ids.next();
                record.insert(field.into(), Value::String(id.clone()));
                id
            }
        }
    }

    pub fn remove(&self, kind: &str, id: &str) -> Option<Record> {
        self.write(kind).remove(id)
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.collections.iter().map(|(k, c)| (*k, c.read().map(|c| c.len()).unwrap_or(0))).collect()
    }

    pub fn clear(&self) {
        for kind in kinds::ALL {
            self.write(kind).clear();
        }
    }
}

/// Reads a string field.
pub fn str_of<'a>(r: &'a Record, field: &str) -> Option<&'a str> {
    r.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn insert_get_remove_keep_order() {
        let s = Store::default();
        for n in 0..3 {
            let mut r = Record::new();
            r.insert("n".into(), json!(n));
            s.insert(kinds::CONTACTS, r);
        }
        let ids: Vec<String> =
            s.read(kinds::CONTACTS).iter().filter_map(|r| str_of(r, "id").map(String::from)).collect();
        assert_eq!(ids.len(), 3);
        assert!(s.remove(kinds::CONTACTS, &ids[1]).is_some());
        assert!(s.get(kinds::CONTACTS, &ids[1]).is_none());
        let ns: Vec<Value> = s.read(kinds::CONTACTS).iter().map(|r| r["n"].clone()).collect();
        assert_eq!(ns, vec![json!(0), json!(2)]);
    }
}
