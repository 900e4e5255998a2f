//! Work shared by several flowd nodes on one database ([`Cluster`]), for a store that
//! offers it (PostgreSQL). The embedded store belongs to one process, which owns every
//! trigger and every run: it has no [`Cluster`].
//!
//! The coordination is the database's: a node is a row kept fresh by its heartbeat; a
//! trigger is polled by the node holding its lease row, whose epoch every poll commit
//! checks (fencing); a run is executed by the node that claimed it, and every change to it
//! from another node is refused. Nothing here waits on another node: a node that stops
//! renewing is found out by its expiry alone.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::model::RunId;

/// What one heartbeat found: the leases this node holds now, and what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Trigger id → the epoch of this node's lease on it (see [`crate::PollCommit::lease`]).
    pub leases: Vec<(String, i64)>,
    /// Leases taken this time from a node whose lease had expired (it died or was paused).
    pub taken_over: Vec<String>,
    /// Leases given up this time so that a node that joined gets its share.
    pub released: Vec<String>,
    /// Nodes alive now that share the triggers, this one included if it polls.
    pub live_nodes: usize,
}

/// A run a node claimed (see [`Cluster::claim_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRun {
    pub id: RunId,
    pub flow: String,
    /// The node instance that had it, when it was taken from a node that stopped renewing.
    pub from: Option<String>,
    /// This node had claimed it already but was not executing it (the answer to that claim
    /// was lost, or its execution failed on the database).
    pub again: bool,
}

/// Which runs a node may claim (see [`Cluster::claim_runs`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimScope<'a> {
    /// The flows this node has loaded: a run of another flow is left to a node that has it.
    pub flows: &'a [String],
    /// Runs this node holds (queued or executing) that it must not be given again.
    pub holding: &'a [RunId],
}

/// Requests granted from a location's shared budget (see [`Cluster::take_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetGrant {
    pub granted: u32,
    /// How long the window the grant belongs to lasts from now.
    pub window_ends_in: Duration,
    /// The day's budget is spent.
    pub day_spent: bool,
}

/// A node as the database knows it (`flowd nodes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeInfo {
    /// The instance id: the node's name and the start it belongs to (`web-1/3f2a…`).
    pub id: String,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Its heartbeat is within the lease period.
    pub alive: bool,
    /// Why it stopped, when it did: `left` (a clean stop), `superseded` (a new start of a
    /// node with its name), or none for one that is alive or stopped renewing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The triggers whose lease it holds (expired or not).
    pub leases: Vec<String>,
    /// Runs it claimed that are pending or running.
    pub runs: u64,
}

/// Work sharing between the nodes of one database. Every method is one transaction.
pub trait Cluster: Send + Sync {
    /// This node instance's id (see [`NodeInfo::id`]).
    fn node_id(&self) -> &str;

    /// How long a lease or a node's claim on its runs lasts without a heartbeat.
    fn lease_ttl(&self) -> Duration;

    /// Whether this node takes a share of the triggers (see `NodeOptions::polls`).
    fn polls(&self) -> bool;

    /// Records this node alive, renews its leases and balances the triggers in `wanted`
    /// (the ones this node would poll): it takes leases nobody holds or whose holder let
    /// them expire, up to its share (`wanted` over the live nodes, rounded up), and gives
    /// up leases past its share plus one. Refused with [`crate::StoreError::Fenced`] once
    /// this instance was superseded (a node of its name started again).
    fn heartbeat(&self, wanted: &[String]) -> Result<Heartbeat>;

    /// Claims up to `limit` runs of `scope.flows` to execute, oldest first, each for one
    /// node only (`FOR UPDATE SKIP LOCKED`): `pending` or `running` runs nobody claimed (a
    /// poll under a lease created them), those of nodes that stopped renewing, and this
    /// node's own that are not in `scope.holding`. The last are runs this node claimed and
    /// then lost track of: a claim committed whose answer the connection dropped, a run
    /// whose execution failed on the database. Nobody else would ever take them while this
    /// node is alive.
    fn claim_runs(&self, limit: usize, scope: ClaimScope<'_>) -> Result<Vec<ClaimedRun>>;

    /// Gives up this node's leases and claims and marks it gone (a clean stop), so that
    /// other nodes take its work at once instead of after the lease period.
    fn leave(&self) -> Result<()>;

    /// Every node the database knows of, newest start first; nodes gone for over a day
    /// are forgotten.
    fn nodes(&self) -> Result<Vec<NodeInfo>>;

    /// Holds a lock on `account` across every node until the guard is dropped: an OAuth
    /// refresh runs under it, so that one node refreshes and the others read the rotated
    /// pair it committed. The lock goes with the connection if the node dies.
    fn lock_account(&self, account: &str) -> Result<Box<dyn Send>>;

    /// Takes up to `want` requests of `location`'s GHL budget for every node together: at
    /// most `per_window` in the current window of length `window`, and `daily` in the
    /// current UTC day, both by the database's clock.
    fn take_budget(
        &self,
        location: &str,
        window: Duration,
        per_window: u32,
        daily: u32,
        want: u32,
    ) -> Result<BudgetGrant>;
}
