//! The engine as one node of a cluster (a store with a [`store::Cluster`]): it polls the
//! triggers whose lease it holds, and executes the runs it claims.
//!
//! Two tasks: the heartbeat renews the node and its leases (three times per lease period)
//! and takes its share of the triggers; the claimer takes runs to execute as room frees up,
//! woken by this node's polls and every `CLAIM_EVERY` for the other nodes' runs. A poll
//! under a lease commits its runs for any node, so a burst on one trigger is executed by
//! every node with room. Without the database the heartbeat fails: the node drops its
//! leases at once (its polls would be refused anyway once another node takes them) and
//! takes them again when the database answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::engine::Engine;
use crate::services::blocking;

/// How often a node looks for runs nobody executes when nothing woke it.
const CLAIM_EVERY: Duration = Duration::from_millis(250);
/// Most runs claimed in one query.
const CLAIM_BATCH: usize = 256;

/// A node's leases and what its tasks share.
pub(crate) struct ClusterState {
    /// Trigger id → epoch of this node's lease (see [`store::PollCommit::lease`]).
    leases: Mutex<HashMap<String, i64>>,
    /// Room for claimed runs, queued or executing.
    room: Arc<Semaphore>,
    wake: Notify,
    /// The last heartbeat reached the database.
    connected: AtomicBool,
    /// Another instance started under this node's name: this one stops.
    superseded: watch::Sender<bool>,
    /// Runs dispatched here whose task has not ended (queued or executing), with how many
    /// tasks hold each: the claim query must not hand them to this node again. Its own runs
    /// outside this set are claimed again, see [`store::Cluster::claim_runs`].
    holding: Arc<Mutex<HashMap<store::RunId, u32>>>,
    /// Stops the heartbeat of a command's node (see [`Engine::keep_alive`]).
    keep_alive: Mutex<Option<watch::Sender<bool>>>,
    metrics: ClusterMetrics,
}

#[derive(Clone, Default)]
struct ClusterMetrics {
    leases: Gauge,
    live_nodes: Gauge,
    claimed: Counter,
    taken_over_runs: Counter,
    takeovers: Counter,
    fenced: Counter,
    connected: Gauge,
}

impl ClusterState {
    pub(crate) fn new(concurrency: usize, metrics: &crate::Metrics) -> ClusterState {
        let m = ClusterMetrics::default();
        metrics.register_with(|r| {
            r.register("cluster_leases_held", "Trigger leases this node holds", m.leases.clone());
            r.register("cluster_live_nodes", "Nodes alive on the database, this one included", m.live_nodes.clone());
            r.register("cluster_runs_claimed", "Runs this node claimed to execute", m.claimed.clone());
            r.register(
                "cluster_runs_taken_over",
                "Runs claimed from a node that stopped renewing",
                m.taken_over_runs.clone(),
            );
            r.register(
                "cluster_lease_takeovers",
                "Trigger leases taken from a node that let them expire",
                m.takeovers.clone(),
            );
            r.register("cluster_commits_fenced", "Poll commits refused because the lease had moved", m.fenced.clone());
            r.register("cluster_database_up", "1 while the heartbeat reaches the database", m.connected.clone());
        });
        ClusterState {
            leases: Mutex::new(HashMap::new()),
            room: Arc::new(Semaphore::new(concurrency.saturating_mul(2).clamp(1, Semaphore::MAX_PERMITS))),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            superseded: watch::Sender::new(false),
            holding: Arc::default(),
            keep_alive: Mutex::new(None),
            metrics: m,
        }
    }

    /// The epoch of this node's lease on `trigger`.
    pub(crate) fn lease(&self, trigger: &str) -> Option<i64> {
        self.leases.lock().ok()?.get(trigger).copied()
    }

    /// A commit under the lease on `trigger` was refused: the lease is gone.
    pub(crate) fn lost(&self, trigger: &str) {
        if let Ok(mut l) = self.leases.lock() {
            l.remove(trigger);
            self.metrics.leases.set(l.len() as i64);
        }
        self.metrics.fenced.inc();
    }

    /// A poll committed runs for any node: this one looks for them at once.
    pub(crate) fn runs_committed(&self) {
        self.wake.notify_one();
    }

    fn set_leases(&self, leases: HashMap<String, i64>) {
        self.metrics.leases.set(leases.len() as i64);
        if let Ok(mut l) = self.leases.lock() {
            *l = leases;
        }
    }
}

