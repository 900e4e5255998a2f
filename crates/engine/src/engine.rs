//! The engine: loaded flows, the GHL client, the store, and the tasks that schedule polls,
//! execute runs and retry failed ones.

use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::runtime::FlowRuntime;
use crate::writer::Writer;
use catalog::Catalog;
use chrono::{DateTime, Utc};
use flow::CompiledFlow;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use store::{RunId, RunStatus, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Tuning; the defaults suit a service.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Runs executing at once.
    pub concurrency: usize,
    /// Scheduled polls in progress at once per account; more wait their turn (in due
    /// order). GHL's rate limits are per location, so more polls at once would only wait
    /// in the rate limiter, each holding its request and items: this bounds the memory
    /// of a burst of polls (10,000 flows starting together) by accounts × this.
    pub poll_concurrency: usize,
    /// Executions of a run before it goes dead (dead runs can be replayed).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Bounds of one poll.
    pub max_pages: u32,
    pub max_items: usize,
    /// Hosts `http.request` may call; empty means any (public address).
    pub http_allow_hosts: Vec<String>,
    /// Whether `http.request` may call loopback, private and link-local addresses (an
    /// app on the same host or network); off, they are refused after DNS resolution.
    pub http_allow_private: bool,
    /// Redirects an `http.request` follows (each hop checked like the first URL); 0
    /// answers the step with the redirect itself.
    pub http_max_redirects: usize,
    /// Largest response body an `http.request` reads (decompressed).
    pub http_max_response_bytes: usize,
    pub http_timeout: Duration,
    /// How often due retries are looked for.
    pub retry_scan: Duration,
    /// Runs a poll may have created and handed over, queued or executing, before it waits to
    /// commit another page: a burst of 10,000 new items then holds about this many items in
    /// memory (plus a page or two), not all of them. The rest wait in GHL, unread.
    pub max_runs_in_memory: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // A GHL call takes 100-300 ms, so runs in flight bound a process's rate:
            // 16 allowed ~50-160 actions/s over all locations, fewer than GHL's limits let
            // an agency with a dozen sub-accounts send (10/s each). Writes are batched,
            // so more in flight costs little.
            concurrency: 64,
            poll_concurrency: 8,
            max_attempts: 5,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            max_pages: 100,
            max_items: 10_000,
            http_allow_hosts: Vec::new(),
            http_allow_private: false,
            http_max_redirects: 0,
            http_max_response_bytes: 1024 * 1024,
            http_timeout: Duration::from_secs(30),
            retry_scan: Duration::from_secs(1),
            // 16 × the default concurrency: two GHL pages of 500 queued keep every
            // execution slot busy while the poll commits the next.
            max_runs_in_memory: 1024,
        }
    }
}

impl EngineConfig {
    /// Exponential backoff with jitter: `retry_base * 2^(attempt-1)`, capped, ±20%.
    pub fn retry_delay(&self, attempt: u32) -> chrono::Duration {
        let exp = self.retry_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.retry_max);
        let jitter = rand::random_range(0.8..1.2);
        chrono::Duration::from_std(capped.mul_f64(jitter)).unwrap_or(chrono::Duration::seconds(60))
    }
}

/// An account as flows see it (`{{ account.location_id }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub name: String,
    pub location_id: String,
}

pub struct Engine {
    catalog: Arc<Catalog>,
    client: ghl::Client,
    store: Arc<dyn Store>,
    http: Result<reqwest::Client, String>,
    http_targets: Arc<crate::http_step::Targets>,
    accounts: BTreeMap<String, AccountInfo>,
    env: BTreeMap<String, String>,
    config: EngineConfig,
    flows: RwLock<HashMap<String, Arc<FlowRuntime>>>,
    scheduled: Mutex<HashSet<String>>,
    in_flight: Mutex<HashSet<RunId>>,
    /// Flows whose polls wait for their location's daily budget to renew.
    paused: Mutex<HashMap<String, Paused>>,
    permits: Arc<crate::fair::FairSlots>,
    /// `max_runs_in_memory` permits: one per run a poll dispatched, held until it ends.
    backlog: Arc<tokio::sync::Semaphore>,
    poll_slots: crate::scheduler::PollSlots,
    metrics: Arc<Metrics>,
    writer: Writer,
}

