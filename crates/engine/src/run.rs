//! Executing one run: its steps in order, each recorded durably before it is sent and
//! after it returns, so a crash at any point leaves a run that can be resumed without
//! sending anything twice.
//!
//! Bookkeeping is batched without weakening that: changes that need not be on disk
//! before anything else happens wait in a [`Pending`] buffer and are written with the
//! next change that must be (one transaction, one flush). `running` goes with the first
//! step's start; a step's result goes with the next step's start, or with the run's
//! final status. A run of S steps thus costs S + 1 flushes instead of 2S + 2, and the
//! store shares each flush among concurrent runs (group commit). Every step's start is
//! still durable before it is sent; a step whose result was not yet written when the
//! process died is found `sent` and handled like any interrupted step (sent again if
//! idempotent, else `in_doubt`).

use crate::failure::Failure;
use crate::http_step;
use crate::poll::Created;
use crate::render::{self, Prepared};
use crate::runtime::{FlowRuntime, Step, StepKind};
use crate::services::{blocking, Services};
use crate::step_control::{self, Resume, Stop};
use crate::EngineError;
use chrono::Utc;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{NewRunFields, Run, RunChange, RunId, RunStatus, StepStatus, StoreError};

/// How long a run's last write is tried again while the database is unreachable (see
/// `Runner::write_final`): a restart or a failover, not an outage.
const FINAL_WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// The runs this process is executing, so one run is never executed twice at once.
#[derive(Default)]
pub(crate) struct Claims(Mutex<HashSet<RunId>>);

/// Marks a run as being executed by this process until dropped.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    id: RunId,
}

impl Claims {
    pub(crate) fn claim(&self, id: RunId) -> Option<Claim<'_>> {
        let mut set = self.0.lock().ok()?;
        // Built only when inserted: a `Claim` dropped here would take the lock held above.
        set.insert(id).then(|| Claim { claims: self, id })
    }

    /// The runs being executed now.
    pub(crate) fn ids(&self) -> Vec<RunId> {
        self.0.lock().map(|set| set.iter().copied().collect()).unwrap_or_default()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.claims.0.lock() {
            set.remove(&self.id);
        }
    }
}

/// A run being executed: what it needs, lent by the engine.
pub(crate) struct Runner<'a> {
    pub(crate) svc: &'a Services,
    pub(crate) claims: &'a Claims,
}

/// One step being run: where it goes and what it records.
pub(crate) struct StepRun<'a> {
    pub(crate) id: RunId,
    pub(crate) flow: &'a str,
    pub(crate) account: &'a str,
    pub(crate) step: &'a Step,
    /// The record it is kept in: the step's id, or `<id>[<index>]` for an element of a
    /// `for_each` step.
    pub(crate) key: &'a str,
    /// Later steps render from its result, so it is returned as well as recorded.
    pub(crate) keep_result: bool,
}

