//! Runs compiled flows: schedules polls, calls GHL through the `ghl` client, finds new
//! items by dedupe key, records everything in the store before acting, and executes each
//! run's steps in order.
//!
//! Architecture invariant: the engine never parses YAML (it takes compiled flows) and
//! never reads the environment or files (flowd hands it what it needs).

mod budget;
mod cache;
mod cluster;
mod config;
mod dedupe;
mod dry_run;
mod engine;
mod error;
mod failure;
mod fair;
mod fanout;
mod http_step;
mod inbound;
mod metrics;
mod poll;
mod poll_slots;
mod read_plan;
mod render;
mod request;
mod run;
mod runtime;
mod scheduler;
mod services;
mod step_control;
mod tokens;
pub mod touched;
mod webhook;
mod writer;

pub use budget::StoreBudget;
pub use config::{AccountInfo, EngineConfig};
pub use dedupe::{content_hash, dedupe_key, item_id};
pub use dry_run::{dry_run, DryRun, DryStep};
pub use engine::{AccountState, Engine, EngineTasks, FlowState, LastPoll, Paused};
pub use error::EngineError;
pub use inbound::{Accepted, InboundReply};
pub use metrics::Metrics;
pub use poll::PollReport;
pub use request::build as build_request;
pub use runtime::FlowRuntime;
pub use tokens::StoreTokens;
pub use webhook::WebhookReport;