impl Engine {
    /// Whether this engine may poll `trigger` now: always, unless it is a cluster node that
    /// does not hold the trigger's lease.
    pub(crate) fn may_poll(&self, trigger: &str) -> bool {
        self.cluster_state().is_none_or(|c| c.lease(trigger).is_some())
    }

    /// Resolves once this node was superseded by a new start under its name (never for a
    /// store one process owns): the service stops.
    pub async fn superseded(&self) {
        match self.cluster_state() {
            Some(c) => {
                let mut rx = c.superseded.subscribe();
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether this node's last heartbeat reached the database (`true` without a cluster).
    pub fn cluster_connected(&self) -> bool {
        self.cluster_state().is_none_or(|c| c.connected.load(Ordering::Acquire))
    }

    /// Hands this node's leases and claims back (a clean stop), so that other nodes take
    /// its work at once. Call after the runs drained.
    pub async fn leave_cluster(&self) {
        let Some(state) = self.cluster_state() else { return };
        if let Some(stop) = state.keep_alive.lock().ok().and_then(|mut k| k.take()) {
            let _ = stop.send(true);
        }
        let store = self.store().clone();
        let left = blocking(move || match store.cluster() {
            Some(c) => Ok(c.leave()?),
            None => Ok(()),
        })
        .await;
        match left {
            Ok(()) => tracing::info!("left the cluster: leases and unfinished runs handed over"),
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the cluster cleanly; other nodes take over when the lease expires")
            }
        }
    }

    /// The trigger ids this node would poll: every loaded flow that polls.
    fn wanted_triggers(&self) -> Vec<String> {
        let mut t: Vec<String> =
            self.runtimes().into_iter().filter(|rt| !rt.webhook_only()).map(|rt| rt.trigger_id.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Keeps a command's node alive while it executes runs (`flowd replay`), so that the
    /// service's nodes do not take its runs as a dead node's, until
    /// [`Engine::leave_cluster`].
    pub fn keep_alive(self: &Arc<Self>) {
        let Some(state) = self.cluster_state() else { return };
        let (stop, stopped) = watch::channel(false);
        if let Ok(mut k) = state.keep_alive.lock() {
            *k = Some(stop);
        }
        spawn_heartbeat(self.clone(), stopped);
    }

    /// Starts the heartbeat and the claimer, for a cluster node.
    pub(crate) fn spawn_cluster(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        if self.cluster_state().is_none() {
            return Vec::new();
        }
        vec![spawn_heartbeat(self.clone(), shutdown.clone()), spawn_claimer(self.clone(), shutdown.clone())]
    }
}

fn spawn_heartbeat(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(ttl) = engine.store().cluster().map(|c| c.lease_ttl()) else { return };
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let Some(state) = engine.cluster_state() else { return };
            let wanted = engine.wanted_triggers();
            let store = engine.store().clone();
            let beat = blocking(move || match store.cluster() {
                Some(c) => Ok(c.heartbeat(&wanted)?),
                None => Err(crate::EngineError::Store(store::StoreError::Invalid("no cluster".into()))),
            })
            .await;
            match beat {
                Ok(beat) => {
                    if !state.connected.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            nodes = beat.live_nodes,
                            leases = beat.leases.len(),
                            "cluster: database reached"
                        );
                    }
                    state.metrics.connected.set(1);
                    state.metrics.live_nodes.set(beat.live_nodes as i64);
                    for t in &beat.taken_over {
                        tracing::info!(trigger = %t, "cluster: took over the lease of a node that stopped renewing");
                    }
                    state.metrics.takeovers.inc_by(beat.taken_over.len() as u64);
                    if !beat.released.is_empty() {
                        tracing::info!(triggers = ?beat.released, "cluster: gave up leases past this node's share");
                    }
                    state.set_leases(beat.leases.into_iter().collect());
                }
                Err(crate::EngineError::Store(store::StoreError::Fenced(why))) => {
                    tracing::error!(reason = %why, "cluster: this node instance was superseded; it stops polling and executing");
                    state.set_leases(HashMap::new());
                    state.connected.store(false, Ordering::Release);
                    state.metrics.connected.set(0);
                    let _ = state.superseded.send(true);
                    return;
                }
                Err(e) => {
                    if state.connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "cluster: the database is unreachable; this node stops polling until it answers");
                    }
                    state.metrics.connected.set(0);
                    state.set_leases(HashMap::new());
                }
            }
        }
    })
}

