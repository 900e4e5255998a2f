//! Rendering a flow's requests for one trigger item without sending anything: what
//! `flowd test --item` prints, and what users snapshot-test their flows with. The flow is
//! resolved and its steps rendered exactly as a run would (`render`), walked like an inline
//! test (`flow::rehearse`).

use crate::render;
use crate::runtime::{FlowRuntime, Paths, StepKind};
use catalog::Catalog;
use chrono::{DateTime, Utc};
use flow::{CompiledFlow, Rehearsal};
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
    /// credentials redacted. Null for a skipped step.
    pub request: Value,
    /// The element of a `for_each` step this request is for (one entry per element).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The step's `if:` is false: it would be recorded as skipped, nothing sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Renders every step in order. A later step sees `steps.<id>` from `stand_ins` (or an
/// object `{ "id": "<id>-result" }` when none is given; a list stands in for a `for_each`
/// step's elements one by one). A step its `if:` skips is listed with `skipped: true`; a
/// `for_each` step once per element, with its `index`.
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
        flow::rehearse_controlled(&rt.steps, &mut ctx, |step, r| {
            let uses = match &step.kind {
                StepKind::Ghl { op, .. } => op.key.clone(),
                StepKind::Http => flow::HTTP_STEP.to_string(),
            };
            let id = step.id().to_owned();
            let (index, inputs) = match r {
                Rehearsal::Elements { .. } => return Ok(Value::Null),
                Rehearsal::Skipped => {
                    steps.push(DryStep { id, uses, request: Value::Null, index: None, skipped: true });
                    return Ok(Value::Null);
                }
                Rehearsal::Inputs { index, inputs } => (index, inputs),
            };
            let prepared = render::prepare_inputs(step, inputs)?;
            steps.push(DryStep { id, uses, request: prepared.record().clone(), index, skipped: false });
            let stand_in = stand_ins.get(step.id());
            // A list stands in for a `for_each` step's elements one by one.
            let stand_in = match (index, stand_in) {
                (Some(i), Some(Value::Array(list))) => list.get(i),
                (_, s) => s,
            };
            Ok(stand_in.cloned().unwrap_or_else(|| json!({ "id": format!("{}-result", step.id()) })))
        })?;
    }
    Ok(DryRun { flow: flow.name.clone(), passes_filter, steps })
}
