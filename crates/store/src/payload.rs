//! A step's request or response: shared (not copied) between the change that brings it and
//! the record that keeps it, and encoded to JSON once however often its record is written.
//!
//! A run's record is rewritten whole on every change, so a step's request would be encoded
//! again with every later write of its run. The first time the
//! store encodes a payload (through `keys::encode_json`, always serde_json's compact
//! writer) the payload keeps the JSON, and later encodings copy it: the same bytes, since
//! serde_json writes a value the same way on its own as inside a record. Serialized
//! anywhere else (an API answer, a snapshot, YAML), a payload is its plain value.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Clone)]
pub struct Payload(Arc<Inner>);

struct Inner {
    value: Value,
    json: OnceLock<Box<RawValue>>,
}

impl Payload {
    pub fn new(value: Value) -> Payload {
        Payload(Arc::new(Inner { value, json: OnceLock::new() }))
    }

    /// Its JSON, made on first use and kept.
    fn json(&self) -> serde_json::Result<&RawValue> {
        if let Some(json) = self.0.json.get() {
            return Ok(json);
        }
        let json = serde_json::value::to_raw_value(&self.0.value)?;
        Ok(self.0.json.get_or_init(|| json))
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0.value
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        Payload::new(value)
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::new(Value::Null)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.value == other.0.value
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

thread_local! {
    /// Set while `keys::encode_json` writes a record with serde_json, the one serializer a
    /// `RawValue` is written verbatim by.
    static ENCODING_RECORD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a serde_json encoding) with payloads writing their kept JSON.
pub(crate) fn encoding_record<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENCODING_RECORD.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(ENCODING_RECORD.with(|flag| flag.replace(true)));
    f()
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if ENCODING_RECORD.with(Cell::get) {
            self.json().map_err(S::Error::custom)?.serialize(s)
        } else {
            self.0.value.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        Value::deserialize(d).map(Payload::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Record {
        n: u32,
        request: Payload,
        response: Option<Payload>,
    }

    fn record(p: &Payload) -> Record {
        Record { n: 1, request: p.clone(), response: Some(p.clone()) }
    }

    #[test]
    fn a_record_is_the_same_bytes_whether_its_payloads_json_was_kept_or_not() {
        let p = Payload::new(json!({"b": [1, 2.5, "x\"y\u{e9}\n"], "a": {"z": null, "y": true}, "c": -7}));
        let plain = serde_json::to_vec(&record(&p)).unwrap();
        assert!(p.0.json.get().is_none(), "outside a record encoding nothing is kept");
        let first = encoding_record(|| serde_json::to_vec(&record(&p)).unwrap());
        assert!(p.0.json.get().is_some());
        let second = encoding_record(|| serde_json::to_vec(&record(&p)).unwrap());
        assert_eq!(first, plain);
        assert_eq!(second, plain);
        // Key order (serde_json's preserve_order) survives the round trip too.
        assert!(String::from_utf8(plain).unwrap().contains(r#"{"b":[1,2.5,"x\"y"#));
    }

    #[test]
    fn elsewhere_a_payload_is_its_plain_value() {
        let p = Payload::new(json!({"id": "t1"}));
        encoding_record(|| serde_json::to_vec(&p).unwrap());
        // serde_json::Value's own serializer is not the record writer: the value, not a
        // raw-value wrapper.
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"id": "t1"}));
        let back: Payload = serde_json::from_str(r#"{"id":"t1"}"#).unwrap();
        assert_eq!(back, p);
        assert_eq!(format!("{p:?}"), format!("{:?}", json!({"id": "t1"})));
    }

    #[test]
    fn the_flag_is_restored_after_a_panicking_encoding() {
        let r = std::panic::catch_unwind(|| encoding_record(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!ENCODING_RECORD.with(Cell::get));
    }
}
