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
mod parse;
mod schedule;
mod schema;
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
pub use schedule::{jitter, CronSchedule, Schedule, ScheduleError, MIN_INTERVAL};
pub use schema::{json_schema, json_schema_for};
pub use template::{Filter, RenderError, TemplateError, ValueTemplate};
pub use webhook_events::WEBHOOK_EVENTS;