/// A loaded flow and what it is doing (`GET /api/flows`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowState {
    pub name: String,
    pub account: String,
    /// The trigger's catalog key; empty for a flow started by webhooks only.
    pub trigger: String,
    /// Set while the flow's polls wait for its location's daily budget to renew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
}

/// Why and until when a flow does not poll.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Paused {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// Marks a run as being executed by this process until dropped.
pub(crate) struct Claim<'a> {
    engine: &'a Engine,
    id: RunId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.engine.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

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
        let permits = crate::fair::FairSlots::new(config.concurrency);
        let backlog = Arc::new(tokio::sync::Semaphore::new(
            config.max_runs_in_memory.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let poll_slots =
            crate::scheduler::PollSlots::new(accounts.iter().map(|a| a.name.as_str()), config.poll_concurrency);
        let writer = Writer::start(store.clone());
        Arc::new(Engine {
            catalog,
            client,
            store,
            http,
            http_targets,
            accounts: accounts.into_iter().map(|a| (a.name.clone(), a)).collect(),
            env,
            config,
            flows: RwLock::new(HashMap::new()),
            scheduled: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashSet::new()),
            paused: Mutex::new(HashMap::new()),
            permits,
            backlog,
            poll_slots,
            metrics,
            writer,
        })
    }

    /// Replaces the loaded flows. Every flow is checked first; on any error nothing changes.
    pub fn set_flows(&self, flows: Vec<CompiledFlow>) -> Result<(), EngineError> {
        let mut next = HashMap::with_capacity(flows.len());
        for f in flows {
            if !self.accounts.contains_key(&f.account) {
                let known: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
                return Err(EngineError::Flow {
                    flow: f.name.clone(),
                    message: format!("account `{}` is not configured (configured: {})", f.account, known.join(", ")),
                });
            }
            let rt = FlowRuntime::new(f, &self.catalog)?;
            next.insert(rt.name().to_string(), rt);
        }
        if let Ok(mut flows) = self.flows.write() {
            *flows = next;
        }
        Ok(())
    }

    pub fn flow_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.flows.read().map(|f| f.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// Every loaded flow with what it is doing, sorted by name.
    pub fn flow_states(&self) -> Vec<FlowState> {
        let paused = self.paused.lock().map(|p| p.clone()).unwrap_or_default();
        let flows = self.flows.read().map(|f| f.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let mut states: Vec<FlowState> = flows
            .iter()
            .map(|rt| FlowState {
                name: rt.name().to_owned(),
                account: rt.flow.account.clone(),
                trigger: rt.trigger_op.key.clone(),
                paused: paused.get(rt.name()).cloned(),
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    pub(crate) fn pause(&self, flow: &str, until: DateTime<Utc>, reason: String) {
        if let Ok(mut p) = self.paused.lock() {
            p.insert(flow.to_owned(), Paused { until, reason });
        }
        self.metrics.flow_paused.get_or_create(&crate::metrics::FlowLabels { flow: flow.to_owned() }).set(1);
    }

    pub(crate) fn unpause(&self, flow: &str) {
        if let Ok(mut p) = self.paused.lock() {
            p.remove(flow);
        }
        self.metrics.flow_paused.get_or_create(&crate::metrics::FlowLabels { flow: flow.to_owned() }).set(0);
    }

    pub(crate) fn flow(&self, name: &str) -> Result<Arc<FlowRuntime>, EngineError> {
        self.flows
            .read()
            .ok()
            .and_then(|f| f.get(name).cloned())
            .ok_or_else(|| EngineError::UnknownFlow(name.to_string()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn client(&self) -> &ghl::Client {
        &self.client
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }
    pub(crate) fn http_targets(&self) -> &crate::http_step::Targets {
        &self.http_targets
    }

    pub(crate) fn http(&self) -> Result<&reqwest::Client, &str> {
        self.http.as_ref().map_err(String::as_str)
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    pub(crate) fn poll_slots(&self) -> &crate::scheduler::PollSlots {
        &self.poll_slots
    }

    pub(crate) fn claim(&self, id: RunId) -> Option<Claim<'_>> {
        let mut set = self.in_flight.lock().ok()?;
        set.insert(id).then_some(Claim { engine: self, id })
    }

    /// Runs store work off the async threads (sled flushes block).
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce() -> Result<T, EngineError> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Join(e.to_string()))?
    }

    /// The template context of a flow for one item.
    pub(crate) fn context(&self, rt: &FlowRuntime, trigger: Value, run_id: &str, now: DateTime<Utc>) -> Value {
        let account = self
            .accounts
            .get(&rt.flow.account)
            .map(|a| json!({ "name": a.name, "location_id": a.location_id }))
            .unwrap_or(Value::Null);
        flow::context(rt.name(), trigger, account, &self.env, run_id, now)
    }

    /// Polls a flow once and executes the runs it created; returns both.
    pub async fn poll_and_run(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(crate::PollReport, Vec<RunStatus>), EngineError> {
        let (report, handles) = self.poll_and_dispatch(name).await?;
        Ok((report, Self::wait_for(handles).await?))
    }

    /// Executes runs concurrently (bounded by `concurrency`) and waits for all.
    pub async fn execute_all(self: &Arc<Self>, ids: Vec<RunId>) -> Result<Vec<RunStatus>, EngineError> {
        let handles: Vec<JoinHandle<Result<RunStatus, EngineError>>> =
            ids.into_iter().map(|id| self.dispatch(id)).collect();
        Self::wait_for(handles).await
    }

    /// Like [`Engine::execute_all`] for runs whose flow is known, so each takes its flow's turn.
    async fn execute_runs(self: &Arc<Self>, runs: Vec<(String, RunId)>) -> Result<Vec<RunStatus>, EngineError> {
        let handles: Vec<JoinHandle<Result<RunStatus, EngineError>>> = runs
            .into_iter()
            .map(|(flow, id)| self.spawn_run(&flow, move |engine| async move { engine.execute(id).await }))
            .collect();
        Self::wait_for(handles).await
    }

    /// Waits for dispatched runs, in order; returns the status each ended in.
    pub async fn wait_for(
        handles: Vec<JoinHandle<Result<RunStatus, EngineError>>>,
    ) -> Result<Vec<RunStatus>, EngineError> {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.map_err(|e| EngineError::Join(e.to_string()))??);
        }
        Ok(out)
    }

    /// Starts executing a run in the background, once a concurrency permit is free. Runs
    /// dispatched by id alone (their flow is read when they start) share one turn.
    pub fn dispatch(self: &Arc<Self>, id: RunId) -> JoinHandle<Result<RunStatus, EngineError>> {
        self.spawn_run("", move |engine| async move { engine.execute(id).await })
    }

    /// Like [`Engine::dispatch`], for a run a poll has just created: it starts from what the
    /// poll holds instead of reading the run back.
    /// `hold` (from [`Engine::room_for_runs`]) is kept until the run ends.
    pub(crate) fn dispatch_created(
        self: &Arc<Self>,
        run: crate::poll::Created,
        hold: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> JoinHandle<Result<RunStatus, EngineError>> {
        let flow = run.flow.clone();
        self.spawn_run(&flow, move |engine| async move {
            let _hold = hold;
            engine.execute_created(run).await
        })
    }

    /// Waits until `n` more runs a poll created may be held in memory (see
    /// `max_runs_in_memory`); the permit holds as many slots, one per run, at most all of them.
    pub(crate) async fn room_for_runs(&self, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = n.min(self.config.max_runs_in_memory.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
        if n == 0 {
            return None;
        }
        // The semaphore is never closed.
        self.backlog.clone().acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX)).await.ok()
    }

    /// Spawns `execute` once a concurrency permit is free in `flow`'s turn (see `fair`),
    /// counting it as queued meanwhile.
    fn spawn_run<F, Fut>(self: &Arc<Self>, flow: &str, execute: F) -> JoinHandle<Result<RunStatus, EngineError>>
    where
        F: FnOnce(Arc<Engine>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<RunStatus, EngineError>> + Send,
    {
        let engine = self.clone();
        let flow = flow.to_owned();
        self.metrics.queue_depth.inc();
        tokio::spawn(async move {
            let _permit = engine.permits.acquire(&flow).await;
            engine.metrics.queue_depth.dec();
            // Boxed once the run may start: a queued task then holds a small future, not
            // the whole run's state machine (kilobytes). A poll queues thousands at once, and
            // their fresh pages cost more than the run's bookkeeping did.
            Box::pin(execute(engine)).await
        })
    }

    /// Runs left unfinished by a previous process, and failed runs whose retry is due.
    pub async fn resume(self: &Arc<Self>) -> Result<Vec<RunStatus>, EngineError> {
        let store = self.store.clone();
        let runs = self.blocking(move || Ok(store.list_resumable()?)).await?;
        if !runs.is_empty() {
            tracing::info!(runs = runs.len(), "resuming runs left unfinished");
        }
        self.execute_runs(runs.into_iter().map(|r| (r.flow, r.id)).collect()).await
    }

    /// Failed runs whose retry time has come; executes them and waits.
    pub async fn retry_due(self: &Arc<Self>) -> Result<Vec<RunStatus>, EngineError> {
        let store = self.store.clone();
        let runs = self.blocking(move || Ok(store.list_due_retries(Utc::now(), 256)?)).await?;
        self.execute_runs(runs.into_iter().map(|r| (r.flow, r.id)).collect()).await
    }

    /// Makes a flow's held runs pending and executes them.
    pub async fn release(self: &Arc<Self>, flow: &str) -> Result<Vec<RunStatus>, EngineError> {
        let store = self.store.clone();
        let name = flow.to_string();
        let ids = self.blocking(move || Ok(store.release_held(&name)?)).await?;
        self.execute_runs(ids.into_iter().map(|id| (flow.to_owned(), id)).collect()).await
    }

    /// Replays a dead run (an `in_doubt` one only with `in_doubt`): in one write it becomes
    /// `pending` for a new series of attempts, then it is executed. A run that is not dead
    /// or in doubt (already replayed, say) is refused with [`EngineError::NotReplayable`],
    /// so a replay asked twice sends once. Steps that succeeded are not sent again.
    pub async fn replay(self: &Arc<Self>, id: RunId, in_doubt: bool) -> Result<RunStatus, EngineError> {
        let store = self.store.clone();
        let flow = self.blocking(move || Ok(store.get_run(id)?.ok_or(EngineError::UnknownRun(id))?.flow)).await?;
        // Checked first so a replay never leaves a run nobody will execute.
        self.flow(&flow)?;
        let store = self.store.clone();
        self.blocking(move || match store.update_run(id, &[store::RunChange::Replay { in_doubt }]) {
            Ok(_) => Ok(()),
            Err(store::StoreError::Conflict(why)) => Err(EngineError::NotReplayable(why)),
            Err(e) => Err(e.into()),
        })
        .await?;
        self.execute(id).await
    }

    /// Starts the background tasks: one scheduler per flow, and the retry scanner. They
    /// stop when `shutdown` turns true; `EngineTasks::join` waits for them.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> EngineTasks {
        let mut tasks = self.schedule_new_flows(&shutdown);
        tasks.push(crate::scheduler::spawn_retries(self.clone(), shutdown));
        EngineTasks { tasks }
    }

    /// Starts a scheduler for each loaded flow that has none (after a reload). A flow
    /// that was replaced keeps its scheduler, which picks up the new definition; one that
    /// was removed stops its scheduler at its next wake-up.
    pub fn schedule_new_flows(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for name in self.flow_names() {
            let fresh = self.scheduled.lock().map(|mut s| s.insert(name.clone())).unwrap_or(false);
            if fresh {
                handles.push(crate::scheduler::spawn_flow(self.clone(), name, shutdown.clone()));
            }
        }
        handles
    }

    pub(crate) fn unscheduled(&self, name: &str) {
        if let Ok(mut s) = self.scheduled.lock() {
            s.remove(name);
        }
    }

    /// Waits until no run is executing or queued, or the deadline passes; returns whether
    /// everything finished.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.permits.idle()).await.is_ok() && self.metrics.queue_depth.get() == 0
    }
}

/// The engine's background tasks.
pub struct EngineTasks {
    tasks: Vec<JoinHandle<()>>,
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
