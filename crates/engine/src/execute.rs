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
//! process died is found `sent` and handled as before (sent again if idempotent, else
//! `in_doubt`).

use crate::engine::Engine;
use crate::error::EngineError;
use crate::http_step;
use crate::poll::Created;
use crate::request;
use crate::runtime::{StepKind, StepRuntime};
use chrono::Utc;
use serde_json::{json, Value};
use std::time::Instant;
use store::{NewRunFields, Run, RunChange, RunId, RunStatus, StepStatus};

/// How a step ended when it did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth trying again later (429, connection errors; 5xx and timeouts of safe requests).
    Retry(String),
    /// Trying again will not help (4xx, a template that cannot render).
    Permanent(String),
    /// The request may have reached the other side and is not safe to repeat.
    InDoubt(String),
    /// Nothing was sent, and nothing can be before `after` (the location's daily budget is
    /// spent): the run waits without spending an attempt.
    Deferred { after: std::time::Duration, why: String },
}

impl Engine {
    /// Executes (or resumes) one run and returns the status it ends in.
    pub async fn execute(&self, id: RunId) -> Result<RunStatus, EngineError> {
        let Some(_guard) = self.claim(id) else {
            // Another task is executing this run right now.
            return Ok(RunStatus::Running);
        };
        // A point read (no flush): cheaper inline than on the blocking pool.
        let run = self.store().get_run(id)?.ok_or(EngineError::UnknownRun(id))?;
        self.execute_claimed(run, Pending::default()).await
    }

    /// Executes a run a poll has just created, from the poll's copy of it: a new run is
    /// `pending` with no steps, so its record is not read back. Its first write checks
    /// that it is still `pending`, in case anything else started it meanwhile.
    pub(crate) async fn execute_created(&self, created: Created) -> Result<RunStatus, EngineError> {
        let Some(_guard) = self.claim(created.id) else {
            return Ok(RunStatus::Running);
        };
        let fields = NewRunFields { flow: created.flow, ..NewRunFields::default() };
        let run = Run::new(created.id, fields, created.item, Utc::now());
        let mut pending = Pending::default();
        pending.0.push(RunChange::Expect { status: RunStatus::Pending });
        self.execute_claimed(run, pending).await
    }