impl Runner<'_> {
    /// Executes (or resumes) the run `id` of `rt` and returns the status it ends in.
    /// `None` for `rt`: the run's flow is looked up by `flow_of` once the run is read.
    pub(crate) async fn execute(
        &self,
        id: RunId,
        rt: Option<Arc<FlowRuntime>>,
        flow_of: impl FnOnce(&str) -> Option<Arc<FlowRuntime>>,
    ) -> Result<RunStatus, EngineError> {
        let Some(_guard) = self.claims.claim(id) else {
            // Another task is executing this run right now.
            return Ok(RunStatus::Running);
        };
        // A point read (no flush): cheaper inline than on the blocking pool.
        let run = self.svc.store.get_run(id)?.ok_or(EngineError::UnknownRun(id))?;
        // A failed run waits for its retry: one dispatched twice (a cluster node claiming
        // a run a webhook also dispatched) must not be retried by the second task early.
        if run.status == RunStatus::Failed && run.next_retry_at.is_some_and(|at| at > Utc::now()) {
            return Ok(run.status);
        }
        let Some(rt) = rt.or_else(|| flow_of(&run.flow)) else {
            tracing::warn!(run = %id, flow = %run.flow, "run left pending: its flow is not loaded");
            return Ok(run.status);
        };
        self.execute_claimed(&rt, run, Pending::default()).await
    }

    /// Executes a run a poll has just created, from the poll's copy of it: a new run is
    /// `pending` with no steps, so its record is not read back. Its first write checks
    /// that it is still `pending`, in case anything else started it meanwhile.
    pub(crate) async fn execute_created(&self, created: Created) -> Result<RunStatus, EngineError> {
        let Some(_guard) = self.claims.claim(created.id) else {
            return Ok(RunStatus::Running);
        };
        let fields = NewRunFields { flow: created.rt.name.clone(), ..NewRunFields::default() };
        let item = created.item.into_value().map_err(|e| EngineError::Flow {
            flow: created.rt.name.clone(),
            message: format!("run {}: decoding its trigger item: {e}", created.id),
        })?;
        let run = Run::new(created.id, fields, item, Utc::now());
        let mut pending = Pending::default();
        pending.0.push(RunChange::Expect { status: RunStatus::Pending });
        self.execute_claimed(&created.rt, run, pending).await
    }

    /// Executes a run this task has claimed, with `pending` written before anything else.
    async fn execute_claimed(
        &self,
        rt: &FlowRuntime,
        mut run: Run,
        mut pending: Pending,
    ) -> Result<RunStatus, EngineError> {
        let id = run.id;
        match run.status {
            RunStatus::Pending | RunStatus::Running | RunStatus::Failed => {}
            other => return Ok(other),
        }
        let started = Instant::now();
        if run.status != RunStatus::Running {
            pending.0.push(RunChange::Status { status: RunStatus::Running, error: None });
        }
        // The item moves into the context; the run's record is only read for its steps below.
        let mut ctx = rt.context(std::mem::take(&mut run.item), &self.svc.env, &id.to_string(), Utc::now());
        let mut outcome = RunStatus::Succeeded;
        let mut error_text = None;
        let mut deferred = None;
        let last_attempt = run.attempts + 1 >= self.svc.config.max_attempts;
        for (i, step) in rt.steps.iter().enumerate() {
            let done = if step.def.control.is_plain() {
                match step_control::resume(&run, step.id(), step, &mut pending) {
                    Resume::Done(v) => Ok(v),
                    Resume::InDoubt(why) => Err(Stop { outcome: RunStatus::InDoubt, error: why, deferred: None }),
                    Resume::Send => {
                        // The last step's result goes only into its record: nothing renders from it.
                        let keep_result = i + 1 < rt.steps.len();
                        let one =
                            StepRun { id, flow: &rt.name, account: &rt.account, step, key: step.id(), keep_result };
                        match self.run_step(&one, &ctx, &mut pending).await? {
                            Ok(Some(result)) => Ok(result),
                            Ok(None) => continue,
                            Err(failure) => Err(Stop::of(failure, step.id())),
                        }
                    }
                }
            } else {
                self.run_controlled(&run, rt, step, &mut ctx, &mut pending, last_attempt).await?
            };
            match done {
                Ok(result) => ctx["steps"][step.id()] = result,
                Err(stop) => {
                    outcome = stop.outcome;
                    error_text = Some(stop.error);
                    deferred = stop.deferred;
                    break;
                }
            }
        }
        let config = &self.svc.config;
        let final_status = match outcome {
            RunStatus::Failed if deferred.is_some() => {
                let after = deferred.and_then(|d| chrono::Duration::from_std(d).ok()).unwrap_or_default();
                let error = error_text.clone().unwrap_or_default();
                pending.0.push(RunChange::Defer { at: Utc::now() + after, error });
                RunStatus::Failed
            }
            RunStatus::Failed if run.attempts + 1 >= config.max_attempts => RunStatus::Dead,
            RunStatus::Failed => {
                let at = Utc::now() + config.retry_delay(run.attempts + 1);
                let error = error_text.clone().unwrap_or_default();
                pending.0.push(RunChange::RetryAt { at, error });
                RunStatus::Failed
            }
            other => other,
        };
        if final_status != RunStatus::Failed {
            pending.0.push(RunChange::Status { status: final_status, error: error_text.clone() });
        }
        // Nothing is sent after it, so it need not wait for the disk: the next step start's
        // flush (or the writer's own, soon after) carries it (see `writer`).
        self.write_final(id, pending, final_status).await?;
        self.svc.metrics.record_run(&rt.name, final_status, started.elapsed());
        match (&final_status, &error_text) {
            (RunStatus::Succeeded, _) => {
                tracing::info!(flow = %rt.name, run = %id, steps = rt.steps.len(), ms = started.elapsed().as_millis() as u64, "run succeeded")
            }
            (status, Some(e)) => {
                tracing::warn!(flow = %rt.name, run = %id, %status, error = %e, "run did not succeed")
            }
            (status, None) => tracing::warn!(flow = %rt.name, run = %id, %status, "run did not succeed"),
        }
        Ok(final_status)
    }

    /// Renders, records, sends and records one step. The outer error is the engine's own
    /// (the store failed); the inner one is the step's. The step's start is written (with
    /// whatever `pending` holds) before it is sent; its result is left in `pending` for the
    /// next write, and returned too if `keep_result` (later steps render from it).
    pub(crate) async fn run_step(
        &self,
        one: &StepRun<'_>,
        ctx: &Value,
        pending: &mut Pending,
    ) -> Result<Result<Option<Value>, Failure>, EngineError> {
        let step = one.step;
        let inputs = match step.def.render_inputs(ctx) {
            Ok(inputs) => inputs,
            Err(e) => return Ok(Err(Failure::Permanent(e))),
        };
        // The GHL records the step names, for search by record (`crate::touched`).
        let mut touched = match step.kind {
            StepKind::Ghl { .. } => crate::touched::of_inputs(&inputs),
            StepKind::Http => Vec::new(),
        };
        let prepared = match render::prepare_inputs(step, inputs) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Failure::Permanent(e))),
        };
        let began = Instant::now();
        // Whether the step's start was recorded: a request that failed before it left
        // (a refused token, the daily budget) leaves no step record.
        let mut started = false;
        // A GHL write names records a cached read may hold (see `cache`).
        let mut wrote = false;
        let result = match prepared {
            Prepared::Ghl { op, result, req, record } => {
                let cached = step.def.cache.map(|ttl| (ttl, crate::cache::ReadCache::key(one.account, &record)));
                if let Some((_, key)) = &cached {
                    if let Some(value) = self.svc.cache.get(key) {
                        return Ok(Ok(self.cached_step(one, record, value, touched, pending, began)));
                    }
                }
                // Taken before the read is sent: a write landing meanwhile makes it stale.
                let generations = cached.as_ref().map(|_| self.svc.cache.generations(&touched));
                wrote = op.method != catalog::Method::Get;
                let req = req.origin(ghl::Origin::new(one.flow, ghl::Purpose::Step));
                // Marked sent when the request leaves, after the rate limiter's wait: a
                // run still queued there when the process stops has sent nothing.
                let (mark_pending, mark_started) = (&mut *pending, &mut started);
                let mark = move || {
                    *mark_started = true;
                    self.start_step(one.id, one.key, record, mark_pending)
                };
                match self.svc.client.send_marked(one.account, &req, mark).await? {
                    Ok(ghl::Body::Json(body)) => {
                        let value = result.take_first(body).unwrap_or_else(|body| body);
                        crate::touched::of_response(op, &value, &mut touched);
                        if let (Some((ttl, key)), Some(generations)) = (cached, generations) {
                            self.svc.cache.put(key, value.clone(), ttl, generations);
                        }
                        Ok(value)
                    }
                    Ok(ghl::Body::Text { text, .. }) => Ok(Value::String(text)),
                    Ok(ghl::Body::Bytes { content_type, bytes }) => {
                        Ok(json!({"contentType": content_type, "size": bytes.len()}))
                    }
                    Err(e) => Err(Failure::of_ghl(&e, op.method)),
                }
            }
            Prepared::Http { inputs, record } => {
                let method = step.method(&record);
                if let Err(e) = http_step::check(&inputs, &self.svc.http_targets) {
                    return Ok(Err(Failure::Permanent(e)));
                }
                let client = match self.svc.http() {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(Failure::Permanent(e.to_string()))),
                };
                started = true;
                self.start_step(one.id, one.key, record, pending).await?;
                let config = &self.svc.config;
                http_step::send(client, &inputs, config.http_timeout, method, config.http_max_response_bytes).await
            }
        };
        self.svc.metrics.record_step(one.flow, step.id(), began.elapsed(), result.is_ok());
        if wrote && started {
            // Sent, whatever came back: it may have changed the records it names.
            self.svc.cache.invalidate(&touched);
        }
        if !touched.is_empty() {
            pending.0.push(RunChange::Touched { records: touched });
        }
        Ok(match result {
            Ok(v) => {
                let kept = one.keep_result.then(|| v.clone());
                pending.finish(one.key, StepStatus::Succeeded, Some(v), None);
                Ok(kept)
            }
            Err(failure) => {
                match &failure {
                    _ if !started => {}
                    Failure::InDoubt(e) => pending.finish(one.key, StepStatus::InDoubt, None, Some(e)),
                    Failure::Retry(e) | Failure::Permanent(e) | Failure::Deferred { why: e, .. } => {
                        pending.finish(one.key, StepStatus::Failed, None, Some(e))
                    }
                }
                Err(failure)
            }
        })
    }

    /// Records a step answered from the read cache: its request (marked `cached: true`)
    /// and the cached result, with the run's next write; nothing is sent.
    fn cached_step(
        &self,
        one: &StepRun<'_>,
        mut record: Value,
        value: Value,
        touched: Vec<String>,
        pending: &mut Pending,
        began: Instant,
    ) -> Option<Value> {
        if let Some(m) = record.as_object_mut() {
            m.insert("cached".into(), Value::Bool(true));
        }
        let step = one.step.id();
        pending.0.push(RunChange::StepStarted { step: step.to_string(), request: record.into() });
        if !touched.is_empty() {
            pending.0.push(RunChange::Touched { records: touched });
        }
        self.svc.metrics.record_step(one.flow, step, began.elapsed(), true);
        let kept = one.keep_result.then(|| value.clone());
        pending.finish(step, StepStatus::Succeeded, Some(value), None);
        kept
    }

    /// Durably records that `step` is being sent, with everything pending before it.
    async fn start_step(
        &self,
        id: RunId,
        step: &str,
        request: Value,
        pending: &mut Pending,
    ) -> Result<(), EngineError> {
        pending.0.push(RunChange::StepStarted { step: step.to_string(), request: request.into() });
        self.write(id, pending, true).await
    }

    /// Writes a run's last changes (its steps' answers, its final status). What was sent is
    /// known only here: if the write is lost, a later attempt finds the steps started with
    /// no answer and the run ends in doubt. So while the database is unreachable (a
    /// restart, a failover) the write is tried again for up to [`FINAL_WRITE_PATIENCE`].
    /// A retry refused because the first try was committed after all is a success.
    async fn write_final(&self, id: RunId, pending: Pending, status: RunStatus) -> Result<(), EngineError> {
        if pending.0.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + FINAL_WRITE_PATIENCE;
        let mut pause = Duration::from_millis(250);
        let mut tried = false;
        loop {
            match self.svc.writer.write(id, pending.0.clone(), false).await {
                Ok(()) => return Ok(()),
                Err(EngineError::Store(StoreError::Conflict(why))) if tried => {
                    let store = self.svc.store.clone();
                    let stored = blocking(move || Ok(store.get_run(id)?)).await;
                    return match stored {
                        Ok(Some(run)) if run.status == status => Ok(()),
                        _ => Err(EngineError::Store(StoreError::Conflict(why))),
                    };
                }
                Err(EngineError::Store(e)) if e.is_unreachable() && Instant::now() + pause < deadline => {
                    tracing::warn!(run = %id, error = %e, "recording the run's outcome failed: the database is unreachable; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    tried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the pending changes, batched with other runs' writes: durably if `durable`,
    /// else committed and flushed soon after (see `writer`).
    async fn write(&self, id: RunId, pending: &mut Pending, durable: bool) -> Result<(), EngineError> {
        if pending.0.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut pending.0);
        self.svc.writer.write(id, changes, durable).await
    }
}

/// A run's changes not yet written, applied in order by the next write.
#[derive(Default)]
pub(crate) struct Pending(Vec<RunChange>);

impl Pending {
    pub(crate) fn finish(&mut self, step: &str, status: StepStatus, response: Option<Value>, error: Option<&str>) {
        self.0.push(RunChange::StepFinished {
            step: step.to_string(),
            status,
            response: response.map(store::Payload::new),
            error: error.map(str::to_string),
        });
    }

    /// Records that `step`'s `if:` skipped it: nothing is sent, so nothing waits for the disk.
    pub(crate) fn skip(&mut self, step: &str) {
        let request = store::Payload::new(flow::skipped_result());
        self.0.push(RunChange::StepStarted { step: step.to_string(), request });
        self.0.push(RunChange::StepFinished {
            step: step.to_string(),
            status: StepStatus::Skipped,
            response: None,
            error: None,
        });
    }

    /// Marks the failure of `step` as continued past (`on_error: continue`): its record
    /// keeps `result` as its response, which is what tells a retry it is done. A step that
    /// failed before it was started (its inputs did not render) gets a record here.
    pub(crate) fn continue_past(&mut self, step: &str, result: Value) {
        let finished = self.0.iter_mut().rev().find_map(|c| match c {
            RunChange::StepFinished { step: s, status: StepStatus::Failed, response, .. } if s == step => {
                Some(response)
            }
            _ => None,
        });
        match finished {
            Some(response) => *response = Some(store::Payload::new(result)),
            None => {
                let error = result.get("error").and_then(Value::as_str).map(str::to_string);
                self.0
                    .push(RunChange::StepStarted { step: step.to_string(), request: store::Payload::new(Value::Null) });
                self.0.push(RunChange::StepFinished {
                    step: step.to_string(),
                    status: StepStatus::Failed,
                    response: Some(store::Payload::new(result)),
                    error,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::HeldItem;
    use crate::{AccountInfo, Engine, EngineConfig, Metrics};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use store::{NewRun, Store, StoreError};

    const TOKEN: &str = "pit-execute-test";
    const FLOW: &str = r#"
name: welcome
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Hi", dueDate: "{{ date_add now days=1 }}", completed: false }
"#;

    /// The poll's copy of a run says `pending`; if the run was finished by another path
    /// meanwhile, its first write is refused and nothing is sent a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_created_run_that_is_no_longer_pending_is_not_sent_again() {
        let mut config = sandbox::SandboxConfig::default()
            .with_seed(sandbox::Seed::Contacts(1))
            .with_rate_limit(sandbox::RateLimitConfig::disabled());
        config.tokens = vec![TOKEN.into()];
        let sb = sandbox::Sandbox::start(config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = ghl::Client::builder().build().unwrap();
        let account = ghl::Account::new("main", ghl::Credentials::PrivateToken(ghl::Secret::new(TOKEN)))
            .unwrap()
            .with_base_url(&sb.base_url())
            .unwrap()
            .with_resource(sb.location_id());
        client.add_account(account);
        let catalog = Arc::new(catalog::Catalog::builtin().unwrap());
        let store: Arc<dyn Store> = Arc::new(store::SledStore::create_or_open(dir.path().join("store")).unwrap());
        let accounts = vec![AccountInfo { name: "main".into(), location_id: sb.location_id().into() }];
        let engine = Arc::new(Engine::new(
            catalog.clone(),
            client,
            store.clone(),
            accounts,
            BTreeMap::new(),
            EngineConfig::default(),
            Arc::new(Metrics::new()),
        ));
        let env = flow::CompileEnv { env: BTreeMap::new(), accounts: vec!["main".into()] };
        let (compiled, diags) = flow::load("welcome.yaml", FLOW, &catalog, &env);
        engine.set_flows(vec![compiled.unwrap_or_else(|| panic!("{}", flow::render_all(&diags)))]).unwrap();

        let contact = sb.records("contacts").pop().unwrap();
        let id = store.create_run(&NewRun::new("welcome", contact.clone())).unwrap();
        assert_eq!(engine.execute(id).await.unwrap(), RunStatus::Succeeded);
        let tasks = sb.records("tasks").len();

        let stale = Created { id, rt: engine.flow("welcome").unwrap(), item: HeldItem::Tree(contact) };
        let err = engine.execute_created(stale).await.unwrap_err();
        assert!(
            matches!(&err, EngineError::Store(StoreError::Conflict(m)) if m.contains("expected it pending")),
            "{err}"
        );
        assert_eq!(sb.records("tasks").len(), tasks, "nothing was sent again");
        assert_eq!(store.get_run(id).unwrap().unwrap().status, RunStatus::Succeeded);
    }
}

#[cfg(test)]
mod claim_tests {
    use super::Claims;
    use store::RunId;

    /// A second claim of a run this process executes is refused, and the refusal leaves
    /// the first claim standing (it once dropped a claim while holding the set's lock).
    #[test]
    fn a_run_claimed_twice_is_refused_the_second_time_and_stays_claimed() {
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let claims = Claims::default();
            let first = claims.claim(RunId(7));
            let second = claims.claim(RunId(7));
            let third = claims.claim(RunId(7));
            let _ = done.send((first.is_some(), second.is_none(), third.is_none()));
        });
        let got = wait.recv_timeout(std::time::Duration::from_secs(5)).expect("claiming twice must not hang");
        assert_eq!(got, (true, true, true));
    }
}