fn spawn_claimer(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(state) = engine.cluster_state() else { return };
        let room = state.room.clone();
        loop {
            let free = room.available_permits().min(CLAIM_BATCH);
            let mut full_batch = false;
            if free > 0 && state.connected.load(Ordering::Acquire) {
                match engine.claim(free, &[]).await {
                    Ok(runs) => {
                        full_batch = runs.len() == free;
                        for run in runs {
                            let Ok(permit) = room.clone().try_acquire_owned() else { break };
                            let id = run.id;
                            // Dispatched meanwhile by another path (a webhook's run, say).
                            if state.is_held(id) {
                                continue;
                            }
                            engine.spawn_run(&run.flow, id, move |engine| async move {
                                let _permit = permit;
                                let result = engine.execute(id).await;
                                if let Err(e) = &result {
                                    // Still this node's: a later claim takes it again once
                                    // the database answers.
                                    tracing::warn!(run = %id, error = %e, "cluster: run not finished; it will be claimed again");
                                }
                                result
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: claiming runs failed"),
                }
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = state.wake.notified() => {}
                _ = tokio::time::sleep(CLAIM_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}

/// A run held by a dispatched task (see `ClusterState::holding`), until dropped.
pub(crate) struct Held {
    holding: Arc<Mutex<HashMap<store::RunId, u32>>>,
    id: store::RunId,
}

impl ClusterState {
    pub(crate) fn hold(&self, id: store::RunId) -> Held {
        if let Ok(mut h) = self.holding.lock() {
            *h.entry(id).or_default() += 1;
        }
        Held { holding: self.holding.clone(), id }
    }

    fn is_held(&self, id: store::RunId) -> bool {
        self.holding.lock().is_ok_and(|h| h.contains_key(&id))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut h) = self.holding.lock() {
            if let Some(n) = h.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    h.remove(&self.id);
                }
            }
        }
    }
}

impl Engine {
    /// Claims up to `limit` runs of the loaded flows (see [`store::Cluster::claim_runs`]),
    /// none this process holds or is executing, nor any in `skip`.
    async fn claim(&self, limit: usize, skip: &[store::RunId]) -> Result<Vec<store::ClaimedRun>, crate::EngineError> {
        let Some(state) = self.cluster_state() else { return Ok(Vec::new()) };
        let mut holding: Vec<store::RunId> = self.executing();
        if let Ok(h) = state.holding.lock() {
            holding.extend(h.keys().copied());
        }
        holding.extend_from_slice(skip);
        let flows = self.flow_names();
        let store = self.store().clone();
        let runs = blocking(move || match store.cluster() {
            Some(c) => Ok(c.claim_runs(limit, store::ClaimScope { flows: &flows, holding: &holding })?),
            None => Ok(Vec::new()),
        })
        .await?;
        let from_dead = runs.iter().filter(|r| r.from.is_some()).count();
        if from_dead > 0 {
            tracing::info!(runs = from_dead, "cluster: claimed runs of a node that stopped renewing");
        }
        let again = runs.iter().filter(|r| r.again).count();
        if again > 0 {
            tracing::info!(runs = again, "cluster: claimed again runs this node had lost track of");
        }
        state.metrics.taken_over_runs.inc_by(from_dead as u64);
        state.metrics.claimed.inc_by(runs.len() as u64);
        Ok(runs)
    }
}

impl Engine {
    /// One heartbeat now (see [`store::Cluster::heartbeat`]), for a command that polls once
    /// instead of running the heartbeat task; a no-op without a cluster.
    pub async fn heartbeat_now(&self) -> Result<(), crate::EngineError> {
        let Some(state) = self.cluster_state() else { return Ok(()) };
        let wanted = self.wanted_triggers();
        let store = self.store().clone();
        let beat = blocking(move || match store.cluster() {
            Some(c) => Ok(c.heartbeat(&wanted)?),
            None => Ok(store::Heartbeat::default()),
        })
        .await?;
        state.connected.store(true, Ordering::Release);
        state.set_leases(beat.leases.into_iter().collect());
        Ok(())
    }

    /// Claims and executes runs until none is left to claim; returns the status each ended
    /// in (empty without a cluster).
    pub async fn run_claimed(self: &Arc<Self>) -> Result<Vec<store::RunStatus>, crate::EngineError> {
        let mut out = Vec::new();
        if self.cluster_state().is_none() {
            return Ok(out);
        }
        // Each run once: one left unfinished here is for the service, not this loop.
        let mut done = Vec::new();
        loop {
            let runs = self.claim(CLAIM_BATCH, &done).await?;
            if runs.is_empty() {
                return Ok(out);
            }
            let ids: Vec<store::RunId> = runs.into_iter().map(|r| r.id).collect();
            done.extend_from_slice(&ids);
            out.extend(self.execute_all(ids).await?);
        }
    }
}
