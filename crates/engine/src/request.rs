//! Turning an operation and its rendered inputs into a request for the GHL client.

use crate::error::EngineError;
use catalog::{Operation, ParamIn};
use serde_json::{Map, Value};

/// Places each input where the catalog says it goes (path, query or body). `null` inputs
/// are left out, so an optional template that rendered to nothing sends nothing.
pub fn build(op: &Operation, inputs: &Map<String, Value>) -> Result<ghl::Request, EngineError> {
    let mut req = ghl::Request::for_operation(op);
    for (name, value) in inputs {
        if value.is_null() {
            continue;
        }
        let Some(param) = op.param(name) else {
            return Err(EngineError::Input { op: op.key.clone(), message: format!("unknown parameter `{name}`") });
        };
        match param.location {
            ParamIn::Path => {
                req.path_params.insert(name.clone(), value.clone());
            }
            ParamIn::Query => req.set_query(name.clone(), value.clone()),
            ParamIn::Body if op.body_root.as_deref() == Some(name) => req.body = Some(value.clone()),
            ParamIn::Body => req
                .set_body_field(name, value.clone())
                .map_err(|e| EngineError::Input { op: op.key.clone(), message: e.to_string() })?,
        }
    }
    for p in op.params_in(ParamIn::Path) {
        if !req.path_params.contains_key(&p.name) {
            return Err(EngineError::Input {
                op: op.key.clone(),
                message: format!("path parameter `{}` has no value", p.name),
            });
        }
    }
    Ok(req)
}