    /// Executes a run this task has claimed, with `pending` written before anything else.
    async fn execute_claimed(&self, mut run: Run, mut pending: Pending) -> Result<RunStatus, EngineError> {
        let id = run.id;
        match run.status {
            RunStatus::Pending | RunStatus::Running | RunStatus::Failed => {}
            other => return Ok(other),
        }
        let rt = match self.flow(&run.flow) {
            Ok(rt) => rt,
            Err(_) => {
                tracing::warn!(run = %id, flow = %run.flow, "run left pending: its flow is not loaded");
                return Ok(run.status);
            }
        };
        let started = Instant::now();
        if run.status != RunStatus::Running {
            pending.0.push(RunChange::Status { status: RunStatus::Running, error: None });
        }
        // The item moves into the context; the run's record is only read for its steps below.
        let mut ctx = self.context(&rt, std::mem::take(&mut run.item), &id.to_string(), Utc::now());
        let mut outcome = RunStatus::Succeeded;
        let mut error_text = None;
        let mut deferred = None;
        for (i, step) in rt.steps.iter().enumerate() {
            // The last step's result goes only into its record: nothing renders from it.
            let keep_result = i + 1 < rt.steps.len();
            let record = run.step(&step.id);
            match record.map(|r| r.status) {
                Some(StepStatus::Succeeded) => {
                    ctx["steps"][&step.id] = record.and_then(|r| r.response.as_deref().cloned()).unwrap_or(Value::Null);
                    continue;
                }
                Some(StepStatus::InDoubt) => {
                    outcome = RunStatus::InDoubt;
                    error_text =
                        Some(format!("step `{}` is in doubt; check it, then replay or discard the run", step.id));
                    break;
                }
                Some(StepStatus::Sent) => {
                    // A crash between sending and recording: was it sent? Unknown.
                    let rendered = record.map(|r| r.request.clone()).unwrap_or_default();
                    if step.is_idempotent(&rendered) {
                        pending.finish(&step.id, StepStatus::Failed, None, Some("interrupted; sent again"));
                    } else {
                        let why = format!(
                            "step `{}` was being sent when flowd stopped; it may have reached the other side",
                            step.id
                        );
                        pending.finish(&step.id, StepStatus::InDoubt, None, Some(&why));
                        outcome = RunStatus::InDoubt;
                        error_text = Some(why);
                        break;
                    }
                }
                Some(StepStatus::Failed) | None => {}
            }
            match self.run_step(&rt.flow.account, id, step, &rt.flow.steps, &ctx, &mut pending, keep_result).await? {
                Ok(Some(result)) => ctx["steps"][&step.id] = result,
                Ok(None) => {}
                Err(Failure::Retry(e)) => {
                    outcome = RunStatus::Failed;
                    error_text = Some(format!("step `{}`: {e}", step.id));
                    break;
                }
                Err(Failure::Permanent(e)) => {
                    outcome = RunStatus::Dead;
                    error_text = Some(format!("step `{}`: {e}", step.id));
                    break;
                }
                Err(Failure::InDoubt(e)) => {
                    outcome = RunStatus::InDoubt;
                    error_text = Some(format!("step `{}`: {e}", step.id));
                    break;
                }
                Err(Failure::Deferred { after, why }) => {
                    deferred = Some(after);
                    outcome = RunStatus::Failed;
                    error_text = Some(format!("step `{}`: {why}", step.id));
                    break;
                }
            }
        }
        let final_status = match outcome {
            RunStatus::Failed if deferred.is_some() => {
                let after = deferred.and_then(|d| chrono::Duration::from_std(d).ok()).unwrap_or_default();
                let error = error_text.clone().unwrap_or_default();
                pending.0.push(RunChange::Defer { at: Utc::now() + after, error });
                RunStatus::Failed
            }
            RunStatus::Failed if run.attempts + 1 >= self.config().max_attempts => RunStatus::Dead,
            RunStatus::Failed => {
                let at = Utc::now() + self.config().retry_delay(run.attempts + 1);
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
        self.write(id, &mut pending, false).await?;
        self.metrics().record_run(rt.name(), final_status, started.elapsed());
        match (&final_status, &error_text) {
            (RunStatus::Succeeded, _) => {
                tracing::info!(flow = %rt.name(), run = %id, steps = rt.steps.len(), ms = started.elapsed().as_millis() as u64, "run succeeded")
            }
            (status, Some(e)) => {
                tracing::warn!(flow = %rt.name(), run = %id, %status, error = %e, "run did not succeed")
            }
            (status, None) => tracing::warn!(flow = %rt.name(), run = %id, %status, "run did not succeed"),
        }
        Ok(final_status)
    }

    /// Renders, records, sends and records one step. The outer error is the engine's own
    /// (the store failed); the inner one is the step's. The step's start is written (with
    /// whatever `pending` holds) before it is sent; its result is left in `pending` for the
    /// next write, and returned too if `keep_result` (later steps render from it).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        account: &str,
        id: RunId,
        step: &StepRuntime,
        compiled: &[flow::CompiledStep],
        ctx: &Value,
        pending: &mut Pending,
        keep_result: bool,
    ) -> Result<Result<Option<Value>, Failure>, EngineError> {
        let Some(template) = compiled.iter().find(|s| s.id == step.id) else {
            return Ok(Err(Failure::Permanent(format!("step `{}` is not in the flow", step.id))));
        };
        let inputs = match template.with.render(ctx) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) => serde_json::Map::new(),
            Ok(other) => return Ok(Err(Failure::Permanent(format!("`with` rendered to {other}, not a map")))),
            Err(e) => return Ok(Err(Failure::Permanent(format!("cannot render `with`: {e}")))),
        };
        let began = Instant::now();
        let flow_name = ctx["flow"]["name"].as_str().unwrap_or_default().to_string();
        // Whether the step's start was recorded: a request that failed before it left
        // (a refused token, the daily budget) leaves no step record.
        let mut started = false;
        let result = match &step.kind {
            StepKind::Ghl { op, result } => {
                let req = match request::build(op, &inputs) {
                    Ok(r) => r.origin(ghl::Origin::new(flow_name.as_str(), ghl::Purpose::Step)),
                    Err(e) => return Ok(Err(Failure::Permanent(e.to_string()))),
                };
                let rendered = request_record(op, &req);
                // Marked sent when the request leaves, after the rate limiter's wait: a
                // run still queued there when the process stops has sent nothing.
                let (mark_pending, mark_started) = (&mut *pending, &mut started);
                let mark = move || {
                    *mark_started = true;
                    self.start_step(id, &step.id, rendered, mark_pending)
                };
                match self.client().send_marked(account, &req, mark).await? {
                    Ok(ghl::Body::Json(body)) => Ok(result.take_first(body).unwrap_or_else(|body| body)),
                    Ok(ghl::Body::Text { text, .. }) => Ok(Value::String(text)),
                    Ok(ghl::Body::Bytes { content_type, bytes }) => {
                        Ok(json!({"contentType": content_type, "size": bytes.len()}))
                    }
                    Err(e) => Err(classify(&e, op.method.is_idempotent())),
                }
            }
            StepKind::Http => {
                let rendered = http_step::record(&inputs);
                let idempotent = step.is_idempotent(&rendered);
                if let Err(e) = http_step::check(&inputs, self.http_targets()) {
                    return Ok(Err(Failure::Permanent(e)));
                }
                let client = match self.http() {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(Failure::Permanent(e.to_string()))),
                };
                started = true;
                self.start_step(id, &step.id, rendered, pending).await?;
                let config = self.config();
                http_step::send(client, &inputs, config.http_timeout, idempotent, config.http_max_response_bytes).await
            }
        };
        self.metrics().record_step(&flow_name, &step.id, began.elapsed(), result.is_ok());
        pending.0.extend(crate::touched::step_change(&step.kind, &inputs, result.as_ref().ok()));
        Ok(match result {
            Ok(v) => {
                let kept = keep_result.then(|| v.clone());
                pending.finish(&step.id, StepStatus::Succeeded, Some(v), None);
                Ok(kept)
            }
            Err(failure) => {
                match &failure {
                    _ if !started => {}
                    Failure::InDoubt(e) => pending.finish(&step.id, StepStatus::InDoubt, None, Some(e)),
                    Failure::Retry(e) | Failure::Permanent(e) | Failure::Deferred { why: e, .. } => {
                        pending.finish(&step.id, StepStatus::Failed, None, Some(e))
                    }
                }
                Err(failure)
            }
        })
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

    /// Writes the pending changes, batched with other runs' writes: durably if `durable`,
    /// else committed and flushed soon after (see `writer`).
    async fn write(&self, id: RunId, pending: &mut Pending, durable: bool) -> Result<(), EngineError> {
        if pending.0.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut pending.0);
        self.writer().write(id, changes, durable).await
    }
}

