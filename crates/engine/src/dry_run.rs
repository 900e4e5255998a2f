//! Rendering a flow's requests for one trigger item without sending anything: what
//! `flowd test --item` prints, and what users snapshot-test their flows with. The flow is
//! resolved and its steps rendered exactly as a run would (`render`), walked like an inline
//! test (`flow::rehearse`).

use crate::render;
use crate::runtime::{FlowRuntime, Paths, StepKind};
use catalog::Catalog;
use chrono::{DateTime, Utc};
use flow::CompiledFlow;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub flow: String,
    /// False when the `if:` filter drops the item (no step would run).
    pub passes_filter: bool,
    pub steps: Vec<DryStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryStep {
    pub id: String,
    pub uses: String,
    /// The request the step would send, as its run record would keep it: for a GHL step
    /// `{op, method, path, version, query, body}`, for `http.request` its inputs with
    /// credentials redacted.
    pub request: Value,
}

/// Renders every step in order. A later step sees `steps.<id>` from `stand_ins` (or an
/// object `{ "id": "<id>-result" }` when none is given).
pub fn dry_run(
    flow: &CompiledFlow,
    catalog: &Catalog,
    item: Value,
    account: Value,
    env: &BTreeMap<String, String>,
    stand_ins: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<DryRun, String> {
    let rt = FlowRuntime::new(flow.clone(), catalog, account, &mut Paths::default()).map_err(|e| e.to_string())?;
    let mut ctx = rt.context(item, env, "dry-run", now);
    let passes_filter = flow.passes_filter(&ctx).map_err(|e| format!("if: {e}"))?;
    let mut steps = Vec::new();
    if passes_filter {
        flow::rehearse(&rt.steps, &mut ctx, |step, inputs| {
            let prepared = render::prepare_inputs(step, inputs)?;
            let uses = match &step.kind {
                StepKind::Ghl { op, .. } => op.key.clone(),
                StepKind::Http => flow::HTTP_STEP.to_string(),
            };
            steps.push(DryStep { id: step.id().to_owned(), uses, request: prepared.record().clone() });
            Ok(stand_ins.get(step.id()).cloned().unwrap_or_else(|| json!({ "id": format!("{}-result", step.id()) })))
        })?;
    }
    Ok(DryRun { flow: flow.name.clone(), passes_filter, steps })
}
