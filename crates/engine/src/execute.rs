//! Executing one run: its steps in order, each recorded durably before it is sent and
//! after it returns, so a crash at any point leaves a run that can be resumed without
//! sending anything twice.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::http_step;
use crate::request;
use crate::runtime::{StepKind, StepRuntime};
use chrono::Utc;
use serde_json::{json, Value};
use std::time::Instant;
use store::{RunChange, RunId, RunStatus, StepStatus};

/// How a step ended when it did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth trying again later (429, 5xx, timeouts of safe requests, connection errors).
    Retry(String),
    /// Trying again will not help (4xx, a template that cannot render).
    Permanent(String),
    /// The request may have reached the other side and is not safe to repeat.
    InDoubt(String),
}

impl Engine {
    /// Executes (or resumes) one run and returns the status it ends in.
    pub async fn execute(&self, id: RunId) -> Result<RunStatus, EngineError> {
        let Some(_guard) = self.claim(id) else {
            // Another task is executing this run right now.
            return Ok(RunStatus::Running);
        };
        let store = self.store().clone();
        let run = self.blocking(move || Ok(store.get_run(id)?)).await?.ok_or(EngineError::UnknownRun(id))?;
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
            self.update(id, vec![RunChange::Status { status: RunStatus::Running, error: None }]).await?;
        }
        let mut ctx = self.context(&rt, run.item.clone(), &id.to_string(), Utc::now());
        let mut outcome = RunStatus::Succeeded;
        let mut error_text = None;
        for step in &rt.steps {
            let record = run.step(&step.id);
            match record.map(|r| r.status) {
                Some(StepStatus::Succeeded) => {
                    ctx["steps"][&step.id] = record.and_then(|r| r.response.clone()).unwrap_or(Value::Null);
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
                    let rendered = record.map(|r| r.request.clone()).unwrap_or(Value::Null);
                    if step.is_idempotent(&rendered) {
                        self.finish_step(id, &step.id, StepStatus::Failed, None, Some("interrupted; sent again"))
                            .await?;
                    } else {
                        let why = format!(
                            "step `{}` was being sent when flowd stopped; it may have reached the other side",
                            step.id
                        );
                        self.finish_step(id, &step.id, StepStatus::InDoubt, None, Some(&why)).await?;
                        outcome = RunStatus::InDoubt;
                        error_text = Some(why);
                        break;
                    }
                }
                Some(StepStatus::Failed) | None => {}
            }
            match self.run_step(&rt.flow.account, id, step, &rt.flow.steps, &ctx).await? {
                Ok(result) => ctx["steps"][&step.id] = result,
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
            }
        }
        let final_status = match outcome {
            RunStatus::Failed if run.attempts + 1 >= self.config().max_attempts => RunStatus::Dead,
            RunStatus::Failed => {
                let at = Utc::now() + self.config().retry_delay(run.attempts + 1);
                let error = error_text.clone().unwrap_or_default();
                self.update(id, vec![RunChange::RetryAt { at, error }]).await?;
                RunStatus::Failed
            }
            other => other,
        };
        if final_status != RunStatus::Failed {
            self.update(id, vec![RunChange::Status { status: final_status, error: error_text.clone() }]).await?;
        }
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
    /// (the store failed); the inner one is the step's.
    async fn run_step(
        &self,
        account: &str,
        id: RunId,
        step: &StepRuntime,
        compiled: &[flow::CompiledStep],
        ctx: &Value,
    ) -> Result<Result<Value, Failure>, EngineError> {
        let Some(template) = compiled.iter().find(|s| s.id == step.id) else {
            return Ok(Err(Failure::Permanent(format!("step `{}` is not in the flow", step.id))));
        };
        let inputs = match template.with.render(ctx) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) => serde_json::Map::new(),
            Ok(other) => return Ok(Err(Failure::Permanent(format!("`with` rendered to {other}, not a map")))),
            Err(e) => return Ok(Err(Failure::Permanent(format!("cannot render `with`: {e}")))),
        };
        let started = Instant::now();
        let flow_name = ctx["flow"]["name"].as_str().unwrap_or_default().to_string();
        let result = match &step.kind {
            StepKind::Ghl { op, result } => {
                let req = match request::build(op, &inputs) {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(Failure::Permanent(e.to_string()))),
                };
                let rendered = json!({
                    "op": op.key,
                    "method": op.method.as_str(),
                    "path": ghl::render_path(&req.path, &req.path_params).unwrap_or_else(|_| req.path.clone()),
                    "query": req.query.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                    "body": req.body,
                });
                self.start_step(id, &step.id, rendered).await?;
                match self.client().send(account, &req).await {
                    Ok(ghl::Body::Json(body)) => Ok(result.first(&body).cloned().unwrap_or(body)),
                    Ok(ghl::Body::Text { text, .. }) => Ok(Value::String(text)),
                    Ok(ghl::Body::Bytes { content_type, bytes }) => {
                        Ok(json!({"contentType": content_type, "size": bytes.len()}))
                    }
                    Err(e) => Err(classify(&e, op.method.is_idempotent())),
                }
            }
            StepKind::Http => {
                let rendered = Value::Object(inputs.clone());
                let idempotent = step.is_idempotent(&rendered);
                if let Err(e) = http_step::check(&inputs, &self.config().http_allow_hosts) {
                    return Ok(Err(Failure::Permanent(e)));
                }
                self.start_step(id, &step.id, rendered).await?;
                http_step::send(self.http(), &inputs, self.config().http_timeout, idempotent).await
            }
        };
        self.metrics().record_step(&flow_name, &step.id, started.elapsed(), result.is_ok());
        match &result {
            Ok(v) => self.finish_step(id, &step.id, StepStatus::Succeeded, Some(v.clone()), None).await?,
            Err(Failure::InDoubt(e)) => self.finish_step(id, &step.id, StepStatus::InDoubt, None, Some(e)).await?,
            Err(Failure::Retry(e) | Failure::Permanent(e)) => {
                self.finish_step(id, &step.id, StepStatus::Failed, None, Some(e)).await?
            }
        }
        Ok(result)
    }

    async fn start_step(&self, id: RunId, step: &str, request: Value) -> Result<(), EngineError> {
        self.update(id, vec![RunChange::StepStarted { step: step.to_string(), request }]).await
    }

    async fn finish_step(
        &self,
        id: RunId,
        step: &str,
        status: StepStatus,
        response: Option<Value>,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        let change =
            RunChange::StepFinished { step: step.to_string(), status, response, error: error.map(str::to_string) };
        self.update(id, vec![change]).await
    }

    async fn update(&self, id: RunId, changes: Vec<RunChange>) -> Result<(), EngineError> {
        let store = self.store().clone();
        self.blocking(move || Ok(store.update_run(id, &changes).map(drop)?)).await
    }
}

/// Whether a failed GHL call is worth repeating, and whether it may have taken effect.
pub(crate) fn classify(e: &ghl::Error, idempotent: bool) -> Failure {
    use ghl::Error as E;
    match e {
        E::Api(api) if api.status == 429 || api.status >= 500 => Failure::Retry(e.to_string()),
        E::Api(_) | E::InvalidRequest(_) => Failure::Permanent(e.to_string()),
        E::Timeout | E::Transport(_) | E::Decode(_) if !idempotent => Failure::InDoubt(e.to_string()),
        E::Timeout | E::Transport(_) | E::Decode(_) => Failure::Retry(e.to_string()),
        _ => Failure::Retry(e.to_string()),
    }
}
