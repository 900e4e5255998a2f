//! Byte encodings of keys and small values. Numbers are big-endian so that
//! sled's byte order is numeric order (ids, times); strings that are followed
//! by more key material carry a length prefix so that one string can never be
//! a prefix-match for another (`flow` vs `flow-2`) whatever bytes they hold.

use chrono::{DateTime, Utc};

use crate::error::{Result, StoreError};
use crate::model::RunId;

/// `len(s) u32 BE ++ s`: the prefix under which everything of `s` sorts.
pub fn str_prefix(s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + s.len());
    k.extend_from_slice(&(s.len() as u32).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
    k
}

/// Splits `len ++ s ++ rest` into `(s, rest)`.
pub fn split_str_prefix<'a>(tree: &'static str, k: &'a [u8]) -> Result<(&'a str, &'a [u8])> {
    let bad = |reason: &str| corrupt_key(tree, k, reason);
    let len_bytes: [u8; 4] = k.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("short key"))?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let s = k.get(4..4 + len).ok_or_else(|| bad("length past end"))?;
    let s = std::str::from_utf8(s).map_err(|_| bad("not utf-8"))?;
    Ok((s, &k[4 + len..]))
}

pub fn seen_key(trigger: &str, key: &str) -> Vec<u8> {
    let mut k = str_prefix(trigger);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn run_key(id: RunId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub fn run_id_from(tree: &'static str, b: &[u8]) -> Result<RunId> {
    let arr: [u8; 8] = b.try_into().map_err(|_| corrupt_key(tree, b, "run id is not 8 bytes"))?;
    Ok(RunId(u64::from_be_bytes(arr)))
}

/// Run id from the last 8 bytes of an index key.
pub fn trailing_run_id(tree: &'static str, k: &[u8]) -> Result<RunId> {
    if k.len() < 8 {
        return Err(corrupt_key(tree, k, "index key shorter than a run id"));
    }
    run_id_from(tree, &k[k.len() - 8..])
}

pub fn status_index_key(tag: u8, id: RunId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}

pub fn flow_index_key(flow: &str, id: RunId) -> Vec<u8> {
    let mut k = str_prefix(flow);
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// `record ++ NUL`: the prefix of every `touched` entry of `record` (refs hold no NUL, see
/// `transitions::check_touched`).
pub fn touched_prefix(record: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(record.len() + 9);
    k.extend_from_slice(record.as_bytes());
    k.push(0);
    k
}

pub fn touched_key(record: &str, id: RunId) -> Vec<u8> {
    let mut k = touched_prefix(record);
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

pub fn time_key(t: DateTime<Utc>, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&millis(t).to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Times before 1970 do not occur here; clamp rather than wrap.
pub fn millis(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

pub fn time_value(t: DateTime<Utc>) -> [u8; 8] {
    millis(t).to_be_bytes()
}

pub fn time_from(tree: &'static str, key: &[u8], v: &[u8]) -> Result<DateTime<Utc>> {
    let arr: [u8; 8] = v.try_into().map_err(|_| corrupt_key(tree, key, "time is not 8 bytes"))?;
    let ms = i64::try_from(u64::from_be_bytes(arr)).map_err(|_| corrupt_key(tree, key, "time out of range"))?;
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt_key(tree, key, "time out of range"))
}

pub fn corrupt_key(tree: &'static str, key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt { tree, key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_string() }
}

pub fn decode_json<T: serde::de::DeserializeOwned>(tree: &'static str, key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| corrupt_key(tree, key, &e.to_string()))
}

pub fn encode_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    // Sized for a run record, so that encoding one does not grow the buffer from empty.
    let mut out = Vec::with_capacity(1024);
    crate::payload::encoding_record(|| serde_json::to_writer(&mut out, v))
        .map_err(|e| StoreError::Invalid(format!("cannot encode record: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_prefix_separates_strings_that_share_a_prefix() {
        let a = flow_index_key("flow", RunId(1));
        let b = flow_index_key("flow-2", RunId(1));
        assert!(!b.starts_with(&str_prefix("flow")));
        assert!(a.starts_with(&str_prefix("flow")));
        let (s, rest) = split_str_prefix("t", &b).unwrap();
        assert_eq!(s, "flow-2");
        assert_eq!(rest, &1u64.to_be_bytes());
    }

    #[test]
    fn truncated_keys_are_errors() {
        assert!(split_str_prefix("t", &[0, 0, 0, 9, b'a']).is_err());
        assert!(split_str_prefix("t", &[0, 0]).is_err());
        assert!(trailing_run_id("t", &[1, 2, 3]).is_err());
        assert!(time_from("t", b"k", &[1, 2]).is_err());
    }
}
