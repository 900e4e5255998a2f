//! [`Cluster`] in PostgreSQL: node rows, trigger leases with a fencing epoch, and run
//! claims by `FOR UPDATE SKIP LOCKED` (tables in `migrations/V2__cluster.sql`).
//!
//! The cluster's calls run on a connection thread of their own, so that a heartbeat never
//! waits behind the runs' writes: a node whose heartbeat queued behind a slow batch would
//! lose its leases while it is working.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, GenericClient, NoTls};

use super::{off_runtime, pool::Pool, PgStore};
use crate::cluster::{BudgetGrant, ClaimScope, ClaimedRun, Cluster, Heartbeat, NodeInfo};
use crate::error::{Result, StoreError};
use crate::model::RunId;

/// How a store opened as a cluster node names itself (see [`super::PgOptions::node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOptions {
    /// The node's name, stable across its restarts (a host name, `web-1`): a start under a
    /// name supersedes every earlier instance of it, whose work is then taken at once.
    pub name: String,
    /// How long leases and claims last without a heartbeat; heartbeats come three times
    /// as often.
    pub lease_ttl: Duration,
    /// Whether the node takes a share of the triggers: the service does; a command that
    /// only executes runs (`flowd replay`) does not, and is not counted when the others
    /// work out their shares.
    pub polls: bool,
}

/// Lease period unless configured: a dead node's triggers and runs move within it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// A store handle that is a node.
pub(crate) struct Node {
    pub(crate) id: String,
    ttl: Duration,
    polls: bool,
    /// Set by [`Cluster::leave`]: every later change from this handle is refused, so a run
    /// still executing at the shutdown deadline cannot take back what was handed over.
    pub(crate) left: AtomicBool,
    pool: Pool,
}

impl Node {
    /// Registers a new instance of `options.name`, superseding earlier ones (their leases
    /// expire now and their runs may be claimed at once), and starts its connection thread.
    pub(crate) fn register(config: &postgres::Config, client: &mut Client, options: &NodeOptions) -> Result<Node> {
        if options.name.is_empty() || options.name.len() > 200 || options.name.contains('/') {
            return Err(StoreError::Invalid(format!("node name {:?}: 1 to 200 characters, without `/`", options.name)));
        }
        let ttl = options.lease_ttl.max(Duration::from_secs(1));
        let id = format!("{}/{}", options.name, uuid::Uuid::new_v4().simple());
        let mut tx = client.transaction()?;
        tx.execute(
            "UPDATE trigger_leases SET expires_at = '-infinity' \
             WHERE owner IN (SELECT id FROM nodes WHERE name = $1 AND ended IS NULL)",
            &[&options.name],
        )?;
        tx.execute("UPDATE nodes SET ended = 'superseded' WHERE name = $1 AND ended IS NULL", &[&options.name])?;
        tx.execute(
            "INSERT INTO nodes (id, name, started_at, heartbeat_at, ttl, polls) \
             VALUES ($1, $2, now(), now(), make_interval(secs => $3), $4)",
            &[&id, &options.name, &ttl.as_secs_f64(), &options.polls],
        )?;
        tx.execute("DELETE FROM nodes WHERE heartbeat_at < now() - interval '1 day'", &[])?;
        tx.commit()?;
        let pool = Pool::start(config, 1, None, "flowd-pg-cluster", &session_setup(ttl))?;
        Ok(Node { id, ttl, polls: options.polls, left: AtomicBool::new(false), pool })
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }
}

/// Session settings of a node's connections: a transaction left open by a node that was
/// paused (SIGSTOP, a frozen VM) holds its row locks, which would keep the other nodes from
/// taking its leases and runs (they skip locked rows) until it woke. The server ends such a
/// session once it has been idle inside a transaction for a third of the lease; flowd's own
/// transactions never wait on anything but the database inside one.
pub(crate) fn session_setup(ttl: Duration) -> String {
    let ms = (ttl / 3).as_millis().max(500);
    format!("SET idle_in_transaction_session_timeout = {ms}")
}

impl PgStore {
    fn node(&self) -> Result<&Node> {
        self.node.as_ref().ok_or_else(|| StoreError::Invalid("this store was not opened as a cluster node".into()))
    }
}

