//! Moving a sled store to fjall, record for record. Both backends keep the same tables,
//! keys and records ([`crate::kv`]), so nothing is decoded: every data table is copied as
//! it is, and the run-id floor is set above every id sled handed out. The triggers keep
//! what they have seen, so nothing fires again and nothing baselines again.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::kv::{Kv, Table, View};
use crate::{FjallStore, SledStore};

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
