//! Requests of the app (`trigger.http`) to runs, and a run's result to the reply.
//!
//! A request becomes a `pending` run through [`store::Store::commit_poll`], under the
//! flow's trigger id and the request's idempotency key, in one durable transaction: the
//! caller gets its 2xx only after it. A repeated key finds the key seen and creates
//! nothing, so an app that retries fires the flow once. A crash after the answer leaves a
//! pending run that a restarted engine resumes ([`crate::Engine::resume`]). The webhook
//! inbox is not used: it would cost a second write and a pass of its processor before
//! the run could start, in the path of a caller that waits for the reply.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::runtime::FlowRuntime;
use crate::services::blocking;
use chrono::Utc;
use flow::Respond;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use store::{NewRun, PollCommit, PollItem, RunId, RunStatus, StepStatus};

/// What became of a request.
#[derive(Debug)]
pub enum Accepted {
    /// Stored as a new run, which is now executing.
    Run { id: RunId, handle: tokio::task::JoinHandle<Result<RunStatus, EngineError>> },
    /// A request with the same idempotency key was accepted before: nothing new.
    Duplicate,
}

/// The answer to a caller that waits for its run.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundReply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Engine {
    /// The loaded flow whose `trigger.http.path` is `path`.
    pub fn inbound_flow(&self, path: &str) -> Option<Arc<FlowRuntime>> {
        self.runtimes().into_iter().find(|rt| rt.trigger.http.as_ref().is_some_and(|h| h.path == path))
    }

    /// Whether the loaded flow `name` has a `trigger.http` (nothing to poll).
    pub fn inbound_flow_named(&self, name: &str) -> bool {
        self.flow(name).is_ok_and(|rt| rt.trigger.http.is_some())
    }

    /// The routes of the loaded `trigger.http` flows, sorted.
    pub fn inbound_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> =
            self.runtimes().iter().filter_map(|rt| rt.trigger.http.as_ref().map(|h| h.path.clone())).collect();
        paths.sort();
        paths
    }

    /// Stores the request `item` of `rt` as a run, durably, then starts it. `key` is its
    /// idempotency key; `None` makes a fresh one.
    pub async fn accept_inbound(
        self: &Arc<Self>,
        rt: &Arc<FlowRuntime>,
        key: Option<String>,
        item: Value,
    ) -> Result<Accepted, EngineError> {
        let key = match key {
            Some(k) => format!("key:{k}"),
            None => format!("random:{:032x}", rand::random::<u128>()),
        };
        let mut run = NewRun::new(rt.name.clone(), item);
        run.trigger = Some(rt.trigger_id.clone());
        run.touched = crate::touched::of_inputs(
            run.item.get("body").and_then(Value::as_object).unwrap_or(&serde_json::Map::new()),
        );
        let commit = PollCommit {
            lease: None,
            trigger: rt.trigger_id.clone(),
            state: None,
            items: vec![PollItem { key, run: Some(run) }],
        };
        let store = self.store().clone();
        let outcome = blocking(move || Ok(store.commit_poll(&commit)?)).await?;
        match outcome.created.first() {
            Some((_, id)) => Ok(Accepted::Run { id: *id, handle: self.dispatch(*id) }),
            None => Ok(Accepted::Duplicate),
        }
    }

    /// Waits up to `respond.timeout` for run `id` to end, then renders the reply: the
    /// flow's `respond` when it succeeded, 502 `{error, step, run_id}` when a step failed,
    /// 504 `{error, run_id}` when time ran out (the run goes on).
    pub async fn inbound_reply(
        &self,
        rt: &FlowRuntime,
        respond: &Respond,
        id: RunId,
        handle: tokio::task::JoinHandle<Result<RunStatus, EngineError>>,
    ) -> InboundReply {
        let timeout = respond.timeout;
        let status = match tokio::time::timeout(timeout, handle).await {
            Err(_) => return timed_out(id, timeout),
            Ok(Err(e)) => return failed(id, None, &format!("the run could not finish: {e}")),
            Ok(Ok(Err(e))) => return failed(id, None, &e.to_string()),
            Ok(Ok(Ok(s))) => s,
        };
        let run = match self.store().get_run(id) {
            Ok(Some(run)) => run,
            Ok(None) => return failed(id, None, "the run is gone"),
            Err(e) => return failed(id, None, &e.to_string()),
        };
        if status != RunStatus::Succeeded {
            let step = run.steps.iter().find(|s| matches!(s.status, StepStatus::Failed | StepStatus::InDoubt));
            let error = run.error.clone().unwrap_or_else(|| format!("the run ended {status}"));
            return failed(id, step.map(|s| s.step.clone()), &error);
        }
        let mut ctx = self.context(rt, run.item.clone(), Utc::now());
        ctx["run"]["id"] = Value::String(id.to_string());
        for s in &run.steps {
            ctx["steps"][s.step.as_str()] = s.response.as_deref().cloned().unwrap_or(Value::Null);
        }
        match respond.render(&ctx) {
            Ok(r) => InboundReply { status: r.status, body: r.body, headers: r.headers },
            Err(e) => InboundReply {
                status: 500,
                body: json!({"error": format!("cannot render `respond`: {e}"), "run_id": id.to_string()}),
                headers: Vec::new(),
            },
        }
    }
}

/// Two flows serving one `trigger.http.path` is an error: a request would start either.
pub(crate) fn unique_paths<'a>(flows: impl Iterator<Item = &'a Arc<FlowRuntime>>) -> Result<(), EngineError> {
    let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for rt in flows {
        if let Some(h) = &rt.trigger.http {
            if let Some(other) = seen.insert(h.path.as_str(), rt.name.as_str()) {
                return Err(EngineError::Flow {
                    flow: rt.name.clone(),
                    message: format!("`trigger.http.path: {}` is already served by flow `{other}`", h.path),
                });
            }
        }
    }
    Ok(())
}

fn timed_out(id: RunId, after: Duration) -> InboundReply {
    InboundReply {
        status: 504,
        body: json!({
            "error": format!("the run did not finish within {}; it goes on", humantime_secs(after)),
            "run_id": id.to_string(),
        }),
        headers: Vec::new(),
    }
}

fn failed(id: RunId, step: Option<String>, error: &str) -> InboundReply {
    InboundReply {
        status: 502,
        body: json!({"error": error, "step": step, "run_id": id.to_string()}),
        headers: Vec::new(),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}