/// The triggers to take and to give up for a node holding `held` that wants `wanted`,
/// with `live` nodes sharing them.
fn balance(held: &BTreeSet<String>, wanted: &BTreeSet<String>, live: usize) -> (usize, Vec<String>) {
    let share = wanted.len().div_ceil(live.max(1));
    let mut release: Vec<String> = held.difference(wanted).cloned().collect();
    let kept: Vec<&String> = held.intersection(wanted).collect();
    if kept.len() > share {
        release.extend(kept[share..].iter().map(|t| (*t).clone()));
    }
    (share.saturating_sub(kept.len()), release)
}

impl Cluster for PgStore {
    fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.id.as_str())
    }

    fn lease_ttl(&self) -> Duration {
        self.node.as_ref().map_or(DEFAULT_LEASE_TTL, |n| n.ttl)
    }

    fn polls(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.polls)
    }

    fn heartbeat(&self, wanted: &[String]) -> Result<Heartbeat> {
        let node = self.node()?;
        if node.left.load(Ordering::Acquire) {
            return Err(StoreError::Fenced(format!("node {} has left the cluster", node.id)));
        }
        let (me, ttl) = (node.id.clone(), node.ttl_secs());
        // A node that does not poll wants nothing (and so takes nothing).
        let wanted: BTreeSet<String> = if node.polls { wanted.iter().cloned().collect() } else { BTreeSet::new() };
        node.pool.call(move |c| {
            let mut tx = c.transaction()?;
            let mine = tx.execute(
                "UPDATE nodes SET heartbeat_at = now() WHERE id = $1 AND ended IS NULL",
                &[&me],
            )?;
            if mine == 0 {
                return Err(StoreError::Fenced(format!(
                    "node instance {me} was superseded: another flowd started under its name"
                )));
            }
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM nodes WHERE polls AND ended IS NULL AND heartbeat_at + ttl > now()",
                    &[],
                )?
                .try_get(0)?;
            let rows = tx.query(
                "UPDATE trigger_leases SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1 \
                 RETURNING trigger, epoch",
                &[&me, &ttl],
            )?;
            let mut leases: HashMap<String, i64> = HashMap::with_capacity(rows.len());
            for r in &rows {
                leases.insert(r.try_get(0)?, r.try_get(1)?);
            }
            let held: BTreeSet<String> = leases.keys().cloned().collect();
            let (room, release) = balance(&held, &wanted, usize::try_from(live).unwrap_or(1));
            let mut beat = Heartbeat { live_nodes: usize::try_from(live).unwrap_or(0), ..Heartbeat::default() };
            if !release.is_empty() {
                tx.execute(
                    "UPDATE trigger_leases SET owner = '', expires_at = '-infinity' WHERE owner = $1 AND trigger = ANY($2)",
                    &[&me, &release],
                )?;
                for t in &release {
                    leases.remove(t);
                }
                beat.released = release;
            }
            if room > 0 {
                take_leases(&mut tx, &me, ttl, &wanted, &held, room, &mut leases, &mut beat)?;
            }
            tx.commit()?;
            let mut leases: Vec<(String, i64)> = leases.into_iter().collect();
            leases.sort();
            beat.leases = leases;
            Ok(beat)
        })
    }

    fn claim_runs(&self, limit: usize, scope: ClaimScope<'_>) -> Result<Vec<ClaimedRun>> {
        let node = self.node()?;
        if limit == 0 || scope.flows.is_empty() || node.left.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let me = node.id.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let flows = scope.flows.to_vec();
        let holding: Vec<i64> = scope.holding.iter().map(|id| id.0 as i64).collect();
        node.pool.call(move |c| {
            let rows = c.query(
                "WITH c AS ( \
                   SELECT r.id, r.owner FROM runs r \
                   WHERE r.status IN ('pending', 'running') AND r.flow = ANY($3) \
                     AND (r.owner IS NULL \
                       OR (r.owner = $1 AND r.id <> ALL($4)) \
                       OR (r.owner <> $1 AND NOT EXISTS ( \
                         SELECT 1 FROM nodes n WHERE n.id = r.owner AND n.ended IS NULL AND n.heartbeat_at + n.ttl > now()))) \
                   ORDER BY r.id LIMIT $2 FOR UPDATE OF r SKIP LOCKED) \
                 UPDATE runs SET owner = $1 FROM c WHERE runs.id = c.id \
                 RETURNING runs.id, runs.flow, NULLIF(c.owner, $1), c.owner IS NOT DISTINCT FROM $1",
                &[&me, &limit, &flows, &holding],
            )?;
            let mut claimed = rows
                .iter()
                .map(|r| {
                    let id: i64 = r.try_get(0)?;
                    Ok(ClaimedRun { id: RunId(id as u64), flow: r.try_get(1)?, from: r.try_get(2)?, again: r.try_get(3)? })
                })
                .collect::<Result<Vec<_>>>()?;
            claimed.sort_by_key(|r| r.id);
            Ok(claimed)
        })
    }

    fn leave(&self) -> Result<()> {
        let node = self.node()?;
        if node.left.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let me = node.id.clone();
        node.pool.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("UPDATE trigger_leases SET owner = '', expires_at = '-infinity' WHERE owner = $1", &[&me])?;
            tx.execute(
                "UPDATE runs SET owner = NULL WHERE owner = $1 AND status IN ('pending', 'running', 'failed')",
                &[&me],
            )?;
            tx.execute("UPDATE nodes SET ended = 'left', heartbeat_at = now() WHERE id = $1", &[&me])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.pool.read(|c| {
            let rows = c.query(
                "SELECT n.id, n.name, n.started_at, n.heartbeat_at, \
                   n.ended IS NULL AND n.heartbeat_at + n.ttl > now(), n.ended, \
                   COALESCE((SELECT array_agg(l.trigger ORDER BY l.trigger) FROM trigger_leases l WHERE l.owner = n.id), '{}'), \
                   (SELECT count(*) FROM runs r WHERE r.owner = n.id AND r.status IN ('pending', 'running')) \
                 FROM nodes n WHERE n.heartbeat_at > now() - interval '1 day' ORDER BY n.started_at DESC, n.id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    let runs: i64 = r.try_get(7)?;
                    Ok(NodeInfo {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        started_at: r.try_get(2)?,
                        heartbeat_at: r.try_get(3)?,
                        alive: r.try_get(4)?,
                        ended: r.try_get(5)?,
                        leases: r.try_get(6)?,
                        runs: runs.max(0) as u64,
                    })
                })
                .collect()
        })
    }

    fn lock_account(&self, account: &str) -> Result<Box<dyn Send>> {
        let config = self.config.clone();
        let key = format!("flowd-account:{account}");
        let client = off_runtime(move || {
            let mut client = config.connect(NoTls)?;
            // A refresh holds it for one call to GHL; a node that waits longer than this
            // fails the request (it is retried) instead of hanging for ever.
            client.batch_execute("SET statement_timeout = '60s'")?;
            client.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])?;
            Ok(client)
        })?;
        Ok(Box::new(AccountLock(Some(client))))
    }

    fn take_budget(
        &self,
        location: &str,
        window: Duration,
        per_window: u32,
        daily: u32,
        want: u32,
    ) -> Result<BudgetGrant> {
        let node = self.node()?;
        let location = location.to_string();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let (per_window, daily, want) = (i64::from(per_window), i64::from(daily), i64::from(want));
        node.pool.call(move |c| {
            let mut tx = c.transaction()?;
            // The window and the day by the server's clock, the same for every node.
            let now = tx.query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )?;
            let now_ms: i64 = now.try_get(0)?;
            let (w, day) = (now_ms.div_euclid(window_ms), now_ms.div_euclid(86_400_000));
            let ends_in = Duration::from_millis(u64::try_from((w + 1) * window_ms - now_ms).unwrap_or(0));
            tx.execute(
                "INSERT INTO budget (location, kind, period, used) VALUES ($1, 'w', $2, 0), ($1, 'd', $3, 0) \
                 ON CONFLICT DO NOTHING",
                &[&location, &w, &day],
            )?;
            let rows = tx.query(
                "SELECT kind, used FROM budget WHERE location = $1 AND ((kind = 'w' AND period = $2) OR (kind = 'd' AND period = $3)) \
                 ORDER BY kind FOR UPDATE",
                &[&location, &w, &day],
            )?;
            let mut used_w = 0i64;
            let mut used_d = 0i64;
            for r in &rows {
                let kind: String = r.try_get(0)?;
                let used: i32 = r.try_get(1)?;
                if kind == "w" {
                    used_w = i64::from(used);
                } else {
                    used_d = i64::from(used);
                }
            }
            let day_left = daily - used_d;
            let granted = want.min(per_window - used_w).min(day_left).max(0);
            if granted > 0 {
                tx.execute(
                    "UPDATE budget SET used = used + $4 WHERE location = $1 \
                     AND ((kind = 'w' AND period = $2) OR (kind = 'd' AND period = $3))",
                    &[&location, &w, &day, &(granted as i32)],
                )?;
            }
            tx.execute(
                "DELETE FROM budget WHERE location = $1 \
                 AND ((kind = 'w' AND period < $2::bigint - 100) OR (kind = 'd' AND period < $3::bigint - 2))",
                &[&location, &w, &day],
            )?;
            tx.commit()?;
            Ok(BudgetGrant {
                granted: u32::try_from(granted).unwrap_or(0),
                window_ends_in: ends_in,
                day_spent: day_left <= 0,
            })
        })
    }
}

