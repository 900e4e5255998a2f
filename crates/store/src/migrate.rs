//! Moving a sled store to fjall, record for record. Both backends keep the same trees
//! (partitions), keys and records, so nothing is decoded: every data tree is copied as it
//! is, and the run-id floor is set above every id sled handed out. The triggers keep what
//! they have seen, so nothing fires again and nothing baselines again.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::{FjallStore, SledStore, Store};

/// What [`sled_to_fjall`] copied: records per tree, in the order copied.
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
    if !dst.is_empty()? {
        return Err(StoreError::Invalid(format!("{} already holds a store with data", to.display())));
    }
    let mut out = Migrated::default();
    for (name, tree) in src.data_trees() {
        let entries = tree.iter().map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from));
        out.trees.push((name, dst.import(name, entries)?));
    }
    dst.raise_run_id_floor(src.run_id_ceiling()?)?;
    dst.flush()?;
    Ok(out)
}
