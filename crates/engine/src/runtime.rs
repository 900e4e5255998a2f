//! A flow resolved once, at load or reload, into what the hot path uses: each step with
//! its template and its catalog operation together, the trigger as what it is (a catalog
//! operation to poll, or webhook deliveries only), its JSONPaths parsed, and the account as
//! templates see it. Polls and runs hold it by `Arc` and never look anything up by name.

use crate::error::EngineError;
use catalog::{Catalog, Method, Pagination, SharedOperation};
use flow::{CompiledFlow, CompiledStep, CompiledTrigger, Filter, StepTarget};
use ghl::JsonPath;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug)]
pub struct FlowRuntime {
    pub name: String,
    pub account: String,
    /// The trigger's compiled settings (schedule, dedupe, start, flood guard, `webhook:`).
    pub trigger: CompiledTrigger,
    pub source: Source,
    /// Where an item's dedupe state lives; changes when the trigger's meaning changes, so a
    /// flow whose trigger was edited records a new baseline.
    pub trigger_id: String,
    pub filter: Option<Filter>,
    pub steps: Vec<Step>,
    /// What templates see as `account` (`{name, location_id}`), and the location a
    /// webhook event must name to be this flow's.
    pub account_ctx: Value,
    pub location_id: Option<String>,
}

/// What starts the flow's runs.
#[derive(Debug)]
pub enum Source {
    /// A catalog trigger, polled (alone, or reconciling a `webhook:` trigger).
    Poll(Polled),
    /// Webhook deliveries of this event type only: nothing to poll.
    Webhook { event: String },
    /// Requests of the app on this route (`trigger.http`): nothing to poll.
    Inbound { path: String },
}

#[derive(Debug)]
pub struct Polled {
    /// Shared with the catalog (not a copy: an operation is kilobytes, times 10,000 flows).
    pub op: SharedOperation,
    /// The trigger's `items` JSONPath, parsed.
    pub items: Arc<JsonPath>,
    /// The parent of a fan-out trigger (`for_each_record:`).
    pub parent: Option<crate::fanout::Parent>,
}

impl Polled {
    /// The operation's trigger spec (checked present when the runtime was built).
    pub fn spec(&self) -> Option<&catalog::TriggerSpec> {
        self.op.trigger.as_ref()
    }

    /// A trigger that reads one record (or file), not a list.
    pub fn is_single_record(&self) -> bool {
        matches!(self.spec().map(|s| &s.pagination), Some(Pagination::SingleRecord | Pagination::SingleFile))
    }
}

/// One step: its template and what it calls, together.
#[derive(Debug)]
pub struct Step {
    pub def: CompiledStep,
    pub kind: StepKind,
}

#[derive(Debug)]
pub enum StepKind {
    /// A catalog action; `result` is the JSONPath of what it returns.
    Ghl {
        op: SharedOperation,
        result: Arc<JsonPath>,
    },
    Http,
}

impl AsRef<CompiledStep> for Step {
    fn as_ref(&self) -> &CompiledStep {
        &self.def
    }
}

impl Step {
    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// The method the step sends with, for the one idempotency rule
    /// ([`Method::is_idempotent`]); `rendered` is its request as recorded.
    pub fn method(&self, rendered: &Value) -> Method {
        match &self.kind {
            StepKind::Ghl { op, .. } => op.method,
            StepKind::Http => http_method(rendered.get("method").and_then(Value::as_str).unwrap_or("POST")),
        }
    }
}

/// An `http.request` method as the catalog method of the same semantics (RFC 9110
/// section 9.2): HEAD and OPTIONS are safe like GET; a method it does not know is treated
/// like POST, as nothing says it is safe to repeat.
pub fn http_method(method: &str) -> Method {
    match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" | "OPTIONS" => Method::Get,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        _ => Method::Post,
    }
}

/// JSONPaths parsed while loading a set of flows, each distinct path once: the paths come
/// from catalog entries (a trigger's `items`, an action's `result`), so 10,000 flows share
/// a few dozen parsed paths.
#[derive(Default)]
pub struct Paths(HashMap<String, Arc<JsonPath>>);

impl Paths {
    fn get(&mut self, text: &str) -> Result<Arc<JsonPath>, String> {
        if let Some(p) = self.0.get(text) {
            return Ok(p.clone());
        }
        let parsed = Arc::new(JsonPath::parse(text).map_err(|e| e.to_string())?);
        self.0.insert(text.to_owned(), parsed.clone());
        Ok(parsed)
    }
}

