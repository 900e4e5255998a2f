//! Rendering a flow's requests for one trigger item without sending anything: what
//! `flowd test --item` prints, and what users snapshot-test their flows with.

use crate::request;
use catalog::Catalog;
use chrono::{DateTime, Utc};
use flow::{CompiledFlow, StepTarget};
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
    /// The HTTP request the step would send (for GHL steps), or its inputs (http.request).
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
    let mut ctx = flow::context(&flow.name, item, account, env, "dry-run", now);
    let passes_filter = match &flow.filter {
        Some(f) => f.matches(&ctx).map_err(|e| format!("if: {e}"))?,
        None => true,
    };
    let mut steps = Vec::new();
    if passes_filter {
        for step in &flow.steps {
            let inputs = match step.with.render(&ctx).map_err(|e| format!("step `{}`: {e}", step.id))? {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                other => return Err(format!("step `{}`: `with` rendered to {other}", step.id)),
            };
            let (uses, request) = match &step.uses {
                StepTarget::Http => (flow::HTTP_STEP.to_string(), Value::Object(inputs)),
                StepTarget::Ghl(key) => {
                    let op = catalog.get(key).ok_or_else(|| format!("unknown action `{key}`"))?;
                    let req = request::build(op, &inputs).map_err(|e| e.to_string())?;
                    let path = ghl::render_path(&req.path, &req.path_params).map_err(|e| e.to_string())?;
                    let mut r = Map::new();
                    r.insert("method".into(), json!(op.method.as_str()));
                    r.insert("path".into(), json!(path));
                    r.insert("version".into(), json!(op.version));
                    if !req.query.is_empty() {
                        let q: Map<String, Value> = req.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        r.insert("query".into(), Value::Object(q));
                    }
                    if let Some(b) = req.body {
                        r.insert("body".into(), b);
                    }
                    (key.clone(), Value::Object(r))
                }
            };
            let stand_in =
                stand_ins.get(&step.id).cloned().unwrap_or_else(|| json!({ "id": format!("{}-result", step.id) }));
            ctx["steps"][&step.id] = stand_in;
            steps.push(DryStep { id: step.id.clone(), uses, request });
        }
    }
    Ok(DryRun { flow: flow.name.clone(), passes_filter, steps })
}
