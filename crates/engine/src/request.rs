//! Turning an operation and its rendered inputs into a request for the GHL client.

use crate::error::EngineError;
use catalog::{Operation, ParamIn};
use serde_json::{Map, Value};

/// Places each input where the catalog says it goes (path, query or body), in the type the
/// catalog declares for it when the conversion is lossless ([`catalog::Param::convert`]).
/// `null` inputs are left out, so an optional template that rendered to nothing sends nothing.
pub fn build(op: &Operation, inputs: &Map<String, Value>) -> Result<ghl::Request, EngineError> {
    let mut req = ghl::Request::for_operation(op);
    for (name, value) in inputs {
        if value.is_null() {
            continue;
        }
        let Some(param) = op.param(name) else {
            return Err(EngineError::Input { op: op.key.clone(), message: format!("unknown parameter `{name}`") });
        };
        // In the declared type when that loses nothing (`zip: 12345` goes out as "12345");
        // anything else is sent as written, and GHL's answer says what is wrong with it.
        let value = param.convert(value).unwrap_or_else(|| value.clone());
        match param.location {
            ParamIn::Path => {
                req.path_params.insert(name.clone(), value);
            }
            ParamIn::Query => req.set_query(name.clone(), value),
            ParamIn::Body if op.body_root.as_deref() == Some(name) => req.body = Some(value),
            ParamIn::Body => req
                .set_body_field(name, value)
                .map_err(|e| EngineError::Input { op: op.key.clone(), message: e.to_string() })?,
        }
    }
    if op.body_required && req.body.is_none() {
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

    fn body(key: &str, inputs: Value) -> Value {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let op = cat.get(key).expect("operation");
        let Value::Object(inputs) = inputs else { panic!("inputs are an object") };
        build(op, &inputs).expect("request").body.expect("body")
    }

    #[test]
    fn scalars_are_sent_in_the_declared_type_when_nothing_is_lost() {
        let b = body(
            "contacts.create_task",
            json!({"contactId": "c1", "title": 5, "dueDate": "2030-01-01", "completed": "true"}),
        );
        assert_eq!(b, json!({"title": "5", "dueDate": "2030-01-01", "completed": true}));
        let b = body("businesses.create_business", json!({"locationId": "l1", "name": 12345, "city": false}));
        assert_eq!(b, json!({"locationId": "l1", "name": "12345", "city": "false"}));
        let b = body("contacts.add_tags", json!({"contactId": "c1", "tags": [1, "vip", true]}));
        assert_eq!(b["tags"], json!(["1", "vip", "true"]), "array items too");
    }

    /// The spec requires these bodies even with no field given: `{}` goes out, which the
    /// spec's schema allows (it declares no required field).
    #[test]
    fn a_required_body_is_sent_even_when_no_body_parameter_is_given() {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let inputs = |v: Value| v.as_object().cloned().unwrap_or_default();
        for (key, given) in [
            ("calendars.delete_event", json!({"eventId": "e1"})),
            ("contacts.add_to_campaign", json!({"contactId": "c1", "campaignId": "k1"})),
            ("workflows.remove_contact_from_workflow", json!({"contactId": "c1", "workflowId": "w1"})),
            ("workflows.add_contact_to_workflow", json!({"contactId": "c1", "workflowId": "w1"})),
            ("contacts.update_contact", json!({"contactId": "c1"})),
        ] {
            let op = cat.get(key).expect("operation");
            assert_eq!(build(op, &inputs(given)).expect("request").body, Some(json!({})), "{key}");
        }
        let op = cat.get("contacts.get_contact").expect("operation");
        assert_eq!(build(op, &inputs(json!({"contactId": "c1"}))).expect("request").body, None, "GET has no body");
    }

    #[test]
    fn values_that_do_not_convert_are_sent_as_they_are() {
        let b = body(
            "contacts.create_task",
            json!({"contactId": "c1", "title": {"a": 1}, "dueDate": "x", "completed": "yes"}),
        );
        assert_eq!(b["title"], json!({"a": 1}));
        assert_eq!(b["completed"], "yes");
    }
}
