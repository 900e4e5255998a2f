//! What an operator does to runs, shared by the console and the CLI (`flowd replay`,
//! `flowd release`): which runs a bulk replay selects, and the two decisions the engine
//! leaves to a person (an in-doubt run that did reach GHL; a held run nobody wants).
//!
//! Replays and releases themselves are the engine's (`Engine::replay`, `Engine::release`);
//! the decisions are one store write each, checked in the same write (`RunChange::Expect`)
//! so that a decision taken twice, or on a run that moved on, is refused.

use chrono::{DateTime, Utc};
use store::{Run, RunChange, RunFilter, RunId, RunStatus, Store, StoreError};

/// Which runs a bulk replay takes: dead ones (and in-doubt ones if asked) matching the
/// filter's flow, time range and record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub flow: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub touched: Option<String>,
}

/// What a bulk replay would replay, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    pub dead: Vec<RunId>,
    /// Their request may have reached GHL: replayed only when the operator says so.
    pub in_doubt: Vec<RunId>,
}

pub fn replay_candidates(store: &dyn Store, sel: &Selection) -> store::Result<Candidates> {
    let list = |status| -> store::Result<Vec<RunId>> {
        let filter = RunFilter {
            flow: sel.flow.clone(),
            status: Some(status),
            since: sel.since,
            until: sel.until,
            touched: sel.touched.clone(),
            ..RunFilter::default()
        };
        let mut ids: Vec<RunId> = store.list_runs(&filter)?.into_iter().map(|r| r.id).collect();
        // Oldest first, as they happened.
        ids.sort();
        Ok(ids)
    };
    Ok(Candidates { dead: list(RunStatus::Dead)?, in_doubt: list(RunStatus::InDoubt)? })
}

/// An operator checked an in-doubt run's request in GHL and found it done: the run
/// succeeds without sending anything again.
pub fn mark_done(store: &dyn Store, id: RunId) -> store::Result<Run> {
    store.update_run(
        id,
        &[
            RunChange::Expect { status: RunStatus::InDoubt },
            RunChange::Status { status: RunStatus::Succeeded, error: None },
        ],
    )
}

/// A held run (the flood guard stopped its flow) that should never run: dead, with why.
pub fn discard_held(store: &dyn Store, id: RunId) -> store::Result<Run> {
    store.update_run(
        id,
        &[
            RunChange::Expect { status: RunStatus::Held },
            RunChange::Status { status: RunStatus::Dead, error: Some("discarded by an operator".into()) },
        ],
    )
}

/// A refused decision as the operator should read it.
pub fn refusal(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Conflict(why) => Some(why.clone()),
        _ => None,
    }
}
