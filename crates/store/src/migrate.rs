//! Moving a store: sled to fjall, or an embedded store into PostgreSQL.
//!
//! sled to fjall is record for record. Both backends keep the same tables,
//! keys and records ([`crate::kv`]), so nothing is decoded: every data table is copied as
//! it is, and the run-id floor is set above every id sled handed out. The triggers keep
//! what they have seen, so nothing fires again and nothing baselines again.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::keys;
use crate::kv::{Kv, Table, View};
use crate::layout::Backend;
use crate::model::RunFilter;
use crate::pg::{redacted_url, Create, Import, PgOptions, PgStore};
use crate::{FjallStore, KvStore, SledStore, Store};

/// What [`sled_to_fjall`] copied: records per table, in the order copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    pub trees: Vec<(&'static str, u64)>,
}

impl Migrated {
    pub fn total(&self) -> u64 {
        self.trees.iter().map(|(_, n)| n).sum()
    }
}

/// Copies the sled store at `from` (opened, so upgraded to the current format first) into a
/// new fjall store created at `to`, which must not hold a store yet; `from` is left as it
/// was. Both stores are closed on return. The new store has its own store id.
pub fn sled_to_fjall(from: &Path, to: &Path) -> Result<Migrated> {
    let src = SledStore::open(from)?;
    let dst = FjallStore::create_or_open(to)?;
    if dst.holds_data()? {
        return Err(StoreError::Invalid(format!("{} already holds a store with data", to.display())));
    }
    let mut out = Migrated::default();
    let view = src.kv().view();
    for t in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
        let entries = view.range(t, b"", None, false).map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())));
        out.trees.push((t.name(), dst.import(t, entries)?));
    }
    dst.kv().raise_run_id_floor(src.kv().new_id()?)?;
    dst.kv().durable()?;
    Ok(out)
}

/// Copies the embedded store at `from` (sled or fjall, opened, so upgraded first) into the
/// PostgreSQL database `to`, whose schema must hold no flowd data yet: seen keys (with when
/// each was first seen), trigger states, runs with their ids, steps and items, tokens and
/// webhook events, in one transaction (all or nothing). `from` is left as it was. The
/// PostgreSQL store keeps its own store id. Everything is read into memory first.
pub fn embedded_to_postgres(from: &Path, to: &PgOptions) -> Result<Migrated> {
    match crate::layout::existing_backend(from)? {
        Some(Backend::Sled) => kv_to_postgres(&SledStore::open(from)?, to),
        Some(Backend::Fjall) => kv_to_postgres(&FjallStore::open(from)?, to),
        Some(Backend::Postgres) | None => Err(StoreError::NotFound {
            path: from.to_path_buf(),
            reason: "no embedded store there (no STORE marker)".into(),
        }),
    }
}

fn kv_to_postgres<K: Kv>(src: &KvStore<K>, to: &PgOptions) -> Result<Migrated> {
    let dst = PgStore::connect(to, Create::Yes)?;
    if dst.holds_data()? {
        return Err(StoreError::Invalid(format!("{} already holds a flowd store with data", redacted_url(&to.url))));
    }
    let view = src.kv().view();
    let mut data = Import::default();
    for entry in view.range(Table::Seen, b"", None, false) {
        let (k, v) = entry?;
        let (trigger, key) = keys::split_str_prefix(Table::Seen.name(), k.as_ref())?;
        let key =
            std::str::from_utf8(key).map_err(|_| keys::corrupt_key(Table::Seen.name(), k.as_ref(), "not utf-8"))?;
        let at = keys::time_from(Table::Seen.name(), k.as_ref(), v.as_ref())?;
        data.seen.push((trigger.to_string(), key.to_string(), at));
    }
    data.triggers = text_keyed(&view, Table::Triggers)?;
    data.tokens = text_keyed(&view, Table::Tokens)?;
    for entry in view.range(Table::Webhooks, b"", None, false) {
        let (k, v) = entry?;
        data.webhooks.push(keys::decode_json(Table::Webhooks.name(), k.as_ref(), v.as_ref())?);
    }
    drop(view);
    data.runs = src.list_runs(&RunFilter::default())?;
    data.runs.reverse();
    let next = src.kv().new_id()?;
    data.next_id =
        i64::try_from(next).map_err(|_| StoreError::Invalid(format!("run id {next} is past PostgreSQL's bigint")))?;
    let out = Migrated {
        trees: vec![
            ("seen", data.seen.len() as u64),
            ("triggers", data.triggers.len() as u64),
            ("runs", data.runs.len() as u64),
            ("tokens", data.tokens.len() as u64),
            ("webhooks", data.webhooks.len() as u64),
        ],
    };
    dst.import(data)?;
    Ok(out)
}

/// A table keyed by text with JSON values, as pairs.
fn text_keyed<V: View>(view: &V, t: Table) -> Result<Vec<(String, serde_json::Value)>> {
    view.range(t, b"", None, false)
        .map(|entry| {
            let (k, v) = entry?;
            let name =
                std::str::from_utf8(k.as_ref()).map_err(|_| keys::corrupt_key(t.name(), k.as_ref(), "not utf-8"))?;
            Ok((name.to_string(), keys::decode_json(t.name(), k.as_ref(), v.as_ref())?))
        })
        .collect()
}
