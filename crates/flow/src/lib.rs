//! Flow files: parse with positions, validate against the catalog, compile to a plan the
//! engine runs. Pure: no IO, no async, no environment reads; the caller passes the text,
//! the catalog and a [`CompileEnv`].
// The JSON Schema of the format (`schema.rs`) is one `json!` literal, deeper than the
// default macro recursion limit allows.
#![recursion_limit = "256"]

mod compile;
mod diagnostic;
mod fanout;
mod helpers;
mod inbound;
mod parse;
mod schedule;
mod schema;
mod step_control;
mod template;
mod validate;
mod webhook_events;

pub use catalog::DedupeMode;
pub use compile::{
    context, load, rehearse, subset_mismatch, CompileEnv, CompiledFlow, CompiledStep, CompiledTrigger, FlowTest, Start,
    StepTarget, TestOutcome, WebhookTrigger, DEFAULT_ACCOUNT, DEFAULT_EVERY, DEFAULT_MAX_NEW, HTTP_STEP,
};
pub use diagnostic::{render_all, Diagnostic, Pos, Severity};
pub use fanout::FanOut;
pub use helpers::Helper;
pub use inbound::{
    HttpTrigger, Idempotency, InboundAuth, Reply, Respond, DEFAULT_MAX_BODY, DEFAULT_RESPOND_TIMEOUT, DEFAULT_TOLERANCE,
};
pub use schedule::{jitter, CronSchedule, Schedule, ScheduleError, MIN_INTERVAL};
pub use schema::{json_schema, json_schema_for};
pub use step_control::{
    element_key, elements, enter_element, error_result, leave_element, rehearse_controlled, skipped_result, ForEach,
    OnError, Rehearsal, StepControl, DEFAULT_MAX_ITEMS, MAX_ITEMS_LIMIT,
};
pub use template::{Filter, RenderError, TemplateError, ValueTemplate};
pub use webhook_events::WEBHOOK_EVENTS;
