//! The one renderer of a step's request, for real runs and dry runs alike: the step's
//! inputs rendered from the run's context, placed where its operation wants them, and the
//! request as a run record (and a dry run) shows it.

use crate::http_step;
use crate::request;
use crate::runtime::{Step, StepKind};
use serde_json::{Map, Value};

/// A step ready to send.
pub(crate) enum Prepared<'a> {
    Ghl { op: &'a catalog::Operation, result: &'a ghl::JsonPath, req: ghl::Request, record: Value },
    Http { inputs: Map<String, Value>, record: Value },
}

impl Prepared<'_> {
    /// The request as a step's record keeps it.
    pub(crate) fn record(&self) -> &Value {
        match self {
            Prepared::Ghl { record, .. } | Prepared::Http { record, .. } => record,
        }
    }
}

/// From `step`'s inputs rendered against a run's context (`CompiledStep::render_inputs`):
/// the request it would send, and its record. An error is the step's own (its inputs do
/// not fit the operation).
pub(crate) fn prepare_inputs<'a>(step: &'a Step, inputs: Map<String, Value>) -> Result<Prepared<'a>, String> {
    match &step.kind {
        StepKind::Ghl { op, result } => {
            let req = request::build(op, &inputs).map_err(|e| e.to_string())?;
            let record = ghl_record(op, &req)?;
            Ok(Prepared::Ghl { op, result, req, record })
        }
        StepKind::Http => Ok(Prepared::Http { record: http_step::record(&inputs), inputs }),
    }
}

/// A GHL request as records and dry runs show it: `{op, method, path, version}`, plus
/// `query` (an object) and `body` when the request has them. The operation's key is kept
/// so that a run record says what it called without the flow file it came from (which may
/// have changed since). Built by hand: `json!` would serialise the body into a copy of
/// itself, field by field.
fn ghl_record(op: &catalog::Operation, req: &ghl::Request) -> Result<Value, String> {
    let path = ghl::render_path(&req.path, &req.path_params).map_err(|e| e.to_string())?;
    let mut record = Map::with_capacity(6);
    record.insert("op".into(), Value::String(op.key.clone()));
    record.insert("method".into(), Value::String(op.method.as_str().into()));
    record.insert("path".into(), Value::String(path));
    record.insert("version".into(), Value::String(req.version.clone()));
    if !req.query.is_empty() {
        let query = req.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        record.insert("query".into(), Value::Object(query));
    }
    if let Some(body) = &req.body {
        record.insert("body".into(), body.clone());
    }
    Ok(Value::Object(record))
}
