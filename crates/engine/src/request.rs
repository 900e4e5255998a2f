//! Turning an operation and its rendered inputs into a request for the GHL client.

use crate::error::EngineError;
use catalog::{Operation, ParamIn};
use serde_json::{Map, Value};

/// Places each input where the catalog says it goes (path, query or body). `null` inputs
/// are left out, so an optional template that rendered to nothing sends nothing.
pub fn build(op: &Operation, inputs: &Map<String, Value>) -> Result<ghl::Request, EngineError> {
    let mut req = ghl::Request::new(op.method, op.path.clone()).version(op.version.clone());
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
    // GHL reads a JSON body on every write that declares one (the spec requires it on most),
    // so a write whose body fields are all empty sends `{}` rather than nothing.
    let writes = matches!(op.method, catalog::Method::Post | catalog::Method::Put | catalog::Method::Patch);
    if req.body.is_none() && op.body_root.is_none() && writes && op.params_in(ParamIn::Body).next().is_some() {
        req.body = Some(Value::Object(Map::new()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_write_with_no_body_fields_set_sends_an_empty_object() {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let op = cat.get("workflows.add_contact_to_workflow").expect("op");
        let req = build(op, &inputs(json!({"contactId": "c1", "workflowId": "w1", "eventStartTime": null})))
            .expect("request");
        assert_eq!(req.body, Some(json!({})));
        let get = cat.get("contacts.get_contact").expect("op");
        assert_eq!(build(get, &inputs(json!({"contactId": "c1"}))).expect("request").body, None);
    }
}