impl FlowRuntime {
    /// Resolves `flow` against the catalog. `account` is what templates see as `account`
    /// (`Value::Null` when the account is unknown).
    pub fn new(
        flow: CompiledFlow,
        catalog: &Catalog,
        account_ctx: Value,
        paths: &mut Paths,
    ) -> Result<Arc<FlowRuntime>, EngineError> {
        let CompiledFlow { name, account, trigger, filter, steps, tests: _ } = flow;
        let err = |message: String| EngineError::Flow { flow: name.clone(), message };
        let (source, trigger_id) = match (trigger.polls(), trigger.webhook.as_ref()) {
            (false, _) if trigger.http.is_some() => {
                let path = trigger.http.as_ref().map(|h| h.path.clone()).unwrap_or_default();
                (Source::Inbound { path: path.clone() }, format!("{name}/http{path}"))
            }
            (false, Some(hook)) => {
                let id = format!("{name}/webhook.{}", hook.event);
                (Source::Webhook { event: hook.event.clone() }, id)
            }
            _ => {
                let op =
                    catalog.get_shared(&trigger.op).ok_or_else(|| err(format!("unknown trigger `{}`", trigger.op)))?;
                let spec = op.trigger.as_ref().ok_or_else(|| err(format!("`{}` is not a trigger", op.key)))?;
                let items = paths.get(&spec.items).map_err(err)?;
                let mut id = format!("{name}/{}/{}", op.key, trigger.dedupe.as_str());
                let parent = match &trigger.fan_out {
                    Some(fan) => {
                        let op = catalog
                            .get_shared(&fan.parent)
                            .ok_or_else(|| err(format!("unknown trigger `{}`", fan.parent)))?;
                        let spec = op.trigger.as_ref().ok_or_else(|| err(format!("`{}` is not a trigger", op.key)))?;
                        let items = paths.get(&spec.items).map_err(err)?;
                        // Its keys are per parent: a trigger that starts or stops fanning out
                        // records a new baseline.
                        id.push_str(&format!("/each.{}", op.key));
                        Some(crate::fanout::Parent { op, items })
                    }
                    None => None,
                };
                (Source::Poll(Polled { op, items, parent }), id)
            }
        };
        let mut resolved = Vec::with_capacity(steps.len());
        for def in steps {
            let kind = match &def.uses {
                StepTarget::Http => StepKind::Http,
                StepTarget::Ghl(key) => {
                    let op = catalog.get_shared(key).ok_or_else(|| err(format!("unknown action `{key}`")))?;
                    // A read step on a single-record trigger operation returns its item.
                    let item = op.trigger.as_ref().filter(|_| op.action.is_none()).map(|t| t.items.as_str());
                    let path = op.action.as_ref().map(|a| a.result.as_str()).or(item).unwrap_or("$");
                    let result = paths.get(path).map_err(err)?;
                    StepKind::Ghl { op, result }
                }
            };
            resolved.push(Step { def, kind });
        }
        let location_id = account_ctx.get("location_id").and_then(Value::as_str).map(str::to_owned);
        Ok(Arc::new(FlowRuntime {
            name,
            account,
            trigger,
            source,
            trigger_id,
            filter,
            steps: resolved,
            account_ctx,
            location_id,
        }))
    }

    /// The polled trigger; `None` for a flow fed by webhooks only.
    pub fn polled(&self) -> Option<&Polled> {
        match &self.source {
            Source::Poll(p) => Some(p),
            Source::Webhook { .. } | Source::Inbound { .. } => None,
        }
    }

    /// Nothing to poll: a `webhook:` trigger without `reconcile`, or an `http:` one.
    pub fn webhook_only(&self) -> bool {
        matches!(self.source, Source::Webhook { .. } | Source::Inbound { .. })
    }

    /// What the flow is started by, as `GET /api/flows` names it: the catalog key of its
    /// trigger, or `webhook.<event>` for a flow fed by webhooks only.
    pub fn trigger_key(&self) -> String {
        match &self.source {
            Source::Poll(p) => p.op.key.clone(),
            Source::Webhook { event } => format!("webhook.{event}"),
            Source::Inbound { path } => format!("http {path}"),
        }
    }

    /// The template context for one item; `steps` starts empty.
    pub fn context(
        &self,
        trigger: Value,
        env: &BTreeMap<String, String>,
        run_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Value {
        flow::context(&self.name, trigger, self.account_ctx.clone(), env, run_id, now)
    }
}

/// `account` as templates see it.
pub fn account_context(name: &str, location_id: &str) -> Value {
    let mut m = Map::with_capacity(2);
    m.insert("name".into(), json!(name));
    m.insert("location_id".into(), json!(location_id));
    Value::Object(m)
}
