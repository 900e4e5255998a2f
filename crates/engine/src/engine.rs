//! The engine: the loaded flows, what polls and runs use ([`Services`]), and the entry
//! points that start a poll or a run. Scheduling lives in `scheduler` and webhook events in
//! `webhook`; one poll is `poll::Poller`, one run `run::Runner`.

use crate::config::{AccountInfo, EngineConfig};
use crate::error::EngineError;
use crate::fair::FairSlots;
use crate::metrics::Metrics;
use crate::poll::{Backlog, Created, PollReport, Poller};
use crate::poll_slots::PollSlots;
use crate::run::{Claims, Runner};
use crate::runtime::{account_context, FlowRuntime, Paths};
use crate::services::{blocking, Services};
use crate::writer::Writer;
use catalog::Catalog;
use chrono::{DateTime, Utc};
use flow::CompiledFlow;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use store::{RunId, RunStatus, Store};
use tokio::task::JoinHandle;

pub struct Engine {
    catalog: Arc<Catalog>,
    accounts: BTreeMap<String, AccountInfo>,
    svc: Services,
    flows: RwLock<HashMap<String, Arc<FlowRuntime>>>,
    /// Flows with a scheduler task (see `scheduler`).
    pub(crate) scheduled: Mutex<HashSet<String>>,
    claims: Claims,
    /// Flows whose polls wait for their location's daily budget to renew.
    paused: Mutex<HashMap<String, Paused>>,
    /// Each scheduled flow's last poll and next due time, as its scheduler left them.
    polls: Mutex<HashMap<String, PollTimes>>,
    permits: Arc<FairSlots>,
    backlog: Backlog,
    poll_slots: PollSlots,
}

/// A loaded flow and what it is doing (`GET /api/flows`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowState {
    pub name: String,
    pub account: String,
    /// The trigger's catalog key; `webhook.<event>` for a flow started by webhooks only.
    pub trigger: String,
    /// Set while the flow's polls wait for its location's daily budget to renew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    /// When it polls: `every 5m` or `cron */15 * * * *`; none for a flow fed by webhooks only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Its scheduler's last poll since the service started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<LastPoll>,
    /// When its scheduler polls next (jitter included); none before the scheduler has
    /// planned one, or for a webhook-only flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_poll: Option<DateTime<Utc>>,
}

/// When a flow last polled and what came of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastPoll {
    /// When the poll started.
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Items the trigger returned, and how many were new (0 when it failed).
    pub items: usize,
    pub new: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct PollTimes {
    last: Option<LastPoll>,
    next: Option<DateTime<Utc>>,
}

/// One configured account: its location and whether its token works (see
/// [`ghl::Client::account_health`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountState {
    pub name: String,
    pub location_id: String,
    #[serde(flatten)]
    pub token: ghl::TokenState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

/// Why and until when a flow does not poll.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Paused {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// A run's handle: the status it ended in.
type RunHandle = JoinHandle<Result<RunStatus, EngineError>>;