/// The request as a step's record keeps it: `{op, method, path, query, body}`. Built
/// by hand: `json!` would serialise the body into a copy of itself, field by field.
fn request_record(op: &catalog::Operation, req: &ghl::Request) -> Value {
    let path = ghl::render_path(&req.path, &req.path_params).unwrap_or_else(|_| req.path.clone());
    let query = req.query.iter().map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()])).collect();
    let mut record = serde_json::Map::with_capacity(5);
    record.insert("op".into(), Value::String(op.key.clone()));
    record.insert("method".into(), Value::String(op.method.as_str().into()));
    record.insert("path".into(), Value::String(path));
    record.insert("query".into(), Value::Array(query));
    record.insert("body".into(), req.body.clone().unwrap_or(Value::Null));
    Value::Object(record)
}

/// A run's changes not yet written, applied in order by the next write.
#[derive(Default)]
pub(crate) struct Pending(Vec<RunChange>);

impl Pending {
    fn finish(&mut self, step: &str, status: StepStatus, response: Option<Value>, error: Option<&str>) {
        self.0.push(RunChange::StepFinished {
            step: step.to_string(),
            status,
            response: response.map(store::Payload::new),
            error: error.map(str::to_string),
        });
    }
}

/// Whether a failed GHL call is worth repeating, and whether it may have taken effect.
pub(crate) fn classify(e: &ghl::Error, idempotent: bool) -> Failure {
    use ghl::Error as E;
    match e {
        E::BudgetSpent { retry_after, .. } => Failure::Deferred { after: *retry_after, why: e.to_string() },
        // GHL refuses a 429 before doing any work.
        E::Api(api) if api.status == 429 => Failure::Retry(e.to_string()),
        // A 5xx came after the body was sent: GHL (or the backend behind its gateway) may
        // have acted on it, so only a request that is safe to repeat is tried again.
        E::Api(api) if api.status >= 500 && !idempotent => Failure::InDoubt(e.to_string()),
        E::Api(api) if api.status >= 500 => Failure::Retry(e.to_string()),
        E::Api(_) | E::InvalidRequest(_) => Failure::Permanent(e.to_string()),
        E::Timeout | E::Transport(_) | E::Decode(_) if !idempotent => Failure::InDoubt(e.to_string()),
        E::Timeout | E::Transport(_) | E::Decode(_) => Failure::Retry(e.to_string()),
        _ => Failure::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountInfo, EngineConfig, Metrics};
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

        let stale = Created { id, flow: "welcome".into(), item: contact };
        let err = engine.execute_created(stale).await.unwrap_err();
        assert!(
            matches!(&err, EngineError::Store(StoreError::Conflict(m)) if m.contains("expected it pending")),
            "{err}"
        );
        assert_eq!(sb.records("tasks").len(), tasks, "nothing was sent again");
        assert_eq!(store.get_run(id).unwrap().unwrap().status, RunStatus::Succeeded);
    }
}
