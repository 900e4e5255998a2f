//! A flow ready to run: its compiled form plus everything resolved once at load — the
//! catalog entries of its trigger and steps and their parsed JSONPaths — so the hot path
//! never looks anything up by name.

use crate::error::EngineError;
use catalog::{Catalog, Operation, Pagination, SharedOperation};
use flow::{CompiledFlow, StepTarget};
use ghl::JsonPath;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug)]
pub struct FlowRuntime {
    pub flow: CompiledFlow,
    /// Shared with the catalog (not a copy: an operation is kilobytes, times 10,000 flows).
    pub trigger_op: SharedOperation,
    /// Where an item's dedupe state lives; changes when the trigger's meaning changes, so a
    /// flow whose trigger was edited records a new baseline.
    pub trigger_id: String,
    /// Parsed once per distinct path and shared by every flow using it (see [`json_path`]).
    pub items_path: Arc<JsonPath>,
    pub steps: Vec<StepRuntime>,
}

#[derive(Debug)]
pub struct StepRuntime {
    pub id: String,
    pub kind: StepKind,
}

#[derive(Debug)]
pub enum StepKind {
    Ghl { op: SharedOperation, result: Arc<JsonPath> },
    Http,
}

impl StepRuntime {
    /// Whether sending the step twice cannot create a second effect, so a step that may
    /// have been sent before a crash can be sent again.
    pub fn is_idempotent(&self, rendered: &serde_json::Value) -> bool {
        match &self.kind {
            StepKind::Ghl { op, .. } => op.method.is_idempotent(),
            StepKind::Http => {
                let method = rendered.get("method").and_then(|m| m.as_str()).unwrap_or("POST");
                matches!(method.to_ascii_uppercase().as_str(), "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
            }
        }
    }
}

impl FlowRuntime {
    pub fn new(flow: CompiledFlow, catalog: &Catalog) -> Result<Arc<FlowRuntime>, EngineError> {
        let err = |message: String| EngineError::Flow { flow: flow.name.clone(), message };
        if let (false, Some(hook)) = (flow.trigger.polls(), flow.trigger.webhook.as_ref()) {
            let trigger_op = webhook_operation(&hook.event);
            let trigger_id = format!("{}/{}", flow.name, trigger_op.key);
            let items_path = json_path("$").map_err(err)?;
            let steps = step_runtimes(&flow, catalog)?;
            return Ok(Arc::new(FlowRuntime { flow, trigger_op, trigger_id, items_path, steps }));
        }
        let trigger_op = catalog
            .get_shared(&flow.trigger.op)
            .ok_or_else(|| err(format!("unknown trigger `{}`", flow.trigger.op)))?;
        let spec = trigger_op.trigger.as_ref().ok_or_else(|| err(format!("`{}` is not a trigger", trigger_op.key)))?;
        let items_path = json_path(&spec.items).map_err(err)?;
        let steps = step_runtimes(&flow, catalog)?;
        let trigger_id = format!("{}/{}/{}", flow.name, trigger_op.key, flow.trigger.dedupe.as_str());
        Ok(Arc::new(FlowRuntime { flow, trigger_op, trigger_id, items_path, steps }))
    }

    pub fn name(&self) -> &str {
        &self.flow.name
    }

    /// A `webhook:` trigger without `reconcile`: nothing to poll.
    pub fn webhook_only(&self) -> bool {
        !self.flow.trigger.polls()
    }

    pub fn is_single_record(&self) -> bool {
        matches!(
            self.trigger_op.trigger.as_ref().map(|t| &t.pagination),
            Some(Pagination::SingleRecord | Pagination::SingleFile)
        )
    }
}

fn step_runtimes(flow: &CompiledFlow, catalog: &Catalog) -> Result<Vec<StepRuntime>, EngineError> {
    let err = |message: String| EngineError::Flow { flow: flow.name.clone(), message };
    let mut steps = Vec::with_capacity(flow.steps.len());
    for s in &flow.steps {
        let kind = match &s.uses {
            StepTarget::Http => StepKind::Http,
            StepTarget::Ghl(key) => {
                let op = catalog.get_shared(key).ok_or_else(|| err(format!("unknown action `{key}`")))?;
                let path = op.action.as_ref().map(|a| a.result.as_str()).unwrap_or("$");
                let result = json_path(path).map_err(err)?;
                StepKind::Ghl { op, result }
            }
        };
        steps.push(StepRuntime { id: s.id.clone(), kind });
    }
    Ok(steps)
}

/// A parsed JSONPath, shared: the paths come from catalog entries (a trigger's `items`,
/// an action's `result`), so 10,000 flows use a few dozen distinct ones, and each parsed
/// path is a few hundred bytes. The cache holds every path parsed so far (bounded by the
/// catalogs loaded: built-in plus extensions).
fn json_path(text: &str) -> Result<Arc<JsonPath>, String> {
    static PATHS: OnceLock<Mutex<HashMap<String, Arc<JsonPath>>>> = OnceLock::new();
    let paths = PATHS.get_or_init(Default::default);
    if let Some(p) = paths.lock().ok().and_then(|m| m.get(text).cloned()) {
        return Ok(p);
    }
    let parsed = Arc::new(JsonPath::parse(text).map_err(|e| e.to_string())?);
    if let Ok(mut m) = paths.lock() {
        m.entry(text.to_string()).or_insert_with(|| parsed.clone());
    }
    Ok(parsed)
}

/// Stands in for the catalog entry a webhook-only flow lacks, so the runtime keeps one
/// shape; it has no trigger spec, so it can never be polled.
fn webhook_operation(event: &str) -> SharedOperation {
    SharedOperation::new(Operation {
        key: format!("webhook.{event}"),
        name: event.to_string(),
        description: format!("GHL webhook event {event}"),
        kind: catalog::Kind::Trigger,
        category: "webhooks".into(),
        method: catalog::Method::Post,
        path: String::new(),
        version: String::new(),
        scopes: Vec::new(),
        tokens: Vec::new(),
        deprecated: false,
        content_type: None,
        response_type: None,
        params: Vec::new(),
        body_root: None,
        body_required: false,
        trigger: None,
        action: None,
        notes: None,
    })
}