/// Takes up to `room` leases among `wanted` that this node does not hold: rows nobody
/// holds, whose lease expired, or that do not exist yet. Rows another node is changing now
/// are skipped (it gets them).
#[allow(clippy::too_many_arguments)]
fn take_leases(
    tx: &mut impl GenericClient,
    me: &str,
    ttl: f64,
    wanted: &BTreeSet<String>,
    held: &BTreeSet<String>,
    room: usize,
    leases: &mut HashMap<String, i64>,
    beat: &mut Heartbeat,
) -> Result<()> {
    let candidates: Vec<String> = wanted.difference(held).cloned().collect();
    let rows = tx.query(
        "SELECT trigger, owner, expires_at <= now() FROM trigger_leases WHERE trigger = ANY($1) \
         ORDER BY trigger FOR UPDATE SKIP LOCKED",
        &[&candidates],
    )?;
    let mut known: HashMap<String, (String, bool)> = HashMap::with_capacity(rows.len());
    for r in &rows {
        known.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
    }
    let all: std::collections::HashSet<String> = {
        let rows = tx.query("SELECT trigger FROM trigger_leases WHERE trigger = ANY($1)", &[&candidates])?;
        rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?
    };
    let mut room = room;
    for t in &candidates {
        if room == 0 {
            break;
        }
        let taken = match known.get(t) {
            Some((owner, expired)) if owner.is_empty() || *expired => {
                let row = tx.query_one(
                    "UPDATE trigger_leases SET owner = $2, epoch = epoch + 1, expires_at = now() + make_interval(secs => $3) \
                     WHERE trigger = $1 RETURNING epoch",
                    &[t, &me, &ttl],
                )?;
                if !owner.is_empty() && owner != me {
                    beat.taken_over.push(t.clone());
                }
                Some(row.try_get::<_, i64>(0)?)
            }
            Some(_) => None,
            // Locked by another node now (skipped above), or held: not ours to take.
            None if all.contains(t) => None,
            None => {
                let row = tx.query_opt(
                    "INSERT INTO trigger_leases (trigger, owner, epoch, expires_at) \
                     VALUES ($1, $2, 1, now() + make_interval(secs => $3)) ON CONFLICT DO NOTHING RETURNING epoch",
                    &[t, &me, &ttl],
                )?;
                row.map(|r| r.try_get::<_, i64>(0)).transpose()?
            }
        };
        if let Some(epoch) = taken {
            leases.insert(t.clone(), epoch);
            room -= 1;
        }
    }
    Ok(())
}

/// The connection holding an account's advisory lock; dropping it ends the connection,
/// which releases the lock. Dropped on a thread of its own: the synchronous client must
/// not be dropped inside a tokio runtime.
struct AccountLock(Option<Client>);

impl Drop for AccountLock {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let _ = std::thread::Builder::new().name("flowd-pg-unlock".into()).spawn(move || drop(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::balance;
    use std::collections::BTreeSet;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_takes_its_share_and_gives_up_what_is_past_it() {
        let wanted = set(&["a", "b", "c"]);
        assert_eq!(balance(&set(&[]), &wanted, 1), (3, vec![]));
        assert_eq!(balance(&set(&["a", "b", "c"]), &wanted, 2), (0, vec!["c".to_string()]));
        assert_eq!(balance(&set(&["c"]), &wanted, 2), (1, vec![]));
        assert_eq!(balance(&set(&["a", "x"]), &wanted, 3), (0, vec!["x".to_string()]));
    }
}
