//! What [`crate::Store::prune`] removes, worked out the same way by every backend: these
//! functions choose, the backends delete.

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::keys;
use crate::model::{Retention, RunId};

/// Milliseconds since the epoch of `now - age` (0 if that is before the epoch).
pub(crate) fn cutoff_ms(now: DateTime<Utc>, age: std::time::Duration) -> u64 {
    keys::millis(now).saturating_sub(age.as_millis().min(u64::MAX as u128) as u64)
}

/// The seen keys to forget, from the `seen` tree in key order (`(key, value)` pairs):
/// those first seen before the age limit, except each trigger's newest
/// `seen_keep_per_trigger`, so that items still inside a poll window never fire again.
pub(crate) fn seen_keys_to_prune<K: AsRef<[u8]>>(
    tree: &'static str,
    entries: impl Iterator<Item = Result<(K, K)>>,
    policy: &Retention,
    now: DateTime<Utc>,
) -> Result<Vec<K>> {
    let Some(max_age) = policy.seen_max_age else {
        return Ok(Vec::new());
    };
    let cutoff = cutoff_ms(now, max_age);
    let mut doomed = Vec::new();
    // Keys of one trigger are contiguous (length-prefixed trigger first), so one pass
    // groups them; only one trigger's keys are held at a time.
    let mut group: Vec<(u64, K)> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut flush_group = |group: &mut Vec<(u64, K)>| {
        group.sort_by_key(|g| std::cmp::Reverse(g.0));
        for (ms, k) in group.drain(..).skip(policy.seen_keep_per_trigger) {
            if ms < cutoff {
                doomed.push(k);
            }
        }
    };
    for entry in entries {
        let (k, v) = entry?;
        let (trigger, _) = keys::split_str_prefix(tree, k.as_ref())?;
        let prefix = keys::str_prefix(trigger);
        if current.as_deref() != Some(prefix.as_slice()) {
            flush_group(&mut group);
            current = Some(prefix);
        }
        let ms = keys::millis(keys::time_from(tree, k.as_ref(), v.as_ref())?);
        group.push((ms, k));
    }
    flush_group(&mut group);
    Ok(doomed)
}

/// The finished runs to remove, from every finished run's id and last update (ms): those
/// past the age limit and those beyond the newest `runs_keep`.
pub(crate) fn runs_to_prune(mut finished: Vec<(RunId, u64)>, policy: &Retention, now: DateTime<Utc>) -> Vec<RunId> {
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    let cutoff = policy.runs_max_age.map(|a| cutoff_ms(now, a));
    let keep = policy.runs_keep.unwrap_or(usize::MAX);
    finished
        .iter()
        .enumerate()
        .filter(|(i, (_, ms))| *i >= keep || cutoff.is_some_and(|c| *ms < c))
        .map(|(_, (id, _))| *id)
        .collect()
}