impl Engine {
    pub fn new(
        catalog: Arc<Catalog>,
        client: ghl::Client,
        store: Arc<dyn Store>,
        accounts: Vec<AccountInfo>,
        env: BTreeMap<String, String>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Engine> {
        let http_targets = Arc::new(crate::http_step::Targets {
            allow_hosts: config.http_allow_hosts.clone(),
            allow_private: config.http_allow_private,
        });
        // Building fails only if the TLS backend cannot start. A default client would skip
        // the address checks, so http.request steps then fail with the reason instead.
        let http = crate::http_step::client(http_targets.clone(), config.http_max_redirects).map_err(|e| {
            tracing::error!(error = %e, "cannot build the http.request client; http.request steps will fail");
            format!("the HTTP client could not start: {e}")
        });
        let permits = FairSlots::new(config.concurrency);
        let backlog = Backlog::new(config.max_runs_in_memory);
        let poll_slots = PollSlots::new(accounts.iter().map(|a| a.name.as_str()), config.poll_concurrency);
        let writer = Writer::start(store.clone());
        let cache = crate::cache::ReadCache::new(config.read_cache_entries);
        metrics.register_with(|r| cache.register(r));
        let cluster =
            store.cluster().map(|_| Arc::new(crate::cluster::ClusterState::new(config.concurrency, &metrics)));
        Arc::new(Engine {
            catalog,
            accounts: accounts.into_iter().map(|a| (a.name.clone(), a)).collect(),
            svc: Services { store, writer, client, http, http_targets, config, env, metrics, cache, cluster },
            flows: RwLock::new(HashMap::new()),
            scheduled: Mutex::new(HashSet::new()),
            claims: Claims::default(),
            paused: Mutex::new(HashMap::new()),
            polls: Mutex::new(HashMap::new()),
            permits,
            backlog,
            poll_slots,
        })
    }

    /// Replaces the loaded flows, each resolved once into what its polls and runs use.
    /// Every flow is checked first; on any error nothing changes.
    pub fn set_flows(&self, flows: Vec<CompiledFlow>) -> Result<(), EngineError> {
        let mut next = HashMap::with_capacity(flows.len());
        let mut paths = Paths::default();
        for f in flows {
            let Some(account) = self.accounts.get(&f.account) else {
                let known: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
                return Err(EngineError::Flow {
                    flow: f.name.clone(),
                    message: format!("account `{}` is not configured (configured: {})", f.account, known.join(", ")),
                });
            };
            let account = account_context(&account.name, &account.location_id);
            let rt = FlowRuntime::new(f, &self.catalog, account, &mut paths)?;
            next.insert(rt.name.clone(), rt);
        }
        crate::inbound::unique_paths(next.values())?;
        if let Ok(mut flows) = self.flows.write() {
            *flows = next;
        }
        Ok(())
    }

    /// The runs this process is executing now.
    pub(crate) fn executing(&self) -> Vec<RunId> {
        self.claims.ids()
    }

    pub fn flow_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.flows.read().map(|f| f.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// The loaded flows, resolved.
    pub(crate) fn runtimes(&self) -> Vec<Arc<FlowRuntime>> {
        self.flows.read().map(|f| f.values().cloned().collect()).unwrap_or_default()
    }

    /// Every loaded flow with what it is doing, sorted by name.
    pub fn flow_states(&self) -> Vec<FlowState> {
        let paused = self.paused.lock().map(|p| p.clone()).unwrap_or_default();
        let polls = self.polls.lock().map(|p| p.clone()).unwrap_or_default();
        let mut states: Vec<FlowState> = self
            .runtimes()
            .iter()
            .map(|rt| {
                let times = polls.get(&rt.name).cloned().unwrap_or_default();
                let polling = !rt.webhook_only();
                FlowState {
                    name: rt.name.clone(),
                    account: rt.account.clone(),
                    trigger: rt.trigger_key(),
                    paused: paused.get(&rt.name).cloned(),
                    schedule: polling.then(|| rt.trigger.schedule.to_string()),
                    last_poll: times.last,
                    next_poll: times.next.filter(|_| polling),
                }
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Every configured account with its token state, sorted by name.
    pub fn account_states(&self) -> Vec<AccountState> {
        let health: HashMap<String, ghl::AccountHealth> =
            self.svc.client.account_health().into_iter().map(|h| (h.account.clone(), h)).collect();
        self.accounts
            .values()
            .map(|a| {
                let h = health.get(&a.name);
                AccountState {
                    name: a.name.clone(),
                    location_id: a.location_id.clone(),
                    token: h.map_or(ghl::TokenState::Unknown, |h| h.token.clone()),
                    checked_at: h.and_then(|h| h.checked_at),
                }
            })
            .collect()
    }

    pub(crate) fn pause(&self, flow: &str, until: DateTime<Utc>, reason: String) {
        if let Ok(mut p) = self.paused.lock() {
            p.insert(flow.to_owned(), Paused { until, reason });
        }
        self.svc.metrics.flow_paused.get_or_create(&crate::metrics::FlowLabels { flow: flow.to_owned() }).set(1);
    }

    /// The scheduler's plan: `flow` polls next at `at` (none: it does not poll).
    pub(crate) fn set_next_poll(&self, flow: &str, at: Option<DateTime<Utc>>) {
        if let Ok(mut p) = self.polls.lock() {
            p.entry(flow.to_owned()).or_default().next = at;
        }
    }

    /// The scheduler's poll of `flow` that started at `at` ended with `outcome`.
    pub(crate) fn record_poll(&self, flow: &str, at: DateTime<Utc>, outcome: Result<&PollReport, &EngineError>) {
        let last = match outcome {
            Ok(r) => LastPoll { at, ok: true, items: r.items, new: r.new, error: None },
            Err(e) => LastPoll { at, ok: false, items: 0, new: 0, error: Some(e.to_string()) },
        };
        if let Ok(mut p) = self.polls.lock() {
            let times = p.entry(flow.to_owned()).or_default();
            times.last = Some(last);
            times.next = None;
        }
    }

    pub(crate) fn unpause(&self, flow: &str) {
        if let Ok(mut p) = self.paused.lock() {
            p.remove(flow);
        }
        self.svc.metrics.flow_paused.get_or_create(&crate::metrics::FlowLabels { flow: flow.to_owned() }).set(0);
    }

    pub(crate) fn flow(&self, name: &str) -> Result<Arc<FlowRuntime>, EngineError> {
        self.flows
            .read()
            .ok()
            .and_then(|f| f.get(name).cloned())
            .ok_or_else(|| EngineError::UnknownFlow(name.to_string()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.svc.store
    }
    pub fn client(&self) -> &ghl::Client {
        &self.svc.client
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.svc.metrics
    }
    pub fn config(&self) -> &EngineConfig {
        &self.svc.config
    }
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
    pub(crate) fn poll_slots(&self) -> &PollSlots {
        &self.poll_slots
    }

    /// This node's share of a cluster, when the store is shared.
    pub(crate) fn cluster_state(&self) -> Option<&crate::cluster::ClusterState> {
        self.svc.cluster.as_deref()
    }

    fn runner(&self) -> Runner<'_> {
        Runner { svc: &self.svc, claims: &self.claims }
    }

    /// Polls a flow's trigger once and commits what it found. The runs it creates are
    /// returned, not executed; see [`Engine::poll_and_run`] and [`Engine::poll_and_dispatch`].
    pub async fn poll(&self, name: &str) -> Result<PollReport, EngineError> {
        let rt = self.flow(name)?;
        Poller { svc: &self.svc, backlog: None }.poll(&rt, &mut |_, _| {}).await
    }

    /// Polls a flow's trigger and dispatches each run as soon as its commit is durable:
    /// for a flow whose flood guard cannot trip (`max_new` at least the engine's
    /// `max_items`), every page is committed and its runs start while later pages are
    /// still being fetched. Returns the report and the dispatched runs' handles.
    ///
    /// On a cluster node the runs are committed for any node to claim (see `cluster`), and
    /// none is returned.
    pub async fn poll_and_dispatch(self: &Arc<Self>, name: &str) -> Result<(PollReport, Vec<RunHandle>), EngineError> {
        let rt = self.flow(name)?;
        if self.svc.cluster.is_some() {
            let report = Poller { svc: &self.svc, backlog: None }.poll(&rt, &mut |_, _| {}).await?;
            return Ok((report, Vec::new()));
        }
        let mut handles = Vec::new();
        let engine = self.clone();
        let poller = Poller { svc: &self.svc, backlog: Some(&self.backlog) };
        let report = poller
            .poll(&rt, &mut |runs, mut room| {
                handles.extend(runs.into_iter().map(|run| {
                    let hold = match room.as_mut().and_then(|r| r.split(1)) {
                        Some(one) => Some(one),
                        None => room.take(),
                    };
                    engine.dispatch_created(run, hold)
                }))
            })
            .await;
        // Runs already dispatched keep going even when a later page failed: they are durable.
        match report {
            Ok(report) => Ok((report, handles)),
            Err(e) => {
                if !handles.is_empty() {
                    tracing::warn!(runs = handles.len(), error = %e, "poll failed after some pages were committed; their runs go on");
                }
                Err(e)
            }
        }
    }

    /// Polls a flow once and executes the runs it created; returns both.
    pub async fn poll_and_run(self: &Arc<Self>, name: &str) -> Result<(PollReport, Vec<RunStatus>), EngineError> {
        let (report, handles) = self.poll_and_dispatch(name).await?;
        Ok((report, Self::wait_for(handles).await?))
    }

    /// Executes (or resumes) one run and returns the status it ends in; its flow is the
    /// one loaded now under the run's flow name.
    pub async fn execute(&self, id: RunId) -> Result<RunStatus, EngineError> {
        self.runner().execute(id, None, |name| self.flow(name).ok()).await
    }

    /// Executes a run a poll has just created, from the poll's copy of it (see
    /// `Runner::execute_created`).
    pub(crate) async fn execute_created(&self, created: Created) -> Result<RunStatus, EngineError> {
        self.runner().execute_created(created).await
    }

    /// Executes runs concurrently (bounded by `concurrency`) and waits for all.
    pub async fn execute_all(self: &Arc<Self>, ids: Vec<RunId>) -> Result<Vec<RunStatus>, EngineError> {
        let handles: Vec<RunHandle> = ids.into_iter().map(|id| self.dispatch(id)).collect();
        Self::wait_for(handles).await
    }

    /// Like [`Engine::execute_all`] for runs whose flow is known, so each takes its flow's turn.
    async fn execute_runs(self: &Arc<Self>, runs: Vec<(String, RunId)>) -> Result<Vec<RunStatus>, EngineError> {
        let handles: Vec<RunHandle> = runs
            .into_iter()
            .map(|(flow, id)| self.spawn_run(&flow, id, move |engine| async move { engine.execute(id).await }))
            .collect();
        Self::wait_for(handles).await
    }

    /// Waits for dispatched runs, in order; returns the status each ended in.
    pub async fn wait_for(handles: Vec<RunHandle>) -> Result<Vec<RunStatus>, EngineError> {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.map_err(|e| EngineError::Join(e.to_string()))??);
        }
        Ok(out)
    }

    /// Starts executing a run in the background, once a concurrency permit is free. Runs
    /// dispatched by id alone (their flow is read when they start) share one turn.
    pub fn dispatch(self: &Arc<Self>, id: RunId) -> RunHandle {
        self.spawn_run("", id, move |engine| async move { engine.execute(id).await })
    }

    /// Like [`Engine::dispatch`], for a run a poll has just created: it starts from what the
    /// poll holds instead of reading the run back. `hold` (room in the poll's backlog) is
    /// kept until the run ends.
    fn dispatch_created(self: &Arc<Self>, run: Created, hold: Option<tokio::sync::OwnedSemaphorePermit>) -> RunHandle {
        let flow = run.rt.clone();
        self.spawn_run(&flow.name, run.id, move |engine| async move {
            let _hold = hold;
            engine.execute_created(run).await
        })
    }

    /// Spawns `execute` (of run `id`) once a concurrency permit is free in `flow`'s turn
    /// (see `fair`), counting it as queued meanwhile. A cluster node holds the run until
    /// the task ends, so that its claimer does not take it again meanwhile.
    pub(crate) fn spawn_run<F, Fut>(self: &Arc<Self>, flow: &str, id: RunId, execute: F) -> RunHandle
    where
        F: FnOnce(Arc<Engine>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<RunStatus, EngineError>> + Send,
    {
        let engine = self.clone();
        let flow = flow.to_owned();
        let held = self.cluster_state().map(|c| c.hold(id));
        self.svc.metrics.queue_depth.inc();
        tokio::spawn(async move {
            let _held = held;
            let _permit = engine.permits.acquire(&flow).await;
            engine.svc.metrics.queue_depth.dec();
            // Boxed once the run may start: a queued task then holds a small future, not
            // the whole run's state machine (kilobytes). A poll queues thousands at once.
            Box::pin(execute(engine)).await
        })
    }

    /// Runs left unfinished by a previous process, and failed runs whose retry is due.
    /// A cluster node resumes nothing here: its claimer takes the runs of nodes that
    /// stopped, this node's earlier instance included.
    pub async fn resume(self: &Arc<Self>) -> Result<Vec<RunStatus>, EngineError> {
        if self.svc.cluster.is_some() {
            return Ok(Vec::new());
        }
        let store = self.svc.store.clone();
        let runs = blocking(move || Ok(store.list_resumable()?)).await?;
        if !runs.is_empty() {
            tracing::info!(runs = runs.len(), "resuming runs left unfinished");
        }
        self.execute_runs(runs.into_iter().map(|r| (r.flow, r.id)).collect()).await
    }

    /// Failed runs whose retry time has come; executes them and waits.
    pub async fn retry_due(self: &Arc<Self>) -> Result<Vec<RunStatus>, EngineError> {
        let store = self.svc.store.clone();
        let runs = blocking(move || Ok(store.list_due_retries(Utc::now(), 256)?)).await?;
        self.execute_runs(runs.into_iter().map(|r| (r.flow, r.id)).collect()).await
    }

    /// Makes a flow's held runs pending and executes them.
    pub async fn release(self: &Arc<Self>, flow: &str) -> Result<Vec<RunStatus>, EngineError> {
        let store = self.svc.store.clone();
        let name = flow.to_string();
        let ids = blocking(move || Ok(store.release_held(&name)?)).await?;
        self.execute_runs(ids.into_iter().map(|id| (flow.to_owned(), id)).collect()).await
    }

    /// Replays a dead run (an `in_doubt` one only with `in_doubt`): in one write it becomes
    /// `pending` for a new series of attempts, then it is executed. A run that is not dead
    /// or in doubt (already replayed, say) is refused with [`EngineError::NotReplayable`],
    /// so a replay asked twice sends once. Steps that succeeded are not sent again.
    pub async fn replay(self: &Arc<Self>, id: RunId, in_doubt: bool) -> Result<RunStatus, EngineError> {
        let store = self.svc.store.clone();
        let flow = blocking(move || Ok(store.get_run(id)?.ok_or(EngineError::UnknownRun(id))?.flow)).await?;
        // Checked first so a replay never leaves a run nobody will execute.
        let rt = self.flow(&flow)?;
        let store = self.svc.store.clone();
        blocking(move || match store.update_run(id, &[store::RunChange::Replay { in_doubt }]) {
            Ok(_) => Ok(()),
            Err(store::StoreError::Conflict(why)) => Err(EngineError::NotReplayable(why)),
            Err(e) => Err(e.into()),
        })
        .await?;
        self.runner().execute(id, Some(rt), |_| None).await
    }

    /// Forgets that `name` has a scheduler (it stopped).
    pub(crate) fn unscheduled(&self, name: &str) {
        if let Ok(mut s) = self.scheduled.lock() {
            s.remove(name);
        }
        if let Ok(mut p) = self.polls.lock() {
            p.remove(name);
        }
    }

    /// Waits until no run is executing or queued, or the deadline passes; returns whether
    /// everything finished.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.permits.idle()).await.is_ok() && self.svc.metrics.queue_depth.get() == 0
    }

    /// The template context of `rt` for one item.
    pub(crate) fn context(&self, rt: &FlowRuntime, trigger: Value, now: DateTime<Utc>) -> Value {
        rt.context(trigger, &self.svc.env, "", now)
    }
}

/// The engine's background tasks.
pub struct EngineTasks {
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl EngineTasks {
    /// Waits until every task has stopped.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
