//! What makes a trigger item "new": the dedupe key of an item under a mode.
//!
//! - `new`: the item's id — fires once per id.
//! - `updated`: id + updated-at — fires on creation and on each update.
//! - `changed`: id + a hash of the content — fires whenever anything in the item changes
//!   (for records with no updated-at field).

use catalog::{DedupeMode, IdSource, TriggerSpec};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The identity of an item, from the catalog's id source. `inputs` are the trigger's
/// rendered request parameters (file downloads carry no id of their own).
pub fn item_id(spec: &TriggerSpec, item: &Value, inputs: &Map<String, Value>) -> Option<String> {
    match &spec.id {
        IdSource::Field(field) => item.get(field).and_then(scalar_text),
        IdSource::Param(name) => inputs.get(name).and_then(scalar_text),
        IdSource::ItemValue => scalar_text(item),
        IdSource::ContentHash => Some(content_hash(item)),
    }
}

/// The dedupe key of an item, or `None` when the item has no id (it cannot be tracked).
pub fn dedupe_key(spec: &TriggerSpec, mode: DedupeMode, item: &Value, inputs: &Map<String, Value>) -> Option<String> {
    let id = item_id(spec, item, inputs)?;
    Some(match mode {
        DedupeMode::New => id,
        DedupeMode::Updated => {
            let updated = spec.updated.as_deref().and_then(|f| item.get(f)).and_then(scalar_text);
            match updated {
                Some(u) => format!("{id}@{u}"),
                // A record without its updated-at falls back to its content.
                None => format!("{id}#{}", content_hash(item)),
            }
        }
        DedupeMode::Changed => format!("{id}#{}", content_hash(item)),
    })
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A short, stable hash of a JSON value: object keys are hashed in sorted order, so the
/// same record serialized with its fields in another order hashes the same.
pub fn content_hash(v: &Value) -> String {
    let mut h = Sha256::new();
    feed(&mut h, v);
    let digest = h.finalize();
    hex::encode(&digest[..12])
}

fn feed(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"d");
            h.update(n.to_string().as_bytes());
            h.update(b";");
        }
        Value::String(s) => {
            h.update(b"s");
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Value::Array(items) => {
            h.update(b"[");
            for i in items {
                feed(h, i);
            }
            h.update(b"]");
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            h.update(b"{");
            for k in keys {
                h.update((k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                feed(h, &map[k]);
            }
            h.update(b"}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::Catalog;
    use serde_json::json;

    fn spec(key: &str) -> TriggerSpec {
        let cat = Catalog::builtin().expect("catalog");
        cat.get(key).and_then(|o| o.trigger.clone()).expect("a trigger")
    }

    #[test]
    fn keys_per_mode() {
        let s = spec("opportunities.search_opportunities");
        let item = json!({"id": "o1", "updatedAt": "2026-01-01T00:00:00Z", "name": "Deal"});
        let none = Map::new();
        assert_eq!(dedupe_key(&s, DedupeMode::New, &item, &none).as_deref(), Some("o1"));
        assert_eq!(dedupe_key(&s, DedupeMode::Updated, &item, &none).as_deref(), Some("o1@2026-01-01T00:00:00Z"));
        let changed = dedupe_key(&s, DedupeMode::Changed, &item, &none).expect("key");
        assert!(changed.starts_with("o1#"));
        let edited = json!({"id": "o1", "updatedAt": "2026-01-01T00:00:00Z", "name": "Deal 2"});
        assert_ne!(dedupe_key(&s, DedupeMode::Changed, &edited, &none).as_deref(), Some(changed.as_str()));
        assert_eq!(dedupe_key(&s, DedupeMode::New, &json!({"name": "no id"}), &none), None);
    }

    #[test]
    fn hash_ignores_key_order() {
        assert_eq!(content_hash(&json!({"a": 1, "b": [1, "x"]})), content_hash(&json!({"b": [1, "x"], "a": 1})));
        assert_ne!(content_hash(&json!({"a": "1"})), content_hash(&json!({"a": 1})));
    }

    #[test]
    fn ids_from_params_and_values() {
        let rec = spec("conversations.get_message_recording");
        let mut inputs = Map::new();
        inputs.insert("messageId".into(), json!("m1"));
        assert_eq!(item_id(&rec, &json!(null), &inputs).as_deref(), Some("m1"));
        let slots = spec("calendars.get_free_slots");
        assert_eq!(
            item_id(&slots, &json!("2026-01-01T09:00:00Z"), &Map::new()).as_deref(),
            Some("2026-01-01T09:00:00Z")
        );
    }
}
