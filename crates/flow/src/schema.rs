//! JSON Schema (draft 2020-12) of the flow file format, for editors.
//!
//! Hand-written rather than derived with schemars: the parser reads positioned YAML nodes,
//! not derived structs, so there is no type to derive from, and a hand-written schema can
//! carry the descriptions and the catalog's keys that an editor shows.

use catalog::{Catalog, Kind};
use serde_json::{json, Value};

use crate::compile::{DEFAULT_EVERY, DEFAULT_MAX_NEW, HTTP_STEP};
use crate::step_control::{DEFAULT_MAX_ITEMS, MAX_ITEMS_LIMIT};
use crate::validate::HTTP_METHODS;
use crate::webhook_events::WEBHOOK_EVENTS;

/// The schema without catalog keys: `uses` is any string.
pub fn json_schema() -> Value {
    build(None)
}

/// The schema with the catalog's trigger and action keys listed for `uses`, so editors
/// complete them.
pub fn json_schema_for(catalog: &Catalog) -> Value {
    build(Some(catalog))
}

fn keys(catalog: &Catalog, kind: Kind) -> Vec<Value> {
    catalog.operations().iter().filter(|o| o.kind == kind).map(|o| Value::from(o.key.clone())).collect()
}

fn build(catalog: Option<&Catalog>) -> Value {
    let trigger_uses = match catalog {
        Some(c) => {
            json!({"type": "string", "enum": keys(c, Kind::Trigger), "description": "Catalog key of a trigger."})
        }
        None => {
            json!({"type": "string", "pattern": "^[a-z0-9_]+\\.[a-z0-9_]+$", "description": "Catalog key of a trigger."})
        }
    };
    let step_uses = match catalog {
        Some(c) => {
            let mut k = keys(c, Kind::Action);
            k.extend(
                c.operations()
                    .iter()
                    .filter(|o| o.kind == Kind::Trigger && crate::inbound::reads_one_record(o))
                    .map(|o| Value::from(o.key.clone())),
            );
            k.push(Value::from(HTTP_STEP));
            json!({"type": "string", "enum": k, "description": "Catalog key of an action, or `http.request`."})
        }
        None => {
            json!({"type": "string", "pattern": "^[a-z0-9_]+\\.[a-z0-9_]+$", "description": "Catalog key of an action, or `http.request`."})
        }
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://flowd.dev/schema/flow.json",
        "title": "flowd flow",
        "description": "One GHL trigger linked to templated action steps.",
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "trigger", "steps"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "Unique name of the flow; also keys its state and jitter."},
            "account": {"type": "string", "default": "default", "description": "Account (credentials + location) from the service config."},
            "trigger": {
                "type": "object",
                "additionalProperties": false,
                "anyOf": [{"required": ["uses"]}, {"required": ["webhook"]}, {"required": ["http"]}],
                "properties": {
                    "uses": trigger_uses.clone(),
                    "with": {"type": "object", "description": "Request parameters; templates see account, env, flow, run and now."},
                    "every": {"type": "string", "default": DEFAULT_EVERY, "description": "Polling interval (humantime: 30s, 5m, 1h); at least 1s."},
                    "cron": {"type": "string", "description": "crontab(5) expression, 5 fields, UTC."},
                    "dedupe": {"enum": ["new", "updated", "changed"], "description": "Which items fire; default from the catalog."},
                    "start": {"type": "string", "default": "now", "description": "`now`, `all` or an RFC 3339 time."},
                    "max_new": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_NEW, "description": "Flood guard: more new items than this in one poll are held."},
                    "lookback": {"type": "string", "default": "2m", "description": "How far behind its watermark an incremental poll re-reads (search results lag)."},
                    "sweep": {"type": "string", "description": "Re-read everything this often (at least 10m), e.g. `6h`, to catch what a watermark cannot."},
                    "webhook": {"type": "string", "enum": WEBHOOK_EVENTS, "description": "GHL webhook event type; the flow fires on deliveries instead of polls."},
                    "reconcile": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["uses"],
                        "description": "A polling trigger paired with `webhook`, sharing its dedupe keys: catches lost webhooks.",
                        "properties": {
                            "uses": trigger_uses,
                            "with": {"type": "object"},
                            "every": {"type": "string", "default": DEFAULT_EVERY},
                            "cron": {"type": "string"},
                            "dedupe": {"enum": ["new", "updated", "changed"]},
                            "start": {"type": "string", "default": "now"},
                            "lookback": {"type": "string", "default": "2m"},
                            "sweep": {"type": "string"},
                            "max_new": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_NEW}
                        }
                    },
                    "coalesce": {"type": "string", "description": "Webhook events for one record closer together than this fire once (humantime, e.g. 2s)."},
                    "http": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["path", "auth"],
                        "description": "Inbound HTTP trigger: the app calls flowd on the webhook listener; the item is {body, query, headers}.",
                        "properties": {
                            "path": {"type": "string", "pattern": "^/[A-Za-z0-9._/-]+$", "description": "Route on the webhook listener, e.g. /app/contact."},
                            "auth": {
                                "type": "object",
                                "minProperties": 1,
                                "maxProperties": 1,
                                "additionalProperties": false,
                                "properties": {
                                    "bearer": {"type": "string", "pattern": "^\\$\\{[^}]+\\}$", "description": "`${ENV_VAR}` holding the token the app sends as `Authorization: Bearer`."},
                                    "hmac": {
                                        "type": "object",
                                        "additionalProperties": false,
                                        "required": ["secret"],
                                        "description": "HMAC-SHA256 (hex) over `timestamp + \".\" + raw body`.",
                                        "properties": {
                                            "secret": {"type": "string", "pattern": "^\\$\\{[^}]+\\}$"},
                                            "header": {"type": "string", "default": "X-Flowd-Signature"},
                                            "timestamp_header": {"type": "string", "default": "X-Flowd-Timestamp"},
                                            "tolerance": {"type": "string", "default": "5m"}
                                        }
                                    }
                                }
                            },
                            "idempotency": {
                                "type": "object",
                                "minProperties": 1,
                                "maxProperties": 1,
                                "additionalProperties": false,
                                "description": "Requests with the same key start one run; a repeat is answered 200 {duplicate: true}.",
                                "properties": {
                                    "header": {"type": "string", "description": "A request header, e.g. Idempotency-Key."},
                                    "key": {"type": "string", "description": "A template over the item, e.g. {{ trigger.body.orderId }}."}
                                }
                            },
                            "max_body": {"type": ["string", "integer"], "default": "64KiB", "description": "Larger bodies get 413."},
                            "headers": {"type": "array", "items": {"type": "string"}, "description": "Request headers copied into the item."},
                            "respond": {
                                "type": "object",
                                "additionalProperties": false,
                                "description": "Answer with the run's result; templates see trigger and steps.*.",
                                "properties": {
                                    "status": {"type": ["integer", "string"], "default": 200},
                                    "body": {"description": "Template of the JSON body."},
                                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "timeout": {"type": "string", "default": "10s", "description": "Past it: 504 with the run id; the run goes on."}
                                }
                            }
                        }
                    },
                    "for_each_record": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["of"],
                        "description": "Fan-out: poll `uses` (a per-record trigger such as contacts.get_contact_tasks) for each record of the parent trigger `of`, changed parents first, then round-robin through all of them; `with` templates see the parent as `parent`.",
                        "properties": {
                            "of": {"type": "string", "description": "Catalog key of the parent trigger, read by search (contacts.search_contacts)."},
                            "with": {"type": "object", "description": "The parent's request parameters (locationId)."},
                            "max_per_poll": {"type": "integer", "minimum": catalog::MIN_PER_POLL, "maximum": catalog::MAX_PER_POLL, "default": catalog::DEFAULT_MAX_PER_POLL, "description": "Parents one poll reads; a poll sends at most this many requests plus one."}
                        }
                    }
                },
                "not": {"required": ["every", "cron"]}
            },
            "if": {"type": "string", "description": "Template; the item fires only when it renders truthy."},
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "uses"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                        "uses": step_uses,
                        "with": {"type": "object", "description": "Parameters; strings are templates. In a `for_each` step they also see `item` and `index`."},
                        "if": {"type": "string", "description": "Template over trigger, steps, env...; the step runs only when it renders truthy, else it is recorded as skipped and `steps.<id>` is `{skipped: true}`."},
                        "for_each": {"type": "string", "pattern": "\\{\\{", "description": "Template yielding a list; the step runs once per element, with `item` and `index`, each element its own record. `steps.<id>` is the list of results."},
                        "max_items": {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS_LIMIT, "default": DEFAULT_MAX_ITEMS, "description": "More `for_each` elements than this fail the run (nothing is cut off)."},
                        "on_error": {"enum": ["fail", "continue"], "default": "fail", "description": "`continue`: a final failure is recorded and the run goes on; later steps see `steps.<id>.error`. Retryable failures retry first; an in-doubt request never continues."},
                        "cache": {"type": "string", "description": "GET steps only: reuse the result for the same rendered request this long (e.g. 5m); flowd's own writes to the record drop it."}
                    },
                    "if": {"properties": {"uses": {"const": HTTP_STEP}}},
                    "then": {"properties": {"with": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["url"],
                        "properties": {
                            "method": {"anyOf": [{"enum": HTTP_METHODS}, {"type": "string", "pattern": "\\{\\{"}], "default": "POST"},
                            "url": {"type": "string"},
                            "headers": {"type": "object"},
                            "query": {"type": "object"},
                            "json": {},
                            "body": {"type": "string"}
                        }
                    }}}
                }
            },
            "tests": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["item"],
                    "properties": {
                        "name": {"type": "string"},
                        "item": {"description": "The trigger item to run the flow with."},
                        "results": {"type": "object", "description": "Stand-in step results, by step id."},
                        "expect": {"type": "object", "description": "Step id -> subset of its rendered `with`; `respond` -> subset of the rendered reply {status, body, headers}."},
                        "filtered": {"type": "boolean", "description": "Whether `if` is expected to drop the item."},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Environment variables (`env.*`) set for this test."}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_every_key_and_catalog_keys() {
        let s = json_schema();
        let top: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            top,
            crate::parse::TOP_KEYS.iter().map(|k| k.to_string()).collect::<Vec<_>>().iter().collect::<Vec<_>>()
        );
        let trig: Vec<&str> =
            s["properties"]["trigger"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(trig, crate::parse::TRIGGER_KEYS);
        let step: Vec<&str> =
            s["properties"]["steps"]["items"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(step, crate::parse::STEP_KEYS);
        let cat = Catalog::builtin().unwrap();
        let with_cat = json_schema_for(&cat);
        let triggers = with_cat["properties"]["trigger"]["properties"]["uses"]["enum"].as_array().unwrap();
        assert_eq!(triggers.len(), catalog::BUILTIN_TRIGGERS);
        assert!(triggers.contains(&Value::from("contacts.search_contacts")));
    }
}
